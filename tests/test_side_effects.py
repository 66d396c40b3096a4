"""A run leaves the caller's process as it found it (issue 15, item 9): the global torch and numpy random
states and matplotlib's backend and open figures are the same after ``adapt`` / ``adapt_many`` as before,
while the same seed still gives the same numbers."""
import matplotlib
import numpy as np
import pytest
import torch

import pinn_lora
from pinn_lora.runs.many import adapt_many
from pinn_lora.model.network import build_network
from pinn_lora.core.registry import get_problem

HELM = get_problem("helmholtz", k=2.0)
RUN = dict(steps=3, n_points=32, eval_every=3, lbfgs_steps=0, device="cpu", progress=False, recommended={})


def tiny_base():
    return build_network([2, 8, 8, 1], "sin", seed=1, output_transform=HELM.output_transform)


@pytest.fixture
def notebook_backend():
    """A backend a caller chose (svg stands for a notebook's inline one) and one open figure of theirs."""
    import matplotlib.pyplot as plt

    old = matplotlib.get_backend()
    plt.switch_backend("svg")
    fig = plt.figure()
    yield fig
    plt.close(fig)
    plt.switch_backend(old)


def test_adapt_leaves_the_global_rngs_alone():
    base = tiny_base()  # (building a network draws torch's default layer init; the adapt call must not draw)
    torch.manual_seed(1234)
    np.random.seed(99)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    first = pinn_lora.adapt_to(base, HELM, "lora", plots=False, seed=0, **RUN)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))
    torch.rand(5)  # the caller draws: the run's numbers do not depend on the caller's generator
    again = pinn_lora.adapt_to(base, HELM, "lora", plots=False, seed=0, **RUN)
    assert [r["loss"] for r in first.metrics] == [r["loss"] for r in again.metrics]


def test_adapt_many_leaves_the_global_rng_alone():
    base = tiny_base()
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    adapt_many(base, [HELM, get_problem("helmholtz", k=3.0)], "lora", plots=False, seed=3, **RUN)
    assert torch.equal(torch.get_rng_state(), state)


def test_plots_leave_the_backend_and_figures_alone(notebook_backend, tmp_path):
    import matplotlib.pyplot as plt

    figures = plt.get_fignums()
    pinn_lora.adapt_to(tiny_base(), HELM, "lora", plots=True, run_dir=tmp_path, **RUN)
    assert (tmp_path / "plots" / "loss.png").stat().st_size > 0
    assert (tmp_path / "plots" / "solution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == "svg"
    assert plt.get_fignums() == figures and plt.gcf() is notebook_backend


def test_sensing_plot_leaves_the_backend_alone(notebook_backend, tmp_path, capsys):
    from pinn_lora.methods import sensing

    sensing.main(["--m", "8", "--n", "6", "--rank", "2", "--steps", "3",
                  "--plot", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == "svg"
