//! Block-sparse reductions: every reduction of the suite (`common::cases`), both axes,
//! f32 and f64, both CPU code paths, with and without batch dimensions, on random
//! clusterings with random cluster-to-cluster masks (some clusters in no range at all),
//! against an oracle that knows nothing of `Ranges`: for each output row, the f64
//! reference reduction of the sub-problem made of the reduced rows its mask keeps
//! (gathered), indices mapped back; rows with nothing kept get the empty reduction.
//! Also: errors for ranges that do not fit the data.

// Lists of one cluster are lists of ranges, not ranges to expand.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use common::*;
use keops::cluster::from_matrix;
use keops::formula::Cat;
use keops::plan::Problem;
use keops::{reference, Arg, CpuKernel, Genred, Options, Ranges, Reduced};
use std::ops::Range;
use std::sync::Arc;

/// A random clustering of `n >= lo` rows into contiguous clusters of at least `lo`
/// rows (at most `hi`, but for the last).
fn clusters(n: usize, lo: usize, hi: usize, rng: &mut Rng) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut start = 0;
    while start < n {
        let len = lo + rng.below(hi - lo + 1);
        if n - start < lo + len {
            out.push(start..n);
            break;
        }
        out.push(start..start + len);
        start += len;
    }
    out
}

/// A block-sparse layout on `nb` batch entries of `n_i` and `n_j` rows (indices over the
/// flattened batch): the clusters that appear in the ranges, and the mask between them.
struct Layout {
    ci: Vec<Range<usize>>,
    cj: Vec<Range<usize>>,
    keep: Vec<bool>,
}

impl Layout {
    fn random(nb: usize, n_i: usize, n_j: usize, rng: &mut Rng) -> Layout {
        let (mut ci, mut cj, mut bi, mut bj) = (vec![], vec![], vec![], vec![]);
        for b in 0..nb {
            // Some clusters are left out of the ranges: their rows are in no block.
            // Clusters hold at least 5 rows, so that K = 5 fits any kept block.
            for c in clusters(n_i, 5, 9, rng) {
                if rng.below(6) != 0 {
                    ci.push(c.start + b * n_i..c.end + b * n_i);
                    bi.push(b);
                }
            }
            for c in clusters(n_j, 5, 9, rng) {
                if rng.below(6) != 0 {
                    cj.push(c.start + b * n_j..c.end + b * n_j);
                    bj.push(b);
                }
            }
        }
        let keep = (0..ci.len() * cj.len())
            .map(|t| bi[t / cj.len()] == bj[t % cj.len()] && rng.below(5) < 2)
            .collect();
        Layout { ci, cj, keep }
    }

    fn ranges(&self) -> Ranges {
        from_matrix(&self.ci, &self.cj, &self.keep).expect("valid layout")
    }

    /// The flattened reduced rows that output row `o` (flattened) sees along `axis`.
    fn kept(&self, axis: usize, o: usize) -> Vec<usize> {
        let (out, red, nj) = if axis == 1 {
            (&self.ci, &self.cj, self.cj.len())
        } else {
            (&self.cj, &self.ci, self.cj.len())
        };
        let Some(a) = out.iter().position(|r| r.contains(&o)) else {
            return vec![];
        };
        (0..red.len())
            .filter(|&c| {
                if axis == 1 {
                    self.keep[a * nj + c]
                } else {
                    self.keep[c * nj + a]
                }
            })
            .flat_map(|c| red[c].clone())
            .collect()
    }
}

/// The oracle: row by row, the reference reduction of the gathered kept rows.
fn masked_oracle(g: &Genred, inp: &Inputs, layout: &Layout) -> Reduced<f64> {
    let args = inp.args_f64();
    let p = Problem::new(g, &args).expect("problem");
    let full = reference::reduce(g, &args).expect("oracle shapes");
    let (n_out, n_red) = p.sizes();
    let spec = g.spec();
    let (dv, di) = spec.output_dims();
    let out_cat = if g.axis() == 1 { Cat::Vi } else { Cat::Vj };
    let mut vals = vec![0.0; p.batch_len() * n_out * dv];
    let mut idx = vec![0i64; p.batch_len() * n_out * di];
    for b in 0..p.batch_len() {
        let data = keops::cpu::batch_data(&p, b);
        for i in 0..n_out {
            let o = b * n_out + i;
            let rows: Vec<usize> = layout
                .kept(g.axis(), o)
                .into_iter()
                .map(|j| j - b * n_red)
                .collect();
            let (ov, oi) = (
                &mut vals[o * dv..(o + 1) * dv],
                &mut idx[o * di..(o + 1) * di],
            );
            if rows.is_empty() {
                let (v, ix) = spec.empty_output();
                ov.copy_from_slice(&v);
                oi.copy_from_slice(&ix);
                continue;
            }
            let gathered: Vec<(Vec<f64>, Vec<usize>)> = g
                .args()
                .iter()
                .enumerate()
                .map(|(k, d)| {
                    let d = d.expect("declared");
                    match d.cat {
                        Cat::Pm => (data[k].to_vec(), vec![d.dim]),
                        c if c == out_cat => {
                            (data[k][i * d.dim..(i + 1) * d.dim].to_vec(), vec![1, d.dim])
                        }
                        _ => (
                            rows.iter()
                                .flat_map(|&j| data[k][j * d.dim..(j + 1) * d.dim].iter().copied())
                                .collect(),
                            vec![rows.len(), d.dim],
                        ),
                    }
                })
                .collect();
            let sub: Vec<Arg<'_, f64>> = gathered.iter().map(|(v, s)| Arg::new(v, s)).collect();
            let r = reference::reduce(g, &sub).expect("sub-problem");
            if let Some(v) = r.values {
                ov.copy_from_slice(&v.data);
            }
            if let Some(ix) = r.indices {
                for (t, &k) in oi.iter_mut().zip(&ix.data) {
                    *t = if k < 0 { k } else { rows[k as usize] as i64 };
                }
            }
        }
    }
    Reduced {
        values: full.values.map(|a| keops::Array {
            data: vals,
            shape: a.shape,
        }),
        indices: full.indices.map(|a| keops::Array {
            data: idx,
            shape: a.shape,
        }),
    }
}

fn suite(nb: usize, seed: u64) {
    let (n_i, n_j) = (37, 43);
    let mut rng = Rng::new(seed);
    let batch: &[usize] = if nb > 1 { &[nb] } else { &[] };
    let cat = |a: &[usize], b: &[usize]| -> Vec<usize> { a.iter().chain(b).copied().collect() };
    let layout = Layout::random(nb, n_i, n_j, &mut rng);
    let ranges = Arc::new(layout.ranges());
    let mut count = 0;
    for axis in [1, 0] {
        for case in cases(axis) {
            let mut inp = Inputs::new();
            inp.push(&cat(batch, &[n_i, 3]), || rng.uniform(-1.0, 1.0));
            inp.push(&cat(batch, &[n_j, 3]), || rng.uniform(-1.0, 1.0));
            inp.push(&cat(batch, &[n_j, case.bd]), || rng.uniform(0.05, 1.0));
            inp.push(&cat(batch, &[1]), || rng.uniform(0.5, 2.0));
            let g = &case.genred;
            let want = masked_oracle(g, &inp, &layout);
            let scale = if g.spec().kind == keops::Reduction::Sum {
                sum_magnitude_batched(g, &inp)
            } else {
                vec![1.0; want.values.as_ref().map_or(0, |v| v.data.len())]
            };
            for kernel in [CpuKernel::Auto, CpuKernel::TileProgram] {
                let opts = Options {
                    kernel,
                    ranges: Some(ranges.clone()),
                    ..Options::default()
                };
                let ctx = format!("{} axis {axis} batch {nb} {kernel:?}", case.name);
                let got = run_as::<f64>(g, &inp, &opts).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                check_values(&got, &want, Some(&scale), TOL_F64, &format!("{ctx} f64"));
                check_indices_exact(&got, &want, &format!("{ctx} f64"));
                let got = run_as::<f32>(g, &inp, &opts).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                check_values(&got, &want, Some(&scale), TOL_F32, &format!("{ctx} f32"));
                count += 1;
            }
        }
    }
    println!("{count} block-sparse cases (batch {nb}) match the gathered oracle");
}

/// `sum_magnitude` per batch entry, concatenated (the tolerance scale of sums).
fn sum_magnitude_batched(g: &Genred, inp: &Inputs) -> Vec<f64> {
    let args = inp.args_f64();
    let p = Problem::new(g, &args).expect("problem");
    let (n_out, _) = p.sizes();
    let d = g.spec().output_dims().0;
    let mut out = Vec::new();
    for b in 0..p.batch_len() {
        let dense = dense(g, inp, std::slice::from_ref(g.formula()), b);
        for row in dense.iter().take(n_out) {
            for c in 0..d {
                out.push(row.iter().map(|v| v[c].abs()).sum::<f64>() + 1.0);
            }
        }
    }
    out
}

#[test]
fn every_reduction_block_sparse() {
    suite(1, 11);
    suite(1, 12);
}

#[test]
fn every_reduction_block_sparse_with_batch_dims() {
    suite(2, 21);
}

#[test]
fn full_ranges_equal_the_dense_reduction() {
    // One block covering everything: the dense result, bit for bit on the tile program.
    let g = Genred::new(GAUSS, &aliases(2), keops::Reduction::Sum, 1).unwrap();
    let mut rng = Rng::new(3);
    let mut inp = Inputs::new();
    inp.push(&[300, 3], || rng.uniform(-1.0, 1.0));
    inp.push(&[500, 3], || rng.uniform(-1.0, 1.0));
    inp.push(&[500, 2], || rng.uniform(0.0, 1.0));
    inp.push(&[1], || 1.0);
    let r = from_matrix(&[0..300], &[0..500], &[true]).unwrap();
    for kernel in [CpuKernel::TileProgram, CpuKernel::Fused] {
        let dense = run_as::<f32>(
            &g,
            &inp,
            &Options {
                kernel,
                threads: Some(1),
                ..Options::default()
            },
        )
        .unwrap();
        let opts = Options {
            kernel,
            threads: Some(1),
            ranges: Some(Arc::new(r.clone())),
            ..Options::default()
        };
        let sparse = run_as::<f32>(&g, &inp, &opts).unwrap();
        assert_eq!(dense, sparse, "{kernel:?}");
    }
}

#[test]
fn k_larger_than_a_block_pads_with_infinity() {
    // Row 0 sees two points, K = 3: the third is +inf with index -1, as in KeOps.
    let g = Genred::new(
        "SqDist(x,y)",
        &["x = Vi(0,1)", "y = Vj(1,1)"],
        keops::Reduction::KMinArgKMin(3),
        1,
    )
    .unwrap();
    let (x, y) = ([0.0f64, 0.0], [1.0f64, 2.0, 3.0, 4.0]);
    let r = from_matrix(&[0..1, 1..2], &[0..2, 2..4], &[true, false, true, true]).unwrap();
    let opts = Options {
        ranges: Some(Arc::new(r)),
        ..Options::default()
    };
    let out = g
        .call_with(&[Arg::new(&x, [2, 1]), Arg::new(&y, [4, 1])], &opts)
        .unwrap();
    let v = out.values.unwrap().data;
    assert_eq!(&v[..3], &[1.0, 4.0, f64::INFINITY]);
    assert_eq!(&out.indices.unwrap().data[..3], &[0, 1, -1]);
    assert_eq!(&v[3..], &[1.0, 4.0, 9.0]);
}

#[test]
fn ranges_that_do_not_fit_the_data_are_errors() {
    let g = Genred::new(
        "SqDist(x,y)",
        &["x = Vi(0,1)", "y = Vj(1,1)"],
        keops::Reduction::Sum,
        1,
    )
    .unwrap();
    let (x, y) = ([0.0f64; 4], [0.0f64; 4]);
    let call = |r: Ranges, xs: &[usize], ys: &[usize]| {
        let y = &y[..ys.iter().product::<usize>()];
        let opts = Options {
            ranges: Some(Arc::new(r)),
            ..Options::default()
        };
        g.call_with(&[Arg::new(&x, xs), Arg::new(y, ys)], &opts)
            .unwrap_err()
            .to_string()
    };
    let m = call(
        from_matrix(&[0..5], &[0..3], &[true]).unwrap(),
        &[4, 1],
        &[3, 1],
    );
    assert!(
        m.contains("ranges_i") && m.contains("out of bounds") && m.contains("4 rows"),
        "{m}"
    );
    let m = call(
        from_matrix(&[0..4], &[0..4], &[true]).unwrap(),
        &[4, 1],
        &[3, 1],
    );
    assert!(
        m.contains("redranges_j") && m.contains("out of bounds"),
        "{m}"
    );
    // Batch of 2: a block may not cross from one entry to the other.
    let m = call(
        from_matrix(&[0..2], &[1..3], &[true]).unwrap(),
        &[2, 2, 1],
        &[2, 2, 1],
    );
    assert!(
        m.contains("redranges_j") && m.contains("batch entry 0"),
        "{m}"
    );
}

#[test]
fn gradients_of_block_sparse_reductions_match_finite_differences() {
    // d<G, out>/d arg through the block-sparse forward, by central differences (f64),
    // for arguments on both sides and the parameter, both axes: the gradient reductions
    // must use the matching half of the ranges.
    let (n_i, n_j) = (14, 17);
    let mut rng = Rng::new(5);
    let layout = Layout::random(1, n_i, n_j, &mut rng);
    let opts = Options {
        ranges: Some(Arc::new(layout.ranges())),
        ..Options::default()
    };
    for axis in [1, 0] {
        for (formula, red) in [
            (GAUSS, keops::Reduction::Sum),
            ("-SqDist(x,y) * g + b", keops::Reduction::LogSumExp),
            ("SqDist(x,y) * g + b", keops::Reduction::Min),
        ] {
            let g = Genred::new(formula, &aliases(1), red, axis).unwrap();
            let mut inp = Inputs::new();
            inp.push(&[n_i, 3], || rng.uniform(-1.0, 1.0));
            inp.push(&[n_j, 3], || rng.uniform(-1.0, 1.0));
            inp.push(&[n_j, 1], || rng.uniform(0.05, 1.0));
            inp.push(&[1], || rng.uniform(0.5, 2.0));
            let out = g.call_with(&inp.args_f64(), &opts).unwrap().values.unwrap();
            let gout: Vec<f64> = (0..out.data.len())
                .map(|_| rng.uniform(-1.0, 1.0))
                .collect();
            // Rows in no block have an infinite minimum: no gradient flows from them.
            let gout: Vec<f64> = gout
                .iter()
                .zip(&out.data)
                .map(|(&v, o)| if o.is_finite() { v } else { 0.0 })
                .collect();
            let objective = |data: &[Vec<f64>]| -> f64 {
                let args: Vec<Arg<'_, f64>> = data
                    .iter()
                    .zip(&inp.shapes)
                    .map(|(d, s)| Arg::new(d, s))
                    .collect();
                let o = g.call_with(&args, &opts).unwrap().values.unwrap();
                o.data
                    .iter()
                    .zip(&gout)
                    .filter(|(o, _)| o.is_finite())
                    .map(|(o, w)| o * w)
                    .sum()
            };
            for wrt in 0..4 {
                let grad = g
                    .grad(wrt)
                    .unwrap()
                    .call_with(&inp.args_f64(), &Arg::new(&gout, &out.shape), &opts)
                    .unwrap();
                let h = 1e-6;
                for t in 0..inp.data[wrt].len() {
                    let mut d = inp.data.clone();
                    d[wrt][t] += h;
                    let up = objective(&d);
                    d[wrt][t] -= 2.0 * h;
                    let down = objective(&d);
                    let fd = (up - down) / (2.0 * h);
                    assert!(
                        (grad.data[t] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                        "{formula} {} axis {axis} d/d arg {wrt} [{t}]: {} vs FD {fd}",
                        red.name(),
                        grad.data[t]
                    );
                }
            }
        }
    }
}
