//! Printing formulas in KeOps syntax; `parse(print(f)) == f` for every formula.
//!
//! The printer walks the DAG with an explicit stack (no recursion), so that formulas
//! built in code, which may be far deeper than the parser allows, print too.

use super::{Binary, Formula, Op, Unary};
use std::fmt;

/// What is left to print: a node, or text that follows one.
enum Item<'a> {
    Node(&'a Formula),
    Text(&'static str),
    Owned(String),
}

impl fmt::Display for Formula {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut stack = vec![Item::Node(self)];
        while let Some(item) = stack.pop() {
            match item {
                Item::Text(t) => f.write_str(t)?,
                Item::Owned(s) => f.write_str(&s)?,
                Item::Node(n) => open(n, f, &mut stack)?,
            }
        }
        Ok(())
    }
}

/// Writes what comes before `node`'s first operand and pushes the rest (operands and
/// the text between and after them) in reverse order.
fn open<'a>(
    node: &'a Formula,
    f: &mut fmt::Formatter<'_>,
    stack: &mut Vec<Item<'a>>,
) -> fmt::Result {
    let a = &node.args;
    // `prefix(a0, suffix)`: one operand, then a suffix.
    let mut one = |prefix: &str, suffix: String| -> fmt::Result {
        stack.push(Item::Owned(suffix));
        stack.push(Item::Node(&a[0]));
        f.write_str(prefix)
    };
    match &node.op {
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
        Op::Unary(Unary::Minus) => one("(-", ")".into()),
        Op::Unary(Unary::Pow(m)) => one("Pow(", format!(",{m})")),
        Op::Unary(Unary::ClampInt(lo, hi)) => one("ClampInt(", format!(",{lo},{hi})")),
        Op::Unary(Unary::DiffClampInt(lo, hi)) => one("DiffClampInt(", format!(",{lo},{hi})")),
        Op::Unary(Unary::Round(d)) => one("Round(", format!(",{d})")),
        Op::SumT(d) => one("SumT(", format!(",{d})")),
        Op::Extract { start, dim } => one("Extract(", format!(",{start},{dim})")),
        Op::Elem(m) => one("Elem(", format!(",{m})")),
        Op::ElemT { n, m } => one("ElemT(", format!(",{n},{m})")),
        Op::OneHot(d) => one("OneHot(", format!(",{d})")),
        Op::TensorDot(td) => {
            let ind = |v: &[usize]| {
                let items: Vec<String> = v.iter().map(|k| k.to_string()).collect();
                format!(",Ind({})", items.join(","))
            };
            let suffix = [&td.dims_a, &td.dims_b, &td.cont_a, &td.cont_b, &td.perm]
                .iter()
                .map(|v| ind(v))
                .collect::<String>()
                + ")";
            stack.extend([
                Item::Owned(suffix),
                Item::Node(&a[1]),
                Item::Text(","),
                Item::Node(&a[0]),
            ]);
            f.write_str("TensorDot(")
        }
        Op::Binary(b @ (Binary::Add | Binary::Subtract | Binary::Mult | Binary::Divide)) => {
            let sym = match b {
                Binary::Add => " + ",
                Binary::Subtract => " - ",
                Binary::Mult => " * ",
                _ => " / ",
            };
            stack.extend([
                Item::Text(")"),
                Item::Node(&a[1]),
                Item::Text(sym),
                Item::Node(&a[0]),
            ]);
            f.write_str("(")
        }
        op => {
            stack.push(Item::Text(")"));
            for (k, x) in a.iter().enumerate().rev() {
                stack.push(Item::Node(x));
                if k > 0 {
                    stack.push(Item::Text(","));
                }
            }
            write!(f, "{}(", op.name())
        }
    }
}
