#![no_main]
//! Block-sparse ranges from the fuzzer (KeOps' six arrays, any values) on a small
//! problem: checking must answer an error or accept them, and accepted ranges must give
//! the same result on every path (fused kernel and tile program, one thread and two,
//! each axis) as a direct sum over the blocks.
use keops::{Arg, CpuKernel, Genred, Options, Ranges, Reduction};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (n, m) = (1 + data[0] as usize % 9, 1 + data[1] as usize % 9);
    let nb = 1 + data[2] as usize % 2;
    // Six arrays: each starts with its length, then small values (some negative or large).
    let mut rest = data[3..].iter().copied();
    let mut arrays: Vec<Vec<i64>> = Vec::new();
    for _ in 0..6 {
        let len = rest.next().unwrap_or(0) as usize % 13;
        arrays.push(
            (0..len)
                .map(|_| match rest.next().unwrap_or(0) {
                    250 => -1,
                    251 => i64::MAX,
                    252 => i64::MIN,
                    253 => 1 << 40,
                    b => (b % 20) as i64,
                })
                .collect(),
        );
    }
    let Ok(ranges) = Ranges::from_keops(
        &arrays[0], &arrays[1], &arrays[2], &arrays[3], &arrays[4], &arrays[5],
    ) else {
        return;
    };
    let ranges = Arc::new(ranges);
    let x: Vec<f64> = (0..nb * n * 2).map(|k| (k % 7) as f64 * 0.3).collect();
    let y: Vec<f64> = (0..nb * m * 2).map(|k| (k % 5) as f64 * 0.2).collect();
    let b: Vec<f64> = (0..nb * m).map(|k| 1.0 + k as f64).collect();
    let a: Vec<f64> = (0..nb * n).map(|k| 2.0 + k as f64).collect();
    for axis in [0usize, 1] {
        let w = if axis == 1 { "b" } else { "a" };
        let g = Genred::new(
            &format!("Exp(-SqDist(x,y)) * {w}"),
            &["x = Vi(0,2)", "y = Vj(1,2)", "b = Vj(2,1)", "a = Vi(3,1)"],
            Reduction::Sum,
            axis,
        )
        .expect("formula");
        let args = [
            Arg::new(&x, [nb, n, 2]),
            Arg::new(&y, [nb, m, 2]),
            Arg::new(&b, [nb, m, 1]),
            Arg::new(&a, [nb, n, 1]),
        ];
        let mut results = Vec::new();
        for kernel in [CpuKernel::Fused, CpuKernel::TileProgram] {
            for threads in [1, 2] {
                let opts = Options {
                    ranges: Some(ranges.clone()),
                    kernel,
                    threads: Some(threads),
                    ..Options::default()
                };
                results.push(
                    g.call_with(&args, &opts)
                        .map(|r| r.values.expect("values").data),
                );
            }
        }
        let first = &results[0];
        for r in &results[1..] {
            match (first, r) {
                (Ok(p), Ok(q)) => {
                    for (u, v) in p.iter().zip(q) {
                        assert!((u - v).abs() <= 1e-12 * (1.0 + v.abs()), "{u} != {v}");
                    }
                }
                (Err(_), Err(_)) => {}
                _ => panic!("paths disagree: {first:?} / {r:?}"),
            }
        }
        // A direct sum over the blocks (one batch: indices are rows).
        if let (Ok(got), 1) = (first, nb) {
            let blocks = ranges.for_axis(axis);
            let (n_out, outs, reds, wts) = if axis == 1 {
                (n, &x, &y, &b)
            } else {
                (m, &y, &x, &a)
            };
            let mut want = vec![0.0; n_out];
            for (k, out) in blocks.ranges.iter().enumerate() {
                let lo = if k == 0 { 0 } else { blocks.slices[k - 1] };
                for o in out.clone() {
                    for red in &blocks.redranges[lo..blocks.slices[k]] {
                        for j in red.clone() {
                            let d2: f64 = (0..2)
                                .map(|c| (outs[2 * o + c] - reds[2 * j + c]).powi(2))
                                .sum();
                            want[o] += (-d2).exp() * wts[j];
                        }
                    }
                }
            }
            for (u, v) in got.iter().zip(&want) {
                assert!(
                    (u - v).abs() <= 1e-12 * (1.0 + v.abs()),
                    "{u} != direct {v}"
                );
            }
        }
    }
});
