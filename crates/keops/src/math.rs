//! Vectorisable elementary functions for `f32` and `f64`.
//!
//! The engines evaluate these inside tight loops over tiles, compiled for AVX2/AVX-512
//! through `multiversion`. For LLVM to auto-vectorise such a loop, every function here is
//! *branch-free* (value-dependent choices are `if c { a } else { b }` on values, which
//! become blends), makes *no call* (no libm, no table lookups with data-dependent
//! indices), and converts between floats and integers only through bit manipulation.
//!
//! Common techniques:
//!
//! * **Rounding to an integer** uses the "magic number" trick: adding `1.5 * 2^p`
//!   (`p` = number of mantissa bits) pushes the fraction out of the mantissa, so
//!   `(x + M) - M` is `x` rounded to nearest, and the low bits of `(x + M).to_bits()` hold
//!   that integer in two's complement. This needs no SSE4.1 `round` instruction and no
//!   saturating float-to-int conversion.
//! * **Powers of two** `2^k` are built by writing `k + bias` into the exponent field.
//! * **Cody-Waite range reduction**: constants such as `ln 2` or `pi/2` are split into a
//!   sum of pieces whose leading pieces have few significant bits, so that products
//!   `k * piece` are exact for the range of `k` in use and the reduction `x - k * C` loses
//!   nothing, even without FMA.
//! * Polynomials are minimax fits (Remez exchange, computed in high precision) of the
//!   function on the reduced interval, with the leading Taylor terms kept exact.
//!
//! `mul_add` is used only where the target has FMA as an instruction (private helper
//! `fma`); all accuracy bounds below hold with and without FMA. Note that
//! `cfg!(target_feature)` is evaluated for the whole crate, so inside a
//! `#[target_feature(enable = "fma")]` function of a crate built for baseline x86-64 the
//! unfused path is taken (build with `-C target-cpu=native` to fuse): both paths are
//! tested.
//!
//! Accuracy figures in the docs are maximum errors in units in the last place (ulp) of
//! the exact result, observed with and without FMA: for the `f32` versions exhaustively
//! over all `f32` inputs (reference: the `f64` libm function); for the `f64` versions on
//! 170k inputs (uniform, near-boundary, and for sin/cos the doubles closest to multiples
//! of `pi/2` found by continued fractions) against `mpmath` at 300 bits, plus the unit
//! tests' millions of inputs against libm.

use core::ops::{Add, Mul};

/// Scalar types with a fused multiply-add.
trait MulAdd: Copy + Add<Output = Self> + Mul<Output = Self> {
    fn fused_mul_add(self, b: Self, c: Self) -> Self;
}

impl MulAdd for f32 {
    #[inline(always)]
    fn fused_mul_add(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }
}

impl MulAdd for f64 {
    #[inline(always)]
    fn fused_mul_add(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }
}

/// What the code is compiled for: whether the polynomials use fused multiply-adds, and
/// how many vector registers kernels may keep sums in. Chosen by the caller, because the
/// engines' SIMD entry points know what the CPU has while `cfg!` only knows the
/// crate-wide build target.
pub trait MathMode: Copy + Send + Sync + 'static {
    /// Use `mul_add` (one instruction where the code is compiled with FMA enabled).
    const FMA: bool;
    /// Vector registers (32 with AVX-512, 16 with AVX2, SSE; NEON's 32 are counted as 16:
    /// they hold a quarter of an AVX-512 register).
    const REGISTERS: usize = 16;
}

/// Fused multiply-adds and 32 registers of 512 bits: for code compiled with
/// `#[target_feature(enable = "avx512f")]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct WideFma;
impl MathMode for WideFma {
    const FMA: bool = true;
    const REGISTERS: usize = 32;
}

/// Fused multiply-adds: for code compiled with `#[target_feature(enable = "fma")]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct WithFma;
impl MathMode for WithFma {
    const FMA: bool = true;
}

/// Separate multiply and add: for code that may run where FMA is missing (there
/// `mul_add` would be a slow libm call).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFma;
impl MathMode for NoFma {
    const FMA: bool = false;
}

/// The mode of code compiled for the build's own target.
pub type BuildMode = BuildFma;

/// [`MathMode`] with FMA exactly when the whole build targets it.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildFma;
impl MathMode for BuildFma {
    const FMA: bool = cfg!(target_feature = "fma");
}

/// `a * b + c`: fused when the mode says so, two roundings otherwise.
#[inline(always)]
fn fma<M: MathMode, T: MulAdd>(a: T, b: T, c: T) -> T {
    if M::FMA {
        a.fused_mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `if c { a } else { b }` (spelled out so the intent, a blend, is visible).
#[inline(always)]
fn select<T>(c: bool, a: T, b: T) -> T {
    if c {
        a
    } else {
        b
    }
}

/// Error-free sum: `(s, e)` with `s = fl(a + b)` and `s + e = a + b` exactly
/// (Knuth's TwoSum; valid whatever the magnitudes).
#[inline(always)]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

// ---------------------------------------------------------------------------------------
// Shared constants.

/// `1.5 * 2^23`: `(x + M) - M` rounds an `f32` with `|x| < 2^22` to the nearest integer.
const MAGIC_F32: f32 = 12_582_912.0;
/// `1.5 * 2^52`: `(x + M) - M` rounds an `f64` with `|x| < 2^51` to the nearest integer.
const MAGIC_F64: f64 = 6_755_399_441_055_744.0;

/// `2^k` for an integral `k` in `[-126, 127]` (given as a float).
///
/// `k + M + 127` is exact and holds `k + 127` in its low mantissa bits; shifting them
/// into the exponent field (and the rest out) gives the power of two.
#[inline(always)]
fn pow2_f32(k: f32) -> f32 {
    f32::from_bits((k + (MAGIC_F32 + 127.0)).to_bits() << 23)
}

/// `2^k` for an integral `k` in `[-1022, 1023]` (given as a float); see `pow2_f32`.
#[inline(always)]
fn pow2_f64(k: f64) -> f64 {
    f64::from_bits((k + (MAGIC_F64 + 1023.0)).to_bits() << 52)
}

// ---------------------------------------------------------------------------------------
// exp

/// Cody-Waite split of `ln 2` for `f32`: `LN2_HI_F32` has 15 significant bits, so
/// `k * LN2_HI_F32` is exact for the `|k| <= 159` used here.
const LN2_HI_F32: f32 = 0.693_145_75; // 0x3f317200
const LN2_LO_F32: f32 = 1.428_606_8e-6;

/// Minimax coefficients of `P` in `exp(r) = 1 + r + r^2 P(r)`, `|r| <= ln(2)/2`
/// (relative error of the approximation 2^-28).
const EXP_F32_P: [f32; 5] = [
    0.499_999_94,
    0.166_665_17,
    0.041_668_102,
    0.008_369_192,
    0.001_383_881_2,
];

/// Exponential of an `f32`, branch-free and vectorisable.
///
/// `x = k ln 2 + r` with `|r| <= ln(2)/2`, `exp(r)` by a degree-6 polynomial, and the
/// result scaled by `2^k` in two steps (`2^(k/2) 2^(k - k/2)`) so that results in the
/// subnormal range are correctly scaled and rounded once rather than flushed to zero.
///
/// Maximum error: 0.89 ulp over all `f32` inputs (exhaustive; subnormal results are
/// counted in units of the smallest subnormal).
/// Special cases: `exp(NaN) = NaN`, `exp(+inf) = +inf`, `exp(-inf) = 0`, overflow to
/// `+inf` above `ln(f32::MAX) ~ 88.72`, underflow to `0` below `~ -103.97`.
#[inline(always)]
pub fn exp_f32_mode<M: MathMode>(x: f32) -> f32 {
    // Results below half the smallest subnormal (x < -150 ln 2 ~ -103.97) are 0: they
    // are selected, not computed, because underflow in the scaling multiplies below costs
    // x86 a microcode assist per vector instruction (a Gaussian kernel of far-apart
    // points ran 8x slower). Clamp above so that k stays in range for pow2_f32 (the
    // clamped extreme still overflows to inf). NaN fails the comparisons and propagates.
    let zero = x < -104.0;
    let x = select(x > 89.0, 89.0, x);
    let x = select(zero, 0.0, x);
    let (e, k, _) = exp_f32_parts::<M>(x);
    // k in [-150, 129] does not fit one exponent: split it in two halves.
    let k1 = (k * 0.5 + MAGIC_F32) - MAGIC_F32;
    let k2 = k - k1;
    select(zero, 0.0, e * pow2_f32(k1) * pow2_f32(k2))
}

/// `(e, k, t)` with `exp(x) = e 2^k`, `e = exp(r)` in `[1/sqrt 2, sqrt 2]`, for
/// `|x| < 2^22`; `t` holds `k` in its low mantissa bits (the rounding's magic sum).
#[inline(always)]
fn exp_f32_parts<M: MathMode>(x: f32) -> (f32, f32, f32) {
    let t = fma::<M, _>(x, core::f32::consts::LOG2_E, MAGIC_F32);
    let k = t - MAGIC_F32;
    // r = r1 + c: r1 is exact (Sterbenz), and c is kept apart from r1 in the linear term
    // so that the rounding of r1 + c (up to 0.2 ulp of the result) is not incurred.
    let r1 = fma::<M, _>(-k, LN2_HI_F32, x);
    let c = -k * LN2_LO_F32;
    let r = r1 + c;

    let p = &EXP_F32_P;
    let q = fma::<M, _>(
        fma::<M, _>(fma::<M, _>(fma::<M, _>(p[4], r, p[3]), r, p[2]), r, p[1]),
        r,
        p[0],
    );
    (1.0 + (r1 + fma::<M, _>(r * r, q, c)), k, t)
}

/// [`exp_f32_mode`] for code running while subnormal results are flushed to zero
/// (x86 FTZ, AArch64 FZ; see `cpu::fpmode`), where it returns the same bits for a
/// third less work: there the two-step scaling only ever produces normal numbers,
/// zero or infinity, so one integer addition to the exponent field does it, and the
/// inputs whose results are not normal are selected by two comparisons of `x`.
/// Without flushing it returns 0 where `exp_f32_mode` returns a subnormal.
#[inline(always)]
pub fn exp_f32_ftz_mode<M: MathMode>(x: f32) -> f32 {
    let (e, _, t) = exp_f32_parts::<M>(x);
    // `t.to_bits() << 23` is `k` shifted into the exponent field (mod 2^32); the sum is
    // the bits of `e 2^k` wherever that is normal. Outside the range, whatever the
    // parts computed (garbage past |x| = 2^22, NaN for infinities) is not selected.
    let v = f32::from_bits(e.to_bits().wrapping_add(t.to_bits() << 23));
    // `x * inf` is +inf above the range and NaN for NaN (which fails both comparisons).
    select(
        x < EXP_F32_FTZ_LO,
        0.0,
        select(x <= EXP_F32_FTZ_HI, v, x * f32::INFINITY),
    )
}

/// [`exp_f32_ftz_mode`] for `x <= 0` or NaN (a LogSumExp's `f - max`), with the same
/// bits there for fewer instructions: nothing overflows, so the upper range's test and
/// its infinity go, and `2^k` multiplies `e` as a float, which keeps a NaN without a
/// test of its own (the integer addition of `exp_f32_ftz_mode` may turn a NaN's bits
/// into a number). For `x > 0` the result is unspecified.
#[inline(always)]
pub fn exp_f32_nonpos_ftz_mode<M: MathMode>(x: f32) -> f32 {
    let (e, k, _) = exp_f32_parts::<M>(x);
    // From EXP_F32_FTZ_LO to 0, k is in [-126, 0] and e 2^k is normal: exact.
    select(x < EXP_F32_FTZ_LO, 0.0, e * pow2_f32(k))
}

/// The inputs for which [`exp_f32_mode`] gives a normal number: below
/// `EXP_F32_FTZ_LO` its `e 2^k` is below `2^-126` (flushed to 0), above
/// `EXP_F32_FTZ_HI` it is `2^128` or more (infinite). Found by a search of every `f32`
/// around `-126 ln 2` and `128 ln 2`, with and without fused multiply-adds (the same
/// bounds); the test `exp_f32_ftz_equals_exp_f32_flushed` checks them.
const EXP_F32_FTZ_LO: f32 = -87.33654; // 0xc2aeac4f
const EXP_F32_FTZ_HI: f32 = 88.72283; // 0x42b17217

/// Cody-Waite split of `ln 2` for `f64` (fdlibm's): `LN2_HI_F64` has 32 significant bits,
/// so `k * LN2_HI_F64` is exact for `|k| < 2^21`.
const LN2_HI_F64: f64 = 6.931_471_803_691_238e-1; // 0x3fe62e42fee00000
const LN2_LO_F64: f64 = 1.908_214_929_270_587_7e-10;

/// Minimax coefficients of `P` in `exp(r) = 1 + r + r^2 P(r)`, `|r| <= ln(2)/2`
/// (relative error of the approximation 2^-60).
const EXP_F64_P: [f64; 11] = [
    0.5,
    0.166_666_666_666_666_82,
    0.041_666_666_666_666_095,
    0.008_333_333_333_316_982,
    0.001_388_888_888_911_635_5,
    0.000_198_412_698_965_157_23,
    2.480_158_692_573_032e-5,
    2.755_723_472_727_898e-6,
    2.755_758_227_086_437e-7,
    2.511_208_467_886_515_4e-8,
    2.082_658_619_985e-9,
];

/// Exponential of an `f64`, branch-free and vectorisable.
///
/// Same scheme as [`exp_f32`] with a degree-12 polynomial; subnormal results are
/// correctly scaled (not flushed).
///
/// Maximum error observed: 0.81 ulp (see the module docs for how it was measured).
/// Special cases: `exp(NaN) = NaN`, `exp(+inf) = +inf`, `exp(-inf) = 0`, overflow to
/// `+inf` above `ln(f64::MAX) ~ 709.78`, underflow to `0` below `~ -745.13`.
#[inline(always)]
pub fn exp_f64_mode<M: MathMode>(x: f64) -> f64 {
    // As in exp_f32: results that round to 0 (x < -1075 ln 2 ~ -745.13) are selected.
    let zero = x < -746.0;
    let x = select(x > 710.0, 710.0, x);
    let x = select(zero, 0.0, x);

    let t = fma::<M, _>(x, core::f64::consts::LOG2_E, MAGIC_F64);
    let k = t - MAGIC_F64;
    // As in exp_f32, r = r1 + c with r1 exact and c kept apart in the linear term.
    let r1 = fma::<M, _>(-k, LN2_HI_F64, x);
    let c = -k * LN2_LO_F64;
    let r = r1 + c;

    let p = &EXP_F64_P;
    let mut q = p[10];
    for &a in p[..10].iter().rev() {
        q = fma::<M, _>(q, r, a);
    }
    let e = 1.0 + (r1 + fma::<M, _>(r * r, q, c));

    let k1 = (k * 0.5 + MAGIC_F64) - MAGIC_F64;
    let k2 = k - k1;
    select(zero, 0.0, e * pow2_f64(k1) * pow2_f64(k2))
}

// ---------------------------------------------------------------------------------------
// ln

/// Minimax coefficients of `P` in `ln(1 + f) = f - f^2/2 + f^3 P(f)`,
/// `f in [sqrt(1/2) - 1, sqrt(2) - 1]` (relative error of the approximation 2^-27).
const LN_F32_P: [f32; 8] = [
    0.333_333_3,
    -0.250_008_23,
    0.200_012_28,
    -0.166_233_34,
    0.142_017_19,
    -0.131_603_64,
    0.127_619_62,
    -0.076_344_885,
];

/// Natural logarithm of an `f32`, branch-free and vectorisable.
///
/// `x = 2^e m` with `m in [sqrt(1/2), sqrt(2))` (so that `ln` near 1 keeps full relative
/// accuracy), `ln(m) = ln(1 + f)` by a polynomial, plus `e ln 2` with a split constant.
/// Subnormal inputs are first scaled by `2^25`.
///
/// Maximum error: 0.92 ulp over all `f32` inputs (exhaustive).
/// Special cases: `ln(0) = -inf` (also for `-0`), `ln(x < 0) = NaN`, `ln(+inf) = +inf`,
/// `ln(NaN) = NaN`.
#[inline(always)]
pub fn ln_f32_mode<M: MathMode>(x: f32) -> f32 {
    let tiny = x < f32::MIN_POSITIVE;
    let xs = select(tiny, x * 33_554_432.0, x);
    // Offset the bits so that the exponent field of `u` is e + 127 for m in
    // [sqrt(1/2), sqrt(2)), then rebuild m from the remaining mantissa bits.
    const SQRT_HALF_BITS: u32 = 0x3f35_04f3;
    let u = xs.to_bits().wrapping_add(0x3f80_0000 - SQRT_HALF_BITS);
    // Exponent to float through the mantissa (2^23 + (e + 127)), no int conversion.
    let e = f32::from_bits(0x4b00_0000 | (u >> 23)) - (8_388_608.0 + 127.0);
    let e = e - select(tiny, 25.0, 0.0);
    let f = f32::from_bits((u & 0x007f_ffff) + SQRT_HALF_BITS) - 1.0;

    let p = &LN_F32_P;
    let mut q = p[7];
    for &c in p[..7].iter().rev() {
        q = fma::<M, _>(q, f, c);
    }
    let z = f * f;
    // Small terms first, then f, then the exact e * LN2_HI.
    let y = fma::<M, _>(z * f, q, fma::<M, _>(e, LN2_LO_F32, -0.5 * z));
    let r = fma::<M, _>(e, LN2_HI_F32, f + y);

    let r = select(x == f32::INFINITY, x, r);
    let r = select(x == 0.0, f32::NEG_INFINITY, r);
    // x < 0 or NaN.
    select(x >= 0.0, r, f32::NAN)
}

/// fdlibm-style minimax coefficients of `R` in `ln(1 + f) = 2s + s R(s^2)`,
/// `s = f / (2 + f)`, `|s| <= 3 - 2 sqrt(2)` (error of the approximation 2^-59).
const LN_F64_LG: [f64; 7] = [
    0.666_666_666_666_673_4,
    0.399_999_999_994_156_6,
    0.285_714_287_421_894,
    0.222_221_985_914_511_06,
    0.181_835_634_828_910_77,
    0.153_140_694_839_163_43,
    0.147_957_858_652_628_7,
];

/// Natural logarithm of an `f64`, branch-free and vectorisable.
///
/// Reduction as in [`ln_f32`]; then fdlibm's scheme `ln(1 + f) = f - f^2/2 + s (f^2/2 + R)`
/// with `s = f / (2 + f)` (one division, which vectorises) and a degree-7 polynomial `R`
/// in `s^2`. Subnormal inputs are first scaled by `2^54`.
///
/// Maximum error observed: 0.78 ulp (see the module docs for how it was measured).
/// Special cases: `ln(0) = -inf` (also for `-0`), `ln(x < 0) = NaN`, `ln(+inf) = +inf`,
/// `ln(NaN) = NaN`.
#[inline(always)]
pub fn ln_f64_mode<M: MathMode>(x: f64) -> f64 {
    let tiny = x < f64::MIN_POSITIVE;
    let xs = select(tiny, x * 18_014_398_509_481_984.0, x);
    const SQRT_HALF_BITS: u64 = 0x3fe6_a09e_667f_3bcd;
    let u = xs
        .to_bits()
        .wrapping_add(0x3ff0_0000_0000_0000 - SQRT_HALF_BITS);
    // u64 -> f64 conversions are not in AVX2: go through the mantissa instead.
    let e = f64::from_bits(0x4330_0000_0000_0000 | (u >> 52)) - (4_503_599_627_370_496.0 + 1023.0);
    let e = e - select(tiny, 54.0, 0.0);
    let f = f64::from_bits((u & 0x000f_ffff_ffff_ffff) + SQRT_HALF_BITS) - 1.0;

    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let lg = &LN_F64_LG;
    // Even/odd split of the polynomial in z: shorter dependency chains.
    let t1 = w * fma::<M, _>(w, fma::<M, _>(w, lg[5], lg[3]), lg[1]);
    let t2 = z * fma::<M, _>(
        w,
        fma::<M, _>(w, fma::<M, _>(w, lg[6], lg[4]), lg[2]),
        lg[0],
    );
    let rr = t1 + t2;
    let hfsq = 0.5 * f * f;
    let r = fma::<M, _>(
        e,
        LN2_HI_F64,
        -((hfsq - fma::<M, _>(s, hfsq + rr, e * LN2_LO_F64)) - f),
    );

    let r = select(x == f64::INFINITY, x, r);
    let r = select(x == 0.0, f64::NEG_INFINITY, r);
    select(x >= 0.0, r, f64::NAN)
}

// ---------------------------------------------------------------------------------------
// sin, cos

/// `pi/2` as a sum of pieces; the first four have at most 23 significant bits, so that
/// `q * PIO2_k` is exact for `|q| < 2^30`. Their sum is `pi/2` to about 2^-150.
const PIO2_1: f64 = 1.570_796_251_296_997; // 0x1.921fb4p+0
const PIO2_2: f64 = 7.549_789_415_861_596e-8; // 0x1.4442d0p-24
const PIO2_3: f64 = 5.390_302_529_957_765e-15; // 0x1.846988p-48
const PIO2_4: f64 = 3.282_003_668_243_402_6e-22; // 0x1.8cc518p-72
const PIO2_5: f64 = -1.253_699_020_693_249_9e-29; // -0x1.fc8f8cbb5bf6cp-97
/// `pi/2 - PIO2_1 - PIO2_2` to 53 bits (for the `f32` reduction, which needs no more).
const PIO2_3_LONG: f64 = 5.390_302_858_158_119e-15; // 0x1.8469898cc5170p-48
const FRAC_2_PI: f64 = core::f64::consts::FRAC_2_PI;
/// The largest `|x|` at which the vectorised sine and cosine are accurate (`2^30`, inside
/// the `|q| < 2^30` where the reduction is exact). The engines compute the rare operands
/// beyond with libm's (see `Kernel1::run_far`), whose reduction is exact at any size.
pub const FAST_TRIG_MAX: f64 = 1_073_741_824.0; // 2^30
/// Beyond this the reduction is meaningless (and `q * PIO2_1` could overflow), and the
/// argument is replaced by `0 * x` (`0` for finite `x`, NaN for infinities).
const TRIG_GUARD: f64 = 281_474_976_710_656.0; // 2^48

/// Minimax coefficients of `S` in `sin(r) = r + r^3 S(r^2)`, `|r| <= pi/4`
/// (relative error of the approximation 2^-37), evaluated in `f64` for `f32` results.
const SIN_F32_S: [f64; 4] = [
    -0.166_666_666_406_928_18,
    0.008_333_329_292_699_808,
    -0.000_198_393_083_457_316_76,
    2.718_084_061_615_868e-6,
];
/// Minimax coefficients of `C` in `cos(r) = 1 - r^2/2 + r^4 C(r^2)`, `|r| <= pi/4`
/// (relative error of the approximation 2^-33), evaluated in `f64` for `f32` results.
const COS_F32_C: [f64; 3] = [
    0.041_666_645_618_810_16,
    -0.001_388_731_306_319_204_2,
    2.443_278_514_356_494_2e-5,
];

/// Shared body of [`sin_f32`] (`offset = 0`) and [`cos_f32`] (`offset = 1`, since
/// `cos(x) = sin(x + pi/2)`: one more quadrant).
///
/// Everything is computed in `f64` and rounded to `f32` once: `x` is exact there, three
/// pieces of `pi/2` give `r` with an absolute error ~2^-68 (far below the smallest `|r|`
/// of any `f32` input), and short polynomials then give results within ~0.5 ulp, for
/// about the cost of an `f32` evaluation that would round `r` (up to 1.5 ulp).
#[inline(always)]
fn sin_cos_f32<M: MathMode>(x: f32, offset: u32) -> f32 {
    let x = x as f64;
    let x = select(x.abs() <= TRIG_GUARD, x, x * 0.0);
    let t = fma::<M, _>(x, FRAC_2_PI, MAGIC_F64);
    let q = t - MAGIC_F64;
    // Low bits of t hold q in two's complement: the quadrant.
    let n = (t.to_bits() as u32).wrapping_add(offset);
    // The first two steps are exact (Sterbenz, then both terms on a common grid).
    let r = ((x - q * PIO2_1) - q * PIO2_2) - q * PIO2_3_LONG;

    let z = r * r;
    let s = &SIN_F32_S;
    let sin = fma::<M, _>(
        r * z,
        fma::<M, _>(fma::<M, _>(fma::<M, _>(s[3], z, s[2]), z, s[1]), z, s[0]),
        r,
    );
    let c = &COS_F32_C;
    let cos = fma::<M, _>(
        z,
        fma::<M, _>(z, fma::<M, _>(fma::<M, _>(c[2], z, c[1]), z, c[0]), -0.5),
        1.0,
    );

    // Quadrant n: sin, cos, -sin, -cos.
    let v = select(n & 1 != 0, cos, sin) as f32;
    f32::from_bits(v.to_bits() ^ ((n & 2) << 30))
}

/// Sine of an `f32`, branch-free and vectorisable.
///
/// `x = q pi/2 + r`, `|r| <= pi/4`, reduced in `f64` (Cody-Waite with three pieces of
/// `pi/2`, exact for `|q| < 2^30`); `sin r` or `cos r` by short polynomials evaluated in
/// `f64`, chosen and signed by the quadrant `q mod 4`, and rounded to `f32` once.
///
/// Maximum error: 0.502 ulp for `|x| <= 1.6e9` (exhaustive), i.e. almost always
/// correctly rounded. Beyond `2^30 pi/2 ~ 1.68e9` the reduction is no longer exact and
/// the absolute error grows like `|x| 1e-16` (1e-6 at `|x| = 1e10`, 1e-2 at `1e14`);
/// for `|x| > 2^48` the result is `sin(0) = 0`. Never NaN for finite `x`.
/// `sin(-0) = -0`; `sin(+-inf) = sin(NaN) = NaN`. The engines use it up to
/// [`FAST_TRIG_MAX`] only.
#[inline(always)]
pub fn sin_f32_mode<M: MathMode>(x: f32) -> f32 {
    // The polynomial gives +0 for r = -0: keep the sign of zero.
    select(x == 0.0, x, sin_cos_f32::<M>(x, 0))
}

/// Cosine of an `f32`, branch-free and vectorisable.
///
/// Same reduction and polynomials as [`sin_f32`], one quadrant further.
///
/// Maximum error: 0.502 ulp for `|x| <= 1.6e9` (exhaustive). Beyond `~1.68e9` the
/// absolute error grows like `|x| 1e-16`; for `|x| > 2^48` the result is `cos(0) = 1`.
/// Never NaN for finite `x`; `cos(+-inf) = cos(NaN) = NaN`. The engines use it up to
/// [`FAST_TRIG_MAX`] only.
#[inline(always)]
pub fn cos_f32_mode<M: MathMode>(x: f32) -> f32 {
    sin_cos_f32::<M>(x, 1)
}

/// Minimax coefficients of `S` in `sin(r) = r + r^3 S(r^2)`, `|r| <= pi/4`
/// (relative error of the approximation 2^-56.5).
const SIN_F64_S: [f64; 6] = [
    -0.166_666_666_666_666_3,
    0.008_333_333_333_322_063,
    -0.000_198_412_698_295_425_98,
    2.755_731_360_452_347_8e-6,
    -2.505_074_503_744_524_7e-8,
    1.589_606_749_274_887_2e-10,
];
/// Minimax coefficients of `C` in `cos(r) = 1 - r^2/2 + r^4 C(r^2)`, `|r| <= pi/4`
/// (relative error of the approximation 2^-59).
const COS_F64_C: [f64; 6] = [
    0.041_666_666_666_666_595,
    -0.001_388_888_888_887_297_5,
    2.480_158_728_880_003_5e-5,
    -2.755_731_416_397_851_4e-7,
    2.087_569_870_875_816_5e-9,
    -1.135_842_352_702_008_7e-11,
];

/// Shared body of [`sin_f64`] (`offset = 0`) and [`cos_f64`] (`offset = 1`).
#[inline(always)]
fn sin_cos_f64<M: MathMode>(x: f64, offset: u64) -> f64 {
    let x = select(x.abs() <= TRIG_GUARD, x, x * 0.0);
    let t = fma::<M, _>(x, FRAC_2_PI, MAGIC_F64);
    let q = t - MAGIC_F64;
    let n = t.to_bits().wrapping_add(offset);

    // r = x - q pi/2 as a double-double (rh, rl). For |q| < 2^30 every product q * PIO2_k
    // (k <= 4) is exact, the first two subtractions are exact, the next two are made
    // error-free by TwoSum, and only q * PIO2_5 (~2^-67) is rounded: the absolute error
    // is ~2^-115, enough even for arguments within 2^-61 of a multiple of pi/2.
    let t2 = (x - q * PIO2_1) - q * PIO2_2;
    let (h, l) = two_sum(t2, -(q * PIO2_3));
    let (h, l2) = two_sum(h, -(q * PIO2_4));
    let lo = (l + l2) - q * PIO2_5;
    let (rh, rl) = two_sum(h, lo);

    let z = rh * rh;
    let s = &SIN_F64_S;
    let ps = fma::<M, _>(
        fma::<M, _>(
            fma::<M, _>(fma::<M, _>(fma::<M, _>(s[5], z, s[4]), z, s[3]), z, s[2]),
            z,
            s[1],
        ),
        z,
        s[0],
    );
    // sin(rh + rl) ~ sin(rh) + rl.
    let sin = rh + fma::<M, _>(rh * z, ps, rl);

    let c = &COS_F64_C;
    let pc = fma::<M, _>(
        fma::<M, _>(
            fma::<M, _>(fma::<M, _>(fma::<M, _>(c[5], z, c[4]), z, c[3]), z, c[2]),
            z,
            c[1],
        ),
        z,
        c[0],
    );
    // cos(rh + rl) ~ 1 - z/2 + z^2 C - rh rl; the rounding error of 1 - z/2 is recovered
    // exactly (fdlibm's trick) as it would otherwise cost up to half an ulp.
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    let cos = w + (((1.0 - w) - hz) + fma::<M, _>(z * z, pc, -(rh * rl)));

    let v = select(n & 1 != 0, cos, sin);
    f64::from_bits(v.to_bits() ^ ((n & 2) << 62))
}

/// Sine of an `f64`, branch-free and vectorisable.
///
/// `x = q pi/2 + r`, `|r| <= pi/4`, with a Cody-Waite reduction carried in double-double
/// (five pieces of `pi/2`, exact products for `|q| < 2^30`); `sin r` or `cos r` by
/// degree-13/14 polynomials, chosen and signed by the quadrant `q mod 4`.
///
/// Maximum error observed: 0.77 ulp for `|x| <= 2^30 pi/2 ~ 1.68e9`, including the
/// arguments closest to multiples of `pi/2` (see the module docs). Beyond, the reduction
/// is no longer exact and the absolute error grows like `|x| 1e-16` (1e-6 at
/// `|x| = 1e10`); for `|x| > 2^48` the result is `sin(0) = 0`. Never NaN for finite `x`.
/// `sin(-0) = -0`; `sin(+-inf) = sin(NaN) = NaN`. The engines use it up to
/// [`FAST_TRIG_MAX`] only.
#[inline(always)]
pub fn sin_f64_mode<M: MathMode>(x: f64) -> f64 {
    select(x == 0.0, x, sin_cos_f64::<M>(x, 0))
}

/// Cosine of an `f64`, branch-free and vectorisable.
///
/// Same reduction and polynomials as [`sin_f64`], one quadrant further.
///
/// Maximum error observed: 0.87 ulp for `|x| <= 2^30 pi/2 ~ 1.68e9`, including the
/// arguments closest to multiples of `pi/2`. Beyond, the absolute error grows like
/// `|x| 1e-16`; for `|x| > 2^48` the result is `cos(0) = 1`. Never NaN for finite `x`;
/// `cos(+-inf) = cos(NaN) = NaN`. The engines use it up to [`FAST_TRIG_MAX`] only.
#[inline(always)]
pub fn cos_f64_mode<M: MathMode>(x: f64) -> f64 {
    sin_cos_f64::<M>(x, 1)
}

/// [`exp_f32_mode`] for the build's own target (FMA if the whole build has it).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_f32_mode::<BuildMode>(x)
}

/// [`exp_f64_mode`] for the build's own target (FMA if the whole build has it).
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    exp_f64_mode::<BuildMode>(x)
}

/// [`ln_f32_mode`] for the build's own target (FMA if the whole build has it).
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    ln_f32_mode::<BuildMode>(x)
}

/// [`ln_f64_mode`] for the build's own target (FMA if the whole build has it).
#[inline(always)]
pub fn ln_f64(x: f64) -> f64 {
    ln_f64_mode::<BuildMode>(x)
}

/// [`sin_f32_mode`] for the build's own target (FMA if the whole build has it).
#[inline(always)]
pub fn sin_f32(x: f32) -> f32 {
    sin_f32_mode::<BuildMode>(x)
}

/// [`sin_f64_mode`] for the build's own target (FMA if the whole build has it).
#[inline(always)]
pub fn sin_f64(x: f64) -> f64 {
    sin_f64_mode::<BuildMode>(x)
}

/// [`cos_f32_mode`] for the build's own target (FMA if the whole build has it).
#[inline(always)]
pub fn cos_f32(x: f32) -> f32 {
    cos_f32_mode::<BuildMode>(x)
}

/// [`cos_f64_mode`] for the build's own target (FMA if the whole build has it).
#[inline(always)]
pub fn cos_f64(x: f64) -> f64 {
    cos_f64_mode::<BuildMode>(x)
}

#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    /// Error of an `f32` result in ulps of the exact value `exact` (given in `f64`, which
    /// is accurate far beyond `f32` precision). Infinite for a wrong special value.
    fn ulps_f32(y: f32, exact: f64) -> f64 {
        if exact.is_nan() || y.is_nan() {
            return if exact.is_nan() && y.is_nan() {
                0.0
            } else {
                f64::INFINITY
            };
        }
        let rounded = exact as f32;
        if rounded.is_infinite() || y.is_infinite() {
            return if y == rounded { 0.0 } else { f64::INFINITY };
        }
        // ulp of the binade of `exact` (subnormal spacing below the normal range).
        let e = ((exact.abs().to_bits() >> 52) as i32 - 1023).max(-126);
        let ulp = f64::from_bits(((e - 23 + 1023) as u64) << 52);
        (y as f64 - exact).abs() / ulp
    }

    /// Distance in ulps (number of representable values in between, plus one) of two
    /// `f64`s; 0 for two NaNs, infinite for NaN versus a number.
    fn ulps_f64(a: f64, b: f64) -> f64 {
        if a.is_nan() || b.is_nan() {
            return if a.is_nan() && b.is_nan() {
                0.0
            } else {
                f64::INFINITY
            };
        }
        let ord = |v: f64| {
            let i = v.to_bits() as i64;
            if i < 0 {
                i64::MIN - i
            } else {
                i
            }
        };
        (ord(a) as i128 - ord(b) as i128).unsigned_abs() as f64
    }

    /// xorshift64*: a small deterministic generator for random bit patterns.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn uniform(&mut self, a: f64, b: f64) -> f64 {
            a + (b - a) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
        }
    }

    /// Inputs for an `f32` function: a stride through all bit patterns (every sign,
    /// binade, subnormals, infinities, NaNs), a dense uniform sweep of `[a, b]`, every
    /// `f32` around the points of `extra`, and the usual special values.
    fn inputs_f32(a: f32, b: f32, extra: &[f32]) -> Vec<f32> {
        let mut v: Vec<f32> = (0..=u32::MAX).step_by(1021).map(f32::from_bits).collect();
        let n = 1 << 20;
        v.extend((0..=n).map(|i| a + (b - a) * (i as f32 / n as f32)));
        for &c in extra {
            let b = c.to_bits();
            v.extend((b.saturating_sub(5000)..b.saturating_add(5000)).map(f32::from_bits));
        }
        v.extend([
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        v
    }

    /// Inputs for an `f64` function: random bit patterns, a dense uniform sweep of
    /// `[a, b]`, random values in `[a, b]`, every `f64` around the points of `extra`, and
    /// the usual special values.
    fn inputs_f64(a: f64, b: f64, extra: &[f64]) -> Vec<f64> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut v: Vec<f64> = (0..1 << 20).map(|_| f64::from_bits(rng.next())).collect();
        let n = 1 << 20;
        v.extend((0..=n).map(|i| a + (b - a) * (i as f64 / n as f64)));
        v.extend((0..1 << 20).map(|_| rng.uniform(a, b)));
        for &c in extra {
            let b = c.to_bits();
            v.extend((b.saturating_sub(2000)..b.saturating_add(2000)).map(f64::from_bits));
        }
        v.extend([
            0.0,
            -0.0,
            1.0,
            -1.0,
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ]);
        v
    }

    /// Largest ulp error of `f` against `exact` over `xs`, with the worst input.
    fn max_err_f32(f: fn(f32) -> f32, exact: fn(f64) -> f64, xs: &[f32]) -> (f64, f32) {
        let mut worst = (0.0, 0.0);
        for &x in xs {
            let e = ulps_f32(f(x), exact(x as f64));
            if e > worst.0 {
                worst = (e, x);
            }
        }
        worst
    }

    fn max_err_f64(f: fn(f64) -> f64, exact: fn(f64) -> f64, xs: &[f64]) -> (f64, f64) {
        let mut worst = (0.0, 0.0);
        for &x in xs {
            let e = ulps_f64(f(x), exact(x));
            if e > worst.0 {
                worst = (e, x);
            }
        }
        worst
    }

    fn check_f32(name: &str, f: fn(f32) -> f32, exact: fn(f64) -> f64, xs: &[f32], bound: f64) {
        let (e, x) = max_err_f32(f, exact, xs);
        eprintln!(
            "{name}: max error {e:.3} ulp at x = {x:e} ({} inputs)",
            xs.len()
        );
        assert!(
            e <= bound,
            "{name}({x:e}) = {:e}, expected {:e}: {e} ulp",
            f(x),
            exact(x as f64)
        );
    }

    /// Bound on the distance between an `f64` function and libm's: ours is within 0.9
    /// ulp of the exact result (checked against `mpmath`), libm's within about 1 ulp
    /// (glibc's are within 0.51, except rare sin/cos arguments near multiples of pi/2).
    const LIBM_F64_BOUND: f64 = 2.0;

    fn check_f64(name: &str, f: fn(f64) -> f64, exact: fn(f64) -> f64, xs: &[f64], bound: f64) {
        let (e, x) = max_err_f64(f, exact, xs);
        eprintln!(
            "{name}: max distance to libm {e} ulp at x = {x:e} ({} inputs)",
            xs.len()
        );
        assert!(
            e <= bound,
            "{name}({x:e}) = {:e}, libm {:e}: {e} ulp",
            f(x),
            exact(x)
        );
    }

    /// Points `k pi/2` (the hard cases of the range reduction), rounded to `f64`.
    fn multiples_of_pi_2(rng: &mut Rng, max: f64, count: usize) -> Vec<f64> {
        let mut v: Vec<f64> = (1..64)
            .map(|k| k as f64 * core::f64::consts::FRAC_PI_2)
            .collect();
        v.extend((0..count).map(|_| {
            (rng.uniform(0.0, max / core::f64::consts::FRAC_PI_2)).round()
                * core::f64::consts::FRAC_PI_2
        }));
        v
    }

    /// Every `f32` from `a` to `b` (of one sign): bit patterns are ordered like the
    /// values on each side of zero.
    fn every(a: f32, b: f32) -> impl Iterator<Item = f32> {
        let (a, b) = (a.to_bits(), b.to_bits());
        (a.min(b)..=a.max(b)).map(f32::from_bits)
    }

    #[test]
    fn exp_f32_accuracy() {
        let xs = inputs_f32(
            -104.0,
            89.0,
            &[88.72284, -87.33655, -103.97208, 0.0, -0.346_573_6],
        );
        check_f32("exp_f32", exp_f32, f64::exp, &xs, 0.95);
    }

    /// Where subnormal results are flushed, `exp_f32_ftz_mode` returns `exp_f32_mode`'s
    /// bits, with and without FMA: every `f32` from where results underflow to where
    /// they leave the normal range at both ends (what the two compute differently), a
    /// sample of all the others and the special values.
    #[test]
    fn exp_f32_ftz_equals_exp_f32_flushed() {
        let mut xs = inputs_f32(-110.0, 95.0, &[-103.972_08, 0.0]);
        xs.extend(every(-104.5, -86.0).chain(every(87.0, 89.5)));
        same_exp_bits_flushed(
            &xs,
            [exp_f32_ftz_mode::<NoFma>, exp_f32_ftz_mode::<WithFma>],
            [exp_f32_mode::<NoFma>, exp_f32_mode::<WithFma>],
        );
    }

    /// Where subnormal results are flushed (skipped where the architecture cannot), each
    /// of `fast` (without FMA, then with) returns the bits of `reference` in the same
    /// mode on every `x` of `xs`, or NaN where both do, which is where `x` is NaN.
    fn same_exp_bits_flushed(
        xs: &[f32],
        fast: [fn(f32) -> f32; 2],
        reference: [fn(f32) -> f32; 2],
    ) {
        let _mode = crate::cpu::fpmode::FlushSubnormals::enter(true);
        if !crate::cpu::fpmode::flushing() {
            eprintln!("skipped: this architecture has no flush-to-zero mode");
            return;
        }
        for (fma, (fast, reference)) in fast.into_iter().zip(reference).enumerate() {
            for &x in xs {
                let (f, r) = (fast(x), reference(x));
                assert!(
                    f.to_bits() == r.to_bits() || f.is_nan() && r.is_nan(),
                    "exp({x:e}) (FMA: {}): {f:e} against {r:e}",
                    fma == 1
                );
                assert_eq!(f.is_nan(), x.is_nan(), "exp({x:e})");
            }
        }
    }

    /// For `x <= 0` and NaN, `exp_f32_nonpos_ftz_mode` returns `exp_f32_ftz_mode`'s
    /// bits, with and without FMA: every `f32` around the underflow bound and where `k`
    /// first rounds to -1, a sample of the others, the infinities, and NaNs whose
    /// payloads would make a number of an integer addition to the exponent.
    #[test]
    fn exp_f32_nonpos_equals_exp_f32_ftz() {
        let mut xs: Vec<f32> = inputs_f32(-110.0, 0.0, &[-103.972_08, 0.0, -0.0]);
        xs.extend(every(-88.0, -86.5).chain(every(-0.35, -0.34)));
        xs.extend([f32::NEG_INFINITY, f32::MIN, f32::NAN, -f32::NAN]);
        xs.extend([0x7fc0_01ff, 0xffc1_2345, 0x7f80_0001].map(f32::from_bits));
        xs.retain(|&x| x <= 0.0 || x.is_nan());
        // A LogSumExp's f == max takes exp(0) of every variant: exactly 1.
        for z in [0.0, -0.0] {
            assert_eq!(exp_f32_nonpos_ftz_mode::<WithFma>(z), 1.0);
            assert_eq!(exp_f32_nonpos_ftz_mode::<NoFma>(z), 1.0);
            assert_eq!(exp_f32_mode::<WithFma>(z), 1.0);
            assert_eq!(exp_f32_mode::<NoFma>(z), 1.0);
            assert_eq!(exp_f64_mode::<WithFma>(z as f64), 1.0);
            assert_eq!(exp_f64_mode::<NoFma>(z as f64), 1.0);
        }
        same_exp_bits_flushed(
            &xs,
            [
                exp_f32_nonpos_ftz_mode::<NoFma>,
                exp_f32_nonpos_ftz_mode::<WithFma>,
            ],
            [exp_f32_ftz_mode::<NoFma>, exp_f32_ftz_mode::<WithFma>],
        );
    }

    #[test]
    fn exp_underflows_to_exact_zero_and_keeps_nan() {
        for x in [-104.0f32, -104.5, -200.0, -1e30, f32::NEG_INFINITY] {
            assert_eq!(exp_f32(x).to_bits(), 0, "exp_f32({x})");
        }
        for x in [-746.0f64, -800.0, -1e300, f64::NEG_INFINITY] {
            assert_eq!(exp_f64(x).to_bits(), 0, "exp_f64({x})");
        }
        assert!(exp_f32(f32::NAN).is_nan() && exp_f64(f64::NAN).is_nan());
        // The smallest results above the cut are still subnormal, not flushed.
        assert!(exp_f32(-103.9) > 0.0 && exp_f64(-745.0) > 0.0);
    }

    #[test]
    fn exp_f64_accuracy() {
        let xs = inputs_f64(
            -746.0,
            710.0,
            &[709.782712893384, -708.3964185322641, -745.1332191019412],
        );
        check_f64("exp_f64", exp_f64, f64::exp, &xs, LIBM_F64_BOUND);
        let xs = inputs_f64(-1.0, 1.0, &[0.0, 0.34657359027997264]);
        check_f64("exp_f64 (|x| <= 1)", exp_f64, f64::exp, &xs, LIBM_F64_BOUND);
    }

    #[test]
    fn ln_f32_accuracy() {
        let xs = inputs_f32(0.0, 4.0, &[1.0, 0.70710677, f32::MIN_POSITIVE, f32::MAX]);
        check_f32("ln_f32", ln_f32, f64::ln, &xs, 0.95);
    }

    #[test]
    fn ln_f64_accuracy() {
        let xs = inputs_f64(
            0.0,
            4.0,
            &[
                1.0,
                core::f64::consts::FRAC_1_SQRT_2,
                f64::MIN_POSITIVE,
                f64::MAX,
            ],
        );
        check_f64("ln_f64", ln_f64, f64::ln, &xs, LIBM_F64_BOUND);
        let xs = inputs_f64(0.5, 2.0, &[]);
        check_f64("ln_f64 ([0.5, 2])", ln_f64, f64::ln, &xs, LIBM_F64_BOUND);
    }

    #[test]
    fn sin_cos_f32_accuracy() {
        let mut rng = Rng(1);
        let extra: Vec<f32> = multiples_of_pi_2(&mut rng, 1e5, 200)
            .iter()
            .map(|&x| x as f32)
            .collect();
        for (a, b) in [(-10.0, 10.0), (-1.0e5, 1.0e5), (1.0e5, 1.6e9)] {
            let xs = inputs_f32(a, b, &extra);
            // Stay within the accurate range for the random bit patterns.
            let xs: Vec<f32> = xs
                .into_iter()
                .filter(|x| x.abs() <= 1.6e9 || x.is_nan())
                .collect();
            check_f32("sin_f32", sin_f32, f64::sin, &xs, 0.51);
            check_f32("cos_f32", cos_f32, f64::cos, &xs, 0.51);
        }
    }

    #[test]
    fn sin_cos_f64_accuracy() {
        let mut rng = Rng(2);
        for (a, b, kmax) in [
            (-10.0, 10.0, 1e3),
            (-1.0e5, 1.0e5, 1e5),
            (1.0e5, 1.6e9, 1.6e9),
        ] {
            let extra = multiples_of_pi_2(&mut rng, kmax, 100);
            let xs = inputs_f64(a, b, &extra);
            let xs: Vec<f64> = xs
                .into_iter()
                .filter(|x| x.abs() <= 1.6e9 || x.is_nan())
                .collect();
            check_f64("sin_f64", sin_f64, f64::sin, &xs, LIBM_F64_BOUND);
            check_f64("cos_f64", cos_f64, f64::cos, &xs, LIBM_F64_BOUND);
        }
    }

    #[test]
    fn special_values() {
        let (inf, nan) = (f32::INFINITY, f32::NAN);
        assert!(exp_f32(nan).is_nan());
        assert_eq!(exp_f32(inf), inf);
        assert_eq!(exp_f32(-inf), 0.0);
        assert_eq!(exp_f32(88.8), inf);
        assert_eq!(exp_f32(-104.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-103.0), f32::from_bits(1)); // subnormal, not flushed
        assert!(ln_f32(nan).is_nan());
        assert!(ln_f32(-1.0).is_nan());
        assert!(ln_f32(-inf).is_nan());
        assert!(ln_f32(-f32::from_bits(1)).is_nan());
        assert_eq!(ln_f32(0.0), -inf);
        assert_eq!(ln_f32(-0.0), -inf);
        assert_eq!(ln_f32(inf), inf);
        assert_eq!(ln_f32(1.0), 0.0);
        for f in [sin_f32, cos_f32] {
            assert!(f(nan).is_nan());
            assert!(f(inf).is_nan());
            assert!(f(-inf).is_nan());
            for x in [1e10f32, 3e20, f32::MAX, -f32::MAX] {
                assert!(f(x).abs() <= 1.0, "{x}");
            }
        }
        assert_eq!(sin_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(cos_f32(0.0), 1.0);

        let (inf, nan) = (f64::INFINITY, f64::NAN);
        assert!(exp_f64(nan).is_nan());
        assert_eq!(exp_f64(inf), inf);
        assert_eq!(exp_f64(-inf), 0.0);
        assert_eq!(exp_f64(709.8), inf);
        assert_eq!(exp_f64(-745.2), 0.0);
        assert_eq!(exp_f64(0.0), 1.0);
        assert_eq!(exp_f64(-745.0), f64::from_bits(1));
        assert!(ln_f64(nan).is_nan());
        assert!(ln_f64(-1.0).is_nan());
        assert!(ln_f64(-inf).is_nan());
        assert!(ln_f64(-f64::from_bits(1)).is_nan());
        assert_eq!(ln_f64(0.0), -inf);
        assert_eq!(ln_f64(-0.0), -inf);
        assert_eq!(ln_f64(inf), inf);
        assert_eq!(ln_f64(1.0), 0.0);
        for f in [sin_f64, cos_f64] {
            assert!(f(nan).is_nan());
            assert!(f(inf).is_nan());
            assert!(f(-inf).is_nan());
            for x in [1e10, 3e20, 1e300, f64::MAX, -f64::MAX] {
                assert!(f(x).abs() <= 1.0, "{x}");
            }
        }
        assert_eq!(sin_f64(-0.0).to_bits(), (-0.0f64).to_bits());
        assert_eq!(cos_f64(0.0), 1.0);
    }

    /// Every `f32` input (2^32 of them, both cores): `cargo test --release -p keops --lib
    /// math::tests::exhaustive -- --ignored --nocapture`. About a minute per function.
    #[test]
    #[ignore]
    fn exhaustive_f32() {
        let funcs: [(&str, fn(f32) -> f32, fn(f64) -> f64, f32); 4] = [
            ("exp_f32", exp_f32, f64::exp, f32::INFINITY),
            ("ln_f32", ln_f32, f64::ln, f32::INFINITY),
            ("sin_f32", sin_f32, f64::sin, 1.6e9),
            ("cos_f32", cos_f32, f64::cos, 1.6e9),
        ];
        for (name, f, exact, limit) in funcs {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
            let chunk = (1u64 << 32) / threads;
            let worst = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        s.spawn(move || {
                            let mut worst = (0.0f64, 0.0f32);
                            for b in t * chunk..(t + 1) * chunk {
                                let x = f32::from_bits(b as u32);
                                if x.abs() > limit {
                                    continue;
                                }
                                let e = ulps_f32(f(x), exact(x as f64));
                                if e > worst.0 {
                                    worst = (e, x);
                                }
                            }
                            worst
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
            });
            eprintln!(
                "{name}: max error {:.4} ulp at x = {:e} (bits {:#x})",
                worst.0,
                worst.1,
                worst.1.to_bits()
            );
        }
    }

    /// Evaluations per second of `run` (a kernel `out[i] = f(inp[i])`) on inputs
    /// `init(i)`: best of 5 runs of 10^7 evaluations over L1-resident slices.
    #[cfg(target_arch = "x86_64")]
    fn rate<T: Copy + Default>(init: impl Fn(usize) -> T, run: impl Fn(&[T], &mut [T])) -> f64 {
        const LEN: usize = 4000;
        const REPS: usize = 2500;
        let inp: Vec<T> = (0..LEN).map(init).collect();
        let mut out = vec![T::default(); LEN];
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            for _ in 0..REPS {
                run(std::hint::black_box(&inp), &mut out);
            }
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(&out);
        }
        (LEN * REPS) as f64 / best
    }

    #[cfg(target_arch = "x86_64")]
    macro_rules! kernels {
        ($feat:literal, $($name:ident: $t:ty => $f:expr;)*) => {
            $(
                #[target_feature(enable = $feat)]
                pub(super) unsafe fn $name(inp: &[$t], out: &mut [$t]) {
                    for (o, &i) in out.iter_mut().zip(inp) {
                        *o = $f(i);
                    }
                }
            )*
        };
    }

    #[cfg(target_arch = "x86_64")]
    mod kernels {
        use super::super::*;
        kernels!("avx2,fma",
            exp32_avx2: f32 => exp_f32; exp32_avx2_libm: f32 => f32::exp;
            ln32_avx2: f32 => ln_f32; ln32_avx2_libm: f32 => f32::ln;
            sin32_avx2: f32 => sin_f32; sin32_avx2_libm: f32 => f32::sin;
            cos32_avx2: f32 => cos_f32; cos32_avx2_libm: f32 => f32::cos;
            exp64_avx2: f64 => exp_f64; exp64_avx2_libm: f64 => f64::exp;
            ln64_avx2: f64 => ln_f64; ln64_avx2_libm: f64 => f64::ln;
            sin64_avx2: f64 => sin_f64; sin64_avx2_libm: f64 => f64::sin;
            cos64_avx2: f64 => cos_f64; cos64_avx2_libm: f64 => f64::cos;
        );
        kernels!("avx512f,avx2,fma",
            exp32_avx512: f32 => exp_f32; ln32_avx512: f32 => ln_f32;
            sin32_avx512: f32 => sin_f32; cos32_avx512: f32 => cos_f32;
            exp64_avx512: f64 => exp_f64; ln64_avx512: f64 => ln_f64;
            sin64_avx512: f64 => sin_f64; cos64_avx512: f64 => cos_f64;
        );
    }

    /// Throughput check, not a test: `cargo test --release -p keops --lib
    /// math::tests::throughput -- --ignored --nocapture`. Prints evaluations per second
    /// (one core) of each function in a loop over a slice compiled for AVX2 and for
    /// AVX-512, against the libm function in the same loop.
    #[test]
    #[ignore]
    #[cfg(target_arch = "x86_64")]
    fn throughput() {
        use kernels::*;
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("no AVX2/FMA");
            return;
        }
        let avx512 = is_x86_feature_detected!("avx512f");
        let x32 = |lo: f32, hi: f32| {
            move |i: usize| lo + (hi - lo) * ((i * 7919 % 10007) as f32 / 10007.0)
        };
        let x64 = |lo: f64, hi: f64| {
            move |i: usize| lo + (hi - lo) * ((i * 7919 % 10007) as f64 / 10007.0)
        };
        type K32 = unsafe fn(&[f32], &mut [f32]);
        type K64 = unsafe fn(&[f64], &mut [f64]);
        let rows32: [(&str, K32, K32, K32, (f32, f32)); 4] = [
            (
                "exp_f32",
                exp32_avx2,
                exp32_avx512,
                exp32_avx2_libm,
                (-80.0, 80.0),
            ),
            (
                "ln_f32",
                ln32_avx2,
                ln32_avx512,
                ln32_avx2_libm,
                (1e-5, 1e5),
            ),
            (
                "sin_f32",
                sin32_avx2,
                sin32_avx512,
                sin32_avx2_libm,
                (-100.0, 100.0),
            ),
            (
                "cos_f32",
                cos32_avx2,
                cos32_avx512,
                cos32_avx2_libm,
                (-100.0, 100.0),
            ),
        ];
        for (name, k2, k512, libm, (lo, hi)) in rows32 {
            let g = 1e-9;
            let a = rate(x32(lo, hi), |i, o| unsafe { k2(i, o) }) * g;
            let b = if avx512 {
                rate(x32(lo, hi), |i, o| unsafe { k512(i, o) }) * g
            } else {
                f64::NAN
            };
            let c = rate(x32(lo, hi), |i, o| unsafe { libm(i, o) }) * g;
            eprintln!(
                "{name}: AVX2 {a:.2} G/s, AVX-512 {b:.2} G/s, libm {c:.3} G/s ({:.1}x)",
                a.max(b) / c
            );
        }
        let rows64: [(&str, K64, K64, K64, (f64, f64)); 4] = [
            (
                "exp_f64",
                exp64_avx2,
                exp64_avx512,
                exp64_avx2_libm,
                (-700.0, 700.0),
            ),
            (
                "ln_f64",
                ln64_avx2,
                ln64_avx512,
                ln64_avx2_libm,
                (1e-5, 1e5),
            ),
            (
                "sin_f64",
                sin64_avx2,
                sin64_avx512,
                sin64_avx2_libm,
                (-100.0, 100.0),
            ),
            (
                "cos_f64",
                cos64_avx2,
                cos64_avx512,
                cos64_avx2_libm,
                (-100.0, 100.0),
            ),
        ];
        for (name, k2, k512, libm, (lo, hi)) in rows64 {
            let g = 1e-9;
            let a = rate(x64(lo, hi), |i, o| unsafe { k2(i, o) }) * g;
            let b = if avx512 {
                rate(x64(lo, hi), |i, o| unsafe { k512(i, o) }) * g
            } else {
                f64::NAN
            };
            let c = rate(x64(lo, hi), |i, o| unsafe { libm(i, o) }) * g;
            eprintln!(
                "{name}: AVX2 {a:.2} G/s, AVX-512 {b:.2} G/s, libm {c:.3} G/s ({:.1}x)",
                a.max(b) / c
            );
        }
    }
}
