"""keops reductions under ``torch.compile``: recorded as the custom operators of
``_ops.py``, with no graph break.

Dynamo cannot trace into the Rust extension. While it traces, ``Genred``, ``LazyTensor``
and the solves hand a reduction to :func:`run` or :func:`solve`, which pass constants
only (the reduction's description, the options' fields) and the tensors to a
``torch._dynamo.nonstrict_trace`` function: Dynamo does not trace it, but runs it once
with fake tensors while the graph is built, and records the operators it calls.

Imported only while Dynamo traces (``keops.torch._traced``): importing Dynamo costs a
second, which eager use never pays.

Not traced, run eagerly behind a graph break (:func:`eagerly`): block-sparse
reductions, solves whose progress is read, and any reduction under a ``torch.func``
transform or forward-mode AD (the operators have no forward-mode rule).
"""

from __future__ import annotations

import json
from typing import Any, Callable, List, Optional, Tuple, Union

import torch

from .._genred import ARG, SELECT, SMOOTH, Core, CoreDesc, CoreSpec, Options, core_of, outcome
from .._solve import SolveParams, solve_core
from . import _at_selected, _ops, _transformed, _widened
from ._ops import OptionsDesc, key_of, options_desc, options_of

#: Whether this PyTorch can trace reductions (custom operators and ``nonstrict_trace``,
#: 2.7 or later).
SUPPORTED = _ops.SUPPORTED and hasattr(torch._dynamo, "nonstrict_trace")

# What reads declarations with the Rust parser (``_genred.parsed``): Dynamo calls it
# while it traces and keeps the result, so a generic_* reduction or a KernelSolve made
# in a compiled function needs no graph break.
torch.compiler.assume_constant_result(outcome)

#: The fields of :class:`SolveParams` that a traced solve reads.
SolveDesc = Tuple[float, float, Optional[int], Optional[str], Union[int, str]]


def active(opts: Options, params: Optional[SolveParams] = None) -> bool:
    """Whether a reduction with ``opts`` (a solve with ``params``), met while Dynamo
    traces, is to be traced as a custom operator: no ``torch.func`` transform or
    forward-mode AD is on (the operators have no forward-mode rule, and torch would take
    their tangents as zero), it is not block-sparse, and for a solve, nothing reads its
    progress (``verbose``, ``callback``, ``return_info``)."""
    if params is not None and (params.verbose or params.callback is not None
                               or params.return_info):
        return False
    return SUPPORTED and opts.ranges is None and not _transformed()


@torch.compiler.disable
def eagerly(f: Callable[..., Any], *args: Any) -> Any:
    """``f(*args)``, never traced: under ``torch.compile``, a graph break here rather
    than Dynamo tracing into the parser (through ``compile_core``'s cache, with a
    warning) to break the graph there."""
    return f(*args)


def _constant(x: Any) -> Any:
    """``x`` with plain ints for the symbolic ones (with ``dynamic=True`` Dynamo makes
    the ints of a reduction's description symbolic; they are fixed by the formula)."""
    if isinstance(x, (tuple, list)):
        return type(x)(_constant(v) for v in x)
    return int(x) if isinstance(x, torch.SymInt) else x


if SUPPORTED:
    def run(desc: CoreDesc, opts: OptionsDesc, args: List[torch.Tensor]
            ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``keops.torch._run`` for Dynamo: the reduction ``compile_core(*desc[0])``
        with options ``opts`` on ``args``, as ``keops::`` operators of the graph;
        returns ``(values, indices)``."""
        red = desc[0][2]
        out = _record_run(desc, opts, args)
        if red in ARG:
            return None, out[0]
        return out[0], (out[1] if "Arg" in red else None)

    @torch._dynamo.nonstrict_trace
    def _record_run(desc: CoreDesc, opts: OptionsDesc, args: List[torch.Tensor]
                      ) -> List[torch.Tensor]:
        # Run by Dynamo as it is, with fake tensors, recording the operators it calls;
        # returns the outputs there are (a nonstrict_trace function returns no None).
        desc, options = _constant(desc), options_of(_constant(opts))
        args, half = _widened(args)
        v, i = _operators(core_of(desc), options, args)
        if half is not None and v is not None:
            v = v.to(half)
        return [t for t in (v, i) if t is not None]

    def _operators(core: Core, opts: Options, args: List[torch.Tensor]
                   ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``keops.torch._run``'s values and indices, by the operators."""
        red = core.reduction
        if red in SMOOTH:
            return _ops.reduce(core, opts, args), None
        if red in ARG:
            return None, _ops.indices(key_of(core, opts), args)
        idx = _ops.indices(key_of(core.variant(SELECT[red], core.k), opts), args)
        vals = _at_selected(core, opts, args, idx, reduce=_ops.reduce)
        return vals, (idx if "Arg" in red else None)

    def solve(spec: CoreSpec, var: int, params: SolveParams, opts: Options,
              args: List[torch.Tensor]) -> torch.Tensor:
        """``KernelSolve._solve_spec`` for Dynamo: the solve with the reduction
        ``compile_core(*spec)``, as a ``keops::solve`` operator of the graph."""
        return _record_solve(spec, var, (params.alpha, params.eps, params.max_iter,
                                           params.precond, params.precond_rank),
                               options_desc(opts), args)

    @torch._dynamo.nonstrict_trace
    def _record_solve(spec: CoreSpec, var: int, params: SolveDesc, opts: OptionsDesc,
                        args: List[torch.Tensor]) -> torch.Tensor:
        spec, var, params, opts = _constant((spec, var, params, opts))
        core = solve_core(spec, var)
        args, half = _widened(args)
        x = _ops.solve(key_of(core, options_of(opts)), var, json.dumps(params), args)
        return x if half is None else x.to(half)
