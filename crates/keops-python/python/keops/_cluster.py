"""Block-sparse reductions for both front ends: pykeops' ``ranges`` argument and its
clustering helpers (``grid_cluster``, ``sort_clusters``, ``cluster_ranges``,
``cluster_centroids``, ``cluster_ranges_centroids``, ``from_matrix``, ``swap_axes``).

The work is done in Rust (``keops::cluster``, ``keops::ranges``) on NumPy arrays; a
front end passes ``to_numpy`` / ``from_numpy`` converters so that PyTorch tensors come
back as tensors on their device.

The coarse-to-fine recipe (pykeops' ``plot_grid_cluster``)::

    labels = grid_cluster(x, eps)                      # cubic cells of side eps
    x, labels = sort_clusters(x, labels)               # clusters contiguous in memory
    ranges_x, centroids_x, _ = cluster_ranges_centroids(x, labels)
    keep = dist(centroids_x, centroids_y) < threshold  # (M, N) boolean
    ranges = from_matrix(ranges_x, ranges_y, keep)     # KeOps' 6-tuple
    K_ij.ranges = ranges                               # or reduction(..., ranges=ranges)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

from . import _keops

#: KeOps' names of the six arrays of ``ranges``.
RANGE_NAMES = ("ranges_i", "slices_i", "redranges_j", "ranges_j", "slices_j", "redranges_i")


def _host(a: Any) -> np.ndarray:
    """A NumPy view or copy of an array or (any-device) tensor."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def as_ranges(ranges: Any) -> Optional[Any]:
    """pykeops' ``ranges`` (a 6-tuple of integer arrays or tensors) checked once, as the
    Rust ``Ranges`` the engine reads; ``None`` stays ``None``.

    Raises:
        TypeError: not a 6-tuple of integer arrays.
        ValueError: malformed ranges (the message names the array and the range).
    """
    if ranges is None or isinstance(ranges, _keops.Ranges):
        return ranges
    if not isinstance(ranges, (tuple, list)) or len(ranges) != 6:
        raise TypeError("ranges must be a 6-tuple (ranges_i, slices_i, redranges_j, ranges_j, "
                        f"slices_j, redranges_i), got {type(ranges).__name__}"
                        + (f" of length {len(ranges)}" if isinstance(ranges, (tuple, list)) else ""))
    arrays = []
    for k, (name, r) in enumerate(zip(RANGE_NAMES, ranges)):
        a = _host(r)
        if a.dtype.kind not in "iu":
            raise TypeError(f"ranges: {name} must hold integers, got dtype {a.dtype}")
        pairs = k % 3 != 1
        if pairs and not (a.ndim == 2 and a.shape[1] == 2) and a.size:
            raise ValueError(f"ranges: {name} must have shape (n, 2), got {tuple(a.shape)}")
        if not pairs and a.ndim != 1:
            raise ValueError(f"ranges: {name} must have shape (n,), got {tuple(a.shape)}")
        arrays.append(np.ascontiguousarray(a, dtype=np.int64).reshape(-1))
    return _keops.Ranges(arrays)


def swap_axes(ranges: Any) -> Any:
    """The ranges of the transposed reduction: the ``i`` and ``j`` halves exchanged
    (``None`` stays ``None``)."""
    if ranges is None:
        return None
    if isinstance(ranges, _keops.Ranges):
        a = ranges.to_keops()
        return _keops.Ranges(a[3:] + a[:3])
    return (*ranges[3:6], *ranges[0:3])


def same_ranges(a: Any, b: Any) -> bool:
    """Whether two ``ranges`` describe the same arrays."""
    if a is b:
        return True
    ka, kb = as_ranges(a).to_keops(), as_ranges(b).to_keops()
    return all(np.array_equal(x, y) for x, y in zip(ka, kb))


def _floats(x: Any, what: str = "x") -> np.ndarray:
    a = _host(x)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{what}: expected a float32 or float64 array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{what}: expected an (n, d) array of points, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _labels(lab: Any) -> np.ndarray:
    a = _host(lab)
    if a.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer array, got dtype {a.dtype}")
    return np.ascontiguousarray(a.reshape(-1), dtype=np.int64)


class Helpers:
    """The clustering helpers for one front end: ``to_out(array, like)`` turns a NumPy
    result into that front end's type (on ``like``'s device)."""

    def __init__(self, to_out: Callable[[np.ndarray, Any], Any], int_labels: Any) -> None:
        self.to_out = to_out
        self.int_labels = int_labels

    def grid_cluster(self, x: Any, size: Any) -> Any:
        """Labels the points ``x`` (``(M, D)``) by the cubic cell of side ``size`` (a
        number, or one per dimension) holding them, the grid anchored at the points'
        minimum: two points share a label iff they share a cell. Labels are compact
        (``0..C``) and follow the lexicographic order of the cells. Any ``D`` (pykeops
        stops at 3).
        """
        s = np.asarray(_host(size), dtype=np.float64).reshape(-1)
        labels = _keops.grid_cluster(_floats(x), np.ascontiguousarray(s))
        return self.to_out(labels.astype(self.int_labels), x)

    def sort_clusters(self, x: Any, lab: Any) -> Tuple[Any, Any]:
        """Sorts the points (an array, or a tuple/list of arrays with one row per label)
        and the labels so that every cluster is contiguous; a stable sort."""
        perm_np = _keops.cluster_permutation(_labels(lab))
        perm = self.to_out(perm_np, lab)
        flat = lab.reshape(-1) if hasattr(lab, "reshape") else np.asarray(lab).reshape(-1)
        if isinstance(x, tuple):
            xs: Any = tuple(a[perm] for a in x)
        elif isinstance(x, list):
            xs = [a[perm] for a in x]
        else:
            xs = x[perm]
        return xs, flat[perm]

    def cluster_ranges(self, lab: Any, Nlab: Any = None) -> Any:
        """The ``[start, end)`` rows of each cluster ``0..C`` of sorted points, ``(C, 2)``,
        from the labels (or the cluster sizes ``Nlab``)."""
        counts = None if Nlab is None else np.ascontiguousarray(
            np.rint(_host(Nlab)).astype(np.int64).reshape(-1))
        return self.to_out(_keops.cluster_ranges(_labels(lab), counts), lab)

    def cluster_centroids(self, x: Any, lab: Any, Nlab: Any = None, weights: Any = None,
                          weights_c: Any = None) -> Any:
        """The (weighted) centroid of each cluster, ``(C, D)``: ``sum w_i x_i / sum w_i``
        over its points (weights 1 by default; ``Nlab`` and ``weights_c`` are accepted
        for pykeops compatibility and recomputed)."""
        w = None if weights is None else np.ascontiguousarray(
            _host(weights).reshape(-1), dtype=np.float64)
        _, c, _ = _keops.cluster_ranges_centroids(_floats(x), _labels(lab), w, -math.inf)
        return self.to_out(c, x)

    def cluster_ranges_centroids(self, x: Any, lab: Any, weights: Any = None,
                                 min_weight: float = 1e-9) -> Tuple[Any, Any, Any]:
        """``cluster_ranges``, ``cluster_centroids`` and each cluster's total weight
        (its number of points without weights); weights below ``min_weight`` count as
        ``min_weight``."""
        w = None if weights is None else np.ascontiguousarray(
            _host(weights).reshape(-1), dtype=np.float64)
        r, c, t = _keops.cluster_ranges_centroids(_floats(x), _labels(lab), w, float(min_weight))
        return self.to_out(r, lab), self.to_out(c, x), self.to_out(t, x)

    def from_matrix(self, ranges_i: Any, ranges_j: Any, keep: Any) -> Tuple[Any, ...]:
        """KeOps' ``ranges`` 6-tuple from clusters of ``i`` (``(M, 2)``), of ``j``
        (``(N, 2)``) and an ``(M, N)`` boolean mask: clusters ``k`` and ``l`` interact
        when ``keep[k, l]``."""
        def pairs(name: str, r: Any) -> np.ndarray:
            a = np.ascontiguousarray(_host(r), dtype=np.int64)
            if a.size == 0:
                return a.reshape(0, 2)
            if a.ndim != 2 or a.shape[1] != 2:
                raise ValueError(f"from_matrix: {name}: expected an (n, 2) array of "
                                 f"[start, end) pairs, got shape {tuple(a.shape)}")
            return a

        ri, rj = pairs("ranges_i", ranges_i), pairs("ranges_j", ranges_j)
        k = np.ascontiguousarray(_host(keep)).astype(bool)
        out = _keops.from_matrix(ri, rj, k)
        return tuple(self.to_out(a, ranges_i) for a in out)

    def install(self, namespace: dict) -> None:
        """Puts the helpers (and ``swap_axes``) into a module's namespace."""
        for name in ("grid_cluster", "sort_clusters", "cluster_ranges", "cluster_centroids",
                     "cluster_ranges_centroids", "from_matrix"):
            namespace[name] = getattr(self, name)
        namespace["swap_axes"] = swap_axes


__all__: Sequence[str] = ("grid_cluster", "sort_clusters", "cluster_ranges",
                          "cluster_centroids", "cluster_ranges_centroids", "from_matrix",
                          "swap_axes")
