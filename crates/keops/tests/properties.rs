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

use common::{
    check_values, close, fd_check, run_as, sum_magnitude, FdCheck, Inputs, Point, Rng, Tol,
};
use keops::formula::diff;
use keops::formula::parse::parse;
use keops::formula::{Binary, Formula, Op, Ternary, Unary};
use keops::{CpuKernel, Genred, Options, Reduction};
use proptest::prelude::*;

const ALIASES: [&str; 5] = [
    "x = Vi(0,3)",
    "y = Vj(1,3)",
    "a = Vi(2,1)",
    "b = Vj(3,1)",
    "p = Pm(4,1)",
];

fn vars() -> Vec<Formula> {
    vec![
        Formula::vi(0, 3).unwrap(),
        Formula::vj(1, 3).unwrap(),
        Formula::vi(2, 1).unwrap(),
        Formula::vj(3, 1).unwrap(),
        Formula::pm(4, 1).unwrap(),
    ]
}

fn leaf() -> BoxedStrategy<Formula> {
    prop_oneof![
        12 => proptest::sample::select(vars()),
        1 => (-3i64..=3).prop_map(Formula::int),
        1 => proptest::sample::select(vec![0.5, -1.25, 0.1, 2.5, -0.3, 1e-3]).prop_map(Formula::float),
        1 => ((-5i64..=5), (2i64..=4)).prop_map(|(p, q)| Formula::rat(p, q).unwrap()),
        1 => (2usize..=3).prop_map(|d| Formula::zero(d).unwrap()),
    ]
    .boxed()
}

/// One operation to apply to generated operands; integer parameters are adapted to the
/// operands' dimensions when the node is built.
#[derive(Clone, Debug)]
enum Node {
    Unary(Unary),
    Binary(Binary),
    Ternary(Ternary),
    Sum,
    SqNorm2,
    Norm2,
    Normalize,
    SqDist,
    Scalprod,
    WeightedSqNorm,
    Extract(usize, usize),
    Concat,
    Elem(usize),
    ElemT(usize, usize),
    SumT(usize),
    Coord(u8),
}

fn node_kind() -> BoxedStrategy<Node> {
    prop_oneof![
        6 => proptest::sample::select(Unary::SIMPLE.to_vec()).prop_map(Node::Unary),
        1 => (-3i32..=4).prop_map(|m| Node::Unary(Unary::Pow(m))),
        1 => (-2i32..=0, 0i32..=2).prop_map(|(a, b)| Node::Unary(Unary::ClampInt(a, b))),
        1 => (-2i32..=0, 0i32..=2).prop_map(|(a, b)| Node::Unary(Unary::DiffClampInt(a, b))),
        1 => (-1i32..=2).prop_map(|d| Node::Unary(Unary::Round(d))),
        6 => proptest::sample::select(Binary::ALL.to_vec()).prop_map(Node::Binary),
        2 => proptest::sample::select(Ternary::ALL.to_vec()).prop_map(Node::Ternary),
        1 => Just(Node::Sum),
        1 => Just(Node::SqNorm2),
        1 => Just(Node::Norm2),
        1 => Just(Node::Normalize),
        2 => Just(Node::SqDist),
        1 => Just(Node::Scalprod),
        1 => Just(Node::WeightedSqNorm),
        1 => (0usize..8, 0usize..8).prop_map(|(s, l)| Node::Extract(s, l)),
        1 => Just(Node::Concat),
        1 => (0usize..8).prop_map(Node::Elem),
        1 => (1usize..=4, 0usize..8).prop_map(|(n, m)| Node::ElemT(n, m)),
        1 => (1usize..=4).prop_map(Node::SumT),
        1 => (0u8..4).prop_map(Node::Coord),
    ]
    .boxed()
}

/// `b`, made broadcast-compatible with dimension `d` (summed if it is not).
fn fit(d: usize, b: &Formula) -> Formula {
    if d == 1 || b.dim == 1 || b.dim == d {
        b.clone()
    } else {
        b.sum()
    }
}

/// Builds `kind(a, b, c)` through the public constructors (the ones the parser uses).
fn build(kind: &Node, a: &Formula, b: &Formula, c: &Formula) -> Formula {
    match *kind {
        Node::Unary(u) => a.unary(u),
        // Powf half of the time on a positive base (finite values), else on anything
        // (NaN for negative bases: `exp(b ln a)`, see ops.rs::powf_outside_its_domain).
        Node::Binary(Binary::Powf) if a.node_count() % 2 == 0 => {
            let base = a.unary(Unary::Square).add(&Formula::float(0.5)).unwrap();
            base.powf(&fit(base.dim, b)).unwrap()
        }
        Node::Binary(op) => a.binary(op, &fit(a.dim, b)).unwrap(),
        Node::Ternary(t) => {
            let b = fit(a.dim, b);
            let c = fit(a.dim.max(b.dim), c);
            match t {
                Ternary::IfElse => a.if_else(&b, &c).unwrap(),
                Ternary::Clamp => a.clamp(&b, &c).unwrap(),
                Ternary::Mod => a.modulo(&b, &c).unwrap(),
            }
        }
        Node::Sum => a.sum(),
        Node::SqNorm2 => a.sqnorm2(),
        Node::Norm2 => a.norm2(),
        Node::Normalize => a.normalize().unwrap(),
        Node::SqDist => a.sqdist(&fit(a.dim, b)).unwrap(),
        Node::Scalprod => {
            let d = a.dim.min(b.dim);
            a.extract(0, d)
                .unwrap()
                .scalprod(&b.extract(0, d).unwrap())
                .unwrap()
        }
        Node::WeightedSqNorm => {
            let d = b.dim;
            let s = if a.dim == 1 || a.dim == d || a.dim == d * d {
                a.clone()
            } else {
                a.sum()
            };
            s.weighted_sqnorm(b).unwrap()
        }
        Node::Extract(s, l) => {
            let start = s % a.dim;
            a.extract(start, 1 + l % (a.dim - start)).unwrap()
        }
        Node::Concat => {
            let b = if a.dim + b.dim > 9 {
                b.sum()
            } else {
                b.clone()
            };
            let a = if a.dim + b.dim > 9 {
                a.sum()
            } else {
                a.clone()
            };
            a.concat(&b).unwrap()
        }
        Node::Elem(m) => a.elem(m % a.dim).unwrap(),
        Node::ElemT(n, m) => a.sum().elem_t(n, m % n).unwrap(),
        Node::SumT(d) => a.sum().sum_t(d).unwrap(),
        Node::Coord(k) => a.coord_reduce(match k {
            0 => Op::CoordMin,
            1 => Op::CoordMax,
            2 => Op::CoordArgMin,
            _ => Op::CoordArgMax,
        }),
    }
}

/// Random formulas of depth up to 4.
fn formula() -> impl Strategy<Value = Formula> {
    leaf().prop_recursive(4, 64, 2, |inner| {
        (node_kind(), inner.clone(), inner.clone(), inner)
            .prop_map(|(k, a, b, c)| build(&k, &a, &b, &c))
    })
}

fn inputs(n: usize, m: usize, seed: u64) -> Inputs {
    let mut r = common::Rng::new(seed);
    let mut inp = Inputs::new();
    inp.push(&[n, 3], || r.uniform(-2.0, 2.0))
        .push(&[m, 3], || r.uniform(-2.0, 2.0))
        .push(&[n, 1], || r.uniform(-2.0, 2.0))
        .push(&[m, 1], || r.uniform(-2.0, 2.0))
        .push(&[1], || r.uniform(-2.0, 2.0));
    inp
}

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
        // Formulas that do not depend on both i and j are made to, keeping them as a
        // subtree (hoisted, or broadcast when nothing depends on the reduced side).
        let cats: Vec<_> = f.variables().iter().filter_map(|v| v.as_var()).map(|v| v.0).collect();
        let f = if cats.contains(&keops::Cat::Vi) && cats.contains(&keops::Cat::Vj) {
            f
        } else {
            let k = Formula::vi(2, 1).unwrap().sub(&Formula::vj(3, 1).unwrap()).unwrap();
            f.mul(&k).unwrap()
        };
        let s = f.to_string();
        let inp = inputs(n, m, seed);
        for axis in [1, 0] {
            let g = Genred::new(&s, &ALIASES, Reduction::Sum, axis)
                .map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
            prop_assert!(g.formula() == &f);
            let want = keops::reference::reduce(&g, &inp.args_f64()).unwrap();
            let scale = sum_magnitude(&g, &inp);
            for opts in [Options { kernel: CpuKernel::TileProgram, ..Default::default() }, Options::default()] {
                let got = run_as::<f64>(&g, &inp, &opts).unwrap();
                let (gv, wv) = (&got.values.as_ref().unwrap(), &want.values.as_ref().unwrap());
                prop_assert_eq!(&gv.shape, &wv.shape);
                for (k, (&x, &w)) in gv.data.iter().zip(&wv.data).enumerate() {
                    prop_assert!(
                        close(x, w, scale[k], TOL),
                        "{} (axis {}, N={}, M={}, {:?}): value {}: got {:e}, want {:e}, scale {:e}",
                        s, axis, n, m, opts.kernel, k, x, w, scale[k]
                    );
                }
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
        for axis in [1, 0] {
            let g = Genred::new(s, &ALIASES, Reduction::Sum, axis).unwrap();
            let want = keops::reference::reduce(&g, &inp.args_f64()).unwrap();
            let scale = sum_magnitude(&g, &inp);
            for opts in [
                Options {
                    kernel: CpuKernel::TileProgram,
                    ..Default::default()
                },
                Options::default(),
            ] {
                let got = run_as::<f64>(&g, &inp, &opts).unwrap();
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
        let mut rng = Rng::new(seed);
        let e = Formula::pm(90, f.dim).unwrap();
        for v in f.variables() {
            let mut p = Point::random(std::slice::from_ref(&f), &mut rng, -2.0, 2.0);
            p.set(&e, (0..f.dim).map(|_| rng.unit() * 2.0 - 1.0).collect());
            if let FdCheck::Disagree(msg) = fd_check(&f, &v, &e, &p) {
                return Err(TestCaseError::fail(msg));
            }
            // Second order: the gradient (a formula in v and e) differentiated again.
            let g = diff::grad(&f, &v, &e).unwrap();
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
            let d = diff::diff(&f, &v, &u).unwrap();
            let lhs: f64 = p.eval(&d).iter().zip(p.get(&e)).map(|(a, b)| a * b).sum();
            let rhs: f64 = p.eval(&g).iter().zip(p.get(&u)).map(|(a, b)| a * b).sum();
            if lhs.is_finite() && rhs.is_finite() {
                prop_assert!((lhs - rhs).abs() <= 1e-9 * (1.0 + lhs.abs().max(rhs.abs())),
                    "Diff/Grad transpose for {} wrt {}: {:e} vs {:e}", f, v, lhs, rhs);
            }
        }
    }
}
