"""Entropic optimal transport between two point clouds by log-domain Sinkhorn iterations,
each half-step a LogSumExp reduction: ``f_i = -eps log sum_j b_j exp((g_j - C_ij)/eps)``
and symmetrically for ``g``, with ``C_ij = |x_i - y_j|^2 / 2``. Prints the marginal errors
of the plan and plots the barycentric transport of a subsample.

    .venv/bin/python examples/sinkhorn.py [--tiny | --large] [--out DIR]
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import torch
from tqdm import tqdm

from _common import parse, save
from keops.torch import LazyTensor


def main() -> None:
    args = parse(__doc__)
    n, m = (500, 600) if args.tiny else (100_000, 120_000) if args.large else (10_000, 12_000)
    eps, iters = 0.01, 300
    torch.manual_seed(0)
    t_ = torch.rand(n, 1) * 2 * torch.pi
    x = torch.cat([torch.cos(t_), torch.sin(t_)], 1) * (0.5 + 0.1 * torch.rand(n, 1))
    y = torch.randn(m, 2) * 0.25 + torch.tensor([1.5, 0.0])
    a, b = torch.full((n, 1), 1 / n, dtype=x.dtype), torch.full((m, 1), 1 / m, dtype=x.dtype)
    x_i, y_j = LazyTensor(x[:, None, :]), LazyTensor(y[None, :, :])
    C = ((x_i - y_j) ** 2).sum(-1) / 2  # symbolic (n, m) cost
    f, g = torch.zeros(n, 1), torch.zeros(m, 1)
    la, lb = a.log(), b.log()
    t = time.perf_counter()
    for _ in tqdm(range(iters), desc="Sinkhorn", disable=args.tiny):
        f = -eps * ((LazyTensor(g[None, :, :]) - C) / eps + LazyTensor(lb[None, :, :])) \
            .logsumexp(dim=1)
        g = -eps * ((LazyTensor(f[:, None, :]) - C) / eps + LazyTensor(la[:, None, :])) \
            .logsumexp(dim=0)
    dt = time.perf_counter() - t
    # The plan P_ij = a_i b_j exp((f_i + g_j - C_ij)/eps): its marginals and barycentres.
    logp = (LazyTensor(f[:, None, :]) + LazyTensor(g[None, :, :]) - C) / eps \
        + LazyTensor(la[:, None, :]) + LazyTensor(lb[None, :, :])
    P = logp.exp()
    row, col = P.sum(dim=1), P.sum(dim=0)
    err_a = float((row - a).abs().sum())
    err_b = float((col - b).abs().sum())
    bary = (P * y_j).sum(dim=1) / row
    cost = float((P * C).sum(dim=1).sum())
    print(f"Sinkhorn, {n:,} x {m:,} points, eps = {eps}: {iters} iterations in {dt:.2f} s "
          f"({1e3 * dt / iters:.1f} ms each)")
    print(f"marginal errors (L1): {err_a:.2e} (a), {err_b:.2e} (b); transport cost {cost:.4f}")
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(x[:, 0], x[:, 1], s=2, c="C0", label="source")
    ax.scatter(y[:, 0], y[:, 1], s=2, c="C1", label="target")
    sub = torch.randperm(n)[:200]
    for i in sub:
        ax.plot([x[i, 0], bary[i, 0]], [x[i, 1], bary[i, 1]], color="gray", lw=0.5, alpha=0.7)
    ax.set(xlabel="$x_1$", ylabel="$x_2$", aspect="equal",
           title=f"Entropic OT (eps = {eps}): 200 barycentric transport lines")
    ax.legend(loc="upper left")
    save(fig, args, "sinkhorn")


if __name__ == "__main__":
    main()
