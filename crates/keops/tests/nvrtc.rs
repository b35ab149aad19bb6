//! Every generated kernel compiled by NVRTC to CUBIN for sm_80 and sm_90, in float and
//! double (float on sm_90 with `--use_fast_math`, pykeops' default, on sm_80 without):
//! the reduction kernel of every op case (`common::op_cases`, reduced by `Sum`)
//! and of every reduction on both axes with every sum scheme, and the chunked kernels of
//! high dimensions (`common::chunked_cases`), the kernels of wide outputs computed by
//! columns (`common::column_cases`), 32 random formulas (`common::random_formulas`),
//! the reductions with as many
//! output rows per thread as they allow in the builds the GPU runs (sm_90: float32 with
//! fast math, float64). One kernel serves the 1D and 2D schemes (the 2D one adds
//! `{name}_combine`, compiled here too). NVRTC runs without a GPU.
//!
//! NVRTC is found as the engine finds it (`KEOPS_NVRTC`, `CUDA_HOME`, the loader's
//! path); `make test` points `KEOPS_NVRTC` at the `nvidia-cuda-nvrtc` wheel of the venv
//! and sets `KEOPS_REQUIRE_NVRTC=1`, which turns a missing NVRTC into a failure.
//! Elsewhere the test is skipped with a printed reason.

mod common;

use common::op_cases::{cases, ALIASES};
use keops::cuda::codegen::{prelude, CType};
use keops::cuda::kernel::{kernel_source, KernelSpec};
use keops::cuda::nvrtc::{Arch, Nvrtc};
use keops::formula::ops::all_specs;
use keops::{Genred, Options, Reduction, SumScheme};

fn nvrtc() -> Option<Nvrtc> {
    let required = std::env::var("KEOPS_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let mut errors = Vec::new();
    for c in keops::cuda::nvrtc::candidates() {
        match Nvrtc::open(&c) {
            Ok(n) => return Some(n),
            Err(e) => errors.push(format!("{}: {e}", c.display())),
        }
    }
    assert!(
        !required,
        "KEOPS_REQUIRE_NVRTC=1 but no NVRTC loads: {errors:?}"
    );
    eprintln!("SKIPPED: no NVRTC found (set KEOPS_NVRTC to libnvrtc.so): {errors:?}");
    None
}

/// The kernels of one data type, split into `parts` programs (one prelude each, prefixes
/// `k0`, `k1`, ...; kernel `n` in part `n % parts`); reduction kernels with as many rows
/// per thread as they allow when `most_rows`, else one (the rows loops cost compile time:
/// one build of each type has them). Returns each part's source and number of kernels.
fn programs(ty: CType, most_rows: bool, parts: usize) -> Vec<(String, usize)> {
    // (kernel, rows per thread, description)
    let mut specs: Vec<(KernelSpec, usize, String)> = Vec::new();
    let with_ty = |g: &Genred, opts: &Options| -> KernelSpec {
        let mut k = KernelSpec::new::<f32>(g, opts);
        k.ty = ty;
        if ty == CType::F64 {
            k.acc = CType::F64;
            k.fast_math = false;
        }
        k
    };
    for spec in all_specs() {
        for case in cases(spec.name).unwrap_or_default() {
            let g = Genred::new(case, &ALIASES, Reduction::Sum, 1)
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            specs.push((with_ty(&g, &Options::default()), 1, case.to_string()));
        }
    }
    for (f, w, r) in common::reduction_cases() {
        for axis in [0, 1] {
            let g = common::reduction_case_genred(f, w, r, axis);
            for scheme in [SumScheme::Direct, SumScheme::BlockSum, SumScheme::Kahan] {
                let opts = Options {
                    sum_scheme: scheme,
                    ..Options::default()
                };
                // The most rows per thread the kernel allows: the rows loops compiled too.
                let k = with_ty(&g, &opts);
                let rows = if most_rows { k.max_rows() } else { 1 };
                specs.push((
                    k,
                    rows,
                    format!("{} axis {axis} {scheme:?}, {rows} rows", r.name()),
                ));
            }
        }
    }
    // Exponentials computed as exp2 of prescaled points (float32 with fast math).
    for (f, w, r) in common::prescaled_cases() {
        for axis in [0, 1] {
            let g = common::reduction_case_genred(f, w, r, axis);
            let opts = Options {
                fast_math: true,
                ..Options::default()
            };
            let k = with_ty(&g, &opts);
            assert_eq!(k.prescaled().is_some(), ty == CType::F32, "{f}");
            let rows = if most_rows { k.max_rows() } else { 1 };
            specs.push((k, rows, format!("{f} {} axis {axis}, prescaled", r.name())));
        }
    }
    // Chunked kernels (high dimensions), both axes.
    for (f, w, r) in common::chunked_cases() {
        for axis in [0, 1] {
            let g = common::case_genred(&common::CHUNKED_ALIASES, f, w, r, axis);
            let k = with_ty(&g, &Options::default());
            specs.push((k, 1, format!("{f} {} axis {axis}, D = 150", r.name())));
        }
    }
    // Wide outputs a group of columns per launch (64 float32 or 32 float64), both axes.
    for (f, w, r) in common::column_cases() {
        for axis in [0, 1] {
            let g = common::case_genred(&common::COLUMN_ALIASES, f, w, r, axis);
            let o = Options::default();
            let k = match ty {
                CType::F32 => KernelSpec::new::<f32>(&g, &o),
                CType::F64 => KernelSpec::new::<f64>(&g, &o),
            }
            .by_columns();
            assert!(k.columns.is_some(), "{f}");
            specs.push((k, 1, format!("{f} {} axis {axis}, by columns", r.name())));
        }
    }
    // Random compositions of ops (tests/properties.rs' generator, fixed seed), both axes.
    {
        use proptest::strategy::{Strategy, ValueTree};
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for n in 0..32 {
            let f = common::random_formulas::formula()
                .new_tree(&mut runner)
                .expect("a formula")
                .current();
            let s = common::random_formulas::paired(&f).to_string();
            let g = Genred::new(&s, &common::random_formulas::ALIASES, Reduction::Sum, n % 2)
                .unwrap_or_else(|e| panic!("{s}: {e}"));
            specs.push((with_ty(&g, &Options::default()), 1, format!("random: {s}")));
        }
    }
    (0..parts)
        .map(|part| {
            let mut src = prelude(ty);
            let mut index = String::new();
            let mine: Vec<_> = specs.iter().skip(part).step_by(parts).collect();
            for (n, (k, rows, what)) in mine.iter().enumerate() {
                let code = kernel_source(k, &format!("k{n}"), 64, *rows).code;
                // Each kernel source carries the prelude (after the fast-math mark); keep one.
                let code = code
                    .strip_prefix("// compiled with --use_fast_math\n")
                    .unwrap_or(&code);
                src.push_str(
                    code.strip_prefix(prelude(ty).as_str())
                        .expect("prelude first"),
                );
                index.push_str(&format!("// k{n}: {what}\n"));
            }
            (index + &src, mine.len())
        })
        .collect()
}

#[test]
fn every_kernel_compiles_to_cubin_for_sm80_and_sm90() {
    let Some(nvrtc) = nvrtc() else { return };
    let archs = nvrtc.supported_archs().unwrap();
    eprintln!("NVRTC {:?} at {}", nvrtc.version(), nvrtc.path().display());
    let (sm80, sm90) = (Arch { major: 8, minor: 0 }, Arch { major: 9, minor: 0 });
    // Both architectures and both types. float32 on sm_90 with --use_fast_math (pykeops'
    // default; sm_80 without), and with the most rows per thread (as the planner launches
    // them on an H100) in the sm_90 builds, which the GPU runs.
    const PARTS: usize = 4;
    let mut builds = Vec::new();
    for ty in [CType::F32, CType::F64] {
        let (with_rows, one_row) = (programs(ty, true, PARTS), programs(ty, false, PARTS));
        let fast = ty == CType::F32;
        builds.extend(with_rows.into_iter().map(|p| (ty, sm90, fast, p)));
        builds.extend(one_row.into_iter().map(|p| (ty, sm80, false, p)));
    }
    // Independent NVRTC programs, one per core at a time, the slowest first (float64 on
    // sm_90, with rows), so that the cores finish together.
    builds.sort_by_key(|(ty, arch, ..)| std::cmp::Reverse((*ty == CType::F64, arch.major)));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers.min(builds.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((ty, arch, fast, (src, n))) = builds.get(i) else {
                    break;
                };
                assert!(archs.contains(&(arch.major * 10 + arch.minor)), "{archs:?}");
                compile_one(&nvrtc, *ty, *arch, *fast, src, *n);
            });
        }
    });
}

/// Compiles one program of `n` kernels and checks the CUBIN holds them.
fn compile_one(nvrtc: &Nvrtc, ty: CType, arch: Arch, fast: bool, src: &str, n: usize) {
    let t = std::time::Instant::now();
    let cubin = nvrtc
        .compile(src, "kernels.cu", arch, fast)
        .unwrap_or_else(|e| {
            let path = std::env::temp_dir().join(format!(
                "keops-nvrtc-{}-{}{}.cu",
                ty.name(),
                arch.sm(),
                if fast { "-fast" } else { "" }
            ));
            std::fs::write(&path, src).unwrap();
            panic!(
                "{} {}: NVRTC failed (source at {}):\n{}",
                ty.name(),
                arch.sm(),
                path.display(),
                e.log
            )
        });
    // An ELF image with every kernel in it.
    assert_eq!(&cubin[..4], b"\x7fELF");
    let text = String::from_utf8_lossy(&cubin);
    for k in [0, n / 2, n - 1] {
        assert!(
            text.contains(&format!("k{k}_reduce")),
            "k{k}_reduce missing"
        );
        assert!(
            text.contains(&format!("k{k}_combine")),
            "k{k}_combine missing"
        );
    }
    eprintln!(
        "{} {}{}: {n} kernels, {} bytes, {:.2?}",
        ty.name(),
        arch.sm(),
        if fast { " fast math" } else { "" },
        cubin.len(),
        t.elapsed()
    );
}

#[test]
fn compile_errors_carry_the_log_with_line_numbers() {
    let Some(nvrtc) = nvrtc() else { return };
    let e = nvrtc
        .compile(
            "extern \"C\" __global__ void f() {\n  undefined_name = 1;\n}\n",
            "bad.cu",
            Arch { major: 9, minor: 0 },
            false,
        )
        .unwrap_err();
    assert!(
        e.log.contains("bad.cu(2)") && e.log.contains("undefined_name"),
        "{}",
        e.log
    );
}
