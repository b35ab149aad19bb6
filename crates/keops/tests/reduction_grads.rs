//! Gradients of reductions (`Genred::grad`): for every reduction, both axes and a
//! variable of each category (`Vi`, `Vj`, `Pm`), the gradient computed by the engine in
//! f64 against central finite differences of `<output, G>` computed by the oracle.
//! Tolerance: `|got - fd| <= 1e-6 (1 + |fd|)` with steps of `1e-6`. Plus broadcast batch
//! dimensions, f32, and bad input.

mod common;

use common::Rng;
use keops::{Arg, Genred, Reduction};

const ALIASES: [&str; 4] = ["x = Vi(0,2)", "y = Vj(1,2)", "b = Vj(2,1)", "p = Pm(3,1)"];
/// A scalar and a vector formula using every variable, and a weight.
const F_S: &str = "Exp(-SqDist(x,y) * p) * b + Sum(x * y) * p";
const F_V: &str = "Sin(x * y) * p + b";
/// Positive (the weighted LogSumExp takes its logarithm).
const W: &str = "Exp(x * b + y)";

struct Data {
    arrays: Vec<Vec<f64>>,
    shapes: Vec<Vec<usize>>,
}

impl Data {
    fn new(n: usize, m: usize, seed: u64, batch: bool) -> Data {
        let mut r = Rng::new(seed);
        let mut v = |k: usize| (0..k).map(|_| r.uniform(-1.0, 1.0)).collect::<Vec<f64>>();
        if batch {
            // x has a batch of 2, y and b broadcast over it, p is per batch entry.
            Data {
                arrays: vec![
                    v(2 * n * 2),
                    v(m * 2),
                    v(m),
                    v(2).iter().map(|p| p.abs() + 0.5).collect(),
                ],
                shapes: vec![vec![2, n, 2], vec![1, m, 2], vec![m, 1], vec![2, 1, 1]],
            }
        } else {
            Data {
                arrays: vec![v(n * 2), v(m * 2), v(m), vec![0.7]],
                shapes: vec![vec![n, 2], vec![m, 2], vec![m, 1], vec![1]],
            }
        }
    }
    fn args(&self) -> Vec<Arg<'_, f64>> {
        self.arrays
            .iter()
            .zip(&self.shapes)
            .map(|(d, s)| Arg::new(d, s))
            .collect()
    }
}

/// `<output, G>` by the oracle.
fn objective(g: &Genred, data: &Data, og: &[f64]) -> f64 {
    let out = keops::reference::reduce(g, &data.args()).unwrap();
    match out.values {
        Some(v) => v.data.iter().zip(og).map(|(a, b)| a * b).sum(),
        None => 0.0,
    }
}

fn check(g: &Genred, name: &str, data: &Data, seed: u64) {
    let fwd = g.call(&data.args()).unwrap();
    let shape = fwd
        .values
        .as_ref()
        .map(|v| v.shape.clone())
        .unwrap_or_else(|| fwd.indices.as_ref().unwrap().shape.clone());
    let mut r = Rng::new(seed);
    let og: Vec<f64> = (0..shape.iter().product())
        .map(|_| r.uniform(-1.0, 1.0))
        .collect();
    for wrt in 0..4 {
        let ctx = format!("{name} axis {} wrt arg {wrt}", g.axis());
        let grad = g.grad(wrt).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let got = grad
            .call(&data.args(), &Arg::new(&og, &shape))
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(got.shape, data.shapes[wrt], "{ctx}: gradient shape");
        let h = 1e-6;
        for k in 0..data.arrays[wrt].len() {
            let mut d = Data {
                arrays: data.arrays.clone(),
                shapes: data.shapes.clone(),
            };
            d.arrays[wrt][k] += h;
            let up = objective(g, &d, &og);
            d.arrays[wrt][k] -= 2.0 * h;
            let down = objective(g, &d, &og);
            let fd = (up - down) / (2.0 * h);
            assert!(
                (got.data[k] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{ctx}, element {k}: got {:e}, finite differences {fd:e}",
                got.data[k]
            );
        }
    }
}

fn cases() -> Vec<(String, Genred)> {
    let mut out = Vec::new();
    for axis in [1, 0] {
        let plain = |f: &str, red: Reduction| Genred::new(f, &ALIASES, red, axis).unwrap();
        let weighted = |red: Reduction| Genred::with_weight(F_S, W, &ALIASES, red, axis).unwrap();
        out.extend([
            ("Sum scalar".into(), plain(F_S, Reduction::Sum)),
            ("Sum vector".into(), plain(F_V, Reduction::Sum)),
            ("LogSumExp scalar".into(), plain(F_S, Reduction::LogSumExp)),
            ("LogSumExp vector".into(), plain(F_V, Reduction::LogSumExp)),
            ("LogSumExp weighted".into(), weighted(Reduction::LogSumExp)),
            (
                "SumSoftMaxWeight".into(),
                weighted(Reduction::SumSoftMaxWeight),
            ),
            ("Min vector".into(), plain(F_V, Reduction::Min)),
            ("Max scalar".into(), plain(F_S, Reduction::Max)),
            ("Min_ArgMin vector".into(), plain(F_V, Reduction::MinArgMin)),
            ("Max_ArgMax".into(), plain(F_S, Reduction::MaxArgMax)),
            ("KMin(3)".into(), plain(F_S, Reduction::KMin(3))),
            (
                "KMin_ArgKMin(2) vector".into(),
                plain(F_V, Reduction::KMinArgKMin(2)),
            ),
            ("ArgMin".into(), plain(F_S, Reduction::ArgMin)),
            ("ArgMax".into(), plain(F_V, Reduction::ArgMax)),
            ("ArgKMin(2)".into(), plain(F_S, Reduction::ArgKMin(2))),
        ]);
    }
    out
}

#[test]
fn every_reduction_gradient_matches_finite_differences() {
    let data = Data::new(5, 7, 1, false);
    for (k, (name, g)) in cases().iter().enumerate() {
        check(g, name, &data, 100 + k as u64);
    }
}

#[test]
fn gradients_with_broadcast_batch_dimensions() {
    let data = Data::new(4, 6, 2, true);
    for (k, (name, g)) in cases().iter().enumerate() {
        check(g, &format!("{name} [batch]"), &data, 200 + k as u64);
    }
}

/// Arg-reductions have a zero gradient; the gradient reductions are themselves plans
/// (and can be differentiated again).
#[test]
fn plans_zeros_and_second_order() {
    let data = Data::new(5, 7, 3, false);
    let g = Genred::new(F_S, &ALIASES, Reduction::ArgMin, 1).unwrap();
    let og = vec![1.0; 5];
    let z = g
        .grad(0)
        .unwrap()
        .call(&data.args(), &Arg::new(&og, [5, 1]))
        .unwrap();
    assert!(z.data.iter().all(|&v| v == 0.0));

    let g = Genred::new(F_S, &ALIASES, Reduction::Sum, 1).unwrap();
    let dx = g.grad(0).unwrap();
    let (red, extras) = dx.reduction().expect("Sum's gradient is a reduction");
    assert_eq!(extras, &[keops::Extra::OutputGrad]);
    // Second order: differentiate the gradient reduction with respect to y.
    let d2 = red.grad(1).unwrap();
    let og2: Vec<f64> = (0..10).map(|k| k as f64 / 10.0).collect();
    let mut args = data.args();
    args.push(Arg::new(&og, [5, 1]));
    let got = d2.call(&args, &Arg::new(&og2, [5, 2])).unwrap();
    assert_eq!(got.shape, vec![7, 2]);
    // Against finite differences of the first gradient's output.
    let first = |d: &Data| -> f64 {
        let mut a = d.args();
        a.push(Arg::new(&og, [5, 1]));
        let o = red.call(&a).unwrap().values.unwrap();
        o.data.iter().zip(&og2).map(|(a, b)| a * b).sum()
    };
    for k in 0..14 {
        let mut d = Data {
            arrays: data.arrays.clone(),
            shapes: data.shapes.clone(),
        };
        d.arrays[1][k] += 1e-6;
        let up = first(&d);
        d.arrays[1][k] -= 2e-6;
        let fd = (up - first(&d)) / 2e-6;
        assert!(
            (got.data[k] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
            "{k}: {} vs {fd}",
            got.data[k]
        );
    }
}

#[test]
fn float32_gradients_agree_with_float64() {
    let data = Data::new(40, 300, 4, false);
    let g = Genred::new(F_S, &ALIASES, Reduction::LogSumExp, 1).unwrap();
    let og: Vec<f64> = (0..40).map(|k| (k as f64).sin()).collect();
    let og32: Vec<f32> = og.iter().map(|&v| v as f32).collect();
    let a32: Vec<Vec<f32>> = data
        .arrays
        .iter()
        .map(|a| a.iter().map(|&v| v as f32).collect())
        .collect();
    for wrt in 0..4 {
        let dg = g.grad(wrt).unwrap();
        let want = dg.call(&data.args(), &Arg::new(&og, [40, 1])).unwrap();
        let args32: Vec<Arg<'_, f32>> = a32
            .iter()
            .zip(&data.shapes)
            .map(|(d, s)| Arg::new(d, s))
            .collect();
        let got = dg.call(&args32, &Arg::new(&og32, [40, 1])).unwrap();
        // The error scale: the outputs, or those of the output gradient's magnitudes
        // where the rows' signed terms cancel (a parameter's gradient sums all rows).
        let og_abs: Vec<f64> = og.iter().map(|v| v.abs()).collect();
        let magnitude = dg.call(&data.args(), &Arg::new(&og_abs, [40, 1])).unwrap();
        let scale = want
            .data
            .iter()
            .chain(&magnitude.data)
            .fold(0.0f64, |m, v| m.max(v.abs()));
        for (a, b) in got.data.iter().zip(&want.data) {
            assert!(
                (*a as f64 - b).abs() <= 1e-6 * scale,
                "wrt {wrt}: {a} vs {b} (scale {scale})"
            );
        }
    }
}

#[test]
fn bad_input() {
    let data = Data::new(5, 7, 5, false);
    let g = Genred::new(F_S, &ALIASES, Reduction::Sum, 1).unwrap();
    let err = g.grad(4).unwrap_err().to_string();
    assert!(err.contains("argument 4"), "{err}");
    let og = vec![1.0; 6];
    let err = g
        .grad(0)
        .unwrap()
        .call(&data.args(), &Arg::new(&og, [6, 1]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("output gradient") && err.contains("[5, 1]") && err.contains("[6, 1]"),
        "{err}"
    );
}

/// `Genred::jvp` against central differences of the output along the tangents, for
/// every reduction it covers, both axes, tangents of one argument and of all of them.
#[test]
fn forward_mode_matches_finite_differences() {
    let data = Data::new(4, 5, 11, false);
    let mut r = Rng::new(5);
    let tangents: Vec<Vec<f64>> = data
        .arrays
        .iter()
        .map(|a| a.iter().map(|_| r.uniform(-1.0, 1.0)).collect())
        .collect();
    for (name, g) in cases() {
        let kind = g.spec().kind;
        if !matches!(
            kind,
            Reduction::Sum | Reduction::LogSumExp | Reduction::SumSoftMaxWeight
        ) {
            assert!(g.jvp(&[0]).is_err(), "{name}: no forward rule expected");
            continue;
        }
        for wrt in [vec![0], vec![1], vec![2], vec![3], vec![0, 1, 2, 3]] {
            let ctx = format!("{name} axis {} tangents {wrt:?}", g.axis());
            let (jvp, extras) = g.jvp(&wrt).unwrap();
            let fwd = g.call(&data.args()).unwrap().values.unwrap();
            let mut args = data.args();
            for &k in &wrt {
                args.push(Arg::new(&tangents[k], &data.shapes[k]));
            }
            let out_rows = [fwd.shape[0], fwd.shape[1]];
            if !extras.is_empty() {
                args.push(Arg::new(&fwd.data, out_rows));
            }
            let got = jvp.call(&args).unwrap().values.unwrap();
            assert_eq!(got.shape, fwd.shape, "{ctx}");
            let h = 1e-6;
            let at = |s: f64| {
                let mut d = Data {
                    arrays: data.arrays.clone(),
                    shapes: data.shapes.clone(),
                };
                for &k in &wrt {
                    for (a, u) in d.arrays[k].iter_mut().zip(&tangents[k]) {
                        *a += s * u;
                    }
                }
                keops::reference::reduce(&g, &d.args())
                    .unwrap()
                    .values
                    .unwrap()
                    .data
            };
            let (up, down) = (at(h), at(-h));
            for (k, v) in got.data.iter().enumerate() {
                let fd = (up[k] - down[k]) / (2.0 * h);
                assert!(
                    (v - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "{ctx}, element {k}: got {v:e}, finite differences {fd:e}"
                );
            }
        }
    }
}

/// `Genred::pointwise` evaluates the formula at chosen pairs: at the arg-min it gives
/// the min, and `with_reduction` keeps formula, weight and argument positions.
#[test]
fn pointwise_at_selected_pairs_and_variants() {
    let data = Data::new(4, 5, 3, false);
    for axis in [1, 0] {
        let g = Genred::new(F_S, &ALIASES, Reduction::Min, axis).unwrap();
        let sel = g.with_reduction(Reduction::MinArgMin).unwrap();
        let out = sel.call(&data.args()).unwrap();
        let (mins, idx) = (out.values.unwrap(), out.indices.unwrap());
        // Gather the reduced-side arguments (y: 1, b: 2 for axis 1; x: 0 for axis 0).
        let reduced: &[usize] = if axis == 1 { &[1, 2] } else { &[0] };
        let mut gathered = data.arrays.clone();
        let mut shapes = data.shapes.clone();
        for &k in reduced {
            let d = data.shapes[k][1];
            gathered[k] = idx
                .data
                .iter()
                .flat_map(|&j| data.arrays[k][j as usize * d..(j as usize + 1) * d].to_vec())
                .collect();
            shapes[k] = vec![idx.data.len(), d];
        }
        let args: Vec<Arg<'_, f64>> = gathered
            .iter()
            .zip(&shapes)
            .map(|(a, s)| Arg::new(a, s))
            .collect();
        let at = g.pointwise().unwrap().call(&args).unwrap().values.unwrap();
        for (a, b) in at.data.iter().zip(&mins.data) {
            assert!(
                (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                "axis {axis}: {a} vs {b}"
            );
        }
    }
}
