//! Symbolic differentiation: reverse mode over the DAG with each op's vjp rule
//! ([`Op::vjp`]), and KeOps' differential operators built on it.
//!
//! Gradients are formulas like any other: they run on the same engines and can be
//! differentiated again. Sizes stay small because every node goes through the
//! simplifying constructors (zeros and ones vanish, integer constants fold) and the
//! hash-consing interner shares common subexpressions between the forward formula, its
//! gradient and further derivatives.
//!
//! | operator | meaning |
//! | --- | --- |
//! | `Grad(F, v, e)` | gradient of `<F, e>` with respect to the variable `v` (`J^T e`) |
//! | `GradFromPos(F, v, k)` | `Grad(F, v, Vi(k, dim F))`: the gradient input is argument `k` |
//! | `Diff(F, v, u)` | forward derivative `J u` |
//! | `Divergence(F, v)` | trace of the Jacobian (`dim F == dim v`) |
//! | `Laplacian(F, v)` | `Divergence(Grad(F, v, 1), v)` for a scalar `F` |
//! | `GradMatrix(F, v)` | all gradients `Grad(F, v, e_k)` concatenated (`dim F * dim v`) |
//! | `TraceOperator(F, u)` | `sum_k <F(u := e_k), e_k>` for `F` linear in `u` |

use std::collections::HashMap;

use super::{Cat, Formula, Op, Ternary};
use crate::error::{KeopsError, Result};

/// First argument index of the placeholder variables used internally (never visible in
/// a result: every operator substitutes them away before returning).
const PLACEHOLDER: usize = usize::MAX - 16;

fn placeholder(slot: usize, dim: usize) -> Result<Formula> {
    Formula::var(Cat::Pm, PLACEHOLDER + slot, dim)
}

fn op_err(op: &str, msg: String) -> KeopsError {
    KeopsError::Dim {
        op: op.to_string(),
        msg,
    }
}

/// Checks that `v` is a variable (the only thing one differentiates with respect to).
fn expect_var(op: &str, v: &Formula) -> Result<()> {
    if v.as_var().is_some() {
        Ok(())
    } else {
        Err(op_err(
            op,
            format!("can only differentiate with respect to a variable, got {v}"),
        ))
    }
}

/// `Grad(F, v, e)`: the gradient of `<F, e>` with respect to the variable `v`, i.e.
/// `J_F(v)^T e`, of `v`'s dimension. Zero when `F` does not depend on `v` (as KeOps).
///
/// ```
/// use keops::formula::{parse::parse, diff::grad};
/// let f = parse("Exp(-SqDist(x, y))", &["x = Vi(0,3)", "y = Vj(1,3)"])?;
/// let x = parse("x", &["x = Vi(0,3)"])?;
/// let g = grad(&f, &x, &keops::formula::Formula::int(1))?;
/// assert_eq!(g.dim, 3);
/// # Ok::<(), keops::KeopsError>(())
/// ```
pub fn grad(f: &Formula, v: &Formula, e: &Formula) -> Result<Formula> {
    expect_var("Grad", v)?;
    if e.dim != f.dim {
        return Err(op_err(
            "Grad",
            format!(
                "the gradient input has dimension {}, but the formula has dimension {}",
                e.dim, f.dim
            ),
        ));
    }
    reverse(f, v, e)
}

/// The reverse pass: adjoints flow from `f` (seeded with `e`) to the variable `v`.
fn reverse(f: &Formula, v: &Formula, e: &Formula) -> Result<Formula> {
    let order = f.topo_order();
    // Only nodes that depend on `v` need adjoints.
    let mut live: HashMap<u64, bool> = HashMap::new();
    for n in &order {
        let dep = n == v || n.args.iter().any(|a| live[&a.id()]);
        live.insert(n.id(), dep);
    }
    let mut adj: HashMap<u64, Formula> = HashMap::new();
    if live[&f.id()] {
        adj.insert(f.id(), e.clone());
    }
    for n in order.iter().rev() {
        if n == v {
            continue;
        }
        let Some(g) = adj.remove(&n.id()) else {
            continue;
        };
        if let Some(sel) = selected_branch(n, v, &g)? {
            let total = match adj.remove(&v.id()) {
                Some(prev) => prev.add(&sel)?,
                None => sel,
            };
            adj.insert(v.id(), total);
            continue;
        }
        let contribs = n.op.vjp(&n.args, n, &g)?;
        for (a, c) in n.args.iter().zip(contribs) {
            let Some(c) = c else { continue };
            if !live[&a.id()] {
                continue;
            }
            let total = match adj.remove(&a.id()) {
                Some(prev) => prev.add(&c)?,
                None => c,
            };
            adj.insert(a.id(), total);
        }
    }
    match adj.remove(&v.id()) {
        Some(g) => Ok(g),
        None => Formula::zero(v.dim),
    }
}

/// For `n = IfElse(c, a, b)` with a scalar condition, seeded with `g`: the derivative
/// of the branch `c` selects, `IfElse(c, Grad(a, v, g), Grad(b, v, g))` (keopscore's
/// rule). Masked adjoints passed down both branches (`IfElse(c, g, 0)` to `a`) give
/// the same sum, but `0 * inf` where the branch not taken has an infinite derivative:
/// `IfElse(x, Sqrt(x), x*x*x)` would have a NaN gradient at every `x < 0`. A vector
/// condition keeps the masked adjoints: its mask lies in the output's coordinates, not
/// in `v`'s. `None` for every other node.
fn selected_branch(n: &Formula, v: &Formula, g: &Formula) -> Result<Option<Formula>> {
    if n.op != Op::Ternary(Ternary::IfElse) || n.args[0].dim != 1 {
        return Ok(None);
    }
    let (c, a, b) = (&n.args[0], &n.args[1], &n.args[2]);
    // A branch of dimension 1 is broadcast to the output: its seed is the sum of g.
    let branch = |f: &Formula| reverse(f, v, &if f.dim == g.dim { g.clone() } else { g.sum() });
    Ok(Some(c.if_else(&branch(a)?, &branch(b)?)?))
}

/// Replaces every occurrence of the nodes in `map` (by identity) and rebuilds the
/// formula through the simplifying constructors.
pub fn substitute(f: &Formula, map: &[(Formula, Formula)]) -> Result<Formula> {
    let mut done: HashMap<u64, Formula> = map.iter().map(|(a, b)| (a.id(), b.clone())).collect();
    for n in f.topo_order() {
        if done.contains_key(&n.id()) {
            continue;
        }
        let args: Vec<Formula> = n.args.iter().map(|a| done[&a.id()].clone()).collect();
        let rebuilt = if args.iter().zip(&n.args).all(|(a, b)| a == b) {
            n.clone()
        } else {
            rebuild(&n.op, &args)?
        };
        done.insert(n.id(), rebuilt);
    }
    Ok(done[&f.id()].clone())
}

/// `op(args)` through the simplifying constructors.
fn rebuild(op: &Op, a: &[Formula]) -> Result<Formula> {
    Ok(match *op {
        Op::Unary(u) => a[0].unary(u),
        Op::Binary(b) => a[0].binary(b, &a[1])?,
        Op::Sum => a[0].sum(),
        Op::SumT(d) => a[0].sum_t(d)?,
        Op::Extract { start, dim } => a[0].extract(start, dim)?,
        Op::Elem(m) => a[0].elem(m)?,
        _ => Formula::new(op.clone(), a.to_vec())?,
    })
}

fn contains(f: &Formula, v: &Formula) -> bool {
    f.topo_order().iter().any(|n| n == v)
}

/// `Diff(F, v, u)`: the forward derivative `J_F(v) u`, of `F`'s dimension.
///
/// Computed as the transpose of the transpose: `Grad(Grad(F, v, w), w, u)` for a
/// placeholder `w`, which is exact because `Grad(F, v, w)` is linear in `w`.
pub fn diff(f: &Formula, v: &Formula, u: &Formula) -> Result<Formula> {
    expect_var("Diff", v)?;
    if u.dim != v.dim {
        return Err(op_err(
            "Diff",
            format!(
                "the direction has dimension {}, but the variable has dimension {}",
                u.dim, v.dim
            ),
        ));
    }
    let w = placeholder(0, f.dim)?;
    let jt = reverse(f, v, &w)?;
    let j = reverse(&jt, &w, u)?;
    if contains(&j, &w) {
        // Cannot happen for vjp rules linear in their gradient input; never return a
        // formula with a dangling placeholder.
        return Err(op_err("Diff", "internal error: gradient not linear".into()));
    }
    Ok(j)
}

/// Most formula nodes an operator expanded coordinate by coordinate (`TraceOperator`,
/// hence `Divergence` and `Laplacian`, and `GradMatrix`) may visit: one pass over `F`
/// per coordinate. Past it the expansion alone takes seconds (a `Laplacian` with
/// respect to a variable of 3 million coordinates never ended).
const MAX_EXPANSION: usize = 1 << 20;

fn check_expansion(op: &str, f: &Formula, coords: usize) -> Result<()> {
    let nodes = f.topo_order().len();
    if nodes.saturating_mul(coords) > MAX_EXPANSION {
        return Err(op_err(
            op,
            format!(
                "it expands the formula once per coordinate: {coords} coordinates of a \
                 formula of {nodes} nodes exceed {MAX_EXPANSION} nodes"
            ),
        ));
    }
    Ok(())
}

/// `TraceOperator(F, u)`: for `F` linear in the variable `u` (`dim F == dim u`), the
/// trace of that linear map, `sum_k Elem(F(u := e_k), k)`.
pub fn trace_operator(f: &Formula, u: &Formula) -> Result<Formula> {
    expect_var("TraceOperator", u)?;
    if f.dim != u.dim {
        return Err(op_err(
            "TraceOperator",
            format!(
                "the formula has dimension {} but the variable {u} has dimension {}; they must be equal",
                f.dim, u.dim
            ),
        ));
    }
    check_expansion("TraceOperator", f, u.dim)?;
    let d = u.dim;
    let mut acc: Option<Formula> = None;
    for k in 0..d {
        let ek = Formula::int(1).elem_t(d, k)?;
        let ek = if d == 1 { Formula::int(1) } else { ek };
        let t = substitute(f, &[(u.clone(), ek)])?.elem(k)?;
        acc = Some(match acc {
            Some(a) => a.add(&t)?,
            None => t,
        });
    }
    acc.ok_or_else(|| op_err("TraceOperator", "empty variable".into()))
}

/// `Divergence(F, v)`: the trace of the Jacobian of `F` (`dim F == dim v`).
pub fn divergence(f: &Formula, v: &Formula) -> Result<Formula> {
    expect_var("Divergence", v)?;
    if f.dim != v.dim {
        return Err(op_err(
            "Divergence",
            format!(
                "the formula has dimension {} but the variable {v} has dimension {}; they must be equal",
                f.dim, v.dim
            ),
        ));
    }
    let u = placeholder(1, v.dim)?;
    trace_operator(&diff(f, v, &u)?, &u)
}

/// `Laplacian(F, v)`: `Divergence(Grad(F, v, 1), v)` for a scalar `F`.
pub fn laplacian(f: &Formula, v: &Formula) -> Result<Formula> {
    expect_var("Laplacian", v)?;
    if f.dim != 1 {
        return Err(op_err(
            "Laplacian",
            format!("the formula must be scalar, got dimension {}", f.dim),
        ));
    }
    divergence(&grad(f, v, &Formula::int(1))?, v)
}

/// `GradMatrix(F, v)`: `Grad(F, v, e_k)` for `k = 0..dim F`, concatenated
/// (dimension `dim F * dim v`; the transpose of the Jacobian, row-major).
pub fn grad_matrix(f: &Formula, v: &Formula) -> Result<Formula> {
    expect_var("GradMatrix", v)?;
    let d = f.dim;
    check_expansion("GradMatrix", f, d)?;
    let mut acc: Option<Formula> = None;
    for k in 0..d {
        let ek = if d == 1 {
            Formula::int(1)
        } else {
            Formula::int(1).elem_t(d, k)?
        };
        let t = grad(f, v, &ek)?;
        acc = Some(match acc {
            Some(a) => a.concat(&t)?,
            None => t,
        });
    }
    acc.ok_or_else(|| op_err("GradMatrix", "empty formula".into()))
}

/// The partial derivatives of `F = e(s, x)` with respect to two operand *nodes* taken
/// as independent inputs (used by vjp rules defined through an expansion).
pub(crate) fn partials(
    build: impl Fn(&Formula, &Formula) -> Result<Formula>,
    s: &Formula,
    x: &Formula,
    g: &Formula,
) -> Result<(Formula, Formula)> {
    let (ps, px) = (placeholder(2, s.dim)?, placeholder(3, x.dim)?);
    let e = build(&ps, &px)?;
    let back = [(ps.clone(), s.clone()), (px.clone(), x.clone())];
    let gs = substitute(&reverse(&e, &ps, g)?, &back)?;
    let gx = substitute(&reverse(&e, &px, g)?, &back)?;
    Ok((gs, gx))
}
