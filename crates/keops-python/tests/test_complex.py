"""Complex LazyTensors (pykeops' ComplexLazyTensor): complex64/complex128 arrays in,
complex results out, in both front ends, against dense NumPy/PyTorch complex
arithmetic; gradients through PyTorch's complex autograd."""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import numpy as np
import pytest
from frontends import FRONTS, arr, front, npy

N, M, D = 4, 5, 3
R = np.random.default_rng(1)
Z = R.normal(size=(N, D)) + 1j * R.normal(size=(N, D))
W = R.normal(size=(M, D)) + 1j * R.normal(size=(M, D))
X = R.uniform(0.5, 1.5, (M, D))
S = R.uniform(0.5, 1.5, (M, 1))

CDTYPE = {"float32": np.complex64, "float64": np.complex128}


# (name, lazy expression of (z_i, w_j, x_j, s_j), dense expression of the (N, M, .) arrays)
CASES: List[Tuple[str, Callable, Callable]] = [
    ("mult", lambda z, w, x, s: z * w, lambda z, w, x, s: z * w),
    ("add_sub", lambda z, w, x, s: z + w - z * 0.5, lambda z, w, x, s: z + w - z * 0.5),
    ("divide", lambda z, w, x, s: z / w, lambda z, w, x, s: z / w),
    ("real_vector", lambda z, w, x, s: z * x + x * w - x / z + (w - x),
     lambda z, w, x, s: z * x + x * w - x / z + (w - x)),
    ("real_scalar", lambda z, w, x, s: s * z + w * s, lambda z, w, x, s: s * z + w * s),
    ("numbers", lambda z, w, x, s: 2.0 * z + w * 1j + (1 - 2j) - z / 2,
     lambda z, w, x, s: 2.0 * z + w * 1j + (1 - 2j) - z / 2),
    ("exp_conj", lambda z, w, x, s: (z * w * 0.3).exp() + z.conj() * w,
     lambda z, w, x, s: np.exp(z * w * 0.3) + np.conj(z) * w),
    ("exp1j", lambda z, w, x, s: x.exp1j() * z + x.real2complex() - x.imag2complex(),
     lambda z, w, x, s: np.exp(1j * x) * z + x - 1j * x),
    ("complex_scalar_sum", lambda z, w, x, s: (z * w).sum(-1) * w,
     lambda z, w, x, s: (z * w).sum(-1, keepdims=True) * w),
    ("neg", lambda z, w, x, s: -(z - w), lambda z, w, x, s: -(z - w)),
]

REAL_CASES: List[Tuple[str, Callable, Callable]] = [
    ("parts", lambda z, w, x, s: (z * w).real + 2 * (z - w).imag,
     lambda z, w, x, s: (z * w).real + 2 * (z - w).imag),
    ("abs_angle", lambda z, w, x, s: abs(z - w) + (z * w).angle() + (z + w).abs(),
     lambda z, w, x, s: np.abs(z - w) + np.angle(z * w) + np.abs(z + w)),
]


def lazies(k: Any, fname: str, dtype: str) -> Tuple[Any, ...]:
    c = CDTYPE[dtype]
    return (k.Vi(arr(fname, Z.astype(c))), k.Vj(arr(fname, W.astype(c))),
            k.Vj(arr(fname, X.astype(dtype))), k.Vj(arr(fname, S.astype(dtype))))


def dense_args() -> Tuple[np.ndarray, ...]:
    return Z[:, None], W[None], X[None], S[None]


@pytest.mark.parametrize("case", CASES + REAL_CASES, ids=[c[0] for c in CASES + REAL_CASES])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fname", FRONTS)
def test_complex_against_dense(case: Tuple[str, Callable, Callable], dtype: str,
                               fname: str) -> None:
    name, lazy, dense = case
    k = front(fname)
    F = lazy(*lazies(k, fname, dtype))
    want = np.broadcast_to(dense(*dense_args()), (N, M, F.shape[-1]))
    is_complex = case in CASES
    assert F.shape == (N, M, want.shape[-1]), name
    tol = 1e-4 if dtype == "float32" else 1e-11
    for dim in (0, 1):
        got = npy(F.sum(dim=dim))
        want_dtype = CDTYPE[dtype] if is_complex else np.dtype(dtype)
        assert got.dtype == want_dtype, (name, got.dtype)
        np.testing.assert_allclose(got, want.sum(dim), rtol=tol, atol=tol, err_msg=f"{name} {dim}")
    np.testing.assert_allclose(npy(F.dense()), want, rtol=tol, atol=tol, err_msg=f"{name} dense")


@pytest.mark.parametrize("fname", FRONTS)
def test_complex_lazytensor_properties_and_errors(fname: str) -> None:
    k = front(fname)
    z, w, x, _ = lazies(k, fname, "float64")
    assert z.shape == (N, 1, D) and (z * w).shape == (N, M, D)
    assert str(z.dtype).endswith("complex128")
    assert "ComplexMult" in (z * w).formula
    with pytest.raises(TypeError, match="complex"):
        z.log()
    with pytest.raises(TypeError, match="complex"):
        (z * w).logsumexp(dim=1)
    with pytest.raises(TypeError, match="complex"):
        z < w
    with pytest.raises(TypeError, match="complex"):
        z.real2complex()
    with pytest.raises(TypeError, match="complex"):
        x.real  # noqa: B018
    # A full LazyTensor from a complex array with pykeops' shapes.
    zz = k.LazyTensor(arr(fname, Z[:, None, :]))
    assert zz.shape == (N, 1, D)


def test_torch_complex_gradients_match_dense_autograd() -> None:
    torch = pytest.importorskip("torch")
    from keops.torch import LazyTensor

    z = torch.from_numpy(Z).requires_grad_()
    w = torch.from_numpy(W).requires_grad_()
    x = torch.from_numpy(X).requires_grad_()

    def loss_keops() -> Any:
        zi, wj, xj = LazyTensor(z[:, None, :]), LazyTensor(w[None, :, :]), LazyTensor(x[None])
        a = ((zi * wj * 0.3).exp() * xj + zi.conj() / wj).sum(dim=1)
        return (a.abs() ** 2).sum() + a.real.sum()

    def loss_dense() -> Any:
        zi, wj, xj = z[:, None, :], w[None], x[None]
        a = (torch.exp(zi * wj * 0.3) * xj + zi.conj() / wj).sum(1)
        return (a.abs() ** 2).sum() + a.real.sum()

    got = torch.autograd.grad(loss_keops(), [z, w, x])
    want = torch.autograd.grad(loss_dense(), [z, w, x])
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-10)
