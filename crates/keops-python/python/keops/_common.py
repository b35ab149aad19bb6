"""What code written for pykeops imports from ``pykeops.common`` (``lazy_tensor``,
``utils``, ``gpu_utils``), under those names once ``keops.install_as_pykeops()`` ran:
the LazyTensor base classes for ``isinstance`` checks, ``get_gpu_number()``,
``get_tools(lang)`` and the axis/category helpers. The rest of ``pykeops.common`` is
pykeops' internals (its formula parser, build and loading of compiled routines) and has
no counterpart here.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from . import _keops
from ._lazy import GenericLazyTensor

__all__ = ["GenericLazyTensor", "ComplexGenericLazyTensor", "is_complex_lazytensor",
           "get_gpu_number", "get_gpu_props", "axis2cat", "cat2axis", "get_tools",
           "WarmUpGpu", "c_type"]

#: C type of each dtype in pykeops' generated code (read by some scripts).
c_type = dict(float16="half2", float32="float", float64="double")


class _ComplexCheck(type):
    # Complex LazyTensors are instances of their front end's LazyTensor class, marked
    # complex: the check reads the mark, as pykeops' class hierarchy would.
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, GenericLazyTensor) and obj.is_complex


class ComplexGenericLazyTensor(metaclass=_ComplexCheck):
    """For ``isinstance(x, ComplexGenericLazyTensor)``: true of every complex LazyTensor,
    NumPy's or PyTorch's (pykeops' base class of its complex LazyTensors). Make them with
    ``LazyTensor`` of a complex array or ``ComplexLazyTensor``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("ComplexGenericLazyTensor is for isinstance checks; make complex "
                        "LazyTensors with keops.numpy/keops.torch's LazyTensor or "
                        "ComplexLazyTensor")


def is_complex_lazytensor(x: Any) -> bool:
    """Whether ``x`` is a complex LazyTensor."""
    return isinstance(x, ComplexGenericLazyTensor)


def get_gpu_props() -> Tuple[int, str]:
    """``(number of GPUs keops can run on, a line per part found or missing)``; 0 GPUs
    where the CUDA driver or NVRTC is missing (the lines say which)."""
    lines = _keops.gpu_status()
    usable = _keops.gpu_available()
    count = sum(1 for part, found, _ in lines if part == "device" and found) if usable else 0
    text = "\n".join(f"{part}: {text}" for part, _, text in lines)
    return count, text


def get_gpu_number() -> int:
    """The number of GPUs keops can run on here (0 without a driver, a device or NVRTC)."""
    return get_gpu_props()[0]


def axis2cat(axis: int) -> int:
    """The category (0: ``i``, 1: ``j``) of the output rows of a reduction over ``axis``."""
    if axis in (0, 1):
        return 1 - axis
    raise ValueError(f"axis should be 0 or 1, got {axis!r}")


def cat2axis(cat: int) -> int:
    """The reduced axis of a reduction whose output rows have category ``cat``."""
    if cat in (0, 1):
        return 1 - cat
    raise ValueError(f"category should be 0 (Vi) or 1 (Vj), got {cat!r}")


def get_tools(lang: str) -> Any:
    """pykeops' array abstraction for ``lang``: ``numpytools()`` for ``"numpy"``,
    ``torchtools()`` for ``"torch"`` or ``"pytorch"``."""
    if lang == "numpy":
        from .numpy.utils import numpytools
        return numpytools()
    if lang in ("torch", "pytorch"):
        from .torch.utils import torchtools
        return torchtools()
    raise ValueError(f"get_tools: lang should be 'numpy', 'torch' or 'pytorch', got {lang!r}")


def WarmUpGpu(lang: Optional[str] = None) -> None:  # noqa: N802 (pykeops' name)
    """Nothing to warm up: kernels are compiled and cached on their first call. Kept
    for pykeops' scripts."""

