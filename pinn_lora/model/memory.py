"""Refusing a run that cannot fit in memory before anything is allocated.

:func:`check_points` takes a lower bound of the memory one training step needs — the collocation
points and, per point, each layer's pre-activation and activation, in the run's float type — and
refuses (one line naming the size asked for) when even that exceeds the memory of the device the
run is on. Being a lower bound it never refuses a run that fits; a run it lets through may still
need several times more (derivatives through the network), which torch reports as usual."""
from __future__ import annotations

import os
from typing import Sequence

import torch


def device_memory(device: torch.device | str) -> int | None:
    """Bytes of memory on ``device`` (the machine's RAM for the CPU), or None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def step_bytes(n_points: int, layers: Sequence[int], dtype: torch.dtype) -> int:
    """A lower bound of one step's memory on ``n_points`` points for an MLP of ``layers`` sizes: the points,
    and each hidden layer's pre-activation and activation per point."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(n_points) * (int(layers[0]) + 2 * sum(int(w) for w in layers[1:-1]) + int(layers[-1])) * itemsize


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1024 or unit == "EB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EB"


def check_points(n_points: int, layers: Sequence[int], dtype: torch.dtype, device: torch.device | str,
                 key: str = "n_points", error: type[Exception] = ValueError, pool: int = 1,
                 times: str | None = None) -> None:
    """Raise ``error`` (one line: ``key``, the size asked for, the bound and the memory there is) when a step
    on ``n_points`` points (× ``pool``: candidates each for residual-adaptive sampling, or what ``times``
    says, e.g. the copies of a batched run) cannot fit in ``device``'s memory."""
    have = device_memory(device)
    need = step_bytes(n_points * pool, layers, dtype)
    if have is None or need <= have:
        return
    most = have // max(step_bytes(pool, layers, dtype), 1)
    drawn = f" ({times or f'x {pool} candidates each: sampling=rad, rad_pool={pool}'})" if pool > 1 else ""
    raise error(f"{key}={n_points}{drawn} needs at least {_size(need)} of memory for one step (the points and the "
                f"network's activations in {str(dtype).replace('torch.', '')}), more than the {_size(have)} of "
                f"{torch.device(device).type}; use fewer points (fewer than {most})")
