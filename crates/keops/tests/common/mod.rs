//! Helpers shared by the integration tests: deterministic data, argument arrays in f32
//! and f64, and comparisons of engine results with the f64 oracle
//! (`keops::reference::reduce`).

#![allow(dead_code)]

pub mod op_cases;
pub mod random_formulas;

use keops::formula::eval::PointEvaluator;
use keops::formula::{Cat, Formula};
use keops::plan::Problem;
use keops::{Arg, Element, Genred, Reduced, Reduction};

/// A small deterministic generator (splitmix64): the tests need no `rand`.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[lo, hi)`, rounded to the nearest `f32` (so that f32 and f64 runs see
    /// the same numbers and the oracle sees them exactly).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo + (hi - lo) * self.unit()) as f32 as f64
    }
    /// `k / den` with `k` uniform in `-k_max..=k_max`: values on a grid, so that sums,
    /// differences and products of a few of them are exact in f32.
    pub fn grid(&mut self, k_max: i64, den: f64) -> f64 {
        let k = (self.next_u64() % (2 * k_max as u64 + 1)) as i64 - k_max;
        k as f64 / den
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Input arrays (row-major data and shapes), stored in f64.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub data: Vec<Vec<f64>>,
    pub shapes: Vec<Vec<usize>>,
}

impl Inputs {
    pub fn new() -> Inputs {
        Inputs::default()
    }
    /// Appends an array of the given shape filled by `f`.
    pub fn push(&mut self, shape: &[usize], mut f: impl FnMut() -> f64) -> &mut Self {
        let n: usize = shape.iter().product();
        self.data.push((0..n).map(|_| f()).collect());
        self.shapes.push(shape.to_vec());
        self
    }
    pub fn push_data(&mut self, shape: &[usize], data: Vec<f64>) -> &mut Self {
        assert_eq!(data.len(), shape.iter().product::<usize>());
        self.data.push(data);
        self.shapes.push(shape.to_vec());
        self
    }
    pub fn args_f64(&self) -> Vec<Arg<'_, f64>> {
        self.data
            .iter()
            .zip(&self.shapes)
            .map(|(d, s)| Arg::new(d, s))
            .collect()
    }
    /// The data converted to f32 (the oracle then sees `f32 as f64` values when the
    /// inputs were generated as f32 values, as [`Rng::uniform`] does).
    pub fn to_f32(&self) -> Vec<Vec<f32>> {
        self.data
            .iter()
            .map(|d| d.iter().map(|&x| x as f32).collect())
            .collect()
    }
    pub fn args_of<'a, T>(&self, data: &'a [Vec<T>]) -> Vec<Arg<'a, T>> {
        data.iter()
            .zip(&self.shapes)
            .map(|(d, s)| Arg::new(d, s))
            .collect()
    }
}

/// Converts any element type to f64 for comparisons.
pub fn f64s<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Tolerances: `|got - want| <= rtol * (|want| + scale) + atol`, where `scale` is a
/// per-output magnitude (e.g. the sum of `|F(x_i, y_j)|` over the reduced axis: the
/// natural scale of the rounding errors of a sum, which can cancel to a much smaller
/// result).
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub rtol: f64,
    pub atol: f64,
}

/// f64 engine vs f64 oracle: the same arithmetic up to the order of the summation and
/// a few ulps in elementary functions.
pub const TOL_F64: Tol = Tol {
    rtol: 1e-10,
    atol: 1e-10,
};

/// f32 engine vs f64 oracle on the same (f32-representable) inputs: every op rounds to
/// f32 (unit roundoff 6e-8) and the elementary functions are accurate to a few ulps; a
/// formula of up to ~10 ops whose condition number stays below ~100 loses at most
/// ~10 * 100 * 6e-8 = 6e-5 relative per term, and the block summation of a few hundred
/// terms adds ~1e-6 relative to the sum of magnitudes. Hence 1e-4 relative to the
/// magnitude of the terms.
pub const TOL_F32: Tol = Tol {
    rtol: 1e-4,
    atol: 1e-6,
};

pub fn tol_for<T: Element>() -> Tol {
    if T::NAME == "float32" {
        TOL_F32
    } else {
        TOL_F64
    }
}

/// Checks one value; NaN must match NaN and infinities must match exactly.
pub fn close(got: f64, want: f64, scale: f64, tol: Tol) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= tol.rtol * (want.abs() + scale) + tol.atol
}

/// Compares the values of `got` with those of `want` (shapes included); `scale` gives a
/// per-element magnitude (same length as the values) or `None`. Returns the largest
/// error relative to `|want| + scale`.
pub fn check_values<T: Element>(
    got: &Reduced<T>,
    want: &Reduced<f64>,
    scale: Option<&[f64]>,
    tol: Tol,
    ctx: &str,
) -> f64 {
    match (&got.values, &want.values) {
        (None, None) => 0.0,
        (Some(g), Some(w)) => {
            assert_eq!(g.shape, w.shape, "{ctx}: values shape");
            assert_eq!(g.data.len(), w.data.len(), "{ctx}: values length");
            let mut worst = 0.0f64;
            for (k, (&g, &w)) in g.data.iter().zip(&w.data).enumerate() {
                let g = g.to_f64();
                let s = scale.map(|s| s[k]).unwrap_or(0.0);
                assert!(
                    close(g, w, s, tol),
                    "{ctx}: value {k}: got {g:e}, want {w:e} (scale {s:e}, err {:e}, allowed {:e})",
                    (g - w).abs(),
                    tol.rtol * (w.abs() + s) + tol.atol
                );
                if g.is_finite() && w.is_finite() {
                    worst = worst.max((g - w).abs() / (w.abs() + s).max(f64::MIN_POSITIVE));
                }
            }
            worst
        }
        (g, w) => panic!(
            "{ctx}: values present: got {}, want {}",
            g.is_some(),
            w.is_some()
        ),
    }
}

/// Compares the indices exactly (shapes included).
pub fn check_indices_exact<T: Element>(got: &Reduced<T>, want: &Reduced<f64>, ctx: &str) {
    match (&got.indices, &want.indices) {
        (None, None) => {}
        (Some(g), Some(w)) => {
            assert_eq!(g.shape, w.shape, "{ctx}: indices shape");
            assert_eq!(g.data, w.data, "{ctx}: indices");
        }
        (g, w) => panic!(
            "{ctx}: indices present: got {}, want {}",
            g.is_some(),
            w.is_some()
        ),
    }
}

/// Checks that in f32 every index that differs from the oracle's points at a value
/// within tolerance of the oracle's choice (a near-tie), and that the K indices of a
/// row are distinct and in range.
pub fn check_indices_near<T: Element>(
    got: &Reduced<T>,
    want: &Reduced<f64>,
    g: &Genred,
    inp: &Inputs,
    ctx: &str,
) {
    let (Some(gi), Some(wi)) = (&got.indices, &want.indices) else {
        assert_eq!(
            got.indices.is_some(),
            want.indices.is_some(),
            "{ctx}: indices present"
        );
        return;
    };
    assert_eq!(gi.shape, wi.shape, "{ctx}: indices shape");
    if gi.data == wi.data {
        return;
    }
    let d = g.formula().dim;
    let k = g.spec().kind.k().unwrap_or(1);
    let per_row = k * d;
    let args = inp.args_f64();
    let p = keops::plan::Problem::new(g, &args).unwrap();
    let (n_out, n_red) = p.sizes();
    let mut mismatches = 0;
    for b in 0..p.batch_len() {
        let mut vals = None;
        for i in 0..n_out {
            let o = (b * n_out + i) * per_row;
            for c in 0..d {
                let mut seen = std::collections::HashSet::new();
                for r in 0..k {
                    let (gj, wj) = (gi.data[o + r * d + c], wi.data[o + r * d + c]);
                    assert!(
                        gj >= 0 && (gj as usize) < n_red,
                        "{ctx}: index {gj} out of range"
                    );
                    assert!(seen.insert(gj), "{ctx}: index {gj} repeated in row {i}");
                    if gj == wj {
                        continue;
                    }
                    mismatches += 1;
                    let v = vals
                        .get_or_insert_with(|| dense(g, inp, std::slice::from_ref(g.formula()), b));
                    let (vg, vw) = (v[i][gj as usize][c], v[i][wj as usize][c]);
                    assert!(
                        close(vg, vw, 1.0, TOL_F32),
                        "{ctx}: batch {b} row {i} coord {c} rank {r}: index {gj} (value {vg:e}) instead of {wj} (value {vw:e})"
                    );
                }
            }
        }
    }
    if mismatches > 0 {
        println!("{ctx}: {mismatches} f32 index choice(s) differ from the oracle at near-ties");
    }
}

/// Checks the indices against the oracle's: exactly in f64; in f32, up to near-ties
/// ([`check_indices_near`]).
pub fn check_indices<T: Element>(
    got: &Reduced<T>,
    want: &Reduced<f64>,
    g: &Genred,
    inp: &Inputs,
    ctx: &str,
) {
    if T::NAME == "float64" {
        check_indices_exact(got, want, ctx);
    } else {
        check_indices_near(got, want, g, inp, ctx);
    }
}

/// Runs `genred` in type `T` on `inputs` (converted) with `opts`.
pub fn run_as<T: Element>(
    g: &Genred,
    inputs: &Inputs,
    opts: &keops::Options,
) -> keops::Result<Reduced<T>> {
    let data: Vec<Vec<T>> = inputs
        .data
        .iter()
        .map(|d| d.iter().map(|&x| T::from_f64(x)).collect())
        .collect();
    g.call_with(&inputs.args_of(&data), opts)
}

/// Calls `visit(i, j, values)` at every pair `(i, j)` of batch entry `b`, in order of `j`
/// for each output row `i` (`j` a reduced row): `values` those of `roots` (concatenated)
/// at that pair.
pub fn for_each_pair(
    genred: &Genred,
    inputs: &Inputs,
    roots: &[Formula],
    b: usize,
    mut visit: impl FnMut(usize, usize, Vec<f64>),
) {
    let args = inputs.args_f64();
    let p = Problem::new(genred, &args).expect("problem");
    let data = keops::cpu::batch_data(&p, b);
    let ev = PointEvaluator::new(roots);
    let (n_out, n_red) = p.sizes();
    for i in 0..n_out {
        for j in 0..n_red {
            visit(
                i,
                j,
                ev.eval(keops::reference::variables_at(genred, &data, i, j)),
            );
        }
    }
}

/// Dense values of `roots` (concatenated per pair) for batch entry `b`: `out[i][j]` with
/// `i` the output row and `j` the reduced row of `genred`'s axis. Used for checking
/// index choices between near-ties.
pub fn dense(genred: &Genred, inputs: &Inputs, roots: &[Formula], b: usize) -> Vec<Vec<Vec<f64>>> {
    let mut out: Vec<Vec<Vec<f64>>> = Vec::new();
    for_each_pair(genred, inputs, roots, b, |i, _, v| {
        if i == out.len() {
            out.push(Vec::new());
        }
        out[i].push(v);
    });
    out
}

/// What a test of a `Sum` reduction checks against: the oracle's result and, per output
/// value, the scale of its rounding errors ([`sum_magnitude`]).
pub struct SumOracle {
    pub want: Reduced<f64>,
    pub scale: Vec<f64>,
}

/// The [`SumOracle`]s of `Sum` reductions of one formula over the same arguments, on
/// either axis (`gs`), from one evaluation of the formula's nodes per pair: what
/// `keops::reference::reduce` and [`sum_magnitude`] give for each, bit for bit (the op
/// tests pin it), in a fraction of their time. The oracle is most of the op tests' time,
/// under qemu most of all.
pub fn sum_oracles(gs: &[Genred], inputs: &Inputs) -> Vec<SumOracle> {
    let first = gs.first().expect("a reduction");
    for g in gs {
        assert_eq!(g.spec().kind, Reduction::Sum, "Sum reductions only");
        assert_eq!(g.formula(), first.formula(), "one formula");
    }
    let nodes = first.formula().topo_order();
    let d = first.formula().dim;
    // The formula is the last node of its topological order.
    let at_f = nodes.iter().map(|f| f.dim).sum::<usize>() - d;
    let args = inputs.args_f64();
    let problems: Vec<Problem<'_, f64>> = gs
        .iter()
        .map(|g| Problem::new(g, &args).expect("problem"))
        .collect();
    let nb = problems[0].batch_len();
    // Per reduction: its output rows, and whether they are the i's.
    let outs: Vec<(usize, bool)> = gs
        .iter()
        .zip(&problems)
        .map(|(g, p)| (p.sizes().0, g.axis() == 1))
        .collect();
    let mut sums: Vec<(Vec<f64>, Vec<f64>)> = outs
        .iter()
        .map(|&(n_out, _)| (vec![0.0; nb * n_out * d], vec![0.0; nb * n_out]))
        .collect();
    for b in 0..nb {
        // The pairs in order of the reduced index for each output row of every `g`: the
        // order of the oracle's sums, in the first's order (i, j) and in the transposed
        // (j, i) one alike, as each output's terms come in increasing reduced index.
        for_each_pair(first, inputs, &nodes, b, |out, red, v| {
            let (i, j) = if first.axis() == 1 {
                (out, red)
            } else {
                (red, out)
            };
            let m = magnitude(&v);
            for ((s, mag), &(n_out, by_i)) in sums.iter_mut().zip(&outs) {
                let o = b * n_out + if by_i { i } else { j };
                for (s, &x) in s[o * d..(o + 1) * d].iter_mut().zip(&v[at_f..]) {
                    *s += x;
                }
                mag[o] += m;
            }
        });
    }
    sums.into_iter()
        .zip(&problems)
        .map(|((s, mag), p)| SumOracle {
            want: Reduced {
                values: Some(keops::Array {
                    data: s,
                    shape: p.output_shapes().0,
                }),
                indices: None,
            },
            scale: mag
                .iter()
                .flat_map(|&m| std::iter::repeat(m).take(d))
                .collect(),
        })
        .collect()
}

/// The largest absolute value of the finite values at one pair.
fn magnitude(v: &[f64]) -> f64 {
    v.iter().fold(
        0.0f64,
        |m, x| if x.is_finite() { m.max(x.abs()) } else { m },
    )
}

/// Per output value of a `Sum` reduction of `genred`: the sum over the reduced
/// axis of the largest absolute value of any node of the formula at that pair (a scale
/// for rounding errors, including the cancellations inside the formula), per coordinate
/// of the output.
pub fn sum_magnitude(genred: &Genred, inputs: &Inputs) -> Vec<f64> {
    let f = genred.formula().clone();
    let nodes = f.topo_order();
    let d = f.dim;
    let (nb, n_out) = {
        let args = inputs.args_f64();
        let p = Problem::new(genred, &args).expect("problem");
        (p.batch_len(), p.sizes().0)
    };
    // Summed pair by pair: every node at every pair does not fit in memory for wide
    // formulas.
    let mut sums = vec![0.0; nb * n_out];
    for b in 0..nb {
        for_each_pair(genred, inputs, &nodes, b, |i, _, v| {
            sums[b * n_out + i] += magnitude(&v);
        });
    }
    sums.iter()
        .flat_map(|&s| std::iter::repeat(s).take(d))
        .collect()
}

/// Values of the variables at one point of evaluation, by (category, index).
#[derive(Clone, Debug, Default)]
pub struct Point(pub std::collections::HashMap<(u8, usize), Vec<f64>>);

impl Point {
    /// Random values in `[lo, hi)` for every variable of `roots`.
    pub fn random(roots: &[Formula], rng: &mut Rng, lo: f64, hi: f64) -> Point {
        let mut p = Point::default();
        for v in keops::formula::variables(roots) {
            let (cat, index) = v.as_var().expect("a variable");
            let vals = (0..v.dim).map(|_| lo + (hi - lo) * rng.unit()).collect();
            p.0.insert((cat as u8, index), vals);
        }
        p
    }
    /// Sets the value of one variable.
    pub fn set(&mut self, v: &Formula, vals: Vec<f64>) {
        let (cat, index) = v.as_var().expect("a variable");
        self.0.insert((cat as u8, index), vals);
    }
    /// The value of one variable.
    pub fn get(&self, v: &Formula) -> Vec<f64> {
        let (cat, index) = v.as_var().expect("a variable");
        self.0[&(cat as u8, index)].clone()
    }
    /// `f` evaluated here by the oracle.
    pub fn eval(&self, f: &Formula) -> Vec<f64> {
        let ev = PointEvaluator::new(std::slice::from_ref(f));
        ev.eval(|c, i| {
            self.0
                .get(&(c as u8, i))
                .map(|v| v.as_slice())
                .unwrap_or(&[])
        })
    }
}

/// The outcome of comparing a symbolic gradient with finite differences.
#[derive(Debug)]
pub enum FdCheck {
    /// They agree; the largest error relative to `1 + |fd|`.
    Agree(f64),
    /// The function is not smooth enough (or not finite) around the point to judge.
    Skipped,
    /// They disagree: a description.
    Disagree(String),
}

/// Checks `Grad(f, v, e)` at `p` (where the gradient input `e`, a variable of `f`'s
/// dimension, has a value too) against central differences of `<f, e>` in f64.
///
/// Tolerance (documented in tests/autodiff.rs): steps `h = 1e-5 (1 + |v_k|)` and `h / 2`
/// must agree within `1e-6 (1 + |fd|)` (else the point is too close to a kink or a
/// singularity and is skipped), and the symbolic gradient must be within
/// `1e-5 (1 + |fd|)` of the finer difference; both bounds grow by the rounding error
/// of the differences, `1e-14 M / h` with `M` the largest intermediate value times the
/// largest `|e|`.
pub fn fd_check(f: &Formula, v: &Formula, e: &Formula, p: &Point) -> FdCheck {
    let g = keops::formula::diff::grad(f, v, e).expect("grad builds");
    let sym = p.eval(&g);
    let ev = p.get(e);
    let x0 = p.get(v);
    let dot = |q: &Point| -> f64 { q.eval(f).iter().zip(&ev).map(|(a, b)| a * b).sum() };
    if sym.iter().any(|s| !s.is_finite()) || !dot(p).is_finite() {
        return FdCheck::Skipped;
    }
    // Rounding in the differences scales with the largest intermediate value (a huge
    // term absorbs the change of a small one): allow for it.
    let magnitude = largest_intermediate(f, p) * ev.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut worst = 0.0f64;
    for k in 0..v.dim {
        let fd = |h: f64| {
            let mut q = p.clone();
            let mut x = x0.clone();
            x[k] = x0[k] + h;
            q.set(v, x.clone());
            let up = q.eval(f);
            x[k] = x0[k] - h;
            q.set(v, x);
            // Differences per output coordinate, then weighted: coordinates that do not
            // depend on v[k] contribute exactly 0 whatever their size.
            let down = q.eval(f);
            up.iter()
                .zip(&down)
                .zip(&ev)
                .map(|((u, d), w)| w * (u - d) / (2.0 * h))
                .sum::<f64>()
        };
        let h = 1e-5 * (1.0 + x0[k].abs());
        let (coarse, fine) = (fd(h), fd(h / 2.0));
        if !coarse.is_finite() || !fine.is_finite() {
            return FdCheck::Skipped;
        }
        let scale = 1.0 + fine.abs();
        let rounding = 1e-14 * magnitude / h;
        if (coarse - fine).abs() > 1e-6 * scale + rounding {
            return FdCheck::Skipped;
        }
        let err = ((sym[k] - fine).abs() - rounding).max(0.0) / scale;
        if err > 1e-5 {
            return FdCheck::Disagree(format!(
                "d/d{v}[{k}] of <{f}, {e}>: symbolic {:e}, finite differences {fine:e} (gradient {g})",
                sym[k]
            ));
        }
        worst = worst.max(err);
    }
    FdCheck::Agree(worst)
}

/// The largest finite absolute value of any node of `f` at `p`: the scale of the
/// rounding errors of evaluating `f` there.
pub fn largest_intermediate(f: &Formula, p: &Point) -> f64 {
    PointEvaluator::new(&f.topo_order())
        .eval(|c, i| self_or_empty(p, c, i))
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f64, |m, x| m.max(x.abs()))
}

fn self_or_empty(p: &Point, c: Cat, i: usize) -> &[f64] {
    p.0.get(&(c as u8, i)).map(|v| v.as_slice()).unwrap_or(&[])
}

/// Variables of [`reduction_cases`].
pub const REDUCTION_ALIASES: [&str; 4] =
    ["x = Vi(0,2)", "y = Vj(1,2)", "b = Vj(2,1)", "p = Pm(3,1)"];

/// The Genred of a [`reduction_cases`] entry along `axis`.
pub fn reduction_case_genred(f: &str, w: Option<&str>, r: keops::Reduction, axis: usize) -> Genred {
    case_genred(&REDUCTION_ALIASES, f, w, r, axis)
}

/// The Genred of a case `(f, w, r)` on `aliases` along `axis` (weighted when `w` is).
pub fn case_genred(
    aliases: &[&str],
    f: &str,
    w: Option<&str>,
    r: keops::Reduction,
    axis: usize,
) -> Genred {
    match w {
        Some(w) => Genred::with_weight(f, w, aliases, r, axis),
        None => Genred::new(f, aliases, r, axis),
    }
    .unwrap_or_else(|e| panic!("{f} {r:?} axis {axis}: {e}"))
}

/// One formula per reduction kind, (formula, weight, reduction), on
/// [`REDUCTION_ALIASES`]: vector-valued where the reduction allows it, LogSumExp also
/// weighted. Used by the generated-kernel tests (host C, NVRTC, GPU).
pub fn reduction_cases() -> Vec<(&'static str, Option<&'static str>, keops::Reduction)> {
    use keops::Reduction;
    let weighted = ("Sum(Sin(x - y)) * p + b", Some("Concat(y, b)"));
    let mut v = Vec::new();
    for &r in Reduction::ALL {
        match r {
            Reduction::SumSoftMaxWeight => v.push((weighted.0, weighted.1, r)),
            Reduction::LogSumExp => {
                v.push(("Sin(x - y) * b + p", None, r));
                v.push((weighted.0, weighted.1, r));
            }
            _ => v.push(("Sin(x - y) * b + p", None, r)),
        }
    }
    v
}

/// Formulas on [`REDUCTION_ALIASES`] whose exponentials of squared distances a float32
/// GPU kernel with fast math computes as `exp2` of distances between prescaled points
/// (`keops::cuda::prescale`): Gaussian and Laplacian, a parameter and constants in the
/// coefficient, in a weight, under reductions other than sums.
pub fn prescaled_cases() -> Vec<(&'static str, Option<&'static str>, keops::Reduction)> {
    use keops::Reduction;
    vec![
        ("Exp(-SqDist(x,y)) * b", None, Reduction::Sum),
        ("Exp(-p * SqNorm2(x - y) / 2) * b", None, Reduction::Sum),
        ("Exp(-Sqrt(SqDist(x,y)) * 3) + b", None, Reduction::Sum),
        ("Exp(SqDist(y,x) / 4) * b", None, Reduction::Max),
        ("Exp(-SqDist(x,y)) * b", None, Reduction::LogSumExp),
        (
            "b * p",
            Some("Exp(-SqDist(x,y)) * b"),
            Reduction::SumSoftMaxWeight,
        ),
    ]
}

/// The variables of [`chunked_cases`]: `x` and `y` of dimension 150, beyond what a GPU
/// thread keeps in registers.
pub const CHUNKED_ALIASES: [&str; 4] = [
    "x = Vi(0,150)",
    "y = Vj(1,150)",
    "b = Vj(2,1)",
    "p = Pm(3,1)",
];

/// Variables of [`column_cases`]: points `x`, `y` of dimension 3, and 300-wide `u`,
/// `v` and `p` (computed by columns in either precision, and not a multiple of a group:
/// the last group overlaps the one before).
pub const COLUMN_ALIASES: [&str; 5] = [
    "x = Vi(0,3)",
    "y = Vj(1,3)",
    "u = Vi(2,300)",
    "v = Vj(3,300)",
    "p = Pm(4,300)",
];

/// Formulas on [`COLUMN_ALIASES`] whose 300-wide outputs (or weights) are computed
/// coordinate by coordinate, which the GPU computes a group of columns per launch
/// (`keops::cuda::columns`): the kernel product, every category of wide variable, a
/// broadcast scalar, each reduction kind that allows it, weights.
pub fn column_cases() -> Vec<(&'static str, Option<&'static str>, keops::Reduction)> {
    use keops::Reduction;
    vec![
        ("Exp(-SqDist(x,y)) * v", None, Reduction::Sum),
        (
            "Exp(-SqDist(x,y)) * u * v - p + SqDist(x,y)",
            None,
            Reduction::Sum,
        ),
        ("Sin(u - v) * p", None, Reduction::Max),
        ("Abs(u - v * p) + SqDist(x,y)", None, Reduction::MinArgMin),
        ("Cos(v * p + (x|y))", None, Reduction::ArgMax),
        ("v * p - SqDist(x,y)", None, Reduction::LogSumExp),
        ("-SqDist(x,y)", Some("v * p"), Reduction::SumSoftMaxWeight),
        ("-SqDist(x,y)", Some("Exp(v)"), Reduction::LogSumExp),
    ]
}

/// Formulas on [`CHUNKED_ALIASES`] whose wide rows enter only through sums over their
/// coordinates (the GPU's chunked kernels): every kind of such sum, two in one formula,
/// a parameter and a scalar inside one, weighted reductions; the last one uses `x`
/// outside a sum (not chunked: read in place).
pub fn chunked_cases() -> Vec<(&'static str, Option<&'static str>, keops::Reduction)> {
    use keops::Reduction;
    vec![
        ("Exp(-SqDist(x,y) * p) * b", None, Reduction::Sum),
        (
            "Exp(-SqDist(x,y)) * Sum(x * y * p - b)",
            None,
            Reduction::Sum,
        ),
        ("(x|y) * p + b", None, Reduction::LogSumExp),
        ("SqDist(x,y)", None, Reduction::ArgKMin(3)),
        ("SqNorm2(x - y * b)", None, Reduction::KMinArgKMin(2)),
        ("Sum(Abs(x - y))", None, Reduction::MinArgMin),
        (
            "-SqDist(x,y)",
            Some("Concat(b, b * p)"),
            Reduction::SumSoftMaxWeight,
        ),
        ("Exp(-SqDist(x,y)) * Elem(x, 149)", None, Reduction::Sum),
    ]
}

/// Variables of [`cases`]: `x`, `y` (dimension 3), the weight `b` and the scale `g`.
pub fn aliases(bd: usize) -> Vec<String> {
    vec![
        "x = Vi(0,3)".into(),
        "y = Vj(1,3)".into(),
        format!("b = Vj(2,{bd})"),
        "g = Pm(3,1)".into(),
    ]
}

pub const GAUSS: &str = "Exp(-SqDist(x,y) * g) * b";

/// The reductions to test: `Reduction::ALL` and the K-min family with K = 1 and 5.
pub fn reductions() -> Vec<Reduction> {
    let mut v: Vec<Reduction> = Reduction::ALL.to_vec();
    for k in [1, 5] {
        v.extend([
            Reduction::KMin(k),
            Reduction::ArgKMin(k),
            Reduction::KMinArgKMin(k),
        ]);
    }
    v
}

/// A named Genred of the test suite.
pub struct Case {
    /// What the case is.
    pub name: String,
    /// The reduction.
    pub genred: Genred,
    /// Dimension of the weight `b` the inputs need.
    pub bd: usize,
}

/// Every (formula, reduction) case for an axis.
pub fn cases(axis: usize) -> Vec<Case> {
    let mut out = Vec::new();
    for red in reductions() {
        if red == Reduction::SumSoftMaxWeight {
            // Weights of width 9: the CPU engine's GEMM (8 columns and more).
            for bd in [1, 2, 9] {
                out.push(Case {
                    name: format!("SumSoftMaxWeight(-g SqDist, b{bd})"),
                    genred: Genred::with_weight("-SqDist(x,y) * g", "b", &aliases(bd), red, axis)
                        .unwrap(),
                    bd,
                });
            }
            continue;
        }
        // Weights of width 9: the CPU engine's GEMM (8 columns and more).
        let widths: &[usize] = if red == Reduction::Sum {
            &[1, 2, 9]
        } else {
            &[1, 2]
        };
        for &bd in widths {
            out.push(Case {
                name: format!("{}(Gauss, b{bd})", red.name()),
                genred: Genred::new(GAUSS, &aliases(bd), red, axis).unwrap(),
                bd,
            });
        }
        out.push(Case {
            name: format!("{}(SqDist)", red.name()),
            genred: Genred::new("SqDist(x,y)", &aliases(1), red, axis).unwrap(),
            bd: 1,
        });
        if red == Reduction::LogSumExp {
            for bd in [1, 2, 9] {
                out.push(Case {
                    name: format!("LogSumExp(-g SqDist, weight b{bd})"),
                    genred: Genred::with_weight("-SqDist(x,y) * g", "b", &aliases(bd), red, axis)
                        .unwrap(),
                    bd,
                });
            }
        }
    }
    out
}
