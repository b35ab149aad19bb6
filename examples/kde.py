"""Kernel density estimation: a Gaussian KDE of 10^5 samples evaluated on a 200 x 200 grid
(4 * 10^9 kernel evaluations, no N x M matrix in memory), plotted as a density map.

    .venv/bin/python examples/kde.py [--tiny | --large] [--out DIR]
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np

from _common import parse, save
from keops.numpy import LazyTensor


def samples(n: int, rng: np.random.Generator) -> np.ndarray:
    """A mixture of three Gaussians and a ring in the plane."""
    k = rng.integers(0, 4, n)
    centres = np.array([[-1.0, -0.5], [1.0, 0.8], [0.8, -1.0]])
    pts = centres[np.minimum(k, 2)] + 0.3 * rng.normal(size=(n, 2))
    t = rng.uniform(0, 2 * np.pi, n)
    ring = np.stack([1.6 * np.cos(t), 1.6 * np.sin(t)], 1) + 0.08 * rng.normal(size=(n, 2))
    return np.where((k == 3)[:, None], ring, pts)


def main() -> None:
    args = parse(__doc__)
    n, grid = (2_000, 60) if args.tiny else (1_000_000, 300) if args.large else (100_000, 200)
    rng = np.random.default_rng(0)
    x = samples(n, rng)
    sigma = 1.06 * x.std() * n ** (-1 / 6)  # Silverman's rule in 2-D
    lin = np.linspace(-3, 3, grid)
    g = np.stack(np.meshgrid(lin, lin), -1).reshape(-1, 2)
    t = time.perf_counter()
    g_i, x_j = LazyTensor(g[:, None, :]), LazyTensor(x[None, :, :])
    dens = (-((g_i - x_j) ** 2).sum(-1) / (2 * sigma ** 2)).exp().sum(dim=1)
    dens = dens.ravel() / (n * 2 * np.pi * sigma ** 2)
    dt = time.perf_counter() - t
    mass = dens.sum() * (lin[1] - lin[0]) ** 2
    print(f"KDE of {n:,} points on {grid}x{grid} grid: {dt:.2f} s "
          f"({n * grid * grid / dt / 1e9:.2f} Gpairs/s); bandwidth {sigma:.3f}")
    print(f"total mass on the grid: {mass:.4f}")
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(dens.reshape(grid, grid), origin="lower", extent=(-3, 3, -3, 3),
                   cmap="viridis")
    ax.contour(lin, lin, dens.reshape(grid, grid), levels=8, colors="white", linewidths=0.5)
    fig.colorbar(im, ax=ax, label="density")
    ax.set(xlabel="$x_1$", ylabel="$x_2$", title=f"Gaussian KDE of {n:,} samples")
    save(fig, args, "kde")


if __name__ == "__main__":
    main()
