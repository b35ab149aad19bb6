"""Every ``LazyTensor`` method, in both front ends (NumPy, PyTorch) and both precisions,
against dense NumPy float64 computations of the same expression."""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import numpy as np
import pytest
from frontends import FRONTS, arr, front, npy

N, M, D = 5, 6, 3
R = np.random.default_rng(0)
X = R.uniform(0.1, 1.0, (N, D))
Y = R.uniform(0.1, 1.0, (M, D))
P = np.array([0.3, 0.6, 0.9])
B = R.uniform(-1, 1, (M, 2))

# (name, lazy expression of (x_i, y_j, p), dense expression of (X[:,None], Y[None], P)).
# Dense arrays are (N, M, d) after broadcasting.
def gauss(x, y):
    return (-(x - y) ** 2 * 1.0).sum(-1)


def round_away(v: np.ndarray, d: int) -> np.ndarray:
    """C's ``round`` (halves away from zero) to ``d`` decimals, as KeOps' ``Round``."""
    return np.sign(v) * np.floor(np.abs(v) * 10.0 ** d + 0.5) / 10.0 ** d


def rect_dense(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x ++ y) as a row-major 3x2 matrix times y[:2], plus y[:2] times it as 2x3."""
    x, y = np.broadcast_arrays(x, y)
    a = np.concatenate([x, y], -1)
    v = y[..., :2]
    mv = np.einsum("...ik,...k->...i", a.reshape(*a.shape[:-1], 3, 2), v)
    vm = np.einsum("...k,...ki->...i", v, a.reshape(*a.shape[:-1], 2, 3))
    return mv + vm


def bspline_dense(t: np.ndarray, x: np.ndarray, order: int) -> np.ndarray:
    """Cox-de Boor (0/0 = 0) on the last axis, vectorised over the leading ones."""
    lead = np.broadcast_shapes(t.shape[:-1], x.shape[:-1])
    t, x = np.broadcast_to(t, lead + t.shape[-1:]), np.broadcast_to(x[..., :1], lead + (1,))
    b = ((t[..., :-1] <= x) & (x < t[..., 1:])).astype(float)
    frac = lambda a, d: np.where(d > 0, a / np.where(d > 0, d, 1), 0.0)  # noqa: E731
    for k in range(1, order + 1):
        K = t.shape[-1]
        i = np.arange(K - 1 - k)
        b = (frac(x - t[..., i], t[..., i + k] - t[..., i]) * b[..., i]
             + frac(t[..., i + k + 1] - x, t[..., i + k + 1] - t[..., i + 1]) * b[..., i + 1])
    return b


def softdtw_dense(x: np.ndarray, y: np.ndarray, g: float) -> np.ndarray:
    """Soft-DTW (squared differences) of the series on the last axes, per (i, j)."""
    x, y = np.broadcast_arrays(x, y)
    n, m = x.shape[-1], y.shape[-1]
    r = np.full(x.shape[:-1] + (n + 1, m + 1), np.inf)
    r[..., 0, 0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c = np.stack([r[..., i - 1, j - 1], r[..., i - 1, j], r[..., i, j - 1]])
            mn = c.min(0)
            r[..., i, j] = (x[..., i - 1] - y[..., j - 1]) ** 2 + mn - g * np.log(
                np.exp(-(c - mn) / g).sum(0))
    return r[..., n, m][..., None]


def kron2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``numpy.kron`` of (x, y0) as 2x2 with (y, x) as 2x3, per (i, j) pair."""
    x, y = np.broadcast_arrays(x, y)
    a = np.concatenate([x, y[..., :1]], -1).reshape(*x.shape[:-1], 2, 2)
    b = np.concatenate([y, x], -1).reshape(*x.shape[:-1], 2, 3)
    return np.einsum("...ij,...lm->...iljm", a, b).reshape(*x.shape[:-1], 24)


def kron3(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``numpy.kron`` of 2x2x2 and 1x3x1 tensors, per (i, j) pair."""
    x, y = np.broadcast_arrays(x, y)
    a = np.concatenate([x, y, x[..., :1], y[..., :1]], -1).reshape(*x.shape[:-1], 2, 2, 2)
    b = y.reshape(*x.shape[:-1], 1, 3, 1)
    return np.einsum("...ijk,...lmn->...iljmkn", a, b).reshape(*x.shape[:-1], 24)


CASES: List[Tuple[str, Callable, Callable]] = [
    ("add", lambda x, y, p: x + y, lambda x, y, p: x + y),
    ("sub_number", lambda x, y, p: 2 - x - y * 0.5, lambda x, y, p: 2 - x - y * 0.5),
    ("mul", lambda x, y, p: x * y * p, lambda x, y, p: x * y * p),
    ("div", lambda x, y, p: x / y - 1 / y, lambda x, y, p: x / y - 1 / y),
    ("neg_abs", lambda x, y, p: abs(-(x - y)), lambda x, y, p: np.abs(x - y)),
    ("pow", lambda x, y, p: (x - y) ** 2 + x ** 3 + y ** 0.5 + y ** -0.5 + x ** 1.5,
     lambda x, y, p: (x - y) ** 2 + x ** 3 + y ** 0.5 + y ** -0.5 + x ** 1.5),
    ("power_square", lambda x, y, p: x.power(2) + y.square(), lambda x, y, p: x ** 2 + y ** 2),
    ("scalprod", lambda x, y, p: x | y, lambda x, y, p: (x * y).sum(-1, keepdims=True)),
    ("compare", lambda x, y, p: (x < y) + 2 * (x <= y) + 4 * (x > y) + 8 * (x >= 0.5)
     + 16 * (x * 0 == y * 0) + 32 * (x != y),
     lambda x, y, p: (x < y) + 2 * (x <= y) + 4 * (x > y) + 8 * (x >= 0.5) + 16.0 + 32 * (x != y)),
    ("exp_log", lambda x, y, p: (x - y).exp() + y.log() + x.xlogx(),
     lambda x, y, p: np.exp(x - y) + np.log(y) + x * np.log(x)),
    ("trig", lambda x, y, p: (x * y).sin() + (x - y).cos(), lambda x, y, p: np.sin(x * y) + np.cos(x - y)),
    ("roots", lambda x, y, p: x.sqrt() + y.rsqrt() + x.inv(),
     lambda x, y, p: np.sqrt(x) + 1 / np.sqrt(y) + 1 / x),
    ("sign_step_relu", lambda x, y, p: (x - y).sign() + (x - y).step() * 2 + (x - y).relu() * 4,
     lambda x, y, p: np.sign(x - y) + 2.0 * (x >= y) + 4 * np.maximum(x - y, 0)),
    ("clamp", lambda x, y, p: (x - y).clamp(-0.2, 0.3) + (3 * x).clamp(0, 1),
     lambda x, y, p: np.clip(x - y, -0.2, 0.3) + np.clip(3 * x, 0, 1)),
    ("ifelse", lambda x, y, p: (x - y).ifelse(x, y * 2), lambda x, y, p: np.where(x - y >= 0, x, 2 * y)),
    ("norms", lambda x, y, p: x.sqnorm2() + (x - y).norm2() + y.norm(-1),
     lambda x, y, p: (x ** 2).sum(-1, keepdims=True) + np.linalg.norm(x - y, axis=-1, keepdims=True)
     + np.linalg.norm(y, axis=-1, keepdims=True)),
    ("normalize", lambda x, y, p: (x - y).normalize(),
     lambda x, y, p: (x - y) / np.linalg.norm(x - y, axis=-1, keepdims=True)),
    ("sqdist", lambda x, y, p: x.sqdist(y), lambda x, y, p: ((x - y) ** 2).sum(-1, keepdims=True)),
    ("weighted", lambda x, y, p: x.weightedsqnorm(p) + x.weightedsqdist(y, p),
     lambda x, y, p: (p * x ** 2).sum(-1, keepdims=True) + (p * (x - y) ** 2).sum(-1, keepdims=True)),
    ("elem_extract", lambda x, y, p: x.elem(1) + y.extract(1, 2).sum(-1) + x[0] + y[0:2].sum(-1),
     lambda x, y, p: x[..., 1:2] + y[..., 1:3].sum(-1, keepdims=True) + x[..., 0:1]
     + y[..., 0:2].sum(-1, keepdims=True)),
    ("concat", lambda x, y, p: x.concat(y.elem(0)), lambda x, y, p: np.concatenate(
        [np.broadcast_to(x, (N, M, D)), np.broadcast_to(y[..., :1], (N, M, 1))], -1)),
    ("tensordot", lambda x, y, p: x.keops_tensordot(y, (3,), (3,), (), (), (1, 0)).sum(-1)
     + x.concat(y).tensordot(p, (2, 3), (3,), (1,), (0,)).elem(1),
     lambda x, y, p: x.sum(-1, keepdims=True) * y.sum(-1, keepdims=True) + (y * p).sum(-1, keepdims=True)),
    ("floor_round_mod", lambda x, y, p: (3 * x * y).floor() + (x - y).round(1) + (x * y).round()
     + (5 * x).mod(0.7, 0.1) + (x - y).mod(y),
     lambda x, y, p: np.floor(3 * x * y) + round_away(x - y, 1) + round_away(x * y, 0)
     + (5 * x - 0.7 * np.floor((5 * x - 0.1) / 0.7)) + (x - y - y * np.floor((x - y) / y))),
    ("inverse_trig", lambda x, y, p: (x - y).atan() + (x * y).asin() + (x * y).acos()
     + y.atan2(x - 0.5),
     lambda x, y, p: np.arctan(x - y) + np.arcsin(x * y) + np.arccos(x * y) + np.arctan2(y, x - 0.5)),
    ("sinc", lambda x, y, p: (x - y).sinxdivx() + (2 * x - y).sinc(),
     lambda x, y, p: np.sin(x - y) / (x - y) + np.sinc(2 * x - y)),
    ("matvec_vecmat", lambda x, y, p: x.tensorprod(y).matvecmult(p)
     + 2 * p.vecmatmult(x.tensorprod(y)) + x.concat(y).matvecmult(y.extract(0, 2))
     + y.extract(0, 2).vecmatmult(x.concat(y)),
     lambda x, y, p: x * (y * p).sum(-1, keepdims=True) + 2 * (x * p).sum(-1, keepdims=True) * y
     + rect_dense(x, y)),
    ("kron", lambda x, y, p: x.concat(y.elem(0)).keops_kron(y.concat(x), (2, 2), (2, 3)),
     lambda x, y, p: kron2(x, y)),
    ("kron3", lambda x, y, p: x.concat(y).concat(x.elem(0)).concat(y.elem(0)).keops_kron(
        y, (2, 2, 2), (1, 3, 1)),
     lambda x, y, p: kron3(x, y)),
    # Sorted knots (a parameter), evaluated at 2.5 y_0 + x_0 / 10.
    ("bspline", lambda x, y, p: p.concat(p + 1).concat(p + 2).bspline(
        y.elem(0) * 2.5 + x.elem(0) / 10, 2)
     + p.concat(p + 1).bspline(y.elem(1) * 2, 0).sum(-1),
     lambda x, y, p: bspline_dense(np.concatenate([p, p + 1, p + 2]), 2.5 * y[..., :1]
                                   + x[..., :1] / 10, 2)
     + bspline_dense(np.concatenate([p, p + 1]), 2 * y[..., 1:2], 0).sum(-1, keepdims=True)),
    ("softdtw", lambda x, y, p: x.softdtw_sqdist(y, 0.5) + (x * 2).softdtw_sqdist(y, p.elem(0)),
     lambda x, y, p: softdtw_dense(x, y, 0.5) + softdtw_dense(2 * x, y, P[0])),
    ("trace_operator", lambda x, y, p: (x * y * p).trace_operator(x),
     lambda x, y, p: (y * p).sum(-1, keepdims=True)),
    ("difference_matrix", lambda x, y, p: x.difference_matrix(y.extract(0, 2)),
     lambda x, y, p: (x[..., None, :] - y[..., :2, None]).reshape(
         *np.broadcast_shapes(x.shape[:-1], y.shape[:-1]), 2 * D)),
    ("factorize", lambda x, y, p: (x.sqdist(y) * (-x.sqdist(y)).exp()).factorize(x.sqdist(y))
     + (x.sqdist(y) * x.sqdist(y).sin()).auto_factorize(),
     lambda x, y, p: (lambda d: d * np.exp(-d) + d * np.sin(d))(((x - y) ** 2).sum(-1, keepdims=True))),
    ("one_hot", lambda x, y, p: ((x - y).elem(0).sign() + 1).one_hot(3) * x,
     lambda x, y, p: np.eye(3)[(np.sign(x[..., 0] - y[..., 0]) + 1).astype(int)] * x),
    ("coord_sum", lambda x, y, p: (x * y).sum(-1), lambda x, y, p: (x * y).sum(-1, keepdims=True)),
    ("grad", lambda x, y, p: (-x.sqdist(y)).exp().grad(x, 1.0),
     lambda x, y, p: -2 * (x - y) * np.exp(-((x - y) ** 2).sum(-1, keepdims=True))),
    ("diff", lambda x, y, p: (-x.sqdist(y)).exp().diff(x, p),
     lambda x, y, p: -2 * ((x - y) * p).sum(-1, keepdims=True) * np.exp(-((x - y) ** 2).sum(-1, keepdims=True))),
    ("laplacian", lambda x, y, p: (-x.sqdist(y)).exp().laplacian(x),
     lambda x, y, p: (4 * ((x - y) ** 2).sum(-1, keepdims=True) - 2 * D)
     * np.exp(-((x - y) ** 2).sum(-1, keepdims=True))),
    ("divergence", lambda x, y, p: ((x - y) * (-x.sqdist(y)).exp()).divergence(x),
     lambda x, y, p: (D - 2 * ((x - y) ** 2).sum(-1, keepdims=True))
     * np.exp(-((x - y) ** 2).sum(-1, keepdims=True))),
    ("grad_matrix", lambda x, y, p: (x * y).grad_matrix(x),
     lambda x, y, p: np.broadcast_to(np.diag(np.ones(D)).reshape(-1), (N, M, D * D)) * np.repeat(y, D, -1)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fname", FRONTS)
def test_method_against_dense(case: Tuple[str, Callable, Callable], dtype: str, fname: str) -> None:
    name, lazy, dense = case
    k = front(fname)
    x_i, y_j, p = k.Vi(arr(fname, X, dtype)), k.Vj(arr(fname, Y, dtype)), k.Pm(arr(fname, P, dtype))
    want = np.broadcast_to(dense(X[:, None, :], Y[None, :, :], P), (N, M, lazy(x_i, y_j, p).ndim))
    tol = 1e-4 if dtype == "float32" else 1e-11
    F = lazy(x_i, y_j, p)
    d = want.shape[-1]
    assert F.shape == ((N, M, d) if d > 1 else (N, M)) and F.ndim == d, name
    for dim in (0, 1):
        got = npy(F.sum(dim=dim))
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, want.sum(dim), rtol=tol, atol=tol, err_msg=f"{name} dim {dim}")
    np.testing.assert_allclose(npy(F.dense()), want, rtol=tol, atol=tol, err_msg=f"{name} dense")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fname", FRONTS)
def test_reductions_against_dense(dtype: str, fname: str) -> None:
    k = front(fname)
    x_i, y_j = k.Vi(arr(fname, X, dtype)), k.Vj(arr(fname, Y, dtype))
    b_j = k.Vj(arr(fname, B, dtype))
    F = x_i.sqdist(y_j)
    d2 = ((X[:, None] - Y[None]) ** 2).sum(-1)
    tol = 1e-5 if dtype == "float32" else 1e-12
    close = lambda a, b: np.testing.assert_allclose(npy(a), b, rtol=tol, atol=tol)  # noqa: E731
    for dim, ax in ((1, 1), (0, 0)):
        close(F.sum(dim), d2.sum(ax)[..., None] if ax == 1 else d2.sum(0)[:, None])
        close((-F).logsumexp(dim), np.log(np.exp(-d2).sum(ax))[:, None])
        close(F.min(dim), d2.min(ax)[:, None])
        close(F.max(axis=dim), d2.max(ax)[:, None])
        np.testing.assert_array_equal(npy(F.argmin(dim))[:, 0], d2.argmin(ax))
        np.testing.assert_array_equal(npy(F.argmax(dim))[:, 0], d2.argmax(ax))
        v, i = F.min_argmin(dim)
        np.testing.assert_array_equal(npy(i)[:, 0], d2.argmin(ax))
        v, i = F.max_argmax(dim)
        close(v, d2.max(ax)[:, None])
        close(F.Kmin(3, dim), np.sort(d2, ax)[:, :3] if ax == 1 else np.sort(d2, 0)[:3].T)
        order = np.argsort(d2, ax)
        np.testing.assert_array_equal(npy(F.argKmin(2, dim)), order[:, :2] if ax == 1 else order[:2].T)
        v, i = F.Kmin_argKmin(2, dim)
        np.testing.assert_array_equal(npy(i), order[:, :2] if ax == 1 else order[:2].T)
    # Weighted reductions (over j).
    w = np.exp(-d2)
    close((-F).logsumexp(1, weight=(b_j * 0 + 2.0).exp()), np.log(w.sum(1) * np.exp(2.0))[:, None] * np.ones((1, 2)))
    close((-F).sumsoftmaxweight(b_j, dim=1), (w / w.sum(1, keepdims=True)) @ B)
    # Linear algebra: K @ v, matvec, rmatvec, t().
    K = (-F).exp()
    v = arr(fname, B, dtype)
    close(K @ v, w @ B)
    close(K.matvec(v), w @ B)
    close(K @ arr(fname, B[:, 0], dtype), w @ B[:, 0])
    close(K.rmatvec(arr(fname, X[:, :2], dtype)), w.T @ X[:, :2])
    assert K.t().shape == (M, N)
    close(K.t().sum(dim=1), w.sum(0)[:, None])


@pytest.mark.parametrize("fname", FRONTS)
def test_batch_dimensions_and_properties(fname: str) -> None:
    k = front(fname)
    xb = np.stack([X, 2 * X])
    x_i, y_j = k.LazyTensor(arr(fname, xb[:, :, None, :], "float64")), k.Vj(arr(fname, Y, "float64"))
    F = (-x_i.sqdist(y_j)).exp()
    assert F.shape == (2, N, M) and F.dim() == 4 and F.ndim == 1
    assert F.dtype == "float64" and F.nbatchdims == 1 and F.batchdims == (2,)
    assert (F.ni, F.nj) == (N, M)
    d2 = ((xb[:, :, None] - Y[None, None]) ** 2).sum(-1)
    np.testing.assert_allclose(npy(F.sum(dim=2)), np.exp(-d2).sum(2)[..., None], rtol=1e-12)
    np.testing.assert_allclose(npy(F.sum(dim=-3)), np.exp(-d2).sum(1)[..., None], rtol=1e-12)
    np.testing.assert_allclose(npy(F.dense())[..., 0], np.exp(-d2), rtol=1e-12)
    with pytest.raises(ValueError, match="batch dimension"):
        F.sum(dim=0)


def test_dense_refuses_huge_matrices() -> None:
    k = front("numpy")
    big = np.zeros((20000, 1))
    with pytest.raises(ValueError, match="entries"):
        (k.Vi(big) - k.Vj(big)).dense()


@pytest.mark.parametrize("fname", FRONTS)
def test_generic_shortcuts(fname: str) -> None:
    """pykeops' ``generic_*`` take the axis from the output alias."""
    k = front(fname)
    x, y = arr(fname, X, "float64"), arr(fname, Y, "float64")
    d2 = ((X[:, None] - Y[None]) ** 2).sum(-1)
    al = ("x = Vi(3)", "y = Vj(3)")
    np.testing.assert_allclose(npy(k.generic_sum("SqDist(x,y)", "a = Vi(1)", *al)(x, y)),
                               d2.sum(1)[:, None], rtol=1e-12)
    np.testing.assert_allclose(npy(k.generic_sum("SqDist(x,y)", "a = Vj(1)", *al)(x, y)),
                               d2.sum(0)[:, None], rtol=1e-12)
    np.testing.assert_allclose(npy(k.generic_logsumexp("-SqDist(x,y)", "a = Vi(1)", *al)(x, y)),
                               np.log(np.exp(-d2).sum(1))[:, None], rtol=1e-12)
    np.testing.assert_array_equal(npy(k.generic_argmin("SqDist(x,y)", "a = Vi(1)", *al)(x, y))[:, 0],
                                  d2.argmin(1))
    np.testing.assert_array_equal(
        npy(k.generic_argkmin("SqDist(x,y)", "a = Vi(2)", *al, opt_arg=2)(x, y)),
        np.argsort(d2, 1)[:, :2])
