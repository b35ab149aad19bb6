//! One reduction over several GPUs ([`MultiGpu`]).
//!
//! The reduced axis is split into contiguous parts proportional to the devices'
//! multiprocessor counts. Each device receives the output-side arguments, the
//! parameters and its part of the reduced side (so memory per device is the output side
//! plus its share of the reduced side), and its reduction kernel writes the partial
//! states of every output row (`Target::States`, with `j_base` so that indices are
//! those of the whole problem). The states come back to the host and go, in index
//! order, to the first device, whose `{name}_combine` kernel (the 2D scheme's) combines
//! and finalizes them: results are those of one GPU, ties included. A kernel by columns
//! ([`super::columns`]) does so for each group of columns.

use super::runtime::{
    combine, download, enqueue, group_outputs, group_starts, prepare, run as run_one, upload_args,
    Call, CallInfo, OutputBufs, Prepared, StreamBuf, Target,
};
use crate::error::{KeopsError, Result};
use crate::plan::{Arg, Element, MultiGpu, Options, Problem, Reduced};
use std::borrow::Cow;
use std::ops::Range;

/// The devices `m` names (`None`: one GPU, `Options::device_id`).
pub fn devices(m: &MultiGpu) -> Result<Option<Vec<usize>>> {
    match m {
        MultiGpu::Off => Ok(None),
        MultiGpu::All => Ok(Some((0..super::driver()?.devices).collect())),
        MultiGpu::Devices(ids) if ids.is_empty() => Err(KeopsError::Option {
            name: "multi_gpu".into(),
            msg: "lists no device".into(),
        }),
        MultiGpu::Devices(ids) => Ok(Some(ids.clone())),
    }
}

/// `0..n` cut into one contiguous range per weight, of lengths proportional to the
/// weights (rounded down at each boundary, so the ranges cover `0..n` exactly).
pub fn split(n: usize, weights: &[usize]) -> Vec<Range<usize>> {
    let total: u128 = weights.iter().map(|&w| w as u128).sum::<u128>().max(1);
    let mut acc = 0u128;
    let mut start = 0;
    weights
        .iter()
        .map(|&w| {
            acc += w as u128;
            let end = (n as u128 * acc / total) as usize;
            let r = start..end.max(start);
            start = r.end;
            r
        })
        .collect()
}

/// The arguments of `problem` with the reduced side cut to rows `rows` (per batch
/// entry of each argument); the others borrowed as they are.
pub fn slice_reduced<'a, T: Element>(
    problem: &Problem<'a, T>,
    rows: Range<usize>,
) -> Vec<(Cow<'a, [T]>, Vec<usize>)> {
    let red_cat = problem.genred.red_cat();
    problem
        .args
        .iter()
        .zip(problem.genred.args())
        .map(|(a, d)| {
            if !d.is_some_and(|d| d.cat == red_cat) {
                return (Cow::Borrowed(a.data), a.shape.clone());
            }
            let nd = a.shape.len();
            let (n, dim) = (a.shape[nd - 2], a.shape[nd - 1]);
            let mut data = Vec::with_capacity(a.data.len() / n.max(1) * rows.len());
            for entry in a.data.chunks_exact((n * dim).max(1)) {
                data.extend_from_slice(&entry[rows.start * dim..rows.end * dim]);
            }
            let mut shape = a.shape.clone();
            shape[nd - 2] = rows.len();
            (Cow::Owned(data), shape)
        })
        .collect()
}

/// The partial states of every output row over reduced rows `rows`, computed on GPU
/// `id`: raw state structs `[group of columns][batch][chunk][row]`, and the number of
/// chunks.
fn part_states<T: Element>(
    id: usize,
    problem: &Problem<'_, T>,
    rows: Range<usize>,
    opts: &Options,
) -> Result<(Vec<u8>, usize, CallInfo)> {
    let sliced = slice_reduced(problem, rows.clone());
    let args: Vec<Arg<'_, T>> = sliced.iter().map(|(d, s)| Arg::new(d, s)).collect();
    let sub = Problem::new(problem.genred, &args)?;
    let Prepared {
        dev,
        spec,
        launch: l,
        kernels: k,
        origin,
    } = prepare::<T>(id, problem.genred, &sub.layout, opts)?;
    let stream = dev.new_stream()?;
    let s = stream.raw;
    let bufs = upload_args(&sub.args, s)?;
    let ptrs: Vec<u64> = bufs.iter().map(|b| b.ptr).collect();
    let groups = group_starts(&spec).len();
    let bytes = groups * sub.batch_len() * l.grid.1 * sub.sizes().0 * spec.state_bytes();
    let part = StreamBuf::alloc(bytes, s, "allocating partial states")?;
    let call = Call {
        layout: &sub.layout,
        ranges: None,
        ptrs: &ptrs,
        j_base: rows.start,
        target: Target::States(part.ptr),
    };
    // SAFETY: arguments and states were sized from `sub`, on this device, and live
    // until the download has synchronised the stream.
    let states = unsafe {
        enqueue(&k, &spec, &l, &call, s)?;
        download::<u8>(part.ptr, bytes, s)?
    };
    Ok((states, l.grid.1, CallInfo { launch: l, origin }))
}

/// Runs a problem whose data is on the host over GPUs `ids` (at least two).
pub fn run<T: Element>(
    problem: &Problem<'_, T>,
    opts: &Options,
    ids: &[usize],
) -> Result<(Reduced<T>, CallInfo)> {
    if problem.ranges.is_some() {
        return Err(KeopsError::Option {
            name: "multi_gpu".into(),
            msg: "block-sparse reductions (ranges) run on one GPU".into(),
        });
    }
    let (n_out, n_red) = problem.sizes();
    let nbatch = problem.batch_len();
    let weights = ids
        .iter()
        .map(|&id| super::runtime::device(id).map(|d| d.sms))
        .collect::<Result<Vec<_>>>()?;
    let parts: Vec<(usize, Range<usize>)> = ids
        .iter()
        .copied()
        .zip(split(n_red, &weights))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    let one = |id: usize| {
        let opts = Options {
            device_id: id,
            multi_gpu: MultiGpu::Off,
            ..opts.clone()
        };
        run_one(problem, &opts)
    };
    if parts.len() < 2 || n_out == 0 || nbatch == 0 {
        return one(parts.first().map_or(ids[0], |p| p.0));
    }
    let results: Vec<Result<(Vec<u8>, usize, CallInfo)>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|(id, r)| s.spawn(move || part_states(*id, problem, r.clone(), opts)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(KeopsError::Cuda("a GPU worker thread panicked".into()))
                })
            })
            .collect()
    });
    let results = results.into_iter().collect::<Result<Vec<_>>>()?;
    // States in index order: [group][batch][part][chunk][row].
    let Prepared {
        dev: dev0,
        spec,
        kernels: k,
        ..
    } = prepare::<T>(parts[0].0, problem.genred, &problem.layout, opts)?;
    let starts = group_starts(&spec);
    let row_bytes = n_out * spec.state_bytes();
    let total_chunks: usize = results.iter().map(|r| r.1).sum();
    let group_bytes = nbatch * total_chunks * row_bytes;
    let mut states = Vec::with_capacity(starts.len() * group_bytes);
    for g in 0..starts.len() {
        for b in 0..nbatch {
            for (st, nchunks, _) in &results {
                let per_batch = nchunks * row_bytes;
                let at = g * nbatch * per_batch + b * per_batch;
                states.extend_from_slice(&st[at..at + per_batch]);
            }
        }
    }
    let stream = dev0.new_stream()?;
    let s = stream.raw;
    let part = StreamBuf::upload(&states, s, "copying partial states")?;
    let out = OutputBufs::alloc(problem, s)?;
    // Each group of columns (one, of whole rows, for most kernels) combined into its
    // columns of the outputs.
    for (g, &start) in starts.iter().enumerate() {
        // SAFETY: states and outputs were sized above, on this device, and live until
        // the download has synchronised the stream.
        unsafe {
            combine(
                &k,
                (n_out, total_chunks, nbatch),
                part.ptr + (g * group_bytes) as u64,
                group_outputs(&spec, out.pointers(), start),
                s,
            )?
        };
    }
    Ok((out.download(problem, s)?, results[0].2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Genred;
    use crate::reduction::Reduction;

    #[test]
    fn parts_are_proportional_and_cover_the_axis() {
        assert_eq!(split(10, &[1, 1]), vec![0..5, 5..10]);
        assert_eq!(split(10, &[132, 66]), vec![0..6, 6..10]);
        assert_eq!(split(2, &[1, 1, 1]), vec![0..0, 0..1, 1..2]);
        assert_eq!(split(0, &[3, 5]), vec![0..0, 0..0]);
        let parts = split(1_000_003, &[132, 108, 132, 7]);
        assert_eq!(parts.first().unwrap().start, 0);
        assert_eq!(parts.last().unwrap().end, 1_000_003);
        assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn reduced_side_is_sliced_per_batch_entry() {
        // Reduction over j: y and b are cut, x and the parameter are not.
        let g = Genred::new(
            "Exp(-SqDist(x,y)*p) * b",
            &["x = Vi(0,2)", "y = Vj(1,2)", "b = Vj(2,1)", "p = Pm(3,1)"],
            Reduction::Sum,
            1,
        )
        .unwrap();
        let x: Vec<f64> = (0..2 * 3 * 2).map(|v| v as f64).collect();
        let y: Vec<f64> = (0..2 * 4 * 2).map(|v| v as f64).collect();
        let b: Vec<f64> = (0..4).map(|v| v as f64).collect();
        let p = [0.5];
        let args = [
            Arg::new(&x, [2, 3, 2]),
            Arg::new(&y, [2, 4, 2]),
            Arg::new(&b, [1, 4, 1]),
            Arg::new(&p, [1]),
        ];
        let problem = Problem::new(&g, &args).unwrap();
        let s = slice_reduced(&problem, 1..3);
        assert!(matches!(s[0].0, Cow::Borrowed(_)) && matches!(s[3].0, Cow::Borrowed(_)));
        assert_eq!(s[1].1, vec![2, 2, 2]);
        assert_eq!(&s[1].0[..], &[2.0, 3.0, 4.0, 5.0, 10.0, 11.0, 12.0, 13.0]);
        assert_eq!(
            (&s[2].0[..], &s[2].1[..]),
            (&[1.0, 2.0][..], &[1, 2, 1][..])
        );
    }

    #[test]
    fn parts_of_a_reduction_add_up_to_it() {
        // What the GPUs compute, checked with the CPU engine: a Sum over the parts (with
        // the parts' reduced sides sliced as they are sent) is the Sum over the whole.
        let g = Genred::new(
            "Exp(-SqDist(x,y)) * b",
            &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"],
            Reduction::Sum,
            1,
        )
        .unwrap();
        let v = |n: usize, s: f64| (0..n).map(|i| ((i as f64) * s).sin()).collect::<Vec<_>>();
        let (x, y, b) = (v(2 * 5 * 3, 0.7), v(2 * 11 * 3, 0.3), v(2 * 11, 1.1));
        let args = [
            Arg::new(&x, [2, 5, 3]),
            Arg::new(&y, [2, 11, 3]),
            Arg::new(&b, [2, 11, 1]),
        ];
        let problem = Problem::new(&g, &args).unwrap();
        let whole = g.call(&args).unwrap().values.unwrap();
        let mut total = vec![0.0; whole.data.len()];
        for r in split(11, &[132, 66, 100]) {
            let s = slice_reduced(&problem, r);
            let part: Vec<Arg<'_, f64>> = s.iter().map(|(d, sh)| Arg::new(d, sh)).collect();
            let out = g.call(&part).unwrap().values.unwrap();
            total.iter_mut().zip(&out.data).for_each(|(t, o)| *t += o);
        }
        for (t, w) in total.iter().zip(&whole.data) {
            assert!((t - w).abs() < 1e-12, "{t} vs {w}");
        }
    }
}
