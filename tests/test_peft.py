"""Cross-check against Hugging Face PEFT: our LoRA, rsLoRA, DoRA and PiSSA layers compute what PEFT's
do (outputs and gradients, input derivatives included), PiSSA's start is PEFT's, and the export to PEFT's
adapter format loads back in PEFT with the same outputs."""
import copy
import math

import pytest
import torch
from tiny import setup as tiny_setup

peft = pytest.importorskip("peft", reason="peft is not installed (optional extra 'peft'): "
                                          "no cross-check against PEFT")

from pinn_lora.model.adapters import adapter_layers  # noqa: E402
from pinn_lora.interop.peft import save_peft, to_peft  # noqa: E402
from pinn_lora.methods import AttachContext, get_method  # noqa: E402
from pinn_lora.model.network import build_network  # noqa: E402
from pinn_lora.core.registry import get_problem  # noqa: E402
from pinn_lora.training.trainer import residual_loss  # noqa: E402

LAYERS = [2, 16, 16, 1]  # thin input and output layers: rank clipped to 2 and 1 there
RANK, ALPHA = 4, 3.0
TOL = 1e-10
PROBLEM = get_problem("burgers").default_target()
CTX = AttachContext(PROBLEM, lambda m: torch.zeros(()), seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def base_network(dtype=torch.float64):
    return build_network(LAYERS, "tanh", seed=1, dtype=dtype)


def points(dtype=torch.float64):
    return torch.rand(32, 2, generator=torch.Generator().manual_seed(5), dtype=dtype) * 2 - 1


def adapted(name, base, **opts):
    """Our adapted copy of ``base``, moved off its start: B random (so ∂/∂A is not trivially 0), and
    for DoRA the magnitude perturbed."""
    model = get_method(name, rank=RANK, alpha=ALPHA, **opts).attach(copy.deepcopy(base), CTX)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for _, lay in adapter_layers(model):
            lay.lora_B.copy_(0.3 * torch.randn(lay.lora_B.shape, generator=gen, dtype=torch.float64))
            if hasattr(lay, "magnitude"):
                lay.magnitude.mul_(1 + 0.1 * torch.randn(lay.magnitude.shape, generator=gen, dtype=torch.float64))
    return model


def peft_config(name, base, **extra):
    """PEFT's config for our layers: every linear targeted; the thin layers' rank clipped to min(in, out)
    while their scale keeps the configured rank (rank_pattern/alpha_pattern)."""
    rslora = name == "rslora"
    ranks, alphas = {}, {}
    for i, lin in enumerate(base.linears):
        r = min(RANK, lin.in_features, lin.out_features)
        ranks[rf"linears\.{i}"] = r
        alphas[rf"linears\.{i}"] = ALPHA * (math.sqrt(r / RANK) if rslora else r / RANK)
    return peft.LoraConfig(target_modules=[f"linears.{i}" for i in range(len(base.linears))], r=RANK,
                           lora_alpha=ALPHA, use_rslora=rslora, use_dora=name == "dora", rank_pattern=ranks,
                           alpha_pattern=alphas, **extra)


def peft_twin(name, base, model):
    """PEFT's adapted copy of ``base`` with our factors (and magnitude, and PiSSA's residual) copied in."""
    twin = peft.inject_adapter_in_model(peft_config(name, base), copy.deepcopy(base))
    with torch.no_grad():
        for i, lay in adapter_layers(model):
            t = twin.linears[i]
            assert t.scaling["default"] == pytest.approx(lay.scale, rel=1e-15)
            assert t.r["default"] == lay.rank
            t.lora_A["default"].weight.copy_(lay.lora_A)
            t.lora_B["default"].weight.copy_(lay.lora_B)
            t.base_layer.weight.copy_(lay.weight0)  # the residual for PiSSA, W0 otherwise
            if name == "dora":
                t.lora_magnitude_vector["default"].weight.copy_(lay.magnitude)
    return twin


def trainables(net, name):
    """The adapter tensors in a fixed order: per layer A, B (and DoRA's magnitude)."""
    out = []
    for i in range(len(net.linears)):
        lay = net.linears[i]
        if hasattr(lay, "lora_magnitude_vector"):  # PEFT
            out += [lay.lora_A["default"].weight, lay.lora_B["default"].weight]
            if name == "dora":
                out.append(lay.lora_magnitude_vector["default"].weight)
        else:
            out += [lay.lora_A, lay.lora_B] + ([lay.magnitude] if name == "dora" else [])
    return out


def evaluate(net, name, x):
    """Output, ∂u/∂x, and the gradients w.r.t. the adapter tensors of a PINN-like loss that uses ∂u/∂x."""
    x = x.clone().requires_grad_(True)
    u = net(x)
    (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    loss = (u ** 2).mean() + (du ** 2).mean() + (u[:, 0] * du[:, 1]).mean()
    grads = torch.autograd.grad(loss, trainables(net, name))
    return u.detach(), du.detach(), [g.detach() for g in grads]


def max_diffs(a, b):
    (ua, dua, ga), (ub, dub, gb) = a, b
    return (float((ua - ub).abs().max()), float((dua - dub).abs().max()),
            max(float((p - q).abs().max()) for p, q in zip(ga, gb)))


@pytest.mark.parametrize("name,opts", [("lora", {}), ("rslora", {}), ("pissa", {}),
                                       ("dora", {"detach_norm": True})])
def test_same_outputs_and_gradients_as_peft(name, opts):
    base = base_network()
    model = adapted(name, base, **opts)
    x = points()
    ours, theirs = evaluate(model, name, x), evaluate(peft_twin(name, base, model), name, x)
    assert all(g.abs().max() > 1e-3 for g in ours[2])  # every gradient is non-trivial
    out, dx, grad = max_diffs(ours, theirs)
    assert out <= TOL and dx <= TOL and grad <= TOL, (name, out, dx, grad)


def exact_dora_reference(model, x):
    """Our DoRA network rebuilt by hand, W = m·V/‖V‖ with autograd through ‖V‖: the exact gradient."""
    def net(inp):
        h = inp
        for i, (_, lay) in enumerate(adapter_layers(model)):
            v = lay.weight0 + lay.scale * lay.lora_B @ lay.lora_A
            w = lay.magnitude[:, None] * v / v.norm(dim=1, keepdim=True)
            h = torch.nn.functional.linear(h, w, lay.bias0)
            h = torch.tanh(h) if i < len(model.linears) - 1 else h
        return h

    class Ref(torch.nn.Module):
        linears = model.linears

        def forward(self, inp):
            return net(inp)

    return evaluate(Ref(), "dora", x)


def test_dora_norm_gradient_differs_from_peft_unless_detached():
    """PEFT detaches ‖W0 + s·B·A‖ in DoRA's backward (peft/tuners/lora/dora.py, DoraLinearLayer.forward);
    ours is exact by default: same outputs and input derivatives, different parameter gradients."""
    base, x = base_network(), points()
    exact = adapted("dora", base)
    assert not any(lay.detach_norm for _, lay in adapter_layers(exact))
    ours, theirs = evaluate(exact, "dora", x), evaluate(peft_twin("dora", base, exact), "dora", x)
    out, dx, grad = max_diffs(ours, theirs)
    assert out <= TOL and dx <= TOL  # the forward (and ∂u/∂x) does not see the detach
    assert grad > 1e-6, grad  # the parameter gradients do: the option matters
    out, dx, grad = max_diffs(ours, exact_dora_reference(exact, x))
    assert out <= TOL and dx <= TOL and grad <= TOL  # and the default is the exact gradient
    detached = adapted("dora", base, detach_norm=True)
    out, dx, grad = max_diffs(evaluate(detached, "dora", x), ours)
    assert out <= TOL and dx <= TOL and grad > 1e-6


def test_dora_detached_norm_jets_equal_autograd():
    """The jet derivative path uses weight(): with detach_norm the residual loss and its gradients are the
    autograd path's."""
    prob, _, model, _, pts = tiny_setup("burgers", "dora", detach_norm=True)
    with torch.no_grad():
        for _, lay in adapter_layers(model):
            lay.lora_B.add_(0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    l_ref = residual_loss(prob, model, pts, derivatives="autograd")
    g_ref = torch.autograd.grad(l_ref, params)
    l_jet = residual_loss(prob, model, pts, derivatives="jets")
    g_jet = torch.autograd.grad(l_jet, params)
    l_jet, l_ref = float(l_jet.detach()), float(l_ref.detach())
    assert abs(l_jet - l_ref) <= 1e-12 * max(1.0, abs(l_ref))
    for a, b in zip(g_ref, g_jet):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_pissa_start_is_peft_pissa_start():
    """PEFT's init_lora_weights='pissa' (float32 only: it refuses float64) gives our factors and residual:
    the same s·B·A and residual W0 - s·B·A per layer, and the same factors once SVD signs are aligned."""
    with pytest.raises(TypeError, match="float32"):
        peft.inject_adapter_in_model(peft_config("pissa", base_network(), init_lora_weights="pissa"),
                                     copy.deepcopy(base_network()))
    base = base_network(torch.float32)
    ours = get_method("pissa", rank=RANK, alpha=ALPHA).attach(copy.deepcopy(base), CTX)
    twin = peft.inject_adapter_in_model(peft_config("pissa", base, init_lora_weights="pissa"), copy.deepcopy(base))
    for i, lay in adapter_layers(ours):
        t = twin.linears[i]
        b, a = t.lora_B["default"].weight.detach(), t.lora_A["default"].weight.detach()
        scale = max(1.0, float(base.linears[i].weight.detach().abs().max()))
        tol = dict(rtol=0, atol=2e-5 * scale)
        torch.testing.assert_close(lay.delta_weight().detach(), t.scaling["default"] * b @ a, **tol)
        torch.testing.assert_close(lay.weight0, t.base_layer.weight.detach(), **tol)
        sign = torch.sign((b * lay.lora_B).sum(0))  # per singular vector
        torch.testing.assert_close(lay.lora_B * sign, b, **tol)
        torch.testing.assert_close(lay.lora_A * sign[:, None], a, **tol)
    x = points(torch.float32)
    torch.testing.assert_close(ours(x), twin(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["lora", "rslora", "dora", "pissa"])
def test_export_round_trips_through_peft(name, tmp_path):
    base = base_network()
    model = adapted(name, base)
    x = points()
    ref_u, ref_du, _ = evaluate(model, name, x)
    save_peft(model, get_method(name, rank=RANK, alpha=ALPHA), tmp_path, base=base)
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    x_ = x.clone().requires_grad_(True)
    u = loaded(x_)
    (du,) = torch.autograd.grad(u.sum(), x_)
    assert float((u.detach() - ref_u).abs().max()) <= TOL
    assert float((du - ref_du).abs().max()) <= TOL
    # the in-memory form: get_peft_model + set_peft_model_state_dict
    config, state = to_peft(model, name, base=base)
    twin = peft.get_peft_model(copy.deepcopy(base), config)
    result = peft.set_peft_model_state_dict(twin, state)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k]
    assert float((twin(x).detach() - ref_u).abs().max()) <= TOL


def test_export_refuses_what_it_cannot_express():
    base = base_network()
    with pytest.raises(ValueError, match="supports the methods lora, rslora, dora, pissa; got 'cla'"):
        to_peft(get_method("cla", rank=2).attach(copy.deepcopy(base), CTX), "cla")
    with pytest.raises(ValueError, match="pissa needs `base`"):
        to_peft(adapted("pissa", base), "pissa")
    with pytest.raises(ValueError, match="expected DoRALinear"):
        to_peft(adapted("lora", base), "dora")
    with pytest.raises(ValueError, match="does not hold the adapter's frozen weight"):
        to_peft(adapted("lora", base), "lora", base=build_network(LAYERS, "tanh", seed=2))
    model = adapted("dora", base)
    with pytest.raises(ValueError, match="`base` is adapted"):
        to_peft(model, "dora", base=model)
