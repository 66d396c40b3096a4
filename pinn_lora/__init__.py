"""pinn_lora: adapt pretrained PINNs to new PDE coefficients with low-rank adapters.

The public surface (imported lazily, so ``import pinn_lora`` stays light)::

    import math, pinn_lora
    problem = pinn_lora.get_problem("burgers", nu=0.02 / math.pi)   # a PDE family at its coefficients
    net, card, source = pinn_lora.load_base("burgers")              # a shipped (or saved) base model
    run = pinn_lora.adapt_to("burgers", problem, method="odelora")  # attach + train, with monitors
    model = pinn_lora.attach(my_net, "lora", problem, rank=8)       # attach a method to any PINN module
    pinn_lora.save_adapter(model, "out/a", model_method, problem)   # safetensors + card (names the base)
    loaded = pinn_lora.load_adapter("out/a", base="burgers")        # refused on the wrong base
    pinn_lora.merge_adapters(loaded.model)                          # plain linear layers again
    pinn_lora.evaluate(loaded.model, problem).rel_l2                # against the reference, on a grid
    pinn_lora.adapt_many("burgers", [p1, p2, p3], "lora")           # several coefficients, one batched run
    pinn_lora.METHODS.names(), pinn_lora.PROBLEMS.names()           # what is registered
    pinn_lora.pretrain_base(problem, layers=[2, 64, 64, 1], ...)    # train a base model; out= saves it
    pinn_lora.compare_runs("multirun/...")                          # report.md + report.html of the runs
    fam = pinn_lora.build_family(problem, "nu", 0.0016, 0.016, "lora")  # adapters over a coefficient range
    pinn_lora.load_family("runs/family/...")(0.005)                  # a network at nu = 0.005, no training

A new method subclasses ``pinn_lora.Method`` and declares each option as a ``pinn_lora.Option`` (default, type,
bound, help); a new adapter layer subclasses ``pinn_lora.AdapterLinear``.

One name per action: the functions above are the library; ``pinn_lora.adapt``, ``pinn_lora.pretrain``,
``pinn_lora.compare`` and ``pinn_lora.family`` are the command-line modules (``python -m pinn_lora.adapt ...``).

DeepXDE users: :mod:`pinn_lora.interop.deepxde` (methods on ``deepxde.nn.FNN``, dynamics as
``torch.optim.Optimizer``, monitors as callbacks).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _families_in_a_source_checkout() -> None:
    """The families are the repository's top-level folder ``problems/``, installed as
    ``pinn_lora.problems`` (setuptools ``package-dir``; an editable install maps the name itself).
    Python run inside a source checkout (``python -m pytest`` in the repository, whatever is
    installed) imports this folder, not the installed copy, and this folder has no ``problems/``:
    there the name is made to find the checkout's folder. Nothing happens in an installed copy."""
    import importlib.abc
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    folder = here.parent / "problems"
    if (here / "problems").is_dir() or not (folder / "__init__.py").is_file() \
            or not (here.parent / "pyproject.toml").is_file():
        return

    class SourceFamilies(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
            if name != "pinn_lora.problems":
                return None
            return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])

    if not any(type(f).__name__ == "SourceFamilies" for f in sys.meta_path):
        sys.meta_path.append(SourceFamilies())


_families_in_a_source_checkout()

_EXPORTS = {
    # what an extender writes against (docs/extending.md)
    "Problem": "pinn_lora.pde.problem",
    "Coefficient": "pinn_lora.pde.problem",
    "CoefficientError": "pinn_lora.pde.problem",
    "Recipe": "pinn_lora.core.recipe",
    "AdapterLinear": "pinn_lora.model.adapters",
    "attach_adapters": "pinn_lora.model.adapters",
    "get_problem": "pinn_lora.core.registry",
    "PROBLEMS": "pinn_lora.core.registry",
    "METHODS": "pinn_lora.core.registry",
    "load_base": "pinn_lora.store.zoo",
    "save_base": "pinn_lora.store.zoo",
    "adapt_to": "pinn_lora.runs.adapt",
    "AdaptResult": "pinn_lora.runs.adapt",
    "get_method": "pinn_lora.methods",
    "Method": "pinn_lora.methods",
    "Option": "pinn_lora.methods",
    "MethodOptionError": "pinn_lora.methods",
    "merge_adapters": "pinn_lora.model.adapters",
    "attach": "pinn_lora.runs.adapter_io",
    "save_adapter": "pinn_lora.runs.adapter_io",
    "load_adapter": "pinn_lora.runs.adapter_io",
    "LoadedAdapter": "pinn_lora.runs.adapter_io",
    "AdapterMismatchError": "pinn_lora.runs.adapter_io",
    "evaluate": "pinn_lora.runs.adapter_io",
    "Evaluation": "pinn_lora.runs.adapter_io",
    "adapt_many": "pinn_lora.runs.many",
    "Monitor": "pinn_lora.training.records",
    "residual_loss": "pinn_lora.training.losses",
    "Step": "pinn_lora.methods.dynamics.base",
    "Objective": "pinn_lora.methods.dynamics.base",
    "pretrain_base": "pinn_lora.runs.pretrain",
    "compare_runs": "pinn_lora.runs.compare",
    "build_family": "pinn_lora.runs.range_build",
    "load_family": "pinn_lora.runs.ranges",
    "Family": "pinn_lora.runs.ranges",
}
_COMMANDS = {"adapt": "adapt_to", "pretrain": "pretrain_base", "compare": "compare_runs", "family": "build_family"}  # module -> its function

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    hint = (f" (pinn_lora.{name} is the command-line module `python -m pinn_lora.{name}`, not imported yet; "
            f"the library function is pinn_lora.{_COMMANDS[name]})") if name in _COMMANDS else ""
    raise AttributeError(f"module 'pinn_lora' has no attribute {name!r}{hint}")
