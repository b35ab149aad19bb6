"""pykeops' ``pykeops.numpy.utils``: ``numpytools`` (the array operations pykeops'
generic code is written against, used by libraries that wrap KeOps for several array
types) and the dense NumPy kernels its tests and tutorials compare against
(``squared_distances``, ``np_kernel``, ``log_sum_exp``, ...)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .._common import WarmUpGpu
from . import Genred, KernelSolve
from .cluster import swap_axes

__all__ = [
    "numpytools", "squared_distances", "differences", "np_kernel", "log_np_kernel",
    "grad_np_kernel", "np_kernel_sphere", "chain_rules", "log_sum_exp", "WarmUpGpu",
]

_COMPLEX = {"float32": "complex64", "float64": "complex128"}


class numpytools:  # noqa: N801 (pykeops' name)
    """NumPy's side of pykeops' array abstraction (``torchtools`` is torch's)."""

    norm = staticmethod(np.linalg.norm)
    arraysum = staticmethod(np.sum)
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    Genred = Genred
    KernelSolve = KernelSolve
    swap_axes = staticmethod(swap_axes)
    arraytype = np.ndarray
    float_types: List[Any] = [float, np.float16, np.float32, np.float64]

    @staticmethod
    def is_tensor(x: Any) -> bool:
        """Whether ``x`` is a NumPy array."""
        return isinstance(x, np.ndarray)

    @staticmethod
    def copy(x: np.ndarray) -> np.ndarray:
        """A copy of ``x``."""
        return np.copy(x)

    @staticmethod
    def eq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Elementwise ``x == y``."""
        return np.equal(x, y)

    @staticmethod
    def transpose(x: np.ndarray) -> np.ndarray:
        """``x.T``."""
        return x.T

    @staticmethod
    def permute(x: np.ndarray, *axes: Any) -> np.ndarray:
        """``x`` with its axes permuted."""
        return x.transpose(*axes)

    @staticmethod
    def contiguous(x: np.ndarray) -> np.ndarray:
        """``x`` in C order."""
        return np.ascontiguousarray(x)

    @staticmethod
    def numpy(x: np.ndarray) -> np.ndarray:
        """``x`` itself."""
        return x

    @staticmethod
    def tile(*args: Any) -> np.ndarray:
        """``np.tile``."""
        return np.tile(*args)

    @staticmethod
    def solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The dense solution of ``a x = b``."""
        return np.linalg.solve(a, b)

    @staticmethod
    def size(x: np.ndarray) -> int:
        """Number of elements."""
        return x.size

    @staticmethod
    def view(x: np.ndarray, s: Any) -> np.ndarray:
        """``x`` reshaped."""
        return np.reshape(x, s)

    @staticmethod
    def long(x: np.ndarray) -> np.ndarray:
        """``x`` as int64."""
        return x.astype("int64")

    @staticmethod
    def dtype(x: np.ndarray) -> Any:
        """``x.dtype``."""
        return x.dtype

    @staticmethod
    def detect_complex(x: Any) -> bool:
        """Whether ``x`` (an array, a number or a list of numbers) is complex."""
        if isinstance(x, list):
            return any(isinstance(v, complex) for v in x)
        if isinstance(x, np.ndarray):
            return bool(np.iscomplexobj(x))
        return isinstance(x, complex)

    @staticmethod
    def view_as_complex(x: np.ndarray) -> Optional[np.ndarray]:
        """Interleaved real/imaginary floats viewed as complex numbers."""
        name = _COMPLEX.get(x.dtype.name)
        return None if name is None else x.view(name)

    @staticmethod
    def view_as_real(x: np.ndarray) -> Optional[np.ndarray]:
        """Complex numbers viewed as interleaved real/imaginary floats."""
        name = {c: r for r, c in _COMPLEX.items()}.get(x.dtype.name)
        return None if name is None else x.view(name)

    @staticmethod
    def dtypename(dtype: Any) -> str:
        """``"float32"`` for ``np.dtype("float32")``."""
        return np.dtype(dtype).name

    @staticmethod
    def rand(m: int, n: int, dtype: Any) -> np.ndarray:
        """Uniform ``(m, n)`` samples."""
        return np.random.rand(m, n).astype(dtype)

    @staticmethod
    def randn(m: int, n: int, dtype: Any) -> np.ndarray:
        """Normal ``(m, n)`` samples."""
        return np.random.randn(m, n).astype(dtype)

    @staticmethod
    def zeros(shape: Any, dtype: Any, device: Any = None,
              requires_grad: Any = None) -> np.ndarray:
        """Zeros (``device`` and ``requires_grad`` are torch's; ignored)."""
        return np.zeros(shape, dtype=dtype)

    @staticmethod
    def empty(shape: Any, dtype: Any, device: Any = None,
              requires_grad: Any = None) -> np.ndarray:
        """An uninitialised array."""
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def eye(n: int, dtype: Any) -> np.ndarray:
        """The identity."""
        return np.eye(n, dtype=dtype)

    @staticmethod
    def array(x: Any, dtype: Any, device: Any = None) -> np.ndarray:
        """``x`` as an array of ``dtype``."""
        return np.array(x).astype(dtype)

    @staticmethod
    def get_pointer(x: np.ndarray) -> int:
        """The address of ``x``'s data."""
        return x.__array_interface__["data"][0]

    @staticmethod
    def device(x: Any) -> str:
        """Always ``"cpu"``."""
        return "cpu"

    @staticmethod
    def device_type_index(x: Any) -> Tuple[str, None]:
        """``("cpu", None)``."""
        return "cpu", None

    @staticmethod
    def device_dict(x: Any) -> Dict[str, str]:
        """``{"cat": "cpu"}``."""
        return dict(cat="cpu")


def squared_distances(x: Any, y: Any) -> Any:
    """The dense ``(N, M)`` matrix of ``|x_i - y_j|^2`` (expanded as a matrix product,
    as pykeops' tests compute it), of NumPy arrays (or of torch tensors: the same code
    serves ``keops.torch.utils``)."""
    x_norm = (x ** 2).sum(1).reshape(-1, 1)
    y_norm = (y ** 2).sum(1).reshape(1, -1)
    return x_norm + y_norm - 2.0 * (x @ y.T)


def differences(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``x_i - y_j`` as a ``(D, N, M)`` array."""
    return x.T[:, :, np.newaxis] - y.T[:, np.newaxis, :]


#: The radial kernels of pykeops' tests: functions of ``|x - y|^2``, the scale ``s`` and
#: the array module ``xp`` (``numpy``, or ``torch`` for ``keops.torch.utils``).
_Radial = Callable[[Any, Any, Any], Any]
_KERNELS: Dict[str, _Radial] = {
    "gaussian": lambda sq, s, xp: xp.exp(-sq / (s * s)),
    "laplacian": lambda sq, s, xp: xp.exp(-xp.sqrt(sq) / s),
    "cauchy": lambda sq, s, xp: 1.0 / (1 + sq / (s * s)),
    "inverse_multiquadric": lambda sq, s, xp: 1.0 / xp.sqrt(1 + sq / (s * s)),
}
_LOG_KERNELS: Dict[str, _Radial] = {
    "gaussian": lambda sq, s, xp: -sq / (s * s),
    "laplacian": lambda sq, s, xp: -xp.sqrt(sq) / s,
    "cauchy": lambda sq, s, xp: -xp.log(1 + sq / (s * s)),
    "inverse_multiquadric": lambda sq, s, xp: -0.5 * xp.log(1.0 + sq / (s * s)),
}
# Derivatives with respect to |x - y|^2.
_GRAD_KERNELS: Dict[str, _Radial] = {
    "gaussian": lambda sq, s, xp: -xp.exp(-sq / (s * s)) / (s * s),
    "laplacian": lambda sq, s, xp: -xp.exp(-xp.sqrt(sq) / s) / (2 * s * xp.sqrt(sq)),
    "cauchy": lambda sq, s, xp: -1.0 / (s * (sq / (s * s) + 1)) ** 2,
    "inverse_multiquadric": lambda sq, s, xp: -0.5 / ((s ** 2) * ((sq / (s * s) + 1) ** 1.5)),
}


def _pick(table: Dict[str, Any], kernel: str) -> Any:
    if kernel not in table:
        raise ValueError(f"unknown kernel {kernel!r}; one of {', '.join(table)}")
    return table[kernel]


def _kernel(table: Dict[str, _Radial], kernel: str, x: Any, y: Any, s: Any,
            xp: Any = np) -> Any:
    return _pick(table, kernel)(squared_distances(x, y), s, xp)


def np_kernel(x: np.ndarray, y: np.ndarray, s: float, kernel: str) -> np.ndarray:
    """The dense kernel matrix ``k(|x_i - y_j| / s)``: ``kernel`` is ``"gaussian"``,
    ``"laplacian"``, ``"cauchy"`` or ``"inverse_multiquadric"``."""
    return _kernel(_KERNELS, kernel, x, y, s)


def log_np_kernel(x: np.ndarray, y: np.ndarray, s: float, kernel: str) -> np.ndarray:
    """The logarithm of :func:`np_kernel`."""
    return _kernel(_LOG_KERNELS, kernel, x, y, s)


def grad_np_kernel(x: np.ndarray, y: np.ndarray, s: float, kernel: str) -> np.ndarray:
    """The derivative of :func:`np_kernel` with respect to ``|x_i - y_j|^2``."""
    return _kernel(_GRAD_KERNELS, kernel, x, y, s)


def np_kernel_sphere(nalpha: np.ndarray, nbeta: np.ndarray, s: float,
                     kernel: str) -> np.ndarray:
    """Kernels on unit vectors (varifold kernels): ``"binet"``, ``"linear"``,
    ``"gaussian_unoriented"``, ``"gaussian_oriented"``."""
    prs = nalpha @ nbeta.T
    table = {
        "binet": lambda: prs ** 2,
        "linear": lambda: prs,
        "gaussian_unoriented": lambda: np.exp((-2.0 + 2.0 * prs * prs) / (s * s)),
        "gaussian_oriented": lambda: np.exp((-2.0 + 2.0 * prs) / (s * s)),
    }
    return _pick(table, kernel)()


def chain_rules(q: np.ndarray, ax: np.ndarray, by: np.ndarray, aa: np.ndarray,
                p: np.ndarray) -> np.ndarray:
    """``sum_j q_i . (2 (x_i - y_j) aa_ij p_j)``, coordinate by coordinate: the gradient
    with respect to ``x`` of ``q . K p`` for a kernel whose derivative in ``|x - y|^2``
    is ``aa`` (float32, as pykeops' tests)."""
    res = np.zeros(ax.shape).astype("float32")
    for i in range(ax.shape[1]):
        ximyj = ax[:, i][:, None] - by[:, i][None, :]
        res[:, i] = np.sum(q * ((2 * ximyj * aa) @ p), axis=1)
    return res


def log_sum_exp(mat: np.ndarray, axis: int = 0) -> np.ndarray:
    """``log sum exp`` along ``axis``, with the maximum factored out."""
    max_rc = mat.max(axis=axis)
    return max_rc + np.log(np.sum(np.exp(mat - np.expand_dims(max_rc, axis=axis)), axis=axis))

