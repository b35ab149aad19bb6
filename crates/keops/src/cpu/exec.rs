//! Running a tile program over a block of output rows and a range of reduced rows.

use super::accumulate::{
    accumulate, weighted_sums, Exps, RowSummand, Scales, Weights, GEMM_MIN_COLS, GEMM_MIN_ROWS,
};
use super::program::{Instr, RowOp, ScalarStep, Src, TileProgram};
use super::simd::{multiversion, Isa};
use super::tile::{exec, row_group, sqdist_rows, ArgData, Lane, Regs};
use super::{Block, BlockRunner, Job};
use crate::formula::{eval, Cat};
use crate::plan::{AccType, Element, Options, Problem, SumScheme};
use crate::real::{MathMode, Real};
use crate::reduction::{Reduction, ReductionSpec};

/// The tile program of a problem, ready to run blocks.
pub struct TileRunner<'p, 'a, T> {
    problem: &'p Problem<'a, T>,
    prog: &'a TileProgram,
    spec: ReductionSpec,
    scheme: SumScheme,
    acc64: bool,
    out_cat: Cat,
    /// Per batch entry and argument: the reduced-side arguments of dimension > 1 that
    /// the program loads, dimension-major (see [`ArgData::DimMajor`]).
    dim_major: Vec<Vec<Option<Vec<T>>>>,
}

impl<'p, 'a, T: Element> TileRunner<'p, 'a, T> {
    /// Compiles the problem's formulas.
    pub fn new(problem: &'p Problem<'a, T>, opts: &Options) -> Self {
        let g = problem.genred;
        let out_cat = g.out_cat();
        let prog = g.cpu().program(g);
        let (_, n_red) = problem.sizes();
        let loaded: Vec<(usize, usize)> = prog
            .tile_instrs
            .iter()
            .chain(&prog.pair_instrs)
            .filter_map(|ins| match *ins {
                Instr::Load { arg, dim, .. } if dim > 1 => Some((arg, dim)),
                _ => None,
            })
            .collect();
        let dim_major = (0..problem.batch_len())
            .map(|b| {
                let data = super::batch_data(problem, b);
                (0..data.len())
                    .map(|k| {
                        let &(_, dim) = loaded.iter().find(|(a, _)| *a == k)?;
                        Some(super::transpose(data[k], n_red, dim))
                    })
                    .collect()
            })
            .collect();
        TileRunner {
            problem,
            dim_major,
            prog,
            spec: *g.spec(),
            scheme: opts.sum_scheme,
            acc64: opts.dtype_acc == AccType::Float64,
            out_cat,
        }
    }

    /// The compiled program.
    pub fn program(&self) -> &TileProgram {
        self.prog
    }
}

/// Runs scalar steps into `buf`; `row` is the output row for the output side's variables.
fn run_scalar<T: Element, M: MathMode>(
    steps: &[ScalarStep],
    buf: &mut [T],
    data: &[&[T]],
    out_cat: Cat,
    row: usize,
) {
    for s in steps {
        match s {
            ScalarStep::Load { off, arg, cat, dim } => {
                let r = if *cat == out_cat { row } else { 0 };
                buf[*off..off + dim].copy_from_slice(&data[*arg][r * dim..(r + 1) * dim]);
            }
            ScalarStep::Apply { op, off, dim, args } => {
                // Operands precede the node in the buffer.
                let (before, after) = buf.split_at_mut(*off);
                let a: Vec<&[T]> = args.iter().map(|&(o, d)| &before[o..o + d]).collect();
                eval::apply::<T, M>(op, &a, &mut after[..*dim]);
            }
        }
    }
}

/// The fewest rows for which a block computes an [`Instr::RowTile`] for all its rows at
/// once: a GEMM's; two for distances where rows are grouped (else never: each row
/// computes its own, without copying it).
fn block_rows<T, M: MathMode>(op: RowOp) -> usize {
    match op {
        RowOp::Dot => GEMM_MIN_ROWS,
        RowOp::SqDist if row_group::<T, M>() >= 2 => 2,
        RowOp::SqDist => usize::MAX,
    }
}

#[inline(always)]
fn run_block_body<T: Element, A: Real, M: MathMode>(
    isa: Isa,
    r: &TileRunner<'_, '_, T>,
    data: &[&[T]],
    job: &Job,
    block: &mut Block,
) {
    let p = &r.prog;
    // Ops run over whole tiles (zero-filled past the last row), so a short reduced
    // range gets a shorter tile: rows of a small problem do not pay for 1,024 lanes.
    let tile = p.tile.min(job.longest_red().next_multiple_of(16)).max(16);
    let mut regs = Regs::<T>::new(&p.reg_dims, tile);
    let sl = p.scalar_len;
    let mut params = vec![T::ZERO; sl];
    run_scalar::<T, M>(&p.param_steps, &mut params, data, r.out_cat, 0);
    let rows = job.rows.len();
    let mut scal = Vec::with_capacity(rows * sl);
    for i in job.rows.clone() {
        let start = scal.len();
        scal.extend_from_slice(&params);
        run_scalar::<T, M>(&p.row_steps, &mut scal[start..], data, r.out_cat, i);
    }
    // The factors of each row's sums (see `Summand`), computed once per row.
    let sd = p.summand.as_ref().map_or(0, |sm| sm.dim);
    let mut scales = Vec::with_capacity(rows * sd);
    if let Some(sm) = &p.summand {
        for row in 0..rows {
            let s = &scal[row * sl..(row + 1) * sl];
            scales.extend((0..sd).map(|c| sm.scale_of(s, c)));
        }
    }
    let (sv, si) = r.spec.state_len();
    let mut tmp = vec![T::ZERO; tile];
    let (_, n_red) = r.problem.sizes();
    let dim_major = &r.dim_major[job.batch];
    let args: Vec<ArgData<T>> = (dim_major.iter().zip(data))
        .map(|(dm, &rows)| match dm {
            Some(t) => ArgData::DimMajor(t, n_red),
            None => ArgData::Rows(rows),
        })
        .collect();
    // Weights wide enough for GEMM, computed once per tile: a Sum's `K_ij b_j` (the
    // rows' kernel values copied) or the weight of a weighted LogSumExp/SumSoftMaxWeight
    // (the exponentials `accumulate` leaves); the block of rows' values on a tile is
    // then multiplied by the weights at once. Narrower weights are summed row by row,
    // while the row's values are still in L1.
    let gemm = match r.spec.kind {
        Reduction::Sum => p.weighted_product().map(|(k, w)| (Some(k), w)),
        _ => p.tile_weight().map(|w| (None, w)),
    }
    .filter(|(_, w)| w.dim() >= GEMM_MIN_COLS);
    let mut values = vec![T::ZERO; if gemm.is_some() { rows * tile } else { 0 }];
    // A block of rows' scalar products (one GEMM per tile, from 8 rows on) and squared
    // distances (rows two at a time) with the tile: each pair instruction's slot among
    // them (the others run per row).
    let mut row_tiles = Vec::new();
    let block_of: Vec<Option<usize>> = p
        .pair_instrs
        .iter()
        .map(|i| match *i {
            Instr::RowTile { op, row, tile, .. } if rows >= block_rows::<T, M>(op) => {
                row_tiles.push((op, row, tile));
                Some(row_tiles.len() - 1)
            }
            _ => None,
        })
        .collect();
    let mut blocked = vec![T::ZERO; row_tiles.len() * rows * tile];
    let mut scratch = Vec::new();
    for red in &job.red {
        let mut j0 = red.start;
        while j0 < red.end {
            let len = tile.min(red.end - j0);
            for ins in &p.tile_instrs {
                exec::<T>(isa, ins, &mut regs, &params, &args, j0, len);
            }
            for (&(op, row, tile_src), out) in row_tiles.iter().zip(blocked.chunks_mut(rows * tile))
            {
                if let (Src::Scalar { off, dim }, Src::Tile { reg, start, .. }) = (row, tile_src) {
                    let b = &regs.regs[reg][start * tile..];
                    match op {
                        RowOp::Dot => T::gemm((rows, dim, len), &scal[off..], sl, b, tile, 1, out),
                        RowOp::SqDist => {
                            sqdist_rows::<T, M>(out, len, rows, (&scal[off..], sl, dim), b, tile)
                        }
                    }
                }
            }
            for row in 0..rows {
                let s = &scal[row * sl..(row + 1) * sl];
                for (ins, slot) in p.pair_instrs.iter().zip(&block_of) {
                    match *slot {
                        Some(k) => {
                            let o = k * rows * tile + row * len;
                            regs.regs[ins.dst()][..len].copy_from_slice(&blocked[o..o + len]);
                        }
                        None => exec::<T>(isa, ins, &mut regs, s, &args, j0, len),
                    }
                }
                let exps = match gemm {
                    Some((Some(k), _)) => {
                        if let Lane::Tile(k) = regs.lane(&[], k, 0) {
                            values[row * tile..row * tile + len].copy_from_slice(&k[..len]);
                        }
                        continue;
                    }
                    Some((None, _)) => Exps::Deferred(&mut values[row * tile..(row + 1) * tile]),
                    None => Exps::Summed(&mut tmp),
                };
                accumulate::<T, A>(
                    isa,
                    &r.spec,
                    r.scheme,
                    &regs,
                    &p.roots,
                    p.summand.as_ref().map(|summand| RowSummand {
                        summand,
                        scal: s,
                        scale: &scales[row * sd..(row + 1) * sd],
                    }),
                    len,
                    j0,
                    &mut block.vals[row * sv..(row + 1) * sv],
                    &mut block.idx[row * si..(row + 1) * si],
                    exps,
                );
            }
            if let Some((kernel, Src::Tile { reg, start, dim })) = gemm {
                // A Sum's states are the sums; a softmax's weighted sums follow its
                // maximum and the sum of its exponentials.
                let first = if kernel.is_some() { 0 } else { 2 };
                let weights = match p.weights_in_place {
                    Some((arg, _)) => Weights {
                        data: &data[arg][j0 * dim..],
                        row_stride: dim,
                        col_stride: 1,
                        cols: dim,
                    },
                    None => Weights {
                        data: &regs.regs[reg][start * tile..],
                        row_stride: 1,
                        col_stride: tile,
                        cols: dim,
                    },
                };
                weighted_sums::<T, A>(
                    r.scheme,
                    (&values, tile, rows),
                    weights,
                    len,
                    Scales {
                        data: &scales,
                        row_stride: sd,
                        col_stride: 1,
                    },
                    (&mut block.vals[first..], sv),
                    &mut scratch,
                );
            }
            j0 += len;
        }
    }
}

multiversion! {
    fn run_block<T: Element, A: Real>(r: &TileRunner<'_, '_, T>, data: &[&[T]], job: &Job, block: &mut Block) = run_block_body;
}

impl<T: Element> BlockRunner for TileRunner<'_, '_, T> {
    fn run(&self, isa: super::simd::Isa, job: &Job, block: &mut Block) {
        let data = super::batch_data(self.problem, job.batch);
        if self.acc64 {
            run_block::<T, f64>(isa, self, &data, job, block)
        } else {
            run_block::<T, T>(isa, self, &data, job, block)
        }
    }
}
