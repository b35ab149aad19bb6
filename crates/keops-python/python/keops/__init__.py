"""keops: kernel operations on CPUs (and GPUs) with a Rust core.

Symbolic matrices ``M[i, j] = F(x_i, y_j, p)`` are reduced over ``i`` or ``j`` tile by
tile, so memory stays linear while the work is quadratic. The API follows pykeops 2.3:
replace ``pykeops`` by ``keops`` in the imports.

- ``keops.numpy``: ``Genred``, ``LogSumExp``, ``LazyTensor``, ``Vi``, ``Vj``, ``Pm``
  on NumPy arrays.
- ``keops.torch``: the same on PyTorch tensors, differentiable to any order (autograd
  and ``torch.func``). Imported on first use, as torch is optional.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import numpy
from ._keops import __version__

__all__ = ["__version__", "numpy", "torch"]


def __getattr__(name: str) -> Any:
    if name == "torch":
        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'keops' has no attribute {name!r}")
