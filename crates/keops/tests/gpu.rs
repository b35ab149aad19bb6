//! The CUDA engine on a GPU: every reduction (both axes, every sum scheme, batch dims)
//! and every op case against the f64 oracle in f32 and f64, with the 1D and 2D schemes
//! forced, threads of one output row and of as many as the kernel allows; calls from
//! two threads at once; empty reductions; arrays already on the GPU
//! reduced in place on a caller's stream; one reduction split over GPUs. Skipped, with a printed
//! reason, where no GPU can run (no driver, no device or no NVRTC). `make test` also runs
//! them under the CUDA simulator (`KEOPS_CUDA_SIMULATOR=2`: the generated kernels built
//! as host C++ and launched with their real plans on the CPU), op cases excepted.

mod common;

use common::op_cases::{cases, ALIASES};
use common::{check_indices, check_indices_exact, check_values, run_as, tol_for, Inputs, Rng};
use keops::cuda::{run_in_place, DeviceArg, DeviceBuffer, DeviceOutputs};
use keops::formula::ops::all_specs;
use keops::plan::GpuScheme;
use keops::{
    Array, Backend, Element, Genred, Layout, MultiGpu, Options, Reduced, Reduction, SumScheme,
};
use rayon::prelude::*;

/// Whether a GPU (or the simulator) runs these tests; the simulator asked for but
/// unable to run is a failure, not a skip.
fn gpu() -> bool {
    if keops::cuda::sim::on() {
        assert!(
            keops::cuda::available(),
            "KEOPS_CUDA_SIMULATOR is set but the simulator cannot run: {:?}",
            keops::cuda::driver().err()
        );
        return true;
    }
    if let Err(e) = keops::cuda::driver() {
        eprintln!("SKIPPED: no GPU: {e} (KEOPS_CUDA_SIMULATOR=2 runs these tests on the CPU)");
        return false;
    }
    if !keops::cuda::available() {
        eprintln!("SKIPPED: a GPU but no NVRTC (set KEOPS_NVRTC)");
        return false;
    }
    true
}

/// Whether a real GPU runs these tests (`gpu()`, not the simulator); under the
/// simulator, prints why the test is skipped there.
fn real_gpu(skipped_because: &str) -> bool {
    if !gpu() {
        return false;
    }
    if keops::cuda::sim::on() {
        eprintln!("SKIPPED under the simulator: {skipped_because}");
        return false;
    }
    true
}

/// This test binary's test `name` run alone in a child process, with `env` added.
fn rerun_in_child(name: &str, env: &[(&str, &str)]) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", name, "--nocapture"])
        .envs(env.iter().copied());
    cmd.output().unwrap()
}

/// Asserts that test `name`, run alone in a child process with `env` added, passes.
fn passes_in_child(name: &str, env: &[(&str, &str)]) {
    let out = rerun_in_child(name, env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} with {env:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn opts(scheme: GpuScheme, sum: SumScheme) -> Options {
    Options {
        backend: Backend::Gpu,
        gpu_scheme: scheme,
        sum_scheme: sum,
        ..Options::default()
    }
}

fn inputs(ni: usize, nj: usize, batch: &[usize], seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let mut inp = Inputs::new();
    let sh = |n: usize, d: usize| [batch, &[n, d][..]].concat();
    inp.push(&sh(ni, 2), || rng.uniform(-1.0, 1.0))
        .push(&sh(nj, 2), || rng.uniform(-1.0, 1.0))
        .push(&sh(nj, 1), || rng.uniform(-1.0, 1.0))
        .push(&[batch, &[1][..]].concat(), || rng.uniform(0.5, 1.0));
    inp
}

/// The Gaussian sum `Exp(-SqDist(x,y){scale}) * b` over j, points of dimension `d`,
/// `b` of dimension `db`.
fn gaussian(scale: &str, d: usize, db: usize) -> Genred {
    Genred::new(
        &format!("Exp(-SqDist(x,y){scale}) * b"),
        &[
            &format!("x = Vi(0,{d})"),
            &format!("y = Vj(1,{d})"),
            &format!("b = Vj(2,{db})"),
        ],
        Reduction::Sum,
        1,
    )
    .unwrap()
}

/// Uniform inputs of [`gaussian`]`(_, 3, 1)`: `ni` points x, `nj` points y and weights b.
fn gaussian_inputs(ni: usize, nj: usize, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let mut inp = Inputs::new();
    inp.push(&[ni, 3], || rng.uniform(-1.0, 1.0))
        .push(&[nj, 3], || rng.uniform(-1.0, 1.0))
        .push(&[nj, 1], || rng.uniform(-1.0, 1.0));
    inp
}

/// `o`, and `o` with as many output rows per thread as the kernel of `g` in `T` allows
/// (where that is more than one).
fn with_rows<T: Element>(g: &Genred, o: &Options) -> Vec<Options> {
    let most = keops::cuda::kernel::KernelSpec::new::<T>(g, o).max_rows();
    let mut v = vec![o.clone()];
    if most > 1 {
        v.push(Options {
            gpu_rows: Some(most),
            ..o.clone()
        });
    }
    v
}

/// The oracle's result for `g` on `inp`, and the scale of sums' tolerance.
struct Expected {
    want: Reduced<f64>,
    scale: Option<Vec<f64>>,
}

fn expected(g: &Genred, inp: &Inputs) -> Expected {
    if g.spec().kind == Reduction::Sum {
        let common::SumOracle { want, scale } =
            common::sum_oracles(std::slice::from_ref(g), inp).remove(0);
        return Expected {
            want,
            scale: Some(scale),
        };
    }
    Expected {
        want: keops::reference::reduce(g, &inp.args_f64()).unwrap(),
        scale: None,
    }
}

fn check_against<T: Element>(g: &Genred, inp: &Inputs, e: &Expected, o: &Options, ctx: &str) {
    let got = run_as::<T>(g, inp, o).unwrap_or_else(|err| panic!("{ctx}: {err}"));
    check_values(&got, &e.want, e.scale.as_deref(), tol_for::<T>(), ctx);
    check_indices(&got, &e.want, g, inp, ctx);
}

fn check<T: Element>(g: &Genred, inp: &Inputs, o: &Options, ctx: &str) {
    check_against::<T>(g, inp, &expected(g, inp), o, ctx);
}

/// `g` on `inp` in both schemes, float32 and float64, against the oracle; returns the
/// oracle's result for further checks.
fn check_schemes(g: &Genred, inp: &Inputs, ctx: &str) -> Expected {
    let e = expected(g, inp);
    for scheme in [GpuScheme::OneD, GpuScheme::TwoD] {
        let o = opts(scheme, SumScheme::BlockSum);
        check_against::<f32>(g, inp, &e, &o, &format!("{ctx} {scheme:?} f32"));
        check_against::<f64>(g, inp, &e, &o, &format!("{ctx} {scheme:?} f64"));
    }
    e
}

#[test]
fn every_reduction_matches_the_oracle() {
    if !gpu() {
        return;
    }
    // Sizes that leave partial tiles and partial blocks; a batch.
    let sizes = [(300, 1000, vec![]), (7, 5000, vec![]), (50, 70, vec![3])];
    let inps: Vec<_> = sizes
        .iter()
        .map(|(ni, nj, b)| inputs(*ni, *nj, b, 5))
        .collect();
    let mut all = vec![];
    for (size, inp) in sizes.iter().zip(&inps) {
        for case in common::reduction_cases() {
            all.extend([(size, inp, case, 0), (size, inp, case, 1)]);
        }
    }
    // In parallel, as every_op_matches_the_oracle, for the kernel builds.
    all.par_iter()
        .for_each(|((ni, nj, batch), inp, (f, w, r), axis)| {
            let (r, axis) = (*r, *axis);
            let g = common::reduction_case_genred(f, *w, r, axis);
            let e = expected(&g, inp);
            // The summation scheme matters to sums only.
            let sums = if r == Reduction::Sum {
                &[SumScheme::Direct, SumScheme::BlockSum, SumScheme::Kahan][..]
            } else {
                &[SumScheme::BlockSum][..]
            };
            for scheme in [GpuScheme::OneD, GpuScheme::TwoD, GpuScheme::Auto] {
                for &sum in sums {
                    let ctx = format!(
                        "{} axis {axis} {scheme:?} {sum:?} {ni}x{nj}{batch:?}",
                        r.name()
                    );
                    let o = opts(scheme, sum);
                    for o in with_rows::<f32>(&g, &o) {
                        let ctx = format!("{ctx} rows {:?} f32", o.gpu_rows);
                        check_against::<f32>(&g, inp, &e, &o, &ctx);
                    }
                    for o in with_rows::<f64>(&g, &o) {
                        let ctx = format!("{ctx} rows {:?} f64", o.gpu_rows);
                        check_against::<f64>(&g, inp, &e, &o, &ctx);
                    }
                }
            }
        });
}

#[test]
fn every_op_matches_the_oracle() {
    // One build per op and type (hundreds); tests/codegen.rs runs the same per-pair code
    // of every op as host C against the oracle.
    if !real_gpu("the op cases are tests/codegen.rs' work") {
        return;
    }
    let all: Vec<_> = all_specs()
        .flat_map(|spec| cases(spec.name).unwrap_or_default())
        .collect();
    // One kernel build per case and type, compiled on every core: NVRTC runs on the
    // calling thread, and one after another these builds take minutes.
    all.par_iter().for_each(|case| {
        // Every alias used, so that argument positions have no gaps.
        let f = format!("({case}) + 0 * (Sum(x) + Sum(y) + a + b + Sum(S) + p)");
        let g = Genred::new(&f, &ALIASES, Reduction::Sum, 1).unwrap();
        let mut rng = Rng::new(9);
        let mut inp = Inputs::new();
        let (n, m) = (40, 300);
        for shape in [&[n, 3][..], &[m, 3], &[n, 1], &[m, 1], &[9], &[1]] {
            inp.push(shape, || rng.uniform(0.3, 1.7));
        }
        for scheme in [GpuScheme::OneD, GpuScheme::TwoD] {
            let o = opts(scheme, SumScheme::BlockSum);
            check::<f32>(&g, &inp, &o, &format!("{case} {scheme:?} f32"));
            check::<f64>(&g, &inp, &o, &format!("{case} {scheme:?} f64"));
        }
    });
}

/// Random formulas (the generator of tests/properties.rs, which checks the CPU engine
/// with it) through generated kernels, float64, both axes, the scheme alternating,
/// against the oracle: compositions of ops, hoisted and broadcast subtrees and constants
/// that the per-op cases do not reach. Few cases, as each is a kernel build (a C++ one
/// under the simulator).
#[test]
fn random_formulas_match_the_oracle() {
    use common::random_formulas::{formula, inputs, paired, ALIASES};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    if !gpu() {
        return;
    }
    // On a GPU each case is two NVRTC builds, within scripts/gpu_check.sh's rust stage.
    let cases = if keops::cuda::sim::on() { 32 } else { 16 };
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let strategy = (formula(), 1usize..=40, 1usize..=300, any::<u64>());
    let result = TestRunner::new(config).run(&strategy, |(f, n, m, seed)| {
        let s = paired(&f).to_string();
        let inp = inputs(n, m, seed);
        let scheme = [GpuScheme::OneD, GpuScheme::TwoD][(seed % 2) as usize];
        let gs = [1, 0].map(|axis| Genred::new(&s, &ALIASES, Reduction::Sum, axis).unwrap());
        for (g, common::SumOracle { want, scale }) in gs.iter().zip(common::sum_oracles(&gs, &inp))
        {
            let axis = g.axis();
            let o = opts(scheme, SumScheme::BlockSum);
            let got =
                run_as::<f64>(g, &inp, &o).map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
            let tol = common::Tol {
                rtol: 1e-9,
                atol: 0.0,
            };
            let ctx = format!("{s} (axis {axis}, N={n}, M={m}, {scheme:?})");
            common::check_values(&got, &want, Some(&scale), tol, &ctx);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Chunked kernels (x and y of dimension 150): every chunkable case of
/// `common::chunked_cases` and the one read in place, both axes, both schemes, with
/// sizes that leave partial tiles, and a batch.
#[test]
fn chunked_kernels_match_the_oracle() {
    if !gpu() {
        return;
    }
    for (ni, nj, batch) in [(200, 400, vec![]), (20, 300, vec![2])] {
        let mut rng = Rng::new(8);
        let s = (2.0f64 / 150.0).sqrt();
        let sh = |n: usize, d: usize| [&batch[..], &[n, d][..]].concat();
        let mut inp = Inputs::new();
        inp.push(&sh(ni, 150), || s * rng.uniform(-1.0, 1.0))
            .push(&sh(nj, 150), || s * rng.uniform(-1.0, 1.0))
            .push(&sh(nj, 1), || rng.uniform(-1.0, 1.0))
            .push(&[&batch[..], &[1][..]].concat(), || rng.uniform(0.5, 1.0));
        for (f, w, r) in common::chunked_cases() {
            for axis in [0, 1] {
                let g = common::case_genred(&common::CHUNKED_ALIASES, f, w, r, axis);
                check_schemes(&g, &inp, &format!("{f} axis {axis} {ni}x{nj}{batch:?}"));
            }
        }
    }
}

/// Inputs of `common::COLUMN_ALIASES` (x, y, u, v, p) of these shapes: uniform in
/// [-1, 1], p in [0.5, 1].
fn column_inputs(shapes: [&[usize]; 5], seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let mut inp = Inputs::new();
    for (k, shape) in shapes.iter().enumerate() {
        let lo = if k == 4 { 0.5 } else { -1.0 };
        inp.push(shape, || rng.uniform(lo, 1.0));
    }
    inp
}

/// Every case of `common::column_cases` on inputs of these sizes, both axes, both schemes,
/// float32 and float64, and split over three parts of device 0, against the oracle.
fn columns_match_the_oracle(ni: usize, nj: usize, batch: &[usize]) {
    use keops::cuda::kernel::KernelSpec;
    let sh = |n: usize, d: usize| [batch, &[n, d][..]].concat();
    let p = [batch, &[300][..]].concat();
    let shapes = [&sh(ni, 3)[..], &sh(nj, 3), &sh(ni, 300), &sh(nj, 300), &p];
    let inp = column_inputs(shapes, 12);
    for (f, w, r) in common::column_cases() {
        for axis in [0, 1] {
            let g = common::case_genred(&common::COLUMN_ALIASES, f, w, r, axis);
            let o = Options::default();
            // 64 float32 (32 float64) sums a group, fewer with indices or maxima.
            let by_columns = |k: KernelSpec| k.by_columns().columns.map(|c| c.width);
            let (w32, w64) = (
                by_columns(KernelSpec::new::<f32>(&g, &o)).expect(f),
                by_columns(KernelSpec::new::<f64>(&g, &o)).expect(f),
            );
            assert!(w32 <= 64 && w64 <= 32 && w64 <= w32, "{f}: {w32} {w64}");
            if r == Reduction::Sum {
                assert_eq!((w32, w64), (64, 32));
            }
            let ctx = format!("{f} {} axis {axis} {batch:?}", r.name());
            let e = check_schemes(&g, &inp, &ctx);
            // Split over three parts (on device 0), states combined group by group.
            let o = Options {
                multi_gpu: MultiGpu::Devices(vec![0, 0, 0]),
                ..opts(GpuScheme::Auto, SumScheme::BlockSum)
            };
            check_against::<f32>(&g, &inp, &e, &o, &format!("{ctx} multi-GPU f32"));
            check_against::<f64>(&g, &inp, &e, &o, &format!("{ctx} multi-GPU f64"));
        }
    }
}

/// Outputs wider than registers hold, computed a group of columns per launch
/// (`keops::cuda::columns`): [`columns_match_the_oracle`] (groups of 64 float32 and 32
/// float64 columns, the last one overlapping).
#[test]
fn wide_outputs_are_computed_by_columns() {
    if gpu() {
        columns_match_the_oracle(150, 400, &[]);
    }
}

/// Wide outputs by columns (see above) with batch dimensions, float32 summed in float64,
/// block-sparse ranges (rows no range reaches hold the empty reduction of whole rows)
/// and device arrays in place, against the oracle. (A test of its own: the simulator
/// runs the two at once.)
#[test]
fn wide_outputs_by_columns_in_batches_ranges_and_in_place() {
    use keops::cuda::kernel::KernelSpec;
    if !gpu() {
        return;
    }
    columns_match_the_oracle(20, 250, &[2]);
    // float32 data summed in float64: groups of 32 (the state's registers).
    let (f, w, r) = common::column_cases()[0];
    let g = common::case_genred(&common::COLUMN_ALIASES, f, w, r, 1);
    let o = Options {
        dtype_acc: keops::plan::AccType::Float64,
        ..opts(GpuScheme::Auto, SumScheme::BlockSum)
    };
    let k = KernelSpec::new::<f32>(&g, &o).by_columns();
    assert_eq!(k.columns.map(|c| c.width), Some(32));
    let inp = column_inputs([&[90, 3], &[250, 3], &[90, 300], &[250, 300], &[300]], 15);
    check::<f32>(&g, &inp, &o, "float64 sums by columns");

    let (ni, nj) = (150, 400);
    let inp = column_inputs([&[ni, 3], &[nj, 3], &[ni, 300], &[nj, 300], &[300]], 13);
    // Clusters of 40 x 50 rows, some rows reached by no range.
    let ranges = cluster_ranges((ni, 40), (nj, 50), |t| t % 3 != 1 && t / 8 != 2);
    for (f, w, r) in common::column_cases() {
        let g = common::case_genred(&common::COLUMN_ALIASES, f, w, r, 1);
        let cpu = Options {
            ranges: Some(ranges.clone()),
            ..Options::default()
        };
        let want = run_as::<f64>(&g, &inp, &cpu).unwrap();
        let o = Options {
            ranges: Some(ranges.clone()),
            ..opts(GpuScheme::Auto, SumScheme::BlockSum)
        };
        let ctx = format!("{f} {} block-sparse", r.name());
        let scale = (r == Reduction::Sum).then(|| common::sum_magnitude(&g, &inp));
        // Indices in float64 (exact; float32 may pick another of near-tied values).
        let got = run_as::<f64>(&g, &inp, &o).unwrap_or_else(|err| panic!("{ctx}: {err}"));
        check_values(&got, &want, scale.as_deref(), tol_for::<f64>(), &ctx);
        check_indices_exact(&got, &want, &ctx);
        let got = run_as::<f32>(&g, &inp, &o).unwrap_or_else(|err| panic!("{ctx}: {err}"));
        check_values(&got, &want, scale.as_deref(), tol_for::<f32>(), &ctx);
    }
    // In place: the kernel product on device arrays, a padded batch stride on x.
    let shapes = [
        &[2, 90, 3][..],
        &[1, 250, 3],
        &[90, 300],
        &[2, 250, 300],
        &[300],
    ];
    let inp = column_inputs(shapes, 14);
    let (f, w, r) = common::column_cases()[0];
    let g = common::case_genred(&common::COLUMN_ALIASES, f, w, r, 1);
    let Expected { want, scale } = expected(&g, &inp);
    let (_bufs, args) = upload(&inp, 5);
    let out = DeviceBuffer::alloc(0, 4 * 2 * 90 * 300).unwrap();
    let outs = DeviceOutputs {
        values: out.ptr(),
        indices: 0,
    };
    for scheme in [GpuScheme::OneD, GpuScheme::TwoD] {
        // SAFETY: the buffers hold what the shapes and strides say, on device 0, and
        // live until `to_vec` has waited for the device.
        unsafe { run_in_place::<f32>(&g, &args, outs, 0, &opts(scheme, SumScheme::BlockSum)) }
            .unwrap();
        let got = Reduced {
            values: Some(Array {
                data: out.to_vec::<f32>(2 * 90 * 300).unwrap(),
                shape: vec![2, 90, 300],
            }),
            indices: None,
        };
        let ctx = format!("in place by columns {scheme:?}");
        check_values(&got, &want, scale.as_deref(), tol_for::<f32>(), &ctx);
    }
}

#[test]
fn high_dimensions_and_empty_reductions() {
    if !gpu() {
        return;
    }
    let g = gaussian("", 300, 4);
    let mut rng = Rng::new(3);
    let mut inp = Inputs::new();
    inp.push(&[100, 300], || rng.uniform(0.0, 0.1))
        .push(&[2000, 300], || rng.uniform(0.0, 0.1))
        .push(&[2000, 4], || rng.uniform(-1.0, 1.0));
    check::<f32>(
        &g,
        &inp,
        &opts(GpuScheme::Auto, SumScheme::BlockSum),
        "D=300 f32",
    );
    let mut empty = Inputs::new();
    empty
        .push(&[5, 300], || 0.0)
        .push(&[0, 300], || 0.0)
        .push(&[0, 4], || 0.0);
    check::<f32>(
        &g,
        &empty,
        &opts(GpuScheme::Auto, SumScheme::BlockSum),
        "empty reduction",
    );
}

#[test]
fn fast_math_stays_close() {
    if !gpu() {
        return;
    }
    // pykeops' default on the GPU: float32 exp, log, sin, sqrt and division by the
    // hardware's approximations (the simulator runs them exactly).
    let g = Genred::new(
        "Exp(-SqDist(x,y) * p) * b + Log(1 + Sqrt(SqDist(x,y))) * Sin(Sum(y)) / (1 + p)",
        &["x = Vi(0,2)", "y = Vj(1,2)", "b = Vj(2,1)", "p = Pm(3,1)"],
        Reduction::Sum,
        1,
    )
    .unwrap();
    let inp = inputs(300, 1000, &[], 8);
    let e = expected(&g, &inp);
    for scheme in [GpuScheme::OneD, GpuScheme::TwoD] {
        let o = Options {
            fast_math: true,
            ..opts(scheme, SumScheme::BlockSum)
        };
        let got = run_as::<f32>(&g, &inp, &o).unwrap();
        let tol = common::Tol {
            rtol: 1e-4,
            atol: 1e-5,
        };
        check_values(&got, &e.want, e.scale.as_deref(), tol, "fast math");
        // float64 ignores it.
        check_against::<f64>(&g, &inp, &e, &o, "fast math f64");
    }
}

/// Block-sparse ranges of `ni` x `nj` rows in clusters of `ci` and `cj` rows, keeping
/// the pairs of clusters `t` (row-major) with `keep(t)`.
fn cluster_ranges(
    (ni, ci): (usize, usize),
    (nj, cj): (usize, usize),
    keep: impl Fn(usize) -> bool,
) -> std::sync::Arc<keops::Ranges> {
    let cl = |n: usize, size: usize| -> Vec<_> {
        (0..n.div_ceil(size))
            .map(|c| c * size..((c + 1) * size).min(n))
            .collect()
    };
    let (ci, cj) = (cl(ni, ci), cl(nj, cj));
    let keep: Vec<bool> = (0..ci.len() * cj.len()).map(keep).collect();
    std::sync::Arc::new(keops::cluster::from_matrix(&ci, &cj, &keep).unwrap())
}

/// `g` in float32 with fast math, whose exponentials are prescaled (checked): both
/// schemes with one and the most rows per thread against `e`, and block-sparse with
/// `ranges` against the CPU engine's float64 result, sums within `tol` of `scale`.
fn check_prescaled(
    g: &Genred,
    inp: &Inputs,
    e: &Expected,
    scale: Option<&[f64]>,
    ranges: &std::sync::Arc<keops::Ranges>,
    tol: common::Tol,
    ctx: &str,
) {
    for scheme in [GpuScheme::OneD, GpuScheme::TwoD] {
        let o = Options {
            fast_math: true,
            ..opts(scheme, SumScheme::BlockSum)
        };
        let k = keops::cuda::kernel::KernelSpec::new::<f32>(g, &o);
        assert!(k.prescaled().is_some(), "{ctx}: prescaled");
        for o in with_rows::<f32>(g, &o) {
            let ctx = format!("{ctx} {scheme:?} rows {:?}", o.gpu_rows);
            let got = run_as::<f32>(g, inp, &o).unwrap_or_else(|err| panic!("{ctx}: {err}"));
            check_values(&got, &e.want, scale, tol, &ctx);
        }
    }
    let cpu = Options {
        ranges: Some(ranges.clone()),
        ..Options::default()
    };
    let want = run_as::<f64>(g, inp, &cpu).unwrap();
    let o = Options {
        fast_math: true,
        ranges: Some(ranges.clone()),
        ..opts(GpuScheme::Auto, SumScheme::BlockSum)
    };
    let ctx = format!("{ctx} block-sparse");
    let got = run_as::<f32>(g, inp, &o).unwrap_or_else(|err| panic!("{ctx}: {err}"));
    check_values(&got, &want, scale, tol, &ctx);
}

/// Exponentials computed as `exp2` of points scaled as they are loaded (float32 with
/// fast math): every case of `common::prescaled_cases`, both axes, both schemes, the most
/// rows per thread, block-sparse ranges, against the oracle.
#[test]
fn prescaled_exponentials_match_the_oracle() {
    if !gpu() {
        return;
    }
    let (ni, nj) = (300, 700);
    let inp = inputs(ni, nj, &[], 10);
    let ranges = cluster_ranges((ni, 37), (nj, 53), |t| t % 3 != 1);
    let tol = common::Tol {
        rtol: 1e-4,
        atol: 1e-5,
    };
    for (f, w, r) in common::prescaled_cases() {
        for axis in [0, 1] {
            let g = common::reduction_case_genred(f, w, r, axis);
            let e = expected(&g, &inp);
            let ctx = format!("prescaled {f} {} axis {axis}", r.name());
            check_prescaled(&g, &inp, &e, e.scale.as_deref(), &ranges, tol, &ctx);
        }
    }
}

/// Prescaled points are centered on the thread block's first output row, so that a
/// Gaussian sum of float32 points far from the origin (at 10^3 and 10^4, a width of
/// 1/2) is as accurate as near it, in both schemes, with several rows per thread and
/// block-sparse: within 1e-6 of the terms' magnitude (seen: 1.1e-7 at every shift).
/// Scaled from the origin, the points at 10^3 were already 3.7e-6 off.
#[test]
fn prescaled_exponentials_do_not_depend_on_the_origin() {
    if !gpu() {
        return;
    }
    let g = gaussian(" * 4", 2, 1);
    let (ni, nj) = (300, 700);
    let ranges = cluster_ranges((ni, 100), (nj, 100), |t| t % 2 == 0);
    let tol = common::Tol {
        rtol: 1e-6,
        atol: 0.0,
    };
    for shift in [0.0, 1e3, 1e4] {
        let mut rng = Rng::new(3);
        let mut inp = Inputs::new();
        let mut point = || (shift + rng.uniform(-1.0, 1.0)) as f32 as f64;
        let (x, y): (Vec<f64>, Vec<f64>) = (
            (0..ni * 2).map(|_| point()).collect(),
            (0..nj * 2).map(|_| point()).collect(),
        );
        inp.push_data(&[ni, 2], x)
            .push_data(&[nj, 2], y)
            .push(&[nj, 1], || rng.uniform(-1.0, 1.0));
        let e = expected(&g, &inp);
        // The terms' magnitudes (`common::sum_magnitude` counts the points' too).
        let terms = common::dense(&g, &inp, &[g.formula().clone()], 0);
        let scale: Vec<f64> = terms
            .iter()
            .map(|row| row.iter().map(|v| v[0].abs()).sum())
            .collect();
        let ctx = format!("shift {shift}");
        check_prescaled(&g, &inp, &e, Some(&scale), &ranges, tol, &ctx);
    }
}

#[test]
fn two_threads_at_once() {
    if !gpu() {
        return;
    }
    let g = gaussian("", 3, 1);
    std::thread::scope(|s| {
        for t in 0..2 {
            let g = &g;
            s.spawn(move || {
                // Smaller under the simulator, which runs the blocks one by one.
                let (n, m) = if keops::cuda::sim::on() {
                    (500, 700)
                } else {
                    (3000, 4000)
                };
                let inp = gaussian_inputs(n, m, t);
                for _ in 0..5 {
                    check::<f32>(
                        g,
                        &inp,
                        &opts(GpuScheme::Auto, SumScheme::BlockSum),
                        "threads",
                    );
                }
            });
        }
    });
}

/// Every entry leaves the calling thread's current CUDA context as it found it (none,
/// on a new thread): PyTorch's current device follows that context, so a reduction on
/// GPU n must not move it to n.
#[test]
fn the_callers_current_context_is_kept() {
    if !real_gpu("the simulator has no CUDA contexts") {
        return;
    }
    std::thread::spawn(|| {
        use cudarc::driver::sys;
        let current = || {
            let mut c: sys::CUcontext = std::ptr::null_mut();
            // SAFETY: writes one handle; the driver is loaded (`gpu()`).
            let r = unsafe { sys::cuCtxGetCurrent(&mut c) };
            assert_eq!(r, sys::CUresult::CUDA_SUCCESS);
            c
        };
        assert!(current().is_null(), "a new thread has no current context");
        let _ = keops::cuda::status();
        assert!(current().is_null(), "status() left a context current");
        let g = gaussian("", 3, 1);
        let inp = gaussian_inputs(200, 300, 5);
        let o = opts(GpuScheme::Auto, SumScheme::BlockSum);
        run_as::<f32>(&g, &inp, &o).unwrap();
        assert!(current().is_null(), "a reduction left a context current");
        let (bufs, args) = upload(&inp, 0);
        let out = DeviceBuffer::alloc(0, 4 * 200).unwrap();
        assert!(current().is_null(), "DeviceBuffer left a context current");
        let outs = DeviceOutputs {
            values: out.ptr(),
            indices: 0,
        };
        // SAFETY: the buffers hold what the shapes say, on device 0, and live until
        // `to_vec` has waited for the device.
        unsafe { run_in_place::<f32>(&g, &args, outs, 0, &o) }.unwrap();
        assert!(current().is_null(), "run_in_place left a context current");
        let got = out.to_vec::<f32>(200).unwrap();
        let want = run_as::<f32>(&g, &inp, &o).unwrap().values.unwrap().data;
        let off = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(off < 1e-4, "in place and host data differ by {off}");
        drop((bufs, out));
        assert!(
            current().is_null(),
            "freeing a DeviceBuffer left a context current"
        );
    })
    .join()
    .unwrap();
}

/// The device's stream-ordered pool keeps freed temporaries mapped between calls (the
/// driver's default hands them back at each synchronisation); the setting reads back.
#[test]
fn the_memory_pool_keeps_freed_temporaries() {
    use keops::cuda::runtime::{pool_keep, set_pool_keep, DEFAULT_POOL_KEEP};
    if !gpu() {
        return;
    }
    if keops::cuda::sim::on() {
        assert_eq!(pool_keep(0).unwrap(), 0, "the simulator has no pool");
        set_pool_keep(0, 1 << 20).unwrap();
        return;
    }
    let kept = pool_keep(0).unwrap();
    assert!(kept >= DEFAULT_POOL_KEEP, "{kept}");
    set_pool_keep(0, 12345 << 10).unwrap();
    assert_eq!(pool_keep(0).unwrap(), 12345 << 10);
    set_pool_keep(0, kept).unwrap();
}

/// With `KEOPS_CUDA_MEMORY_POOLS=0`, as on a device without stream-ordered pools (some
/// vGPU slices, Windows TCC, Maxwell), temporaries come from `cuMemAlloc` and are freed
/// once their stream is done: the parent reruns, in a child with the variable set, this
/// test (the setting reported, and both schemes right) and, on a GPU, the in-place and
/// block-sparse suites (the simulator would build all their kernels again).
#[test]
fn temporaries_without_memory_pools_are_right() {
    use keops::cuda::runtime::{device, pool_keep, set_pool_keep};
    if !gpu() {
        return;
    }
    let sim = keops::cuda::sim::on();
    if std::env::var("KEOPS_CUDA_MEMORY_POOLS").as_deref() != Ok("0") {
        assert!(device(0).unwrap().pools, "pools are used where there are");
        let this = "temporaries_without_memory_pools_are_right";
        let suites = [
            this,
            "device_arrays_are_reduced_in_place",
            "block_sparse_matches_the_cpu_engine",
        ];
        for name in if sim { &suites[..1] } else { &suites[..] } {
            passes_in_child(name, &[("KEOPS_CUDA_MEMORY_POOLS", "0")]);
        }
        return;
    }
    assert!(!device(0).unwrap().pools);
    assert_eq!(pool_keep(0).unwrap(), 0, "no pool to keep memory in");
    set_pool_keep(0, 1 << 20).unwrap();
    let line = keops::cuda::status().devices[0].clone().unwrap();
    assert!(line.contains("synchronous allocation"), "{line}");
    let g = gaussian("", 3, 1);
    let inp = gaussian_inputs(300, 3000, 8);
    for s in [GpuScheme::OneD, GpuScheme::TwoD] {
        check::<f32>(
            &g,
            &inp,
            &opts(s, SumScheme::BlockSum),
            &format!("no pools, {s:?}"),
        );
    }
}

#[test]
fn block_sparse_matches_the_cpu_engine() {
    if !gpu() {
        return;
    }
    for batch in [vec![], vec![2]] {
        let nb = batch.iter().product::<usize>();
        let (ni, nj) = (300, 700);
        let inp = inputs(ni, nj, &batch, 9);
        // Clusters of 37 (i) and 53 (j) rows per batch entry, a third of the pairs kept,
        // some clusters with nothing kept (their rows hold the empty reduction).
        let cl = |n: usize, size: usize| -> Vec<std::ops::Range<usize>> {
            (0..nb)
                .flat_map(|b| {
                    (0..n.div_ceil(size))
                        .map(move |c| b * n + c * size..b * n + ((c + 1) * size).min(n))
                })
                .collect()
        };
        let (ci, cj) = (cl(ni, 37), cl(nj, 53));
        let keep: Vec<bool> = (0..ci.len() * cj.len())
            .map(|t| {
                let (a, c) = (t / cj.len(), t % cj.len());
                ci[a].start / ni == cj[c].start / nj && (a + 2 * c) % 3 == 0 && a % 5 != 4
            })
            .collect();
        let ranges = std::sync::Arc::new(keops::cluster::from_matrix(&ci, &cj, &keep).unwrap());
        for (f, w, r) in common::reduction_cases() {
            for axis in [0, 1] {
                let g = common::reduction_case_genred(f, w, r, axis);
                let cpu = Options {
                    ranges: Some(ranges.clone()),
                    ..Options::default()
                };
                let want = run_as::<f64>(&g, &inp, &cpu).unwrap();
                let sums = if r == Reduction::Sum {
                    &[SumScheme::Direct, SumScheme::BlockSum, SumScheme::Kahan][..]
                } else {
                    &[SumScheme::BlockSum][..]
                };
                for &sum in sums {
                    let o = Options {
                        ranges: Some(ranges.clone()),
                        ..opts(GpuScheme::Auto, sum)
                    };
                    let ctx = format!(
                        "block-sparse {} axis {axis} {sum:?} batch {batch:?}",
                        r.name()
                    );
                    let scale = vec![100.0; want.values.as_ref().map_or(0, |v| v.data.len())];
                    for o in with_rows::<f64>(&g, &o) {
                        let ctx = format!("{ctx} rows {:?}", o.gpu_rows);
                        let got =
                            run_as::<f64>(&g, &inp, &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                        check_values(&got, &want, Some(&scale), tol_for::<f64>(), &ctx);
                        check_indices_exact(&got, &want, &ctx);
                    }
                    for o in with_rows::<f32>(&g, &o) {
                        let ctx = format!("{ctx} rows {:?}", o.gpu_rows);
                        let got =
                            run_as::<f32>(&g, &inp, &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                        check_values(&got, &want, Some(&scale), tol_for::<f32>(), &ctx);
                    }
                }
            }
        }
    }
}

#[test]
fn multi_gpu_matches_the_oracle() {
    if !gpu() {
        return;
    }
    // Three parts on device 0 run the whole split-and-combine path on one GPU; `All`
    // uses every visible GPU.
    for (ni, nj, batch) in [(300, 1000, vec![]), (50, 70, vec![3]), (7, 2, vec![])] {
        let inp = inputs(ni, nj, &batch, 6);
        for (f, w, r) in common::reduction_cases() {
            if r.k().is_some_and(|k| k > ni.min(nj)) {
                continue;
            }
            for axis in [0, 1] {
                let g = common::reduction_case_genred(f, w, r, axis);
                let e = expected(&g, &inp);
                for multi in [MultiGpu::Devices(vec![0, 0, 0]), MultiGpu::All] {
                    let o = Options {
                        multi_gpu: multi.clone(),
                        ..opts(GpuScheme::Auto, SumScheme::Kahan)
                    };
                    let ctx = format!("{multi:?} {} axis {axis} {ni}x{nj}{batch:?}", r.name());
                    for o in with_rows::<f32>(&g, &o) {
                        let ctx = format!("{ctx} rows {:?} f32", o.gpu_rows);
                        check_against::<f32>(&g, &inp, &e, &o, &ctx);
                    }
                    check_against::<f64>(&g, &inp, &e, &o, &format!("{ctx} f64"));
                }
            }
        }
    }
}

/// Out of device memory, a reduction is an error naming what it was allocating and its
/// size, with what to do; it frees what it had allocated, and the next call runs. On a
/// GPU: a buffer larger than any device. Under the simulator, again in a child process
/// whose two simulated devices have 1 MiB each (`KEOPS_CUDA_SIMULATOR_MEMORY`): the
/// inputs, the outputs and the 2D scheme's partial states each too large, on one GPU and
/// split over both.
#[test]
fn device_memory_runs_out_cleanly() {
    if !gpu() {
        return;
    }
    let g = gaussian("", 3, 1);
    let points = |ni: usize, nj: usize| {
        let mut rng = Rng::new(2);
        let mut inp = Inputs::new();
        inp.push(&[ni, 3], || rng.uniform(0.0, 1.0))
            .push(&[nj, 3], || rng.uniform(0.0, 1.0));
        inp
    };
    let gauss = |ni: usize, nj: usize| gaussian_inputs(ni, nj, 3);
    let small = |ctx: &str| {
        let o = opts(GpuScheme::Auto, SumScheme::BlockSum);
        check::<f32>(&g, &gauss(100, 200), &o, &format!("after {ctx}"));
    };
    let oom = |e: keops::KeopsError, what: &str| {
        let e = e.to_string();
        assert!(
            e.contains(what)
                && e.contains("out of memory")
                && e.contains("the GPU's memory is full"),
            "expected an error {what:?}..., got: {e}"
        );
    };
    let sim = keops::cuda::sim::on();
    if !sim {
        oom(
            DeviceBuffer::alloc(0, 1 << 50).err().expect("a PiB"),
            "allocating device memory (1024.0 TiB)",
        );
        small("a PiB");
        return;
    }
    let limit = match keops::cuda::sim::memory_limit() {
        Ok(Some(limit)) => limit,
        _ => {
            let memory = (1 << 20).to_string();
            passes_in_child(
                "device_memory_runs_out_cleanly",
                &[
                    ("KEOPS_CUDA_SIMULATOR", "2"),
                    ("KEOPS_CUDA_SIMULATOR_MEMORY", &memory),
                ],
            );
            return;
        }
    };
    let free = |ctx: &str| {
        for d in 0..2 {
            assert_eq!(
                keops::cuda::sim::live_bytes(d),
                0,
                "{ctx}: device {d} leaks"
            );
        }
    };
    let o = opts(GpuScheme::Auto, SumScheme::BlockSum);
    // x (234 KiB) and y (703 KiB) fit, b does not.
    let e = run_as::<f32>(&g, &gauss(20_000, 60_000), &o).unwrap_err();
    oom(e, "copying argument 2 (234.4 KiB)");
    free("arguments");
    small("arguments");
    // 80,000 rows: inputs of 940 KiB, outputs of 312 KiB.
    let e = run_as::<f32>(&g, &gauss(80_000, 100), &o).unwrap_err();
    oom(e, "allocating the output (312.5 KiB)");
    free("outputs");
    // The 2D scheme's partial states: ArgKMin K = 50 (values and indices) of 500 rows in
    // several chunks do not fit beside 254 KiB of inputs and outputs; in one chunk (1D)
    // the same reduction fits.
    let knn = Genred::new(
        "SqDist(x,y)",
        &["x = Vi(0,3)", "y = Vj(1,3)"],
        Reduction::ArgKMin(50),
        1,
    )
    .unwrap();
    let points = points(500, 4_000);
    let two_d = Options {
        gpu_scheme: GpuScheme::TwoD,
        ..o.clone()
    };
    let e = run_as::<f32>(&knn, &points, &two_d).unwrap_err();
    oom(e, "allocating partial states (");
    free("partial states");
    let one_d = opts(GpuScheme::OneD, SumScheme::BlockSum);
    check::<f32>(&knn, &points, &one_d, "ArgKMin in one chunk");
    free("one chunk");
    // Split over both devices (a third of the reduced rows on device 0, of 2 SMs against
    // 4): the partial states do not fit beside device 0's part.
    let split = Options {
        multi_gpu: MultiGpu::All,
        ..o.clone()
    };
    let e = run_as::<f32>(&g, &gauss(30_000, 100_000), &split).unwrap_err();
    oom(e, "allocating partial states (");
    free("split");
    small("split");
    assert!(DeviceBuffer::alloc(1, limit + 1).is_err());
    free("buffer");
}

/// What is refused before any device is touched: these run on every machine.
#[test]
fn gpu_paths_refuse_bad_requests_before_touching_a_device() {
    let g = common::reduction_case_genred("SqDist(x,y)", None, Reduction::Sum, 1);
    let inp = inputs(10, 10, &[], 1);
    let o = Options {
        multi_gpu: MultiGpu::Devices(vec![]),
        ..opts(GpuScheme::Auto, SumScheme::BlockSum)
    };
    let e = run_as::<f32>(&g, &inp, &o).unwrap_err().to_string();
    assert!(e.contains("multi_gpu") && e.contains("no device"), "{e}");
    let ranges = keops::cluster::from_matrix(&[0..5, 5..10], &[0..4, 4..10], &[true; 4]).unwrap();
    let o = Options {
        multi_gpu: MultiGpu::Devices(vec![0, 0]),
        ranges: Some(std::sync::Arc::new(ranges)),
        ..opts(GpuScheme::Auto, SumScheme::BlockSum)
    };
    let e = run_as::<f32>(&g, &inp, &o).unwrap_err().to_string();
    assert!(e.contains("multi_gpu") && e.contains("ranges"), "{e}");
    // In place: one GPU, rows contiguous; without a GPU, an error naming what is missing.
    let args: Vec<DeviceArg> = inp
        .shapes
        .iter()
        .map(|s| DeviceArg {
            ptr: 0,
            shape: s.clone(),
            strides: if s.len() == 2 { vec![s[1], 1] } else { vec![1] },
        })
        .collect();
    let outs = DeviceOutputs {
        values: 0,
        indices: 0,
    };
    let multi = Options {
        multi_gpu: MultiGpu::All,
        ..Options::default()
    };
    // SAFETY: every call below is refused before it reads any pointer.
    let e = unsafe { run_in_place::<f32>(&g, &args, outs, 0, &multi) }.unwrap_err();
    assert!(e.to_string().contains("multi_gpu"), "{e}");
    let mut strided = args.clone();
    strided[0].strides = vec![1, 10];
    let e = unsafe { run_in_place::<f32>(&g, &strided, outs, 0, &Options::default()) }
        .unwrap_err()
        .to_string();
    assert!(e.contains("argument 0") && e.contains("contiguous"), "{e}");
    if keops::cuda::driver().is_err() {
        let e = unsafe { run_in_place::<f32>(&g, &args, outs, 0, &Options::default()) }
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPU") && e.contains("no CUDA driver"), "{e}");
    }
}

/// `inp` as f32 device arrays of GPU 0; argument 0 with its batch entries `pad` values
/// apart (a strided view), the others contiguous.
fn upload(inp: &common::Inputs, pad: usize) -> (Vec<DeviceBuffer>, Vec<DeviceArg>) {
    let (mut bufs, mut args) = (Vec::new(), Vec::new());
    for (k, (d, shape)) in inp.data.iter().zip(&inp.shapes).enumerate() {
        let nd = shape.len();
        let mut strides = vec![0; nd];
        let mut s = 1;
        for t in (0..nd).rev() {
            strides[t] = s;
            s *= shape[t];
        }
        let mut host: Vec<f32> = d.iter().map(|&v| v as f32).collect();
        if k == 0 && nd == 3 {
            let entry = shape[1] * shape[2];
            host = host
                .chunks(entry)
                .flat_map(|c| {
                    c.iter()
                        .copied()
                        .chain(std::iter::repeat(f32::NAN).take(pad))
                })
                .collect();
            strides[0] = entry + pad;
        }
        let buf = DeviceBuffer::from_slice(0, &host).unwrap();
        args.push(DeviceArg {
            ptr: buf.ptr(),
            shape: shape.clone(),
            strides,
        });
        bufs.push(buf);
    }
    (bufs, args)
}

#[test]
fn device_arrays_are_reduced_in_place() {
    if !gpu() {
        return;
    }
    // A stream of the caller's (the simulator's streams are its own).
    let cuda = (!keops::cuda::sim::on()).then(|| {
        let ctx = cudarc::driver::CudaContext::new(0).unwrap();
        ctx.new_stream().unwrap()
    });
    let stream = cuda.as_ref().map_or(0, |s| s.cu_stream() as u64);
    let inp = inputs(50, 700, &[3], 4);
    for (f, w, r) in common::reduction_cases() {
        for axis in [0, 1] {
            let g = common::reduction_case_genred(f, w, r, axis);
            let e = expected(&g, &inp);
            let (_bufs, args) = upload(&inp, 7);
            let shapes: Vec<&[usize]> = inp.shapes.iter().map(|s| s.as_slice()).collect();
            let (sv, si) = Layout::new(&g, &shapes).unwrap().output_shapes();
            let nv = if g.spec().output_dims().0 > 0 {
                sv.iter().product()
            } else {
                0
            };
            let ni = if g.spec().output_dims().1 > 0 {
                si.iter().product()
            } else {
                0
            };
            let out_v = DeviceBuffer::alloc(0, 4 * nv).unwrap();
            let out_i = DeviceBuffer::alloc(0, 8 * ni).unwrap();
            let outs = DeviceOutputs {
                values: out_v.ptr(),
                indices: out_i.ptr(),
            };
            let schemes = [GpuScheme::OneD, GpuScheme::TwoD];
            for o in schemes
                .iter()
                .flat_map(|&s| with_rows::<f32>(&g, &opts(s, SumScheme::BlockSum)))
            {
                // SAFETY: the buffers hold what the shapes and strides say, on device 0,
                // and live until `to_vec` has waited for the device.
                unsafe { run_in_place::<f32>(&g, &args, outs, stream, &o) }.unwrap();
                let got = Reduced {
                    values: (nv > 0).then(|| Array {
                        data: out_v.to_vec::<f32>(nv).unwrap(),
                        shape: sv.clone(),
                    }),
                    indices: (ni > 0).then(|| Array {
                        data: out_i.to_vec::<i64>(ni).unwrap(),
                        shape: si.clone(),
                    }),
                };
                let ctx = format!(
                    "in place {} axis {axis} {:?} rows {:?}",
                    r.name(),
                    o.gpu_scheme,
                    o.gpu_rows
                );
                check_values(&got, &e.want, e.scale.as_deref(), tol_for::<f32>(), &ctx);
                check_indices(&got, &e.want, &g, &inp, &ctx);
            }
        }
    }
    // Host memory, and rows that are not contiguous, are refused with the argument named.
    let g = common::reduction_case_genred("SqDist(x,y)", None, Reduction::Sum, 1);
    let inp = inputs(10, 20, &[], 2);
    let (_bufs, mut args) = upload(&inp, 0);
    let host = [0f32; 64];
    args[1].ptr = host.as_ptr() as u64;
    let out = DeviceBuffer::alloc(0, 40).unwrap();
    let outs = DeviceOutputs {
        values: out.ptr(),
        indices: 0,
    };
    let o = opts(GpuScheme::Auto, SumScheme::BlockSum);
    // SAFETY: refused before any launch.
    let e = unsafe { run_in_place::<f32>(&g, &args, outs, stream, &o) }
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("argument 1") && e.contains("not CUDA device memory"),
        "{e}"
    );
    args[1].strides = vec![1, 20];
    // SAFETY: as above.
    let e = unsafe { run_in_place::<f32>(&g, &args, outs, stream, &o) }
        .unwrap_err()
        .to_string();
    assert!(e.contains("argument 1") && e.contains("contiguous"), "{e}");
}

/// Under AddressSanitizer (`make test` runs this suite so), a kernel reading past an
/// argument's buffer is reported as it happens, as compute-sanitizer's memcheck does on
/// a GPU: a child process reduces an array whose shape claims one row more than its
/// buffer holds, and dies with the sanitizer's report. Without the sanitizer the read
/// lands in the allocation's guard bytes and only a wrong result would show.
#[test]
fn out_of_bounds_reads_are_caught_by_the_sanitized_simulator() {
    if !keops::cuda::sim::on() || !gpu() {
        return;
    }
    if !keops::cuda::sim::sanitized() {
        eprintln!("SKIPPED: the simulator runs without AddressSanitizer (make test has it)");
        return;
    }
    if std::env::var_os("KEOPS_TEST_OUT_OF_BOUNDS_CHILD").is_none() {
        let out = rerun_in_child(
            "out_of_bounds_reads_are_caught_by_the_sanitized_simulator",
            &[("KEOPS_TEST_OUT_OF_BOUNDS_CHILD", "1")],
        );
        let text = String::from_utf8_lossy(&out.stderr);
        // One row past the end: into the allocation's guard, poisoned by the simulator.
        assert!(
            !out.status.success() && text.contains("ERROR: AddressSanitizer: use-after-poison"),
            "{text}"
        );
        return;
    }
    let g = gaussian("", 3, 1);
    let inp = gaussian_inputs(100, 11, 6);
    let (_bufs, mut args) = upload(&inp, 0);
    // y's buffer holds 10 rows; its shape still says 11.
    let short = DeviceBuffer::from_slice(0, &[0.5f32; 30]).unwrap();
    args[1].ptr = short.ptr();
    let out = DeviceBuffer::alloc(0, 4 * 100).unwrap();
    let outs = DeviceOutputs {
        values: out.ptr(),
        indices: 0,
    };
    let o = opts(GpuScheme::Auto, SumScheme::BlockSum);
    // SAFETY: deliberately not: argument 1 is shorter than its shape. The sanitizer
    // stops the process at the first read past it.
    let _ = unsafe { run_in_place::<f32>(&g, &args, outs, 0, &o) };
    panic!("a read past argument 1's buffer went unreported");
}

/// The diagnostic report agrees with `available` and `driver`, and says why where a part
/// is missing (here: no driver; under `make test`'s second run: the simulator's devices).
#[test]
fn status_reports_each_part_or_why_it_is_missing() {
    let st = keops::cuda::status();
    assert_eq!(st.available, keops::cuda::available());
    match keops::cuda::driver() {
        Ok(d) => {
            assert_eq!(st.devices.len(), d.devices);
            for (id, line) in st.devices.iter().enumerate() {
                let line = line.as_ref().expect("every visible device opens");
                assert!(
                    line.starts_with(&format!("GPU {id}: ")) && line.contains("sm_"),
                    "{line}"
                );
            }
        }
        Err(e) => {
            // The reason alone, without the error's "backend GPU is not available".
            let why = st.driver.as_ref().unwrap_err();
            assert!(e.to_string().ends_with(why.as_str()), "{why}");
            assert!(!why.contains("not available"), "{why}");
            assert!(
                why.contains("no CUDA driver") || why.contains("no device"),
                "{why}"
            );
            assert!(st.devices.is_empty() && !st.available);
        }
    }
    if keops::cuda::sim::on() {
        assert!(
            st.compiler
                .as_ref()
                .is_ok_and(|c| c.starts_with("simulator")),
            "{:?}",
            st.compiler
        );
    } else if let Ok(c) = &st.compiler {
        assert!(c.starts_with("NVRTC "), "{c}");
    }
}
