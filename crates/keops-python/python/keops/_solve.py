"""pykeops' ``KernelSolve`` for both front ends: ``(K + alpha I) a = b`` by conjugate
gradients in Rust (``keops::solve``), where ``K a`` is a ``Sum`` reduction linear in the
variable ``varinvalias``. Every column of ``b`` (and batch entry) is its own system; one
reduction per iteration serves them all.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from . import _keops
from ._genred import Core, CoreSpec, DeviceId, Options, compile_core, make_options, parsed


#: The Nyström preconditioner's default rank (``precond_rank``): chosen as it is built
#: (``keops::solve::Preconditioner::NystromAuto``).
PRECOND_RANK = "auto"


def checked_rank(rank: Union[int, str]) -> Union[int, str]:
    """``precond_rank``: an int (the largest rank; the engine refuses 0), or
    ``"auto"`` (any case)."""
    if isinstance(rank, str):
        if rank.lower() != "auto":
            raise ValueError(f"invalid precond_rank {rank!r}: expected a rank >= 1 or 'auto'")
        return "auto"
    return int(rank)


class ConvergenceWarning(RuntimeWarning):
    """A conjugate-gradient solve stopped above ``eps``: at its iteration limit, or where
    the data type's precision keeps the true residual above it (see
    :attr:`SolveInfo.precision_limited`)."""


@dataclass(frozen=True)
class SolveInfo:
    """How a solve went."""

    #: Iterations done (one reduction each).
    iterations: int
    #: The largest root-mean-square residual ``|r| / sqrt(n)`` over the systems, of the
    #: answer as returned: ``r = b - (K + alpha I) a`` computed in float64.
    residual: float
    #: Whether every system met ``|r| / sqrt(n) < eps`` (on its true residual
    #: ``b - (K + alpha I) a``).
    converged: bool
    #: The rank of the Nyström preconditioner built: 0 without one; with
    #: ``precond_rank="auto"``, the rank chosen; with a given rank, that rank, or less
    #: where the kernel is approximated to 1e-10 of its diagonal sooner.
    precond_rank: int = 0
    #: Whether the recursive residual met ``eps`` but the true one of the answer did
    #: not: rounding in the data type (float32, typically) limits the accuracy, and
    #: more iterations would not help.
    precision_limited: bool = False


def solve_core(spec: CoreSpec, var: int) -> Core:
    """The reduction ``compile_core(*spec)``, checked to be solvable for argument ``var``
    (a variable of the reduced side, of the formula's dimension)."""
    core = compile_core(*spec)
    _keops.check_solve(core.g, var)
    return core


def unknown_position(spec: CoreSpec, varinvalias: str) -> int:
    """The argument position of the unknown ``varinvalias`` of a solve with the
    reduction ``compile_core(*spec)``, checked (:func:`solve_core`); called through
    :func:`~keops._genred.parsed`."""
    var: int = _keops.alias_position(list(spec[1]), varinvalias)
    solve_core(spec, var)
    return var


@dataclass
class SolveParams:
    """The parameters of one solve (passed through autograd unchanged)."""

    alpha: float = 1e-10
    eps: float = 1e-6
    max_iter: Optional[int] = None
    verbose: bool = False
    callback: Optional[Callable[[int, float], Any]] = None
    #: ``None`` or ``"nystrom"``, and the latter's rank: ``"auto"`` or the largest one.
    precond: Optional[str] = None
    precond_rank: Union[int, str] = PRECOND_RANK
    #: Filled by each solve (the forward one first).
    infos: List[SolveInfo] = field(default_factory=list)
    #: Whether the caller reads ``infos`` (``return_info``).
    return_info: bool = False


def run_solve(core: Core, var: int, arrays: Sequence[Any], params: SolveParams,
              opts: Options) -> Any:
    """Solves on C-contiguous NumPy arrays (``arrays[var]`` is ``b``); warns with
    :class:`ConvergenceWarning` when the iteration limit is reached."""
    if params.alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {params.alpha}")
    start, last = time.monotonic(), [0.0]

    def progress(it: int, res: float, checked: bool) -> None:
        if params.verbose and (checked or time.monotonic() - last[0] > 0.5
                               or res < params.eps):
            last[0] = time.monotonic()
            what = "true residual of the answer" if checked else "residual"
            print(f"KernelSolve: iteration {it}, {what} {res:.3e} (eps {params.eps:g}), "
                  f"{last[0] - start:.1f} s", file=sys.stderr)
        if params.callback is not None and not checked:
            params.callback(it, res)

    hook = progress if (params.verbose or params.callback is not None) else None
    x, it, res, ok, limited, rank = core.g.solve(list(arrays), var, float(params.alpha),
                                        float(params.eps), params.max_iter, hook,
                                        precond=params.precond,
                                        precond_rank=(None if params.precond_rank == "auto"
                                                      else params.precond_rank),
                                        **opts.kwargs())
    params.infos.append(SolveInfo(it, res, ok, rank, limited))
    if limited:
        warnings.warn(
            f"KernelSolve: after {it} iterations the conjugate gradients' residual met "
            f"eps = {params.eps:g}, but the true residual of the {x.dtype} answer is "
            f"{res:.3e}: rounding in {x.dtype} limits its accuracy and more iterations "
            "would not lower it; use " + ("float64 data, or " if x.dtype != "float64" else "")
            + "an eps above it",
            ConvergenceWarning, stacklevel=4)
    elif not ok:
        warnings.warn(
            f"KernelSolve did not converge: after {it} iterations the residual is {res:.3e} "
            f"> eps = {params.eps:g}; raise max_iter, alpha (regularisation) or eps, try "
            "precond='nystrom', or check that the kernel is positive definite",
            ConvergenceWarning, stacklevel=4)
    return x


class KernelSolveBase:
    """pykeops' ``KernelSolve``: solves ``(K + alpha I) a = b`` for ``a``.

    Args:
        formula: ``K a`` as a formula linear in the unknown, e.g.
            ``"Exp(-SqDist(x,y) * g) * a"``.
        aliases: variable declarations, the unknown included (``"a = Vj(1)"``).
        varinvalias: the alias of the unknown: a ``Vj`` variable for ``axis=1``
            (``K_ij a_j`` summed over ``j``), ``Vi`` for ``axis=0``, of the formula's
            dimension (its columns are independent right-hand sides).
        axis: 1 reduces over ``j``, 0 over ``i``.
        dtype_acc, use_double_acc, sum_scheme, use_fast_math: as ``Genred``.

    Calling it with the arguments of the formula, ``b`` in the unknown's place, returns
    ``a`` (shape of ``b``). Keyword arguments: ``alpha`` (ridge, default 1e-10), ``eps``
    (stop when the root-mean-square residual of every system is below it, default
    1e-6; the answer is then checked on its true residual ``b - (K + alpha I) a``,
    which rounding can keep above ``eps`` in float32), ``max_iter`` (default
    ``min(10 n, 10000)``; reaching it warns with :class:`ConvergenceWarning`),
    ``ranges``, ``backend``, ``device_id``, ``verbose`` (progress on stderr),
    ``callback(iteration, residual)``, ``return_info`` (also return a :class:`SolveInfo`), ``precond`` (``"nystrom"``: precondition by a
    Nyström approximation of ``K``; fewer iterations for smooth kernels and small
    ``alpha``, same solution), ``precond_rank`` (its rank: by default ``"auto"``,
    the rank that ``K`` and ``alpha`` need, built at a cost of at most 100 products by
    ``K``, and stopped early for a nearly diagonal kernel; or the largest rank, an
    int).

    Unlike pykeops, a formula that mixes the unknown's coordinates (a matrix-valued
    kernel) is solved as one system rather than column by column.
    """

    def __init__(self, formula: str, aliases: Sequence[str], varinvalias: str, axis: int = 0,
                 dtype: Optional[str] = None, opt_arg: Optional[int] = None,
                 dtype_acc: str = "auto", use_double_acc: bool = False,
                 sum_scheme: str = "auto", enable_chunks: bool = True,
                 rec_multVar_highdim: Any = None, use_fast_math: bool = True,
                 cuda_type: Optional[str] = None) -> None:
        # The arguments in the order of pykeops.numpy.KernelSolve (the torch one
        # reorders them); dtype, opt_arg, enable_chunks, rec_multVar_highdim and
        # cuda_type are accepted for compatibility.
        #: The reduction ``K a``: ``compile_core``'s arguments.
        self.spec: CoreSpec = (formula, tuple(aliases), "Sum", int(axis), None, None)
        # Checks the unknown's side and dimension now, with a clear message.
        # int(): the constant that torch.compile keeps of a call has a source that its
        # guards on a traced solve's arguments cannot take; a plain int has none.
        self.var = int(parsed(unknown_position, self.spec, varinvalias))
        self.axis = int(axis)
        self.opts = make_options(dtype_acc, use_double_acc, sum_scheme,
                                 use_fast_math=use_fast_math)
        self._init: Dict[str, Any] = dict(formula=formula, aliases=list(aliases),
                                          varinvalias=varinvalias, axis=int(axis),
                                          dtype_acc=dtype_acc, use_double_acc=use_double_acc,
                                          sum_scheme=sum_scheme, use_fast_math=use_fast_math)

    @property
    def core(self) -> Core:
        """The reduction ``K a`` (parsed once per process, on first use: not while
        ``torch.compile`` traces a ``KernelSolve`` made in the compiled function)."""
        return compile_core(*self.spec)

    @staticmethod
    def _solve(core: Core, var: int, args: List[Any], params: SolveParams,
               opts: Options) -> Any:
        """The front end's solve on its arrays (``args[var]`` is ``b``)."""
        raise NotImplementedError

    @classmethod
    def _solve_spec(cls, spec: CoreSpec, var: int, args: List[Any], params: SolveParams,
                    opts: Options) -> Any:
        """The solve with the reduction ``compile_core(*spec)`` (``keops.torch`` traces it
        under ``torch.compile`` instead)."""
        return cls._solve(solve_core(spec, var), var, args, params, opts)

    def __call__(self, *args: Any, backend: str = "auto", device_id: DeviceId = -1,
                 alpha: float = 1e-10, eps: float = 1e-6, ranges: Optional[Any] = None,
                 max_iter: Optional[int] = None, verbose: bool = False,
                 callback: Optional[Callable[[int, float], Any]] = None,
                 return_info: bool = False, precond: Optional[str] = None,
                 precond_rank: Union[int, str] = PRECOND_RANK) -> Any:
        """Solves with ``b`` in the unknown's place (see the class docs for the
        options); returns ``a``, or ``(a, SolveInfo)`` with ``return_info``."""
        opts = make_options(self.opts.dtype_acc, False, self.opts.sum_scheme, backend,
                            device_id, ranges, self.opts.fast_math)
        params = SolveParams(float(alpha), float(eps), max_iter, verbose, callback, precond,
                             checked_rank(precond_rank), return_info=bool(return_info))
        x = self._solve_spec(self.spec, self.var, list(args), params, opts)
        return (x, params.infos[0]) if return_info else x

    def __getstate__(self) -> Dict[str, Any]:
        return dict(self._init)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return (f"{type(self).__module__}.KernelSolve({self.core.g.formula!r}, "
                f"var={self.var}, axis={self.axis})")
