//! Executing tile instructions: one tight loop per op over the lanes of a tile.
//!
//! [`exec`] is an entry point compiled once per instruction set (`multiversion!`); every
//! function it calls is `#[inline(always)]` so that it is compiled inside it with its
//! target features, and every elementwise loop is monomorphised per op (see
//! [`Unary::with_kernel`]).

use super::program::{Instr, RowOp, Src};
use super::simd::{multiversion, Isa};
use crate::formula::ops::{Kernel1, Kernel2};
use crate::formula::{eval, Op};
use crate::real::{MathMode, Real};

/// One coordinate of an operand across the lanes of a tile.
#[derive(Clone, Copy)]
pub enum Lane<'a, T> {
    /// A value per lane.
    Tile(&'a [T]),
    /// The same value for all lanes.
    Splat(T),
}

impl<'a, T: Real> Lane<'a, T> {
    #[inline(always)]
    fn at(&self, t: usize) -> T {
        match *self {
            Lane::Tile(x) => x[t],
            Lane::Splat(v) => v,
        }
    }
}

/// The registers of a tile program and the lane count.
pub struct Regs<T> {
    /// One buffer of `dim * tile` values per register.
    pub regs: Vec<Vec<T>>,
    /// Lanes per tile.
    pub tile: usize,
    /// Whether the job's thread flushes subnormal results ([`super::fpmode::flushing`]):
    /// exponentials are then computed by [`crate::math::exp_f32_ftz_mode`].
    pub ftz: bool,
}

impl<T: Real> Regs<T> {
    /// Allocates registers of the given dimensions, for a job running in the thread's
    /// current floating-point mode.
    pub fn new(dims: &[usize], tile: usize) -> Self {
        Regs {
            regs: dims.iter().map(|d| vec![T::ZERO; d * tile]).collect(),
            tile,
            ftz: super::fpmode::flushing(),
        }
    }

    /// Coordinate `c` of `src` (a dimension-1 operand broadcasts to every coordinate).
    #[inline(always)]
    pub fn lane<'a>(&'a self, scal: &[T], src: Src, c: usize) -> Lane<'a, T> {
        let c = if src.dim() == 1 { 0 } else { c };
        match src {
            Src::Tile { reg, start, .. } => {
                let o = (start + c) * self.tile;
                Lane::Tile(&self.regs[reg][o..o + self.tile])
            }
            Src::Scalar { off, .. } => Lane::Splat(scal[off + c]),
        }
    }
}

struct Map1<'a, T> {
    dst: &'a mut [T],
    a: &'a [T],
}
impl<T: Real> Kernel1<T> for Map1<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<F: Fn(T) -> T + Copy>(self, f: F) {
        for (d, &x) in self.dst.iter_mut().zip(self.a) {
            *d = f(x);
        }
    }
    #[inline(always)]
    fn run_far<F, E>(self, f: F, far: T, exact: E)
    where
        F: Fn(T) -> T + Copy,
        E: Fn(T) -> T + Copy,
    {
        // The test is folded into the vectorised loop (`|`, not `any`, which would stop
        // early and not vectorise); the scalar pass runs only where some operand is far.
        let mut some = false;
        for (d, &x) in self.dst.iter_mut().zip(self.a) {
            *d = f(x);
            some |= x.abs_() > far;
        }
        if some {
            for (d, &x) in self.dst.iter_mut().zip(self.a) {
                if x.abs_() > far {
                    *d = exact(x);
                }
            }
        }
    }
}

struct Map2<'a, T> {
    dst: &'a mut [T],
    a: Lane<'a, T>,
    b: Lane<'a, T>,
}
impl<T: Real> Kernel2<T> for Map2<'_, T> {
    type Out = ();
    #[inline(always)]
    fn run<F: Fn(T, T) -> T + Copy>(self, f: F) {
        match (self.a, self.b) {
            (Lane::Tile(x), Lane::Tile(y)) => {
                for ((d, &x), &y) in self.dst.iter_mut().zip(x).zip(y) {
                    *d = f(x, y);
                }
            }
            (Lane::Tile(x), Lane::Splat(y)) => {
                for (d, &x) in self.dst.iter_mut().zip(x) {
                    *d = f(x, y);
                }
            }
            (Lane::Splat(x), Lane::Tile(y)) => {
                for (d, &y) in self.dst.iter_mut().zip(y) {
                    *d = f(x, y);
                }
            }
            (Lane::Splat(x), Lane::Splat(y)) => self.dst.fill(f(x, y)),
        }
    }
}

/// A reduced-side argument's values for the current batch entry.
#[derive(Clone, Copy)]
pub enum ArgData<'d, T> {
    /// Row-major `(n, dim)`, as the caller gave it.
    Rows(&'d [T]),
    /// Dimension-major: `dim` rows of `n` values (prepared once per call, so that a
    /// tile load is `dim` contiguous copies rather than a strided gather per job).
    DimMajor(&'d [T], usize),
}

/// Loads rows `j0..j0+len` of an argument into a dimension-major register,
/// zero-filling the lanes past `len`.
#[inline(always)]
pub fn load<T: Real>(
    dst: &mut [T],
    data: ArgData<'_, T>,
    dim: usize,
    j0: usize,
    len: usize,
    tile: usize,
) {
    match data {
        ArgData::DimMajor(data, n) => {
            for c in 0..dim {
                let out = &mut dst[c * tile..(c + 1) * tile];
                out[..len].copy_from_slice(&data[c * n + j0..c * n + j0 + len]);
                out[len..].fill(T::ZERO);
            }
        }
        ArgData::Rows(data) => {
            let rows = &data[j0 * dim..(j0 + len) * dim];
            if dim == 1 {
                dst[..len].copy_from_slice(rows);
                dst[len..tile].fill(T::ZERO);
                return;
            }
            for c in 0..dim {
                let out = &mut dst[c * tile..(c + 1) * tile];
                for (t, o) in out[..len].iter_mut().enumerate() {
                    *o = rows[t * dim + c];
                }
                out[len..].fill(T::ZERO);
            }
        }
    }
}

multiversion! {
    /// Executes one instruction. `data[arg]` is argument `arg`'s data for the current
    /// batch entry; `scal` the current row's scalar buffer.
    pub fn exec<T: Real>(ins: &Instr, regs: &mut Regs<T>, scal: &[T], data: &[ArgData<'_, T>], j0: usize, len: usize) = exec_body;
}

#[inline(always)]
fn exec_body<T: Real, M: MathMode>(
    _: Isa,
    ins: &Instr,
    regs: &mut Regs<T>,
    scal: &[T],
    data: &[ArgData<'_, T>],
    j0: usize,
    len: usize,
) {
    let tile = regs.tile;
    match ins {
        Instr::Load { dst, arg, dim } => {
            let mut out = std::mem::take(&mut regs.regs[*dst]);
            load(&mut out, data[*arg], *dim, j0, len, tile);
            regs.regs[*dst] = out;
        }
        Instr::Broadcast { dst, a } => {
            let mut out = std::mem::take(&mut regs.regs[*dst]);
            for c in 0..a.dim() {
                if let Lane::Splat(v) = regs.lane(scal, *a, c) {
                    out[c * tile..(c + 1) * tile].fill(v);
                }
            }
            regs.regs[*dst] = out;
        }
        Instr::RsqrtOf { dst, u, sqrt } => {
            let mut out = std::mem::take(&mut regs.regs[*dst]);
            for c in 0..u.dim().max(sqrt.dim()) {
                if let (Lane::Tile(u), Lane::Tile(s)) =
                    (regs.lane(scal, *u, c), regs.lane(scal, *sqrt, c))
                {
                    let out = &mut out[c * tile..(c + 1) * tile];
                    for ((o, &u), &s) in out.iter_mut().zip(u).zip(s) {
                        *o = u.rsqrt_from_sqrt(s);
                    }
                }
            }
            regs.regs[*dst] = out;
        }
        Instr::ScaledExp { dst, a, s, neg } => {
            let mut out = std::mem::take(&mut regs.regs[*dst]);
            let sign = if *neg { -T::ONE } else { T::ONE };
            let s = s.iter().fold(sign, |p, &f| p * regs.lane(scal, f, 0).at(0));
            for c in 0..a.dim() {
                if let Lane::Tile(x) = regs.lane(scal, *a, c) {
                    let out = &mut out[c * tile..(c + 1) * tile];
                    match regs.ftz {
                        true => scaled_exp::<T, M, true>(out, x, s),
                        false => scaled_exp::<T, M, false>(out, x, s),
                    }
                }
            }
            regs.regs[*dst] = out;
        }
        Instr::ScaledProduct {
            dst,
            tiles,
            s,
            div,
            neg,
            add,
        } => {
            let mut out = std::mem::take(&mut regs.regs[*dst]);
            let sign = if *neg { -T::ONE } else { T::ONE };
            let at = |f: &Src| regs.lane(scal, *f, 0).at(0);
            let s =
                s.iter().fold(sign, |p, f| p * at(f)) / div.iter().fold(T::ONE, |p, f| p * at(f));
            let view = |&(reg, start): &(usize, usize)| &regs.regs[reg][start * tile..][..tile];
            let o = &mut out[..tile];
            match (&tiles[..], add.map(|c| regs.lane(scal, c, 0))) {
                ([a, b, more @ ..], None) => {
                    for ((o, &a), &b) in o.iter_mut().zip(view(a)).zip(view(b)) {
                        *o = s * a * b;
                    }
                    for t in more {
                        o.iter_mut().zip(view(t)).for_each(|(o, &v)| *o *= v);
                    }
                }
                ([a], None) => o.iter_mut().zip(view(a)).for_each(|(o, &a)| *o = s * a),
                ([a, b], Some(Lane::Tile(c))) => {
                    for (((o, &a), &b), &c) in o.iter_mut().zip(view(a)).zip(view(b)).zip(c) {
                        *o = c + s * a * b;
                    }
                }
                ([a, b], Some(Lane::Splat(c))) => {
                    for ((o, &a), &b) in o.iter_mut().zip(view(a)).zip(view(b)) {
                        *o = c + s * a * b;
                    }
                }
                ([a], Some(Lane::Tile(c))) => {
                    for ((o, &a), &c) in o.iter_mut().zip(view(a)).zip(c) {
                        *o = c + s * a;
                    }
                }
                ([a], Some(Lane::Splat(c))) => {
                    o.iter_mut().zip(view(a)).for_each(|(o, &a)| *o = c + s * a)
                }
                // Any other shape (the compiler makes none): one pass per factor.
                (tiles, c) => {
                    o.fill(s);
                    for t in tiles {
                        o.iter_mut().zip(view(t)).for_each(|(o, &v)| *o *= v);
                    }
                    match c {
                        Some(Lane::Tile(c)) => o.iter_mut().zip(c).for_each(|(o, &c)| *o += c),
                        Some(Lane::Splat(c)) => o.iter_mut().for_each(|o| *o += c),
                        None => {}
                    }
                }
            }
            regs.regs[*dst] = out;
        }
        Instr::Apply { op, dst, dim, args } => {
            let mut out = std::mem::take(&mut regs.regs[*dst]);
            apply::<T, M>(op, &mut out, *dim, args, regs, scal);
            regs.regs[*dst] = out;
        }
        Instr::RowTile { op, dst, row, tile } => {
            // Its own two sums, not `apply`: `apply` on an op known only at run time
            // would be compiled whole a second time (it doubled the crate's build).
            let mut out = std::mem::take(&mut regs.regs[*dst]);
            let (a, b, d) = (*row, *tile, row.dim());
            match op {
                RowOp::Dot => reduce2(&mut out, d, regs, scal, a, b, scalprod_step::<T, M>),
                RowOp::SqDist => reduce2(&mut out, d, regs, scal, a, b, sqdist_step::<T, M>),
            }
            regs.regs[*dst] = out;
        }
    }
}

/// `out = exp(x * s)`, in the thread's floating-point mode (see [`Regs::ftz`]).
#[inline(always)]
fn scaled_exp<T: Real, M: MathMode, const FTZ: bool>(out: &mut [T], x: &[T], s: T) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = (x * s).exp_in::<M, FTZ>();
    }
}

/// Sum over coordinates of `f(a_c, b_c)` for each lane (with broadcasting), given as
/// `step(acc, a_c, b_c) = acc + f(a_c, b_c)` (so that it can be one fused multiply-add).
/// Where one operand is a row's vector and the other a tile (only `SqDist` and
/// `Scalprod` have two), the row is passed first whichever it was: their steps are
/// exactly symmetric (`(b - a)^2` is `(a - b)^2` bit for bit, `ab` is `ba`), so one copy
/// of the loop serves both orders.
#[inline(always)]
fn reduce2<T: Real>(
    out: &mut [T],
    d: usize,
    regs: &Regs<T>,
    scal: &[T],
    a: Src,
    b: Src,
    step: impl Fn(T, T, T) -> T + Copy,
) {
    // A per-row vector against a tile (SqDist, scalar products, k-NN): each chunk of
    // lanes keeps its sums in registers across all coordinates, and `out` is written
    // once, where the loop below loads and stores it once per four coordinates (once per
    // coordinate for fewer than four) after filling it with zeros.
    if let Some((x, y)) = row_and_tile(d, regs, scal, a, b) {
        splat_tile(out, x, y, regs.tile, step);
        return;
    }
    let f = |x: T, y: T| step(T::ZERO, x, y);
    out.fill(T::ZERO);
    // Four coordinates per pass over `out` where the operands allow it: high
    // dimensions (k-NN in D = 64) would otherwise load and store `out` once per
    // coordinate.
    let mut c = 0;
    while c + 4 <= d {
        let l = |s: Src, k: usize| regs.lane(scal, s, c + k);
        match (l(a, 0), l(a, 1), l(a, 2), l(a, 3)) {
            (Lane::Splat(x0), Lane::Splat(x1), Lane::Splat(x2), Lane::Splat(x3)) => {
                let (Lane::Tile(y0), Lane::Tile(y1), Lane::Tile(y2), Lane::Tile(y3)) =
                    (l(b, 0), l(b, 1), l(b, 2), l(b, 3))
                else {
                    break;
                };
                for ((((o, &v0), &v1), &v2), &v3) in out.iter_mut().zip(y0).zip(y1).zip(y2).zip(y3)
                {
                    *o += (f(x0, v0) + f(x1, v1)) + (f(x2, v2) + f(x3, v3));
                }
            }
            (Lane::Tile(x0), Lane::Tile(x1), Lane::Tile(x2), Lane::Tile(x3)) => {
                let (Lane::Tile(y0), Lane::Tile(y1), Lane::Tile(y2), Lane::Tile(y3)) =
                    (l(b, 0), l(b, 1), l(b, 2), l(b, 3))
                else {
                    break;
                };
                for (t, o) in out.iter_mut().enumerate() {
                    *o += (f(x0[t], y0[t]) + f(x1[t], y1[t])) + (f(x2[t], y2[t]) + f(x3[t], y3[t]));
                }
            }
            _ => break,
        }
        c += 4;
    }
    for c in c..d {
        match (regs.lane(scal, a, c), regs.lane(scal, b, c)) {
            (Lane::Tile(x), Lane::Tile(y)) => {
                for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
                    *o += f(x, y);
                }
            }
            (Lane::Tile(x), Lane::Splat(y)) => {
                for (o, &x) in out.iter_mut().zip(x) {
                    *o += f(x, y);
                }
            }
            (Lane::Splat(x), Lane::Tile(y)) => {
                for (o, &y) in out.iter_mut().zip(y) {
                    *o += f(x, y);
                }
            }
            (Lane::Splat(x), Lane::Splat(y)) => {
                let v = f(x, y);
                out.iter_mut().for_each(|o| *o += v);
            }
        }
    }
}

/// [`splat_rows`] on lanes `t0..` in chunks of `C` lanes, each summed in registers;
/// returns where the whole chunks end.
#[inline(always)]
fn lane_chunks<T: Real, const R: usize, const C: usize>(
    out: &mut [T],
    len: usize,
    mut t0: usize,
    x: [&[T]; R],
    y: &[T],
    stride: usize,
    step: impl Fn(T, T, T) -> T + Copy,
) -> usize {
    while t0 + C <= len {
        let mut acc = [[T::ZERO; C]; R];
        for c in 0..x[0].len() {
            let yc = &y[c * stride + t0..c * stride + t0 + C];
            for (acc, x) in acc.iter_mut().zip(&x) {
                let xc = x[c];
                for (a, &v) in acc.iter_mut().zip(yc) {
                    *a = step(*a, xc, v);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            out[r * len + t0..r * len + t0 + C].copy_from_slice(acc);
        }
        t0 += C;
    }
    t0
}

/// Lanes summed in registers at once: enough independent accumulators to keep the FMA
/// units busy (4 AVX-512 registers of f32), few enough not to spill.
pub(super) const LANE_CHUNK: usize = 64;

/// The most rows [`sqdist_rows`] takes at once (see [`row_group`]).
pub(super) const MAX_ROW_GROUP: usize = 4;

/// The per-row vector and the tile, in that order whichever order `a` and `b` give them,
/// when one of them is each, both of dimension `d`.
#[inline(always)]
fn row_and_tile<'r, T: Real>(
    d: usize,
    regs: &'r Regs<T>,
    scal: &'r [T],
    a: Src,
    b: Src,
) -> Option<(&'r [T], &'r [T])> {
    let tile = regs.tile;
    let view = |s: Src| match s {
        Src::Scalar { off, dim } if dim == d => Some((true, &scal[off..off + d])),
        Src::Tile { reg, start, dim } if dim == d => {
            Some((false, &regs.regs[reg][start * tile..(start + d) * tile]))
        }
        _ => None,
    };
    match (view(a)?, view(b)?) {
        ((true, x), (false, y)) | ((false, y), (true, x)) => Some((x, y)),
        _ => None,
    }
}

/// `out[t] = sum_c f(x[c], y[c * stride + t])` (`step(acc, x_c, y_c)` adds one term),
/// lanes in chunks summed in registers: one load of `y` and the step per lane and
/// coordinate, `out` written once.
#[inline(always)]
fn splat_tile<T: Real>(
    out: &mut [T],
    x: &[T],
    y: &[T],
    stride: usize,
    step: impl Fn(T, T, T) -> T + Copy,
) {
    splat_rows::<T, 1>(out, out.len(), [x], y, stride, step);
}

/// One term of a squared distance: `s + (a - b)^2`.
#[inline(always)]
pub(super) fn sqdist_step<T: Real, M: MathMode>(s: T, a: T, b: T) -> T {
    (a - b).fma_::<M>(a - b, s)
}

/// One term of a scalar product: `s + ab`.
#[inline(always)]
fn scalprod_step<T: Real, M: MathMode>(s: T, a: T, b: T) -> T {
    a.fma_::<M>(b, s)
}

/// How many rows [`sqdist_rows`] takes at once: as many as keep their sums of a chunk
/// of [`LANE_CHUNK`] lanes in half of 32 vector registers (four of f32, two of f64:
/// four of f64 spill, 2x slower), and one row where there are 16 registers (AVX2's: two
/// rows' sums spill, the k-NN at D = 16 was 1.35x slower).
pub(super) fn row_group<T, M: MathMode>() -> usize {
    if M::REGISTERS < 32 {
        return 1;
    }
    (16 * 64 / (LANE_CHUNK * std::mem::size_of::<T>())).clamp(1, MAX_ROW_GROUP)
}

/// Squared distances of `rows` rows (row `r`'s vector at `x[r * x_stride..][..dim]`) to
/// the tile's `len` vectors (coordinate `c` at `y[c * stride..]`): row `r`'s at
/// `out[r * len..]`, rows in groups of [`row_group`] (then pairs), each load of the
/// tile serving the group's rows, whose chains of FMAs are independent (f32 rows by
/// four rather than two: a 10-NN at D = 784 1.25x faster; with tiles of 32 lanes, two
/// chains of 4-cycle FMAs left half of the FMA units idle).
#[inline(always)]
pub(super) fn sqdist_rows<T: Real, M: MathMode>(
    out: &mut [T],
    len: usize,
    rows: usize,
    (x, x_stride, dim): (&[T], usize, usize),
    y: &[T],
    stride: usize,
) {
    let x = |r: usize| &x[r * x_stride..r * x_stride + dim];
    let group = row_group::<T, M>();
    let mut r = 0;
    while group >= 4 && r + 4 <= rows {
        let out = &mut out[r * len..];
        let x = [x(r), x(r + 1), x(r + 2), x(r + 3)];
        splat_rows::<T, 4>(out, len, x, y, stride, sqdist_step::<T, M>);
        r += 4;
    }
    while group >= 2 && r + 2 <= rows {
        let out = &mut out[r * len..];
        splat_rows::<T, 2>(out, len, [x(r), x(r + 1)], y, stride, sqdist_step::<T, M>);
        r += 2;
    }
    for r in r..rows {
        splat_rows::<T, 1>(
            &mut out[r * len..],
            len,
            [x(r)],
            y,
            stride,
            sqdist_step::<T, M>,
        );
    }
}

/// [`splat_tile`] for `R` rows at once (row `r`'s `len` results at `out[r * len..]`):
/// each load of `y` serves every row, which doubles the throughput of high-dimensional
/// distances at `R = 2` (one load per subtraction and FMA is what limits one row). Each
/// row's sums are those of [`splat_tile`], bit for bit. The tile program's
/// [`Instr::RowTile`] blocks and the fused kernels' distances.
#[inline(always)]
pub(super) fn splat_rows<T: Real, const R: usize>(
    out: &mut [T],
    len: usize,
    x: [&[T]; R],
    y: &[T],
    stride: usize,
    step: impl Fn(T, T, T) -> T + Copy,
) {
    let d = x[0].len();
    let x = x.map(|x| &x[..d]);
    // Chunks of LANE_CHUNK lanes, then of one AVX-512 register (tiles are multiples of
    // 16 lanes, so that only the fused kernels' last tile of a range leaves a rest).
    let t0 = lane_chunks::<T, R, LANE_CHUNK>(out, len, 0, x, y, stride, step);
    let t0 = lane_chunks::<T, R, 16>(out, len, t0, x, y, stride, step);
    if t0 == len {
        return;
    }
    // The last lanes: the first coordinate sets them (no call to fill them with zeros).
    for (r, x) in x.iter().enumerate() {
        let rest = &mut out[r * len + t0..(r + 1) * len];
        for (c, &xc) in x.iter().enumerate() {
            let yc = &y[c * stride + t0..c * stride + t0 + rest.len()];
            for (o, &v) in rest.iter_mut().zip(yc) {
                *o = step(if c == 0 { T::ZERO } else { *o }, xc, v);
            }
        }
    }
}

#[inline(always)]
fn apply<T: Real, M: MathMode>(
    op: &Op,
    out: &mut [T],
    dim: usize,
    args: &[Src],
    regs: &Regs<T>,
    scal: &[T],
) {
    let tile = regs.tile;
    let lane = |k: usize, c: usize| regs.lane(scal, args[k], c);
    match *op {
        Op::Unary(u) => {
            for c in 0..dim {
                let dst = &mut out[c * tile..(c + 1) * tile];
                match lane(0, c) {
                    Lane::Tile(a) => u.with_kernel::<T, M, _>(Map1 { dst, a }),
                    Lane::Splat(v) => dst.fill(u.apply::<T, M>(v)),
                }
            }
        }
        Op::Binary(b) => {
            for c in 0..dim {
                let dst = &mut out[c * tile..(c + 1) * tile];
                b.with_kernel::<T, M, _>(Map2 {
                    dst,
                    a: lane(0, c),
                    b: lane(1, c),
                });
            }
        }
        Op::Ternary(t) => {
            for c in 0..dim {
                let (x, y, z) = (lane(0, c), lane(1, c), lane(2, c));
                for (k, o) in out[c * tile..(c + 1) * tile].iter_mut().enumerate() {
                    *o = t.apply(x.at(k), y.at(k), z.at(k));
                }
            }
        }
        // Sums over coordinates; `s` is the running sum.
        Op::SqDist | Op::Scalprod | Op::SqNorm2 | Op::Sum => {
            let (x, y) = (args[0], *args.get(1).unwrap_or(&args[0]));
            let d = x.dim().max(y.dim());
            // A macro, not a closure: each step must be its own monomorphised loop.
            macro_rules! sum_of {
                ($step:expr) => {
                    reduce2(out, d, regs, scal, x, y, $step)
                };
            }
            match *op {
                Op::SqDist => sum_of!(sqdist_step::<T, M>),
                Op::Scalprod => sum_of!(scalprod_step::<T, M>),
                Op::SqNorm2 => sum_of!(|s: T, a: T, _| a.fma_::<M>(a, s)),
                _ => sum_of!(|s: T, a: T, _| s + a),
            }
        }
        Op::WeightedSqNorm => {
            let (s, x) = (args[0], args[1]);
            let d = x.dim();
            if s.dim() == d * d && d > 1 {
                out.fill(T::ZERO);
                for k in 0..d {
                    for l in 0..d {
                        let (xk, xl, skl) = (lane(1, k), lane(1, l), regs.lane(scal, s, k * d + l));
                        for (t, o) in out.iter_mut().enumerate() {
                            *o += xk.at(t) * skl.at(t) * xl.at(t);
                        }
                    }
                }
            } else {
                out.fill(T::ZERO);
                for c in 0..d {
                    let (w, xc) = (lane(0, c), lane(1, c));
                    for (t, o) in out.iter_mut().enumerate() {
                        let v = xc.at(t);
                        *o += w.at(t) * v * v;
                    }
                }
            }
        }
        Op::SumT(_) => {
            for c in 0..dim {
                copy_lane(&mut out[c * tile..(c + 1) * tile], lane(0, 0));
            }
        }
        Op::Extract { start, .. } => {
            for c in 0..dim {
                copy_lane(&mut out[c * tile..(c + 1) * tile], lane(0, start + c));
            }
        }
        Op::Elem(m) => copy_lane(&mut out[..tile], lane(0, m)),
        Op::Concat => {
            let n = args[0].dim();
            for c in 0..dim {
                let l = if c < n { lane(0, c) } else { lane(1, c - n) };
                copy_lane(&mut out[c * tile..(c + 1) * tile], l);
            }
        }
        Op::ComplexPart { imag } => {
            for c in 0..dim {
                copy_lane(
                    &mut out[c * tile..(c + 1) * tile],
                    lane(0, 2 * c + imag as usize),
                );
            }
        }
        Op::ToComplex { imag } => {
            for c in 0..dim {
                let dst = &mut out[c * tile..(c + 1) * tile];
                if c % 2 == imag as usize {
                    copy_lane(dst, lane(0, c / 2));
                } else {
                    dst.fill(T::ZERO);
                }
            }
        }
        Op::ElemT { m, .. } => {
            out.fill(T::ZERO);
            copy_lane(&mut out[m * tile..(m + 1) * tile], lane(0, 0));
        }
        Op::TensorDot(ref td) => {
            out.fill(T::ZERO);
            for &(o, i, j) in td.terms() {
                let dst = &mut out[o as usize * tile..(o as usize + 1) * tile];
                match (lane(0, i as usize), lane(1, j as usize)) {
                    (Lane::Tile(a), Lane::Tile(b)) => {
                        for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
                            *d += x * y;
                        }
                    }
                    (Lane::Tile(a), Lane::Splat(y)) | (Lane::Splat(y), Lane::Tile(a)) => {
                        for (d, &x) in dst.iter_mut().zip(a) {
                            *d += x * y;
                        }
                    }
                    (Lane::Splat(x), Lane::Splat(y)) => {
                        let v = x * y;
                        dst.iter_mut().for_each(|d| *d += v);
                    }
                }
            }
        }
        Op::OneHot(d) => {
            out.fill(T::ZERO);
            let slot = |x: T| {
                let k = x.to_f64().round();
                (k >= 0.0 && k < d as f64).then_some(k as usize)
            };
            match lane(0, 0) {
                Lane::Tile(x) => {
                    for (t, &v) in x.iter().enumerate() {
                        if let Some(k) = slot(v) {
                            out[k * tile + t] = T::ONE;
                        }
                    }
                }
                Lane::Splat(v) => {
                    if let Some(k) = slot(v) {
                        out[k * tile..(k + 1) * tile].fill(T::ONE);
                    }
                }
            }
        }
        Op::CoordMin | Op::CoordMax | Op::CoordArgMin | Op::CoordArgMax => {
            let n = args[0].dim();
            let is_min = matches!(op, Op::CoordMin | Op::CoordArgMin);
            let want_arg = matches!(op, Op::CoordArgMin | Op::CoordArgMax);
            let dst = &mut out[..tile];
            copy_lane(dst, lane(0, 0));
            let mut arg = vec![T::ZERO; if want_arg { tile } else { 0 }];
            for c in 1..n {
                let l = lane(0, c);
                let ci = T::from_f64(c as f64);
                for t in 0..tile {
                    let x = l.at(t);
                    let better = if is_min { x < dst[t] } else { x > dst[t] };
                    dst[t] = T::select(better, x, dst[t]);
                    if want_arg {
                        arg[t] = T::select(better, ci, arg[t]);
                    }
                }
            }
            if want_arg {
                dst.copy_from_slice(&arg);
            }
        }
        // Constants and variables are never tile instructions.
        Op::Var { .. } | Op::IntCst(_) | Op::RatCst(..) | Op::FloatCst(_) | Op::Zero(_) => {
            let mut tmp = vec![T::ZERO; dim];
            eval::apply::<T, M>(op, &[], &mut tmp);
            for c in 0..dim {
                out[c * tile..(c + 1) * tile].fill(tmp[c]);
            }
        }
    }
}

#[inline(always)]
fn copy_lane<T: Real>(dst: &mut [T], l: Lane<'_, T>) {
    match l {
        Lane::Tile(x) => dst.copy_from_slice(x),
        Lane::Splat(v) => dst.fill(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::{WideFma, WithFma};

    /// A few rows at once give each row [`splat_tile`]'s sums bit for bit, across whole
    /// chunks of 64 and of 16 lanes and a rest, for every mix of groups of four, pairs
    /// and a lone row (AVX-512) or rows one by one.
    #[test]
    fn blocked_rows_equal_single_rows() {
        assert_eq!(row_group::<f32, WideFma>(), 4);
        assert_eq!(row_group::<f64, WideFma>(), 2);
        assert_eq!(row_group::<f32, WithFma>(), 1);
        blocked_rows::<WideFma>();
        blocked_rows::<WithFma>();
    }

    fn blocked_rows<M: MathMode>() {
        let (d, stride) = (13, 211);
        let y: Vec<f32> = (0..d * stride).map(|k| (k as f32 * 0.37).sin()).collect();
        let x: Vec<f32> = (0..7 * d).map(|k| (k as f32 * 0.11).cos()).collect();
        let step = sqdist_step::<f32, M>;
        for len in [1, 15, 16, 17, 63, 64, 80, 95, 128, 200] {
            for rows in 1..=7 {
                let mut got = vec![f32::NAN; rows * len];
                sqdist_rows::<f32, M>(&mut got, len, rows, (&x, d, d), &y[3..], stride);
                for r in 0..rows {
                    let mut want = vec![f32::NAN; len];
                    splat_tile(&mut want, &x[r * d..(r + 1) * d], &y[3..], stride, step);
                    let row = &got[r * len..(r + 1) * len];
                    assert!(
                        row.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "len {len}, rows {rows}, row {r}"
                    );
                    let naive: Vec<f32> = (0..len)
                        .map(|t| {
                            (0..d).fold(0.0, |s, c| {
                                let v = x[r * d + c] - y[3 + c * stride + t];
                                v.mul_add(v, s)
                            })
                        })
                        .collect();
                    assert_eq!(row, &naive[..], "len {len}, rows {rows}, row {r}");
                }
            }
        }
    }
}
