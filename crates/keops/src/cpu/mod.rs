//! The CPU engine: plans compiled into tile programs (or matched to fused kernels) and
//! run over blocks of output rows with rayon, SIMD-dispatched at run time.
//!
//! Work is split into [`Job`]s: a batch entry, a block of output rows and a range of the
//! reduced axis. The reduced axis is split too when there are too few output rows to
//! keep every core busy; the partial states of a row are then combined in index order.
//! Each job writes `f64` reduction states, finalized into the output arrays at the end.

mod accumulate;
mod exec;
pub(crate) mod fpmode;
pub mod fused;
pub mod program;
pub mod simd;
mod threads;
mod tile;

use crate::error::{try_vec, KeopsError, Result};
use crate::plan::{CpuKernel, Element, Options, Problem, Reduced};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;

pub use exec::TileRunner;
pub use simd::Isa;
pub use threads::adopt_current_thread;
pub(crate) use threads::task_min_len;

/// What the CPU engine derives from a [`Genred`](crate::Genred) alone: the fused kernel
/// its formula matches and its tile program. Each is made on first use and kept with the
/// `Genred` (which never changes), so a call does not analyse the formula again: at
/// N = 10 that analysis was half of a call.
#[derive(Default)]
pub(crate) struct Compiled {
    radial: OnceLock<Option<fused::RadialSum>>,
    program: OnceLock<program::TileProgram>,
}

impl Compiled {
    /// The fused kernel that the formula matches, if any.
    fn radial(&self, g: &crate::Genred) -> Option<&fused::RadialSum> {
        self.radial
            .get_or_init(|| fused::RadialSum::find(g.formula(), g.out_cat()))
            .as_ref()
    }

    /// The tile program of the formula (and weight).
    fn program(&self, g: &crate::Genred) -> &program::TileProgram {
        self.program.get_or_init(|| {
            let roots = g.roots();
            // A Sum sums its formula; a weighted LogSumExp/SumSoftMaxWeight its weight.
            let summed = match g.spec().kind {
                crate::reduction::Reduction::Sum => Some(0),
                _ => (roots.len() == 2).then_some(1),
            };
            program::TileProgram::compile(&roots, g.out_cat(), summed)
        })
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").finish_non_exhaustive()
    }
}

/// One unit of parallel work.
#[derive(Clone, Debug)]
pub struct Job {
    /// Flat batch index.
    pub batch: usize,
    /// Output rows.
    pub rows: Range<usize>,
    /// Reduced rows: one range, or a block-sparse cluster's ranges (sorted, disjoint).
    pub red: Vec<Range<usize>>,
}

impl Job {
    /// The longest of the reduced ranges (tiles need not be longer).
    pub fn longest_red(&self) -> usize {
        self.red.iter().map(|r| r.len()).max().unwrap_or(0)
    }
}

/// The reduction states of a job's rows (row-major, `state_len` per row).
#[derive(Clone, Debug, Default)]
pub struct Block {
    /// Value states.
    pub vals: Vec<f64>,
    /// Index states.
    pub idx: Vec<i64>,
}

/// Something that computes the states of a job: the tile program or a fused kernel.
pub trait BlockRunner: Sync {
    /// Folds the job's pairs into `block` (already initialised).
    fn run(&self, isa: Isa, job: &Job, block: &mut Block);
}

/// A row-major `(rows, dim)` array as `dim` rows of `rows` values.
fn transpose<T: Element>(src: &[T], rows: usize, dim: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; rows * dim];
    for (r, row) in src.chunks_exact(dim).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// The arguments' data for one batch entry.
pub fn batch_data<'a, T: Element>(p: &Problem<'a, T>, b: usize) -> Vec<&'a [T]> {
    p.args
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let off = p.batch_offset(k, b);
            let len: usize = match p.genred.args()[k] {
                Some(d) if d.cat == crate::formula::Cat::Pm => d.dim,
                Some(d) => a.shape[a.shape.len() - 2] * d.dim,
                None => 0,
            };
            &a.data[off..off + len]
        })
        .collect()
}

/// Rows per job (block-sparse problems; dense ones take up to [`WIDE_ROW_BLOCKS`] times
/// more, see [`dense_row_block`]).
const ROW_BLOCK: usize = 32;
/// The most row blocks a dense job takes at once.
const WIDE_ROW_BLOCKS: usize = 8;

/// Rows per job of a dense problem whose reduced side brings `red_bytes` bytes per
/// index: a job streams its whole reduced range once for all its rows, so where points
/// are wide (k-NN of embeddings) 32 rows read the reduced side from L3 or memory faster
/// than they use it; a block of 32 rows per 32 bytes, up to 256 rows (a 10-NN at D = 64
/// in float32, N = M = 5·10^4, 1.3x faster; a Gaussian sum at D = 256 1.5x, one with
/// weights of width 1,000 1.45x). Never fewer than 4 jobs per thread where 32 rows gave
/// that many.
fn dense_row_block(red_bytes: usize, n_out: usize, threads: usize) -> usize {
    let wide = (red_bytes / 32).clamp(1, WIDE_ROW_BLOCKS);
    let balanced = (n_out / (4 * threads.max(1)) / ROW_BLOCK).max(1);
    ROW_BLOCK * wide.min(balanced)
}
/// Smallest range of the reduced axis worth a job of its own.
const MIN_RED_CHUNK: usize = 2048;

/// What the CPU engine runs with by default, called from this thread: its instruction
/// set and its threads (the pool this thread belongs to, else rayon's global one:
/// `RAYON_NUM_THREADS`, else one per core); an error when `KEOPS_CPU_ISA` names no
/// instruction set.
pub fn status() -> Result<(Isa, usize)> {
    Ok((Isa::select(None)?, rayon::current_num_threads()))
}

/// Runs a problem on the CPU.
pub fn run<T: Element>(problem: &Problem<'_, T>, opts: &Options) -> Result<Reduced<T>> {
    if opts.threads == Some(0) {
        return Err(KeopsError::Option {
            name: "threads".into(),
            msg: "must be at least 1".into(),
        });
    }
    let fused = match opts.kernel {
        CpuKernel::TileProgram => None,
        _ => fused::FusedRunner::new(problem, opts),
    };
    if opts.kernel == CpuKernel::Fused && fused.is_none() {
        return Err(KeopsError::Option {
            name: "kernel".into(),
            msg: "no fused kernel matches this formula and reduction".into(),
        });
    }
    let isa = opts.isa;
    let flush = opts.fast_math && T::FAST_MATH;
    let go = |threads: usize| match &fused {
        Some(f) => drive(problem, f, threads, isa, flush),
        None => drive(
            problem,
            &TileRunner::new(problem, opts),
            threads,
            isa,
            flush,
        ),
    };
    let (n_out, n_red) = problem.sizes();
    let pairs = match problem.ranges {
        Some(blocks) => blocks.pairs(),
        None => problem
            .batch_len()
            .saturating_mul(n_out)
            .saturating_mul(n_red),
    };
    threads::run(opts.threads, pairs, go)
}

/// The jobs of a problem, in groups: the jobs of one group share a batch entry and output
/// rows, and their states are combined in order. Dense: row blocks, the reduced axis cut
/// into chunks when there are too few row blocks for the threads. Block-sparse: row
/// blocks of each cluster, with the cluster's reduced ranges.
fn plan_jobs<T: Element>(problem: &Problem<'_, T>, threads: usize) -> Vec<Vec<Job>> {
    let (n_out, n_red) = problem.sizes();
    let nb = problem.batch_len();
    if let Some(blocks) = problem.ranges {
        let mut groups = Vec::new();
        for (k, r) in blocks.ranges.iter().enumerate() {
            if r.is_empty() {
                continue;
            }
            // Indices run over the flattened batch; checked to stay in one entry.
            let b = r.start / n_out.max(1);
            let (o, ro) = (b * n_out, b * n_red);
            let red: Vec<Range<usize>> = blocks
                .reduced(k)
                .iter()
                .filter(|q| !q.is_empty())
                .map(|q| q.start - ro..q.end - ro)
                .collect();
            let mut start = r.start - o;
            while start < r.end - o {
                let end = (start + ROW_BLOCK).min(r.end - o);
                groups.push(vec![Job {
                    batch: b,
                    rows: start..end,
                    red: red.clone(),
                }]);
                start = end;
            }
        }
        return groups;
    }
    let red_cat = problem.genred.red_cat();
    let red_dims: usize = (problem.genred.args().iter().flatten())
        .filter(|a| a.cat == red_cat)
        .map(|a| a.dim)
        .sum();
    let block = dense_row_block(red_dims * std::mem::size_of::<T>(), n_out, threads);
    let row_blocks = n_out.div_ceil(block);
    let want = 4 * threads;
    let chunks = if nb * row_blocks >= want || n_red < 2 * MIN_RED_CHUNK {
        1
    } else {
        want.div_ceil((nb * row_blocks).max(1))
            .min(n_red / MIN_RED_CHUNK)
            .max(1)
    };
    let chunk_len = n_red.div_ceil(chunks).max(1);
    let mut groups = Vec::with_capacity(nb * row_blocks);
    for b in 0..nb {
        for rb in 0..row_blocks {
            let rows = rb * block..((rb + 1) * block).min(n_out);
            groups.push(
                (0..chunks)
                    .map(|c| Job {
                        batch: b,
                        rows: rows.clone(),
                        red: std::iter::once(
                            (c * chunk_len).min(n_red)..((c + 1) * chunk_len).min(n_red),
                        )
                        .collect(),
                    })
                    .collect(),
            );
        }
    }
    groups
}

/// Fills `out` with `pattern` repeated: one row's values for every row.
fn repeat_into<T: Copy>(out: &mut [T], pattern: &[T]) {
    for (o, &e) in out.iter_mut().zip(pattern.iter().cycle()) {
        *o = e;
    }
}

/// Splits the problem into jobs, runs them in parallel (with subnormals flushed to zero
/// when `flush`), combines and finalizes.
fn drive<T: Element, R: BlockRunner>(
    problem: &Problem<'_, T>,
    runner: &R,
    threads: usize,
    isa_cap: Option<Isa>,
    flush: bool,
) -> Result<Reduced<T>> {
    let spec = *problem.genred.spec();
    let (n_out, _) = problem.sizes();
    let nb = problem.batch_len();
    let groups = plan_jobs(problem, threads);
    let (sv, si) = spec.state_len();
    let isa = Isa::select(isa_cap)?;
    // One row's initial state, copied to every row of a job (initialised row by row,
    // the short fills were library calls: a fifth of a call at N = M = 100).
    let (mut init_v, mut init_i) = (vec![0.0; sv], vec![0i64; si]);
    spec.init(&mut init_v, &mut init_i);
    let run_job = |job: &Job| {
        let _mode = fpmode::FlushSubnormals::enter(flush);
        let n = job.rows.len();
        let mut block = Block {
            vals: try_vec(n * sv, 0.0, "the reduction's states")?,
            idx: try_vec(n * si, 0, "the reduction's states")?,
        };
        repeat_into(&mut block.vals, &init_v);
        repeat_into(&mut block.idx, &init_i);
        if job.longest_red() > 0 {
            runner.run(isa, job, &mut block);
        }
        Ok(block)
    };
    // The outputs first: a result too large for memory is an error before any work.
    let (dv, di) = spec.output_dims();
    let total_rows = nb * n_out;
    let (mut out_v, mut out_i) = (
        try_vec(total_rows.saturating_mul(dv), T::ZERO, "the output")?,
        try_vec(total_rows.saturating_mul(di), 0i64, "the output's indices")?,
    );
    if problem.ranges.is_some() {
        // Rows in no cluster hold the value of an empty reduction, as in KeOps.
        let (v, i) = spec.empty_output();
        let v: Vec<T> = v.iter().map(|&e| T::from_f64(e)).collect();
        repeat_into(&mut out_v, &v);
        repeat_into(&mut out_i, &i);
    }
    let jobs: Vec<&Job> = groups.iter().flatten().collect();
    let blocks: Vec<Block> = if threads == 1 {
        jobs.iter().map(|j| run_job(j)).collect::<Result<_>>()?
    } else {
        jobs.par_iter().map(|j| run_job(j)).collect::<Result<_>>()?
    };

    let mut fin_v = vec![0.0f64; dv];
    let mut blocks = blocks.into_iter();
    for group in &groups {
        let mut acc = blocks.next().expect("one block per job");
        for _ in 1..group.len() {
            let other = blocks.next().expect("one block per job");
            for r in 0..group[0].rows.len() {
                spec.combine(
                    (
                        &mut acc.vals[r * sv..(r + 1) * sv],
                        &mut acc.idx[r * si..(r + 1) * si],
                    ),
                    (
                        &other.vals[r * sv..(r + 1) * sv],
                        &other.idx[r * si..(r + 1) * si],
                    ),
                );
            }
        }
        let job = &group[0];
        for (r, row) in job.rows.clone().enumerate() {
            let o = job.batch * n_out + row;
            spec.finalize(
                &acc.vals[r * sv..(r + 1) * sv],
                &acc.idx[r * si..(r + 1) * si],
                &mut fin_v,
                &mut out_i[o * di..(o + 1) * di],
            );
            for (d, &v) in out_v[o * dv..(o + 1) * dv].iter_mut().zip(&fin_v) {
                *d = T::from_f64(v);
            }
        }
    }
    Ok(Reduced::assemble(
        out_v,
        out_i,
        problem.output_shapes(),
        spec.output_dims(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_points_take_larger_row_blocks() {
        // 3-D float32 points and a weight: 16 bytes per index, the usual 32 rows.
        assert_eq!(dense_row_block(16, 100_000, 2), 32);
        assert_eq!(dense_row_block(64, 100_000, 2), 64);
        // D = 64 in float32 and more: 8 blocks.
        assert_eq!(dense_row_block(256, 100_000, 2), 256);
        assert_eq!(dense_row_block(4096, 100_000, 2), 256);
        // Small problems keep 4 jobs per thread: 1,000 rows on 2 threads, 125 per job.
        assert_eq!(dense_row_block(256, 1_000, 2), 96);
        assert_eq!(dense_row_block(256, 1_000, 16), 32);
        assert_eq!(dense_row_block(256, 10, 0), 32);
    }
}
