//! Reductions: how the values `F(x_i, y_j)` of a symbolic matrix are folded along an axis.
//!
//! Each reduction is defined by a state, an initial value, an accumulate step (one value
//! at index `j`), an associative [`ReductionSpec::combine`] of two partial states (the
//! left one covering smaller indices, so ties resolve to the smallest index) and a
//! finalize step. States are kept in `f64` whatever the data type: updates happen once
//! per tile per output row, so this costs nothing and makes long sums of `f32` data
//! accurate (the engines sum within a tile in the data type, see `SumScheme`).
//!
//! | reduction | state | output values | output indices |
//! | --- | --- | --- | --- |
//! | `Sum` | `D` sums | `D` | |
//! | `LogSumExp` | max and shifted sum per coordinate | `D` (or the weight's dim) | |
//! | `SumSoftMaxWeight` | max, shifted sum, shifted weighted sums | weight's dim | |
//! | `Min`, `Max` | `D` extrema | `D` | |
//! | `ArgMin`, `ArgMax` | extrema and positions | | `D` |
//! | `Min_ArgMin`, `Max_ArgMax` | extrema and positions | `D` | `D` |
//! | `KMin(K)` | `K` sorted values per coordinate | `K*D` (`[k][d]`) | |
//! | `ArgKMin(K)` | ... and positions | | `K*D` |
//! | `KMin_ArgKMin(K)` | | `K*D` | `K*D` |
//!
//! Empty reductions (no `j` at all) give: `Sum` 0, `LogSumExp` `-inf`,
//! `SumSoftMaxWeight` NaN (0/0), `Min`/`KMin` `+inf`, `Max` `-inf`, and index -1.
//! NaN values are never selected by the min/max family (comparisons with NaN are false)
//! and propagate through sums.

use crate::error::{KeopsError, Result};

/// The reduction kinds of KeOps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// Sum over the reduced axis.
    Sum,
    /// `log sum exp F` (with a weight `G`: `log sum exp(F) G`), numerically stable.
    LogSumExp,
    /// `sum exp(F) G / sum exp(F)`, numerically stable.
    SumSoftMaxWeight,
    /// Smallest value, per coordinate.
    Min,
    /// Largest value, per coordinate.
    Max,
    /// Position of the smallest value.
    ArgMin,
    /// Position of the largest value.
    ArgMax,
    /// Smallest value and its position.
    MinArgMin,
    /// Largest value and its position.
    MaxArgMax,
    /// The `K` smallest values, in increasing order.
    KMin(usize),
    /// Positions of the `K` smallest values.
    ArgKMin(usize),
    /// The `K` smallest values and their positions.
    KMinArgKMin(usize),
}

impl Reduction {
    /// Parses a KeOps reduction name (`"Sum"`, `"LogSumExp"`, `"Min_ArgMin"`,
    /// `"ArgKMin"`, ...); `k` is required by the K-min family.
    pub fn from_name(name: &str, k: Option<usize>) -> Result<Reduction> {
        let need_k = |r: fn(usize) -> Reduction| {
            k.map(r).ok_or_else(|| KeopsError::Reduction {
                reduction: name.to_string(),
                msg: "needs K (the number of values to keep)".into(),
            })
        };
        let r = match name {
            "Sum" => Reduction::Sum,
            "LogSumExp" => Reduction::LogSumExp,
            // pykeops 2.3 runs LogSumExpWeight as Max_SumShiftExpWeight and returns that
            // state as it is (no m + log(s)): refused as the others, never a value of
            // another shape that ported code would then take for the state.
            "Max_SumShiftExp" | "Max_SumShiftExpWeight" | "LogSumExpWeight" => {
                return Err(KeopsError::Reduction {
                    reduction: name.to_string(),
                    msg: "returns KeOps' raw state (the max m and the sum of exp(F - m)), \
                          which keops does not expose; LogSumExp gives m + log(sum), \
                          LogSumExp with a weight (formula2) m + log(sum exp(F - m) w)"
                        .into(),
                })
            }
            "SumSoftMaxWeight" => Reduction::SumSoftMaxWeight,
            "Min" => Reduction::Min,
            "Max" => Reduction::Max,
            "ArgMin" => Reduction::ArgMin,
            "ArgMax" => Reduction::ArgMax,
            "Min_ArgMin" | "MinArgMin" => Reduction::MinArgMin,
            "Max_ArgMax" | "MaxArgMax" => Reduction::MaxArgMax,
            "KMin" => need_k(Reduction::KMin)?,
            "ArgKMin" => need_k(Reduction::ArgKMin)?,
            "KMin_ArgKMin" | "KMinArgKMin" => need_k(Reduction::KMinArgKMin)?,
            _ => {
                return Err(KeopsError::Reduction {
                    reduction: name.to_string(),
                    msg: "unknown reduction; expected one of Sum, LogSumExp, SumSoftMaxWeight, \
                          Min, Max, ArgMin, ArgMax, Min_ArgMin, Max_ArgMax, KMin, ArgKMin, KMin_ArgKMin"
                        .into(),
                })
            }
        };
        if r.k().is_none() && k.is_some() {
            return Err(KeopsError::Reduction {
                reduction: name.to_string(),
                msg: "takes no K (only KMin, ArgKMin and KMin_ArgKMin do)".into(),
            });
        }
        Ok(r)
    }

    /// KeOps' name.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "Sum",
            Reduction::LogSumExp => "LogSumExp",
            Reduction::SumSoftMaxWeight => "SumSoftMaxWeight",
            Reduction::Min => "Min",
            Reduction::Max => "Max",
            Reduction::ArgMin => "ArgMin",
            Reduction::ArgMax => "ArgMax",
            Reduction::MinArgMin => "Min_ArgMin",
            Reduction::MaxArgMax => "Max_ArgMax",
            Reduction::KMin(_) => "KMin",
            Reduction::ArgKMin(_) => "ArgKMin",
            Reduction::KMinArgKMin(_) => "KMin_ArgKMin",
        }
    }

    /// Every reduction kind (with `K = 3` for the K-min family), for tests.
    pub const ALL: &'static [Reduction] = &[
        Reduction::Sum,
        Reduction::LogSumExp,
        Reduction::SumSoftMaxWeight,
        Reduction::Min,
        Reduction::Max,
        Reduction::ArgMin,
        Reduction::ArgMax,
        Reduction::MinArgMin,
        Reduction::MaxArgMax,
        Reduction::KMin(3),
        Reduction::ArgKMin(3),
        Reduction::KMinArgKMin(3),
    ];

    /// `K` for the K-min family.
    pub fn k(self) -> Option<usize> {
        match self {
            Reduction::KMin(k) | Reduction::ArgKMin(k) | Reduction::KMinArgKMin(k) => Some(k),
            _ => None,
        }
    }

    /// Whether the reduction takes a second formula (`SumSoftMaxWeight` needs one,
    /// `LogSumExp` accepts one).
    pub fn takes_weight(self) -> bool {
        matches!(self, Reduction::LogSumExp | Reduction::SumSoftMaxWeight)
    }
}

/// A reduction together with the dimensions it folds: everything needed to size,
/// update and finalize its states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReductionSpec {
    /// The kind.
    pub kind: Reduction,
    /// Dimension of the reduced formula `F`.
    pub dim: usize,
    /// Dimension of the weight `G`, if any.
    pub weight_dim: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Sum,
    Lse,
    Select { max: bool },
    KMin(usize),
}

impl ReductionSpec {
    /// Checks the dimensions and builds the spec.
    pub fn new(kind: Reduction, dim: usize, weight_dim: Option<usize>) -> Result<ReductionSpec> {
        let err = |msg: String| KeopsError::Reduction {
            reduction: kind.name().to_string(),
            msg,
        };
        match (kind, weight_dim) {
            (Reduction::SumSoftMaxWeight, None) => {
                return Err(err("needs a weight formula (formula2)".into()))
            }
            (Reduction::LogSumExp | Reduction::SumSoftMaxWeight, Some(_)) if dim != 1 => {
                return Err(err(format!(
                    "the formula must be scalar when weighted, got dimension {dim}"
                )))
            }
            (k, Some(_)) if !k.takes_weight() => return Err(err("takes no weight formula".into())),
            (_, Some(0)) => return Err(err("weight dimension must be at least 1".into())),
            _ => {}
        }
        if let Some(k) = kind.k() {
            if k == 0 {
                return Err(err("K must be at least 1".into()));
            }
            let max = crate::formula::ops::MAX_DIM;
            if !matches!(k.checked_mul(dim), Some(kd) if kd <= max) {
                return Err(err(format!(
                    "K = {k} values of dimension {dim} per row; at most {max} are supported"
                )));
            }
        }
        Ok(ReductionSpec {
            kind,
            dim,
            weight_dim,
        })
    }

    fn family(&self) -> Family {
        match self.kind {
            Reduction::Sum => Family::Sum,
            Reduction::LogSumExp | Reduction::SumSoftMaxWeight => Family::Lse,
            Reduction::Min | Reduction::ArgMin | Reduction::MinArgMin => {
                Family::Select { max: false }
            }
            Reduction::Max | Reduction::ArgMax | Reduction::MaxArgMax => {
                Family::Select { max: true }
            }
            Reduction::KMin(k) | Reduction::ArgKMin(k) | Reduction::KMinArgKMin(k) => {
                Family::KMin(k)
            }
        }
    }

    /// Dimension of the values the formula(s) produce per pair: `F`, then `G`.
    pub fn input_dim(&self) -> usize {
        self.dim + self.weight_dim.unwrap_or(0)
    }

    /// Dimensions of the outputs per row: (values, indices); 0 where absent.
    pub fn output_dims(&self) -> (usize, usize) {
        let d = self.dim;
        match self.kind {
            Reduction::Sum | Reduction::Min | Reduction::Max => (d, 0),
            Reduction::LogSumExp | Reduction::SumSoftMaxWeight => (self.weight_dim.unwrap_or(d), 0),
            Reduction::ArgMin | Reduction::ArgMax => (0, d),
            Reduction::MinArgMin | Reduction::MaxArgMax => (d, d),
            Reduction::KMin(k) => (k * d, 0),
            Reduction::ArgKMin(k) => (0, k * d),
            Reduction::KMinArgKMin(k) => (k * d, k * d),
        }
    }

    /// Sizes of the state per row: (values, indices).
    pub fn state_len(&self) -> (usize, usize) {
        let d = self.dim;
        match self.family() {
            Family::Sum => (d, 0),
            // Unweighted: max and sum per coordinate. Weighted: max, sum of exp (kept for
            // SumSoftMaxWeight's denominator) and the weighted sums.
            Family::Lse => match self.weight_dim {
                None => (2 * d, 0),
                Some(w) => (2 + w, 0),
            },
            Family::Select { .. } => (d, d),
            Family::KMin(k) => (k * d, k * d),
        }
    }

    /// Writes the initial state.
    pub fn init(&self, vals: &mut [f64], idx: &mut [i64]) {
        idx.fill(-1);
        match self.family() {
            Family::Sum => vals.fill(0.0),
            Family::Lse => {
                let nmax = if self.weight_dim.is_some() {
                    1
                } else {
                    self.dim
                };
                vals[..nmax].fill(f64::NEG_INFINITY);
                vals[nmax..].fill(0.0);
            }
            Family::Select { max: true } => vals.fill(f64::NEG_INFINITY),
            Family::Select { max: false } | Family::KMin(_) => vals.fill(f64::INFINITY),
        }
    }

    /// Folds the value `v` (the formula, then the weight) at index `j` into the state.
    pub fn accumulate(&self, vals: &mut [f64], idx: &mut [i64], v: &[f64], j: i64) {
        let d = self.dim;
        match self.family() {
            Family::Sum => vals.iter_mut().zip(v).for_each(|(s, x)| *s += x),
            Family::Lse => match self.weight_dim {
                None => {
                    let (ms, ss) = vals.split_at_mut(d);
                    for c in 0..d {
                        lse_update(&mut ms[c], &mut ss[c], v[c], &[], &mut []);
                    }
                }
                Some(_) => {
                    let (m, rest) = vals.split_at_mut(1);
                    let (s, ws) = rest.split_at_mut(1);
                    lse_update(&mut m[0], &mut s[0], v[0], &v[1..], ws);
                }
            },
            Family::Select { max } => {
                for ((best, arg), &x) in vals.iter_mut().zip(idx.iter_mut()).zip(&v[..d]) {
                    if (!max && x < *best) || (max && x > *best) {
                        *best = x;
                        *arg = j;
                    }
                }
            }
            Family::KMin(k) => {
                for (c, &x) in v[..d].iter().enumerate() {
                    kmin_insert(vals, idx, k, d, c, x, j);
                }
            }
        }
    }

    /// Folds state `b` into state `a`; `a` must cover indices before `b`'s.
    pub fn combine(&self, a: (&mut [f64], &mut [i64]), b: (&[f64], &[i64])) {
        let ((va, ia), (vb, ib)) = (a, b);
        let d = self.dim;
        match self.family() {
            Family::Sum => va.iter_mut().zip(vb).for_each(|(x, y)| *x += y),
            Family::Lse => {
                let nmax = if self.weight_dim.is_some() { 1 } else { d };
                for c in 0..nmax {
                    let (ma, mb) = (va[c], vb[c]);
                    let m = ma.max(mb);
                    // Equal maxima (infinite ones included) scale by 1: exp(inf - inf)
                    // would be NaN, and both sums must be kept (one may be NaN).
                    let (fa, fb) = (shift(ma, m), shift(mb, m));
                    va[c] = m;
                    if self.weight_dim.is_some() {
                        for k in 1..va.len() {
                            va[k] = va[k] * fa + vb[k] * fb;
                        }
                    } else {
                        va[d + c] = va[d + c] * fa + vb[d + c] * fb;
                    }
                }
            }
            Family::Select { max } => {
                for c in 0..d {
                    if (!max && vb[c] < va[c]) || (max && vb[c] > va[c]) {
                        va[c] = vb[c];
                        ia[c] = ib[c];
                    }
                }
            }
            Family::KMin(k) => {
                for c in 0..d {
                    for r in 0..k {
                        let (x, j) = (vb[r * d + c], ib[r * d + c]);
                        if j < 0 && x == f64::INFINITY {
                            break;
                        }
                        kmin_insert(va, ia, k, d, c, x, j);
                    }
                }
            }
        }
    }

    /// The outputs (values, indices) of one row that reduces no pair: 0 for sums,
    /// `-inf` for log-sum-exp, `+-inf` for extrema, index -1 (soft-max averages: 0/0).
    pub fn empty_output(&self) -> (Vec<f64>, Vec<i64>) {
        let (sv, si) = self.state_len();
        let (dv, di) = self.output_dims();
        let (mut s, mut t) = (vec![0.0; sv], vec![0i64; si]);
        self.init(&mut s, &mut t);
        let (mut v, mut i) = (vec![0.0; dv], vec![0i64; di]);
        self.finalize(&s, &t, &mut v, &mut i);
        (v, i)
    }

    /// Turns a state into the outputs (values, indices) of one row.
    pub fn finalize(&self, vals: &[f64], idx: &[i64], out_v: &mut [f64], out_i: &mut [i64]) {
        let d = self.dim;
        match self.kind {
            Reduction::Sum | Reduction::Min | Reduction::Max | Reduction::KMin(_) => {
                out_v.copy_from_slice(vals)
            }
            Reduction::ArgMin | Reduction::ArgMax | Reduction::ArgKMin(_) => {
                out_i.copy_from_slice(idx)
            }
            Reduction::MinArgMin | Reduction::MaxArgMax | Reduction::KMinArgKMin(_) => {
                out_v.copy_from_slice(vals);
                out_i.copy_from_slice(idx);
            }
            Reduction::LogSumExp => match self.weight_dim {
                None => {
                    for c in 0..d {
                        out_v[c] = vals[c] + vals[d + c].ln();
                    }
                }
                Some(_) => {
                    for (o, s) in out_v.iter_mut().zip(&vals[2..]) {
                        *o = vals[0] + s.ln();
                    }
                }
            },
            Reduction::SumSoftMaxWeight => {
                for (o, s) in out_v.iter_mut().zip(&vals[2..]) {
                    *o = s / vals[1];
                }
            }
        }
    }
}

/// `exp(m - m_new)`, exactly 1 when the two are equal (infinities included).
#[inline]
pub fn shift(m: f64, m_new: f64) -> f64 {
    if m == m_new {
        1.0
    } else {
        (m - m_new).exp()
    }
}

/// One step of the stable log-sum-exp: `(m, s, ws)` represents `exp(m) * (s, ws)`.
#[inline]
fn lse_update(m: &mut f64, s: &mut f64, f: f64, w: &[f64], ws: &mut [f64]) {
    if f == f64::NEG_INFINITY {
        return; // exp(-inf) = 0, and -inf - -inf would be NaN
    }
    if f > *m {
        let scale = shift(*m, f);
        *s = *s * scale + 1.0;
        for (a, b) in ws.iter_mut().zip(w) {
            *a = *a * scale + b;
        }
        *m = f;
    } else {
        let e = shift(f, *m);
        *s += e;
        for (a, b) in ws.iter_mut().zip(w) {
            *a += e * b;
        }
    }
}

/// Inserts `(x, j)` into the sorted list of coordinate `c` (layout `[k][d]`), keeping the
/// `k` smallest; equal values keep the earlier index first.
#[inline(always)]
pub fn kmin_insert(
    vals: &mut [f64],
    idx: &mut [i64],
    k: usize,
    d: usize,
    c: usize,
    x: f64,
    j: i64,
) {
    if x.partial_cmp(&vals[(k - 1) * d + c]) != Some(std::cmp::Ordering::Less) {
        return;
    }
    let mut r = k - 1;
    while r > 0 && x < vals[(r - 1) * d + c] {
        vals[r * d + c] = vals[(r - 1) * d + c];
        idx[r * d + c] = idx[(r - 1) * d + c];
        r -= 1;
    }
    vals[r * d + c] = x;
    idx[r * d + c] = j;
}
