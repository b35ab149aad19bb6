//! The reference evaluator: a formula evaluated pair by pair, in plain `f64` with libm's
//! elementary functions. It defines the semantics of every op and is the oracle of the
//! tests; the engines must agree with it.
//!
//! [`apply`] is the one definition of what each op computes at one point; it is generic
//! over [`Real`] so that engines can reuse it for their scalar (per-row) phases.

use super::{Cat, Formula, Op};
use crate::real::{Exact, MathMode, NoFma, Real};
use std::collections::HashMap;

/// Computes `op(args)` at one point into `out` (of the op's output dimension).
#[inline]
pub fn apply<R: Real, M: MathMode>(op: &Op, args: &[&[R]], out: &mut [R]) {
    // Broadcast access: a dimension-1 operand is the same for every coordinate.
    let at = |a: &[R], k: usize| if a.len() == 1 { a[0] } else { a[k] };
    match *op {
        Op::Var { .. } => unreachable!("variables are loaded, not applied"),
        Op::IntCst(_) | Op::RatCst(..) | Op::FloatCst(_) | Op::Zero(_) => {
            let v = R::from_f64(op.const_value().unwrap_or(0.0));
            out.iter_mut().for_each(|o| *o = v);
        }
        Op::Unary(u) => {
            for (o, &x) in out.iter_mut().zip(args[0]) {
                *o = u.apply::<R, M>(x);
            }
        }
        Op::Binary(b) => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = b.apply::<R, M>(at(args[0], k), at(args[1], k));
            }
        }
        Op::Ternary(t) => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = t.apply(at(args[0], k), at(args[1], k), at(args[2], k));
            }
        }
        Op::Sum => out[0] = args[0].iter().fold(R::ZERO, |s, &x| s + x),
        Op::SumT(_) => out.iter_mut().for_each(|o| *o = args[0][0]),
        Op::SqNorm2 => out[0] = args[0].iter().fold(R::ZERO, |s, &x| s + x * x),
        Op::SqDist => {
            let d = args[0].len().max(args[1].len());
            out[0] = (0..d).fold(R::ZERO, |s, k| {
                let t = at(args[0], k) - at(args[1], k);
                s + t * t
            });
        }
        Op::Scalprod => {
            out[0] = args[0]
                .iter()
                .zip(args[1])
                .fold(R::ZERO, |s, (&x, &y)| s + x * y)
        }
        Op::WeightedSqNorm => {
            let (s, x) = (args[0], args[1]);
            let d = x.len();
            out[0] = if s.len() == d * d && d > 1 {
                let mut acc = R::ZERO;
                for k in 0..d {
                    for l in 0..d {
                        acc += x[k] * s[k * d + l] * x[l];
                    }
                }
                acc
            } else {
                (0..d).fold(R::ZERO, |acc, k| acc + at(s, k) * x[k] * x[k])
            };
        }
        Op::Extract { start, dim } => out.copy_from_slice(&args[0][start..start + dim]),
        Op::Concat => {
            let n = args[0].len();
            out[..n].copy_from_slice(args[0]);
            out[n..].copy_from_slice(args[1]);
        }
        Op::Elem(m) => out[0] = args[0][m],
        Op::ElemT { m, .. } => {
            out.iter_mut().for_each(|o| *o = R::ZERO);
            out[m] = args[0][0];
        }
        Op::TensorDot(ref td) => {
            out.iter_mut().for_each(|o| *o = R::ZERO);
            for &(o, i, j) in td.terms() {
                out[o as usize] += args[0][i as usize] * args[1][j as usize];
            }
        }
        Op::OneHot(_) => {
            let k = args[0][0].to_f64().round();
            for (c, o) in out.iter_mut().enumerate() {
                *o = if k == c as f64 { R::ONE } else { R::ZERO };
            }
        }
        Op::ComplexPart { imag } => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = args[0][2 * k + imag as usize];
            }
        }
        Op::ToComplex { imag } => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = if k % 2 == imag as usize {
                    args[0][k / 2]
                } else {
                    R::ZERO
                };
            }
        }
        Op::CoordMin | Op::CoordMax | Op::CoordArgMin | Op::CoordArgMax => {
            let a = args[0];
            let is_min = matches!(op, Op::CoordMin | Op::CoordArgMin);
            let (mut best, mut arg) = (a[0], 0usize);
            for (k, &x) in a.iter().enumerate().skip(1) {
                if (is_min && x < best) || (!is_min && x > best) {
                    best = x;
                    arg = k;
                }
            }
            out[0] = if matches!(op, Op::CoordMin | Op::CoordMax) {
                best
            } else {
                R::from_f64(arg as f64)
            };
        }
    }
}

/// A formula prepared for repeated evaluation at single points.
pub struct PointEvaluator {
    nodes: Vec<Formula>,
    args: Vec<Vec<usize>>,
    offsets: Vec<usize>,
    roots: Vec<usize>,
    size: usize,
}

impl PointEvaluator {
    /// Prepares the evaluation of `roots` (evaluated together, sharing subexpressions).
    pub fn new(roots: &[Formula]) -> Self {
        let nodes = super::topo_order(roots);
        let pos: HashMap<u64, usize> = nodes.iter().enumerate().map(|(k, f)| (f.id(), k)).collect();
        let args = nodes
            .iter()
            .map(|f| f.args.iter().map(|a| pos[&a.id()]).collect())
            .collect();
        let mut offsets = Vec::with_capacity(nodes.len());
        let mut size = 0;
        for f in &nodes {
            offsets.push(size);
            size += f.dim;
        }
        let roots = roots.iter().map(|r| pos[&r.id()]).collect();
        PointEvaluator {
            nodes,
            args,
            offsets,
            roots,
            size,
        }
    }

    /// Evaluates at one point; `var(cat, index)` gives the value of a variable there.
    /// Returns the values of the roots, concatenated.
    pub fn eval<'a>(&self, var: impl Fn(Cat, usize) -> &'a [f64]) -> Vec<f64> {
        let mut buf = vec![Exact(0.0); self.size];
        for (k, f) in self.nodes.iter().enumerate() {
            let (o, d) = (self.offsets[k], f.dim);
            if let Op::Var { cat, index, .. } = f.op {
                for (b, &x) in buf[o..o + d].iter_mut().zip(var(cat, index)) {
                    *b = Exact(x);
                }
                continue;
            }
            // Operands always precede the node: split the buffer to borrow both.
            let (before, after) = buf.split_at_mut(o);
            let operand = |a: usize| &before[self.offsets[a]..self.offsets[a] + self.nodes[a].dim];
            let ids = &self.args[k];
            // Most ops take up to 4 operands: those on the stack, not in a Vec per node and
            // point (the oracle evaluates every pair of every test this way).
            let mut few: [&[Exact]; 4] = [&[]; 4];
            let many: Vec<&[Exact]>;
            let args: &[&[Exact]] = if ids.len() <= few.len() {
                for (slot, &a) in few.iter_mut().zip(ids) {
                    *slot = operand(a);
                }
                &few[..ids.len()]
            } else {
                many = ids.iter().map(|&a| operand(a)).collect();
                &many
            };
            apply::<Exact, NoFma>(&f.op, args, &mut after[..d]);
        }
        let mut out = Vec::with_capacity(self.roots.iter().map(|&r| self.nodes[r].dim).sum());
        for &r in &self.roots {
            out.extend(
                buf[self.offsets[r]..self.offsets[r] + self.nodes[r].dim]
                    .iter()
                    .map(|x| x.0),
            );
        }
        out
    }
}
