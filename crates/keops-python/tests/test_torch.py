"""``keops.torch``: values against dense PyTorch, autograd to second order
(``gradcheck``/``gradgradcheck`` in float64 w.r.t. Vi, Vj and Pm inputs), batch dimensions,
``torch.func`` transforms against the same transforms of dense code, threads, errors,
pickling."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Tuple

import pytest

torch = pytest.importorskip("torch")
import torch.func as tf  # noqa: E402

from keops.torch import Genred, LazyTensor, LogSumExp, Pm, Vi, Vj  # noqa: E402

T = torch.Tensor


def data(n: int = 6, m: int = 7, d: int = 2, dtype=torch.float64, seed: int = 0,
         batch: Tuple[int, ...] = ()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch + (n, d), generator=g, dtype=dtype)
    y = torch.randn((m, d), generator=g, dtype=dtype)
    b = torch.randn((m, 1), generator=g, dtype=dtype)
    p = torch.rand((1,), generator=g, dtype=dtype) + 0.5
    return [t.requires_grad_() for t in (x, y, b, p)]


# Each reduction as (keops, dense torch) over the same inputs x (i), y (j), b (j), p (Pm).
# Reductions name their axis from the end (-2: over j, -3: over i), as batch dims come first.
def k_gauss(x, y, b, p, dim=1):
    return ((-Vi(x).sqdist(Vj(y)) * Pm(p)).exp() * Vj(b)).sum(dim=dim - 3)


def d_gauss(x, y, b, p, dim=1):
    K = torch.exp(-((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1) * p)
    return (K * b[..., None, :, 0]).sum(-1, keepdim=True) if dim == 1 else (K * b[..., None, :, 0]).sum(-2)[..., None]


def k_lse(x, y, b, p):
    return (-Vi(x).sqdist(Vj(y)) * Pm(p) + Vj(b)).logsumexp(dim=-2)


def d_lse(x, y, b, p):
    F = -((x[..., :, None, :] - y[None]) ** 2).sum(-1) * p + b[:, 0]
    return torch.logsumexp(F, dim=-1, keepdim=True)


def k_ssmw(x, y, b, p):
    return (-Vi(x).sqdist(Vj(y)) * Pm(p)).sumsoftmaxweight(Vj(b) * Vj(y), dim=-2)


def d_ssmw(x, y, b, p):
    F = -((x[..., :, None, :] - y[None]) ** 2).sum(-1) * p
    return torch.softmax(F, dim=-1) @ (b * y)


def k_min(x, y, b, p):
    return (Vi(x).sqdist(Vj(y)) * Pm(p) + Vj(b)).min(dim=-2)


def d_min(x, y, b, p):
    F = ((x[..., :, None, :] - y[None]) ** 2).sum(-1) * p + b[:, 0]
    return F.min(dim=-1, keepdim=True).values


def k_kmin(x, y, b, p):
    return (Vi(x).sqdist(Vj(y)) * Pm(p) + Vj(b)).Kmin(3, dim=-2)


def d_kmin(x, y, b, p):
    F = ((x[..., :, None, :] - y[None]) ** 2).sum(-1) * p + b[:, 0]
    return torch.topk(F, 3, dim=-1, largest=False).values


def k_kmin_vec(x, y, b, p):
    """A vector formula: K-min per coordinate, output (N, K, D)."""
    return ((Vi(x) - Vj(y)).abs() * Pm(p) + Vj(b)).Kmin(2, dim=-2)


def d_kmin_vec(x, y, b, p):
    F = (x[..., :, None, :] - y[None]).abs() * p + b[None]
    return torch.topk(F, 2, dim=-2, largest=False).values


CASES = {
    "gauss": (k_gauss, d_gauss),
    "gauss_axis0": (lambda *a: k_gauss(*a, dim=0), lambda *a: d_gauss(*a, dim=0)),
    "logsumexp": (k_lse, d_lse),
    "sumsoftmaxweight": (k_ssmw, d_ssmw),
    "min": (k_min, d_min),
    "kmin": (k_kmin, d_kmin),
    "kmin_vector": (k_kmin_vec, d_kmin_vec),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_values_match_dense(name: str, dtype, tol: float) -> None:
    k, d = CASES[name]
    args = data(dtype=dtype)
    got, want = k(*args), d(*args)
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", CASES)
def test_gradcheck_and_gradgradcheck(name: str) -> None:
    k, _ = CASES[name]
    args = tuple(data())
    assert torch.autograd.gradcheck(k, args)
    assert torch.autograd.gradgradcheck(k, args)


@pytest.mark.parametrize("name", ["gauss", "gauss_axis0", "logsumexp", "min", "kmin"])
def test_batch_dimensions(name: str) -> None:
    """x has a batch of 2, y, b, p broadcast over it: values and second-order gradients."""
    k, d = CASES[name]
    args = tuple(data(n=4, m=5, batch=(2,)))
    assert torch.allclose(k(*args), d(*args), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(k, args)
    assert torch.autograd.gradgradcheck(k, args)


def test_grads_match_dense_autograd() -> None:
    for name, (k, d) in CASES.items():
        args = data()
        g = torch.randn_like(d(*args))
        gk = torch.autograd.grad(k(*args), args, g)
        gd = torch.autograd.grad(d(*args), args, g)
        for a, b in zip(gk, gd):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), name


def test_wide_weights_and_attention() -> None:
    """Weights of width 9 and 20+ output rows: the CPU engine's matrix products (kernel
    times weights, the softmax's weights, and the scalar products of width 9 that the
    gradients and attention's logits hold), against dense autograd to second order."""
    g = torch.Generator().manual_seed(3)
    n, m, e = 21, 23, 9
    x, y = (torch.randn(k, 3, generator=g, dtype=torch.float64) for k in (n, m))
    q, k = (torch.randn(r, e, generator=g, dtype=torch.float64) / 3 for r in (n, m))
    b = torch.randn(m, e, generator=g, dtype=torch.float64)
    args = [t.requires_grad_() for t in (x, y, q, k, b)]

    def keops(x, y, q, k, b):
        kb = ((-Vi(x).sqdist(Vj(y))).exp() * Vj(b)).sum(dim=1)
        attn = (Vi(q) | Vj(k)).sumsoftmaxweight(Vj(b), dim=1)
        return kb, attn

    def dense(x, y, q, k, b):
        kb = torch.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) @ b
        return kb, torch.softmax(q @ k.T, dim=1) @ b

    for got, want in zip(keops(*args), dense(*args)):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(keops, args)
    assert torch.autograd.gradgradcheck(keops, args)


def test_genred_and_logsumexp_classes() -> None:
    x, y, b, p = data()
    g = Genred("Exp(-SqDist(x,y)*p) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)", "p = Pm(1)"],
               reduction_op="Sum", axis=1)
    assert torch.allclose(g(x, y, b, p), d_gauss(x, y, b, p))
    assert torch.autograd.gradcheck(lambda *a: g(*a), (x, y, b, p))
    lse = LogSumExp("-SqDist(x,y)*p + b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)", "p = Pm(1)"],
                    axis=1)
    assert torch.allclose(lse(x, y, b, p), d_lse(x, y, b, p))
    knn = Genred("SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="ArgKMin", axis=1,
                 opt_arg=3)
    idx = knn(x, y)
    assert idx.dtype == torch.int64
    want = torch.topk(((x[:, None] - y[None]) ** 2).sum(-1), 3, largest=False).indices
    assert torch.equal(idx, want)
    v, i = Genred("SqDist(x,y)", ["x = Vi(2)", "y = Vj(2)"], reduction_op="Min_ArgMin",
                  axis=1)(x, y)
    assert torch.equal(i[:, 0], want[:, 0])


# -- torch.func -------------------------------------------------------------------------------
def _fix(f: Callable, args, k: int = 0) -> Callable:
    """``f`` as a function of argument ``k`` only (the others detached)."""
    rest = [a.detach() for a in args]

    def g(v):
        a = list(rest)
        a[k] = v
        return f(*a)
    return g


@pytest.mark.parametrize("name", ["gauss", "logsumexp", "sumsoftmaxweight", "min", "kmin"])
@pytest.mark.parametrize("wrt", [0, 1, 3])
def test_torch_func_transforms(name: str, wrt: int) -> None:
    k, d = CASES[name]
    args = data()
    fk, fd = _fix(k, args, wrt), _fix(d, args, wrt)
    v = args[wrt].detach()
    close = lambda a, b: torch.allclose(a, b, rtol=1e-9, atol=1e-11)  # noqa: E731
    assert close(tf.grad(lambda v: fk(v).sum())(v), tf.grad(lambda v: fd(v).sum())(v))
    assert close(tf.jacrev(fk)(v), tf.jacrev(fd)(v))
    assert close(tf.jacfwd(fk)(v), tf.jacfwd(fd)(v))
    assert close(tf.hessian(lambda v: fk(v).sum())(v), tf.hessian(lambda v: fd(v).sum())(v))
    u = torch.randn_like(v)
    (ok, tk), (od, td) = tf.jvp(fk, (v,), (u,)), tf.jvp(fd, (v,), (u,))
    assert close(ok, od) and close(tk, td)
    ok, vjp_k = tf.vjp(fk, v)
    od, vjp_d = tf.vjp(fd, v)
    g = torch.randn_like(od)
    assert close(vjp_k(g)[0], vjp_d(g)[0])
    vb = torch.stack([v, 2 * v, v + 1])
    assert close(tf.vmap(fk)(vb), tf.vmap(fd)(vb))


def test_vmap_over_several_arguments_with_batch_dims() -> None:
    x, y, b, p = [a.detach() for a in data(batch=(2,))]
    xs, ys = torch.stack([x, x + 1]), torch.stack([y, -y])
    got = tf.vmap(lambda x, y: k_gauss(x, y, b, p))(xs, ys)
    want = tf.vmap(lambda x, y: d_gauss(x, y, b, p))(xs, ys)
    assert got.shape == (2, 2, 6, 1) and torch.allclose(got, want)


# -- inputs ---------------------------------------------------------------------------------------
def test_non_contiguous_inputs() -> None:
    x, y, b, p = [a.detach() for a in data()]
    xt = x.t().contiguous().t()  # same values, transposed strides
    assert not xt.is_contiguous()
    assert torch.allclose(k_gauss(xt, y[::1], b, p), d_gauss(x, y, b, p))
    y2 = torch.cat([y, y], 1)[:, ::2]  # every other column: a strided view
    assert not y2.is_contiguous()
    assert torch.allclose(k_gauss(x, y2, b, p), d_gauss(x, y2, b, p))


def test_errors_name_the_argument() -> None:
    x, y, b, p = [a.detach() for a in data()]
    g = Genred("Exp(-SqDist(x,y)) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"],
               reduction_op="Sum", axis=1)
    with pytest.raises(TypeError, match="argument 1 is torch.float32 but argument 0 is torch.float64"):
        g(x, y.float(), b)
    with pytest.raises(TypeError, match="argument 2: expected a float32, float64, float16 or bfloat16"):
        g(x, y, b.int())
    with pytest.raises(RuntimeError, match="argument 0 is on meta"):
        g(torch.empty(6, 2, dtype=torch.float64, device="meta"), y, b)
    with pytest.raises(ValueError, match="argument 1"):
        g(x, y[:, :1], b)
    with pytest.raises(ValueError, match="rows"):
        g(x, y, b[:3])
    with pytest.raises(ValueError, match="position|expected"):
        Genred("Exp(-SqDist(x,y) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        LazyTensor(x.numpy()[:, None, :])


def test_threads_run_in_parallel_and_agree() -> None:
    jobs = []
    for s in range(8):
        x, y, b, p = [a.detach() for a in data(n=300, m=400, seed=s)]
        jobs.append(((x, y, b, p), d_gauss(x, y, b, p)))
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda j: k_gauss(*j[0]), jobs * 3))
    for out, (_, want) in zip(outs, jobs * 3):
        assert torch.allclose(out, want, rtol=1e-12)


def test_pickling() -> None:
    x, y, b, p = [a.detach() for a in data()]
    g = Genred("Exp(-SqDist(x,y)*p) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)", "p = Pm(1)"],
               reduction_op="Sum", axis=1)
    g2 = pickle.loads(pickle.dumps(g))
    assert torch.equal(g(x, y, b, p), g2(x, y, b, p))
    K = (-Vi(x).sqdist(Vj(y))).exp() * Vj(b)
    K2 = pickle.loads(pickle.dumps(K))
    assert torch.equal(K.sum(dim=1), K2.sum(dim=1))


def test_docstring_examples_run() -> None:
    import doctest

    import keops

    assert doctest.testmod(keops.torch).failed == 0


def test_no_grad_fast_path_and_forward_ad_levels() -> None:
    """Without autograd the result carries no graph; under an open forward-AD level
    (outside torch.func) tangents propagate."""
    import torch.autograd.forward_ad as fwAD

    x, y, b, p = data()
    with torch.no_grad():
        out = k_gauss(x, y, b, p)
    assert out.grad_fn is None and not out.requires_grad
    u = torch.randn_like(x)
    with fwAD.dual_level():
        xd = fwAD.make_dual(x.detach(), u)
        t = fwAD.unpack_dual(k_gauss(xd, y.detach(), b.detach(), p.detach())).tangent
    want = torch.func.jvp(lambda v: d_gauss(v, y.detach(), b.detach(), p.detach()),
                          (x.detach(),), (u,))[1]
    assert t is not None and torch.allclose(t, want, rtol=1e-10)


def test_tensordot_against_numpy_and_gradcheck() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)

    def k(x, y):
        return Vi(x).keops_tensordot(Vj(y), (2, 3), (3, 2), (1,), (0,), (1, 0)).sum(dim=1)

    want = torch.einsum("iab,jbc->ica", x.reshape(4, 2, 3), y.reshape(5, 3, 2)).reshape(4, 4)
    assert torch.allclose(k(x, y), want)
    assert torch.autograd.gradcheck(k, (x, y))
    assert torch.autograd.gradgradcheck(k, (x, y))


def test_out_receives_the_result() -> None:
    """``out=`` is written in place and returned, as in pykeops."""
    x, y = torch.rand(5, 2, dtype=torch.float64), torch.rand(7, 2, dtype=torch.float64)
    op = Genred("SqDist(x, y)", ["x = Vi(0,2)", "y = Vj(1,2)"], reduction_op="Sum", axis=1)
    out = torch.empty(5, 1, dtype=torch.float64)
    assert op(x, y, out=out) is out
    torch.testing.assert_close(out, ((x[:, None] - y[None]) ** 2).sum((1, 2))[:, None])
    with pytest.raises(TypeError, match="out: expected dtype torch.float64 .* got torch.float32"):
        op(x, y, out=torch.empty(5, 1))
    with pytest.raises(ValueError, match=r"out: expected shape \(5, 1\), got \(1, 5\)"):
        op(x, y, out=torch.empty(1, 5, dtype=torch.float64))


@pytest.mark.parametrize("name", ["trig_mod", "matrix", "kron", "bspline", "softdtw"])
def test_new_ops_gradcheck(name: str) -> None:
    """``torch.autograd.gradcheck`` through the ops of keopscore 2.3 added with issue 6."""
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    y = (torch.rand(5, 4, generator=g, dtype=torch.float64) + 0.2).requires_grad_()

    def k(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xi, yj = Vi(x), Vj(y)
        f = {
            "trig_mod": lambda: (xi - yj).atan() + xi.atan2(yj) + (xi * yj * 0.5).asin()
            + (3 * xi).mod(yj + 1) + (xi - yj).sinc(),
            "matrix": lambda: xi.matvecmult(yj.extract(0, 2)).concat(
                yj.extract(0, 2).vecmatmult(xi)) + xi.tensorprod(yj).sum(-1),
            "kron": lambda: xi.keops_kron(yj, (2, 2), (2, 2)),
            "bspline": lambda: (xi.concat(xi + 1)).bspline(yj.elem(0) + 0.5, 2),
            "softdtw": lambda: xi.softdtw_sqdist(yj, yj.elem(1) + 0.1),
        }[name]()
        return f.sum(dim=1)

    assert torch.autograd.gradcheck(k, (x, y))


# -- devices --------------------------------------------------------------------------------------
def test_rows_contiguous_keeps_strided_batches_and_copies_strided_rows() -> None:
    """What CUDA tensors are passed in place with: batch strides are free (a slice of a
    batch, an expanded batch), rows must be contiguous (else a copy is made)."""
    from keops.torch import _rows_contiguous
    base = torch.randn(4, 5, 3)
    for view in (base[::2], base[:, :, :].expand(2, 4, 5, 3), base[1], torch.randn(7, 1)[2:]):
        assert _rows_contiguous(view) is view
    for view in (base[:, :, :2], base.transpose(-1, -2), base[:, ::2], torch.randn(7, 1)[::3]):
        c = _rows_contiguous(view)
        assert c is not view and c.is_contiguous() and torch.equal(c, view)


def test_device_id_options() -> None:
    """``device_id``: a GPU number, or ``"all"`` / a list of GPU numbers to split one
    reduction over several GPUs; anything else is an error naming the option."""
    import keops
    from keops._genred import make_options
    assert make_options(device_id=-1).device_id == 0
    assert make_options(device_id=2).device_id == 2
    assert make_options(device_id="all").multi_gpu == "all"
    assert make_options(device_id=[0, 1]).multi_gpu == (0, 1)
    for bad in ("first", [], [0, -1], [0.5], -2, True):
        with pytest.raises(ValueError, match="device_id"):
            make_options(device_id=bad)
    x, y, b, p = [a.detach() for a in data()]
    with pytest.raises(ValueError, match="device_id"):
        Vi(x).sqdist(Vj(y)).sum(dim=1, device_id="first")
    # The CPU ignores it; the GPU runs the split, or says that there is no GPU.
    want = k_gauss(x, y, b, p)
    g = Genred("Exp(-SqDist(x,y)*p) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)", "p = Pm(1)"],
               axis=1)
    assert torch.allclose(g(x, y, b, p, backend="CPU", device_id="all"), want)
    if keops.gpu_available():
        assert torch.allclose(g(x, y, b, p, backend="GPU", device_id=[0, 0]), want)
    else:
        with pytest.raises(RuntimeError, match="GPU"):
            g(x, y, b, p, backend="GPU", device_id=[0, 0])


def test_out_of_gpu_memory_empties_torchs_cache_and_retries_once(monkeypatch) -> None:
    """The engine's GPU temporaries come from the driver, not PyTorch's allocator: out of
    memory, the in-place path hands PyTorch's cached blocks back and tries once more."""
    from keops import torch as kt

    emptied: list = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))

    def failing(times: int, message: str) -> Callable[[], None]:
        calls = []

        def call() -> None:
            calls.append(1)
            if len(calls) <= times:
                raise RuntimeError(message)
        call.calls = calls  # type: ignore[attr-defined]
        return call

    oom = "allocating partial states (2.0 GiB): out of memory (CUDA_ERROR_OUT_OF_MEMORY)"
    once = failing(1, oom)
    kt._retry_out_of_memory(once)
    assert len(once.calls) == 2 and emptied == [1]
    twice = failing(2, oom)
    with pytest.raises(RuntimeError, match="out of memory"):
        kt._retry_out_of_memory(twice)
    assert len(twice.calls) == 2 and emptied == [1, 1]
    other = failing(1, "launching the reduction: an illegal memory access")
    with pytest.raises(RuntimeError, match="illegal"):
        kt._retry_out_of_memory(other)
    assert len(other.calls) == 1 and emptied == [1, 1]


def test_powf_follows_torch_pow_at_zero_and_negative_bases() -> None:
    """``x ** 1.5`` (``Powf``) is ``torch.pow``: values at negative bases with integer
    exponents, and gradients at a zero base (coinciding points of a Matérn-like
    ``r ** 1.5``), where ``y b / a`` would give NaN."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:2]]).requires_grad_()          # rows 5, 6 coincide with 0, 1
    p = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    xi, xj = LazyTensor(x[:, None, :]), LazyTensor(x[None, :, :])
    r2 = ((xi - xj) ** 2).sum(-1)
    K = (r2 ** LazyTensor(p)).sum(1)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    Kd = (d2 ** p).sum(1, keepdim=True)
    torch.testing.assert_close(K, Kd)
    gk = torch.autograd.grad(K.sum(), [x, p])
    gd = torch.autograd.grad(Kd.sum(), [x, p])
    for a, b in zip(gk, gd):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
    # Negative bases: real for integer exponents, NaN otherwise, as torch.pow.
    base = torch.tensor([[-2.0], [-0.5], [0.0], [3.0]], dtype=torch.float64)
    for e in (3.0, -2.0, 0.0, 0.5):
        ek = torch.tensor([e], dtype=torch.float64)
        got = Genred("Powf(a, e)", ["a = Vi(1)", "e = Pm(1)"], reduction_op="Sum", axis=1)(base, ek)
        torch.testing.assert_close(got, torch.pow(base, e), equal_nan=True)
