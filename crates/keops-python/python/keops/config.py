"""pykeops' ``config`` module, as far as its users read it: ``gpu_available``,
``numpy_found``, ``torch_found`` and ``get_build_folder()``.

``gpu_available`` is probed on first read (it loads the CUDA driver and NVRTC), not at
import: ``import keops`` stays cheap on machines without a GPU.

>>> import keops.config
>>> isinstance(keops.config.gpu_available, bool)
True
"""

from __future__ import annotations

import importlib.util
from typing import Any

from . import _keops
from ._tools import get_build_folder

__all__ = ["gpu_available", "numpy_found", "torch_found", "get_build_folder"]

#: Whether NumPy can be imported (keops needs it: always true once keops imports).
numpy_found: bool = importlib.util.find_spec("numpy") is not None
#: Whether PyTorch can be imported (``keops.torch`` needs it).
torch_found: bool = importlib.util.find_spec("torch") is not None


def __getattr__(name: str) -> Any:
    if name == "gpu_available":
        return bool(_keops.gpu_available())
    raise AttributeError(f"module 'keops.config' has no attribute {name!r}")
