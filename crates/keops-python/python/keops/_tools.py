"""pykeops' module-level helpers: the kernel cache's folder, cleaning it, the
installation checks (``keops.test_numpy_bindings()``, ``keops.test_torch_bindings()``)
and the diagnostic report (``keops.check_health()``).

keops compiles nothing for the CPU; only GPU kernels are built (by NVRTC) and cached,
so pykeops' "build folder" is the GPU kernel cache here.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
from typing import Any, Callable, List, Optional, Tuple

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
    else ``keops-rs`` in the platform's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``
    on Linux, ``%LOCALAPPDATA%`` on Windows), then ``cubin/``;
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


#: The environment variables keops reads, for the report of :func:`check_health`.
ENV_VARS = ("KEOPS_CACHE_DIR", "XDG_CACHE_HOME", "KEOPS_NVRTC", "KEOPS_CPU_ISA",
            "RAYON_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "KEOPS_CUDA_SIMULATOR",
            "KEOPS_CUDA_SIMULATOR_MEMORY", "KEOPS_CUDA_POOL_KEEP", "KEOPS_CUDA_MEMORY_POOLS",
            "KEOPS_GPU_ROWS", "KEOPS_GPU_COLUMNS")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cache_line() -> str:
    d = get_build_folder()
    if d is None:
        return "none (no home folder; set KEOPS_CACHE_DIR)"
    probe = d
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)  # the folder is made by the first GPU kernel
    ok = os.access(probe, os.W_OK)
    return f"{d} ({'writable' if ok else 'NOT writable: kernels will not be kept'})"


def check_health() -> bool:
    """Prints what keops finds on this machine (versions, the CPU engine's instruction
    set and threads, the GPU driver, compiler and devices, each with the reason when it
    is missing, the kernel cache, the environment variables it reads), then runs the
    installation checks of both front ends. Returns whether those checks passed (pykeops'
    ``check_health`` returns nothing)."""
    try:
        isa, threads = _keops.cpu_status()
        cpu = f"CPU engine: {isa}, {threads} thread(s)"
    except ValueError as e:  # KEOPS_CPU_ISA names no instruction set
        cpu = f"CPU engine: {e}  [error]"
    report: List[str] = [
        f"keops {_keops.__version__} (Rust core), Python {platform.python_version()} "
        f"on {platform.system()} {platform.machine()}",
        f"NumPy {_version('numpy')}, PyTorch {_version('torch')}",
        cpu,
    ]
    for part, found, text in _keops.gpu_status():
        label = {"driver": "GPU driver", "compiler": "GPU compiler"}.get(part, "")
        report.append(f"{label + ': ' if label else ''}{text}"
                      f"{'' if found else '  [missing]'}")
    report.append(f"backend='auto' runs on: {'GPU' if _keops.auto_uses_gpu() else 'CPU'}")
    report.append(f"GPU kernel cache: {_cache_line()}")
    report += [f"{v} = {os.environ[v]}" for v in ENV_VARS if v in os.environ]
    print("\n".join(report))
    checks: List[Tuple[str, Callable[[], None]]] = [
        ("test_numpy_bindings", test_numpy_bindings)
    ]
    if importlib.util.find_spec("torch") is not None:
        checks.append(("test_torch_bindings", test_torch_bindings))
    healthy = True
    for name, check in checks:
        try:
            check()
        except Exception as e:  # the report goes on: say what failed, then the rest
            healthy = False
            print(f"{name} FAILED: {type(e).__name__}: {e}")
    return healthy
