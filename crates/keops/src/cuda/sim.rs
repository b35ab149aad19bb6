//! The CUDA simulator: the CUDA engine's own kernels run on the CPU, for testing every
//! part of the engine but the hardware on machines without a GPU (CI).
//!
//! `KEOPS_CUDA_SIMULATOR=n` (1 to 8) makes the engine see `n` simulated devices in
//! place of the driver, as Numba's `NUMBA_ENABLE_CUDASIM` does. The generated source,
//! the launch plans, the argument tables, the 2D scheme's partial states, block-sparse
//! tasks, multi-GPU splits and in-place calls are those of a GPU run; what changes is
//! below them:
//! - kernels are compiled by the host C++ compiler (`KEOPS_SIM_CXX`, else `CXX`, else
//!   `c++`; extra flags from `KEOPS_SIM_CXXFLAGS`) as a shared library, with
//!   `threadIdx`/`blockIdx` as its globals;
//! - built with `-fsanitize=address` (AddressSanitizer's runtime preloaded into the
//!   process, as `make test` does), a kernel's reads and writes out of its buffers are
//!   caught as they happen: the guards of each allocation and the shared memory past
//!   the launch's size are poisoned, compute-sanitizer's memcheck on the CPU;
//! - a launch runs its blocks one after the other, each block's threads as fibers
//!   (`ucontext`; 32 KB stacks, the last 256 bytes of each checked after each block)
//!   taking turns that end at each `__syncthreads()`, so that all reach a barrier before
//!   any goes past it;
//! - device memory is host memory with guard bytes on both sides, checked after every
//!   launch (a write out of bounds is an error naming the allocation); new allocations
//!   and the shared memory of each block are filled with `0xFF` bytes (NaN, index -1),
//!   so that what a kernel forgets to write shows;
//! - streams are synchronous: every operation is done when its call returns;
//! - `KEOPS_CUDA_SIMULATOR_MEMORY=bytes` gives each device that much memory, past which
//!   allocations fail as a GPU's do (for testing out-of-memory paths).
//!
//! Device `k` reports `2 + 2k` multiprocessors, so that multi-GPU splits are uneven.

use crate::error::{KeopsError, Result};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Most simulated devices.
const MAX_DEVICES: usize = 8;
/// Guard bytes on each side of an allocation (also its alignment, as cudaMalloc's).
const GUARD: usize = 256;
/// The byte guards hold.
const GUARD_BYTE: u8 = 0xA5;
/// Stack of each simulated thread, in KB. Kernels do not recurse: their deepest frames,
/// sanitizer redzones included, take a few KB (every test passes with 8). Small stacks
/// matter: AddressSanitizer clears the shadow of the whole stack at every switch into a
/// fiber.
const STACK_KB: usize = 32;

thread_local! {
    /// The stacks of the simulated threads of this thread's launches (one at a time),
    /// kept from launch to launch.
    static STACKS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// Shared memory of a simulated block.
const SMEM_BYTES: usize = 64 * 1024;

fn sim_err(msg: impl Into<String>) -> KeopsError {
    KeopsError::Cuda(format!("CUDA simulator: {}", msg.into()))
}

/// The number of simulated devices `KEOPS_CUDA_SIMULATOR` asks for (`None`: the
/// simulator is off), or why its value is wrong.
pub fn devices() -> Option<std::result::Result<usize, String>> {
    static N: OnceLock<Option<std::result::Result<usize, String>>> = OnceLock::new();
    N.get_or_init(|| {
        let v = std::env::var("KEOPS_CUDA_SIMULATOR").ok()?;
        let v = v.trim();
        if v.is_empty() || v == "0" {
            return None;
        }
        Some(match v.parse::<usize>() {
            Ok(n) if (1..=MAX_DEVICES).contains(&n) => Ok(n),
            _ => Err(format!(
                "KEOPS_CUDA_SIMULATOR is '{v}'; it must be a number of simulated devices, \
                 1 to {MAX_DEVICES} (0 or unset: off)"
            )),
        })
    })
    .clone()
}

/// Whether the simulator is on.
pub fn on() -> bool {
    devices().is_some()
}

/// Multiprocessors of simulated device `id`.
pub fn sms(id: usize) -> usize {
    2 + 2 * id
}

/// The C++ compiler the simulator uses, checked once.
pub(crate) fn compiler() -> Result<&'static str> {
    static CXX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    CXX.get_or_init(|| {
        let cxx = ["KEOPS_SIM_CXX", "CXX"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "c++".into());
        match Command::new(&cxx).arg("--version").output() {
            Ok(o) if o.status.success() => Ok(cxx),
            _ => Err(format!(
                "no C++ compiler '{cxx}' to build its kernels (set KEOPS_SIM_CXX)"
            )),
        }
    })
    .as_deref()
    .map_err(|e| sim_err(e.clone()))
}

/// Whether kernels can be built (a C++ compiler).
pub fn available() -> bool {
    compiler().is_ok()
}

/// `keops_sim_launch(kernel, gx, gy, gz, block, smem, params, stacks)`: 0, or an error
/// code.
type Launch = unsafe extern "C" fn(u32, u32, u32, u32, u32, u32, *mut *mut c_void, *mut u8) -> i32;

/// One kernel source built and loaded.
pub(crate) struct Module {
    launch: Launch,
    /// The library's built-in variables and shared memory serve one launch at a time.
    busy: Mutex<()>,
    _lib: libloading::Library,
}

/// Which kernel of a module.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kernel {
    /// `{name}_reduce`.
    Reduce = 0,
    /// `{name}_combine`.
    Combine = 1,
    /// `{name}_reduce_ranges`.
    ReduceRanges = 2,
}

/// What the kernels need to compile as host C++: CUDA's built-in variables, and
/// `__syncthreads()` as a switch back to the scheduler of the block's fibers.
const HEADER: &str = r#"#define KEOPS_SIM 1
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define KEOPS_SIM_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define KEOPS_SIM_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define KEOPS_SIM_POISON(p, n) ((void)(p), (void)(n))
#define KEOPS_SIM_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
struct keops_sim_dim { unsigned x, y, z; };
static keops_sim_dim threadIdx, blockIdx, blockDim, gridDim;
static ucontext_t keops_sim_main, *keops_sim_fiber;
static unsigned keops_sim_cur;
static void keops_sim_yield(void) { swapcontext(&keops_sim_fiber[keops_sim_cur], &keops_sim_main); }
#define __syncthreads() keops_sim_yield()
#define __global__
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
"#;

/// The launcher (after the kernels): each block's threads are fibers run in turns; a
/// turn ends at a `__syncthreads()` or at the thread's end, so that every thread has
/// reached the barrier (or ended) before any goes past it.
const LAUNCHER: &str = r#"
static void (*keops_sim_body)(void**);
static void** keops_sim_params;
static char* keops_sim_done;
static unsigned keops_sim_capacity;
__attribute__((destructor)) static void keops_sim_fini(void) { free(keops_sim_fiber); free(keops_sim_done); }
static void keops_sim_thread(void) { keops_sim_body(keops_sim_params); keops_sim_done[keops_sim_cur] = 1; }
extern "C" int keops_sim_launch(unsigned kernel, unsigned gx, unsigned gy, unsigned gz,
                                unsigned block, unsigned smem, void** params, char* stacks) {
  const size_t stack = KEOPS_SIM_STACK_KB * 1024, canary = 256;
  if (smem > sizeof(KEOPS_SMEM)) return 1;
  keops_sim_body = kernel == 0 ? keops_sim_reduce : kernel == 1 ? keops_sim_combine : keops_sim_reduce_ranges;
  keops_sim_params = params;
  // Kept from launch to launch (one launch at a time per module): allocating them anew
  // made every launch fault in fresh pages.
  if (block > keops_sim_capacity) {
    free(keops_sim_fiber); free(keops_sim_done);
    keops_sim_fiber = (ucontext_t*)malloc(sizeof(ucontext_t) * block);
    keops_sim_done = (char*)malloc(block);
    keops_sim_capacity = keops_sim_fiber && keops_sim_done ? block : 0;
    if (!keops_sim_capacity) return 2;
  }
  int status = 0;
  blockDim = {block, 1, 1};
  gridDim = {gx, gy, gz};
  for (unsigned z = 0; z < gz; z++) for (unsigned y = 0; y < gy; y++) for (unsigned x = 0; x < gx; x++) {
    blockIdx = {x, y, z};
    // The launch's shared memory starts as 0xFF bytes; past its size, it is poisoned.
    KEOPS_SIM_UNPOISON(KEOPS_SMEM, sizeof(KEOPS_SMEM));
    memset(KEOPS_SMEM, 0xFF, smem);
    KEOPS_SIM_POISON(KEOPS_SMEM + smem, sizeof(KEOPS_SMEM) - smem);
    for (unsigned t = 0; t < block; t++) {
      keops_sim_done[t] = 0;
      if (getcontext(&keops_sim_fiber[t]) != 0) { status = 3; goto out; }
      // The lowest bytes of a stack, which a thread that fits in it never writes.
      memset(stacks + t * stack, 0xA5, canary);
      keops_sim_fiber[t].uc_stack.ss_sp = stacks + t * stack;
      keops_sim_fiber[t].uc_stack.ss_size = stack;
      keops_sim_fiber[t].uc_link = &keops_sim_main;
      makecontext(&keops_sim_fiber[t], keops_sim_thread, 0);
    }
    for (unsigned left = block; left > 0;) {
      for (unsigned t = 0; t < block; t++) {
        if (keops_sim_done[t]) continue;
        keops_sim_cur = t;
        threadIdx = {t, 0, 0};
        if (swapcontext(&keops_sim_main, &keops_sim_fiber[t]) != 0) { status = 3; goto out; }
        if (keops_sim_done[t]) left--;
      }
    }
    for (unsigned t = 0; t < block; t++)
      for (size_t b = 0; b < canary; b++)
        if ((unsigned char)stacks[t * stack + b] != 0xA5) { status = 4; goto out; }
  }
out:
  KEOPS_SIM_UNPOISON(KEOPS_SMEM, sizeof(KEOPS_SMEM));
  return status;
}
"#;

/// Builds `code` (a [`super::kernel::kernel_source`] with prefix `name`) and loads it.
pub(crate) fn load(code: &str, name: &str) -> Result<Module> {
    let cxx = compiler()?;
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stem = std::env::temp_dir().join(format!("keops-sim-{}-{seq}", std::process::id()));
    let (cpp, so) = (stem.with_extension("cpp"), stem.with_extension("so"));
    let st = format!("struct {name}_state");
    let src = format!(
        "{HEADER}#define KEOPS_SMEM {name}_smem\n#define KEOPS_SIM_STACK_KB {STACK_KB}\n\
         extern \"C\" unsigned char {name}_smem[{SMEM_BYTES}];\n{code}\n\
         extern \"C\" {{ __attribute__((aligned(16))) unsigned char {name}_smem[{SMEM_BYTES}]; }}\n\
         static void keops_sim_reduce(void** p) {{ {name}_reduce(*(int*)p[0], *(long long*)p[1], \
         *(int*)p[2], *(long long*)p[3], *(long long*)p[4], *(const T* const**)p[5], \
         *(const long long**)p[6], *(T**)p[7], *(long long**)p[8], *({st}**)p[9]); }}\n\
         static void keops_sim_combine(void** p) {{ {name}_combine(*(int*)p[0], *(int*)p[1], \
         *(int*)p[2], *(const {st}**)p[3], *(T**)p[4], *(long long**)p[5]); }}\n\
         static void keops_sim_reduce_ranges(void** p) {{ {name}_reduce_ranges(*(int*)p[0], \
         *(const long long**)p[1], *(const long long**)p[2], *(const T* const**)p[3], \
         *(const long long**)p[4], *(T**)p[5], *(long long**)p[6]); }}\n{LAUNCHER}"
    );
    std::fs::write(&cpp, src).map_err(|e| sim_err(format!("writing {}: {e}", cpp.display())))?;
    let flags = std::env::var("KEOPS_SIM_CXXFLAGS").unwrap_or_default();
    let out = Command::new(cxx)
        .args(["-x", "c++", "-std=c++17", "-O1", "-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&cpp)
        .args(flags.split_whitespace())
        .arg("-lm")
        // A sanitizer runtime preloaded into the tests is not the compiler's business.
        .env_remove("LD_PRELOAD")
        .output()
        .map_err(|e| sim_err(format!("running {cxx}: {e}")));
    let _ = std::fs::remove_file(&cpp);
    let out = out?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&so);
        return Err(KeopsError::Compile {
            source_path: "(the CUDA simulator's C++ build)".into(),
            log: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    // SAFETY: a library just built from our source; it has no initialisers, and its
    // finaliser frees what its launches allocated.
    let lib = unsafe { libloading::Library::new(&so) }.map_err(|e| {
        sim_err(format!(
            "loading {}: {}",
            so.display(),
            super::nvrtc::load_error(&e)
        ))
    });
    let _ = std::fs::remove_file(&so); // the mapping stays
    let lib = lib?;
    // SAFETY: the launcher defined above, with this signature.
    let launch = unsafe { lib.get::<Launch>(b"keops_sim_launch") }
        .map(|f| *f)
        .map_err(|e| sim_err(format!("symbol: {}", super::nvrtc::load_error(&e))))?;
    Ok(Module {
        launch,
        busy: Mutex::new(()),
        _lib: lib,
    })
}

/// Runs kernel `k` of `m` on a `grid` of blocks of `block` threads with `smem` bytes of
/// shared memory, `params` as `cuLaunchKernel` takes them; then checks every
/// allocation's guards.
///
/// # Safety
/// `params` hold the kernel's arguments, pointers to simulated device memory (or host
/// memory alive during the call).
pub(crate) unsafe fn launch(
    m: &Module,
    k: Kernel,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    params: &mut [*mut c_void],
) -> Result<()> {
    let (gx, gy, gz) = grid;
    if block == 0 || block > 1024 {
        return Err(sim_err(format!("a block of {block} threads (1 to 1024)")));
    }
    if gx == 0 || gy == 0 || gz == 0 || gx > i32::MAX as u32 || gy > 65_535 || gz > 65_535 {
        return Err(sim_err(format!("invalid grid {grid:?}")));
    }
    if smem as usize > SMEM_BYTES {
        return Err(sim_err(format!(
            "{smem} bytes of shared memory asked, {SMEM_BYTES} available"
        )));
    }
    let status = STACKS.with_borrow_mut(|stacks| {
        let need = block as usize * STACK_KB * 1024;
        if stacks.len() < need {
            stacks.resize(need, 0);
        }
        let _one = m.busy.lock().unwrap_or_else(|e| e.into_inner());
        (m.launch)(
            k as u32,
            gx,
            gy,
            gz,
            block,
            smem,
            params.as_mut_ptr(),
            stacks.as_mut_ptr(),
        )
    });
    match status {
        0 => check_guards(),
        2 => Err(sim_err("out of host memory for the threads' contexts")),
        4 => Err(sim_err(format!(
            "a thread overflowed its {STACK_KB} KB stack"
        ))),
        s => Err(sim_err(format!("launch failed ({s})"))),
    }
}

/// One simulated allocation: `bytes` at `base + GUARD`, guards on both sides.
struct Alloc {
    base: usize,
    bytes: usize,
    device: usize,
}

impl Alloc {
    fn layout(&self) -> std::alloc::Layout {
        // Checked when the allocation was made.
        std::alloc::Layout::from_size_align(self.bytes + 2 * GUARD, GUARD)
            .unwrap_or(std::alloc::Layout::new::<u8>())
    }

    /// Whether the guards still hold their byte.
    fn guards_hold(&self) -> bool {
        let end = self.base + GUARD + self.bytes;
        // SAFETY: both guards are inside the allocation.
        let (lo, hi) = unsafe {
            (
                std::slice::from_raw_parts(self.base as *const u8, GUARD),
                std::slice::from_raw_parts(end as *const u8, GUARD),
            )
        };
        lo.iter().chain(hi).all(|&b| b == GUARD_BYTE)
    }
}

/// Live allocations by address (of their first usable byte).
static MEMORY: Mutex<BTreeMap<usize, Alloc>> = Mutex::new(BTreeMap::new());

fn memory() -> std::sync::MutexGuard<'static, BTreeMap<usize, Alloc>> {
    MEMORY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The memory of each simulated device, `KEOPS_CUDA_SIMULATOR_MEMORY` bytes (unset:
/// as much as the host gives), or why its value is wrong.
pub fn memory_limit() -> std::result::Result<Option<usize>, String> {
    static LIMIT: OnceLock<std::result::Result<Option<usize>, String>> = OnceLock::new();
    LIMIT
        .get_or_init(|| {
            let Ok(v) = std::env::var("KEOPS_CUDA_SIMULATOR_MEMORY") else {
                return Ok(None);
            };
            match v.trim() {
                "" => Ok(None),
                t => t.parse().map(Some).map_err(|_| {
                    format!(
                        "KEOPS_CUDA_SIMULATOR_MEMORY is '{t}'; it must be the bytes of \
                         memory of each simulated device"
                    )
                }),
            }
        })
        .clone()
}

/// Bytes of device `device`'s simulated memory allocated and not freed.
pub fn live_bytes(device: usize) -> usize {
    used(&memory(), device)
}

fn used(mem: &BTreeMap<usize, Alloc>, device: usize) -> usize {
    (mem.values().filter(|a| a.device == device))
        .map(|a| a.bytes)
        .sum()
}

/// `bytes` of simulated memory of device `device` (at least one), filled with `0xFF`,
/// for `what` (named by an error); out of memory past [`memory_limit`], as a GPU is.
pub(crate) fn alloc(device: usize, bytes: usize, what: &str) -> Result<u64> {
    let bytes = bytes.max(1);
    let oom = |detail: String| {
        sim_err(format!(
            "{what}: out of memory ({detail}){}",
            super::runtime::OUT_OF_MEMORY_HINT
        ))
    };
    let limit = memory_limit().map_err(sim_err)?;
    // Held until the allocation is recorded, so that threads cannot both fit.
    let mut mem = memory();
    if let Some(limit) = limit {
        let in_use = used(&mem, device);
        if in_use.saturating_add(bytes) > limit {
            return Err(oom(format!(
                "{in_use} of device {device}'s {limit} bytes in use"
            )));
        }
    }
    let layout = std::alloc::Layout::from_size_align(bytes + 2 * GUARD, GUARD)
        .map_err(|_| oom("more than the host can address".into()))?;
    // SAFETY: a non-zero size.
    let base = unsafe { std::alloc::alloc(layout) };
    if base.is_null() {
        return Err(oom("the host's".into()));
    }
    // SAFETY: fills the whole allocation.
    unsafe {
        std::ptr::write_bytes(base, GUARD_BYTE, GUARD);
        std::ptr::write_bytes(base.add(GUARD), 0xFF, bytes);
        std::ptr::write_bytes(base.add(GUARD + bytes), GUARD_BYTE, GUARD);
    }
    asan_guards(base, bytes, true);
    let ptr = base as usize + GUARD;
    mem.insert(
        ptr,
        Alloc {
            base: base as usize,
            bytes,
            device,
        },
    );
    Ok(ptr as u64)
}

/// Frees an allocation of [`alloc`]; unknown addresses are ignored, as a driver
/// reports them to no one from a destructor.
pub(crate) fn free(ptr: u64) {
    if let Some(a) = memory().remove(&(ptr as usize)) {
        asan_guards(a.base as *mut u8, a.bytes, false);
        // SAFETY: made by `alloc` with this layout.
        unsafe { std::alloc::dealloc(a.base as *mut u8, a.layout()) };
    }
}

/// AddressSanitizer's `__asan_(un)poison_memory_region`, where its runtime is loaded.
type Poison = unsafe extern "C" fn(*const c_void, usize);

/// AddressSanitizer's poisoning functions, where its runtime is loaded in the process.
fn asan() -> Option<(Poison, Poison)> {
    static FNS: OnceLock<Option<(Poison, Poison)>> = OnceLock::new();
    *FNS.get_or_init(|| {
        // The process's own symbols: `dlopen(NULL)` on Unix, the executable on Windows.
        #[cfg(unix)]
        let this = libloading::os::unix::Library::this();
        #[cfg(windows)]
        let this = libloading::os::windows::Library::this().ok()?;
        // SAFETY: the sanitizer's interface functions, with these signatures.
        unsafe {
            let p = this.get::<Poison>(b"__asan_poison_memory_region").ok()?;
            let u = this.get::<Poison>(b"__asan_unpoison_memory_region").ok()?;
            Some((*p, *u))
        }
    })
}

/// Whether simulated memory is watched by AddressSanitizer: its runtime is loaded and
/// kernels are built for it (`KEOPS_SIM_CXXFLAGS` holds `-fsanitize=address`).
pub fn sanitized() -> bool {
    asan().is_some()
        && std::env::var("KEOPS_SIM_CXXFLAGS").is_ok_and(|f| f.contains("-fsanitize=address"))
}

/// Poisons (or unpoisons) the guards of the allocation at `base` holding `bytes`, when
/// AddressSanitizer runs: an instrumented kernel touching them is then reported at once.
fn asan_guards(base: *mut u8, bytes: usize, poison: bool) {
    if let Some((p, u)) = asan() {
        let f = if poison { p } else { u };
        // SAFETY: both guards lie inside the allocation.
        unsafe {
            f(base.cast(), GUARD);
            f(base.add(GUARD + bytes).cast(), GUARD);
        }
    }
}

/// The device of the allocation holding `len` bytes from `ptr` (`None`: no allocation
/// holds them all).
fn find(mem: &BTreeMap<usize, Alloc>, ptr: u64, len: usize) -> Option<usize> {
    let p = ptr as usize;
    let (&start, a) = mem.range(..=p).next_back()?;
    (p + len <= start + a.bytes).then_some(a.device)
}

/// Copies `src` to simulated memory at `dst`.
///
/// # Safety
/// Nothing else writes there during the call.
pub(crate) unsafe fn write(dst: u64, src: &[u8]) -> Result<()> {
    if find(&memory(), dst, src.len()).is_none() {
        return Err(sim_err(format!(
            "copying {} bytes to {dst:#x}, outside every allocation",
            src.len()
        )));
    }
    std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len());
    Ok(())
}

/// Copies simulated memory at `src` to `dst`.
///
/// # Safety
/// Nothing writes there during the call.
pub(crate) unsafe fn read(src: u64, dst: &mut [u8]) -> Result<()> {
    if find(&memory(), src, dst.len()).is_none() {
        return Err(sim_err(format!(
            "copying {} bytes from {src:#x}, outside every allocation",
            dst.len()
        )));
    }
    std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len());
    Ok(())
}

/// The simulated device whose memory holds `ptr` (`None`: not simulated memory).
pub(crate) fn device_of(ptr: u64) -> Option<usize> {
    find(&memory(), ptr, 1)
}

/// An error naming the allocations a kernel wrote out of.
fn check_guards() -> Result<()> {
    let mem = memory();
    let bad: Vec<String> = mem
        .iter()
        .filter(|(_, a)| !a.guards_hold())
        .map(|(p, a)| format!("{} bytes at {p:#x} (device {})", a.bytes, a.device))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(sim_err(format!(
            "a kernel wrote out of the bounds of {}",
            bad.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_checked_against_allocations_and_guards_catch_overruns() {
        let p = alloc(1, 16, "test").unwrap();
        assert_eq!(p % GUARD as u64, 0);
        assert_eq!(device_of(p + 15), Some(1));
        let mut back = [0u8; 16];
        // SAFETY: inside the allocation.
        unsafe {
            read(p, &mut back).unwrap();
            assert!(back.iter().all(|&b| b == 0xFF), "new memory is 0xFF");
            write(p, &[7; 16]).unwrap();
            assert!(write(p + 8, &[7; 9]).is_err());
            assert!(read(p + 16, &mut back[..1]).is_err());
        }
        assert!(check_guards().is_ok());
        // SAFETY: one byte past the end, inside the guard.
        unsafe { *((p + 16) as *mut u8) = 0 };
        let e = check_guards().unwrap_err().to_string();
        assert!(e.contains("16 bytes") && e.contains("device 1"), "{e}");
        free(p);
        assert!(check_guards().is_ok() && device_of(p).is_none());
    }

    /// A thread whose frame outgrows its stack is an error, not a write over another's.
    /// (The kernels are built by the host's compiler: x86_64 Linux only, where the tests'
    /// compiler builds for the test process.)
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn a_stack_overflow_is_an_error() {
        if !available() {
            eprintln!("SKIPPED: no C++ compiler for the simulator's kernels");
            return;
        }
        // Thread 1 fills all of its stack but 64 bytes; thread 0 ends before it runs.
        let code = "typedef float T;\nstruct t_state { T v; };\n\
            void t_reduce(int, long long, int, long long, long long, const T* const*, \
            const long long*, T*, long long*, t_state*) {\n\
            if (threadIdx.x == 1) { volatile char big[KEOPS_SIM_STACK_KB * 1024 - 64]; \
            for (unsigned long i = 0; i < sizeof big; i++) big[i] = 1; } }\n\
            void t_combine(int, int, int, const t_state*, T*, long long*) {}\n\
            void t_reduce_ranges(int, const long long*, const long long*, const T* const*, \
            const long long*, T*, long long*) {}\n";
        let m = load(code, "t").unwrap();
        let mut values = [0u64; 10];
        let mut params: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect();
        // SAFETY: every parameter points at a zero, and the kernel reads none of them.
        let e = unsafe { launch(&m, Kernel::Reduce, (1, 1, 1), 2, 0, &mut params) };
        let e = e.unwrap_err().to_string();
        assert!(e.contains("overflowed its 32 KB stack"), "{e}");
        // SAFETY: as above.
        unsafe { launch(&m, Kernel::Reduce, (1, 1, 1), 1, 0, &mut params) }.unwrap();
    }
}
