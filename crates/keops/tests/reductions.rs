//! Every reduction (`Reduction::ALL`, and the K-min family with K = 1 and K = 5) on a
//! Gaussian kernel (weights `b` of dimension 1 and 2) and on `SqDist` (k-NN), both axes,
//! f32 and f64, both CPU code paths, with and without batch dimensions, compared with
//! the f64 oracle `keops::reference::reduce`; output shapes as documented in `plan.rs`;
//! edge cases (N = 1, M = 1, empty reductions, NaN and infinities, K > M); the accuracy
//! of long float32 sums; multi-threading and the split of the reduced axis.
//!
//! Tolerances: see `common::TOL_F32` / `common::TOL_F64`. Sums are compared relative to
//! the sum of the magnitudes of their terms; the other reductions (log-sum-exp,
//! soft-max averages, extrema) relative to `|value| + 1` (their inputs are O(1), so the
//! rounding errors of f32 are absolute errors of ~1e-7). Indices must match exactly in
//! f64 (the data have no ties); in f32 an index may differ only where the oracle's values
//! at both indices are within the f32 tolerance (a near-tie that rounding may flip).

mod common;

use common::*;
use keops::{
    reference, AccType, Arg, CpuKernel, Element, Genred, KeopsError, Options, Reduced, Reduction,
    SumScheme,
};

/// Shapes of the four arguments' batch dimensions (x, y, b, g).
#[derive(Clone, Debug)]
struct Batch {
    name: &'static str,
    x: &'static [usize],
    y: &'static [usize],
    b: &'static [usize],
    g: &'static [usize],
    /// The broadcast batch shape.
    out: &'static [usize],
}

const NO_BATCH: Batch = Batch {
    name: "no batch",
    x: &[],
    y: &[],
    b: &[],
    g: &[],
    out: &[],
};

const BATCHES: [Batch; 6] = [
    NO_BATCH,
    Batch {
        name: "batch 2, Pm (2,1)",
        x: &[2],
        y: &[2],
        b: &[2],
        g: &[2],
        out: &[2],
    },
    Batch {
        name: "batch 2, Pm (1,1)",
        x: &[2],
        y: &[2],
        b: &[2],
        g: &[1],
        out: &[2],
    },
    Batch {
        name: "batch 1 vs 3",
        x: &[3],
        y: &[1],
        b: &[3],
        g: &[1],
        out: &[3],
    },
    Batch {
        name: "batch (2,1) vs (1,3)",
        x: &[2, 1],
        y: &[1, 3],
        b: &[1, 3],
        g: &[2, 1],
        out: &[2, 3],
    },
    Batch {
        name: "batch on Pm only",
        x: &[],
        y: &[],
        b: &[],
        g: &[2],
        out: &[2],
    },
];

fn cat(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter().chain(b).copied().collect()
}

/// Random data (f32-representable, no ties): x, y in [-1, 1]^3, b in [0.05, 1], g in
/// [0.5, 2].
fn inputs(batch: &Batch, n: usize, m: usize, bd: usize, seed: u64) -> Inputs {
    let mut r = Rng::new(seed);
    let mut inp = Inputs::new();
    inp.push(&cat(batch.x, &[n, 3]), || r.uniform(-1.0, 1.0));
    inp.push(&cat(batch.y, &[m, 3]), || r.uniform(-1.0, 1.0));
    inp.push(&cat(batch.b, &[m, bd]), || r.uniform(0.05, 1.0));
    inp.push(&cat(batch.g, &[1]), || r.uniform(0.5, 2.0));
    inp
}

/// The output shapes documented on `Reduced` (plan.rs): `[..batch, n, D]`, and
/// `[..batch, n, K]` (D = 1) or `[..batch, n, K, D]` for the K-min family; values absent
/// for ArgMin/ArgMax/ArgKMin, indices only for the arg reductions.
fn expected_shapes(
    batch: &[usize],
    n_out: usize,
    red: Reduction,
    d: usize,
    wd: Option<usize>,
) -> (Option<Vec<usize>>, Option<Vec<usize>>) {
    let s = |tail: &[usize]| Some(cat(&cat(batch, &[n_out]), tail));
    let kshape = |k: usize| if d == 1 { s(&[k]) } else { s(&[k, d]) };
    match red {
        Reduction::Sum | Reduction::Min | Reduction::Max => (s(&[d]), None),
        Reduction::LogSumExp | Reduction::SumSoftMaxWeight => (s(&[wd.unwrap_or(d)]), None),
        Reduction::ArgMin | Reduction::ArgMax => (None, s(&[d])),
        Reduction::MinArgMin | Reduction::MaxArgMax => (s(&[d]), s(&[d])),
        Reduction::KMin(k) => (kshape(k), None),
        Reduction::ArgKMin(k) => (None, kshape(k)),
        Reduction::KMinArgKMin(k) => (kshape(k), kshape(k)),
    }
}

fn kernels() -> [(&'static str, Options); 2] {
    [
        (
            "TileProgram",
            Options {
                kernel: CpuKernel::TileProgram,
                ..Default::default()
            },
        ),
        ("default", Options::default()),
    ]
}

/// A kernel sum's inputs: points `x` `(nx, 3)` and `y` `(ny, 3)`, weights `b`
/// `(ny, 1)` in [-1, 1], a positive scale `p`.
fn kernel_inputs(rng: &mut Rng, nx: usize, ny: usize) -> Inputs {
    let mut inp = Inputs::new();
    inp.push(&[nx, 3], || rng.uniform(-1.0, 1.0));
    inp.push(&[ny, 3], || rng.uniform(-1.0, 1.0));
    inp.push(&[ny, 1], || rng.uniform(-1.0, 1.0));
    inp.push(&[1], || rng.uniform(0.5, 2.0));
    inp
}

/// `g` on `inp` against the oracle's `want` (tolerances scaled by `scale`) on both code
/// paths and every instruction set of this CPU, in float64 and float32.
fn check_every_isa(g: &Genred, inp: &Inputs, want: &Reduced<f64>, scale: &[f64], ctx: &str) {
    let isas = keops::cpu::Isa::ALL.into_iter();
    for isa in isas.filter(|&i| i <= keops::cpu::Isa::available()) {
        for (name, opts) in kernels() {
            let opts = Options {
                isa: Some(isa),
                ..opts
            };
            let ctx = format!("{ctx}, {name}, {isa:?}");
            let got = run_as::<f64>(g, inp, &opts).unwrap();
            check_values(&got, want, Some(scale), TOL_F64, &ctx);
            let got = run_as::<f32>(g, inp, &opts).unwrap();
            check_values(&got, want, Some(scale), TOL_F32, &format!("{ctx}, f32"));
        }
    }
}

/// The per-value scale of the tolerance (see the module docs).
fn value_scale(g: &Genred, inp: &Inputs, want: &Reduced<f64>) -> Vec<f64> {
    let len = want.values.as_ref().map(|v| v.data.len()).unwrap_or(0);
    if g.spec().kind == Reduction::Sum {
        sum_magnitude(g, inp)
    } else {
        vec![1.0; len]
    }
}

fn check_dtype<T: Element>(
    g: &Genred,
    inp: &Inputs,
    want: &Reduced<f64>,
    scale: &[f64],
    opts: &Options,
    ctx: &str,
) -> Reduced<T> {
    let ctx = format!("{ctx}, {}", T::NAME);
    let got = run_as::<T>(g, inp, opts).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    check_values(&got, want, Some(scale), tol_for::<T>(), &ctx);
    got
}

/// Runs a case in f32 and f64 on both kernels and compares with the oracle.
fn check_case(g: &Genred, inp: &Inputs, batch: &[usize], ctx: &str) {
    let want =
        reference::reduce(g, &inp.args_f64()).unwrap_or_else(|e| panic!("oracle {ctx}: {e}"));
    let args = inp.args_f64();
    let p = keops::plan::Problem::new(g, &args).unwrap();
    let (n_out, _) = p.sizes();
    let spec = g.spec();
    let (sv, si) = expected_shapes(batch, n_out, spec.kind, spec.dim, spec.weight_dim);
    assert_eq!(
        want.values.as_ref().map(|a| a.shape.clone()),
        sv,
        "{ctx}: oracle values shape"
    );
    assert_eq!(
        want.indices.as_ref().map(|a| a.shape.clone()),
        si,
        "{ctx}: oracle indices shape"
    );
    let scale = value_scale(g, inp, &want);
    for (kname, opts) in kernels() {
        let ctx = format!("{ctx} [{kname}]");
        let got = check_dtype::<f64>(g, inp, &want, &scale, &opts, &ctx);
        check_indices_exact(&got, &want, &format!("{ctx}, f64"));
        let got = check_dtype::<f32>(g, inp, &want, &scale, &opts, &ctx);
        check_indices_near(&got, &want, g, inp, &format!("{ctx}, f32"));
        assert_eq!(
            got.values.as_ref().map(|a| a.shape.clone()),
            sv,
            "{ctx}: values shape"
        );
        assert_eq!(
            got.indices.as_ref().map(|a| a.shape.clone()),
            si,
            "{ctx}: indices shape"
        );
    }
}

fn run_suite(batch: &Batch, n: usize, m: usize, seed: u64) {
    let mut count = 0;
    for axis in [1, 0] {
        for case in cases(axis) {
            let inp = inputs(batch, n, m, case.bd, seed);
            let ctx = format!("{} axis {axis}, N={n}, M={m}, {}", case.name, batch.name);
            let n_red = if axis == 1 { m } else { n };
            match case.genred.spec().kind.k() {
                Some(k) if k > n_red => {
                    // K larger than the reduced axis: an error, for the oracle and the engine.
                    let e = run_as::<f32>(&case.genred, &inp, &Options::default()).unwrap_err();
                    assert!(matches!(e, KeopsError::Reduction { .. }), "{ctx}: {e:?}");
                    assert!(
                        reference::reduce(&case.genred, &inp.args_f64()).is_err(),
                        "{ctx}"
                    );
                }
                _ => check_case(&case.genred, &inp, batch.out, &ctx),
            }
            count += 1;
        }
    }
    println!("{} N={n} M={m}: {count} cases", batch.name);
}

#[test]
fn all_reductions_single_pairs() {
    run_suite(&NO_BATCH, 1, 1, 1);
}

#[test]
fn all_reductions_odd_sizes() {
    // 257 and 300 cross the tiles (32..256 lanes) and the 32-row blocks.
    run_suite(&NO_BATCH, 7, 257, 2);
    run_suite(&NO_BATCH, 300, 33, 3);
}

#[test]
fn all_reductions_with_batch_dims() {
    for (k, batch) in BATCHES.iter().enumerate().skip(1) {
        run_suite(batch, 5, 37, 10 + k as u64);
    }
}

#[test]
fn documented_output_shapes() {
    // Independent of the oracle: the shapes spelled out.
    let inp = inputs(&BATCHES[1], 4, 9, 2, 5);
    type Shape = Option<Vec<usize>>;
    let cases: Vec<(Reduction, Shape, Shape)> = vec![
        (Reduction::Sum, Some(vec![2, 4, 2]), None),
        (Reduction::LogSumExp, Some(vec![2, 4, 2]), None),
        (Reduction::Min, Some(vec![2, 4, 2]), None),
        (Reduction::ArgMax, None, Some(vec![2, 4, 2])),
        (
            Reduction::MinArgMin,
            Some(vec![2, 4, 2]),
            Some(vec![2, 4, 2]),
        ),
        (Reduction::KMin(5), Some(vec![2, 4, 5, 2]), None),
        (Reduction::ArgKMin(5), None, Some(vec![2, 4, 5, 2])),
        (
            Reduction::KMinArgKMin(1),
            Some(vec![2, 4, 1, 2]),
            Some(vec![2, 4, 1, 2]),
        ),
    ];
    for (red, sv, si) in cases {
        let g = Genred::new(GAUSS, &aliases(2), red, 1).unwrap();
        let r = run_as::<f32>(&g, &inp, &Options::default()).unwrap();
        assert_eq!(r.values.map(|a| a.shape), sv, "{red:?}");
        assert_eq!(r.indices.map(|a| a.shape), si, "{red:?}");
    }
    // D = 1: K-min shapes [n, K]; axis 0: n = M.
    let inp1 = inputs(&NO_BATCH, 4, 9, 1, 6);
    let g = Genred::new("SqDist(x,y)", &aliases(1), Reduction::KMinArgKMin(3), 0).unwrap();
    let r = run_as::<f64>(&g, &inp1, &Options::default()).unwrap();
    assert_eq!(r.values.unwrap().shape, vec![9, 3]);
    assert_eq!(r.indices.unwrap().shape, vec![9, 3]);
    // Weighted: the weight's dimension.
    let g = Genred::with_weight(
        "-SqDist(x,y)",
        "b",
        &aliases(2),
        Reduction::SumSoftMaxWeight,
        1,
    )
    .unwrap();
    let r = run_as::<f64>(&g, &inputs(&NO_BATCH, 4, 9, 2, 7), &Options::default()).unwrap();
    assert_eq!(r.values.unwrap().shape, vec![4, 2]);
    assert!(r.indices.is_none());
}

/// Empty reductions (no row on the reduced side): the results documented in
/// reduction.rs: Sum 0, LogSumExp -inf, SumSoftMaxWeight NaN, Min +inf, Max -inf,
/// indices -1. KMin needs K <= number of rows, so it is an error here.
#[test]
fn empty_reductions() {
    for axis in [1, 0] {
        let (n, m) = if axis == 1 { (4, 0) } else { (0, 4) };
        let inp = inputs(&NO_BATCH, n, m, 1, 8);
        let expect: Vec<(Reduction, Option<f64>, Option<i64>)> = vec![
            (Reduction::Sum, Some(0.0), None),
            (Reduction::LogSumExp, Some(f64::NEG_INFINITY), None),
            (Reduction::Min, Some(f64::INFINITY), None),
            (Reduction::Max, Some(f64::NEG_INFINITY), None),
            (Reduction::ArgMin, None, Some(-1)),
            (Reduction::ArgMax, None, Some(-1)),
            (Reduction::MinArgMin, Some(f64::INFINITY), Some(-1)),
            (Reduction::MaxArgMax, Some(f64::NEG_INFINITY), Some(-1)),
        ];
        for (red, v, i) in expect {
            let g = Genred::new(GAUSS, &aliases(1), red, axis).unwrap();
            for (kname, opts) in kernels() {
                let ctx = format!("empty {red:?} axis {axis} [{kname}]");
                let r = run_as::<f32>(&g, &inp, &opts).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                check_empty(&r, v, i, &ctx);
                let r = run_as::<f64>(&g, &inp, &opts).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                check_empty(&r, v, i, &ctx);
            }
            let r = reference::reduce(&g, &inp.args_f64()).unwrap();
            check_empty(&r, v, i, &format!("oracle empty {red:?} axis {axis}"));
        }
        // Weighted: SumSoftMaxWeight 0/0 = NaN, weighted LogSumExp -inf.
        for (red, v) in [
            (Reduction::SumSoftMaxWeight, f64::NAN),
            (Reduction::LogSumExp, f64::NEG_INFINITY),
        ] {
            let g = Genred::with_weight("-SqDist(x,y)", "b", &aliases(1), red, axis).unwrap();
            let r = run_as::<f32>(&g, &inp, &Options::default()).unwrap();
            check_empty(
                &r,
                Some(v),
                None,
                &format!("empty weighted {red:?} axis {axis}"),
            );
        }
        // The K-min family: K = 1 > 0 rows is an error, not a panic.
        for red in [
            Reduction::KMin(1),
            Reduction::ArgKMin(1),
            Reduction::KMinArgKMin(1),
        ] {
            let g = Genred::new(GAUSS, &aliases(1), red, axis).unwrap();
            let e = run_as::<f32>(&g, &inp, &Options::default()).unwrap_err();
            assert!(matches!(e, KeopsError::Reduction { .. }), "{e:?}");
        }
    }
}

fn check_empty<T: Element>(r: &Reduced<T>, v: Option<f64>, i: Option<i64>, ctx: &str) {
    match (v, &r.values) {
        (Some(v), Some(a)) => {
            assert_eq!(a.shape, vec![4, 1], "{ctx}");
            for x in &a.data {
                let x = x.to_f64();
                assert!(
                    x == v || (x.is_nan() && v.is_nan()),
                    "{ctx}: got {x}, want {v}"
                );
            }
        }
        (None, None) => {}
        _ => panic!("{ctx}: values present: {}", r.values.is_some()),
    }
    match (i, &r.indices) {
        (Some(i), Some(a)) => {
            assert_eq!(a.shape, vec![4, 1], "{ctx}");
            assert!(
                a.data.iter().all(|&x| x == i),
                "{ctx}: got {:?}, want {i}",
                a.data
            );
        }
        (None, None) => {}
        _ => panic!("{ctx}: indices present: {}", r.indices.is_some()),
    }
}

/// No output row at all (N = 0 with axis 1): empty outputs of the right shape.
#[test]
fn no_output_rows() {
    let inp = inputs(&NO_BATCH, 0, 5, 1, 9);
    for red in reductions() {
        if red == Reduction::SumSoftMaxWeight {
            continue;
        }
        let g = Genred::new(GAUSS, &aliases(1), red, 1).unwrap();
        let r =
            run_as::<f32>(&g, &inp, &Options::default()).unwrap_or_else(|e| panic!("{red:?}: {e}"));
        let (sv, si) = expected_shapes(&[], 0, red, 1, None);
        assert_eq!(r.values.as_ref().map(|a| a.shape.clone()), sv, "{red:?}");
        assert_eq!(r.indices.as_ref().map(|a| a.shape.clone()), si, "{red:?}");
        assert!(r.values.map(|a| a.data.is_empty()).unwrap_or(true));
    }
}

/// NaN and infinities: a NaN in one `y` row makes every Sum and LogSumExp over j NaN
/// (axis 1) and exactly that output NaN (axis 0); Min/ArgMin never select NaN; an infinite `y` row
/// makes `Sum SqDist` infinite and is the minimum of `-SqDist`.
#[test]
fn nan_and_inf_propagation() {
    let (n, m) = (40, 300);
    let bad = 123;
    // A NaN whose float32 payload has low bits set: an exponential that adds k to the
    // exponent field as an integer would make a number of it.
    let payload = f64::from_bits(0x7ff8_003f_e000_0000);
    assert_eq!(
        (std::hint::black_box(payload) as f32).to_bits(),
        0x7fc0_01ff
    );
    for (what, val) in [
        ("NaN", f64::NAN),
        ("NaN with a payload", payload),
        ("+inf", f64::INFINITY),
    ] {
        let mut inp = inputs(&NO_BATCH, n, m, 1, 21);
        for c in 0..3 {
            inp.data[1][bad * 3 + c] = val;
        }
        for (formula, red) in [
            (GAUSS, Reduction::Sum),
            ("SqDist(x,y)", Reduction::Sum),
            ("SqDist(x,y)", Reduction::Min),
            ("SqDist(x,y)", Reduction::MinArgMin),
            ("-SqDist(x,y)", Reduction::MinArgMin),
            ("SqDist(x,y)", Reduction::ArgKMin(5)),
            ("SqDist(x,y)", Reduction::Max),
            ("-SqDist(x,y)", Reduction::LogSumExp),
        ] {
            for axis in [1, 0] {
                let g = Genred::new(formula, &aliases(1), red, axis).unwrap();
                let want = reference::reduce(&g, &inp.args_f64()).unwrap();
                let ctx = format!("{what} in y row {bad}: {red:?}({formula}) axis {axis}");
                let ones = vec![1.0; want.values.as_ref().map(|v| v.data.len()).unwrap_or(0)];
                for (kname, opts) in kernels() {
                    let got = run_as::<f64>(&g, &inp, &opts).unwrap();
                    check_values(
                        &got,
                        &want,
                        Some(&ones),
                        TOL_F64,
                        &format!("{ctx} [{kname}, f64]"),
                    );
                    check_indices_exact(&got, &want, &format!("{ctx} [{kname}, f64]"));
                    // Flushing subnormals (fast_math) takes other exponentials.
                    for fast_math in [false, true] {
                        let opts = Options {
                            fast_math,
                            ..opts.clone()
                        };
                        let got = run_as::<f32>(&g, &inp, &opts).unwrap();
                        check_values(
                            &got,
                            &want,
                            Some(&ones),
                            TOL_F32,
                            &format!("{ctx} [{kname}, f32, fast_math {fast_math}]"),
                        );
                    }
                }
                // The documented behaviour, spelled out on the oracle's results.
                let v = want.values.as_ref().map(|a| &a.data);
                match (what, red, formula, axis) {
                    (w, Reduction::Sum | Reduction::LogSumExp, _, 1) if w.starts_with("NaN") => {
                        assert!(v.unwrap().iter().all(|x| x.is_nan()), "{ctx}")
                    }
                    (w, Reduction::Sum | Reduction::LogSumExp, _, 0) if w.starts_with("NaN") => {
                        for (j, x) in v.unwrap().iter().enumerate() {
                            assert_eq!(x.is_nan(), j == bad, "{ctx}: output {j}");
                        }
                    }
                    ("NaN", Reduction::Min | Reduction::MinArgMin, _, 1) => {
                        assert!(v.unwrap().iter().all(|x| x.is_finite()), "{ctx}");
                        if let Some(i) = &want.indices {
                            assert!(i.data.iter().all(|&j| j != bad as i64), "{ctx}");
                        }
                    }
                    ("+inf", Reduction::Sum, "SqDist(x,y)", 1) => {
                        assert!(v.unwrap().iter().all(|&x| x == f64::INFINITY), "{ctx}")
                    }
                    ("+inf", Reduction::Sum, GAUSS, 1) => {
                        assert!(v.unwrap().iter().all(|x| x.is_finite()), "{ctx}")
                    }
                    ("+inf", Reduction::MinArgMin, "-SqDist(x,y)", 1) => {
                        assert!(v.unwrap().iter().all(|&x| x == f64::NEG_INFINITY), "{ctx}");
                        assert!(
                            want.indices
                                .as_ref()
                                .unwrap()
                                .data
                                .iter()
                                .all(|&j| j == bad as i64),
                            "{ctx}"
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

/// LogSumExp of a formula that is +inf at one pair: the oracle gives +inf (exp(+inf)
/// dominates); the engine must agree (and not produce inf - inf = NaN).
#[test]
fn logsumexp_with_infinite_value() {
    let (n, m) = (5, 300);
    let bad = 200;
    let mut inp = inputs(&NO_BATCH, n, m, 1, 22);
    for c in 0..3 {
        inp.data[1][bad * 3 + c] = f64::INFINITY;
    }
    let g = Genred::new("SqDist(x,y)", &aliases(1), Reduction::LogSumExp, 1).unwrap();
    let want = reference::reduce(&g, &inp.args_f64()).unwrap();
    assert!(want
        .values
        .as_ref()
        .unwrap()
        .data
        .iter()
        .all(|&x| x == f64::INFINITY));
    for (kname, opts) in kernels() {
        let got = run_as::<f64>(&g, &inp, &opts).unwrap();
        assert_eq!(
            got.values.unwrap().data,
            want.values.as_ref().unwrap().data,
            "[{kname}]: LogSumExp with a +inf term"
        );
    }
}

/// K larger than the number of reduced rows is an error, not a panic.
#[test]
fn k_larger_than_m_is_an_error() {
    let inp = inputs(&NO_BATCH, 4, 3, 1, 30);
    for red in [
        Reduction::KMin(5),
        Reduction::ArgKMin(4),
        Reduction::KMinArgKMin(5),
    ] {
        let g = Genred::new("SqDist(x,y)", &aliases(1), red, 1).unwrap();
        let e = run_as::<f32>(&g, &inp, &Options::default()).unwrap_err();
        match &e {
            KeopsError::Reduction { msg, .. } => {
                let k = red.k().unwrap();
                assert!(
                    msg.contains(&format!("K = {k}")) && msg.contains('3'),
                    "{e}"
                );
            }
            _ => panic!("{red:?}: {e:?}"),
        }
    }
    // K = M is fine.
    let g = Genred::new("SqDist(x,y)", &aliases(1), Reduction::ArgKMin(3), 1).unwrap();
    let r = run_as::<f64>(&g, &inp, &Options::default()).unwrap();
    let want = reference::reduce(&g, &inp.args_f64()).unwrap();
    check_indices_exact(&r, &want, "K = M");
}

/// A float32 Gaussian sum over 10^6 terms (4 output rows) against an f64 sum computed
/// here, with each summation scheme.
#[test]
fn float32_accuracy_of_long_sums() {
    // 8 rows: enough for the CPU engine's GEMM on the 8 columns of weights below.
    let (n, m) = (8usize, 1_000_000usize);
    let mut r = Rng::new(40);
    let x: Vec<f32> = (0..n * 3).map(|_| r.uniform(-0.5, 0.5) as f32).collect();
    let y: Vec<f32> = (0..m * 3).map(|_| r.uniform(-1.0, 1.0) as f32).collect();
    let b: Vec<f32> = (0..m).map(|_| r.uniform(0.0, 1.0) as f32).collect();
    // Oracle in f64 (compensated sum) on the same f32 data.
    let want: Vec<f64> = (0..n)
        .map(|i| {
            let (mut s, mut c) = (0.0f64, 0.0f64);
            for j in 0..m {
                let d2: f64 = (0..3)
                    .map(|k| (x[i * 3 + k] as f64 - y[j * 3 + k] as f64).powi(2))
                    .sum();
                let t = (-d2).exp() * b[j] as f64 - c;
                let u = s + t;
                c = (u - s) - t;
                s = u;
            }
            s
        })
        .collect();
    let g = Genred::new(
        "Exp(-SqDist(x,y)) * b",
        &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"],
        Reduction::Sum,
        1,
    )
    .unwrap();
    let args = [
        Arg::new(&x, [n, 3]),
        Arg::new(&y, [m, 3]),
        Arg::new(&b, [m, 1]),
    ];
    // The same sums as 8 columns of weights (GEMM on the CPU engine): b, 2b, ..., 8b.
    let wide = Genred::new(
        "Exp(-SqDist(x,y)) * b",
        &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,8)"],
        Reduction::Sum,
        1,
    )
    .unwrap();
    let b8: Vec<f32> = b
        .iter()
        .flat_map(|&v| (1..=8).map(move |c| v * c as f32))
        .collect();
    let wide_args = [
        Arg::new(&x, [n, 3]),
        Arg::new(&y, [m, 3]),
        Arg::new(&b8, [m, 8]),
    ];
    let schemes = [
        ("default (block sum)", Options::default()),
        (
            "Kahan",
            Options {
                sum_scheme: SumScheme::Kahan,
                ..Default::default()
            },
        ),
        (
            "Direct",
            Options {
                sum_scheme: SumScheme::Direct,
                ..Default::default()
            },
        ),
        (
            "dtype_acc Float64",
            Options {
                dtype_acc: AccType::Float64,
                ..Default::default()
            },
        ),
        (
            "Direct + Float64",
            Options {
                sum_scheme: SumScheme::Direct,
                dtype_acc: AccType::Float64,
                ..Default::default()
            },
        ),
    ];
    // The floor: the error of the exact result rounded to f32 (the output type).
    let floor = want
        .iter()
        .map(|&w| ((w as f32 as f64 - w) / w).abs())
        .fold(0.0f64, f64::max);
    println!(
        "float32 Gaussian sum, M = 10^6: rounding the f64 result to f32 alone gives {floor:.3e}"
    );
    let mut failures = Vec::new();
    for (name, opts) in schemes {
        for kernel in [CpuKernel::Auto, CpuKernel::TileProgram] {
            let opts = Options {
                kernel,
                ..opts.clone()
            };
            for (width, g, args) in [(1, &g, &args[..]), (8, &wide, &wide_args[..])] {
                let t = std::time::Instant::now();
                let got = g.call_with(args, &opts).unwrap().values.unwrap().data;
                // Column c holds (c + 1) times the sum.
                let errs: Vec<f64> = got
                    .iter()
                    .enumerate()
                    .map(|(k, &g)| {
                        let w = want[k / width] * (k % width + 1) as f64;
                        ((g as f64 - w) / w).abs()
                    })
                    .collect();
                let err = errs.iter().fold(0.0f64, |a, &b| a.max(b));
                println!(
                    "float32 Gaussian sum, M = 10^6, weights of width {width}, {name}, kernel \
                     {kernel:?}: max relative error {err:.3e} ({:?})",
                    t.elapsed()
                );
                // Written so that a NaN error fails too.
                if err.is_nan() || err > 1e-5 {
                    failures.push(format!("{name} {kernel:?} width {width}: {err:e}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "relative errors above 1e-5: {failures:?}"
    );
}

/// `threads: Some(1)`, `Some(2)` and the default pool give identical results when the
/// reduced axis is not split (many output rows).
#[test]
fn threads_give_the_same_results() {
    let inp = inputs(&NO_BATCH, 300, 257, 2, 50);
    for red in [
        Reduction::Sum,
        Reduction::LogSumExp,
        Reduction::ArgMin,
        Reduction::KMinArgKMin(5),
    ] {
        let g = Genred::new(GAUSS, &aliases(2), red, 1).unwrap();
        same_results_on_threads(&g, &inp, &[Some(2), None], &format!("{red:?}"));
    }
}

/// Runs `g` in float32 and float64 with one thread and with each of `threads`: the
/// results are equal bit for bit. Returns the one-thread float64 result.
fn same_results_on_threads(
    g: &Genred,
    inp: &Inputs,
    threads: &[Option<usize>],
    ctx: &str,
) -> Reduced<f64> {
    let run = |threads| {
        let opts = Options {
            threads,
            ..Default::default()
        };
        (
            run_as::<f32>(g, inp, &opts).unwrap(),
            run_as::<f64>(g, inp, &opts).unwrap(),
        )
    };
    let (a32, a64) = run(Some(1));
    for &t in threads {
        let (b32, b64) = run(t);
        assert_eq!(a32, b32, "{ctx} f32: threads Some(1) vs {t:?}");
        assert_eq!(a64, b64, "{ctx} f64: threads Some(1) vs {t:?}");
    }
    a64
}

/// Few output rows and a long reduced axis: the engine splits the reduced axis into
/// chunks whose partial states are combined. Results must match the oracle for Sum,
/// LogSumExp, ArgMin and ArgKMin, with 1 and 2 threads, both axes.
/// Wide points and weights take blocks of up to 256 rows per job, fewer as threads grow
/// (4 jobs per thread): results do not depend on the block, bit for bit, and match the
/// oracle. 1,000 rows: 224 rows per job on one thread, 96 on two, 64 on three.
#[test]
fn wide_row_blocks_give_the_same_results() {
    let (n, m, d) = (1000, 300, 64);
    let mut r = Rng::new(94);
    let mut inp = Inputs::new();
    inp.push(&[n, d], || r.uniform(-1.0, 1.0))
        .push(&[m, d], || r.uniform(-1.0, 1.0))
        .push(&[m, 16], || r.uniform(-1.0, 1.0));
    let al = [
        format!("x = Vi(0,{d})"),
        format!("y = Vj(1,{d})"),
        "b = Vj(2,16)".to_string(),
    ];
    for (f, red) in [
        ("SqDist(x,y)", Reduction::KMinArgKMin(5)),
        ("Exp(-SqDist(x,y) / 64) * b", Reduction::Sum),
        ("Cos(SqDist(x,y) / 64) * b", Reduction::Sum),
    ] {
        let g = Genred::new(f, &al, red, 1).unwrap();
        let want = reference::reduce(&g, &inp.args_f64()).unwrap();
        let ctx = format!("{red:?}({f})");
        let got = same_results_on_threads(&g, &inp, &[Some(2), Some(3), None], &ctx);
        // Sums of up to 300 terms of magnitude up to 1 (with cancellation).
        let scale = vec![m as f64; want.values.as_ref().map_or(0, |v| v.data.len())];
        check_values(&got, &want, Some(&scale), TOL_F64, &ctx);
        check_indices_exact(&got, &want, &ctx);
    }
}

#[test]
fn split_reduced_axis() {
    let big = 50_000;
    for axis in [1, 0] {
        let (n, m) = if axis == 1 { (3, big) } else { (big, 3) };
        for (formula, red) in [
            (GAUSS, Reduction::Sum),
            (GAUSS, Reduction::LogSumExp),
            ("SqDist(x,y)", Reduction::ArgMin),
            ("SqDist(x,y)", Reduction::ArgKMin(5)),
            ("SqDist(x,y)", Reduction::KMinArgKMin(5)),
            ("-SqDist(x,y)", Reduction::MaxArgMax),
            (GAUSS, Reduction::KMinArgKMin(5)),
            (GAUSS, Reduction::MinArgMin),
        ] {
            let inp = inputs(&NO_BATCH, n, m, 2, 60);
            let g = Genred::new(formula, &aliases(2), red, axis).unwrap();
            let want = reference::reduce(&g, &inp.args_f64()).unwrap();
            let scale = value_scale(&g, &inp, &want);
            for threads in [Some(1), Some(2), None] {
                let opts = Options {
                    threads,
                    ..Default::default()
                };
                let ctx = format!("split {red:?}({formula}) axis {axis}, threads {threads:?}");
                let got = check_dtype::<f64>(&g, &inp, &want, &scale, &opts, &ctx);
                check_indices_exact(&got, &want, &ctx);
                let got = check_dtype::<f32>(&g, &inp, &want, &scale, &opts, &ctx);
                check_indices_near(&got, &want, &g, &inp, &ctx);
            }
        }
    }
    // Weighted reductions, split.
    for red in [Reduction::LogSumExp, Reduction::SumSoftMaxWeight] {
        for axis in [1, 0] {
            let (n, m) = if axis == 1 { (3, big) } else { (big, 3) };
            let mut al = aliases(2);
            if axis == 0 {
                al[2] = "b = Vi(2,2)".into();
            }
            let g = Genred::with_weight("-SqDist(x,y) * g", "b", &al, red, axis).unwrap();
            let mut r = Rng::new(62);
            let mut inp = Inputs::new();
            inp.push(&[n, 3], || r.uniform(-1.0, 1.0))
                .push(&[m, 3], || r.uniform(-1.0, 1.0))
                .push(&[if axis == 1 { m } else { n }, 2], || r.uniform(0.05, 1.0))
                .push(&[1], || r.uniform(0.5, 2.0));
            let want = reference::reduce(&g, &inp.args_f64()).unwrap();
            let ones = vec![1.0; want.values.as_ref().unwrap().data.len()];
            for threads in [Some(1), Some(2)] {
                let opts = Options {
                    threads,
                    ..Default::default()
                };
                let ctx = format!("split weighted {red:?} axis {axis} threads {threads:?}");
                check_dtype::<f64>(&g, &inp, &want, &ones, &opts, &ctx);
                check_dtype::<f32>(&g, &inp, &want, &ones, &opts, &ctx);
            }
        }
    }
    // With a batch: 2 entries of 3 rows each.
    let batch = &BATCHES[1];
    let inp = inputs(batch, 3, 20_000, 1, 61);
    for red in [Reduction::Sum, Reduction::ArgKMin(5)] {
        let g = Genred::new(GAUSS, &aliases(1), red, 1).unwrap();
        check_case(&g, &inp, batch.out, &format!("split with batch, {red:?}"));
    }
}

/// The fused radial kernels (Gauss, Laplace, Cauchy, inverse multiquadric, with scalar
/// coefficients of parameters and constants, negations, divisions by scalars, weights
/// of dimension 1, 2 or 3, or none): `CpuKernel::Fused` must accept them and agree with
/// the oracle, both axes, with batch dims, f32 and f64, every summation scheme.
#[test]
fn fused_radial_kernels_match_the_oracle() {
    let formulas = [
        "Exp(-SqDist(x,y) * g) * b",
        "Exp(-g * SqDist(y,x)) * b",
        "b * Exp(SqDist(x,y) / (-g)) * 2",
        "-Exp(-SqNorm2(x - y) * g) / g * b",
        "Exp(-SqDist(x,y))",
        "Exp(-SqDist(x,y)) * y",
        "Exp(-Sqrt(SqDist(x,y)) * g) * b",
        "Exp(-Norm2(x - y)) * b",
        "Inv(1 + g * SqDist(x,y)) * b",
        "Inv(SqDist(x,y) * g + 1)",
        "Rsqrt(1 + SqDist(x,y) * g) * b",
        "b / g * Rsqrt(SqDist(x,y) / 3 + 1)",
    ];
    let schemes = [
        Options::default(),
        Options {
            sum_scheme: SumScheme::Kahan,
            ..Default::default()
        },
        Options {
            sum_scheme: SumScheme::Direct,
            ..Default::default()
        },
        Options {
            dtype_acc: AccType::Float64,
            ..Default::default()
        },
    ];
    let mut n_checked = 0;
    for bd in [1, 2] {
        for f in formulas {
            for axis in [1, 0] {
                // The weight lives on the reduced side: Vj for axis 1, Vi for axis 0.
                let mut al = aliases(bd);
                if axis == 0 {
                    al[2] = format!("b = Vi(2,{bd})");
                }
                // A point used as the weight must be on the reduced side too.
                let f = if axis == 0 {
                    f.replace(") * y", ") * x")
                } else {
                    f.to_string()
                };
                let f = f.as_str();
                let g = Genred::new(f, &al, Reduction::Sum, axis).unwrap();
                for (batch, n, m) in [
                    (&NO_BATCH, 37, 300),
                    (&NO_BATCH, 1, 1),
                    (&BATCHES[4], 5, 19),
                    (&BATCHES[3], 3, 7),
                ] {
                    let mut inp = inputs(batch, n, m, bd, 70);
                    if axis == 0 {
                        let mut r = Rng::new(71);
                        inp.data[2] = (0..inp.data[0].len() / 3 * bd)
                            .map(|_| r.uniform(0.05, 1.0))
                            .collect();
                        inp.shapes[2] = cat(batch.x, &[n, bd]);
                    }
                    let want = reference::reduce(&g, &inp.args_f64()).unwrap();
                    let scale = sum_magnitude(&g, &inp);
                    for opts in schemes.iter().cloned() {
                        let opts = Options {
                            kernel: CpuKernel::Fused,
                            ..opts
                        };
                        let ctx = format!(
                            "fused {f} (b dim {bd}) axis {axis}, N={n}, M={m}, {}, {opts:?}",
                            batch.name
                        );
                        let r64 = run_as::<f64>(&g, &inp, &opts);
                        let r32 = run_as::<f32>(&g, &inp, &opts);
                        let r64 = r64.unwrap_or_else(|e| panic!("{ctx}: no fused kernel: {e}"));
                        check_values(&r64, &want, Some(&scale), TOL_F64, &format!("{ctx}, f64"));
                        let r32 = r32.unwrap_or_else(|e| panic!("{ctx}: no fused kernel: {e}"));
                        check_values(&r32, &want, Some(&scale), TOL_F32, &format!("{ctx}, f32"));
                        n_checked += 1;
                    }
                }
            }
        }
    }
    println!("{n_checked} fused runs checked");
}

/// Formulas that look like radial kernel sums but are not: the default options must
/// still give the oracle's results (through the tile program), and `CpuKernel::Fused`
/// must either refuse them or agree too.
#[test]
fn near_miss_formulas_are_not_misfused() {
    let al = [
        "x = Vi(0,3)",
        "y = Vj(1,3)",
        "b = Vj(2,1)",
        "g = Pm(3,1)",
        "a = Vi(4,1)",
        "c = Vj(5,1)",
        "z = Vj(6,2)",
        "q = Pm(7,3)",
    ];
    let formulas = [
        "Exp(-SqDist(x,y)) * a",
        "a * Exp(-SqDist(x,y))",
        "Exp(-SqDist(x,y) * a) * b",
        "Exp(-SqDist(x,y) * c)",
        "Exp(-SqDist(x,y)) * b * c",
        "Exp(-SqDist(x,y)) * (b + 1)",
        "Exp(-SqDist(x,y) + g) * b",
        "Exp(-SqDist(x,y) - SqDist(x,y)) * b",
        "Exp(-SqDist(x,q)) * b",
        "Exp(-SqDist(Extract(z,0,1),Extract(x,0,1))) * b",
        "Exp(-SqDist(x,y) * q)",
        "Exp(-SqDist(x,y)) * Exp(-SqDist(x,y))",
        "Exp(-SqDist(x,y) * g) / b",
        "Exp(-SqDist(x,y) * g) / (b * 0 + g)",
        "Exp(-Sqrt(SqDist(x,y) * g)) * b",
        "Inv(2 + SqDist(x,y)) * b",
        "Inv(13 - SqDist(x,y)) * b",
        "Rsqrt(SqDist(x,y)) * b",
        "Sqrt(1 + SqDist(x,y)) * b",
        "Exp(-SqDist(x,y)) * z",
        "Exp(-SqDist(y,y)) * b",
        "Exp(-SqNorm2(x + y)) * b",
        "Exp(-SqDist(x,y)) * g * b * g",
        "Inv(1 + a * SqDist(x,y)) * b",
    ];
    let (n, m) = (37, 300);
    let mut r = Rng::new(80);
    let mut inp = Inputs::new();
    inp.push(&[n, 3], || r.uniform(-1.0, 1.0))
        .push(&[m, 3], || r.uniform(-1.0, 1.0))
        .push(&[m, 1], || r.uniform(0.05, 1.0))
        .push(&[1], || r.uniform(0.5, 2.0))
        .push(&[n, 1], || r.uniform(0.05, 1.0))
        .push(&[m, 1], || r.uniform(0.05, 1.0))
        .push(&[m, 2], || r.uniform(-1.0, 1.0))
        .push(&[3], || r.uniform(0.5, 2.0));
    for f in formulas {
        for axis in [1, 0] {
            let g =
                Genred::new(f, &al, Reduction::Sum, axis).unwrap_or_else(|e| panic!("{f}: {e}"));
            let want = reference::reduce(&g, &inp.args_f64()).unwrap();
            let scale = sum_magnitude(&g, &inp);
            for kernel in [CpuKernel::Auto, CpuKernel::Fused] {
                let opts = Options {
                    kernel,
                    ..Default::default()
                };
                let ctx = format!("{f} axis {axis} {kernel:?}");
                match run_as::<f64>(&g, &inp, &opts) {
                    Ok(r) => {
                        check_values(&r, &want, Some(&scale), TOL_F64, &ctx);
                        let r = run_as::<f32>(&g, &inp, &opts).unwrap();
                        check_values(&r, &want, Some(&scale), TOL_F32, &format!("{ctx} f32"));
                    }
                    Err(e) => {
                        assert_eq!(kernel, CpuKernel::Fused, "{ctx}: {e}");
                        assert!(
                            matches!(&e, KeopsError::Option { name, .. } if name == "kernel"),
                            "{ctx}: {e:?}"
                        );
                    }
                }
            }
        }
    }
}

/// LogSumExp where the reduced axis holds -inf values (j < 20000), then NaN values
/// (j < 25000), then finite values: the NaN must propagate (as it does in the oracle)
/// however the reduced axis is split into chunks, i.e. whatever the number of threads.
/// (When the reduced axis is split in chunks whose boundaries include 25000, e.g. 2, 4,
/// 8 or 16 chunks, a chunk holds only -inf and NaN values after chunks holding only -inf
/// values: the combination of two partial states whose maxima are both -inf must keep
/// the NaN of the second.)
#[test]
fn logsumexp_nan_survives_the_split() {
    let (n, m) = (3, 50_000);
    let mut r = Rng::new(90);
    let mut inp = Inputs::new();
    inp.push(&[n, 1], || r.uniform(0.5, 1.0));
    // log(0) = -inf, log(-1) = NaN.
    let b: Vec<f64> = (0..m)
        .map(|j| {
            if j < 20_000 {
                0.0
            } else if j < 25_000 {
                -1.0
            } else {
                r.uniform(0.5, 1.0)
            }
        })
        .collect();
    inp.push_data(&[m, 1], b);
    let g = Genred::new(
        "Log(b) * a",
        &["a = Vi(0,1)", "b = Vj(1,1)"],
        Reduction::LogSumExp,
        1,
    )
    .unwrap();
    let want = reference::reduce(&g, &inp.args_f64()).unwrap();
    assert!(
        want.values
            .as_ref()
            .unwrap()
            .data
            .iter()
            .all(|x| x.is_nan()),
        "oracle: {want:?}"
    );
    let mut bad = Vec::new();
    for threads in [Some(1), Some(2), Some(4), Some(8)] {
        let opts = Options {
            threads,
            ..Default::default()
        };
        let got = run_as::<f64>(&g, &inp, &opts).unwrap().values.unwrap().data;
        if !got.iter().all(|x| x.is_nan()) {
            bad.push(format!("threads {threads:?}: got {got:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "LogSumExp lost a NaN (oracle: NaN): {bad:?}"
    );
}

/// Formulas that do not depend on the reduced side (the root is broadcast over the
/// tile), and sides with no variable at all (one row, as in KeOps).
#[test]
fn formulas_independent_of_a_side() {
    let al = [
        "x = Vi(0,3)",
        "y = Vj(1,3)",
        "a = Vi(2,1)",
        "b = Vj(3,1)",
        "g = Pm(4,1)",
    ];
    let mut r = Rng::new(91);
    let (n, m) = (5, 7);
    let mut inp = Inputs::new();
    inp.push(&[n, 3], || r.uniform(-1.0, 1.0))
        .push(&[m, 3], || r.uniform(-1.0, 1.0))
        .push(&[n, 1], || r.uniform(-1.0, 1.0))
        .push(&[m, 1], || r.uniform(-1.0, 1.0))
        .push(&[], || r.uniform(0.5, 1.0)); // a scalar parameter given with shape []
    for f in ["a", "x * g", "Exp(a) + g", "g", "3", "b * g", "Sin(y)"] {
        for red in reductions() {
            for axis in [1, 0] {
                let n_red = if axis == 1 { m } else { n };
                let g = if red == Reduction::SumSoftMaxWeight {
                    Genred::with_weight("a * 0.5", f, &al, red, axis).unwrap()
                } else if red.k().is_some_and(|k| k > n_red) {
                    continue;
                } else {
                    Genred::new(f, &al, red, axis).unwrap()
                };
                check_case(&g, &inp, &[], &format!("{red:?}({f}) axis {axis}"));
            }
        }
    }
    // No Vi variable at all: one output row for axis 1, one reduced row for axis 0.
    let al = ["y = Vj(0,3)", "b = Vj(1,1)"];
    let mut inp = Inputs::new();
    inp.push(&[m, 3], || r.uniform(-1.0, 1.0))
        .push(&[m, 1], || r.uniform(-1.0, 1.0));
    for (axis, shape) in [(1, vec![1, 1]), (0, vec![m, 1])] {
        let g = Genred::new("Exp(-SqNorm2(y)) * b", &al, Reduction::Sum, axis).unwrap();
        let got = run_as::<f64>(&g, &inp, &Options::default()).unwrap();
        assert_eq!(got.values.as_ref().unwrap().shape, shape);
        let want = reference::reduce(&g, &inp.args_f64()).unwrap();
        check_values(
            &got,
            &want,
            None,
            TOL_F64,
            &format!("no Vi variable, axis {axis}"),
        );
    }
}

/// High dimensions (small tiles, large registers) for every reduction.
#[test]
fn high_dimensions() {
    let d = 200;
    let al = [
        format!("x = Vi(0,{d})"),
        format!("y = Vj(1,{d})"),
        "b = Vj(2,1)".to_string(),
    ];
    let mut r = Rng::new(92);
    let (n, m) = (9, 300);
    let mut inp = Inputs::new();
    inp.push(&[n, d], || r.uniform(-1.0, 1.0))
        .push(&[m, d], || r.uniform(-1.0, 1.0))
        .push(&[m, 1], || r.uniform(0.05, 1.0));
    for f in [
        format!("Exp(-SqDist(x,y) / {d}) * (x - y)"),
        format!("Exp(-SqDist(x,y) / {d}) * b"),
    ] {
        for red in reductions() {
            let g = if red == Reduction::SumSoftMaxWeight {
                Genred::with_weight("-SqDist(x,y) / 50", "x - y", &al, red, 1).unwrap()
            } else {
                Genred::new(&f, &al, red, 1).unwrap()
            };
            check_case(&g, &inp, &[], &format!("{red:?}({f}) D = {d}"));
        }
    }
}

/// Exact ties resolve to the smallest index (reduction.rs: "ties resolve to the smallest
/// index", "equal values keep the earlier index first"), also when the tied rows fall in
/// different tiles and in different chunks of a split reduced axis.
#[test]
fn ties_resolve_to_the_smallest_index() {
    let (n, m) = (3, 50_000);
    let mut r = Rng::new(93);
    let mut inp = Inputs::new();
    inp.push(&[n, 3], || r.uniform(-1.0, 1.0));
    inp.push(&[m, 3], || r.uniform(-1.0, 1.0));
    // Copies of each query point at several positions (exact zeros of SqDist), and
    // copies of another row further on.
    let copies = [100usize, 101, 7_000, 31_000, 49_990];
    for i in 0..n {
        for &j in &copies {
            let j = j + 3 * i;
            let row: Vec<f64> = inp.data[0][i * 3..i * 3 + 3].to_vec();
            inp.data[1][j * 3..j * 3 + 3].copy_from_slice(&row);
        }
    }
    let al = ["x = Vi(0,3)", "y = Vj(1,3)"];
    for (f, red) in [
        ("SqDist(x,y)", Reduction::ArgMin),
        ("SqDist(x,y)", Reduction::MinArgMin),
        ("-SqDist(x,y)", Reduction::ArgMax),
        ("-SqDist(x,y)", Reduction::MaxArgMax),
        ("SqDist(x,y)", Reduction::ArgKMin(4)),
        ("SqDist(x,y)", Reduction::KMinArgKMin(7)),
        ("Step(-SqDist(x,y))", Reduction::ArgMax),
        ("Step(-SqDist(x,y))", Reduction::ArgKMin(2)),
    ] {
        let g = Genred::new(f, &al, red, 1).unwrap();
        let want = reference::reduce(&g, &inp.args_f64()).unwrap();
        // The oracle itself picks the first copies.
        if red.k().is_none() && f.starts_with('S') {
            let idx = &want.indices.as_ref().unwrap().data;
            for (i, &j) in idx.iter().enumerate() {
                assert_eq!(j, 100 + 3 * i as i64, "oracle {red:?}({f}) row {i}");
            }
        }
        for threads in [Some(1), Some(2), None] {
            for kernel in [CpuKernel::TileProgram, CpuKernel::Auto] {
                let opts = Options {
                    threads,
                    kernel,
                    ..Default::default()
                };
                let ctx = format!("ties {red:?}({f}) threads {threads:?} {kernel:?}");
                let got = run_as::<f64>(&g, &inp, &opts).unwrap();
                check_indices_exact(&got, &want, &ctx);
                let got = run_as::<f32>(&g, &inp, &opts).unwrap();
                check_indices_exact(&got, &want, &format!("{ctx} f32"));
            }
        }
    }
}

#[test]
fn high_dimensional_distances_and_scalar_products() {
    // D >= 8 takes the register-chunked loop (64 lanes at a time, a remainder after
    // them); the per-row vector is either operand and either side; tiles of 240 lanes
    // (M = 300) and short ones (M = 37) both cross a chunk boundary. Scalar products
    // are GEMMs for blocks of 8 rows and more (32 and 5 rows for N = 37).
    let mut rng = Rng::new(11);
    for d in [8, 13, 64] {
        for (n, m) in [(37, 300), (300, 37)] {
            let mut inp = Inputs::new();
            inp.push(&[n, d], || rng.uniform(-1.0, 1.0));
            inp.push(&[m, d], || rng.uniform(-1.0, 1.0));
            let aliases = [format!("x = Vi(0,{d})"), format!("y = Vj(1,{d})")];
            let aliases: Vec<&str> = aliases.iter().map(String::as_str).collect();
            for (f, red) in [
                ("SqDist(x,y)", Reduction::ArgKMin(5)),
                ("SqDist(y,x)", Reduction::Min),
                // A one-coordinate operand broadcast against the row's vector.
                ("SqDist(x, Elem(y, 2))", Reduction::ArgKMin(3)),
                ("Scalprod(x,y)", Reduction::Sum),
                ("Scalprod(y,x)", Reduction::Max),
                // A block of rows' scalar products with a tile as one GEMM, inside a
                // larger formula and as attention's logits.
                ("Exp(Scalprod(x,y) / 8) * Elem(y, 0)", Reduction::Sum),
                ("Scalprod(x,y)", Reduction::LogSumExp),
            ] {
                for axis in [1, 0] {
                    let g = Genred::new(f, &aliases, red, axis).unwrap();
                    let ctx = format!("{f} {red:?} axis {axis}, D={d}, N={n}, M={m}");
                    let want = reference::reduce(&g, &inp.args_f64()).unwrap();
                    let got = run_as::<f64>(&g, &inp, &Options::default()).unwrap();
                    check_values(&got, &want, None, TOL_F64, &ctx);
                    check_indices_exact(&got, &want, &ctx);
                    let got = run_as::<f32>(&g, &inp, &Options::default()).unwrap();
                    // sums of up to 64 O(1) products: absolute f32 rounding ~ 1e-5
                    check_values(
                        &got,
                        &want,
                        Some(&vec![d as f64; n.max(m) * 5]),
                        TOL_F32,
                        &ctx,
                    );
                }
            }
        }
    }
}

/// `Options::fast_math` flushes float32 subnormals to zero on the CPU (as CUDA's
/// `--use_fast_math` on the GPU): a sum whose every term is subnormal is 0 with it and
/// the oracle's value without it, on both code paths, on the calling thread (few pairs)
/// and on the pool (many); float64 keeps its subnormals; the calling thread is left in
/// IEEE mode; and results above the subnormal range do not change by a bit (although
/// the exponentials of a flushing job are computed another way: `exp_f32_ftz_mode`).
#[test]
fn fast_math_flushes_float32_subnormals() {
    let ieee = || std::hint::black_box(f32::MIN_POSITIVE) * std::hint::black_box(0.5f32) > 0.0;
    let g = Genred::new(GAUSS, &aliases(1), Reduction::Sum, 1).unwrap();
    for (n, m) in [(4, 10), (300, 300)] {
        // |x - y|^2 = 1 at every pair: each term is exp(-gamma), subnormal for gamma = 95
        // in float32 (5.5e-42) and for gamma = 720 in float64 (1.9e-313).
        for (gamma, f32_case) in [(95.0, true), (720.0, false)] {
            let mut inp = Inputs::new();
            inp.push(&[n, 3], || 0.0);
            let mut k = 0;
            inp.push(&[m, 3], || {
                k += 1;
                if k % 3 == 1 {
                    1.0
                } else {
                    0.0
                }
            });
            inp.push(&[m, 1], || 1.0);
            inp.push(&[1], || gamma);
            let want = m as f64 * (-gamma).exp();
            for (name, kernel) in kernels() {
                for fast_math in [false, true] {
                    let opts = Options {
                        fast_math,
                        ..kernel.clone()
                    };
                    let ctx = format!("{name}, n = {n}, fast_math = {fast_math}");
                    let got: Vec<f64> = if f32_case {
                        let r = run_as::<f32>(&g, &inp, &opts).unwrap();
                        r.values.unwrap().data.iter().map(|&v| v as f64).collect()
                    } else {
                        run_as::<f64>(&g, &inp, &opts).unwrap().values.unwrap().data
                    };
                    let flushed = fast_math && f32_case;
                    for v in got {
                        if flushed {
                            assert_eq!(v, 0.0, "{ctx}: float32 subnormals flushed");
                        } else {
                            assert!((v - want).abs() <= 1e-3 * want, "{ctx}: {v} vs {want}");
                        }
                    }
                    assert!(ieee(), "{ctx}: the calling thread is back in IEEE mode");
                }
            }
        }
    }
    for case in cases(1) {
        let inp = inputs(&NO_BATCH, 300, 257, case.bd, 50);
        for (name, kernel) in kernels() {
            let fast = Options {
                fast_math: true,
                ..kernel.clone()
            };
            assert_eq!(
                run_as::<f32>(&case.genred, &inp, &kernel).unwrap(),
                run_as::<f32>(&case.genred, &inp, &fast).unwrap(),
                "{}, {name}: normal values are not touched by fast_math",
                case.name
            );
        }
    }
}

/// Products of several factors of dimension 1 are one tile pass (`ScaledProduct`:
/// products, negations and divisions by scalars unfolded, an addend folded in), and
/// match the oracle: the gradient of a kernel sum, GeomLoss' `LogSumExp`, addends that
/// are tiles or per-row scalars, three tile factors with and without an addend (the
/// second is not fused), on both code paths and axes (which turns `b` into a per-row
/// scalar), on every instruction set of this CPU, in float64 and float32.
#[test]
fn one_pass_products_match_the_oracle() {
    let aliases = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)", "p = Pm(3,1)"];
    let mut rng = Rng::new(5);
    let (n, m) = (37, 300);
    for (f, red) in [
        ("b - p * (SqDist(x,y) / IntCst(2))", Reduction::LogSumExp),
        (
            "(-2) * ((Elem(x,0) * b) * Exp(-SqDist(x,y)))",
            Reduction::Sum,
        ),
        ("b + SqDist(x,y) * p * Elem(x,1)", Reduction::Max),
        ("SqDist(x,y) / p / 3 + Elem(x,0)", Reduction::Min),
        ("-(b * Exp(-SqDist(x,y))) * p * Elem(x,1)", Reduction::Sum),
        ("b * SqDist(x,y) * Exp(-SqDist(x,y)) * p", Reduction::Sum),
        (
            "Elem(x,0) - b * SqDist(x,y) * Exp(-SqDist(x,y)) * p",
            Reduction::Sum,
        ),
    ] {
        for axis in [1, 0] {
            let g = Genred::new(f, &aliases, red, axis).unwrap();
            let (nx, ny) = if axis == 1 { (n, m) } else { (m, n) };
            let inp = kernel_inputs(&mut rng, nx, ny);
            let want = reference::reduce(&g, &inp.args_f64()).unwrap();
            let scale = sum_magnitude(&g, &inp);
            check_every_isa(&g, &inp, &want, &scale, &format!("{f} {red:?} axis {axis}"));
        }
    }
}

/// Sums whose per-row factors are taken out of the sum and whose last difference
/// `x_i - y_j` is computed as it is summed (the tile program's `Summand`): kernel
/// gradients' forms, differences either way round and sums, divisors, negations, factors
/// of dimension 1 against sums of dimension 3 and the reverse, weights wide enough for
/// GEMM (per tile on one axis, per row on the other), and the weights of a
/// `SumSoftMaxWeight`, on both code paths and axes, every instruction set of this CPU,
/// float64 and float32, against the oracle. Then the factor `p` at 0, +-inf and NaN,
/// which must give what each term gives (`inf * (x - y)` summed over both signs is NaN,
/// not the sum's sign times inf).
#[test]
fn summands_match_the_oracle() {
    let aliases = [
        "x = Vi(0,3)",
        "y = Vj(1,3)",
        "b = Vj(2,1)",
        "p = Pm(3,1)",
        "w = Vj(4,9)",
    ];
    let sums = [
        "p * Exp(-SqDist(x,y)) * (x - y)",
        "(y - x) * Exp(-SqDist(x,y)) / p",
        "-((x + y) * b)",
        "(y + x) * p",
        "x * Exp(-SqDist(x,y)) * p",
        "Exp(-SqDist(x,y)) * w * p",
        "-(Exp(-SqDist(x,y)) * w) * Elem(x,0)",
        "(-2) * p * b * Exp(-SqDist(x,y)) * (Elem(x,0) - Elem(y,0))",
        "(Elem(x,0) - Elem(y,1)) * (x - y)",
    ];
    let weights = [
        "-p * (x - y)",
        "(y + x) / p",
        "w * Elem(x,0) * p",
        "b - Elem(x,1)",
    ];
    let cases = (sums.iter().map(|&f| (f, None)))
        .chain(weights.iter().map(|&w| ("-SqDist(x,y) * p", Some(w))));
    let mut rng = Rng::new(11);
    let (n, m) = (37, 300);
    for (f, weight) in cases {
        for axis in [1, 0] {
            let g = match weight {
                None => Genred::new(f, &aliases, Reduction::Sum, axis),
                Some(w) => Genred::with_weight(f, w, &aliases, Reduction::SumSoftMaxWeight, axis),
            }
            .unwrap();
            let (nx, ny) = if axis == 1 { (n, m) } else { (m, n) };
            let mut inp = kernel_inputs(&mut rng, nx, ny);
            inp.push(&[ny, 9], || rng.uniform(-1.0, 1.0));
            for p in [
                None,
                Some(0.0),
                Some(f64::INFINITY),
                Some(-f64::INFINITY),
                Some(f64::NAN),
            ] {
                let mut inp = inp.clone();
                if let Some(p) = p {
                    inp.data[3] = vec![p];
                }
                let want = reference::reduce(&g, &inp.args_f64()).unwrap();
                let scale = value_scale(&g, &inp, &want);
                let ctx = format!("{f} / {weight:?}, axis {axis}, p {p:?}");
                check_every_isa(&g, &inp, &want, &scale, &ctx);
            }
        }
    }
}

/// `Rsqrt(u)` where `Sqrt(u)` is computed reuses it (`Instr::RsqrtOf`): the gradients of
/// Laplace and Matérn 3/2 kernel sums, with points that coincide (`u = 0`, where
/// `Rsqrt` is 0 and the gradient of `|x - y|` is taken as 0, as KeOps does), on both
/// code paths and axes, every instruction set of this CPU, float64 and float32, against
/// the oracle.
#[test]
fn rsqrt_of_a_square_root_matches_the_oracle() {
    let aliases = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)", "p = Pm(3,1)"];
    let mut rng = Rng::new(13);
    let (n, m) = (37, 300);
    for f in [
        "Exp(-Sqrt(SqDist(x,y) * p)) * b",
        "(1 + Sqrt(SqDist(x,y) * p)) * Exp(-Sqrt(SqDist(x,y) * p)) * b",
    ] {
        for axis in [1, 0] {
            let fwd = Genred::new(f, &aliases, Reduction::Sum, axis).unwrap();
            let grad = fwd.grad(0).unwrap();
            let (g, _) = grad.reduction().unwrap();
            let (nx, ny) = if axis == 1 { (n, m) } else { (m, n) };
            let mut inp = Inputs::new();
            inp.push(&[nx, 3], || rng.uniform(-1.0, 1.0));
            // Every third point of y is one of x.
            let mut y: Vec<f64> = (0..ny * 3).map(|_| rng.uniform(-1.0, 1.0)).collect();
            for j in (0..ny).step_by(3) {
                let i = j % nx;
                y[j * 3..j * 3 + 3].copy_from_slice(&inp.data[0][i * 3..i * 3 + 3]);
            }
            inp.push_data(&[ny, 3], y);
            inp.push(&[ny, 1], || rng.uniform(-1.0, 1.0));
            inp.push(&[1], || rng.uniform(0.5, 2.0));
            let out = if axis == 1 { nx } else { ny };
            inp.push(&[out, 1], || rng.uniform(-1.0, 1.0));
            let want = reference::reduce(g, &inp.args_f64()).unwrap();
            let scale = value_scale(g, &inp, &want);
            check_every_isa(
                g,
                &inp,
                &want,
                &scale,
                &format!("gradient of {f}, axis {axis}"),
            );
        }
    }
}
