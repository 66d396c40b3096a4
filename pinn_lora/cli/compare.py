"""``python -m pinn_lora.compare``: the report of a directory of runs (:func:`pinn_lora.runs.compare.compare_runs`)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

from pinn_lora.cli.common import EXIT_BAD_INPUT, fail
from pinn_lora.runs.compare import DEFAULT_LEVELS, _markdown_table, compare_runs, find_runs, table
from pinn_lora.store.safe_io import UnsafePathError
from pinn_lora.store import rundir

def _level(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive error level")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, like the other entry points
        fail(message, EXIT_BAD_INPUT)


def main(argv: Sequence[str] | None = None) -> None:
    parser = _Parser(prog="python -m pinn_lora.compare",
                     description="Compare the runs of a sweep: tables and figures per problem and target.")
    parser.add_argument("sweep_dir", help="directory holding run directories (any depth), e.g. multirun/<time>")
    parser.add_argument("--out", default=None, help="report directory (default: SWEEP_DIR/report)")
    parser.add_argument("--levels", nargs="+", type=_level, default=list(DEFAULT_LEVELS),
                        help="rel. L2 error levels for steps/evaluations/time to reach (default: 1e-2 1e-3)")
    parser.add_argument("--no-solutions", action="store_true",
                        help="skip the prediction/reference/error figures (no network is rebuilt)")
    args = parser.parse_args(argv)
    root = Path(args.sweep_dir)
    if not root.is_dir():
        fail(f"{root} is not a directory")
    levels = sorted(set(args.levels), reverse=True)
    try:
        out, sections = compare_runs(root, args.out, levels, solutions=not args.no_solutions)
    except (FileNotFoundError, rundir.RunDirError, UnsafePathError) as exc:
        fail(str(exc))
    except OSError as exc:  # a read-only file system, a full disk: one line
        from pinn_lora.cli.common import EXIT_OS_ERROR, os_error_line

        fail(os_error_line(exc), EXIT_OS_ERROR)
    import sys

    runs, skipped = find_runs(root)
    for run in runs:
        if run.dropped:
            print(f"compare: {run.path}: {len(run.dropped)} unreadable line(s) of metrics.jsonl left out "
                  f"({run.dropped[0]}{'; ...' if len(run.dropped) > 1 else ''}); the rest of the run is used",
                  file=sys.stderr)
    for note in skipped:
        print(f"compare: skipped {note}", file=sys.stderr)
    for sec in sections:
        print(f"## {sec.title}\n\n{_markdown_table(*table(sec.rows, levels))}\n")
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
