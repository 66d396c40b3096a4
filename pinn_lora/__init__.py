"""pinn_lora: adapt pretrained PINNs to new PDE coefficients with low-rank adapters.

The public entry points (imported lazily, so ``import pinn_lora`` stays light)::

    import math, pinn_lora
    problem = pinn_lora.get_problem("burgers", nu=0.02 / math.pi)   # a PDE family at its coefficients
    net, card, source = pinn_lora.load_base("burgers")              # a shipped (or saved) base model
    result = pinn_lora.adapt("burgers", problem, method="odelora")  # adapt, with monitors
    pinn_lora.get_method("lora", rank=8)                            # a method object by name
    pinn_lora.METHODS.names(), pinn_lora.PROBLEMS.names()           # what is registered
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "get_problem": "pinn_lora.registry",
    "PROBLEMS": "pinn_lora.registry",
    "METHODS": "pinn_lora.registry",
    "load_base": "pinn_lora.zoo",
    "save_base": "pinn_lora.zoo",
    "adapt": "pinn_lora.session",
    "AdaptResult": "pinn_lora.session",
    "get_method": "pinn_lora.methods",
    "Method": "pinn_lora.methods",
    "merge_adapters": "pinn_lora.adapters",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pinn_lora' has no attribute {name!r}")
