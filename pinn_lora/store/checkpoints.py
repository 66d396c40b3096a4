"""Resumable checkpoints: one safetensors file, written atomically (temp file + rename), holding
the network's state dict under its own keys plus everything else a run needs to continue
exactly where it stopped — the dynamics' state (optimiser moments, ODELoRA's RMSprop metric,
step-size controller), the method's state (chain generators, visited windows), the monitors'
running state, the random number generators, the step, the number of records already written and
the run's settings. Non-tensor state goes into the file's JSON metadata (``__resume__``), tensors
under ``__resume__/…`` keys. Nothing is pickled: loading is ``safetensors`` + ``json``.

The codec below turns nested dicts/lists/tuples of tensors, numbers, strings, booleans and None
into (JSON, tensors) and back, including dicts with integer keys (``torch.optim`` state)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import safe_open

from pinn_lora.store.tensors import CheckpointError, check_finite, save_tensors

PREFIX = "__resume__/"
FORMAT = 1
# what Trainer._restore and adapt_to() read from the resume state (a checkpoint lacking one is refused at load)
REQUIRED = ("phase", "step", "records", "evaluations", "steps_done", "initial", "wall_time", "rng", "draw_rng",
            "torch_rng", "dynamics", "method", "monitors", "settings")


def pack(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """JSON-able form of ``obj``; its tensors are cloned into ``tensors`` under ``PREFIX + path``."""
    if isinstance(obj, torch.Tensor):
        key = PREFIX + (path or "root")
        tensors[key] = obj.detach().clone().contiguous().cpu()
        return {"__tensor__": key, "device": str(obj.device)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: pack(v, tensors, f"{path}/{k}") for k, v in obj.items()}}
        return {"__map__": [[k, pack(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [pack(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"resume: cannot store a {type(obj).__name__} at {path or 'the top'}")


def unpack(obj: Any, tensors: Mapping[str, torch.Tensor],
           where: Callable[[str], torch.device] = lambda tag: torch.device(tag)) -> Any:
    """The object :func:`pack` stored; each tensor goes to ``where(its recorded device)``."""
    if isinstance(obj, list):
        return [unpack(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            if obj["__tensor__"] not in tensors:
                raise CheckpointError(f"resume: the checkpoint's state names a tensor {obj['__tensor__']!r} "
                                      "that the file does not hold")
            return tensors[obj["__tensor__"]].to(where(str(obj.get("device", "cpu"))))
        if "__dict__" in obj:
            return {k: unpack(v, tensors, where) for k, v in obj["__dict__"].items()}
        if "__map__" in obj:
            return {k: unpack(v, tensors, where) for k, v in obj["__map__"]}
        if "__tuple__" in obj:
            return tuple(unpack(v, tensors, where) for v in obj["__tuple__"])
        raise CheckpointError(f"resume: unknown entry {sorted(obj)} in the checkpoint's state")
    return obj


def device_map(written_on: str | None, device: torch.device | str | None) -> Callable[[str], torch.device]:
    """Where a tensor recorded on device ``tag`` goes when a run on ``device`` resumes a checkpoint written
    by a run on ``written_on`` (``map_location``): the run's tensors (recorded on ``written_on``; in a
    checkpoint that does not say, any CUDA tensor) go to ``device``; others (the CPU generator's state)
    stay where they were, or on the CPU when that device is missing (a GPU checkpoint on a CPU-only machine)."""
    def where(tag: str) -> torch.device:
        recorded = torch.device(tag)
        ran_here = tag == written_on if written_on is not None else recorded.type == "cuda"
        if device is not None and ran_here:
            return torch.device(device)
        if recorded.type == "cuda" and not torch.cuda.is_available():
            return torch.device("cpu")
        return recorded
    return where


def capture(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``state`` packed now (tensors cloned), so later in-place updates do not reach it."""
    tensors: dict[str, torch.Tensor] = {}
    return pack(dict(state), tensors)["__dict__"], tensors


def save(path: str | Path, model_state: Mapping[str, torch.Tensor],
         captured: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> None:
    """Write the network's tensors and a :func:`capture`d state to ``path`` atomically."""
    packed, extra = captured
    meta = json.dumps({"format": FORMAT, **packed})
    save_tensors(Path(path), {**model_state, **extra}, metadata={"__resume__": meta, "step": str(packed.get("step"))})


def load(path: str | Path, device: torch.device | str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(network state dict, resume state) from a checkpoint written by :func:`save`, its tensors mapped
    to the resuming run's ``device`` (:func:`device_map`: a checkpoint written on a GPU resumes on a CPU
    and the other way round); the network's tensors are on the CPU (``load_state_dict`` copies them)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: no checkpoint {path} (checkpoint_every=0, or the run stopped "
                              "before its first checkpoint)")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path} as safetensors ({exc}); only safetensors files are "
                              "accepted") from None
    if "__resume__" not in meta:
        raise CheckpointError(f"{path} holds no resume state (written by an older version?)")
    try:
        state = json.loads(meta["__resume__"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its resume state is not valid JSON ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: resume format {state.get('format') if isinstance(state, dict) else None!r}, "
                              f"this version reads {FORMAT}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {', '.join(missing)} (damaged, or written by another "
                              "version); start the run again in a new directory")
    model = {k: v for k, v in tensors.items() if not k.startswith(PREFIX)}
    check_finite(model, str(path), CheckpointError)  # the optimiser's state may hold inf (e.g. a running minimum)
    where = device_map(state.get("device"), device)
    return model, {k: unpack(v, tensors, where) for k, v in state.items() if k != "format"}


def truncate_metrics(path: str | Path, n: int) -> list[dict[str, Any]]:
    """Keep the first ``n`` records of ``metrics.jsonl`` (those written before the checkpoint; later
    ones are written again by the resumed run) and return them. Rewritten atomically."""
    from pinn_lora.store.tensors import atomic_write_bytes

    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
    lines = [x for x in lines if x.strip()]
    if len(lines) < n:
        raise CheckpointError(f"resume: {path} has {len(lines)} records, the checkpoint expects at least {n}")
    try:
        records = [json.loads(x) for x in lines[:n]]
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"resume: {path} is not valid JSON lines ({exc})") from None
    atomic_write_bytes(path, "".join(lines[:n]).encode("utf-8"))
    return records


def changed_settings(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """'' when a checkpoint's settings ``before`` equal the resuming run's ``now``, else the changes,
    in the settings' order, as 'key: old -> new; …' (for the refusal)."""
    return "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in {**before, **now}
                     if before.get(k) != now.get(k))
