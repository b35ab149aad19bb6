//! Symbolic differentiation checked against the f64 oracle.
//!
//! - every op of the table: its vjp (through `Grad`) against central finite differences
//!   of the oracle, with respect to each variable, at random points;
//! - the awkward points (kinks, zeros of `Sqrt`): the documented conventions (KeOps');
//! - the differential operators (`Diff`, `Divergence`, `Laplacian`, `GradMatrix`,
//!   `TraceOperator`) against closed forms and against `Grad`;
//! - sizes of repeated derivatives of the Gaussian kernel; bad input.
//!
//! Tolerance of the finite-difference checks (`common::fd_check`): central differences
//! in f64 with steps `h = 1e-5 (1 + |v|)` and `h/2`; points where the two disagree by
//! more than `1e-6 (1 + |fd|)` are too close to a kink to judge and are skipped; the
//! symbolic gradient must be within `1e-5 (1 + |fd|)`; both bounds are widened by the
//! rounding error of the differences, `1e-14 M / h` with `M` the largest intermediate
//! value. Each op must be judged at some points (a check that only skips fails).

mod common;

use common::op_cases::{cases, ALIASES};
use common::{fd_check, FdCheck, Point, Rng};
use keops::formula::diff;
use keops::formula::ops::all_specs;
use keops::formula::parse::parse;
use keops::formula::Formula;
use std::collections::BTreeSet;

fn f(s: &str) -> Formula {
    parse(s, &ALIASES).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Checks every variable of `formula` at `points` random points; returns how many
/// (variable, point) checks could be judged.
fn check_formula(formula: &Formula, seed: u64, points: usize) -> usize {
    let mut rng = Rng::new(seed);
    let e = Formula::pm(99, formula.dim).unwrap();
    let mut judged = 0;
    for v in formula.variables() {
        for _ in 0..points {
            let mut p = Point::random(std::slice::from_ref(formula), &mut rng, 0.3, 1.7);
            p.set(
                &e,
                (0..formula.dim).map(|_| rng.unit() * 2.0 - 1.0).collect(),
            );
            match fd_check(formula, &v, &e, &p) {
                FdCheck::Agree(_) => judged += 1,
                FdCheck::Skipped => {}
                FdCheck::Disagree(msg) => panic!("{msg}"),
            }
        }
    }
    judged
}

#[test]
fn every_op_vjp_agrees_with_finite_differences() {
    let mut seen = BTreeSet::new();
    for spec in all_specs() {
        let list = cases(spec.name).unwrap_or_else(|| panic!("no autodiff case for {}", spec.name));
        let mut judged = 0;
        for (k, s) in list.iter().enumerate() {
            let formula = f(s);
            // First derivatives...
            judged += check_formula(&formula, 1000 + k as u64, 12);
            // ... and second derivatives: the gradient is a formula like any other.
            if let Some(v) = formula.variables().first() {
                let e = Formula::pm(98, formula.dim).unwrap();
                let g1 = diff::grad(&formula, v, &e).unwrap();
                check_formula(&g1, 2000 + k as u64, 4);
            }
        }
        assert!(judged > 0, "op {}: no point could be judged", spec.name);
        seen.insert(spec.name);
    }
    assert!(seen.len() >= 55);
}

/// Gradient values at points where the op has a kink or a singular derivative: the
/// conventions of KeOps.
#[test]
fn conventions_at_awkward_points() {
    let x = Formula::vi(0, 1).unwrap();
    let one = Formula::int(1);
    let at = |s: &str, x0: f64| -> f64 {
        let formula = parse(s, &["x = Vi(0,1)"]).unwrap();
        let g = diff::grad(&formula, &x, &one).unwrap();
        let mut p = Point::default();
        p.set(&x, vec![x0]);
        p.eval(&g)[0]
    };
    assert_eq!(at("Abs(x)", 0.0), 0.0, "Abs'(0) = Sign(0) = 0");
    assert_eq!(at("ReLU(x)", 0.0), 1.0, "ReLU'(0) = Step(0) = 1");
    assert_eq!(at("ReLU(x)", -1.0), 0.0);
    assert_eq!(at("Step(x)", 0.0), 0.0, "Step' = 0");
    assert_eq!(at("Sign(x)", 0.0), 0.0, "Sign' = 0");
    assert_eq!(at("Sqrt(x)", 0.0), 0.0, "Sqrt'(0) = Rsqrt(0) / 2 = 0");
    assert_eq!(at("Norm2(x)", 0.0), 0.0, "Norm2'(0) = 0");
    assert_eq!(at("Rsqrt(x)", 0.0), 0.0, "Rsqrt'(0) = 0 (as Rsqrt(0) = 0)");
    // Clamps pass the gradient on the closed interval.
    assert_eq!(at("Clamp(x, 0, 1)", 0.0), 1.0);
    assert_eq!(at("Clamp(x, 0, 1)", 1.0), 1.0);
    assert_eq!(at("Clamp(x, 0, 1)", 1.5), 0.0);
    assert_eq!(at("ClampInt(x, 0, 1)", -0.5), 0.0);
    assert_eq!(at("ClampInt(x, 0, 1)", 0.5), 1.0);
    assert_eq!(at("XLogX(x)", 1.0), 1.0);
    // sin(x)/x is smooth at 0, with slope 0 there (KeOps' formula gives NaN).
    assert_eq!(at("SinXDivX(x)", 0.0), 0.0);
    assert!((at("SinXDivX(x)", 1e-3) + 1e-3 / 3.0).abs() < 1e-9);
    assert_eq!(at("DiffClampInt(x, 0, 1)", 0.5), 0.0, "DiffClampInt' = 0");
    assert_eq!(at("Floor(x) + Round(x, 2)", 0.5), 0.0);
    // Mod(x, n, d): slope 1 in x, whatever the wrap.
    assert_eq!(at("Mod(x, 0.7, 0)", 2.0), 1.0);
    assert!((at("Atan(x)", 1.0) - 0.5).abs() < 1e-15);
    // Powf as pykeops 2.3 and torch.pow: d/da = b Powf(a, b - 1), finite at a = 0 (the
    // Matérn-like `r ** 1.5` at coinciding points), and d/db = 0 where a = 0.
    assert_eq!(at("Powf(x, 1.5)", 0.0), 0.0, "Powf'(0, 1.5) = 0");
    assert_eq!(at("Powf(x, 1)", 0.0), 1.0);
    assert_eq!(
        at("Powf(x, 3)", -2.0),
        12.0,
        "negative base, integer exponent"
    );
    assert_eq!(at("Powf(IntCst(0), x)", 1.5), 0.0, "d/db Powf(0, b) = 0");
    assert!((at("Powf(IntCst(2), x)", 1.0) - 2.0 * 2f64.ln()).abs() < 1e-15);
    // Min/Max of coordinates: the gradient goes to the first selected coordinate only.
    let v = Formula::vi(0, 3).unwrap();
    let g = diff::grad(&v.coord_reduce(keops::formula::Op::CoordMin), &v, &one).unwrap();
    let mut p = Point::default();
    p.set(&v, vec![2.0, 1.0, 1.0]);
    assert_eq!(p.eval(&g), vec![0.0, 1.0, 0.0]);
}

/// `IfElse` with a scalar condition differentiates the branch it selects (keopscore's
/// rule): the branch not taken adds nothing, even where its derivative is infinite
/// (pykeops' sandbox/test_ifelse.py). A vector condition masks the adjoint, exact
/// but with `0 * inf` there.
#[test]
fn ifelse_differentiates_the_selected_branch() {
    let al = ["x = Vi(0,1)", "y = Vj(1,3)", "c = Vi(2,1)"];
    let p = |s: &str| parse(s, &al).unwrap();
    let (x, y) = (p("x"), p("y"));
    let one = Formula::int(1);
    let mut pt = Point::default();
    pt.set(&x, vec![-0.5]);
    for s in ["IfElse(x, Sqrt(x), x*x*x)", "IfElse(x, Log(x), x*x*x)"] {
        let g = diff::grad(&p(s), &x, &one).unwrap();
        assert_eq!(pt.eval(&g), vec![0.75], "{s}: 3 x^2 at x = -0.5");
        // Forward mode (Diff, a reverse pass of the reverse pass) too, and again.
        let d = diff::diff(&p(s), &x, &one).unwrap();
        assert_eq!(pt.eval(&d), vec![0.75], "{s}");
        let d2 = diff::grad(&g, &x, &one).unwrap();
        assert_eq!(pt.eval(&d2), vec![-3.0], "{s}: 6 x");
    }
    // Non-diagonal branches of a vector output, a scalar condition on both variables,
    // a scalar branch broadcast: against finite differences, at points on both sides.
    let mixed = p("IfElse(c - (x|Sum(y)), SqNorm2(y) * y + x, Exp(-y) * x)");
    let mixed_scalar = p("IfElse(c + x, Sqrt(c) * y, SqNorm2(y))");
    for formula in [&mixed, &mixed_scalar] {
        assert!(check_formula(formula, 7, 40) > 40, "{formula}");
    }
    // BSpline's weights select with IfElse where knots repeat (clamped knots, the usual
    // case): its derivatives were NaN at every x. Quadratic, knots 0 0 0 1 2 3 3 3:
    // B_0 = (1 - x)^2 on [0, 1), and the basis sums to 1 (derivative 0).
    let bal = ["t = Pm(0,8)", "x = Vi(1,1)"];
    let spline = parse("BSpline(t, x, 2)", &bal).unwrap();
    let (t, xb) = (parse("t", &bal).unwrap(), parse("x", &bal).unwrap());
    let mut pt = Point::default();
    pt.set(&t, vec![0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 3.0]);
    pt.set(&xb, vec![0.5]);
    let ep = Formula::pm(9, 5).unwrap();
    let dx = diff::grad(&spline, &xb, &ep).unwrap();
    pt.set(&ep, vec![1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(pt.eval(&dx), vec![-1.0]);
    pt.set(&ep, vec![1.0; 5]);
    assert_eq!(pt.eval(&dx), vec![0.0]);
    let dt = pt.eval(&diff::grad(&spline, &t, &ep).unwrap());
    assert!(dt.iter().all(|v| v.is_finite()), "{dt:?}");
    // Gradients that never reach v stay zero, without a selection left in them.
    assert_eq!(
        diff::grad(&p("IfElse(c, x, 2*x)"), &y, &one).unwrap(),
        Formula::zero(3).unwrap()
    );
    assert_eq!(
        diff::grad(&p("IfElse(x, c, 2*c)"), &x, &one).unwrap(),
        Formula::int(0)
    );
    // A vector condition: masked adjoints (exact, NaN where the other branch's
    // derivative is infinite).
    let v = p("IfElse(y, Sqrt(y), y*y*y)");
    let g = diff::grad(&v, &y, &Formula::zero(3).unwrap().add(&one).unwrap()).unwrap();
    pt.set(&y, vec![4.0, -1.0, 1.0]);
    let got = pt.eval(&g);
    assert_eq!((got[0], got[2]), (0.25, 0.5));
    assert!(got[1].is_nan());
}

/// `<Diff(F, v, u), e> == <Grad(F, v, e), u>` and the other operators against closed
/// forms or against `Grad`.
#[test]
fn differential_operators() {
    let x = f("x");
    let y = f("y");
    let u = Formula::vi(10, 3).unwrap();
    let e = Formula::vi(11, 3).unwrap();
    let mut rng = Rng::new(5);
    for s in [
        "Sin(x * y) * Exp(-SqDist(x, y))",
        "Normalize(x - y) * Sum(x)",
        "Concat(x, y) * 2",
    ] {
        let formula = f(s);
        let e = Formula::vi(11, formula.dim).unwrap();
        let d = diff::diff(&formula, &x, &u).unwrap();
        let g = diff::grad(&formula, &x, &e).unwrap();
        for _ in 0..5 {
            let p = Point::random(
                &[d.clone(), g.clone(), u.clone(), e.clone()],
                &mut rng,
                -1.0,
                1.0,
            );
            let lhs: f64 = p.eval(&d).iter().zip(p.get(&e)).map(|(a, b)| a * b).sum();
            let rhs: f64 = p.eval(&g).iter().zip(p.get(&u)).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-12 * (1.0 + lhs.abs()),
                "{s}: {lhs} vs {rhs}"
            );
        }
    }
    // Laplacian of the Gaussian: (4 r^2 - 2 D) exp(-r^2).
    let lap = diff::laplacian(&f("Exp(-SqDist(x, y))"), &x).unwrap();
    let closed = f("(4 * SqDist(x, y) - 6) * Exp(-SqDist(x, y))");
    // Divergence of x |x|^2 in 3-D: 5 |x|^2.
    let div = diff::divergence(&f("x * SqNorm2(x)"), &x).unwrap();
    // TraceOperator of a linear map: Trace(u -> u * b) = 3 b.
    let tr = diff::trace_operator(&u.mul(&f("b")).unwrap(), &u).unwrap();
    // GradMatrix of x * y with respect to x: diag(y), flattened.
    let gm = diff::grad_matrix(&f("x * y"), &x).unwrap();
    assert_eq!(gm.dim, 9);
    for _ in 0..5 {
        let p = Point::random(
            &[
                lap.clone(),
                closed.clone(),
                div.clone(),
                tr.clone(),
                gm.clone(),
            ],
            &mut rng,
            -1.0,
            1.0,
        );
        let (l, c) = (p.eval(&lap)[0], p.eval(&closed)[0]);
        assert!((l - c).abs() < 1e-12, "Laplacian {l} vs {c}");
        let xs = p.get(&x);
        let n2: f64 = xs.iter().map(|v| v * v).sum();
        assert!((p.eval(&div)[0] - 5.0 * n2).abs() < 1e-12);
        assert!((p.eval(&tr)[0] - 3.0 * p.get(&f("b"))[0]).abs() < 1e-12);
        let ys = p.get(&y);
        let want: Vec<f64> = (0..9)
            .map(|k| if k / 3 == k % 3 { ys[k / 3] } else { 0.0 })
            .collect();
        assert_eq!(p.eval(&gm), want);
    }
    let _ = e;
}

/// Node counts of the 1st, 2nd and 3rd derivatives of the Gaussian kernel with respect
/// to `x` (each a gradient of the previous one against a fresh input): hash-consing and
/// simplification keep them small (linear growth, not exponential).
#[test]
fn repeated_derivatives_stay_small() {
    let x = f("x");
    let k = f("Exp(-SqDist(x, y)) * b");
    let e1 = Formula::int(1);
    let e2 = Formula::vi(20, 3).unwrap();
    let e3 = Formula::vi(21, 3).unwrap();
    let g1 = diff::grad(&k, &x, &e1).unwrap();
    let g2 = diff::grad(&g1, &x, &e2).unwrap();
    let g3 = diff::grad(&g2, &x, &e3).unwrap();
    let counts = [
        k.node_count(),
        g1.node_count(),
        g2.node_count(),
        g3.node_count(),
    ];
    println!(
        "Gaussian kernel node counts: F {}, 1st {}, 2nd {}, 3rd {}",
        counts[0], counts[1], counts[2], counts[3]
    );
    println!("1st: {g1}");
    assert!(
        counts[1] <= 12 && counts[2] <= 22 && counts[3] <= 36,
        "{counts:?}"
    );
    // And they are right: check the third derivative against finite differences.
    assert!(check_formula(&g2, 77, 8) > 0);
}

#[test]
fn bad_input() {
    let k = f("Exp(-SqDist(x, y))");
    // A variable absent from the formula: zero of its dimension (as KeOps).
    let z = diff::grad(&k, &Formula::vj(7, 4).unwrap(), &Formula::int(1)).unwrap();
    assert_eq!(z.dim, 4);
    assert_eq!(z.as_const(), Some(0.0));
    // Parsed the same way.
    let z = parse("Grad(Exp(-SqDist(x, y)), Vj(7,2), 1)", &ALIASES).unwrap();
    assert_eq!((z.dim, z.as_const()), (2, Some(0.0)));
    // The gradient input must have the formula's dimension.
    let err = parse("Grad(Exp(-SqDist(x, y)), x, y)", &ALIASES)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Grad") && err.contains("dimension 3") && err.contains("dimension 1"),
        "{err}"
    );
    assert!(err.contains("position"), "{err}");
    // Only variables can be differentiated against.
    let err = parse("Grad(Exp(-SqDist(x, y)), x + y, 1)", &ALIASES)
        .unwrap_err()
        .to_string();
    assert!(err.contains("variable"), "{err}");
    // Diff: the direction has the variable's dimension.
    let err = parse("Diff(Exp(-SqDist(x, y)), x, a)", &ALIASES)
        .unwrap_err()
        .to_string();
    assert!(err.contains("direction"), "{err}");
    for s in [
        "Laplacian(x * y, x)",
        "Divergence(Sum(x * y), x)",
        "TraceOperator(Sum(x), x)",
        "Grad(x, 1, x)",
        "GradFromPos(x, y)",
    ] {
        assert!(parse(s, &ALIASES).is_err(), "{s} should be an error");
    }
    // Operators expanded per coordinate refuse huge variables promptly (the fuzzer's
    // Laplacian with respect to 3,018,036 coordinates never ended).
    let huge = ["x = Vi(0,1)", "y = Vj(1,3018036)"];
    let start = std::time::Instant::now();
    for s in [
        "Laplacian(Exp(-SqNorm2(y)), y)",
        "GradMatrix(y, x)",
        "GradMatrix(x*y, y)",
    ] {
        let err = parse(s, &huge).unwrap_err().to_string();
        assert!(
            err.contains("once per coordinate") && err.contains("3018036"),
            "{s}: {err}"
        );
    }
    assert!(start.elapsed().as_secs_f64() < 5.0, "{:?}", start.elapsed());
    let fine = ["y = Vj(0,1000)"];
    assert_eq!(
        parse("Laplacian(Exp(-SqNorm2(y)), y)", &fine).unwrap().dim,
        1
    );
}
