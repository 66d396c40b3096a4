"""``python -m pinn_lora.adapt problem=burgers method=odelora [overrides]``

Loads the shipped base model of the problem, adapts it to the target
coefficients with the chosen method, and writes a run directory."""
from __future__ import annotations

import sys
from pathlib import Path

from pinn_lora.cli import EXIT_DIVERGED, check_group_overrides, check_launcher, config_dir, guarded


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from pinn_lora.session import run_config

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    out = guarded(lambda: run_config(plain, run_dir))
    results = out if isinstance(out, list) else [out]
    for result in results:
        print(result.summary_line())
    print(f"run directory: {run_dir}" + (" (one subdirectory per coefficient)" if isinstance(out, list) else ""))
    result = results[0]
    if result.history.status == "diverged":
        print(f"error: diverged: {result.history.message}", file=sys.stderr)
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:  # in a sweep the other runs go on
            raise SystemExit(EXIT_DIVERGED)


def main() -> None:
    import hydra

    check_group_overrides(sys.argv[1:], ("problem", "method"))
    check_launcher(sys.argv[1:])
    hydra.main(config_path=config_dir(), config_name="adapt", version_base="1.3")(_task)()


if __name__ == "__main__":
    main()
