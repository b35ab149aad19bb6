//! Property tests over random formulas built from the op table:
//! - `parse(print(f)) == f` (the very same interned node);
//! - the f64 engine (tile program and default options) agrees with the oracle
//!   (`keops::reference::reduce`) for the `Sum` reduction on small random data, both axes;
//! - symbolic gradients agree with finite differences of the oracle, to second order,
//!   and `Diff` is the transpose of `Grad` (tolerances: `common::fd_check`).
//!
//! Tolerance: relative 1e-9, with the absolute floor scaled by the magnitude of the
//! values: `|got - want| <= 1e-9 * (|want| + scale)`, `scale` = sum over the reduced axis
//! of the largest absolute value of any node of the formula at that pair (the engine may
//! sum in another order, and its elementary functions may differ by a few ulps, which
//! intermediate results of that size amplify). NaN and infinities must match exactly.

mod common;

use common::random_formulas::{formula, inputs, paired, ALIASES};
use common::{
    check_values, fd_check, largest_intermediate, run_as, sum_oracles, FdCheck, Point, Rng,
    SumOracle, Tol,
};
use keops::formula::diff;
use keops::formula::parse::parse;
use keops::formula::{Formula, Ternary, Unary};
use keops::{CpuKernel, Genred, Options, Reduction};
use proptest::prelude::*;

const TOL: Tol = Tol {
    rtol: 1e-9,
    atol: 0.0,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Printing a formula and parsing it back gives the very same (interned) node.
    #[test]
    fn parse_print_round_trip(f in formula()) {
        let s = f.to_string();
        let g = parse(&s, &[] as &[&str]).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert!(g == f, "parse(print(f)) != f:\n  f      = {s}\n  parsed = {g}");
        // With the aliases declared (the names are not used by the printer).
        let g = parse(&s, &ALIASES).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert!(g == f);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// The f64 engine agrees with the oracle on random formulas.
    #[test]
    fn engine_matches_oracle(f in formula(), n in 1usize..=20, m in 1usize..=20, seed in any::<u64>()) {
        let f = paired(&f);
        let s = f.to_string();
        let inp = inputs(n, m, seed);
        let mut gs = Vec::new();
        for axis in [1, 0] {
            let g = Genred::new(&s, &ALIASES, Reduction::Sum, axis)
                .map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
            prop_assert!(g.formula() == &f);
            gs.push(g);
        }
        for (g, SumOracle { want, scale }) in gs.iter().zip(sum_oracles(&gs, &inp)) {
            let axis = g.axis();
            for opts in [Options { kernel: CpuKernel::TileProgram, ..Default::default() }, Options::default()] {
                let got = run_as::<f64>(g, &inp, &opts).unwrap();
                let ctx = format!("{s} (axis {axis}, N={n}, M={m}, {:?})", opts.kernel);
                check_values(&got, &want, Some(&scale), TOL, &ctx);
            }
        }
    }
}

/// A few fixed formulas that the generator reaches only rarely, through the same check.
#[test]
fn engine_matches_oracle_on_fixed_deep_formulas() {
    let inp = inputs(17, 19, 3);
    for s in [
        "Exp(-Sum(Square(Vi(0,3) - Vj(1,3)) * Pm(4,1))) * Vj(3,1)",
        "IfElse(Vi(2,1) - Vj(3,1), Normalize(Vi(0,3) + Vj(1,3)), Clamp(Vj(1,3), Vi(2,1), Pm(4,1)))",
        "WeightedSqNorm(Concat(Concat(Vi(0,3), Vj(1,3)), Vi(0,3) * Vj(3,1)), Vj(1,3) - Vi(0,3))",
        "ArgMax(Concat(Vi(0,3), Vj(1,3))) + Min(Vi(0,3) * Vj(1,3)) - Extract(Vj(1,3), 1, 1)",
        "SumT(Elem(Vj(1,3), 2), 3) * ElemT(Vi(2,1), 3, 1) + Sin(Vj(1,3)) * Cos(Vi(0,3))",
    ] {
        let gs = [1, 0].map(|axis| Genred::new(s, &ALIASES, Reduction::Sum, axis).unwrap());
        for (g, SumOracle { want, scale }) in gs.iter().zip(sum_oracles(&gs, &inp)) {
            let axis = g.axis();
            for opts in [
                Options {
                    kernel: CpuKernel::TileProgram,
                    ..Default::default()
                },
                Options::default(),
            ] {
                let got = run_as::<f64>(g, &inp, &opts).unwrap();
                check_values(&got, &want, Some(&scale), TOL, &format!("{s} axis {axis}"));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// `Grad(F, v, e)` agrees with central differences of the oracle for every variable
    /// `v`, and so does the gradient of that gradient (second derivatives); `Diff` is
    /// the transpose of `Grad`.
    #[test]
    fn gradients_match_finite_differences(f in formula(), seed in any::<u64>()) {
        // Staircases (Floor, Round, Mod) have derivative 0 almost everywhere, but on a
        // steep operand finite differences measure the slope of the stairs: no test.
        prop_assume!(!f.topo_order().iter().any(|n| matches!(
            n.op,
            keops::formula::Op::Unary(Unary::Floor | Unary::Round(_))
                | keops::formula::Op::Ternary(Ternary::Mod)
        )));
        check_gradients(&f, seed)?;
    }
}

/// Cases the generator met, pinned.
#[test]
fn gradients_at_pinned_cases() {
    // Acos(x / |x|) = Acos(1) = 0 under a Sqrt: the derivative is 0 times infinity, which
    // Diff and Grad round to different finite values (-7e-6 and -0; intermediate values
    // of 1e9 and more).
    let f = parse(
        "Sqrt(Acos((Vi(2,1) * Rsqrt(SqNorm2(Vi(2,1))))))",
        &[] as &[&str],
    )
    .unwrap();
    check_gradients(&f, 2275697320627030390).unwrap();
}

/// The checks of [`gradients_match_finite_differences`] for `f`, with points drawn
/// from `seed`.
fn check_gradients(f: &Formula, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let e = Formula::pm(90, f.dim).unwrap();
    for v in f.variables() {
        let mut p = Point::random(std::slice::from_ref(f), &mut rng, -2.0, 2.0);
        p.set(&e, (0..f.dim).map(|_| rng.unit() * 2.0 - 1.0).collect());
        if let FdCheck::Disagree(msg) = fd_check(f, &v, &e, &p) {
            return Err(TestCaseError::fail(msg));
        }
        // Second order: the gradient (a formula in v and e) differentiated again.
        let g = diff::grad(f, &v, &e).unwrap();
        let e2 = Formula::pm(91, g.dim).unwrap();
        p.set(&e2, (0..g.dim).map(|_| rng.unit() * 2.0 - 1.0).collect());
        for w in [v.clone(), e.clone()] {
            if let FdCheck::Disagree(msg) = fd_check(&g, &w, &e2, &p) {
                return Err(TestCaseError::fail(format!("second order: {msg}")));
            }
        }
        // <Diff(F, v, u), e> == <Grad(F, v, e), u>.
        let u = Formula::pm(92, v.dim).unwrap();
        p.set(&u, (0..v.dim).map(|_| rng.unit() * 2.0 - 1.0).collect());
        // Both round, by up to their largest intermediate values times an epsilon: near
        // a singularity (a vanishing derivative times an infinite one) those are huge.
        let d = diff::diff(f, &v, &u).unwrap();
        let lhs: f64 = p.eval(&d).iter().zip(p.get(&e)).map(|(a, b)| a * b).sum();
        let rhs: f64 = p.eval(&g).iter().zip(p.get(&u)).map(|(a, b)| a * b).sum();
        let rounding = 1e-14 * (largest_intermediate(&d, &p) + largest_intermediate(&g, &p));
        if lhs.is_finite() && rhs.is_finite() {
            prop_assert!(
                (lhs - rhs).abs() <= 1e-9 * (1.0 + lhs.abs().max(rhs.abs())) + rounding,
                "Diff/Grad transpose for {} wrt {}: {:e} vs {:e}",
                f,
                v,
                lhs,
                rhs
            );
        }
    }
    Ok(())
}
