"""Adaptation methods: each is a parameterisation (how ΔW is built, what trains) × a dynamics (how the trainable
tensors move) + schedule hooks.

Methods are registered by name in :data:`pinn_lora.core.registry.METHODS`; the built-in ones through the
``pinn_lora.methods`` entry-point group like any third-party method. Each method declares its options once, on
its class (:attr:`Method.declared`, one :class:`Option` each: default, type, bound, help); what a user gives is
checked against them.

The modules: :mod:`~pinn_lora.methods.base` (``Method``, ``Option``), :mod:`~pinn_lora.methods.references`
(scratch, full), :mod:`~pinn_lora.methods.lora_family` (LoRA and its variants), :mod:`~pinn_lora.methods.chains`
(CoLA, RAC), :mod:`~pinn_lora.methods.selectors` (the cLA family, PaCA), :mod:`~pinn_lora.methods.geometric`
(ODELoRA, Riemannian, OD-LoRA), :mod:`~pinn_lora.methods.catalog` (``python -m pinn_lora.methods`` and the
options tables of docs/methods.md).
"""
from __future__ import annotations

from typing import Any

from pinn_lora.methods.base import (
    ANY,
    TARGETS,
    AttachContext,
    LayerTargets,
    Method,
    MethodOptionError,
    Option,
    trainable_parameters,
)
from pinn_lora.methods.catalog import BUILTIN, method_table, options_markdown
from pinn_lora.methods.chains import CHAIN_OPTIONS, RAC, Chained, CoLA
from pinn_lora.methods.geometric import ODELoRA, ODLoRA, Riemannian, weight_gradients
from pinn_lora.methods.lora_family import ADAPTER_OPTIONS, AsymLoRA, DoRA, LoRA, LoRAPlus, PiSSA, RSLoRA
from pinn_lora.methods.references import Full, Scratch
from pinn_lora.methods.selectors import C3LA, CLA, PaCA, RandomC3LA, RandomCLA

__all__ = ["ANY", "TARGETS", "AttachContext", "LayerTargets", "Method", "MethodOptionError", "Option",
           "trainable_parameters", "BUILTIN", "method_table", "options_markdown", "CHAIN_OPTIONS", "RAC", "Chained",
           "CoLA", "ODELoRA", "ODLoRA", "Riemannian", "weight_gradients", "ADAPTER_OPTIONS", "AsymLoRA", "DoRA",
           "LoRA", "LoRAPlus", "PiSSA", "RSLoRA", "Full", "Scratch", "C3LA", "CLA", "PaCA", "RandomC3LA",
           "RandomCLA", "get_method"]


def get_method(name: str, **options: Any) -> Method:
    """The method ``name`` with ``options`` (checked against its declared options)."""
    from pinn_lora.core.registry import METHODS

    return METHODS.get(name)(**options)
