"""What became of each job of a sweep, and finishing a sweep with ``resume=true``.

pinn_lora's launcher presets (``hydra/launcher=slurm``: SLURM through submitit; ``hydra/launcher=local``:
joblib on this machine; both in :mod:`hydra_plugins.pinn_lora_launchers`) wait for every job of a sweep,
also after one of them failed or was cancelled, and record each job's end in ``<sweep>/jobs.json``
(:func:`record`): its number, run directory, overrides, state (``completed``, ``failed``, ``cancelled``,
``timeout``, ``interrupted`` …), exit code, the job's last ``error:`` line and, on SLURM, its job id.
After the sweep, :func:`unfinished_message` names the jobs that did not complete; the command then exits with
:data:`EXIT_JOBS_FAILED`. Re-running the same sweep with ``resume=true`` continues each job as
:func:`resume_action` says: a finished run is left as it is, an interrupted one continues from its checkpoint,
one that never started starts. This module knows files only (and :mod:`pinn_lora.store.rundir`)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from pinn_lora.store import rundir

JOBS = "jobs.json"
EXIT_JOBS_FAILED = 5  # a sweep in which a job failed, was cancelled or ran out of time (it ran all the others)
COMPLETED = "completed"


def error_line(text: str | None) -> str | None:
    """The last ``error: ...`` line of a job's output (without the prefix), or None."""
    lines = [ln.split("error: ", 1)[1].strip() for ln in (text or "").splitlines() if ln.startswith("error: ")]
    return lines[-1] if lines else None


def slurm_state(state: str | None) -> str:
    """A SLURM job state (``CANCELLED by 0``, ``FAILED``, ``OUT_OF_MEMORY`` …) as a job's state here."""
    word = (state or "unknown").split()[0].lower()
    return {"out_of_memory": "out of memory", "node_fail": "node failure"}.get(word, word)


def signal_state(code: int | None) -> str | None:
    """``interrupted`` for the exit codes of a run stopped by Ctrl-C, SIGTERM or SLURM's warning before its
    time limit, SIGUSR2 (130, 143, 140), else None."""
    return "interrupted" if code in (130, 143, 140) else None


def srun_exit_code(text: str | None) -> int | None:
    """The exit code srun reports in a SLURM job's log (``... task 0: Exited with exit code 2``)."""
    found = re.findall(r"Exited with exit code (\d+)", text or "")
    return int(found[-1]) if found else None


def record(sweep_dir: str | Path, outcomes: Iterable[Mapping[str, Any]]) -> None:
    """Write the jobs' ends into ``<sweep>/jobs.json``, replacing the entries of the same job numbers (a resumed
    sweep records its jobs' new ends; the others are kept)."""
    path = Path(sweep_dir) / JOBS
    jobs = {int(j["num"]): j for j in read(sweep_dir)}
    for outcome in outcomes:
        jobs[int(outcome["num"])] = dict(outcome)
    text = json.dumps({"jobs": [jobs[k] for k in sorted(jobs)]}, indent=2) + "\n"
    rundir.write_atomic(path, text.encode())


def read(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The jobs recorded in ``<sweep>/jobs.json`` (none when there is no such file, e.g. a sweep run by Hydra's
    basic launcher, which stops at the first failed job)."""
    try:
        data = json.loads((Path(sweep_dir) / JOBS).read_text())
    except (OSError, ValueError):
        return []
    jobs = data.get("jobs") if isinstance(data, dict) else None
    return [j for j in jobs if isinstance(j, dict) and "num" in j] if isinstance(jobs, list) else []


def describe(job: Mapping[str, Any]) -> str:
    """``burgers/lora/3 (seed=1 method=lora) failed, exit code 2: <its error line>``: one job in words."""
    where = job.get("dir") or f"job {job.get('num')}"
    overrides = " ".join(job.get("overrides") or [])
    text = f"{where} ({overrides})" if overrides else str(where)
    text += f" {job.get('state', 'unknown')}"
    if job.get("job_id"):
        text += f" [SLURM job {job['job_id']}]"
    if job.get("exit_code") not in (None, 0):
        text += f", exit code {job['exit_code']}"
    if job.get("message"):
        text += f": {job['message']}"
    return text


def unfinished_message(sweep_dir: str | Path) -> str | None:
    """The message naming the jobs of the sweep that did not complete (None when all did, or none is recorded)."""
    jobs = read(sweep_dir)
    bad = [j for j in jobs if j.get("state") != COMPLETED]
    if not bad:
        return None
    return (f"{len(bad)} of {len(jobs)} jobs did not finish: " + "; ".join(describe(j) for j in bad)
            + ". Finish them with the same command plus resume=true (finished runs are kept, interrupted ones "
              "continue from their checkpoint)")


def resume_action(run_dir: str | Path) -> str:
    """What a job of a sweep given ``resume=true`` does with its run directory: ``skip`` (it holds a finished
    run: completed, diverged or without improvement), ``start`` (nothing there yet: the job never started, or
    stopped before it claimed the directory, e.g. on bad input) or ``resume`` (an interrupted or failed run:
    it continues from its checkpoint, or says why it cannot)."""
    path = Path(run_dir)
    if not path.is_dir() or rundir.read_marker(path) is None:
        return "start" if not path.is_dir() or not any(path.iterdir()) else "resume"
    try:
        status = json.loads((path / rundir.SUMMARY).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    return "skip" if status is not None and status not in rundir.RESUMABLE else "resume"
