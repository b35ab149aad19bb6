"""``keops.numpy.LazyTensor`` against dense NumPy, in pykeops' idioms."""

from __future__ import annotations

import numpy as np
import pytest

from keops.numpy import LazyTensor, Pm, Vi, Vj


def pts(dtype=np.float64, n=40, m=60, d=3, seed=0):
    r = np.random.default_rng(seed)
    return r.random((n, d)).astype(dtype), r.random((m, d)).astype(dtype)


def dense_d2(x, y):
    return ((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float64, 1e-12)])
def test_gaussian_kernel_product_pykeops_style(dtype, tol):
    x, y = pts(dtype)
    b = np.random.default_rng(1).random((60, 2)).astype(dtype)
    x_i = LazyTensor(x[:, None, :])
    y_j = LazyTensor(y[None, :, :])
    D_ij = ((x_i - y_j) ** 2).sum(-1)
    K_ij = (-D_ij / 2).exp()
    assert K_ij.shape == (40, 60) and K_ij.ndim == 1 and K_ij.dim() == 3
    a = (K_ij * LazyTensor(b[None, :, :])).sum(dim=1)
    want = np.exp(-dense_d2(x, y) / 2) @ b.astype(np.float64)
    assert a.shape == (40, 2) and a.dtype == dtype
    assert np.abs(a - want).max() <= tol * np.abs(want).max()


def test_methods_and_reductions():
    x, y = pts()
    x_i, y_j = Vi(x), Vj(y)
    d2 = dense_d2(x, y)
    np.testing.assert_allclose(x_i.sqdist(y_j).sum(dim=0), d2.sum(0)[:, None], rtol=1e-12)
    np.testing.assert_allclose((x_i | y_j).max(dim=1), (x @ y.T).max(1)[:, None], rtol=1e-12)
    np.testing.assert_allclose((-x_i.sqdist(y_j)).logsumexp(dim=1),
                               np.log(np.exp(-d2).sum(1))[:, None], rtol=1e-12)
    knn = x_i.sqdist(y_j).argKmin(4, dim=1)
    np.testing.assert_array_equal(knn, np.argsort(d2, 1)[:, :4])
    v, i = x_i.sqdist(y_j).min_argmin(dim=1)
    np.testing.assert_array_equal(i[:, 0], d2.argmin(1))
    # Mixed operands: numbers, parameters, coordinates.
    p = Pm(np.array([0.5]))
    f = ((x_i - y_j).abs() * p + 1.0).sqrt().elem(1) - 2 * (x_i.concat(y_j)).extract(2, 1).cos()
    want = np.sqrt(np.abs(x[:, None, 1] - y[None, :, 1]) * 0.5 + 1) - 2 * np.cos(
        np.broadcast_to(x[:, None, 2], (40, 60)))
    np.testing.assert_allclose(f.sum(dim=1)[:, 0], want.sum(1), rtol=1e-12)


def test_reusing_a_variable_and_repr():
    x, y = pts()
    x_i, y_j = Vi(x), Vj(y)
    f = (x_i * y_j + x_i).sum(-1)
    assert "v0" in repr(f) and f.ndim == 1 and f.shape == (40, 60)
    np.testing.assert_allclose(f.sum(dim=1)[:, 0], ((x[:, None, :] * y[None] + x[:, None, :]).sum(-1)).sum(1),
                               rtol=1e-12)


def test_errors():
    x, y = pts()
    with pytest.raises(ValueError, match="dim"):
        Vi(x).sqdist(Vj(y)).logsumexp()
    with pytest.raises(TypeError):
        LazyTensor(np.zeros((3, 1, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="dimension"):
        (Vi(x) + Vj(y[:, :2])).sum(dim=1)
    torch = pytest.importorskip("torch")
    from keops.torch import Vj as TVj
    with pytest.raises(TypeError, match="cannot combine a keops.numpy LazyTensor with a "
                       "keops.torch one"):
        Vi(x) - TVj(torch.from_numpy(y))


def test_formulas_with_many_arrays_are_numbered_right():
    """Placeholders of two digits (``v10``...): a sum of twelve distinct arrays, joined
    one operand at a time and as two halves (renumbering several arrays at once), and
    an array shared by both halves."""
    r = np.random.default_rng(3)
    x = r.random((5, 1))
    ys = [r.random((7, 1)) for _ in range(12)]
    x_i = Vi(x)
    one = x_i
    for y in ys:
        one = one + Vj(y) * Vj(y)
    want = (x + sum(y[:, 0] ** 2 for y in ys)[None, :]).sum(1)
    np.testing.assert_allclose(one.sum(dim=1)[:, 0], want, rtol=1e-12)
    a = x_i * 0
    for y in ys[:6]:
        a = a + Vj(y)
    b = Vj(ys[0]) * 0
    for y in ys[6:]:
        b = b - Vj(y)
    both = (a + b * x_i).sum(dim=1)[:, 0]
    want = (sum(y[:, 0] for y in ys[:6])[None, :]
            - x * sum(y[:, 0] for y in ys[6:])[None, :]).sum(1)
    np.testing.assert_allclose(both, want, rtol=1e-12)
    f = a + b
    assert len(f._vars) == 13  # x, the twelve ys: ys[0] once, shared by both halves


def test_options_are_checked_on_every_call():
    """Options are made once per distinct call: a wrong value is still an error, each
    time, with its message."""
    x, y = pts()
    K = Vi(x).sqdist(Vj(y))
    for _ in range(2):
        with pytest.raises(ValueError, match="invalid backend"):
            K.sum(dim=1, backend="cpu")
        with pytest.raises(ValueError, match="invalid backend"):
            K.sum(dim=1, backend=["CPU"])
        with pytest.raises(ValueError, match="invalid device_id True"):
            K.sum(dim=1, device_id=True)
        with pytest.raises(ValueError, match="invalid dtype_acc"):
            K.sum(dim=1, dtype_acc="int8")
    np.testing.assert_allclose(K.sum(dim=1, backend="CPU", device_id=0),
                               dense_d2(x, y).sum(1)[:, None], rtol=1e-12)


def test_matmul_shapes():
    x, y = pts()
    K = (-Vi(x).sqdist(Vj(y))).exp()
    k = np.exp(-dense_d2(x, y))
    v = np.random.default_rng(2).random(60)
    np.testing.assert_allclose(K @ v, k @ v, rtol=1e-12)
    np.testing.assert_allclose(K @ v[:, None], k @ v[:, None], rtol=1e-12)
    with pytest.raises(ValueError, match="got a scalar"):
        K @ np.float64(2.0)
