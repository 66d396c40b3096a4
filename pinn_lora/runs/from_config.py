"""A composed command-line config (a plain dict) as a library call: one target to :func:`pinn_lora.adapt_to`,
a list of values for one coefficient (``problem.nu=[0.005,0.01]``) to :func:`pinn_lora.adapt_many`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pinn_lora.runs.adapt import AdaptResult, ConfigError, adapt_to, check_strings, problem_from_config
from pinn_lora.runs.many import adapt_many
from pinn_lora.runs.settings import LIBRARY, LOOP_OPTIONS


def run_config(cfg: Mapping[str, Any], run_dir: str | Path | None) -> AdaptResult | list[AdaptResult]:
    """Run one adaptation from a composed (plain dict) config; values left null
    take the family's recipe (:mod:`pinn_lora.core.recipe`), keys left out :class:`~pinn_lora.runs.settings.AdaptConfig`'s
    defaults. A list for one coefficient (``problem.nu=[0.005,0.01]``) runs them all in one batched run
    (:mod:`pinn_lora.runs.many`; no L-BFGS finish; the keyword arguments it takes) and returns one result per value."""
    check_strings(cfg, ("device", "dtype", "base", "sampler", "derivatives"))
    pcfg, mcfg = cfg["problem"], cfg["method"]
    options = {k: v for k, v in mcfg.items() if k != "name" and v is not None}
    given = {k: cfg.get(k, default) for k, default in LIBRARY.items()}  # the library's settings, by name
    kwargs = {k: bool(v) if isinstance(LIBRARY[k], bool) else v  # true/false keys (checked by the CLI)
              for k, v in given.items() if k not in LOOP_OPTIONS and k != "base"}
    kwargs.update(recommended=pcfg.get("adapt"), run_dir=run_dir,  # None: the family's recipe
                  loop_options={k: given[k] for k in LOOP_OPTIONS if given[k] is not None})
    lists = [k for k, v in pcfg.items() if isinstance(v, (list, tuple)) and k not in ("modes", "adapt", "pretrain")]
    if lists:  # problem.nu=[0.005,0.01]: one batched run over the coefficients
        if len(lists) > 1:
            raise ConfigError(f"give a list for one coefficient at a time, not {', '.join(lists)}")
        values = pcfg[lists[0]]
        if cfg.get("resume"):
            raise ConfigError("resume=true continues one run; a batched run over a list of coefficients "
                              f"(problem.{lists[0]}=[...]) cannot be resumed")
        if not values:
            raise ConfigError(f"problem.{lists[0]}=[]: the list of coefficients is empty")
        import inspect

        takes = {n for n, p in inspect.signature(adapt_many).parameters.items() if p.kind == p.KEYWORD_ONLY}
        problems = [problem_from_config({**pcfg, lists[0]: v}, "adapt") for v in values]
        return adapt_many(given["base"] or problems[0].name, problems, mcfg["name"], lbfgs_steps=0,
                          **{k: v for k, v in kwargs.items() if k in takes and k != "lbfgs_steps"}, **options)
    problem = problem_from_config(pcfg, "adapt")
    return adapt_to(given["base"] or problem.name, problem, mcfg["name"], **kwargs, **options)
