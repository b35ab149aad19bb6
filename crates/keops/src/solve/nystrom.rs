//! The Nyström preconditioner of [`super::KernelSolve`]: `P = L L^T + mu I`, where `L`
//! (`m x r`) is the partial pivoted Cholesky factor of `K` (the greedy Nyström
//! approximation of GPyTorch and Falkon's kind). Each of its `r` steps takes the column
//! of `K` at the row whose diagonal is worst approximated so far: one reduction over a
//! single reduced row, whatever the formula. The diagonal itself is one reduction with
//! block-sparse ranges pairing each row with itself.
//!
//! `P^{-1}` is applied through Woodbury's identity, scaled by `mu` (CG is blind to a
//! preconditioner's scale): `mu P^{-1} v = v - L (mu I + L^T L)^{-1} L^T v`, with the
//! Cholesky factor of the small `r x r` matrix computed once. `mu` is the ridge `alpha`,
//! raised to `1e-9 trace(K)` if smaller so that `mu I + L^T L` stays well conditioned;
//! any `mu > 0` gives a symmetric positive definite `P`, so the preconditioner only
//! changes the iteration count, never the solution.
//!
//! `NystromAuto` picks the rank as it builds, from what each column shows (how much of
//! `K - L L^T`'s trace it explains, against `mu` and against its own pivot) and from a
//! build budget counted in pairs of `K` (see [`AUTO_PRODUCTS`]).

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{KeopsError, Result};
use crate::formula::Cat;
use crate::plan::private::Sealed;
use crate::plan::{Arg, Element, Genred, Layout, Options};
use crate::ranges::{Blocks, Ranges};

use super::{sum_values, Preconditioner, Progress};

/// Rows per parallel task in the vector updates.
const CHUNK: usize = 4096;

/// `NystromAuto`'s budget: its build may cost as much as `B` products by `K`, `B` a
/// quarter of the square root of `trace(K) / mu` (plain CG's iterations grow as the
/// square root of the condition number, which `trace(K) / mu` bounds; the quarter was
/// measured: with a large ridge, half of plain CG's products' worth of columns cost
/// more than they saved) within these bounds. Costs are
/// counted in pairs of `K` (about a nanosecond each on two cores, measured): a column
/// costs its reduction, [`COLUMN_CALL_PAIRS`] more (an engine call), and its update,
/// `r m / 2` pairs at rank `r` (memory-bound: it reads the factor so far); then
/// `L^T L` and its Cholesky factor, `r^3 / 3`. Measured at N = 2,000 and 10^4, this
/// matched the build's time within a factor of 1.5.
const AUTO_PRODUCTS: (f64, f64) = (10.0, 100.0);
/// `NystromAuto` stops once a column lowers the trace of `K - L L^T` by at most this
/// times `mu`.
const AUTO_FLOOR: f64 = 0.1;
/// An engine call's fixed cost, in pairs (about 20 us).
const COLUMN_CALL_PAIRS: f64 = 2e4;
/// `NystromAuto`'s largest factor, in bytes.
const AUTO_MAX_BYTES: usize = 1 << 30;
/// `NystromAuto` stops when its last [`DIAGONAL_WINDOW`] columns together lowered the
/// trace of `K - L L^T` by less than this many times their pivots: each column then
/// explains little beside its own diagonal entry, the rest of `K` is nearly diagonal
/// (a short length scale), and CG handles it without help. Smooth kernels' columns
/// lower it by 2 to 70 times their pivot; nearly diagonal ones' by 1.0 to 1.4.
const DIAGONAL_EFFICIENCY: f64 = 1.5;
/// See [`DIAGONAL_EFFICIENCY`].
pub(super) const DIAGONAL_WINDOW: usize = 16;

/// The operator `K` of one solve: how to evaluate its columns and diagonal.
pub(super) struct Kernel<'s, 'a, T> {
    /// `K a`.
    pub genred: &'s Genred,
    /// The call's arguments (the unknown's slot is replaced).
    pub args: &'s [Arg<'a, T>],
    /// Their checked shapes.
    pub layout: Layout,
    /// The unknown's position.
    pub var: usize,
    /// Rows of the system.
    pub n: usize,
    /// The unknown's dimension.
    pub d: usize,
    /// Unknowns per row in one system: 1 when `K` scales every column alike (each
    /// column its own system), `d` when it mixes them (one system of `n d` unknowns).
    pub width: usize,
    /// Engine options, without ranges.
    pub opts: Options,
    /// The caller's block-sparse ranges, if any.
    pub ranges: Option<Arc<Ranges>>,
    /// Pairs of `K` per batch entry (a product's cost).
    pub pairs: usize,
}

impl<T: Element> Kernel<'_, '_, T> {
    /// Size of one system.
    pub fn m(&self) -> usize {
        self.n * self.width
    }

    /// The arguments of batch entry `e`: the reduced side's rows cut to `row` (all when
    /// `None`) and `unknown` (of `row`'s length) in the unknown's place.
    fn entry_args<'b>(
        &'b self,
        e: usize,
        row: Option<usize>,
        unknown: &'b [T],
    ) -> Result<Vec<Arg<'b, T>>> {
        let reduced = if self.genred.axis() == 1 {
            Cat::Vj
        } else {
            Cat::Vi
        };
        let rows = if row.is_some() { 1 } else { self.n };
        (0..self.args.len())
            .map(|k| {
                let decl = self.genred.arg_decl(k)?;
                if k == self.var {
                    return Ok(Arg::new(unknown, [rows, self.d]));
                }
                let off = self.layout.batch_offset(k, e);
                let data = &self.args[k].data[off..];
                Ok(match (decl.cat, row) {
                    (Cat::Pm, _) => Arg::new(&data[..decl.dim], [decl.dim]),
                    (cat, Some(p)) if cat == reduced => {
                        Arg::new(&data[p * decl.dim..(p + 1) * decl.dim], [1, decl.dim])
                    }
                    _ => Arg::new(&data[..self.n * decl.dim], [self.n, decl.dim]),
                })
            })
            .collect()
    }

    /// For the rows of batch entry `e`: whether the caller's ranges pair them with
    /// reduced row `p` (with themselves when `p` is `None`); `None` without ranges.
    fn kept_rows(&self, e: usize, p: Option<usize>) -> Option<Vec<bool>> {
        let blocks: &Blocks = self.ranges.as_ref()?.for_axis(self.genred.axis());
        let base = e * self.n;
        let mut keep = vec![false; self.n];
        for (k, r) in blocks.ranges.iter().enumerate() {
            let (lo, hi) = (r.start.max(base), r.end.min(base + self.n));
            if lo >= hi {
                continue;
            }
            for q in blocks.reduced(k) {
                match p {
                    Some(p) if q.contains(&(base + p)) => keep[lo - base..hi - base].fill(true),
                    Some(_) => {}
                    None => {
                        let (a, b) = (q.start.max(lo), q.end.min(hi));
                        if a < b {
                            keep[a - base..b - base].fill(true);
                        }
                    }
                }
            }
        }
        Some(keep)
    }

    /// Zeroes the entries of `v` (`n` rows of `width`) in rows not kept.
    fn mask(&self, v: &mut [f64], keep: Option<Vec<bool>>) {
        if let Some(keep) = keep {
            for (row, &k) in v.chunks_mut(self.width).zip(&keep) {
                if !k {
                    row.fill(0.0);
                }
            }
        }
    }

    /// A product by `K`'s cost, in pairs: each column of the unknown beyond the first
    /// adds about an eighth (one multiply-add against a kernel value's dozen flops).
    fn product_cost(&self) -> f64 {
        self.pairs as f64 * (1.0 + (self.d as f64 - 1.0) / 8.0)
    }

    /// The cost of building `r` columns, in pairs (see [`AUTO_PRODUCTS`]).
    fn build_cost(&self, r: usize) -> f64 {
        let (m, n, r) = (self.m() as f64, self.n as f64, r as f64);
        r * (n + COLUMN_CALL_PAIRS) + 0.5 * m * r * r + r * r * r / 3.0
    }

    /// `NystromAuto`'s largest rank, for a kernel of diagonal sum `trace` and ridge
    /// `mu`: the most columns whose build stays within the budget of
    /// [`AUTO_PRODUCTS`] and whose factor fits in [`AUTO_MAX_BYTES`].
    fn auto_rank(&self, trace: f64, mu: f64) -> usize {
        let (least, most) = AUTO_PRODUCTS;
        let budget = (0.25 * (trace / mu).sqrt()).clamp(least, most) * self.product_cost();
        let by_memory = AUTO_MAX_BYTES / (8 * self.m().max(1));
        // build_cost increases with r: the largest rank within budget, by bisection.
        let (mut lo, mut hi) = (0usize, self.m().min(by_memory));
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if self.build_cost(mid) <= budget {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }

    /// Column `(p, c)` of batch entry `e`'s system matrix (`m` values).
    fn column(&self, e: usize, p: usize, c: usize) -> Result<Vec<f64>> {
        let mut unit = vec![T::from_f64(0.0); self.d];
        unit[c] = T::from_f64(1.0);
        let out = sum_values(
            self.genred,
            &self.entry_args(e, Some(p), &unit)?,
            &self.opts,
        )?;
        let mut col: Vec<f64> = if self.width == 1 {
            out.iter().step_by(self.d).copied().collect()
        } else {
            out
        };
        self.mask(&mut col, self.kept_rows(e, Some(p)));
        Ok(col)
    }

    /// The diagonal of batch entry `e`'s system matrix: one reduction per unknown of a
    /// row, each row paired with itself alone by ranges.
    fn diagonal(&self, e: usize) -> Result<Vec<f64>> {
        let n = self.n;
        let own = Blocks {
            ranges: (0..n).map(|i| i..i + 1).collect(),
            slices: (1..=n).collect(),
            redranges: (0..n).map(|i| i..i + 1).collect(),
        };
        let opts = Options {
            ranges: Some(Arc::new(Ranges::from_blocks(own)?)),
            ..self.opts.clone()
        };
        let mut diag = vec![0.0; self.m()];
        for c in 0..self.width {
            let unit: Vec<T> = (0..n * self.d)
                .map(|t| T::from_f64(if t % self.d == c { 1.0 } else { 0.0 }))
                .collect();
            let out = sum_values(self.genred, &self.entry_args(e, None, &unit)?, &opts)?;
            for i in 0..n {
                diag[i * self.width + c] = out[i * self.d + c];
            }
        }
        self.mask(&mut diag, self.kept_rows(e, None));
        Ok(diag)
    }
}

/// `mu P^{-1}` for one batch entry.
#[derive(Debug)]
pub(super) struct Nystrom {
    /// Size of the system.
    m: usize,
    /// The rank reached (the pivoting stops early when `K` is approximated to 1e-10
    /// of its largest diagonal entry).
    pub rank: usize,
    /// `L^T` (`rank x m`, row-major): the columns of `L`.
    lt: Vec<f64>,
    /// The lower Cholesky factor of `mu I + L^T L` (`rank x rank`, row-major).
    chol: Vec<f64>,
}

impl Nystrom {
    /// Builds the preconditioner of batch entry `e` of the kind `precond` says,
    /// reporting each column to `progress`; `None` if it returns `false` (stop).
    pub fn build<T: Element>(
        k: &Kernel<'_, '_, T>,
        e: usize,
        precond: Preconditioner,
        alpha: f64,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Option<Nystrom>> {
        let m = k.m();
        let not_finite = |what: &str, v: f64, t: usize| {
            KeopsError::Arguments(format!(
            "KernelSolve's Nyström preconditioner: the kernel's {what} holds a non-finite value ({v}, row {} of batch entry {e}): the kernel's arguments hold NaN or infinite values, or its formula overflows",
            t / k.width
        ))
        };
        let mut resid = k.diagonal(e)?;
        if let Some(t) = resid.iter().position(|v| !v.is_finite()) {
            return Err(not_finite("diagonal", resid[t], t));
        }
        let dmax = resid.iter().fold(0.0f64, |a, &v| a.max(v));
        let trace: f64 = resid.iter().filter(|&&v| v > 0.0).sum();
        let mu = alpha.max(1e-9 * trace);
        let rank = match precond {
            Preconditioner::Nystrom { rank } => rank.min(m),
            Preconditioner::NystromAuto => k.auto_rank(trace, mu),
            Preconditioner::None => 0,
        };
        // The factor is the one allocation that grows with the rank: refused, it is an
        // error naming its size, not an abort. A fixed rank reserves it whole at once;
        // an automatic one as it grows.
        let oom = |cols: usize| KeopsError::OutOfMemory {
            what: format!(
                "KernelSolve's rank-{cols} Nyström preconditioner ({m} rows; lower precond_rank)"
            ),
            bytes: cols.saturating_mul(m).saturating_mul(8),
        };
        let mut lt: Vec<f64> = Vec::new();
        if let Preconditioner::Nystrom { .. } = precond {
            lt.try_reserve_exact(rank.saturating_mul(m))
                .map_err(|_| oom(rank))?;
        }
        let mut picked = vec![false; m];
        let mut reached = 0;
        // Each column's (decrease of the residual trace, pivot), for NystromAuto, and
        // the build cost it stops at once the floor is reached.
        let mut gains: Vec<(f64, f64)> = Vec::new();
        let mut extra_until: Option<f64> = None;
        for r in 0..rank {
            let best = (0..m)
                .filter(|&t| !picked[t])
                .max_by(|&a, &b| resid[a].total_cmp(&resid[b]));
            let Some(p) = best else { break };
            if resid[p] <= 1e-10 * dmax {
                break;
            }
            let mut col = k.column(e, p / k.width, p % k.width)?;
            if let Some(t) = col.iter().position(|v| !v.is_finite()) {
                return Err(not_finite("column", col[t], t));
            }
            // Minus the part the previous columns already explain.
            let lp: Vec<f64> = (0..r).map(|t| lt[t * m + p]).collect();
            col.par_chunks_mut(CHUNK)
                .with_min_len(crate::cpu::task_min_len())
                .enumerate()
                .for_each(|(ci, chunk)| {
                    let off = ci * CHUNK;
                    for (t, &f) in lp.iter().enumerate() {
                        let l = &lt[t * m + off..t * m + off + chunk.len()];
                        chunk.iter_mut().zip(l).for_each(|(v, &l)| *v -= f * l);
                    }
                });
            let pivot = col[p];
            // Rounding has caught up with the approximation: nothing left to add (the
            // column is finite, checked above).
            if pivot <= 1e-10 * dmax {
                break;
            }
            let s = pivot.sqrt().recip();
            let mut drop = 0.0;
            for (v, q) in col.iter_mut().zip(resid.iter_mut()) {
                *v *= s;
                *q -= *v * *v;
                drop += *v * *v;
            }
            if precond == Preconditioner::NystromAuto {
                // The column's trace decrease `|E e_p|^2 / E_pp` is at most |E|, the
                // largest eigenvalue of K - L L^T before it: once it is a tenth of mu,
                // CG converges in a few iterations. Columns that cost one product more
                // are still added (cheap beside a product, they save iterations: a
                // smooth kernel then reaches its numerical rank).
                if drop <= AUTO_FLOOR * mu && extra_until.is_none() {
                    extra_until = Some(k.build_cost(r + 1) + k.product_cost());
                }
                if extra_until.is_some_and(|c| k.build_cost(r + 1) > c) {
                    break;
                }
                gains.push((drop, pivot));
                if let Some(last) = gains.len().checked_sub(DIAGONAL_WINDOW) {
                    let (d, p): (f64, f64) = gains[last..]
                        .iter()
                        .fold((0.0, 0.0), |(a, b), &(d, p)| (a + d, b + p));
                    if d < DIAGONAL_EFFICIENCY * p {
                        break;
                    }
                }
            }
            picked[p] = true;
            lt.try_reserve(m).map_err(|_| oom(r + 1))?;
            lt.extend_from_slice(&col);
            reached = r + 1;
            if !progress(Progress::Preconditioner {
                entry: e,
                rank: reached,
            }) {
                return Ok(None);
            }
        }
        let rank = reached;
        lt.truncate(rank * m);
        lt.shrink_to_fit();
        let mut chol = vec![0.0; rank * rank];
        if rank > 0 {
            <f64 as Sealed>::gemm((rank, m, rank), &lt, m, &lt, 1, m, &mut chol);
        }
        for t in 0..rank {
            chol[t * rank + t] += mu;
        }
        cholesky(&mut chol, rank).map_err(|t| {
            KeopsError::Arguments(format!(
                "KernelSolve's Nyström preconditioner: mu I + L^T L is not positive definite (pivot {t} of {rank}, mu = {mu:e})"
            ))
        })?;
        Ok(Some(Nystrom { m, rank, lt, chol }))
    }

    /// `v <- mu P^{-1} v` for `v` of `m` rows and `cols` systems (row-major).
    pub fn apply(&self, v: &mut [f64], cols: usize) {
        let (m, rank) = (self.m, self.rank);
        if rank == 0 || cols == 0 {
            return;
        }
        debug_assert_eq!(v.len(), m * cols);
        // w = (mu I + L^T L)^{-1} L^T v.
        let mut w = vec![0.0; rank * cols];
        <f64 as Sealed>::gemm((rank, m, cols), &self.lt, m, v, cols, 1, &mut w);
        let c = &self.chol;
        for col in 0..cols {
            for t in 0..rank {
                let s: f64 = (0..t).map(|u| c[t * rank + u] * w[u * cols + col]).sum();
                w[t * cols + col] = (w[t * cols + col] - s) / c[t * rank + t];
            }
            for t in (0..rank).rev() {
                let s: f64 = (t + 1..rank)
                    .map(|u| c[u * rank + t] * w[u * cols + col])
                    .sum();
                w[t * cols + col] = (w[t * cols + col] - s) / c[t * rank + t];
            }
        }
        // v -= L w.
        v.par_chunks_mut(CHUNK * cols)
            .with_min_len(crate::cpu::task_min_len())
            .enumerate()
            .for_each(|(ci, chunk)| {
                let i0 = ci * CHUNK;
                for t in 0..rank {
                    let l = &self.lt[t * m + i0..];
                    let wt = &w[t * cols..(t + 1) * cols];
                    for (row, &l) in chunk.chunks_mut(cols).zip(l) {
                        row.iter_mut().zip(wt).for_each(|(x, &w)| *x -= l * w);
                    }
                }
            });
    }
}

/// In-place lower Cholesky factor of the symmetric `n x n` row-major `a` (its upper
/// triangle is left as is); `Err(t)` at a non-positive pivot `t`.
fn cholesky(a: &mut [f64], n: usize) -> std::result::Result<(), usize> {
    for j in 0..n {
        let s: f64 = (0..j).map(|k| a[j * n + k] * a[j * n + k]).sum();
        let d = a[j * n + j] - s;
        if d.is_nan() || d <= 0.0 {
            return Err(j);
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let s: f64 = (0..j).map(|k| a[i * n + k] * a[j * n + k]).sum();
            a[i * n + j] = (a[i * n + j] - s) / d;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_factors_and_refuses_indefinite_matrices() {
        let mut a = vec![4.0, 2.0, 2.0, 2.0, 5.0, 3.0, 2.0, 3.0, 6.0];
        let orig = a.clone();
        cholesky(&mut a, 3).unwrap();
        for i in 0..3 {
            for j in 0..=i {
                let s: f64 = (0..=j).map(|k| a[i * 3 + k] * a[j * 3 + k]).sum();
                assert!((s - orig[i * 3 + j]).abs() < 1e-12, "{i} {j}");
            }
        }
        assert_eq!(cholesky(&mut [1.0, 2.0, 2.0, 1.0], 2), Err(1));
    }
}
