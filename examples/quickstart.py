"""Adapt the shipped Burgers base model (nu = 0.01/pi) to nu = 0.02/pi with
ODELoRA and with LoRA, and compare their errors against the Cole–Hopf reference.

    python examples/quickstart.py                  # the default recipe (about two minutes on a CPU)
    PINN_LORA_FAST=1 python examples/quickstart.py # a few steps, for a smoke check
"""
import math
import os

import torch

from pinn_lora import adapt_to
from pinn_lora.core.registry import get_problem
from pinn_lora.training.trainer import residual_loss
from pinn_lora.store.zoo import load_base

fast = bool(os.environ.get("PINN_LORA_FAST"))
problem = get_problem("burgers", nu=0.02 / math.pi)
# {}: the problem's default recipe (second-order steps on residual-adaptive points, about a minute each)
settings = {"steps": 4, "n_points": 500} if fast else {}
results = {}
for method in ("odelora", "lora"):
    res = adapt_to("burgers", problem, method=method, device="cpu", progress=False, **settings)
    results[method] = res
    print(res.summary_line())

# both start from the same base, so both start at the same error, and both lower the residual loss
assert abs(results["odelora"].base_error - results["lora"].base_error) < 1e-12
points = torch.tensor(problem.sample(2000, seed=123))
base_loss = float(residual_loss(problem, load_base("burgers")[0], points))
for res in results.values():
    loss = float(residual_loss(problem, res.model, points))
    print(f"{res.method.name}: residual loss on the target {base_loss:.3e} (base) -> {loss:.3e}")
    assert loss < 0.8 * base_loss, res.method.name
    assert res.history.status == "completed"
