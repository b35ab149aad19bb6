"""NumPy front end of keops, with pykeops' API (``from keops.numpy import ...``).

>>> import numpy as np
>>> from keops.numpy import Genred
>>> conv = Genred("Exp(-SqDist(x, y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"],
...               reduction_op="Sum", axis=1)
>>> x, y, b = np.zeros((4, 3)), np.zeros((5, 3)), np.ones((5, 1))
>>> conv(x, y, b).ravel().tolist()
[5.0, 5.0, 5.0, 5.0]
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import numpy as np

from .._genred import Core, DeviceId, GenredBase, Options, reduction_shortcuts
from .._lazy import GenericLazyTensor, complex_class, variable_constructors
from .._solve import ConvergenceWarning, KernelSolveBase, SolveInfo, SolveParams, run_solve

__all__ = ["Genred", "LogSumExp", "KernelSolve", "LazyTensor", "ComplexLazyTensor", "Vi", "Vj", "Pm",
           "generic_sum", "generic_logsumexp", "generic_argmin", "generic_argkmin",
           "ConvergenceWarning", "SolveInfo"]


def _widened(arrays: List[Any]) -> Tuple[List[np.ndarray], bool]:
    """Contiguous arrays (non-contiguous ones copied), float16 ones as float32 (the
    engines have no half kernels), and whether they were float16 (all alike)."""
    half = [isinstance(a, np.ndarray) and a.dtype == np.float16 for a in arrays]
    if any(half) and not all(half):
        k = half.index(not half[0])
        raise TypeError(f"argument {k}: expected {arrays[0].dtype} like argument 0, got an "
                        f"array of dtype {arrays[k].dtype}")
    if any(half):
        return [np.asarray(a, dtype=np.float32) for a in arrays], True
    return [np.ascontiguousarray(a) for a in arrays], False


def _run(core: Core, arrays: List[Any], opts: Options) -> Tuple[Any, Any]:
    """Runs a reduction on NumPy arrays; float16 ones are computed in float32 and the
    values rounded back."""
    arrays, half = _widened(arrays)
    values, indices = core(arrays, opts)
    return (values.astype(np.float16) if half and values is not None else values), indices


class Genred(GenredBase):
    __doc__ = GenredBase.__doc__

    def __call__(
        self,
        *args: np.ndarray,
        backend: str = "auto",
        device_id: DeviceId = -1,
        ranges: Optional[Any] = None,
        out: Optional[np.ndarray] = None,
    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Runs the reduction on NumPy arrays (float32 or float64, all alike; float16 ones
        are computed in float32 and the values rounded back).

        ``Vi``/``Vj`` arguments have shape ``(..., n, d)``, parameters ``(..., d)``;
        leading batch dimensions broadcast. Non-contiguous arrays are copied first.
        Returns the values, the indices (``ArgMin``, ``ArgKMin``, ... as int64), or both
        as a tuple (``Min_ArgMin``, ``KMin_ArgKMin``).
        """
        opts = self._options(backend, ranges, device_id)
        for k, a in enumerate(args):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"argument {k}: expected a NumPy array, got {type(a).__name__}")
        values, indices = _run(self.core, list(args), opts)
        return self._result(values, indices, out)


LogSumExp, generic_sum, generic_logsumexp, generic_argmin, generic_argkmin = \
    reduction_shortcuts(Genred)


def _solve(core: Core, var: int, arrays: List[Any], params: SolveParams,
           opts: Options) -> np.ndarray:
    for k, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"argument {k}: expected a NumPy array, got {type(a).__name__}")
    arrays, half = _widened(arrays)
    x = run_solve(core, var, arrays, params, opts)
    return x.astype(np.float16) if half else x


class KernelSolve(KernelSolveBase):
    __doc__ = KernelSolveBase.__doc__
    _solve = staticmethod(_solve)


class LazyTensor(GenericLazyTensor):
    __doc__ = GenericLazyTensor.__doc__

    @classmethod
    def _as_array(cls, x: Any) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype not in (np.float32, np.float64, np.float16):
            raise TypeError("LazyTensor: expected a float32, float64 or float16 array, got "
                            f"dtype {a.dtype}")
        return a

    _run = staticmethod(_run)
    _Genred = Genred
    _KernelSolve = KernelSolve

    @staticmethod
    def _complex_as_real(x: Any) -> Optional[np.ndarray]:
        if not np.iscomplexobj(x):
            return None
        a = np.ascontiguousarray(x)
        if a.dtype not in (np.complex64, np.complex128):
            raise TypeError(f"LazyTensor: expected a complex64 or complex128 array, got {a.dtype}")
        return a.view(np.float32 if a.dtype == np.complex64 else np.float64)

    @staticmethod
    def _real_as_complex(a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a)
        return a.view(np.complex64 if a.dtype == np.float32 else np.complex128)

    @staticmethod
    def _repeat_rows(a: np.ndarray, times: int, interleave: bool) -> np.ndarray:
        if interleave:
            return np.repeat(a, times, axis=-2)
        return np.concatenate([a] * times, axis=-2)


Vi, Vj, Pm = variable_constructors(LazyTensor)
ComplexLazyTensor = complex_class(LazyTensor)
