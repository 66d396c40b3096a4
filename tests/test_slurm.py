"""Sweeps through a launcher, for real: SLURM (``hydra/launcher=slurm``, submitit) against the one-node cluster
of ``scripts/slurm_local.sh``, and the local joblib launcher (``hydra/launcher=local``), with the same tests.

- a 12-run sweep (2 methods x 2 seeds x 3 coefficients, 20 steps each): one job is stopped while it runs
  (``scancel`` on SLURM, SIGTERM to its process locally); the sweep runs the other 11 to their end, names the
  stopped job and exits 5; the same command with ``resume=true`` runs only that job, from its checkpoint, and
  its records equal an uninterrupted run's; all 12 land in the sweep layout and ``compare`` reads them;
- a job given a bad value fails on its own: the sweep names it, its error line and exit code, and exits 5;
  resuming does not run the finished job again.

The SLURM tests need a running cluster (``scripts/slurm_local.sh start``); without one they are skipped, unless
``PINN_LORA_REQUIRE_SLURM=1`` (CI), where they fail."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pinn_lora.runs import compare

pytestmark = pytest.mark.integration

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)
ROOT = Path(__file__).resolve().parents[1]
TINY = ["problem=helmholtz", "n_points=64", "lbfgs_steps=0", "plots=false", "progress=false", "device=cpu",
        "continuation=off", "checkpoint_every=1", "eval_every=5"]
SWEEP = ["method=lora,odelora", "seed=0,1", "problem.k=2.6,2.8,3", "steps=20"]  # 12 runs
LAUNCHER = {"slurm": ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                      "hydra.launcher.timeout_min=10"],
            "local": ["hydra/launcher=local", "hydra.launcher.n_jobs=2"]}


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return res.returncode == 0 and any(s.strip().startswith(("idle", "mix", "alloc")) for s in res.stdout.split())


@pytest.fixture(params=[pytest.param("slurm", marks=pytest.mark.slurm), "local"])
def launcher(request):
    if request.param == "slurm" and not _slurm_up():
        if os.environ.get("PINN_LORA_REQUIRE_SLURM") == "1":
            pytest.fail("no SLURM cluster (sinfo shows no idle node); start one with scripts/slurm_local.sh start")
        pytest.skip("no SLURM cluster: scripts/slurm_local.sh start")
    pytest.importorskip({"slurm": "hydra_plugins.hydra_submitit_launcher",
                         "local": "hydra_plugins.hydra_joblib_launcher"}[request.param])
    return request.param


def adapt(*args, cwd, wait=True):
    cmd = [sys.executable, "-m", "pinn_lora.adapt", *map(str, args)]
    if wait:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=900)
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def records(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def status(run_dir: Path) -> str:
    return json.loads((run_dir / "summary.json").read_text())["status"]


def checkpoint_exists(run_dir: Path) -> bool:
    return (run_dir / "checkpoint.safetensors").is_file() and (run_dir / "metrics.jsonl").is_file()


def stop(launcher: str, sweep: Path, run_dir: Path, num: int) -> None:
    """Stop job ``num`` while it runs: scancel on SLURM, SIGTERM to its process locally."""
    if launcher == "slurm":
        arrays = [p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
        assert len(arrays) == 1, arrays
        subprocess.run(["scancel", f"{arrays[0]}_{num}"], check=True)
    else:
        os.kill(json.loads((run_dir / ".pinn_lora_run.json").read_text())["pid"], signal.SIGTERM)


def same_records(a: list, b: list) -> float:
    """The worst relative difference of two runs' records (every field but ``time``; the others equal)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    worst = 0.0
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for key, value in ra.items():
            if key == "time":
                continue
            if isinstance(value, float):
                worst = max(worst, abs(value - rb[key]) / max(abs(value), 1e-300))
            else:
                assert value == rb[key], (key, ra["step"])
    return worst


def test_sweep_of_12_runs_stopped_job_named_then_resumed(launcher, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *LAUNCHER[launcher], *TINY, *SWEEP, f"hydra.sweep.dir={sweep}"]
    t0 = time.time()
    proc = adapt(*args, cwd=tmp_path, wait=False)
    # job 0 (lora, seed 0, k = 2.6) is among the first to start; stop it once it has written a checkpoint
    deadline = time.time() + 600
    victim = None
    while time.time() < deadline and proc.poll() is None:
        found = [d for d in sweep.glob("helmholtz/*/0") if checkpoint_exists(d)]
        if found:
            victim = found[0]
            break
        time.sleep(0.05)
    assert victim is not None, "job 0 never wrote a checkpoint: " + (proc.communicate()[1][-3000:])
    stop(launcher, sweep, victim, 0)
    out, err = proc.communicate(timeout=900)
    first = time.time() - t0
    assert proc.returncode == 5, err[-3000:]
    word = "cancelled" if launcher == "slurm" else "interrupted"
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert lines[-1].startswith("error: 1 of 12 jobs did not finish: helmholtz/lora/0 (method=lora seed=0 "
                                f"problem.k=2.6) {word}"), err[-3000:]
    assert "resume=true" in lines[-1]
    runs = sorted((d for d in sweep.glob("helmholtz/*/*") if d.name.isdigit()), key=lambda d: int(d.name))
    assert [d.relative_to(sweep).as_posix() for d in runs] == (
        [f"helmholtz/lora/{i}" for i in range(6)] + [f"helmholtz/odelora/{i}" for i in range(6, 12)])
    assert status(victim) == "interrupted" and len(records(victim)) < 20
    assert all(status(d) == "completed" for d in runs if d != victim)
    finished = {d: (d / "summary.json").stat().st_mtime_ns for d in runs if d != victim}

    # the same sweep again with resume=true: only the stopped job runs, from its checkpoint; meanwhile an
    # uninterrupted run of that job's configuration, on this machine, for the comparison
    t0 = time.time()
    proc = adapt(*args, "resume=true", cwd=tmp_path, wait=False)
    overrides = [o for o in yaml.safe_load((victim / ".hydra" / "overrides.yaml").read_text())
                 if not o.startswith("out=")]
    ref = adapt(*overrides, f"out={tmp_path / 'ref'}", cwd=tmp_path)
    out, err = proc.communicate(timeout=900)
    again = time.time() - t0
    assert proc.returncode == 0, err[-3000:]
    assert ref.returncode == 0, ref.stderr[-3000:]
    if launcher == "slurm":
        assert "1 SLURM jobs submitted" in err and "11 finished already" in err, err[-2000:]
    assert all(status(d) == "completed" for d in runs)
    assert {d: (d / "summary.json").stat().st_mtime_ns for d in finished} == finished  # not run again
    marker = json.loads((victim / ".pinn_lora_run.json").read_text())
    assert marker["taken_over_from"]["status"] == "interrupted"  # resumed in place, from its checkpoint
    worst = same_records(records(tmp_path / "ref"), records(victim))
    assert worst <= 1e-12, worst
    a, b = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "ref", victim))
    for key in ("adapted_error", "steps", "evaluations", "validation_residual", "status"):
        assert a[key] == b[key], key
    assert [j["state"] for j in json.loads((sweep / "jobs.json").read_text())["jobs"]] == ["completed"] * 12

    # compare reads all 12
    res = subprocess.run([sys.executable, "-m", "pinn_lora.compare", str(sweep), "--no-solutions"], cwd=tmp_path,
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    found, _ = compare.find_runs(sweep)
    assert len(found) == 12 and sorted({r.method for r in found}) == ["lora", "odelora"]
    assert (sweep / "report" / "report.md").is_file()
    print(f"{launcher}: 12-run sweep with one job stopped {first:.0f} s, resumed {again:.0f} s; "
          f"resumed job vs uninterrupted run: worst relative difference {worst:.1e}")


def test_failed_job_is_named_and_resume_runs_only_what_is_missing(launcher, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *LAUNCHER[launcher], *TINY, "method=lora", "method.rank=4,0", "steps=3",
            f"hydra.sweep.dir={sweep}"]
    res = adapt(*args, cwd=tmp_path)
    assert res.returncode == 5, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert lines[-1].startswith("error: 1 of 2 jobs did not finish: helmholtz/lora/1 (method.rank=0) failed"), lines
    assert "exit code 2: method lora: option rank=0 must be > 0" in lines[-1]
    jobs = json.loads((sweep / "jobs.json").read_text())["jobs"]
    assert [(j["num"], j["state"], j["exit_code"]) for j in jobs] == [(0, "completed", None), (1, "failed", 2)]
    assert status(sweep / "helmholtz" / "lora" / "0") == "completed"
    kept = (sweep / "helmholtz" / "lora" / "0" / "summary.json").stat().st_mtime_ns
    res = adapt(*args, "resume=true", cwd=tmp_path)  # the finished job is kept; the bad one fails again
    assert res.returncode == 5, res.stderr[-3000:]
    assert (sweep / "helmholtz" / "lora" / "0" / "summary.json").stat().st_mtime_ns == kept
    if launcher == "slurm":
        assert "1 SLURM jobs submitted" in res.stderr and "1 finished already" in res.stderr
    assert "helmholtz/lora/1 (method.rank=0) failed" in res.stderr
