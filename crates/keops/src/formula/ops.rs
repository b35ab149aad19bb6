//! The op table: every operation of the formula language, with its KeOps name, arity,
//! dimension rule and semantics, each facet next to the others.
//!
//! - elementwise ops are [`Unary`], [`Binary`] (dimension-1 operands broadcast, as in
//!   KeOps) and [`Ternary`]; their scalar semantics is one generic expression over
//!   [`Real`], shared by the reference evaluator (with [`crate::real::Exact`]) and the
//!   CPU engine (with `f32`/`f64`);
//! - vector ops (`Sum`, `SqDist`, `Extract`, ...) are variants of [`Op`];
//! - [`OP_TABLE`] maps every name of the formula language to a constructor: the parser,
//!   the printer's round trip and the coverage tests walk it. Ops that KeOps defines in
//!   terms of others (`Norm2`, `Normalize`, `WeightedSqDist`, `IntInv`) are expanded
//!   there.
//!
//! Adding an elementwise op is one line in the `unary_ops!` list below; adding a vector
//! op is a variant of [`Op`], its dimension rule, its evaluation in
//! [`crate::formula::eval`] and its CPU instruction.

use super::tensordot::TensorDot;
use super::Formula;
use crate::error::{KeopsError, Result};
use crate::real::{MathMode, Real};

/// The category of a variable: indexed by `i`, by `j`, or a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cat {
    /// `Vi(k, d)`: one row per `i`.
    Vi = 0,
    /// `Vj(k, d)`: one row per `j`.
    Vj = 1,
    /// `Pm(k, d)`: the same vector for every pair.
    Pm = 2,
}

impl Cat {
    /// KeOps' name of the category.
    pub fn name(self) -> &'static str {
        match self {
            Cat::Vi => "Vi",
            Cat::Vj => "Vj",
            Cat::Pm => "Pm",
        }
    }
    /// From KeOps' numeric code (`Var(k, d, cat)`: 0 = i, 1 = j, 2 = parameter).
    pub fn from_code(c: i64) -> Option<Cat> {
        match c {
            0 => Some(Cat::Vi),
            1 => Some(Cat::Vj),
            2 => Some(Cat::Pm),
            _ => None,
        }
    }
}

macro_rules! unary_ops {
    // `k.run(f)`, or, for an op with a `far` clause (its fast function is exact only up
    // to `math::FAST_TRIG_MAX`), `k.run_far(f, FAST_TRIG_MAX, exact)`.
    (@run $k:ident, $f:expr) => { $k.run($f) };
    (@run $k:ident, $f:expr, $exact:expr) => {
        $k.run_far($f, R::from_f64(crate::math::FAST_TRIG_MAX), $exact)
    };
    ($( $(#[$doc:meta])* $v:ident $name:literal |$x:ident| $e:expr
        $(, far |$fx:ident| $fe:expr)?, c $c:literal, d |$dx:ident, $dy:ident| $de:expr; )*) => {
        /// Elementwise operations of one operand (the output has the operand's dimension).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Unary {
            $( $(#[$doc])* $v, )*
            /// `Pow(x, m)`: integer power (negative `m` gives `1 / x^|m|`).
            Pow(i32),
            /// `ClampInt(x, a, b)`: `x` clamped to the integer interval `[a, b]`.
            ClampInt(i32, i32),
            /// `DiffClampInt(x, a, b)`: 1 where `a <= x <= b`, else 0 (the derivative of
            /// `ClampInt`; 1 for NaN, as the comparisons are false).
            DiffClampInt(i32, i32),
            /// `Round(x, d)`: `x` rounded to `d` decimals (halves away from zero;
            /// `round(x 10^d) / 10^d` for `d != 0`, as KeOps).
            Round(i32),
        }

        impl Unary {
            /// Every parameter-free unary op, for tables and tests.
            pub const SIMPLE: &'static [Unary] = &[$(Unary::$v),*];

            /// KeOps' name of the op.
            pub fn name(self) -> &'static str {
                match self {
                    $( Unary::$v => $name, )*
                    Unary::Pow(_) => "Pow",
                    Unary::ClampInt(..) => "ClampInt",
                    Unary::DiffClampInt(..) => "DiffClampInt",
                    Unary::Round(_) => "Round",
                }
            }

            /// The scalar semantics: one expression for the oracle and the engines.
            #[inline(always)]
            pub fn apply<R: Real, M: MathMode>(self, value: R) -> R {
                self.with_kernel::<R, M, _>(At1(value))
            }

            /// The op as a C expression of the operand `x` (an expression of type `T`),
            /// for generated device code (`k_*` are the generated prelude's functions).
            pub fn c_expr(self, x: &str) -> String {
                match self {
                    $( Unary::$v => $c.replace("{x}", x), )*
                    Unary::Pow(m) => format!("k_powi({x}, {m})"),
                    Unary::ClampInt(a, b) => {
                        format!("({x} < {a} ? (T){a} : ({x} > {b} ? (T){b} : {x}))")
                    }
                    Unary::DiffClampInt(a, b) => {
                        format!("({x} < {a} ? (T)0 : ({x} > {b} ? (T)0 : (T)1))")
                    }
                    Unary::Round(0) => format!("k_round({x})"),
                    Unary::Round(d) => {
                        let s = 10f64.powi(d);
                        format!("(k_round({x} * (T){s:?}) / (T){s:?})")
                    }
                }
            }

            /// The derivative `f'(x)` as a formula in the operand `x` and the output
            /// `y = f(x)` (`None`: identically zero); the op's vjp is `g * f'(x)`.
            #[allow(unused_variables)]
            pub fn derivative(self, x: &Formula, y: &Formula) -> Result<Option<Formula>> {
                Ok(match self {
                    $( Unary::$v => { let ($dx, $dy) = (x, y); $de } )*
                    Unary::Pow(0) => None,
                    Unary::Pow(m) => {
                        // x^(m-1), or x^m / x where m - 1 is below i32's range.
                        let lower = match m.checked_sub(1) {
                            Some(k) => x.pow(k),
                            None => x.pow(m).binary(Binary::Divide, x)?,
                        };
                        Some(Formula::int(m as i64).mul(&lower)?)
                    }
                    Unary::ClampInt(a, b) => Some(x.unary(Unary::DiffClampInt(a, b))),
                    Unary::DiffClampInt(..) | Unary::Round(_) => None,
                })
            }
        }

        impl Unary {
            /// Calls `k.run(f)` with `f` the scalar semantics of this op as its own closure
            /// type, so that an engine's loop is monomorphised (and vectorised) per op.
            #[inline(always)]
            pub fn with_kernel<R: Real, M: MathMode, K: Kernel1<R>>(self, k: K) -> K::Out {
                match self {
                    $( Unary::$v => unary_ops!(@run k, |$x: R| $e $(, |$fx: R| $fe)?), )*
                    Unary::Pow(m) => k.run(move |x: R| powi(x, m)),
                    Unary::ClampInt(a, b) => {
                        let (lo, hi) = (R::from_f64(a as f64), R::from_f64(b as f64));
                        k.run(move |x: R| clamp(x, lo, hi))
                    }
                    Unary::DiffClampInt(a, b) => {
                        let (lo, hi) = (R::from_f64(a as f64), R::from_f64(b as f64));
                        k.run(move |x: R| inside_int(x, lo, hi))
                    }
                    Unary::Round(d) => k.run(move |x: R| round_to(x, d)),
                }
            }
        }
    };
}

unary_ops! {
    /// `-x`.
    Minus "Minus" |x| -x,
        c "(-{x})",
        d |x, y| Some(Formula::int(-1));
    /// `x * x`.
    Square "Square" |x| x * x,
        c "({x} * {x})",
        d |x, y| Some(Formula::int(2).mul(x)?);
    /// `sqrt(x)`.
    Sqrt "Sqrt" |x| x.sqrt_(),
        c "k_sqrt({x})",
        d |x, y| Some(Formula::rat(1, 2)?.mul(&x.unary(Unary::Rsqrt))?);
    /// `1 / sqrt(x)`, and 0 at 0 (KeOps' convention, which makes `Normalize(0) = 0`).
    Rsqrt "Rsqrt" |x| x.rsqrt_from_sqrt(x.sqrt_()),
        c "({x} == 0 ? (T)0 : k_rsqrt({x}))",
        d |x, y| Some(Formula::rat(-1, 2)?.mul(&x.unary(Unary::Rsqrt).pow(3))?);
    /// `1 / x`.
    Inv "Inv" |x| R::ONE / x,
        c "((T)1 / {x})",
        d |x, y| Some(y.unary(Unary::Square).neg());
    /// `exp(x)`.
    Exp "Exp" |x| x.exp_::<M>(),
        c "k_exp({x})",
        d |x, y| Some(y.clone());
    /// `ln(x)`.
    Log "Log" |x| x.ln_::<M>(),
        c "k_log({x})",
        d |x, y| Some(x.unary(Unary::Inv));
    /// `x ln(x)`, and 0 at 0.
    XLogX "XLogX" |x| R::select(x == R::ZERO, R::ZERO, x * x.ln_::<M>()),
        c "({x} == 0 ? (T)0 : {x} * k_log({x}))",
        d |x, y| Some(x.unary(Unary::Log).add(&Formula::int(1))?);
    /// `|x|`.
    Abs "Abs" |x| x.abs_(),
        c "k_abs({x})",
        d |x, y| Some(x.unary(Unary::Sign));
    /// `-1`, `0` or `1` (0 for NaN).
    Sign "Sign" |x| R::select(x > R::ZERO, R::ONE, R::select(x < R::ZERO, -R::ONE, R::ZERO)),
        c "({x} > 0 ? (T)1 : ({x} < 0 ? (T)-1 : (T)0))",
        d |x, y| None;
    /// `0` for `x < 0`, else `1` (so `Step(0) = 1`, `Step(NaN) = 1`, as KeOps).
    Step "Step" |x| R::select(x < R::ZERO, R::ZERO, R::ONE),
        c "({x} < 0 ? (T)0 : (T)1)",
        d |x, y| None;
    /// `max(x, 0)` (NaN propagates).
    ReLU "ReLU" |x| R::select(x < R::ZERO, R::ZERO, x),
        c "({x} < 0 ? (T)0 : {x})",
        d |x, y| Some(x.unary(Unary::Step));
    /// `sin(x)`.
    Sin "Sin" |x| x.sin_::<M>(), far |x| R::from_f64(x.to_f64().sin()),
        c "k_sin({x})",
        d |x, y| Some(x.unary(Unary::Cos));
    /// `cos(x)`.
    Cos "Cos" |x| x.cos_::<M>(), far |x| R::from_f64(x.to_f64().cos()),
        c "k_cos({x})",
        d |x, y| Some(x.unary(Unary::Sin).neg());
    /// `sin(x) / x`, and 1 at 0.
    SinXDivX "SinXDivX" |x| R::select(x == R::ZERO, R::ONE, x.sin_::<M>() / x),
        far |x| R::from_f64(x.to_f64().sin() / x.to_f64()),
        c "({x} == 0 ? (T)1 : k_sin({x}) / {x})",
        // (cos x - sin(x)/x) / x, and 0 at 0 (where KeOps' cos/x - sin/x^2 is NaN).
        d |x, y| {
            let at0 = x.binary(Binary::Equal, &Formula::int(0))?;
            let slope = x.unary(Unary::Cos).sub(y)?.div(&x.add(&at0)?)?;
            Some(Formula::int(1).sub(&at0)?.mul(&slope)?)
        };
    /// `floor(x)`.
    Floor "Floor" |x| x.floor_(),
        c "k_floor({x})",
        d |x, y| None;
    /// `atan(x)`.
    Atan "Atan" |x| x.atan_(),
        c "k_atan({x})",
        d |x, y| Some(Formula::int(1).add(&x.unary(Unary::Square))?.unary(Unary::Inv));
    /// `asin(x)` (NaN outside `[-1, 1]`).
    Asin "Asin" |x| x.asin_(),
        c "k_asin({x})",
        d |x, y| Some(Formula::int(1).sub(&x.unary(Unary::Square))?.unary(Unary::Rsqrt));
    /// `acos(x)` (NaN outside `[-1, 1]`).
    Acos "Acos" |x| x.acos_(),
        c "k_acos({x})",
        d |x, y| Some(Formula::int(1).sub(&x.unary(Unary::Square))?.unary(Unary::Rsqrt).neg());
}

/// 1 where `a <= x <= b`, else 0 (NaN gives 1: both comparisons are false).
#[inline(always)]
fn inside_int<R: Real>(x: R, a: R, b: R) -> R {
    R::select(x < a, R::ZERO, R::select(x > b, R::ZERO, R::ONE))
}

/// `x` rounded to `d` decimals as KeOps prints it: `round(x 10^d) / 10^d`.
#[inline(always)]
fn round_to<R: Real>(x: R, d: i32) -> R {
    if d == 0 {
        x.round_()
    } else {
        let s = R::from_f64(10f64.powi(d));
        (x * s).round_() / s
    }
}

/// A loop body generic over the scalar function of a unary op (see [`Unary::with_kernel`]).
pub trait Kernel1<R: Real> {
    /// What the loop returns.
    type Out;
    /// Runs the loop with `f`.
    fn run<F: Fn(R) -> R + Copy>(self, f: F) -> Self::Out;
    /// Runs the loop with `f` for operands with `|x| <= far` and `exact` for the others
    /// (NaN included in the first): for ops whose vectorised function is exact on a
    /// bounded range only (sine and cosine, see [`crate::math::FAST_TRIG_MAX`]). The
    /// default tests each operand; a loop over many operands overrides it to keep `f`
    /// vectorised and recompute the rare far operands afterwards.
    #[inline(always)]
    fn run_far<F, E>(self, f: F, far: R, exact: E) -> Self::Out
    where
        Self: Sized,
        F: Fn(R) -> R + Copy,
        E: Fn(R) -> R + Copy,
    {
        self.run(move |x: R| if x.abs_() > far { exact(x) } else { f(x) })
    }
}

/// A loop body generic over the scalar function of a binary op (see [`Binary::with_kernel`]).
pub trait Kernel2<R: Real> {
    /// What the loop returns.
    type Out;
    /// Runs the loop with `f`.
    fn run<F: Fn(R, R) -> R + Copy>(self, f: F) -> Self::Out;
}

/// A [`Kernel1`] that evaluates the op's function at one operand.
struct At1<R>(R);

impl<R: Real> Kernel1<R> for At1<R> {
    type Out = R;
    #[inline(always)]
    fn run<F: Fn(R) -> R + Copy>(self, f: F) -> R {
        f(self.0)
    }
}

/// A [`Kernel2`] that evaluates the op's function at one pair of operands.
struct At<R>(R, R);

impl<R: Real> Kernel2<R> for At<R> {
    type Out = R;
    #[inline(always)]
    fn run<F: Fn(R, R) -> R + Copy>(self, f: F) -> R {
        f(self.0, self.1)
    }
}

/// `x^m` for an integer `m`, by repeated squaring (the loop depends on `m` only).
#[inline(always)]
pub fn powi<R: Real>(x: R, m: i32) -> R {
    let mut e = m.unsigned_abs();
    let mut base = x;
    let mut acc = R::ONE;
    while e > 0 {
        if e & 1 == 1 {
            acc *= base;
        }
        base *= base;
        e >>= 1;
    }
    if m < 0 {
        R::ONE / acc
    } else {
        acc
    }
}

/// `x` clamped to `[a, b]`, NaN propagating.
#[inline(always)]
pub fn clamp<R: Real>(x: R, a: R, b: R) -> R {
    R::select(x < a, a, R::select(x > b, b, x))
}

/// Elementwise operations of two operands; an operand of dimension 1 is broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    /// `a + b`.
    Add,
    /// `a - b`.
    Subtract,
    /// `a * b`.
    Mult,
    /// `a / b`.
    Divide,
    /// `Powf(a, b)`: `a^b` with C's `pow` semantics (pykeops 2.3, `torch.pow`): real for
    /// a negative `a` and an integer `b`, 1 for `b = 0`.
    Powf,
    /// `Atan2(a, b)`: the angle of the point `(b, a)`, in `[-pi, pi]` (C's `atan2(a, b)`).
    Atan2,
    /// `LessThan(a, b)`: 1 where `a < b`, else 0.
    LessThan,
    /// `LessOrEqual(a, b)`: 1 where `a <= b`, else 0.
    LessOrEqual,
    /// `Equal(a, b)`: 1 where `a == b`, else 0.
    Equal,
    /// `NotEqual(a, b)`: 1 where `a != b`, else 0 (1 when either is NaN).
    NotEqual,
}

/// 1 or 0.
#[inline(always)]
fn indicator<R: Real>(c: bool) -> R {
    R::select(c, R::ONE, R::ZERO)
}

impl Binary {
    /// Every binary op.
    pub const ALL: &'static [Binary] = &[
        Binary::Add,
        Binary::Subtract,
        Binary::Mult,
        Binary::Divide,
        Binary::Powf,
        Binary::Atan2,
        Binary::LessThan,
        Binary::LessOrEqual,
        Binary::Equal,
        Binary::NotEqual,
    ];
    /// KeOps' name.
    pub fn name(self) -> &'static str {
        match self {
            Binary::Add => "Add",
            Binary::Subtract => "Subtract",
            Binary::Mult => "Mult",
            Binary::Divide => "Divide",
            Binary::Powf => "Powf",
            Binary::Atan2 => "Atan2",
            Binary::LessThan => "LessThan",
            Binary::LessOrEqual => "LessOrEqual",
            Binary::Equal => "Equal",
            Binary::NotEqual => "NotEqual",
        }
    }
    /// Calls `k.run(f)` with this op's scalar function as its own closure type.
    #[inline(always)]
    pub fn with_kernel<R: Real, M: MathMode, K: Kernel2<R>>(self, k: K) -> K::Out {
        match self {
            Binary::Add => k.run(|a: R, b: R| a + b),
            Binary::Subtract => k.run(|a: R, b: R| a - b),
            Binary::Mult => k.run(|a: R, b: R| a * b),
            Binary::Divide => k.run(|a: R, b: R| a / b),
            Binary::Powf => k.run(|a: R, b: R| a.powf_::<M>(b)),
            Binary::Atan2 => k.run(|a: R, b: R| a.atan2_(b)),
            Binary::LessThan => k.run(|a: R, b: R| indicator(a < b)),
            Binary::LessOrEqual => k.run(|a: R, b: R| indicator(a <= b)),
            Binary::Equal => k.run(|a: R, b: R| indicator(a == b)),
            Binary::NotEqual => k.run(|a: R, b: R| indicator(a != b)),
        }
    }
    /// The scalar semantics (the expression [`Binary::with_kernel`] holds).
    #[inline(always)]
    pub fn apply<R: Real, M: MathMode>(self, a: R, b: R) -> R {
        self.with_kernel::<R, M, _>(At(a, b))
    }
    /// The op as a C expression of the operands `a` and `b` (expressions of type `T`).
    pub fn c_expr(self, a: &str, b: &str) -> String {
        match self {
            Binary::Add => format!("{a} + {b}"),
            Binary::Subtract => format!("{a} - {b}"),
            Binary::Mult => format!("{a} * {b}"),
            Binary::Divide => format!("{a} / {b}"),
            Binary::Powf => format!("k_pow({a}, {b})"),
            Binary::Atan2 => format!("k_atan2({a}, {b})"),
            Binary::LessThan => format!("({a} < {b} ? (T)1 : (T)0)"),
            Binary::LessOrEqual => format!("({a} <= {b} ? (T)1 : (T)0)"),
            Binary::Equal => format!("({a} == {b} ? (T)1 : (T)0)"),
            Binary::NotEqual => format!("({a} != {b} ? (T)1 : (T)0)"),
        }
    }
    /// The vjp rule: contributions of `g` (the gradient of `y = op(a, b)`) to `a` and
    /// `b`, before broadcast operands are summed back ([`Op::vjp`] does that).
    pub fn vjp(
        self,
        a: &Formula,
        b: &Formula,
        y: &Formula,
        g: &Formula,
    ) -> Result<[Option<Formula>; 2]> {
        Ok(match self {
            Binary::Add => [Some(g.clone()), Some(g.clone())],
            Binary::Subtract => [Some(g.clone()), Some(g.neg())],
            Binary::Mult => [Some(g.mul(b)?), Some(g.mul(a)?)],
            Binary::Divide => [
                Some(g.div(b)?),
                Some(g.mul(a)?.div(&b.unary(Unary::Square))?.neg()),
            ],
            // d/da = b Powf(a, b - 1), as pykeops 2.3 (not y b / a, which is NaN at
            // a = 0, where Powf(a, 1.5) has the derivative 0); d/db = y Log(a), taken as
            // 0 where a = 0 (as torch.pow: there y Log(a) is 0 * -inf for b > 0).
            Binary::Powf => {
                let da = g.mul(b)?.mul(&a.powf(&b.sub(&Formula::int(1))?)?)?;
                let log_a = a
                    .unary(Unary::Abs)
                    .neg()
                    .if_else(&Formula::int(0), &a.unary(Unary::Log))?;
                [Some(da), Some(g.mul(y)?.mul(&log_a)?)]
            }
            // d/da atan2(a, b) = b / r^2, d/db = -a / r^2.
            Binary::Atan2 => {
                let gr = g.div(&a.unary(Unary::Square).add(&b.unary(Unary::Square))?)?;
                [Some(gr.mul(b)?), Some(gr.mul(a)?.neg())]
            }
            // Piecewise constant.
            Binary::LessThan | Binary::LessOrEqual | Binary::Equal | Binary::NotEqual => {
                [None, None]
            }
        })
    }
}

/// `1` where `a <= x <= b`, else `0` (the derivative of a clamp in `x`).
fn inside(x: &Formula, a: &Formula, b: &Formula) -> Result<Formula> {
    x.sub(a)?
        .unary(Unary::Step)
        .mul(&b.sub(x)?.unary(Unary::Step))
}

/// Elementwise operations of three operands, with dimension-1 broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ternary {
    /// `IfElse(c, a, b)`: `a` where `c >= 0`, else `b`.
    IfElse,
    /// `Clamp(x, a, b)`: `x` clamped to `[a, b]`.
    Clamp,
    /// `Mod(x, n, d) = x - n floor((x - d) / n)`: `x` brought into `[d, d + n)` (KeOps).
    Mod,
}

impl Ternary {
    /// Every ternary op.
    pub const ALL: &'static [Ternary] = &[Ternary::IfElse, Ternary::Clamp, Ternary::Mod];
    /// KeOps' name.
    pub fn name(self) -> &'static str {
        match self {
            Ternary::IfElse => "IfElse",
            Ternary::Clamp => "Clamp",
            Ternary::Mod => "Mod",
        }
    }
    /// The scalar semantics.
    #[inline(always)]
    pub fn apply<R: Real>(self, a: R, b: R, c: R) -> R {
        match self {
            Ternary::IfElse => R::select(a >= R::ZERO, b, c),
            Ternary::Clamp => clamp(a, b, c),
            Ternary::Mod => a - b * ((a - c) / b).floor_(),
        }
    }
    /// The op as a C expression of its operands (expressions of type `T`).
    pub fn c_expr(self, x: &str, a: &str, b: &str) -> String {
        match self {
            Ternary::IfElse => format!("({x} >= 0 ? {a} : {b})"),
            Ternary::Clamp => format!("({x} < {a} ? {a} : ({x} > {b} ? {b} : {x}))"),
            Ternary::Mod => format!("({x} - {a} * k_floor(({x} - {b}) / {a}))"),
        }
    }
    /// The vjp rule: contributions of `g` to the three operands (before broadcast
    /// operands are summed back). `IfElse`'s condition and the clamp's selections are
    /// piecewise constant, so they pass no gradient.
    pub fn vjp(self, args: &[Formula], g: &Formula) -> Result<[Option<Formula>; 3]> {
        let zero = Formula::zero(g.dim)?;
        let (x, a, b) = (&args[0], &args[1], &args[2]);
        Ok(match self {
            Ternary::IfElse => [None, Some(x.if_else(g, &zero)?), Some(x.if_else(&zero, g)?)],
            Ternary::Clamp => {
                let one = Formula::int(1);
                let above_a = x.sub(a)?.unary(Unary::Step);
                let below_b = b.sub(x)?.unary(Unary::Step);
                [
                    Some(g.mul(&above_a.mul(&below_b)?)?),
                    Some(g.mul(&one.sub(&above_a)?)?),
                    // `x < a` wins over `x > b` (when a > b), as in [`clamp`].
                    Some(g.mul(&above_a.mul(&one.sub(&below_b)?)?)?),
                ]
            }
            // x - n Floor((x - d) / n), Floor being piecewise constant (as KeOps).
            Ternary::Mod => [
                Some(g.clone()),
                Some(g.mul(&x.sub(b)?.div(a)?.unary(Unary::Floor))?.neg()),
                None,
            ],
        })
    }
}

/// One operation of the formula language.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A variable `Vi(index, dim)`, `Vj(index, dim)` or `Pm(index, dim)`.
    Var {
        /// Its category.
        cat: Cat,
        /// Position of the argument.
        index: usize,
        /// Its dimension.
        dim: usize,
    },
    /// An integer constant (dimension 1).
    IntCst(i64),
    /// A rational constant `p / q`, in lowest terms with `q > 1` (dimension 1).
    RatCst(i64, i64),
    /// A floating-point literal (dimension 1), stored as its bits.
    FloatCst(u64),
    /// The zero vector of the given dimension.
    Zero(usize),
    /// An elementwise op of one operand.
    Unary(Unary),
    /// An elementwise op of two operands.
    Binary(Binary),
    /// An elementwise op of three operands.
    Ternary(Ternary),
    /// `Sum(x)`: sum of the coordinates.
    Sum,
    /// `SumT(x, d)`: a scalar broadcast to dimension `d` (the adjoint of `Sum`).
    SumT(usize),
    /// `SqNorm2(x)`: sum of squares of the coordinates.
    SqNorm2,
    /// `SqDist(a, b) = SqNorm2(a - b)`.
    SqDist,
    /// `Scalprod(a, b)`: dot product.
    Scalprod,
    /// `WeightedSqNorm(s, x)`: `s |x|^2` (s of dim 1), `sum s_k x_k^2` (dim D) or
    /// `x^T S x` (dim D*D, row-major).
    WeightedSqNorm,
    /// `Extract(x, start, dim)`: coordinates `start..start+dim`.
    Extract {
        /// First coordinate.
        start: usize,
        /// Number of coordinates.
        dim: usize,
    },
    /// `Concat(a, b)`.
    Concat,
    /// `Elem(x, m)`: coordinate `m`.
    Elem(usize),
    /// `ElemT(x, n, m)`: a vector of dimension `n`, zero but for `x` at `m`.
    ElemT {
        /// Output dimension.
        n: usize,
        /// Position of the scalar.
        m: usize,
    },
    /// `OneHot(x, d)`: for a scalar `x`, the vector of dimension `d` with 1 at
    /// `round(x)` and 0 elsewhere (all 0 when `round(x)` is not in `0..d`).
    OneHot(usize),
    /// `TensorDot(a, b, Ind(..), Ind(..), Ind(..), Ind(..)[, Ind(..)])`: a tensor
    /// contraction (see [`super::tensordot`]).
    TensorDot(Box<TensorDot>),
    /// `Min(x)`: smallest coordinate.
    CoordMin,
    /// `Max(x)`: largest coordinate.
    CoordMax,
    /// `ArgMin(x)`: position of the smallest coordinate (as a float, first on ties).
    CoordArgMin,
    /// `ArgMax(x)`: position of the largest coordinate.
    CoordArgMax,
    /// `ComplexReal(z)` / `ComplexImag(z)`: the real (imaginary) parts of a complex
    /// vector stored as interleaved `[re_0, im_0, re_1, im_1, ...]` (dimension `2n` to
    /// `n`). With [`Op::ToComplex`], the primitives every complex op is built from (see
    /// [`super::complex`]).
    ComplexPart {
        /// The imaginary parts (else the real parts).
        imag: bool,
    },
    /// `Real2Complex(x)` / `Imag2Complex(x)`: the complex vector with real (imaginary)
    /// parts `x` and zero imaginary (real) parts (dimension `n` to `2n`).
    ToComplex {
        /// `x` are the imaginary parts (else the real parts).
        imag: bool,
    },
}

/// The largest dimension of a formula's node: dimensions are per pair `(i, j)`, so this is
/// far beyond any useful formula, and it keeps every dimension computation (sums,
/// squares, tensor shapes) clear of overflow.
pub const MAX_DIM: usize = 1 << 24;

fn dim_err(op: &str, msg: String) -> KeopsError {
    KeopsError::Dim {
        op: op.to_string(),
        msg,
    }
}

/// The output dimension of an elementwise op whose operands broadcast from dimension 1.
pub fn broadcast_dim(op: &str, dims: &[usize]) -> Result<usize> {
    let d = dims.iter().copied().max().unwrap_or(1);
    if dims.iter().all(|&x| x == d || x == 1) {
        Ok(d)
    } else {
        Err(dim_err(
            op,
            format!("operands have dimensions {dims:?}; they must be equal or 1"),
        ))
    }
}

impl Op {
    /// KeOps' name of the op.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Var { cat, .. } => cat.name(),
            Op::IntCst(_) => "IntCst",
            Op::RatCst(..) => "RatCst",
            Op::FloatCst(_) => "FloatCst",
            Op::Zero(_) => "Zero",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Ternary(t) => t.name(),
            Op::Sum => "Sum",
            Op::SumT(_) => "SumT",
            Op::SqNorm2 => "SqNorm2",
            Op::SqDist => "SqDist",
            Op::Scalprod => "Scalprod",
            Op::WeightedSqNorm => "WeightedSqNorm",
            Op::Extract { .. } => "Extract",
            Op::Concat => "Concat",
            Op::Elem(_) => "Elem",
            Op::ElemT { .. } => "ElemT",
            Op::OneHot(_) => "OneHot",
            Op::TensorDot(_) => "TensorDot",
            Op::CoordMin => "Min",
            Op::CoordMax => "Max",
            Op::CoordArgMin => "ArgMin",
            Op::CoordArgMax => "ArgMax",
            Op::ComplexPart { imag: false } => "ComplexReal",
            Op::ComplexPart { imag: true } => "ComplexImag",
            Op::ToComplex { imag: false } => "Real2Complex",
            Op::ToComplex { imag: true } => "Imag2Complex",
        }
    }

    /// Number of formula operands.
    pub fn arity(&self) -> usize {
        match self {
            Op::Var { .. } | Op::IntCst(_) | Op::RatCst(..) | Op::FloatCst(_) | Op::Zero(_) => 0,
            Op::Unary(_)
            | Op::Sum
            | Op::SumT(_)
            | Op::SqNorm2
            | Op::Extract { .. }
            | Op::Elem(_)
            | Op::ElemT { .. }
            | Op::OneHot(_)
            | Op::CoordMin
            | Op::CoordMax
            | Op::CoordArgMin
            | Op::CoordArgMax
            | Op::ComplexPart { .. }
            | Op::ToComplex { .. } => 1,
            Op::Binary(_)
            | Op::SqDist
            | Op::Scalprod
            | Op::WeightedSqNorm
            | Op::Concat
            | Op::TensorDot(_) => 2,
            Op::Ternary(_) => 3,
        }
    }

    /// The value of a scalar constant.
    pub fn const_value(&self) -> Option<f64> {
        match *self {
            Op::IntCst(n) => Some(n as f64),
            Op::RatCst(p, q) => Some(p as f64 / q as f64),
            Op::FloatCst(b) => Some(f64::from_bits(b)),
            Op::Zero(_) => Some(0.0),
            _ => None,
        }
    }

    /// The dimension rule: the output dimension for operands of dimensions `dims`, or an
    /// error naming the op and the dimensions found.
    pub fn out_dim(&self, dims: &[usize]) -> Result<usize> {
        let name = self.name();
        if dims.len() != self.arity() {
            return Err(KeopsError::Arity {
                op: name.to_string(),
                msg: format!("expects {} operand(s), got {}", self.arity(), dims.len()),
            });
        }
        let positive = |d: usize, what: &str| {
            if d == 0 {
                Err(dim_err(name, format!("{what} must be at least 1")))
            } else {
                Ok(d)
            }
        };
        let dim = match *self {
            Op::Var { dim, .. } => positive(dim, "a variable's dimension"),
            Op::IntCst(_) | Op::RatCst(..) | Op::FloatCst(_) => Ok(1),
            Op::Zero(d) => positive(d, "Zero's dimension"),
            Op::Unary(_) => Ok(dims[0]),
            Op::Binary(_) | Op::Ternary(_) => broadcast_dim(name, dims),
            Op::Sum
            | Op::SqNorm2
            | Op::CoordMin
            | Op::CoordMax
            | Op::CoordArgMin
            | Op::CoordArgMax => Ok(1),
            Op::SumT(d) => {
                if dims[0] != 1 {
                    return Err(dim_err(
                        name,
                        format!("operand must have dimension 1, got {}", dims[0]),
                    ));
                }
                positive(d, "the output dimension")
            }
            Op::SqDist => broadcast_dim(name, dims).map(|_| 1),
            Op::Scalprod => {
                if dims[0] != dims[1] {
                    return Err(dim_err(
                        name,
                        format!(
                            "operands have dimensions {} and {}; they must be equal",
                            dims[0], dims[1]
                        ),
                    ));
                }
                Ok(1)
            }
            Op::WeightedSqNorm => {
                let (s, d) = (dims[0], dims[1]);
                if s == 1 || s == d || s == d * d {
                    Ok(1)
                } else {
                    Err(dim_err(name, format!("weight has dimension {s} for a vector of dimension {d}; expected 1, {d} or {}", d * d)))
                }
            }
            Op::Extract { start, dim } => {
                if dim == 0 || start.saturating_add(dim) > dims[0] {
                    return Err(dim_err(
                        name,
                        format!(
                            "coordinates {start}..{} out of range for dimension {}",
                            start.saturating_add(dim),
                            dims[0]
                        ),
                    ));
                }
                Ok(dim)
            }
            Op::Concat => Ok(dims[0] + dims[1]),
            Op::ComplexPart { .. } => super::complex::complex_len(name, dims[0]),
            Op::ToComplex { .. } => Ok(2 * dims[0]),
            Op::TensorDot(ref td) => {
                if dims[0] != td.dim_a() || dims[1] != td.dim_b() {
                    return Err(dim_err(
                        name,
                        format!(
                            "operands of dimensions {} and {} do not match the shapes {:?} \
                             (dimension {}) and {:?} (dimension {})",
                            dims[0],
                            dims[1],
                            td.dims_a,
                            td.dim_a(),
                            td.dims_b,
                            td.dim_b()
                        ),
                    ));
                }
                Ok(td.out_dim())
            }
            Op::Elem(m) => {
                if m >= dims[0] {
                    return Err(dim_err(
                        name,
                        format!("coordinate {m} out of range for dimension {}", dims[0]),
                    ));
                }
                Ok(1)
            }
            Op::OneHot(d) => {
                if dims[0] != 1 {
                    return Err(dim_err(
                        name,
                        format!("operand must have dimension 1, got {}", dims[0]),
                    ));
                }
                if d == 0 {
                    return Err(dim_err(name, "the dimension must be at least 1".into()));
                }
                Ok(d)
            }
            Op::ElemT { n, m } => {
                if dims[0] != 1 {
                    return Err(dim_err(
                        name,
                        format!("operand must have dimension 1, got {}", dims[0]),
                    ));
                }
                if m >= n {
                    return Err(dim_err(
                        name,
                        format!("position {m} out of range for dimension {n}"),
                    ));
                }
                Ok(n)
            }
        }?;
        if dim > MAX_DIM {
            return Err(dim_err(
                name,
                format!("the result would have dimension {dim}; at most {MAX_DIM} is supported"),
            ));
        }
        Ok(dim)
    }
}

impl Op {
    /// The vector-Jacobian product rule of the node `y = op(args)`: given `g`, the
    /// gradient with respect to `y` (of `y`'s dimension), the contribution to the
    /// gradient of each operand (`None`: zero), already of the operand's dimension.
    ///
    /// The match is exhaustive, so an op without a rule does not compile. Elementwise
    /// rules live with their ops ([`Unary::derivative`], [`Binary::vjp`],
    /// [`Ternary::vjp`]); conventions at kinks follow KeOps (`Abs'(0) = 0`,
    /// `ReLU'(0) = 1`, `Sqrt'(0) = 0`, clamps pass the gradient on the closed interval).
    pub fn vjp(&self, args: &[Formula], y: &Formula, g: &Formula) -> Result<Vec<Option<Formula>>> {
        let a = args;
        let fit = |c: Option<Formula>, x: &Formula| -> Option<Formula> {
            c.map(|c| if x.dim == 1 && c.dim > 1 { c.sum() } else { c })
        };
        Ok(match *self {
            Op::Var { .. } | Op::IntCst(_) | Op::RatCst(..) | Op::FloatCst(_) | Op::Zero(_) => {
                vec![]
            }
            Op::Unary(u) => vec![u.derivative(&a[0], y)?.map(|d| g.mul(&d)).transpose()?],
            Op::Binary(b) => {
                let [ca, cb] = b.vjp(&a[0], &a[1], y, g)?;
                vec![fit(ca, &a[0]), fit(cb, &a[1])]
            }
            Op::Ternary(t) => {
                let c = t.vjp(a, g)?;
                c.into_iter().zip(a).map(|(c, x)| fit(c, x)).collect()
            }
            Op::Sum => vec![Some(g.sum_t(a[0].dim)?)],
            Op::SumT(_) => vec![Some(g.sum())],
            Op::SqNorm2 => vec![Some(Formula::int(2).mul(g)?.mul(&a[0])?)],
            Op::SqDist => {
                let t = Formula::int(2).mul(g)?.mul(&a[0].sub(&a[1])?)?;
                vec![fit(Some(t.clone()), &a[0]), fit(Some(t.neg()), &a[1])]
            }
            Op::Scalprod => vec![Some(g.mul(&a[1])?), Some(g.mul(&a[0])?)],
            Op::WeightedSqNorm => {
                // Differentiate the expansion into primitives (s may be 1, D or D*D).
                let (s, x) = (&a[0], &a[1]);
                let (gs, gx) = super::diff::partials(weighted_sqnorm_expansion, s, x, g)?;
                vec![Some(gs), Some(gx)]
            }
            Op::Extract { start, .. } => vec![Some(g.extract_t(start, a[0].dim)?)],
            // Bilinear: each operand's gradient contracts g with the other one.
            Op::TensorDot(ref td) => vec![
                Some(g.tensordot(&a[1], td.grad_a()?)?),
                Some(g.tensordot(&a[0], td.grad_b()?)?),
            ],
            Op::Concat => vec![
                Some(g.extract(0, a[0].dim)?),
                Some(g.extract(a[0].dim, a[1].dim)?),
            ],
            Op::Elem(m) => vec![Some(g.elem_t(a[0].dim, m)?)],
            Op::ElemT { m, .. } => vec![Some(g.elem(m)?)],
            // Piecewise constant.
            Op::OneHot(_) => vec![None],
            Op::CoordMin | Op::CoordMax => {
                let arg = if *self == Op::CoordMin {
                    Op::CoordArgMin
                } else {
                    Op::CoordArgMax
                };
                let pos = a[0].coord_reduce(arg);
                vec![Some(g.mul(&one_hot(&pos, a[0].dim)?)?)]
            }
            Op::CoordArgMin | Op::CoordArgMax => vec![None],
            // Linear, each the adjoint of the other.
            Op::ComplexPart { imag } => vec![Some(g.to_complex(imag))],
            Op::ToComplex { imag } => vec![Some(g.complex_part(imag)?)],
        })
    }
}

/// `WeightedSqNorm(s, x)` written with primitives, for differentiation.
fn weighted_sqnorm_expansion(s: &Formula, x: &Formula) -> Result<Formula> {
    let d = x.dim;
    if s.dim == 1 {
        s.mul(&x.sqnorm2())
    } else if s.dim == d {
        Ok(s.mul(&x.unary(Unary::Square))?.sum())
    } else {
        // x^T S x = sum_r x_r <S[r, :], x>, S row-major.
        let mut acc: Option<Formula> = None;
        for r in 0..d {
            let t = x.elem(r)?.mul(&s.extract(r * d, d)?.scalprod(x)?)?;
            acc = Some(match acc {
                Some(a) => a.add(&t)?,
                None => t,
            });
        }
        acc.ok_or_else(|| dim_err("WeightedSqNorm", "empty vector".into()))
    }
}

/// The vector of dimension `d` with 1 at the (float) position `pos`, 0 elsewhere.
fn one_hot(pos: &Formula, d: usize) -> Result<Formula> {
    let mut range = Formula::int(0);
    for k in 1..d {
        range = range.concat(&Formula::int(k as i64))?;
    }
    inside(pos, &range, &range)
}

/// `WeightedSqNorm(s, x)` for a weight `s` that must have dimension `want` (KeOps'
/// `SqNormIso`, `SqNormDiag`, `SymSqNorm`: the layouts `WeightedSqNorm` picks by dimension).
fn weight_layout(op: &str, s: &Formula, x: &Formula, want: usize) -> Result<Formula> {
    if s.dim == want {
        s.weighted_sqnorm(x)
    } else {
        Err(dim_err(
            op,
            format!(
                "the weight has dimension {} for a vector of dimension {}; expected {want}",
                s.dim, x.dim
            ),
        ))
    }
}

/// A named constructor of the formula language, as the parser sees it.
pub struct OpSpec {
    /// The name in formula strings.
    pub name: &'static str,
    /// Number of formula operands (written first).
    pub formulas: usize,
    /// Number of integer parameters (written after the formulas).
    pub ints: usize,
    /// The integer parameters are lists `Ind(k, l, ...)` (the last one optional); the
    /// builder gets them flattened as `[len, items.., len, items.., ...]`.
    pub lists: bool,
    /// Builds the formula.
    pub build: fn(&[Formula], &[i64]) -> Result<Formula>,
}

/// `[len, items.., len, items.., ...]` back into lists of non-negative integers.
fn unflatten(op: &str, n: &[i64]) -> Result<Vec<Vec<usize>>> {
    let mut out = Vec::new();
    let mut rest = n;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize_param(op, len)?.min(tail.len());
        out.push(
            tail[..len]
                .iter()
                .map(|&v| usize_param(op, v))
                .collect::<Result<_>>()?,
        );
        rest = &tail[len..];
    }
    Ok(out)
}

fn usize_param(op: &str, v: i64) -> Result<usize> {
    usize::try_from(v).map_err(|_| KeopsError::Arity {
        op: op.to_string(),
        msg: format!("parameter {v} must be a non-negative integer"),
    })
}

fn i32_param(op: &str, v: i64) -> Result<i32> {
    i32::try_from(v).map_err(|_| KeopsError::Arity {
        op: op.to_string(),
        msg: format!("parameter {v} is out of range"),
    })
}

macro_rules! spec {
    ($name:expr, $nf:literal, $ni:literal, |$f:ident, $n:ident| $body:expr) => {
        OpSpec {
            name: $name,
            formulas: $nf,
            ints: $ni,
            lists: false,
            build: |$f: &[Formula], $n: &[i64]| -> Result<Formula> {
                let _ = (&$f, &$n);
                $body
            },
        }
    };
}

macro_rules! unary_spec {
    ($($v:ident),*) => {
        [$(spec!(stringify!($v), 1, 0, |f, _n| Ok(f[0].unary(Unary::$v))),)*]
    };
}

const UNARY_SPECS: [OpSpec; 19] = unary_spec!(
    Minus, Square, Sqrt, Rsqrt, Inv, Exp, Log, XLogX, Abs, Sign, Step, ReLU, Sin, Cos, SinXDivX,
    Floor, Atan, Asin, Acos
);

macro_rules! binary_spec {
    ($($v:ident),*) => {
        [$(spec!(stringify!($v), 2, 0, |f, _n| f[0].binary(Binary::$v, &f[1])),)*]
    };
}

const BINARY_SPECS: [OpSpec; 10] = binary_spec!(
    Add,
    Subtract,
    Mult,
    Divide,
    Powf,
    Atan2,
    LessThan,
    LessOrEqual,
    Equal,
    NotEqual
);

const OTHER_SPECS: [OpSpec; 48] = [
    spec!("Vi", 0, 2, |_f, n| Formula::var(
        Cat::Vi,
        usize_param("Vi", n[0])?,
        usize_param("Vi", n[1])?
    )),
    spec!("Vj", 0, 2, |_f, n| Formula::var(
        Cat::Vj,
        usize_param("Vj", n[0])?,
        usize_param("Vj", n[1])?
    )),
    spec!("Pm", 0, 2, |_f, n| Formula::var(
        Cat::Pm,
        usize_param("Pm", n[0])?,
        usize_param("Pm", n[1])?
    )),
    spec!("Var", 0, 3, |_f, n| {
        let cat = Cat::from_code(n[2]).ok_or_else(|| KeopsError::Arity {
            op: "Var".into(),
            msg: format!(
                "category must be 0 (i), 1 (j) or 2 (parameter), got {}",
                n[2]
            ),
        })?;
        Formula::var(cat, usize_param("Var", n[0])?, usize_param("Var", n[1])?)
    }),
    spec!("IntCst", 0, 1, |_f, n| Ok(Formula::int(n[0]))),
    spec!("RatCst", 0, 2, |_f, n| Formula::rat(n[0], n[1])),
    spec!("IntInv", 0, 1, |_f, n| Formula::rat(1, n[0])),
    spec!("Zero", 0, 1, |_f, n| Formula::zero(usize_param(
        "Zero", n[0]
    )?)),
    spec!("Pow", 1, 1, |f, n| Ok(f[0].pow(i32_param("Pow", n[0])?))),
    spec!("ClampInt", 1, 2, |f, n| Ok(f[0].unary(Unary::ClampInt(
        i32_param("ClampInt", n[0])?,
        i32_param("ClampInt", n[1])?
    )))),
    spec!("DiffClampInt", 1, 2, |f, n| Ok(f[0].unary(
        Unary::DiffClampInt(
            i32_param("DiffClampInt", n[0])?,
            i32_param("DiffClampInt", n[1])?
        )
    ))),
    spec!("Round", 1, 1, |f, n| Ok(
        f[0].unary(Unary::Round(i32_param("Round", n[0])?))
    )),
    spec!("Sinc", 1, 0, |f, _n| f[0].sinc()),
    spec!("IfElse", 3, 0, |f, _n| f[0].if_else(&f[1], &f[2])),
    spec!("Clamp", 3, 0, |f, _n| f[0].clamp(&f[1], &f[2])),
    spec!("Mod", 3, 0, |f, _n| f[0].modulo(&f[1], &f[2])),
    spec!("Sum", 1, 0, |f, _n| Ok(f[0].sum())),
    spec!("SumT", 1, 1, |f, n| f[0].sum_t(usize_param("SumT", n[0])?)),
    spec!("SqNorm2", 1, 0, |f, _n| Ok(f[0].sqnorm2())),
    spec!("Norm2", 1, 0, |f, _n| Ok(f[0].norm2())),
    spec!("Normalize", 1, 0, |f, _n| f[0].normalize()),
    spec!("SqDist", 2, 0, |f, _n| f[0].sqdist(&f[1])),
    spec!("Scalprod", 2, 0, |f, _n| f[0].scalprod(&f[1])),
    spec!("WeightedSqNorm", 2, 0, |f, _n| f[0].weighted_sqnorm(&f[1])),
    spec!("SqNormIso", 2, 0, |f, _n| weight_layout(
        "SqNormIso",
        &f[0],
        &f[1],
        1
    )),
    spec!("SqNormDiag", 2, 0, |f, _n| weight_layout(
        "SqNormDiag",
        &f[0],
        &f[1],
        f[1].dim
    )),
    spec!("SymSqNorm", 2, 0, |f, _n| weight_layout(
        "SymSqNorm",
        &f[0],
        &f[1],
        f[1].dim * f[1].dim
    )),
    spec!("WeightedSqDist", 3, 0, |f, _n| f[0]
        .weighted_sqdist(&f[1], &f[2])),
    spec!("Extract", 1, 2, |f, n| f[0].extract(
        usize_param("Extract", n[0])?,
        usize_param("Extract", n[1])?
    )),
    spec!("Concat", 2, 0, |f, _n| f[0].concat(&f[1])),
    spec!("ExtractT", 1, 2, |f, n| f[0].extract_t(
        usize_param("ExtractT", n[0])?,
        usize_param("ExtractT", n[1])?
    )),
    spec!("DifferenceMatrix", 2, 0, |f, _n| f[0]
        .difference_matrix(&f[1])),
    spec!("BSpline", 2, 1, |f, n| f[0]
        .bspline(&f[1], usize_param("BSpline", n[0])?)),
    spec!("SoftDTW_SqDist", 3, 0, |f, _n| f[0]
        .softdtw_sqdist(&f[1], &f[2])),
    spec!("Elem", 1, 1, |f, n| f[0].elem(usize_param("Elem", n[0])?)),
    spec!("ElemT", 1, 2, |f, n| f[0].elem_t(
        usize_param("ElemT", n[0])?,
        usize_param("ElemT", n[1])?
    )),
    OpSpec {
        name: "TensorDot",
        formulas: 2,
        ints: 5,
        lists: true,
        build: |f, n| {
            let mut lists = unflatten("TensorDot", n)?;
            if lists.len() == 4 {
                lists.push(Vec::new());
            }
            let [da, db, ca, cb, p]: [Vec<usize>; 5] =
                lists.try_into().map_err(|_| KeopsError::Arity {
                    op: "TensorDot".into(),
                    msg: "expects 4 or 5 Ind(...) lists".into(),
                })?;
            f[0].tensordot(&f[1], TensorDot::new(da, db, ca, cb, p)?)
        },
    },
    spec!("MatVecMult", 2, 0, |f, _n| f[0].mat_vec_mult(&f[1])),
    spec!("VecMatMult", 2, 0, |f, _n| f[0].vec_mat_mult(&f[1])),
    spec!("TensorProd", 2, 0, |f, _n| f[0].tensor_prod(&f[1])),
    OpSpec {
        name: "Kron",
        formulas: 2,
        ints: 2,
        lists: true,
        build: |f, n| match unflatten("Kron", n)?.as_slice() {
            [da, db] => f[0].kron(&f[1], da, db),
            _ => Err(KeopsError::Arity {
                op: "Kron".into(),
                msg: "expects the shapes of both operands, as Ind(...) lists".into(),
            }),
        },
    },
    // Our formulas are DAGs with shared nodes: every common subexpression is already
    // computed once per point, so KeOps' factorisation hint is the identity here.
    spec!("Factorize", 2, 0, |f, _n| Ok(f[0].clone())),
    spec!("AutoFactorize", 1, 0, |f, _n| Ok(f[0].clone())),
    spec!("OneHot", 1, 1, |f, n| f[0]
        .one_hot(usize_param("OneHot", n[0])?)),
    spec!("Min", 1, 0, |f, _n| Ok(f[0].coord_reduce(Op::CoordMin))),
    spec!("Max", 1, 0, |f, _n| Ok(f[0].coord_reduce(Op::CoordMax))),
    spec!("ArgMin", 1, 0, |f, _n| Ok(
        f[0].coord_reduce(Op::CoordArgMin)
    )),
    spec!("ArgMax", 1, 0, |f, _n| Ok(
        f[0].coord_reduce(Op::CoordArgMax)
    )),
];

use super::diff;

/// Complex ops (see [`super::complex`]): two primitives, the rest expanded when built.
const COMPLEX_SPECS: [OpSpec; 17] = [
    spec!("ComplexReal", 1, 0, |f, _n| f[0].complex_part(false)),
    spec!("ComplexImag", 1, 0, |f, _n| f[0].complex_part(true)),
    spec!("Real2Complex", 1, 0, |f, _n| Ok(f[0].to_complex(false))),
    spec!("Imag2Complex", 1, 0, |f, _n| Ok(f[0].to_complex(true))),
    spec!("ComplexAdd", 2, 0, |f, _n| f[0].complex_add(&f[1])),
    spec!("ComplexSubtract", 2, 0, |f, _n| f[0].complex_sub(&f[1])),
    spec!("ComplexMult", 2, 0, |f, _n| f[0].complex_mult(&f[1])),
    spec!("ComplexDivide", 2, 0, |f, _n| f[0].complex_divide(&f[1])),
    spec!("ComplexRealScal", 2, 0, |f, _n| f[0]
        .complex_real_scal(&f[1])),
    spec!("Conj", 1, 0, |f, _n| f[0].conj()),
    spec!("ComplexExp", 1, 0, |f, _n| f[0].complex_exp()),
    spec!("ComplexExp1j", 1, 0, |f, _n| f[0].complex_exp1j()),
    spec!("ComplexSquareAbs", 1, 0, |f, _n| f[0].complex_square_abs()),
    spec!("ComplexAbs", 1, 0, |f, _n| f[0].complex_abs()),
    spec!("ComplexAngle", 1, 0, |f, _n| f[0].complex_angle()),
    spec!("ComplexSum", 1, 0, |f, _n| f[0].complex_sum()),
    spec!("ComplexSumT", 1, 1, |f, n| f[0]
        .complex_sum_t(usize_param("ComplexSumT", n[0])?)),
];

/// KeOps' differential operators, expanded when built (see [`diff`]).
const DIFF_SPECS: [OpSpec; 7] = [
    spec!("Grad", 3, 0, |f, _n| diff::grad(&f[0], &f[1], &f[2])),
    spec!("GradFromPos", 2, 1, |f, n| diff::grad(
        &f[0],
        &f[1],
        &Formula::vi(usize_param("GradFromPos", n[0])?, f[0].dim)?
    )),
    spec!("Diff", 3, 0, |f, _n| diff::diff(&f[0], &f[1], &f[2])),
    spec!("Divergence", 2, 0, |f, _n| diff::divergence(&f[0], &f[1])),
    spec!("Laplacian", 2, 0, |f, _n| diff::laplacian(&f[0], &f[1])),
    spec!("GradMatrix", 2, 0, |f, _n| diff::grad_matrix(&f[0], &f[1])),
    spec!("TraceOperator", 2, 0, |f, _n| diff::trace_operator(
        &f[0], &f[1]
    )),
];

/// Every named constructor of the formula language.
pub static OP_TABLE: [&[OpSpec]; 5] = [
    &UNARY_SPECS,
    &BINARY_SPECS,
    &OTHER_SPECS,
    &COMPLEX_SPECS,
    &DIFF_SPECS,
];

/// Looks up a name of the formula language.
pub fn lookup(name: &str) -> Option<&'static OpSpec> {
    OP_TABLE
        .iter()
        .flat_map(|t| t.iter())
        .find(|s| s.name == name)
}

/// Every name of the formula language (for error messages and coverage tests).
pub fn all_specs() -> impl Iterator<Item = &'static OpSpec> {
    OP_TABLE.iter().flat_map(|t| t.iter())
}

/// The number of rows `n` of a matrix of dimension `n p` multiplied with a vector of
/// dimension `p`.
fn matrix_rows(op: &str, matrix: usize, p: usize) -> Result<usize> {
    if matrix % p == 0 {
        Ok(matrix / p)
    } else {
        Err(dim_err(
            op,
            format!("a matrix of dimension {matrix} cannot multiply a vector of dimension {p}: {matrix} is not a multiple of {p}"),
        ))
    }
}

/// Builds a node that cannot fail (operand dimensions already known to fit).
fn node(op: Op, args: Vec<Formula>) -> Formula {
    match Formula::new(op, args) {
        Ok(f) => f,
        // Only reached through a bug in a caller of `node`; surface it loudly in tests.
        Err(e) => unreachable!("internal dimension error: {e}"),
    }
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

/// Constructors with light simplification (constant folding, neutral elements); every
/// way of building formulas (parser, Rust API, autodiff) goes through them.
impl Formula {
    /// `Vi(index, dim)`, `Vj(index, dim)` or `Pm(index, dim)`.
    pub fn var(cat: Cat, index: usize, dim: usize) -> Result<Formula> {
        Formula::new(Op::Var { cat, index, dim }, vec![])
    }
    /// `Vi(index, dim)`.
    pub fn vi(index: usize, dim: usize) -> Result<Formula> {
        Self::var(Cat::Vi, index, dim)
    }
    /// `Vj(index, dim)`.
    pub fn vj(index: usize, dim: usize) -> Result<Formula> {
        Self::var(Cat::Vj, index, dim)
    }
    /// `Pm(index, dim)`.
    pub fn pm(index: usize, dim: usize) -> Result<Formula> {
        Self::var(Cat::Pm, index, dim)
    }
    /// An integer constant.
    pub fn int(n: i64) -> Formula {
        node(Op::IntCst(n), vec![])
    }
    /// The rational constant `p / q` (an error if `q == 0`).
    pub fn rat(p: i64, q: i64) -> Result<Formula> {
        if q == 0 {
            return Err(KeopsError::Arity {
                op: "RatCst".into(),
                msg: "denominator is zero".into(),
            });
        }
        // In i128, so that no sign change or reduction overflows; a fraction that does not
        // fit i64 once reduced (only from i64::MIN) is kept as its float value.
        let (p, q) = (i128::from(p), i128::from(q));
        let g = gcd(p, q).max(1) * q.signum();
        let (p, q) = (p / g, q / g);
        Ok(match (i64::try_from(p), i64::try_from(q)) {
            (Ok(p), Ok(1)) => Formula::int(p),
            (Ok(p), Ok(q)) => node(Op::RatCst(p, q), vec![]),
            _ => Formula::float(p as f64 / q as f64),
        })
    }
    /// A floating-point constant (integral values become `IntCst`).
    pub fn float(x: f64) -> Formula {
        if x.fract() == 0.0 && x.abs() < 1e15 {
            Formula::int(x as i64)
        } else {
            node(Op::FloatCst(x.to_bits()), vec![])
        }
    }
    /// The zero vector of dimension `d`.
    pub fn zero(d: usize) -> Result<Formula> {
        if d == 1 {
            return Ok(Formula::int(0));
        }
        Formula::new(Op::Zero(d), vec![])
    }

    fn is_zero(&self) -> bool {
        matches!(self.op, Op::Zero(_) | Op::IntCst(0))
    }
    fn is_one(&self) -> bool {
        matches!(self.op, Op::IntCst(1))
    }

    /// An elementwise unary op (folds constants and double negation).
    pub fn unary(&self, u: Unary) -> Formula {
        match (u, &self.op) {
            // Constants fold unless the result overflows i64 (then the op stays, computed
            // in floating point as any other).
            (Unary::Minus, Op::IntCst(n)) if n.checked_neg().is_some() => return Formula::int(-n),
            (Unary::Minus, Op::RatCst(p, q)) if p.checked_neg().is_some() => {
                return node(Op::RatCst(-p, *q), vec![])
            }
            (Unary::Minus, Op::FloatCst(b)) => return Formula::float(-f64::from_bits(*b)),
            (Unary::Minus, Op::Zero(_)) => return self.clone(),
            (Unary::Minus, Op::Unary(Unary::Minus)) => return self.args[0].clone(),
            (Unary::Pow(1), _) => return self.clone(),
            _ => {}
        }
        node(Op::Unary(u), vec![self.clone()])
    }
    /// `-self`.
    pub fn neg(&self) -> Formula {
        self.unary(Unary::Minus)
    }
    /// `Exp(self)`.
    pub fn exp(&self) -> Formula {
        self.unary(Unary::Exp)
    }
    /// `Pow(self, m)`.
    pub fn pow(&self, m: i32) -> Formula {
        self.unary(Unary::Pow(m))
    }

    /// An elementwise binary op (folds integer constants and neutral elements).
    pub fn binary(&self, b: Binary, other: &Formula) -> Result<Formula> {
        let out = broadcast_dim(b.name(), &[self.dim, other.dim])?;
        let (x, y) = (self, other);
        if let (Op::IntCst(p), Op::IntCst(q)) = (&x.op, &y.op) {
            let folded = match b {
                Binary::Add => p.checked_add(*q),
                Binary::Subtract => p.checked_sub(*q),
                Binary::Mult => p.checked_mul(*q),
                Binary::Divide if *q != 0 => return Formula::rat(*p, *q),
                _ => None,
            };
            if let Some(n) = folded {
                return Ok(Formula::int(n));
            }
        }
        match b {
            Binary::Add if x.is_zero() && y.dim == out => return Ok(y.clone()),
            Binary::Add | Binary::Subtract if y.is_zero() && x.dim == out => return Ok(x.clone()),
            Binary::Subtract if x.is_zero() && y.dim == out => return Ok(y.neg()),
            Binary::Mult if (x.is_zero() || y.is_zero()) => return Formula::zero(out),
            Binary::Mult if x.is_one() && y.dim == out => return Ok(y.clone()),
            Binary::Mult if matches!(x.op, Op::IntCst(-1)) && y.dim == out => return Ok(y.neg()),
            // c * (-z) -> (-c) * z: keeps the sign in the constant.
            Binary::Mult if x.as_const().is_some() && y.op == Op::Unary(Unary::Minus) => {
                return x.neg().mul(&y.args[0])
            }
            Binary::Mult if y.as_const().is_some() && x.op == Op::Unary(Unary::Minus) => {
                return y.neg().mul(&x.args[0])
            }
            // SumT(s, d) * v -> s * v (broadcasting does it), as gradients of Sum produce.
            Binary::Mult | Binary::Divide if matches!(x.op, Op::SumT(_)) && y.dim == out => {
                return x.args[0].binary(b, y)
            }
            Binary::Mult if matches!(y.op, Op::SumT(_)) && x.dim == out => {
                return x.mul(&y.args[0])
            }
            Binary::Mult if matches!(y.op, Op::IntCst(-1)) && x.dim == out => return Ok(x.neg()),
            Binary::Mult | Binary::Divide if y.is_one() && x.dim == out => return Ok(x.clone()),
            _ => {}
        }
        Formula::new(Op::Binary(b), vec![x.clone(), y.clone()])
    }
    /// `self + other`.
    pub fn add(&self, other: &Formula) -> Result<Formula> {
        self.binary(Binary::Add, other)
    }
    /// `self - other`.
    pub fn sub(&self, other: &Formula) -> Result<Formula> {
        self.binary(Binary::Subtract, other)
    }
    /// `self * other`.
    pub fn mul(&self, other: &Formula) -> Result<Formula> {
        self.binary(Binary::Mult, other)
    }
    /// `self / other`.
    pub fn div(&self, other: &Formula) -> Result<Formula> {
        self.binary(Binary::Divide, other)
    }
    /// `Powf(self, other)`.
    pub fn powf(&self, other: &Formula) -> Result<Formula> {
        self.binary(Binary::Powf, other)
    }
    /// `IfElse(self, a, b)`.
    pub fn if_else(&self, a: &Formula, b: &Formula) -> Result<Formula> {
        // Both branches the same (zero gradients of both, typically): no selection.
        if a == b && a.dim >= self.dim {
            return Ok(a.clone());
        }
        Formula::new(
            Op::Ternary(Ternary::IfElse),
            vec![self.clone(), a.clone(), b.clone()],
        )
    }
    /// `Clamp(self, a, b)`.
    pub fn clamp(&self, a: &Formula, b: &Formula) -> Result<Formula> {
        Formula::new(
            Op::Ternary(Ternary::Clamp),
            vec![self.clone(), a.clone(), b.clone()],
        )
    }
    /// `Mod(self, n, d) = self - n Floor((self - d) / n)`.
    pub fn modulo(&self, n: &Formula, d: &Formula) -> Result<Formula> {
        Formula::new(
            Op::Ternary(Ternary::Mod),
            vec![self.clone(), n.clone(), d.clone()],
        )
    }
    /// `Sum(self)` (the identity on dimension 1).
    pub fn sum(&self) -> Formula {
        if self.dim == 1 {
            return self.clone();
        }
        // Sum(a * b) of two vectors is their scalar product (one pass, no temporary).
        if self.op == Op::Binary(Binary::Mult) && self.args.iter().all(|a| a.dim == self.dim) {
            return node(Op::Scalprod, self.args.clone());
        }
        // Sum(Square(a - b)) and Sum(Square(a)), pykeops' `((x_i - y_j) ** 2).sum(-1)`:
        // the distance ops, which the fused kernels recognise.
        if self.op == Op::Unary(Unary::Square) {
            let inner = &self.args[0];
            if inner.op == Op::Binary(Binary::Subtract)
                && inner.args.iter().all(|a| a.dim == self.dim)
            {
                return node(Op::SqDist, inner.args.clone());
            }
            return node(Op::SqNorm2, vec![inner.clone()]);
        }
        node(Op::Sum, vec![self.clone()])
    }
    /// `SumT(self, d)`.
    pub fn sum_t(&self, d: usize) -> Result<Formula> {
        if d == 1 && self.dim == 1 {
            return Ok(self.clone());
        }
        Formula::new(Op::SumT(d), vec![self.clone()])
    }
    /// `SqNorm2(self)`.
    pub fn sqnorm2(&self) -> Formula {
        node(Op::SqNorm2, vec![self.clone()])
    }
    /// `Norm2(self) = Sqrt(SqNorm2(self))`.
    pub fn norm2(&self) -> Formula {
        self.sqnorm2().unary(Unary::Sqrt)
    }
    /// `Normalize(self) = self * Rsqrt(SqNorm2(self))`.
    pub fn normalize(&self) -> Result<Formula> {
        self.mul(&self.sqnorm2().unary(Unary::Rsqrt))
    }
    /// `SqDist(self, other)`.
    pub fn sqdist(&self, other: &Formula) -> Result<Formula> {
        Formula::new(Op::SqDist, vec![self.clone(), other.clone()])
    }
    /// `Scalprod(self, other)`.
    pub fn scalprod(&self, other: &Formula) -> Result<Formula> {
        Formula::new(Op::Scalprod, vec![self.clone(), other.clone()])
    }
    /// `WeightedSqNorm(self, x)`: `self` is the weight.
    pub fn weighted_sqnorm(&self, x: &Formula) -> Result<Formula> {
        Formula::new(Op::WeightedSqNorm, vec![self.clone(), x.clone()])
    }
    /// `WeightedSqDist(self, a, b) = WeightedSqNorm(self, a - b)`.
    pub fn weighted_sqdist(&self, a: &Formula, b: &Formula) -> Result<Formula> {
        self.weighted_sqnorm(&a.sub(b)?)
    }
    /// `Extract(self, start, dim)`.
    pub fn extract(&self, start: usize, dim: usize) -> Result<Formula> {
        if start == 0 && dim == self.dim {
            return Ok(self.clone());
        }
        Formula::new(Op::Extract { start, dim }, vec![self.clone()])
    }
    /// `ExtractT(self, start, dim)`: the vector of dimension `dim` holding `self` at
    /// `start..start + self.dim` and zeros elsewhere (the adjoint of `Extract`).
    pub fn extract_t(&self, start: usize, dim: usize) -> Result<Formula> {
        if start + self.dim > dim {
            return Err(dim_err(
                "ExtractT",
                format!(
                    "a vector of dimension {} at {start} does not fit in dimension {dim}",
                    self.dim
                ),
            ));
        }
        let mut out = self.clone();
        if start > 0 {
            out = Formula::zero(start)?.concat(&out)?;
        }
        if start + self.dim < dim {
            out = out.concat(&Formula::zero(dim - start - self.dim)?)?;
        }
        Ok(out)
    }
    /// `DifferenceMatrix(self, y)`: `out[j * n + i] = self[i] - y[j]` (`n = self.dim`),
    /// the row-major `(dim(y), n)` matrix of differences (pykeops' `difference_matrix`).
    pub fn difference_matrix(&self, y: &Formula) -> Result<Formula> {
        let ones = |d: usize| Formula::int(1).sum_t(d);
        ones(y.dim)?
            .tensor_prod(self)?
            .sub(&y.tensor_prod(&ones(self.dim)?)?)
    }
    /// `Concat(self, other)`.
    pub fn concat(&self, other: &Formula) -> Result<Formula> {
        Formula::new(Op::Concat, vec![self.clone(), other.clone()])
    }
    /// `Elem(self, m)`.
    pub fn elem(&self, m: usize) -> Result<Formula> {
        if m == 0 && self.dim == 1 {
            return Ok(self.clone());
        }
        Formula::new(Op::Elem(m), vec![self.clone()])
    }
    /// `ElemT(self, n, m)`.
    pub fn elem_t(&self, n: usize, m: usize) -> Result<Formula> {
        Formula::new(Op::ElemT { n, m }, vec![self.clone()])
    }
    /// `TensorDot(self, other, ...)` with checked parameters.
    pub fn tensordot(&self, other: &Formula, td: TensorDot) -> Result<Formula> {
        Formula::new(
            Op::TensorDot(Box::new(td)),
            vec![self.clone(), other.clone()],
        )
    }
    /// `MatVecMult(self, v)`: the matrix `self` (`n x p`, row-major, of dimension
    /// `n p`) times the vector `v` (dimension `p`).
    pub fn mat_vec_mult(&self, v: &Formula) -> Result<Formula> {
        let p = v.dim;
        let n = matrix_rows("MatVecMult", self.dim, p)?;
        self.tensordot(
            v,
            TensorDot::new(vec![n, p], vec![p], vec![1], vec![0], vec![])?,
        )
    }
    /// `VecMatMult(self, m)`: the row vector `self` (dimension `n`) times the matrix `m`
    /// (`n x p`, row-major).
    pub fn vec_mat_mult(&self, m: &Formula) -> Result<Formula> {
        let n = self.dim;
        let p = matrix_rows("VecMatMult", m.dim, n)?;
        self.tensordot(
            m,
            TensorDot::new(vec![n], vec![n, p], vec![0], vec![0], vec![])?,
        )
    }
    /// `TensorProd(self, b)`: the outer product, `out[k * dim(b) + l] = self[k] b[l]`.
    pub fn tensor_prod(&self, b: &Formula) -> Result<Formula> {
        self.tensordot(
            b,
            TensorDot::new(vec![self.dim], vec![b.dim], vec![], vec![], vec![])?,
        )
    }
    /// `Kron(self, b, Ind(dims_a), Ind(dims_b))`: the Kronecker product of two tensors of
    /// the same rank, laid out as NumPy's `kron` (row-major).
    pub fn kron(&self, b: &Formula, dims_a: &[usize], dims_b: &[usize]) -> Result<Formula> {
        let r = dims_a.len();
        if r != dims_b.len() || r == 0 {
            return Err(dim_err(
                "Kron",
                format!("the shapes {dims_a:?} and {dims_b:?} must have the same, positive rank"),
            ));
        }
        // The natural axes (a_0.., b_0..) go to a_0, b_0, a_1, b_1, ...: a_k to 2k, b_k
        // to 2k + 1 (keopscore's `permute`).
        let perm = (0..r)
            .map(|k| 2 * k)
            .chain((0..r).map(|k| 2 * k + 1))
            .collect();
        let td = TensorDot::new(dims_a.to_vec(), dims_b.to_vec(), vec![], vec![], perm)?;
        self.tensordot(b, td)
    }
    /// `Sinc(self) = sin(pi x) / (pi x)` (the normalised sinc of NumPy and PyTorch).
    pub fn sinc(&self) -> Result<Formula> {
        Ok(Formula::float(std::f64::consts::PI)
            .mul(self)?
            .unary(Unary::SinXDivX))
    }
    /// `OneHot(self, d)`.
    pub fn one_hot(&self, d: usize) -> Result<Formula> {
        Formula::new(Op::OneHot(d), vec![self.clone()])
    }
    /// `ComplexReal(self)` or `ComplexImag(self)` (`self` of even dimension).
    pub fn complex_part(&self, imag: bool) -> Result<Formula> {
        Formula::new(Op::ComplexPart { imag }, vec![self.clone()])
    }
    /// `Real2Complex(self)` or `Imag2Complex(self)`.
    pub fn to_complex(&self, imag: bool) -> Formula {
        node(Op::ToComplex { imag }, vec![self.clone()])
    }
    /// `Min`, `Max`, `ArgMin` or `ArgMax` over the coordinates of `self`.
    pub fn coord_reduce(&self, op: Op) -> Formula {
        node(op, vec![self.clone()])
    }
}
