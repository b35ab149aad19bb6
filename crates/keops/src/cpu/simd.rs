//! Run-time SIMD dispatch: one portable source compiled for several instruction sets,
//! the best one chosen from the CPU's features.
//!
//! [`multiversion!`] turns an `#[inline(always)]` generic function into an entry point
//! that calls a copy of it compiled under `#[target_feature]` for AVX-512, AVX2+FMA or
//! SSE4.1 on x86-64 (NEON is the aarch64 baseline), so a generic x86-64 build runs
//! AVX-512 code where the CPU has it. Everything the body inlines is compiled with the
//! same features, which is why the kernels are `#[inline(always)]`.

/// An instruction set the CPU engine is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F/VL with AVX2 and FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// SSE4.1.
    Sse41,
    /// The build's baseline (NEON on aarch64).
    Baseline,
}

impl Isa {
    /// The best instruction set of this CPU; `KEOPS_CPU_ISA=avx2|sse41|baseline` caps it
    /// (to test the other code paths).
    pub fn detect() -> Isa {
        let cap = std::env::var("KEOPS_CPU_ISA").ok();
        let allowed = |isa: Isa| match cap.as_deref() {
            Some("baseline") => isa == Isa::Baseline,
            Some("sse41") => matches!(isa, Isa::Sse41 | Isa::Baseline),
            Some("avx2") => isa != Isa::Avx512,
            _ => true,
        };
        #[cfg(target_arch = "x86_64")]
        {
            if allowed(Isa::Avx512)
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if allowed(Isa::Avx2)
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
            if allowed(Isa::Sse41) && is_x86_feature_detected!("sse4.1") {
                return Isa::Sse41;
            }
        }
        let _ = allowed;
        Isa::Baseline
    }
}

/// Defines `$vis fn $name<generics>(isa: Isa, args...)` calling `$body::<generics>(args...)`
/// compiled for `isa`.
macro_rules! multiversion {
    ($vis:vis fn $name:ident<$($g:ident : $b:path),*>($($a:ident : $t:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$($g: $b),*>(isa: $crate::cpu::simd::Isa, $($a: $t),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512<$($g: $b),*>($($a: $t),*) $(-> $ret)? { $body::<$($g),*>($($a),*) }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$($g: $b),*>($($a: $t),*) $(-> $ret)? { $body::<$($g),*>($($a),*) }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "sse4.1")]
                unsafe fn sse41<$($g: $b),*>($($a: $t),*) $(-> $ret)? { $body::<$($g),*>($($a),*) }
                // SAFETY: `isa` comes from `Isa::detect`, which checked that the CPU has
                // these features.
                match isa {
                    $crate::cpu::simd::Isa::Avx512 => return unsafe { avx512::<$($g),*>($($a),*) },
                    $crate::cpu::simd::Isa::Avx2 => return unsafe { avx2::<$($g),*>($($a),*) },
                    $crate::cpu::simd::Isa::Sse41 => return unsafe { sse41::<$($g),*>($($a),*) },
                    $crate::cpu::simd::Isa::Baseline => {}
                }
            }
            let _ = isa;
            $body::<$($g),*>($($a),*)
        }
    };
}
pub(crate) use multiversion;
