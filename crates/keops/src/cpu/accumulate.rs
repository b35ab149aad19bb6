//! Folding a tile of formula values into the reduction states of one output row.
//!
//! Sums within a tile go into 16 independent lanes (block summation, vectorised) in
//! the accumulation type `A` (the data type, or `f64` with `dtype_acc = float64`),
//! optionally Kahan-compensated; the tile's partial result is then added to the row's
//! `f64` state. The min/max family scans the values with comparisons, skipping
//! insertion work with a threshold (the current K-th best) for the K-min family.

use super::program::Src;
use super::tile::{Lane, Regs};
use crate::plan::SumScheme;
use crate::real::{MathMode, Real};
use crate::reduction::{kmin_insert, shift, Reduction, ReductionSpec};

const L: usize = 16;

/// Sum of `x` (or of `x * y`), as `f64`, with the given scheme and accumulator type.
#[inline(always)]
pub fn tile_sum<T: Real, A: Real>(x: &[T], y: Option<&[T]>, scheme: SumScheme) -> f64 {
    let conv = |v: T| A::from_f64(v.to_f64());
    match scheme {
        SumScheme::Direct => {
            let mut s = A::ZERO;
            match y {
                None => x.iter().for_each(|&v| s += conv(v)),
                Some(y) => x.iter().zip(y).for_each(|(&a, &b)| s += conv(a * b)),
            }
            s.to_f64()
        }
        SumScheme::BlockSum | SumScheme::Kahan => {
            let kahan = scheme == SumScheme::Kahan;
            let mut acc = [A::ZERO; L];
            let mut comp = [A::ZERO; L];
            let mut add = |l: usize, v: A| {
                if kahan {
                    let yv = v - comp[l];
                    let t = acc[l] + yv;
                    comp[l] = (t - acc[l]) - yv;
                    acc[l] = t;
                } else {
                    acc[l] += v;
                }
            };
            let n = x.len() / L * L;
            match y {
                None => {
                    for ch in x[..n].chunks_exact(L) {
                        for (l, &v) in ch.iter().enumerate() {
                            add(l, conv(v));
                        }
                    }
                    for (l, &v) in x[n..].iter().enumerate() {
                        add(l, conv(v));
                    }
                }
                Some(y) => {
                    for (cx, cy) in x[..n].chunks_exact(L).zip(y[..n].chunks_exact(L)) {
                        for l in 0..L {
                            add(l, conv(cx[l] * cy[l]));
                        }
                    }
                    for (l, (&a, &b)) in x[n..].iter().zip(&y[n..]).enumerate() {
                        add(l, conv(a * b));
                    }
                }
            }
            // Pairwise combination of the lanes.
            let mut w = L;
            while w > 1 {
                w /= 2;
                for l in 0..w {
                    acc[l] += acc[l + w];
                }
            }
            acc[0].to_f64()
        }
    }
}

#[inline(always)]
fn tile_max<T: Real>(x: &[T]) -> T {
    let mut m = [T::NEG_INFINITY; L];
    let n = x.len() / L * L;
    for ch in x[..n].chunks_exact(L) {
        for l in 0..L {
            m[l] = m[l].max_(ch[l]);
        }
    }
    for (l, &v) in x[n..].iter().enumerate() {
        m[l] = m[l].max_(v);
    }
    m.iter().fold(T::NEG_INFINITY, |a, &b| a.max_(b))
}

#[inline(always)]
fn tile_of<T: Real>(regs: &Regs<T>, src: Src, c: usize, len: usize) -> &[T] {
    match regs.lane(&[], src, c) {
        Lane::Tile(x) => &x[..len],
        Lane::Splat(_) => unreachable!("roots are tile registers"),
    }
}

/// Folds lanes `0..len` of the roots (values at reduced indices `j0..j0+len`) into the
/// state `(vals, idx)` of one row. `tmp` has at least `len` values.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn accumulate<T: Real, A: Real, M: MathMode>(
    spec: &ReductionSpec,
    scheme: SumScheme,
    regs: &Regs<T>,
    roots: &[Src],
    product: Option<(Src, Src)>,
    len: usize,
    j0: usize,
    vals: &mut [f64],
    idx: &mut [i64],
    tmp: &mut [T],
) {
    let d = spec.dim;
    match spec.kind {
        Reduction::Sum => match product {
            Some((a, b)) => {
                for (c, v) in vals.iter_mut().enumerate().take(d) {
                    let (x, y) = (tile_of(regs, a, c, len), tile_of(regs, b, c, len));
                    *v += tile_sum::<T, A>(x, Some(y), scheme);
                }
            }
            None => {
                for (c, v) in vals.iter_mut().enumerate().take(d) {
                    *v += tile_sum::<T, A>(tile_of(regs, roots[0], c, len), None, scheme);
                }
            }
        },
        Reduction::LogSumExp | Reduction::SumSoftMaxWeight => {
            let weighted = spec.weight_dim.is_some();
            let nmax = if weighted { 1 } else { d };
            for c in 0..nmax {
                let f = tile_of(regs, roots[0], c, len);
                let tm = tile_max(f);
                if tm == T::NEG_INFINITY {
                    // Every value is -inf (adds nothing) or NaN (poisons the sum).
                    if f.iter().any(|x| x.is_nan_()) {
                        let s = if weighted { 1 } else { d + c };
                        vals[s] = f64::NAN;
                    }
                    continue;
                }
                let m_old = vals[c];
                let m_new = m_old.max(tm.to_f64());
                let scale = shift(m_old, m_new);
                let mt = T::from_f64(m_new);
                let e = &mut tmp[..len];
                // x == mt gives exactly 1, also when both are +inf (inf - inf is NaN).
                for (o, &x) in e.iter_mut().zip(f) {
                    *o = T::select(x == mt, T::ONE, (x - mt).exp_::<M>());
                }
                vals[c] = m_new;
                if weighted {
                    vals[1] = vals[1] * scale + tile_sum::<T, A>(e, None, scheme);
                    let wd = spec.weight_dim.unwrap_or(0);
                    for k in 0..wd {
                        let g = tile_of(regs, roots[1], k, len);
                        vals[2 + k] = vals[2 + k] * scale + tile_sum::<T, A>(e, Some(g), scheme);
                    }
                } else {
                    vals[d + c] = vals[d + c] * scale + tile_sum::<T, A>(e, None, scheme);
                }
            }
        }
        Reduction::Min
        | Reduction::ArgMin
        | Reduction::MinArgMin
        | Reduction::Max
        | Reduction::ArgMax
        | Reduction::MaxArgMax => {
            let max = matches!(
                spec.kind,
                Reduction::Max | Reduction::ArgMax | Reduction::MaxArgMax
            );
            for c in 0..d {
                let f = tile_of(regs, roots[0], c, len);
                let (mut best, mut arg) = (vals[c], idx[c]);
                // States hold values of type T (or infinities): the conversion is exact.
                let mut bt = T::from_f64(best);
                for (ci, ch) in f.chunks(L).enumerate() {
                    // Vectorised test first: most chunks improve nothing.
                    let hit = ch
                        .iter()
                        .fold(false, |h, &x| h | if max { x > bt } else { x < bt });
                    if !hit {
                        continue;
                    }
                    for (t, &x) in ch.iter().enumerate() {
                        if (!max && x < bt) || (max && x > bt) {
                            bt = x;
                            best = x.to_f64();
                            arg = (j0 + ci * L + t) as i64;
                        }
                    }
                }
                vals[c] = best;
                idx[c] = arg;
            }
        }
        Reduction::KMin(k) | Reduction::ArgKMin(k) | Reduction::KMinArgKMin(k) => {
            for c in 0..d {
                let f = tile_of(regs, roots[0], c, len);
                let mut thr = T::from_f64(vals[(k - 1) * d + c]);
                for (ci, ch) in f.chunks(L).enumerate() {
                    if !ch.iter().fold(false, |h, &x| h | (x < thr)) {
                        continue;
                    }
                    for (t, &x) in ch.iter().enumerate() {
                        if x < thr {
                            kmin_insert(vals, idx, k, d, c, x.to_f64(), (j0 + ci * L + t) as i64);
                            thr = T::from_f64(vals[(k - 1) * d + c]);
                        }
                    }
                }
            }
        }
    }
}
