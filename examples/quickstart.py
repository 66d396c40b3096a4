"""Adapt the shipped Burgers base model (nu = 0.01/pi) to nu = 0.02/pi with
ODELoRA and with LoRA, and compare their errors against the Cole–Hopf reference.

    python examples/quickstart.py            # full default runs (a few minutes on a CPU)
    PINN_LORA_FAST=1 python examples/quickstart.py   # a few steps, for a smoke check
"""
import math
import os

from pinn_lora.registry import get_problem
from pinn_lora.session import adapt

steps = 20 if os.environ.get("PINN_LORA_FAST") else 1500
problem = get_problem("burgers", nu=0.02 / math.pi)
results = {}
for method in ("odelora", "lora"):
    res = adapt("burgers", problem, method=method, steps=steps, device="cpu", progress=False,
                lr=0.05 if method == "odelora" else 3e-3)
    results[method] = res
    print(res.summary_line())

# both start from the same base, so both start at the same error
assert abs(results["odelora"].base_error - results["lora"].base_error) < 1e-12
assert all(r.error < r.base_error for r in results.values()), "adaptation should reduce the error"
