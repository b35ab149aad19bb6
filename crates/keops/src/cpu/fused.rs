//! Fused kernels for the most frequent formulas, chosen by matching the plan.
//!
//! Radial kernel sums `sum_j s * K(c * |x_i - y_j|^2) b_j` (Gauss `exp(c r2)`, Laplace
//! `exp(c sqrt(r2))`, Cauchy `1 / (1 + c r2)`, inverse multiquadric
//! `1 / sqrt(1 + c r2)`, with or without a weight `b_j` of any dimension, any scalar
//! coefficients `c`, `s` made of parameters and constants) run as one loop per tile:
//! squared distances over all of D and the profile, with the reduced side's points
//! stored dimension-major once per call; then the job's rows' values of the tile times
//! the weights (`weighted_sums`: GEMM from 8 columns). Anything else runs on the tile
//! program; both give the same results within rounding.

use super::accumulate::{tile_sum, weighted_sums, Scales, Weights, GEMM_MIN_COLS};
use super::simd::multiversion;
use super::tile::{sqdist_rows, LANE_CHUNK, MAX_ROW_GROUP};
use super::{batch_data, Block, BlockRunner, Isa, Job};
use crate::formula::eval::PointEvaluator;
use crate::formula::pattern::{self, Factors, Product};
use crate::formula::{Binary, Cat, Formula, Op, Unary};
use crate::plan::{AccType, Element, Options, Problem, SumScheme};
use crate::real::{MathMode, Real};
use crate::reduction::Reduction;
use std::borrow::Cow;

/// The radial profile of a fused kernel, as a function of `r2 = |x - y|^2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `exp(c r2)`.
    Gauss,
    /// `exp(c sqrt(r2))`.
    Laplace,
    /// `1 / (1 + c r2)`.
    Cauchy,
    /// `1 / sqrt(1 + c r2)`.
    InverseMultiquadric,
}

impl Profile {
    /// The profile at `r2`, with the exponential of the thread's floating-point mode
    /// (`FTZ`: subnormal results flushed, see `fpmode::flushing`).
    #[inline(always)]
    fn apply<T: Real, M: MathMode, const FTZ: bool>(self, c: T, r2: T) -> T {
        match self {
            Profile::Gauss => (c * r2).exp_in::<M, FTZ>(),
            Profile::Laplace => (c * r2.sqrt_()).exp_in::<M, FTZ>(),
            Profile::Cauchy => T::ONE / (T::ONE + c * r2),
            Profile::InverseMultiquadric => (T::ONE + c * r2).rsqrt_(),
        }
    }
}

/// What the matcher found in a formula.
#[derive(Clone, Debug)]
pub struct RadialSum {
    /// The profile.
    pub profile: Profile,
    /// Argument of the output side's point `x`.
    pub x: usize,
    /// Argument of the reduced side's point `y`.
    pub y: usize,
    /// Argument of the weight `b_j`, if any.
    pub b: Option<usize>,
    /// Dimension of the points.
    pub dim: usize,
    /// Scalar factors of `c` (formula, exponent +1 or -1).
    pub coef: Vec<(Formula, i32)>,
    /// Scalar factors in front of the kernel.
    pub scale: Vec<(Formula, i32)>,
}

/// `(x, y, dim)` argument positions and dimension if `f` is `SqDist(x, y)` (or
/// `SqNorm2(x - y)`) with `x` on the output side and `y` on the reduced side.
fn match_sqdist(f: &Formula, out: Cat, red: Cat) -> Option<(usize, usize, usize)> {
    let (a, b) = pattern::sqdist_vars(f)?;
    let ((ca, ka), (cb, kb)) = (a.as_var()?, b.as_var()?);
    match (ca, cb) {
        (c1, c2) if c1 == out && c2 == red => Some((ka, kb, a.dim)),
        (c1, c2) if c1 == red && c2 == out => Some((kb, ka, a.dim)),
        _ => None,
    }
}

/// `c * r2` (or `c * sqrt(r2)` when `sqrt`): the coefficient factors and the points.
fn match_scaled(
    f: &Formula,
    out: Cat,
    red: Cat,
    sqrt: bool,
) -> Option<(Factors, (usize, usize, usize))> {
    let (coef, r2) = pattern::scaled_sqdist(f, sqrt)?;
    Some((coef, match_sqdist(&r2, out, red)?))
}

/// `1 + P` (either order).
fn one_plus(f: &Formula) -> Option<&Formula> {
    match f.op {
        Op::Binary(Binary::Add) if f.args[0].op == Op::IntCst(1) => Some(&f.args[1]),
        Op::Binary(Binary::Add) if f.args[1].op == Op::IntCst(1) => Some(&f.args[0]),
        _ => None,
    }
}

/// Formulas larger than this are not matched against the fused kernels.
const MATCH_MAX_NODES: usize = 256;

impl RadialSum {
    /// Matches `formula` against the radial kernel sums; `out` is the output side.
    pub fn find(formula: &Formula, out: Cat) -> Option<RadialSum> {
        // Kernel formulas are small; the structural matcher recurses and is quadratic,
        // so large formulas go straight to the tile program.
        if formula.node_count() > MATCH_MAX_NODES {
            return None;
        }
        let red = if out == Cat::Vi { Cat::Vj } else { Cat::Vi };
        let p = Product::of(formula);
        let mut kernel = None;
        let mut b = None;
        for f in &p.others {
            match f.as_var() {
                Some((c, k)) if c == red && b.is_none() => b = Some(k),
                _ if kernel.is_none() => kernel = Some(f.clone()),
                _ => return None,
            }
        }
        let k = kernel?;
        if k.dim != 1 {
            return None;
        }
        let (profile, (coef, (x, y, dim))) = match k.op {
            Op::Unary(Unary::Exp) => {
                if let Some(m) = match_scaled(&k.args[0], out, red, false) {
                    (Profile::Gauss, m)
                } else {
                    (Profile::Laplace, match_scaled(&k.args[0], out, red, true)?)
                }
            }
            Op::Unary(Unary::Inv) => (
                Profile::Cauchy,
                match_scaled(one_plus(&k.args[0])?, out, red, false)?,
            ),
            Op::Unary(Unary::Rsqrt) => (
                Profile::InverseMultiquadric,
                match_scaled(one_plus(&k.args[0])?, out, red, false)?,
            ),
            _ => return None,
        };
        let mut scale = p.scalars;
        if p.neg {
            scale.push((Formula::int(-1), 1));
        }
        Some(RadialSum {
            profile,
            x,
            y,
            b,
            dim,
            coef,
            scale,
        })
    }
}

/// Evaluates a product of scalar factors (parameters and constants) in `f64`.
fn eval_product<T: Element>(
    factors: &[(Formula, i32)],
    problem: &Problem<'_, T>,
    data: &[&[T]],
) -> f64 {
    // Only parameters are read: convert just those.
    let params: Vec<Vec<f64>> = data
        .iter()
        .zip(problem.genred.args())
        .map(|(d, decl)| match decl {
            Some(a) if a.cat == Cat::Pm => d.iter().map(|v| v.to_f64()).collect(),
            _ => Vec::new(),
        })
        .collect();
    factors.iter().fold(1.0, |acc, (f, e)| {
        let ev = PointEvaluator::new(std::slice::from_ref(f));
        let v = ev.eval(|_, k| &params[k][..])[0];
        if *e < 0 {
            acc / v
        } else {
            acc * v
        }
    })
}

/// Per-batch data of a fused kernel: the reduced side's points dimension-major.
struct Prepared<'a, T: Clone> {
    /// `y` as `dim` rows of `n_red` values.
    y: Vec<T>,
    /// `b` and its (row, column) strides: as the caller stores it (`n_red` rows of `e`
    /// values) where GEMM will read it along its rows, else dimension-major for the lanes.
    b: Option<(Cow<'a, [T]>, usize, usize)>,
    coef: T,
    scale: f64,
}

/// A fused kernel bound to a problem.
pub struct FusedRunner<'p, 'a, T: Clone> {
    problem: &'p Problem<'a, T>,
    m: &'a RadialSum,
    e: usize,
    n_red: usize,
    batches: Vec<Prepared<'a, T>>,
    scheme: SumScheme,
    acc64: bool,
}

impl<'p, 'a, T: Element> FusedRunner<'p, 'a, T> {
    /// The fused kernel for this problem, if one matches.
    pub fn new(problem: &'p Problem<'a, T>, opts: &Options) -> Option<Self> {
        let g = problem.genred;
        if g.spec().kind != Reduction::Sum || g.weight().is_some() {
            return None;
        }
        let m = g.cpu().radial(g)?;
        let e = m.b.and_then(|k| g.args()[k]).map(|d| d.dim).unwrap_or(1);
        if e != g.formula().dim {
            return None;
        }
        let (_, n_red) = problem.sizes();
        let batches = (0..problem.batch_len())
            .map(|bi| {
                let data = batch_data(problem, bi);
                Prepared {
                    y: super::transpose(data[m.y], n_red, m.dim),
                    b: m.b.map(|k| match e >= GEMM_MIN_COLS {
                        true => (Cow::Borrowed(data[k]), e, 1),
                        false => (Cow::Owned(super::transpose(data[k], n_red, e)), 1, n_red),
                    }),
                    coef: T::from_f64(eval_product(&m.coef, problem, &data)),
                    scale: eval_product(&m.scale, problem, &data),
                }
            })
            .collect();
        Some(FusedRunner {
            problem,
            m,
            e,
            n_red,
            batches,
            scheme: opts.sum_scheme,
            acc64: opts.dtype_acc == AccType::Float64,
        })
    }

    /// What was matched.
    pub fn matched(&self) -> &RadialSum {
        self.m
    }
}

/// Lanes per tile of the fused loop, at most.
const TB: usize = 512;

/// Bytes of the reduced side's points in one tile, at most: a tile is read once per group
/// of rows, so it must stay in the core's L2 cache (at D = 784, 512 lanes are 1.6 MB).
const TILE_BYTES: usize = 128 * 1024;

/// The lanes of a tile of points of dimension `d`: [`TB`], fewer (a multiple of the
/// distances' register chunk) where they would exceed [`TILE_BYTES`].
fn tile_lanes<T>(d: usize) -> usize {
    let lanes = TILE_BYTES / (d * std::mem::size_of::<T>()).max(1);
    lanes.clamp(LANE_CHUNK, TB) / LANE_CHUNK * LANE_CHUNK
}

#[inline(always)]
fn radial_body<T: Element, A: Real, M: MathMode>(
    _: Isa,
    r: &FusedRunner<'_, '_, T>,
    x: &[T],
    prep: &Prepared<'_, T>,
    job: &Job,
    block: &mut Block,
) {
    // One loop per profile, so that the profile is known inside the vectorised loop,
    // with the exponential of either floating-point mode.
    let c = prep.coef;
    macro_rules! run {
        ($p:expr) => {
            radial_loop::<T, A, M>(
                r,
                x,
                prep,
                job,
                block,
                |v| $p.apply::<T, M, false>(c, v),
                |v| $p.apply::<T, M, true>(c, v),
            )
        };
    }
    match r.m.profile {
        Profile::Gauss => run!(Profile::Gauss),
        Profile::Laplace => run!(Profile::Laplace),
        Profile::Cauchy => run!(Profile::Cauchy),
        Profile::InverseMultiquadric => run!(Profile::InverseMultiquadric),
    }
}

#[inline(always)]
fn radial_loop<T: Element, A: Real, M: MathMode>(
    r: &FusedRunner<'_, '_, T>,
    x: &[T],
    prep: &Prepared<'_, T>,
    job: &Job,
    block: &mut Block,
    profile: impl Fn(T) -> T,
    profile_ftz: impl Fn(T) -> T,
) {
    let (d, e, n) = (r.m.dim, r.e, r.n_red);
    // `profile_ftz` where the job's thread flushes subnormal results (the same values,
    // for less work): only the profile's loop is duplicated.
    let ftz = super::fpmode::flushing();
    let mut r2 = [T::ZERO; MAX_ROW_GROUP * TB];
    let lanes = tile_lanes::<T>(d);
    // The kernel values of the job's rows on one tile, for the weighted sums: rows of
    // the longest tile, not of TB lanes (zeroing 32 rows of TB lanes was a third of a
    // call at N = M = 100).
    let tb = job.longest_red().min(lanes);
    let mut k = vec![T::ZERO; job.rows.len() * tb];
    let mut scratch = Vec::new();
    // Tiles outside, rows inside: a tile of y and b stays in cache for the whole row
    // block instead of streaming all of y from memory once per row. Each row still sees
    // the tiles in order, so results do not depend on the loop order.
    for red in &job.red {
        let mut j0 = red.start;
        while j0 < red.end {
            let len = lanes.min(red.end - j0);
            // Rows four at a time: where `sqdist_rows` groups them (AVX-512), one load of
            // the tile serves several rows' distances.
            let rows = job.rows.len();
            for first in (0..rows).step_by(MAX_ROW_GROUP) {
                let i = job.rows.start + first;
                let group = (rows - first).min(MAX_ROW_GROUP);
                let r2 = &mut r2[..group * len];
                let xs = (&x[i * d..], d, d);
                sqdist_rows::<T, M>(r2, len, group, xs, &prep.y[j0..], n);
                for (row, r2) in (first..first + group).zip(r2.chunks_exact(len)) {
                    let k = &mut k[row * tb..row * tb + len];
                    if ftz {
                        k.iter_mut().zip(r2).for_each(|(o, &v)| *o = profile_ftz(v));
                    } else {
                        k.iter_mut().zip(r2).for_each(|(o, &v)| *o = profile(v));
                    }
                    if prep.b.is_none() {
                        block.vals[row] += prep.scale * tile_sum::<T, A>(k, None, r.scheme);
                    }
                }
            }
            if let Some((b, row_stride, col_stride)) = &prep.b {
                weighted_sums::<T, A>(
                    r.scheme,
                    (&k, tb, job.rows.len()),
                    Weights {
                        data: &b[j0 * row_stride..],
                        row_stride: *row_stride,
                        col_stride: *col_stride,
                        cols: e,
                    },
                    len,
                    Scales {
                        data: std::slice::from_ref(&prep.scale),
                        row_stride: 0,
                        col_stride: 0,
                    },
                    (&mut block.vals, e),
                    &mut scratch,
                );
            }
            j0 += len;
        }
    }
}

multiversion! {
    fn radial<T: Element, A: Real>(r: &FusedRunner<'_, '_, T>, x: &[T], prep: &Prepared<'_, T>, job: &Job, block: &mut Block) = radial_body;
}

impl<T: Element> BlockRunner for FusedRunner<'_, '_, T> {
    fn run(&self, isa: Isa, job: &Job, block: &mut Block) {
        let data = batch_data(self.problem, job.batch);
        let (x, prep) = (data[self.m.x], &self.batches[job.batch]);
        if self.acc64 {
            radial::<T, f64>(isa, self, x, prep, job, block)
        } else {
            radial::<T, T>(isa, self, x, prep, job, block)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formula::parse::parse;
    use crate::plan::{Arg, CpuKernel, Genred};

    const AL: [&str; 5] = [
        "x = Vi(0,3)",
        "y = Vj(1,3)",
        "b = Vj(2,2)",
        "g = Pm(3,1)",
        "s = Pm(4,1)",
    ];

    fn find(f: &str) -> Option<RadialSum> {
        RadialSum::find(&parse(f, &AL).unwrap(), Cat::Vi)
    }

    #[test]
    fn matches_kernel_spellings() {
        for (f, profile, weighted) in [
            ("Exp(-SqDist(x,y)*g)*b", Profile::Gauss, true),
            ("b * Exp(-g * SqNorm2(x - y))", Profile::Gauss, true),
            ("Exp(-SqDist(y,x) / (2*s*s))", Profile::Gauss, false),
            (
                "s * Exp(-Sqrt(SqDist(x,y)) * g) * b",
                Profile::Laplace,
                true,
            ),
            ("Inv(1 + SqDist(x,y) * g) * b", Profile::Cauchy, true),
            (
                "Rsqrt(g * SqDist(x,y) + 1)",
                Profile::InverseMultiquadric,
                false,
            ),
        ] {
            let m = find(f).unwrap_or_else(|| panic!("{f} should match"));
            assert_eq!(m.profile, profile, "{f}");
            assert_eq!(m.b.is_some(), weighted, "{f}");
            assert_eq!((m.x, m.y, m.dim), (0, 1, 3), "{f}");
        }
    }

    #[test]
    fn rejects_other_formulas() {
        for f in [
            "Exp(-SqDist(x,y)) * Cos(Sum(x))",
            "Exp(-SqDist(x,x) * g)",
            "Exp(-SqDist(x,y)) * Exp(-SqDist(x,y))",
            "Exp(-SqDist(x,y) * Sum(x))",
            "Log(1 + SqDist(x,y))",
        ] {
            assert!(find(f).is_none(), "{f} should not match");
        }
    }

    #[test]
    fn fused_equals_tile_program() {
        let (n, m) = (37, 300);
        let x: Vec<f64> = (0..n * 3).map(|k| (k as f64 * 0.37).sin()).collect();
        let y: Vec<f64> = (0..m * 3).map(|k| (k as f64 * 0.11).cos()).collect();
        let b: Vec<f64> = (0..m * 2).map(|k| (k % 7) as f64 - 3.0).collect();
        let (g, s) = ([0.7], [1.3]);
        for f in [
            "s * Exp(-SqDist(x,y)*g)*b",
            "Inv(1 + SqDist(x,y) * g) * b",
            "-Exp(-Sqrt(SqDist(x,y)) / s)",
        ] {
            for axis in [0, 1] {
                // The weight lives on the reduced side: Vj for axis 1, Vi for axis 0.
                let al = if axis == 1 {
                    AL
                } else {
                    [
                        "x = Vi(0,3)",
                        "y = Vj(1,3)",
                        "b = Vi(2,2)",
                        "g = Pm(3,1)",
                        "s = Pm(4,1)",
                    ]
                };
                let gr = Genred::new(f, &al, crate::Reduction::Sum, axis).unwrap();
                let (xs, ys) = if axis == 1 { (&x, &y) } else { (&y, &x) };
                let (nx, ny) = (xs.len() / 3, ys.len() / 3);
                let args = [
                    Arg::new(xs, [nx, 3]),
                    Arg::new(ys, [ny, 3]),
                    Arg::new(&b, [m, 2]),
                    Arg::new(&g, [1]),
                    Arg::new(&s, [1]),
                ];
                let run = |kernel| {
                    gr.call_with(
                        &args,
                        &crate::Options {
                            kernel,
                            ..Default::default()
                        },
                    )
                    .unwrap_or_else(|e| panic!("{f} {kernel:?}: {e}"))
                };
                let (a, t) = (run(CpuKernel::Fused), run(CpuKernel::TileProgram));
                let (a, t) = (a.values.unwrap().data, t.values.unwrap().data);
                for (u, v) in a.iter().zip(&t) {
                    assert!(
                        (u - v).abs() <= 1e-12 * (1.0 + v.abs()),
                        "{f} axis {axis}: {u} vs {v}"
                    );
                }
            }
        }
    }
}
