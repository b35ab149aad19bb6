//! Prints the CUDA source the GPU engine generates for a float32 reduction over `j`, and
//! with `--cubin FILE` also compiles it with NVRTC (fast math, sm_90) for reading its
//! machine code, e.g. `nvdisasm -c FILE` (the `nvidia-cuda-nvdisasm` wheel): how many
//! instructions a pair costs in the inner loop, here and in other generators. No GPU
//! needed.
//!
//! ```text
//! cargo run --release -p keops --example cuda_source -- \
//!     "Exp(-SqDist(x,y)) * b" "x = Vi(0,3); y = Vj(1,3); b = Vj(2,1)" Sum [--rows 4] [--cubin k.cubin]
//! ```
//!
//! The reduction is a KeOps name (`Sum`, `LogSumExp`, `ArgKMin` with `--k K`, ...);
//! `--rows` sets the output rows per thread (default: the most the kernel allows).

use keops::cuda::kernel::{kernel_source, KernelSpec};
use keops::cuda::nvrtc::{Arch, Nvrtc};
use keops::cuda::scheme::{plan, Shape};
use keops::plan::GpuScheme;
use keops::{Genred, Options, Reduction};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(formula), Some(aliases), Some(red)) = (args.first(), args.get(1), args.get(2)) else {
        return Err(
            "usage: cuda_source FORMULA \"ALIAS; ALIAS...\" REDUCTION [--k K] \
                    [--rows R] [--cubin FILE]"
                .into(),
        );
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let k: Option<usize> = flag("--k").map(|v| v.parse()).transpose()?;
    let aliases: Vec<&str> = aliases.split(';').map(str::trim).collect();
    let reduction = Reduction::from_name(red, k)?;
    let g = Genred::new(formula, &aliases, reduction, 1)?;
    let opts = Options {
        fast_math: true,
        ..Options::default()
    };
    // As the engine runs it: a wide output a group of columns per launch.
    let spec = KernelSpec::new::<f32>(&g, &opts).by_columns();
    if let Some(c) = &spec.columns {
        eprintln!(
            "by columns: {} launches of {} of the {} columns",
            c.starts().len(),
            c.width,
            c.full
        );
    }
    let rows: usize = flag("--rows").map_or(Ok(spec.max_rows()), |v| v.parse())?;
    // The planner's tile, and its check of the rows, for an H100 (132 SMs) at 10^6.
    let shape = Shape {
        row_bytes: spec.tile_row_bytes(),
        max_rows: spec.max_rows(),
        rows: Some(rows),
        scheme: GpuScheme::Auto,
    };
    let launch = plan(1_000_000, 1_000_000, 1, shape, 132)?;
    let tile = launch.tile;
    let src = kernel_source(&spec, "keops", tile, rows);
    println!("{}", src.code);
    if let Some(path) = flag("--cubin") {
        let nvrtc = Nvrtc::get(None)?;
        let cubin = nvrtc
            .compile(&src.code, "keops.cu", Arch { major: 9, minor: 0 }, true)
            .map_err(|f| f.log)?;
        std::fs::write(path, cubin)?;
        eprintln!("{path}: sm_90, {rows} rows per thread, tiles of {tile}");
    }
    Ok(())
}
