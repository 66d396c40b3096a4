"""The two references every adapter is measured against: a fresh network (``scratch``) and full fine-tuning
(``full``)."""
from __future__ import annotations

import torch
from torch import nn

from pinn_lora.methods.base import AttachContext, Method


class Scratch(Method):
    name = "scratch"
    summary = "a freshly initialised network trained on the target (the reference adaptation must beat)"
    lm_by_default = False

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        net.reset_parameters(torch.Generator().manual_seed(ctx.seed + 7919))
        for p in net.parameters():
            p.requires_grad_(True)
        return net


class Full(Method):
    name = "full"
    summary = "full fine-tuning: every base weight and bias trainable"
    lm_by_default = False

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        for p in net.parameters():
            p.requires_grad_(True)
        return net
