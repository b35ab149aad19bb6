//! Complex numbers, as KeOps stores them: a complex vector of length `n` is a real
//! vector of dimension `2n`, interleaved `[re_0, im_0, re_1, im_1, ...]`.
//!
//! Every complex op is built from two linear primitives, `ComplexReal`/`ComplexImag`
//! ([`Op::ComplexPart`](super::Op::ComplexPart)) and `Real2Complex`/`Imag2Complex`
//! ([`Op::ToComplex`](super::Op::ToComplex)), and the real ops. Each complex op
//! therefore inherits the real ops' engines, generated code and vjp rules, and its
//! gradient follows the convention of KeOps and PyTorch: the cotangent of `z = a + ib`
//! is `(dL/da, dL/db)`, interleaved. Shared parts (`Re z`, `|b|^2`, ...) are single
//! nodes of the DAG, computed once per point.
//!
//! Broadcasting is KeOps': the operands of `ComplexAdd`, `ComplexSubtract`,
//! `ComplexMult` and `ComplexDivide` have equal dimensions, or one of them is a single
//! complex number (dimension 2). The parts of such a scalar have dimension 1, so the real
//! ops' broadcasting does the rest.

use super::ops::{Binary, Unary};
use super::Formula;
use crate::error::{KeopsError, Result};

fn dim_err(op: &str, msg: String) -> KeopsError {
    KeopsError::Dim {
        op: op.to_string(),
        msg,
    }
}

/// The number of complex coordinates of a vector of dimension `d` (which must be even).
pub(crate) fn complex_len(op: &str, d: usize) -> Result<usize> {
    if d % 2 == 0 {
        Ok(d / 2)
    } else {
        Err(dim_err(
            op,
            format!("a complex vector has an even dimension (re, im interleaved), got {d}"),
        ))
    }
}

/// Checks KeOps' broadcasting rule for a binary complex op.
fn check_pair(op: &str, a: &Formula, b: &Formula) -> Result<()> {
    complex_len(op, a.dim)?;
    complex_len(op, b.dim)?;
    if a.dim == b.dim || a.dim == 2 || b.dim == 2 {
        Ok(())
    } else {
        Err(dim_err(
            op,
            format!(
                "operands of dimensions {} and {}: they must be equal, or one of them a \
                 single complex number (dimension 2)",
                a.dim, b.dim
            ),
        ))
    }
}

impl Formula {
    /// The real and imaginary parts of `self` (for the op named `op`).
    fn parts(&self, op: &str) -> Result<(Formula, Formula)> {
        complex_len(op, self.dim)?;
        Ok((self.complex_part(false)?, self.complex_part(true)?))
    }

    /// The complex vector `re + i im` (a part of dimension 1 is broadcast).
    pub fn from_parts(re: &Formula, im: &Formula) -> Result<Formula> {
        let n = re.dim.max(im.dim);
        let lift = |x: &Formula| {
            if x.dim == n {
                Ok(x.clone())
            } else {
                x.sum_t(n)
            }
        };
        lift(re)?.to_complex(false).add(&lift(im)?.to_complex(true))
    }

    /// `op(self, b)` for `Add` or `Subtract`, which act on real and imaginary parts
    /// alike: the real op itself when the dimensions are equal, else on the parts (one
    /// of them a broadcast complex scalar).
    fn complex_partwise(&self, op: Binary, name: &str, b: &Formula) -> Result<Formula> {
        check_pair(name, self, b)?;
        if self.dim == b.dim {
            return self.binary(op, b);
        }
        let ((ar, ai), (br, bi)) = (self.parts(name)?, b.parts(name)?);
        Formula::from_parts(&ar.binary(op, &br)?, &ai.binary(op, &bi)?)
    }

    /// `ComplexAdd(self, b)`.
    pub fn complex_add(&self, b: &Formula) -> Result<Formula> {
        self.complex_partwise(Binary::Add, "ComplexAdd", b)
    }

    /// `ComplexSubtract(self, b)`.
    pub fn complex_sub(&self, b: &Formula) -> Result<Formula> {
        self.complex_partwise(Binary::Subtract, "ComplexSubtract", b)
    }

    /// `ComplexMult(self, b)`: the elementwise complex product.
    pub fn complex_mult(&self, b: &Formula) -> Result<Formula> {
        check_pair("ComplexMult", self, b)?;
        let ((ar, ai), (br, bi)) = (self.parts("ComplexMult")?, b.parts("ComplexMult")?);
        Formula::from_parts(
            &ar.mul(&br)?.sub(&ai.mul(&bi)?)?,
            &ar.mul(&bi)?.add(&ai.mul(&br)?)?,
        )
    }

    /// `ComplexDivide(self, b) = self conj(b) / |b|^2`.
    pub fn complex_divide(&self, b: &Formula) -> Result<Formula> {
        check_pair("ComplexDivide", self, b)?;
        let ((ar, ai), (br, bi)) = (self.parts("ComplexDivide")?, b.parts("ComplexDivide")?);
        let inv = b.complex_square_abs()?.unary(Unary::Inv);
        Formula::from_parts(
            &ar.mul(&br)?.add(&ai.mul(&bi)?)?.mul(&inv)?,
            &ai.mul(&br)?.sub(&ar.mul(&bi)?)?.mul(&inv)?,
        )
    }

    /// `ComplexRealScal(self, b)`: a real scalar times a complex vector (either order).
    pub fn complex_real_scal(&self, b: &Formula) -> Result<Formula> {
        let (s, z) = if self.dim == 1 { (self, b) } else { (b, self) };
        if s.dim != 1 {
            return Err(dim_err(
                "ComplexRealScal",
                format!(
                    "one operand must be a real scalar (dimension 1), got dimensions {} and {}",
                    self.dim, b.dim
                ),
            ));
        }
        complex_len("ComplexRealScal", z.dim)?;
        s.mul(z)
    }

    /// `Conj(self)`: the complex conjugate.
    pub fn conj(&self) -> Result<Formula> {
        let (re, im) = self.parts("Conj")?;
        Formula::from_parts(&re, &im.neg())
    }

    /// `ComplexExp(self)`: `exp(re) (cos(im) + i sin(im))`.
    pub fn complex_exp(&self) -> Result<Formula> {
        let (re, im) = self.parts("ComplexExp")?;
        let e = re.exp();
        Formula::from_parts(
            &e.mul(&im.unary(Unary::Cos))?,
            &e.mul(&im.unary(Unary::Sin))?,
        )
    }

    /// `ComplexExp1j(self)` for a real `self`: `exp(i self) = cos(self) + i sin(self)`.
    pub fn complex_exp1j(&self) -> Result<Formula> {
        Formula::from_parts(&self.unary(Unary::Cos), &self.unary(Unary::Sin))
    }

    /// `ComplexSquareAbs(self)`: `re^2 + im^2`, a real vector of half the dimension.
    pub fn complex_square_abs(&self) -> Result<Formula> {
        let (re, im) = self.parts("ComplexSquareAbs")?;
        re.unary(Unary::Square).add(&im.unary(Unary::Square))
    }

    /// `ComplexAbs(self)`: the moduli (with a zero gradient at 0, where KeOps' is NaN).
    pub fn complex_abs(&self) -> Result<Formula> {
        Ok(self.complex_square_abs()?.unary(Unary::Sqrt))
    }

    /// `ComplexAngle(self)`: the arguments, `Atan2(im, re)`.
    pub fn complex_angle(&self) -> Result<Formula> {
        let (re, im) = self.parts("ComplexAngle")?;
        im.binary(Binary::Atan2, &re)
    }

    /// `ComplexSum(self)`: the sum of the complex coordinates (dimension 2).
    pub fn complex_sum(&self) -> Result<Formula> {
        let (re, im) = self.parts("ComplexSum")?;
        re.sum().concat(&im.sum())
    }

    /// `ComplexSumT(self, d)`: the complex scalar `self` (dimension 2) repeated to
    /// dimension `d` (the adjoint of `ComplexSum`).
    pub fn complex_sum_t(&self, d: usize) -> Result<Formula> {
        if self.dim != 2 {
            return Err(dim_err(
                "ComplexSumT",
                format!(
                    "the operand must be one complex number (dimension 2), got {}",
                    self.dim
                ),
            ));
        }
        let n = complex_len("ComplexSumT", d)?;
        if n == 0 {
            return Err(dim_err(
                "ComplexSumT",
                "the dimension must be at least 2".into(),
            ));
        }
        let (re, im) = self.parts("ComplexSumT")?;
        Formula::from_parts(&re.sum_t(n)?, &im.sum_t(n)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::eval::PointEvaluator;
    use super::super::parse::parse;
    use super::super::Cat;

    /// Evaluates `formula` with `z = Vi(0, 4)`, `w = Vj(1, 4)` (two complex numbers each)
    /// and `s = Pm(2, 2)` (one).
    fn eval(formula: &str, z: &[f64], w: &[f64], s: &[f64]) -> Vec<f64> {
        let f = parse(formula, &["z = Vi(0,4)", "w = Vj(1,4)", "s = Pm(2,2)"]).unwrap();
        let ev = PointEvaluator::new(&[f]);
        let (z, w, s) = (z.to_vec(), w.to_vec(), s.to_vec());
        ev.eval(|cat, _| match cat {
            Cat::Vi => &z,
            Cat::Vj => &w,
            Cat::Pm => &s,
        })
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-14, "{got:?} vs {want:?}");
        }
    }

    /// Against complex arithmetic done by hand: z = (1 + 2i, -3 + 0.5i),
    /// w = (0.5 - 1i, 2 + 2i), s = 3 - 1i.
    #[test]
    fn complex_ops_compute_complex_arithmetic() {
        let (z, w, s) = ([1.0, 2.0, -3.0, 0.5], [0.5, -1.0, 2.0, 2.0], [3.0, -1.0]);
        let e = |f: &str| eval(f, &z, &w, &s);
        close(&e("ComplexMult(z, w)"), &[2.5, 0.0, -7.0, -5.0]);
        close(&e("ComplexMult(s, z)"), &[5.0, 5.0, -8.5, 4.5]);
        close(&e("ComplexAdd(z, s)"), &[4.0, 1.0, 0.0, -0.5]);
        close(&e("ComplexSubtract(s, w)"), &[2.5, 0.0, 1.0, -3.0]);
        // (1 + 2i) / (0.5 - i) = (1 + 2i)(0.5 + i) / 1.25 = (-1.5 + 2i) / 1.25.
        close(&e("ComplexDivide(z, w)")[..2], &[-1.2, 1.6]);
        close(&e("Conj(z)"), &[1.0, -2.0, -3.0, -0.5]);
        close(&e("ComplexSquareAbs(z)"), &[5.0, 9.25]);
        close(&e("ComplexAbs(s)"), &[10f64.sqrt()]);
        close(
            &e("ComplexAngle(w)"),
            &[(-1f64).atan2(0.5), 2f64.atan2(2.0)],
        );
        close(&e("ComplexSum(z)"), &[-2.0, 2.5]);
        close(&e("ComplexSumT(s, 4)"), &[3.0, -1.0, 3.0, -1.0]);
        close(&e("ComplexRealScal(Elem(s, 0), z)"), &[3.0, 6.0, -9.0, 1.5]);
        let ez = 1f64.exp();
        close(
            &e("ComplexExp(z)")[..2],
            &[ez * 2f64.cos(), ez * 2f64.sin()],
        );
        close(
            &e("ComplexExp1j(ComplexReal(z))")[2..],
            &[3f64.cos(), -(3f64.sin())],
        );
        close(&e("ComplexReal(z) + ComplexImag(w)"), &[0.0, -1.0]);
        close(&e("Real2Complex(ComplexImag(z))"), &[2.0, 0.0, 0.5, 0.0]);
        close(&e("Imag2Complex(ComplexReal(w))"), &[0.0, 0.5, 0.0, 2.0]);
    }

    #[test]
    fn odd_dimensions_and_bad_broadcasts_are_errors() {
        let al = ["x = Vi(0,3)", "z = Vi(1,4)", "u = Vj(2,6)"];
        for bad in [
            "ComplexReal(x)",
            "Conj(x)",
            "ComplexMult(z, u)",
            "ComplexAdd(x, z)",
            "ComplexSumT(z, 4)",
            "ComplexRealScal(z, u)",
        ] {
            let e = parse(bad, &al).unwrap_err().to_string();
            let op = bad.split('(').next().unwrap();
            assert!(e.contains(op), "{bad}: {e}");
        }
    }
}
