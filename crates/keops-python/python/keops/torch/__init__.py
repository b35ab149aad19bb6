"""PyTorch front end of keops, with pykeops' API (``from keops.torch import ...``).

Reductions are ``torch.autograd.Function``s whose backward and forward-mode rules are
themselves keops reductions, built from the Rust symbolic derivatives: gradients work to
any order, and ``torch.func`` (``grad``, ``vjp``, ``jvp``, ``jacrev``, ``jacfwd``,
``hessian``, ``vmap``) composes with them. The min/max family is differentiated at the
selected pairs: the indices come from the engine, the values are the formula evaluated
there (one more small reduction), so their derivatives are those of a ``Sum``.

>>> import torch
>>> from keops.torch import LazyTensor
>>> x = torch.randn(100, 3, dtype=torch.float64, requires_grad=True)
>>> y = torch.randn(200, 3, dtype=torch.float64)
>>> K = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))).exp()
>>> a = K.sum(dim=1)                 # (100, 1), a tensor
>>> (g,) = torch.autograd.grad(a.sum(), [x])
>>> g.shape
torch.Size([100, 3])
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.autograd.forward_ad as fwAD

from .._genred import (ARG, SELECT, SMOOTH, Core, CoreSpec, DeviceId, GenredBase, Options,
                       dynamo_tracing, reduction_shortcuts)
from .._lazy import GenericLazyTensor, complex_class, variable_constructors
from .._solve import ConvergenceWarning, KernelSolveBase, SolveInfo, SolveParams, run_solve

__all__ = ["Genred", "LogSumExp", "KernelSolve", "LazyTensor", "ComplexLazyTensor", "Vi", "Vj", "Pm",
           "generic_sum", "generic_logsumexp", "generic_argmin", "generic_argkmin",
           "ConvergenceWarning", "SolveInfo"]

_FLOATS = (torch.float32, torch.float64)
#: Half precisions: computed in float32 (the engines have no half kernels), results
#: rounded back, so a half-precision model can call keops as it is.
_HALVES = (torch.float16, torch.bfloat16)


def _check(args: Sequence[Any]) -> None:
    """Types, devices and dtypes of the arguments, with messages that name them."""
    first: Optional[torch.Tensor] = None
    for k, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"argument {k}: expected a torch.Tensor, got {type(a).__name__}")
        if a.device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"argument {k} is on {a.device}: keops reduces CPU and CUDA "
                               "tensors")
        if a.dtype not in _FLOATS + _HALVES:
            raise TypeError(f"argument {k}: expected a float32, float64, float16 or bfloat16 "
                            f"tensor, got {a.dtype}")
        if first is None:
            first = a
        elif a.dtype != first.dtype:
            raise TypeError(f"argument {k} is {a.dtype} but argument 0 is {first.dtype}: keops "
                            "does not mix precisions (convert with .float() or .double())")
        elif a.device != first.device:
            raise RuntimeError(f"argument {k} is on {a.device} but argument 0 is on "
                               f"{first.device}: move all the tensors to one device")


def _numpy(a: torch.Tensor) -> Any:
    """A NumPy view of a CPU tensor (a contiguous copy first when it is not contiguous; a
    host copy of a CUDA tensor)."""
    a = a.detach().cpu()
    return (a if a.is_contiguous() else a.contiguous()).numpy()


def _rows_contiguous(a: torch.Tensor) -> torch.Tensor:
    """``a``, or a contiguous copy where its rows are not contiguous (the engines read a
    row as consecutive values, rows one row apart; batch dimensions may be strided)."""
    if a.ndim == 0 or a.shape[-1] <= 1 or a.stride(-1) == 1:
        if a.ndim < 2 or a.shape[-2] <= 1 or a.stride(-2) == a.shape[-1]:
            return a
    return a.contiguous()


def _engine(core: Core, args: Sequence[torch.Tensor], opts: Options
            ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """One engine call on checked tensors, results on their device: CPU tensors through
    NumPy views; CUDA tensors in place on PyTorch's current stream when the reduction runs
    on their GPU, else through host copies (``backend="CPU"``, a reduction split over
    several GPUs, or ``"auto"`` where it stays on the CPU)."""
    device = args[0].device if args else torch.device("cpu")
    if device.type == "cuda" and opts.on_gpu and opts.multi_gpu is None:
        return _in_place(core, args, opts, device)
    values, indices = core([_numpy(a) for a in args], opts)
    return (None if values is None else torch.from_numpy(values).to(device),
            None if indices is None else torch.from_numpy(indices).to(device))


def _in_place(core: Core, args: Sequence[torch.Tensor], opts: Options, device: torch.device
              ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """A reduction of CUDA tensors on their GPU: no copy (but of rows that are not
    contiguous) and no synchronisation, queued on PyTorch's current stream; the outputs
    are allocated by PyTorch there, so its allocator orders their reuse."""
    args = [_rows_contiguous(a.detach()) for a in args]
    shapes = [tuple(a.shape) for a in args]
    vshape, ishape = core.output_shapes(shapes)
    values = None if vshape is None else torch.empty(vshape, dtype=args[0].dtype, device=device)
    indices = None if ishape is None else torch.empty(ishape, dtype=torch.int64, device=device)
    stream = torch.cuda.current_stream(device).cuda_stream
    _retry_out_of_memory(lambda: core.call_device(
        [a.data_ptr() for a in args], shapes, [tuple(a.stride()) for a in args],
        "float32" if args[0].dtype == torch.float32 else "float64",
        (0 if values is None else values.data_ptr(),
         0 if indices is None else indices.data_ptr()),
        stream, device.index if device.index is not None else torch.cuda.current_device(),
        opts))
    return values, indices


def _retry_out_of_memory(call: Callable[[], None]) -> None:
    """Runs ``call``; if the GPU is out of memory, hands PyTorch's cached blocks back to
    the driver (as PyTorch's allocator does before it gives up) and tries once more: the
    engine's temporaries come from the driver, and PyTorch may be holding freed memory.
    Allocations come before the launch, and a call run again rewrites every output."""
    try:
        call()
    except RuntimeError as e:
        if "out of memory" not in str(e):
            raise
        torch.cuda.empty_cache()
        call()


def _batch_first(core: Core, in_dims: Sequence[Optional[int]], args: Sequence[torch.Tensor]
                 ) -> List[torch.Tensor]:
    """For a vmap rule: moves each vmapped dimension to the front, as a batch dimension
    of the reduction that the others broadcast over (they align on the right)."""
    base = [1 if decl is not None and decl[0] == "Pm" else 2 for decl in core.args]
    lead = max(a.ndim - (d is not None) - b for a, d, b in zip(args, in_dims, base))
    out = []
    for a, d, b in zip(args, in_dims, base):
        if d is None:
            out.append(a)
            continue
        a = a.movedim(d, 0)
        pad = lead - (a.ndim - 1 - b)
        out.append(a.reshape((a.shape[0],) + (1,) * pad + tuple(a.shape[1:])))
    return out


class _Reduce(torch.autograd.Function):
    """A reduction with values (``Sum``, ``LogSumExp``, ``SumSoftMaxWeight``), its backward
    and forward-mode rules being reductions through this same Function."""

    @staticmethod
    def forward(core: Core, opts: Options, *args: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _engine(core, args, opts)[0]

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
        core, opts, *args = inputs
        ctx.core, ctx.opts = core, opts
        ctx.save_for_backward(*args, output)
        ctx.save_for_forward(*args, output)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        *args, out = ctx.saved_tensors
        return (None, None, *_vjp(ctx.core, ctx.opts, args, out, g, ctx.needs_input_grad[2:]))

    @staticmethod
    def jvp(ctx: Any, *tangents: Optional[torch.Tensor]) -> torch.Tensor:
        *args, out = ctx.saved_tensors
        ts = tangents[2:]
        ks = tuple(k for k, t in enumerate(ts) if t is not None)
        if not ks:
            return torch.zeros_like(out)
        jcore, extras = ctx.core.jvp(ks)
        extra = [out for _ in extras]  # only "output"
        return _Reduce.apply(jcore, ctx.opts, *args, *[ts[k] for k in ks], *extra)

    @staticmethod
    def vmap(info: Any, in_dims: Tuple[Optional[int], ...], core: Core, opts: Options,
             *args: torch.Tensor) -> Tuple[torch.Tensor, int]:
        return _Reduce.apply(core, opts, *_batch_first(core, in_dims[2:], args)), 0


def _reduce(core: Core, opts: Options, args: Sequence[torch.Tensor]) -> torch.Tensor:
    """``_Reduce.apply``, or the engine call alone where autograd would record nothing:
    a first-order backward runs with grad mode off, and the Function's bookkeeping costs
    more than a small reduction."""
    if _differentiable(args):
        return _Reduce.apply(core, opts, *args)
    return _engine(core, args, opts)[0]


#: A reduction's values from its core, options and arguments: :func:`_reduce`, or the
#: ``keops::values`` operator under ``torch.compile``.
_Reducer = Callable[[Core, Options, Sequence[torch.Tensor]], torch.Tensor]


def _vjp(core: Core, opts: Options, args: Sequence[torch.Tensor], out: Optional[torch.Tensor],
         g: torch.Tensor, needs: Sequence[bool], reduce: _Reducer = _reduce
         ) -> List[Optional[torch.Tensor]]:
    """The gradients of ``<g, core(args)>`` with respect to the arguments that ``needs``
    marks (``out``: the forward output, for the rules that read it), each a reduction
    through ``reduce`` (:class:`_Reduce`, or a traced operator), so differentiable
    again."""
    grads: List[Optional[torch.Tensor]] = []
    lse: List[torch.Tensor] = []  # log sum exp F, computed once if a rule needs it
    for k, a in enumerate(args):
        if not needs[k]:
            grads.append(None)
            continue
        spec = core.grad(k)
        if spec is None:
            grads.append(torch.zeros_like(a))
            continue
        gcore, extras = spec
        extra = []
        for x in extras:
            if x == "output_grad":
                extra.append(g)
            elif x == "output":
                extra.append(out)
            else:  # "logsumexp"
                if not lse:
                    lse.append(reduce(core.variant("LogSumExp"), opts, args))
                extra.append(lse[0])
        r = reduce(gcore, opts, [*args, *extra])
        if gcore.reduction == "SumSoftMaxWeight" and opts.ranges is not None:
            r = _zero_empty_rows(r, gcore, opts)
        if core.args[k][0] == "Pm":  # type: ignore[index]
            r = r.sum(-2)
        grads.append(r.sum_to_size(a.shape))
    return grads


def _zero_empty_rows(r: torch.Tensor, core: Core, opts: Options) -> torch.Tensor:
    """A soft-max average over no pair is 0/0: in a gradient, such rows (in no block of
    the ranges) contribute 0."""
    n_out = r.shape[-2]
    nbatch = r[..., 0, 0].numel()
    empty = torch.from_numpy(opts.ranges.empty_rows(core.axis, n_out, nbatch))
    return r.masked_fill(empty.reshape(r.shape[:-1] + (1,)).to(r.device), 0.0)


class _Indices(torch.autograd.Function):
    """A reduction's indices (``ArgMin``, ``ArgKMin``, the selection of ``Min``, ...):
    piecewise constant, so not differentiable."""

    @staticmethod
    def forward(core: Core, opts: Options, *args: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _engine(core, args, opts)[1]

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.n = len(inputs)
        ctx.mark_non_differentiable(output)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Tuple[None, ...]:  # type: ignore[override]
        return (None,) * ctx.n

    @staticmethod
    def jvp(ctx: Any, *tangents: Optional[torch.Tensor]) -> None:
        return None

    @staticmethod
    def vmap(info: Any, in_dims: Tuple[Optional[int], ...], core: Core, opts: Options,
             *args: torch.Tensor) -> Tuple[torch.Tensor, int]:
        return _Indices.apply(core, opts, *_batch_first(core, in_dims[2:], args)), 0


def _at_selected(core: Core, opts: Options, args: Sequence[torch.Tensor],
                 idx: torch.Tensor, reduce: _Reducer = _reduce) -> torch.Tensor:
    """The formula at the pairs that ``idx`` selects, as values shaped like ``idx``:
    reduced-side arguments gathered at the indices, output-side ones repeated."""
    d = core.dim
    per_slot = core.reduction in ("KMin", "KMin_ArgKMin") and d > 1
    tail = 3 if per_slot else 2
    batch = tuple(idx.shape[:-tail])
    n = idx.shape[-tail]
    s = 1
    for t in idx.shape[-tail + 1:]:
        s *= t
    # Rows in no block of the ranges select nothing (index -1): read row 0 there, and
    # put the empty reduction's value (+-inf, no gradient) back below.
    empty = idx < 0
    flat = idx.clamp_min(0).reshape(batch + (n * s,))
    moved = []
    for a, decl in zip(args, core.args):
        cat = decl[0] if decl is not None else "Pm"
        if cat == core.red_cat:
            full = a.expand(batch + tuple(a.shape[-2:]))
            ix = flat.unsqueeze(-1).expand(batch + (n * s, a.shape[-1]))
            moved.append(torch.gather(full, -2, ix))
        elif cat == core.out_cat:
            moved.append(a.repeat_interleave(s, dim=-2))
        else:
            moved.append(a)
    # The pointwise evaluation is dense: pairs (row, selected row), no ranges.
    dense = dataclasses.replace(opts, ranges=None)
    at = reduce(core.pointwise(), dense, moved).reshape(batch + (n, s, d))
    coord = (torch.arange(s, device=at.device) % d).reshape((1,) * (len(batch) + 1) + (s, 1))
    vals = at.gather(-1, coord.expand(batch + (n, s, 1))).squeeze(-1).reshape(idx.shape)
    # Unconditional (no data-dependent branch, so vmap works).
    fill = -math.inf if core.reduction in ("Max", "Max_ArgMax") else math.inf
    return vals.masked_fill(empty, fill)


def _traced() -> Any:
    """The ``torch.compile`` support (``_compile.py``) while Dynamo traces, else
    ``None``: imported then (by Dynamo, which imports a module as it traces), since it
    imports Dynamo, which costs a second that eager use never pays."""
    if not dynamo_tracing():
        return None
    from . import _compile
    return _compile


def _transformed() -> bool:
    """Whether a ``torch.func`` transform or a forward-AD level is on."""
    return torch._C._are_functorch_transforms_active() or fwAD._current_level >= 0


def _differentiable(args: Sequence[torch.Tensor]) -> bool:
    """Whether a result may be differentiated: autograd recording with an input that
    requires grad, an open forward-AD level, or a ``torch.func`` transform."""
    if _transformed():
        return True
    return torch.is_grad_enabled() and any(a.requires_grad for a in args)


def _widened(args: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], Optional[torch.dtype]]:
    """Checked arguments, float16/bfloat16 ones as float32 (differentiably: gradients come
    back in the half precision), and that half precision, ``None`` for float32/float64."""
    args = list(args)
    _check(args)
    if args and args[0].dtype in _HALVES:
        return [a.float() for a in args], args[0].dtype
    return args, None


def _run(core: Core, args: Sequence[torch.Tensor], opts: Options) -> Tuple[Any, Any]:
    """Runs a reduction on tensors, differentiably; returns ``(values, indices)``
    (values in the arguments' dtype)."""
    args, half = _widened(args)
    if half is not None:
        values, indices = _run(core, args, opts)
        return (None if values is None else values.to(half)), indices
    if not _differentiable(args):
        # Nothing to record: one engine call, no autograd bookkeeping.
        return _engine(core, args, opts)
    red = core.reduction
    if red in SMOOTH:
        return _Reduce.apply(core, opts, *args), None
    if red in ARG:
        return None, _Indices.apply(core, opts, *args)
    idx = _Indices.apply(core.variant(SELECT[red], core.k), opts, *args)
    values = _at_selected(core, opts, args, idx)
    return values, (idx if "Arg" in red else None)


class Genred(GenredBase):
    __doc__ = GenredBase.__doc__

    def __call__(
        self,
        *args: torch.Tensor,
        backend: str = "auto",
        device_id: DeviceId = -1,
        ranges: Optional[Any] = None,
        out: Optional[torch.Tensor] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Runs the reduction on tensors (float32 or float64, all alike, on one device),
        differentiably; float16 and bfloat16 ones are computed in float32 and the values
        rounded back.

        ``Vi``/``Vj`` arguments have shape ``(..., n, d)``, parameters ``(..., d)``;
        leading batch dimensions broadcast. Returns the values, the indices (int64), or
        both as a tuple (``Min_ArgMin``, ``KMin_ArgKMin``), on the arguments' device.
        CUDA tensors are reduced in place on their GPU, on PyTorch's current stream
        (``backend="GPU"``, or ``"auto"`` where it picks the GPU); ``device_id="all"``
        or a list of GPU numbers splits one reduction over several GPUs.
        """
        opts = self._options(backend, ranges, device_id)
        traced = _traced()
        if traced is not None and traced.active(opts):
            values, indices = traced.run(self.desc, traced.options_desc(opts), list(args))
        else:
            values, indices = _run(self.core, args, opts)
        return self._result(values, indices, out)


LogSumExp, generic_sum, generic_logsumexp, generic_argmin, generic_argkmin = \
    reduction_shortcuts(Genred)


class _Solve(torch.autograd.Function):
    """A kernel solve ``a = (K + alpha I)^-1 b``. Its backward is a second solve (``K`` is
    symmetric): ``db = (K + alpha I)^-1 g``, and for the other arguments the gradient of
    ``-<db, K a>`` with ``a`` fixed, through the reductions' own rules."""

    @staticmethod
    def forward(core: Core, var: int, params: SolveParams, opts: Options,  # type: ignore[override]
                *args: torch.Tensor) -> torch.Tensor:
        return _solve_host(core, var, args, params, opts)

    @staticmethod
    def setup_context(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
        core, var, params, opts, *args = inputs
        ctx.core, ctx.var, ctx.params, ctx.opts = core, var, params, opts
        ctx.save_for_backward(*args, output)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        *args, a = ctx.saved_tensors
        grads = _solve_vjp(ctx.core, ctx.var, ctx.opts, args, a, g, ctx.needs_input_grad[4:],
                           lambda gargs: _Solve.apply(ctx.core, ctx.var, ctx.params, ctx.opts,
                                                      *gargs))
        return (None, None, None, None, *grads)


def _solve_vjp(core: Core, var: int, opts: Options, args: Sequence[torch.Tensor],
               a: torch.Tensor, g: torch.Tensor, needs: Sequence[bool],
               solve: Callable[[List[torch.Tensor]], torch.Tensor], reduce: _Reducer = _reduce
               ) -> List[Optional[torch.Tensor]]:
    """The gradients of ``<g, a>`` for the solution ``a`` of a solve on ``args``, with
    respect to the arguments that ``needs`` marks: ``solve`` (the same solve on other
    arguments, here ``g`` in ``b``'s place) gives ``db``, and the reductions' rules
    through ``reduce`` the rest."""
    gargs = list(args)
    gargs[var] = g.contiguous()
    db = solve(gargs)
    others = [n and k != var for k, n in enumerate(needs)]
    fargs = list(args)
    fargs[var] = a
    grads = _vjp(core, opts, fargs, None, -db, others, reduce) if any(others) else \
        [None] * len(args)
    if needs[var]:
        grads[var] = db.sum_to_size(args[var].shape)
    return grads


# torch binds the arguments of every ``apply`` of a Function that has a ``setup_context``
# with ``inspect.signature(forward)``: stored, the signature is not rebuilt each call.
for _fn in (_Reduce, _Indices, _Solve):
    _fn.forward.__signature__ = inspect.signature(_fn.forward)  # type: ignore[attr-defined]


def _solve_host(core: Core, var: int, args: Sequence[torch.Tensor], params: SolveParams,
                opts: Options) -> torch.Tensor:
    """The conjugate-gradient loop runs in Rust on host vectors (each iteration's
    reduction on the engine the options pick): CUDA tensors go through host copies and
    the solution comes back to their device."""
    x = torch.from_numpy(run_solve(core, var, [_numpy(a) for a in args], params, opts))
    return x.to(args[0].device) if args else x


def _solve(core: Core, var: int, args: Sequence[torch.Tensor], params: SolveParams,
           opts: Options) -> torch.Tensor:
    args, half = _widened(args)
    if half is not None:
        return _solve(core, var, args, params, opts).to(half)
    if not _differentiable(args):
        return _solve_host(core, var, args, params, opts)
    return _Solve.apply(core, var, params, opts, *args)


class KernelSolve(KernelSolveBase):
    __doc__ = KernelSolveBase.__doc__
    # On CPU tensors, differentiably with respect to every argument.
    _solve = staticmethod(_solve)

    # Under torch.compile, before the Rust parser (which Dynamo cannot trace): traced as
    # an operator, or else run eagerly behind a graph break. LazyTensor solves come here.
    @classmethod
    def _solve_spec(cls, spec: CoreSpec, var: int, args: List[torch.Tensor],
                    params: SolveParams, opts: Options) -> torch.Tensor:
        traced = _traced()
        if traced is None:
            return super()._solve_spec(spec, var, args, params, opts)
        if traced.active(opts, params):
            return traced.solve(spec, var, params, opts, args)
        return traced.eagerly(super()._solve_spec, spec, var, args, params, opts)

    def __init__(self, formula: str, aliases: Sequence[str], varinvalias: str, axis: int = 0,
                 dtype_acc: str = "auto", use_double_acc: bool = False,
                 sum_scheme: str = "auto", enable_chunks: bool = True,
                 rec_multVar_highdim: Any = None, dtype: Optional[str] = None,
                 cuda_type: Optional[str] = None, use_fast_math: bool = True) -> None:
        # pykeops.torch.KernelSolve's order of arguments, which differs from NumPy's.
        super().__init__(formula, aliases, varinvalias, axis, dtype=dtype,
                         dtype_acc=dtype_acc, use_double_acc=use_double_acc,
                         sum_scheme=sum_scheme, enable_chunks=enable_chunks,
                         rec_multVar_highdim=rec_multVar_highdim,
                         use_fast_math=use_fast_math, cuda_type=cuda_type)


#: What a torch function ``f(t, K)`` of a tensor ``t`` and a LazyTensor ``K`` is, as a
#: method of ``K``.
_AS_LAZY = {
    # t op K: Tensor.__op__, or Tensor.op (what Dynamo calls).
    "__add__": "__radd__", "add": "__radd__",
    "__sub__": "__rsub__", "sub": "__rsub__",
    "__mul__": "__rmul__", "mul": "__rmul__",
    "__truediv__": "__rtruediv__", "div": "__rtruediv__", "true_divide": "__rtruediv__",
    "__lt__": "__gt__", "lt": "__gt__", "__gt__": "__lt__", "gt": "__lt__",
    "__le__": "__ge__", "le": "__ge__", "__ge__": "__le__", "ge": "__le__",
    "__eq__": "__eq__", "eq": "__eq__", "__ne__": "__ne__", "ne": "__ne__",
    # K op t: Tensor.__rop__.
    "__radd__": "__add__", "__rsub__": "__sub__", "__rmul__": "__mul__",
    "__rtruediv__": "__truediv__", "__rdiv__": "__truediv__", "__rpow__": "__pow__",
    "__rmatmul__": "__matmul__",
}
#: The same by function (while Dynamo traces, the names of ``Tensor``'s Python-defined
#: operators read as their wrapper's, "wrapped").
_AS_LAZY_BY_FUNCTION = tuple((getattr(torch.Tensor, name), method)
                             for name, method in _AS_LAZY.items() if hasattr(torch.Tensor, name))


class LazyTensor(GenericLazyTensor):
    __doc__ = GenericLazyTensor.__doc__

    @classmethod
    def _as_array(cls, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"LazyTensor: expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in _FLOATS + _HALVES:
            raise TypeError("LazyTensor: expected a float32, float64, float16 or bfloat16 "
                            f"tensor, got {x.dtype}")
        return x

    _run = staticmethod(_run)
    _Genred = Genred
    _KernelSolve = KernelSolve

    # Under torch.compile, before the Rust parser (which Dynamo cannot trace): traced as
    # operators, or else run eagerly behind a graph break.
    @classmethod
    def _run_spec(cls, spec: Tuple[Any, ...], arrays: List[Any], opts: Options
                  ) -> Tuple[Any, Any]:
        traced = _traced()
        if traced is None:
            return super()._run_spec(spec, arrays, opts)
        if traced.active(opts):
            return traced.run((spec,), traced.options_desc(opts), arrays)
        return traced.eagerly(super()._run_spec, spec, arrays, opts)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: Optional[Dict[str, Any]] = None) -> Any:
        """An operator between a tensor ``t`` and a LazyTensor ``K`` that torch hands
        over (``t * K``; under ``torch.compile`` also ``K * t``, ``K @ t``: Dynamo passes
        every operator with a tensor operand to ``Tensor``'s method, the tensor first):
        the LazyTensor's own operator. Other torch functions are not defined on
        LazyTensors.

        Dynamo hands ``K @ t`` over as ``matmul(t, K)``, like ``t @ K``: while it
        traces, ``matmul(t, K)`` is read as ``K @ t`` (``t @ K`` is no operation of a
        LazyTensor, an error in eager mode)."""
        if kwargs or len(args) != 2 or not isinstance(args[1], GenericLazyTensor) \
                or isinstance(args[0], GenericLazyTensor):
            return NotImplemented
        name = getattr(func, "__name__", "")
        method = "__matmul__" if name == "matmul" and dynamo_tracing() \
            else _AS_LAZY.get(name)
        for f, m in _AS_LAZY_BY_FUNCTION:
            if func is f:
                method = m
        op = None if method is None else getattr(args[1], method, None)
        return NotImplemented if op is None else op(args[0])

    @staticmethod
    def _complex_as_real(x: Any) -> Optional[torch.Tensor]:
        if not (isinstance(x, torch.Tensor) and x.is_complex()):
            return None
        if x.dtype not in (torch.complex64, torch.complex128):
            raise TypeError(f"LazyTensor: expected a complex64 or complex128 tensor, got {x.dtype}")
        r = torch.view_as_real(x.resolve_conj())
        return r.reshape(tuple(x.shape[:-1]) + (2 * x.shape[-1],)) if x.ndim else r.reshape(2)

    @staticmethod
    def _real_as_complex(a: torch.Tensor) -> torch.Tensor:
        pairs = a.reshape(tuple(a.shape[:-1]) + (a.shape[-1] // 2, 2)).contiguous()
        return torch.view_as_complex(pairs)

    @staticmethod
    def _repeat_rows(a: torch.Tensor, times: int, interleave: bool) -> torch.Tensor:
        if interleave:
            return a.repeat_interleave(times, dim=-2)
        return a.repeat(*([1] * (a.ndim - 2)), times, 1)


Vi, Vj, Pm = variable_constructors(LazyTensor)
ComplexLazyTensor = complex_class(LazyTensor)

# Last: the operators call this module's rules.
from . import _ops  # noqa: E402,F401  (registers them)
