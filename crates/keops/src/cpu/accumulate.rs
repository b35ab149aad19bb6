//! Folding a tile of formula values into the reduction states of one output row.
//!
//! Sums within a tile go into independent lanes (block summation, vectorised: 64 lanes
//! folded into 16, see [`tile_sum`]) in the accumulation type `A` (the data type, or
//! `f64` with `dtype_acc = float64`), optionally Kahan-compensated; the tile's partial
//! result is then added to the row's `f64` state. The min/max family scans the values
//! with comparisons, visiting only the values that beat the current best (the K-th
//! best for the K-min family, and where a tile fills the K-min list, a bound on its
//! K-th smallest value from lane minima).

use super::program::{Src, Summand, Term};
use super::simd::{multiversion, Isa};
use super::tile::{Lane, Regs};
use crate::plan::{Element, SumScheme};
use crate::real::{MathMode, Real};
use crate::reduction::{kmin_insert, shift, Reduction, ReductionSpec};

const L: usize = 16;

/// Sum of `x` (or of `x * y`), as `f64`, with the given scheme and accumulator type.
#[inline(always)]
pub fn tile_sum<T: Real, A: Real>(x: &[T], y: Option<&[T]>, scheme: SumScheme) -> f64 {
    match y {
        None => term_sum::<T, A>(None, Terms::Tile(x), scheme, |v| v),
        Some(y) => term_sum::<T, A>(Some(x), Terms::Tile(y), scheme, |v| v),
    }
}

/// One coordinate of a [`Term`](super::program::Term) on a tile.
#[derive(Clone, Copy)]
pub enum Terms<'a, T> {
    /// The tile's values.
    Tile(&'a [T]),
    /// `row - tile[t]` (`minus`) or `row + tile[t]`.
    Offset {
        /// The row's value.
        row: T,
        /// The tile's values.
        tile: &'a [T],
        /// Whether the tile's values are subtracted.
        minus: bool,
    },
}

multiversion! {
    /// `scale` times the sum of `factor[t] * term[t]` (of `term[t]` with no factor), as
    /// `f64`: an offset term is computed as it is summed, in the data type as an
    /// instruction would have. A scale that is 0, infinite or NaN multiplies each term, in
    /// the data type, as the formula does: `inf * (a - b)` summed over terms of both signs
    /// is NaN, and `0 * inf` too (the results are 0, infinities or NaN, in any order).
    ///
    /// An entry point of its own (as [`shifted_exps`]): its sums inlined into the tile
    /// program's block loop made that too large for LLVM to inline their iterators (the
    /// gradient of a Gaussian sum ran 25% slower).
    pub fn scaled_sum<T: Real, A: Real>(scale: f64, factor: Option<&[T]>, term: Terms<'_, T>, scheme: SumScheme) -> f64 = scaled_sum_body;
}

// `M` is the entry point's: the copy per instruction set is what matters here.
#[allow(clippy::extra_unused_type_parameters)]
#[inline(always)]
fn scaled_sum_body<T: Real, A: Real, M: MathMode>(
    _: Isa,
    scale: f64,
    factor: Option<&[T]>,
    term: Terms<'_, T>,
    scheme: SumScheme,
) -> f64 {
    scaled_sum_in::<T, A>(scale, factor, term, scheme)
}

/// [`scaled_sum`], inlined.
#[inline(always)]
fn scaled_sum_in<T: Real, A: Real>(
    scale: f64,
    factor: Option<&[T]>,
    term: Terms<'_, T>,
    scheme: SumScheme,
) -> f64 {
    if scale.is_finite() && scale != 0.0 {
        scale * term_sum::<T, A>(factor, term, scheme, |v| v)
    } else {
        let c = T::from_f64(scale);
        term_sum::<T, A>(factor, term, SumScheme::Direct, move |v| c * v)
    }
}

/// The sum of `out(factor[t] * term[t])` (of `out(term[t])` with no factor).
#[inline(always)]
fn term_sum<T: Real, A: Real>(
    factor: Option<&[T]>,
    term: Terms<'_, T>,
    scheme: SumScheme,
    out: impl Fn(T) -> T + Copy,
) -> f64 {
    let conv = move |v: T| A::from_f64(out(v).to_f64());
    match (factor, term) {
        (None, Terms::Tile(t)) => sum_terms(t, t, scheme, |a, _| conv(a)),
        (Some(f), Terms::Tile(t)) => sum_terms(f, t, scheme, |a, b| conv(a * b)),
        (None, Terms::Offset { row, tile, minus }) => match minus {
            true => sum_terms(tile, tile, scheme, |_, b| conv(row - b)),
            false => sum_terms(tile, tile, scheme, |_, b| conv(row + b)),
        },
        (Some(f), Terms::Offset { row, tile, minus }) => match minus {
            true => sum_terms(f, tile, scheme, |a, b| conv(a * (row - b))),
            false => sum_terms(f, tile, scheme, |a, b| conv(a * (row + b))),
        },
    }
}

/// The sum of `term(x[t], y[t])`: one running sum (`Direct`), or [`lane_sums`].
#[inline(always)]
fn sum_terms<T: Real, A: Real>(
    x: &[T],
    y: &[T],
    scheme: SumScheme,
    term: impl Fn(T, T) -> A,
) -> f64 {
    match scheme {
        SumScheme::Direct => x
            .iter()
            .zip(y)
            .fold(A::ZERO, |s, (&a, &b)| s + term(a, b))
            .to_f64(),
        SumScheme::BlockSum => lane_sums(x, y, false, term),
        SumScheme::Kahan => lane_sums(x, y, true, term),
    }
}

/// Lanes of [`lane_sums`]' main blocks: four AVX-512 registers of `f32` (eight of `f64`),
/// so that four independent chains of additions (or more) hide the adder's latency.
const WIDE: usize = 4 * L;

/// Block summation of `term(x[t], y[t])`: the terms in blocks of [`WIDE`] lanes, each
/// lane summed (Kahan-compensated or not); these folded into `L` lanes, which sum the
/// remaining blocks of `L`; the `L` lanes combined pairwise; the last terms one by one.
///
/// Written for the vectoriser: the scheme is chosen outside the loops, every lane index
/// is a constant, and the pairwise combination is a call of its own. With the remainder
/// added to the first lanes (a varying index) or the combination inlined, LLVM
/// vectorised the main loop two lanes at a time.
#[inline(always)]
fn lane_sums<T: Real, A: Real>(x: &[T], y: &[T], kahan: bool, term: impl Fn(T, T) -> A) -> f64 {
    let mut wide = [A::ZERO; WIDE];
    let mut wide_comp = [A::ZERO; WIDE];
    let (n, m) = (x.len() / WIDE * WIDE, x.len() / L * L);
    sum_blocks(&x[..n], &y[..n], kahan, &term, &mut wide, &mut wide_comp);
    // What the compensations hold is the excess of each lane's sum: taken off here.
    let lane = |l: usize| wide[l] - wide_comp[l];
    let mut acc = [A::ZERO; L];
    for (l, a) in acc.iter_mut().enumerate() {
        *a = (lane(l) + lane(l + L)) + (lane(l + 2 * L) + lane(l + 3 * L));
    }
    let mut comp = [A::ZERO; L];
    sum_blocks(&x[n..m], &y[n..m], kahan, &term, &mut acc, &mut comp);
    let (mut tail, mut tail_comp) = (A::ZERO, A::ZERO);
    for (&a, &b) in x[m..].iter().zip(&y[m..]) {
        add_term(&mut tail, &mut tail_comp, term(a, b), kahan);
    }
    for (a, c) in acc.iter_mut().zip(&comp) {
        *a -= *c;
    }
    pairwise(acc).to_f64() + (tail - tail_comp).to_f64()
}

/// One term into a sum, with Kahan's compensation `comp` or without.
#[inline(always)]
fn add_term<A: Real>(acc: &mut A, comp: &mut A, v: A, kahan: bool) {
    if kahan {
        let v = v - *comp;
        let t = *acc + v;
        *comp = (t - *acc) - v;
        *acc = t;
    } else {
        *acc += v;
    }
}

/// Adds `term` over the blocks of `W` terms of `x`, `y` (whole blocks: the caller's
/// slices) to `W` lanes.
#[inline(always)]
fn sum_blocks<T: Real, A: Real, const W: usize>(
    x: &[T],
    y: &[T],
    kahan: bool,
    term: &impl Fn(T, T) -> A,
    acc: &mut [A; W],
    comp: &mut [A; W],
) {
    let blocks = x.chunks_exact(W).zip(y.chunks_exact(W));
    if kahan {
        for (a, b) in blocks {
            for l in 0..W {
                add_term(&mut acc[l], &mut comp[l], term(a[l], b[l]), true);
            }
        }
    } else {
        for (a, b) in blocks {
            for l in 0..W {
                acc[l] += term(a[l], b[l]);
            }
        }
    }
}

/// The lanes combined pairwise. Not inlined: see [`lane_sums`].
#[inline(never)]
fn pairwise<A: Real>(mut acc: [A; L]) -> A {
    let mut w = L;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            let v = acc[l + w];
            acc[l] += v;
        }
    }
    acc[0]
}

/// Weight columns and output rows from which [`weighted_sums`] uses GEMM: with fewer,
/// packing the weights for each call costs more than the lanes of [`tile_sum`] (measured
/// on AVX-512: even at 8 x 8, 5-10x faster than the lanes at 32 x 64 and wider).
pub const GEMM_MIN_COLS: usize = 8;
/// Output rows from which [`weighted_sums`] (and a block of rows' scalar products with a
/// tile) use GEMM; see [`GEMM_MIN_COLS`].
pub const GEMM_MIN_ROWS: usize = 8;
/// Reduced rows per GEMM: each sum of as many products, rounded in the data type, is then
/// added to the row's `f64` state, as block summation does a tile's lanes.
const GEMM_DEPTH: usize = 64;

/// Weights on one tile: column `c`, reduced row `t` at `data[t * row_stride + c * col_stride]`
/// (the reduced side's rows as the caller stores them, or dimension-major).
#[derive(Clone, Copy)]
pub struct Weights<'a, T> {
    /// The values, from the tile's first reduced row on.
    pub data: &'a [T],
    /// Distance between reduced rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
    /// Number of columns.
    pub cols: usize,
}

/// Factors of [`weighted_sums`]' sums: row `r`'s column `c` at
/// `data[r * row_stride + c * col_stride]` (strides 0 for one factor of all).
#[derive(Clone, Copy)]
pub struct Scales<'a> {
    /// The factors.
    pub data: &'a [f64],
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl Scales<'_> {
    #[inline(always)]
    fn of(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.row_stride + c * self.col_stride]
    }
}

/// The weighted sums of a tile for a block of output rows, the product `K b` restricted
/// to the tile: for each row `r < rows` of values `k[r * k_stride..][..len]` and each
/// column `c` of the weights `b`, adds `scale_rc * sum_t k_r[t] b[t, c]` to
/// `states[r * sv + c]`. `scratch` is the caller's, reused from tile to tile.
///
/// With block summation in the data type, at least [`GEMM_MIN_ROWS`] rows and
/// [`GEMM_MIN_COLS`] columns, the sums are a GEMM per [`GEMM_DEPTH`] reduced rows
/// (cache-blocked, each value and weight read once per register block; weights read
/// along their rows pack twice as fast as dimension-major ones). Otherwise each is a
/// [`tile_sum`], columns outside so that a column stays in L1 for all the rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn weighted_sums<T: Element, A: Real>(
    scheme: SumScheme,
    (k, k_stride, rows): (&[T], usize, usize),
    b: Weights<'_, T>,
    len: usize,
    scale: Scales<'_>,
    (states, sv): (&mut [f64], usize),
    scratch: &mut Vec<T>,
) {
    let e = b.cols;
    if scheme == SumScheme::BlockSum
        && A::NAME == T::NAME
        && rows >= GEMM_MIN_ROWS
        && e >= GEMM_MIN_COLS
    {
        // GEMM writes every value (beta = 0): grown once, never cleared.
        scratch.resize(rows * e, T::ZERO);
        let c = &mut scratch[..rows * e];
        let mut t0 = 0;
        while t0 < len {
            let depth = GEMM_DEPTH.min(len - t0);
            T::gemm(
                (rows, depth, e),
                &k[t0..],
                k_stride,
                &b.data[t0 * b.row_stride..],
                b.row_stride,
                b.col_stride,
                c,
            );
            for (r, (s, v)) in states.chunks_mut(sv).zip(c.chunks_exact(e)).enumerate() {
                for (c, (s, v)) in s.iter_mut().zip(v).enumerate() {
                    let f = scale.of(r, c);
                    *s += if f.is_finite() && f != 0.0 {
                        f * v.to_f64()
                    } else {
                        // `scaled_sum` multiplies each term by such a factor: rows of them
                        // are rare, and are summed again here, from the weights' column.
                        let col: Vec<T> = (t0..t0 + depth)
                            .map(|t| b.data[t * b.row_stride + c * b.col_stride])
                            .collect();
                        let k = &k[r * k_stride + t0..][..depth];
                        scaled_sum_in::<T, A>(f, Some(k), Terms::Tile(&col), scheme)
                    };
                }
            }
            t0 += depth;
        }
        return;
    }
    for c in 0..e {
        let col = match b.row_stride {
            1 => &b.data[c * b.col_stride..c * b.col_stride + len],
            rs => {
                scratch.clear();
                scratch.extend((0..len).map(|t| b.data[t * rs + c * b.col_stride]));
                &scratch[..]
            }
        };
        for r in 0..rows {
            let row = &k[r * k_stride..r * k_stride + len];
            states[r * sv + c] +=
                scaled_sum_in::<T, A>(scale.of(r, c), Some(row), Terms::Tile(col), scheme);
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

/// The positions in `ch` (at most `L` values, one vector) where `hit` holds, in order,
/// from two vectorised passes: "any?", which most chunks of a min/max scan fail, then
/// a bit mask, whose set bits alone are visited. Scanning every value of a chunk that
/// holds one hit, with a branch per value, was most of a k-NN's time (K = 10 among
/// 1,000: 40 of the 63 chunks of a row hold an insertion).
#[inline(always)]
fn candidates<T: Real>(ch: &[T], hit: impl Fn(T) -> bool) -> Bits {
    if !ch.iter().fold(false, |h, &x| h | hit(x)) {
        return Bits(0);
    }
    Bits(
        ch.iter()
            .enumerate()
            .fold(0, |m, (t, &x)| m | (u32::from(hit(x)) << t)),
    )
}

/// The positions of the set bits of a mask, lowest first.
struct Bits(u32);

impl Iterator for Bits {
    type Item = usize;

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        (self.0 != 0).then(|| {
            let t = self.0.trailing_zeros() as usize;
            self.0 &= self.0 - 1;
            t
        })
    }
}

/// Inserts the values of `f` (reduced indices from `j0`) into the sorted K-min list of
/// coordinate `c` (layout `[k][d]`, see [`kmin_insert`]), visiting only the values below
/// the list's last one.
///
/// A tile that fills the list (a row's first tile, or one that holds its nearest
/// neighbours where the data are sorted) would insert about `k (1 + ln(n / k))` of its
/// `n` values, most of them pushed out again, each a mispredicted branch and a shift of
/// the list: 56 for K = 10 among 1,000. So after `k` insertions in a tile, the rest of
/// it gets a [`kmin_bound`], which leaves about `k + 2` values to visit (11.5 there).
/// Tiles with fewer insertions (most, once the list holds near values) pay nothing.
#[inline(always)]
fn kmin_tile<T: Real>(
    f: &[T],
    j0: usize,
    k: usize,
    d: usize,
    c: usize,
    vals: &mut [f64],
    idx: &mut [i64],
) {
    let list = (k, d, c);
    let stop = if f.len() < MIN_BOUNDED { usize::MAX } else { k };
    let seen = kmin_scan(f, j0, list, vals, idx, stop, |_| true);
    if seen < f.len() {
        let rest = &f[seen..];
        match kmin_bound(rest, k) {
            Some(b) => kmin_scan(rest, j0 + seen, list, vals, idx, usize::MAX, |x| x <= b),
            None => kmin_scan(rest, j0 + seen, list, vals, idx, usize::MAX, |_| true),
        };
    }
}

/// Inserts the values of `f` that `within` accepts into the list `(k, d, c)` (see
/// [`kmin_tile`]), in order; stops after `stop` insertions. Returns how many values it
/// went through.
#[inline(always)]
fn kmin_scan<T: Real>(
    f: &[T],
    j0: usize,
    (k, d, c): (usize, usize, usize),
    vals: &mut [f64],
    idx: &mut [i64],
    stop: usize,
    within: impl Fn(T) -> bool,
) -> usize {
    // States hold values of type T (or infinities): the conversion is exact.
    let mut thr = T::from_f64(vals[(k - 1) * d + c]);
    let mut inserted = 0;
    for (ci, ch) in f.chunks(L).enumerate() {
        for t in candidates(ch, |x| (x < thr) & within(x)) {
            let x = ch[t];
            if x < thr {
                kmin_insert(vals, idx, k, d, c, x.to_f64(), (j0 + ci * L + t) as i64);
                thr = T::from_f64(vals[(k - 1) * d + c]);
                inserted += 1;
                if inserted == stop {
                    return ci * L + t + 1;
                }
            }
        }
    }
    f.len()
}

/// The fewest values per lane that [`kmin_bound`] takes (with fewer, the bound is loose
/// and the scan alone as fast: 100 values, K = 10).
const PER_LANE: usize = 4;

/// The shortest tile that [`kmin_bound`] may serve: its fewest lanes (32, `k <= 16`).
const MIN_BOUNDED: usize = PER_LANE * 32;

/// A value that at least `k` of `f`'s values do not exceed (`None`: too few values, or
/// `k` above 64): the list of the `k` smallest values holds no value of `f` above it.
///
/// The minima of `W >= 2k` interleaved lanes are `W` distinct values of `f`, so their
/// `k`-th smallest is at least `f`'s. A bound only: a value equal to it may belong to
/// the list (the scan keeps `x <= bound`; ties keep the earlier index).
#[inline(always)]
fn kmin_bound<T: Real>(f: &[T], k: usize) -> Option<T> {
    match k {
        1..=16 => lane_bound::<T, 32>(f, k),
        17..=32 => lane_bound::<T, 64>(f, k),
        33..=64 => lane_bound::<T, 128>(f, k),
        _ => None,
    }
}

/// [`kmin_bound`] from `W` lanes, where `f` holds at least [`PER_LANE`] values per lane.
#[inline(always)]
fn lane_bound<T: Real, const W: usize>(f: &[T], k: usize) -> Option<T> {
    if f.len() < PER_LANE * W {
        return None;
    }
    // `x.min_(m)` keeps `m` for a NaN `x`: a NaN is never a lane's minimum.
    let mut m = [T::INFINITY; W];
    let mut blocks = f.chunks_exact(W);
    for ch in &mut blocks {
        for l in 0..W {
            m[l] = ch[l].min_(m[l]);
        }
    }
    for (l, &x) in blocks.remainder().iter().enumerate() {
        m[l] = x.min_(m[l]);
    }
    // The k-th smallest minimum: the least one that at least k minima do not exceed.
    Some(m.iter().fold(T::INFINITY, |b, &v| {
        let le = m.iter().fold(0, |n, &x| n + usize::from(x <= v));
        T::select(le >= k && v < b, v, b)
    }))
}

/// Where [`accumulate`] puts the exponentials of a weighted LogSumExp or
/// SumSoftMaxWeight (at least `len` values).
pub enum Exps<'a, T> {
    /// Scratch space: the weighted sums are computed row by row.
    Summed(&'a mut [T]),
    /// The row's values in a block of rows: the weights' states are only rescaled to the
    /// new maximum, and the caller adds the block's weighted sums ([`weighted_sums`]);
    /// zeros where the tile adds nothing.
    Deferred(&'a mut [T]),
}

multiversion! {
    /// `out = exp(x - m)` for a running maximum `m`, in the thread's floating-point mode
    /// (`ftz`: [`Regs::ftz`]). An entry point of its own, called once per tile: its two
    /// loops inlined into the tile program's block loop made that too large for LLVM to
    /// inline the sums' iterators there (the row loop ran 30% slower).
    fn shifted_exps<T: Real>(out: &mut [T], x: &[T], m: T, ftz: bool) = shifted_exps_body;
}

#[inline(always)]
fn shifted_exps_body<T: Real, M: MathMode>(_: Isa, out: &mut [T], x: &[T], m: T, ftz: bool) {
    match ftz {
        true => shifted_exps_in::<T, M, true>(out, x, m),
        false => shifted_exps_in::<T, M, false>(out, x, m),
    }
}

multiversion! {
    /// The sum of `exp(x - m)` for a running maximum `m` (the exponentials of
    /// [`shifted_exps`], summed as [`tile_sum`] sums them, the same bits): an unweighted
    /// LogSumExp/SumSoftMaxWeight, which needs no exponential after its sum, computes
    /// each one in the summing loop instead of storing and reading it back.
    fn shifted_exp_sum<T: Real, A: Real>(x: &[T], m: T, ftz: bool, scheme: SumScheme) -> f64 = shifted_exp_sum_body;
}

#[inline(always)]
fn shifted_exp_sum_body<T: Real, A: Real, M: MathMode>(
    _: Isa,
    x: &[T],
    m: T,
    ftz: bool,
    scheme: SumScheme,
) -> f64 {
    match ftz {
        true => shifted_exp_sum_in::<T, A, M, true>(x, m, scheme),
        false => shifted_exp_sum_in::<T, A, M, false>(x, m, scheme),
    }
}

#[inline(always)]
fn shifted_exp_sum_in<T: Real, A: Real, M: MathMode, const FTZ: bool>(
    x: &[T],
    m: T,
    scheme: SumScheme,
) -> f64 {
    let x = Terms::Tile(x);
    if is_finite(m) {
        term_sum::<T, A>(None, x, scheme, |x| shifted_exp::<T, M, true, FTZ>(x, m))
    } else {
        term_sum::<T, A>(None, x, scheme, |x| shifted_exp::<T, M, false, FTZ>(x, m))
    }
}

#[inline(always)]
fn shifted_exps_in<T: Real, M: MathMode, const FTZ: bool>(out: &mut [T], x: &[T], m: T) {
    if is_finite(m) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = shifted_exp::<T, M, true, FTZ>(x, m);
        }
    } else {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = shifted_exp::<T, M, false, FTZ>(x, m);
        }
    }
}

/// Whether a running maximum is finite (which [`shifted_exp`]'s `FINITE` says).
#[inline(always)]
fn is_finite<T: Real>(m: T) -> bool {
    m > T::NEG_INFINITY && m < T::INFINITY
}

/// `exp(x - m)` for a running maximum `m`; `FINITE`: `m` is finite.
#[inline(always)]
fn shifted_exp<T: Real, M: MathMode, const FINITE: bool, const FTZ: bool>(x: T, m: T) -> T {
    if FINITE {
        // Every x - m is <= 0 or NaN, and exp(0) is exactly 1.
        (x - m).exp_nonpos_in::<M, FTZ>()
    } else {
        // x == m gives exactly 1, also when both are +inf (inf - inf is NaN).
        T::select(x == m, T::ONE, (x - m).exp_in::<M, FTZ>())
    }
}

/// A row's [`Summand`]: with the row's scalars and the factors of its sums
/// ([`Summand::scale_of`], one per coordinate).
#[derive(Clone, Copy)]
pub struct RowSummand<'a, T> {
    /// The summand.
    pub summand: &'a Summand,
    /// The row's scalars.
    pub scal: &'a [T],
    /// The factors of the row's sums.
    pub scale: &'a [f64],
}

impl<T: Real> RowSummand<'_, T> {
    /// Coordinate `c`'s factor (none for a softmax's weight) and term on lanes `0..len`.
    #[inline(always)]
    fn lanes<'r>(
        &self,
        regs: &'r Regs<T>,
        c: usize,
        len: usize,
    ) -> (Option<&'r [T]>, Terms<'r, T>) {
        let factor = self.summand.factor.map(|f| tile_of(regs, f, c, len));
        let term = match self.summand.term {
            Term::Tile(t) => Terms::Tile(tile_of(regs, t, c, len)),
            Term::Offset { row, tile, minus } => Terms::Offset {
                row: match regs.lane(self.scal, row, c) {
                    Lane::Splat(v) => v,
                    Lane::Tile(_) => unreachable!("an offset's row is a per-row scalar"),
                },
                tile: tile_of(regs, tile, c, len),
                minus,
            },
        };
        (factor, term)
    }
}

/// Folds lanes `0..len` of the roots and the summand (values at reduced indices
/// `j0..j0+len`) into the state `(vals, idx)` of one row.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn accumulate<T: Real, A: Real>(
    isa: Isa,
    spec: &ReductionSpec,
    scheme: SumScheme,
    regs: &Regs<T>,
    roots: &[Src],
    summand: Option<RowSummand<'_, T>>,
    len: usize,
    j0: usize,
    vals: &mut [f64],
    idx: &mut [i64],
    exps: Exps<'_, T>,
) {
    let d = spec.dim;
    let (tmp, deferred) = match exps {
        Exps::Summed(t) => (t, false),
        Exps::Deferred(t) => (t, true),
    };
    match spec.kind {
        Reduction::Sum => {
            if let Some(sm) = summand {
                for (c, v) in vals.iter_mut().enumerate().take(d) {
                    let (factor, term) = sm.lanes(regs, c, len);
                    *v += scaled_sum::<T, A>(isa, sm.scale[c], factor, term, scheme);
                }
            }
        }
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
                    tmp[..len].fill(T::ZERO);
                    continue;
                }
                let m_old = vals[c];
                let m_new = m_old.max(tm.to_f64());
                let scale = shift(m_old, m_new);
                let mt = T::from_f64(m_new);
                vals[c] = m_new;
                let Some(wd) = spec.weight_dim else {
                    // No weight: the exponentials are only summed.
                    let s = shifted_exp_sum::<T, A>(isa, f, mt, regs.ftz, scheme);
                    vals[d + c] = vals[d + c] * scale + s;
                    continue;
                };
                let e = &mut tmp[..len];
                shifted_exps::<T>(isa, e, f, mt, regs.ftz);
                vals[1] = vals[1] * scale + tile_sum::<T, A>(e, None, scheme);
                for k in 0..wd {
                    vals[2 + k] *= scale;
                    if let (false, Some(sm)) = (deferred, summand) {
                        let (_, term) = sm.lanes(regs, k, len);
                        vals[2 + k] += scaled_sum::<T, A>(isa, sm.scale[k], Some(e), term, scheme);
                    }
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
                let beats = |x: T, bt: T| if max { x > bt } else { x < bt };
                for (ci, ch) in f.chunks(L).enumerate() {
                    for t in candidates(ch, |x| beats(x, bt)) {
                        let x = ch[t];
                        if beats(x, bt) {
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
                kmin_tile(tile_of(regs, roots[0], c, len), j0, k, d, c, vals, idx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `weighted_sums` against plain f64 sums: GEMM and lanes, weights along rows and
    /// dimension-major, every scheme, f32 and f64, sizes off every block.
    fn check<T: Element>(tol: f64) {
        let (len, k_stride, scale) = (150, 160, 0.5);
        // One scratch for every call, as a job reuses it from tile to tile.
        let mut scratch = Vec::new();
        for (rows, e) in [(1, 1), (3, 9), (8, 8), (13, 21), (32, 5)] {
            let k: Vec<T> = (0..rows * k_stride)
                .map(|i| T::from_f64(((i * 37) % 101) as f64 / 101.0 - 0.3))
                .collect();
            let bm: Vec<f64> = (0..len * e)
                .map(|i| ((i * 53) % 97) as f64 / 97.0 - 0.5)
                .collect();
            let by_rows: Vec<T> = bm.iter().map(|&v| T::from_f64(v)).collect();
            let dim_major: Vec<T> = (0..e * len)
                .map(|i| by_rows[(i % len) * e + i / len])
                .collect();
            let want: Vec<f64> = (0..rows * e)
                .map(|q| {
                    let (r, c) = (q / e, q % e);
                    let s: f64 = (0..len)
                        .map(|t| k[r * k_stride + t].to_f64() * by_rows[t * e + c].to_f64())
                        .sum();
                    1.0 + scale * s
                })
                .collect();
            let layouts = [
                (&by_rows, e, 1, "by rows"),
                (&dim_major, 1, len, "dimension-major"),
            ];
            for (data, row_stride, col_stride, layout) in layouts {
                for scheme in [SumScheme::BlockSum, SumScheme::Kahan, SumScheme::Direct] {
                    let mut states = vec![1.0; rows * e];
                    let b = Weights {
                        data,
                        row_stride,
                        col_stride,
                        cols: e,
                    };
                    let ks = (&k[..], k_stride, rows);
                    let out = (&mut states[..], e);
                    let scales = Scales {
                        data: &[scale],
                        row_stride: 0,
                        col_stride: 0,
                    };
                    weighted_sums::<T, T>(scheme, ks, b, len, scales, out, &mut scratch);
                    for (q, (g, w)) in states.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= tol * (1.0 + w.abs()),
                            "{} {rows}x{e} {layout} {scheme:?} sum {q}: {g} vs {w}",
                            T::NAME
                        );
                    }
                }
            }
        }
    }

    /// Every length through the wide blocks, the narrow ones and the last terms, every
    /// scheme and accumulator, plain and products: small integers, whose sums are exact,
    /// so a term dropped or counted twice shows.
    fn lane_sums_add_every_term_once<T: Real, A: Real>() {
        for len in 0..=300 {
            let x: Vec<T> = (0..len)
                .map(|t| T::from_f64((t % 17) as f64 - 8.0))
                .collect();
            let y: Vec<T> = (0..len)
                .map(|t| T::from_f64((t % 5) as f64 - 2.0))
                .collect();
            let plain: f64 = x.iter().map(|v| v.to_f64()).sum();
            let product: f64 = x.iter().zip(&y).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
            for scheme in [SumScheme::BlockSum, SumScheme::Kahan, SumScheme::Direct] {
                let what = format!("{} in {}, {len} terms, {scheme:?}", T::NAME, A::NAME);
                assert_eq!(tile_sum::<T, A>(&x, None, scheme), plain, "{what}");
                assert_eq!(
                    tile_sum::<T, A>(&x, Some(&y), scheme),
                    product,
                    "{what}, x * y"
                );
            }
        }
    }

    #[test]
    fn candidates_are_the_hits_in_order() {
        let ch: Vec<f32> = vec![3.0, -1.0, f32::NAN, 0.5, 7.0, -2.0, 0.0];
        let below = |thr: f32| candidates(&ch, |x| x < thr).collect::<Vec<_>>();
        assert_eq!(below(1.0), [1, 3, 5, 6]);
        assert_eq!(below(-5.0), Vec::<usize>::new());
        assert_eq!(
            below(f32::INFINITY),
            [0, 1, 3, 4, 5, 6],
            "NaN is never a hit"
        );
        let full: Vec<f64> = (0..L).map(|t| t as f64).collect();
        assert_eq!(
            candidates(&full, |x| x >= 14.0).collect::<Vec<_>>(),
            [14, 15]
        );
    }

    /// The bounded scan against inserting every value: random tiles of every length
    /// around the lane counts, with ties, NaN and infinities, lists empty or partly
    /// filled by an earlier tile, K on both sides of each lane count.
    #[test]
    fn kmin_tiles_keep_the_k_smallest() {
        let mut s = 7u64;
        let mut rnd = move |n: u64| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) % n
        };
        let (mut bounded, mut tight) = (0, 0);
        for case in 0..3000 {
            let k = [1, 2, 5, 10, 16, 17, 32, 33, 64, 65][case % 10];
            let len = rnd(300) as usize + [0, 60, 700][case % 3];
            // Few distinct values (ties) in some cases, many in others.
            let span = [4, 1000, 1 << 20][case % 7 % 3];
            let f: Vec<f32> = (0..len)
                .map(|_| match rnd(200) {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    _ => rnd(span) as f32,
                })
                .collect();
            let (d, c) = (2, case % 2);
            let mut want = (vec![f64::INFINITY; k * d], vec![-1i64; k * d]);
            // An earlier tile's list, in some cases.
            if case % 4 == 0 {
                for j in 0..k as i64 / 2 {
                    let x = rnd(span) as f64;
                    kmin_insert(&mut want.0, &mut want.1, k, d, c, x, 10_000 + j);
                }
            }
            let mut got = want.clone();
            for (t, &x) in f.iter().enumerate() {
                kmin_insert(&mut want.0, &mut want.1, k, d, c, x as f64, 20 + t as i64);
            }
            kmin_tile(&f, 20, k, d, c, &mut got.0, &mut got.1);
            assert_eq!(got, want, "case {case}: k {k}, len {len}");
            if let Some(bound) = kmin_bound(&f, k) {
                let le = f.iter().filter(|&&x| x <= bound).count();
                assert!(le >= k, "case {case}: {le} values <= bound {bound}, k {k}");
                if span > 4 {
                    bounded += 1;
                    tight += usize::from(le <= 3 * k);
                }
            }
        }
        // Long tiles of distinct values get a bound that leaves few values to visit.
        assert!(
            bounded > 600 && tight * 10 > bounded * 9,
            "{bounded} bounded, {tight} tight"
        );
    }

    #[test]
    fn tile_sums_add_every_term_once() {
        lane_sums_add_every_term_once::<f32, f32>();
        lane_sums_add_every_term_once::<f32, f64>();
        lane_sums_add_every_term_once::<f64, f64>();
    }

    /// 1 then terms below half its ulp: the lane holding the 1 drops those that follow it
    /// in a block sum (62 of them here, 15 ulp) and keeps them compensated, where what
    /// is left is the rounding of the lanes' combination in `f32` (a few ulp).
    #[test]
    fn compensated_sums_keep_what_block_sums_drop() {
        let tiny = (-25.0f64).exp2();
        let x: Vec<f32> = (0..4000)
            .map(|t| if t == 0 { 1.0 } else { tiny as f32 })
            .collect();
        let exact = 1.0 + 3999.0 * tiny;
        let ulp = f32::EPSILON as f64;
        let kahan = tile_sum::<f32, f32>(&x, None, SumScheme::Kahan);
        let block = tile_sum::<f32, f32>(&x, None, SumScheme::BlockSum);
        assert!(
            (kahan - exact).abs() <= 4.0 * ulp,
            "Kahan: {kahan} vs {exact}"
        );
        assert!(
            (block - exact).abs() > 8.0 * ulp,
            "block sum: {block} vs {exact}"
        );
    }

    #[test]
    fn weighted_sums_are_the_products_sums() {
        check::<f64>(1e-13);
        check::<f32>(2e-6);
    }
}
