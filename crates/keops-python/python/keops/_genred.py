"""What the NumPy and PyTorch front ends share: compiled reductions and pykeops' ``Genred``.

:class:`Core` wraps the Rust reduction (``keops._keops.Genred``) together with the
reductions derived from it (gradients, forward-mode derivatives, variants), each built
once. :class:`GenredBase` holds pykeops' ``Genred`` constructor, options and pickling;
the subclasses only convert arrays and call.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

from . import _keops
from ._cluster import as_ranges

#: Reductions whose values are differentiated as reductions (the rest: at the selected
#: pairs, or not at all).
SMOOTH = ("Sum", "LogSumExp", "SumSoftMaxWeight")
#: Reductions that return indices only.
ARG = ("ArgMin", "ArgMax", "ArgKMin")
#: Reductions that return values picked at some pairs, and the reduction that picks them.
SELECT = {
    "Min": "Min_ArgMin",
    "Max": "Max_ArgMax",
    "KMin": "KMin_ArgKMin",
    "Min_ArgMin": "Min_ArgMin",
    "Max_ArgMax": "Max_ArgMax",
    "KMin_ArgKMin": "KMin_ArgKMin",
}
K_REDUCTIONS = ("KMin", "ArgKMin", "KMin_ArgKMin")
BACKENDS = ("auto", "CPU", "GPU", "GPU_1D", "GPU_2D")


@dataclass(frozen=True)
class Options:
    """Options of a reduction call (pykeops' names)."""

    dtype_acc: str = "auto"
    sum_scheme: str = "auto"
    backend: str = "auto"
    device_id: int = 0
    #: Block-sparse mode: a checked ``keops._keops.Ranges`` (see ``as_ranges``).
    ranges: Any = None
    #: One reduction over several GPUs: ``"all"`` or a tuple of GPU numbers (``None``:
    #: one GPU, ``device_id``).
    multi_gpu: Union[None, str, Tuple[int, ...]] = None
    #: pykeops' ``use_fast_math``, on by default: float32 subnormals flushed to zero on
    #: both engines, and NVRTC's ``--use_fast_math`` on the GPU.
    fast_math: bool = True

    def kwargs(self) -> Dict[str, Any]:
        """As keyword arguments of the Rust call."""
        return {"dtype_acc": self.dtype_acc, "sum_scheme": self.sum_scheme,
                "backend": self.backend, "device_id": self.device_id,
                "ranges": self.ranges, "fast_math": self.fast_math,
                "multi_gpu": None if self.multi_gpu is None else
                ("all" if self.multi_gpu == "all" else list(self.multi_gpu))}

    @property
    def on_gpu(self) -> bool:
        """Whether the reduction runs on a GPU: asked for, or ``"auto"`` where it picks
        one."""
        if self.backend == "auto":
            return bool(_keops.auto_uses_gpu())
        return self.backend != "CPU"


#: What ``device_id`` accepts: a GPU number (-1: the default, 0), or, to split one
#: reduction over several GPUs, ``"all"`` or a sequence of GPU numbers.
DeviceId = Union[int, str, Sequence[int]]


def make_options(dtype_acc: str = "auto", use_double_acc: bool = False,
                 sum_scheme: str = "auto", backend: str = "auto",
                 device_id: DeviceId = -1, ranges: Any = None,
                 use_fast_math: bool = True) -> Options:
    """Checks and normalises pykeops' options (``device_id=-1``: the default GPU, 0;
    ``"all"`` or a list of GPU numbers: the reduction split over those GPUs;
    ``ranges``: pykeops' 6-tuple, checked here; ``use_fast_math``: float32 subnormals
    flushed to zero, and GPU float32 math by the hardware's approximations, pykeops'
    default)."""
    if (ranges is None and type(device_id) is int  # not a bool, a GPU list: checked below
            and all(isinstance(v, str) for v in (dtype_acc, sum_scheme, backend))
            and not dynamo_tracing()):
        return _plain_options(dtype_acc, use_double_acc, sum_scheme, backend, device_id,
                              use_fast_math)
    return _checked_options(dtype_acc, use_double_acc, sum_scheme, backend, device_id,
                            ranges, use_fast_math)


def dynamo_tracing() -> bool:
    """Whether ``torch.compile`` is tracing this call (Dynamo would trace through an
    ``lru_cache``, warning that it does)."""
    compiler = getattr(sys.modules.get("torch"), "compiler", None)
    return compiler is not None and getattr(compiler, "is_compiling", lambda: False)()


@lru_cache(maxsize=64)
def _plain_options(dtype_acc: str, use_double_acc: bool, sum_scheme: str, backend: str,
                   device_id: int, use_fast_math: bool) -> Options:
    """``make_options`` without ranges, on one GPU: made once per distinct call (options
    are immutable, and most calls pass the defaults)."""
    return _checked_options(dtype_acc, use_double_acc, sum_scheme, backend, device_id,
                            None, use_fast_math)


def _checked_options(dtype_acc: str, use_double_acc: bool, sum_scheme: str, backend: str,
                     device_id: DeviceId, ranges: Any, use_fast_math: bool) -> Options:
    """What ``make_options`` checks and builds."""
    if backend not in BACKENDS:
        raise ValueError(f"invalid backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if dtype_acc not in ("auto", "float16", "float32", "float64"):
        raise ValueError(f"invalid dtype_acc {dtype_acc!r}: expected 'auto', 'float16', 'float32' "
                         "or 'float64'")
    multi: Union[None, str, Tuple[int, ...]] = None
    if isinstance(device_id, str) or not isinstance(device_id, int):
        ids = device_id
        if ids != "all" and not (isinstance(ids, (list, tuple)) and len(ids) > 0 and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
            raise ValueError(f"invalid device_id {device_id!r}: expected -1 (default), a GPU "
                             "number, or \"all\" or a list of GPU numbers to split the "
                             "reduction over several GPUs")
        multi = "all" if ids == "all" else tuple(ids)  # type: ignore[arg-type]
        device_id = 0
    elif isinstance(device_id, bool) or device_id < -1:
        raise ValueError(f"invalid device_id {device_id!r}: expected -1 (default) or a GPU number")
    return Options("float64" if use_double_acc else dtype_acc, sum_scheme, backend,
                   max(int(device_id), 0), as_ranges(ranges), multi, bool(use_fast_math))


class Core:
    """A compiled reduction and, built on demand and kept, the reductions derived from it."""

    def __init__(self, g: Any, desc: "CoreDesc") -> None:
        self.g = g
        #: What rebuilds this reduction in any process: ``compile_core``'s arguments,
        #: then the derivations from there (see :func:`core_of`).
        self.desc = desc
        self.reduction: str = g.reduction
        self.axis: int = g.axis
        self.k: Optional[int] = g.k
        #: The dimension of the formula F.
        self.dim: int = g.dim
        #: One entry per argument: ``("Vi" | "Vj" | "Pm", dim)`` or ``None``.
        self.args: List[Optional[Tuple[str, int]]] = g.args
        self._grads: Dict[int, Optional[Tuple["Core", List[str]]]] = {}
        self._jvps: Dict[Tuple[int, ...], Tuple["Core", List[str]]] = {}
        self._variants: Dict[Tuple[str, Optional[int]], "Core"] = {}
        self._pointwise: Optional["Core"] = None

    @property
    def out_cat(self) -> str:
        """The category of the output rows."""
        return "Vi" if self.axis == 1 else "Vj"

    @property
    def red_cat(self) -> str:
        """The category of the reduced rows."""
        return "Vj" if self.axis == 1 else "Vi"

    def __call__(self, arrays: Sequence[Any], opts: Options) -> Tuple[Any, Any]:
        """Runs on C-contiguous NumPy arrays; returns ``(values, indices)``."""
        return self.g(list(arrays), **opts.kwargs())

    def call_device(self, ptrs: Sequence[int], shapes: Sequence[Tuple[int, ...]],
                    strides: Sequence[Tuple[int, ...]], dtype: str, outputs: Tuple[int, int],
                    stream: int, device: int, opts: Options) -> None:
        """Queues the reduction on arrays in GPU memory (see ``_keops.Genred.call_device``):
        on ``stream`` of GPU ``device``, into the outputs at addresses ``outputs``."""
        if opts.multi_gpu is not None:
            raise ValueError("device_id: a reduction split over several GPUs takes CPU "
                             "tensors (tensors already on a GPU are reduced on that GPU)")
        self.g.call_device(list(ptrs), [list(s) for s in shapes], [list(s) for s in strides],
                           dtype, outputs[0], outputs[1], stream,
                           dtype_acc=opts.dtype_acc, sum_scheme=opts.sum_scheme,
                           backend="GPU" if opts.backend == "auto" else opts.backend,
                           device_id=device, ranges=opts.ranges, fast_math=opts.fast_math)

    def output_shapes(self, shapes: Sequence[Tuple[int, ...]]
                      ) -> Tuple[Optional[List[int]], Optional[List[int]]]:
        """The shapes of the values and indices for arguments of ``shapes`` (``None``:
        an output this reduction does not produce)."""
        return self.g.output_shapes([list(s) for s in shapes])

    def grad(self, k: int) -> Optional[Tuple["Core", List[str]]]:
        """The gradient reduction w.r.t. argument ``k`` and its extra inputs (see Rust)."""
        if k not in self._grads:
            r = self.g.grad(k)
            self._grads[k] = None if r is None else (
                Core(r[0], self.desc + (("grad", k),)), list(r[1]))
        return self._grads[k]

    def jvp(self, ks: Tuple[int, ...]) -> Tuple["Core", List[str]]:
        """The forward-mode reduction for tangents of arguments ``ks``, and its extras."""
        if ks not in self._jvps:
            g, extras = self.g.jvp(list(ks))
            self._jvps[ks] = (Core(g, self.desc + (("jvp", ks),)), list(extras))
        return self._jvps[ks]

    def variant(self, reduction: str, k: Optional[int] = None) -> "Core":
        """The same formula with another reduction."""
        key = (reduction, k)
        if key not in self._variants:
            self._variants[key] = Core(self.g.with_reduction(reduction, k),
                                       self.desc + (("variant", key),))
        return self._variants[key]

    def pointwise(self) -> "Core":
        """``F`` row by row: reduced-side variables read on the output side."""
        if self._pointwise is None:
            self._pointwise = Core(self.g.pointwise(), self.desc + (("pointwise", None),))
        return self._pointwise


#: ``compile_core``'s arguments: formula, aliases, reduction, axis, ``K``, ``formula2``.
CoreSpec = Tuple[str, Tuple[str, ...], str, int, Optional[int], Optional[str]]

#: How a :class:`Core` is made: ``compile_core``'s arguments, then its derivations
#: (``("grad", k)``, ``("jvp", ks)``, ``("variant", (reduction, k))``,
#: ``("pointwise", None)``), constants only: the same in every process.
CoreDesc = Tuple[Any, ...]


def core_of(desc: CoreDesc) -> Core:
    """The reduction that ``desc`` describes (``Core.desc``), built or found again."""
    core = compile_core(*desc[0])
    for step, arg in desc[1:]:
        if step == "grad":
            spec = core.grad(arg)
            if spec is None:
                raise ValueError(f"{desc!r}: argument {arg} has no gradient reduction")
            core = spec[0]
        elif step == "jvp":
            core = core.jvp(tuple(arg))[0]
        elif step == "variant":
            core = core.variant(*arg)
        elif step == "pointwise":
            core = core.pointwise()
        else:
            raise ValueError(f"{desc!r}: unknown derivation {step!r}")
    return core


@lru_cache(maxsize=512)
def compile_core(formula: str, aliases: Tuple[str, ...], reduction: str, axis: int,
                 k: Optional[int], formula2: Optional[str]) -> Core:
    """Parses and plans a reduction once per distinct description."""
    return Core(_keops.Genred(formula, list(aliases), reduction, axis, k, formula2),
                ((formula, aliases, reduction, axis, k, formula2),))


class GenredBase:
    """pykeops' ``Genred``: a generic reduction of a symbolic matrix.

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
        dtype_acc: ``"auto"``, ``"float32"`` or ``"float64"`` (in-tile sums;
            ``"float16"`` is ``"auto"``: half precision is computed in float32).
        use_double_acc: same as ``dtype_acc="float64"``.
        sum_scheme: ``"auto"``, ``"direct_sum"``, ``"block_sum"``, ``"kahan_scheme"``.
        use_fast_math: on by default, as in pykeops. Float32 subnormals (below
            ``1.2e-38``) are flushed to zero on both engines: on the CPU this avoids the
            processor's slow path for them (a float32 Gaussian sum of far-apart points
            runs several times faster); on the GPU, NVRTC's ``--use_fast_math`` also
            computes float32 ``exp``/``log``/``sin``/``cos``/division/``sqrt`` by the
            hardware's approximations, and Gaussian/Laplacian exponentials are computed
            as ``exp2`` of distances between points scaled (and centered on a point of
            each thread block) as they are loaded: for data spread over ``R`` kernel
            widths (``1/sqrt(c)`` for ``Exp(-c*SqDist(x,y))``), ``exp(-u)`` gets a
            relative error of about ``2*sqrt(u)*R`` float32 epsilons. ``False``: IEEE
            float32 everywhere. Float64 is never flushed.
        enable_chunks, rec_multVar_highdim, cuda_type: accepted for compatibility.

    Raises:
        ValueError: a formula, alias or option error (the message names the position
            in the formula, or the option).

    Instances pickle (the formula is parsed again when loaded).
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
        use_fast_math: bool = True,
    ) -> None:
        if reduction_op in K_REDUCTIONS and opt_arg is None:
            raise ValueError(f"reduction {reduction_op} needs opt_arg = K")
        k = int(opt_arg) if reduction_op in K_REDUCTIONS and opt_arg is not None else None
        self._init = dict(formula=formula, aliases=list(aliases), reduction_op=reduction_op,
                          axis=int(axis), dtype=dtype, opt_arg=opt_arg, formula2=formula2,
                          dtype_acc=dtype_acc, use_double_acc=use_double_acc,
                          sum_scheme=sum_scheme, use_fast_math=use_fast_math)
        #: ``core``'s description (see :func:`core_of`).
        self.desc: CoreDesc = ((formula, tuple(aliases), reduction_op, int(axis), k, formula2),)
        # Parsed now, but while Dynamo traces (a Genred made inside a compiled function):
        # it cannot trace the parser, and a traced call needs only the description.
        self._core = None if dynamo_tracing() else compile_core(*self.desc[0])
        self.reduction_op = reduction_op
        self.axis = int(axis)
        self.opts = make_options(dtype_acc, use_double_acc, sum_scheme,
                                 use_fast_math=use_fast_math)

    @property
    def core(self) -> Core:
        """The compiled reduction."""
        if self._core is None:
            self._core = compile_core(*self.desc[0])
        return self._core

    @property
    def formula(self) -> str:
        """The parsed formula, printed in KeOps syntax."""
        return self.core.g.formula

    def _options(self, backend: str, ranges: Any, device_id: DeviceId = -1) -> Options:
        return make_options(self.opts.dtype_acc, False, self.opts.sum_scheme, backend,
                            device_id, ranges, self.opts.fast_math)

    @staticmethod
    def _result(values: Any, indices: Any, out: Any) -> Any:
        """pykeops' return convention: both outputs as a tuple, else the one there is,
        written into ``out`` when given."""
        if values is not None and indices is not None:
            return values, indices
        result = values if values is not None else indices
        if out is not None:
            # Checked: assigning would cast (float to int, float64 to float32) silently.
            if out.dtype != result.dtype:
                raise TypeError(f"out: expected dtype {result.dtype} (the result's), got "
                                f"{out.dtype}")
            if tuple(out.shape) != tuple(result.shape):
                raise ValueError(f"out: expected shape {tuple(result.shape)}, got "
                                 f"{tuple(out.shape)}")
            out[...] = result
            return out
        return result

    def __getstate__(self) -> Dict[str, Any]:
        return dict(self._init)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return (f"{type(self).__module__}.{type(self).__name__}({self.formula!r}, "
                f"reduction_op={self.reduction_op!r}, axis={self.axis})")


T = TypeVar("T")


def parsed(f: Callable[..., T], *args: Any) -> T:
    """``f(*args)``, for ``f`` a pure function of constants that reads declarations with
    the Rust parser. ``keops.torch._compile`` marks :func:`outcome` as constant: under
    ``torch.compile``, Dynamo calls it rather than trace into the parser (which it
    cannot), and bad input raises its ``ValueError`` here, in traced code, as in eager
    mode (raised in a constant call, it would reach the user wrapped in a Dynamo error)."""
    if dynamo_tracing():
        # Imported (for real, by Dynamo) only now: it imports Dynamo, a second that eager
        # use never pays.
        from .torch import _compile  # noqa: F401
    ok, value = outcome(f, *args)
    if not ok:
        raise ValueError(value)
    return value


def outcome(f: Callable[..., T], *args: Any) -> Tuple[bool, Any]:
    """``(True, f(*args))``, or ``(False, message)`` where ``f`` raises ``ValueError``."""
    try:
        return True, f(*args)
    except ValueError as e:
        return False, str(e)


def output_alias(output: str) -> Tuple[int, int]:
    """The reduction axis and the output dimension that the output alias of pykeops'
    ``generic_*`` declares (``"a = Vi(3)"``: axis 1, dimension 3), read by the Rust alias
    parser (a bare ``"Vi(3)"`` too)."""
    cat, dim = _keops.alias_declaration(output if "=" in output else f"out = {output}")
    if cat not in ("Vi", "Vj"):
        raise ValueError(f"output {output!r} must be declared as Vi(dim) or Vj(dim), "
                         "e.g. \"a = Vi(1)\"")
    return (1 if cat == "Vi" else 0), dim


def reduction_shortcuts(cls: Any) -> Tuple[Callable[..., Any], ...]:
    """pykeops' ``LogSumExp``, ``generic_sum``, ``generic_logsumexp``,
    ``generic_argmin`` and ``generic_argkmin`` for a front end's ``Genred`` class."""
    module = cls.__module__

    def LogSumExp(formula: str, aliases: List[str], axis: int = 0, **kwargs: Any) -> Any:
        """``Genred`` with the ``LogSumExp`` reduction."""
        return cls(formula, aliases, reduction_op="LogSumExp", axis=axis, **kwargs)

    def generic(reduction: str, name: str, doc: str) -> Callable[..., Any]:
        def f(formula: str, output: str, *aliases: str, **kwargs: Any) -> Any:
            axis, dim = parsed(output_alias, output)
            if reduction in K_REDUCTIONS:
                kwargs.setdefault("opt_arg", dim)  # K: the output's dimension
            return cls(formula, list(aliases), reduction_op=reduction, axis=axis, **kwargs)
        f.__name__ = f.__qualname__ = name
        f.__doc__ = doc
        return f

    LogSumExp.__module__ = module
    out = (LogSumExp,
           generic("Sum", "generic_sum",
                   "pykeops' ``generic_sum``: the output alias (``\"a = Vi(1)\"``) sets the axis."),
           generic("LogSumExp", "generic_logsumexp", "pykeops' ``generic_logsumexp``."),
           generic("ArgMin", "generic_argmin", "pykeops' ``generic_argmin``."),
           generic("ArgKMin", "generic_argkmin",
                   "pykeops' ``generic_argkmin``: ``K`` is the output's dimension "
                   "(``\"a = Vi(10)\"``: 10 neighbours)."))
    for f in out:
        f.__module__ = module
    return out
