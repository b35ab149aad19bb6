"""pykeops' ``pykeops.torch.utils``: ``torchtools`` (the tensor operations pykeops'
generic code is written against, used by libraries that wrap KeOps for several array
types), ``squared_distances`` and ``torch_kernel`` (dense references)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from ..numpy.utils import _KERNELS, _kernel, squared_distances
from . import Genred, KernelSolve
from .cluster import swap_axes

__all__ = ["torchtools", "torchsolve", "is_on_device", "squared_distances", "torch_kernel"]


def is_on_device(x: torch.Tensor) -> bool:
    """Whether ``x`` is in GPU memory."""
    return x.is_cuda


def torchsolve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The dense solution of ``a x = b``."""
    return torch.linalg.solve(a, b)


_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64,
           "int32": torch.int32, "int64": torch.int64}


class torchtools:  # noqa: N801 (pykeops' name)
    """torch's side of pykeops' array abstraction (``numpytools`` is NumPy's)."""

    copy = staticmethod(torch.clone)
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    norm = staticmethod(torch.norm)
    swap_axes = staticmethod(swap_axes)
    Genred = Genred
    KernelSolve = KernelSolve
    arraytype = torch.Tensor
    float_types: List[Any] = [float]

    @staticmethod
    def eq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Elementwise ``x == y``."""
        return torch.eq(x, y)

    @staticmethod
    def transpose(x: torch.Tensor) -> torch.Tensor:
        """``x.t()``."""
        return x.t()

    @staticmethod
    def permute(x: torch.Tensor, *dims: Any) -> torch.Tensor:
        """``x`` with its dimensions permuted."""
        return x.permute(*dims)

    @staticmethod
    def contiguous(x: torch.Tensor) -> torch.Tensor:
        """``x`` in contiguous memory."""
        return x.contiguous()

    @staticmethod
    def solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The dense solution of ``a x = b``, contiguous."""
        return torchsolve(a, b).contiguous()

    @staticmethod
    def arraysum(x: torch.Tensor, axis: Optional[int] = None) -> torch.Tensor:
        """The sum of all elements, or along ``axis``."""
        return x.sum() if axis is None else x.sum(dim=axis)

    @staticmethod
    def long(x: torch.Tensor) -> torch.Tensor:
        """``x`` as int64."""
        return x.long()

    @staticmethod
    def size(x: torch.Tensor) -> int:
        """Number of elements."""
        return x.numel()

    @staticmethod
    def tile(*args: Any) -> torch.Tensor:
        """``Tensor.repeat``."""
        return torch.Tensor.repeat(*args)

    @staticmethod
    def numpy(x: torch.Tensor) -> Any:
        """``x`` as a NumPy array (detached, on the host)."""
        return x.detach().cpu().numpy()

    @staticmethod
    def view(x: torch.Tensor, s: Any) -> torch.Tensor:
        """``x.view(s)``."""
        return x.view(s)

    @staticmethod
    def is_tensor(x: Any) -> bool:
        """Whether ``x`` is a tensor."""
        return isinstance(x, torch.Tensor)

    @staticmethod
    def dtype(x: Any) -> Any:
        """``x.dtype``, or the type of a Python number."""
        return x.dtype if hasattr(x, "dtype") else type(x)

    @staticmethod
    def detect_complex(x: Any) -> bool:
        """Whether ``x`` (a tensor, a number or a list of numbers) is complex."""
        if isinstance(x, list):
            return any(isinstance(v, complex) for v in x)
        if isinstance(x, torch.Tensor):
            return torch.is_complex(x)
        return isinstance(x, complex)

    @staticmethod
    def view_as_complex(x: torch.Tensor) -> torch.Tensor:
        """The last dimension's interleaved real/imaginary pairs as complex numbers."""
        return torch.view_as_complex(x.view(*x.shape[:-1], x.shape[-1] // 2, 2))

    @staticmethod
    def view_as_real(x: torch.Tensor) -> torch.Tensor:
        """Complex numbers as interleaved real/imaginary pairs in the last dimension."""
        return torch.view_as_real(x).view(*x.shape[:-1], 2 * x.shape[-1])

    @staticmethod
    def dtypename(dtype: Any) -> Any:
        """``"float32"`` for ``torch.float32`` (``int`` stays ``int``, a ``list`` is
        float32, as pykeops)."""
        if dtype is int:
            return int
        if dtype is list:
            return "float32"
        for name, d in _DTYPES.items():
            if d == dtype and name.startswith("float"):
                return name
        raise ValueError(f"[KeOps] {dtype} data type incompatible with KeOps.")

    @staticmethod
    def rand(m: int, n: int, dtype: Any, device: Any) -> torch.Tensor:
        """Uniform ``(m, n)`` samples."""
        return torch.rand(m, n, dtype=dtype, device=device)

    @staticmethod
    def randn(m: int, n: int, dtype: Any, device: Any) -> torch.Tensor:
        """Normal ``(m, n)`` samples."""
        return torch.randn(m, n, dtype=dtype, device=device)

    @staticmethod
    def zeros(shape: Any, dtype: Any, device: Any, requires_grad: bool = False) -> torch.Tensor:
        """Zeros."""
        return torch.zeros(*shape, dtype=dtype, device=device, requires_grad=requires_grad)

    @staticmethod
    def empty(shape: Any, dtype: Any, device: Any, requires_grad: bool = False) -> torch.Tensor:
        """An uninitialised tensor."""
        return torch.empty(*shape, dtype=dtype, device=device, requires_grad=requires_grad)

    @staticmethod
    def eye(n: int, dtype: Any, device: Any) -> torch.Tensor:
        """The identity."""
        return torch.eye(n, dtype=dtype, device=device)

    @staticmethod
    def array(x: Any, dtype: Any, device: Any) -> torch.Tensor:
        """``x`` as a tensor of ``dtype`` (a name: ``"float32"``, ``"int64"``, ...)."""
        if dtype not in _DTYPES:
            raise ValueError(f"[KeOps] data type {dtype} is incompatible with KeOps.")
        return torch.tensor(x, dtype=_DTYPES[dtype], device=device)

    @staticmethod
    def device(x: Any) -> Optional[torch.device]:
        """``x.device`` for a tensor, else ``None``."""
        return x.device if isinstance(x, torch.Tensor) else None

    @staticmethod
    def get_pointer(x: torch.Tensor) -> int:
        """The address of ``x``'s data."""
        return x.data_ptr()

    @staticmethod
    def device_type_index(x: Any) -> Tuple[Optional[str], Optional[int]]:
        """``(device type, index)`` of a tensor, ``(None, None)`` otherwise."""
        if isinstance(x, torch.Tensor):
            return x.device.type, x.device.index
        return None, None

    @staticmethod
    def device_dict(x: torch.Tensor) -> Dict[str, Any]:
        """``{"cat": "cpu"}`` or ``{"cat": "cuda", "index": k}``."""
        if x.is_cuda:
            return dict(cat="cuda", index=x.device.index)
        return dict(cat="cpu")

    @staticmethod
    def pointer(x: torch.Tensor) -> int:
        """The address of ``x``'s data."""
        return x.data.data_ptr()


def torch_kernel(x: torch.Tensor, y: torch.Tensor, s: Any, kernel: str) -> torch.Tensor:
    """The dense kernel matrix ``k(|x_i - y_j| / s)``: ``kernel`` is ``"gaussian"``,
    ``"laplacian"``, ``"cauchy"`` or ``"inverse_multiquadric"``."""
    return _kernel(_KERNELS, kernel, x, y, s, torch)
