//! The device side: the CUDA driver (loaded at run time through `cudarc`), devices,
//! compiled modules and launches.
//!
//! Every entry first checks that `libcuda` can be loaded ([`driver`]): cudarc panics
//! when a library is absent, so nothing reaches it before that check. Launches take raw
//! device pointers and a stream, so that data already on the GPU (PyTorch CUDA tensors)
//! is used in place; [`run`] is the host-data path built on them (copy in, launch, copy
//! back).

use super::cache::{self, KernelCache, Origin};
use super::kernel::{kernel_source, KernelSpec};
use super::nvrtc::{Arch, Nvrtc};
use super::scheme::{self, Launch, Scheme};
use crate::error::{KeopsError, Result};
use crate::plan::{Element, Options, Problem, Reduced};
use cudarc::driver::{result, sys, CudaContext, DevicePtr, DriverError};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

/// What the driver reports.
#[derive(Clone, Copy, Debug)]
pub struct DriverInfo {
    /// CUDA version of the driver, e.g. 12080.
    pub version: i32,
    /// Number of visible devices.
    pub devices: usize,
}

fn cu<T>(r: std::result::Result<T, DriverError>, what: &str) -> Result<T> {
    r.map_err(|e| {
        let text = e
            .error_string()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{e:?}"));
        KeopsError::Cuda(format!("{what}: {text} ({:?})", e.0))
    })
}

fn no_gpu(msg: impl Into<String>) -> KeopsError {
    KeopsError::Backend {
        backend: "GPU".into(),
        msg: msg.into(),
    }
}

/// The driver, initialised once; an error (never a panic) where there is none.
pub fn driver() -> Result<DriverInfo> {
    static INFO: OnceLock<std::result::Result<DriverInfo, String>> = OnceLock::new();
    INFO.get_or_init(|| {
        // SAFETY: only tries to open the library.
        if !unsafe { sys::is_culib_present() } {
            return Err("no CUDA driver (libcuda.so) was found on this machine".into());
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

/// Whether a GPU reduction can run here: a driver, a device and NVRTC.
pub fn available() -> bool {
    driver().is_ok_and(|d| Nvrtc::get(Some(d.version / 1000)).is_ok())
}

/// A loaded module's two kernels.
struct Kernels {
    reduce: sys::CUfunction,
    combine: sys::CUfunction,
    reduce_ranges: sys::CUfunction,
    _module: sys::CUmodule,
}
// SAFETY: CUDA functions and modules are usable from any thread of the process once
// loaded; modules are never unloaded (they live as long as the primary context).
unsafe impl Send for Kernels {}
unsafe impl Sync for Kernels {}

/// One GPU: its primary context and the kernels loaded on it.
pub struct Device {
    ctx: Arc<CudaContext>,
    /// Its architecture.
    pub arch: Arch,
    /// Number of multiprocessors.
    pub sms: usize,
    /// Its name.
    pub name: String,
    kernels: Mutex<HashMap<String, Arc<Kernels>>>,
}

/// Compiled kernels shared by every device and process (see [`cache`]).
static CACHE: LazyLock<KernelCache> =
    LazyLock::new(|| KernelCache::new(cache::default_dir().map(|d| d.join("cubin"))));

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
    let ctx = cu(CudaContext::new(id), "creating the context")?;
    let (major, minor) = cu(ctx.compute_capability(), "cuDeviceGetAttribute")?;
    let sms = cu(
        ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        "cuDeviceGetAttribute",
    )?;
    let d = Arc::new(Device {
        name: ctx.name().unwrap_or_else(|_| format!("CUDA device {id}")),
        ctx,
        arch: Arch {
            major: major as u32,
            minor: minor as u32,
        },
        sms: sms.max(1) as usize,
        kernels: Mutex::default(),
    });
    devices.insert(id, d.clone());
    Ok(d)
}

impl Device {
    /// The kernels of `spec` with tiles of `tile` rows, compiled (or taken from the
    /// cache) and loaded; with where the CUBIN came from.
    fn kernels(&self, spec: &KernelSpec, tile: usize) -> Result<(Arc<Kernels>, Origin)> {
        let src = kernel_source(spec, "keops", tile);
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
        let (bin, origin) = CACHE.get_or_compile(&key, || {
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
                .compile(&src.code, "keops_kernel.cu", self.arch)
                .map_err(|f| KeopsError::Compile {
                    source_path: CACHE
                        .save_failed_source(&key, &src.code)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "(could not be saved)".into()),
                    log: f.log,
                })
        })?;
        cu(self.ctx.bind_to_thread(), "binding the context")?;
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
        let k = Arc::new(Kernels {
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
}

/// The sizes of a launch.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Output rows per batch entry.
    pub n_out: usize,
    /// Reduced rows.
    pub n_red: usize,
    /// Batch entries.
    pub nbatch: usize,
}

/// Launches a reduction on device data, on `stream`, without synchronising.
///
/// # Safety
/// `table` points to `nargs` device pointers (as `u64`) followed by the
/// `nbatch * nargs` batch offsets (`i64`, in elements); every argument holds the rows
/// its shape says; `out_v`/`out_i` hold `nbatch * n_out` rows of the output dims (or
/// are 0 where the reduction has none); all of them on the device of `dev`.
#[allow(clippy::too_many_arguments)]
unsafe fn launch(
    k: &Kernels,
    spec: &KernelSpec,
    l: &Launch,
    g: Geometry,
    nargs: usize,
    table: u64,
    out_v: u64,
    out_i: u64,
    stream: sys::CUstream,
) -> Result<()> {
    if g.n_out == 0 || g.nbatch == 0 {
        return Ok(());
    }
    let as_i32 = |v: usize, what: &str| {
        i32::try_from(v)
            .map_err(|_| KeopsError::Arguments(format!("{what} ({v}) exceeds 2^31 on the GPU")))
    };
    let (mut n_out, mut nbatch) = (as_i32(g.n_out, "rows")?, as_i32(g.nbatch, "batch size")?);
    let (mut n_red, mut chunk, mut j_base) = (g.n_red as i64, l.chunk as i64, 0i64);
    let (mut args, mut boff) = (table, table + 8 * nargs as u64);
    let (mut ov, mut oi) = (out_v, out_i);
    let nchunks = l.grid.1;
    let part_bytes = g.nbatch * nchunks * g.n_out * spec.state_bytes();
    let mut part: u64 = if l.scheme == Scheme::TwoD {
        cu(
            result::malloc_async(stream, part_bytes.max(1)),
            "allocating partial states",
        )?
    } else {
        0
    };
    let mut params: Vec<*mut c_void> = vec![
        (&mut n_out as *mut i32).cast(),
        (&mut n_red as *mut i64).cast(),
        (&mut nbatch as *mut i32).cast(),
        (&mut chunk as *mut i64).cast(),
        (&mut j_base as *mut i64).cast(),
        (&mut args as *mut u64).cast(),
        (&mut boff as *mut u64).cast(),
        (&mut ov as *mut u64).cast(),
        (&mut oi as *mut u64).cast(),
        (&mut part as *mut u64).cast(),
    ];
    let dim = |v: usize| v as u32;
    let r = cu(
        result::launch_kernel(
            k.reduce,
            (dim(l.grid.0), dim(l.grid.1), dim(l.grid.2)),
            (dim(l.block), 1, 1),
            dim(l.smem),
            stream,
            &mut params,
        ),
        "launching the reduction",
    );
    if r.is_ok() && l.scheme == Scheme::TwoD {
        let mut nchunks = nchunks as i32;
        let mut params: Vec<*mut c_void> = vec![
            (&mut n_out as *mut i32).cast(),
            (&mut nchunks as *mut i32).cast(),
            (&mut nbatch as *mut i32).cast(),
            (&mut part as *mut u64).cast(),
            (&mut ov as *mut u64).cast(),
            (&mut oi as *mut u64).cast(),
        ];
        let rows = g.nbatch * g.n_out;
        cu(
            result::launch_kernel(
                k.combine,
                (dim(rows.div_ceil(256)), 1, 1),
                (256, 1, 1),
                0,
                stream,
                &mut params,
            ),
            "launching the combination of partial states",
        )?;
    }
    if part != 0 {
        cu(result::free_async(part, stream), "freeing partial states")?;
    }
    r
}

/// Host outputs holding the value of an empty reduction in each of `rows` rows.
fn empty_outputs<T: Element>(
    spec: &crate::reduction::ReductionSpec,
    rows: usize,
) -> (Vec<T>, Vec<i64>) {
    let (v, i) = spec.empty_output();
    let v: Vec<T> = v.into_iter().map(T::from_f64).collect();
    let mut out_v = v.repeat(rows);
    let mut out_i = i.repeat(rows);
    // The driver refuses empty allocations.
    out_v.resize(out_v.len().max(1), T::ZERO);
    out_i.resize(out_i.len().max(1), 0);
    (out_v, out_i)
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

/// Launches the block-sparse kernel: `tasks = (count, task pointer, ranges pointer)`,
/// `table = (argument pointers, batch offsets)`, `outs = (values, indices)`.
///
/// # Safety
/// As [`launch`]; the tasks and ranges are those of [`ranges_tasks`] for this problem.
unsafe fn launch_ranges(
    k: &Kernels,
    l: &Launch,
    n_out: usize,
    tasks: (usize, u64, u64),
    table: (u64, u64),
    outs: (u64, u64),
    stream: sys::CUstream,
) -> Result<()> {
    let mut n_out = i32::try_from(n_out)
        .map_err(|_| KeopsError::Arguments(format!("rows ({n_out}) exceed 2^31 on the GPU")))?;
    let (mut tk, mut rd) = (tasks.1, tasks.2);
    let (mut args, mut boff) = table;
    let (mut ov, mut oi) = outs;
    let mut params: Vec<*mut c_void> = vec![
        (&mut n_out as *mut i32).cast(),
        (&mut tk as *mut u64).cast(),
        (&mut rd as *mut u64).cast(),
        (&mut args as *mut u64).cast(),
        (&mut boff as *mut u64).cast(),
        (&mut ov as *mut u64).cast(),
        (&mut oi as *mut u64).cast(),
    ];
    cu(
        result::launch_kernel(
            k.reduce_ranges,
            (tasks.0 as u32, 1, 1),
            (l.block as u32, 1, 1),
            l.smem as u32,
            stream,
            &mut params,
        ),
        "launching the block-sparse reduction",
    )
}

/// What a call reports about its kernel.
#[derive(Clone, Copy, Debug)]
pub struct CallInfo {
    /// The launch plan.
    pub launch: Launch,
    /// Where the kernel came from (compiled now, disk or memory cache).
    pub origin: Origin,
}

/// Runs a problem whose data is on the host: copies in, launches, copies back.
pub fn run<T: Element>(problem: &Problem<'_, T>, opts: &Options) -> Result<(Reduced<T>, CallInfo)> {
    let dev = device(opts.device_id)?;
    let genred = problem.genred;
    let spec = KernelSpec::new::<T>(genred, opts);
    let (n_out, n_red) = problem.sizes();
    let nbatch = problem.batch_len();
    let l = scheme::plan(
        n_out,
        n_red,
        nbatch,
        spec.tile_row_bytes(),
        dev.sms,
        opts.gpu_scheme,
    )?;
    let (k, origin) = dev.kernels(&spec, l.tile)?;
    let stream = cu(dev.ctx.new_stream(), "creating a stream")?;
    let nargs = problem.args.len();
    // Empty arrays still get a (one-value) buffer: the driver refuses empty allocations.
    let one = [T::ZERO];
    let bufs = problem
        .args
        .iter()
        .map(|a| {
            let data = if a.data.is_empty() { &one[..] } else { a.data };
            cu(stream.clone_htod(data), "copying an argument")
        })
        .collect::<Result<Vec<_>>>()?;
    let ptrs: Vec<_> = bufs.iter().map(|b| b.device_ptr(&stream)).collect();
    let mut table: Vec<i64> = ptrs.iter().map(|p| p.0 as i64).collect();
    for b in 0..nbatch {
        table.extend((0..nargs).map(|k| problem.batch_offset(k, b) as i64));
    }
    let table = cu(stream.clone_htod(&table), "copying the argument table")?;
    let (dv, di) = genred.spec().output_dims();
    let rows = nbatch * n_out;
    let (out_v, out_i) = match problem.ranges {
        // Rows in no block keep the value of an empty reduction.
        Some(_) => {
            let (v, i) = empty_outputs::<T>(genred.spec(), rows);
            (
                cu(stream.clone_htod(&v), "copying the output")?,
                cu(stream.clone_htod(&i), "copying the output")?,
            )
        }
        None => (
            cu(
                stream.alloc_zeros::<T>((rows * dv).max(1)),
                "allocating the output",
            )?,
            cu(
                stream.alloc_zeros::<i64>((rows * di).max(1)),
                "allocating the output",
            )?,
        ),
    };
    // Device buffers of the block-sparse tasks, alive until the stream is synchronised.
    let mut task_bufs = Vec::new();
    if let Some(blocks) = problem.ranges {
        let (task, red) = ranges_tasks(blocks, n_out, n_red, l.block);
        if !task.is_empty() {
            task_bufs.push(cu(stream.clone_htod(&task), "copying the block tasks")?);
            task_bufs.push(cu(stream.clone_htod(&red), "copying the block ranges")?);
            let (task_d, red_d) = (&task_bufs[0], &task_bufs[1]);
            let t = table.device_ptr(&stream);
            let v = out_v.device_ptr(&stream);
            let i = out_i.device_ptr(&stream);
            let (tk, rd) = (task_d.device_ptr(&stream), red_d.device_ptr(&stream));
            let ptr = |p: sys::CUdeviceptr, used: bool| if used { p } else { 0 };
            // SAFETY: tasks and ranges index rows of the problem's arguments (checked by
            // `Ranges::check`); table and outputs were sized from the same problem.
            unsafe {
                launch_ranges(
                    &k,
                    &l,
                    n_out,
                    (task.len() / 5, tk.0, rd.0),
                    (t.0, t.0 + 8 * nargs as u64),
                    (ptr(v.0, dv > 0), ptr(i.0, di > 0)),
                    stream.cu_stream(),
                )?;
            }
        }
    } else {
        let t = table.device_ptr(&stream);
        let v = out_v.device_ptr(&stream);
        let i = out_i.device_ptr(&stream);
        let ptr = |p: sys::CUdeviceptr, used: bool| if used { p } else { 0 };
        // SAFETY: the table and outputs were sized above from the same problem.
        unsafe {
            launch(
                &k,
                &spec,
                &l,
                Geometry {
                    n_out,
                    n_red,
                    nbatch,
                },
                nargs,
                t.0,
                ptr(v.0, dv > 0),
                ptr(i.0, di > 0),
                stream.cu_stream(),
            )?;
        }
    }
    drop(ptrs);
    let mut values = cu(stream.clone_dtoh(&out_v), "copying the output back")?;
    let mut indices = cu(stream.clone_dtoh(&out_i), "copying the output back")?;
    cu(stream.synchronize(), "running the reduction")?;
    drop(task_bufs);
    values.truncate(rows * dv);
    indices.truncate(rows * di);
    Ok((
        Reduced::assemble(values, indices, problem.output_shapes(), (dv, di)),
        CallInfo { launch: l, origin },
    ))
}

#[cfg(test)]
mod tests {
    use super::ranges_tasks;
    use crate::ranges::Blocks;

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
