"""Run directories owned by exactly one run (issue 14, "Data loss"): the claim helper
(:mod:`pinn_lora.store.rundir`) and what the CLI and the API do with it. Process-level cases (two real
runs on one ``out=``) are marked ``integration``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pinn_lora
from pinn_lora.store import rundir
from pinn_lora.store.rundir import MARKER, RunDirError

TINY = dict(steps=2, n_points=32, lbfgs_steps=0, device="cpu", progress=False, plots=False, checkpoint_every=0)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_claim_is_exclusive(tmp_path, monkeypatch):
    d = tmp_path / "a" / "run"
    first = rundir.claim(d)
    info = json.loads((d / MARKER).read_text())
    assert info["pid"] == os.getpid() and info["status"] == "running" and info["kind"] == "run"
    assert {"host", "pid_start", "started", "token"} <= set(info)
    for resume in (False, True):  # its owner (this process's claim) is alive
        with pytest.raises(RunDirError, match=rf"run directory {d} is in use by a running pinn_lora run \(running; pid"):
            rundir.claim(d, resume=resume)
    # both saw an empty directory: the exclusive create decides
    monkeypatch.setattr(rundir, "check", lambda *a, **k: None)
    with pytest.raises(RunDirError, match="was claimed a moment ago by another run"):
        rundir.claim(d)
    monkeypatch.undo()
    first.release()
    assert json.loads((d / MARKER).read_text())["status"] == "finished"
    with pytest.raises(RunDirError, match=r"already holds a previous run \(finished"):
        rundir.check(d)
    rundir.check(d, resume=True)  # the owner is gone


def test_failure_after_the_claim_marks_and_keeps(tmp_path):
    d = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        with rundir.claim(d):
            (d / "metrics.jsonl").write_text("{}\n")
            1 / 0
    assert (d / "metrics.jsonl").read_text() == "{}\n"
    assert json.loads((d / "summary.json").read_text()) == {
        "status": "failed", "message": "ZeroDivisionError: division by zero; it stopped before its first checkpoint, "
                                       "so resume=true cannot continue it: start it again in a new directory "
                                       "(another out=...)"}
    assert json.loads((d / MARKER).read_text())["status"] == "failed"


@pytest.mark.integration  # several whole runs or reports (seconds): with the integration tests
def test_adapt_never_overwrites_an_earlier_adapter(tmp_path):
    """adapt_to(run_dir=d) into a directory holding a run, and save_adapter into a directory holding an adapter,
    are refused and change nothing (issue 14, item 6; main overwrote adapter.safetensors and card.json)."""
    prob = pinn_lora.get_problem("helmholtz").default_target()
    d = tmp_path / "run"
    first = pinn_lora.adapt_to("helmholtz", prob, "lora", run_dir=d, seed=0, **TINY)
    before = files(d)
    with pytest.raises(RunDirError, match=r"run directory .* already holds a previous run \(finished"):
        pinn_lora.adapt_to("helmholtz", prob, "lora", run_dir=d, seed=1, **TINY)
    with pytest.raises(FileExistsError, match=r"already holds an adapter \(adapter.safetensors, card.json\)"):
        pinn_lora.save_adapter(first.model, d, first.method, prob)
    with pytest.raises(RunDirError, match="already holds a previous run"):
        first.save(d)
    assert files(d) == before
    plain = tmp_path / "adapters"  # save_adapter alone: a second save into one directory is refused too
    pinn_lora.save_adapter(first.model, plain, first.method, prob)
    saved = files(plain)
    with pytest.raises(FileExistsError):
        pinn_lora.save_adapter(first.model, plain, first.method, prob, note="again")
    assert files(plain) == saved
    first.save(tmp_path / "copy")  # a new directory is claimed for the copy
    assert json.loads((tmp_path / "copy" / MARKER).read_text())["status"] == "finished"


@pytest.mark.integration  # several whole runs or reports (seconds): with the integration tests
def test_adapt_many_claims_its_directory(tmp_path):
    from pinn_lora.runs.many import adapt_many

    probs = [pinn_lora.get_problem("helmholtz", k=k) for k in (2.0, 3.0)]
    kw = {k: v for k, v in TINY.items() if k != "checkpoint_every"}
    adapt_many("helmholtz", probs, "lora", run_dir=tmp_path / "b", **kw)
    assert json.loads((tmp_path / "b" / MARKER).read_text())["status"] == "finished"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [MARKER, "00_k=2", "01_k=3"]
    before = files(tmp_path / "b")
    with pytest.raises(RunDirError, match="already holds a previous run"):
        adapt_many("helmholtz", probs, "lora", run_dir=tmp_path / "b", **kw)
    assert files(tmp_path / "b") == before


# ---- two real processes -------------------------------------------------------------------------------------
def _cli(*args, cwd, wait=True):
    cmd = [sys.executable, "-m", "pinn_lora.adapt", *map(str, args)]
    if wait:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=600)
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


RUN = ["problem=helmholtz", "method=lora", "n_points=64", "lbfgs_steps=0", "progress=false", "plots=false",
       "device=cpu", "continuation=off"]


@pytest.mark.integration
def test_a_bad_run_never_deletes_a_live_run(tmp_path):
    """A good run and a bad one (method.alpha=-1) started together on one out= (as with the default out in the
    same second): the bad one exits 2, the good one's directory is intact (issue 14, item 1)."""
    out = tmp_path / "run"
    good = _cli(*RUN, "steps=300", "eval_every=100", f"out={out}", cwd=tmp_path, wait=False)
    deadline = time.time() + 120
    while not (out / MARKER).exists() and good.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    bad = _cli(*RUN, "steps=300", "eval_every=100", "method.alpha=-1", f"out={out}", cwd=tmp_path)
    stdout, stderr = good.communicate(timeout=600)
    assert good.returncode == 0, stderr[-2000:]
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert all((out / name).is_file() for name in (".hydra/config.yaml", "summary.json", "adapter.safetensors"))
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == list(range(300))


@pytest.mark.integration
@pytest.mark.parametrize("first,second", [(0, 1), (1, 0)])
def test_two_runs_never_share_a_directory(tmp_path, first, second):
    """Two runs given one out= at once: exactly one runs there, the other is refused with one line and writes
    nothing (issue 14, item 2; on main both exited 0 and metrics.jsonl held both runs' records)."""
    out = tmp_path / "run"
    procs = {seed: _cli(*RUN, "steps=20", "eval_every=10", f"seed={seed}", f"out={out}", cwd=tmp_path, wait=False)
             for seed in (first, second)}
    results = {seed: (p.communicate(timeout=600), p.returncode) for seed, p in procs.items()}
    winners = [seed for seed, (_, rc) in results.items() if rc == 0]
    assert len(winners) == 1, {seed: (rc, err[-500:]) for seed, ((_, err), rc) in results.items()}
    (loser,) = set(results) - set(winners)
    (_, err), rc = results[loser]
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ") and str(out) in err, err
    assert "is in use by a running pinn_lora run" in err or "already holds a previous run" in err or \
        "was claimed a moment ago" in err
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == list(range(20))
    assert json.loads((out / "summary.json").read_text())["seed"] == winners[0]
    assert json.loads((out / MARKER).read_text())["status"] == "finished"
    assert f"seed={winners[0]}" in (out / ".hydra" / "overrides.yaml").read_text()


MEMORY_CASES = [  # (points, layers, dtype, machine bytes, refused)
    (2000, [2, 64, 64, 64, 1], torch.float64, 2**30, False),
    (10**6, [2, 64, 64, 64, 1], torch.float64, 2**30, True),  # ~3 GB at least, 1 GB there
    (10**6, [2, 64, 64, 64, 1], torch.float32, 2**32, False),
    (10**9, [2, 64, 64, 64, 64, 1], torch.float64, 2**40, True),  # the n_points=1e9: ~4 TB
    (10**5, [2, 20, 1], torch.float64, None, False),  # memory unknown: nothing refused
]


@pytest.mark.parametrize("n,layers,dtype,have,refused", MEMORY_CASES)
def test_memory_bound_refuses_before_allocating(n, layers, dtype, have, refused, monkeypatch):
    """Issue 14, item 14: a lower bound of one step's memory (points + activations) against the device's."""
    from pinn_lora.model import memory

    monkeypatch.setattr(memory, "device_memory", lambda device: have)
    if not refused:
        memory.check_points(n, layers, dtype, "cpu")
        return
    with pytest.raises(ValueError, match=rf"^n_points={n} needs at least .* of memory for one step .*more than the "
                                         r"1\.0 (GB|TB) of cpu; use fewer points \(fewer than \d+\)$"):
        memory.check_points(n, layers, dtype, "cpu")


def test_early_death_leaves_a_directory_marked_with_how_to_start_over(tmp_path, monkeypatch):
    """A run that dies before its first checkpoint (an out-of-memory error, say) leaves no dead end: its
    directory is marked failed saying how to start over, and resume=true says there is nothing to resume."""
    from pinn_lora.store.tensors import CheckpointError
    from pinn_lora.training.trainer import Trainer

    def out_of_memory(self):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Trainer, "run", out_of_memory)
    prob = pinn_lora.get_problem("helmholtz").default_target()
    d = tmp_path / "run"
    with pytest.raises(RuntimeError):
        pinn_lora.adapt_to("helmholtz", prob, "lora", run_dir=d, **{**TINY, "checkpoint_every": 1})
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["message"].startswith("RuntimeError: CUDA out of memory")
    assert "before its first checkpoint, so resume=true cannot continue it: start it again in a new directory" in \
        summary["message"]
    assert json.loads((d / MARKER).read_text())["status"] == "failed"
    with pytest.raises(CheckpointError, match="nothing to resume: no checkpoint .*stopped before its first checkpoint"):
        pinn_lora.adapt_to("helmholtz", prob, "lora", run_dir=d, resume=True, **{**TINY, "checkpoint_every": 1})


def test_a_marker_on_its_way_in_is_another_runs_claim(tmp_path):
    """The race CI met (two runs given one out= at once): the first run's marker is still its temp file when
    the second looks; that is a claim a moment ago, not a directory pinn_lora did not create."""
    from pinn_lora.store import rundir

    out = tmp_path / "run"
    out.mkdir()
    (out / f".{rundir.MARKER}.k2j4x9.tmp").write_text("{}")
    with pytest.raises(rundir.RunDirError, match="was claimed a moment ago by another run"):
        rundir.check(out)
    (out / "notes.txt").write_text("mine")  # anything else: not pinn_lora's directory
    with pytest.raises(rundir.RunDirError, match="was not created by pinn_lora"):
        rundir.check(out)
