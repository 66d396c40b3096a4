"""The contract every method satisfies, checked on tiny networks of every problem."""
import copy
from pathlib import Path

import pytest
import torch
from tiny import make_closure as _closure
from tiny import setup as _setup

from pinn_lora.model.adapters import adapter_layers, merge_adapters
from pinn_lora.methods import BUILTIN, LoRA, MethodOptionError, Option, catalog, get_method, trainable_parameters
from pinn_lora.model.network import build_network
from pinn_lora.core.registry import METHODS, PROBLEMS, UnknownNameError, get_problem
from pinn_lora.training.trainer import residual_loss
from ours import OUR_METHODS, OUR_PROBLEMS

FAMILIES = OUR_PROBLEMS  # our own families
ISSUE_METHODS = ["scratch", "full", "lora", "odelora", "odlora", "cla", "rcla", "c3la", "rc3la", "rslora", "loraplus",
                 "dora", "pissa", "riemannian", "cola", "asymlora", "rac", "paca"]
METHOD_NAMES = OUR_METHODS  # our own methods (a plugin's is tested by its own package)
ADAPTERS = [m for m in METHOD_NAMES if m not in ("scratch", "full")]


@pytest.mark.parametrize("problem", FAMILIES)
@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if m != "scratch"])
def test_starts_at_base_output(problem, method):
    _, base, model, _, pts = _setup(problem, method)
    assert torch.allclose(model(pts), base(pts), atol=1e-12, rtol=0)


@pytest.mark.parametrize("init", ["gradient", "random", "pissa"])
def test_odelora_every_init_starts_at_base(init):
    _, base, model, _, pts = _setup("burgers", "odelora", init=init)
    assert torch.allclose(model(pts), base(pts), atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ADAPTERS)
def test_merge_equals_unmerged(method):
    _, _, model, _, pts = _setup("burgers", method)
    with torch.no_grad():  # move away from the start so the merge has something to merge
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    before = model(pts)
    merged = merge_adapters(copy.deepcopy(model))
    assert not list(adapter_layers(merged))
    assert torch.allclose(merged(pts), before, atol=1e-12, rtol=0)


LORA_2 = 2 * (2 + 8) + 2 * (8 + 8) + 1 * (8 + 1)  # rank 2 on 2->8, 8->8, and clipped to 1 on 8->1
B_ONLY_2 = 8 * 2 + 8 * 2 + 1 * 1  # only B (out x r)
SELECT_2 = 8 * 2 + 8 * 2 + 1 * 2  # out x r, r clipped to the input width only (2 on the first layer)
COUNTS = {"lora": LORA_2, "rslora": LORA_2, "loraplus": LORA_2, "pissa": LORA_2, "cola": LORA_2, "odelora": LORA_2,
          "riemannian": LORA_2, "odlora": LORA_2, "dora": LORA_2 + 8 + 8 + 1, "asymlora": B_ONLY_2, "rac": B_ONLY_2,
          "cla": SELECT_2, "rcla": SELECT_2, "c3la": SELECT_2, "rc3la": SELECT_2, "paca": SELECT_2}


@pytest.mark.parametrize("method", ADAPTERS)
def test_trainable_parameter_count(method):
    if method not in COUNTS:
        pytest.skip(f"{method} is a third-party method without a known count")
    _, _, model, _, _ = _setup("burgers", method, rank=2)
    assert trainable_parameters(model) == COUNTS[method]


@pytest.mark.parametrize("method,rank,targets,expected", [
    ("lora", 1, "hidden", (2 + 8) + (8 + 8)),
    ("odelora", 3, [1], 3 * (8 + 8)),
    ("cla", 3, "output", 1 * 3),
])
def test_trainable_parameter_count_with_targets(method, rank, targets, expected):
    _, _, model, _, _ = _setup("burgers", method, rank=rank, targets=targets)
    assert trainable_parameters(model) == expected


def test_full_and_scratch_train_everything():
    for name in ("full", "scratch"):
        _, _, model, _, _ = _setup("helmholtz", name)
        assert trainable_parameters(model) == (2 * 8 + 8) + (8 * 8 + 8) + (8 + 1)


def test_scratch_is_a_fresh_network():
    _, base, model, _, pts = _setup("burgers", "scratch")
    assert not torch.allclose(model(pts), base(pts))


@pytest.mark.parametrize("problem", FAMILIES)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_a_residual_step_changes_the_loss(problem, method):
    """Second derivatives flow through every method on every problem."""
    prob, _, model, meth, pts = _setup(problem, method)
    dyn = meth.dynamics(model)

    closure = _closure(prob, model, pts)

    before = float(closure())
    for _ in range(3):
        dyn.step(closure)
    after = float(closure())
    assert after < before


def test_frozen_base_stays_frozen_for_adapters():
    _, _, model, _, _ = _setup("burgers", "lora")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_bad_options_are_clear():
    with pytest.raises(MethodOptionError, match="unknown option rnk"):
        get_method("lora", rnk=3)
    with pytest.raises(MethodOptionError, match="lr=-1"):
        get_method("odelora", lr=-1.0)
    with pytest.raises(MethodOptionError, match="scheme='rk5'"):
        get_method("odelora", scheme="rk5")
    with pytest.raises(MethodOptionError, match="rank=9 is larger"):
        _setup("burgers", "lora", rank=9)
    with pytest.raises(UnknownNameError, match="valid methods: .*full, lora, loraplus, odelora"):
        get_method("loraa")


def test_lbfgs_finish_reduces_the_loss():
    """The L-BFGS phase takes real steps (a line search with evaluations)."""
    from pinn_lora.training.trainer import TrainConfig, Trainer

    prob = get_problem("helmholtz")
    net = build_network([2, 16, 16, 1], "sin", seed=0, output_transform=prob.output_transform)
    hist = Trainer(prob, net, None, TrainConfig(steps=0, lbfgs_steps=25, n_points=256, eval_every=15,
                                                progress=False)).run()
    assert [r["step"] for r in hist.records] == [0, 10, 20]  # one record per call of 10, 10, 5 iterations
    assert [("rel_l2" in r) for r in hist.records] == [False, True, True]
    assert hist.records[-1]["loss"] < 0.5 * hist.records[0]["loss"]
    assert hist.evaluations >= 26  # line-search evaluations counted (>= 1 per iteration + the start)


@pytest.mark.parametrize("scheme", ["euler", "heun", "midpoint", "rk4"])
def test_odelora_steps_end_balanced_with_rebalance(scheme):
    """Each scheme makes its declared number of evaluations; the step's rebalance leaves BᵀB = AAᵀ."""
    prob, _, model, meth, pts = _setup("burgers", "odelora", scheme=scheme, lr=0.01)
    dyn = meth.dynamics(model)
    evals = []

    closure = _closure(prob, model, pts, calls=evals)

    dyn.step(closure)
    assert len(evals) == dyn.evaluations_per_step == {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}[scheme]
    for _, lay in adapter_layers(model):
        b, a = lay.factors()
        assert torch.allclose(b.T @ b, a @ a.T, atol=1e-10, rtol=0)


@pytest.mark.parametrize("precondition", ["none", "rmsprop"])
def test_odelora_euler_step_moves_w_by_projected_gradient(precondition):
    """One Euler step of size h changes each adapted W by -h·P_T(G̃) up to O(h²), with G̃ = G
    (the paper's flow) or G/(sqrt(v̂)+eps+floor) = G/(|G|+eps+floor) at the first RMSprop step."""
    from pinn_lora.methods.dynamics.odelora import tangent_projection
    from pinn_lora.methods import weight_gradients

    prob, _, model, meth, pts = _setup("helmholtz", "odelora", lr=1e-6, rebalance=False, damping=0.0,
                                       precondition=precondition)
    layers = [lay for _, lay in adapter_layers(model)]
    w_before = [lay.weight0 + lay.delta_weight().detach() for lay in layers]
    factors = [tuple(t.detach().clone() for t in lay.factors()) for lay in layers]
    merged = merge_adapters(copy.deepcopy(model))
    grads = weight_gradients(merged, list(range(len(layers))),
                             lambda m: residual_loss(prob, m, pts))
    dyn = meth.dynamics(model)

    closure = _closure(prob, model, pts)

    dyn.step(closure)
    for lay, w0, (b, a), g in zip(layers, w_before, factors, grads):
        dw = lay.weight0 + lay.delta_weight().detach() - w0
        if precondition == "rmsprop":  # the metric sqrt(v̂) + eps + floor, floor = 0.1 x the layer's RMS
            g = g / (g.abs() + 1e-8 + 0.1 * g.square().mean().sqrt())
        expect = -1e-6 * tangent_projection(g, b, a)
        assert torch.linalg.norm(dw - expect) <= 1e-3 * torch.linalg.norm(expect)


def test_lbfgs_finish_after_preconditioned_odelora():
    """The L-BFGS finish runs on any method's parameters (here ODELoRA's factors, whose
    gradients autograd leaves non-contiguous in the preconditioned mode)."""
    from pinn_lora.training.trainer import TrainConfig, Trainer

    prob, _, model, meth, _ = _setup("burgers", "odelora", precondition="rmsprop", lr=1e-3)
    hist = Trainer(prob, model, meth.dynamics(model), TrainConfig(steps=3, lbfgs_steps=12, n_points=128,
                                                                  progress=False)).run()
    assert [r["phase"] for r in hist.records] == ["train"] * 3 + ["lbfgs"] * 2  # 10 + 2 iterations
    assert hist.records[-1]["loss"] < hist.records[3]["loss"]


@pytest.mark.parametrize("method", OUR_METHODS)
def test_the_materialised_forward_equals_the_factored_one(method):
    """Issue 17 item 0: a batch of points runs F.linear(x, W0 + ΔW) (one product), a single point the
    factored W0·x + delta(x); both give the same outputs to 1e-12, for every method's layers."""
    prob, _, model, meth, pts = _setup("burgers", method)
    with torch.no_grad():  # move every trainable parameter off its start so ΔW is not zero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype))
    x = torch.rand(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    batch = model(x).detach()
    one_by_one = torch.cat([model(x[i:i + 1]) for i in range(x.shape[0])]).detach()
    assert float((batch - one_by_one).abs().max()) <= 1e-12 * float(batch.abs().max())
    for _, lay in adapter_layers(model):
        h = torch.randn(50, lay.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        y = lay(h)
        if type(lay).__name__ == "DoRALinear":  # its own forward is F.linear(x, weight()) already
            continue
        factored = torch.nn.functional.linear(h, lay.weight0, lay.bias0) + lay.delta(h)
        assert float((y - factored).abs().max()) <= 1e-12 * float(y.abs().max()), type(lay).__name__


# ---- option declarations ---------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def test_builtin_methods_are_the_packages_entry_points():
    import tomllib

    points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pinn_lora.methods"]
    assert {cls.name: f"pinn_lora.methods:{cls.__name__}" for cls in BUILTIN} == points


@pytest.mark.parametrize("cls", BUILTIN, ids=lambda c: c.name)
def test_every_option_is_declared_with_help(cls):
    assert cls.declared and all(isinstance(o, Option) for o in cls.declared.values())
    assert all(o.help for o in cls.declared.values()), [k for k, o in cls.declared.items() if not o.help]
    assert cls.defaults == {k: o.default for k, o in cls.declared.items()}
    assert cls.from_problem == tuple(k for k, o in cls.declared.items() if o.from_problem)


def _bad_values(opt: Option):
    """Values the declaration refuses, with the words the refusal must hold."""
    if opt.choices is not None:
        yield "nope", "is not one of: " + ", ".join(map(str, opt.choices))
    elif opt.type is bool:
        yield "yes", "must be true or false"
    elif opt.type is int:
        yield 2.5, "must be an integer"
    elif opt.type is float:
        yield "x", "must be a finite number"
        yield float("nan"), "must be a finite number"
    if opt.above is not None:
        yield opt.above, f"must be > {catalog.value_text(float(opt.above))}"
    if opt.minimum is not None:
        yield opt.minimum - 1, f"must be >= {catalog.value_text(float(opt.minimum))}"


@pytest.mark.parametrize("cls", BUILTIN, ids=lambda c: c.name)
def test_each_declared_bound_is_enforced_with_a_clear_message(cls):
    for key, opt in cls.declared.items():
        for value, words in _bad_values(opt):
            with pytest.raises(MethodOptionError) as err:
                cls(**{key: value})
            msg = str(err.value)
            assert msg.startswith(f"method {cls.name}: option {key}={value!r} ") and words in msg, msg
            assert "\n" not in msg


def test_declared_bounds_of_the_issue():
    assert LoRA.declared["rank"].allowed() == "an integer > 0"
    assert LoRA.declared["lr"].above == 0 and LoRA.declared["lr"].from_problem
    assert METHODS.get("odelora").declared["scheme"].choices[-2:] == ("auto", "implicit")
    assert METHODS.get("odelora").defaults["scheme"] == "auto"
    assert METHODS.get("odlora").declared["refresh_growth"].minimum == 1
    with pytest.raises(MethodOptionError, match=r"method odlora: option warmup=-1 must be >= 0"):
        get_method("odlora", warmup=-1)
    with pytest.raises(MethodOptionError, match=r"h_max_ratio=0.5 must be >= 1"):
        get_method("odelora", h_max_ratio=0.5)


def test_values_are_converted_to_the_declared_type():
    import numpy as np

    m = get_method("lora", rank=np.int64(3), alpha=2, targets=(0, -1))
    assert type(m.rank) is int and type(m.alpha) is float and m.targets == [0, -1]


def test_unknown_option_suggests_the_near_one():
    with pytest.raises(MethodOptionError, match=r"unknown option rnk; options are: alpha, .* \(did you mean rank\?\)"):
        get_method("lora", rnk=3)


def test_a_subclass_giving_only_defaults_gets_declarations():
    """A third-party method written before declarations (``defaults`` and ``positive``) keeps working: inherited
    options keep their declaration, a new one takes its default's type, ``positive`` bounds it."""

    class Wide(LoRA):
        name = "wide"
        summary = "test"
        defaults = {**LoRA.defaults, "rank": 8, "width": 3}
        positive = ("width",)

    assert Wide.declared["rank"] == LoRA.declared["rank"].with_default(8)
    assert Wide.declared["width"].type is int and Wide.declared["width"].above == 0
    assert Wide().options["width"] == 3
    with pytest.raises(MethodOptionError, match="method wide: option width=0 must be > 0"):
        Wide(width=0)
    with pytest.raises(MethodOptionError, match="method wide: option rank=0 must be > 0"):
        Wide(rank=0)


def test_a_declaration_whose_default_breaks_its_own_bound_is_refused():
    with pytest.raises(TypeError, match="the default of rank is not allowed"):
        class Broken(LoRA):  # noqa: F841
            name = "broken"
            declared = {**LoRA.declared, "rank": Option(0, int, "r", above=0)}


def test_method_table_lists_every_option_with_its_help():
    text = catalog.method_table()
    for name in METHODS.names():
        assert f"\n{name:<11} " in "\n" + text, name
    odelora = text.split("\nodelora ")[1].split("\n")[1:]
    assert any(line.split()[0] == "scheme=auto" and "implicit" in line for line in odelora), odelora


# ---- docs/methods.md's options section ----------------------------------------------------------------------
METHODS_PAGE = ROOT / "docs" / "methods.md"


def test_methods_page_options_are_current():
    text = METHODS_PAGE.read_text()
    assert catalog.render_page(text) == text, ("docs/methods.md's options differ from the declarations: "
                                               "run python -m pinn_lora.methods --write docs/methods.md")


def test_methods_page_goes_stale_when_an_option_changes():
    class Lora(LoRA):  # the same method with another default
        declared = {**LoRA.declared, "rank": LoRA.declared["rank"].with_default(8)}

    text = METHODS_PAGE.read_text()
    changed = catalog.render_page(text, [Lora if cls is LoRA else cls for cls in BUILTIN])
    assert changed != text and "| `rank` | `8` |" in changed


@pytest.mark.integration  # two subprocesses (8 s); the page's currency is checked in-process above
def test_methods_page_check_command(tmp_path):
    import subprocess
    import sys

    stale = tmp_path / "methods.md"
    stale.write_text(METHODS_PAGE.read_text().replace("| `scheme` | `auto` |", "| `scheme` | `euler` |"))
    run = [sys.executable, "-m", "pinn_lora.methods"]
    res = subprocess.run([*run, "--check", str(stale)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and "is stale" in res.stderr, res.stderr
    assert subprocess.run([*run, "--write", str(stale)], capture_output=True, cwd=ROOT).returncode == 0
    assert stale.read_text() == METHODS_PAGE.read_text()
    nothing = tmp_path / "none.md"
    nothing.write_text("# no block\n")
    res = subprocess.run([*run, "--check", str(nothing)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "no <!-- options -->" in res.stderr
