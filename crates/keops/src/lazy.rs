//! `LazyTensor`: the Rust builder API, mirroring pykeops.
//!
//! A [`LazyTensor`] is a symbolic formula; arithmetic operators and methods build
//! larger formulas, and a reduction method (`sum`, `logsumexp`, `argkmin`, ...) turns it
//! into a [`Genred`] to call on data. Errors (e.g. a dimension mismatch in `x + y`) are
//! carried along and reported by the reduction method, so operator chains need no `?`.
//!
//! ```
//! use keops::{Vi, Vj, Pm, Arg};
//! let (x, y, b, g) = (Vi(0, 3), Vj(1, 3), Vj(2, 1), Pm(3, 1));
//! let gauss = (-(x.sqdist(&y) * &g)).exp() * &b;
//! let sum = gauss.sum(1)?; // a_i = sum_j exp(-g |x_i - y_j|^2) b_j
//! let (xs, ys, bs, gs) = (vec![0.0f64; 6], vec![0.0f64; 9], vec![1.0f64; 3], vec![0.5f64]);
//! let a = sum.call(&[Arg::new(&xs, [2, 3]), Arg::new(&ys, [3, 3]), Arg::new(&bs, [3, 1]), Arg::new(&gs, [1])])?;
//! assert_eq!(a.values.unwrap().data, vec![3.0, 3.0]);
//!
//! let knn = x.sqdist(&y).argkmin(2, 1)?; // indices of the 2 nearest y_j of each x_i
//! # Ok::<(), keops::KeopsError>(())
//! ```

#![allow(non_snake_case)]

use crate::error::{KeopsError, Result};
use crate::formula::{Binary, Cat, Formula, Op, Unary};
use crate::plan::Genred;
use crate::reduction::Reduction;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// A symbolic formula under construction (or the first error met while building it).
#[derive(Clone, Debug)]
pub struct LazyTensor {
    f: std::result::Result<Formula, KeopsError>,
}

/// `Vi(index, dim)`: argument `index`, one row per `i`.
pub fn Vi(index: usize, dim: usize) -> LazyTensor {
    Formula::var(Cat::Vi, index, dim).into()
}
/// `Vj(index, dim)`: argument `index`, one row per `j`.
pub fn Vj(index: usize, dim: usize) -> LazyTensor {
    Formula::var(Cat::Vj, index, dim).into()
}
/// `Pm(index, dim)`: argument `index`, a parameter vector.
pub fn Pm(index: usize, dim: usize) -> LazyTensor {
    Formula::var(Cat::Pm, index, dim).into()
}

impl From<Result<Formula>> for LazyTensor {
    fn from(f: Result<Formula>) -> Self {
        LazyTensor { f }
    }
}
impl From<Formula> for LazyTensor {
    fn from(f: Formula) -> Self {
        LazyTensor { f: Ok(f) }
    }
}
impl From<f64> for LazyTensor {
    fn from(x: f64) -> Self {
        Formula::float(x).into()
    }
}

macro_rules! unary_methods {
    ($($(#[$d:meta])* $name:ident => $u:ident;)*) => {
        $( $(#[$d])* pub fn $name(&self) -> LazyTensor { self.map(|f| Ok(f.unary(Unary::$u))) } )*
    };
}

impl LazyTensor {
    /// A constant.
    pub fn constant(x: f64) -> LazyTensor {
        x.into()
    }

    /// The formula, or the error met while building it.
    pub fn formula(&self) -> Result<Formula> {
        self.f.clone()
    }

    /// Output dimension (the last axis of pykeops' shape), if the formula is valid.
    pub fn dim(&self) -> Result<usize> {
        self.f.as_ref().map(|f| f.dim).map_err(Clone::clone)
    }

    fn map(&self, op: impl FnOnce(&Formula) -> Result<Formula>) -> LazyTensor {
        LazyTensor {
            f: self.f.as_ref().map_err(Clone::clone).and_then(op),
        }
    }

    fn map2(
        &self,
        other: &LazyTensor,
        op: impl FnOnce(&Formula, &Formula) -> Result<Formula>,
    ) -> LazyTensor {
        let f = match (&self.f, &other.f) {
            (Ok(a), Ok(b)) => op(a, b),
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        };
        LazyTensor { f }
    }

    fn map3(
        &self,
        b: &LazyTensor,
        c: &LazyTensor,
        op: impl FnOnce(&Formula, &Formula, &Formula) -> Result<Formula>,
    ) -> LazyTensor {
        let f = match (&self.f, &b.f, &c.f) {
            (Ok(x), Ok(y), Ok(z)) => op(x, y, z),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e.clone()),
        };
        LazyTensor { f }
    }

    unary_methods! {
        /// `Exp`.
        exp => Exp;
        /// `Log`.
        log => Log;
        /// `Sqrt`.
        sqrt => Sqrt;
        /// `Rsqrt` (0 at 0).
        rsqrt => Rsqrt;
        /// `Inv`: 1/x.
        inv => Inv;
        /// `Square`.
        square => Square;
        /// `Abs`.
        abs => Abs;
        /// `Sign`.
        sign => Sign;
        /// `Step`.
        step => Step;
        /// `ReLU`.
        relu => ReLU;
        /// `Sin`.
        sin => Sin;
        /// `Cos`.
        cos => Cos;
        /// `XLogX`.
        xlogx => XLogX;
        /// `Floor`.
        floor => Floor;
        /// `Atan`.
        atan => Atan;
        /// `Asin`.
        asin => Asin;
        /// `Acos`.
        acos => Acos;
        /// `SinXDivX`: sin(x)/x, 1 at 0.
        sinxdivx => SinXDivX;
    }

    /// `Sinc`: the normalised sinc, `sin(pi x) / (pi x)`.
    pub fn sinc(&self) -> LazyTensor {
        self.map(Formula::sinc)
    }
    /// `Round(self, d)`: rounded to `d` decimals.
    pub fn round(&self, d: i32) -> LazyTensor {
        self.map(|f| Ok(f.unary(Unary::Round(d))))
    }
    /// `Mod(self, modulus, offset)`: `self` brought into `[offset, offset + modulus)`.
    pub fn modulo(&self, modulus: &LazyTensor, offset: &LazyTensor) -> LazyTensor {
        self.map3(modulus, offset, Formula::modulo)
    }
    /// `Atan2(self, x)`: the angle of the point `(x, self)`.
    pub fn atan2(&self, x: &LazyTensor) -> LazyTensor {
        self.map2(x, |a, b| a.binary(Binary::Atan2, b))
    }
    /// `LessThan(self, y)`: 1 where `self < y`, else 0.
    pub fn lt(&self, y: &LazyTensor) -> LazyTensor {
        self.map2(y, |a, b| a.binary(Binary::LessThan, b))
    }
    /// `LessOrEqual(self, y)`: 1 where `self <= y`, else 0.
    pub fn le(&self, y: &LazyTensor) -> LazyTensor {
        self.map2(y, |a, b| a.binary(Binary::LessOrEqual, b))
    }
    /// 1 where `self > y`, else 0.
    pub fn gt(&self, y: &LazyTensor) -> LazyTensor {
        y.lt(self)
    }
    /// 1 where `self >= y`, else 0.
    pub fn ge(&self, y: &LazyTensor) -> LazyTensor {
        y.le(self)
    }
    /// `Equal(self, y)`: 1 where `self == y`, else 0.
    pub fn equal(&self, y: &LazyTensor) -> LazyTensor {
        self.map2(y, |a, b| a.binary(Binary::Equal, b))
    }
    /// `NotEqual(self, y)`: 1 where `self != y`, else 0.
    pub fn not_equal(&self, y: &LazyTensor) -> LazyTensor {
        self.map2(y, |a, b| a.binary(Binary::NotEqual, b))
    }
    /// `MatVecMult(self, v)`: the row-major matrix `self` times the vector `v`.
    pub fn matvecmult(&self, v: &LazyTensor) -> LazyTensor {
        self.map2(v, Formula::mat_vec_mult)
    }
    /// `VecMatMult(self, m)`: the row vector `self` times the row-major matrix `m`.
    pub fn vecmatmult(&self, m: &LazyTensor) -> LazyTensor {
        self.map2(m, Formula::vec_mat_mult)
    }
    /// `TensorProd(self, y)`: the flattened outer product.
    pub fn tensorprod(&self, y: &LazyTensor) -> LazyTensor {
        self.map2(y, Formula::tensor_prod)
    }
    /// `Kron(self, y, Ind(dims_self), Ind(dims_y))`: the Kronecker product (NumPy's
    /// `kron`) of the row-major tensors held by `self` and `y`.
    pub fn kron(&self, y: &LazyTensor, dims_self: &[usize], dims_y: &[usize]) -> LazyTensor {
        self.map2(y, |a, b| a.kron(b, dims_self, dims_y))
    }

    /// `Pow(self, m)`.
    pub fn pow(&self, m: i32) -> LazyTensor {
        self.map(|f| Ok(f.pow(m)))
    }
    /// `Powf(self, e)`.
    pub fn powf(&self, e: &LazyTensor) -> LazyTensor {
        self.map2(e, |a, b| a.powf(b))
    }
    /// `ClampInt(self, a, b)`.
    pub fn clampint(&self, a: i32, b: i32) -> LazyTensor {
        self.map(|f| Ok(f.unary(Unary::ClampInt(a, b))))
    }
    /// `Clamp(self, a, b)`.
    pub fn clamp(&self, a: &LazyTensor, b: &LazyTensor) -> LazyTensor {
        self.map3(a, b, Formula::clamp)
    }
    /// `IfElse(self, a, b)`: `a` where `self >= 0`, else `b`.
    pub fn ifelse(&self, a: &LazyTensor, b: &LazyTensor) -> LazyTensor {
        self.map3(a, b, Formula::if_else)
    }
    /// `SqDist(self, y)`.
    pub fn sqdist(&self, y: &LazyTensor) -> LazyTensor {
        self.map2(y, |a, b| a.sqdist(b))
    }
    /// `Scalprod(self, y)` (pykeops' `(x | y)`).
    pub fn scalprod(&self, y: &LazyTensor) -> LazyTensor {
        self.map2(y, |a, b| a.scalprod(b))
    }
    /// `SqNorm2(self)`.
    pub fn sqnorm2(&self) -> LazyTensor {
        self.map(|f| Ok(f.sqnorm2()))
    }
    /// `Norm2(self)`.
    pub fn norm2(&self) -> LazyTensor {
        self.map(|f| Ok(f.norm2()))
    }
    /// `Normalize(self)`.
    pub fn normalize(&self) -> LazyTensor {
        self.map(|f| f.normalize())
    }
    /// `WeightedSqNorm(s, self)`.
    pub fn weightedsqnorm(&self, s: &LazyTensor) -> LazyTensor {
        self.map2(s, |x, s| s.weighted_sqnorm(x))
    }
    /// `WeightedSqDist(s, self, y)`.
    pub fn weightedsqdist(&self, y: &LazyTensor, s: &LazyTensor) -> LazyTensor {
        let xy = self.map2(y, |a, b| a.sub(b));
        xy.map2(s, |d, s| s.weighted_sqnorm(d))
    }
    /// `Sum` over the coordinates (pykeops' `.sum(-1)`).
    pub fn sum_coords(&self) -> LazyTensor {
        self.map(|f| Ok(f.sum()))
    }
    /// `Min` over the coordinates.
    pub fn min_coords(&self) -> LazyTensor {
        self.map(|f| Ok(f.coord_reduce(Op::CoordMin)))
    }
    /// `Max` over the coordinates.
    pub fn max_coords(&self) -> LazyTensor {
        self.map(|f| Ok(f.coord_reduce(Op::CoordMax)))
    }
    /// `ArgMin` over the coordinates.
    pub fn argmin_coords(&self) -> LazyTensor {
        self.map(|f| Ok(f.coord_reduce(Op::CoordArgMin)))
    }
    /// `ArgMax` over the coordinates.
    pub fn argmax_coords(&self) -> LazyTensor {
        self.map(|f| Ok(f.coord_reduce(Op::CoordArgMax)))
    }
    /// `SumT(self, d)`.
    pub fn sum_t(&self, d: usize) -> LazyTensor {
        self.map(|f| f.sum_t(d))
    }
    /// `Extract(self, start, dim)` (pykeops' `x[start:start+dim]`).
    pub fn extract(&self, start: usize, dim: usize) -> LazyTensor {
        self.map(|f| f.extract(start, dim))
    }
    /// `Elem(self, m)` (pykeops' `x[m]`).
    pub fn elem(&self, m: usize) -> LazyTensor {
        self.map(|f| f.elem(m))
    }
    /// `ElemT(self, n, m)`.
    pub fn elem_t(&self, n: usize, m: usize) -> LazyTensor {
        self.map(|f| f.elem_t(n, m))
    }
    /// `TensorDot(self, other, Ind(dims_a), Ind(dims_b), Ind(cont_a), Ind(cont_b),
    /// Ind(perm))` (pykeops' `keops_tensordot`; an empty `perm` keeps the axes' order).
    pub fn tensordot(
        &self,
        other: &LazyTensor,
        dims_a: &[usize],
        dims_b: &[usize],
        cont_a: &[usize],
        cont_b: &[usize],
        perm: &[usize],
    ) -> LazyTensor {
        let td = crate::formula::tensordot::TensorDot::new(
            dims_a.to_vec(),
            dims_b.to_vec(),
            cont_a.to_vec(),
            cont_b.to_vec(),
            perm.to_vec(),
        );
        self.map2(other, |a, b| a.tensordot(b, td.clone()?))
    }
    /// `OneHot(self, d)`: for a scalar, 1 at coordinate `round(self)` of `d`, else 0
    /// (pykeops' `x.one_hot(d)`).
    pub fn one_hot(&self, d: usize) -> LazyTensor {
        self.map(|f| f.one_hot(d))
    }
    /// `Concat(self, other)`.
    pub fn concat(&self, other: &LazyTensor) -> LazyTensor {
        self.map2(other, |a, b| a.concat(b))
    }

    /// `Grad(self, v, e)`: the gradient of `<self, e>` with respect to the variable `v`
    /// (pykeops' `.grad(v, e)`).
    ///
    /// ```
    /// use keops::{Vi, Vj};
    /// let (x, y) = (Vi(0, 3), Vj(1, 3));
    /// let k = (-x.sqdist(&y)).exp();
    /// let g = k.grad(&x, &1.0.into());
    /// assert_eq!(g.dim()?, 3);
    /// # Ok::<(), keops::KeopsError>(())
    /// ```
    pub fn grad(&self, v: &LazyTensor, e: &LazyTensor) -> LazyTensor {
        self.map3(v, e, crate::formula::diff::grad)
    }
    /// `Diff(self, v, u)`: the forward derivative in the direction `u`.
    pub fn diff(&self, v: &LazyTensor, u: &LazyTensor) -> LazyTensor {
        self.map3(v, u, crate::formula::diff::diff)
    }
    /// `Divergence(self, v)`.
    pub fn divergence(&self, v: &LazyTensor) -> LazyTensor {
        self.map2(v, crate::formula::diff::divergence)
    }
    /// `Laplacian(self, v)` (scalar `self`).
    pub fn laplacian(&self, v: &LazyTensor) -> LazyTensor {
        self.map2(v, crate::formula::diff::laplacian)
    }
    /// `GradMatrix(self, v)`.
    pub fn grad_matrix(&self, v: &LazyTensor) -> LazyTensor {
        self.map2(v, crate::formula::diff::grad_matrix)
    }
    /// `TraceOperator(self, u)` (`self` linear in the variable `u`).
    pub fn trace_operator(&self, u: &LazyTensor) -> LazyTensor {
        self.map2(u, crate::formula::diff::trace_operator)
    }

    /// Any reduction over `axis` (1: over `j`, one row per `i`; 0: over `i`).
    pub fn reduction(&self, reduction: Reduction, axis: usize) -> Result<Genred> {
        Genred::from_formula(self.formula()?, None, reduction, axis)
    }
    /// Sum reduction.
    pub fn sum(&self, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::Sum, axis)
    }
    /// `log sum exp` reduction.
    pub fn logsumexp(&self, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::LogSumExp, axis)
    }
    /// `log sum exp(self) * weight` reduction.
    pub fn logsumexp_weighted(&self, weight: &LazyTensor, axis: usize) -> Result<Genred> {
        Genred::from_formula(
            self.formula()?,
            Some(weight.formula()?),
            Reduction::LogSumExp,
            axis,
        )
    }
    /// `sum exp(self) weight / sum exp(self)` reduction.
    pub fn sumsoftmaxweight(&self, weight: &LazyTensor, axis: usize) -> Result<Genred> {
        Genred::from_formula(
            self.formula()?,
            Some(weight.formula()?),
            Reduction::SumSoftMaxWeight,
            axis,
        )
    }
    /// Min reduction.
    pub fn min(&self, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::Min, axis)
    }
    /// Max reduction.
    pub fn max(&self, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::Max, axis)
    }
    /// ArgMin reduction.
    pub fn argmin(&self, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::ArgMin, axis)
    }
    /// ArgMax reduction.
    pub fn argmax(&self, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::ArgMax, axis)
    }
    /// Min and ArgMin reduction.
    pub fn min_argmin(&self, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::MinArgMin, axis)
    }
    /// Max and ArgMax reduction.
    pub fn max_argmax(&self, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::MaxArgMax, axis)
    }
    /// The `k` smallest values.
    pub fn kmin(&self, k: usize, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::KMin(k), axis)
    }
    /// Positions of the `k` smallest values (k-nearest neighbours on `SqDist`).
    pub fn argkmin(&self, k: usize, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::ArgKMin(k), axis)
    }
    /// The `k` smallest values and their positions.
    pub fn kmin_argkmin(&self, k: usize, axis: usize) -> Result<Genred> {
        self.reduction(Reduction::KMinArgKMin(k), axis)
    }
}

macro_rules! binop {
    ($tr:ident, $m:ident, $f:ident) => {
        impl $tr<&LazyTensor> for &LazyTensor {
            type Output = LazyTensor;
            fn $m(self, o: &LazyTensor) -> LazyTensor {
                self.map2(o, |a, b| a.$f(b))
            }
        }
        impl $tr<LazyTensor> for LazyTensor {
            type Output = LazyTensor;
            fn $m(self, o: LazyTensor) -> LazyTensor {
                (&self).$m(&o)
            }
        }
        impl $tr<&LazyTensor> for LazyTensor {
            type Output = LazyTensor;
            fn $m(self, o: &LazyTensor) -> LazyTensor {
                (&self).$m(o)
            }
        }
        impl $tr<LazyTensor> for &LazyTensor {
            type Output = LazyTensor;
            fn $m(self, o: LazyTensor) -> LazyTensor {
                self.$m(&o)
            }
        }
        impl $tr<f64> for LazyTensor {
            type Output = LazyTensor;
            fn $m(self, o: f64) -> LazyTensor {
                (&self).$m(&LazyTensor::from(o))
            }
        }
        impl $tr<f64> for &LazyTensor {
            type Output = LazyTensor;
            fn $m(self, o: f64) -> LazyTensor {
                self.$m(&LazyTensor::from(o))
            }
        }
        impl $tr<LazyTensor> for f64 {
            type Output = LazyTensor;
            fn $m(self, o: LazyTensor) -> LazyTensor {
                (&LazyTensor::from(self)).$m(&o)
            }
        }
        impl $tr<&LazyTensor> for f64 {
            type Output = LazyTensor;
            fn $m(self, o: &LazyTensor) -> LazyTensor {
                (&LazyTensor::from(self)).$m(o)
            }
        }
    };
}
binop!(Add, add, add);
binop!(Sub, sub, sub);
binop!(Mul, mul, mul);
binop!(Div, div, div);

impl Neg for &LazyTensor {
    type Output = LazyTensor;
    fn neg(self) -> LazyTensor {
        self.map(|f| Ok(f.neg()))
    }
}
impl Neg for LazyTensor {
    type Output = LazyTensor;
    fn neg(self) -> LazyTensor {
        -&self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formula::parse::parse;

    /// Each builder method gives the formula of the KeOps string it stands for.
    #[test]
    fn methods_build_the_formulas_of_their_strings() {
        let aliases = ["x = Vi(0,3)", "y = Vj(1,3)", "S = Pm(2,9)", "a = Vi(3,1)"];
        let (x, y, s, a) = (Vi(0, 3), Vj(1, 3), Pm(2, 9), Vi(3, 1));
        let cases: Vec<(LazyTensor, &str)> = vec![
            (x.floor(), "Floor(x)"),
            (
                x.atan() + y.asin() + x.acos(),
                "Atan(x) + Asin(y) + Acos(x)",
            ),
            (x.sinxdivx() * y.sinc(), "SinXDivX(x) * Sinc(y)"),
            (x.round(2), "Round(x, 2)"),
            (x.modulo(&y, &a), "Mod(x, y, a)"),
            (x.atan2(&y), "Atan2(x, y)"),
            (x.lt(&y) + x.le(&y), "LessThan(x, y) + LessOrEqual(x, y)"),
            (x.gt(&y) + x.ge(&y), "LessThan(y, x) + LessOrEqual(y, x)"),
            (
                x.equal(&y) + x.not_equal(&y),
                "Equal(x, y) + NotEqual(x, y)",
            ),
            (
                s.matvecmult(&x) + x.vecmatmult(&s),
                "MatVecMult(S, x) + VecMatMult(x, S)",
            ),
            (x.tensorprod(&y), "TensorProd(x, y)"),
            (
                x.kron(&s, &[3, 1], &[3, 3]),
                "Kron(x, S, Ind(3,1), Ind(3,3))",
            ),
        ];
        for (lazy, text) in cases {
            assert_eq!(
                lazy.formula().unwrap(),
                parse(text, &aliases).unwrap(),
                "{text}"
            );
        }
        // Dimension errors surface with the op's name.
        let e = s.matvecmult(&Vi(0, 2)).formula().unwrap_err().to_string();
        assert!(e.contains("MatVecMult") && e.contains("multiple"), "{e}");
    }
}
