"""Saving and loading networks and adapters: safetensors for tensors, JSON
cards for metadata. Nothing here unpickles."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save

from pinn_lora.store.rundir import write_atomic

# a saved card is bound to its weights: the hash of the card (and a copy, to name what an edit changed) goes
# into the weights file's metadata, and the card holds the file's sha256
CARD_HASH_KEY, CARD_COPY_KEY = "pinn_lora.card_sha256", "pinn_lora.card"


class CheckpointError(ValueError):
    """A weights file or card is missing, unreadable or does not match."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, data)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None, *,
                 new: bool = False) -> str:
    """Write tensors atomically; returns the file's sha256. With ``new`` an existing file is never
    replaced (FileExistsError)."""
    write_atomic(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata),
                 new=new)
    return sha256(path)


def load_tensors(path: Path, *, finite: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; with ``finite`` (weights) one holding NaN or inf is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path} as safetensors ({exc}); "
                              "only safetensors files are accepted") from None
    if finite:
        check_finite(tensors, str(path), CheckpointError)
    return tensors


def check_finite(tensors: dict[str, torch.Tensor], what: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming the first floating tensor of ``tensors`` that holds NaN or inf, and how many."""
    for key, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise error(f"{what}: {key} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf) of "
                            f"{t.numel()}; weights must be finite")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, data: dict[str, Any], *, new: bool = False) -> None:
    """Write ``data`` as JSON atomically; with ``new`` an existing file is never replaced (FileExistsError)."""
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode(), new=new)


def read_json(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"card not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"card {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"card {path} must hold a JSON object")
    return data


def state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """How the tensors ``found`` (a file's) differ from ``expected`` (a network's state dict) in
    names and shapes, in one line; empty when they fit."""
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append(f"missing {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:4])}{' …' if len(unexpected) > 4 else ''}")
    shapes = [f"{key} is {tuple(found[key].shape)} in the file, {tuple(expected[key].shape)} expected"
              for key in expected if key in found and tuple(found[key].shape) != tuple(expected[key].shape)]
    problems += shapes[:2] + ([f"{len(shapes) - 2} more tensors differ in shape"] if len(shapes) > 2 else [])
    for key in expected:
        if key in found and found[key].dtype.is_floating_point != expected[key].dtype.is_floating_point:
            problems.append(f"{key} has dtype {found[key].dtype}")
    return "; ".join(problems)


def canonical_card(card: Mapping[str, Any]) -> str:
    """The card as canonical JSON (sorted keys, no spaces), without ``weights_sha256`` (the weights file's
    own hash, written into the card after the file): what the weights file's metadata binds."""
    return json.dumps({k: v for k, v in card.items() if k != "weights_sha256"}, sort_keys=True,
                      separators=(",", ":"))


def card_metadata(card: Mapping[str, Any]) -> dict[str, str]:
    """The weights file's metadata that binds ``card`` to it: the hash of the canonical card and a copy
    (for naming what a later edit changed); :func:`check_card_binding` checks it at load."""
    bound = canonical_card(card)
    return {CARD_HASH_KEY: hashlib.sha256(bound.encode()).hexdigest(), CARD_COPY_KEY: bound}


def _differences(saved: Any, now: Any, path: str = "") -> list[str]:
    """The leaves (``method.alpha``) where ``now`` differs from ``saved``, as 'path is X (saved: Y)'."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(saved) | set(now), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in now:
                out.append(f"{where} was removed (saved: {saved[key]!r})")
            elif key not in saved:
                out.append(f"{where} was added ({now[key]!r})")
            else:
                out += _differences(saved[key], now[key], where)
        return out
    return [] if saved == now else [f"{path or 'the card'} is {now!r} (saved: {saved!r})"]


def check_card_binding(card: Mapping[str, Any], weights: Path, card_path: Path, kind: str = "an adapter card") -> None:
    """Raise :class:`CheckpointError` naming the fields of ``card`` changed since it was saved with
    ``weights`` (the hash in the weights file's metadata); a card saved before cards were bound to their
    weights loads with a one-line warning (``kind`` names it: an adapter card, a base model card)."""
    import warnings

    from safetensors import safe_open

    with safe_open(str(weights), "pt") as fh:
        meta = fh.metadata() or {}
    if CARD_HASH_KEY not in meta:
        warnings.warn(f"{card_path}: {kind} written before cards were bound to their weights; its fields "
                      f"cannot be checked against {weights.name} (save it again to bind them)", UserWarning,
                      stacklevel=3)
        return
    bound = canonical_card(card)
    if hashlib.sha256(bound.encode()).hexdigest() == meta[CARD_HASH_KEY]:
        return
    try:
        changed = _differences(json.loads(meta.get(CARD_COPY_KEY, "")), json.loads(bound))
    except ValueError:
        changed = []
    raise CheckpointError(f"card {card_path} was changed after it was saved with {weights.name}: "
                          f"{'; '.join(changed[:4]) if changed else 'its hash differs'}"
                          f"{' …' if len(changed) > 4 else ''}; the card must be the one saved with the weights "
                          "(save it again to change it)")
