//! The device side: the CUDA driver (loaded at run time through `cudarc`), devices,
//! compiled modules and launches.
//!
//! Every entry first checks that `libcuda` can be loaded ([`driver`]): cudarc panics
//! when a library is absent, so nothing reaches it before that check. Launches take raw
//! device pointers and a stream, so that data already on the GPU (PyTorch CUDA tensors)
//! is used in place; [`run`] is the host-data path built on them (copy in, launch, copy
//! back). With `KEOPS_CUDA_SIMULATOR` set, the driver's part (memory, copies,
//! launches) is the [`super::sim`]ulator's and everything above it is unchanged.

use super::cache::{self, KernelCache, Origin};
use super::codegen::CType;
use super::kernel::{kernel_source, KernelSpec};
use super::nvrtc::{Arch, Nvrtc};
use super::scheme::{self, Launch, Scheme};
use super::sim::{self, Kernel};
use crate::error::{parse_env, KeopsError, Result};
use crate::plan::{Element, Genred, Layout, MultiGpu, Options, Problem, Reduced};
use crate::ranges::Blocks;
use crate::reduction::ReductionSpec;
use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

/// What the driver reports.
#[derive(Clone, Copy, Debug)]
pub struct DriverInfo {
    /// CUDA version of the driver, e.g. 12080.
    pub version: i32,
    /// Number of visible devices.
    pub devices: usize,
}

pub(crate) fn cu<T>(r: std::result::Result<T, DriverError>, what: &str) -> Result<T> {
    r.map_err(|e| {
        let text = e
            .error_string()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{e:?}"));
        let hint = if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            OUT_OF_MEMORY_HINT
        } else {
            ""
        };
        KeopsError::Cuda(format!("{what}: {text} ({:?}){hint}", e.0))
    })
}

/// What an out-of-memory error adds (the simulator's too).
pub(crate) const OUT_OF_MEMORY_HINT: &str = "; the GPU's memory is full: free other arrays on \
     it, reduce fewer rows per call, spread the reduction over several GPUs, or run it on the CPU";

/// `bytes` for a message: `"512 B"`, `"1.5 KiB"`, `"3.0 GiB"`.
pub(crate) fn size_text(bytes: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn no_gpu(msg: impl Into<String>) -> KeopsError {
    KeopsError::Backend {
        backend: "GPU".into(),
        msg: msg.into(),
    }
}

/// The calling thread's current CUDA context, made current again when dropped. Each
/// entry that touches the driver holds one, created before anything that binds a
/// context, so that it is dropped last: binding device `n`'s context would otherwise
/// stay behind and move PyTorch's current device (it follows the driver's current
/// context) to `n`. Nothing to keep on the simulator or where there is no driver.
pub(crate) struct KeepCurrent(Option<sys::CUcontext>);

impl KeepCurrent {
    /// Notes the current context (none, a null one, on a thread that has none yet).
    pub(crate) fn new() -> Self {
        if sim::on() || driver().is_err() {
            return KeepCurrent(None);
        }
        let mut ctx: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: writes one handle; the driver is loaded (checked above).
        let r = unsafe { sys::cuCtxGetCurrent(&mut ctx) };
        KeepCurrent((r == sys::CUresult::CUDA_SUCCESS).then_some(ctx))
    }
}

impl Drop for KeepCurrent {
    fn drop(&mut self) {
        if let Some(ctx) = self.0 {
            // SAFETY: `ctx` was current on this thread (or null: none); a primary context
            // lives as long as the process. A failure leaves nothing to undo.
            let _ = unsafe { sys::cuCtxSetCurrent(ctx) };
        }
    }
}

/// The driver, initialised once; an error (never a panic) where there is none. With
/// `KEOPS_CUDA_SIMULATOR=n`, the simulator's `n` devices (version 0).
pub fn driver() -> Result<DriverInfo> {
    if let Some(n) = sim::devices() {
        return n
            .map(|devices| DriverInfo {
                version: 0,
                devices,
            })
            .map_err(no_gpu);
    }
    static INFO: OnceLock<std::result::Result<DriverInfo, String>> = OnceLock::new();
    INFO.get_or_init(|| {
        // SAFETY: only tries to open the library.
        if !unsafe { sys::is_culib_present() } {
            return Err("no CUDA driver (libcuda.so, nvcuda.dll) was found on this machine".into());
        }
        let err = |e: KeopsError| e.to_string();
        cu(result::init(), "cuInit").map_err(err)?;
        let mut version = 0;
        // SAFETY: writes one int.
        cu(
            unsafe { sys::cuDriverGetVersion(&mut version) }.result(),
            "cuDriverGetVersion",
        )
        .map_err(err)?;
        let devices = cu(result::device::get_count(), "cuDeviceGetCount").map_err(err)? as usize;
        if devices == 0 {
            return Err("the CUDA driver sees no device".into());
        }
        Ok(DriverInfo { version, devices })
    })
    .clone()
    .map_err(no_gpu)
}

/// Whether a GPU reduction can run here: a driver, a device and NVRTC (simulated: a
/// C++ compiler).
pub fn available() -> bool {
    if sim::on() {
        return driver().is_ok() && sim::available();
    }
    driver().is_ok_and(|d| Nvrtc::get(Some(d.version / 1000)).is_ok())
}

/// What the CUDA engine finds on this machine, each part with the reason when it is
/// missing: the GPU part of `keops.check_health()`'s report.
#[derive(Clone, Debug)]
pub struct GpuStatus {
    /// The driver, or why there is none.
    pub driver: std::result::Result<DriverInfo, String>,
    /// The kernel compiler (`"NVRTC 12.8 (path)"`; simulated: the host C++ compiler),
    /// or why none was found.
    pub compiler: std::result::Result<String, String>,
    /// One line per visible device (`"GPU 0: name (sm_90, 132 SMs)"`), or why it could
    /// not be opened.
    pub devices: Vec<std::result::Result<String, String>>,
    /// Whether GPU reductions can run (see [`available`]).
    pub available: bool,
}

/// Probes the driver, the compiler and every device. Devices are described from their
/// attributes, without opening a context: a report should not hold memory on every GPU
/// of the machine for the rest of the process.
pub fn status() -> GpuStatus {
    let driver = driver().map_err(KeopsError::reason);
    let compiler = if sim::on() {
        sim::compiler()
            .map(|cxx| format!("simulator (KEOPS_CUDA_SIMULATOR): kernels built by {cxx}"))
            .map_err(KeopsError::reason)
    } else {
        let max_major = driver.as_ref().ok().map(|d| d.version / 1000);
        Nvrtc::get(max_major)
            .map(|n| {
                let (major, minor) = n.version();
                format!("NVRTC {major}.{minor} ({})", n.path().display())
            })
            .map_err(KeopsError::reason)
    };
    let count = driver.as_ref().map_or(0, |d| d.devices);
    let describe = |id: usize| {
        if sim::on() {
            device(id).map(|d| Attributes {
                name: d.name.clone(),
                arch: d.arch,
                sms: d.sms,
                pools: d.pools,
            })
        } else {
            attributes(id)
        }
    };
    let devices = (0..count)
        .map(|id| {
            describe(id)
                .map(|a| {
                    let pools = if a.pools {
                        ""
                    } else {
                        ", no stream-ordered memory pool: synchronous allocation"
                    };
                    format!(
                        "GPU {id}: {} ({}, {} SMs{pools})",
                        a.name,
                        a.arch.sm(),
                        a.sms
                    )
                })
                .map_err(|e| format!("GPU {id}: {}", e.reason()))
        })
        .collect();
    GpuStatus {
        driver,
        compiler,
        devices,
        available: available(),
    }
}

/// A loaded module's kernels.
pub(crate) enum Kernels {
    /// Loaded by the driver.
    Cuda {
        reduce: sys::CUfunction,
        combine: sys::CUfunction,
        reduce_ranges: sys::CUfunction,
        _module: sys::CUmodule,
    },
    /// Built for the simulator.
    Sim(sim::Module),
}
// SAFETY: CUDA functions and modules are usable from any thread of the process once
// loaded; modules are never unloaded (they live as long as the primary context).
unsafe impl Send for Kernels {}
unsafe impl Sync for Kernels {}

/// A stream of one device: CUDA's, or the simulator's (synchronous: every operation is
/// done when its call returns).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    /// A `CUstream` of the device's primary context (null: the legacy default stream).
    Cuda {
        /// The stream.
        raw: sys::CUstream,
        /// Whether temporaries come from the device's stream-ordered pool (see
        /// [`Device::pools`]); if not, from `cuMemAlloc`, freed once the stream is done.
        pools: bool,
    },
    /// A simulated device.
    Sim(usize),
}

impl Stream {
    /// `bytes` of uninitialised device memory, allocated in stream order; an error
    /// says `what` it was for and its size.
    fn alloc(self, bytes: usize, what: &str) -> Result<u64> {
        let what = format!("{what} ({})", size_text(bytes));
        match self {
            // SAFETY: a fresh allocation, used on this stream only.
            Stream::Cuda { raw, pools: true } => {
                cu(unsafe { result::malloc_async(raw, bytes) }, &what)
            }
            // Synchronous: usable by any work queued after it returns.
            // SAFETY: a fresh allocation of at least one byte.
            Stream::Cuda { pools: false, .. } => cu(unsafe { result::malloc_sync(bytes) }, &what),
            Stream::Sim(d) => sim::alloc(d, bytes, &what),
        }
    }

    /// Frees `ptr` after the work queued before.
    ///
    /// # Safety
    /// `ptr` was allocated by `alloc` on this stream and is not used after this.
    unsafe fn free(self, ptr: u64) {
        match self {
            // A failure here (after an earlier error of the context) cannot be reported
            // and leaves nothing to undo.
            Stream::Cuda { raw, pools: true } => {
                let _ = result::free_async(ptr, raw);
            }
            // `cuMemFree` does not wait for queued work that reads the memory: the
            // stream does first.
            Stream::Cuda { raw, pools: false } => {
                let _ = sys::cuStreamSynchronize(raw);
                let _ = result::free_sync(ptr);
            }
            Stream::Sim(_) => sim::free(ptr),
        }
    }

    /// Copies `data` to `dst` in stream order. Pageable copies are staged before the
    /// call returns, so `data` may be dropped right after.
    ///
    /// # Safety
    /// `dst` has room for `data`.
    unsafe fn upload<T: Copy>(self, dst: u64, data: &[T], what: &str) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        match self {
            Stream::Cuda { raw, .. } => cu(result::memcpy_htod_async(dst, data, raw), what),
            Stream::Sim(_) => sim::write(dst, as_bytes(data)),
        }
    }

    /// Copies `out.len()` values from `src` once the stream's work is done.
    ///
    /// # Safety
    /// `src` holds `out.len()` values of `T` written by work on this stream.
    unsafe fn download<T: Copy>(self, src: u64, out: &mut [T]) -> Result<()> {
        let what = "copying the output back";
        match self {
            Stream::Cuda { raw, .. } => {
                if !out.is_empty() {
                    cu(result::memcpy_dtoh_async(out, src, raw), what)?;
                }
                cu(
                    sys::cuStreamSynchronize(raw).result(),
                    "running the reduction",
                )
            }
            Stream::Sim(_) if out.is_empty() => Ok(()),
            Stream::Sim(_) => sim::read(src, as_bytes_mut(out)),
        }
    }

    /// Launches kernel `which` of `k` (`params` as `cuLaunchKernel` takes them).
    ///
    /// # Safety
    /// `params` are the kernel's arguments; the memory they address lives until the
    /// stream's work is done.
    #[allow(clippy::too_many_arguments)]
    unsafe fn launch(
        self,
        k: &Kernels,
        which: Kernel,
        grid: (usize, usize, usize),
        block: usize,
        smem: usize,
        params: &mut [*mut c_void],
        what: &str,
    ) -> Result<()> {
        let dim = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let g = (dim(grid.0), dim(grid.1), dim(grid.2));
        match (self, k) {
            (
                Stream::Cuda { raw: s, .. },
                Kernels::Cuda {
                    reduce,
                    combine,
                    reduce_ranges,
                    ..
                },
            ) => {
                let f = match which {
                    Kernel::Reduce => *reduce,
                    Kernel::Combine => *combine,
                    Kernel::ReduceRanges => *reduce_ranges,
                };
                cu(
                    result::launch_kernel(f, g, (dim(block), 1, 1), dim(smem), s, params),
                    what,
                )
            }
            (Stream::Sim(_), Kernels::Sim(m)) => {
                sim::launch(m, which, g, dim(block), dim(smem), params)
                    .map_err(|e| KeopsError::Cuda(format!("{what}: {e}")))
            }
            _ => Err(KeopsError::Cuda(format!(
                "{what}: kernels and stream of different platforms"
            ))),
        }
    }
}

/// The bytes of a slice of plain numbers.
fn as_bytes<T: Copy>(data: &[T]) -> &[u8] {
    // SAFETY: `T` is a plain number type (f32, f64, i64, u8: no padding), read as bytes.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

/// The bytes of a slice of plain numbers, to be written.
fn as_bytes_mut<T: Copy>(data: &mut [T]) -> &mut [u8] {
    let len = std::mem::size_of_val(data);
    // SAFETY: as `as_bytes`; every byte pattern is a valid value of these types.
    unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), len) }
}

/// A stream made by the engine for one call.
pub(crate) struct OwnedStream {
    /// The stream.
    pub raw: Stream,
    _cuda: Option<Arc<CudaStream>>,
}

/// One GPU: its primary context and the kernels loaded on it.
pub struct Device {
    /// Its primary context (`None`: a simulated device).
    pub(crate) ctx: Option<Arc<CudaContext>>,
    /// Its ordinal.
    pub id: usize,
    /// Its architecture.
    pub arch: Arch,
    /// Number of multiprocessors.
    pub sms: usize,
    /// Its name.
    pub name: String,
    /// Whether its temporaries come from its stream-ordered memory pool
    /// (`cuMemAllocAsync`, freed in stream order without waiting). Where the device has
    /// no pools, or `KEOPS_CUDA_MEMORY_POOLS=0`, they come from `cuMemAlloc` and each
    /// is freed once its stream's work is done: as correct, but a call then waits for
    /// its stream before it returns. Simulated devices have pools unless the variable
    /// says otherwise.
    pub pools: bool,
    kernels: Mutex<HashMap<String, Arc<Kernels>>>,
}

/// Compiled kernels shared by every device and process (see [`cache`]); made, with its
/// folder, by the first kernel this process builds.
static CACHE: OnceLock<KernelCache> = OnceLock::new();

fn kernel_cache() -> &'static KernelCache {
    CACHE.get_or_init(|| KernelCache::new(cache::cubin_dir()))
}

/// The disk cache's folder of this process: fixed by the first GPU kernel it builds
/// (`KEOPS_CACHE_DIR` then), [`cache::cubin_dir`] until then.
pub fn cache_dir() -> Option<PathBuf> {
    match CACHE.get() {
        Some(c) => c.dir().map(Path::to_path_buf),
        None => cache::cubin_dir(),
    }
}

/// Empties the kernel cache of this process, in memory and on disk (see
/// [`KernelCache::clear`]); returns how many files were removed.
pub fn clear_cache() -> Result<usize> {
    let c = kernel_cache();
    c.clear()
        .map_err(|e| KeopsError::Cuda(format!("cannot empty the kernel cache {:?}: {e}", c.dir())))
}

/// The device with CUDA ordinal `id` (contexts are made once per process).
pub fn device(id: usize) -> Result<Arc<Device>> {
    static DEVICES: LazyLock<Mutex<HashMap<usize, Arc<Device>>>> = LazyLock::new(Default::default);
    let info = driver()?;
    if id >= info.devices {
        return Err(KeopsError::Option {
            name: "device_id".into(),
            msg: format!(
                "is {id} but this machine has {} CUDA device(s)",
                info.devices
            ),
        });
    }
    let mut devices = DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = devices.get(&id) {
        return Ok(d.clone());
    }
    let pools_allowed = pools_allowed_by_env()?;
    if sim::on() {
        let d = Arc::new(Device {
            ctx: None,
            id,
            arch: Arch { major: 9, minor: 0 },
            sms: sim::sms(id),
            name: format!("simulated GPU {id} (KEOPS_CUDA_SIMULATOR)"),
            pools: pools_allowed,
            kernels: Mutex::default(),
        });
        devices.insert(id, d.clone());
        return Ok(d);
    }
    let _current = KeepCurrent::new();
    let ctx = cu(CudaContext::new(id), "creating the context")?;
    // SAFETY: the engine makes no `CudaSlice`: its buffers are raw allocations, each
    // used on one stream in order. Tracking would only make each stream's creation
    // synchronise the whole device (cudarc does that for a context's first stream).
    unsafe { ctx.disable_event_tracking() };
    let keep = pool_keep_from_env()?;
    let a = attributes(id)?;
    let pools = a.pools && pools_allowed;
    // Never lower what another library asked for (PyTorch's cudaMallocAsync backend keeps
    // everything).
    if pools {
        if let Ok(pool) = default_pool(ctx.cu_device()) {
            if pool_threshold(pool).is_ok_and(|t| t < keep) {
                let _ = set_pool_threshold(pool, keep);
            }
        }
    }
    let d = Arc::new(Device {
        name: a.name,
        ctx: Some(ctx),
        id,
        arch: a.arch,
        sms: a.sms,
        pools,
        kernels: Mutex::default(),
    });
    devices.insert(id, d.clone());
    Ok(d)
}

/// What the engine reads of a device.
struct Attributes {
    name: String,
    arch: Arch,
    sms: usize,
    /// Whether it has stream-ordered memory pools (`cuMemAllocAsync`): not every vGPU
    /// slice, Windows TCC device or Maxwell GPU has them.
    pools: bool,
}

/// Device `id`'s attributes, read without a context (the driver is initialised).
fn attributes(id: usize) -> Result<Attributes> {
    use sys::CUdevice_attribute as A;
    let ordinal = i32::try_from(id).map_err(|_| no_gpu(format!("no CUDA device {id}")))?;
    let dev = cu(result::device::get(ordinal), "cuDeviceGet")?;
    // SAFETY: `dev` is a device handle of the initialised driver.
    let attr = |a| {
        cu(
            unsafe { result::device::get_attribute(dev, a) },
            "cuDeviceGetAttribute",
        )
    };
    let arch = Arch {
        major: attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? as u32,
        minor: attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)? as u32,
    };
    let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as usize;
    // A driver too old to know the attribute has no pools either.
    let pools = attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED).is_ok_and(|v| v != 0);
    let name = result::device::get_name(dev).unwrap_or_else(|_| format!("CUDA device {id}"));
    Ok(Attributes {
        name,
        arch,
        sms,
        pools,
    })
}

/// Bytes of freed device memory the stream-ordered pool of each device keeps mapped
/// between calls, unless `KEOPS_CUDA_POOL_KEEP` says otherwise. The driver's default,
/// 0, hands every temporary back at each synchronisation, so that the next call maps
/// memory again: a cost of the order of a small kernel's run time.
pub const DEFAULT_POOL_KEEP: u64 = 64 << 20;

/// `KEOPS_CUDA_POOL_KEEP` (bytes), or [`DEFAULT_POOL_KEEP`].
fn pool_keep_from_env() -> Result<u64> {
    parse_pool_keep(std::env::var("KEOPS_CUDA_POOL_KEEP").ok().as_deref())
}

fn parse_pool_keep(v: Option<&str>) -> Result<u64> {
    let keep = parse_env(
        "KEOPS_CUDA_POOL_KEEP",
        v,
        |t| t.parse().ok(),
        "a number of bytes",
    )?;
    Ok(keep.unwrap_or(DEFAULT_POOL_KEEP))
}

/// Whether `KEOPS_CUDA_MEMORY_POOLS` lets temporaries come from stream-ordered pools
/// where devices have them (unset or `1`: yes; `0`: no, `cuMemAlloc` instead).
fn pools_allowed_by_env() -> Result<bool> {
    parse_memory_pools(std::env::var("KEOPS_CUDA_MEMORY_POOLS").ok().as_deref())
}

fn parse_memory_pools(v: Option<&str>) -> Result<bool> {
    parse_switch(
        "KEOPS_CUDA_MEMORY_POOLS",
        v,
        "allocate with cuMemAlloc",
        "stream-ordered pools where the device has them, the default",
    )
}

/// An on/off environment variable `name`: unset, empty or `1` is on, `0` off; anything
/// else is an error that says what each value does, rather than a silent default.
fn parse_switch(name: &str, v: Option<&str>, off: &str, on: &str) -> Result<bool> {
    let switch = |t: &str| match t {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    };
    let expected = format!("0 ({off}) or 1 ({on})");
    Ok(parse_env(name, v, switch, &expected)?.unwrap_or(true))
}

fn default_pool(dev: sys::CUdevice) -> Result<sys::CUmemoryPool> {
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: writes one handle; the driver is loaded (a context exists).
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, dev) };
    cu(r.result(), "finding the device's memory pool").map(|()| pool)
}

fn pool_threshold(pool: sys::CUmemoryPool) -> Result<u64> {
    let mut v: u64 = 0;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    // SAFETY: the attribute is a u64, written once.
    let r = unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut v as *mut u64).cast()) };
    cu(r.result(), "reading the memory pool's release threshold").map(|()| v)
}

fn set_pool_threshold(pool: sys::CUmemoryPool, bytes: u64) -> Result<()> {
    let mut v = bytes;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    // SAFETY: the attribute is a u64, read once.
    let r = unsafe { sys::cuMemPoolSetAttribute(pool, attr, (&mut v as *mut u64).cast()) };
    cu(r.result(), "setting the memory pool's release threshold")
}

/// Device `id`'s default pool, the one the engine's temporaries come from (`None`: a
/// simulated device, or one whose temporaries do not come from a pool, see
/// [`Device::pools`]). The pool calls bind no context.
fn device_pool(id: usize) -> Result<Option<sys::CUmemoryPool>> {
    let d = device(id)?;
    d.ctx
        .as_ref()
        .filter(|_| d.pools)
        .map(|c| default_pool(c.cu_device()))
        .transpose()
}

/// How many bytes of freed memory device `id`'s default pool keeps mapped between
/// calls; 0 on the simulator and where temporaries do not come from a pool.
pub fn pool_keep(id: usize) -> Result<u64> {
    device_pool(id)?.map_or(Ok(0), pool_threshold)
}

/// Sets how many bytes of freed memory device `id`'s default pool keeps mapped between
/// calls (0: hand it all back at each synchronisation, the driver's default). The pool
/// is the process's: other users of stream-ordered allocation on the device share it.
/// Nothing to set on the simulator or where temporaries do not come from a pool.
pub fn set_pool_keep(id: usize, bytes: u64) -> Result<()> {
    device_pool(id)?.map_or(Ok(()), |pool| set_pool_threshold(pool, bytes))
}

impl Device {
    /// Makes the device's context current on this thread.
    pub(crate) fn bind(&self) -> Result<()> {
        match &self.ctx {
            Some(c) => cu(c.bind_to_thread(), "binding the context"),
            None => Ok(()),
        }
    }

    /// A new stream of the device.
    pub(crate) fn new_stream(&self) -> Result<OwnedStream> {
        match &self.ctx {
            Some(c) => {
                let s = cu(c.new_stream(), "creating a stream")?;
                Ok(OwnedStream {
                    raw: Stream::Cuda {
                        raw: s.cu_stream(),
                        pools: self.pools,
                    },
                    _cuda: Some(s),
                })
            }
            None => Ok(OwnedStream {
                raw: Stream::Sim(self.id),
                _cuda: None,
            }),
        }
    }

    /// The stream a caller gives as a raw `CUstream` (the simulator's, simulated).
    fn stream_of(&self, raw: u64) -> Stream {
        match self.ctx {
            Some(_) => Stream::Cuda {
                raw: raw as usize as sys::CUstream,
                pools: self.pools,
            },
            None => Stream::Sim(self.id),
        }
    }

    /// The kernels of `spec` with tiles of `tile` rows and `rows` output rows per thread,
    /// compiled (or taken from the cache) and loaded; with where the CUBIN came from.
    fn kernels(
        &self,
        spec: &KernelSpec,
        tile: usize,
        rows: usize,
    ) -> Result<(Arc<Kernels>, Origin)> {
        let src = kernel_source(spec, "keops", tile, rows);
        if self.ctx.is_none() {
            return self.sim_kernels(&src);
        }
        let info = driver()?;
        let nvrtc = Nvrtc::get(Some(info.version / 1000))?;
        let key = cache::key(&src.code, self.arch, nvrtc.version());
        if let Some(k) = self
            .kernels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok((k.clone(), Origin::Memory));
        }
        let (bin, origin) = kernel_cache().get_or_compile(&key, || {
            let supported = nvrtc.supported_archs()?;
            let arch = self.arch.major * 10 + self.arch.minor;
            if !supported.contains(&arch) {
                return Err(no_gpu(format!(
                    "{} is {} but NVRTC {}.{} ({}) compiles only for {supported:?}",
                    self.name,
                    self.arch.sm(),
                    nvrtc.version().0,
                    nvrtc.version().1,
                    nvrtc.path().display()
                )));
            }
            nvrtc
                .compile(&src.code, "keops_kernel.cu", self.arch, spec.fast_math)
                .map_err(|f| KeopsError::Compile {
                    source_path: kernel_cache()
                        .save_failed_source(&key, &src.code)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "(could not be saved)".into()),
                    log: f.log,
                })
        })?;
        self.bind()?;
        // SAFETY: `bin` is a CUBIN image, alive during the call (the driver copies it).
        let module = cu(
            unsafe { result::module::load_data(bin.as_ptr().cast::<c_void>()) },
            "loading the kernel",
        )?;
        let get = |name: &str| -> Result<sys::CUfunction> {
            let c = CString::new(name).map_err(|_| KeopsError::Cuda("kernel name".into()))?;
            // SAFETY: `module` was just loaded.
            cu(
                unsafe { result::module::get_function(module, c) },
                "cuModuleGetFunction",
            )
        };
        let k = Arc::new(Kernels::Cuda {
            reduce: get(&src.reduce)?,
            combine: get(&src.combine)?,
            reduce_ranges: get(&src.reduce_ranges)?,
            _module: module,
        });
        self.kernels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, k.clone());
        Ok((k, origin))
    }

    /// The simulator's build of `src`, made once per process and source.
    fn sim_kernels(&self, src: &super::kernel::KernelSource) -> Result<(Arc<Kernels>, Origin)> {
        static BUILT: LazyLock<Mutex<HashMap<String, Arc<Kernels>>>> =
            LazyLock::new(Default::default);
        let key = cache::key(&src.code, self.arch, (0, 0));
        if let Some(k) = BUILT.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok((k.clone(), Origin::Memory));
        }
        let k = Arc::new(Kernels::Sim(sim::load(&src.code, "keops")?));
        BUILT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, k.clone());
        Ok((k, Origin::Compiled))
    }
}

/// Device memory allocated and freed in the order of a stream: no synchronisation (on a
/// device without pools, see [`Device::pools`], the free waits for the stream), and
/// freed (after the work queued before it) on every path, errors included.
pub(crate) struct StreamBuf {
    /// The device address.
    pub ptr: u64,
    stream: Stream,
}

impl StreamBuf {
    /// `bytes` of uninitialised memory (at least one: the driver refuses empty ones).
    pub fn alloc(bytes: usize, stream: Stream, what: &str) -> Result<StreamBuf> {
        let ptr = stream.alloc(bytes.max(1), what)?;
        Ok(StreamBuf { ptr, stream })
    }

    /// A copy of `data`.
    pub fn upload<T: Copy>(data: &[T], stream: Stream, what: &str) -> Result<StreamBuf> {
        let b = Self::alloc(std::mem::size_of_val(data), stream, what)?;
        // SAFETY: `b` was sized for `data`.
        unsafe { stream.upload(b.ptr, data, what)? };
        Ok(b)
    }
}

impl Drop for StreamBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by `alloc` on this stream.
        unsafe { self.stream.free(self.ptr) };
    }
}

/// Copies `len` values from `src` to the host once the stream's work is done.
///
/// # Safety
/// `src` holds `len` values of `T` written by work on `stream`.
pub(crate) unsafe fn download<T: Copy + Default>(
    src: u64,
    len: usize,
    stream: Stream,
) -> Result<Vec<T>> {
    let mut out = crate::error::try_vec(len, T::default(), "the result on the host")?;
    stream.download(src, &mut out)?;
    Ok(out)
}

/// What the reduction kernel produces.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// Finalized outputs: values and indices (0 where the reduction has none).
    Outputs(u64, u64),
    /// The partial states of every chunk, `[batch][chunk][output row]`, not combined
    /// (one part of a multi-GPU reduction).
    States(u64),
}

/// One reduction to queue: arguments at device pointers laid out as `layout` says.
pub(crate) struct Call<'a> {
    pub layout: &'a Layout,
    pub ranges: Option<&'a Blocks>,
    /// One device pointer per argument (reduced-side ones may hold only a part).
    pub ptrs: &'a [u64],
    /// Reduced-side arguments hold rows `j_base..j_base + n_red` of the whole problem
    /// (indices are reported in the whole problem).
    pub j_base: usize,
    pub target: Target,
}

/// Queues `call` on `stream` (the device's context current): the argument table, the
/// reduction kernel (the block-sparse one with `ranges`), and with the 2D scheme the
/// combination of partial states; once per group of columns for a kernel by columns
/// ([`KernelSpec::by_columns`]). Returns without synchronising (where the device has
/// pools); temporaries are freed in stream order.
///
/// # Safety
/// Every pointer of `call` is memory of this device holding what `layout` says
/// (outputs: `batch * n_out` rows of the output dims; states: `batch * chunks * n_out`
/// states), alive until the queued work is done.
pub(crate) unsafe fn enqueue(
    k: &Kernels,
    spec: &KernelSpec,
    l: &Launch,
    call: &Call<'_>,
    stream: Stream,
) -> Result<()> {
    let layout = call.layout;
    let (n_out, n_red) = layout.sizes();
    let nbatch = layout.batch_len();
    let nargs = call.ptrs.len();
    if n_out == 0 || nbatch == 0 {
        return Ok(());
    }
    let (mut n_out_c, mut nbatch_c) = (
        kernel_int(n_out, "rows")?,
        kernel_int(nbatch, "batch size")?,
    );
    // A kernel by columns runs once per group of columns, the wide arguments and the
    // outputs moved to the group's first column (it reads their rows at the whole row's
    // stride); other kernels once, as one group.
    let starts = group_starts(spec);
    let wide = |a: usize| spec.columns.as_ref().is_some_and(|c| c.wide.contains(&a));
    let size = spec.ty.size() as u64;
    // The argument table: each group's pointers, then the batch offsets (the same for
    // every group).
    let mut table: Vec<i64> = Vec::with_capacity(nargs * (starts.len() + nbatch));
    for &start in &starts {
        table.extend(
            (call.ptrs.iter().enumerate())
                .map(|(a, &p)| (p + if wide(a) { start as u64 * size } else { 0 }) as i64),
        );
    }
    for b in 0..nbatch {
        table.extend((0..nargs).map(|a| layout.batch_offset(a, b) as i64));
    }
    let table = StreamBuf::upload(&table, stream, "copying the argument table")?;
    let args_of = |group: usize| table.ptr + 8 * (nargs * group) as u64;
    let mut boff = args_of(starts.len());

    if let Some(blocks) = call.ranges {
        let Target::Outputs(ov, oi) = call.target else {
            return Err(KeopsError::Option {
                name: "ranges".into(),
                msg: "block-sparse reductions run on one GPU".into(),
            });
        };
        // Rows in no block keep the value of an empty reduction (of whole rows).
        let whole = spec.columns.as_ref().map_or(&spec.spec, |c| &c.whole);
        let (v, i) = empty_outputs::<f64>(whole, nbatch * n_out);
        match spec.ty {
            CType::F32 => {
                let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                stream.upload(ov, &v, "filling the output")?;
            }
            CType::F64 => stream.upload(ov, &v, "filling the output")?,
        }
        stream.upload(oi, &i, "filling the output")?;
        let (task, red) = ranges_tasks(blocks, n_out, n_red, l.block * l.rows);
        if task.is_empty() {
            return Ok(());
        }
        let task_d = StreamBuf::upload(&task, stream, "copying the block tasks")?;
        let red_d = StreamBuf::upload(&red, stream, "copying the block ranges")?;
        for (group, &start) in starts.iter().enumerate() {
            let (mut tk, mut rd, mut args) = (task_d.ptr, red_d.ptr, args_of(group));
            let (mut ov, mut oi) = group_outputs(spec, (ov, oi), start);
            let mut params: Vec<*mut c_void> = vec![
                (&mut n_out_c as *mut i32).cast(),
                (&mut tk as *mut u64).cast(),
                (&mut rd as *mut u64).cast(),
                (&mut args as *mut u64).cast(),
                (&mut boff as *mut u64).cast(),
                (&mut ov as *mut u64).cast(),
                (&mut oi as *mut u64).cast(),
            ];
            stream.launch(
                k,
                Kernel::ReduceRanges,
                (task.len() / 5, 1, 1),
                l.block,
                l.smem,
                &mut params,
                "launching the block-sparse reduction",
            )?;
        }
        return Ok(());
    }

    let (mut n_red_c, mut chunk, mut j_base) = (n_red as i64, l.chunk as i64, call.j_base as i64);
    let nchunks = l.grid.1;
    // The 2D scheme's partial states, combined after each launch (freed in stream order;
    // the groups use them in turn). A multi-GPU part's states: one block per group.
    let mut own_part = None;
    let group_states = nbatch * nchunks * n_out * spec.state_bytes();
    let (outs, part, part_step) = match call.target {
        Target::Outputs(ov, oi) if l.scheme == Scheme::TwoD => {
            let p = StreamBuf::alloc(group_states, stream, "allocating partial states")?;
            let ptr = p.ptr;
            own_part = Some(p);
            ((ov, oi), ptr, 0)
        }
        Target::Outputs(ov, oi) => ((ov, oi), 0, 0),
        Target::States(p) => ((0, 0), p, group_states as u64),
    };
    for (group, &start) in starts.iter().enumerate() {
        let mut args = args_of(group);
        let (mut ov, mut oi) = group_outputs(spec, outs, start);
        let mut part = part + group as u64 * part_step;
        let mut params: Vec<*mut c_void> = vec![
            (&mut n_out_c as *mut i32).cast(),
            (&mut n_red_c as *mut i64).cast(),
            (&mut nbatch_c as *mut i32).cast(),
            (&mut chunk as *mut i64).cast(),
            (&mut j_base as *mut i64).cast(),
            (&mut args as *mut u64).cast(),
            (&mut boff as *mut u64).cast(),
            (&mut ov as *mut u64).cast(),
            (&mut oi as *mut u64).cast(),
            (&mut part as *mut u64).cast(),
        ];
        stream.launch(
            k,
            Kernel::Reduce,
            l.grid,
            l.block,
            l.smem,
            &mut params,
            "launching the reduction",
        )?;
        if let Some(p) = &own_part {
            combine(k, (n_out, nchunks, nbatch), p.ptr, (ov, oi), stream)?;
        }
    }
    Ok(())
}

/// The first column of each launch of `spec`'s kernel: its groups of columns
/// ([`KernelSpec::by_columns`]), or one launch of whole rows.
pub(crate) fn group_starts(spec: &KernelSpec) -> Vec<usize> {
    spec.columns.as_ref().map_or(vec![0], |c| c.starts())
}

/// The output pointers `(values, indices)` moved to column `start` of their rows.
pub(crate) fn group_outputs(spec: &KernelSpec, (ov, oi): (u64, u64), start: usize) -> (u64, u64) {
    let (dv, di) = spec.spec.output_dims();
    let start = start as u64;
    (
        ov + if dv > 0 {
            start * spec.ty.size() as u64
        } else {
            0
        },
        oi + if di > 0 { start * 8 } else { 0 },
    )
}

/// `v` as a kernel's `int` parameter, or an error naming `what` past 2^31.
fn kernel_int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| KeopsError::Arguments(format!("{what} ({v}) exceeds 2^31 on the GPU")))
}

/// Queues `{name}_combine`: the `nchunks` partial states of each of `nbatch * n_out`
/// rows at `part` (`[batch][chunk][row]`), combined in index order and finalized.
///
/// # Safety
/// As [`enqueue`].
pub(crate) unsafe fn combine(
    k: &Kernels,
    (n_out, nchunks, nbatch): (usize, usize, usize),
    part: u64,
    (ov, oi): (u64, u64),
    stream: Stream,
) -> Result<()> {
    let rows = nbatch * n_out;
    if rows == 0 {
        return Ok(());
    }
    let (mut n_out, mut nchunks, mut nbatch) = (
        kernel_int(n_out, "rows")?,
        kernel_int(nchunks, "chunks")?,
        kernel_int(nbatch, "batch size")?,
    );
    let (mut part, mut ov, mut oi) = (part, ov, oi);
    let mut params: Vec<*mut c_void> = vec![
        (&mut n_out as *mut i32).cast(),
        (&mut nchunks as *mut i32).cast(),
        (&mut nbatch as *mut i32).cast(),
        (&mut part as *mut u64).cast(),
        (&mut ov as *mut u64).cast(),
        (&mut oi as *mut u64).cast(),
    ];
    stream.launch(
        k,
        Kernel::Combine,
        (rows.div_ceil(256), 1, 1),
        256,
        0,
        &mut params,
        "launching the combination of partial states",
    )
}

/// The value of an empty reduction in each of `rows` rows: (values, indices).
fn empty_outputs<T: Element>(spec: &ReductionSpec, rows: usize) -> (Vec<T>, Vec<i64>) {
    let (v, i) = spec.empty_output();
    let v: Vec<T> = v.into_iter().map(T::from_f64).collect();
    (v.repeat(rows), i.repeat(rows))
}

/// The tasks of the block-sparse kernel (see `kernel_source`): each cluster of output
/// rows cut into blocks of `block` rows, with the cluster's reduced ranges (made local to
/// the batch entry) in `red`.
pub fn ranges_tasks(
    blocks: &crate::ranges::Blocks,
    n_out: usize,
    n_red: usize,
    block: usize,
) -> (Vec<i64>, Vec<i64>) {
    let (mut task, mut red) = (Vec::new(), Vec::new());
    for (k, r) in blocks.ranges.iter().enumerate() {
        if r.is_empty() {
            continue;
        }
        let b = r.start / n_out.max(1);
        let q0 = red.len() / 2;
        for q in blocks.reduced(k).iter().filter(|q| !q.is_empty()) {
            red.extend([(q.start - b * n_red) as i64, (q.end - b * n_red) as i64]);
        }
        let q1 = red.len() / 2;
        if q1 == q0 {
            continue; // nothing to reduce: the rows keep the empty value
        }
        let mut start = r.start - b * n_out;
        while start < r.end - b * n_out {
            let end = (start + block).min(r.end - b * n_out);
            task.extend([b as i64, start as i64, end as i64, q0 as i64, q1 as i64]);
            start = end;
        }
    }
    (task, red)
}

/// What a call reports about its kernel.
#[derive(Clone, Copy, Debug)]
pub struct CallInfo {
    /// The launch plan (of the first GPU for a multi-GPU call).
    pub launch: Launch,
    /// Where the kernel came from (compiled now, disk or memory cache).
    pub origin: Origin,
}

/// A device made current, with its kernels for a reduction and a launch plan.
pub(crate) struct Prepared {
    pub dev: Arc<Device>,
    pub spec: KernelSpec,
    pub launch: Launch,
    pub kernels: Arc<Kernels>,
    pub origin: Origin,
}

/// Device `id` bound to this thread, its kernels for `genred` and the launch plan for
/// `layout`. A wide output is computed a group of columns per launch where the formula
/// allows ([`KernelSpec::by_columns`]).
pub(crate) fn prepare<T: Element>(
    id: usize,
    genred: &Genred,
    layout: &Layout,
    opts: &Options,
) -> Result<Prepared> {
    let dev = device(id)?;
    let spec = KernelSpec::new::<T>(genred, opts);
    let spec = if env_columns()? {
        spec.by_columns()
    } else {
        spec
    };
    let (n_out, n_red) = layout.sizes();
    let max_rows = spec.max_rows();
    let shape = scheme::Shape {
        row_bytes: spec.tile_row_bytes(),
        max_rows,
        rows: match opts.gpu_rows {
            Some(r) => Some(r),
            None => env_rows()?.map(|r| r.clamp(1, max_rows)),
        },
        scheme: opts.gpu_scheme,
    };
    let l = scheme::plan(n_out, n_red, layout.batch_len(), shape, dev.sms)?;
    let (k, origin) = dev.kernels(&spec, l.tile, l.rows)?;
    dev.bind()?;
    Ok(Prepared {
        dev,
        spec,
        launch: l,
        kernels: k,
        origin,
    })
}

/// Whether wide outputs may be computed by columns: not with `KEOPS_GPU_COLUMNS=0`
/// (for benchmarks that compare them with whole rows).
fn env_columns() -> Result<bool> {
    parse_switch(
        "KEOPS_GPU_COLUMNS",
        std::env::var("KEOPS_GPU_COLUMNS").ok().as_deref(),
        "whole rows",
        "wide outputs a group of columns per launch, the default",
    )
}

/// Rows per thread from `KEOPS_GPU_ROWS` (for benchmarks that compare them), capped
/// by what each kernel allows rather than refused.
fn env_rows() -> Result<Option<usize>> {
    parse_rows(std::env::var("KEOPS_GPU_ROWS").ok().as_deref())
}

fn parse_rows(v: Option<&str>) -> Result<Option<usize>> {
    parse_env(
        "KEOPS_GPU_ROWS",
        v,
        |t| t.parse().ok().filter(|&r| r >= 1),
        "a whole number of output rows per thread, at least 1 (capped by what each kernel \
         allows), or unset for the planner's choice",
    )
}

/// Copies host arguments to the device (a one-value buffer for an empty one).
pub(crate) fn upload_args<T: Element>(
    args: &[crate::plan::Arg<'_, T>],
    stream: Stream,
) -> Result<Vec<StreamBuf>> {
    (args.iter().enumerate())
        .map(|(k, a)| StreamBuf::upload(a.data, stream, &format!("copying argument {k}")))
        .collect()
}

/// Runs a problem whose data is on the host: copies in, launches, copies back; over
/// several GPUs with `opts.multi_gpu`.
pub fn run<T: Element>(problem: &Problem<'_, T>, opts: &Options) -> Result<(Reduced<T>, CallInfo)> {
    let _current = KeepCurrent::new();
    if let Some(ids) = super::multi::devices(&opts.multi_gpu)? {
        if ids.len() > 1 {
            return super::multi::run(problem, opts, &ids);
        }
        let opts = Options {
            device_id: ids[0],
            multi_gpu: MultiGpu::Off,
            ..opts.clone()
        };
        return run(problem, &opts);
    }
    let genred = problem.genred;
    let layout = &problem.layout;
    let Prepared {
        dev,
        spec,
        launch: l,
        kernels: k,
        origin,
    } = prepare::<T>(opts.device_id, genred, layout, opts)?;
    let stream = dev.new_stream()?;
    let s = stream.raw;
    let bufs = upload_args(&problem.args, s)?;
    let ptrs: Vec<u64> = bufs.iter().map(|b| b.ptr).collect();
    let out = OutputBufs::alloc(problem, s)?;
    let call = Call {
        layout,
        ranges: problem.ranges,
        ptrs: &ptrs,
        j_base: 0,
        target: out.target(),
    };
    // SAFETY: the buffers were sized from the same problem, on this device, and live
    // until the download has synchronised the stream.
    unsafe { enqueue(&k, &spec, &l, &call, s)? };
    Ok((out.download(problem, s)?, CallInfo { launch: l, origin }))
}

/// Device buffers for a problem's outputs (values and indices), on one stream.
pub(crate) struct OutputBufs {
    values: StreamBuf,
    indices: StreamBuf,
    dims: (usize, usize),
    rows: usize,
}

impl OutputBufs {
    /// Uninitialised outputs for `problem` (the kernels write every row).
    pub fn alloc<T: Element>(problem: &Problem<'_, T>, s: Stream) -> Result<Self> {
        let (dv, di) = problem.genred.spec().output_dims();
        let rows = problem.batch_len() * problem.sizes().0;
        let size = std::mem::size_of::<T>();
        Ok(OutputBufs {
            values: StreamBuf::alloc(rows * dv * size, s, "allocating the output")?,
            indices: StreamBuf::alloc(rows * di * 8, s, "allocating the output")?,
            dims: (dv, di),
            rows,
        })
    }

    /// The output addresses (0 for one the reduction does not produce).
    pub fn pointers(&self) -> (u64, u64) {
        let (dv, di) = self.dims;
        (
            if dv > 0 { self.values.ptr } else { 0 },
            if di > 0 { self.indices.ptr } else { 0 },
        )
    }

    /// The kernel's target: these outputs.
    pub fn target(&self) -> Target {
        let (v, i) = self.pointers();
        Target::Outputs(v, i)
    }

    /// The outputs on the host, once the stream's work is done.
    pub fn download<T: Element>(&self, problem: &Problem<'_, T>, s: Stream) -> Result<Reduced<T>> {
        let (dv, di) = self.dims;
        // SAFETY: the buffers hold these many values, written by the work on `s`.
        let (values, indices) = unsafe {
            (
                download::<T>(self.values.ptr, self.rows * dv, s)?,
                download::<i64>(self.indices.ptr, self.rows * di, s)?,
            )
        };
        Ok(Reduced::assemble(
            values,
            indices,
            problem.output_shapes(),
            self.dims,
        ))
    }
}

/// Memory of one GPU (a simulated one too), for the arrays of [`run_in_place`] in
/// programs that use no other CUDA library. Copies wait for the device's work, so the
/// data is ready for any stream and results are read once written.
pub struct DeviceBuffer {
    ptr: u64,
    bytes: usize,
    dev: Arc<Device>,
}

impl DeviceBuffer {
    /// `bytes` of uninitialised memory of device `id`.
    pub fn alloc(id: usize, bytes: usize) -> Result<Self> {
        let _current = KeepCurrent::new();
        let dev = device(id)?;
        let ptr = match dev.ctx {
            Some(_) => {
                dev.bind()?;
                // SAFETY: a fresh allocation of at least one byte.
                cu(
                    unsafe { result::malloc_sync(bytes.max(1)) },
                    &format!("allocating device memory ({})", size_text(bytes)),
                )?
            }
            None => Stream::Sim(id).alloc(bytes, "allocating device memory")?,
        };
        Ok(DeviceBuffer { ptr, bytes, dev })
    }

    /// A copy of `data` on device `id`.
    pub fn from_slice<T: Copy>(id: usize, data: &[T]) -> Result<Self> {
        let b = Self::alloc(id, std::mem::size_of_val(data))?;
        b.write(data)?;
        Ok(b)
    }

    /// Copies `data` to the start of the buffer, once the device's work is done.
    pub fn write<T: Copy>(&self, data: &[T]) -> Result<()> {
        let bytes = std::mem::size_of_val(data);
        self.fits(bytes)?;
        let _current = KeepCurrent::new();
        match self.dev.ctx {
            Some(_) if bytes > 0 => {
                self.sync()?;
                // SAFETY: the buffer holds `bytes`; the copy is done when `sync` returns.
                cu(
                    unsafe { result::memcpy_htod_sync(self.ptr, data) },
                    "copying to the device",
                )?;
                self.sync()
            }
            Some(_) => Ok(()),
            // SAFETY: the buffer holds `bytes`; simulated streams are synchronous.
            None => unsafe {
                Stream::Sim(self.dev.id).upload(self.ptr, data, "copying to the device")
            },
        }
    }

    /// The first `len` values of the buffer, once the device's work is done.
    pub fn to_vec<T: Copy + Default>(&self, len: usize) -> Result<Vec<T>> {
        self.fits(len * std::mem::size_of::<T>())?;
        let mut out = vec![T::default(); len];
        if len == 0 {
            return Ok(out);
        }
        let _current = KeepCurrent::new();
        match self.dev.ctx {
            Some(_) => {
                self.sync()?;
                // SAFETY: the buffer holds `len` values; no work on the device is left.
                cu(
                    unsafe { result::memcpy_dtoh_sync(&mut out, self.ptr) },
                    "copying from the device",
                )?;
            }
            // SAFETY: the buffer holds `len` values; simulated streams are synchronous.
            None => unsafe { Stream::Sim(self.dev.id).download(self.ptr, &mut out)? },
        }
        Ok(out)
    }

    /// The device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The size in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// The device's ordinal.
    pub fn device(&self) -> usize {
        self.dev.id
    }

    fn fits(&self, bytes: usize) -> Result<()> {
        if bytes > self.bytes {
            return Err(KeopsError::Arguments(format!(
                "{bytes} bytes do not fit in a device buffer of {}",
                self.bytes
            )));
        }
        Ok(())
    }

    /// Waits for every stream of the device.
    fn sync(&self) -> Result<()> {
        match &self.dev.ctx {
            Some(c) => cu(c.synchronize(), "waiting for the device"),
            None => Ok(()),
        }
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        match self.dev.ctx {
            // A failure (after an earlier error of the context) cannot be reported and
            // leaves nothing to undo; the free waits for the work using the memory.
            Some(_) => {
                let _current = KeepCurrent::new();
                if self.dev.bind().is_ok() {
                    // SAFETY: allocated by `alloc`, not used after this.
                    let _ = unsafe { result::free_sync(self.ptr) };
                }
            }
            // SAFETY: allocated by `alloc`, not used after this.
            None => unsafe { Stream::Sim(self.dev.id).free(self.ptr) },
        }
    }
}

/// An array already in GPU memory (a PyTorch CUDA tensor): its address, shape and
/// strides in elements (rows contiguous, see [`Layout::with_strides`]).
#[derive(Clone, Debug)]
pub struct DeviceArg {
    /// Device address of element `[0, ..., 0]`.
    pub ptr: u64,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub strides: Vec<usize>,
}

/// Where a reduction on device data writes: contiguous arrays of the shapes
/// [`Layout::output_shapes`] gives (0 for one the reduction does not produce).
#[derive(Clone, Copy, Debug)]
pub struct DeviceOutputs {
    /// Device address of the values.
    pub values: u64,
    /// Device address of the indices (`i64`).
    pub indices: u64,
}

/// Where `ptr` lives: `Some(device ordinal)`, or `None` for memory the driver does not
/// know (host memory, a freed or invented address). Any other driver error (one left by
/// earlier failed work, say) is returned as it is, not taken for a bad address.
fn pointer_device(ptr: u64) -> Result<Option<usize>> {
    if sim::on() {
        return Ok(sim::device_of(ptr));
    }
    let mut ord: i32 = -1;
    // SAFETY: writes one int; the driver validates `ptr`.
    let r = unsafe {
        sys::cuPointerGetAttribute(
            (&mut ord as *mut i32).cast(),
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            ptr,
        )
    };
    match r {
        sys::CUresult::CUDA_ERROR_INVALID_VALUE => Ok(None),
        r => cu(r.result(), "asking where an array lives").map(|()| usize::try_from(ord).ok()),
    }
}

/// Checks that a non-empty array at `ptr` is memory of device `dev`.
fn check_pointer(ptr: u64, elements: usize, dev: usize, what: &str) -> Result<()> {
    if elements == 0 {
        return Ok(());
    }
    match pointer_device(ptr)? {
        Some(d) if d == dev => Ok(()),
        Some(d) => Err(KeopsError::Arguments(format!(
            "{what} is on cuda:{d} but the reduction runs on cuda:{dev}"
        ))),
        None => Err(KeopsError::Arguments(format!(
            "{what} (address {ptr:#x}) is not CUDA device memory"
        ))),
    }
}

/// Runs `genred` on arrays already in GPU memory, on the caller's `stream` (a
/// `CUstream` of device `opts.device_id`'s primary context, e.g. PyTorch's current
/// stream; 0 for the legacy default stream), writing into `out`. Returns once the work
/// is queued: no copy of the data and no synchronisation (temporaries are allocated and
/// freed in stream order; on a device without pools, see [`Device::pools`], the call
/// waits for the stream before it frees them). Every pointer is checked to be memory of that device.
///
/// # Safety
/// Each `args[k]` holds the elements its shape and strides address and `out` the
/// output arrays, all alive and not written by other work until the stream reaches
/// this reduction's end.
pub unsafe fn run_in_place<T: Element>(
    genred: &Genred,
    args: &[DeviceArg],
    out: DeviceOutputs,
    stream: u64,
    opts: &Options,
) -> Result<CallInfo> {
    let _current = KeepCurrent::new();
    if opts.multi_gpu != MultiGpu::Off {
        return Err(KeopsError::Option {
            name: "multi_gpu".into(),
            msg: "splits host data over GPUs; arrays already on a GPU are reduced there".into(),
        });
    }
    let shapes: Vec<&[usize]> = args.iter().map(|a| a.shape.as_slice()).collect();
    let strides: Vec<&[usize]> = args.iter().map(|a| a.strides.as_slice()).collect();
    let layout = Layout::with_strides(genred, &shapes, &strides)?;
    let ranges = match &opts.ranges {
        Some(r) => {
            r.check(layout.n_i, layout.n_j, layout.batch_len())?;
            Some(r.for_axis(genred.axis()))
        }
        None => None,
    };
    let Prepared {
        dev,
        spec,
        launch: l,
        kernels: k,
        origin,
    } = prepare::<T>(opts.device_id, genred, &layout, opts)?;
    let id = opts.device_id;
    for (i, a) in args.iter().enumerate() {
        let n = a.shape.iter().product::<usize>();
        check_pointer(a.ptr, n, id, &format!("argument {i}"))?;
    }
    let (dv, di) = genred.spec().output_dims();
    let rows = layout.batch_len() * layout.sizes().0;
    let outs = (
        if dv > 0 { out.values } else { 0 },
        if di > 0 { out.indices } else { 0 },
    );
    check_pointer(outs.0, rows * dv, id, "the values output")?;
    check_pointer(outs.1, rows * di, id, "the indices output")?;
    let ptrs: Vec<u64> = args.iter().map(|a| a.ptr).collect();
    let call = Call {
        layout: &layout,
        ranges,
        ptrs: &ptrs,
        j_base: 0,
        target: Target::Outputs(outs.0, outs.1),
    };
    let stream = dev.stream_of(stream);
    refuse_capture(stream)?;
    enqueue(&k, &spec, &l, &call, stream)?;
    Ok(CallInfo { launch: l, origin })
}

/// An error if `stream` is being captured into a CUDA graph (`torch.cuda.graph`): a
/// reduction copies small tables from host memory that it frees on return, so a replay
/// of the graph would read freed memory.
fn refuse_capture(stream: Stream) -> Result<()> {
    let Stream::Cuda { raw: s, .. } = stream else {
        return Ok(());
    };
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: writes one enum; `s` is a stream of the bound context (or the legacy one).
    cu(
        unsafe { sys::cuStreamIsCapturing(s, &mut status) }.result(),
        "asking whether the stream is captured",
    )?;
    if status == sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
        return Ok(());
    }
    Err(KeopsError::Arguments(
        "the stream is being captured into a CUDA graph (torch.cuda.graph), which keops \
         reductions do not support: they copy small tables from host memory on each call; \
         run the reduction outside the captured region"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::{
        parse_memory_pools, parse_pool_keep, parse_rows, parse_switch, ranges_tasks,
        DEFAULT_POOL_KEEP,
    };
    use crate::ranges::Blocks;

    #[test]
    fn pool_keep_reads_bytes_or_says_what_is_wrong() {
        assert_eq!(parse_pool_keep(None).unwrap(), DEFAULT_POOL_KEEP);
        assert_eq!(parse_pool_keep(Some(" ")).unwrap(), DEFAULT_POOL_KEEP);
        assert_eq!(parse_pool_keep(Some("0")).unwrap(), 0);
        assert_eq!(parse_pool_keep(Some(" 1048576 ")).unwrap(), 1 << 20);
        let e = parse_pool_keep(Some("64M")).unwrap_err().to_string();
        assert!(
            e.contains("KEOPS_CUDA_POOL_KEEP") && e.contains("'64M'"),
            "{e}"
        );
    }

    #[test]
    fn memory_pools_are_used_unless_the_variable_says_0() {
        assert!(parse_memory_pools(None).unwrap());
        assert!(parse_memory_pools(Some("")).unwrap());
        assert!(parse_memory_pools(Some(" 1")).unwrap());
        assert!(!parse_memory_pools(Some("0 ")).unwrap());
        let e = parse_memory_pools(Some("off")).unwrap_err().to_string();
        assert!(
            e.contains("KEOPS_CUDA_MEMORY_POOLS")
                && e.contains("'off'")
                && e.contains("cuMemAlloc"),
            "{e}"
        );
    }

    #[test]
    fn tuning_variables_refuse_what_they_do_not_understand() {
        assert_eq!(parse_rows(None).unwrap(), None);
        assert_eq!(parse_rows(Some(" ")).unwrap(), None);
        assert_eq!(parse_rows(Some(" 4")).unwrap(), Some(4));
        for bad in ["0", "four", "-1", "2.5"] {
            let e = parse_rows(Some(bad)).unwrap_err().to_string();
            assert!(
                e.contains("KEOPS_GPU_ROWS") && e.contains(&format!("'{bad}'")),
                "{e}"
            );
        }
        assert!(!parse_switch("KEOPS_GPU_COLUMNS", Some("0"), "a", "b").unwrap());
        let e = parse_switch("KEOPS_GPU_COLUMNS", Some("no"), "whole rows", "b")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("KEOPS_GPU_COLUMNS") && e.contains("'no'") && e.contains("whole rows"),
            "{e}"
        );
    }

    #[test]
    fn block_tasks_cut_clusters_into_blocks_of_their_batch_entry() {
        // Two batch entries of 10 output rows and 8 reduced rows.
        let blocks = Blocks {
            ranges: vec![0..7, 7..10, 10..20],
            slices: vec![2, 2, 3],
            redranges: vec![0..3, 5..8, 8..16],
        };
        let (task, red) = ranges_tasks(&blocks, 10, 8, 4);
        // Cluster 0: rows 0..4, 4..7 over ranges 0 and 1; cluster 1 has nothing to
        // reduce; cluster 2 (entry 1): rows 0..4, 4..8, 8..10 over range 2, made local.
        assert_eq!(
            task,
            vec![
                0, 0, 4, 0, 2, 0, 4, 7, 0, 2, //
                1, 0, 4, 2, 3, 1, 4, 8, 2, 3, 1, 8, 10, 2, 3
            ]
        );
        assert_eq!(red, vec![0, 3, 5, 8, 0, 8]);
    }
}
