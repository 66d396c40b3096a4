"""Column-selector methods: A is a fixed 0/1 selector of r input columns, only B trains (cLA, random cLA, the
chained c³LA and its random order), and PaCA, which trains r columns of W0 themselves."""
from __future__ import annotations

import torch
from torch import nn

from pinn_lora.model.adapters import attach_adapters
from pinn_lora.model.adapters.base import AdapterLinear
from pinn_lora.model.adapters.selector import PaCALinear, SelectorLinear, n_windows, selector_rank, window
from pinn_lora.methods.base import AttachContext
from pinn_lora.methods.chains import CHAIN_OPTIONS, Chained
from pinn_lora.methods.lora_family import LoRA

# a selector's r is clipped to each layer's input width only (any rank >= 1 is valid)
SELECTOR_RANK = LoRA.declared["rank"].with_default(4, help="input columns selected, r (each layer uses min(r, fan-in))")


class CLA(LoRA):
    name = "cla"
    summary = ("cLA (Cadenhead et al. 2026, arXiv 2606.13767): A a fixed 0/1 selector of the first r input "
               "columns (applied as a gather), only B trained")
    declared = {**LoRA.declared, "rank": SELECTOR_RANK}

    def check_rank(self, net: nn.Module) -> None:
        pass  # a selector is clipped to each layer's input width; any rank >= 1 is valid

    def first_columns(self, index: int, lin: nn.Linear) -> torch.Tensor:
        return torch.arange(selector_rank(self.rank, lin))

    def make_layer_at(self, index: int, lin: nn.Linear) -> AdapterLinear:
        return SelectorLinear(lin, self.rank, self.scale(), self.first_columns(index, lin))

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.generator = torch.Generator().manual_seed(ctx.seed)
        return attach_adapters(net, self.make_layer_at, self.targets)


class RandomCLA(CLA):
    name = "rcla"
    summary = "random cLA (Cadenhead et al. 2026): the r selected input columns are a random subset drawn once"

    def first_columns(self, index: int, lin: nn.Linear) -> torch.Tensor:
        r = selector_rank(self.rank, lin)
        return torch.randperm(lin.in_features, generator=self.generator)[:r].sort().values


class C3LA(Chained, CLA):
    name = "c3la"
    summary = ("c³LA, chained cLA (Cadenhead et al. 2026): every chain_every steps merge s·B into W0, shift the "
               "selector window by r columns (wrapping), zero B, reset Adam")
    declared = {**CLA.declared, **CHAIN_OPTIONS}

    state_keys = ("visits",)

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.visits: dict[int, int] = {}  # layer index -> chain steps taken
        return super().attach(net, ctx)

    def window_index(self, index: int, visit: int, n_win: int) -> int:
        """The window a layer uses after ``visit`` chain steps: shifted by r columns per
        visit (``window`` wraps the columns around mod n)."""
        return visit

    def first_columns(self, index: int, lin: nn.Linear) -> torch.Tensor:
        r = selector_rank(self.rank, lin)
        return window(self.window_index(index, 0, n_windows(r, lin.in_features)), r, lin.in_features)

    def chain_step(self, index: int, layer: AdapterLinear) -> None:
        visit = self.visits[index] = self.visits.get(index, 0) + 1
        n_win = n_windows(layer.rank, layer.in_features)
        layer.move_to(window(self.window_index(index, visit, n_win), layer.rank, layer.in_features))


class RandomC3LA(C3LA):
    name = "rc3la"
    summary = ("random c³LA (Cadenhead et al. 2026): c³LA visiting the windows in a random order without "
               "replacement (a new order each cycle)")

    state_keys = ("visits", "orders")

    def attach(self, net: nn.Module, ctx: AttachContext) -> nn.Module:
        self.orders: dict[int, list[int]] = {}  # layer index -> window order of each cycle so far
        return super().attach(net, ctx)

    def window_index(self, index: int, visit: int, n_win: int) -> int:
        order = self.orders.setdefault(index, [])
        while len(order) <= visit:
            order.extend(torch.randperm(n_win, generator=self.generator).tolist())
        return order[visit]


class PaCA(RandomCLA):
    name = "paca"
    summary = ("PaCA, partial connection adaptation (Woo et al. 2025, arXiv 2503.01905): a fixed random set "
               "of r input columns of W0 trained directly")
    declared = {k: v for k, v in CLA.declared.items() if k != "alpha"}  # s = 1: W0's own columns train

    def make_layer_at(self, index: int, lin: nn.Linear) -> AdapterLinear:
        return PaCALinear(lin, self.rank, self.first_columns(index, lin))  # random columns, drawn as rcla's
