//! Column chunks, for outputs too wide for registers (KeOps' "final chunks").
//!
//! A Gaussian kernel product `Exp(-SqDist(x,y)) * b` with `b` of dimension 1000 keeps a
//! state of 1000 sums per thread: far more than a thread's 255 registers, so the state
//! lives in local memory and every pair reads and writes it (19.7 KB of stack per
//! thread, compiled for sm_90; see [`WHOLE_MAX_BYTES`] for where that starts). Such formulas compute each output coordinate from the
//! same coordinate of their wide variables: the output's columns `c..c + W` are the same
//! formula with every wide variable cut to its columns `c..c + W`. The engine then
//! launches the kernel of that narrower formula once per group of `W` columns, with the
//! wide arguments' and the outputs' pointers moved to the group's first column and their
//! rows read at the whole row's stride: the state fits in registers, no data is copied,
//! and schemes, batches and block-sparse ranges work unchanged. The price is the scalar
//! part of the formula (the Gaussian's exponential), computed once per group rather than
//! once per pair.
//!
//! A formula qualifies when its wide part (the nodes of the output's dimension, from the
//! root) is made of variables, elementwise operations and scalars broadcast, and the
//! variables it reads by column are used nowhere else. The reductions are those whose
//! outputs are one value (or index) per coordinate: sums, minima and maxima with or
//! without their indices, LogSumExp, and the weighted LogSumExp and SumSoftMaxWeight
//! (whose weight is the wide part). KeOps does the same for `Sum(K(x,y) * b)` above
//! 146 dimensions (`GpuReduc1D_finalchunks`), computing the scalar part once per pair
//! but adding each tile's columns into the outputs in global memory.

use crate::formula::{variables, Formula, Op};
use crate::reduction::{Reduction, ReductionSpec};
use std::collections::HashMap;

/// Most bytes of a group's columns in one state: 64 float32 or 32 float64 sums, as
/// KeOps' groups (21 float32 minima with their 8-byte indices). The Gaussian product's
/// pair loop then takes 95 instructions per group (NVRTC 13, sm_90): 64 multiply-adds,
/// 16 vector loads, the scalar part.
pub const WIDTH_BYTES: usize = 256;

/// States up to this many bytes per row keep whole rows: 240 float32 sums (120
/// float64, 80 float32 minima with their indices). Up to there, NVRTC 13 keeps the Gaussian product's sums in registers (at
/// 240 columns the pair loop is 324 instructions, against 380 for 4 groups of 64); at
/// 256 the loop reads and writes local memory 33 times per pair, and at 1000 it takes
/// 3565 instructions, 2358 of them local memory, against 16 groups of 95.
pub const WHOLE_MAX_BYTES: usize = 960;

/// How a kernel reads a wide output by columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns {
    /// The output's (the weight's, for weighted reductions) whole dimension: the row
    /// stride of the wide arguments and of the outputs.
    pub full: usize,
    /// Columns per launch.
    pub width: usize,
    /// Positions of the arguments read by column.
    pub wide: Vec<usize>,
    /// The reduction over whole rows (its empty value fills rows no block-sparse range
    /// reaches).
    pub whole: ReductionSpec,
}

impl Columns {
    /// The first column of each launch: steps of `width`, the last group ending at the
    /// last column (it overlaps the one before where `width` does not divide `full`;
    /// the columns they share are computed twice, the same way).
    pub fn starts(&self) -> Vec<usize> {
        let n = self.full.div_ceil(self.width);
        (0..n)
            .map(|g| (g * self.width).min(self.full - self.width))
            .collect()
    }
}

/// The narrow form of a reduction: the formula and weight with their wide variables cut
/// to `width` columns, and the reduction of `width` columns.
#[derive(Clone, Debug)]
pub struct Narrow {
    /// How the kernel reads by columns.
    pub columns: Columns,
    /// The formula, narrow where it is the wide part.
    pub formula: Formula,
    /// The weight, narrow where it is the wide part.
    pub weight: Option<Formula>,
    /// The reduction of one group of columns.
    pub spec: ReductionSpec,
}

/// The narrow form of `formula` (weighted by `weight`) under `spec`, for states of
/// `acc_bytes` bytes per value (the accumulation type's: float64 sums of float32 data
/// take twice the registers; indices take 8 bytes); `None` where a row's state takes
/// no more than [`WHOLE_MAX_BYTES`], or the reduction or the formula does not allow it
/// (see the module docs).
pub fn plan(
    formula: &Formula,
    weight: Option<&Formula>,
    spec: &ReductionSpec,
    acc_bytes: usize,
) -> Option<Narrow> {
    let weighted = weight.is_some();
    let full = match spec.kind {
        Reduction::Sum
        | Reduction::Min
        | Reduction::Max
        | Reduction::ArgMin
        | Reduction::ArgMax
        | Reduction::MinArgMin
        | Reduction::MaxArgMax
        | Reduction::LogSumExp
            if !weighted =>
        {
            spec.dim
        }
        Reduction::LogSumExp | Reduction::SumSoftMaxWeight => spec.weight_dim?,
        _ => return None,
    };
    let (sv, si) = spec.state_len();
    let state_bytes = sv * acc_bytes + si * 8;
    if state_bytes <= WHOLE_MAX_BYTES {
        return None;
    }
    // Per column (a weighted state's two scalars aside).
    let width = (WIDTH_BYTES / (state_bytes / full).max(1)).clamp(1, full - 1);
    let wide_root = weight.unwrap_or(formula);
    let mut cut = Cut {
        full,
        width,
        wide: Vec::new(),
        scalars: Vec::new(),
        done: HashMap::new(),
    };
    let narrow = cut.node(wide_root)?;
    // The wide variables are read by column only: no scalar part, and not the formula
    // of a weighted reduction, may read them whole.
    let mut elsewhere = cut.scalars.clone();
    elsewhere.extend(weight.map(|_| formula.clone()));
    let reads_wide = variables(&elsewhere)
        .iter()
        .any(|v| v.as_var().is_some_and(|(_, i)| cut.wide.contains(&i)));
    if reads_wide {
        return None;
    }
    let (formula, weight, narrow_spec) = match weight {
        Some(_) => (
            formula.clone(),
            Some(narrow),
            ReductionSpec::new(spec.kind, spec.dim, Some(width)).ok()?,
        ),
        None => (
            narrow,
            None,
            ReductionSpec::new(spec.kind, width, None).ok()?,
        ),
    };
    let mut wide = cut.wide;
    wide.sort_unstable();
    Some(Narrow {
        columns: Columns {
            full,
            width,
            wide,
            whole: *spec,
        },
        formula,
        weight,
        spec: narrow_spec,
    })
}

/// The wide part of a formula rebuilt `width` columns wide.
struct Cut {
    full: usize,
    width: usize,
    /// Variables met in the wide part.
    wide: Vec<usize>,
    /// Scalar operands of the wide part, kept as they are.
    scalars: Vec<Formula>,
    done: HashMap<u64, Formula>,
}

impl Cut {
    fn node(&mut self, f: &Formula) -> Option<Formula> {
        if let Some(n) = self.done.get(&f.id()) {
            return Some(n.clone());
        }
        let out = if f.dim == 1 {
            self.scalars.push(f.clone());
            f.clone()
        } else if f.dim != self.full {
            return None;
        } else {
            match f.op {
                Op::Var { cat, index, .. } => {
                    if !self.wide.contains(&index) {
                        self.wide.push(index);
                    }
                    Formula::var(cat, index, self.width).ok()?
                }
                Op::Unary(_) | Op::Binary(_) | Op::Ternary(_) => {
                    let args = f
                        .args
                        .iter()
                        .map(|a| self.node(a))
                        .collect::<Option<Vec<_>>>()?;
                    Formula::new(f.op.clone(), args).ok()?
                }
                Op::SumT(_) => self.node(&f.args[0])?.sum_t(self.width).ok()?,
                Op::Zero(_) => Formula::zero(self.width).ok()?,
                _ => return None,
            }
        };
        self.done.insert(f.id(), out.clone());
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Genred;

    fn narrow(formula: &str, aliases: &[&str], r: Reduction, acc: usize) -> Option<Narrow> {
        let g = Genred::new(formula, aliases, r, 1).unwrap();
        plan(g.formula(), g.weight(), g.spec(), acc)
    }

    #[test]
    fn wide_products_are_cut_into_groups_of_columns() {
        let al = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,300)"];
        let n = narrow("Exp(-SqDist(x,y)) * b", &al, Reduction::Sum, 4).unwrap();
        assert_eq!((n.columns.full, n.columns.width), (300, 64));
        assert_eq!(n.columns.wide, vec![2]);
        assert_eq!((n.formula.dim, n.spec.dim), (64, 64));
        assert_eq!(n.columns.whole.dim, 300);
        // The last group ends at the last column, overlapping the one before.
        assert_eq!(n.columns.starts(), vec![0, 64, 128, 192, 236]);
        // float64: 32 columns; 64 divides 256, no overlap.
        let al = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,256)"];
        let n = narrow("Exp(-SqDist(x,y)) * b", &al, Reduction::Sum, 8).unwrap();
        assert_eq!(
            n.columns.starts(),
            (0..8).map(|g| 32 * g).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_wide_variable_and_scalar_broadcast_is_cut() {
        let al = [
            "x = Vi(0,300)",
            "y = Vj(1,300)",
            "p = Pm(2,300)",
            "s = Vj(3,1)",
        ];
        let n = narrow(
            "IfElse(x - p, Exp(s) * y, x * p) + s",
            &al,
            Reduction::Max,
            4,
        )
        .unwrap();
        assert_eq!(n.columns.wide, vec![0, 1, 2]);
        // A maximum keeps its index: 12 bytes a column, groups of 21.
        assert_eq!((n.formula.dim, n.columns.width), (21, 21));
        assert_eq!(n.columns.starts().last(), Some(&279));
    }

    #[test]
    fn weighted_reductions_cut_their_weight() {
        let al = ["x = Vi(0,3)", "y = Vj(1,3)", "v = Vj(2,512)"];
        let g =
            Genred::with_weight("-SqDist(x,y)", "v", &al, Reduction::SumSoftMaxWeight, 1).unwrap();
        let n = plan(g.formula(), g.weight(), g.spec(), 4).unwrap();
        assert_eq!((n.spec.dim, n.spec.weight_dim), (1, Some(64)));
        assert_eq!(n.weight.unwrap().dim, 64);
        assert_eq!(n.columns.full, 512);
    }

    #[test]
    fn coupled_columns_and_other_reductions_keep_whole_rows() {
        let al = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,300)"];
        // Narrow enough for registers in float32, not in float64.
        let small = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,240)"];
        assert!(narrow("Exp(-SqDist(x,y)) * b", &small, Reduction::Sum, 4).is_none());
        assert!(narrow("Exp(-SqDist(x,y)) * b", &small, Reduction::Sum, 8).is_some());
        // b also read whole (its norm couples the columns).
        assert!(narrow("Exp(-SqNorm2(b)) * b", &al, Reduction::Sum, 4).is_none());
        // Not elementwise in b.
        assert!(narrow(
            "Concat(Extract(b,150,150), Extract(b,0,150))",
            &al,
            Reduction::Sum,
            4
        )
        .is_none());
        // The K-min family orders K values per coordinate, [K][D] in a row.
        assert!(narrow("Exp(-SqDist(x,y)) * b", &al, Reduction::KMin(2), 4).is_none());
    }
}
