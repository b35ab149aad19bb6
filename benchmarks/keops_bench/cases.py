"""The benchmark problems: their data, sizes and how two results are compared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

#: Neighbours of the k-NN cases.
K_NN = 10
#: KernelSolve's system: (exp(-GAMMA_SOLVE |x_i - x_j|^2) + ALPHA_SOLVE I) a = b.
GAMMA_SOLVE = 50.0
ALPHA_SOLVE = 1.0
#: Relative residual at which the conjugate gradients stop.
EPS_SOLVE = 1e-6


@dataclass
class Data:
    """Inputs of one size, as host torch tensors (methods convert them untimed)."""

    x: torch.Tensor  # (N, D) points x_i
    y: torch.Tensor  # (M, D) points y_j (the same points as x for KernelSolve)
    b: torch.Tensor  # (M, E) weights b_j, or KernelSolve's right-hand side (E = 1)
    g: torch.Tensor  # (N, 1) cotangent of the gradient case

    @property
    def n(self) -> int:
        """Number of points N (= M)."""
        return self.x.shape[0]


@dataclass(frozen=True)
class Case:
    """One benchmark problem; ``kind`` names the method hook that computes it."""

    key: str
    title: str
    kind: str  # "gauss" | "grad" | "knn" | "lse" | "solve"
    dim: int
    dtype: torch.dtype
    sizes: Sequence[int]
    #: Time growth with N of a pairwise method (a dense factorisation grows as N^3).
    exponent: float
    #: Largest accepted max |r - ref| / max |ref| against keops-rs.
    tol: float
    #: Part of the suite run when no case is named (else only with ``--cases``).
    default: bool = True
    #: Columns E of the weights b (the Gaussian case: a kernel product K b).
    bdim: int = 1

    @property
    def itemsize(self) -> int:
        """Bytes per scalar."""
        return torch.empty((), dtype=self.dtype).element_size()

    def data(self, n: int, seed: int = 0) -> Data:
        """Random inputs of size N: normal points (uniform in the unit cube for the
        solve, a well-posed Gaussian-process-like system)."""
        gen = torch.Generator().manual_seed(seed * 1_000_003 + n)
        if self.kind == "solve":
            x = torch.rand(n, self.dim, generator=gen, dtype=self.dtype)
            y = x
        else:
            x = torch.randn(n, self.dim, generator=gen, dtype=self.dtype)
            y = torch.randn(n, self.dim, generator=gen, dtype=self.dtype)
        b = torch.randn(n, self.bdim, generator=gen, dtype=self.dtype)
        g = torch.randn(n, 1, generator=gen, dtype=self.dtype)
        return Data(x, y, b, g)

    def error(self, result: Any, ref: Any, data: Data) -> float:
        """``max |r - ref| / max |ref|``; for k-NN on the float64 squared distances at
        the returned neighbours, sorted per row (near-ties may order indices apart)."""
        if self.kind == "knn":
            return relative_error(knn_distances(result, data), knn_distances(ref, data))
        return relative_error(result, ref)


def _sizes(start: int, stop: float) -> list:
    """1, 2, 5 times the powers of ten from ``start`` up to ``stop``."""
    out = []
    p = 1
    while p * 5 < start:
        p *= 10
    while True:
        for m in (1, 2, 5):
            if start <= m * p <= stop:
                out.append(m * p)
        if p > stop:
            return out
        p *= 10


SIZES = _sizes(1_000, 1e7)

CASES = [
    Case("gauss", "Gaussian kernel sum, D=3", "gauss", 3, torch.float32,
         [100] + SIZES, 2.0, 1e-4),
    Case("grad", "its gradient w.r.t. x (forward + backward)", "grad", 3, torch.float32,
         SIZES, 2.0, 1e-3),
    Case("knn3", f"ArgKMin K={K_NN}, D=3", "knn", 3, torch.float32, SIZES, 2.0, 1e-4),
    Case("knn64", f"ArgKMin K={K_NN}, D=64", "knn", 64, torch.float32, SIZES, 2.0, 1e-4),
    # High dimensions: the GPU's chunked kernels (named with --cases only).
    Case("knn256", f"ArgKMin K={K_NN}, D=256", "knn", 256, torch.float32,
         _sizes(1_000, 1e6), 2.0, 1e-4, default=False),
    # Wide outputs: the GPU computes them a group of columns per launch (named only).
    Case("gauss1000", "Gaussian kernel product K b, D=3, b of width 1000", "gauss", 3,
         torch.float32, _sizes(1_000, 1e6), 2.0, 1e-4, default=False, bdim=1000),
    Case("lse", "LogSumExp, D=3", "lse", 3, torch.float32, SIZES, 2.0, 1e-4),
    Case("solve", f"KernelSolve (K + {ALPHA_SOLVE:g} I) a = b, D=3, float64", "solve", 3,
         torch.float64, SIZES, 2.5, 1e-4),
]


def find_cases(keys: Sequence[str]) -> list:
    """The cases named by ``keys``, in that order (a run cut short by a time limit has
    measured the first ones), or the default ones in the suite's order."""
    unknown = set(keys) - {c.key for c in CASES}
    if unknown:
        raise ValueError(f"unknown case(s) {sorted(unknown)}: choose from "
                         f"{[c.key for c in CASES]}")
    if not keys:
        return [c for c in CASES if c.default]
    by_key = {c.key: c for c in CASES}
    return [by_key[k] for k in dict.fromkeys(keys)]


# --------------------------------------------------------------------------- checks
def to_numpy(r: Any, dtype: Any = np.float64) -> np.ndarray:
    """A result (tensor on any device, or array) as a host NumPy array."""
    if isinstance(r, torch.Tensor):
        r = r.detach().cpu().numpy()
    return np.asarray(r).astype(dtype)


def relative_error(r: Any, ref: Any) -> float:
    """``max |r - ref| / max |ref|`` (shapes must agree up to a reshape)."""
    a, b = to_numpy(r), to_numpy(ref)
    a = a.reshape(b.shape)
    scale = float(np.max(np.abs(b))) or 1.0
    return float(np.max(np.abs(a - b))) / scale


def knn_distances(idx: Any, data: Data) -> np.ndarray:
    """Squared distances (float64) at the returned neighbours, sorted per row."""
    i = to_numpy(idx, np.int64).reshape(data.n, K_NN)
    x, y = data.x.numpy(), data.y.numpy()
    out = np.empty(i.shape)
    for s in range(0, data.n, 1 << 14):  # chunks: N x K x D float64 can be gigabytes
        rows = slice(s, s + (1 << 14))
        diff = x[rows, None, :].astype(np.float64) - y[i[rows]]
        out[rows] = np.sort((diff ** 2).sum(-1), axis=1)
    return out


#: A zero-argument callable that runs one measured computation.
Thunk = Callable[[], Any]
