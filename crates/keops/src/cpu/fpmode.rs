//! The floating-point mode of a CPU thread while it runs a job: subnormals flushed to zero.
//!
//! On x86 an instruction whose result underflows to a subnormal (or, on some cores, that
//! reads one) takes a microcode assist of about a hundred cycles, for the whole vector.
//! Reductions meet them wherever many pairs are far apart: `exp(-g |x - y|^2)` on the
//! unit cube ran 8x slower in float32 at `g = 100` than at `g = 1`, although the
//! subnormal terms change a sum by less than `1.2e-38` each. With
//! [`Options::fast_math`](crate::Options::fast_math), float32 jobs run with the
//! processor's flush-to-zero and denormals-are-zero modes (x86 MXCSR FTZ and DAZ,
//! AArch64 FPCR FZ), as CUDA's `--use_fast_math` does on the GPU: the same option gives
//! the same float32 semantics on both engines. Float64 stays IEEE on both.
//!
//! The mode is per thread: [`FlushSubnormals`] sets it for the length of one job and
//! restores the thread's previous mode when dropped (also when unwinding), so the
//! caller's thread and rayon's workers are left as they were found.

/// While alive, the current thread flushes subnormal results and operands to zero.
#[must_use = "the mode is restored when the guard is dropped"]
pub struct FlushSubnormals {
    saved: Option<Control>,
}

impl FlushSubnormals {
    /// Flushes subnormals on this thread when `on` (and the architecture has such a
    /// mode); otherwise changes nothing. Dropping it restores the thread's flush bits.
    pub fn enter(on: bool) -> FlushSubnormals {
        let saved = on.then(|| {
            let c = control();
            set_control(c | FLUSH_BITS);
            c
        });
        FlushSubnormals { saved }
    }
}

impl Drop for FlushSubnormals {
    fn drop(&mut self) {
        // Only the flush bits go back: x86's sticky exception flags, in the same
        // register, keep what the job raised.
        if let Some(c) = self.saved {
            set_control((control() & !FLUSH_BITS) | (c & FLUSH_BITS));
        }
    }
}

/// Whether the current thread flushes subnormal results to zero now (inside a
/// [`FlushSubnormals`] that was entered with `on`). The kernels read it once per job or
/// loop to pick [`crate::math::exp_f32_ftz_mode`], which gives the same bits as the
/// IEEE exponential in that mode only: asking the processor, not a flag, keeps the two
/// from ever disagreeing.
pub fn flushing() -> bool {
    FLUSH_RESULTS != 0 && control() & FLUSH_RESULTS != 0
}

#[cfg(target_arch = "x86_64")]
type Control = u32;
/// MXCSR's FTZ alone (subnormal results).
#[cfg(target_arch = "x86_64")]
const FLUSH_RESULTS: Control = 0x8000;
/// MXCSR's FTZ (bit 15: results) and DAZ (bit 6: operands).
#[cfg(target_arch = "x86_64")]
const FLUSH_BITS: Control = 0x8040;

#[cfg(target_arch = "x86_64")]
fn control() -> Control {
    let mut c: Control = 0;
    // SAFETY: stmxcsr stores the 4-byte MXCSR into `c`; nothing else is touched.
    unsafe { core::arch::asm!("stmxcsr [{}]", in(reg) &mut c, options(nostack)) };
    c
}

#[cfg(target_arch = "x86_64")]
fn set_control(c: Control) {
    // SAFETY: ldmxcsr loads a value read from MXCSR with only FTZ/DAZ changed, which are
    // valid on every x86-64 processor (all have SSE2 with DAZ); no exception is unmasked.
    unsafe { core::arch::asm!("ldmxcsr [{}]", in(reg) &c, options(nostack, readonly)) };
}

#[cfg(target_arch = "aarch64")]
type Control = u64;
/// FPCR's FZ (bit 24): subnormal operands and results of AdvSIMD and FP are zero.
#[cfg(target_arch = "aarch64")]
const FLUSH_BITS: Control = 1 << 24;
#[cfg(target_arch = "aarch64")]
const FLUSH_RESULTS: Control = FLUSH_BITS;

#[cfg(target_arch = "aarch64")]
fn control() -> Control {
    let c: Control;
    // SAFETY: reading FPCR has no side effect.
    unsafe { core::arch::asm!("mrs {}, fpcr", out(reg) c, options(nomem, nostack)) };
    c
}

#[cfg(target_arch = "aarch64")]
fn set_control(c: Control) {
    // SAFETY: writes back FPCR as read with only FZ changed; no trap is enabled.
    unsafe { core::arch::asm!("msr fpcr, {}", in(reg) c, options(nomem, nostack)) };
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
type Control = u32;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const FLUSH_BITS: Control = 0;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const FLUSH_RESULTS: Control = 0;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn control() -> Control {
    0
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn set_control(_: Control) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest normal float32 halved: subnormal unless flushed. `black_box` keeps
    /// the product from being folded at compile time.
    fn half_min() -> f32 {
        std::hint::black_box(f32::MIN_POSITIVE) * std::hint::black_box(0.5f32)
    }

    /// The mode bits, without x86's sticky exception flags (bits 0 to 5), which the
    /// arithmetic of the tests sets.
    fn mode() -> Control {
        control() & !0x3f
    }

    #[test]
    fn flushes_while_entered_and_restores_after() {
        let before = mode();
        assert!(half_min() > 0.0, "IEEE by default");
        assert!(!flushing());
        {
            let _g = FlushSubnormals::enter(true);
            if FLUSH_BITS != 0 {
                assert_eq!(half_min(), 0.0, "flushed inside the guard");
                assert!(flushing());
            }
            let _off = FlushSubnormals::enter(false);
            assert_eq!(flushing(), FLUSH_BITS != 0, "entering off changes nothing");
        }
        assert_eq!(mode(), before, "mode restored");
        assert!(half_min() > 0.0);
        assert!(!flushing());
    }

    #[test]
    fn restored_when_unwinding() {
        let before = mode();
        let r = std::panic::catch_unwind(|| {
            let _g = FlushSubnormals::enter(true);
            panic!("inside a job");
        });
        assert!(r.is_err());
        assert_eq!(mode(), before);
    }
}
