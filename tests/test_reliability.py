"""Reliability: nothing written through a symbolic link or into a folder pinn_lora does not own, nothing
lost in the last seconds of a run, files that follow the umask, and refused commands that change no file."""
from __future__ import annotations

import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest
import torch

import pinn_lora
from pinn_lora.cli import compare as compare_cli
from pinn_lora.runs import compare
from pinn_lora.store import rundir
from pinn_lora.store import safe_io
from pinn_lora.model.network import build_network

from test_bad_input import assert_one_line, cli, snapshot
from test_compare import sweep  # noqa: F401 (the fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(steps=3, n_points=32, lbfgs_steps=0, device="cpu", progress=False, plots=False, continuation="off",
            eval_every=1)
G = ["problem=burgers", "method=lora", "steps=3", "n_points=64", "lbfgs_steps=0", "plots=false", "progress=false",
     "device=cpu", "continuation=off"]


def _base(name="burgers"):
    prob = pinn_lora.get_problem(name)
    net = build_network([2, 8, 8, 1], "tanh", seed=0, output_transform=prob.output_transform)
    return net, {"problem": name, "coefficients": prob.coefficients, "network": net.architecture()}


def _target(name="burgers"):
    return pinn_lora.get_problem(name).default_target()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- safe_io: every write checks each component for a link --------------------------------------------------
def test_write_through_a_link_below_the_root_is_refused(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir(), elsewhere.mkdir()
    (elsewhere / "a.png").write_bytes(b"theirs")
    (root / "figs").symlink_to(elsewhere)
    with pytest.raises(safe_io.UnsafePathError, match="is a symbolic link .*never through a link"):
        safe_io.write_bytes(root / "figs" / "a.png", b"ours", root=root)
    (root / "r.md").symlink_to(elsewhere / "a.png")
    with pytest.raises(safe_io.UnsafePathError, match="r.md is a symbolic link"):
        safe_io.write_bytes(root / "r.md", b"ours", root=root)
    with pytest.raises(safe_io.UnsafePathError):
        safe_io.open_append(root / "figs" / "m.jsonl", root)
    assert (elsewhere / "a.png").read_bytes() == b"theirs" and sorted(os.listdir(elsewhere)) == ["a.png"]
    assert (root / "r.md").is_symlink()  # the link is not removed either


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        safe_io.write_bytes(tmp_path / "a" / "f.bin", b"x", root=tmp_path)
        assert _mode(tmp_path / "a" / "f.bin") == 0o644 and _mode(tmp_path / "a") == 0o755
        os.umask(0o007)
        safe_io.write_bytes(tmp_path / "g.bin", b"x")
        assert _mode(tmp_path / "g.bin") == 0o660
    finally:
        os.umask(old)
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temp file left


def test_a_run_directory_follows_the_umask(tmp_path):
    """adapter, card, summary, marker, checkpoint, metrics and the .hydra files: 0644 under umask 022 (they were
    0600, so a colleague in the group could not read a shared run)."""
    old = os.umask(0o022)
    try:
        d = tmp_path / "run"
        with rundir.files_on_claim(d, {".hydra/config.yaml": "a: 1\n"}):
            pinn_lora.adapt_to(_base(), _target(), "lora", run_dir=d, checkpoint_every=2, **TINY)
    finally:
        os.umask(old)
    names = ["adapter.safetensors", "card.json", "summary.json", rundir.MARKER, "checkpoint.safetensors",
             "metrics.jsonl", ".hydra/config.yaml"]
    assert {n: oct(_mode(d / n)) for n in names} == {n: oct(0o644) for n in names}


# ---- 1. compare never writes through links ------------------------------------------------------------------
@pytest.mark.integration  # several whole runs or reports (seconds): with the integration tests
def test_compare_refuses_a_report_folder_holding_links(sweep, tmp_path, capsys):  # noqa: F811
    first, _ = compare.compare_runs(sweep, solutions=False)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "figs").mkdir(parents=True)
    (elsewhere / "figs" / "helmholtz_k_3_lr_window.png").write_bytes(b"keep me")
    (elsewhere / "report.md").write_text("my notes")
    for p in (first / "figures").iterdir():
        p.unlink()
    (first / "figures").rmdir()
    (first / "report.md").unlink()
    (first / "figures").symlink_to(elsewhere / "figs")
    (first / "report.md").symlink_to(elsewhere / "report.md")
    before = snapshot(elsewhere)
    mine = snapshot(first)
    with pytest.raises(SystemExit) as exc:
        compare_cli.main([str(sweep), "--no-solutions"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert "symbolic link" in err[0] and "remove the link" in err[0]
    assert snapshot(elsewhere) == before and snapshot(first) == mine  # nothing written, nothing removed
    assert (first / "figures").is_symlink() and (first / "report.md").is_symlink()


def test_compare_checks_links_at_every_write(sweep, tmp_path, monkeypatch):  # noqa: F811
    """A link put in place after the claim (while the report is written) is refused at the write."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = compare._write_report

    def swap(root, out, *a, **k):
        (out / "figures").symlink_to(elsewhere)
        return real(root, out, *a, **k)

    monkeypatch.setattr(compare, "_write_report", swap)
    with pytest.raises(safe_io.UnsafePathError):
        compare.compare_runs(sweep, solutions=False)
    assert list(elsewhere.iterdir()) == []


# ---- 2. a resumed run never writes through a plots/ link ---------------------------------------------------
def test_resume_refuses_a_run_directory_holding_a_link(tmp_path, monkeypatch):
    from pinn_lora.training.trainer import Trainer

    d, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "loss.png").write_bytes(b"theirs")
    real = Trainer.run

    def stopped(self):
        real(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", stopped)
    with pytest.raises(KeyboardInterrupt):
        pinn_lora.adapt_to(_base(), _target(), "lora", run_dir=d, checkpoint_every=2, **{**TINY, "plots": True})
    monkeypatch.setattr(Trainer, "run", real)
    (d / "plots").symlink_to(elsewhere)
    before = snapshot(d)
    with pytest.raises(rundir.RunDirError, match=r"holds a symbolic link, plots \(to .*remove the link"):
        pinn_lora.adapt_to(_base(), _target(), "lora", run_dir=d, resume=True, checkpoint_every=2,
                           **{**TINY, "plots": True})
    assert snapshot(d) == before and sorted(os.listdir(elsewhere)) == ["loss.png"]
    assert (elsewhere / "loss.png").read_bytes() == b"theirs"


def test_plots_refuse_a_link_placed_during_the_run(tmp_path, monkeypatch):
    from pinn_lora.training.trainer import Trainer

    d, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = Trainer.run

    def then_link(self):
        history = real(self)
        (d / "plots").symlink_to(elsewhere)
        return history

    monkeypatch.setattr(Trainer, "run", then_link)
    with pytest.raises(safe_io.UnsafePathError, match="plots is a symbolic link"):
        pinn_lora.adapt_to(_base(), _target(), "lora", run_dir=d, **{**TINY, "plots": True})
    assert list(elsewhere.iterdir()) == []
    assert json.loads((d / rundir.MARKER).read_text())["status"] == "failed"


# ---- 3. shipped bases are read-only --------------------------------------------------------------------------
def test_save_base_refuses_a_shipped_name(tmp_path, monkeypatch):
    import shutil

    from pinn_lora.store import zoo

    monkeypatch.setattr(zoo, "ZOO_DIR", Path(shutil.copytree(zoo.ZOO_DIR, tmp_path / "zoo")))  # a failure harms no copy
    shipped = zoo.ZOO_DIR / "burgers.safetensors"
    before = shipped.read_bytes(), (zoo.ZOO_DIR / "burgers.json").read_bytes()
    net, card = pinn_lora.load_base("burgers")[:2]
    for name in ("burgers", "burgers.safetensors", str(zoo.ZOO_DIR / "burgers")):
        with pytest.raises(ValueError, match="shipped with pinn_lora .*read-only"):
            pinn_lora.save_base(net, card, name)
    assert (shipped.read_bytes(), (zoo.ZOO_DIR / "burgers.json").read_bytes()) == before
    pinn_lora.save_base(net, card, tmp_path / "mine" / "burgers")  # a path of one's own is fine
    assert (tmp_path / "mine" / "burgers.safetensors").is_file()


# ---- 4. a Ctrl-C in the last seconds keeps the run ----------------------------------------------------------
def test_a_signal_during_the_end_of_a_run_is_deferred_until_it_is_written(tmp_path, monkeypatch):
    from pinn_lora.runs import adapt as session
    from pinn_lora.runs.ending import StoppedAfterEnd

    d = tmp_path / "run"
    real = session.validation_residual
    calls = []

    def signalled(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the result's validation: the end of the run has begun
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(session, "validation_residual", signalled)
    with pytest.raises(StoppedAfterEnd) as info:
        pinn_lora.adapt_to(_base(), _target(), "lora", run_dir=d, **TINY)
    assert info.value.exit_code == 143 and "its results are written" in str(info.value)
    for name in ("adapter.safetensors", "card.json", "summary.json", "checkpoint.safetensors"):
        assert (d / name).is_file(), name
    assert json.loads((d / "summary.json").read_text())["status"] == "completed"
    assert json.loads((d / rundir.MARKER).read_text())["status"] == "finished"
    assert pinn_lora.load_adapter(d)  # the adapter reloads


def test_a_second_signal_stops_and_the_run_resumes_from_its_end(tmp_path, monkeypatch):
    from pinn_lora.runs import adapt as session
    from pinn_lora.training.trainer import Interrupted

    d = tmp_path / "run"
    real = session.validation_residual
    calls = []

    def signalled(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(session, "validation_residual", signalled)
    with pytest.raises(Interrupted):
        pinn_lora.adapt_to(_base(), _target(), "lora", run_dir=d, **TINY)
    monkeypatch.setattr(session, "validation_residual", real)
    marker = json.loads((d / rundir.MARKER).read_text())
    assert marker["status"] == "interrupted"  # not left `running`
    ck = pinn_lora.store.checkpoints.load(d / "checkpoint.safetensors")[1]
    assert (ck["phase"], ck["step"]) == ("end", 3)  # the end-of-steps checkpoint
    res = pinn_lora.adapt_to(_base(), _target(), "lora", run_dir=d, resume=True, **TINY)
    assert res.history.steps == 3 and json.loads((d / "summary.json").read_text())["status"] == "completed"
    assert len((d / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_batched_run_keeps_every_target_through_a_signal_at_its_end(tmp_path, monkeypatch):
    from pinn_lora.runs import many as batch
    from pinn_lora.runs.ending import StoppedAfterEnd

    d = tmp_path / "run"
    real = batch.validation_residual
    calls = []

    def signalled(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # two base validations first, then the first copy's
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(batch, "validation_residual", signalled)
    problems = [_target().with_coefficients(nu=v) for v in (0.01, 0.02)]
    with pytest.raises(StoppedAfterEnd):
        batch.adapt_many(_base(), problems, "lora", run_dir=d, steps=2, n_points=32, device="cpu", progress=False,
                         plots=False)
    subs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(subs) == 2 and all((s / "adapter.safetensors").is_file() for s in subs)
    assert json.loads((d / rundir.MARKER).read_text())["status"] == "finished"


# ---- 5. build_family from Python claims its folder ------------------------------------------------------------
def test_build_family_refuses_a_folder_it_did_not_create(tmp_path):
    from pinn_lora.runs.range_build import build_family

    mine = tmp_path / "mine"
    (mine / "plots").mkdir(parents=True)
    (mine / "plots" / "family.png").write_bytes(b"my figure")
    before = snapshot(mine)
    with pytest.raises(rundir.RunDirError, match="not empty .* was not created by pinn_lora"):
        build_family(_target(), "nu", 0.01, 0.02, "lora", base=_base(), anchors=2, out=mine, steps=1, n_points=16,
                     lbfgs_steps=0, progress=False)
    assert snapshot(mine) == before


# ---- a refused resume changes nothing -----------------------------------------------------------------------
def _stopped_run(d, monkeypatch):
    from pinn_lora.training.trainer import Trainer

    real = Trainer.run

    def stopped(self):
        self.cfg.steps = 2
        real(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", stopped)
    with pytest.raises(KeyboardInterrupt):
        pinn_lora.adapt_to(_base(), _target(), "lora", run_dir=d, checkpoint_every=1, **{**TINY, "steps": 4})
    monkeypatch.setattr(Trainer, "run", real)


@pytest.mark.parametrize("damage", ["nested_key", "network_tensor"])
def test_a_refused_resume_changes_nothing(tmp_path, monkeypatch, damage):
    from safetensors.torch import load_file, save_file

    from pinn_lora.store.tensors import CheckpointError

    d = tmp_path / "run"
    _stopped_run(d, monkeypatch)
    ck = d / "checkpoint.safetensors"
    tensors = load_file(str(ck))
    from safetensors import safe_open

    with safe_open(str(ck), "pt") as fh:
        meta = dict(fh.metadata())
    state = json.loads(meta["__resume__"])
    if damage == "nested_key":
        del state["stage"]["__tuple__" if "__tuple__" in state["stage"] else next(iter(state["stage"]))]
        state["dynamics"] = {"__dict__": {}}
        meta["__resume__"] = json.dumps(state)
    else:
        del tensors[next(k for k in tensors if not k.startswith("__resume__"))]
    save_file(tensors, str(ck), metadata=meta)
    before = snapshot(d)
    with pytest.raises(CheckpointError, match="does not fit this run") as info:
        pinn_lora.adapt_to(_base(), _target(), "lora", run_dir=d, resume=True, checkpoint_every=1,
                           **{**TINY, "steps": 4})
    assert "\n" not in str(info.value)
    assert snapshot(d) == before  # metrics.jsonl not cut, the status not changed


# ---- 10. bad input never claims the output folder ----------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["solver=lm", "lm_mu=0"], "lm: mu=0 must be a finite number > 0"),
    (["solver=lm", "lm_mu=-1"], "lm: mu=-1 must be a finite number > 0"),
    (["solver=lm", "lm_mu=nan"], "must be a finite number > 0"),
    (["solver=method", "cuda_graph=true"], "cuda_graph=true: the model is on cpu, not CUDA"),
    (["method=full", "solver=lm", "n_points=20000"], "the dense Gauss-Newton step needs one of them <= 12000"),
])
def test_bad_input_creates_no_run_directory(tmp_path, monkeypatch, capsys, args, message):
    out = tmp_path / "out"
    code, _, err = cli([*G, *args, f"out={out}"], monkeypatch, capsys, tmp_path)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not out.exists()


# ---- 6. a boolean key takes true or false -------------------------------------------------------------------
def test_boolean_strings_are_refused_not_taken_for_true(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, _, err = cli([*G, "solver=lm", "lm_adaptive=no", f"out={out}"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, "lm_adaptive='no' must be true or false")
    assert not out.exists()
    with pytest.raises(ValueError, match="progress='no' must be true or false"):
        pinn_lora.adapt_to(_base(), _target(), "lora", **{**TINY, "progress": "no"})
    with pytest.raises(ValueError, match="plots='no' must be true or false"):
        pinn_lora.adapt_to(_base(), _target(), "lora", **{**TINY, "plots": "no"})
    with pytest.raises(ValueError, match="lm_adaptive='no' must be true or false"):
        pinn_lora.adapt_to(_base(), _target(), "lora", solver="lm", loop_options={"lm_adaptive": "no"}, **TINY)
    from pinn_lora.runs.range_build import build_family

    with pytest.raises(ValueError, match="build_family: warm_start='no' must be true or false"):
        build_family(_target(), "nu", 0.01, 0.02, "lora", base=_base(), anchors=2, warm_start="no", steps=1)


def test_family_command_refuses_warm_start_no(tmp_path, monkeypatch, capsys):
    from pinn_lora import family

    out = tmp_path / "fam"
    monkeypatch.setattr(sys, "argv", ["pinn_lora.family", "problem=burgers", "method=lora", "over=nu", "low=0.01",
                                      "high=0.02", "anchors=2", "steps=1", "n_points=16", "device=cpu",
                                      "warm_start=no", f"out={out}"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        family.main()
    err = capsys.readouterr().err
    assert_one_line(exc.value.code, err, "warm_start='no' must be true or false")
    assert not out.exists()


def _family(args, tmp_path, monkeypatch, capsys):
    from pinn_lora import family

    monkeypatch.setattr(sys, "argv", ["pinn_lora.family", "problem=burgers", "over=nu", "low=0.01", "high=0.02",
                                      "anchors=2", "steps=1", "n_points=16", "device=cpu", "progress=false", *args])
    monkeypatch.chdir(tmp_path)
    code = 0
    try:
        family.main()
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["method=lora", "method.rank=0"], "rank=0"),
    (["method=lora", "base=/nonexistent/base"], "no base model"),
    (["method=lora", "dtype=float16"], "dtype='float16'"),
    (["method=odelora", "method.scheme=bogus"], "scheme"),
])
def test_family_bad_input_leaves_no_folder(tmp_path, monkeypatch, capsys, args, message):
    out = tmp_path / "runs" / "fam"
    code, err = _family([*args, f"out={out}"], tmp_path, monkeypatch, capsys)
    assert_one_line(code, err, message)
    assert not (tmp_path / "runs").exists()  # nor the parent the claim had made
    code, err = _family([*args, f"out={out}"], tmp_path, monkeypatch, capsys)  # a rerun is not blocked
    assert_one_line(code, err, message)


def test_a_withdrawn_claim_keeps_what_was_there(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    with rundir.files_on_claim(d, {".hydra/config.yaml": "a: 1\n"}):
        c = rundir.claim(d)
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*")) == [".hydra", ".hydra/config.yaml",
                                                                          rundir.MARKER]
    c.fail(ValueError("bad"))
    assert d.is_dir() and list(d.iterdir()) == []  # the empty folder it was given stays
    c = rundir.claim(d)
    (d / "metrics.jsonl").write_text("{}\n")  # the run wrote something: kept, marked failed
    c.fail(ValueError("bad"))
    assert json.loads((d / rundir.MARKER).read_text())["status"] == "failed" and (d / "metrics.jsonl").is_file()


# ---- 11. the default out is unique ----------------------------------------------------------------------------
def test_two_commands_in_the_same_second_get_two_directories(tmp_path, monkeypatch):
    from pinn_lora.cli.launch import prepare_run

    monkeypatch.chdir(tmp_path)
    stamp = tmp_path / "runs" / "burgers" / "lora" / "2030-01-01_00-00-00"
    first, _ = rundir.reserve(stamp)
    rundir.claim(first).release()  # the first command's run
    second, made = rundir.reserve(stamp)
    assert (first, second) == (stamp, stamp.with_name(stamp.name + "-2"))
    rundir.unreserve(made)  # refused before its claim: its empty folder goes, the first run stays
    assert not second.exists() and (first / rundir.MARKER).is_file()
    plans = [prepare_run(list(G), "adapt") for _ in range(2)]  # most likely within the same second
    roots = [p.root for p in plans]
    assert roots[0] != roots[1] and all(r.is_dir() and not any(r.iterdir()) for r in roots)
    for p in plans:
        rundir.unreserve(p.reserved)
    assert not any(r.exists() for r in roots)


def test_a_refused_command_with_the_default_out_leaves_no_folder(tmp_path, monkeypatch, capsys):
    code, _, err = cli([*G, "steps=-1"], monkeypatch, capsys, tmp_path)
    assert_one_line(code, err, "steps=-1 must be an integer >= 0")
    assert list(tmp_path.iterdir()) == []


# ---- 12, 13. one line, naming the right thing ---------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_loading_on_a_missing_cuda_device_is_one_line(tmp_path):
    d = tmp_path / "run"
    pinn_lora.adapt_to(_base(), _target(), "lora", run_dir=d, **TINY)
    for call in (lambda: pinn_lora.load_adapter(d, device="cuda"), lambda: pinn_lora.load_base("burgers", device="cuda"),
                 lambda: pinn_lora.load_family(d, device="cuda")):
        with pytest.raises(ValueError, match="device='cuda' but no CUDA device is available"):
            call()


def test_save_adapter_to_a_file_is_one_line(tmp_path):
    res = pinn_lora.adapt_to(_base(), _target(), "lora", **TINY)
    f = tmp_path / "file"
    f.write_text("mine")
    with pytest.raises(ValueError, match="is a file; an adapter is saved into a directory"):
        pinn_lora.save_adapter(res.model, f, res.method, res.problem)
    assert f.read_text() == "mine"


def test_os_errors_are_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from pinn_lora.cli import launch as cli_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    with pytest.raises(SystemExit) as exc:
        cli_mod.guarded(full)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1 and "No space left on device" in err[0] and "resume=true" in err[0]
    long = tmp_path / ("x" * 300)
    code, _, err = cli([*G, f"out={long}"], monkeypatch, capsys, tmp_path)
    assert code in (1, 2) and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_messages_name_the_right_thing():
    import numpy as np

    with pytest.raises(ValueError, match=r"^stage_steps=-3 must be an integer >= 1"):
        pinn_lora.adapt_to(_base(), _target(), "lora", loop_options={"stage_steps": -3}, **TINY)
    with pytest.raises(TypeError, match="evaluate: problem must be a problem object"):
        pinn_lora.evaluate(_base()[0], "helmholtz")
    from pinn_lora.runs.range_build import _check_bank_options

    _check_bank_options(np.int64(2), 0.0, "auto")  # an integer
    with pytest.raises(ValueError, match=r"anchors=2\.5 must be an integer"):
        _check_bank_options(2.5, 0.0, "auto")


# ---- 15. compare keeps what can be read and says what it left out ------------------------------------------
@pytest.mark.integration  # several whole runs or reports (seconds): with the integration tests
def test_compare_keeps_a_run_with_one_bad_metrics_line(sweep, capsys):  # noqa: F811
    run = sorted(p.parent for p in sweep.rglob("summary.json"))[0]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, '{"step": 1, "loss": ')  # a line cut short
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    runs, skipped = compare.find_runs(sweep)
    kept = next(r for r in runs if r.path == run)
    assert len(kept.records) == len(lines) - 1 and kept.dropped and kept.dropped[0].startswith("line 2:")
    compare_cli.main([str(sweep), "--no-solutions"])
    err = capsys.readouterr().err
    assert f"compare: {run}: 1 unreadable line(s) of metrics.jsonl left out (line 2:" in err
    assert "compare: skipped " in err and "no summary.json" in err  # the dropped run named on the terminal
