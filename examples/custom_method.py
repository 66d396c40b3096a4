"""Add your own adapter method in one file and compare it with the built-in ones.

The method here is a per-layer variant of VeRA (Kopiczko, Blankevoort & Asano
2024, arXiv 2310.11454): ΔW = diag(b)·B·diag(d)·A with B and A frozen random
matrices and only the vectors b (out) and d (rank) trained. b starts at 0, so
the adapted network starts exactly at the base network.

A method is a parameterisation (an ``AdapterLinear`` subclass: ``delta_weight``
is the one formula, ``delta`` the fast forward) and a ``Method`` subclass that
attaches it; training, monitors, plots and saving come from pinn_lora.

    python examples/custom_method.py                   # the default budget (about a minute on a CPU)
    PINN_LORA_FAST=1 python examples/custom_method.py  # a few steps, for a smoke check

Here the method is registered by hand (``METHODS.register``, when run as a script). To use it from the
command line, ship this file in your own package and declare it in that package's ``pyproject.toml``:

    [project.entry-points."pinn_lora.methods"]
    vera = "mypackage.vera:VeRA"

then, once the package is installed (``pip install -e .``), with nothing added to pinn_lora's files:

    python -m pinn_lora.adapt problem=helmholtz method=vera method.rank=8 solver=method
    python -m pinn_lora.adapt --help               # vera is listed with the built-in methods
    python -m pinn_lora.methods                    # with its summary and options

Its options on the command line are those it declares (``method.rank``, ``method.lr`` …); ``lr`` left out takes
the recipe's recommendation (``method['default']`` in pinn_lora/core/recipe.py). A test runs exactly this
with a fake installed distribution (``tests/test_entry_points.py``).
"""
import os

import torch
from torch import nn
from torch.nn import functional as F

from pinn_lora import adapt_to
from pinn_lora.model.adapters import AdapterLinear, attach_adapters
from pinn_lora.methods import Method, Option
from pinn_lora.core.registry import METHODS, get_problem


class VeRALinear(AdapterLinear):
    def __init__(self, base: nn.Linear, rank: int, generator: torch.Generator) -> None:
        super().__init__(base)
        like = dict(dtype=self.weight0.dtype, device=self.weight0.device)
        # frozen random matrices are buffers (never trained, saved with the adapter)
        self.register_buffer("vera_B", torch.randn(self.out_features, rank, generator=generator).to(**like)
                             / rank**0.5)
        self.register_buffer("vera_A", torch.randn(rank, self.in_features, generator=generator).to(**like)
                             / self.in_features**0.5)
        self.vera_b = nn.Parameter(torch.zeros(self.out_features, **like))
        self.vera_d = nn.Parameter(torch.full((rank,), 0.1, **like))

    def delta_weight(self) -> torch.Tensor:
        return (self.vera_b[:, None] * self.vera_B) @ (self.vera_d[:, None] * self.vera_A)

    def delta(self, x: torch.Tensor) -> torch.Tensor:  # never forms the out x in matrix
        return self.vera_b * F.linear(self.vera_d * F.linear(x, self.vera_A), self.vera_B)


class VeRA(Method):
    name = "vera"
    summary = "VeRA-style: frozen random B, A; trainable scaling vectors b (out) and d (rank)"
    declared = {**Method.declared,  # lr, schedule, final_ratio come from Method
                "rank": Option(16, int, "length of the trainable scaling vector d", above=0),
                "lr": Method.declared["lr"].with_default(1e-2)}

    def attach(self, net, ctx):
        gen = torch.Generator().manual_seed(ctx.seed)
        return attach_adapters(net, lambda i, lin: VeRALinear(lin, self.rank, gen), targets="all")


if __name__ == "__main__":
    METHODS.register("vera", VeRA)  # now usable by name, like the built-in methods (an entry point does this itself)
    fast = bool(os.environ.get("PINN_LORA_FAST"))
    problem = get_problem("helmholtz").default_target()
    budget = {"steps": 30, "n_points": 400} if fast else {}  # {}: the problem's recommended budget
    results = {}
    for name in ("vera", "lora"):
        res = adapt_to("helmholtz", problem, method=name, device="cpu", progress=False, **budget)
        results[name] = res
        print(res.summary_line())
    vera = results["vera"]
    n_expected = sum(lin.out_features + 16 for lin in vera.model.linears)
    assert vera.trainable == n_expected, (vera.trainable, n_expected)
    assert vera.error < vera.base_error, "the custom method should improve on the base model"
    print(f"vera trains {vera.trainable} numbers, lora {results['lora'].trainable}")
