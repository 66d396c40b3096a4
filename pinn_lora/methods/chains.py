"""Chained methods: every ``chain_every`` steps each adapter merges into W0 and restarts (CoLA, RAC); the
:class:`Chained` mixin is also what the chained cLA methods (:mod:`pinn_lora.methods.selectors`) use."""
from __future__ import annotations

from torch import nn

from pinn_lora.model.adapters import adapter_layers
from pinn_lora.model.adapters.base import AdapterLinear
from pinn_lora.methods.base import Option
from pinn_lora.methods.dynamics import Dynamics
from pinn_lora.methods.lora_family import AsymLoRA, LoRA


class Chained:
    """Mixin of the chained methods: every ``chain_every`` steps each adapted layer
    takes its chain step (merge into W0 and restart), then the optimiser's
    moments are reset. The network's function is unchanged by a chain step."""

    hook_in_place = True  # merges and restarts write W0, B, A and the selector's columns in place

    def chain_step(self, index: int, layer: AdapterLinear) -> None:
        layer.restart(self.generator)

    def after_step(self, step: int, model: nn.Module, dynamics: Dynamics) -> None:
        if (step + 1) % self.chain_every == 0:
            for i, lay in adapter_layers(model):
                self.chain_step(i, lay)
            dynamics.reset_state()


CHAIN_OPTIONS = {"chain_every": Option(100, int, "steps between chain steps (merge, restart, optimiser reset)",
                                      above=0)}


class CoLA(Chained, LoRA):
    name = "cola"
    summary = ("CoLA, chain of LoRA (Xia, Qin & Hazan 2024, arXiv 2401.04151): every chain_every steps merge "
               "s·B·A into W0, restart from B = 0 and a fresh A, reset Adam")
    declared = {**LoRA.declared, **CHAIN_OPTIONS}


class RAC(Chained, AsymLoRA):
    name = "rac"
    summary = ("RAC, chained Asym-LoRA (Cadenhead et al. 2026, arXiv 2606.13767): Asym-LoRA that every "
               "chain_every steps merges, draws a new frozen A, zeroes B and resets Adam")
    declared = {**LoRA.declared, **CHAIN_OPTIONS}
