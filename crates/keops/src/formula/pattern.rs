//! Structural patterns of kernel formulas, shared by the engines' special paths: the CPU
//! engine's fused radial kernel sums (`cpu::fused`) and one-pass products (the tile
//! program's `ScaledProduct`), and the GPU kernels' exponentials of scaled squared
//! distances (`cuda::prescale`).

use super::{Binary, Cat, Formula, Op, Unary};

/// Scalar factors with their exponents (+1 or -1).
pub type Factors = Vec<(Formula, i32)>;

/// A product `sign * prod(scalar factors) * prod(other factors)`.
#[derive(Default)]
pub struct Product {
    /// Whether the sign is negative.
    pub neg: bool,
    /// Factors of dimension 1 made of parameters and constants, with exponents.
    pub scalars: Factors,
    /// The other factors.
    pub others: Vec<Formula>,
}

impl Product {
    /// `f` flattened through products, negations and divisions by scalars.
    pub fn of(f: &Formula) -> Product {
        Product::unfolded(f, |_| true, is_scalar)
    }

    /// `f` flattened through the products, negations and divisions by a `scalar` below
    /// it for which `unfold` holds (`f` itself always), left factors first; `scalar`
    /// tells the scalar factors from the others. Iterative: a formula built through the
    /// API may be deeper than the stack.
    pub fn unfolded(
        f: &Formula,
        unfold: impl Fn(&Formula) -> bool,
        scalar: impl Fn(&Formula) -> bool,
    ) -> Product {
        enum Step<'a> {
            Visit(&'a Formula, bool),
            Divisor(&'a Formula),
        }
        let mut p = Product::default();
        let mut todo = vec![Step::Visit(f, true)];
        while let Some(step) = todo.pop() {
            let (g, top) = match step {
                Step::Visit(g, top) => (g, top),
                Step::Divisor(d) => {
                    p.scalars.push((d.clone(), -1));
                    continue;
                }
            };
            let open = top || unfold(g);
            match g.op {
                Op::Binary(Binary::Mult) if open => {
                    todo.push(Step::Visit(&g.args[1], false));
                    todo.push(Step::Visit(&g.args[0], false));
                }
                Op::Binary(Binary::Divide) if open && scalar(&g.args[1]) => {
                    todo.push(Step::Divisor(&g.args[1]));
                    todo.push(Step::Visit(&g.args[0], false));
                }
                Op::Unary(Unary::Minus) if open => {
                    p.neg = !p.neg;
                    todo.push(Step::Visit(&g.args[0], false));
                }
                _ if scalar(g) => p.scalars.push((g.clone(), 1)),
                _ => p.others.push(g.clone()),
            }
        }
        p
    }
}

/// Whether `f` reads a variable of category `cat`.
pub fn depends_on(f: &Formula, cat: Cat) -> bool {
    f.topo_order()
        .iter()
        .any(|n| matches!(n.as_var(), Some((c, _)) if c == cat))
}

/// Whether `f` is of dimension 1 and made of parameters and constants only.
pub fn is_scalar(f: &Formula) -> bool {
    f.dim == 1 && !depends_on(f, Cat::Vi) && !depends_on(f, Cat::Vj)
}

/// The two variables `(a, b)` if `f` is `SqDist(a, b)` or `SqNorm2(a - b)`, with `a` and
/// `b` of the same dimension.
pub fn sqdist_vars(f: &Formula) -> Option<(&Formula, &Formula)> {
    let (a, b) = match f.op {
        Op::SqDist => (&f.args[0], &f.args[1]),
        Op::SqNorm2 if f.args[0].op == Op::Binary(Binary::Subtract) => {
            (&f.args[0].args[0], &f.args[0].args[1])
        }
        _ => return None,
    };
    (a.as_var().is_some() && b.as_var().is_some() && a.dim == b.dim).then_some((a, b))
}

/// `c * r2` (or `c * sqrt(r2)` when `sqrt`) with `r2` a squared distance between two
/// variables ([`sqdist_vars`]): the factors of `c` (a negative sign as the factor -1) and
/// the node `r2`.
pub fn scaled_sqdist(f: &Formula, sqrt: bool) -> Option<(Factors, Formula)> {
    let p = Product::of(f);
    let [inner] = &p.others[..] else {
        return None;
    };
    let r2 = if sqrt {
        match inner.op {
            Op::Unary(Unary::Sqrt) => &inner.args[0],
            _ => return None,
        }
    } else {
        inner
    };
    sqdist_vars(r2)?;
    let mut coef = p.scalars;
    if p.neg {
        coef.push((Formula::int(-1), 1));
    }
    Some((coef, r2.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formula::parse::parse;

    fn f(s: &str) -> Formula {
        parse(
            s,
            &["x = Vi(0,3)", "y = Vj(1,3)", "g = Pm(2,1)", "b = Vj(3,1)"],
        )
        .unwrap()
    }

    #[test]
    fn finds_scaled_squared_distances() {
        let (c, r2) = scaled_sqdist(&f("-SqDist(x,y) * g / 2"), false).unwrap();
        assert_eq!(c.len(), 3, "g, 1/2 and the sign");
        assert_eq!(r2.op, Op::SqDist);
        let (c, r2) = scaled_sqdist(&f("g * Sqrt(SqNorm2(x - y))"), true).unwrap();
        assert_eq!((c.len(), r2.op.clone()), (1, Op::SqNorm2));
        assert!(scaled_sqdist(&f("SqDist(x,y) * b"), false).is_none());
        assert!(scaled_sqdist(&f("SqDist(x,y) + g"), false).is_none());
        assert!(scaled_sqdist(&f("SqNorm2(x + y)"), false).is_none());
        assert!(scaled_sqdist(&f("SqDist(x,y)"), true).is_none());
    }
}
