"""The one place that imports DeepXDE.

DeepXDE chooses its backend from an environment variable or a file in the home
directory, prints on import, and on CUDA machines changes torch's default
device. All of that is contained here: the backend is forced to PyTorch, the
import is silenced, and torch's global defaults are restored afterwards.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Iterator

import numpy as np
import torch

_DDE: Any = None


class DeepXDEBackendError(RuntimeError):
    pass


def deepxde() -> Any:
    """Import and return the ``deepxde`` module, configured for PyTorch."""
    global _DDE
    if _DDE is not None:
        return _DDE
    backend = os.environ.get("DDE_BACKEND")
    if backend not in (None, "pytorch"):
        raise DeepXDEBackendError(
            f"DDE_BACKEND={backend!r} but pinn_lora needs DeepXDE's 'pytorch' backend; "
            "unset DDE_BACKEND or set it to 'pytorch'"
        )
    os.environ["DDE_BACKEND"] = "pytorch"
    device, dtype = torch.get_default_device(), torch.get_default_dtype()
    # was a default device set (a DeviceContext mode active)? set_default_device(x), even for "cpu",
    # installs a Python TorchFunctionMode that every later torch call goes through
    had_device = getattr(getattr(torch, "_GLOBAL_DEVICE_CONTEXT", None), "device_context", None) is not None
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            import deepxde as dde  # noqa: WPS433 (deliberately lazy)
    finally:
        torch.set_default_device(device if had_device else None)
        torch.set_default_dtype(dtype)
    _DDE = dde
    return dde


@contextlib.contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    """Run DeepXDE's samplers (which draw from numpy's global RNG) under ``seed``,
    leaving the caller's global numpy state untouched."""
    state = np.random.get_state()
    np.random.seed(seed % (2**32))
    try:
        yield
    finally:
        np.random.set_state(state)
