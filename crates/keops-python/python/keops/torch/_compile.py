"""keops reductions under ``torch.compile``: PyTorch custom operators, no graph break.

Dynamo cannot trace into the Rust extension. Under ``torch.compile``, a reduction is
therefore handed to :func:`run`, which Dynamo does not trace (``nonstrict_trace``): it
runs once with fake tensors while the graph is built, and records the reduction as
one operator of the graph, ``keops::values`` (its values) or ``keops::indices`` (its
indices). Each is called with a *key*, a JSON text that describes the reduction whole
(``compile_core``'s arguments, the derivations made from it, the options), and the
argument tensors.

- The key is the same text in every process, so a graph that Inductor's on-disk caches
  or ``torch.export`` keep names its reduction, never a slot of this process.
- The operators' fake implementations give the output shapes, with the batch and row
  counts of dynamic shapes kept symbolic.
- ``keops::values``' autograd rule is the eager one (:func:`keops.torch._vjp`), built
  of these same operators, so AOTAutograd traces the backward reductions into the
  backward graph.

Block-sparse reductions (``ranges``) are not traced: Dynamo breaks the graph there and
runs them eagerly, as on PyTorch versions without ``torch.library.custom_op`` and
``torch._dynamo.nonstrict_trace`` (before 2.7).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as fwAD

from .. import _keops
from .._genred import ARG, SELECT, SMOOTH, Core, CoreDesc, Options, core_of
from .._solve import SolveParams

#: Whether this PyTorch can trace reductions (custom operators and ``nonstrict_trace``).
SUPPORTED = hasattr(torch.library, "custom_op") and hasattr(torch._dynamo, "nonstrict_trace")

#: Keys already met, and their reduction and options.
_KEYS: Dict[str, Tuple[Core, Options]] = {}

#: The fields of :class:`Options` that a key holds (``ranges`` is never traced).
OptionsDesc = Tuple[str, str, str, int, Any, bool]
#: The fields of :class:`SolveParams` that a traced solve reads.
SolveDesc = Tuple[float, float, Optional[int], Optional[str], int]


def active(opts: Options, params: Optional[SolveParams] = None) -> bool:
    """Whether a reduction with ``opts`` (a solve with ``params``) is to be traced as a
    custom operator: Dynamo is tracing, no ``torch.func`` transform or forward-mode AD
    is on (the operators have no forward-mode rule, and torch would take their tangents
    as zero), it is not block-sparse, and for a solve, nothing reads its progress
    (``verbose``, ``callback``, ``return_info``)."""
    if params is not None and (params.verbose or params.callback is not None
                               or params.return_info):
        return False
    return (SUPPORTED and opts.ranges is None and torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active()
            and fwAD._current_level < 0)


@torch.compiler.disable
def eagerly(f: Callable[..., Any], *args: Any) -> Any:
    """``f(*args)``, never traced: under ``torch.compile``, a graph break here rather
    than Dynamo tracing into the parser (through ``compile_core``'s cache, with a
    warning) to break the graph there."""
    return f(*args)


def options_desc(opts: Options) -> OptionsDesc:
    """``opts`` as constants (Dynamo passes them to :func:`run` as they are)."""
    return (opts.dtype_acc, opts.sum_scheme, opts.backend, opts.device_id, opts.multi_gpu,
            opts.fast_math)


def _options(o: OptionsDesc) -> Options:
    multi = o[4] if o[4] in (None, "all") else tuple(o[4])
    return Options(o[0], o[1], o[2], o[3], None, multi, o[5])


def key_of(core: Core, opts: Options) -> str:
    """The key of ``core`` run with ``opts``: JSON of their descriptions."""
    key = json.dumps([core.desc, options_desc(opts)])
    _KEYS.setdefault(key, (core, opts))
    return key


def lookup(key: str) -> Tuple[Core, Options]:
    """The reduction and options of ``key``, rebuilt from it when this process has not
    met it (a graph loaded from a cache)."""
    found = _KEYS.get(key)
    if found is None:
        try:
            desc, o = json.loads(key)
            found = (core_of(_tuples(desc)), _options(o))
        except (ValueError, TypeError, IndexError) as e:
            raise ValueError(f"keops operator key {key!r} does not describe a reduction: "
                             f"{e}") from e
        _KEYS[key] = found
    return found


def _constant(x: Any) -> Any:
    """``x`` with plain ints for the symbolic ones (with ``dynamic=True`` Dynamo makes
    the ints of a reduction's description symbolic; they are fixed by the formula)."""
    if isinstance(x, (tuple, list)):
        return type(x)(_constant(v) for v in x)
    return int(x) if isinstance(x, torch.SymInt) else x


def _tuples(x: Any) -> Any:
    """JSON's lists back to the tuples of a :data:`CoreDesc`."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def _output_shape(core: Core, args: Sequence[torch.Tensor], which: int) -> List[Any]:
    """The shape of output ``which`` (0: values, 1: indices) for ``args``: the Rust
    rule on concrete shapes (which also checks them); with symbolic sizes, the
    arguments' broadcast batch dimensions and row count, then the trailing dimensions
    that the reduction alone sets."""
    shapes = [tuple(a.shape) for a in args]
    if all(type(s) is int for shape in shapes for s in shape):
        out = core.output_shapes(shapes)[which]
        assert out is not None, "an output the reduction does not produce"
        return list(out)
    # Trailing dimensions: from the shapes of no batch and K rows (the K-min family
    # needs as many).
    n = core.k or 1
    probe = [(d,) if cat == "Pm" else (n, d) for cat, d in
             ((decl if decl is not None else ("Pm", 1)) for decl in core.args)]
    out = core.output_shapes(probe)[which]
    assert out is not None, "an output the reduction does not produce"
    leads = [tuple(a.shape[:-1] if decl[0] == "Pm" else a.shape[:-2])
             for a, decl in zip(args, core.args) if decl is not None]
    rows = [a.shape[-2] for a, decl in zip(args, core.args)
            if decl is not None and decl[0] == core.out_cat]
    # Without an argument indexed by the output's rows, there is one output row.
    return [*torch.broadcast_shapes(*leads), rows[0] if rows else 1, *out[1:]]


#: CUDA graphs must not capture the operators (the engine refuses a capture: it copies
#: host tables that a replay would read freed), so ``mode="reduce-overhead"`` runs them
#: outside its graphs.
_TAGS = tuple(getattr(torch.Tag, t) for t in ("cudagraph_unsafe",) if hasattr(torch.Tag, t))

def _engine_output(key: str, args: List[torch.Tensor], which: int) -> torch.Tensor:
    """Output ``which`` (0: values, 1: indices) of the reduction ``key`` on ``args``."""
    from . import _engine
    core, opts = lookup(key)
    out = _engine(core, args, opts)[which]
    assert out is not None, "an output the reduction does not produce"
    return out


if SUPPORTED:
    @torch.library.custom_op("keops::values", mutates_args=(), tags=_TAGS)
    def values(key: str, args: List[torch.Tensor]) -> torch.Tensor:
        """The values of the reduction that ``key`` describes (see :func:`key_of`)."""
        return _engine_output(key, args, 0)

    @torch.library.custom_op("keops::indices", mutates_args=(), tags=_TAGS)
    def indices(key: str, args: List[torch.Tensor]) -> torch.Tensor:
        """The indices (int64) of the reduction that ``key`` describes."""
        return _engine_output(key, args, 1)

    @values.register_fake
    def _values_fake(key: str, args: List[torch.Tensor]) -> torch.Tensor:
        core, _ = lookup(key)
        return args[0].new_empty(_output_shape(core, args, 0))

    @indices.register_fake
    def _indices_fake(key: str, args: List[torch.Tensor]) -> torch.Tensor:
        core, _ = lookup(key)
        return args[0].new_empty(_output_shape(core, args, 1), dtype=torch.int64)

    def _setup_context(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
        key, args = inputs
        ctx.key = key
        ctx.save_for_backward(*args, output)

    def _backward(ctx: Any, g: torch.Tensor) -> Tuple[None, List[Optional[torch.Tensor]]]:
        from . import _vjp
        *args, out = ctx.saved_tensors
        core, opts = lookup(ctx.key)
        return None, _vjp(core, opts, args, out, g, ctx.needs_input_grad[1], reduce=reduce)

    values.register_autograd(_backward, setup_context=_setup_context)

    def reduce(core: Core, opts: Options, args: Sequence[torch.Tensor]) -> torch.Tensor:
        """``keops.torch._reduce`` as a traced operator."""
        return values(key_of(core, opts), list(args))

    def run(desc: CoreDesc, opts: OptionsDesc, args: List[torch.Tensor]
            ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``keops.torch._run`` for Dynamo: the reduction ``compile_core(*desc[0])``
        with options ``opts`` on ``args``, as ``keops::`` operators of the graph;
        returns ``(values, indices)``."""
        red = desc[0][2]
        out = _run_untraced(desc, opts, args)
        if red in ARG:
            return None, out[0]
        return out[0], (out[1] if "Arg" in red else None)

    @torch._dynamo.nonstrict_trace
    def _run_untraced(desc: CoreDesc, opts: OptionsDesc, args: List[torch.Tensor]
                      ) -> List[torch.Tensor]:
        # Run by Dynamo as it is, with fake tensors; returns the outputs there are
        # (a nonstrict_trace function returns no None).
        from . import _widened
        desc, options = _constant(desc), _options(_constant(opts))
        args, half = _widened(args)
        v, i = _traced(core_of(desc), options, args)
        if half is not None and v is not None:
            v = v.to(half)
        return [t for t in (v, i) if t is not None]

    def _traced(core: Core, opts: Options, args: List[torch.Tensor]
                ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        from . import _at_selected
        red = core.reduction
        if red in SMOOTH:
            return reduce(core, opts, args), None
        if red in ARG:
            return None, indices(key_of(core, opts), args)
        idx = indices(key_of(core.variant(SELECT[red], core.k), opts), args)
        vals = _at_selected(core, opts, args, idx, reduce=reduce)
        return vals, (idx if "Arg" in red else None)

    @torch.library.custom_op("keops::solve", mutates_args=(), tags=_TAGS)
    def solve_op(key: str, var: int, params: str, args: List[torch.Tensor]) -> torch.Tensor:
        """The solution of the solve on ``args`` (``b`` at ``var``) with the reduction
        ``key`` and the parameters ``params`` (JSON of a :data:`SolveDesc`)."""
        from . import _solve_host
        core, opts = lookup(key)
        alpha, eps, max_iter, precond, rank = json.loads(params)
        return _solve_host(core, var, args, SolveParams(alpha, eps, max_iter, precond=precond,
                                                        precond_rank=rank), opts)

    @solve_op.register_fake
    def _solve_fake(key: str, var: int, params: str, args: List[torch.Tensor]
                    ) -> torch.Tensor:
        return torch.empty_like(args[var], memory_format=torch.contiguous_format)

    def _solve_setup(ctx: Any, inputs: Tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.key, ctx.var, ctx.params, args = inputs
        ctx.save_for_backward(*args, output)

    def _solve_backward(ctx: Any, g: torch.Tensor
                        ) -> Tuple[None, None, None, List[Optional[torch.Tensor]]]:
        from . import _solve_vjp
        *args, a = ctx.saved_tensors
        core, opts = lookup(ctx.key)
        return None, None, None, _solve_vjp(
            core, ctx.var, opts, args, a, g, ctx.needs_input_grad[3],
            lambda gargs: solve_op(ctx.key, ctx.var, ctx.params, gargs), reduce)

    solve_op.register_autograd(_solve_backward, setup_context=_solve_setup)

    def solve(desc: CoreDesc, var: int, params: SolveParams, opts: Options,
              args: List[torch.Tensor]) -> torch.Tensor:
        """``keops.torch._solve`` for Dynamo: the solve with the reduction ``desc``, as a
        ``keops::solve`` operator of the graph."""
        return _solve_untraced(desc, var, (params.alpha, params.eps, params.max_iter,
                                           params.precond, params.precond_rank),
                               options_desc(opts), args)

    @torch._dynamo.nonstrict_trace
    def _solve_untraced(desc: CoreDesc, var: int, params: SolveDesc, opts: OptionsDesc,
                        args: List[torch.Tensor]) -> torch.Tensor:
        from . import _widened
        desc, var, params, opts = _constant((desc, var, params, opts))
        core = core_of(desc)
        _keops.check_solve(core.g, var)
        args, half = _widened(args)
        x = solve_op(key_of(core, _options(opts)), var, json.dumps(params), args)
        return x if half is None else x.to(half)
