"""Interruption and resume: a run killed with SIGKILL and resumed ends exactly where an
uninterrupted run ends, and metrics.jsonl has every step once."""
import json
import re
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open

import pinn_lora
import pinn_lora.store.checkpoints
from pinn_lora.store import rundir
from pinn_lora.store.tensors import CheckpointError
from pinn_lora.store.rundir import RunDirError
from pinn_lora.runs.adapt import ConfigError

ARGS = ["problem=helmholtz", "method=odelora", "solver=method", "method.precondition=rmsprop", "method.lr=1e-3", "steps=600",
        "n_points=64", "eval_every=50", "checkpoint_every=25", "lbfgs_steps=0", "device=cpu", "progress=false",
        "plots=false", "seed=3"]


def run(out, *extra, wait=True):
    cmd = [sys.executable, "-m", "pinn_lora.adapt", *ARGS, f"out={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def checkpoint_step(path):
    try:
        with safe_open(str(path), "pt") as fh:
            return int(fh.metadata()["step"])
    except Exception:  # not written yet (or being replaced)
        return -1


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# a short resumable run on the shipped Helmholtz base (checkpoints every 2 steps; no continuation stages,
# so the steps and checkpoints are the ones asked for)
SMALL = dict(steps=4, n_points=32, lbfgs_steps=0, device="cpu", progress=False, plots=False, checkpoint_every=2,
             continuation="off")


@pytest.mark.integration  # three 600-step runs in subprocesses, one killed
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    proc = run(cut, wait=False)
    deadline = time.time() + 300
    while checkpoint_step(cut / "checkpoint.safetensors") < 150 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_step(cut / "checkpoint.safetensors")
    assert 150 <= killed_at < 600 and not (cut / "summary.json").exists()
    res = run(cut, "resume=true")
    assert res.returncode == 0, res.stderr[-3000:]
    ref = run(full)
    assert ref.returncode == 0, ref.stderr[-3000:]

    a, b = records(full / "metrics.jsonl"), records(cut / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(600)) == [r["step"] for r in a]  # none repeated, none missing
    worst = 0.0
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k, v in ra.items():
            if k != "time" and isinstance(v, float):
                worst = max(worst, abs(v - rb[k]) / max(abs(v), 1e-300))
            elif k != "time":
                assert v == rb[k], (k, ra["step"])
    assert worst <= 1e-12, worst
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, cut))
    for key in ("adapted_error", "steps", "evaluations", "stability", "status"):
        assert sa[key] == sb[key], key
    print(f"killed after checkpoint {killed_at}; worst relative difference {worst:.1e}")


def test_resume_refusals(tmp_path):
    prob = pinn_lora.get_problem("helmholtz").default_target()
    kw = {**SMALL, "steps": 6}
    with pytest.raises(ConfigError, match="needs the run directory"):
        pinn_lora.adapt_to("helmholtz", prob, "lora", resume=True, **kw)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        pinn_lora.adapt_to("helmholtz", prob, "lora", resume=True, run_dir=tmp_path / "empty", **kw)
    pinn_lora.adapt_to("helmholtz", prob, "lora", run_dir=tmp_path / "done", **kw)
    with pytest.raises(RunDirError, match="finished run"):
        pinn_lora.adapt_to("helmholtz", prob, "lora", resume=True, run_dir=tmp_path / "done", **kw)
    (tmp_path / "done" / "summary.json").unlink()  # as if killed before the end
    with pytest.raises(ConfigError, match=r"other settings \(method.rank: 4 -> 2\)"):
        pinn_lora.adapt_to("helmholtz", prob, "lora", resume=True, run_dir=tmp_path / "done", rank=2, **kw)
    (tmp_path / "done" / "metrics.jsonl").write_text("")
    with pytest.raises(CheckpointError, match="has 0 records, the checkpoint expects"):
        pinn_lora.adapt_to("helmholtz", prob, "lora", resume=True, run_dir=tmp_path / "done", **kw)


def test_a_batched_run_cannot_be_resumed(tmp_path):
    from pinn_lora.runs.from_config import run_config

    cfg = {"problem": {"name": "helmholtz", "k": [2.0, 3.0]}, "method": {"name": "lora"}, "resume": True}
    with pytest.raises(ConfigError, match="cannot be resumed"):
        run_config(cfg, tmp_path)


@pytest.mark.integration  # a live owner process and three runs on the shipped base
def test_resume_takes_over_only_a_directory_whose_owner_is_gone(tmp_path):
    """resume=true on a run whose owner process is alive on this host is refused without touching the
    directory; once the owner is gone the run is taken over and the marker names the new owner (issue 14)."""
    prob = pinn_lora.get_problem("helmholtz").default_target()
    kw = SMALL
    d = tmp_path / "run"
    pinn_lora.adapt_to("helmholtz", prob, "lora", run_dir=d, **kw)
    (d / "summary.json").unlink()  # as if killed before the end
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        marker = json.loads((d / rundir.MARKER).read_text())
        marker.update(status="running", host=socket.gethostname(), pid=owner.pid,
                      pid_start=rundir._process_start(owner.pid))
        (d / rundir.MARKER).write_text(json.dumps(marker))
        before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
        with pytest.raises(RunDirError, match=rf"is in use by a running pinn_lora run \(running; pid {owner.pid} on"):
            pinn_lora.adapt_to("helmholtz", prob, "lora", resume=True, run_dir=d, **kw)
        assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
    finally:
        owner.kill()
        owner.wait()
    res = pinn_lora.adapt_to("helmholtz", prob, "lora", resume=True, run_dir=d, **kw)
    assert res.history.steps == 4 and (d / "summary.json").is_file()
    marker = json.loads((d / rundir.MARKER).read_text())
    assert marker["pid"] == os.getpid() and marker["status"] == "finished"
    assert marker["taken_over_from"]["pid"] == owner.pid and marker["taken_over_from"]["status"] == "running"
    assert not list(d.glob(f"{rundir.MARKER}.*"))  # the old marker moved aside is gone


def test_a_failed_run_is_marked_and_can_be_resumed(tmp_path, monkeypatch):
    """A run that fails after its claim keeps its directory, marked failed (marker and summary.json); resume
    continues it from its last checkpoint."""
    from pinn_lora.training.trainer import Trainer

    prob = pinn_lora.get_problem("helmholtz").default_target()
    kw = SMALL
    d = tmp_path / "run"
    real = Trainer.run

    def interrupted(self):
        self.cfg.steps = 2  # the first two steps and their checkpoint, then Ctrl-C
        real(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pinn_lora.adapt_to("helmholtz", prob, "lora", run_dir=d, **kw)
    monkeypatch.setattr(Trainer, "run", real)
    assert json.loads((d / "summary.json").read_text()) == {"status": "failed", "message": "KeyboardInterrupt"}
    assert json.loads((d / rundir.MARKER).read_text())["status"] == "failed"
    assert (d / "metrics.jsonl").is_file() and (d / "checkpoint.safetensors").is_file()
    res = pinn_lora.adapt_to("helmholtz", prob, "lora", resume=True, run_dir=d, **kw)
    assert res.history.steps == 4 and json.loads((d / "summary.json").read_text())["status"] == "completed"


def test_a_damaged_checkpoint_is_one_line(tmp_path):
    """A checkpoint lacking a key of its state (dynamics), or holding a NaN weight, is refused at load with one
    line (issue 14, items 15 and 8; main raised KeyError from the loop, or resumed NaN weights)."""
    from safetensors.torch import load_file, save_file

    prob = pinn_lora.get_problem("helmholtz").default_target()
    kw = SMALL
    d = tmp_path / "run"
    pinn_lora.adapt_to("helmholtz", prob, "lora", run_dir=d, **kw)
    (d / "summary.json").unlink()  # as if killed before the end
    ckpt = d / "checkpoint.safetensors"
    with safe_open(str(ckpt), "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(ckpt))
    state = json.loads(meta["__resume__"])
    del state["dynamics"]
    save_file(tensors, str(ckpt), metadata={**meta, "__resume__": json.dumps(state)})
    with pytest.raises(CheckpointError, match=r"checkpoint.safetensors: the checkpoint lacks dynamics \(damaged") as info:
        pinn_lora.adapt_to("helmholtz", prob, "lora", resume=True, run_dir=d, **kw)
    assert "\n" not in str(info.value)
    key = next(k for k, t in tensors.items() if t.dim() == 2 and not k.startswith("__resume__"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(ckpt), metadata=meta)
    with pytest.raises(CheckpointError, match=rf"{key} holds 1 non-finite value \(NaN or inf\)"):
        pinn_lora.adapt_to("helmholtz", prob, "lora", resume=True, run_dir=d, **kw)


SIGNAL_ARGS = ["problem=helmholtz", "method=lora", "solver=method", "steps=120", "n_points=32", "eval_every=20",
               "checkpoint_every=50", "lbfgs_steps=0", "device=cpu", "progress=false", "plots=false", "seed=1"]


def _signal_run(out, *extra, wait=True):
    cmd = [sys.executable, "-m", "pinn_lora.adapt", *SIGNAL_ARGS, f"out={out}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_writes_a_checkpoint_and_says_how_to_resume(sig, tmp_path):
    """Ctrl-C / SIGTERM (issue 14, item 12): a checkpoint of the last verified state (not the last periodic
    one), one line with the exact resume command, exit 130 / 143, no traceback; the resumed run's records
    equal an uninterrupted run's."""
    import shlex

    cut = tmp_path / "cut"
    proc = _signal_run(cut, wait=False)
    deadline = time.time() + 300
    metrics = cut / "metrics.jsonl"
    while proc.poll() is None and time.time() < deadline and (
            not metrics.is_file() or len(metrics.read_text().splitlines()) < 12):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the signal: " + proc.stderr.read()[-2000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: interrupted by {signal.Signals(sig).name} at step ")
    step = checkpoint_step(cut / "checkpoint.safetensors")
    assert 12 <= step < 50, (step, lines[0])  # a checkpoint after the signal, not the periodic one (none yet)
    assert f"holds the last verified state (step {step})" in lines[0]
    assert len(records(metrics)) == step + 1  # the records up to the step that verified it
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert json.loads((cut / rundir.MARKER).read_text())["status"] == "interrupted"
    command = lines[0].split("; resume with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "pinn_lora.adapt"] and f"out={cut}" in argv and argv[-1] == "resume=true"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    res = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = _signal_run(tmp_path / "full")
    assert ref.returncode == 0, ref.stderr[-3000:]
    a, b = records(tmp_path / "full" / "metrics.jsonl"), records(metrics)
    assert [r["step"] for r in b] == list(range(120)) == [r["step"] for r in a]
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "time"} == {k: v for k, v in rb.items() if k != "time"}


@pytest.mark.integration  # a long resume test
def test_sigint_in_the_loop_checkpoints_the_next_verified_state(tmp_path, monkeypatch):
    """In-process: a SIGINT during step 3 asks the loop to stop; the checkpoint captured before step 4 is
    written once step 4's loss verifies it, then Interrupted (a KeyboardInterrupt) carries its step."""
    from pinn_lora.training.trainer import Interrupted, Trainer

    prob = pinn_lora.get_problem("helmholtz").default_target()
    kw = dict(steps=10, n_points=32, lbfgs_steps=0, device="cpu", progress=False, plots=False, checkpoint_every=0)
    real = Trainer._take

    def take(self, out):
        if out.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, out)

    monkeypatch.setattr(Trainer, "_take", take)
    d = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when started in the background
    with pytest.raises(Interrupted, match=r"interrupted by SIGINT at step 4; the checkpoint .* holds the last "
                                          r"verified state \(step 4\)") as info:
        pinn_lora.adapt_to("helmholtz", prob, "lora", run_dir=d, **kw)
    assert info.value.exit_code == 130 and checkpoint_step(d / "checkpoint.safetensors") == 4
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back
    monkeypatch.setattr(Trainer, "_take", real)
    res = pinn_lora.adapt_to("helmholtz", prob, "lora", run_dir=d, resume=True, **kw)
    ref = pinn_lora.adapt_to("helmholtz", prob, "lora", **kw)
    assert [r["loss"] for r in res.history.records] == [r["loss"] for r in ref.history.records]


def _retag(obj, device, path=""):
    """The packed resume state with every tensor tagged ``device``, as a GPU run writes it (its CPU generator
    state, ``torch_rng``, stays on the CPU)."""
    if isinstance(obj, list):
        return [_retag(v, device, path) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return obj if path.startswith("/torch_rng") else {**obj, "device": device}
        if "__dict__" in obj:
            return {"__dict__": {k: _retag(v, device, f"{path}/{k}") for k, v in obj["__dict__"].items()}}
        return {k: _retag(v, device, f"{path}/{k}" if k not in ("__map__", "__tuple__") else path)
                for k, v in obj.items()}
    return obj


@pytest.mark.parametrize("recorded", [True, False], ids=["run device recorded", "older checkpoint"])
def test_a_gpu_checkpoint_resumes_on_a_cpu(recorded, tmp_path):
    """A checkpoint whose tensors are tagged cuda:0 (crafted: written as a GPU run writes them) resumes on a
    CPU-only run to the records of an uninterrupted run (issue 14, item 13; main: 'Torch not compiled with
    CUDA'). Loading stays safetensors + JSON (nothing unpickled)."""
    from safetensors.torch import load_file, save_file

    from pinn_lora.store import checkpoints as resume_state

    prob = pinn_lora.get_problem("helmholtz").default_target()
    kw = dict(steps=6, n_points=32, lbfgs_steps=0, device="cpu", progress=False, plots=False, checkpoint_every=3,
              eval_every=2, solver="method")
    d = tmp_path / "run"
    ref = pinn_lora.adapt_to("helmholtz", prob, "odelora", run_dir=d, **kw)
    (d / "summary.json").unlink()  # as if stopped after its checkpoint at step 3
    ckpt = d / "checkpoint.safetensors"
    with safe_open(str(ckpt), "pt") as fh:
        meta = fh.metadata()
    state = {"format": 1, **_retag({"__dict__": {k: v for k, v in json.loads(meta["__resume__"]).items()
                                                  if k != "format"}}, "cuda:0")["__dict__"]}
    assert state["device"] == "cpu"
    if recorded:
        state["device"] = "cuda:0"
    else:
        del state["device"]
    tags = {m.group(1) for m in re.finditer(r'"device": "([^"]+)"', json.dumps(state))}
    assert tags == {"cuda:0", "cpu"}
    save_file(load_file(str(ckpt)), str(ckpt), metadata={**meta, "__resume__": json.dumps(state)})
    _, loaded = resume_state.load(ckpt, "cpu")
    assert loaded["torch_rng"].device.type == "cpu" and loaded["guard"]["best"]["tensors"][0].device.type == "cpu"
    res = pinn_lora.adapt_to("helmholtz", prob, "odelora", run_dir=d, resume=True, **kw)
    assert [r["loss"] for r in res.history.records] == [r["loss"] for r in ref.history.records]
    assert res.error == ref.error


class _StopAt(pinn_lora.training.trainer.Monitor):
    """Raises at a step (a process killed there)."""

    def __init__(self, at):
        self.at = at

    def on_record(self, record):
        if record.get("step") == self.at:
            raise KeyboardInterrupt("killed")


def test_pretraining_resumes_to_the_network_an_uninterrupted_run_gives(tmp_path):
    """pretrain_base with checkpoints, killed in its L-BFGS phase, resumed: the network is bit-identical to an
    uninterrupted run's; a resume with other settings is refused."""
    from pinn_lora.runs.pretrain import pretrain_base
    from pinn_lora.training.trainer import TrainConfig

    prob = pinn_lora.get_problem("helmholtz")
    kw = dict(layers=[2, 8, 8, 1], activation="sin", lr=1e-2, device="cpu")
    cfg = TrainConfig(steps=8, n_points=64, resample_every=3, lbfgs_steps=6, lbfgs_points=64, eval_every=4,
                      progress=False, checkpoint_every=3)
    whole, _ = pretrain_base(prob, train=cfg, **kw)
    ck = tmp_path / "checkpoint.safetensors"
    with pytest.raises(KeyboardInterrupt):
        pretrain_base(prob, train=cfg, checkpoint=ck, monitors=(_StopAt(8),), **kw)  # the L-BFGS phase: one record
    assert pinn_lora.store.checkpoints.load(ck)[1]["phase"] == "lbfgs"  # the last checkpoint is in the L-BFGS phase
    with pytest.raises(ValueError, match=r"started with other settings \(lr: 0.01 -> 0.02\)"):
        pretrain_base(prob, train=cfg, checkpoint=ck, resume=True, **{**kw, "lr": 2e-2})
    resumed, card = pretrain_base(prob, train=cfg, checkpoint=ck, resume=True, monitors=(_StopAt(None),), **kw)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert card["steps"] == 14 and card["status"] == "completed"
