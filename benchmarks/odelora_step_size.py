"""How ODELoRA's default time step is chosen: the largest eigenvalue of the
Hessian of the normalised residual loss w.r.t. all linear weights, at the
shipped base model evaluated on the default target problem. Gradient flow
discretised by explicit Euler is stable for h < 2/λ_max; the default is ≈ 1/λ_max.

    python benchmarks/odelora_step_size.py [problem ...]

Writes benchmarks/results/odelora_step_size.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pinn_lora.model.curvature import top_hessian_eigenvalue
from pinn_lora.runs.pretrain import device_name
from pinn_lora.core.registry import get_problem
from pinn_lora.training.trainer import residual_loss
from pinn_lora.store.zoo import load_base


def main(names: list[str]) -> None:
    out = Path(__file__).parent / "results" / "odelora_step_size.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in names:
        net, card, _ = load_base(name)
        prob = get_problem(name).default_target()
        pts = torch.as_tensor(prob.sample(2000, seed=0))
        params = [lin.weight for lin in net.linears]
        for p in net.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        lam = top_hessian_eigenvalue(lambda: residual_loss(prob, net, pts), params)
        results[name] = {"target": prob.coefficients, "lambda_max": lam, "stability_limit_h": 2 / lam,
                         "suggested_h": 1 / lam, "points": 2000, "device": device_name(torch.device("cpu")),
                         "base_sha256": card["weights_sha256"]}
        print(name, results[name])
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["burgers", "allen_cahn", "helmholtz"])
