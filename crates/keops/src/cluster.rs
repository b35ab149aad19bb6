//! Clustering helpers for block-sparse reductions, with pykeops' names and semantics:
//! label points ([`grid_cluster`]), make clusters contiguous ([`sort_clusters`]), find
//! their ranges and centroids ([`cluster_ranges`], [`cluster_centroids`],
//! [`cluster_ranges_centroids`]), and turn a cluster-to-cluster mask into
//! [`Ranges`] ([`from_matrix`]). The coarse-to-fine recipe:
//!
//! ```
//! use keops::cluster::{cluster_ranges_centroids, from_matrix, grid_cluster, sort_clusters};
//! let x: Vec<f64> = (0..100).map(|k| (k as f64 * 0.37).sin()).collect(); // 100 points, D = 1
//! let labels = grid_cluster(&x, 1, &[0.25])?;
//! let (x, labels) = sort_clusters(&x, 1, &labels)?;
//! let (ranges, centroids, _) = cluster_ranges_centroids(&x, 1, &labels, None, 1e-9)?;
//! let c = ranges.len();
//! // Keep the pairs of clusters whose centroids are closer than 0.5.
//! let keep: Vec<bool> = (0..c * c)
//!     .map(|t| (centroids[t / c] - centroids[t % c]).abs() < 0.5)
//!     .collect();
//! let r = from_matrix(&ranges, &ranges, &keep)?;
//! assert!(r.over_j.pairs() < 100 * 100);
//! # Ok::<(), keops::KeopsError>(())
//! ```

use crate::error::{KeopsError, Result};
use crate::ranges::{Blocks, Ranges};
use crate::real::Real;
use std::ops::Range;

fn bad(what: &str, msg: String) -> KeopsError {
    KeopsError::Arguments(format!("{what}: {msg}"))
}

/// Checks that `x` holds rows of `dim` values and returns the number of rows.
fn rows<T>(x: &[T], dim: usize, what: &str) -> Result<usize> {
    if dim == 0 || x.len() % dim != 0 {
        return Err(bad(
            what,
            format!("{} values do not make rows of dimension {dim}", x.len()),
        ));
    }
    Ok(x.len() / dim)
}

/// Labels the points `x` (rows of `dim` values) by the cubic cell of side `size` (one
/// value, or one per dimension) that holds them, with the grid anchored at the
/// points' minimum. Labels are compact (`0..C` for `C` non-empty cells) and follow the
/// lexicographic order of the cells, as pykeops' `grid_cluster` (which is limited to
/// `D <= 3` and fewer than 1,024 cells per axis; this one is not).
pub fn grid_cluster<T: Real>(x: &[T], dim: usize, size: &[T]) -> Result<Vec<i64>> {
    let n = rows(x, dim, "grid_cluster: x")?;
    if size.len() != 1 && size.len() != dim {
        return Err(bad(
            "grid_cluster: size",
            format!("expected 1 or {dim} (= D) values, got {}", size.len()),
        ));
    }
    let side = |c: usize| size[if size.len() == 1 { 0 } else { c }].to_f64();
    for c in 0..dim {
        let s = side(c);
        if !(s > 0.0 && s.is_finite()) {
            return Err(bad(
                "grid_cluster: size",
                format!("cell sides must be positive and finite, got {s}"),
            ));
        }
    }
    if let Some(k) = x.iter().position(|v| !v.to_f64().is_finite()) {
        return Err(bad(
            "grid_cluster: x",
            format!("point {} has a non-finite coordinate", k / dim),
        ));
    }
    let mut lo = vec![f64::INFINITY; dim];
    for p in x.chunks_exact(dim) {
        for (m, v) in lo.iter_mut().zip(p) {
            *m = m.min(v.to_f64());
        }
    }
    let mut cells = Vec::with_capacity(n * dim);
    for p in x.chunks_exact(dim) {
        for (c, v) in p.iter().enumerate() {
            let q = ((v.to_f64() - lo[c]) / side(c)).floor();
            if q >= i64::MAX as f64 {
                return Err(bad(
                    "grid_cluster: size",
                    format!(
                        "cells of side {} give more than 2^63 cells along axis {c}",
                        side(c)
                    ),
                ));
            }
            cells.push(q as i64);
        }
    }
    let cell = |i: usize| &cells[i * dim..(i + 1) * dim];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| cell(a).cmp(cell(b)));
    let mut labels = vec![0i64; n];
    let mut next = -1i64;
    for (t, &i) in order.iter().enumerate() {
        if t == 0 || cell(i) != cell(order[t - 1]) {
            next += 1;
        }
        labels[i] = next;
    }
    Ok(labels)
}

/// The permutation that sorts `labels` (stable: points of a cluster keep their order).
pub fn cluster_permutation(labels: &[i64]) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..labels.len()).collect();
    perm.sort_by_key(|&i| labels[i]);
    perm
}

/// Sorts the points (rows of `dim` values) and their labels so that every cluster is
/// contiguous, as pykeops' `sort_clusters`; use [`cluster_permutation`] to sort several
/// arrays alike.
pub fn sort_clusters<T: Copy>(x: &[T], dim: usize, labels: &[i64]) -> Result<(Vec<T>, Vec<i64>)> {
    let n = rows(x, dim, "sort_clusters: x")?;
    if labels.len() != n {
        return Err(bad(
            "sort_clusters: labels",
            format!("expected one label per point ({n}), got {}", labels.len()),
        ));
    }
    let perm = cluster_permutation(labels);
    let xs = perm
        .iter()
        .flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    Ok((xs, perm.iter().map(|&i| labels[i]).collect()))
}

/// Number of points per label (`0..=max label`), checking labels are non-negative.
fn bincount(labels: &[i64], what: &str) -> Result<Vec<usize>> {
    let mut counts = Vec::new();
    for (k, &l) in labels.iter().enumerate() {
        let l =
            usize::try_from(l).map_err(|_| bad(what, format!("label {k} is negative ({l})")))?;
        if l >= counts.len() {
            counts.resize(l + 1, 0);
        }
        counts[l] += 1;
    }
    Ok(counts)
}

/// The `[start, end)` rows of each cluster `0..C` of sorted points: the cumulated
/// sizes of the clusters (given, or counted from `labels`), as pykeops'
/// `cluster_ranges`. Empty clusters get empty ranges.
pub fn cluster_ranges(labels: &[i64], counts: Option<&[usize]>) -> Result<Vec<Range<usize>>> {
    let counted;
    let counts = match counts {
        Some(c) => c,
        None => {
            counted = bincount(labels, "cluster_ranges: labels")?;
            &counted
        }
    };
    let mut start = 0;
    Ok(counts
        .iter()
        .map(|&c| {
            start += c;
            start - c..start
        })
        .collect())
}

/// The (weighted) centroid of each cluster `0..C`, as rows of `dim` values:
/// `c_k = sum_{l_i = k} w_i x_i / sum_{l_i = k} w_i` (weights 1 by default), computed
/// in `f64`. An empty cluster's centroid is NaN, as in pykeops.
pub fn cluster_centroids<T: Real>(
    x: &[T],
    dim: usize,
    labels: &[i64],
    weights: Option<&[T]>,
) -> Result<Vec<T>> {
    let n = rows(x, dim, "cluster_centroids: x")?;
    if labels.len() != n {
        return Err(bad(
            "cluster_centroids: labels",
            format!("expected one label per point ({n}), got {}", labels.len()),
        ));
    }
    if let Some(w) = weights {
        if w.len() != n {
            return Err(bad(
                "cluster_centroids: weights",
                format!("expected one weight per point ({n}), got {}", w.len()),
            ));
        }
    }
    let c = bincount(labels, "cluster_centroids: labels")?.len();
    let mut sums = vec![0.0f64; c * dim];
    let mut mass = vec![0.0f64; c];
    for (i, p) in x.chunks_exact(dim).enumerate() {
        let l = labels[i] as usize;
        let w = weights.map_or(1.0, |w| w[i].to_f64());
        mass[l] += w;
        for (s, v) in sums[l * dim..(l + 1) * dim].iter_mut().zip(p) {
            *s += w * v.to_f64();
        }
    }
    Ok(sums
        .iter()
        .enumerate()
        .map(|(t, s)| T::from_f64(s / mass[t / dim]))
        .collect())
}

/// [`cluster_ranges`], [`cluster_centroids`] and the total weight of each cluster, as
/// pykeops' `cluster_ranges_centroids`; weights below `min_weight` count as
/// `min_weight` (numerical stability).
#[allow(clippy::type_complexity)] // pykeops' triple, named in the docs
pub fn cluster_ranges_centroids<T: Real>(
    x: &[T],
    dim: usize,
    labels: &[i64],
    weights: Option<&[T]>,
    min_weight: f64,
) -> Result<(Vec<Range<usize>>, Vec<T>, Vec<T>)> {
    let counts = bincount(labels, "cluster_ranges_centroids: labels")?;
    let ranges = cluster_ranges(labels, Some(&counts))?;
    let clamped: Option<Vec<T>> = weights.map(|w| {
        w.iter()
            .map(|&v| {
                if v.to_f64() <= min_weight {
                    T::from_f64(min_weight)
                } else {
                    v
                }
            })
            .collect()
    });
    let centroids = cluster_centroids(x, dim, labels, clamped.as_deref())?;
    let totals = match &clamped {
        None => counts.iter().map(|&c| T::from_f64(c as f64)).collect(),
        Some(w) => {
            let mut t = vec![0.0f64; counts.len()];
            for (&l, v) in labels.iter().zip(w) {
                t[l as usize] += v.to_f64();
            }
            t.into_iter().map(T::from_f64).collect()
        }
    };
    Ok((ranges, centroids, totals))
}

/// The [`Ranges`] of a block-sparse reduction from clusters of `i` rows (`ranges_i`,
/// `M` of them), of `j` rows (`ranges_j`, `N`) and a row-major `M x N` mask: clusters
/// `k` and `l` interact when `keep[k * N + l]`. As pykeops' `from_matrix`.
pub fn from_matrix(
    ranges_i: &[Range<usize>],
    ranges_j: &[Range<usize>],
    keep: &[bool],
) -> Result<Ranges> {
    let (m, n) = (ranges_i.len(), ranges_j.len());
    if keep.len() != m * n {
        return Err(bad(
            "from_matrix: keep",
            format!(
                "expected a {m} x {n} mask ({} values: one per pair of clusters), got {}",
                m * n,
                keep.len()
            ),
        ));
    }
    let half =
        |outer: &[Range<usize>], inner: &[Range<usize>], kept: &dyn Fn(usize, usize) -> bool| {
            let mut redranges = Vec::new();
            let slices = (0..outer.len())
                .map(|a| {
                    redranges.extend(
                        (0..inner.len())
                            .filter(|&b| kept(a, b))
                            .map(|b| inner[b].clone()),
                    );
                    redranges.len()
                })
                .collect();
            Blocks {
                ranges: outer.to_vec(),
                slices,
                redranges,
            }
        };
    let over_j = half(ranges_i, ranges_j, &|a, b| keep[a * n + b]);
    let over_i = half(ranges_j, ranges_i, &|b, a| keep[a * n + b]);
    let [a, b, c, d, e, f] = Ranges { over_j, over_i }.to_keops();
    Ranges::from_keops(&a, &b, &c, &d, &e, &f)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // lists of one range
mod tests {
    use super::*;

    #[test]
    fn grid_cluster_matches_pykeops_docstring() {
        let x = [0.0f64, 0.1, 0.9, 0.05, 0.5];
        assert_eq!(grid_cluster(&x, 1, &[0.2]).unwrap(), vec![0, 0, 2, 0, 1]);
        // 2-D: lexicographic order of cells, anisotropic sides.
        let x = [0.0f32, 0.0, 0.0, 3.0, 1.5, 0.0, 0.2, 0.1];
        assert_eq!(grid_cluster(&x, 2, &[1.0, 2.0]).unwrap(), vec![0, 1, 2, 0]);
        assert!(grid_cluster(&x, 2, &[0.0]).is_err());
        assert!(grid_cluster(&x, 3, &[1.0]).is_err());
        assert!(grid_cluster(&x, 2, &[1.0, 1.0, 1.0]).is_err());
    }

    #[test]
    fn sort_ranges_centroids_match_pykeops_docstrings() {
        let (xs, ls) = sort_clusters(&[0.0f64, 5.0, 0.4, 0.3, 2.0], 1, &[0, 2, 0, 0, 1]).unwrap();
        assert_eq!(xs, vec![0.0, 0.4, 0.3, 2.0, 5.0]);
        assert_eq!(ls, vec![0, 0, 0, 1, 2]);
        assert_eq!(cluster_ranges(&ls, None).unwrap(), vec![0..3, 3..4, 4..5]);
        let x = [0.0f64, 0.5, 1.0, 2.0, 3.0];
        let lab = [0, 0, 1, 1, 1];
        let (r, c, w) = cluster_ranges_centroids(&x, 1, &lab, None, 1e-9).unwrap();
        assert_eq!(
            (r, c, w),
            (vec![0..2, 2..5], vec![0.25, 2.0], vec![2.0, 3.0])
        );
        let weights = [1.0, 0.5, 1.0, 1.0, 10.0];
        let (_, c, w) = cluster_ranges_centroids(&x, 1, &lab, Some(&weights), 1e-9).unwrap();
        assert!((c[0] - 1.0 / 6.0).abs() < 1e-12 && (c[1] - 2.75).abs() < 1e-12);
        assert_eq!(w, vec![1.5, 12.0]);
        assert!(cluster_ranges(&[0, -1], None).is_err());
    }

    #[test]
    fn from_matrix_matches_pykeops_docstring() {
        let r = from_matrix(
            &[2..5, 7..12],
            &[1..4, 4..9, 20..30],
            &[true, true, false, false, true, false],
        )
        .unwrap();
        assert_eq!(r.over_j.slices, vec![2, 3]);
        assert_eq!(r.over_j.redranges, vec![1..4, 4..9, 4..9]);
        assert_eq!(r.over_i.ranges, vec![1..4, 4..9, 20..30]);
        assert_eq!(r.over_i.slices, vec![1, 3, 3]);
        assert_eq!(r.over_i.redranges, vec![2..5, 2..5, 7..12]);
        assert!(from_matrix(&[0..1], &[0..1], &[true, false]).is_err());
    }
}
