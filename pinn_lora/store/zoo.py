"""Base models: the shipped ones (in ``pinn_lora/zoo/``) and user-saved ones.

A base model is ``<name>.safetensors`` (the network's state dict, DeepXDE FNN
key layout) + ``<name>.json`` (its card: problem, coefficients, network,
training recipe, wall time, device, measured error, weights hash)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pinn_lora.store.tensors import (
    card_metadata,
    check_card_binding,
    CheckpointError,
    check_finite,
    load_tensors,
    read_json,
    save_tensors,
    sha256,
    state_mismatch,
    write_json,
)
from pinn_lora.model.network import PINN
from pinn_lora.core.registry import UnknownNameError, get_problem
from pinn_lora.store.schema import base_card_schema, validate

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"  # pinn_lora/zoo/: the shipped files
CARD_KEYS = ("problem", "coefficients", "network", "weights_sha256")  # required; see pinn_lora.store.schema


def shipped() -> list[str]:
    return sorted(p.stem for p in ZOO_DIR.glob("*.json"))


def _paths(name_or_path: str | Path) -> tuple[Path, Path]:
    """(weights, card) paths. A bare name (no path separator, no suffix) is a shipped model;
    anything else is a path, given with or without the .safetensors/.json suffix."""
    text = str(name_or_path)
    for suffix in (".safetensors", ".json"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    stem = Path(text)
    if "/" not in text and "\\" not in text and (ZOO_DIR / f"{text}.json").exists():
        stem = ZOO_DIR / text
    return Path(f"{stem}.safetensors"), Path(f"{stem}.json")


def save_base(net: PINN, card: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Write ``path``.safetensors + ``path``.json; returns the card written. Weights holding NaN or
    inf are refused (ValueError) before anything is written."""
    weights, card_path = _paths(path)
    zoo = ZOO_DIR.resolve()
    for target in (weights, card_path):
        if target.resolve().parent == zoo:
            raise ValueError(f"save_base: {str(path)!r} names a base model shipped with pinn_lora ({target}); shipped "
                             "bases are read-only: save to a path of your own, e.g. save_base(net, card, "
                             f"'my_bases/{Path(str(path)).name}')")
    check_finite(net.state_dict(), f"save_base: {weights}")
    validate({**card, "network": net.architecture(), "weights_sha256": "0" * 64}, base_card_schema(),
             f"save_base: the card for {card_path}")  # before anything is written
    card = {**card, "network": net.architecture()}
    # the card is bound to the weights, as an adapter's is
    card["weights_sha256"] = save_tensors(weights, net.state_dict(), metadata=card_metadata(card))
    write_json(card_path, card)
    return card


def load_base(name_or_path: str | Path = "burgers", *, dtype: torch.dtype = torch.float64,
              device: torch.device | str = "cpu", verify: bool = True) -> tuple[PINN, dict[str, Any], Any]:
    """Load a base model by shipped name (``"burgers"``) or path.

    Returns (network, card, source problem); the network carries its
    problem's output transform."""
    from pinn_lora.core.runtime import check_device

    check_device(device, "load_base")
    weights, card_path = _paths(name_or_path)
    if not card_path.exists() and not weights.exists():
        raise CheckpointError(f"no base model {str(name_or_path)!r}: not a shipped name "
                              f"({', '.join(shipped()) or 'none shipped'}) and no {card_path} on disk")
    if not weights.is_file():
        raise CheckpointError(f"base model {str(name_or_path)!r}: its weights file {weights} is missing")
    card = read_json(card_path)
    validate(card, base_card_schema(), f"card {card_path}")
    if verify and (digest := sha256(weights)) != card["weights_sha256"]:
        raise CheckpointError(f"{weights} does not match its card's sha256 (file changed or truncated): "
                              f"sha256 {digest[:12]}…, the card says {card['weights_sha256'][:12]}…")
    try:
        problem = get_problem(card["problem"], **card["coefficients"])
    except (UnknownNameError, ValueError) as exc:
        raise CheckpointError(f"card {card_path}: {exc}") from None
    arch = card["network"]
    if arch["layers"][0] != problem.dim or arch["layers"][-1] != 1:
        raise CheckpointError(f"card {card_path}: network.layers {arch['layers']} does not fit {problem.name} "
                              f"(expected {problem.dim} inputs {list(problem.variables)} and 1 output)")
    state = load_tensors(weights)
    # built in the file's dtype before loading: load_state_dict copies into the existing tensors, so a
    # default-float32 network would round float64 weights (up to 6e-8 on Burgers) before .to(dtype)
    stored = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float64)
    net = PINN(arch["layers"], arch["activation"], problem.output_transform).to(dtype=stored)
    mismatch = state_mismatch(net.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{weights} does not fit the network of its card {card_path} "
                              f"(layers {arch['layers']}): {mismatch}")
    net.load_state_dict(state)
    if verify:  # last: a card edited into another valid card (other coefficients, say) fails only here
        check_card_binding(card, weights, card_path, kind="a base model card")
    return net.to(dtype=dtype, device=device), card, problem
