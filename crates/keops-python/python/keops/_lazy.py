"""``LazyTensor``: symbolic matrices built with NumPy-like operators, as in pykeops.

One implementation serves NumPy and PyTorch: :class:`GenericLazyTensor` records the
formula and the wrapped arrays; the subclasses in ``keops.numpy`` and ``keops.torch``
supply the array hooks (``_as_array``, ``_repeat_rows``) and the reduction call
(``_run``: plain for NumPy, through an autograd ``Function`` for PyTorch).

A ``LazyTensor`` wraps arrays shaped like pykeops expects — ``(..., N, 1, D)`` for an
``i``-indexed variable, ``(..., 1, M, D)`` for a ``j``-indexed one, ``(D,)`` or
``(..., 1, 1, D)`` for a parameter — and records operations as a KeOps formula. Nothing
is computed until a reduction (``.sum(dim)``, ``.logsumexp(dim)``, ``.argKmin(K, dim)``,
...), which compiles the formula once (cached) and runs it with the wrapped arrays.
"""

from __future__ import annotations

import re
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar, Union

from . import _keops
from ._cluster import same_ranges, swap_axes
from ._genred import Core, Options, compile_core, make_options
from ._solve import SolveParams

Number = Union[int, float]
#: A NumPy array or a PyTorch tensor, depending on the front end.
Array = Any
L = TypeVar("L", bound="GenericLazyTensor")

_CATS = {"i": "Vi", "j": "Vj", "p": "Pm"}
_PLACEHOLDER = re.compile("\x00([0-9]+)")
#: ``.dense()`` refuses matrices with more entries than this.
DENSE_LIMIT = 10**8


def _literal(x: Number) -> str:
    v = float(x)
    s = str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return f"({s})" if v < 0 else s


def _renumber(formula: str, mapping: Sequence[int]) -> str:
    """Renumbers the variable placeholders ``\\x00k`` of a formula."""
    return _PLACEHOLDER.sub(lambda m: f"\x00{mapping[int(m.group(1))]}", formula)


def _name(formula: str) -> str:
    """Replaces placeholders by alias names ``v0``, ``v1``, ..."""
    return _PLACEHOLDER.sub(lambda m: f"v{m.group(1)}", formula)


class GenericLazyTensor:
    """A symbolic tensor ``F(x_i, y_j, p)`` (pykeops' ``LazyTensor``).

    Args:
        x: an array (``(..., N, 1, D)``: indexed by ``i``; ``(..., 1, M, D)``: by ``j``;
            ``(D,)`` or ``(..., 1, 1, D)``: a parameter) or a number (a constant).
        axis: force the category of a 2-D array ``(N, D)``: 0 for ``i``, 1 for ``j``,
            2 for a parameter.

    Operations (``+ - * / ** |``, comparisons, math and vector methods, ``grad``,
    ``laplacian``, ...) build a formula; nothing is computed until a reduction over
    ``i`` (``dim=0``, or ``-3`` with batch dims) or ``j`` (``dim=1`` / ``-2``):
    ``sum``, ``logsumexp``, ``sumsoftmaxweight``, ``min``, ``max``, ``argmin``,
    ``argmax``, ``min_argmin``, ``max_argmax``, ``Kmin``, ``argKmin``,
    ``Kmin_argKmin``, or ``K @ v``. Reductions return arrays of the front end (NumPy
    arrays, or PyTorch tensors differentiable to any order). ``dense()`` returns the whole
    matrix for small sizes.

    Example (``x``: ``(N, 3)``, ``y``: ``(M, 3)``, ``b``: ``(M, E)`` arrays)::

        x_i = LazyTensor(x[:, None, :])               # (N, 1, 3): indexed by i
        y_j = LazyTensor(y[None, :, :])               # (1, M, 3): indexed by j
        K_ij = (-((x_i - y_j) ** 2).sum(-1)).exp()    # symbolic (N, M, 1)
        a = K_ij @ b                                  # (N, E)
        nn = ((x_i - y_j) ** 2).sum(-1).argKmin(5, dim=1)   # (N, 5) indices
    """

    #: Block-sparsity pattern (pykeops' ``ranges`` 6-tuple) used by reductions; kept by
    #: the operations, swapped by ``t()``.
    ranges: Any = None

    # -- backend hooks ----------------------------------------------------------------
    @classmethod
    def _as_array(cls, x: Any) -> Array:
        """Validates an array of the front end (float32/float64) or raises TypeError."""
        raise NotImplementedError

    @staticmethod
    def _run(core: Core, arrays: List[Array], opts: Options) -> Tuple[Any, Any]:
        """Runs a reduction; returns ``(values, indices)``."""
        raise NotImplementedError

    @staticmethod
    def _solve(core: Core, var: int, arrays: List[Array], params: Any, opts: Options) -> Any:
        """Solves ``(K + alpha I) a = b`` (``arrays[var]`` is ``b``); see ``_solve.py``."""
        raise NotImplementedError

    @staticmethod
    def _repeat_rows(a: Array, times: int, interleave: bool) -> Array:
        """Repeats the rows (axis -2) ``times`` times, each in place or the whole block."""
        raise NotImplementedError

    @staticmethod
    def _complex_as_real(x: Any) -> Optional[Array]:
        """For a complex array: its real view ``(..., 2D)`` (re, im interleaved), else
        ``None``."""
        raise NotImplementedError

    @staticmethod
    def _real_as_complex(a: Array) -> Array:
        """The inverse of ``_complex_as_real``: ``(..., 2D)`` reals to ``(..., D)``
        complex numbers."""
        raise NotImplementedError

    # -- construction -------------------------------------------------------------------
    def __init__(self, x: Any = None, axis: Optional[int] = None) -> None:
        self._vars: List[Tuple[Array, str]] = []
        self._formula = ""
        self._dim = 1
        #: Complex (pykeops' ComplexLazyTensor): ``_dim`` reals hold ``_dim / 2``
        #: complex numbers, interleaved.
        self._complex = False
        if x is None:
            return
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            self._formula = _literal(x)
            return
        if isinstance(x, complex):
            self._formula = (f"(Real2Complex({_literal(x.real)}) + "
                             f"Imag2Complex({_literal(x.imag)}))")
            self._dim, self._complex = 2, True
            return
        a = self._complex_as_real(x)
        self._complex = a is not None
        a = self._as_array(x) if a is None else a
        if a.ndim == 0:
            a = a.reshape(1)
        if axis is not None:
            if a.ndim != 2 or axis not in (0, 1, 2):
                raise ValueError("LazyTensor(x, axis): x must be 2-D (N, D) and axis 0, 1 or 2")
            cat, data = ("i", "j", "p")[axis], a
            if cat == "p":
                data = a.reshape(-1)
        elif a.ndim == 1:
            cat, data = "p", a
        elif a.ndim >= 3 and a.shape[-2] == 1 and a.shape[-3] == 1:
            cat, data = "p", a.reshape(tuple(a.shape[:-3]) + (a.shape[-1],))
        elif a.ndim >= 3 and a.shape[-2] == 1:
            cat, data = "i", a.reshape(tuple(a.shape[:-2]) + (a.shape[-1],))
        elif a.ndim >= 3 and a.shape[-3] == 1:
            cat, data = "j", a.reshape(tuple(a.shape[:-3]) + tuple(a.shape[-2:]))
        else:
            raise ValueError(
                f"LazyTensor: cannot tell the category of an array of shape {tuple(a.shape)}; "
                "use (..., N, 1, D) for i, (..., 1, M, D) for j, (D,) for a parameter, "
                "or Vi/Vj/Pm")
        self._vars = [(data, cat)]
        self._formula = "\x000"  # placeholder for variable 0, named when reduced
        self._dim = int(a.shape[-1])

    @classmethod
    def _variable_of(cls: Any, x: Any, cat: str) -> Any:
        """A variable of category ``cat`` ("i", "j", "p") wrapping ``x`` (``(..., n, d)``
        for i/j, ``(..., d)`` for a parameter)."""
        c = cls._complex_as_real(x)
        a = cls._as_array(x) if c is None else c
        if a.ndim == 0:
            a = a.reshape(1)
        if a.ndim < (1 if cat == "p" else 2):
            raise ValueError(f"V{cat}: expected an array of shape (..., n, d), got "
                             f"{tuple(a.shape)}")
        out = cls()
        out._vars, out._formula, out._dim = [(a, cat)], "\x000", int(a.shape[-1])
        out._complex = c is not None
        return out

    def _wrap(self: L, x: Any) -> L:
        return x if isinstance(x, GenericLazyTensor) else type(self)(x)

    def _new(self: L, formula: str, vars_: List[Tuple[Array, str]], dim: int,
             cplx: bool = False, other: Optional["GenericLazyTensor"] = None) -> L:
        out = type(self)()
        out._formula, out._vars, out._dim, out._complex = formula, vars_, dim, cplx
        out.ranges = self.ranges
        if other is not None and other.ranges is not None:
            if self.ranges is not None and not same_ranges(self.ranges, other.ranges):
                raise ValueError("the operands have different block-sparsity patterns "
                                 "(ranges); set the same ranges on both, or on one only")
            out.ranges = other.ranges
        return out

    def _join(self, other: "GenericLazyTensor") -> Tuple[List[Tuple[Array, str]], str, str]:
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

    def _real_only(self, what: str, *others: Any) -> None:
        if self._complex or any(isinstance(o, GenericLazyTensor) and o._complex
                                or isinstance(o, complex) for o in others):
            raise TypeError(f"{what} is not defined for complex LazyTensors; complex ones "
                            "support + - * /, exp, abs, angle, conj, real, imag, sum")

    def _unary(self: L, name: str, dim: Optional[int] = None, args: str = "") -> L:
        if name != "Minus":
            self._real_only(name)
        return self._new(f"{name}({self._formula}{args})", self._vars,
                         self._dim if dim is None else dim, self._complex)

    def _binary(self: L, other: Any, fmt: str, dim: Optional[int] = None) -> L:
        self._real_only(fmt.split("(")[0] or fmt.strip("(){} "), other)
        o = self._wrap(other)
        if dim is None and self._dim != o._dim and 1 not in (self._dim, o._dim):
            raise ValueError(f"operands of dimensions {self._dim} and {o._dim} do not "
                             "broadcast (equal, or one of them 1)")
        vars_, a, b = self._join(o)
        return self._new(fmt.format(a, b), vars_, max(self._dim, o._dim) if dim is None else dim,
                         other=o)

    def _ternary(self: L, a: Any, b: Any, fmt: str, dim: int) -> L:
        self._real_only(fmt.split("(")[0], a, b)
        la, lb = self._wrap(a), self._wrap(b)
        vars_, f0, fa = self._join(la)
        mid = self._new(f0, vars_, self._dim, other=la)
        vars2, f0, fb = mid._join(lb)
        return mid._new(fmt.format(f0, fa, fb), vars2, dim, other=lb)

    # -- properties -------------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, ...]:
        """``(..., N, M, D)`` as pykeops reports it."""
        n = m = 1
        batch: Tuple[int, ...] = ()
        for arr, cat in self._vars:
            if cat == "i":
                n = int(arr.shape[-2])
            elif cat == "j":
                m = int(arr.shape[-2])
            lead = tuple(arr.shape[:-2] if cat != "p" else arr.shape[:-1])
            if len(lead) > len(batch):
                batch = tuple(max(a, b) for a, b in zip(lead, (1,) * (len(lead) - len(batch)) + batch))
            else:
                batch = tuple(max(a, b) for a, b in zip((1,) * (len(batch) - len(lead)) + lead, batch))
        return tuple(int(b) for b in batch) + (n, m, self._dim // 2 if self._complex
                                              else self._dim)

    @property
    def ndim(self) -> int:
        """Number of dimensions of the symbolic tensor (batch dims + 3)."""
        return len(self.shape)

    def dim(self) -> int:
        """``ndim``, as a method (pykeops)."""
        return self.ndim

    @property
    def dtype(self) -> Any:
        """The dtype of the wrapped arrays (``None`` for a constant); complex64 or
        complex128 for a complex LazyTensor."""
        if not self._vars:
            return None
        a = self._vars[0][0]
        return self._real_as_complex(a[..., :2]).dtype if self._complex else a.dtype

    @property
    def formula(self) -> str:
        """The formula in KeOps syntax, variables named ``v0``, ``v1``, ..."""
        return _name(self._formula)

    def __repr__(self) -> str:
        return f"KeOps LazyTensor with formula {self.formula!r} and shape {self.shape}"

    __hash__ = object.__hash__

    # -- complex numbers (pykeops' ComplexLazyTensor) ------------------------------------
    def _is_complex_operand(self, o: Any) -> bool:
        return self._complex or isinstance(o, complex) or (
            isinstance(o, GenericLazyTensor) and o._complex)

    def _lift(self: L) -> L:
        """A complex LazyTensor: ``self``, or ``Real2Complex(self)`` for a real one."""
        if self._complex:
            return self
        return self._new(f"Real2Complex({self._formula})", self._vars, 2 * self._dim, True)

    def _complex_binary(self: L, o: Any, op: str) -> L:
        """``op(self, o)`` with real operands lifted to complex (pykeops' rules)."""
        a, b = self._wrap(self), self._wrap(o)
        if op == "ComplexMult":
            # A real scalar scales (ComplexRealScal), as pykeops.
            for s, z in ((a, b), (b, a)):
                if not s._complex and s._dim == 1 and z._complex:
                    vars_, fs, fz = s._join(z)
                    return s._new(f"ComplexRealScal({fs}, {fz})", vars_, z._dim, True, other=z)
        a, b = a._lift(), b._lift()
        if a._dim != b._dim and 2 not in (a._dim, b._dim):
            raise ValueError(f"{op}: complex operands of {a._dim // 2} and {b._dim // 2} "
                             "numbers do not broadcast (equal, or one of them 1)")
        vars_, fa, fb = a._join(b)
        return a._new(f"{op}({fa}, {fb})", vars_, max(a._dim, b._dim), True, other=b)

    def _complex_unary(self: L, name: str, dim: int, cplx: bool) -> L:
        if not self._complex:
            raise TypeError(f"{name} needs a complex LazyTensor")
        return self._new(f"{name}({self._formula})", self._vars, dim, cplx)

    @property
    def real(self: L) -> L:
        """Real parts of a complex LazyTensor (a real LazyTensor)."""
        return self._complex_unary("ComplexReal", self._dim // 2, False)

    @property
    def imag(self: L) -> L:
        """Imaginary parts of a complex LazyTensor (a real LazyTensor)."""
        return self._complex_unary("ComplexImag", self._dim // 2, False)

    def angle(self: L) -> L:
        """Arguments of a complex LazyTensor, in ``[-pi, pi]``."""
        return self._complex_unary("ComplexAngle", self._dim // 2, False)

    def conj(self: L) -> L:
        """Complex conjugate."""
        return self._complex_unary("Conj", self._dim, True)

    def real2complex(self: L) -> L:
        """A real LazyTensor as the real parts of a complex one."""
        self._real_only("real2complex")
        return self._lift()

    def imag2complex(self: L) -> L:
        """A real LazyTensor as the imaginary parts of a complex one."""
        self._real_only("imag2complex")
        return self._new(f"Imag2Complex({self._formula})", self._vars, 2 * self._dim, True)

    def exp1j(self: L) -> L:
        """``exp(1j * self)`` for a real LazyTensor."""
        self._real_only("exp1j")
        return self._new(f"ComplexExp1j({self._formula})", self._vars, 2 * self._dim, True)

    def __add__(self: L, o: Any) -> L:
        """``x + y`` (dimension-1 operands broadcast)."""
        if self._is_complex_operand(o):
            return self._complex_binary(o, "ComplexAdd")
        return self._binary(o, "({} + {})")

    def __radd__(self: L, o: Any) -> L:
        """``y + x``."""
        return self._wrap(o) + self

    def __sub__(self: L, o: Any) -> L:
        """``x - y``."""
        if self._is_complex_operand(o):
            return self._complex_binary(o, "ComplexSubtract")
        return self._binary(o, "({} - {})")

    def __rsub__(self: L, o: Any) -> L:
        """``y - x``."""
        return self._wrap(o) - self

    def __mul__(self: L, o: Any) -> L:
        """``x * y``, elementwise."""
        if self._is_complex_operand(o):
            return self._complex_binary(o, "ComplexMult")
        return self._binary(o, "({} * {})")

    def __rmul__(self: L, o: Any) -> L:
        """``y * x``."""
        return self._wrap(o) * self

    def __truediv__(self: L, o: Any) -> L:
        """``x / y``, elementwise."""
        if self._is_complex_operand(o):
            return self._complex_binary(o, "ComplexDivide")
        return self._binary(o, "({} / {})")

    def __rtruediv__(self: L, o: Any) -> L:
        """``y / x``."""
        return self._wrap(o) / self

    def __neg__(self: L) -> L:
        """``-x``."""
        return self._unary("Minus")

    def __abs__(self: L) -> L:
        """``abs(x)`` (the moduli, for a complex LazyTensor)."""
        return self.abs()

    def __pow__(self: L, p: Any) -> L:
        """``x ** p``: integer powers, square roots, or ``Powf`` for other exponents."""
        if isinstance(p, int) and not isinstance(p, bool):
            return self.square() if p == 2 else self._unary("Pow", args=f",{p}")
        if isinstance(p, float) and p == 0.5:
            return self.sqrt()
        if isinstance(p, float) and p == -0.5:
            return self.rsqrt()
        return self._binary(p, "Powf({}, {})")

    def __or__(self: L, o: Any) -> L:
        """``(x | y)``: the scalar product."""
        return self._binary(o, "Scalprod({}, {})", dim=1)

    def __ror__(self: L, o: Any) -> L:
        """``(y | x)``: the scalar product."""
        return self._wrap(o) | self

    # Comparisons give 0/1 (derivative 0), as NumPy (False for NaN, but ``!=``).
    def __ge__(self: L, o: Any) -> L:  # type: ignore[override]
        """``x >= y``, elementwise, as 0/1."""
        return self._binary(o, "LessOrEqual({1}, {0})")

    def __le__(self: L, o: Any) -> L:  # type: ignore[override]
        """``x <= y``, elementwise, as 0/1."""
        return self._binary(o, "LessOrEqual({0}, {1})")

    def __gt__(self: L, o: Any) -> L:  # type: ignore[override]
        """``x > y``, elementwise, as 0/1."""
        return self._binary(o, "LessThan({1}, {0})")

    def __lt__(self: L, o: Any) -> L:  # type: ignore[override]
        """``x < y``, elementwise, as 0/1."""
        return self._binary(o, "LessThan({0}, {1})")

    def __eq__(self: L, o: Any) -> L:  # type: ignore[override]
        """``x == y``, elementwise, as 0/1."""
        return self._binary(o, "Equal({}, {})")

    def __ne__(self: L, o: Any) -> L:  # type: ignore[override]
        """``x != y``, elementwise, as 0/1."""
        return self._binary(o, "NotEqual({}, {})")

    __hash__ = None  # type: ignore[assignment]  # == builds a formula, as in pykeops

    # -- elementwise math -------------------------------------------------------------------
    def exp(self: L) -> L:
        """Elementwise exponential (complex for a complex LazyTensor)."""
        if self._complex:
            return self._complex_unary("ComplexExp", self._dim, True)
        return self._unary("Exp")

    def log(self: L) -> L:
        """Elementwise natural logarithm."""
        return self._unary("Log")

    def xlogx(self: L) -> L:
        """Elementwise ``x log x`` (0 at 0)."""
        return self._unary("XLogX")

    def sin(self: L) -> L:
        """Elementwise sine."""
        return self._unary("Sin")

    def cos(self: L) -> L:
        """Elementwise cosine."""
        return self._unary("Cos")

    def sqrt(self: L) -> L:
        """Elementwise square root."""
        return self._unary("Sqrt")

    def rsqrt(self: L) -> L:
        """Elementwise ``1/sqrt(x)`` (0 at 0)."""
        return self._unary("Rsqrt")

    def square(self: L) -> L:
        """Elementwise square."""
        return self._unary("Square")

    def abs(self: L) -> L:
        """Elementwise absolute value (the moduli, for a complex LazyTensor)."""
        if self._complex:
            return self._complex_unary("ComplexAbs", self._dim // 2, False)
        return self._unary("Abs")

    def sign(self: L) -> L:
        """Elementwise sign (0 at 0)."""
        return self._unary("Sign")

    def step(self: L) -> L:
        """Elementwise Heaviside step (1 at 0)."""
        return self._unary("Step")

    def relu(self: L) -> L:
        """Elementwise ``max(x, 0)``."""
        return self._unary("ReLU")

    def inv(self: L) -> L:
        """Elementwise ``1/x``."""
        return self._unary("Inv")

    def floor(self: L) -> L:
        """Elementwise floor."""
        return self._unary("Floor")

    def round(self: L, d: int = 0) -> L:
        """Elementwise rounding to ``d`` decimals (halves away from zero)."""
        return self._unary("Round", args=f",{int(d)}")

    def mod(self: L, modulus: Any, offset: Any = 0) -> L:
        """``self - modulus * floor((self - offset) / modulus)``: ``self`` brought into
        ``[offset, offset + modulus)``."""
        dim = max(self._dim, self._wrap(modulus)._dim, self._wrap(offset)._dim)
        return self._ternary(modulus, offset, "Mod({}, {}, {})", dim)

    def atan(self: L) -> L:
        """Elementwise arc tangent."""
        return self._unary("Atan")

    def asin(self: L) -> L:
        """Elementwise arc sine."""
        return self._unary("Asin")

    def acos(self: L) -> L:
        """Elementwise arc cosine."""
        return self._unary("Acos")

    def atan2(self: L, x: Any) -> L:
        """``y.atan2(x)``: the angle of the point ``(x, y)``, elementwise, in
        ``[-pi, pi]``."""
        return self._binary(x, "Atan2({}, {})")

    def sinxdivx(self: L) -> L:
        """Elementwise ``sin(x) / x`` (1 at 0)."""
        return self._unary("SinXDivX")

    def sinc(self: L) -> L:
        """Elementwise normalised sinc, ``sin(pi x) / (pi x)`` (as ``numpy.sinc``)."""
        return self._unary("Sinc")

    def power(self: L, p: Any) -> L:
        """``self ** p``."""
        return self ** p

    def clamp(self: L, a: Any, b: Any) -> L:
        """``self`` clamped to ``[a, b]`` (numbers or LazyTensors)."""
        if isinstance(a, int) and isinstance(b, int):
            return self._unary("ClampInt", args=f",{a},{b}")
        return self._ternary(a, b, "Clamp({}, {}, {})", self._dim)

    def ifelse(self: L, a: Any, b: Any) -> L:
        """``a`` where ``self >= 0``, else ``b``."""
        dim = max(self._dim, self._wrap(a)._dim, self._wrap(b)._dim)
        return self._ternary(a, b, "IfElse({}, {}, {})", dim)

    # -- vector operations ------------------------------------------------------------------
    def sqnorm2(self: L) -> L:
        """Squared Euclidean norm over the last dimension."""
        return self._unary("SqNorm2", dim=1)

    def norm2(self: L) -> L:
        """Euclidean norm over the last dimension."""
        return self._unary("Norm2", dim=1)

    def norm(self: L, dim: int) -> L:
        """Euclidean norm over ``dim``, which must be the last dimension."""
        if dim not in (-1, self.ndim - 1):
            raise ValueError("norm: only the last dimension (dim=-1) is supported")
        return self.norm2()

    def normalize(self: L) -> L:
        """``x / |x|`` (0 at 0)."""
        return self._unary("Normalize")

    def sqdist(self: L, o: Any) -> L:
        """Squared Euclidean distance."""
        return self._binary(o, "SqDist({}, {})", dim=1)

    def weightedsqnorm(self: L, s: Any) -> L:
        """``WeightedSqNorm(s, self)``: ``s`` scalar, diagonal or a full matrix."""
        return self._wrap(s)._binary(self, "WeightedSqNorm({}, {})", dim=1)

    def weightedsqdist(self: L, o: Any, s: Any) -> L:
        """``WeightedSqDist(s, self, o)``."""
        return (self - o).weightedsqnorm(s)

    def elem(self: L, i: int) -> L:
        """Coordinate ``i``."""
        if not 0 <= int(i) < self._dim:
            raise IndexError(f"elem({i}): index out of range for dimension {self._dim}")
        return self._unary("Elem", dim=1, args=f",{int(i)}")

    def extract(self: L, i: int, d: int) -> L:
        """Coordinates ``i .. i+d``."""
        if not (0 <= int(i) and int(d) >= 1 and int(i) + int(d) <= self._dim):
            raise IndexError(f"extract({i}, {d}): out of range for dimension {self._dim}")
        return self._unary("Extract", dim=int(d), args=f",{int(i)},{int(d)}")

    def __getitem__(self: L, key: Any) -> L:
        """``x[k]`` is ``elem(k)``, ``x[k:l]`` is ``extract(k, l - k)`` (last dimension)."""
        if isinstance(key, tuple):
            if not key or (len(key) > 1 and key[-2] is not Ellipsis and any(
                    not (isinstance(s, slice) and s == slice(None)) for s in key[:-1]
                    if s is not Ellipsis)):
                raise IndexError("LazyTensor indexing: only the last dimension can be indexed")
            key = key[-1]
        if isinstance(key, int):
            return self.elem(key % self._dim if key < 0 else key)
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self._dim)
            return self.extract(start, stop - start)
        raise IndexError(f"LazyTensor indexing: unsupported key {key!r}")

    def keops_tensordot(self: L, other: Any, dimfa: Sequence[int], dimfb: Sequence[int],
                        contfa: Sequence[int], contfb: Sequence[int], *args: Any) -> L:
        """``TensorDot``: ``self`` and ``other`` hold row-major tensors of shapes ``dimfa``
        and ``dimfb``; axes ``contfa`` are contracted with ``contfb``; the result holds
        the kept axes of ``self`` then of ``other``; with a permutation ``args[0]`` (as
        keopscore), kept axis ``r`` goes to position ``args[0][r]`` (``numpy.moveaxis``
        to those positions, i.e. ``numpy.transpose`` by its inverse)."""
        o = self._wrap(other)
        dims = [tuple(int(k) for k in v) for v in (dimfa, dimfb, contfa, contfb)]
        if len(args) > 1:
            raise TypeError("keops_tensordot takes at most one permutation after contfb")
        if args:
            dims.append(tuple(int(k) for k in args[0]))
        kept = [d for k, d in enumerate(dims[0]) if k not in dims[2]] + \
            [d for k, d in enumerate(dims[1]) if k not in dims[3]]
        out = 1
        for d in kept:
            out *= d
        inds = "".join(f", Ind({','.join(str(k) for k in v)})" for v in dims)
        return self._binary(o, "TensorDot({}, {}" + inds + ")", dim=out)

    tensordot = keops_tensordot

    def keops_kron(self: L, other: Any, dimfself: Sequence[int],
                   dimfother: Sequence[int]) -> L:
        """Kronecker product of the row-major tensors of shapes ``dimfself`` and
        ``dimfother`` held by ``self`` and ``other`` (as ``numpy.kron``)."""
        o = self._wrap(other)
        da, db = (tuple(int(k) for k in v) for v in (dimfself, dimfother))
        inds = f", Ind({','.join(map(str, da))}), Ind({','.join(map(str, db))})"
        return self._binary(o, "Kron({}, {}" + inds + ")", dim=self._dim * o._dim)

    def bspline(self: L, x: Any, k: int = 0) -> L:
        """``BSpline(knots, x, k)``: the ``dim(self) - k - 1`` B-spline basis functions
        of degree ``k`` on the knots ``self`` at the scalar ``x``."""
        o = self._wrap(x)
        return self._binary(o, "BSpline({}, {}" + f", {int(k)})",
                            dim=self._dim - int(k) - 1)

    def softdtw_sqdist(self: L, y: Any, gamma: Any) -> L:
        """Soft-DTW discrepancy between the series ``self`` and ``y`` for the squared
        difference cost, with smoothing ``gamma`` (a scalar)."""
        return self._ternary(y, gamma, "SoftDTW_SqDist({}, {}, {})", 1)

    def difference_matrix(self: L, y: Any) -> L:
        """The row-major ``(dim(y), dim(self))`` matrix of differences, flattened:
        ``out[j * dim(self) + i] = self[i] - y[j]``."""
        o = self._wrap(y)
        return self._binary(o, "DifferenceMatrix({}, {})", dim=self._dim * o._dim)

    def matvecmult(self: L, v: Any) -> L:
        """The matrix ``self`` (``n x p``, row-major) times the vector ``v`` (dim ``p``)."""
        o = self._wrap(v)
        return self._binary(o, "MatVecMult({}, {})", dim=self._dim // o._dim)

    def vecmatmult(self: L, m: Any) -> L:
        """The row vector ``self`` (dim ``n``) times the matrix ``m`` (``n x p``,
        row-major)."""
        o = self._wrap(m)
        return self._binary(o, "VecMatMult({}, {})", dim=o._dim // self._dim)

    def tensorprod(self: L, o: Any) -> L:
        """Outer product, flattened row-major: ``out[k * dim(o) + l] = self[k] o[l]``."""
        o = self._wrap(o)
        return self._binary(o, "TensorProd({}, {})", dim=self._dim * o._dim)

    def factorize(self: L, other: Any) -> L:
        """KeOps' factorisation hint: ``self``, with the subexpression ``other``
        computed once. Formulas here are DAGs whose shared nodes are always computed
        once, so the value and the work are those of ``self``."""
        return self._binary(other, "Factorize({}, {})", dim=self._dim)

    def auto_factorize(self: L) -> L:
        """KeOps' automatic factorisation: common subexpressions are always shared
        here (see :meth:`factorize`), so this is ``self``."""
        return self

    def one_hot(self: L, D: int) -> L:
        """For a scalar: the vector of dimension ``D`` with 1 at ``round(self)``, 0
        elsewhere (all 0 out of range)."""
        if self._dim != 1:
            raise ValueError(f"one_hot needs a scalar LazyTensor, got dimension {self._dim}")
        return self._unary("OneHot", dim=int(D), args=f",{int(D)}")

    def concat(self: L, o: Any) -> L:
        """Concatenation along the last dimension."""
        o = self._wrap(o)
        return self._binary(o, "Concat({}, {})", dim=self._dim + o._dim)

    def t(self: L) -> L:
        """Swaps the ``i`` and ``j`` axes: ``K.t()`` has shape ``(..., M, N, D)``."""
        swap = {"i": "j", "j": "i", "p": "p"}
        out = self._new(self._formula, [(a, swap[c]) for a, c in self._vars], self._dim)
        out.ranges = swap_axes(self.ranges)
        return out

    @property
    def T(self: L) -> L:
        """``t()``."""
        return self.t()

    # -- symbolic differentiation ----------------------------------------------------------
    def _variable(self, v: "GenericLazyTensor", what: str) -> None:
        if not (len(v._vars) == 1 and v._formula == "\x000"):
            raise ValueError(f"{what}: the variable must be a LazyTensor that wraps one array "
                             f"(Vi/Vj/Pm), got the formula {v.formula!r}")

    def grad(self: L, v: "GenericLazyTensor", e: Any) -> L:
        """``Grad(F, v, e)``: the gradient of ``<F, e>`` with respect to variable ``v``."""
        self._variable(v, "grad")
        return self._ternary(v, e, "Grad({}, {}, {})", v._dim)

    def diff(self: L, v: "GenericLazyTensor", u: Any) -> L:
        """``Diff(F, v, u)``: the derivative of ``F`` with respect to ``v`` along ``u``."""
        self._variable(v, "diff")
        return self._ternary(v, u, "Diff({}, {}, {})", self._dim)

    def divergence(self: L, v: "GenericLazyTensor") -> L:
        """``Divergence(F, v)`` (``F`` of ``v``'s dimension)."""
        self._variable(v, "divergence")
        return self._binary(v, "Divergence({}, {})", dim=1)

    def laplacian(self: L, v: "GenericLazyTensor") -> L:
        """``Laplacian(F, v)`` (scalar ``F``)."""
        self._variable(v, "laplacian")
        return self._binary(v, "Laplacian({}, {})", dim=1)

    def grad_matrix(self: L, v: "GenericLazyTensor") -> L:
        """``GradMatrix(F, v)``: the Jacobian, flattened (``dim F * dim v``)."""
        self._variable(v, "grad_matrix")
        return self._binary(v, "GradMatrix({}, {})", dim=self._dim * v._dim)

    def trace_operator(self: L, v: "GenericLazyTensor") -> L:
        """``TraceOperator(F, v)``: for ``F`` linear in the variable ``v`` (same
        dimension), the trace of that linear map (a scalar)."""
        self._variable(v, "trace_operator")
        return self._binary(v, "TraceOperator({}, {})", dim=1)

    # -- reductions ---------------------------------------------------------------------------
    def _named(self) -> Tuple[str, Tuple[str, ...]]:
        aliases = tuple(f"v{k} = {_CATS[c]}({k},{a.shape[-1]})"
                        for k, (a, c) in enumerate(self._vars))
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
        raise ValueError(f"dim {dim if dim is not None else axis} is a batch dimension; "
                         "reduce over i or j")

    def _reduce(self, reduction: str, dim: Optional[int], axis: Optional[int] = None,
                k: Optional[int] = None, weight: Any = None, **kwargs: Any) -> Any:
        ax = self._axis(dim, axis)
        if ax is None:
            raise ValueError(f"{reduction} over the last dimension is not a reduction of "
                             "the symbolic matrix; use dim=0 (over i) or dim=1 (over j)")
        if not self._vars:
            raise ValueError(f"{reduction}: the formula has no variable")
        if self._complex and (reduction != "Sum" or weight is not None):
            raise TypeError(f"{reduction} is not defined for complex LazyTensors (sum is)")
        base, f2 = self, None
        if weight is not None:
            w = self._wrap(weight)
            vars_, f1, fw = self._join(w)
            base, f2 = self._new(f1, vars_, self._dim, other=w), _name(fw)
        ranges = kwargs.get("ranges")
        opts = make_options(kwargs.get("dtype_acc", "auto"), kwargs.get("use_double_acc", False),
                            kwargs.get("sum_scheme", "auto"), kwargs.get("backend", "auto"),
                            kwargs.get("device_id", -1),
                            ranges=base.ranges if ranges is None else ranges,
                            use_fast_math=kwargs.get("use_fast_math", True))
        formula, aliases = base._named()
        core = compile_core(formula, aliases, reduction, ax, k, f2)
        values, indices = self._run(core, [a for a, _ in base._vars], opts)
        if self._complex:
            return self._real_as_complex(values)
        if values is not None and indices is not None:
            return values, indices
        return values if values is not None else indices

    def sum(self, dim: Optional[int] = None, axis: Optional[int] = None, **kwargs: Any) -> Any:
        """Sum over ``i`` (dim 0) or ``j`` (dim 1); over the coordinates for dim -1."""
        if self._axis(dim, axis) is None:
            if self._complex:
                return self._complex_unary("ComplexSum", 2, True)
            return self._unary("Sum", dim=1)
        return self._reduce("Sum", dim, axis, **kwargs)

    def logsumexp(self, dim: Optional[int] = None, axis: Optional[int] = None,
                  weight: Any = None, **kwargs: Any) -> Any:
        """``log sum exp`` over ``i`` or ``j`` (``log sum exp(F) w`` with a weight)."""
        return self._reduce("LogSumExp", dim, axis, weight=weight, **kwargs)

    def sumsoftmaxweight(self, weight: Any, dim: Optional[int] = None,
                         axis: Optional[int] = None, **kwargs: Any) -> Any:
        """``sum exp(F) w / sum exp(F)`` over ``i`` or ``j``."""
        return self._reduce("SumSoftMaxWeight", dim, axis, weight=weight, **kwargs)

    def min(self, dim: Optional[int] = None, axis: Optional[int] = None, **kwargs: Any) -> Any:
        """Minimum over ``i`` or ``j``."""
        return self._reduce("Min", dim, axis, **kwargs)

    def max(self, dim: Optional[int] = None, axis: Optional[int] = None, **kwargs: Any) -> Any:
        """Maximum over ``i`` or ``j``."""
        return self._reduce("Max", dim, axis, **kwargs)

    def argmin(self, dim: Optional[int] = None, axis: Optional[int] = None, **kwargs: Any) -> Any:
        """Position of the minimum (int64)."""
        return self._reduce("ArgMin", dim, axis, **kwargs)

    def argmax(self, dim: Optional[int] = None, axis: Optional[int] = None, **kwargs: Any) -> Any:
        """Position of the maximum (int64)."""
        return self._reduce("ArgMax", dim, axis, **kwargs)

    def min_argmin(self, dim: Optional[int] = None, axis: Optional[int] = None,
                   **kwargs: Any) -> Any:
        """``(min, argmin)``."""
        return self._reduce("Min_ArgMin", dim, axis, **kwargs)

    def max_argmax(self, dim: Optional[int] = None, axis: Optional[int] = None,
                   **kwargs: Any) -> Any:
        """``(max, argmax)``."""
        return self._reduce("Max_ArgMax", dim, axis, **kwargs)

    def Kmin(self, K: int, dim: Optional[int] = None, axis: Optional[int] = None,
             **kwargs: Any) -> Any:
        """The ``K`` smallest values, sorted."""
        return self._reduce("KMin", dim, axis, k=int(K), **kwargs)

    def argKmin(self, K: int, dim: Optional[int] = None, axis: Optional[int] = None,
                **kwargs: Any) -> Any:
        """Positions of the ``K`` smallest values (int64)."""
        return self._reduce("ArgKMin", dim, axis, k=int(K), **kwargs)

    def Kmin_argKmin(self, K: int, dim: Optional[int] = None, axis: Optional[int] = None,
                     **kwargs: Any) -> Any:
        """``(Kmin, argKmin)``."""
        return self._reduce("KMin_ArgKMin", dim, axis, k=int(K), **kwargs)

    # pykeops' aliases
    sum_reduction = sum
    logsumexp_reduction = logsumexp
    sumsoftmaxweight_reduction = sumsoftmaxweight
    min_reduction = min
    max_reduction = max
    argmin_reduction = argmin
    argmax_reduction = argmax
    min_argmin_reduction = min_argmin
    max_argmax_reduction = max_argmax
    Kmin_reduction = Kmin
    argKmin_reduction = argKmin
    Kmin_argKmin_reduction = Kmin_argKmin

    # -- linear algebra ----------------------------------------------------------------------
    def __matmul__(self, v: Array) -> Any:
        """``K @ v``: ``sum_j K_ij v_j`` for a scalar ``K``; ``v`` of shape ``(M,)``,
        ``(M, E)`` or ``(..., M, E)``."""
        if self._dim != 1:
            raise ValueError(f"K @ v needs a scalar K (last dimension 1), got shape {self.shape}")
        v = self._as_array(v)
        vec = v.ndim == 1
        v2 = v.reshape(tuple(v.shape) + (1,)) if vec else v
        vj = type(self)(v2.reshape(tuple(v2.shape[:-2]) + (1,) + tuple(v2.shape[-2:])))
        out = (self * vj).sum(dim=self.ndim - 2)
        return out.reshape(-1) if vec else out

    def matvec(self, v: Array) -> Any:
        """``K @ v`` (scipy's ``LinearOperator`` name)."""
        return self @ v

    def rmatvec(self, v: Array) -> Any:
        """``K.T @ v``."""
        return self.T @ v

    def solve(self, other: Any, var: Optional["GenericLazyTensor"] = None, call: bool = True,
              alpha: float = 1e-10, eps: float = 1e-6, **kwargs: Any) -> Any:
        """Solves ``(K + alpha I) a = b`` by conjugate gradients (pykeops' ``solve``).

        ``self`` is ``K`` (a symmetric positive kernel, ``(N, N, 1)``) and ``other`` is
        ``b``, an ``(..., N, E)`` array indexed by ``i`` (or a LazyTensor wrapping one):
        returns ``a`` with ``sum_j K_ij a_j + alpha a_i = b_i``, each column of ``b``
        solved independently. With ``var`` (a ``Vj`` variable of ``self``), ``self``
        is ``K a`` itself, linear in ``var``. Keyword arguments as ``KernelSolve``'s call
        (``eps``, ``max_iter``, ``ranges``, ``backend``, ``verbose``, ``callback``,
        ``return_info``); differentiable in PyTorch.
        """
        if not call:
            raise NotImplementedError("solve(call=False) (a symbolic solve) is not supported; "
                                      "call solve() with the right-hand side")
        if isinstance(other, GenericLazyTensor):
            if not (len(other._vars) == 1 and other._formula == "\x000" and other._vars[0][1] == "i"):
                raise ValueError("solve: the right-hand side must be an array, or a LazyTensor "
                                 "wrapping one i-indexed array")
            other = other._vars[0][0]
        b = self._as_array(other)
        if b.ndim == 1:
            b = b.reshape(tuple(b.shape) + (1,))
        if var is None:
            if self._dim != 1:
                raise ValueError(f"solve needs a scalar K (last dimension 1), got shape {self.shape}")
            unknown = type(self)._variable_of(b, "j")
            expr = self * unknown
        else:
            self._variable(var, "solve")
            if var._vars[0][1] != "j":
                raise ValueError("solve: var must be a Vj variable (the system sums over j)")
            unknown, expr = var, self
        pos = [k for k, (a, c) in enumerate(expr._vars) if a is unknown._vars[0][0] and c == "j"]
        if not pos:
            raise ValueError("solve: the formula does not use var")
        arrays = [a for a, _ in expr._vars]
        arrays[pos[0]] = b
        formula, aliases = expr._named()
        core = compile_core(formula, aliases, "Sum", 1, None, None)
        _keops.check_solve(core.g, pos[0])
        params = SolveParams(float(alpha), float(eps), kwargs.get("max_iter"),
                             kwargs.get("verbose", False), kwargs.get("callback"))
        ranges = kwargs.get("ranges")
        opts = make_options(kwargs.get("dtype_acc", "auto"), kwargs.get("use_double_acc", False),
                            kwargs.get("sum_scheme", "auto"), kwargs.get("backend", "auto"),
                            kwargs.get("device_id", -1),
                            expr.ranges if ranges is None else ranges,
                            kwargs.get("use_fast_math", True))
        x = self._solve(core, pos[0], arrays, params, opts)
        return (x, params.infos[0]) if kwargs.get("return_info") else x

    # -- dense evaluation -------------------------------------------------------------------
    def dense(self) -> Array:
        """The full matrix ``(..., N, M, D)`` as an array (differentiable in PyTorch).

        Meant for small sizes (checks, plots): memory is ``N * M * D`` values, and more
        than ``DENSE_LIMIT`` entries is refused.
        """
        if not self._vars:
            raise ValueError("dense(): the formula has no variable")
        shape = self.shape
        n, m, d = shape[-3:]
        size = n * m * d
        for b in shape[:-3]:
            size *= b
        if size > DENSE_LIMIT:
            raise ValueError(f"dense(): {size} entries (shape {shape}) is more than "
                             f"{DENSE_LIMIT}; reduce instead, or take a smaller sub-matrix")
        formula, aliases = self._named()
        core = compile_core(formula, aliases, "Sum", 1, None, None).pointwise()
        arrays = []
        for a, c in self._vars:
            if c == "i":
                arrays.append(self._repeat_rows(a, m, True))
            elif c == "j":
                arrays.append(self._repeat_rows(a, n, False))
            else:
                arrays.append(a)
        values, _ = self._run(core, arrays, make_options())
        if self._complex:
            d *= 2
        values = values.reshape(tuple(values.shape[:-2]) + (n, m, d))
        return self._real_as_complex(values) if self._complex else values


def variable_constructors(cls: Any) -> Tuple[Callable[[Any], Any], ...]:
    """pykeops' ``Vi``, ``Vj`` and ``Pm`` for a front end's ``LazyTensor`` class."""

    def Vi(x: Any) -> Any:
        """An ``i``-indexed variable from an array ``(..., N, D)``."""
        return cls._variable_of(x, "i")

    def Vj(x: Any) -> Any:
        """A ``j``-indexed variable from an array ``(..., M, D)``."""
        return cls._variable_of(x, "j")

    def Pm(x: Any) -> Any:
        """A parameter: a number (a constant of the formula) or an array ``(..., D)``."""
        if isinstance(x, (int, float)):
            return cls(x)
        return cls._variable_of(x, "p")

    for f in (Vi, Vj, Pm):
        f.__module__ = cls.__module__
    return Vi, Vj, Pm
