//! The floating-point abstraction every numerical kernel is written against.
//!
//! [`Real`] is implemented by `f32` and `f64` with branch-free, vectorisable
//! approximations of the elementary functions (see [`crate::math`]), and by
//! [`Exact`], a plain `f64` backed by the platform's libm, used by the reference
//! evaluator. One generic expression per op therefore serves the oracle and the
//! engines alike.

pub use crate::math::{MathMode, NoFma, WithFma};
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A floating-point scalar usable by the engines and the reference evaluator.
///
/// Every method is branch-free on `f32`/`f64` so that loops over tiles vectorise.
pub trait Real:
    Copy
    + Send
    + Sync
    + Debug
    + PartialOrd
    + PartialEq
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// Positive infinity.
    const INFINITY: Self;
    /// Negative infinity.
    const NEG_INFINITY: Self;
    /// Name of the type as KeOps spells it (`"float32"`, `"float64"`).
    const NAME: &'static str;
    /// Converts from `f64` (rounding to nearest).
    fn from_f64(x: f64) -> Self;
    /// Converts to `f64` exactly.
    fn to_f64(self) -> f64;
    /// `if c { a } else { b }`, without a branch.
    fn select(c: bool, a: Self, b: Self) -> Self;
    /// Smaller of two values; NaN in either gives the other operand's comparison result
    /// (`if a < b { a } else { b }`), cheaper than `f32::min`.
    #[inline(always)]
    fn min_(self, b: Self) -> Self {
        Self::select(self < b, self, b)
    }
    /// Larger of two values (`if a > b { a } else { b }`).
    #[inline(always)]
    fn max_(self, b: Self) -> Self {
        Self::select(self > b, self, b)
    }
    /// `a * b + c`, fused where the target has FMA.
    fn mul_add_(self, b: Self, c: Self) -> Self;
    /// `a * b + c`, fused when `M` says the calling code is compiled with FMA (one
    /// instruction there; two roundings otherwise).
    #[inline(always)]
    fn fma_<M: MathMode>(self, b: Self, c: Self) -> Self {
        self * b + c
    }
    /// Absolute value.
    fn abs_(self) -> Self;
    /// Square root.
    fn sqrt_(self) -> Self;
    /// `1 / sqrt(x)`.
    #[inline(always)]
    fn rsqrt_(self) -> Self {
        Self::ONE / self.sqrt_()
    }
    /// KeOps' `Rsqrt` of `self` (`1 / sqrt(x)`, and 0 at 0) from its square root `s`:
    /// the op's one definition, which the tile program's `RsqrtOf` calls with a
    /// `Sqrt(x)` it has computed already.
    #[inline(always)]
    fn rsqrt_from_sqrt(self, s: Self) -> Self {
        Self::select(self == Self::ZERO, Self::ZERO, Self::ONE / s)
    }
    /// Exponential (polynomials with FMA or not, as `M` says).
    fn exp_<M: MathMode>(self) -> Self;
    /// [`Self::exp_`] where `FTZ` says the code runs while subnormal results are flushed
    /// to zero (`cpu::fpmode`): the same bits there, for less work in `f32`
    /// ([`crate::math::exp_f32_ftz_mode`]). With `FTZ = false`, `exp_` itself.
    #[inline(always)]
    fn exp_in<M: MathMode, const FTZ: bool>(self) -> Self {
        self.exp_::<M>()
    }
    /// [`Self::exp_in`] of an `x <= 0` or NaN (a LogSumExp's `f - max`): the same
    /// bits, for less work where nothing can overflow
    /// ([`crate::math::exp_f32_nonpos_ftz_mode`]); unspecified for `x > 0`.
    #[inline(always)]
    fn exp_nonpos_in<M: MathMode, const FTZ: bool>(self) -> Self {
        self.exp_in::<M, FTZ>()
    }
    /// Natural logarithm.
    fn ln_<M: MathMode>(self) -> Self;
    /// Sine.
    fn sin_<M: MathMode>(self) -> Self;
    /// Cosine.
    fn cos_<M: MathMode>(self) -> Self;
    /// `x^y` with C's `pow` semantics, as pykeops 2.3's `Powf` and `torch.pow`:
    /// `exp(y ln|x|)`; 1 where `y = 0` or `|x| = 1` (even with a NaN or an infinity on the
    /// other side); a negative finite `x` gives a real value only for an integer `y`
    /// (negative for an odd one) and NaN otherwise; the sign of `-0` and `-inf` counts
    /// for odd integers (`pow(-0, -3) = -inf`).
    #[inline(always)]
    fn powf_<M: MathMode>(self, y: Self) -> Self {
        let l = self.abs_().ln_::<M>();
        // |x| = 1 makes y ln|x| = 0 * inf (NaN) for an infinite y.
        let r = Self::select(
            y == Self::ZERO || l == Self::ZERO,
            Self::ONE,
            (y * l).exp_::<M>(),
        );
        // floor is exact: an infinite y is an even integer, a NaN none.
        let int = y.floor_() == y;
        let half = y * Self::from_f64(0.5);
        let odd = int && half.floor_() != half;
        let nan = Self::from_f64(f64::NAN);
        let r = Self::select(
            self < Self::ZERO && !int && self > Self::NEG_INFINITY,
            nan,
            r,
        );
        // -0 counts as negative, as pow(-0, -3) = -inf says.
        Self::select(self.is_sign_negative_() && odd, -r, r)
    }
    /// Whether the sign bit is set (`-0` and NaNs with it included): a bit test, where
    /// `1 / x < 0` would divide.
    #[inline(always)]
    fn is_sign_negative_(self) -> bool {
        self.to_f64().is_sign_negative()
    }
    /// Largest integer not above `x`.
    fn floor_(self) -> Self;
    /// Nearest integer, halves away from zero (C's `round`).
    fn round_(self) -> Self;
    /// Arc tangent.
    fn atan_(self) -> Self;
    /// Arc sine (NaN outside `[-1, 1]`).
    fn asin_(self) -> Self;
    /// Arc cosine (NaN outside `[-1, 1]`).
    fn acos_(self) -> Self;
    /// `atan2(self, x)`: the angle of the point `(x, self)`, in `[-pi, pi]`.
    fn atan2_(self, x: Self) -> Self;
    /// True for NaN.
    #[inline(always)]
    fn is_nan_(self) -> bool {
        self.partial_cmp(&self).is_none()
    }
}

macro_rules! impl_real_float {
    ($t:ty, $name:literal, $exp:ident, $exp_ftz:ident, $exp_nonpos_ftz:ident, $ln:ident, $sin:ident, $cos:ident) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const INFINITY: Self = <$t>::INFINITY;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const NAME: &'static str = $name;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn select(c: bool, a: Self, b: Self) -> Self {
                if c {
                    a
                } else {
                    b
                }
            }
            #[inline(always)]
            fn mul_add_(self, b: Self, c: Self) -> Self {
                // `mul_add` is a libm call when the target has no FMA: only use it when it
                // is a single instruction.
                if cfg!(target_feature = "fma") {
                    self.mul_add(b, c)
                } else {
                    self * b + c
                }
            }
            #[inline(always)]
            fn fma_<M: MathMode>(self, b: Self, c: Self) -> Self {
                if M::FMA {
                    self.mul_add(b, c)
                } else {
                    self * b + c
                }
            }
            #[inline(always)]
            fn abs_(self) -> Self {
                self.abs()
            }
            #[inline(always)]
            fn sqrt_(self) -> Self {
                self.sqrt()
            }
            #[inline(always)]
            fn exp_<M: MathMode>(self) -> Self {
                crate::math::$exp::<M>(self)
            }
            #[inline(always)]
            fn exp_in<M: MathMode, const FTZ: bool>(self) -> Self {
                if FTZ {
                    crate::math::$exp_ftz::<M>(self)
                } else {
                    crate::math::$exp::<M>(self)
                }
            }
            #[inline(always)]
            fn exp_nonpos_in<M: MathMode, const FTZ: bool>(self) -> Self {
                if FTZ {
                    crate::math::$exp_nonpos_ftz::<M>(self)
                } else {
                    crate::math::$exp::<M>(self)
                }
            }
            #[inline(always)]
            fn ln_<M: MathMode>(self) -> Self {
                crate::math::$ln::<M>(self)
            }
            #[inline(always)]
            fn sin_<M: MathMode>(self) -> Self {
                crate::math::$sin::<M>(self)
            }
            #[inline(always)]
            fn cos_<M: MathMode>(self) -> Self {
                crate::math::$cos::<M>(self)
            }
            #[inline(always)]
            fn floor_(self) -> Self {
                self.floor()
            }
            #[inline(always)]
            fn round_(self) -> Self {
                self.round()
            }
            #[inline(always)]
            fn atan_(self) -> Self {
                self.atan()
            }
            #[inline(always)]
            fn asin_(self) -> Self {
                self.asin()
            }
            #[inline(always)]
            fn acos_(self) -> Self {
                self.acos()
            }
            #[inline(always)]
            fn atan2_(self, x: Self) -> Self {
                self.atan2(x)
            }
        }
    };
}

impl_real_float!(
    f32,
    "float32",
    exp_f32_mode,
    exp_f32_ftz_mode,
    exp_f32_nonpos_ftz_mode,
    ln_f32_mode,
    sin_f32_mode,
    cos_f32_mode
);
impl_real_float!(
    f64,
    "float64",
    exp_f64_mode,
    exp_f64_mode, // float64 jobs never flush subnormals
    exp_f64_mode,
    ln_f64_mode,
    sin_f64_mode,
    cos_f64_mode
);

/// An `f64` whose elementary functions are the platform libm's: the arithmetic of the
/// reference evaluator, independent of the engines' approximations.
#[derive(Copy, Clone, Debug, Default, PartialEq, PartialOrd)]
pub struct Exact(pub f64);

macro_rules! exact_binop {
    ($tr:ident, $f:ident, $op:tt, $tra:ident, $fa:ident) => {
        impl $tr for Exact {
            type Output = Exact;
            #[inline]
            fn $f(self, b: Exact) -> Exact {
                Exact(self.0 $op b.0)
            }
        }
        impl $tra for Exact {
            #[inline]
            fn $fa(&mut self, b: Exact) {
                self.0 = self.0 $op b.0;
            }
        }
    };
}
exact_binop!(Add, add, +, AddAssign, add_assign);
exact_binop!(Sub, sub, -, SubAssign, sub_assign);
exact_binop!(Mul, mul, *, MulAssign, mul_assign);
impl Div for Exact {
    type Output = Exact;
    #[inline]
    fn div(self, b: Exact) -> Exact {
        Exact(self.0 / b.0)
    }
}
impl Neg for Exact {
    type Output = Exact;
    #[inline]
    fn neg(self) -> Exact {
        Exact(-self.0)
    }
}

impl Real for Exact {
    const ZERO: Self = Exact(0.0);
    const ONE: Self = Exact(1.0);
    const INFINITY: Self = Exact(f64::INFINITY);
    const NEG_INFINITY: Self = Exact(f64::NEG_INFINITY);
    const NAME: &'static str = "float64";
    fn from_f64(x: f64) -> Self {
        Exact(x)
    }
    fn to_f64(self) -> f64 {
        self.0
    }
    fn select(c: bool, a: Self, b: Self) -> Self {
        if c {
            a
        } else {
            b
        }
    }
    fn mul_add_(self, b: Self, c: Self) -> Self {
        Exact(self.0 * b.0 + c.0)
    }
    fn abs_(self) -> Self {
        Exact(self.0.abs())
    }
    fn sqrt_(self) -> Self {
        Exact(self.0.sqrt())
    }
    fn rsqrt_(self) -> Self {
        Exact(1.0 / self.0.sqrt())
    }
    fn exp_<M: MathMode>(self) -> Self {
        Exact(self.0.exp())
    }
    fn ln_<M: MathMode>(self) -> Self {
        Exact(self.0.ln())
    }
    fn powf_<M: MathMode>(self, y: Self) -> Self {
        Exact(self.0.powf(y.0))
    }
    fn sin_<M: MathMode>(self) -> Self {
        Exact(self.0.sin())
    }
    fn cos_<M: MathMode>(self) -> Self {
        Exact(self.0.cos())
    }
    fn floor_(self) -> Self {
        Exact(self.0.floor())
    }
    fn round_(self) -> Self {
        Exact(self.0.round())
    }
    fn atan_(self) -> Self {
        Exact(self.0.atan())
    }
    fn asin_(self) -> Self {
        Exact(self.0.asin())
    }
    fn acos_(self) -> Self {
        Exact(self.0.acos())
    }
    fn atan2_(self, x: Self) -> Self {
        Exact(self.0.atan2(x.0))
    }
}
