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

from ._genred import Core, GenredBase, Options, output_axis
from ._lazy import GenericLazyTensor

__all__ = ["Genred", "LogSumExp", "LazyTensor", "Vi", "Vj", "Pm",
           "generic_sum", "generic_logsumexp", "generic_argmin", "generic_argkmin"]


def _run(core: Core, arrays: List[Any], opts: Options) -> Tuple[Any, Any]:
    """Runs a reduction on NumPy arrays (non-contiguous ones are copied first)."""
    return core([np.ascontiguousarray(a) for a in arrays], opts)


class Genred(GenredBase):
    __doc__ = GenredBase.__doc__

    def __call__(
        self,
        *args: np.ndarray,
        backend: str = "auto",
        device_id: int = -1,
        ranges: Optional[Any] = None,
        out: Optional[np.ndarray] = None,
    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Runs the reduction on NumPy arrays (float32 or float64, all alike).

        ``Vi``/``Vj`` arguments have shape ``(..., n, d)``, parameters ``(..., d)``;
        leading batch dimensions broadcast. Non-contiguous arrays are copied first.
        Returns the values, the indices (``ArgMin``, ``ArgKMin``, ... as int64), or both
        as a tuple (``Min_ArgMin``, ``KMin_ArgKMin``).
        """
        opts = self._options(backend, ranges)
        for k, a in enumerate(args):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"argument {k}: expected a NumPy array, got {type(a).__name__}")
        values, indices = _run(self.core, list(args), opts)
        if values is not None and indices is not None:
            return values, indices
        result = values if values is not None else indices
        if out is not None:
            out[...] = result
            return out
        return result


def LogSumExp(formula: str, aliases: List[str], axis: int = 0, **kwargs: Any) -> Genred:
    """``Genred`` with the ``LogSumExp`` reduction."""
    return Genred(formula, aliases, reduction_op="LogSumExp", axis=axis, **kwargs)


def _generic(reduction: str, formula: str, output: str, aliases: Tuple[str, ...],
             **kwargs: Any) -> Genred:
    return Genred(formula, list(aliases), reduction_op=reduction, axis=output_axis(output),
                  **kwargs)


def generic_sum(formula: str, output: str, *aliases: str, **kwargs: Any) -> Genred:
    """pykeops' ``generic_sum``: the output alias (``"a = Vi(1)"``) sets the axis."""
    return _generic("Sum", formula, output, aliases, **kwargs)


def generic_logsumexp(formula: str, output: str, *aliases: str, **kwargs: Any) -> Genred:
    """pykeops' ``generic_logsumexp``."""
    return _generic("LogSumExp", formula, output, aliases, **kwargs)


def generic_argmin(formula: str, output: str, *aliases: str, **kwargs: Any) -> Genred:
    """pykeops' ``generic_argmin``."""
    return _generic("ArgMin", formula, output, aliases, **kwargs)


def generic_argkmin(formula: str, output: str, *aliases: str, **kwargs: Any) -> Genred:
    """pykeops' ``generic_argkmin`` (``opt_arg`` = K)."""
    return _generic("ArgKMin", formula, output, aliases, **kwargs)


class LazyTensor(GenericLazyTensor):
    __doc__ = GenericLazyTensor.__doc__

    @classmethod
    def _as_array(cls, x: Any) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"LazyTensor: expected a float32 or float64 array, got dtype {a.dtype}")
        return a

    _run = staticmethod(_run)

    @staticmethod
    def _repeat_rows(a: np.ndarray, times: int, interleave: bool) -> np.ndarray:
        if interleave:
            return np.repeat(a, times, axis=-2)
        return np.concatenate([a] * times, axis=-2)


def Vi(x: np.ndarray) -> LazyTensor:
    """An ``i``-indexed variable from an array ``(..., N, D)``."""
    return LazyTensor._variable_of(x, "i")


def Vj(x: np.ndarray) -> LazyTensor:
    """A ``j``-indexed variable from an array ``(..., M, D)``."""
    return LazyTensor._variable_of(x, "j")


def Pm(x: Any) -> LazyTensor:
    """A parameter: a number (a constant of the formula) or an array ``(..., D)``."""
    if isinstance(x, (int, float)):
        return LazyTensor(x)
    return LazyTensor._variable_of(x, "p")
