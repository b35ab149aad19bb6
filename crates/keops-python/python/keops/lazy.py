"""``LazyTensor``: symbolic matrices built with NumPy-like operators, as in pykeops.

A ``LazyTensor`` wraps arrays shaped like pykeops expects — ``(..., N, 1, D)`` for an
``i``-indexed variable, ``(..., 1, M, D)`` for a ``j``-indexed one, ``(D,)`` or
``(..., 1, 1, D)`` for a parameter — and records operations as a KeOps formula. Nothing
is computed until a reduction (``.sum(dim)``, ``.logsumexp(dim)``, ``.argKmin(K, dim)``,
...), which compiles the formula once (cached) and runs it with the wrapped arrays.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _keops

Number = Union[int, float]

_CATS = {"i": "Vi", "j": "Vj", "p": "Pm"}


def _literal(x: Number) -> str:
    v = float(x)
    if v.is_integer() and abs(v) < 1e15:
        s = str(int(v))
    else:
        s = repr(v)
    return f"({s})" if v < 0 else s


@lru_cache(maxsize=256)
def _genred(formula: str, aliases: Tuple[str, ...], reduction: str, axis: int,
            k: Optional[int], formula2: Optional[str]) -> Any:
    return _keops.Genred(formula, list(aliases), reduction, axis, k, formula2)


class LazyTensor:
    """A symbolic tensor ``F(x_i, y_j, p)`` (pykeops' ``LazyTensor``).

    Args:
        x: a NumPy array (``(..., N, 1, D)``: indexed by ``i``; ``(..., 1, M, D)``: by
            ``j``; ``(D,)`` or ``(..., 1, 1, D)``: a parameter) or a number.
        axis: force the category of a 2-D array ``(N, D)``: 0 for ``i``, 1 for ``j``.
    """

    def __init__(self, x: Any = None, axis: Optional[int] = None) -> None:
        self._vars: List[Tuple[np.ndarray, str]] = []
        if x is None:
            self._formula = ""
            self._dim = 1
            return
        if isinstance(x, (int, float)):
            self._formula = _literal(x)
            self._dim = 1
            return
        a = np.asarray(x)
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"LazyTensor: expected a float32 or float64 array, got dtype {a.dtype}")
        if axis is not None:
            if a.ndim != 2 or axis not in (0, 1):
                raise ValueError("LazyTensor(x, axis): x must be 2-D (N, D) and axis 0 or 1")
            cat, data = ("i", a) if axis == 0 else ("j", a)
        elif a.ndim == 1:
            cat, data = "p", a
        elif a.ndim >= 3 and a.shape[-2] == 1 and a.shape[-3] == 1:
            cat, data = "p", a.reshape(a.shape[:-3] + (a.shape[-1],))
        elif a.ndim >= 3 and a.shape[-2] == 1:
            cat, data = "i", a.reshape(a.shape[:-2] + (a.shape[-1],))
        elif a.ndim >= 3 and a.shape[-3] == 1:
            cat, data = "j", np.squeeze(a, axis=-3)
        else:
            raise ValueError(
                f"LazyTensor: cannot tell the category of an array of shape {a.shape}; use "
                "(..., N, 1, D) for i, (..., 1, M, D) for j, (D,) for a parameter, or Vi/Vj/Pm"
            )
        self._vars = [(data, cat)]
        self._formula = "\x00"  # placeholder for variable 0, named when reduced
        self._dim = int(a.shape[-1])

    # -- construction helpers -------------------------------------------------------
    @staticmethod
    def _wrap(x: Any) -> "LazyTensor":
        return x if isinstance(x, LazyTensor) else LazyTensor(x)

    def _new(self, formula: str, vars_: List[Tuple[np.ndarray, str]], dim: int) -> "LazyTensor":
        out = LazyTensor()
        out._formula, out._vars, out._dim = formula, vars_, dim
        return out

    def _join(self, other: "LazyTensor") -> Tuple[List[Tuple[np.ndarray, str]], str, str]:
        """Merges variable lists; returns them with both formulas renumbered."""
        vars_ = list(self._vars)
        mapping = []
        for arr, cat in other._vars:
            for k, (a2, c2) in enumerate(vars_):
                if a2 is arr and c2 == cat:
                    mapping.append(k)
                    break
            else:
                mapping.append(len(vars_))
                vars_.append((arr, cat))
        return vars_, self._formula, _renumber(other._formula, mapping)

    def _unary(self, name: str, dim: Optional[int] = None) -> "LazyTensor":
        return self._new(f"{name}({self._formula})", self._vars, self._dim if dim is None else dim)

    def _binary(self, other: Any, fmt: str, dim: Optional[int] = None) -> "LazyTensor":
        o = self._wrap(other)
        vars_, a, b = self._join(o)
        d = max(self._dim, o._dim) if dim is None else dim
        return self._new(fmt.format(a, b), vars_, d)

    # -- properties -------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of dimensions of the symbolic tensor (batch dims + 3)."""
        return len(self.shape)

    @property
    def shape(self) -> Tuple[int, ...]:
        """``(..., N, M, D)`` as pykeops reports it."""
        n = m = 1
        batch: Tuple[int, ...] = ()
        for arr, cat in self._vars:
            if cat == "i":
                n = arr.shape[-2]
            elif cat == "j":
                m = arr.shape[-2]
            lead = arr.shape[:-2] if cat != "p" else arr.shape[:-1]
            if len(lead) > len(batch):
                batch = lead
        return batch + (n, m, self._dim)

    @property
    def dtype(self) -> Any:
        """The dtype of the wrapped arrays."""
        return self._vars[0][0].dtype if self._vars else None

    def __repr__(self) -> str:
        return f"KeOps LazyTensor with formula {self._named()[0]!r} and shape {self.shape}"

    # -- arithmetic -------------------------------------------------------------------
    def __add__(self, o: Any) -> "LazyTensor":
        return self._binary(o, "({} + {})")

    def __radd__(self, o: Any) -> "LazyTensor":
        return self._wrap(o) + self

    def __sub__(self, o: Any) -> "LazyTensor":
        return self._binary(o, "({} - {})")

    def __rsub__(self, o: Any) -> "LazyTensor":
        return self._wrap(o) - self

    def __mul__(self, o: Any) -> "LazyTensor":
        return self._binary(o, "({} * {})")

    def __rmul__(self, o: Any) -> "LazyTensor":
        return self._wrap(o) * self

    def __truediv__(self, o: Any) -> "LazyTensor":
        return self._binary(o, "({} / {})")

    def __rtruediv__(self, o: Any) -> "LazyTensor":
        return self._wrap(o) / self

    def __neg__(self) -> "LazyTensor":
        return self._unary("Minus")

    def __abs__(self) -> "LazyTensor":
        return self._unary("Abs")

    def __pow__(self, p: Any) -> "LazyTensor":
        if isinstance(p, int):
            return self._unary("Square") if p == 2 else self._new(f"Pow({self._formula},{p})", self._vars, self._dim)
        if isinstance(p, float) and p == 0.5:
            return self.sqrt()
        if isinstance(p, float) and p == -0.5:
            return self.rsqrt()
        return self._binary(p, "Powf({}, {})")

    def __or__(self, o: "LazyTensor") -> "LazyTensor":
        """``(x | y)``: the scalar product."""
        return self._binary(o, "Scalprod({}, {})", dim=1)

    # -- math methods (elementwise) -----------------------------------------------------
    def exp(self) -> "LazyTensor":
        """Elementwise exponential."""
        return self._unary("Exp")

    def log(self) -> "LazyTensor":
        """Elementwise natural logarithm."""
        return self._unary("Log")

    def xlogx(self) -> "LazyTensor":
        """Elementwise ``x log x`` (0 at 0)."""
        return self._unary("XLogX")

    def sin(self) -> "LazyTensor":
        """Elementwise sine."""
        return self._unary("Sin")

    def cos(self) -> "LazyTensor":
        """Elementwise cosine."""
        return self._unary("Cos")

    def sqrt(self) -> "LazyTensor":
        """Elementwise square root."""
        return self._unary("Sqrt")

    def rsqrt(self) -> "LazyTensor":
        """Elementwise ``1/sqrt(x)`` (0 at 0)."""
        return self._unary("Rsqrt")

    def square(self) -> "LazyTensor":
        """Elementwise square."""
        return self._unary("Square")

    def abs(self) -> "LazyTensor":
        """Elementwise absolute value."""
        return self._unary("Abs")

    def sign(self) -> "LazyTensor":
        """Elementwise sign."""
        return self._unary("Sign")

    def step(self) -> "LazyTensor":
        """Elementwise Heaviside step (1 at 0)."""
        return self._unary("Step")

    def relu(self) -> "LazyTensor":
        """Elementwise ``max(x, 0)``."""
        return self._unary("ReLU")

    def inv(self) -> "LazyTensor":
        """Elementwise ``1/x``."""
        return self._unary("Inv")

    def power(self, p: Any) -> "LazyTensor":
        """``self ** p``."""
        return self ** p

    # -- vector methods -------------------------------------------------------------------
    def sqnorm2(self) -> "LazyTensor":
        """Squared Euclidean norm over the last dimension."""
        return self._unary("SqNorm2", dim=1)

    def norm2(self) -> "LazyTensor":
        """Euclidean norm over the last dimension."""
        return self._unary("Norm2", dim=1)

    def normalize(self) -> "LazyTensor":
        """``x / |x|`` (0 at 0)."""
        return self._unary("Normalize")

    def sqdist(self, o: "LazyTensor") -> "LazyTensor":
        """Squared Euclidean distance."""
        return self._binary(o, "SqDist({}, {})", dim=1)

    def weightedsqnorm(self, s: "LazyTensor") -> "LazyTensor":
        """``WeightedSqNorm(s, self)``."""
        return self._wrap(s)._binary(self, "WeightedSqNorm({}, {})", dim=1)

    def weightedsqdist(self, o: "LazyTensor", s: "LazyTensor") -> "LazyTensor":
        """``WeightedSqDist(s, self, o)``."""
        return (self - o).weightedsqnorm(s)

    def elem(self, i: int) -> "LazyTensor":
        """Coordinate ``i``."""
        return self._new(f"Elem({self._formula},{int(i)})", self._vars, 1)

    def extract(self, i: int, d: int) -> "LazyTensor":
        """Coordinates ``i .. i+d``."""
        return self._new(f"Extract({self._formula},{int(i)},{int(d)})", self._vars, int(d))

    def concat(self, o: "LazyTensor") -> "LazyTensor":
        """Concatenation along the last dimension."""
        o = self._wrap(o)
        return self._binary(o, "Concat({}, {})", dim=self._dim + o._dim)

    def ifelse(self, a: Any, b: Any) -> "LazyTensor":
        """``a`` where ``self >= 0``, else ``b``."""
        vars_, f0, fa = self._join(self._wrap(a))
        tmp = self._new(f0, vars_, self._dim)
        vars2, f1, fb = tmp._join(self._wrap(b))
        return self._new(f"IfElse({f1}, {fa}, {fb})", vars2, max(self._dim, self._wrap(a)._dim, self._wrap(b)._dim))

    def clamp(self, a: Any, b: Any) -> "LazyTensor":
        """``self`` clamped to ``[a, b]``."""
        if isinstance(a, int) and isinstance(b, int):
            return self._new(f"ClampInt({self._formula},{a},{b})", self._vars, self._dim)
        vars_, f0, fa = self._join(self._wrap(a))
        tmp = self._new(f0, vars_, self._dim)
        vars2, f1, fb = tmp._join(self._wrap(b))
        return self._new(f"Clamp({f1}, {fa}, {fb})", vars2, self._dim)

    # -- reductions -------------------------------------------------------------------------
    def _named(self) -> Tuple[str, Tuple[str, ...]]:
        aliases = tuple(f"v{k} = {_CATS[c]}({k},{a.shape[-1]})" for k, (a, c) in enumerate(self._vars))
        return _name(self._formula), aliases

    def _axis(self, dim: Optional[int], axis: Optional[int]) -> Optional[int]:
        d = dim if dim is not None else axis
        if d is None:
            raise ValueError("a reduction needs dim (or axis): 0 for i, 1 for j")
        nd = self.ndim
        d = d + nd if d < 0 else d
        if d == nd - 1:
            return None  # over the coordinates
        if d == nd - 3:
            return 0
        if d == nd - 2:
            return 1
        raise ValueError(f"dim {dim if dim is not None else axis} is a batch dimension; reduce over i or j")

    def _reduce(self, reduction: str, dim: Optional[int], axis: Optional[int] = None,
                k: Optional[int] = None, weight: Optional["LazyTensor"] = None) -> Any:
        ax = self._axis(dim, axis)
        if ax is None:
            raise ValueError(f"{reduction} over the last dimension is not a reduction of the symbolic matrix")
        base = self
        f2 = None
        if weight is not None:
            vars_, f1, fw = self._join(self._wrap(weight))
            base = self._new(f1, vars_, self._dim)
            f2 = _name(fw)
        formula, aliases = base._named()
        g = _genred(formula, aliases, reduction, ax, k, f2)
        arrays = [np.ascontiguousarray(a) for a, _ in base._vars]
        values, indices = g(arrays)
        if values is not None and indices is not None:
            return values, indices
        return values if values is not None else indices

    def sum(self, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """Sum over ``i`` (dim 0) or ``j`` (dim 1); over the coordinates for dim -1."""
        if self._axis(dim, axis) is None:
            return self._unary("Sum", dim=1)
        return self._reduce("Sum", dim, axis)

    def logsumexp(self, dim: Optional[int] = None, axis: Optional[int] = None, weight: Any = None) -> Any:
        """``log sum exp`` over ``i`` or ``j`` (with an optional weight)."""
        return self._reduce("LogSumExp", dim, axis, weight=weight)

    def sumsoftmaxweight(self, weight: Any, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """``sum exp(F) w / sum exp(F)``."""
        return self._reduce("SumSoftMaxWeight", dim, axis, weight=weight)

    def min(self, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """Minimum over ``i`` or ``j``."""
        return self._reduce("Min", dim, axis)

    def max(self, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """Maximum over ``i`` or ``j``."""
        return self._reduce("Max", dim, axis)

    def argmin(self, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """Position of the minimum (int64)."""
        return self._reduce("ArgMin", dim, axis)

    def argmax(self, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """Position of the maximum (int64)."""
        return self._reduce("ArgMax", dim, axis)

    def min_argmin(self, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """``(min, argmin)``."""
        return self._reduce("Min_ArgMin", dim, axis)

    def max_argmax(self, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """``(max, argmax)``."""
        return self._reduce("Max_ArgMax", dim, axis)

    def Kmin(self, K: int, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """The ``K`` smallest values, sorted."""
        return self._reduce("KMin", dim, axis, k=K)

    def argKmin(self, K: int, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """Positions of the ``K`` smallest values (int64)."""
        return self._reduce("ArgKMin", dim, axis, k=K)

    def Kmin_argKmin(self, K: int, dim: Optional[int] = None, axis: Optional[int] = None) -> Any:
        """``(Kmin, argKmin)``."""
        return self._reduce("KMin_ArgKMin", dim, axis, k=K)

    # pykeops' aliases
    sum_reduction = sum
    logsumexp_reduction = logsumexp
    min_reduction = min
    max_reduction = max


def _renumber(formula: str, mapping: Sequence[int]) -> str:
    """Renumbers the variable placeholders ``\\x00k`` of a formula."""
    out = []
    i = 0
    while i < len(formula):
        c = formula[i]
        if c == "\x00":
            j = i + 1
            while j < len(formula) and formula[j].isdigit():
                j += 1
            k = int(formula[i + 1:j] or 0)
            out.append(f"\x00{mapping[k]}")
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _name(formula: str) -> str:
    """Replaces placeholders by alias names ``v0``, ``v1``, ..."""
    return _renumber_names(formula)


def _renumber_names(formula: str) -> str:
    out = []
    i = 0
    while i < len(formula):
        if formula[i] == "\x00":
            j = i + 1
            while j < len(formula) and formula[j].isdigit():
                j += 1
            out.append(f"v{int(formula[i + 1:j] or 0)}")
            i = j
        else:
            out.append(formula[i])
            i += 1
    return "".join(out)


def Vi(x: np.ndarray) -> LazyTensor:
    """An ``i``-indexed variable from an array ``(..., N, D)``."""
    return LazyTensor(np.asarray(x)[..., :, None, :])


def Vj(x: np.ndarray) -> LazyTensor:
    """A ``j``-indexed variable from an array ``(..., M, D)``."""
    return LazyTensor(np.asarray(x)[..., None, :, :])


def Pm(x: Any) -> LazyTensor:
    """A parameter from a number or an array ``(..., D)``."""
    a = np.asarray(x, dtype=np.float64) if isinstance(x, (int, float)) else np.asarray(x)
    a = a.reshape(1) if a.ndim == 0 else a
    return LazyTensor(a[..., None, None, :] if a.ndim > 1 else a)
