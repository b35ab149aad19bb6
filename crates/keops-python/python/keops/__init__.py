"""keops: kernel operations on CPUs (and GPUs) with a Rust core.

Symbolic matrices ``M[i, j] = F(x_i, y_j, p)`` are reduced over ``i`` or ``j`` tile by
tile, so memory stays linear while the work is quadratic. The API follows pykeops 2.3:
replace ``pykeops`` by ``keops`` in the imports.

- ``keops.numpy``: ``Genred``, ``LogSumExp``, ``LazyTensor``, ``Vi``, ``Vj``, ``Pm``
  on NumPy arrays.
- ``keops.torch``: the same on PyTorch tensors, differentiable to any order (autograd
  and ``torch.func``). Imported on first use, as torch is optional.
- pykeops' helpers: ``test_numpy_bindings()``, ``test_torch_bindings()``,
  ``clean_pykeops()``, ``get_build_folder()``, ``set_build_folder()``, ``set_verbose()``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any, List


def _point_at_nvrtc() -> None:
    """Lets the Rust core find NVRTC in the ``nvidia-cuda-nvrtc`` wheels (torch installs
    them), unless ``KEOPS_NVRTC`` already says where it is."""
    if os.environ.get("KEOPS_NVRTC"):
        return
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return
    dirs: List[str] = []
    for root in spec.submodule_search_locations:
        for sub in ("cu13/lib", "cuda_nvrtc/lib"):
            if os.path.isdir(os.path.join(root, sub)):
                dirs.append(os.path.join(root, sub))
    if dirs:
        os.environ["KEOPS_NVRTC"] = os.pathsep.join(dirs)


_point_at_nvrtc()

from . import _tools, numpy  # noqa: E402
from ._keops import __version__, gpu_available  # noqa: E402
from ._tools import (clean_pykeops, get_build_folder, set_build_folder,  # noqa: E402
                     set_verbose, test_numpy_bindings, test_torch_bindings)

__all__ = ["__version__", "gpu_available", "numpy", "torch", "clean_pykeops",
           "get_build_folder", "set_build_folder", "set_verbose", "test_numpy_bindings",
           "test_torch_bindings"]


def __getattr__(name: str) -> Any:
    if name == "torch":
        return importlib.import_module(".torch", __name__)
    if name == "verbose":
        return _tools.verbose
    raise AttributeError(f"module 'keops' has no attribute {name!r}")
