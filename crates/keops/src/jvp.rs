//! Forward-mode derivatives of reductions (Jacobian-vector products), as reductions.
//!
//! For tangents `u_k` of some arguments `v_k`, `dF = sum_k Diff(F, v_k, u_k)` (and `dW`
//! for a weight) and, with `O` the forward output:
//!
//! | reduction | `d output` |
//! | --- | --- |
//! | `Sum` | `Sum dF` |
//! | `LogSumExp` (scalar `F`, no weight) | `SumSoftMaxWeight(F, dF)` |
//! | `LogSumExp` (otherwise) | `Sum Exp(F - O) (dF W + dW)` (`W = 1` without weight) |
//! | `SumSoftMaxWeight(F, W)` | `SumSoftMaxWeight(F, dW + dF (W - O))` |
//!
//! The min/max family is piecewise a formula at the selected pairs (differentiate it
//! there); arg-reductions are piecewise constant. Both are refused here.

use crate::error::{KeopsError, Result};
use crate::formula::diff::diff;
use crate::formula::Formula;
use crate::grad::Extra;
use crate::plan::Genred;
use crate::reduction::Reduction;

impl Genred {
    /// The Jacobian-vector product of this reduction for tangents of arguments `wrt`,
    /// as a reduction. It takes the forward arguments, then one tangent per entry of
    /// `wrt` (shaped like that argument), then the returned extras (only
    /// [`Extra::Output`], the forward output). Its output has the forward output's shape.
    ///
    /// ```
    /// use keops::{Genred, Reduction, Arg};
    /// let g = Genred::new("Exp(-SqDist(x,y)) * b", &["x = Vi(0,1)", "y = Vj(1,1)", "b = Vj(2,1)"],
    ///                     Reduction::Sum, 1)?;
    /// let (jvp, extras) = g.jvp(&[0])?; // tangent of x
    /// assert!(extras.is_empty());
    /// let (x, y, b, u) = ([0.5f64], [0.0f64], [1.0f64], [1.0f64]);
    /// let args = [Arg::new(&x, &[1, 1]), Arg::new(&y, &[1, 1]), Arg::new(&b, &[1, 1]),
    ///             Arg::new(&u, &[1, 1])];
    /// let out = jvp.call(&args)?.values.unwrap();
    /// assert!((out.data[0] - (-2.0 * 0.5 * (-0.25f64).exp())).abs() < 1e-15);
    /// # Ok::<(), keops::KeopsError>(())
    /// ```
    pub fn jvp(&self, wrt: &[usize]) -> Result<(Genred, Vec<Extra>)> {
        let n = self.args().len();
        let mut declared = self.declared()?;
        let f = self.formula();
        let mut df = Formula::zero(f.dim)?;
        let mut dw = self.weight().map(|w| Formula::zero(w.dim)).transpose()?;
        for (t, &k) in wrt.iter().enumerate() {
            let decl = self.arg_decl(k)?;
            let v = Formula::var(decl.cat, k, decl.dim)?;
            let u = Formula::var(decl.cat, n + t, decl.dim)?;
            declared.push(u.clone());
            df = df.add(&diff(f, &v, &u)?)?;
            if let (Some(w), Some(acc)) = (self.weight(), dw.as_mut()) {
                *acc = acc.add(&diff(w, &v, &u)?)?;
            }
        }
        let out_cat = self.out_cat();
        let (dv, _) = self.spec().output_dims();
        let output = Formula::var(out_cat, n + wrt.len(), dv)?;
        let kind = self.spec().kind;
        let (h, weight, red, extras) = match (kind, self.weight(), dw) {
            (Reduction::Sum, _, _) => (df, None, Reduction::Sum, vec![]),
            (Reduction::LogSumExp, None, _) if f.dim == 1 => {
                (f.clone(), Some(df), Reduction::SumSoftMaxWeight, vec![])
            }
            (Reduction::LogSumExp, None, _) => (
                f.sub(&output)?.exp().mul(&df)?,
                None,
                Reduction::Sum,
                vec![Extra::Output],
            ),
            (Reduction::LogSumExp, Some(w), Some(dw)) => (
                f.sub(&output)?.exp().mul(&df.mul(w)?.add(&dw)?)?,
                None,
                Reduction::Sum,
                vec![Extra::Output],
            ),
            (Reduction::SumSoftMaxWeight, Some(w), Some(dw)) => (
                f.clone(),
                Some(dw.add(&df.mul(&w.sub(&output)?)?)?),
                Reduction::SumSoftMaxWeight,
                vec![Extra::Output],
            ),
            (other, _, _) => {
                return Err(KeopsError::Reduction {
                    reduction: other.name().into(),
                    msg: "has no forward-mode rule as a reduction: differentiate the formula \
                          at the selected pairs (min/max family), or not at all (arg-reductions)"
                        .into(),
                })
            }
        };
        if !extras.is_empty() {
            declared.push(output);
        }
        let genred = Genred::from_parts(h, weight, red, self.axis(), &declared)?;
        Ok((genred, extras))
    }

    /// The same formula and axis with another reduction (the weight is kept for
    /// `SumSoftMaxWeight` only: `LogSumExp` gives the plain `log sum exp F`); argument
    /// positions are kept.
    pub fn with_reduction(&self, reduction: Reduction) -> Result<Genred> {
        let weight = match reduction {
            Reduction::SumSoftMaxWeight => self.weight().cloned(),
            _ => None,
        };
        Genred::from_parts(
            self.formula().clone(),
            weight,
            reduction,
            self.axis(),
            &self.declared()?,
        )
    }

    /// `F` evaluated row by row: a `Sum` over the same axis in which every variable of
    /// the reduced axis is read on the output side instead. Called with the reduced-side
    /// arguments gathered at chosen rows (`y[J(i)]`), it gives `F(x_i, y_J(i))`; the
    /// reduced axis then has one row. Used to differentiate min/max reductions at their
    /// selected pairs and to build dense matrices.
    pub fn pointwise(&self) -> Result<Genred> {
        let (out_cat, red_cat) = (self.out_cat(), self.red_cat());
        let declared = self.declared()?;
        let mut map = Vec::new();
        let mut moved = Vec::new();
        for v in &declared {
            match v.as_var() {
                Some((c, k)) if c == red_cat => {
                    let w = Formula::var(out_cat, k, v.dim)?;
                    map.push((v.clone(), w.clone()));
                    moved.push(w);
                }
                _ => moved.push(v.clone()),
            }
        }
        let f = crate::formula::diff::substitute(self.formula(), &map)?;
        Genred::from_parts(f, None, Reduction::Sum, self.axis(), &moved)
    }
}
