"""The front ends that the tests run through, and conversions between their arrays and
NumPy's (shared by the test modules)."""

from __future__ import annotations

import importlib
from typing import Any, Optional

import numpy as np
import pytest

FRONTS = ["numpy", "torch"]

try:
    import torch
except ImportError:  # keops.torch's tests skip; keops.numpy's still run
    torch = None

#: For a test that needs PyTorch: skipped, saying why, where it is not installed.
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch, which is not installed")


def front(name: str) -> Any:
    """``keops.numpy`` or ``keops.torch`` (the test is skipped without torch)."""
    if name == "torch":
        pytest.importorskip("torch")
    return importlib.import_module(f"keops.{name}")


def arr(front_name: str, a: np.ndarray, dtype: Optional[str] = None) -> Any:
    """``a`` (converted to ``dtype`` if given) as an array of the front end."""
    if dtype is not None:
        a = a.astype(dtype)
    if front_name == "torch":
        import torch
        return torch.from_numpy(a)
    return a


def npy(a: Any) -> np.ndarray:
    """A NumPy view of a front end's array."""
    return a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
