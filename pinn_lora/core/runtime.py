"""The process a run happens in: its random state and its device.

Seeding without side effects: a run seeds and draws from torch's global RNG inside a fork of it, so the
caller's global random state (CPU and every CUDA device) is the same after the run as before."""
from __future__ import annotations

import functools
import platform
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def own_rng(fn: F) -> F:
    """Run ``fn`` under :func:`torch.random.fork_rng`: the ``torch.manual_seed`` it calls and the numbers it
    draws stay inside the call; the caller's generators are restored when it returns or raises."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def device_name(device: torch.device) -> str:
    """The device as a card or summary records it: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

class SettingError(ValueError):
    """A setting given a value of the wrong kind (a string for a true/false key, a device that is not there)."""


def check_bools(values: dict[str, Any], where: str = "") -> None:
    """Each value must be true or false: ``warm_start=no`` (a string, which ``bool()`` takes for true) is
    refused in one line instead of silently meaning the opposite."""
    for key, value in values.items():
        if not isinstance(value, bool):
            raise SettingError(f"{where}{key}={value!r} must be true or false")


def check_device(device: Any, where: str) -> None:
    """``device="cuda"`` on a machine without CUDA: one line instead of torch's AssertionError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SettingError(f"{where}: device={device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingError(f"{where}: device={device!r} but no CUDA device is available; use device='cpu'")
