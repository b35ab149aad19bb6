"""NumPy front end of keops, with pykeops' ``Genred`` signature.

>>> import numpy as np
>>> from keops.numpy import Genred
>>> conv = Genred("Exp(-SqDist(x, y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(1)"],
...               reduction_op="Sum", axis=1)
>>> x, y, b = np.zeros((4, 3)), np.zeros((5, 3)), np.ones((5, 1))
>>> conv(x, y, b).ravel().tolist()
[5.0, 5.0, 5.0, 5.0]
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _keops
from .lazy import LazyTensor, Pm, Vi, Vj

__all__ = ["Genred", "LazyTensor", "Vi", "Vj", "Pm"]

_K_REDUCTIONS = ("KMin", "ArgKMin", "KMin_ArgKMin")


class Genred:
    """A generic reduction of a symbolic matrix (pykeops' ``Genred``).

    Args:
        formula: the formula ``F``, in KeOps syntax (``"Exp(-SqDist(x,y)) * b"``).
        aliases: variable declarations (``"x = Vi(3)"``, ``"y = Vj(1,3)"``, ``"p = Pm(1)"``).
        reduction_op: ``"Sum"``, ``"LogSumExp"``, ``"SumSoftMaxWeight"``, ``"Min"``,
            ``"Max"``, ``"ArgMin"``, ``"ArgMax"``, ``"Min_ArgMin"``, ``"Max_ArgMax"``,
            ``"KMin"``, ``"ArgKMin"``, ``"KMin_ArgKMin"``.
        axis: 1 reduces over ``j`` (one output row per ``i``), 0 over ``i``.
        dtype: ignored (the arrays' dtype decides), kept for pykeops compatibility.
        opt_arg: ``K`` for the K-min family.
        formula2: the weight of ``LogSumExp`` / ``SumSoftMaxWeight``.
        dtype_acc: ``"auto"``, ``"float32"`` or ``"float64"`` (in-tile sums).
        use_double_acc: same as ``dtype_acc="float64"``.
        sum_scheme: ``"auto"``, ``"direct_sum"``, ``"block_sum"``, ``"kahan_scheme"``.
        enable_chunks, rec_multVar_highdim, cuda_type: accepted for compatibility.

    Raises:
        ValueError: a formula, alias or option error (the message names the position
            in the formula, or the option).
    """

    def __init__(
        self,
        formula: str,
        aliases: Sequence[str],
        reduction_op: str = "Sum",
        axis: int = 0,
        dtype: Optional[str] = None,
        opt_arg: Optional[int] = None,
        formula2: Optional[str] = None,
        cuda_type: Optional[str] = None,
        dtype_acc: str = "auto",
        use_double_acc: bool = False,
        sum_scheme: str = "auto",
        enable_chunks: bool = True,
        rec_multVar_highdim: bool = False,
    ) -> None:
        k = opt_arg if reduction_op in _K_REDUCTIONS else None
        if reduction_op in _K_REDUCTIONS and opt_arg is None:
            raise ValueError(f"reduction {reduction_op} needs opt_arg = K")
        self._core = _keops.Genred(formula, list(aliases), reduction_op, int(axis), k, formula2)
        self.reduction_op = reduction_op
        self.axis = int(axis)
        self.dtype_acc = "float64" if use_double_acc else dtype_acc
        self.sum_scheme = sum_scheme

    @property
    def formula(self) -> str:
        """The parsed formula, printed in KeOps syntax."""
        return self._core.formula

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
        if ranges is not None:
            raise NotImplementedError("ranges (block-sparse reductions) are not supported yet")
        arrays = [np.ascontiguousarray(a) for a in args]
        values, indices = self._core(
            arrays, dtype_acc=self.dtype_acc, sum_scheme=self.sum_scheme, backend=backend
        )
        if values is not None and indices is not None:
            return values, indices
        result = values if values is not None else indices
        if out is not None:
            out[...] = result
            return out
        return result
