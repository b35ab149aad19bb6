"""The custom operators that stand for keops reductions in PyTorch graphs
(``torch.compile``, ``torch.export``): ``keops::values``, ``keops::indices`` and
``keops::solve``.

Each is called with a *key*, a JSON text that describes the reduction whole
(``compile_core``'s arguments, the derivations made from it, the options), and the
argument tensors. The key is the same text in every process, so a graph that
Inductor's on-disk caches or ``torch.export`` keep names its reduction, never a slot of
this process: :func:`lookup` rebuilds one it has not met.

- The fake implementations give the output shapes, with the batch and row counts of
  dynamic shapes kept symbolic.
- ``keops::values``' and ``keops::solve``'s autograd rules are the eager ones
  (:func:`keops.torch._vjp`, :func:`keops.torch._solve_vjp`), built of these same
  operators, so AOTAutograd traces the backward reductions into the backward graph.
- They are ``cudagraph_unsafe``: the engine refuses a CUDA graph capture (it copies
  host tables that a replay would read freed), so ``mode="reduce-overhead"`` runs them
  outside its graphs.

Registered when ``keops.torch`` is imported (a few milliseconds; nothing of Dynamo's),
so a saved graph runs in a process that only imported it. ``_compile.py`` records them
while Dynamo traces.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .._genred import Core, Options, core_of
from .._solve import SolveParams

#: Whether this PyTorch has custom operators (2.4 or later).
SUPPORTED = hasattr(torch.library, "custom_op")

#: Keys already met, and their reduction and options.
_KEYS: Dict[str, Tuple[Core, Options]] = {}

#: The fields of :class:`Options` that a key holds (``ranges`` is never traced).
OptionsDesc = Tuple[str, str, str, int, Any, bool]


def options_desc(opts: Options) -> OptionsDesc:
    """``opts`` as constants (Dynamo passes them to a ``nonstrict_trace`` function as
    they are)."""
    return (opts.dtype_acc, opts.sum_scheme, opts.backend, opts.device_id, opts.multi_gpu,
            opts.fast_math)


def options_of(o: OptionsDesc) -> Options:
    """The :class:`Options` that :func:`options_desc` described."""
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
            found = (core_of(_tuples(desc)), options_of(o))
        except (ValueError, TypeError, IndexError) as e:
            raise ValueError(f"keops operator key {key!r} does not describe a reduction: "
                             f"{e}") from e
        _KEYS[key] = found
    return found


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


#: Operator tags: see the module's docs.
_TAGS = tuple(getattr(torch.Tag, t) for t in ("cudagraph_unsafe",)
              if hasattr(getattr(torch, "Tag", None), t))


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

    @torch.library.custom_op("keops::solve", mutates_args=(), tags=_TAGS)
    def solve(key: str, var: int, params: str, args: List[torch.Tensor]) -> torch.Tensor:
        """The solution of the solve on ``args`` (``b`` at ``var``) with the reduction
        ``key`` and the parameters ``params`` (JSON of ``[alpha, eps, max_iter, precond,
        precond_rank]``)."""
        from . import _solve_host
        core, opts = lookup(key)
        alpha, eps, max_iter, precond, rank = json.loads(params)
        return _solve_host(core, var, args, SolveParams(alpha, eps, max_iter, precond=precond,
                                                        precond_rank=rank), opts)

    @solve.register_fake
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
            lambda gargs: solve(ctx.key, ctx.var, ctx.params, gargs), reduce)

    solve.register_autograd(_solve_backward, setup_context=_solve_setup)
