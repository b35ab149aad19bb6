//! Printing formulas in KeOps syntax; `parse(print(f)) == f` for every formula.

use super::{Binary, Formula, Op, Unary};
use std::fmt;

impl fmt::Display for Formula {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.args;
        match &self.op {
            Op::Var { cat, index, dim } => write!(f, "{}({index},{dim})", cat.name()),
            Op::IntCst(n) if *n < 0 => write!(f, "(-{})", n.unsigned_abs()),
            Op::IntCst(n) => write!(f, "{n}"),
            Op::RatCst(p, q) => write!(f, "RatCst({p},{q})"),
            Op::FloatCst(b) => {
                let x = f64::from_bits(*b);
                if x < 0.0 {
                    write!(f, "(-{:?})", -x)
                } else {
                    write!(f, "{x:?}")
                }
            }
            Op::Zero(d) => write!(f, "Zero({d})"),
            Op::Unary(Unary::Minus) => write!(f, "(-{})", a[0]),
            Op::Unary(Unary::Pow(m)) => write!(f, "Pow({},{m})", a[0]),
            Op::Unary(Unary::ClampInt(lo, hi)) => write!(f, "ClampInt({},{lo},{hi})", a[0]),
            Op::Binary(b @ (Binary::Add | Binary::Subtract | Binary::Mult | Binary::Divide)) => {
                let sym = match b {
                    Binary::Add => "+",
                    Binary::Subtract => "-",
                    Binary::Mult => "*",
                    _ => "/",
                };
                write!(f, "({} {sym} {})", a[0], a[1])
            }
            Op::SumT(d) => write!(f, "SumT({},{d})", a[0]),
            Op::Extract { start, dim } => write!(f, "Extract({},{start},{dim})", a[0]),
            Op::Elem(m) => write!(f, "Elem({},{m})", a[0]),
            Op::ElemT { n, m } => write!(f, "ElemT({},{n},{m})", a[0]),
            op => {
                write!(f, "{}(", op.name())?;
                for (k, x) in a.iter().enumerate() {
                    if k > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, ")")
            }
        }
    }
}
