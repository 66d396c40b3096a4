"""LoRA and the variants that change only its scale, start, learning rates or what trains: rsLoRA, LoRA+, PiSSA,
DoRA, Asym-LoRA."""
from __future__ import annotations

import math

import torch
from torch import nn

from pinn_lora.model.adapters import LoRALinear, adapter_layers, attach_adapters
from pinn_lora.model.adapters.base import AdapterLinear, resolve_targets
from pinn_lora.model.adapters.dora import DoRALinear
from pinn_lora.model.adapters.lora import layer_rank
from pinn_lora.methods.base import TARGETS, AttachContext, Method, MethodOptionError, Option
from pinn_lora.methods.dynamics import Dynamics, GradientDynamics
from pinn_lora.methods.dynamics.odelora import balanced_factors, implicit_dynamics

# the options of every adapter built on LoRA's B·A (ΔW = s·B·A)
ADAPTER_OPTIONS = {
    "rank": Option(4, int, "adapter rank r (each layer uses min(r, fan-in, fan-out))", above=0),
    "alpha": Option(4.0, float, "scale numerator: s = alpha/r", above=0),
    "targets": Option("all", TARGETS, "the linear layers adapted (negative indices count from the output layer, "
                                      "-1)"),
}


class LoRA(Method):
    name = "lora"
    summary = "LoRA (Hu et al. 2021): W0 + (alpha/r)·B·A, B = 0, A Kaiming-uniform, Adam"
    declared = {**Method.declared, **ADAPTER_OPTIONS, "lr": Method.declared["lr"].with_default(3e-3)}

    def check_rank(self, net: nn.Module) -> None:
        layers = [net.linears[i] for i in resolve_targets(len(net.linears), self.targets)]
        limit = max(min(lin.in_features, lin.out_features) for lin in layers)
        if self.rank > limit:
            raise MethodOptionError(f"method {self.name}: rank={self.rank} is larger than any adapted layer "
                                    f"allows (at most {limit}; each layer uses min(rank, out, in))")

    def scale(self) -> float:
        """s in ΔW = s·B·A: α/r (LoRA's)."""
        return self.alpha / self.rank

    def make_layer(self, lin: nn.Linear, gen: torch.Generator) -> AdapterLinear:
        return LoRALinear(lin, self.rank, self.alpha, generator=gen, scale=self.scale())

    def second_order(self, model: nn.Module, mu: float, adaptive: bool = True) -> Dynamics:
        """Where every trainable tensor is a factor of a plain LoRA layer (B and A both trained),
        the Levenberg–Marquardt damping is the weight-space metric ‖s(δB·A + B·δA)‖²_F — how far
        the step moves W, not the factor coordinates — and the factors are rebalanced after each
        step (BᵀB = AAᵀ, W unchanged). Marquardt's diagonal scaling leaves the gauge directions
        (BX, −XA) almost undamped, and the step took the Burgers target error above the base's on
        the way (docs/adaptation.md, "LoRA under solver=lm"). Other layouts: the plain step."""
        layers = [lay for _, lay in adapter_layers(model)]
        if layers and all(type(lay) is LoRALinear for lay in layers):
            factors = {id(t) for lay in layers for t in lay.factors()}
            if factors == {id(p) for p in model.parameters() if p.requires_grad}:  # B and A trained, nothing else
                return implicit_dynamics(layers, mu=mu, adaptive=adaptive, rebalance_factors=True)
        return super().second_order(model, mu, adaptive)

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.check_rank(net)
        self.generator = torch.Generator().manual_seed(ctx.seed)
        return attach_adapters(net, lambda i, lin: self.make_layer(lin, self.generator), self.targets)


class RSLoRA(LoRA):
    name = "rslora"
    summary = "rank-stabilised LoRA (Kalajdzievski 2023, arXiv 2312.03732): scale alpha/sqrt(r) instead of alpha/r"

    def scale(self) -> float:
        return self.alpha / math.sqrt(self.rank)


class LoRAPlus(LoRA):
    name = "loraplus"
    summary = "LoRA+ (Hayou, Ghosh & Yu 2024, arXiv 2402.12354): learning rate of B = lr_ratio x that of A"
    declared = {**LoRA.declared, "lr_ratio": Option(16.0, float, "learning rate of B / that of A", above=0)}

    def dynamics(self, model: nn.Module) -> Dynamics:
        groups = {"B": [], "other": []}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups["B" if name.endswith("lora_B") else "other"].append(p)
        return GradientDynamics([{"params": groups["B"], "lr_mult": self.lr_ratio}, {"params": groups["other"]}],
                                lr=self.lr, schedule=self.schedule, final_ratio=self.final_ratio)


class PiSSA(LoRA):
    name = "pissa"
    summary = ("PiSSA (Meng, Wang & Zhang 2024, arXiv 2404.02948): B, A from W0's top-r SVD "
               "(s·B·A = U_r S_r V_rᵀ), the residual kept frozen, Adam")

    def make_layer(self, lin: nn.Linear, gen: torch.Generator) -> AdapterLinear:
        r = layer_rank(self.rank, lin)
        factors = balanced_factors("pissa", lin.weight.detach(), None, r, self.scale(), 1.0, gen)
        return LoRALinear(lin, self.rank, self.alpha, factors=factors, scale=self.scale())


class DoRA(LoRA):
    name = "dora"
    summary = ("DoRA (Liu et al. 2024, arXiv 2402.09353): W = m * (W0 + sBA)/||W0 + sBA|| per output unit, "
               "trainable magnitude m and LoRA direction")
    declared = {**LoRA.declared, "detach_norm": Option(False, bool, "true: the norm is a constant in backward (as in "
                                                                    "PEFT and the paper's section 4.3)")}

    def make_layer(self, lin: nn.Linear, gen: torch.Generator) -> AdapterLinear:
        return DoRALinear(lin, self.rank, self.alpha, generator=gen, scale=self.scale(),
                          detach_norm=self.detach_norm)


class AsymLoRA(LoRA):
    name = "asymlora"
    summary = ("Asym-LoRA (Zhu et al. 2024, arXiv 2402.16842): A frozen at its random (Kaiming-uniform) init, "
               "only B trained")

    def make_layer(self, lin: nn.Linear, gen: torch.Generator) -> AdapterLinear:
        return LoRALinear(lin, self.rank, self.alpha, generator=gen, scale=self.scale(), train_a=False)
