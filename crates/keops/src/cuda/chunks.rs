//! Chunked mode, for output-side rows too wide for registers (D in the hundreds).
//!
//! Such rows ([`KernelSpec::in_registers`]) would otherwise be read in place at every
//! pair: a load per coordinate, each thread of a warp on its own row, far slower than
//! the arithmetic. Most formulas of this kind use the wide rows only through sums over
//! their coordinates: `SqDist(x,y)` in Gaussian kernels and nearest neighbours, `(x|y)`,
//! `SqNorm2`, `Sum` of coordinatewise terms. Those sums are then computed for a whole
//! tile, [`CHUNK`] coordinates at a time: the thread's chunk of each wide row is loaded
//! into registers once per tile and serves every pair of the tile, the partial sums
//! kept per pair; the rest of the formula sees each sum as a scalar argument. This is
//! KeOps' chunked mode (`GpuReduc1D_chunks`), for any number (up to [`MAX_SUMS`]) of
//! such sums and whatever their dimension. Formulas using a wide row otherwise (a
//! gradient, `x * Exp(...)`) keep reading it in place.
//!
//! [`KernelSpec::in_registers`]: super::kernel::KernelSpec::in_registers

use super::codegen::pointer_params;
use super::kernel::Role;
use crate::formula::diff::substitute;
use crate::formula::{topo_order, Cat, Formula, Op};
use std::fmt::Write;

/// Coordinates per chunk (KeOps' `DIMCHUNK`).
pub const CHUNK: usize = 64;

/// Most sums a kernel computes by chunks (each keeps a partial value per pair of a tile).
pub const MAX_SUMS: usize = 4;

/// A formula whose wide rows are used only through sums over their coordinates.
#[derive(Clone, Debug)]
pub struct Chunked {
    /// The formula with sum `q` replaced by a scalar argument at position `nargs + q`.
    pub formula: Formula,
    /// The weight formula, likewise.
    pub weight: Option<Formula>,
    /// The sums computed by chunks (`Sum`, `SqNorm2`, `Scalprod` or `SqDist` of
    /// coordinatewise operands), in order.
    pub sums: Vec<Formula>,
    /// Positions of the wide rows (output-side, not in registers).
    pub wide: Vec<usize>,
    /// Positions of the reduced-side rows staged chunk by chunk: those of a sum's
    /// dimension used only in the sums. The others are staged whole.
    pub staged: Vec<usize>,
}

/// Whether `f` is computed coordinate by coordinate from operands of dimension `d` or 1:
/// variables, constants and elementwise ops only.
fn coordinatewise(f: &Formula, d: usize) -> bool {
    f.topo_order().iter().all(|n| {
        (n.dim == d || n.dim == 1)
            && matches!(
                n.op,
                Op::Var { .. }
                    | Op::IntCst(_)
                    | Op::RatCst(..)
                    | Op::FloatCst(_)
                    | Op::Unary(_)
                    | Op::Binary(_)
                    | Op::Ternary(_)
            )
    })
}

/// The dimension a sum runs over.
fn sum_dim(s: &Formula) -> usize {
    s.args.iter().map(|a| a.dim).max().unwrap_or(1)
}

/// The chunked form of `formula` (and `weight`) for arguments `args`, of which `regs`
/// are held in registers; `None` when no output-side row is wide, or a wide one is used
/// outside a chunkable sum, or there are more than [`MAX_SUMS`] such sums.
pub fn plan(
    formula: &Formula,
    weight: Option<&Formula>,
    args: &[(Role, usize)],
    regs: &[bool],
) -> Option<Chunked> {
    let wide: Vec<usize> = (0..args.len())
        .filter(|&i| args[i].0 == Role::Out && !regs[i])
        .collect();
    let is_wide = |n: &Formula| matches!(n.op, Op::Var { index, .. } if wide.contains(&index));
    if wide.is_empty() {
        return None;
    }
    let roots: Vec<Formula> = std::iter::once(formula).chain(weight).cloned().collect();
    let sums: Vec<Formula> = topo_order(&roots)
        .into_iter()
        .filter(|n| {
            matches!(n.op, Op::Sum | Op::SqNorm2 | Op::Scalprod | Op::SqDist)
                && n.args.iter().all(|a| coordinatewise(a, sum_dim(n)))
                && topo_order(&n.args).iter().any(is_wide)
        })
        .collect();
    if sums.is_empty() || sums.len() > MAX_SUMS {
        return None;
    }
    let map = sums
        .iter()
        .enumerate()
        .map(|(q, s)| Ok((s.clone(), Formula::var(Cat::Vj, args.len() + q, 1)?)))
        .collect::<crate::error::Result<Vec<_>>>()
        .ok()?;
    let formula = substitute(formula, &map).ok()?;
    let weight = weight.map(|w| substitute(w, &map)).transpose().ok()?;
    let rest: Vec<Formula> = std::iter::once(&formula).chain(&weight).cloned().collect();
    if topo_order(&rest).iter().any(is_wide) {
        return None;
    }
    let outside = vars_of(&rest);
    let mut staged: Vec<usize> = Vec::new();
    for s in &sums {
        for i in vars_of(&s.args) {
            if args[i] == (Role::Red, sum_dim(s)) && !outside.contains(&i) && !staged.contains(&i) {
                staged.push(i);
            }
        }
    }
    Some(Chunked {
        formula,
        weight,
        sums,
        wide,
        staged,
    })
}

/// Where a chunk pass runs ([`Chunked::pass`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// In the kernel: a block's threads stage each chunk of the tile in shared memory
    /// (`tile + base`), between barriers.
    Kernel {
        /// Offset (in values) of the chunk area in the shared tile.
        base: usize,
    },
    /// In host C (`{name}_tile`, for tests): the chunks are copied from whole rows.
    Host,
}

impl Chunked {
    /// Most rows staged chunk by chunk at once (those of one sum): the chunk area holds
    /// this many `tile` x [`CHUNK`] blocks.
    pub fn chunk_slots(&self) -> usize {
        self.sums
            .iter()
            .map(|s| {
                vars_of(&s.args)
                    .iter()
                    .filter(|i| self.staged.contains(i))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Host-compilable C: for each sum `q` and chunk length `len` it needs,
    /// `T {name}_S{q}_{len}(const T* a0, ...)`, the sum over `len` coordinates of operands
    /// offset to the chunk; and `void {name}_sum{q}_{len}(T* part, const T* a0, ...,
    /// int c0, int n)`, which adds the chunk from coordinate `c0` of sum `q` at pairs
    /// `jj < n` of a tile to `part[jj]`. There `a{i}` is the output row or parameter
    /// (wide rows are copied to registers first), the tile's first row (staged whole) or
    /// the chunk's first row (staged chunk by chunk, rows of `len` values).
    pub fn functions(&self, name: &str, args: &[(Role, usize)]) -> String {
        let nargs = args.len();
        let params = pointer_params(nargs);
        let mut s = String::new();
        for (q, sum) in self.sums.iter().enumerate() {
            let d = sum_dim(sum);
            let used = vars_of(&sum.args);
            let wide: Vec<usize> = used
                .iter()
                .copied()
                .filter(|&i| self.wide.contains(&i) && args[i].1 == d)
                .collect();
            for len in chunk_lengths(d) {
                let f = format!("{name}_S{q}_{len}");
                s.push_str(&super::codegen::chunk_sum_function(sum, &f, nargs, len));
                let ptrs: Vec<String> = (0..nargs)
                    .map(|i| match args[i] {
                        _ if !used.contains(&i) => "0".to_string(),
                        (Role::Red, 1) => format!("a{i} + jj"),
                        (_, 1) => format!("a{i}"),
                        _ if wide.contains(&i) => format!("w{i}"),
                        _ if self.staged.contains(&i) => format!("a{i} + jj * {len}"),
                        (Role::Red, dim) => format!("a{i} + jj * {dim} + c0"),
                        _ => format!("a{i} + c0"),
                    })
                    .collect();
                let load: String = wide
                    .iter()
                    .map(|i| {
                        format!(
                            "  T w{i}[{len}];\n  KEOPS_UNROLL for (int k = 0; k < {len}; k++) {{ w{i}[k] = a{i}[c0 + k]; KEOPS_KEEP(w{i}[k]); }}\n"
                        )
                    })
                    .collect();
                let _ = write!(
                    s,
                    "KEOPS_FN void {name}_sum{q}_{len}(T* part, {params}int c0, int n) {{\n\
                     {load}  for (int jj = 0; jj < n; jj++) part[jj] += {f}({});\n}}\n",
                    ptrs.join(", ")
                );
            }
        }
        s
    }

    /// Statements that declare `part{q}` (`tile` values each) and fill `part{q}[jj]` with
    /// sum `q` at pairs `jj < len` of the tile `j0`, chunk by chunk. `ptr(i)` is argument
    /// `i`'s pointer for a fold (the tile's first row for rows staged whole), `live`
    /// whether this thread computes.
    pub fn pass(
        &self,
        name: &str,
        args: &[(Role, usize)],
        tile: usize,
        site: Site,
        ptr: &dyn Fn(usize) -> String,
    ) -> String {
        let mut s = String::new();
        for q in 0..self.sums.len() {
            let _ = write!(s, "T part{q}[{tile}]; ");
        }
        s.push_str("\n  if (live) for (int jj = 0; jj < len; jj++) {");
        for q in 0..self.sums.len() {
            let _ = write!(s, " part{q}[jj] = 0;");
        }
        s.push_str(" }\n");
        for (q, sum) in self.sums.iter().enumerate() {
            let d = sum_dim(sum);
            let used = vars_of(&sum.args);
            let mine: Vec<usize> = used
                .iter()
                .copied()
                .filter(|i| self.staged.contains(i))
                .collect();
            for len in chunk_lengths(d) {
                // Whole chunks in a loop, then the last, shorter one.
                let range = if len == CHUNK {
                    format!("for (int c0 = 0; c0 + {CHUNK} <= {d}; c0 += {CHUNK})")
                } else {
                    format!("for (int c0 = {}; c0 < {d}; c0 += {CHUNK})", d - len)
                };
                let mut stage = String::new();
                let mut ptrs = String::new();
                for i in 0..args.len() {
                    match mine.iter().position(|&m| m == i) {
                        Some(slot) => {
                            // The chunk area, its declaration, and the copy's source and
                            // stride (a block's threads, or one).
                            let (area, decl, from, first, step) = match site {
                                Site::Kernel { base } => (
                                    format!("tile + {}", base + slot * tile * CHUNK),
                                    String::new(),
                                    format!("args[{i}][off[{i}] + (j0 - j_base + e / {len}) * {d} + c0 + e % {len}]"),
                                    "threadIdx.x",
                                    "blockDim.x",
                                ),
                                Site::Host => (
                                    format!("ch{i}"),
                                    format!("T ch{i}[{}]; ", tile * len),
                                    format!("a{i}[(e / {len}) * {d} + c0 + e % {len}]"),
                                    "0",
                                    "1",
                                ),
                            };
                            let _ = write!(
                                stage,
                                "{decl}for (int e = {first}; e < len * {len}; e += {step}) ({area})[e] = {from};\n    "
                            );
                            let _ = write!(ptrs, "{area}, ");
                        }
                        None if used.contains(&i) => {
                            let _ = write!(ptrs, "{}, ", ptr(i));
                        }
                        None => ptrs.push_str("0, "),
                    }
                }
                let sync = match site {
                    Site::Kernel { .. } if !mine.is_empty() => "__syncthreads();\n    ",
                    _ => "",
                };
                let _ = writeln!(
                    s,
                    "  {range} {{\n    {sync}{stage}{sync}if (live) {name}_sum{q}_{len}(part{q}, {ptrs}c0, len);\n  }}"
                );
            }
        }
        s
    }

    /// The fold's extra arguments: `part0, ...`.
    pub fn part_args(&self) -> String {
        (0..self.sums.len()).map(|q| format!("part{q}, ")).collect()
    }
}

/// The argument positions of the variables of `roots`.
fn vars_of(roots: &[Formula]) -> Vec<usize> {
    crate::formula::variables(roots)
        .iter()
        .filter_map(|v| match v.op {
            Op::Var { index, .. } => Some(index),
            _ => None,
        })
        .collect()
}

/// The chunk lengths a sum over `d` coordinates needs: [`CHUNK`] if `d` has a whole
/// chunk, and the remainder if any.
fn chunk_lengths(d: usize) -> Vec<usize> {
    let mut v = Vec::new();
    if d >= CHUNK {
        v.push(CHUNK);
    }
    if d % CHUNK != 0 {
        v.push(d % CHUNK);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::kernel::KernelSpec;
    use crate::{Genred, Options, Reduction};

    fn spec(formula: &str, aliases: &[&str], r: Reduction) -> KernelSpec {
        // Reduced over j: the `Vi` rows are the output side.
        let g = Genred::new(formula, aliases, r, 1).unwrap();
        KernelSpec::new::<f32>(&g, &Options::default())
    }

    #[test]
    fn wide_rows_inside_sums_are_chunked() {
        let gauss = spec(
            "Exp(-SqDist(x,y)) * b",
            &["x = Vi(0,200)", "y = Vj(1,200)", "b = Vj(2,1)"],
            Reduction::Sum,
        );
        let c = gauss.chunked().expect("chunked");
        assert_eq!(c.sums.len(), 1);
        assert_eq!(c.sums[0].op, Op::SqDist);
        // The rest of the formula reads the sum as argument 3.
        assert!(c
            .formula
            .variables()
            .iter()
            .any(|v| v.as_var() == Some((Cat::Vj, 3))));
        assert_eq!(chunk_lengths(200), vec![64, 8]);
        assert_eq!(chunk_lengths(128), vec![64]);
        assert_eq!(chunk_lengths(40), vec![40]);
        // y is staged chunk by chunk (after b's whole rows), x's chunks go to registers.
        assert_eq!(c.staged, vec![1]);
        assert_eq!(c.chunk_slots(), 1);
        assert_eq!(gauss.tile_row_bytes(), (1 + CHUNK) * 4);
        let ptr = |i: usize| format!("p{i}");
        let pass = c.pass("k", &gauss.args, 32, Site::Kernel { base: 32 }, &ptr);
        assert!(pass.contains("T part0[32];"), "{pass}");
        assert!(pass.contains(
            "(tile + 32)[e] = args[1][off[1] + (j0 - j_base + e / 64) * 200 + c0 + e % 64]"
        ));
        assert!(
            pass.contains("k_sum0_64(part0, p0, tile + 32, 0, c0, len)"),
            "{pass}"
        );
        assert!(pass.contains("for (int c0 = 192; c0 < 200;") && pass.contains("k_sum0_8("));
        let f = c.functions("k", &gauss.args);
        assert!(f.contains("k_S0_64(w0, a1 + jj * 64, 0)") && f.contains("KEOPS_KEEP(w0[k])"));
        // Two sums, one wide row in both; a parameter inside a sum.
        let two = spec(
            "Exp(-SqDist(x,y) * s) * (x|z)",
            &[
                "x = Vi(0,100)",
                "y = Vj(1,100)",
                "z = Vj(2,100)",
                "s = Pm(3,1)",
            ],
            Reduction::Sum,
        );
        assert_eq!(two.chunked().expect("chunked").sums.len(), 2);
        let knn = spec(
            "SqDist(x,y)",
            &["x = Vi(0,150)", "y = Vj(1,150)"],
            Reduction::ArgKMin(5),
        );
        assert_eq!(knn.chunked().expect("chunked").sums.len(), 1);
    }

    #[test]
    fn other_uses_of_wide_rows_are_not_chunked() {
        // In registers: nothing to chunk.
        let narrow = spec(
            "Exp(-SqDist(x,y))",
            &["x = Vi(0,64)", "y = Vj(1,64)"],
            Reduction::Sum,
        );
        assert!(narrow.chunked().is_none());
        // x outside a sum (the gradient's x - y).
        let grad = spec(
            "Grad(Exp(-SqDist(x,y)), x, e)",
            &["x = Vi(0,100)", "y = Vj(1,100)", "e = Vi(2,1)"],
            Reduction::Sum,
        );
        assert!(grad.chunked().is_none());
        // A sum over a non-coordinatewise operand.
        let ext = spec(
            "Sum(Extract(x, 0, 70) - y)",
            &["x = Vi(0,100)", "y = Vj(1,70)"],
            Reduction::Sum,
        );
        assert!(ext.chunked().is_none());
    }
}
