"""Export adapted networks to Hugging Face PEFT's LoRA adapter format.

``save_peft`` writes ``adapter_config.json`` and ``adapter_model.safetensors``
in the layout of ``PeftModel.save_pretrained``: keys
``base_model.model.<module path>.lora_A.weight`` (r × in),
``….lora_B.weight`` (out × r) and, for DoRA, ``….lora_magnitude_vector``
(out,), so ``PeftModel.from_pretrained(base, directory)`` (or
``get_peft_model`` + ``set_peft_model_state_dict`` with :func:`to_peft`'s state
dict) rebuilds the adapted network on the *plain base network*.

Layer ranks and scales are written per layer (``rank_pattern``,
``alpha_pattern``): our rank is clipped to min(in, out) on thin layers while
the scale keeps the configured rank, which PEFT's single ``r``/``lora_alpha``
cannot express.

Supported: lora, rslora, dora and pissa. PiSSA trains on a residual base
(W0 − s·B0·A0) that PEFT's format does not store, so it is exported the way
PEFT converts PiSSA to LoRA (``LoraModel.subtract_mutated_init``): a rank-2r
LoRA on the original weights, A' = [A; A0], B' = [B, −B0], which needs the
original base network (``base=``). PEFT is optional: it is imported inside
the functions.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pinn_lora.model.adapters.base import AdapterLinear
from pinn_lora.model.adapters.dora import DoRALinear
from pinn_lora.model.adapters.lora import LoRALinear

if TYPE_CHECKING:  # pragma: no cover
    from peft import LoraConfig

    from pinn_lora.methods import Method

SUPPORTED = ("lora", "rslora", "dora", "pissa")
PREFIX = "base_model.model."  # PeftModel's prefix of the base model's module paths in saved adapters


def _method_name(method: Method | str) -> str:
    name = method if isinstance(method, str) else getattr(method, "name", None)
    if name not in SUPPORTED:
        raise ValueError(f"PEFT export supports the methods {', '.join(SUPPORTED)}; got {name!r}")
    return name


def _adapter_layers(model: nn.Module) -> list[tuple[str, AdapterLinear]]:
    return [(path, mod) for path, mod in model.named_modules() if isinstance(mod, AdapterLinear)]


def _pissa_initial_factors(layer: LoRALinear, base_weight: torch.Tensor, path: str
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B0, A0) with s·B0·A0 = W_base − W_res, the part of the base weight PiSSA moved into the factors."""
    w = base_weight.detach().to(layer.weight0)
    d = (w - layer.weight0).double()
    u, sig, vh = torch.linalg.svd(d, full_matrices=False)
    r = layer.rank
    root = (sig[:r] / layer.scale).sqrt()
    b0, a0 = u[:, :r] * root, root[:, None] * vh[:r]
    err = float(torch.linalg.norm(d - layer.scale * (b0 @ a0)))
    if err > 1e-8 * max(1.0, float(torch.linalg.norm(w.double()))):
        raise ValueError(f"PEFT export of pissa: layer {path!r}: base weight minus the residual is not of rank "
                         f"{r} (error {err:.2e}); is `base` the network the method was attached to?")
    return b0.to(layer.weight0), a0.to(layer.weight0)


def to_peft(model: nn.Module, method: Method | str, *, base: nn.Module | None = None
            ) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """The PEFT ``LoraConfig`` and adapter state dict (saved-file keys) of an adapted ``model``.

    ``method`` is the :class:`~pinn_lora.methods.Method` that adapted ``model`` (or its name): lora,
    rslora, dora or pissa; anything else is a ValueError. ``base`` is the network before adaptation
    (same module paths): needed for pissa (see the module docstring), and when given for the others
    it is checked to hold the adapters' frozen weights. Ranks and scales are read from the layers.
    DoRA: PEFT treats the norm ‖W0 + s·B·A‖ as a constant in the backward pass, so training the
    loaded adapter in PEFT follows ``detach_norm: true``; the forward pass is the same either way."""
    from peft import LoraConfig

    name = _method_name(method)
    layers = _adapter_layers(model)
    if not layers:
        raise ValueError("PEFT export: the model has no adapted layers")
    want = DoRALinear if name == "dora" else LoRALinear
    for path, lay in layers:
        if type(lay) is not want:
            raise ValueError(f"PEFT export of {name}: layer {path!r} is a {type(lay).__name__}, "
                             f"expected {want.__name__}")
        if not isinstance(lay.lora_A, nn.Parameter):
            raise ValueError(f"PEFT export of {name}: layer {path!r} has a frozen A, which PEFT's LoRA cannot express")
    if name == "pissa" and base is None:
        raise ValueError("PEFT export of pissa needs `base`, the network before adaptation: PiSSA's frozen weight is "
                         "the residual W0 - s*B0*A0, which PEFT's format does not store, so it is exported as PEFT "
                         "converts PiSSA to LoRA (rank 2r on the original weights)")

    rslora = name == "rslora"
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for path, lay in layers:
        b, a = lay.lora_B.detach(), lay.lora_A.detach()
        if base is not None:
            base_layer = base.get_submodule(path)
            if isinstance(base_layer, AdapterLinear):
                raise ValueError("PEFT export: `base` is adapted; pass the network before adaptation (attach "
                                 "changes its network in place: keep a deep copy of it)")
            base_weight = base_layer.weight
            if name == "pissa":
                b0, a0 = _pissa_initial_factors(lay, base_weight, path)
                b, a = torch.cat([b, -b0], dim=1), torch.cat([a, a0], dim=0)
            elif not torch.allclose(base_weight.detach().to(lay.weight0), lay.weight0, rtol=0, atol=1e-12):
                raise ValueError(f"PEFT export of {name}: layer {path!r}: `base` does not hold the adapter's "
                                 "frozen weight; is it the network the method was attached to?")
        r = b.shape[1]
        key = PREFIX + path
        state[f"{key}.lora_A.weight"] = a.clone().contiguous()
        state[f"{key}.lora_B.weight"] = b.clone().contiguous()
        if name == "dora":
            state[f"{key}.lora_magnitude_vector"] = lay.magnitude.detach().clone().contiguous()
        pattern = re.escape(path)  # PEFT matches these keys as regexes anchored at the end of the module path
        ranks[pattern] = r
        alphas[pattern] = lay.scale * (math.sqrt(r) if rslora else r)  # PEFT: scaling = alpha/r or alpha/sqrt(r)

    opts: dict[str, Any] = getattr(method, "options", {}) if not isinstance(method, str) else {}
    r0 = int(opts.get("rank", max(ranks.values())))
    if name == "pissa":
        r0 *= 2
    s0 = next(iter(layers))[1].scale
    config = LoraConfig(target_modules=[path for path, _ in layers], r=r0,
                        lora_alpha=s0 * (math.sqrt(r0) if rslora else r0), use_rslora=rslora,
                        use_dora=name == "dora", rank_pattern=ranks, alpha_pattern=alphas,
                        lora_dropout=0.0, bias="none", init_lora_weights=True)
    return config, state


def save_peft(model: nn.Module, method: Method | str, directory: str | Path, *, base: nn.Module | None = None
              ) -> Path:
    """Write ``model``'s adapters to ``directory`` as PEFT does (``adapter_config.json``,
    ``adapter_model.safetensors``); load with ``PeftModel.from_pretrained(base_network, directory)``.
    Arguments as :func:`to_peft`. Returns the directory."""
    from safetensors.torch import save_file

    config, state = to_peft(model, method, base=base)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file({k: v.cpu() for k, v in state.items()}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    return out
