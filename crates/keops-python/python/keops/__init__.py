"""keops: kernel operations on CPUs (and GPUs) with a Rust core.

Symbolic matrices ``M[i, j] = F(x_i, y_j, p)`` are reduced over ``i`` or ``j`` tile by
tile, so memory stays linear while the work is quadratic. The API follows pykeops 2.3:
replace ``pykeops`` by ``keops`` in the imports.

- ``keops.numpy``: ``Genred``, ``LogSumExp``, ``LazyTensor``, ``Vi``, ``Vj``, ``Pm``
  on NumPy arrays.
- ``keops.torch``: the same on PyTorch tensors, differentiable to any order (autograd
  and ``torch.func``). Imported on first use, as torch is optional.
- pykeops' helpers: ``test_numpy_bindings()``, ``test_torch_bindings()``,
  ``check_health()`` (what keops finds here, GPU included, and why something is
  missing), ``clean_pykeops()``, ``get_build_folder()``, ``set_build_folder()``,
  ``set_verbose()``, and ``keops.config.gpu_available``.
- ``install_as_pykeops()``: keops under pykeops' module names, so libraries written for
  pykeops (GeomLoss, GPyTorch's KeOps kernels) run on keops without a change.
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
        # Linux wheels keep the library in lib/, Windows ones in bin/ (CUDA 13: bin/x86_64).
        for sub in ("cu13/lib", "cuda_nvrtc/lib", "cu13/bin/x86_64", "cu13/bin", "cuda_nvrtc/bin"):
            if os.path.isdir(os.path.join(root, sub)):
                dirs.append(os.path.join(root, sub))
    if dirs:
        os.environ["KEOPS_NVRTC"] = os.pathsep.join(dirs)


_point_at_nvrtc()

from . import _tools, config, numpy  # noqa: E402
from ._alias import install_as_pykeops  # noqa: E402
from ._keops import __version__, gpu_available  # noqa: E402
from ._tools import (check_health, clean_pykeops, get_build_folder,  # noqa: E402
                     set_build_folder, set_verbose, test_numpy_bindings,
                     test_torch_bindings)

__all__ = ["__version__", "gpu_available", "numpy", "torch", "config", "check_health",
           "clean_pykeops", "get_build_folder", "install_as_pykeops", "set_build_folder",
           "set_verbose", "test_numpy_bindings", "test_torch_bindings"]


def __getattr__(name: str) -> Any:
    if name == "torch":
        return importlib.import_module(".torch", __name__)
    if name == "verbose":
        return _tools.verbose
    raise AttributeError(f"module 'keops' has no attribute {name!r}")
