"""Add your own PDE family in one file: pretrain a base model for it, save it, and
adapt it to another coefficient with LoRA and ODELoRA.

The family here is the 1-D heat equation

    u_t = kappa u_xx,  x in [0, 1], t in [0, 1],
    u(x, 0) = sin(pi x) + 0.5 sin(3 pi x),  u(0, t) = u(1, t) = 0,

with the exact solution u = exp(-kappa pi^2 t) sin(pi x) + 0.5 exp(-9 kappa pi^2 t) sin(3 pi x).
The diffusivity kappa sets how fast both modes decay: at t = 1 the first mode has
decayed to 37 % of its start at kappa = 0.1 (the base model) and to 2 % at kappa = 0.4
(the target): the two solutions differ by 61 % of the first's norm (relative L2), 111 % of the
second's.

A family is a ``Problem`` subclass: class attributes for the variables, box, coefficients
(``Coefficient`` validates each one), default target, evaluation grid and network; then
``geometry``, ``residuals`` (written once against the derivative provider ``d``: ``d.u``,
``d.u_t``, ``d.u_xx``, ``d.column("x")`` ...), ``reference_grid`` and, optionally,
``output_transform`` (hard initial/boundary data) and ``residual_scale``.

    python examples/custom_problem.py                   # full budget (about a minute on a 2-core CPU)
    PINN_LORA_FAST=1 python examples/custom_problem.py  # a few steps, for a smoke check

It writes ``out/heat_base.{safetensors,json}`` (the base model) and ``out/heat_<method>/``
(the adapted runs). Here the family is registered by hand (``PROBLEMS.register``); another
package makes it available by name (``pinn_lora.get_problem("heat")``, ``load_base``, ``adapt_to``,
``adapt_many``), without any register call, by declaring it in its ``pyproject.toml``:

    [project.entry-points."pinn_lora.problems"]
    heat = "mypackage.heat:Heat"

and then, once that package is installed, from the command line too, with nothing added to pinn_lora's
files (its config is built from the class: ``problem.kappa=...`` sets the coefficient, ``recipe`` below
says what its runs do differently from the package's recipe). pinn_lora ships no base model for it: give the one saved here with
``base=``:

    python -m pinn_lora.adapt problem=heat method=lora base=out/heat_base problem.kappa=0.3
    python -m pinn_lora.adapt -m problem=heat method=lora,odelora base=out/heat_base seed=0,1

(``tests/test_entry_points.py`` runs this with a fake installed distribution.)
"""
import math
import os
import time

import numpy as np
import torch

from pinn_lora.pde.problem import Coefficient, CoefficientError, Problem, geometry_xt

MODES = ((1, 1.0), (3, 0.5))  # (wavenumber m, amplitude) of the initial condition's sine modes


class Heat(Problem):
    name = "heat"  # the name it is registered under (a saved base's card refers to it)
    variables = ("x", "t")
    lower = (0.0, 0.0)
    upper = (1.0, 1.0)
    # kappa > 0; above 1 the solution has decayed below 1e-4 by t = 1 and there is little left to learn
    coefficient_specs = (Coefficient("kappa", 0.1, low=0.0, high=1.0, doc="diffusivity"),)
    target = {"kappa": 0.4}  # default adaptation target
    eval_points = (101, 101)  # evaluation grid (x, t)
    network = {"layers": [2, 32, 32, 32, 1], "activation": "tanh"}
    # what its runs do differently from the package's recipe (pinn_lora.core.recipe; left out: exactly the
    # package's, the same as the shipped families get): here only ODELoRA's options on first-order steps
    recipe = {"method": {"odelora": {"lr": 1e-2, "precondition": "rmsprop", "schedule": "cosine"}}}

    def geometry(self):
        return geometry_xt(self.lower, self.upper)

    @staticmethod
    def initial(x):
        lib = torch if isinstance(x, torch.Tensor) else np
        return sum(a * lib.sin(m * math.pi * x) for m, a in MODES)

    def output_transform(self, inputs, outputs):
        # u = u0(x) + t x (1 - x) N: initial and boundary data hold exactly
        x, t = inputs[:, :1], inputs[:, 1:2]
        return self.initial(x) + t * x * (1 - x) * outputs

    def residuals(self, d):
        return {"pde": d.u_t - self.kappa * d.u_xx}

    def residual_scale(self):
        # mean square of u_t = kappa u0'' at t = 0, so one learning rate serves every kappa
        return self.kappa**2 * sum((a * (m * math.pi) ** 2) ** 2 / 2 for m, a in MODES)

    def reference_grid(self, axes):
        x, t = np.meshgrid(axes[0], axes[1], indexing="ij")
        return sum(a * np.exp(-self.kappa * (m * math.pi) ** 2 * t) * np.sin(m * math.pi * x) for m, a in MODES)


def main() -> None:
    from pinn_lora import adapt_to, pretrain_base
    from pinn_lora.core.registry import PROBLEMS, get_problem
    from pinn_lora.training.trainer import TrainConfig, residual_loss
    from pinn_lora.store.zoo import load_base

    fast = bool(os.environ.get("PINN_LORA_FAST"))
    PROBLEMS.register("heat", Heat)  # by name from now on, like the shipped families

    source, target = get_problem("heat"), get_problem("heat", kappa=0.4)
    for bad in ("hot", 0.0, -1.0, 2.0):  # the coefficient is validated
        try:
            get_problem("heat", kappa=bad)
        except CoefficientError as exc:
            last_error = str(exc)
        else:
            raise AssertionError(f"kappa={bad!r} was accepted")
    print(f"refused: {last_error}")

    # 1. pretrain a small base model at the source coefficient and save it
    if fast:
        train = TrainConfig(steps=40, n_points=300, lbfgs_steps=0, eval_every=40, progress=False)
    else:
        train = TrainConfig(steps=2000, n_points=1000, resample_every=100, lbfgs_steps=300, eval_every=500,
                            progress=False)
    t0 = time.perf_counter()
    net, card = pretrain_base(source, layers=Heat.network["layers"], activation=Heat.network["activation"],
                              train=train, lr=2e-3, out="out/heat_base")
    print(f"pretrained {source!r}: rel. L2 {card['relative_l2']:.3e} after {card['steps']} steps "
          f"in {time.perf_counter() - t0:.1f}s -> out/heat_base.safetensors + .json")

    # the saved base round-trips: same card, same source problem, same outputs and error
    loaded, card2, source2 = load_base("out/heat_base")
    assert card2 == card and source2 == source, (card2, card)
    x = torch.tensor(source.sample(500, seed=1))
    with torch.no_grad():
        gap = float((loaded(x) - net(x)).abs().max())
    assert gap < 1e-6, f"the loaded base computes something else (max. difference {gap:.1e})"
    assert abs(source.relative_l2(loaded) - card["relative_l2"]) < 1e-6

    # 2. adapt it to kappa = 0.4 with the package's recipe (second-order steps, adaptive points, continuation)
    budget = {"steps": 3, "n_points": 300} if fast else {"steps": 20}
    points = torch.tensor(target.sample(2000, seed=123))
    base_loss = residual_loss(target, loaded, points).item()
    results = {}
    for method in ("lora", "odelora"):
        res = adapt_to("out/heat_base", target, method, device="cpu", progress=False, lbfgs_steps=0,
                       eval_every=budget["steps"], run_dir=f"out/heat_{method}", plots=not fast,
                       **budget)
        results[method] = res
        loss = residual_loss(target, res.model, points).item()
        print(res.summary_line())
        print(f"  residual loss on kappa=0.4: base {base_loss:.3e} -> adapted {loss:.3e}")
        assert res.history.status == "completed", res.history.message
        assert loss < (0.99 if fast else 0.5) * base_loss, (method, loss, base_loss)
        assert (res.run_dir / "adapter.safetensors").is_file()

    base_error = results["lora"].base_error
    assert base_error > 0.2, f"kappa=0.4 should be far from the base model (error {base_error:.3e})"
    if not fast:
        assert card["relative_l2"] < 5e-3, f"base model error at its own kappa: {card['relative_l2']:.3e}"
        for method, res in results.items():
            assert res.error < 0.25 * res.base_error, (method, res.error, res.base_error)
        assert results["lora"].error < 0.05 * base_error, results["lora"].error


if __name__ == "__main__":
    main()
