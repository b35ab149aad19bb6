//! Random formulas for property tests: operands from five variables (`x = Vi(0,3)`,
//! `y = Vj(1,3)`, `a = Vi(2,1)`, `b = Vj(3,1)`, `p = Pm(4,1)`) and constants, combined by
//! the op table's primitives through the public constructors (the parser's), with
//! integer parameters fitted to the operands; and data for them.

use super::Inputs;
use keops::formula::{Binary, Formula, Op, Ternary, Unary};
use proptest::prelude::*;

/// The variables' aliases, as the printed formulas name them.
pub const ALIASES: [&str; 5] = [
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
pub fn formula() -> impl Strategy<Value = Formula> {
    leaf().prop_recursive(4, 64, 2, |inner| {
        (node_kind(), inner.clone(), inner.clone(), inner)
            .prop_map(|(k, a, b, c)| build(&k, &a, &b, &c))
    })
}

pub fn inputs(n: usize, m: usize, seed: u64) -> Inputs {
    let mut r = super::Rng::new(seed);
    let mut inp = Inputs::new();
    inp.push(&[n, 3], || r.uniform(-2.0, 2.0))
        .push(&[m, 3], || r.uniform(-2.0, 2.0))
        .push(&[n, 1], || r.uniform(-2.0, 2.0))
        .push(&[m, 1], || r.uniform(-2.0, 2.0))
        .push(&[1], || r.uniform(-2.0, 2.0));
    inp
}

/// `f`, made to depend on both `i` and `j` where it does not (times `a - b`), keeping it
/// as a subtree (hoisted, or broadcast when nothing depends on the reduced side).
pub fn paired(f: &Formula) -> Formula {
    let cats: Vec<_> = f
        .variables()
        .iter()
        .filter_map(|v| v.as_var())
        .map(|v| v.0)
        .collect();
    if cats.contains(&keops::Cat::Vi) && cats.contains(&keops::Cat::Vj) {
        f.clone()
    } else {
        let k = Formula::vi(2, 1)
            .unwrap()
            .sub(&Formula::vj(3, 1).unwrap())
            .unwrap();
        f.mul(&k).unwrap()
    }
}
