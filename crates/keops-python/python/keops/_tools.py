"""pykeops' module-level helpers: the kernel cache's folder, cleaning it, and the
installation checks (``keops.test_numpy_bindings()``, ``keops.test_torch_bindings()``).

keops compiles nothing for the CPU; only GPU kernels are built (by NVRTC) and cached,
so pykeops' "build folder" is the GPU kernel cache here.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Optional

from . import _keops
from ._genred import compile_core

#: pykeops' verbosity flag (``set_verbose``); keops prints nothing while it works.
verbose = False


def set_verbose(val: Any) -> None:
    """Sets ``keops.verbose`` (pykeops' compilation messages). keops compiles no C++
    and prints nothing at compile time, so the flag only records the value."""
    global verbose
    verbose = bool(val)


def get_build_folder() -> Optional[str]:
    """The folder of the GPU kernel cache (CUBINs built by NVRTC): ``$KEOPS_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/keops-rs``, else ``~/.cache/keops-rs``, then ``cubin/``;
    ``None`` without a home folder."""
    d = _keops.kernel_cache_dir()
    return None if d is None else str(d)


def set_build_folder(path: Optional[str] = None) -> None:
    """Sets the folder of the GPU kernel cache (``KEOPS_CACHE_DIR``); ``None`` goes back
    to the default. It is read when the process builds its first GPU kernel, so set it
    before (as pykeops, which is configured at import)."""
    if path is None:
        os.environ.pop("KEOPS_CACHE_DIR", None)
    else:
        os.environ["KEOPS_CACHE_DIR"] = os.fspath(path)


def clean_pykeops(recompile_jit_binaries: bool = True) -> None:
    """Empties the caches: the GPU kernels on disk and in memory (kernels already loaded
    on a GPU stay usable) and the parsed formulas. ``recompile_jit_binaries`` is accepted
    for pykeops compatibility (keops has no JIT binaries to rebuild)."""
    removed = _keops.clear_kernel_cache()
    compile_core.cache_clear()
    if verbose:
        print(f"[keops] removed {removed} cached kernel(s) from {get_build_folder()}")


def _check_bindings(front: str) -> None:
    """A Gaussian kernel sum on small data against the dense formula; raises when the
    results differ, prints a line when they agree."""
    import numpy as np

    rng = np.random.default_rng(0)
    x, y, b = rng.random((20, 3)), rng.random((30, 3)), rng.random((30, 2))
    want = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b
    module = importlib.import_module(f"keops.{front}")
    conv = module.Genred("Exp(-SqDist(x,y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"],
                         reduction_op="Sum", axis=1)
    if front == "torch":
        import torch
        got = conv(*(torch.from_numpy(a) for a in (x, y, b))).numpy()
    else:
        got = conv(x, y, b)
    err = float(np.abs(got - want).max())
    if not err < 1e-10:
        raise RuntimeError(f"keops with {front} bindings gives a wrong result: largest "
                           f"error {err:.3e} on a Gaussian kernel sum")
    print(f"keops with {front} bindings is working! (largest error {err:.1e}; GPU: "
          f"{'yes' if _keops.gpu_available() else 'no'})")


def test_numpy_bindings() -> None:
    """pykeops' installation check for NumPy: a small reduction against NumPy."""
    _check_bindings("numpy")


def test_torch_bindings() -> None:
    """pykeops' installation check for PyTorch: a small reduction against NumPy."""
    _check_bindings("torch")
