//! What the CUDA engine finds on this machine, and what compiling a kernel costs:
//! `cargo run --release -p keops --example cuda_info`. Runs without a GPU (NVRTC only).
//! With a GPU it also runs a reduction twice and says where its kernel came from: run it
//! twice (same `KEOPS_CACHE_DIR`) and the second process reads the CUBIN from disk.
//! With `--wide`, it also times kernel products with wide weights computed by columns
//! and by whole rows (`KEOPS_GPU_COLUMNS=0`).

use keops::cuda::cache::{self, KernelCache};
use keops::cuda::kernel::{kernel_source, KernelSpec};
use keops::cuda::nvrtc::{Arch, Nvrtc};
use keops::plan::Problem;
use keops::{Arg, Backend, Genred, Options, Reduction};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match keops::cuda::driver() {
        Ok(d) => println!("driver: CUDA {}, {} device(s)", d.version, d.devices),
        Err(e) => println!("driver: {e}"),
    }
    let nvrtc = Nvrtc::get(None)?;
    println!("NVRTC {:?}: {}", nvrtc.version(), nvrtc.path().display());
    let g = Genred::new(
        "Exp(-SqDist(x,y)) * b",
        &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"],
        Reduction::Sum,
        1,
    )?;
    let spec = KernelSpec::new::<f32>(&g, &Options::default());
    let src = kernel_source(&spec, "keops", 192, spec.max_rows());
    let arch = Arch { major: 9, minor: 0 };
    let dir = tempfile::tempdir()?;
    let key = cache::key(&src.code, arch, nvrtc.version());
    let t = Instant::now();
    let (bin, origin) = KernelCache::new(Some(dir.path().into())).get_or_compile(&key, || {
        nvrtc
            .compile(&src.code, "gauss.cu", arch, false)
            .map_err(|f| keops::KeopsError::Cuda(f.log))
    })?;
    println!(
        "Gaussian kernel, f32, sm_90: {origin:?} in {:.1?} ({} bytes)",
        t.elapsed(),
        bin.len()
    );
    let t = Instant::now();
    let (_, origin) = KernelCache::new(Some(dir.path().into())).get_or_compile(&key, || {
        Err(keops::KeopsError::Cuda("not in the cache".into()))
    })?;
    println!(
        "same kernel, new process: {origin:?} in {:.1?}",
        t.elapsed()
    );
    if keops::cuda::available() {
        on_the_gpu(&g)?;
        if std::env::args().any(|a| a == "--wide") {
            wide_outputs()?;
        }
    }
    Ok(())
}

/// `K b` for weights `b` of width 256 and 1000, N = M = 20,000: by columns (the
/// default), then by whole rows, each the best of three calls after a first one.
fn wide_outputs() -> Result<(), Box<dyn std::error::Error>> {
    let n = 20_000;
    let x: Vec<f32> = (0..3 * n).map(|i| (i as f32 * 0.37).sin()).collect();
    for e in [256, 1000] {
        let g = Genred::new(
            "Exp(-SqDist(x,y)) * b",
            &["x = Vi(0,3)", "y = Vj(1,3)", &format!("b = Vj(2,{e})")],
            Reduction::Sum,
            1,
        )?;
        let b: Vec<f32> = (0..n * e).map(|i| (i as f32 * 0.11).cos()).collect();
        let args = [
            Arg::new(&x, [n, 3]),
            Arg::new(&x, [n, 3]),
            Arg::new(&b, [n, e]),
        ];
        let problem = Problem::new(&g, &args)?;
        let opts = Options {
            backend: Backend::Gpu,
            ..Options::default()
        };
        let mut best = Vec::new();
        for columns in ["1", "0"] {
            std::env::set_var("KEOPS_GPU_COLUMNS", columns);
            keops::cuda::runtime::run(&problem, &opts)?;
            let mut t_min = f64::INFINITY;
            for _ in 0..3 {
                let t = Instant::now();
                keops::cuda::runtime::run(&problem, &opts)?;
                t_min = t_min.min(t.elapsed().as_secs_f64());
            }
            best.push(t_min);
        }
        std::env::remove_var("KEOPS_GPU_COLUMNS");
        println!(
            "K b, N = M = {n}, b of width {e}: by columns {:.1} ms, whole rows {:.1} ms ({:.2}x)",
            1e3 * best[0],
            1e3 * best[1],
            best[1] / best[0]
        );
    }
    Ok(())
}

/// A Gaussian sum on the GPU, called twice: the first call's kernel is compiled, read
/// from the disk cache (a process ran it before) or already loaded; the second is in
/// memory.
fn on_the_gpu(g: &Genred) -> Result<(), Box<dyn std::error::Error>> {
    let dev = keops::cuda::runtime::device(0)?;
    println!("GPU 0: {} ({}, {} SMs)", dev.name, dev.arch.sm(), dev.sms);
    let n = 100_000;
    let x: Vec<f32> = (0..3 * n).map(|i| (i as f32 * 0.37).sin()).collect();
    let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
    let args = [
        Arg::new(&x, [n, 3]),
        Arg::new(&x, [n, 3]),
        Arg::new(&b, [n, 1]),
    ];
    let problem = Problem::new(g, &args)?;
    let opts = Options {
        backend: Backend::Gpu,
        ..Options::default()
    };
    for call in ["first call", "second call"] {
        let t = Instant::now();
        let (_, info) = keops::cuda::runtime::run(&problem, &opts)?;
        println!(
            "Gaussian sum, N = M = {n}, {call}: kernel {:?}, {:.1?} in all ({:?})",
            info.origin,
            t.elapsed(),
            info.launch.scheme
        );
    }
    small_calls(g, &opts)
}

/// The time of a small host-data call (allocations, copies, launch, synchronisation)
/// with freed memory kept in the pool between calls, and with the pool handing it back
/// at each synchronisation (the driver's default); without pools
/// (`KEOPS_CUDA_MEMORY_POOLS=0`), once.
fn small_calls(g: &Genred, opts: &Options) -> Result<(), Box<dyn std::error::Error>> {
    use keops::cuda::runtime::{device, pool_keep, set_pool_keep, DEFAULT_POOL_KEEP};
    let n = 1000;
    let x: Vec<f32> = (0..3 * n).map(|i| (i as f32 * 0.37).sin()).collect();
    let args = [
        Arg::new(&x, [n, 3]),
        Arg::new(&x, [n, 3]),
        Arg::new(&x[..n], [n, 1]),
    ];
    let problem = Problem::new(g, &args)?;
    let kept = pool_keep(0)?;
    let settings: &[_] = if device(0)?.pools {
        &[("kept", DEFAULT_POOL_KEEP), ("handed back", 0)]
    } else {
        &[("allocated without a pool", 0)]
    };
    for &(label, keep) in settings {
        set_pool_keep(0, keep)?;
        keops::cuda::runtime::run(&problem, opts)?;
        let calls = 300;
        let t = Instant::now();
        for _ in 0..calls {
            keops::cuda::runtime::run(&problem, opts)?;
        }
        println!(
            "small calls (N = M = {n}, host data), freed memory {label} ({keep} bytes): {:.1?} each",
            t.elapsed() / calls
        );
    }
    set_pool_keep(0, kept)?;
    Ok(())
}
