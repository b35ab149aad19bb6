"""k-nearest-neighbour classification of scikit-learn's digits (8 x 8 images, D = 64):
the K = 10 nearest training images of every test image by ``argKmin``, a majority vote,
the accuracy printed and a few test images plotted with their predicted labels.

    .venv/bin/python examples/knn_digits.py [--tiny | --large] [--out DIR]
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from _common import parse, save
from keops.numpy import LazyTensor


def main() -> None:
    args = parse(__doc__)
    digits = load_digits()
    x, y = digits.data.astype(np.float32) / 16, digits.target
    rng = np.random.default_rng(0)
    # --large: the same classifier on 40x more (noisy, shifted) copies of the images.
    copies = 40 if args.large else 1
    if copies > 1:
        x = np.concatenate([x] + [np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1)
                                  .astype(np.float32) for _ in range(copies - 1)])
        y = np.concatenate([y] * copies)
    perm = rng.permutation(len(x))
    n_test = len(x) // 4
    test, train = perm[:n_test], perm[n_test:]
    k = 10
    t = time.perf_counter()
    d = ((LazyTensor(x[test][:, None, :]) - LazyTensor(x[train][None, :, :])) ** 2).sum(-1)
    nn = d.argKmin(k, dim=1)  # (n_test, K) indices into train
    votes = y[train][nn]
    pred = np.array([np.bincount(v, minlength=10).argmax() for v in votes])
    dt = time.perf_counter() - t
    acc = float((pred == y[test]).mean())
    print(f"{k}-NN on {len(train):,} training / {n_test:,} test images (D = 64): {dt:.3f} s")
    print(f"accuracy: {acc:.4f}")
    fig, axes = plt.subplots(3, 8, figsize=(8, 3.6))
    for ax, i in zip(axes.ravel(), range(24)):
        ax.imshow(x[test[i]].reshape(8, 8), cmap="gray_r")
        ok = pred[i] == y[test[i]]
        ax.set_title(f"{pred[i]}", color="green" if ok else "red", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{k}-NN predictions on test digits (accuracy {acc:.3f}; red: wrong)")
    save(fig, args, "knn_digits")


if __name__ == "__main__":
    main()
