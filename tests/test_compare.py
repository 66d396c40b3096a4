"""Sweeps and their comparison: the launcher presets, `python -m pinn_lora.compare` on a
synthetic sweep written by hand (known numbers) and on a real mini sweep through the CLI."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pinn_lora.runs import compare
from pinn_lora.cli import compare as compare_cli
from pinn_lora.cli.common import check_group_overrides, check_launcher, config_dir

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
LAUNCHERS = Path(config_dir()) / "hydra" / "launcher"
# hydra-submitit-launcher 1.2.0, SlurmQueueConf (hydra_plugins/hydra_submitit_launcher/config.py)
SLURM_KEYS = {"submitit_folder", "timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb",
              "nodes", "name", "stderr_to_stdout", "partition", "qos", "comment", "constraint", "exclude", "gres",
              "cpus_per_gpu", "gpus_per_task", "mem_per_gpu", "mem_per_cpu", "account", "signal_delay_s",
              "max_num_timeout", "additional_parameters", "array_parallelism", "setup"}
# hydra-joblib-launcher 1.2.0, JobLibLauncherConf
JOBLIB_KEYS = {"n_jobs", "backend", "prefer", "require", "verbose", "timeout", "pre_dispatch", "batch_size",
               "temp_folder", "max_nbytes", "mmap_mode"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


# ----------------------------------------------------------------------------- launcher presets
@pytest.mark.parametrize("name,schema,keys", [("local", "joblib", JOBLIB_KEYS),
                                               ("slurm", "submitit_slurm", SLURM_KEYS)])
def test_launcher_preset_keys(name, schema, keys):
    cfg = yaml.safe_load((LAUNCHERS / f"{name}.yaml").read_text())
    assert cfg["defaults"] == [schema, "_self_"]  # extends the plugin's own config: keys and types checked
    assert set(cfg) - {"defaults", "_target_"} == keys
    # the plugin's launcher, waiting for every job (hydra_plugins/pinn_lora_launchers)
    assert cfg["_target_"] == f"hydra_plugins.pinn_lora_launchers.launchers.{ {'local': 'Joblib', 'slurm': 'Slurm'}[name]}Launcher"


@pytest.mark.skipif(not _installed("hydra_plugins.hydra_submitit_launcher"), reason="hydra-submitit-launcher")
def test_slurm_preset_composes_with_the_plugin_schema():
    from dataclasses import fields

    from hydra import compose
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    from pinn_lora.cli.common import hydra_context

    assert {f.name for f in fields(SlurmQueueConf)} == SLURM_KEYS | {"_target_"}
    with hydra_context():
        cfg = compose("adapt", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.pinn_lora_launchers.launchers.SlurmLauncher"
    from hydra_plugins.pinn_lora_launchers import launchers

    # the plugin's own launcher underneath (by name: Hydra's plugin scan may load its module a second time)
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in {
        f"{c.__module__}.{c.__qualname__}" for c in launchers.SlurmLauncher.__mro__}
    assert launcher.partition == "gpu" and launcher.timeout_min == 60 and launcher.tasks_per_node == 1


@pytest.mark.skipif(not _installed("hydra_plugins.hydra_joblib_launcher"), reason="hydra-joblib-launcher")
def test_local_preset_composes():
    from hydra import compose

    from pinn_lora.cli.common import hydra_context

    with hydra_context():
        cfg = compose("adapt", ["hydra/launcher=local", "hydra.launcher.n_jobs=3"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3


def test_launcher_override_passes_the_cli_checks(monkeypatch, capsys):
    check_group_overrides(["-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", "method=lora,cla"],
                          ("problem", "method"))
    with pytest.raises(SystemExit):  # the other checks still work
        check_group_overrides(["hydra/launcher=local", "method.rnk=3", "method=lora"], ("problem", "method"))
    capsys.readouterr()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # as if the plugin were missing
    with pytest.raises(SystemExit) as exc:
        check_launcher(["-m", "hydra/launcher=slurm", "method=lora"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: hydra/launcher=slurm needs the hydra-submitit-launcher plugin: pip install "
                   "hydra-submitit-launcher (or pip install 'pinn_lora[sweep]')"]
    check_launcher(["hydra/launcher=basic"])  # Hydra's own launchers: nothing to check


# ----------------------------------------------------------------------------- a synthetic sweep
ERRORS = {  # (method, lr, seed) -> rel_l2 at steps 1, 3, 5, 7, 9
    ("lora", 1e-2, 0): [5e-2, 2e-2, 8e-3, 3e-3, 9e-4],
    ("lora", 1e-2, 1): [6e-2, 9e-3, 4e-3, 2e-3, 1.5e-3],
    ("lora", 1e-3, 0): [9e-2, 7e-2, 5e-2, 4e-2, 3e-2],
    ("lora", 1e-3, 1): [8e-2, 6e-2, 5e-2, 3e-2, 2e-2],
    ("cla", 1e-2, 0): [4e-2, 1e-2, 5e-3, 2e-3, 1e-3],
    ("cla", 1e-2, 1): [4e-2, 3e-1],  # diverged at step 3
    ("cla", 1e-3, 0): [9e-2, 8e-2, 6e-2, 5e-2, 4e-2],
    ("cla", 1e-3, 1): [9e-2, 8e-2, 7e-2, 6e-2, 5e-2],
}


def _write_run(run_dir: Path, method: str, lr: float, seed: int, errors: list[float]) -> None:
    run_dir.mkdir(parents=True)
    diverged = len(errors) < 5
    per_step = 2 if method == "cla" else 1  # cla: two field evaluations per step
    records = []
    last = 3 if diverged else 9
    for step in range(last + 1):
        rec = {"step": step, "phase": "train", "loss": 0.1 / (step + 1), "lr": lr,
               "evaluations": per_step * (step + 1), "time": 0.1 * (step + 1),
               "layer0/balance": 0.5 / (step + 1), "layer1/balance": 2.0 / (step + 1),
               "layer0/eff_rank": 1.0 + 0.1 * step, "layer1/eff_rank": None}
        if step % 2 == 1:
            rec["rel_l2"] = errors[step // 2]
        if diverged and step == last:
            rec["loss"] = "inf"
        if method == "lora" and lr == 1e-2 and step == 4:
            rec["spike"] = 12.0
        records.append(rec)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"problem": "helmholtz", "coefficients": {"k": 3.0}, "base_coefficients": {"k": 1.0},
               "method": {"name": method, "lr": lr, "rank": 4},
               "trainable_parameters": 1221 if method == "lora" else 644,
               "steps": last + 1, "evaluations": per_step * (last + 1), "wall_time_s": 0.1 * (last + 1),
               "base_error": 0.36, "adapted_error": errors[-1], "status": "diverged" if diverged else "completed",
               "message": "", "seed": seed}
    if method == "lora":
        summary["stability"] = {"spikes": 1 if lr == 1e-2 else 0}
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for i, ((method, lr, seed), errors) in enumerate(sorted(ERRORS.items())):
        _write_run(root / "helmholtz" / method / str(i), method, lr, seed, errors)
    (root / "helmholtz" / "lora" / "99").mkdir()  # a run still going: metrics but no summary
    (root / "helmholtz" / "lora" / "99" / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    return root


def _row(rows, label):
    return next(r for r in rows if r["label"] == label)


def test_table_numbers(sweep):
    runs, skipped = compare.find_runs(sweep)
    assert len(runs) == 8 and len(skipped) == 1 and "no summary.json" in skipped[0]
    groups = compare.group_runs(runs)
    assert list(groups) == [("helmholtz", "k = 3")]
    vs = compare.variants(groups["helmholtz", "k = 3"])
    assert [v.label for v in vs] == ["cla (lr=0.001)", "cla (lr=0.01)", "lora (lr=0.001)", "lora (lr=0.01)"]
    rows = [compare.variant_stats(v, [1e-2, 1e-3]) for v in vs]

    lora = _row(rows, "lora (lr=0.01)")
    assert lora["n"] == 2 and lora["trainable"] == 1221 and lora["diverged"] == 0 and lora["spikes"] == 2
    assert lora["median"] == pytest.approx(1.2e-3) and (lora["min"], lora["max"]) == (9e-4, 1.5e-3)
    # <= 1e-2: seed 0 at step 5 (6 steps, t 0.6 s), seed 1 at step 3 (4 steps, t 0.4 s)
    assert lora["levels"][1e-2] == pytest.approx({"reached": 2, "steps": 5, "evaluations": 5, "time": 0.5})
    # <= 1e-3: only seed 0, at step 9
    assert lora["levels"][1e-3] == pytest.approx({"reached": 1, "steps": 10, "evaluations": 10, "time": 1.0})

    cla = _row(rows, "cla (lr=0.01)")
    assert cla["diverged"] == 1 and cla["spikes"] is None and cla["trainable"] == 644
    assert cla["median"] == pytest.approx((1e-3 + 3e-1) / 2)
    # seed 0 reaches 1e-2 at step 3 (4 steps, 8 evaluations: two per step); the diverged seed never
    assert cla["levels"][1e-2] == pytest.approx({"reached": 1, "steps": 4, "evaluations": 8, "time": 0.4})
    assert _row(rows, "cla (lr=0.001)")["levels"][1e-2]["reached"] == 0

    head, cells = compare.table(rows, [1e-2, 1e-3])
    assert head[:5] == ["method", "trainable", "n", "final rel. L2: median", "[min – max]"]
    lora_cells = cells[3]
    assert lora_cells[:8] == ["lora (lr=0.01)", "1,221", "2", "1.20e-03", "[9.00e-04 – 1.50e-03]", "5", "5", "0.50 s"]
    assert lora_cells[8] == "10 (1/2)" and lora_cells[-3:] == ["2", "0/2", "0/2"]
    assert cells[0][5:8] == ["—", "—", "—"] and cells[1][-3:] == ["—", "1/2", "0/2"]


def test_runs_that_did_not_improve_are_counted(sweep):
    runs, _ = compare.find_runs(sweep)
    worse = next(r for r in runs if r.method == "lora" and r.lr == 1e-3)
    summary = json.loads((worse.path / "summary.json").read_text())
    (worse.path / "summary.json").write_text(json.dumps({**summary, "status": "no_improvement"}))
    runs, _ = compare.find_runs(sweep)
    rows = [compare.variant_stats(v, [1e-2]) for v in compare.variants(compare.group_runs(runs)["helmholtz", "k = 3"])]
    lora = _row(rows, "lora (lr=0.001)")
    assert lora["no_improvement"] == 1 and lora["diverged"] == 0
    assert compare.table(rows, [1e-2])[1][2][-1] == f"1/{lora['n']}"


def test_median_band_holds_the_last_value():
    x1, y1 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1e-1, 1e-2])
    x2, y2 = np.array([0.0, 1.0]), np.array([1.0, 1e-3])  # stopped early
    grid, med, lo, hi = compare.median_band([(x1, y1), (x2, y2)], n=5)
    assert grid.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert hi[-1] == pytest.approx(1e-2) and lo[-1] == pytest.approx(1e-3)  # run 2 holds its last value
    assert med[2] == pytest.approx(math.sqrt(1e-1 * 1e-3))  # median of two in log space
    assert compare.median_band([(np.zeros(0), np.zeros(0))]) is None


@pytest.mark.integration  # a whole report (the data-safety test below stays in the default run)
def test_report_files_and_self_contained_html(sweep, tmp_path):
    import matplotlib.pyplot as plt

    best_lora = sweep / "helmholtz" / "lora" / "6"  # lora lr=1e-2 seed 0: no card/adapter, but its own plot
    assert json.loads((best_lora / "summary.json").read_text())["adapted_error"] == 9e-4
    (best_lora / "plots").mkdir()
    plt.imsave(best_lora / "plots" / "solution.png", np.arange(16.0).reshape(4, 4))
    out, sections = compare.compare_runs(sweep, levels=[1e-2, 1e-3])
    assert out == sweep / "report" and len(sections) == 1
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figs == ["helmholtz_k_3_adapter_state.png", "helmholtz_k_3_curves_evaluations.png",
                    "helmholtz_k_3_curves_time.png", "helmholtz_k_3_lr_window.png", "helmholtz_k_3_solution_lora.png"]
    md = (out / "report.md").read_text()
    assert "| lora (lr=0.01) | 1,221 | 2 | 1.20e-03 |" in md and "## helmholtz, k = 3" in md
    assert "cla: no solution figure" in md and "plots/solution.png" in md
    assert "## Skipped directories" in md and f"- {sweep / 'helmholtz' / 'lora' / '99'}: no summary.json" in md
    for name in figs:
        assert f"](figures/{name})" in md
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(figs)
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    assert "<td>lora (lr=0.01)</td>" in page
    # a second run replaces the report (and never collects it as a run)
    out2, _ = compare.compare_runs(sweep, levels=[1e-2], solutions=False)
    assert len(list((out2 / "figures").glob("*.png"))) == 4


@pytest.mark.integration  # several whole runs or reports (seconds): with the integration tests
def test_report_never_touches_files_it_did_not_write(sweep, tmp_path, capsys):
    """--out a folder of the user's (paper/ with figures/ and report.md): refused with one line, nothing removed
    or replaced (issue 14, item 3; main removed paper/figures/ and replaced paper/report.md). An empty folder is
    claimed; a second report there replaces only the files the first one wrote."""
    paper = tmp_path / "paper"
    (paper / "figures").mkdir(parents=True)
    (paper / "figures" / "fig1.png").write_bytes(b"my figure")
    (paper / "report.md").write_text("my draft")
    with pytest.raises(SystemExit) as exc:
        compare_cli.main([str(sweep), "--out", str(paper), "--no-solutions"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"error: --out={paper} is not empty (figures, report.md) and was not created by pinn_lora")
    assert sorted(p.relative_to(paper).as_posix() for p in paper.rglob("*")) == ["figures", "figures/fig1.png",
                                                                                  "report.md"]
    assert (paper / "report.md").read_text() == "my draft" and (paper / "figures" / "fig1.png").read_bytes() == b"my figure"
    mine = tmp_path / "mine"
    mine.mkdir()
    out, _ = compare.compare_runs(sweep, mine, solutions=False)
    (mine / "notes.txt").write_text("kept")  # the user's own file beside the report
    out, _ = compare.compare_runs(sweep, mine, levels=[1e-2], solutions=False)
    marker = json.loads((mine / ".pinn_lora_run.json").read_text())
    assert marker["kind"] == "report" and marker["status"] == "finished"
    assert sorted(marker["files"]) == sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*.*")
                                             if p.name not in ("notes.txt", ".pinn_lora_run.json"))
    assert (mine / "notes.txt").read_text() == "kept"
    run_dir = sweep / "helmholtz" / "lora" / "0"
    with pytest.raises(ValueError, match="holds a run, not a report"):
        from pinn_lora.store import rundir

        rundir.claim(run_dir / "x").release()
        compare.compare_runs(sweep, run_dir / "x", solutions=False)


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv in ([str(tmp_path / "empty")], [str(tmp_path / "missing")], [str(tmp_path), "--levels", "0"]):
        with pytest.raises(SystemExit) as exc:
            compare_cli.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err


@pytest.mark.integration  # a sweep and the report in subprocesses
def test_real_mini_sweep_through_the_cli(tmp_path):
    sweep = tmp_path / "sweep"
    res = subprocess.run([sys.executable, "-m", "pinn_lora.adapt", "-m", "problem=helmholtz", "method=lora,cla",
                          "seed=0,1", "steps=5", "n_points=64", "eval_every=5", "progress=false", "plots=false",
                          f"hydra.sweep.dir={sweep}"], cwd=tmp_path, capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "pinn_lora.compare", str(sweep)], cwd=tmp_path, capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in res.stdout.splitlines() if line.startswith("| ") and not line.startswith("| method")}
    assert set(rows) == {"lora", "cla"}
    assert rows["lora"][2] == rows["cla"][2] == "2" and rows["lora"][1] == "1,221"
    assert (sweep / "report" / "report.html").is_file()
    assert (sweep / "report" / "figures" / "helmholtz_k_3_solutions.png").is_file()  # rebuilt from the adapters


@pytest.mark.integration  # a parallel sweep through the joblib launcher
@pytest.mark.skipif(not _installed("hydra_plugins.hydra_joblib_launcher"), reason="hydra-joblib-launcher")
def test_local_launcher_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    res = subprocess.run([sys.executable, "-m", "pinn_lora.adapt", "-m", "hydra/launcher=local",
                          "hydra.launcher.n_jobs=2", "problem=helmholtz", "method=lora,cla", "steps=3",
                          "n_points=64", "eval_every=3", "progress=false", "plots=false",
                          f"hydra.sweep.dir={sweep}"], cwd=tmp_path, capture_output=True, text=True, env=ENV,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert "validated against ConfigStore schema" not in res.stderr
    runs, _ = compare.find_runs(sweep)
    assert sorted(r.method for r in runs) == ["cla", "lora"]
