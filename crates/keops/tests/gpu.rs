//! The CUDA engine on a GPU: every reduction (both axes, every sum scheme, batch dims)
//! and every op case against the f64 oracle in f32 and f64, with the 1D and 2D schemes
//! forced; calls from two threads at once; empty reductions. Skipped, with a printed
//! reason, where no GPU can run (no driver, no device or no NVRTC).

mod common;

use common::op_cases::{cases, ALIASES};
use common::{check_indices_exact, check_values, run_as, tol_for, Inputs, Rng};
use keops::formula::ops::all_specs;
use keops::plan::GpuScheme;
use keops::{Backend, Element, Genred, Options, Reduction, SumScheme};

fn gpu() -> bool {
    if let Err(e) = keops::cuda::driver() {
        eprintln!("SKIPPED: no GPU: {e}");
        return false;
    }
    if !keops::cuda::available() {
        eprintln!("SKIPPED: a GPU but no NVRTC (set KEOPS_NVRTC)");
        return false;
    }
    true
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

fn check<T: Element>(g: &Genred, inp: &Inputs, o: &Options, ctx: &str) {
    let want = keops::reference::reduce(g, &inp.args_f64()).unwrap();
    let got = run_as::<T>(g, inp, o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let scale = common::sum_magnitude(g, inp);
    let scale = (g.spec().kind == Reduction::Sum).then_some(&scale[..]);
    check_values(&got, &want, scale, tol_for::<T>(), ctx);
    check_indices_exact(&got, &want, ctx);
}

#[test]
fn every_reduction_matches_the_oracle() {
    if !gpu() {
        return;
    }
    // Sizes that leave partial tiles and partial blocks; a batch.
    for (ni, nj, batch) in [(300, 1000, vec![]), (7, 5000, vec![]), (50, 70, vec![3])] {
        let inp = inputs(ni, nj, &batch, 5);
        for (f, w, r) in common::reduction_cases() {
            for axis in [0, 1] {
                let g = common::reduction_case_genred(f, w, r, axis);
                for scheme in [GpuScheme::OneD, GpuScheme::TwoD, GpuScheme::Auto] {
                    for sum in [SumScheme::Direct, SumScheme::BlockSum, SumScheme::Kahan] {
                        let ctx = format!(
                            "{} axis {axis} {scheme:?} {sum:?} {ni}x{nj}{batch:?}",
                            r.name()
                        );
                        check::<f32>(&g, &inp, &opts(scheme, sum), &format!("{ctx} f32"));
                        check::<f64>(&g, &inp, &opts(scheme, sum), &format!("{ctx} f64"));
                    }
                }
            }
        }
    }
}

#[test]
fn every_op_matches_the_oracle() {
    if !gpu() {
        return;
    }
    for spec in all_specs() {
        for case in cases(spec.name).unwrap_or_default() {
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
        }
    }
}

#[test]
fn high_dimensions_and_empty_reductions() {
    if !gpu() {
        return;
    }
    let g = Genred::new(
        "Exp(-SqDist(x,y)) * b",
        &["x = Vi(0,300)", "y = Vj(1,300)", "b = Vj(2,4)"],
        Reduction::Sum,
        1,
    )
    .unwrap();
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
fn two_threads_at_once() {
    if !gpu() {
        return;
    }
    let g = Genred::new(
        "Exp(-SqDist(x,y)) * b",
        &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"],
        Reduction::Sum,
        1,
    )
    .unwrap();
    std::thread::scope(|s| {
        for t in 0..2 {
            let g = &g;
            s.spawn(move || {
                let mut rng = Rng::new(t);
                let mut inp = Inputs::new();
                inp.push(&[3000, 3], || rng.uniform(-1.0, 1.0))
                    .push(&[4000, 3], || rng.uniform(-1.0, 1.0))
                    .push(&[4000, 1], || rng.uniform(-1.0, 1.0));
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
                for sum in [SumScheme::Direct, SumScheme::BlockSum, SumScheme::Kahan] {
                    let o = Options {
                        ranges: Some(ranges.clone()),
                        ..opts(GpuScheme::Auto, sum)
                    };
                    let ctx = format!(
                        "block-sparse {} axis {axis} {sum:?} batch {batch:?}",
                        r.name()
                    );
                    let scale = vec![100.0; want.values.as_ref().map_or(0, |v| v.data.len())];
                    let got = run_as::<f64>(&g, &inp, &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    check_values(&got, &want, Some(&scale), tol_for::<f64>(), &ctx);
                    check_indices_exact(&got, &want, &ctx);
                    let got = run_as::<f32>(&g, &inp, &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    check_values(&got, &want, Some(&scale), tol_for::<f32>(), &ctx);
                }
            }
        }
    }
}
