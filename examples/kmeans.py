"""k-means (Lloyd's algorithm) on 10^6 points in the plane with K = 50: each iteration
assigns every point to its nearest centroid with an ``argmin`` reduction and moves the
centroids to the means. Prints the inertia (decreasing) and the time per iteration, and
plots the clusters.

    .venv/bin/python examples/kmeans.py [--tiny | --large] [--out DIR]
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
    n, k, iters = (10_000, 10, 10) if args.tiny else (10_000_000, 50, 10) if args.large \
        else (1_000_000, 50, 10)
    torch.manual_seed(0)
    centres = torch.rand(k, 2) * 10
    x = centres[torch.randint(0, k, (n,))] + 0.5 * torch.randn(n, 2)
    c = x[torch.randperm(n)[:k]].clone()  # Forgy initialisation
    x_i = LazyTensor(x[:, None, :])
    inertia, times = [], []
    for _ in tqdm(range(iters), desc="k-means", disable=args.tiny):
        t = time.perf_counter()
        d = ((x_i - LazyTensor(c[None, :, :])) ** 2).sum(-1)  # (n, k) symbolic
        lab = d.argmin(dim=1).view(-1)
        counts = torch.bincount(lab, minlength=k).clamp_min(1).unsqueeze(1)
        c = torch.zeros(k, 2).index_add_(0, lab, x) / counts
        times.append(time.perf_counter() - t)
        inertia.append(float(((x - c[lab]) ** 2).sum()))
    print(f"k-means, N = {n:,}, K = {k}: {1e3 * sum(times) / len(times):.1f} ms per iteration")
    print("inertia: " + " ".join(f"{v:.4g}" for v in inertia))
    sub = torch.randperm(n)[:20_000]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.5))
    a1.scatter(x[sub, 0], x[sub, 1], c=lab[sub], s=1, cmap="tab20")
    a1.scatter(c[:, 0], c[:, 1], c="black", marker="x", s=30, label="centroids")
    a1.set(xlabel="$x_1$", ylabel="$x_2$", title=f"{k} clusters of {n:,} points (20,000 shown)")
    a1.legend(loc="upper right")
    a2.plot(range(1, iters + 1), inertia, "o-", label="inertia")
    a2.set(xlabel="iteration", ylabel="inertia", title="Lloyd iterations")
    a2.legend()
    save(fig, args, "kmeans")


if __name__ == "__main__":
    main()
