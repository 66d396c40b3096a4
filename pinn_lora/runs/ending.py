"""The end of a run (validation, the verdict, plots, adapter, card and summary: a few seconds) is
finished before a Ctrl-C or SIGTERM stops it, so a signal in those seconds does not lose a run whose
steps are done.

:func:`end_phase` wraps that end: the first SIGINT/SIGTERM is noted (one line on stderr) and the end
goes on; once everything is written and the run directory's claim released (``finished``), the
signal is raised as :class:`StoppedAfterEnd` (exit code 130 / 143 on the command line). A second
signal stops at once (:class:`pinn_lora.training.trainer.Interrupted`); any exception marks the claim
``failed`` / ``interrupted`` (never left ``running``)."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

from pinn_lora.training.checkpointer import Interrupted


class StoppedAfterEnd(Interrupted):
    """SIGINT/SIGTERM came during the end of a run; the run was finished and written first."""

    run_status = "finished"

    def __init__(self, signum: int, where: Any = None) -> None:
        super().__init__(signum)
        name = signal.Signals(signum).name
        self.args = (f"interrupted by {name} at the end of the run; its steps were done, so it was finished "
                     f"first: its results are written{'' if where is None else f' in {where}'}",)

    def __str__(self) -> str:
        return str(self.args[0])


@contextlib.contextmanager
def end_phase(claim: Any, where: Any = None) -> Iterator[None]:
    """Run the block (the end of a run holding ``claim``, a :class:`pinn_lora.store.rundir.Claim`) with
    SIGINT/SIGTERM deferred (main thread, claimed directories only), then release the claim; see the
    module docstring. ``where`` names the run directory in the message."""
    got: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        if got:
            raise Interrupted(signum)
        got.append(signum)
        print(f"pinn_lora: {signal.Signals(signum).name} received at the end of the run: finishing it first "
              "(a few seconds; send it again to stop at once)", file=sys.stderr, flush=True)

    defer = claim.path is not None and threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)} if defer else {}
    try:
        try:
            yield
        except BaseException as exc:
            claim.fail(exc)
            raise
        claim.release()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if got:
        raise StoppedAfterEnd(got[0], where)
