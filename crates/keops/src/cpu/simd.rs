//! Run-time SIMD dispatch: one portable source compiled for several instruction sets,
//! the best one chosen from the CPU's features.
//!
//! `multiversion!` turns an `#[inline(always)]` generic function into an entry point
//! that calls a copy of it compiled under `#[target_feature]` for AVX-512, AVX2+FMA or
//! SSE4.1 on x86-64 (NEON is the aarch64 baseline), so a generic x86-64 build runs
//! AVX-512 code where the CPU has it. Everything the body inlines is compiled with the
//! same features, which is why the kernels are `#[inline(always)]`. The body also gets
//! a [`crate::math::MathMode`]: `WithFma` in the entry points compiled with FMA (`WideFma`
//! for AVX-512), so that the elementary functions' polynomials use fused multiply-adds
//! there, and kernels know how many registers they may keep sums in.

use crate::error::{parse_env, Result};

/// An instruction set the CPU engine is compiled for, from the least to the most capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// The build's baseline (SSE2 on x86-64, NEON on aarch64).
    Baseline,
    /// SSE4.1.
    Sse41,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512 F/VL with AVX2 and FMA.
    Avx512,
}

impl Isa {
    /// Every instruction set, least capable first.
    pub const ALL: [Isa; 4] = [Isa::Baseline, Isa::Sse41, Isa::Avx2, Isa::Avx512];

    /// The best instruction set this CPU has.
    pub fn available() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
            if is_x86_feature_detected!("sse4.1") {
                return Isa::Sse41;
            }
        }
        Isa::Baseline
    }

    /// Its name, as `KEOPS_CPU_ISA` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Sse41 => "sse41",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The instruction set to run with: the best available, capped by `cap` and by the
    /// environment variable `KEOPS_CPU_ISA` (`baseline`, `sse41`, `avx2`, `avx512`, any
    /// case). Another value is an error naming the variable, not a silent default.
    pub fn select(cap: Option<Isa>) -> Result<Isa> {
        let env = parse_isa(std::env::var("KEOPS_CPU_ISA").ok().as_deref())?;
        Ok([Some(Isa::available()), cap, env]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Isa::Baseline))
    }
}

/// `KEOPS_CPU_ISA`'s cap: none when unset or empty.
fn parse_isa(v: Option<&str>) -> Result<Option<Isa>> {
    parse_env(
        "KEOPS_CPU_ISA",
        v,
        |t| {
            Isa::ALL
                .into_iter()
                .find(|i| i.name().eq_ignore_ascii_case(t))
        },
        "one of baseline, sse41, avx2, avx512 (a cap on the CPU engine's instruction set), \
         or unset for the best this CPU has",
    )
}

/// Defines `$vis fn $name<generics>(isa: Isa, args...)` calling
/// `$body::<generics, M>(isa, args...)` compiled for `isa`. The body gets its `Isa` as a
/// constant, so that it can call another entry point without a run-time dispatch: each
/// copy is then compiled once per instruction set and called, where inlining it at
/// every call site would compile it again there (the tile program's interpreter,
/// inlined at its two call sites and for both accumulator types, was most of the
/// crate's build time).
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$($g:ident : $b:path),*>($($a:ident : $t:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        #[inline]
        $vis fn $name<$($g: $b),*>(isa: $crate::cpu::simd::Isa, $($a: $t),*) $(-> $ret)? {
            use $crate::cpu::simd::Isa;
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[inline(never)]
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512<$($g: $b),*>($($a: $t),*) $(-> $ret)? { $body::<$($g),*, $crate::math::WideFma>(Isa::Avx512, $($a),*) }
                #[allow(clippy::too_many_arguments)]
                #[inline(never)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$($g: $b),*>($($a: $t),*) $(-> $ret)? { $body::<$($g),*, $crate::math::WithFma>(Isa::Avx2, $($a),*) }
                #[allow(clippy::too_many_arguments)]
                #[inline(never)]
                #[target_feature(enable = "sse4.1")]
                unsafe fn sse41<$($g: $b),*>($($a: $t),*) $(-> $ret)? { $body::<$($g),*, $crate::math::NoFma>(Isa::Sse41, $($a),*) }
                // SAFETY: `isa` comes from `Isa::select`, which never picks more than the
                // CPU has (`Isa::available`).
                match isa {
                    Isa::Avx512 => return unsafe { avx512::<$($g),*>($($a),*) },
                    Isa::Avx2 => return unsafe { avx2::<$($g),*>($($a),*) },
                    Isa::Sse41 => return unsafe { sse41::<$($g),*>($($a),*) },
                    Isa::Baseline => {}
                }
            }
            let _ = isa;
            // The baseline may lack FMA (x86-64); NEON always has it, but a separate
            // multiply and add is exact enough and costs little there.
            #[allow(clippy::too_many_arguments)]
            #[inline(never)]
            fn baseline<$($g: $b),*>($($a: $t),*) $(-> $ret)? { $body::<$($g),*, $crate::math::NoFma>(Isa::Baseline, $($a),*) }
            baseline::<$($g),*>($($a),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_isa_variable_is_a_cap_or_an_error() {
        assert_eq!(parse_isa(None).unwrap(), None);
        assert_eq!(parse_isa(Some(" ")).unwrap(), None);
        assert_eq!(parse_isa(Some("AVX2 ")).unwrap(), Some(Isa::Avx2));
        assert_eq!(parse_isa(Some("baseline")).unwrap(), Some(Isa::Baseline));
        let e = parse_isa(Some("avx-512")).unwrap_err().to_string();
        assert!(
            e.contains("KEOPS_CPU_ISA") && e.contains("'avx-512'"),
            "{e}"
        );
    }
}
