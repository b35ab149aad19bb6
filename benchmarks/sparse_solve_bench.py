"""Block-sparse reductions, and a block-sparse KernelSolve, measured in one run (ratios).

1. A Gaussian kernel sum on N uniform points of the unit cube (float64), dense vs
   block-sparse (``grid_cluster`` + ``from_matrix``) keeping about 5% and 20% of the
   pairs; for N = 10^6 the dense time is measured on a slice of the output rows and scaled
   (the work is linear in the rows), since the full dense sum takes ~15 minutes on 2 cores.
   float64, because in float32 the far pairs' exp(-g d^2) are subnormal numbers, which
   stall x86 CPUs: the dense sum would be slowed by exactly the pairs that block-sparsity
   skips, flattering the ratio.
2. A Gaussian-process regression on 10^5 points (block-sparse kernel, KernelSolve), its
   test error against the noiseless function, solved plainly and with the Nyström
   preconditioner (``precond="nystrom"``) side by side.
3. KernelSolve with and without the Nyström preconditioner at several ranks and
   ``precond_rank="auto"``, on the
   dense kernel of ``benchmarks/bench.py``'s KernelSolve case (N uniform points of the
   unit cube, ``exp(-g |x-y|^2)``, float64), for two length scales and two ridges:
   iterations and times in one run.

KernelSolve against dense solves, as N grows, is a case of ``benchmarks/bench.py``.

Usage: ``.venv/bin/python benchmarks/sparse_solve_bench.py [--quick]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Tuple

import numpy as np

from keops.numpy import Genred, KernelSolve
from keops.numpy.cluster import cluster_ranges_centroids, from_matrix, grid_cluster, sort_clusters

GAUSS = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)", "g = Pm(3,1)"]


def timed(f: Callable[[], Any], repeat: int = 1) -> Tuple[float, Any]:
    """Best wall time of ``repeat`` runs (after one warm-up when repeating)."""
    out = f() if repeat > 1 else None
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t)
    return best, out


def sparse_layout(x: np.ndarray, eps: float, density: float) -> Tuple[np.ndarray, Any, float]:
    """Sorted points, the ranges keeping the closest cluster pairs up to ``density`` of
    all pairs, and the density reached."""
    lab = grid_cluster(x, eps)
    x, lab = sort_clusters(x, lab)
    r, c, w = cluster_ranges_centroids(x, lab)
    d = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    sizes = np.outer(w, w)
    order = np.argsort(d, axis=None)
    cum = np.cumsum(sizes.ravel()[order]) / len(x) ** 2
    cut = d.ravel()[order][np.searchsorted(cum, density)]
    keep = d <= cut
    return x, from_matrix(r, r, keep), float(sizes[keep].sum() / len(x) ** 2)


def block_sparse(quick: bool) -> None:
    print("== Gaussian sum, dense vs block-sparse (float64, D = 3, CPU) ==")
    g = Genred("Exp(-SqDist(x,y) * g) * b", GAUSS, reduction_op="Sum", axis=1)
    gam = np.array([50.0])
    sizes = [(50_000, 0.1)] if quick else [(200_000, 0.1), (1_000_000, 0.05)]
    for n, eps in sizes:
        rng = np.random.default_rng(0)
        x = rng.random((n, 3))
        b = rng.random((n, 1))
        if n <= 200_000:
            t_dense, _ = timed(lambda: g(x, x, b, gam))
            note = "measured"
        else:
            rows = 10_000
            t_rows, _ = timed(lambda: g(x[:rows], x, b, gam))
            t_dense, note = t_rows * n / rows, f"{rows} rows measured, scaled"
        for density in (0.05, 0.2):
            if n > 200_000 and density > 0.05:
                continue
            xs, ranges, got = sparse_layout(x, eps, density)
            t_sparse, a = timed(lambda: g(xs, xs, b, gam, ranges=ranges))
            print(f"N = {n:>9,}  kept {100 * got:5.1f}% of pairs  dense {t_dense:8.2f} s "
                  f"({note})  block-sparse {t_sparse:7.2f} s  speed-up x{t_dense / t_sparse:5.1f}")


def gp_regression(quick: bool) -> None:
    n = 20_000 if quick else 100_000
    print(f"== Gaussian-process regression on {n:,} points (2-D, block-sparse kernel) ==")
    rng = np.random.default_rng(2)
    f = lambda p: np.sin(6 * p[:, :1]) * np.cos(4 * p[:, 1:])  # noqa: E731
    x = rng.random((n, 2))
    ell, noise = 0.02, 0.1
    lab = grid_cluster(x, 2 * ell)
    x, lab = sort_clusters(x, lab)
    r, c, _ = cluster_ranges_centroids(x, lab)
    # Excluded pairs are 8 lengths apart less two half-diagonals: >= 5.2 lengths.
    keep = ((c[:, None] - c[None]) ** 2).sum(-1) < (8 * ell) ** 2
    ranges = from_matrix(r, r, keep)
    y = f(x) + noise * rng.normal(size=(n, 1))
    ks = KernelSolve("Exp(-SqDist(x,y) * g) * a", ["x = Vi(2)", "y = Vj(2)", "a = Vj(1)",
                                                   "g = Pm(1)"], "a", axis=1)
    gam = np.array([1 / (2 * ell ** 2)])
    xt = rng.random((2_000, 2))
    predict = Genred("Exp(-SqDist(x,y) * g) * a", ["x = Vi(2)", "y = Vj(2)", "a = Vj(1)",
                                                  "g = Pm(1)"], axis=1)
    plain = None
    for precond, rank in ((None, 1), ("nystrom", 100), ("nystrom", 400), ("nystrom", "auto")):
        t, (a, info) = timed(lambda: ks(x, x, y, gam, alpha=noise ** 2, eps=1e-6,
                                        ranges=ranges, return_info=True, precond=precond,
                                        precond_rank=rank))
        plain = plain or t
        rmse = float(np.sqrt(((predict(xt, x, a, gam) - f(xt)) ** 2).mean()))
        name = "plain CG" if precond is None else \
            f"Nyström rank {info.precond_rank}{' (auto)' if rank == 'auto' else ''}"
        print(f"N = {n:,} {name:>18}: solve {t:6.1f} s (x{plain / t:4.1f}), "
              f"{info.iterations:4} iterations, residual {info.residual:.1e}, pairs kept "
              f"{100 * keep.mean():.1f}% of cluster pairs; test RMSE {rmse:.3f} "
              f"(noise {noise})", flush=True)


def preconditioning(quick: bool) -> None:
    n = 2_000 if quick else 10_000
    print(f"== KernelSolve with and without the Nyström preconditioner (N = {n:,}, D = 3, "
          "float64, eps = 1e-6) ==")
    rng = np.random.default_rng(0)
    x = rng.random((n, 3))
    b = rng.standard_normal((n, 1))
    ks = KernelSolve("Exp(-SqDist(x,y) * g) * a", GAUSS[:2] + ["a = Vj(2,1)", "g = Pm(3,1)"],
                     "a", axis=1)
    for g in (50.0, 10.0):
        for alpha in (1.0, 1e-2):
            plain = None
            for precond, rank in ((None, 1), ("nystrom", 100), ("nystrom", 300),
                                  ("nystrom", "auto")):
                t, (_, info) = timed(lambda: ks(x, x, b, np.array([g]), alpha=alpha,
                                                return_info=True, precond=precond,
                                                precond_rank=rank))
                plain = plain or t
                name = "plain CG" if precond is None else \
                    f"rank {info.precond_rank}{' (auto)' if rank == 'auto' else ''}"
                print(f"g = {g:>4}, alpha = {alpha:<5} {name:>9}: {info.iterations:4} "
                      f"iterations, {t:6.2f} s (x{plain / t:4.1f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--only", choices=["sparse", "gp", "precond"], help="one part only")
    args = p.parse_args()
    for name, part in (("sparse", block_sparse), ("gp", gp_regression),
                       ("precond", preconditioning)):
        if args.only in (None, name):
            part(args.quick)


if __name__ == "__main__":
    main()
