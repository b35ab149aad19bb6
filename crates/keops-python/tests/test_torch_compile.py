"""``torch.compile``: reductions and solves are traced as ``keops::`` custom operators,
with no graph break (``fullgraph=True``) in the forward or the backward graph; values
and gradients are eager's; dynamic shapes stay symbolic; half precision; keys are
rebuilt in a process that has not met them (``torch.export``); block-sparse and
monitored solves fall back to eager; Inductor where a C++ compiler exists; operators
between LazyTensors and tensors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from typing import Any, Callable, Dict, List

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from test_torch import CASES, data  # noqa: E402
from torch._dynamo.backends.common import aot_autograd  # noqa: E402
from functorch.compile import make_boxed_func  # noqa: E402

import keops.numpy.cluster as nc  # noqa: E402
from keops.torch import Genred, KernelSolve, LazyTensor, Vi, Vj, _compile, _ops  # noqa: E402

pytestmark = pytest.mark.skipif(
    not _compile.SUPPORTED,
    reason="this PyTorch has no torch.library.custom_op / torch._dynamo.nonstrict_trace "
           "(2.7 or later): keops reductions break the graph there")

T = torch.Tensor


def recording() -> tuple:
    """An AOTAutograd backend (eager kernels, no C compiler) that records the operators
    of the forward and backward graphs, and the number of graphs compiled."""
    seen: Dict[str, List[List[str]]] = {"forward": [], "backward": []}

    def keep(kind: str) -> Callable[..., Any]:
        def compiler(gm: Any, example_inputs: Any) -> Any:
            seen[kind].append([str(n.target) for n in gm.graph.nodes
                               if n.op == "call_function"])
            return make_boxed_func(gm.forward)
        return compiler

    return aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward")), seen


def keops_ops(graph: List[str]) -> List[str]:
    return sorted(t for t in graph if t.startswith("keops."))


def loss_of(k: Callable[..., T]) -> Callable[..., T]:
    def loss(*a: T) -> T:
        return (k(*a) ** 2).sum()
    return loss


@pytest.mark.parametrize("name", CASES)
def test_no_graph_break_and_eager_values_and_gradients(name: str) -> None:
    """Every reduction kind (values, soft-max, min/K-min at the selected pairs), forward
    and backward, as one graph each whose reductions are ``keops::`` operators."""
    torch._dynamo.reset()
    loss = loss_of(CASES[name][0])
    args = data()
    want = loss(*args)
    want_grads = torch.autograd.grad(want, args)
    backend, seen = recording()
    got = torch.compile(loss, backend=backend, fullgraph=True)(*args)
    got_grads = torch.autograd.grad(got, args)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)

    (fw,), (bw,) = seen["forward"], seen["backward"]
    selects = name.startswith(("min", "kmin"))
    assert keops_ops(fw) == (["keops.indices.default", "keops.values.default"] if selects
                             else ["keops.values.default"])
    # One gradient reduction per argument (x, y, b, p), SumSoftMaxWeight's needing also
    # its LogSumExp.
    assert keops_ops(bw) == ["keops.values.default"] * (5 if name == "sumsoftmaxweight" else 4)


@pytest.mark.parametrize("name", CASES)
def test_dynamic_shapes_compile_once(name: str) -> None:
    """With dynamic shapes the outputs' batch and row counts are symbolic: new sizes
    reuse the graph (sizes of the first call all distinct, and from D = 2: Dynamo would
    give equal sizes one symbol)."""
    torch._dynamo.reset()
    k = CASES[name][0]
    backend, seen = recording()
    compiled = torch.compile(loss_of(k), backend=backend, fullgraph=True, dynamic=True)
    for n, m, batch in ((5, 7, (3,)), (9, 4, (6,)), (8, 11, (4,))):
        args = data(n=n, m=m, batch=batch)
        got = compiled(*args)
        torch.testing.assert_close(got, loss_of(k)(*args), rtol=1e-12, atol=1e-12)
        for g, w in zip(torch.autograd.grad(got, args),
                        torch.autograd.grad(loss_of(k)(*args), args)):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert len(seen["forward"]) == 1 and len(seen["backward"]) == 1


def test_genred_indices_both_outputs_and_half_precision() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 3, generator=g), torch.randn(80, 3, generator=g)
    knn = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="ArgKMin", axis=1,
                 opt_arg=5)
    both = Genred("SqDist(x,y)", ["x = Vi(3)", "y = Vj(3)"], reduction_op="Min_ArgMin",
                  axis=1)
    torch._dynamo.reset()
    got = torch.compile(knn, backend="aot_eager", fullgraph=True)(x, y)
    assert got.dtype == torch.int64 and torch.equal(got, knn(x, y))
    v, i = torch.compile(lambda a, b: both(a, b), backend="aot_eager", fullgraph=True)(x, y)
    v0, i0 = both(x, y)
    assert torch.equal(i, i0)
    torch.testing.assert_close(v, v0)  # traced: the formula at the selected pairs
    xh, yh = x.to(torch.float16), y.to(torch.float16)

    def gauss(a: T, b: T) -> T:
        return (-Vi(a).sqdist(Vj(b))).exp().sum(dim=1)

    got = torch.compile(gauss, backend="aot_eager", fullgraph=True)(xh, yh)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got, gauss(xh, yh))


@pytest.mark.parametrize("front", ["lazy", "kernelsolve", "kernelsolve made inside"])
def test_solve_traced_with_gradients(front: str) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(150, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(150, 2, generator=g, dtype=torch.float64, requires_grad=True)
    ks = KernelSolve("Exp(-SqDist(x,y) * 10) * a", ["x = Vi(2)", "y = Vj(2)", "a = Vj(2)"],
                     "a", axis=1)

    def loss(x: T, b: T) -> T:
        if front == "lazy":
            a = (-Vi(x).sqdist(Vj(x)) * 10).exp().solve(Vi(b), alpha=0.1)
        elif front == "kernelsolve":
            a = ks(x, x, b, alpha=0.1)
        else:  # pykeops style: the solver made where it is used (and preconditioned)
            a = KernelSolve("Exp(-SqDist(x,y) * 10) * a",
                            ["x = Vi(2)", "y = Vj(2)", "a = Vj(2)"], "a", axis=1)(
                                x, x, b, alpha=0.1, precond="nystrom", precond_rank="auto")
        return (a ** 2).sum()

    torch._dynamo.reset()
    backend, seen = recording()
    got = torch.compile(loss, backend=backend, fullgraph=True)(x, b)
    want = loss(x, b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for gg, w in zip(torch.autograd.grad(got, [x, b]), torch.autograd.grad(want, [x, b])):
        torch.testing.assert_close(gg, w, rtol=1e-9, atol=1e-12)
    assert keops_ops(seen["forward"][0]) == ["keops.solve.default"]
    # db by a second solve, then the gradient reduction w.r.t. each x.
    assert "keops.solve.default" in keops_ops(seen["backward"][0])


def test_monitored_solve_and_block_sparse_reductions_run_eagerly() -> None:
    """``return_info`` (and ``callback``, ``verbose``) and ``ranges`` are not traced:
    Dynamo breaks the graph and they run as in eager mode."""
    rng = np.random.default_rng(3)
    x, y = rng.random((200, 2)), rng.random((300, 2))
    lx, ly = nc.grid_cluster(x, 0.2), nc.grid_cluster(y, 0.2)
    x, lx = nc.sort_clusters(x, lx)
    y, ly = nc.sort_clusters(y, ly)
    rx, cx, _ = nc.cluster_ranges_centroids(x, lx)
    ry, cy, _ = nc.cluster_ranges_centroids(y, ly)
    keep = ((cx[:, None, :] - cy[None, :, :]) ** 2).sum(-1) < 0.3 ** 2
    ranges = tuple(torch.from_numpy(r) for r in nc.from_matrix(rx, ry, keep))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = Genred("Exp(-SqDist(x,y) * 20)", ["x = Vi(2)", "y = Vj(2)"], axis=1)

    def sparse(a: T, b: T) -> T:
        return g(a, b, ranges=ranges) * 2

    def lazy_sparse(a: T, b: T) -> T:
        K = (-Vi(a).sqdist(Vj(b)) * 20).exp()
        K.ranges = ranges
        return K.sum(dim=1) * 2

    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of Dynamo's about our code
        torch.testing.assert_close(torch.compile(sparse, backend="aot_eager")(xt, yt),
                                   sparse(xt, yt), rtol=0, atol=0)
        torch.testing.assert_close(torch.compile(lazy_sparse, backend="aot_eager")(xt, yt),
                                   sparse(xt, yt), rtol=0, atol=0)
        ks = KernelSolve("Exp(-SqDist(x,y) * 10) * a", ["x = Vi(2)", "y = Vj(2)",
                                                        "a = Vj(1)"], "a", axis=1)
        bt = torch.from_numpy(rng.standard_normal((200, 1)))
        a, info = torch.compile(lambda p, q: ks(p, p, q, alpha=0.1, return_info=True),
                                backend="aot_eager")(xt, bt)
    assert info.converged and info.iterations > 0
    torch.testing.assert_close(a, ks(xt, xt, bt, alpha=0.1))


def test_importing_keops_torch_does_not_import_dynamo() -> None:
    """Dynamo takes a second to import: eager use never pays it (``_compile.py`` is
    imported only while Dynamo traces)."""
    code = ("import sys, torch, keops.torch\n"
            "from keops.torch import LazyTensor\n"
            "x = torch.randn(10, 3)\n"
            "(LazyTensor(x[:, None]) - LazyTensor(x[None])).sum(-1).exp().sum(dim=1)\n"
            "assert 'torch._dynamo' not in sys.modules, 'imported'\n"
            "assert hasattr(torch.ops.keops, 'values')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr


def test_keys_name_their_reduction_in_any_process() -> None:
    """A key is rebuilt from its text alone (as after loading a cached graph), and a key
    that describes nothing is a clear error."""
    gauss = Genred("Exp(-SqDist(x,y)) * b", ["x = Vi(3)", "y = Vj(3)", "b = Vj(2)"], axis=1)
    core, opts = gauss.core.grad(0)[0], gauss.opts
    key = _ops.key_of(core, opts)
    assert json.loads(key)[0][1] == ["grad", 0]
    del _ops._KEYS[key]
    rebuilt, ropts = _ops.lookup(key)
    assert rebuilt.g.formula == core.g.formula and rebuilt.reduction == core.reduction
    assert ropts == opts
    with pytest.raises(ValueError, match="does not describe a reduction"):
        _ops.lookup('[[["F", [], "Sum", 1, null, null]], ["auto"]]')


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="Inductor's CPU code needs a C++ compiler, none found")
def test_inductor_values_and_gradients() -> None:
    """The default backend: Inductor compiles the graph around the operators."""
    torch._dynamo.reset()
    loss = loss_of(CASES["gauss"][0])
    args = data(n=30, m=40)
    got = torch.compile(loss, fullgraph=True)(*args)
    want = loss(*args)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(torch.autograd.grad(got, args), torch.autograd.grad(want, args)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_lazytensor_reduction_in_a_module() -> None:
    """A ``torch.nn.Module`` whose forward builds LazyTensors (pykeops' style), compiled
    whole, with a learnable kernel width."""

    class GaussConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_width = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

        def forward(self, x: T, y: T, b: T) -> T:
            K = (-LazyTensor(x[:, None, :]).sqdist(LazyTensor(y[None, :, :]))
                 / (2 * self.log_width.exp() ** 2)).exp()
            return K @ b

    torch._dynamo.reset()
    model = GaussConv()
    x, y, b = data(n=20, m=25)[:3]
    got = torch.compile(model, backend="aot_eager", fullgraph=True)(x, y, b)
    want = model(x, y, b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (gw,) = torch.autograd.grad(got.sum(), [model.log_width])
    (ww,) = torch.autograd.grad(want.sum(), [model.log_width])
    torch.testing.assert_close(gw, ww, rtol=1e-10, atol=1e-12)


OPERATORS = {
    "K / t": lambda K, t: (K / t).exp(),
    "t / (1 - K)": lambda K, t: t / (1 - K),
    "K * t": lambda K, t: (K * t).exp(),
    "t * K": lambda K, t: (t * K).exp(),
    "K + t": lambda K, t: (K + t).exp(),
    "t + K": lambda K, t: (t + K).exp(),
    "K - t": lambda K, t: (K - t).exp(),
    "t - K": lambda K, t: (t - K).exp(),
    "(1 - K) ** t": lambda K, t: (1 - K) ** t,
    "K < t": lambda K, t: K < t,
    "t > K": lambda K, t: t > K,
}


@pytest.mark.parametrize("op", OPERATORS)
def test_operators_between_a_lazytensor_and_a_tensor(op: str) -> None:
    """Dynamo hands every operator with a tensor operand to ``Tensor``'s methods, which
    pass LazyTensors to ``LazyTensor.__torch_function__``: compiled, as in eager mode."""
    x, y, b = data(n=20, m=25)[:3]
    t = torch.tensor([0.7], dtype=torch.float64)

    def f(x: T, y: T, b: T) -> T:
        return OPERATORS[op](-Vi(x).sqdist(Vj(y)), t).sum(dim=1) + (
            (-Vi(x).sqdist(Vj(y))).exp() @ b)

    torch._dynamo.reset()
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x, y, b)
    torch.testing.assert_close(got, f(x, y, b), rtol=1e-12, atol=1e-12)


def test_torch_functions_of_a_lazytensor_are_type_errors() -> None:
    x, y = data()[:2]
    with pytest.raises(TypeError, match="torch.exp"):
        torch.exp(Vi(x).sqdist(Vj(y)))


def test_no_argument_on_the_output_side() -> None:
    """No argument indexed by the output's rows: one row, with dynamic shapes too."""
    g = Genred("SqDist(y, y)", ["y = Vj(2)"], axis=1)
    torch._dynamo.reset()
    compiled = torch.compile(lambda y: g(y), backend="aot_eager", fullgraph=True,
                             dynamic=True)
    for m in (5, 9):
        y = torch.randn(m, 2, dtype=torch.float64)
        torch.testing.assert_close(compiled(y), g(y))
        assert compiled(y).shape == (1, 1)


def test_exported_program_runs_in_a_fresh_process(tmp_path: Any) -> None:
    """``torch.export`` (non-strict, its default) records the operators; the saved
    program runs in another process, which rebuilds the reductions from their keys."""

    class Conv(torch.nn.Module):
        def forward(self, x: T, y: T, b: T) -> T:
            return (-Vi(x).sqdist(Vj(y))).exp() @ b

    x, y, b = (a.detach() for a in data(n=20, m=25)[:3])
    ep = torch.export.export(Conv(), (x, y, b), strict=False)
    assert "keops.values" in ep.graph_module.code
    path = tmp_path / "conv.pt2"
    torch.export.save(ep, str(path))
    torch.save((x, y, b, Conv()(x, y, b)), str(tmp_path / "data.pt"))
    code = (
        "import sys, torch, keops.torch\n"
        "assert 'torch._dynamo' not in sys.modules  # keops.torch alone registers them\n"
        f"ep = torch.export.load({str(path)!r})\n"
        f"x, y, b, want = torch.load({str(tmp_path / 'data.pt')!r})\n"
        "torch.testing.assert_close(ep.module()(x, y, b), want, rtol=1e-12, atol=1e-12)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr


def test_torch_func_transforms_under_compile() -> None:
    """``torch.func`` transforms and forward-mode AD inside a compiled function: the
    operators have no forward-mode rule (torch would take their tangents as zero), so
    under a transform the reduction runs as in eager mode; values as eager's."""
    import torch.autograd.forward_ad as fwAD
    import torch.func as tf

    k = CASES["gauss"][0]
    x, y, b, p = (a.detach() for a in data())

    def loss(t: T) -> T:
        return (k(t, y, b, p) ** 2).sum()

    def dual() -> T:
        with fwAD.dual_level():
            out = loss(fwAD.make_dual(x, torch.ones_like(x)))
            return fwAD.unpack_dual(out).tangent

    cases = {
        "grad": lambda: tf.grad(loss)(x),
        "vmap": lambda: tf.vmap(lambda t: k(t, y, b, p))(torch.stack([x, x + 1])),
        "jvp": lambda: tf.jvp(loss, (x,), (torch.ones_like(x),))[1],
        "hessian": lambda: tf.hessian(loss)(x[:2]),
        "forward AD": dual,
    }
    for name, f in cases.items():
        torch._dynamo.reset()
        got = torch.compile(f, backend="aot_eager")()
        torch.testing.assert_close(got, f(), rtol=1e-12, atol=1e-12, msg=name)


def test_complex_values_and_out_argument() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    c = torch.randn(40, 1, generator=g, dtype=torch.complex128)

    def fourier(x: T, y: T, c: T) -> T:
        return ((Vi(x).sqdist(Vj(y)) * 1j).exp() * LazyTensor(c[None])).sum(dim=1)

    torch._dynamo.reset()
    got = torch.compile(fourier, backend="aot_eager", fullgraph=True)(x, y, c)
    assert got.dtype == torch.complex128
    torch.testing.assert_close(got, fourier(x, y, c), rtol=1e-12, atol=1e-12)
    gauss = Genred("Exp(-SqDist(x,y))", ["x = Vi(2)", "y = Vj(2)"], axis=1)
    out = torch.empty(30, 1, dtype=torch.float64)

    def into(x: T, y: T, out: T) -> T:
        gauss(x, y, out=out)
        return out * 2

    doubled = torch.compile(into, backend="aot_eager", fullgraph=True)(x, y, out)
    torch.testing.assert_close(out, gauss(x, y), rtol=0, atol=0)
    torch.testing.assert_close(doubled, 2 * gauss(x, y), rtol=0, atol=0)


def test_genred_made_inside_the_compiled_function() -> None:
    """pykeops-style code that makes its Genred (or generic_* reduction) where it uses
    it: parsed when the graph is built, no graph break."""
    from keops.torch import LogSumExp, generic_argkmin, generic_argmin, generic_logsumexp, \
        generic_sum

    x, y, b = data(n=20, m=25)[:3]

    def loss(x: T, y: T, b: T) -> T:
        conv = Genred("Exp(-SqDist(x, y)) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"],
                      axis=1)
        lse = LogSumExp("-SqDist(x, y)", ["x = Vi(2)", "y = Vj(2)"], axis=1)
        # The output declaration sets the axis: summed over i here.
        gsum = generic_sum("Exp(-SqDist(x, y)) * b", "c = Vj(1)", "x = Vi(2)", "y = Vj(2)",
                           "b = Vi(1)")
        glse = generic_logsumexp("-SqDist(x, y)", "c = Vi(1)", "x = Vi(2)", "y = Vj(2)")
        knn = generic_argkmin("SqDist(x, y)", "c = Vi(3)", "x = Vi(2)", "y = Vj(2)")
        nn = generic_argmin("SqDist(x, y)", "c = Vj(1)", "x = Vi(2)", "y = Vj(2)")
        picked = y[knn(x, y)].sum(1) + x[nn(x, y)[:, 0]].sum(0)
        return ((conv(x, y, b) ** 2).sum() + lse(x, y).sum() + gsum(y, x, b).sum()
                + glse(x, y).sum() + (picked ** 2).sum())

    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = torch.compile(loss, backend="aot_eager", fullgraph=True)(x, y, b)
    want = loss(x, y, b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(torch.autograd.grad(got, [x, y, b]), torch.autograd.grad(want, [x, y, b])):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_bad_declarations_inside_the_compiled_function_are_value_errors() -> None:
    """A generic_* output or a KernelSolve unknown declared wrongly in a compiled
    function: the eager ValueError, not an error of Dynamo's."""
    from keops.torch import generic_sum

    x, _, b = data(n=20, m=25)[:3]
    calls = {
        "must be declared as Vi": lambda: generic_sum("SqDist(x, y)", "c = Pm(1)", "x = Vi(2)",
                                            "y = Vj(2)")(x, x),
        "not a variable": lambda: KernelSolve("Exp(-SqDist(x,y)) * a",
                                              ["x = Vi(2)", "y = Vj(2)", "a = Vj(1)"], "c",
                                              axis=1)(x, x, b),
        "must be Vj": lambda: KernelSolve("Exp(-SqDist(x,y)) * a",
                                          ["x = Vi(2)", "y = Vj(2)", "a = Vj(1)"], "x",
                                          axis=1)(x, x, b),
    }
    for message, call in calls.items():
        torch._dynamo.reset()
        with pytest.raises(ValueError, match=message):
            torch.compile(call, backend="aot_eager")()
