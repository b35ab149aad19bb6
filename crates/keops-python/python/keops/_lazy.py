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

import dataclasses
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

from ._cluster import same_ranges, swap_axes
from ._genred import Core, GenredBase, Options, compile_core, make_options
from ._solve import PRECOND_RANK, SolveParams, checked_rank

Number = Union[int, float]
#: A NumPy array or a PyTorch tensor, depending on the front end.
Array = Any
L = TypeVar("L", bound="GenericLazyTensor")

_CATS = {"i": "Vi", "j": "Vj", "p": "Pm"}
#: pykeops' category numbers (``Var(ind, dim, cat)``, ``LazyTensor((ind, dim, cat))``).
_CAT_OF = {0: "i", 1: "j", 2: "p"}
_CAT_NUM = {c: k for k, c in _CAT_OF.items()}
#: Placeholders of formulas: ``\\x00k`` is the LazyTensor's array ``k``, ``\\x01k`` the
#: symbolic variable of index ``k`` (``Vi(k, dim)``), named when reduced.
_PLACEHOLDER = re.compile("\x00([0-9]+)")
#: Options of a reduction (pykeops' Genred options; ``out`` as its call's).
REDUCTION_KWARGS = frozenset({"backend", "device_id", "ranges", "out", "dtype_acc",
                              "use_double_acc", "sum_scheme", "enable_chunks",
                              "use_fast_math"})
#: Options of ``solve``: the reductions' (but ``out``) and the conjugate gradients'.
SOLVE_KWARGS = (REDUCTION_KWARGS - {"out"}) | {"max_iter", "verbose", "callback",
                                               "return_info", "precond", "precond_rank"}
#: The longest Python list that a LazyTensor takes as a constant vector.
LIST_LIMIT = 256
#: ``.dense()`` refuses matrices with more entries than this.
DENSE_LIMIT = 10**8


def _literal(x: Number) -> str:
    v = float(x)
    s = str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return f"({s})" if v < 0 else s


def _renumber(formula: str, mapping: Sequence[int]) -> str:
    """Renumbers the variable placeholders ``\\x00k`` of a formula."""
    if len(mapping) == 1:  # one placeholder, \x000 (a digit never follows one)
        return formula.replace("\x000", f"\x00{mapping[0]}")
    return _PLACEHOLDER.sub(lambda m: f"\x00{mapping[int(m.group(1))]}", formula)


def _name(formula: str) -> str:
    """Replaces placeholders by alias names: ``v0``, ``v1``, ... for arrays, ``s0``,
    ``s1``, ... for symbolic variables (a placeholder is its mark and its number)."""
    return formula.replace("\x00", "v").replace("\x01", "s")


def _check_kwargs(what: str, kwargs: Any, accepted: frozenset) -> None:
    """Unknown options are errors (as in pykeops, whose Genred would refuse them)."""
    if not kwargs or accepted.issuperset(kwargs):
        return
    unknown = min(set(kwargs) - accepted)
    raise TypeError(f"{what} got an unexpected keyword argument {unknown!r} "
                    f"(accepted: {', '.join(sorted(accepted))})")


def _merge_symbols(a: Tuple[Tuple[int, int, str], ...], b: Tuple[Tuple[int, int, str], ...]
                   ) -> Tuple[Tuple[int, int, str], ...]:
    """The symbolic variables of two operands; one index must mean one variable."""
    out = dict((s[0], s) for s in a)
    for s in b:
        if out.setdefault(s[0], s) != s:
            t = out[s[0]]
            raise ValueError(f"symbolic variable {s[0]} is declared twice, as "
                             f"{_CATS[t[2]]}({t[0]},{t[1]}) and {_CATS[s[2]]}({s[0]},{s[1]})")
    return tuple(sorted(out.values()))


@dataclasses.dataclass
class _Pending:
    """A reduction or a solve kept for later (``call=False``, or symbolic variables):
    what calling the LazyTensor runs."""

    reduction: str
    axis: int
    k: Optional[int] = None
    #: The weight's formula (placeholders), for ``LogSumExp`` / ``SumSoftMaxWeight``.
    formula2: Optional[str] = None
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    #: For a solve: the right-hand side, the unknown's slot among the arguments (see
    #: ``solve``), ``alpha`` and ``eps``.
    rhs: Any = None
    unknown: int = 0
    alpha: float = 0.0
    eps: float = 0.0


def _reduction_only(op: str, doc: str) -> Callable[..., Any]:
    """A method running the reduction ``op`` over ``axis`` (or ``dim``), as pykeops'
    ``sum_reduction`` and its kind."""

    def method(self: "GenericLazyTensor", axis: Optional[int] = None,
               dim: Optional[int] = None, **kwargs: Any) -> Any:
        return self.reduction(op, axis=axis, dim=dim, **kwargs)

    method.__doc__ = doc
    return method


def _synonym(name: str) -> Callable[..., Any]:
    """A method calling the method ``name`` with keyword arguments only, as pykeops'
    ``logsumexp_reduction(**kwargs)`` and its kind."""

    def method(self: "GenericLazyTensor", **kwargs: Any) -> Any:
        return getattr(self, name)(**kwargs)

    method.__doc__ = f":meth:`{name}`."
    return method


class GenericLazyTensor:
    """A symbolic tensor ``F(x_i, y_j, p)`` (pykeops' ``LazyTensor``).

    Args:
        x: an array (``(..., N, 1, D)``: indexed by ``i``; ``(..., 1, M, D)``: by ``j``;
            ``(D,)`` or ``(..., 1, 1, D)``: a parameter), a number or a list of numbers
            (a constant), or a triple of integers ``(ind, dim, cat)``: a *symbolic*
            variable (``cat`` 0 for ``i``, 1 for ``j``, 2 for a parameter), whose array
            is given when the reduction is called (see below).
        axis: force the category of a 2-D array ``(N, D)``: 0 for ``i``, 1 for ``j``,
            2 for a parameter.
        is_complex: a complex LazyTensor even for real data (complex arrays always are).

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

    A reduction with ``call=False``, or of a formula with symbolic variables
    (``Vi(0, 3)``, ``LazyTensor((0, 3, 0))``), returns a callable LazyTensor instead: a
    ``Genred`` that takes the symbolic variables' arrays in the order of their indices::

        gauss = (-Vi(0, 3).sqdist(Vj(1, 3))).exp().sum(dim=1)   # callable
        a = gauss(x, y)                                         # (N, 1)

    As in pykeops, ``shape`` is ``(..., N, M, D)`` without a last dimension of 1,
    ``ndim`` is ``D`` and ``dim()`` the number of dimensions of ``(..., N, M, D)``.
    """

    # NumPy defers to the LazyTensor's reflected operators (``array * K``), as pykeops.
    __array_ufunc__ = None

    #: Block-sparsity pattern (pykeops' ``ranges`` 6-tuple) used by reductions; kept by
    #: the operations, swapped by ``t()``.
    ranges: Any = None

    # -- backend hooks ----------------------------------------------------------------
    #: The front end's ``Genred`` and ``KernelSolve`` classes (for ``callfun``; solves
    #: run through the latter's ``_solve_spec``).
    _Genred: Any = None
    _KernelSolve: Any = None

    @classmethod
    def _as_array(cls, x: Any) -> Array:
        """Validates an array of the front end (float32/float64, or a half precision computed
        in float32) or raises TypeError."""
        raise NotImplementedError

    @staticmethod
    def _run(core: Core, arrays: List[Array], opts: Options) -> Tuple[Any, Any]:
        """Runs a reduction; returns ``(values, indices)``."""
        raise NotImplementedError

    @classmethod
    def _run_spec(cls, spec: Tuple[Any, ...], arrays: List[Array], opts: Options
                  ) -> Tuple[Any, Any]:
        """Runs the reduction that ``compile_core(*spec)`` makes (``keops.torch`` traces
        it under ``torch.compile`` instead)."""
        return cls._run(compile_core(*spec), arrays, opts)

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
    def __init__(self, x: Any = None, axis: Optional[int] = None,
                 is_complex: bool = False) -> None:
        self._vars: List[Tuple[Array, str]] = []
        self._formula = ""
        self._dim = 1
        #: Complex (pykeops' ComplexLazyTensor): ``_dim`` reals hold ``_dim / 2``
        #: complex numbers, interleaved.
        self._complex = False
        #: Symbolic variables ``(index, dim, category)``, sorted by index.
        self._sym: Tuple[Tuple[int, int, str], ...] = ()
        #: For the result of a reduction or solve with ``call=False``: what to run.
        self._pending: Optional[_Pending] = None
        if x is None:
            return
        self._build(x, axis)
        if is_complex and not self._complex:
            self._formula = f"Real2Complex({self._formula})"
            self._dim, self._complex = 2 * self._dim, True

    def _build(self, x: Any, axis: Optional[int]) -> None:
        if isinstance(x, tuple):
            if not (len(x) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                        for v in x) and x[0] >= 0 and x[1] >= 1
                    and x[2] in _CAT_OF):
                raise ValueError("LazyTensor(tuple): a symbolic variable is (ind, dim, cat), "
                                 "integers with ind >= 0, dim >= 1 and cat 0 (i), 1 (j) or "
                                 f"2 (parameter); got {x!r}")
            if axis is not None:
                raise ValueError("LazyTensor((ind, dim, cat)): axis is given by cat")
            self._formula, self._dim = f"\x01{x[0]}", x[1]
            self._sym = ((x[0], x[1], _CAT_OF[x[2]]),)
            return
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            self._formula = _literal(x)
            return
        if isinstance(x, list):
            if not x or len(x) > LIST_LIMIT or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
                raise ValueError(f"LazyTensor(list): expected 1 to {LIST_LIMIT} real numbers "
                                 "(a constant vector); use an array for more")
            if axis not in (None, 2):
                raise ValueError("LazyTensor(list) is a parameter: axis must be None or 2")
            f = _literal(x[0])
            for v in x[1:]:
                f = f"Concat({f}, {_literal(v)})"
            self._formula, self._dim = f, len(x)
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
        if not isinstance(x, GenericLazyTensor):
            return type(self)(x)
        if type(x)._run is not type(self)._run:  # one front end's arrays per formula
            raise TypeError(f"cannot combine a {type(self).__module__} LazyTensor with a "
                            f"{type(x).__module__} one: wrap arrays of one kind (convert "
                            "with torch.from_numpy or .numpy())")
        return x

    def _new(self: L, formula: str, vars_: List[Tuple[Array, str]], dim: int,
             cplx: bool = False, other: Optional["GenericLazyTensor"] = None) -> L:
        if self._pending is not None or other is not None and other._pending is not None:
            t = self if self._pending is not None else other
            raise ValueError(
                f"this LazyTensor is a reduction kept for later ({t._pending.reduction}, "
                "call=False, or a formula with symbolic variables): no operation "
                "applies to it; call it for its result, then wrap that")
        # Not through __init__: operations make most LazyTensors, each field is set here.
        out = object.__new__(type(self))
        out._formula, out._vars, out._dim, out._complex = formula, vars_, dim, cplx
        out._pending = None
        if other is not None and other._sym:
            out._sym = _merge_symbols(self._sym, other._sym) if self._sym else other._sym
        else:
            out._sym = self._sym
        ranges = self.ranges
        if other is not None and other.ranges is not None:
            if ranges is not None and not same_ranges(ranges, other.ranges):
                raise ValueError("the operands have different block-sparsity patterns "
                                 "(ranges); set the same ranges on both, or on one only")
            ranges = other.ranges
        if ranges is not None:
            out.ranges = ranges
        return out

    def _join(self, other: "GenericLazyTensor") -> Tuple[List[Tuple[Array, str]], str, str]:
        """Merges variable lists; returns them with both formulas renumbered."""
        if not other._vars:  # a constant or symbolic variables: nothing to renumber
            return self._vars, self._formula, other._formula
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
        if all(k == m for k, m in enumerate(mapping)):
            return vars_, self._formula, other._formula
        return vars_, self._formula, _renumber(other._formula, mapping)

    def _real_only(self, what: str, *others: Any) -> None:
        """Raises TypeError if ``self`` or an operand is complex (``what``: the operation,
        or a formula template whose name is read only then)."""
        if self._complex or any(isinstance(o, GenericLazyTensor) and o._complex
                                or isinstance(o, complex) for o in others):
            name = what.split("(")[0] or what.strip("(){} ")
            raise TypeError(f"{name} is not defined for complex LazyTensors; complex ones "
                            "support + - * /, exp, abs, angle, conj, real, imag, sum")

    def _unary(self: L, name: str, dim: Optional[int] = None, args: str = "") -> L:
        if name != "Minus":
            self._real_only(name)
        return self._new(f"{name}({self._formula}{args})", self._vars,
                         self._dim if dim is None else dim, self._complex)

    def _binary(self: L, other: Any, fmt: str, dim: Optional[int] = None) -> L:
        self._real_only(fmt, other)
        o = self._wrap(other)
        if dim is None and self._dim != o._dim and 1 not in (self._dim, o._dim):
            raise ValueError(f"operands of dimensions {self._dim} and {o._dim} do not "
                             "broadcast (equal, or one of them 1)")
        vars_, a, b = self._join(o)
        return self._new(fmt.format(a, b), vars_, max(self._dim, o._dim) if dim is None else dim,
                         other=o)

    def _ternary(self: L, a: Any, b: Any, fmt: str, dim: int) -> L:
        self._real_only(fmt, a, b)
        return self._three(self._wrap(a), self._wrap(b), fmt, dim, False)

    def _three(self: L, la: "GenericLazyTensor", lb: "GenericLazyTensor", fmt: str, dim: int,
               cplx: bool) -> L:
        """``fmt`` filled with the formulas of ``self``, ``la`` and ``lb``, over their
        merged variables."""
        vars_, f0, fa = self._join(la)
        mid = self._new(f0, vars_, self._dim, other=la)
        vars2, f0, fb = mid._join(lb)
        return mid._new(fmt.format(f0, fa, fb), vars2, dim, cplx, other=lb)

    # -- any KeOps operation by name (pykeops' unary / binary / ternary) -----------------
    @staticmethod
    def _opt(arg: Any) -> str:
        if isinstance(arg, GenericLazyTensor):
            raise TypeError("opt_arg is written into the formula as it prints (a number or "
                            "a formula string); pass a LazyTensor as an operand instead")
        return str(arg)

    @staticmethod
    def _check_dims(operation: str, dimcheck: Optional[str], dims: Sequence[int]) -> None:
        if dimcheck is None:
            return
        if dimcheck == "same":
            ok = len(set(dims)) == 1
        elif dimcheck == "sameor1":
            ok = len(set(dims) - {1}) <= 1
        elif dimcheck == "vecand1" and len(dims) == 2:
            ok = dims[1] == 1
        else:
            known = "'same', 'sameor1', 'vecand1'" if len(dims) == 2 else "'same', 'sameor1'"
            raise ValueError(f"dimcheck={dimcheck!r}: expected {known} or None")
        if not ok:
            raise ValueError(f"{operation}: operands of dimensions "
                             f"{', '.join(map(str, dims))} fail dimcheck={dimcheck!r}")

    def unary(self: L, operation: str, dimres: Optional[int] = None, opt_arg: Any = None,
              opt_arg2: Any = None, is_complex: Optional[bool] = None) -> L:
        """``operation(self, opt_arg, opt_arg2)``: any KeOps operation by its name in the
        formula syntax, as pykeops' ``unary`` (``x.unary("Exp")``,
        ``x.unary("Round", opt_arg=2)``). An unknown name or a wrong number of arguments
        is reported, with its position in the formula, when the result is reduced.

        Args:
            operation: the operation's name, e.g. ``"Sqrt"``.
            dimres: the dimension of the result's formula (default: ``self``'s; for a
                complex LazyTensor, twice its number of complex values).
            opt_arg, opt_arg2: further arguments, written into the formula as they print.
            is_complex: whether the result is complex (default: as ``self``).
        """
        args = "".join(f",{self._opt(a)}" for a in (opt_arg, opt_arg2) if a is not None)
        cplx = self._complex if is_complex is None else bool(is_complex)
        return self._new(f"{operation}({self._formula}{args})", self._vars,
                         dimres or self._dim, cplx)

    def binary(self: L, other: Any, operation: str, is_operator: bool = False,
               dimres: Optional[int] = None, dimcheck: Optional[str] = "sameor1",
               opt_arg: Any = None, opt_pos: str = "last", rversion: bool = False,
               is_complex: Optional[bool] = None) -> L:
        """``operation(self, other)`` (or ``(self operation other)`` with
        ``is_operator``): any KeOps operation of two operands by name, as pykeops'
        ``binary``; ``other`` may be a LazyTensor, a number or an array, wrapped as the
        operators do.

        Args:
            other: the second operand.
            operation: the operation's name (``"Atan2"``), or an infix operator (``"+"``)
                with ``is_operator=True``.
            dimres: the dimension of the result (default: the larger operand's).
            dimcheck: ``"sameor1"`` (equal dimensions, or one of them 1), ``"same"``,
                ``"vecand1"`` (``other`` of dimension 1) or ``None`` (no check).
            opt_arg: a further argument, written into the formula as it prints, last
                (``opt_pos="last"``) or between the operands (``"middle"``).
            rversion: ``operation(other, self)``, as the reflected operators.
            is_complex: whether the result is complex (default: either operand is).
        """
        o = self._wrap(other)
        self._check_dims(operation, dimcheck, (self._dim, o._dim))
        vars_, a, b = self._join(o)
        if rversion:
            a, b = b, a
        if is_operator:
            formula = f"({a} {operation} {b})"
        elif opt_arg is None:
            formula = f"{operation}({a}, {b})"
        elif opt_pos in ("last", "middle"):
            mid = [a, self._opt(opt_arg), b] if opt_pos == "middle" else [a, b, self._opt(opt_arg)]
            formula = f"{operation}({', '.join(mid)})"
        else:
            raise ValueError(f"opt_pos={opt_pos!r}: expected 'last' or 'middle'")
        cplx = self._complex or o._complex if is_complex is None else bool(is_complex)
        return self._new(formula, vars_, dimres or max(self._dim, o._dim), cplx, other=o)

    def ternary(self: L, other1: Any, other2: Any, operation: str,
                dimres: Optional[int] = None, dimcheck: Optional[str] = "sameor1",
                opt_arg: Any = None) -> L:
        """``operation(self, other1, other2[, opt_arg])``: any KeOps operation of three
        operands by name, as pykeops' ``ternary`` (``x.ternary(a, b, "Clamp")``).

        Args:
            other1, other2: the other operands (LazyTensors, numbers or arrays).
            operation: the operation's name.
            dimres: the dimension of the result (default: the largest operand's).
            dimcheck: ``"sameor1"``, ``"same"`` or ``None``, as in :meth:`binary`.
            opt_arg: a further argument, last, written into the formula as it prints.
        """
        la, lb = self._wrap(other1), self._wrap(other2)
        self._check_dims(operation, dimcheck, (self._dim, la._dim, lb._dim))
        extra = "" if opt_arg is None else f", {self._opt(opt_arg)}"
        return self._three(la, lb, f"{operation}({{}}, {{}}, {{}}{extra})",
                           dimres or max(self._dim, la._dim, lb._dim),
                           self._complex or la._complex or lb._complex)

    # -- properties -------------------------------------------------------------------
    @property
    def _shape(self) -> Tuple[int, ...]:
        """``(..., N, M, D)``, with ``D`` counted in complex numbers for a complex one."""
        ni, nj, batch = self.ni, self.nj, self.batchdims
        return (batch or ()) + (1 if ni is None else ni, 1 if nj is None else nj, self.ndim)

    @property
    def shape(self) -> Tuple[int, ...]:
        """``(..., N, M, D)``, or ``(..., N, M)`` where ``D`` is 1, as pykeops."""
        s = self._shape
        return s[:-1] if s[-1] == 1 else s

    @property
    def ndim(self) -> int:
        """``D``, the dimension of the formula's values (pykeops' ``ndim``)."""
        return self._dim // 2 if self._complex else self._dim

    def dim(self) -> int:
        """The number of dimensions of ``(..., N, M, D)``: batch dims + 3."""
        return len(self._shape)

    @property
    def _nd(self) -> int:
        """The number of dimensions of ``(..., N, M, D)``, computed once (a LazyTensor
        never changes its arrays; not a ``cached_property``, whose lock Dynamo cannot
        trace)."""
        nd = self.__dict__.get("_nd_cache")
        if nd is None:
            nd = self._nd_cache = 3 + max((a.ndim - (1 if c == "p" else 2)
                                           for a, c in self._vars), default=0)
        return nd

    @property
    def ni(self) -> Optional[int]:
        """``N``, the number of ``i`` rows (``None`` without an ``i``-indexed array)."""
        for arr, cat in self._vars:
            if cat == "i":
                return int(arr.shape[-2])
        return None

    @property
    def nj(self) -> Optional[int]:
        """``M``, the number of ``j`` rows (``None`` without a ``j``-indexed array)."""
        for arr, cat in self._vars:
            if cat == "j":
                return int(arr.shape[-2])
        return None

    @property
    def batchdims(self) -> Optional[Tuple[int, ...]]:
        """The batch dimensions, broadcast over the arrays (``None`` without any)."""
        batch: Tuple[int, ...] = ()
        for arr, cat in self._vars:
            lead = tuple(int(d) for d in (arr.shape[:-2] if cat != "p" else arr.shape[:-1]))
            width = max(len(lead), len(batch))
            lead = (1,) * (width - len(lead)) + lead
            batch = tuple(max(a, b) for a, b in zip(lead, (1,) * (width - len(batch)) + batch))
        return batch or None

    @property
    def nbatchdims(self) -> int:
        """The number of batch dimensions."""
        return self._nd - 3

    @property
    def is_complex(self) -> bool:
        """Whether this is a complex LazyTensor (pykeops' ComplexLazyTensor)."""
        return self._complex

    @property
    def variables(self) -> Tuple[Array, ...]:
        """The wrapped arrays, in the order of their indices in :attr:`formula`."""
        return tuple(a for a, _ in self._vars)

    @property
    def symbolic_variables(self) -> Tuple[Tuple[int, int, int], ...]:
        """The symbolic variables, ``(ind, dim, cat)`` each (``cat``: 0 i, 1 j, 2 p)."""
        return tuple((k, d, _CAT_NUM[c]) for k, d, c in self._sym)

    @property
    def dtype(self) -> Optional[str]:
        """The wrapped arrays' dtype as pykeops names it (``"float32"``, ``"float64"``;
        ``"complex64"``, ``"complex128"`` for a complex LazyTensor); ``None`` without an
        array."""
        if not self._vars:
            return None
        a = self._vars[0][0]
        name = str(a.dtype).rsplit(".", 1)[-1]
        return {"float32": "complex64", "float64": "complex128"}[name] if self._complex \
            else name

    @property
    def formula(self) -> str:
        """The formula in KeOps syntax: arrays named ``v0``, ``v1``, ..., symbolic
        variables ``s0``, ``s1``, ... by their indices."""
        return _name(self._formula)

    @property
    def callfun(self) -> Any:
        """pykeops' ``callfun``: for a callable LazyTensor, the front end's ``Genred``
        (``KernelSolve`` for a solve) that calling it runs, taking the symbolic
        variables' arrays by index, then the wrapped ones (a solve: the right-hand side
        in the unknown's slot)."""
        p = self._pending
        if p is None:
            raise AttributeError("callfun: only a callable LazyTensor (the result of a "
                                 "reduction or solve with call=False) has one")
        formula, aliases = self._named()
        if p.reduction == "Solve":
            n = self._n_sym
            unknown = f"s{p.unknown}" if p.unknown < n else f"v{p.unknown - n}"
            return self._KernelSolve(formula, list(aliases), unknown, axis=1)
        return self._Genred(formula, list(aliases), p.reduction, axis=p.axis, opt_arg=p.k,
                            formula2=None if p.formula2 is None else _name(p.formula2))

    @property
    def reduction_op(self) -> Optional[str]:
        """For a callable LazyTensor (a reduction kept for later): its reduction
        (``"Solve"`` for a solve); else ``None``."""
        return None if self._pending is None else self._pending.reduction

    def __repr__(self) -> str:
        lines = ["KeOps LazyTensor", f"    formula: {self.formula}"]
        if self._sym:
            lines.append("    symbolic variables: " + ", ".join(
                f"{_CATS[c]}({k},{d})" for k, d, c in self._sym))
        lines.append(f"    shape: {self.shape}")
        p = self._pending
        if p is not None:
            lines.append(f"    reduction: {p.reduction} (axis={p.axis})")
            if p.formula2 is not None:
                lines.append(f"        formula2: {_name(p.formula2)}")
            if p.k is not None:
                lines.append(f"        opt_arg: {p.k}")
        return "\n".join(lines)

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

    def round(self: L, other: int = 0) -> L:
        """Elementwise rounding to ``other`` decimals (halves away from zero)."""
        return self._unary("Round", args=f",{int(other)}")

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

    def atan2(self: L, other: Any) -> L:
        """``y.atan2(x)``: the angle of the point ``(x, y)``, elementwise, in
        ``[-pi, pi]``."""
        return self._binary(other, "Atan2({}, {})")

    def sinxdivx(self: L) -> L:
        """Elementwise ``sin(x) / x`` (1 at 0)."""
        return self._unary("SinXDivX")

    def sinc(self: L) -> L:
        """Elementwise normalised sinc, ``sin(pi x) / (pi x)`` (as ``numpy.sinc``)."""
        return self._unary("Sinc")

    def power(self: L, other: Any) -> L:
        """``self ** other``."""
        return self ** other

    def clamp(self: L, other1: Any, other2: Any) -> L:
        """``self`` clamped to ``[other1, other2]`` (numbers or LazyTensors)."""
        if isinstance(other1, int) and isinstance(other2, int):
            return self._unary("ClampInt", args=f",{other1},{other2}")
        return self._ternary(other1, other2, "Clamp({}, {}, {})", self._dim)

    def ifelse(self: L, other1: Any, other2: Any) -> L:
        """``other1`` where ``self >= 0``, else ``other2``."""
        dim = max(self._dim, self._wrap(other1)._dim, self._wrap(other2)._dim)
        return self._ternary(other1, other2, "IfElse({}, {}, {})", dim)

    # -- vector operations ------------------------------------------------------------------
    def sqnorm2(self: L) -> L:
        """Squared Euclidean norm over the last dimension."""
        return self._unary("SqNorm2", dim=1)

    def norm2(self: L) -> L:
        """Euclidean norm over the last dimension."""
        return self._unary("Norm2", dim=1)

    def norm(self: L, dim: int) -> L:
        """Euclidean norm over ``dim``, which must be the last dimension."""
        if dim not in (-1, self._nd - 1):
            raise ValueError("norm: only the last dimension (dim=-1) is supported")
        return self.norm2()

    def normalize(self: L) -> L:
        """``x / |x|`` (0 at 0)."""
        return self._unary("Normalize")

    def sqdist(self: L, other: Any) -> L:
        """Squared Euclidean distance."""
        return self._binary(other, "SqDist({}, {})", dim=1)

    def weightedsqnorm(self: L, other: Any) -> L:
        """``WeightedSqNorm(other, self)``: the weight ``other`` a scalar, a diagonal or a
        full matrix."""
        return self._wrap(other)._binary(self, "WeightedSqNorm({}, {})", dim=1)

    def weightedsqdist(self: L, g: Any, s: Any) -> L:
        """``WeightedSqDist(s, self, g)``: the squared norm of ``self - g`` weighted by
        ``s``."""
        return (self - g).weightedsqnorm(s)

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

    def softdtw_sqdist(self: L, other: Any, gamma: Any) -> L:
        """Soft-DTW discrepancy between the series ``self`` and ``other`` for the squared
        difference cost, with smoothing ``gamma`` (a scalar)."""
        return self._ternary(other, gamma, "SoftDTW_SqDist({}, {}, {})", 1)

    def difference_matrix(self: L, other: Any) -> L:
        """The row-major ``(dim(other), dim(self))`` matrix of differences, flattened:
        ``out[j * dim(self) + i] = self[i] - other[j]``."""
        o = self._wrap(other)
        return self._binary(o, "DifferenceMatrix({}, {})", dim=self._dim * o._dim)

    def matvecmult(self: L, other: Any) -> L:
        """The matrix ``self`` (``n x p``, row-major) times the vector ``other`` (dim
        ``p``)."""
        o = self._wrap(other)
        return self._binary(o, "MatVecMult({}, {})", dim=self._dim // o._dim)

    def vecmatmult(self: L, other: Any) -> L:
        """The row vector ``self`` (dim ``n``) times the matrix ``other`` (``n x p``,
        row-major)."""
        o = self._wrap(other)
        return self._binary(o, "VecMatMult({}, {})", dim=o._dim // self._dim)

    def tensorprod(self: L, other: Any) -> L:
        """Outer product, flattened row-major: ``out[k * dim(other) + l] = self[k]
        other[l]``."""
        o = self._wrap(other)
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

    def concat(self: L, other: Any) -> L:
        """Concatenation along the last dimension."""
        o = self._wrap(other)
        return self._binary(o, "Concat({}, {})", dim=self._dim + o._dim)

    @staticmethod
    def concatenate(tuple_of_lt: Sequence["GenericLazyTensor"], axis: int = -1) -> Any:
        """Concatenation of LazyTensors along the last dimension (pykeops)."""
        if len(tuple_of_lt) == 0:
            raise ValueError("concatenate: expected at least one LazyTensor")
        first = tuple_of_lt[0]
        if axis not in (-1, first._nd - 1):
            raise ValueError("concatenate: only the last dimension (axis=-1) is supported")
        out = first
        for lt in tuple_of_lt[1:]:
            out = out.concat(lt)
        return out

    @staticmethod
    def cat(tuple_of_lt: Sequence["GenericLazyTensor"], dim: int) -> Any:
        """:meth:`concatenate` along ``dim`` (which must be the last dimension)."""
        return GenericLazyTensor.concatenate(tuple_of_lt, dim)

    def t(self: L) -> L:
        """Swaps the ``i`` and ``j`` axes: ``K.t()`` has shape ``(..., M, N, D)``."""
        swap = {"i": "j", "j": "i", "p": "p"}
        out = self._new(self._formula, [(a, swap[c]) for a, c in self._vars], self._dim,
                        self._complex)
        out._sym = tuple((k, d, swap[c]) for k, d, c in self._sym)
        out.ranges = swap_axes(self.ranges)
        return out

    @property
    def T(self: L) -> L:
        """``t()``."""
        return self.t()

    # -- symbolic differentiation ----------------------------------------------------------
    def _variable(self, v: "GenericLazyTensor", what: str) -> None:
        if not (len(v._vars) == 1 and not v._sym and v._formula == "\x000" or
                not v._vars and len(v._sym) == 1 and v._formula == f"\x01{v._sym[0][0]}"):
            raise ValueError(f"{what}: the variable must be a LazyTensor that wraps one array "
                             f"(Vi/Vj/Pm), or a symbolic variable, got the formula "
                             f"{v.formula!r}")

    def grad(self: L, other: "GenericLazyTensor", gradin: Any) -> L:
        """``Grad(F, other, gradin)``: the gradient of ``<F, gradin>`` with respect to the
        variable ``other``."""
        self._variable(other, "grad")
        return self._ternary(other, gradin, "Grad({}, {}, {})", other._dim)

    def diff(self: L, other: "GenericLazyTensor", diffin: Any) -> L:
        """``Diff(F, other, diffin)``: the derivative of ``F`` with respect to the variable
        ``other`` along ``diffin``."""
        self._variable(other, "diff")
        return self._ternary(other, diffin, "Diff({}, {}, {})", self._dim)

    def divergence(self: L, var: "GenericLazyTensor") -> L:
        """``Divergence(F, var)`` (``F`` of ``var``'s dimension)."""
        self._variable(var, "divergence")
        return self._binary(var, "Divergence({}, {})", dim=1)

    def laplacian(self: L, var: "GenericLazyTensor") -> L:
        """``Laplacian(F, var)`` (scalar ``F``)."""
        self._variable(var, "laplacian")
        return self._binary(var, "Laplacian({}, {})", dim=1)

    def grad_matrix(self: L, other: "GenericLazyTensor") -> L:
        """``GradMatrix(F, other)``: the Jacobian, flattened (``dim F * dim other``)."""
        self._variable(other, "grad_matrix")
        return self._binary(other, "GradMatrix({}, {})", dim=self._dim * other._dim)

    def trace_operator(self: L, var: "GenericLazyTensor") -> L:
        """``TraceOperator(F, var)``: for ``F`` linear in the variable ``var`` (same
        dimension), the trace of that linear map (a scalar)."""
        self._variable(var, "trace_operator")
        return self._binary(var, "TraceOperator({}, {})", dim=1)

    # -- reductions ---------------------------------------------------------------------------
    def _named(self) -> Tuple[str, Tuple[str, ...]]:
        """The formula and its aliases: the symbolic variables at their indices, then the
        arrays (``v0`` at index ``n_sym``, ...); computed once (a LazyTensor is not
        changed after it is made)."""
        named = self.__dict__.get("_named_cache")
        if named is None:
            first = self._n_sym
            aliases = tuple(f"s{k} = {_CATS[c]}({k},{d})" for k, d, c in self._sym) + tuple(
                f"v{k} = {_CATS[c]}({first + k},{a.shape[-1]})"
                for k, (a, c) in enumerate(self._vars))
            named = self._named_cache = (_name(self._formula), aliases)
        return named

    @property
    def _n_sym(self) -> int:
        """The argument slots of the symbolic variables: 1 + the largest index."""
        return self._sym[-1][0] + 1 if self._sym else 0

    def _n_args(self, unknown: Optional[int] = None) -> int:
        """The arrays that calling this LazyTensor takes: one per symbolic slot, but a
        solve's unknown (the slot ``unknown``), which the right-hand side fills."""
        return self._n_sym - (unknown is not None and unknown < self._n_sym)

    def _axis(self, dim: Optional[int], axis: Optional[int]) -> Optional[int]:
        d = dim if dim is not None else axis
        if d is None:
            raise ValueError("a reduction needs dim (or axis): 0 for i, 1 for j")
        nd = self._nd
        d = d + nd if d < 0 else d
        if d == nd - 1:
            return None  # over the coordinates
        if d == nd - 3:
            return 0
        if d == nd - 2:
            return 1
        raise ValueError(f"dim {dim if dim is not None else axis} is a batch dimension; "
                         "reduce over i or j")

    def reduction(self, reduction_op: str, other: Any = None, opt_arg: Optional[int] = None,
                  axis: Optional[int] = None, dim: Optional[int] = None, call: bool = True,
                  is_complex: Optional[bool] = None, **kwargs: Any) -> Any:
        """The reduction ``reduction_op`` (KeOps' name: ``"Sum"``, ``"LogSumExp"``,
        ``"ArgKMin"``, ...) over ``i`` (``axis`` or ``dim`` 0) or ``j`` (1), as pykeops'
        method of that name, which the named reductions call.

        Args:
            other: the weight of ``LogSumExp`` / ``SumSoftMaxWeight``.
            opt_arg: ``K`` of the K-min family.
            call: ``False`` returns a callable LazyTensor instead of running it (as do
                formulas with symbolic variables).
            is_complex: accepted for pykeops compatibility (the operands decide).
            **kwargs: ``backend``, ``device_id``, ``ranges``, ``out``, ``dtype_acc``,
                ``use_double_acc``, ``sum_scheme``, ``use_fast_math``, ``enable_chunks``
                (accepted; chunks are chosen by the planner); others are a TypeError.
        """
        _check_kwargs(f"the {reduction_op} reduction", kwargs, REDUCTION_KWARGS)
        ax = self._axis(dim, axis)
        if ax is None:
            raise ValueError(f"{reduction_op} over the last dimension is not a reduction of "
                             "the symbolic matrix; use dim=0 (over i) or dim=1 (over j)")
        if self._complex and (reduction_op != "Sum" or other is not None):
            raise TypeError(f"{reduction_op} is not defined for complex LazyTensors (sum is)")
        base, f2 = self, None
        if other is not None:
            w = self._wrap(other)
            vars_, f1, f2 = self._join(w)
            base = self._new(f1, vars_, self._dim, other=w)
        res = base._new(base._formula, base._vars, base._dim, self._complex)
        res._pending = _Pending(reduction_op, ax, None if opt_arg is None else int(opt_arg),
                                f2, dict(kwargs))
        return res() if call and not res._sym else res

    def _arguments(self, args: Sequence[Any], unknown: Optional[int] = None) -> List[Array]:
        """The arrays of a call: the symbolic variables' (``args``, by index; the slot
        ``unknown``, a solve's unknown, left out), then the wrapped ones."""
        n = self._n_args(unknown)
        if len(args) != n:
            names = ", ".join(f"{_CATS[c]}({k},{d})" for k, d, c in self._sym
                              if k != unknown) or "none"
            raise TypeError(f"this LazyTensor takes {n} arrays, one per symbolic variable "
                            f"by index ({names}); got {len(args)}")
        arrays = [self._as_array(a) for a in args]
        if unknown is not None and unknown < self._n_sym:
            arrays.insert(unknown, None)
        return arrays + [a for a, _ in self._vars]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the reduction or solve that this LazyTensor holds (``call=False``, or a
        formula with symbolic variables): ``args`` are the arrays of the symbolic
        variables, in the order of their indices; ``kwargs`` override its options."""
        p = self._pending
        if p is None:
            raise ValueError("a LazyTensor can be called only when it is the result of a "
                             "reduction or solve, e.g. K.sum(dim=1, call=False)")
        kw = {**p.kwargs, **kwargs}
        solve = p.reduction == "Solve"
        _check_kwargs("calling a LazyTensor", kw, SOLVE_KWARGS if solve else REDUCTION_KWARGS)
        if not self._vars and not self._sym:
            raise ValueError(f"{p.reduction}: the formula has no variable")
        arrays = self._arguments(args, p.unknown if solve else None)
        formula, aliases = self._named()
        ranges = kw.get("ranges")
        opts = make_options(kw.get("dtype_acc", "auto"), kw.get("use_double_acc", False),
                            kw.get("sum_scheme", "auto"), kw.get("backend", "auto"),
                            kw.get("device_id", -1),
                            ranges=self.ranges if ranges is None else ranges,
                            use_fast_math=kw.get("use_fast_math", True))
        if solve:
            arrays[p.unknown] = p.rhs
            params = SolveParams(p.alpha, p.eps, kw.get("max_iter"), kw.get("verbose", False),
                                 kw.get("callback"), kw.get("precond"),
                                 checked_rank(kw.get("precond_rank", PRECOND_RANK)),
                                 return_info=bool(kw.get("return_info")))
            x = self._KernelSolve._solve_spec((formula, aliases, "Sum", 1, None, None),
                                              p.unknown, arrays, params, opts)
            return (x, params.infos[0]) if params.return_info else x
        values, indices = self._run_spec(
            (formula, aliases, p.reduction, p.axis, p.k,
             None if p.formula2 is None else _name(p.formula2)), arrays, opts)
        if self._complex:
            values = self._real_as_complex(values)
        return GenredBase._result(values, indices, kw.get("out"))

    def _symbolic_or_reduce(self: L, op: str, axis: Optional[int], dim: Optional[int],
                            kwargs: Dict[str, Any]) -> Any:
        """pykeops' ``sum``/``min``/``max``/``argmin``/``argmax``: over the last
        dimension (-1, the default) the operation on the coordinates, a LazyTensor;
        else the reduction over ``i`` or ``j``."""
        if self._axis(dim, axis) is not None:
            return self.reduction(op, axis=axis, dim=dim, **kwargs)
        # torch's keepdim (NumPy's keepdims), as pykeops' tests write it
        # (``.sum(-1, keepdim=True)``): both values describe the result, whose shape
        # has no last dimension of 1 while its formula has dimension 1.
        kwargs = {k: v for k, v in kwargs.items() if k not in ("keepdim", "keepdims")}
        if kwargs:
            raise TypeError(f"{op.lower()} over the last dimension is a LazyTensor, not a "
                            f"reduction: options ({', '.join(kwargs)}) apply to dim 0 or 1")
        if op == "Sum" and self._complex:
            return self._complex_unary("ComplexSum", 2, True)
        return self._unary(op, dim=1)

    def sum(self, axis: Optional[int] = -1, dim: Optional[int] = None, **kwargs: Any) -> Any:
        """Sum over ``i`` (``axis`` or ``dim`` 0) or ``j`` (1); over the coordinates for
        -1 (the default), a LazyTensor."""
        return self._symbolic_or_reduce("Sum", axis, dim, kwargs)

    def logsumexp(self, axis: Optional[int] = None, dim: Optional[int] = None,
                  weight: Any = None, **kwargs: Any) -> Any:
        """``log sum exp`` over ``i`` or ``j`` (``log sum exp(F) w`` with a weight; as
        in pykeops, ``other=`` names the weight too)."""
        if weight is not None:
            if "other" in kwargs:
                raise TypeError("logsumexp() got the weight twice: as weight= and other=")
            kwargs["other"] = weight
        return self.reduction("LogSumExp", axis=axis, dim=dim, **kwargs)

    def sumsoftmaxweight(self, weight: Any, axis: Optional[int] = None,
                         dim: Optional[int] = None, **kwargs: Any) -> Any:
        """``sum exp(F) w / sum exp(F)`` over ``i`` or ``j``."""
        return self.reduction("SumSoftMaxWeight", other=weight, axis=axis, dim=dim, **kwargs)

    def min(self, axis: Optional[int] = -1, dim: Optional[int] = None, **kwargs: Any) -> Any:
        """Minimum over ``i`` or ``j``; over the coordinates for -1 (the default)."""
        return self._symbolic_or_reduce("Min", axis, dim, kwargs)

    def max(self, axis: Optional[int] = -1, dim: Optional[int] = None, **kwargs: Any) -> Any:
        """Maximum over ``i`` or ``j``; over the coordinates for -1 (the default)."""
        return self._symbolic_or_reduce("Max", axis, dim, kwargs)

    def argmin(self, axis: Optional[int] = -1, dim: Optional[int] = None,
               **kwargs: Any) -> Any:
        """Position of the minimum (int64) over ``i`` or ``j``; among the coordinates
        for -1 (the default), a LazyTensor."""
        return self._symbolic_or_reduce("ArgMin", axis, dim, kwargs)

    def argmax(self, axis: Optional[int] = -1, dim: Optional[int] = None,
               **kwargs: Any) -> Any:
        """Position of the maximum (int64) over ``i`` or ``j``; among the coordinates
        for -1 (the default), a LazyTensor."""
        return self._symbolic_or_reduce("ArgMax", axis, dim, kwargs)

    def min_argmin(self, axis: Optional[int] = None, dim: Optional[int] = None,
                   **kwargs: Any) -> Any:
        """``(min, argmin)``."""
        return self.reduction("Min_ArgMin", axis=axis, dim=dim, **kwargs)

    def max_argmax(self, axis: Optional[int] = None, dim: Optional[int] = None,
                   **kwargs: Any) -> Any:
        """``(max, argmax)``."""
        return self.reduction("Max_ArgMax", axis=axis, dim=dim, **kwargs)

    def Kmin(self, K: int, axis: Optional[int] = None, dim: Optional[int] = None,
             **kwargs: Any) -> Any:
        """The ``K`` smallest values, sorted."""
        return self.reduction("KMin", opt_arg=K, axis=axis, dim=dim, **kwargs)

    def argKmin(self, K: int, axis: Optional[int] = None, dim: Optional[int] = None,
                **kwargs: Any) -> Any:
        """Positions of the ``K`` smallest values (int64)."""
        return self.reduction("ArgKMin", opt_arg=K, axis=axis, dim=dim, **kwargs)

    def Kmin_argKmin(self, K: int, axis: Optional[int] = None, dim: Optional[int] = None,
                     **kwargs: Any) -> Any:
        """``(Kmin, argKmin)``."""
        return self.reduction("KMin_ArgKMin", opt_arg=K, axis=axis, dim=dim, **kwargs)

    # pykeops' names for the reductions alone (never the operation on the coordinates),
    # and its keyword-only synonyms.
    sum_reduction = _reduction_only("Sum", "Sum over ``i`` (0) or ``j`` (1).")
    min_reduction = _reduction_only("Min", "Minimum over ``i`` (0) or ``j`` (1).")
    max_reduction = _reduction_only("Max", "Maximum over ``i`` (0) or ``j`` (1).")
    argmin_reduction = _reduction_only("ArgMin", "Position of the minimum over ``i`` (0) "
                                                 "or ``j`` (1).")
    argmax_reduction = _reduction_only("ArgMax", "Position of the maximum over ``i`` (0) "
                                                 "or ``j`` (1).")
    logsumexp_reduction = _synonym("logsumexp")
    sumsoftmaxweight_reduction = _synonym("sumsoftmaxweight")
    min_argmin_reduction = _synonym("min_argmin")
    max_argmax_reduction = _synonym("max_argmax")
    Kmin_reduction = _synonym("Kmin")
    argKmin_reduction = _synonym("argKmin")
    Kmin_argKmin_reduction = _synonym("Kmin_argKmin")
    __min__ = _synonym("min")
    __max__ = _synonym("max")

    # -- linear algebra ----------------------------------------------------------------------
    def __matmul__(self, v: Array, **kwargs: Any) -> Any:
        """``K @ v``: ``sum_j K_ij v_j`` for a scalar ``K``; ``v`` of shape ``(M,)``,
        ``(M, E)`` or ``(..., M, E)``; ``kwargs`` as :meth:`sum`'s."""
        if self._dim != 1:
            raise ValueError(f"K @ v needs a scalar K (last dimension 1), got shape {self.shape}")
        v = self._as_array(v)
        vec = v.ndim == 1
        if v.ndim == 0:
            raise ValueError("K @ v: v must have shape (M,), (M, E) or (..., M, E), got a scalar")
        vj = type(self)._variable_of(v.reshape(tuple(v.shape) + (1,)) if vec else v, "j")
        out = (self * vj).sum(dim=self._nd - 2, **kwargs)
        return out.reshape(-1) if vec and not isinstance(out, GenericLazyTensor) else out

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
        solved independently. With ``var`` (a ``Vj`` variable of ``self``: an array's,
        or a symbolic one, ``Vj(ind, dim)``), ``self`` is ``K a`` itself, linear in
        ``var``. With ``call=False``, or other symbolic variables in ``self``, returns a
        callable LazyTensor (arguments: the other symbolic variables' arrays). Keyword
        arguments as ``KernelSolve``'s call (``max_iter``, ``ranges``, ``backend``,
        ``verbose``, ``callback``, ``return_info``, ``precond``, ``precond_rank``, ...);
        differentiable in PyTorch.
        """
        _check_kwargs("solve()", kwargs, SOLVE_KWARGS)
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
            slot = expr._n_sym + next(k for k, (a, c) in enumerate(expr._vars)
                                      if a is b and c == "j")
        else:
            self._variable(var, "solve")
            if var._sym:
                ind, _, cat = var._sym[0]
                used = var._sym[0] in self._sym
            else:
                cat = var._vars[0][1]
                pos = [k for k, (a, c) in enumerate(self._vars)
                       if a is var._vars[0][0] and c == "j"]
                used, ind = bool(pos), self._n_sym + (pos[0] if pos else 0)
            if cat != "j":
                raise ValueError("solve: var must be a Vj variable (the system sums over j)")
            if not used:
                raise ValueError("solve: the formula does not use var")
            expr, slot = self, ind
        res = expr._new(expr._formula, expr._vars, expr._dim)
        res._pending = _Pending("Solve", 1, kwargs=dict(kwargs), rhs=b, unknown=slot,
                                alpha=float(alpha), eps=float(eps))
        return res() if call and res._n_args(slot) == 0 else res

    # -- dense evaluation -------------------------------------------------------------------
    def dense(self) -> Array:
        """The full matrix ``(..., N, M, D)`` as an array (differentiable in PyTorch).

        Meant for small sizes (checks, plots): memory is ``N * M * D`` values, and more
        than ``DENSE_LIMIT`` entries is refused.
        """
        if self._sym:
            raise ValueError("dense(): the formula has symbolic variables; call a reduction "
                             "of it with their arrays instead")
        if not self._vars:
            raise ValueError("dense(): the formula has no variable")
        shape = self._shape
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


def complex_class(cls: Any) -> Any:
    """pykeops' ``ComplexLazyTensor`` for a front end's ``LazyTensor`` class."""

    class _Meta(type(cls)):  # type: ignore[misc]
        # As in pykeops, every complex LazyTensor is a ComplexLazyTensor (here: those of
        # complex arrays and the results of complex operations, made as LazyTensors).
        def __instancecheck__(self, obj: Any) -> bool:
            return isinstance(obj, cls) and obj.is_complex

    class ComplexLazyTensor(cls, metaclass=_Meta):  # type: ignore[misc, valid-type]
        """A complex LazyTensor (pykeops' ``ComplexLazyTensor``): of a complex array, or
        of a real one or a number as complex numbers with no imaginary part.
        ``LazyTensor`` of a complex array is one too (``is_complex``)."""

        def __init__(self, x: Any = None, axis: Optional[int] = None) -> None:
            super().__init__(x, axis, is_complex=x is not None)

    ComplexLazyTensor.__module__ = cls.__module__
    return ComplexLazyTensor


def variable_constructors(cls: Any) -> Tuple[Callable[..., Any], ...]:
    """pykeops' ``Vi``, ``Vj`` and ``Pm`` for a front end's ``LazyTensor`` class: of an
    array, or, given an index and a dimension, a symbolic variable."""

    def make(x_or_ind: Any, dim: Optional[int], cat: str) -> Any:
        if dim is not None:
            if not isinstance(x_or_ind, int) or isinstance(x_or_ind, bool):
                raise TypeError(f"V{cat}(ind, dim): a symbolic variable needs an integer "
                                f"index, got {type(x_or_ind).__name__}")
            return cls((x_or_ind, int(dim), _CAT_NUM[cat]))
        if cat == "p" and isinstance(x_or_ind, (int, float)) and not isinstance(x_or_ind, bool):
            return cls(x_or_ind)
        return cls._variable_of(x_or_ind, cat)

    def Vi(x_or_ind: Any, dim: Optional[int] = None) -> Any:
        """An ``i``-indexed variable: of an array ``(..., N, D)``, or ``Vi(ind, dim)``, the
        symbolic variable of index ``ind``."""
        return make(x_or_ind, dim, "i")

    def Vj(x_or_ind: Any, dim: Optional[int] = None) -> Any:
        """A ``j``-indexed variable: of an array ``(..., M, D)``, or ``Vj(ind, dim)``, the
        symbolic variable of index ``ind``."""
        return make(x_or_ind, dim, "j")

    def Pm(x_or_ind: Any, dim: Optional[int] = None) -> Any:
        """A parameter: a number (a constant of the formula), an array ``(..., D)``, or
        ``Pm(ind, dim)``, the symbolic parameter of index ``ind``."""
        return make(x_or_ind, dim, "p")

    for f in (Vi, Vj, Pm):
        f.__module__ = cls.__module__
    return Vi, Vj, Pm
