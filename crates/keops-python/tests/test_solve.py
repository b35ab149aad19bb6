"""KernelSolve and LazyTensor.solve: against ``numpy.linalg.solve`` on the dense system
(N = 1000), several right-hand sides, both axes, batch dims, block-sparse; gradients
through the solve (``torch.autograd.gradcheck`` in float64); non-convergence warnings,
float32 answers judged on their true residual, progress reporting and errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from frontends import needs_torch, torch

import keops.numpy.cluster as nc
from keops.numpy import ConvergenceWarning, KernelSolve, LazyTensor

if torch is not None:
    from keops.torch import KernelSolve as TKernelSolve
    from keops.torch import LazyTensor as TLazyTensor

RNG = np.random.default_rng(1)
GAUSS = "Exp(-SqDist(x,y) * g) * a"


def gauss_matrix(x: np.ndarray, y: np.ndarray, g: float) -> np.ndarray:
    return np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) * g)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_dense_solve(dtype: type) -> None:
    n = 1000
    x = RNG.random((n, 3)).astype(dtype)
    b = RNG.normal(size=(n, 3)).astype(dtype)
    g = np.array([8.0], dtype=dtype)
    ks = KernelSolve(GAUSS, ["x = Vi(3)", "y = Vj(3)", "a = Vj(3)", "g = Pm(1)"], "a", axis=1)
    eps = 1e-10 if dtype == np.float64 else 1e-4
    a, info = ks(x, x, b, g, alpha=0.1, eps=eps, return_info=True)
    assert a.dtype == dtype and a.shape == (n, 3)
    assert info.converged and info.residual < eps and info.iterations > 1
    want = np.linalg.solve(gauss_matrix(x.astype(float), x.astype(float), 8.0)
                           + 0.1 * np.eye(n), b.astype(float))
    tol = 1e-8 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(a, want, atol=tol * np.abs(want).max())


def test_axis_0_and_batch_dims() -> None:
    n = 200
    x = RNG.random((2, n, 2))
    b = RNG.normal(size=(2, n, 1))
    ks = KernelSolve("Exp(-SqDist(x,y) * 5) * a", ["x = Vi(2)", "y = Vj(2)", "a = Vi(1)"], "a",
                     axis=0)
    a = ks(x, x, b, alpha=0.2, eps=1e-11)
    for e in range(2):
        want = np.linalg.solve(gauss_matrix(x[e], x[e], 5.0) + 0.2 * np.eye(n), b[e])
        np.testing.assert_allclose(a[e], want, atol=1e-8)


@needs_torch
def test_lazytensor_solve_numpy_and_torch() -> None:
    n = 300
    x = RNG.random((n, 2))
    b = RNG.normal(size=(n, 2))
    K = (-((LazyTensor(x[:, None, :]) - LazyTensor(x[None, :, :])) ** 2).sum(-1) * 4).exp()
    a = K.solve(b, alpha=0.05, eps=1e-11)
    want = np.linalg.solve(gauss_matrix(x, x, 4.0) + 0.05 * np.eye(n), b)
    np.testing.assert_allclose(a, want, atol=1e-8 * np.abs(want).max())
    xt = torch.tensor(x)
    Kt = (-((TLazyTensor(xt[:, None, :]) - TLazyTensor(xt[None, :, :])) ** 2).sum(-1) * 4).exp()
    at = Kt.solve(torch.tensor(b), alpha=0.05, eps=1e-11)
    np.testing.assert_allclose(at.numpy(), want, atol=1e-8 * np.abs(want).max())
    # A vector right-hand side.
    a1 = K.solve(b[:, 0], alpha=0.05, eps=1e-11)
    np.testing.assert_allclose(a1.ravel(), want[:, 0], atol=1e-8 * np.abs(want).max())


def test_block_sparse_solve() -> None:
    n = 400
    x = RNG.random((n, 2))
    lab = nc.grid_cluster(x, 0.2)
    x, lab = nc.sort_clusters(x, lab)
    r, c, _ = nc.cluster_ranges_centroids(x, lab)
    keep = ((c[:, None] - c[None]) ** 2).sum(-1) < 0.3 ** 2  # symmetric
    ranges = nc.from_matrix(r, r, keep)
    mask = keep[lab][:, lab]
    b = RNG.normal(size=(n, 1))
    ks = KernelSolve("Exp(-SqDist(x,y) * 30) * a", ["x = Vi(2)", "y = Vj(2)", "a = Vj(1)"], "a",
                     axis=1)
    # A truncated Gaussian is indefinite (its smallest eigenvalue is about -1.5 here):
    # alpha = 2 keeps the system positive definite.
    a = ks(x, x, b, alpha=2.0, eps=1e-11, ranges=ranges)
    want = np.linalg.solve(gauss_matrix(x, x, 30.0) * mask + 2.0 * np.eye(n), b)
    np.testing.assert_allclose(a, want, atol=1e-8)
    assert mask.mean() < 0.7


@needs_torch
def test_gradcheck_through_the_solve() -> None:
    n = 30
    x = torch.rand(n, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, 2, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    ks = TKernelSolve(GAUSS, ["x = Vi(2)", "y = Vj(2)", "a = Vj(2)", "g = Pm(1)"], "a", axis=1)
    # eps: 1e-13 is at float64's rounding for these systems (the backward ones too).
    assert torch.autograd.gradcheck(lambda x, b, g: ks(x, x, b, g, alpha=0.3, eps=1e-12),
                                    (x, b, g))
    # Against autograd through torch.linalg.solve on the dense matrix.
    a = ks(x, x, b, g, alpha=0.3, eps=1e-12)
    w = torch.randn_like(a)
    gk = torch.autograd.grad((a * w).sum(), (x, b, g))
    K = torch.exp(-((x[:, None] - x[None]) ** 2).sum(-1) * g) + 0.3 * torch.eye(n, dtype=x.dtype)
    ad = torch.linalg.solve(K, b)
    gd = torch.autograd.grad((ad * w).sum(), (x, b, g))
    for u, v in zip(gk, gd):
        torch.testing.assert_close(u, v, rtol=1e-8, atol=1e-9)


@needs_torch
def test_lazytensor_solve_gradcheck() -> None:
    x = torch.rand(25, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(25, 1, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        K = (-((TLazyTensor(x[:, None, :]) - TLazyTensor(x[None, :, :])) ** 2).sum(-1)).exp()
        return K.solve(b, alpha=0.5, eps=1e-13)

    assert torch.autograd.gradcheck(f, (x, b))


def test_warning_progress_and_errors(capsys: pytest.CaptureFixture) -> None:
    n = 200
    x = RNG.random((n, 1))
    b = RNG.normal(size=(n, 1))
    ks = KernelSolve("Exp(-SqDist(x,y)) * a", ["x = Vi(1)", "y = Vj(1)", "a = Vj(1)"], "a",
                     axis=1)
    with pytest.warns(ConvergenceWarning, match="did not converge: after 4 iterations"):
        _, info = ks(x, x, b, alpha=1e-12, eps=1e-14, max_iter=4, return_info=True)
    assert info.iterations == 4 and not info.converged
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ks(x, x, b, alpha=1.0, eps=1e-8, callback=lambda k, r: seen.append((k, r)), verbose=True)
    assert [k for k, _ in seen] == list(range(1, len(seen) + 1)) and seen[-1][1] < 1e-8
    err = capsys.readouterr().err
    # Verbose: the iterations, then the answer's true residual (the callback sees the
    # iterations only, numbered from 1).
    assert "KernelSolve: iteration" in err
    assert f"iteration {len(seen)}, true residual of the answer" in err

    def stop(k: int, r: float) -> None:
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ks(x, x, b, alpha=1e-9, eps=1e-14, callback=stop)
    with pytest.raises(ValueError, match="not a variable"):
        KernelSolve("Exp(-SqDist(x,y)) * a", ["x = Vi(1)", "y = Vj(1)", "a = Vj(1)"], "z")
    with pytest.raises(ValueError, match="must be Vj"):
        KernelSolve("Exp(-SqDist(x,y)) * a", ["x = Vi(1)", "y = Vj(1)", "a = Vi(1)"], "a", axis=1)
    neg = KernelSolve("-Exp(-SqDist(x,y)) * a", ["x = Vi(1)", "y = Vj(1)", "a = Vj(1)"], "a",
                      axis=1)
    with pytest.raises(ValueError, match="not positive definite"):
        neg(x, x, b)
    with pytest.raises(ValueError, match="alpha"):
        ks(x, x, b, alpha=-1.0)
    with pytest.raises(ValueError, match="square"):
        ks(x, x[:50], b[:50])


def test_float32_answers_are_judged_on_their_true_residual() -> None:
    # Conjugate gradients' recursive residual drifts below the true one in float32:
    # the answer is judged, and refined, on its true residual (computed in float64).
    n = 300
    x = RNG.random((n, 3)).astype(np.float32)
    b = RNG.normal(size=(n, 1)).astype(np.float32)
    g = np.array([5.0], dtype=np.float32)
    ks = KernelSolve(GAUSS, ["x = Vi(3)", "y = Vj(3)", "a = Vj(1)", "g = Pm(1)"], "a", axis=1)
    k = gauss_matrix(x.astype(float), x.astype(float), 5.0)

    def rms(a: np.ndarray, alpha: float) -> float:
        a = a.astype(float)
        return float(np.sqrt(((k @ a + alpha * a - b) ** 2).mean()))

    # cond ~ 1e5: rounding the answer to float32 alone leaves a residual above 1e-6.
    with pytest.warns(ConvergenceWarning, match="true residual of the float32 answer"):
        a, info = ks(x, x, b, g, alpha=1e-3, eps=1e-6, return_info=True)
    assert info.precision_limited and not info.converged, info
    assert info.residual == pytest.approx(rms(a, 1e-3), rel=1e-6) and info.residual > 1e-6
    # Well conditioned: met on the true residual, without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, info = ks(x, x, b, g, alpha=1.0, eps=1e-6, return_info=True)
    assert info.converged and not info.precision_limited, info
    assert info.residual == pytest.approx(rms(a, 1.0), rel=1e-6) and info.residual < 1e-6


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nystrom_preconditioner(dtype: type) -> None:
    # A smooth kernel and a small ridge: plain CG needs hundreds of iterations.
    n = 300  # small: this suite also runs under qemu (make arm-check)
    x = RNG.random((n, 3)).astype(dtype)
    b = RNG.normal(size=(n, 2)).astype(dtype)
    g = np.array([5.0], dtype=dtype)
    ks = KernelSolve(GAUSS, ["x = Vi(3)", "y = Vj(3)", "a = Vj(2)", "g = Pm(1)"], "a", axis=1)
    # float32: not much below 1e-3, where the rounding of the answer sets the residual
    # (see test_float32_answers_are_judged_on_their_true_residual).
    eps = 1e-9 if dtype == np.float64 else 1e-3
    plain, pi = ks(x, x, b, g, alpha=1e-3, eps=eps, return_info=True)
    pre, info = ks(x, x, b, g, alpha=1e-3, eps=eps, return_info=True, precond="nystrom",
                   precond_rank=60)
    assert pi.converged and info.converged and pi.precond_rank == 0
    assert info.precond_rank == 60 and info.iterations * 5 < pi.iterations, (pi, info)
    xf = x.astype(float)
    want = np.linalg.solve(gauss_matrix(xf, xf, 5.0) + 1e-3 * np.eye(n), b.astype(float))
    tol = 1e-6 if dtype == np.float64 else 5e-3
    np.testing.assert_allclose(pre, want, atol=tol * np.abs(want).max())
    # Through LazyTensor.solve (in float64).
    K = (-((LazyTensor(xf[:, None, :]) - LazyTensor(xf[None, :, :])) ** 2).sum(-1) * 5.0).exp()
    a, li = K.solve(b.astype(float), alpha=1e-3, eps=1e-9, precond="nystrom",
                    precond_rank=60, return_info=True)
    assert li.precond_rank == 60
    if dtype == np.float64:
        assert li.iterations == info.iterations
    np.testing.assert_allclose(a, want, atol=1e-6 * np.abs(want).max())
    # precond_rank="auto": the rank the kernel and the ridge need.
    auto, ai = ks(x, x, b, g, alpha=1e-3, eps=eps, return_info=True, precond="nystrom",
                  precond_rank="auto")
    assert ai.converged and ai.precond_rank > 0 and ai.iterations <= info.iterations, (ai, info)
    np.testing.assert_allclose(auto, want, atol=tol * np.abs(want).max())
    a, li = K.solve(b.astype(float), alpha=1e-3, eps=1e-9, precond="nystrom",
                    precond_rank="AUTO", return_info=True)
    assert li.precond_rank > 0
    np.testing.assert_allclose(a, want, atol=1e-6 * np.abs(want).max())
    with pytest.raises(ValueError, match='precond: "cholesky": expected None or "nystrom"'):
        ks(x, x, b, g, precond="cholesky")
    with pytest.raises(ValueError, match="precond_rank.*at least 1"):
        ks(x, x, b, g, precond="nystrom", precond_rank=0)
    with pytest.raises(ValueError, match="invalid precond_rank 'full': expected a rank"):
        ks(x, x, b, g, precond="nystrom", precond_rank="full")


def test_matrix_valued_kernel_is_one_system() -> None:
    # K_ij = k(x_i, x_j) [[1, c], [c, 1]] mixes the unknown's two coordinates: solved
    # as one system of 2n unknowns (column by column, CG would break down on it).
    n = 200
    x = RNG.random((n, 1))
    b = RNG.normal(size=(n, 2))
    ks = KernelSolve("Exp(-SqDist(x,y) * 10) * (a + Concat(Elem(a,1), Elem(a,0)) * 0.5)",
                     ["x = Vi(1)", "y = Vj(1)", "a = Vj(2)"], "a", axis=1)
    big = np.kron(gauss_matrix(x, x, 10.0), np.array([[1.0, 0.5], [0.5, 1.0]]))
    want = np.linalg.solve(big + 0.1 * np.eye(2 * n), b.ravel()).reshape(n, 2)
    for precond, rank in ((None, 40), ("nystrom", 40), ("nystrom", "auto")):
        a = ks(x, x, b, alpha=0.1, eps=1e-11, precond=precond, precond_rank=rank)
        np.testing.assert_allclose(a, want, atol=1e-8 * np.abs(want).max())
