"""``python -m pinn_lora.family``: a coefficient range from a composed config (:mod:`pinn_lora.runs.ranges`)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from pinn_lora.runs.range_build import _check_bank_options, _check_range, build_family, build_hyper_family
from pinn_lora.runs.ranges import Family

def run_config(cfg: Mapping[str, Any], run_dir: Path) -> Family:
    """Build a family from a composed (plain dict) ``configs/family.yaml``; claims ``run_dir``
    (:mod:`pinn_lora.store.rundir`) once the input is checked and writes the family there."""
    from pinn_lora.store import rundir
    from pinn_lora.runs.adapt import ConfigError, check_ints, check_strings, problem_from_config

    check_strings(cfg, ("device", "dtype", "base", "over"))
    for key in ("low", "high"):
        v = cfg.get(key)
        if v is None:
            raise ConfigError(f"{key} is required: the family spans over in [low, high], e.g. low=0.0016 high=0.016")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}={v!r} must be a number")
    check_ints({"seed": cfg.get("seed", 0), **{k: cfg[k] for k in ("steps", "n_points") if cfg.get(k) is not None}})
    pcfg, mcfg = cfg["problem"], cfg["method"]
    problem = problem_from_config(pcfg, "adapt")
    builder = cfg.get("builder", "bank")
    if builder not in ("bank", "hyper"):
        raise ConfigError(f"builder={builder!r}; choose bank (adapters at anchors, interpolated) or hyper "
                          "(one coefficient-conditioned adapter trained over the range)")
    # the whole input is checked before the run directory is claimed: bad input leaves nothing behind
    from pinn_lora.runs.preflight import check_bools

    check_bools({k: cfg[k] for k in ("warm_start", "progress") if k in cfg})
    _check_range(problem, cfg.get("over"), cfg["low"], cfg["high"])
    _check_bank_options(cfg.get("anchors", 5), cfg.get("tol", 0.0), cfg.get("interpolate", "auto"))
    common = dict(base=cfg.get("base"), seed=cfg.get("seed", 0), device=cfg.get("device", "auto"),
                  dtype=cfg.get("dtype", "float64"), progress=bool(cfg.get("progress", True)), out=run_dir)
    given = {k: cfg[k] for k in ("steps", "n_points") if cfg.get(k) is not None}
    if builder == "hyper":
        check_ints({"rank": cfg.get("rank", 8)}, bounds={"rank": 1})
        with rundir.claim(run_dir):
            return build_hyper_family(problem, cfg.get("over"), cfg["low"], cfg["high"], rank=cfg.get("rank", 8),
                                      **given, **common)
    options = {k: v for k, v in mcfg.items() if k != "name" and v is not None}
    with rundir.claim(run_dir):
        return build_family(problem, cfg.get("over"), cfg["low"], cfg["high"], mcfg["name"],
                            anchors=cfg.get("anchors", 5), tol=cfg.get("tol", 0.0),
                            warm_start=bool(cfg.get("warm_start", False)),
                            interpolate=cfg.get("interpolate", "auto"),
                            recommended=pcfg.get("adapt"), **common, **given, **options)


def _task(cfg: Any) -> None:
    from pinn_lora.cli.launch import run_task

    fam, run_dir = run_task(cfg, run_config)
    card = fam.card
    checks = card["checks"] if fam.anchors == [] else card["midpoint_checks"][-(len(fam.anchors) - 1):]
    worst = max(c["validation_residual"] for c in checks)
    how = f"{len(fam.anchors)} anchors" if fam.anchors else "a coefficient-conditioned adapter"
    print(f"{card['problem']} family over {card['over']} in [{fam.low:g}, {fam.high:g}] ({card['method']['name']}): "
          f"{how} in {card['build']['wall_time_s']:.0f} s, worst checked validation residual "
          f"{worst:.3e}; {card['status']}")
    print(f"family written: {run_dir / 'family.safetensors'} + family.json, plots/family.png "
          f"(use it: pinn_lora.load_family({str(run_dir)!r})(value))")
    failed = [a for a in card.get("anchors", []) if a.get("status") != "completed"]
    if failed:  # an anchor that did not improve on the base (or diverged): the family is not one to trust there
        from pinn_lora.cli.common import EXIT_NO_IMPROVEMENT

        print(f"warning: {len(failed)} anchor(s) did not improve on the base: "
              + ", ".join(f"{card['over']}={a['value']:.6g} ({a['status']})" for a in failed), file=sys.stderr)
        raise SystemExit(EXIT_NO_IMPROVEMENT)


def main() -> None:
    from pinn_lora.cli.common import check_group_overrides
    from pinn_lora.cli.launch import launch, prepare_run

    check_group_overrides(sys.argv[1:], ("problem", "method"), "family")
    launch(prepare_run(sys.argv[1:], "family", resume_key=False), "family", _task)
