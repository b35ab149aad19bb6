//! Vectorisable elementary functions for `f32` and `f64`.
//!
//! Placeholder implementations delegating to libm; to be replaced by branch-free
//! polynomial approximations.

/// `exp` for `f32`.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    x.exp()
}
/// `exp` for `f64`.
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    x.exp()
}
/// `ln` for `f32`.
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    x.ln()
}
/// `ln` for `f64`.
#[inline(always)]
pub fn ln_f64(x: f64) -> f64 {
    x.ln()
}
/// `sin` for `f32`.
#[inline(always)]
pub fn sin_f32(x: f32) -> f32 {
    x.sin()
}
/// `sin` for `f64`.
#[inline(always)]
pub fn sin_f64(x: f64) -> f64 {
    x.sin()
}
/// `cos` for `f32`.
#[inline(always)]
pub fn cos_f32(x: f32) -> f32 {
    x.cos()
}
/// `cos` for `f64`.
#[inline(always)]
pub fn cos_f64(x: f64) -> f64 {
    x.cos()
}
