//! Ops defined by a recurrence over the coordinates of their operands: `BSpline`
//! (Cox-de Boor) and `SoftDTW_SqDist` (soft dynamic time warping). Both are unrolled
//! into DAGs of scalar ops when built, so they run on every engine, generate device code
//! and are differentiated (with respect to every operand, knots and `gamma` included, where
//! KeOps differentiates neither BSpline nor gamma) like any formula.
//!
//! The DAG grows with the product of the operands' dimensions (`K * order` nodes for a
//! spline, about `15 n m` for soft-DTW), which suits the short vectors these ops are used
//! with.

use super::ops::{Binary, Op, Unary};
use super::Formula;
use crate::error::{KeopsError, Result};

fn dim_err(op: &str, msg: String) -> KeopsError {
    KeopsError::Dim {
        op: op.to_string(),
        msg,
    }
}

/// The coordinates of `f`, as formulas of dimension 1.
fn coords(f: &Formula) -> Result<Vec<Formula>> {
    (0..f.dim).map(|k| f.elem(k)).collect()
}

/// The concatenation of scalars.
fn concat_all(parts: &[Formula]) -> Result<Formula> {
    let mut out = parts[0].clone();
    for p in &parts[1..] {
        out = out.concat(p)?;
    }
    Ok(out)
}

impl Formula {
    /// `BSpline(knots, x, order)`: the `K - order - 1` B-spline basis functions of degree
    /// `order` on the `K` knots `self`, at the scalar `x`, as KeOps computes them:
    /// degree 0 is the indicator of `[t_i, t_{i+1})`, and
    /// `B_{i,k} = w_{i,k} B_{i,k-1} + (1 - w_{i+1,k}) B_{i+1,k-1}` with
    /// `w_{i,k} = (x - t_i) / (t_{i+k} - t_i)` where `t_i < t_{i+k}`, else 0 (so repeated
    /// knots never divide by zero). `x` at or beyond the last knot gives zeros.
    pub fn bspline(&self, x: &Formula, order: usize) -> Result<Formula> {
        let k_knots = self.dim;
        if x.dim != 1 {
            return Err(dim_err(
                "BSpline",
                format!("x must be a scalar (dimension 1), got dimension {}", x.dim),
            ));
        }
        if k_knots < order + 2 {
            return Err(dim_err(
                "BSpline",
                format!(
                    "a spline of order {order} needs at least {} knots, got {k_knots}",
                    order + 2
                ),
            ));
        }
        let t = coords(self)?;
        let zero = Formula::int(0);
        // w(i, k), with the unselected branch of IfElse discarded (no NaN from 0/0).
        let w = |i: usize, k: usize| -> Result<Formula> {
            let increasing = t[i].binary(Binary::LessThan, &t[i + k])?;
            let ratio = x.sub(&t[i])?.div(&t[i + k].sub(&t[i])?)?;
            increasing.neg().if_else(&zero, &ratio)
        };
        let mut b: Vec<Formula> = (0..k_knots - 1)
            .map(|j| {
                t[j].binary(Binary::LessOrEqual, x)?
                    .mul(&x.binary(Binary::LessThan, &t[j + 1])?)
            })
            .collect::<Result<_>>()?;
        for k in 1..=order {
            // B_{i,k} uses w(i, k) and w(i + 1, k): each weight serves two splines.
            let ws: Vec<Formula> = (0..k_knots - k).map(|i| w(i, k)).collect::<Result<_>>()?;
            b = (0..k_knots - 1 - k)
                .map(|i| {
                    let one_minus = Formula::int(1).sub(&ws[i + 1])?;
                    ws[i].mul(&b[i])?.add(&one_minus.mul(&b[i + 1])?)
                })
                .collect::<Result<_>>()?;
        }
        concat_all(&b[..k_knots - order - 1])
    }

    /// `SoftDTW_SqDist(x, y, gamma)`: the soft dynamic-time-warping discrepancy between
    /// the series `self` (`n` values) and `y` (`m` values) for the cost
    /// `d(i, j) = (x_i - y_j)^2`, as KeOps: `R(0,0) = d(0,0)`, cumulative sums along the
    /// first row and column, then `R(i,j) = d(i,j) + softmin_gamma(R(i-1,j-1), R(i,j-1),
    /// R(i-1,j))` with `softmin(a, b, c) = -gamma log(e^{-a/gamma} + e^{-b/gamma} +
    /// e^{-c/gamma})` (computed shifted by the minimum); the result is `R(n-1, m-1)`.
    pub fn softdtw_sqdist(&self, y: &Formula, gamma: &Formula) -> Result<Formula> {
        if gamma.dim != 1 {
            return Err(dim_err(
                "SoftDTW_SqDist",
                format!(
                    "gamma must be a scalar (dimension 1), got dimension {}",
                    gamma.dim
                ),
            ));
        }
        let (x, y) = (coords(self)?, coords(y)?);
        let (n, m) = (x.len(), y.len());
        let d = |i: usize, j: usize| x[i].sub(&y[j]).map(|v| v.unary(Unary::Square));
        let softmin = |a: &Formula, b: &Formula, c: &Formula| -> Result<Formula> {
            let all = a.concat(b)?.concat(c)?;
            let mn = all.coord_reduce(Op::CoordMin);
            let sum = mn.sub(&all)?.div(gamma)?.exp().sum();
            mn.sub(&gamma.mul(&sum.unary(Unary::Log))?)
        };
        // One column of R at a time (j outer, as KeOps).
        let mut prev: Vec<Formula> = Vec::with_capacity(n);
        for i in 0..n {
            let r = match prev.last() {
                None => d(0, 0)?,
                Some(up) => d(i, 0)?.add(up)?,
            };
            prev.push(r);
        }
        for j in 1..m {
            let mut col: Vec<Formula> = Vec::with_capacity(n);
            col.push(d(0, j)?.add(&prev[0])?);
            for i in 1..n {
                let r = d(i, j)?.add(&softmin(&prev[i - 1], &prev[i], &col[i - 1])?)?;
                col.push(r);
            }
            prev = col;
        }
        Ok(prev[n - 1].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::eval::PointEvaluator;
    use super::super::parse::parse;
    use super::super::Cat;

    fn eval(formula: &str, aliases: &[&str], vals: &[Vec<f64>]) -> Vec<f64> {
        let f = parse(formula, aliases).unwrap();
        PointEvaluator::new(&[f]).eval(|cat, k| match cat {
            Cat::Vi | Cat::Vj | Cat::Pm => &vals[k],
        })
    }

    /// Textbook Cox-de Boor with 0/0 = 0, written independently of the formula.
    fn cox_de_boor(t: &[f64], x: f64, p: usize) -> Vec<f64> {
        let mut b: Vec<f64> = (0..t.len() - 1)
            .map(|j| f64::from(t[j] <= x && x < t[j + 1]))
            .collect();
        for k in 1..=p {
            let frac = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
            b = (0..t.len() - 1 - k)
                .map(|i| {
                    frac(x - t[i], t[i + k] - t[i]) * b[i]
                        + frac(t[i + k + 1] - x, t[i + k + 1] - t[i + 1]) * b[i + 1]
                })
                .collect();
        }
        b
    }

    #[test]
    fn bspline_matches_cox_de_boor() {
        let knots = vec![0.0, 0.5, 0.5, 1.0, 2.0, 2.5, 3.0, 3.0, 4.0];
        let al = ["t = Pm(0,9)", "x = Vi(1,1)"];
        for order in 0..=3 {
            for &x in &[
                -0.5, 0.0, 0.25, 0.5, 0.99, 1.7, 2.5, 2.99, 3.0, 3.5, 4.0, 5.0,
            ] {
                let got = eval(
                    &format!("BSpline(t, x, {order})"),
                    &al,
                    &[knots.clone(), vec![x]],
                );
                let want = cox_de_boor(&knots, x, order);
                assert_eq!(got.len(), knots.len() - order - 1);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-14,
                        "order {order}, x {x}: {got:?} vs {want:?}"
                    );
                }
            }
        }
        // Partition of unity inside the fully supported interval.
        let s: f64 = eval("BSpline(t, x, 3)", &al, &[knots.clone(), vec![2.2]])
            .iter()
            .sum();
        assert!((s - 1.0).abs() < 1e-14);
    }

    /// Soft-DTW by its dynamic program with +inf borders (Cuturi and Blondel).
    fn soft_dtw(x: &[f64], y: &[f64], g: f64) -> f64 {
        let (n, m) = (x.len(), y.len());
        let mut r = vec![vec![f64::INFINITY; m + 1]; n + 1];
        r[0][0] = 0.0;
        for i in 1..=n {
            for j in 1..=m {
                let c = [r[i - 1][j - 1], r[i - 1][j], r[i][j - 1]];
                let s: f64 = c.iter().map(|v| (-v / g).exp()).sum();
                r[i][j] = (x[i - 1] - y[j - 1]).powi(2) - g * s.ln();
            }
        }
        r[n][m]
    }

    #[test]
    fn softdtw_matches_the_dynamic_program() {
        let al = ["x = Vi(0,4)", "y = Vj(1,3)", "g = Pm(2,1)"];
        let (x, y) = (vec![0.1, -0.4, 0.8, 0.3], vec![0.5, 0.0, -0.2]);
        for g in [0.05, 0.5, 2.0] {
            let got = eval(
                "SoftDTW_SqDist(x, y, g)",
                &al,
                &[x.clone(), y.clone(), vec![g]],
            );
            let want = soft_dtw(&x, &y, g);
            assert!(
                (got[0] - want).abs() < 1e-12,
                "gamma {g}: {} vs {want}",
                got[0]
            );
        }
    }

    #[test]
    fn bad_operands_are_errors() {
        let al = ["t = Pm(0,3)", "x = Vi(1,2)", "g = Pm(2,2)"];
        for (bad, words) in [
            ("BSpline(t, x, 0)", "scalar"),
            ("BSpline(t, Elem(x, 0), 2)", "at least 4 knots"),
            ("SoftDTW_SqDist(t, x, g)", "gamma"),
        ] {
            let e = parse(bad, &al).unwrap_err().to_string();
            assert!(e.contains(words), "{bad}: {e}");
        }
    }
}
