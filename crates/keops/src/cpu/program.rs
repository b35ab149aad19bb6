//! Compiling a plan into a tile program.
//!
//! Every node of the formula DAG is classified by what it depends on:
//! - *scalar* nodes (constants, parameters, and nodes of the output side's variables
//!   only) are computed once per output row, one value per coordinate, with the
//!   reference semantics [`crate::formula::eval::apply`] in the data type;
//! - *tile* nodes (everything that depends on the reduced side) live in registers of
//!   `dim * tile` values laid out dimension-major. Nodes that depend on the reduced side
//!   only are computed once per tile for a whole block of output rows (hoisted out of the
//!   row loop); the others (pair nodes) once per row and tile.
//!
//! `Extract`/`Elem` of a tile register are views into it (no copy).

use super::accumulate::GEMM_MIN_COLS;
use crate::formula::pattern::Product;
use crate::formula::{self, Binary, Cat, Formula, Op, Unary};
use crate::real::Real;
use std::collections::HashMap;

/// Where an instruction reads one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// Coordinates `start..start + dim` of tile register `reg`.
    Tile {
        /// Register.
        reg: usize,
        /// First coordinate of the view.
        start: usize,
        /// Number of coordinates.
        dim: usize,
    },
    /// `dim` per-row scalars starting at `off` in the row's scalar buffer.
    Scalar {
        /// Offset.
        off: usize,
        /// Number of coordinates.
        dim: usize,
    },
}

impl Src {
    /// Number of coordinates.
    pub fn dim(&self) -> usize {
        match *self {
            Src::Tile { dim, .. } | Src::Scalar { dim, .. } => dim,
        }
    }
}

/// One tile instruction: `dst` is a whole tile register.
#[derive(Clone, Debug)]
pub enum Instr {
    /// Loads a reduced-side variable (argument `arg`, dimension `dim`) into `dst`.
    Load {
        /// Destination register.
        dst: usize,
        /// Argument position.
        arg: usize,
        /// Dimension.
        dim: usize,
    },
    /// Fills `dst` with per-row scalars (when a root does not depend on the reduced side).
    Broadcast {
        /// Destination.
        dst: usize,
        /// Source.
        a: Src,
    },
    /// `dst = op(row, tile)`, a sum over coordinates of a row's vector (`Src::Scalar`)
    /// against vectors computed once per tile. A block of rows computes these at once
    /// (see [`RowOp`]); a single row like [`Instr::Apply`].
    RowTile {
        /// Scalar product or squared distance.
        op: RowOp,
        /// Destination register (dimension 1).
        dst: usize,
        /// The row's vector.
        row: Src,
        /// The tile's vectors, of the same dimension.
        tile: Src,
    },
    /// Applies an elementwise op / vector op with tile operands.
    Apply {
        /// The op.
        op: Op,
        /// Destination register.
        dst: usize,
        /// Output dimension.
        dim: usize,
        /// Operands.
        args: Vec<Src>,
    },
    /// `dst = exp(±a * s1 * s2 ...)` with scalar factors: the frequent `Exp(-g * r2)`
    /// in one pass (negations and products by scalars read by nothing else are folded).
    /// Every exponential of a tile value is one (with no factor, `exp(a)`), so that all
    /// run in the job's floating-point mode (`tile::Regs::ftz`).
    ScaledExp {
        /// Destination.
        dst: usize,
        /// Tile operand.
        a: Src,
        /// Scalar factors (dimension 1).
        s: Vec<Src>,
        /// Whether the product is negated.
        neg: bool,
    },
    /// `dst = c ± s1 * s2 ... / d1 / d2 ... * t1 * t2 ...`: a product of tile and
    /// scalar factors of dimension 1 in one pass, where the formula multiplies (or
    /// divides by a scalar) two by two, plus an addend `c` where one is added to it.
    /// The gradient of a kernel sum holds `(-2) * ((e_i * b_j) * K_ij)`, three passes
    /// over the tile; GeomLoss' `LogSumExp` of `b_j - c * (SqDist(x_i,y_j) / 2)` three.
    ScaledProduct {
        /// Destination.
        dst: usize,
        /// Tile factors (at least one): `(register, coordinate)` views of dimension 1.
        tiles: Vec<(usize, usize)>,
        /// Scalar factors.
        s: Vec<Src>,
        /// Scalar divisors.
        div: Vec<Src>,
        /// Whether the product is negated.
        neg: bool,
        /// What the product is added to (a tile or a scalar; then two tile factors at
        /// most).
        add: Option<Src>,
    },
    /// `dst = Rsqrt(u)` where `Sqrt(u)` is computed already: `1 / Sqrt(u)`, 0 where `u`
    /// is 0, the same bits for one square root less. The gradients of Laplace and
    /// Matérn kernels hold both (`Exp(-Sqrt(r2))` and, from its derivative,
    /// `Rsqrt(r2)`).
    RsqrtOf {
        /// Destination.
        dst: usize,
        /// `u`.
        u: Src,
        /// `Sqrt(u)`.
        sqrt: Src,
    },
}

/// What a sum adds up on each tile, for one output row: `scale * sum_j factor_j * term_j`,
/// the "multiply and accumulate" super-instruction. The per-row factors of a formula
/// (constants, parameters, the output side's variables) multiply the row's sum once
/// instead of every pair, and the last product, with its difference `x_i - y_j`, is
/// computed as it is summed: the gradient of a radial kernel sum,
/// `(-2 g) * (e_i * b_j * K_ij) * (x_i - y_j)`, is summed as
/// `-2 g * sum_j P_ij * (x_i - y_j)`, with no tile for the difference or the product.
#[derive(Clone, Debug, PartialEq)]
pub struct Summand {
    /// Per-row factors of the whole sum (dimension 1 or the sum's), with their exponents:
    /// 1, or -1 for a divisor.
    pub scale: Vec<(Src, i32)>,
    /// Whether the sum is negated.
    pub neg: bool,
    /// A tile factor (dimension 1 or the sum's); none for a softmax's weight (whose
    /// factor is the exponentials).
    pub factor: Option<Src>,
    /// The term.
    pub term: Term,
    /// The sum's dimension (factors and terms of dimension 1 broadcast).
    pub dim: usize,
}

/// The term of a [`Summand`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Term {
    /// A tile value.
    Tile(Src),
    /// `row - tile` (`minus`) or `row + tile`: a row's vector and a tile's, computed as
    /// they are summed.
    Offset {
        /// The row's value (a per-row scalar).
        row: Src,
        /// The tile's value.
        tile: Src,
        /// Whether `tile` is subtracted.
        minus: bool,
    },
}

impl Summand {
    /// The sources it reads (an offset's row is a per-row scalar).
    fn sources(&self) -> impl Iterator<Item = Src> + '_ {
        let term = match self.term {
            Term::Tile(t) => [Some(t), None],
            Term::Offset { row, tile, .. } => [Some(row), Some(tile)],
        };
        self.factor.into_iter().chain(term.into_iter().flatten())
    }

    /// The factor of coordinate `c` of the row whose scalars are `scal`.
    pub fn scale_of<T: Real>(&self, scal: &[T], c: usize) -> f64 {
        let mut s = if self.neg { -1.0 } else { 1.0 };
        for &(src, e) in &self.scale {
            if let Src::Scalar { off, dim } = src {
                let v = scal[off + if dim == 1 { 0 } else { c }].to_f64();
                s = if e < 0 { s / v } else { s * v };
            }
        }
        s
    }
}

/// The op of an [`Instr::RowTile`], and how a block of rows computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOp {
    /// `Scalprod`: one matrix product (GEMM) per tile for blocks of 8 rows and more (the
    /// gradient of a kernel product with wide weights holds `(g_i|b_j)`, attention's
    /// logits are `(q_i|k_j)`).
    Dot,
    /// `SqDist`: rows two at a time, each load of the tile serving both (k-NN and
    /// kernels in high dimensions).
    SqDist,
}

/// How to compute one scalar node of a row.
#[derive(Clone, Debug)]
pub enum ScalarStep {
    /// Copies argument `arg`'s row (or the parameter vector) into the buffer.
    Load {
        /// Offset in the scalar buffer.
        off: usize,
        /// Argument.
        arg: usize,
        /// Its category.
        cat: Cat,
        /// Dimension.
        dim: usize,
    },
    /// Applies `op` to operands at the given offsets.
    Apply {
        /// The op.
        op: Op,
        /// Destination offset.
        off: usize,
        /// Output dimension.
        dim: usize,
        /// Operand (offset, dim) pairs.
        args: Vec<(usize, usize)>,
    },
}

/// A compiled plan.
#[derive(Clone, Debug)]
pub struct TileProgram {
    /// Scalar steps that depend on parameters only (once per batch entry).
    pub param_steps: Vec<ScalarStep>,
    /// Scalar steps of the output side (once per row).
    pub row_steps: Vec<ScalarStep>,
    /// Size of the scalar buffer.
    pub scalar_len: usize,
    /// Instructions that depend on the reduced side only (once per tile).
    pub tile_instrs: Vec<Instr>,
    /// Instructions that depend on both sides (once per row and tile).
    pub pair_instrs: Vec<Instr>,
    /// Dimension of each tile register.
    pub reg_dims: Vec<usize>,
    /// The roots that are not summed linearly (all but the [`Self::summand`]'s), each a
    /// tile view: a `Sum` has none, a weighted `LogSumExp`/`SumSoftMaxWeight` its formula.
    pub roots: Vec<Src>,
    /// What the accumulation sums linearly: a `Sum`'s formula, or the weight of a
    /// weighted `LogSumExp`/`SumSoftMaxWeight`, unfolded.
    pub summand: Option<Summand>,
    /// `(argument, register)` when the wide weights of [`Self::weighted_product`] are an
    /// argument's rows, read where the caller stores them (GEMM's best layout) instead of
    /// being loaded: the register stays empty, so it does not shorten the tiles.
    pub weights_in_place: Option<(usize, usize)>,
    /// Lanes per tile.
    pub tile: usize,
}

/// Register values per tile (all registers together); see [`TileProgram::tile`].
const TILE_BUDGET: usize = 16384;
/// Register values per tile of the registers read only by blocks of rows
/// ([`Instr::RowTile`]'s tile): read once per block rather than per row, they may fill
/// the L2 cache. At D = 784 a 10-NN's tiles went from 32 to 80 lanes, 1.3x faster.
const BLOCK_TILE_BUDGET: usize = 65536;
/// Largest tile: longer tiles amortise the dispatch of each instruction further.
const MAX_TILE: usize = 1024;

const OUT: u8 = 1;
const RED: u8 = 2;

impl TileProgram {
    /// Compiles `roots` for a reduction whose output rows are indexed by `out_cat`;
    /// `summed` is the root that the reduction sums linearly (a `Sum`'s formula, the
    /// weight of a weighted `LogSumExp`/`SumSoftMaxWeight`), made a [`Summand`].
    pub fn compile(roots: &[Formula], out_cat: Cat, summed: Option<usize>) -> TileProgram {
        let nodes = formula::topo_order(roots);
        let mut deps: HashMap<u64, u8> = HashMap::new();
        let mut uses: HashMap<u64, usize> = HashMap::new();
        for f in &nodes {
            let d = match f.op {
                Op::Var { cat, .. } if cat == out_cat => OUT,
                Op::Var { cat: Cat::Pm, .. } => 0,
                Op::Var { .. } => RED,
                _ => f.args.iter().fold(0, |acc, a| acc | deps[&a.id()]),
            };
            deps.insert(f.id(), d);
            for a in &f.args {
                *uses.entry(a.id()).or_default() += 1;
            }
        }
        for r in roots {
            *uses.entry(r.id()).or_default() += 1;
        }
        let mut p = TileProgram {
            param_steps: vec![],
            row_steps: vec![],
            scalar_len: 0,
            tile_instrs: vec![],
            pair_instrs: vec![],
            reg_dims: vec![],
            roots: vec![],
            summand: None,
            weights_in_place: None,
            tile: 0,
        };
        let mut loc: HashMap<u64, Src> = HashMap::new();
        // `Sqrt(u)` of tile values, by `u`.
        let mut sqrt_of: HashMap<u64, Src> = HashMap::new();
        for f in &nodes {
            let d = deps[&f.id()];
            if d & RED == 0 {
                // Scalar node.
                let off = p.scalar_len;
                p.scalar_len += f.dim;
                let step = match f.op {
                    Op::Var { cat, index, dim } => ScalarStep::Load {
                        off,
                        arg: index,
                        cat,
                        dim,
                    },
                    _ => ScalarStep::Apply {
                        op: f.op.clone(),
                        off,
                        dim: f.dim,
                        args: f
                            .args
                            .iter()
                            .map(|a| match loc[&a.id()] {
                                Src::Scalar { off, dim } => (off, dim),
                                Src::Tile { .. } => unreachable!("scalar node with a tile operand"),
                            })
                            .collect(),
                    },
                };
                if d == 0 {
                    p.param_steps.push(step);
                } else {
                    p.row_steps.push(step);
                }
                loc.insert(f.id(), Src::Scalar { off, dim: f.dim });
                continue;
            }
            let args: Vec<Src> = f.args.iter().map(|a| loc[&a.id()]).collect();
            // Views: no instruction.
            match (&f.op, args.first()) {
                (Op::Extract { start, dim }, Some(&Src::Tile { reg, start: s0, .. })) => {
                    loc.insert(
                        f.id(),
                        Src::Tile {
                            reg,
                            start: s0 + start,
                            dim: *dim,
                        },
                    );
                    continue;
                }
                (Op::Elem(m), Some(&Src::Tile { reg, start: s0, .. })) => {
                    loc.insert(
                        f.id(),
                        Src::Tile {
                            reg,
                            start: s0 + m,
                            dim: 1,
                        },
                    );
                    continue;
                }
                _ => {}
            }
            let dst = p.reg_dims.len();
            p.reg_dims.push(f.dim);
            let instr = match f.op {
                Op::Var { index, dim, .. } => Instr::Load {
                    dst,
                    arg: index,
                    dim,
                },
                Op::Unary(Unary::Rsqrt) if sqrt_of.contains_key(&f.args[0].id()) => {
                    Instr::RsqrtOf {
                        dst,
                        u: args[0],
                        sqrt: sqrt_of[&f.args[0].id()],
                    }
                }
                // Exp(a * s): fold the product into the exponential when nothing else
                // reads it.
                Op::Unary(Unary::Exp) => match scaled_exp_operands(&f.args[0], &loc, &uses) {
                    Some((a, s, neg)) => Instr::ScaledExp { dst, a, s, neg },
                    None => Instr::Apply {
                        op: f.op.clone(),
                        dst,
                        dim: f.dim,
                        args,
                    },
                },
                Op::Binary(Binary::Mult | Binary::Divide | Binary::Add | Binary::Subtract)
                    if f.dim == 1 =>
                {
                    scaled_product(f, dst, &loc, &uses).unwrap_or_else(|| Instr::Apply {
                        op: f.op.clone(),
                        dst,
                        dim: f.dim,
                        args,
                    })
                }
                Op::Scalprod | Op::SqDist if d != RED => match (args[0], args[1]) {
                    (row @ Src::Scalar { dim, .. }, tile)
                    | (tile, row @ Src::Scalar { dim, .. })
                        if dim >= Self::ROW_TILE_MIN_DIM
                            && tile.dim() == dim
                            && p.per_tile(tile) =>
                    {
                        let op = match f.op {
                            Op::Scalprod => RowOp::Dot,
                            _ => RowOp::SqDist,
                        };
                        Instr::RowTile { op, dst, row, tile }
                    }
                    _ => Instr::Apply {
                        op: f.op.clone(),
                        dst,
                        dim: f.dim,
                        args,
                    },
                },
                _ => Instr::Apply {
                    op: f.op.clone(),
                    dst,
                    dim: f.dim,
                    args,
                },
            };
            if d == RED {
                p.tile_instrs.push(instr);
            } else {
                p.pair_instrs.push(instr);
            }
            let src = Src::Tile {
                reg: dst,
                start: 0,
                dim: f.dim,
            };
            if f.op == Op::Unary(Unary::Sqrt) {
                sqrt_of.insert(f.args[0].id(), src);
            }
            loc.insert(f.id(), src);
        }
        for (k, r) in roots.iter().enumerate() {
            let src = match loc[&r.id()] {
                s @ Src::Tile { .. } => s,
                s @ Src::Scalar { .. } => {
                    let dst = p.reg_dims.len();
                    p.reg_dims.push(r.dim);
                    p.pair_instrs.push(Instr::Broadcast { dst, a: s });
                    Src::Tile {
                        reg: dst,
                        start: 0,
                        dim: r.dim,
                    }
                }
            };
            if summed == Some(k) {
                let softmax = k > 0;
                p.summand = Some(summand(r, src, softmax, &loc, &uses));
            } else {
                p.roots.push(src);
            }
        }
        remove_dead(&mut p);
        read_weights_in_place(&mut p);
        // Tile length: long enough to amortise the per-instruction dispatch, short
        // enough for the registers that each row reads or writes to stay in L1/L2.
        let blocked = p.block_read_registers();
        let dims = p.reg_dims.iter().zip(&blocked);
        let per_block: usize = dims.filter(|(_, &b)| b).map(|(&d, _)| d).sum();
        let per_row = p.reg_dims.iter().sum::<usize>() - per_block;
        let lanes = (TILE_BUDGET / per_row.max(1)).min(BLOCK_TILE_BUDGET / per_block.max(1));
        p.tile = lanes.clamp(32, MAX_TILE) / 16 * 16;
        p
    }

    /// Per register: whether only [`Instr::RowTile`]s read it, as their tile (and it is
    /// no result), so that rows read it once per block.
    fn block_read_registers(&self) -> Vec<bool> {
        let mut blocked: Vec<bool> = (0..self.reg_dims.len())
            .map(|r| self.tile_instrs.iter().any(|i| i.dst() == r))
            .collect();
        let mut clear = |s: Src| {
            if let Src::Tile { reg, .. } = s {
                blocked[reg] = false;
            }
        };
        for ins in self.tile_instrs.iter().chain(&self.pair_instrs) {
            match ins {
                Instr::RowTile { row, .. } => clear(*row),
                _ => ins.operands().into_iter().for_each(&mut clear),
            }
        }
        let results = self.roots.iter().copied();
        results
            .chain(self.summand.iter().flat_map(Summand::sources))
            .for_each(clear);
        blocked
    }
}

impl TileProgram {
    /// Coordinates from which a row's scalar product or squared distance with a tile
    /// is an [`Instr::RowTile`].
    pub const ROW_TILE_MIN_DIM: usize = 8;

    /// The fused product as `(kernel, weight)` when it is a kernel matrix times weights,
    /// `K_ij b_j`: a kernel of dimension 1 and weights computed once per tile (the
    /// reduced side only), so that a block of rows' sums over a tile is the matrix
    /// product of their kernel values and the weights.
    pub fn weighted_product(&self) -> Option<(Src, Src)> {
        let sm = self.summand.as_ref()?;
        let (Some(a), Term::Tile(b)) = (sm.factor, sm.term) else {
            return None;
        };
        [(a, b), (b, a)]
            .into_iter()
            .find(|&(k, w)| k.dim() == 1 && self.per_tile(w))
    }

    /// The weight of a weighted LogSumExp or SumSoftMaxWeight when it is computed once
    /// per tile: the block of rows' weighted sums over a tile are then the matrix
    /// product of their exponentials and the weights.
    pub fn tile_weight(&self) -> Option<Src> {
        match self.summand.as_ref()? {
            Summand {
                factor: None,
                term: Term::Tile(w),
                ..
            } if self.per_tile(*w) => Some(*w),
            _ => None,
        }
    }

    /// Whether `s` is a tile register computed from the reduced side alone.
    fn per_tile(&self, s: Src) -> bool {
        match s {
            Src::Tile { reg, .. } => {
                self.tile_instrs.iter().any(|i| i.dst() == reg)
                    || self.weights_in_place.is_some_and(|(_, r)| r == reg)
            }
            Src::Scalar { .. } => false,
        }
    }
}

impl Instr {
    /// The operands the instruction reads.
    pub fn operands(&self) -> Vec<Src> {
        match self {
            Instr::Apply { args, .. } => args.clone(),
            Instr::ScaledExp { a, s, .. } => std::iter::once(*a).chain(s.iter().copied()).collect(),
            Instr::ScaledProduct {
                tiles, s, div, add, ..
            } => (tiles.iter())
                .map(|&(reg, start)| Src::Tile { reg, start, dim: 1 })
                .chain(s.iter().chain(div).chain(add).copied())
                .collect(),
            Instr::Broadcast { a, .. } => vec![*a],
            Instr::RsqrtOf { u, sqrt, .. } => vec![*u, *sqrt],
            Instr::RowTile { row, tile, .. } => vec![*row, *tile],
            Instr::Load { .. } => Vec::new(),
        }
    }

    /// The register the instruction writes.
    pub fn dst(&self) -> usize {
        match self {
            Instr::Load { dst, .. }
            | Instr::Broadcast { dst, .. }
            | Instr::Apply { dst, .. }
            | Instr::RowTile { dst, .. }
            | Instr::ScaledExp { dst, .. }
            | Instr::ScaledProduct { dst, .. }
            | Instr::RsqrtOf { dst, .. } => *dst,
        }
    }
}

/// Wide weights of a kernel product that are an argument's rows, read by nothing else:
/// read in place ([`TileProgram::weights_in_place`]) rather than loaded.
fn read_weights_in_place(p: &mut TileProgram) {
    let Some((_, Src::Tile { reg, start: 0, dim })) = p.weighted_product() else {
        return;
    };
    let load = p
        .tile_instrs
        .iter()
        .position(|i| matches!(*i, Instr::Load { dst, dim: d, .. } if dst == reg && d == dim));
    let read_elsewhere = p
        .tile_instrs
        .iter()
        .chain(&p.pair_instrs)
        .flat_map(Instr::operands)
        .any(|s| matches!(s, Src::Tile { reg: r, .. } if r == reg));
    if let (Some(at), false, true) = (load, read_elsewhere, dim >= GEMM_MIN_COLS) {
        if let Instr::Load { arg, .. } = p.tile_instrs.remove(at) {
            p.weights_in_place = Some((arg, reg));
            p.reg_dims[reg] = 0;
        }
    }
}

/// `(a, scalars, negated)` if `f` is a tile value `a` times scalars of dimension 1
/// (none or more), possibly negated, where each folded node is read only by the next
/// one up.
fn scaled_exp_operands(
    f: &Formula,
    loc: &HashMap<u64, Src>,
    uses: &HashMap<u64, usize>,
) -> Option<(Src, Vec<Src>, bool)> {
    let mut scalars = Vec::new();
    let mut neg = false;
    let mut cur = f.clone();
    loop {
        let single = uses.get(&cur.id()).copied().unwrap_or(0) == 1;
        match cur.op {
            Op::Unary(Unary::Minus) if single => {
                neg = !neg;
                cur = cur.args[0].clone();
            }
            Op::Binary(Binary::Mult) if single => {
                let (a, b) = (loc[&cur.args[0].id()], loc[&cur.args[1].id()]);
                let next = match (a, b) {
                    (Src::Tile { .. }, Src::Scalar { dim: 1, .. }) if a.dim() == cur.dim => {
                        scalars.push(b);
                        cur.args[0].clone()
                    }
                    (Src::Scalar { dim: 1, .. }, Src::Tile { .. }) if b.dim() == cur.dim => {
                        scalars.push(a);
                        cur.args[1].clone()
                    }
                    _ => break,
                };
                cur = next;
            }
            _ => break,
        }
    }
    match loc[&cur.id()] {
        a @ Src::Tile { .. } => Some((a, scalars, neg)),
        Src::Scalar { .. } => None,
    }
}

/// The [`Instr::ScaledProduct`] writing `dst` for `f` (of dimension 1): a product with
/// three factors or more once the products, negations and divisions by scalars below
/// it that nothing else reads are unfolded (each factor a tile or scalar value of
/// dimension 1), or such a product of two factors or more added to a value (`c + P`,
/// `P + c`, `c - P`), one or two of them tiles.
fn scaled_product(
    f: &Formula,
    dst: usize,
    loc: &HashMap<u64, Src>,
    uses: &HashMap<u64, usize>,
) -> Option<Instr> {
    let single = |g: &Formula| uses.get(&g.id()).copied().unwrap_or(0) == 1;
    let product = |g: &Formula| {
        matches!(g.op, Op::Binary(Binary::Mult | Binary::Divide)) && g.dim == 1 && single(g)
    };
    let (a, b) = (f.args.first()?, f.args.last()?);
    let (add, top, neg) = match f.op {
        Op::Binary(Binary::Mult | Binary::Divide) => (None, f, false),
        Op::Binary(Binary::Add) if product(b) => (Some(loc[&a.id()]), b, false),
        Op::Binary(Binary::Add) if product(a) => (Some(loc[&b.id()]), a, false),
        Op::Binary(Binary::Subtract) if product(b) => (Some(loc[&a.id()]), b, true),
        _ => return None,
    };
    // Below the top product (`f`, or read by `f` only), the products that nothing else
    // reads; per-row scalars are computed once per row already: factors as they are.
    let scalar = |g: &Formula| matches!(loc.get(&g.id()), Some(Src::Scalar { dim: 1, .. }));
    let p = Product::unfolded(top, |g| single(g) && g.dim == 1, scalar);
    let (mut scalars, mut div) = (Vec::new(), Vec::new());
    for (g, e) in &p.scalars {
        let src = loc[&g.id()];
        if *e < 0 {
            div.push(src)
        } else {
            scalars.push(src)
        }
    }
    // `f` is not compiled yet: a top product that does not unfold is no factor.
    let tiles = (p.others.iter())
        .map(|g| tile_view(*loc.get(&g.id())?))
        .collect::<Option<Vec<_>>>()?;
    let neg = neg != p.neg;
    let factors = tiles.len() + scalars.len() + div.len();
    let fused = match add {
        None => factors >= 3,
        Some(c) => factors >= 2 && tiles.len() <= 2 && c.dim() == 1,
    };
    (fused && !tiles.is_empty()).then_some(Instr::ScaledProduct {
        dst,
        tiles,
        s: scalars,
        div,
        neg,
        add,
    })
}

/// The [`Summand`] of the summed root `r` (compiled to `src`): its per-row factors and
/// negations unfolded into the scale, at most one tile factor left (none for a
/// softmax's weight), and a last difference (or sum) of a row's and a tile's values
/// left to the accumulation. The products that nothing else reads are unfolded, all of
/// them, or where that leaves too many tile factors those of `r`'s dimension (those of
/// dimension 1 below a wider `r` are one [`Instr::ScaledProduct`]), or only `r`
/// itself. Where nothing unfolds: `r`'s value, summed as it is.
fn summand(
    r: &Formula,
    src: Src,
    softmax: bool,
    loc: &HashMap<u64, Src>,
    uses: &HashMap<u64, usize>,
) -> Summand {
    let single = |g: &Formula| uses.get(&g.id()).copied().unwrap_or(0) == 1;
    let plain = Summand {
        scale: Vec::new(),
        neg: false,
        factor: None,
        term: Term::Tile(src),
        dim: r.dim,
    };
    if !single(r) || matches!(loc.get(&r.id()), Some(Src::Scalar { .. }) | None) {
        return plain;
    }
    let scalar = |g: &Formula| matches!(loc.get(&g.id()), Some(&Src::Scalar { dim, .. }) if dim == 1 || dim == r.dim);
    let tile = |g: &Formula| match loc.get(&g.id()) {
        Some(&s @ Src::Tile { .. }) => Some(s),
        _ => None,
    };
    // `row - tile`, `tile - row` (negated), `row + tile` or `tile + row`, read once.
    let offset = |g: &Formula| {
        let minus = match g.op {
            Op::Binary(Binary::Subtract) => true,
            Op::Binary(Binary::Add) => false,
            _ => return None,
        };
        if !single(g) {
            return None;
        }
        match (loc.get(&g.args[0].id())?, loc.get(&g.args[1].id())?) {
            (&row @ Src::Scalar { .. }, &tile @ Src::Tile { .. }) => {
                Some((Term::Offset { row, tile, minus }, false))
            }
            (&tile @ Src::Tile { .. }, &row @ Src::Scalar { .. }) => {
                Some((Term::Offset { row, tile, minus }, minus))
            }
            _ => None,
        }
    };
    let most = if softmax { 1 } else { 2 };
    // Through every product read once; else those of `r`'s dimension; else `r` alone.
    for depth in [0, r.dim, usize::MAX] {
        let p = Product::unfolded(r, |g| single(g) && g.dim >= depth, scalar);
        if p.others.len() > most {
            continue;
        }
        let mut neg = p.neg;
        // The term: the factor that is an offset, if one is.
        let mut others = p.others;
        if let Some(k) = others.iter().rposition(|g| offset(g).is_some()) {
            let t = others.remove(k);
            others.push(t);
        }
        let Some((last, rest)) = others.split_last() else {
            break;
        };
        let term = match offset(last) {
            Some((t, flip)) => {
                neg ^= flip;
                t
            }
            None => match tile(last) {
                Some(s) => Term::Tile(s),
                None => break,
            },
        };
        let factor = match rest {
            [] => None,
            [f] => match tile(f) {
                Some(s) => Some(s),
                None => break,
            },
            _ => break,
        };
        let scale = (p.scalars.iter())
            .map(|(g, e)| (loc[&g.id()], *e))
            .collect();
        return Summand {
            scale,
            neg,
            factor,
            term,
            dim: r.dim,
        };
    }
    plain
}

/// The `(register, coordinate)` of a tile value of dimension 1.
fn tile_view(src: Src) -> Option<(usize, usize)> {
    match src {
        Src::Tile { reg, start, dim: 1 } => Some((reg, start)),
        _ => None,
    }
}

/// Drops instructions whose register nobody reads (e.g. the product folded into a
/// `ScaledExp`).
fn remove_dead(p: &mut TileProgram) {
    let mut live = vec![false; p.reg_dims.len()];
    let mark = |s: &Src, live: &mut Vec<bool>| {
        if let Src::Tile { reg, .. } = s {
            live[*reg] = true;
        }
    };
    for r in p
        .roots
        .iter()
        .copied()
        .chain(p.summand.iter().flat_map(Summand::sources))
    {
        mark(&r, &mut live);
    }
    for list in [&mut p.pair_instrs, &mut p.tile_instrs] {
        let mut kept = Vec::new();
        for ins in list.drain(..).rev() {
            if !live[ins.dst()] {
                continue;
            }
            ins.operands().iter().for_each(|a| mark(a, &mut live));
            kept.push(ins);
        }
        kept.reverse();
        *list = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formula::parse::parse;

    fn compile(f: &str, sum: bool) -> TileProgram {
        let al = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)", "g = Pm(3,1)"];
        TileProgram::compile(&[parse(f, &al).unwrap()], Cat::Vi, sum.then_some(0))
    }

    #[test]
    fn classifies_scalar_hoisted_and_pair_nodes() {
        // x*g and its square are per-row scalars; Exp(y) is hoisted; the rest is per pair.
        let p = compile("Square(x*g) + Exp(y) * SqDist(x,y)", false);
        assert_eq!(p.param_steps.len(), 1, "g");
        assert_eq!(p.row_steps.len(), 3, "x, x*g, Square");
        assert!(p
            .tile_instrs
            .iter()
            .any(|i| matches!(i, Instr::ScaledExp { .. })));
        assert!(p
            .tile_instrs
            .iter()
            .all(|i| !matches!(i, Instr::Apply { op: Op::SqDist, .. })));
        assert!(p
            .pair_instrs
            .iter()
            .any(|i| matches!(i, Instr::Apply { op: Op::SqDist, .. })));
    }

    #[test]
    fn extract_is_a_view() {
        let p = compile("Extract(y, 1, 2) + Elem(y, 0)", false);
        assert_eq!(
            p.tile_instrs.len(),
            2,
            "load y, add: no copies {:?}",
            p.tile_instrs
        );
    }

    #[test]
    fn scaled_exp_and_product_are_fused() {
        let p = compile("Exp(SqDist(x,y) * g) * b", true);
        assert!(p
            .pair_instrs
            .iter()
            .any(|i| matches!(i, Instr::ScaledExp { .. })));
        assert!(p.pair_instrs.iter().all(|i| !matches!(
            i,
            Instr::Apply {
                op: Op::Binary(Binary::Mult),
                ..
            }
        )));
        assert!(
            matches!(
                p.summand,
                Some(Summand {
                    factor: Some(_),
                    term: Term::Tile(_),
                    ..
                })
            ) && p.roots.is_empty()
        );
        // Not a Sum: the product stays an instruction.
        let q = compile("Exp(SqDist(x,y) * g) * b", false);
        assert!(q.summand.is_none() && q.roots.len() == 1);
        // Without factors too.
        let e = compile("Exp(SqDist(x,y))", false);
        assert!(matches!(
            &e.pair_instrs[..],
            [Instr::Apply { .. }, Instr::ScaledExp { s, neg: false, .. }] if s.is_empty()
        ));
    }

    #[test]
    fn products_of_dimension_1_are_one_pass() {
        // A Gaussian sum's gradient: (-2) * ((e_i * b_j) * K_ij) * (x_i - y_j).
        let p = compile(
            "((-2) * ((Elem(x,0) * b) * Exp(-SqDist(x,y)))) * (x - y)",
            true,
        );
        let products: Vec<_> = (p.pair_instrs.iter())
            .filter_map(|i| match i {
                Instr::ScaledProduct { tiles, s, neg, .. } => Some((tiles.len(), s.len(), *neg)),
                Instr::Apply {
                    op: Op::Binary(Binary::Mult),
                    ..
                } => panic!("a product left over: {:?}", p.pair_instrs),
                _ => None,
            })
            .collect();
        assert_eq!(products, [(2, 2, false)], "{:?}", p.pair_instrs);
        assert!(
            matches!(
                p.summand,
                Some(Summand {
                    factor: Some(_),
                    term: Term::Offset { minus: true, .. },
                    ..
                })
            ),
            "the product with x - y is the accumulation's: {:?}",
            p.summand
        );
        // A factor read twice stays an instruction (and is the sum's addend here).
        let q = compile("(b * Exp(-SqDist(x,y))) * g + b * Exp(-SqDist(x,y))", false);
        let mults = (q.pair_instrs.iter())
            .filter(|i| {
                matches!(
                    i,
                    Instr::Apply {
                        op: Op::Binary(Binary::Mult),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(mults, 1, "{:?}", q.pair_instrs);
        // GeomLoss' LogSumExp: a division by a scalar and an addend, one pass.
        let l = compile("b - g * (SqDist(x,y) / IntCst(2))", false);
        assert!(
            matches!(
                &l.pair_instrs[..],
                [Instr::Apply { op: Op::SqDist, .. }, Instr::ScaledProduct {
                    tiles, s, div, neg: true, add: Some(Src::Tile { .. }), ..
                }] if tiles.len() == 1 && s.len() == 1 && div.len() == 1
            ),
            "{:?}",
            l.pair_instrs
        );
        let r = compile("-(b * Exp(-SqDist(x,y))) * g * Elem(x,1)", false);
        assert!(matches!(
            &r.pair_instrs[..],
            [.., Instr::ScaledProduct { tiles, s, neg: true, .. }] if tiles.len() == 2 && s.len() == 2
        ));
    }

    #[test]
    fn rsqrt_reuses_the_square_root() {
        let ops = |f: &str| {
            let p = compile(f, true);
            (p.pair_instrs.iter())
                .map(|i| match i {
                    Instr::Apply { op, .. } => format!("{op:?}"),
                    Instr::RsqrtOf { .. } => "RsqrtOf".into(),
                    _ => "other".into(),
                })
                .filter(|o| o.contains("qrt"))
                .collect::<Vec<_>>()
        };
        // A Laplace kernel's gradient.
        let f = "Exp(-Sqrt(SqDist(x,y) * g)) * Rsqrt(SqDist(x,y) * g) * b * (x - y)";
        assert_eq!(ops(f), ["Unary(Sqrt)", "RsqrtOf"]);
        // Of another value, or before the square root: computed.
        let f = "Exp(-Sqrt(SqDist(x,y))) * Rsqrt(SqDist(x,y) * g)";
        assert_eq!(ops(f), ["Unary(Sqrt)", "Unary(Rsqrt)"]);
        assert_eq!(
            ops("Rsqrt(SqDist(x,y)) * Sqrt(SqDist(x,y))"),
            ["Unary(Rsqrt)", "Unary(Sqrt)"]
        );
    }

    #[test]
    fn sums_unfold_into_summands() {
        let al = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)", "g = Pm(3,1)"];
        let summand = |roots: &[&str], summed: usize| {
            let roots: Vec<_> = roots.iter().map(|f| parse(f, &al).unwrap()).collect();
            let p = TileProgram::compile(&roots, Cat::Vi, Some(summed));
            let wide = (p.pair_instrs.iter()).any(|i| matches!(i, Instr::Apply { dim: 3, .. }));
            let sm = p.summand.unwrap();
            let scale: Vec<i32> = sm.scale.iter().map(|s| s.1).collect();
            let term = match sm.term {
                Term::Tile(_) => None,
                Term::Offset { minus, .. } => Some(minus),
            };
            (scale, sm.neg, sm.factor.is_some(), term, wide)
        };
        // (exponents of the scale's factors, negated, tile factor, offset's minus, a
        // pass over a tile of dimension 3 left)
        assert_eq!(
            summand(&["g * Exp(-SqDist(x,y)) * (x - y)"], 0),
            (vec![1], false, true, Some(true), false)
        );
        assert_eq!(
            summand(&["(y - x) * b / g"], 0),
            (vec![-1], true, true, Some(true), false),
            "tile - row is -(row - tile)"
        );
        assert_eq!(
            summand(&["-(y + x)"], 0),
            (vec![], true, false, Some(false), false)
        );
        assert_eq!(
            summand(&["Elem(x,0) * b * Exp(-SqDist(x,y))"], 0),
            (vec![1], false, true, None, false),
            "a per-row factor of dimension 1"
        );
        assert_eq!(
            summand(&["-SqDist(x,y)", "-g * (x - y)"], 1),
            (vec![1], true, false, Some(true), false),
            "a softmax's weight"
        );
        assert_eq!(
            summand(&["-SqDist(x,y)", "b * (x - y)"], 1),
            (vec![], false, false, None, true),
            "a softmax's weight with a tile factor is computed"
        );
        // Three tile factors of dimension 1: only the top product unfolds.
        let al1 = ["x = Vi(0,1)", "y = Vj(1,1)", "b = Vj(2,1)", "g = Pm(3,1)"];
        let f = parse("(b * Exp(-SqDist(x,y)) * g) * (x - y)", &al1).unwrap();
        let p = TileProgram::compile(&[f], Cat::Vi, Some(0));
        assert!(matches!(
            p.summand,
            Some(Summand {
                factor: Some(_),
                term: Term::Offset { minus: true, .. },
                ..
            })
        ));
    }

    #[test]
    fn row_against_tile_sums_are_blocked_from_8_coordinates() {
        let row_ops = |d: usize, f: &str| {
            let al = [format!("x = Vi(0,{d})"), format!("y = Vj(1,{d})")];
            let p = TileProgram::compile(&[parse(f, &al).unwrap()], Cat::Vi, None);
            let ops: Vec<RowOp> = (p.pair_instrs.iter())
                .filter_map(|i| match *i {
                    Instr::RowTile { op, row, tile, .. } => {
                        assert!(matches!(
                            (row, tile),
                            (Src::Scalar { .. }, Src::Tile { .. })
                        ));
                        Some(op)
                    }
                    _ => None,
                })
                .collect();
            ops
        };
        assert_eq!(row_ops(8, "SqDist(x,y)"), [RowOp::SqDist]);
        assert_eq!(row_ops(64, "SqDist(y,x)"), [RowOp::SqDist], "either order");
        assert_eq!(
            row_ops(64, "Sum(Square(x - y))"),
            [RowOp::SqDist],
            "pykeops' spelling"
        );
        assert_eq!(
            row_ops(8, "Exp(-(x|y)) * SqDist(x,y)"),
            [RowOp::Dot, RowOp::SqDist]
        );
        assert_eq!(row_ops(3, "SqDist(x,y)"), [], "few coordinates");
        // A tile operand that depends on the row is not computed once per tile.
        assert_eq!(row_ops(8, "SqDist(x, y - x)"), []);
        // SqDist broadcasts a one-coordinate operand: that is not a row against a tile.
        assert_eq!(row_ops(8, "SqDist(x, Elem(y, 2))"), []);
    }

    #[test]
    fn kernel_times_weights_is_a_weighted_product() {
        let al = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,9)", "g = Pm(3,1)"];
        let weighted = |f: &str| {
            let p = TileProgram::compile(&[parse(f, &al).unwrap()], Cat::Vi, Some(0));
            p.weighted_product().map(|(k, w)| (k.dim(), w.dim()))
        };
        assert_eq!(weighted("Exp(SqDist(x,y) * g) * b"), Some((1, 9)));
        // Weights that are an argument's rows, read by nothing else, are read in place.
        let in_place = |f: &str| {
            TileProgram::compile(&[parse(f, &al).unwrap()], Cat::Vi, Some(0)).weights_in_place
        };
        assert_eq!(in_place("Exp(SqDist(x,y) * g) * b").map(|w| w.0), Some(2));
        assert_eq!(
            in_place("Exp(-SqDist(x,y)) * Exp(b)"),
            None,
            "computed weights"
        );
        assert_eq!(in_place("Exp(-Sum(b)) * b"), None, "read elsewhere");
        assert_eq!(weighted("b * Cos(x|y)"), Some((1, 9)), "either order");
        assert_eq!(
            weighted("Exp(-SqDist(x,y)) * Exp(b)"),
            Some((1, 9)),
            "hoisted weights"
        );
        let softmax = |w: &str| {
            let roots = [parse("-SqDist(x,y)", &al).unwrap(), parse(w, &al).unwrap()];
            let p = TileProgram::compile(&roots, Cat::Vi, Some(1));
            p.tile_weight().map(|w| w.dim())
        };
        assert_eq!(softmax("b * g"), Some(9), "softmax weights per tile");
        assert_eq!(softmax("b"), Some(9), "softmax weights: an argument");
        assert_eq!(softmax("b - Sum(x)"), None, "softmax weights per pair");
        for f in [
            "Exp(-SqDist(x,y)) * Sin(b - Sum(x))",
            "(x - y) * Elem(b, 0)",
            "Exp(-SqDist(x,y)) * b + b",
        ] {
            assert_eq!(weighted(f), None, "{f}: weights per pair, or no product");
        }
    }

    #[test]
    fn scalar_root_is_broadcast() {
        let p = compile("x * g", false);
        assert!(matches!(
            p.pair_instrs.as_slice(),
            [Instr::Broadcast { .. }]
        ));
        assert!(p.tile >= 32 && p.tile % 16 == 0);
    }

    /// Wide points that only a block of rows' distances read may fill L2 (longer tiles);
    /// read by any other instruction, they keep the L1 budget.
    #[test]
    fn tiles_read_by_blocks_of_rows_are_longer() {
        let al = ["x = Vi(0,784)", "y = Vj(1,784)"];
        let tile = |f: &str| {
            let p = TileProgram::compile(&[parse(f, &al).unwrap()], Cat::Vi, None);
            let row_tile = p
                .pair_instrs
                .iter()
                .any(|i| matches!(i, Instr::RowTile { .. }));
            (row_tile, p.tile)
        };
        assert_eq!(tile("SqDist(x,y)"), (true, 80));
        assert_eq!(tile("SqDist(x,y) + Sum(y)"), (true, 32));
        assert_eq!(tile("Sum(x - y)"), (false, 32));
    }
}
