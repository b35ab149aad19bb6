"""Block-sparse reductions from Python: pykeops' ``ranges`` 6-tuple on ``Genred`` and
``LazyTensor`` (both front ends), against dense NumPy computations restricted to the kept
blocks; the clustering helpers against straightforward NumPy implementations; gradients
through block-sparse reductions (``torch.autograd.gradcheck``); malformed ranges."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import pytest
from frontends import needs_torch, torch

import keops.numpy.cluster as nc
from keops.numpy import Genred, LazyTensor

if torch is not None:
    import keops.torch.cluster as tc
    from keops.torch import Genred as TGenred
    from keops.torch import LazyTensor as TLazyTensor

RNG = np.random.default_rng(0)


def clustered(n: int, m: int, eps: float, threshold: float, dtype: Any = np.float64,
              drop: bool = False) -> Tuple[np.ndarray, np.ndarray, Tuple[np.ndarray, ...],
                                           np.ndarray]:
    """Sorted clustered points x (n, 2), y (m, 2), their ranges and the dense (n, m)
    mask of kept pairs. ``drop``: the first cluster of x is in no range."""
    x = RNG.random((n, 2)).astype(dtype)
    y = RNG.random((m, 2)).astype(dtype)
    lx, ly = nc.grid_cluster(x, eps), nc.grid_cluster(y, eps)
    x, lx = nc.sort_clusters(x, lx)
    y, ly = nc.sort_clusters(y, ly)
    rx, cx, _ = nc.cluster_ranges_centroids(x, lx)
    ry, cy, _ = nc.cluster_ranges_centroids(y, ly)
    keep = ((cx[:, None, :] - cy[None, :, :]) ** 2).sum(-1) < threshold ** 2
    mask = keep[lx][:, ly]
    if drop:
        keep, rx = keep[1:], rx[1:]
        mask[lx == 0] = False
    return x, y, nc.from_matrix(rx, ry, keep), mask


def masked_gauss(x: np.ndarray, y: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    k = np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) * 20.0) * mask
    return k @ b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("drop", [False, True])
def test_genred_sum_both_axes(dtype: Any, drop: bool) -> None:
    x, y, ranges, mask = clustered(300, 400, 0.1, 0.3, dtype, drop)
    b = RNG.random((400, 2)).astype(dtype)
    g = Genred("Exp(-SqDist(x,y) * g) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(2)", "g = Pm(1)"],
               axis=1)
    p = np.array([20.0], dtype=dtype)
    got = g(x, y, b, p, ranges=ranges)
    want = masked_gauss(x.astype(float), y.astype(float), b.astype(float), mask)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    assert mask.mean() < 0.6, "the mask must skip work"
    # axis 0 reduces over i with the other half of the same ranges.
    a = RNG.random((300, 1)).astype(dtype)
    g0 = Genred("Exp(-SqDist(x,y) * g) * a", ["x = Vi(2)", "y = Vj(2)", "a = Vi(1)", "g = Pm(1)"],
                axis=0)
    got0 = g0(x, y, a, p, ranges=ranges)
    want0 = masked_gauss(y.astype(float), x.astype(float), a.astype(float), mask.T)
    np.testing.assert_allclose(got0, want0, rtol=tol, atol=tol * np.abs(want0).max())


def test_lazytensor_reductions_and_attribute() -> None:
    x, y, ranges, mask = clustered(200, 250, 0.1, 0.25, drop=True)
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    D = ((LazyTensor(x[:, None, :]) - LazyTensor(y[None, :, :])) ** 2).sum(-1)
    big = np.where(mask, d2, np.inf)
    np.testing.assert_allclose(D.min(dim=1, ranges=ranges).ravel(), big.min(1))
    covered = mask.any(1)
    idx = D.argmin(dim=1, ranges=ranges).ravel()
    assert (idx[covered] == big.argmin(1)[covered]).all() and (idx[~covered] == -1).all()
    knn = D.argKmin(3, dim=1, ranges=ranges)
    assert knn.shape == (200, 3)
    lse = (-D).logsumexp(dim=1, ranges=ranges).ravel()
    with np.errstate(divide="ignore"):
        want = np.log(np.where(mask, np.exp(-d2), 0).sum(1))
    np.testing.assert_allclose(lse, want, rtol=1e-12)
    # The attribute: kept by operations, used by reductions, swapped by t().
    D.ranges = ranges
    K = (-D).exp()
    b = RNG.random((250, 1))
    np.testing.assert_allclose(K @ b, (np.exp(-d2) * mask) @ b, rtol=1e-12)
    c = RNG.random((200, 1))
    np.testing.assert_allclose(K.t() @ c, (np.exp(-d2) * mask).T @ c, rtol=1e-12)
    other = LazyTensor(y[None, :, :])
    other.ranges = nc.swap_axes(ranges)
    with pytest.raises(ValueError, match="different block-sparsity"):
        _ = D + other.sum(-1)


def test_batch_dims_use_flattened_indices() -> None:
    # Two batch entries; block-diagonal ranges over the flattened (batch * n) rows.
    x = RNG.random((2, 30, 2))
    y = RNG.random((2, 40, 2))
    b = RNG.random((2, 40, 1))
    ri = np.array([[0, 10], [10, 30], [30, 45], [45, 60]])
    rj = np.array([[0, 20], [20, 40], [40, 60], [60, 80]])
    keep = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1]], dtype=bool)
    ranges = nc.from_matrix(ri, rj, keep)
    g = Genred("Exp(-SqDist(x,y)) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=1)
    got = g(x, y, b, ranges=ranges)
    for e in range(2):
        mask = np.zeros((30, 40), dtype=bool)
        for k in range(4):
            for m in range(4):
                if keep[k, m] and ri[k, 0] // 30 == e:
                    mask[ri[k, 0] - 30 * e:ri[k, 1] - 30 * e, rj[m, 0] - 40 * e:rj[m, 1] - 40 * e] = True
        want = (np.exp(-((x[e][:, None] - y[e][None]) ** 2).sum(-1)) * mask) @ b[e]
        np.testing.assert_allclose(got[e], want, rtol=1e-12)
    bad = nc.from_matrix(np.array([[20, 40]]), np.array([[0, 40]]), np.ones((1, 1), bool))
    with pytest.raises(ValueError, match="straddles"):
        g(x, y, b, ranges=bad)


def test_malformed_ranges() -> None:
    x, y, b = RNG.random((10, 2)), RNG.random((12, 2)), RNG.random((12, 1))
    g = Genred("Exp(-SqDist(x,y)) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=1)
    good = nc.from_matrix(np.array([[0, 10]]), np.array([[0, 12]]), np.ones((1, 1), bool))
    with pytest.raises(TypeError, match="6-tuple"):
        g(x, y, b, ranges=good[:3])
    with pytest.raises(TypeError, match="slices_i must hold integers"):
        g(x, y, b, ranges=(good[0], good[1].astype(float)) + good[2:])
    with pytest.raises(ValueError, match="ranges_i must have shape"):
        g(x, y, b, ranges=(good[0].ravel(),) + good[1:])
    big = nc.from_matrix(np.array([[0, 11]]), np.array([[0, 12]]), np.ones((1, 1), bool))
    with pytest.raises(ValueError, match="ranges_i range 0 .* out of bounds"):
        g(x, y, b, ranges=big)
    unsorted = (np.array([[5, 10], [0, 5]]), np.array([1, 2]), np.array([[0, 12], [0, 12]]),
                np.array([[0, 12]]), np.array([2]), np.array([[0, 5], [5, 10]]))
    with pytest.raises(ValueError, match="sorted and disjoint"):
        g(x, y, b, ranges=unsorted)
    with pytest.raises(ValueError, match="keep: expected shape"):
        nc.from_matrix(np.array([[0, 10]]), np.array([[0, 12]]), np.ones((2, 1), bool))
    with pytest.raises(ValueError, match=r"ranges_j: expected an \(n, 2\) array .* \(3, 3\)"):
        nc.from_matrix(np.array([[0, 10]]), np.zeros((3, 3), int), np.ones((1, 3), bool))


# -- helpers against straightforward implementations ----------------------------------------

def test_grid_cluster_reference() -> None:
    for d in (1, 2, 3, 5):
        x = RNG.normal(size=(500, d))
        lab = nc.grid_cluster(x, 0.7)
        cells = np.floor((x - x.min(0)) / 0.7).astype(int)
        uniq, want = np.unique(cells, axis=0, return_inverse=True)
        assert (lab == want.ravel()).all(), d
        assert lab.dtype == np.int64
    # pykeops' docstring.
    assert nc.grid_cluster(np.array([[0.0], [0.1], [0.9], [0.05], [0.5]]), 0.2).tolist() == \
        [0, 0, 2, 0, 1]
    # One side per dimension.
    x = RNG.random((100, 2))
    lab = nc.grid_cluster(x, np.array([0.5, 0.25]))
    assert lab.max() + 1 == len(np.unique(np.floor((x - x.min(0)) / [0.5, 0.25]), axis=0))
    with pytest.raises(ValueError, match="positive"):
        nc.grid_cluster(x, 0.0)


def test_sort_ranges_centroids_reference() -> None:
    x = RNG.random((300, 3)).astype(np.float32)
    lab = RNG.integers(0, 7, 300)
    xs, ls = nc.sort_clusters(x, lab)
    perm = np.argsort(lab, kind="stable")
    assert (xs == x[perm]).all() and (ls == lab[perm]).all()
    (a, c2), l2 = nc.sort_clusters((x, x[:, :1]), lab)
    assert (a == x[perm]).all() and (c2 == x[perm, :1]).all()
    r = nc.cluster_ranges(ls)
    counts = np.bincount(lab)
    assert (r[:, 1] - r[:, 0] == counts).all() and r[0, 0] == 0 and r[-1, 1] == 300
    w = RNG.random(300)
    r2, cen, wc = nc.cluster_ranges_centroids(x, lab, weights=w)
    assert (r2 == r).all()
    want = np.stack([np.bincount(lab, w * x[:, k]) / np.bincount(lab, w) for k in range(3)], 1)
    np.testing.assert_allclose(cen, want, rtol=1e-6)
    np.testing.assert_allclose(wc, np.bincount(lab, w), rtol=1e-6)
    assert cen.dtype == np.float32
    np.testing.assert_allclose(nc.cluster_centroids(x, lab), np.stack(
        [np.bincount(lab, x[:, k]) / counts for k in range(3)], 1), rtol=1e-6)
    _, _, n = nc.cluster_ranges_centroids(x, lab)
    assert (n == counts).all()


def test_from_matrix_reference() -> None:
    # pykeops' docstring example.
    r = nc.from_matrix(np.array([[2, 5], [7, 12]]), np.array([[1, 4], [4, 9], [20, 30]]),
                       np.array([[1, 1, 0], [0, 1, 0]], dtype=bool))
    assert r[1].tolist() == [2, 3] and r[2].tolist() == [[1, 4], [4, 9], [4, 9]]
    assert r[4].tolist() == [1, 3, 3] and r[5].tolist() == [[2, 5], [2, 5], [7, 12]]
    s = nc.swap_axes(r)
    assert all((a == b).all() for a, b in zip(s, r[3:] + r[:3]))
    assert nc.swap_axes(None) is None


@needs_torch
def test_torch_helpers_keep_tensors() -> None:
    x = torch.rand(100, 2)
    lab = tc.grid_cluster(x, 0.25)
    assert isinstance(lab, torch.Tensor) and lab.dtype == torch.int32
    xs, ls = tc.sort_clusters(x, lab)
    assert isinstance(xs, torch.Tensor) and bool((ls[1:] >= ls[:-1]).all())
    r, c, w = tc.cluster_ranges_centroids(xs, ls)
    assert r.dtype == torch.int64 and c.dtype == torch.float32 and c.shape[1] == 2
    keep = ((c[:, None] - c[None]) ** 2).sum(-1) < 0.3
    ranges = tc.from_matrix(r, r, keep)
    assert all(isinstance(a, torch.Tensor) for a in ranges)


# -- gradients through block-sparse reductions ----------------------------------------------

@needs_torch
@pytest.mark.parametrize("red", ["sum", "logsumexp", "min"])
@pytest.mark.parametrize("dim", [0, 1])
def test_torch_gradcheck_block_sparse(red: str, dim: int) -> None:
    x, y, ranges, mask = clustered(40, 50, 0.25, 0.4, drop=True)
    ranges = tuple(torch.from_numpy(a) for a in ranges)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.tensor(y, requires_grad=True)
    bt = torch.rand(50, 1, dtype=torch.float64, requires_grad=True)

    def f(xt: torch.Tensor, yt: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
        D = ((TLazyTensor(xt[:, None, :]) - TLazyTensor(yt[None, :, :])) ** 2).sum(-1)
        F = D * 3 + TLazyTensor(bt[None, :, :])
        F.ranges = ranges
        if red == "sum":
            out = (-F).exp().sum(dim=dim)
        elif red == "logsumexp":
            out = (-F).logsumexp(dim=dim)
        else:
            out = F.min(dim=dim)
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out))

    assert torch.autograd.gradcheck(f, (xt, yt, bt))
    # And the values: the dense computation restricted to the mask.
    with torch.no_grad():
        Fd = ((xt[:, None] - yt[None]) ** 2).sum(-1) * 3 + bt[:, 0][None]
        m = torch.from_numpy(mask)
        if red == "sum":
            want = ((-Fd).exp() * m).sum(dim)
        elif red == "logsumexp":
            want = torch.where(m, -Fd, -torch.inf).logsumexp(dim)
        else:
            want = torch.where(m, Fd, torch.inf).min(dim).values
        want = torch.where(torch.isfinite(want), want, torch.zeros_like(want))
        torch.testing.assert_close(f(xt, yt, bt).reshape(-1), want)


@needs_torch
def test_torch_genred_ranges() -> None:
    x, y, ranges, mask = clustered(100, 120, 0.2, 0.35)
    g = TGenred("Exp(-SqDist(x,y)) * b", ["x = Vi(2)", "y = Vj(2)", "b = Vj(1)"], axis=1)
    b = torch.rand(120, 1, dtype=torch.float64)
    got = g(torch.tensor(x), torch.tensor(y), b, ranges=tuple(torch.from_numpy(a) for a in ranges))
    want = (np.exp(-((x[:, None] - y[None]) ** 2).sum(-1)) * mask) @ b.numpy()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
