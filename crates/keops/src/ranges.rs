//! Block-sparse reductions: KeOps' `ranges` 6-tuple, checked once.
//!
//! `(ranges_i, slices_i, redranges_j, ranges_j, slices_j, redranges_i)`: for a reduction
//! over `j` (axis 1), output rows `i` in the `k`-th range `ranges_i[k]` are reduced over
//! the union of the `j` ranges `redranges_j[slices_i[k-1] .. slices_i[k]]` (with
//! `slices_i[-1] = 0`); the last three arrays say the same for a reduction over `i`. Rows
//! in no range get the value of an empty reduction (0 for sums, `+inf` for minima, index
//! -1), as in KeOps.
//!
//! With batch dimensions, indices run over the flattened batch, as in KeOps: row `i` of
//! batch entry `b` is `b * n + i`. A range must stay within one batch entry, and its
//! reduced ranges within the same entry.

use crate::error::{KeopsError, Result};
use std::ops::Range;

/// One half of the 6-tuple: clusters of output rows and, for each, the ranges of the
/// reduced axis it interacts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    /// Output rows, `[start, end)`, sorted and disjoint.
    pub ranges: Vec<Range<usize>>,
    /// For cluster `k`, its reduced ranges are `redranges[slices[k-1]..slices[k]]`.
    pub slices: Vec<usize>,
    /// Ranges of the reduced axis (sorted and disjoint within each slice).
    pub redranges: Vec<Range<usize>>,
}

impl Blocks {
    /// The reduced ranges of cluster `k`.
    pub fn reduced(&self, k: usize) -> &[Range<usize>] {
        let start = if k == 0 { 0 } else { self.slices[k - 1] };
        &self.redranges[start..self.slices[k]]
    }

    /// For each of `total` output rows (flattened batch), whether it visits no pair:
    /// in no cluster, or in a cluster without (non-empty) reduced ranges.
    pub fn empty_rows(&self, total: usize) -> Vec<bool> {
        let mut empty = vec![true; total];
        for (k, r) in self.ranges.iter().enumerate() {
            if r.end <= total && self.reduced(k).iter().any(|q| !q.is_empty()) {
                empty[r.clone()].fill(false);
            }
        }
        empty
    }

    /// The number of (output row, reduced row) pairs these blocks cover.
    pub fn pairs(&self) -> usize {
        (0..self.ranges.len())
            .map(|k| self.ranges[k].len() * self.reduced(k).iter().map(|r| r.len()).sum::<usize>())
            .sum()
    }

    /// Checks and sorts one half; `names` are the KeOps names of its three arrays.
    fn new(
        ranges: &[i64],
        slices: &[i64],
        redranges: &[i64],
        names: [&'static str; 3],
    ) -> Result<Blocks> {
        let ranges = pairs(ranges, names[0])?;
        let redranges = pairs(redranges, names[2])?;
        if slices.len() != ranges.len() {
            return Err(err(
                names[1],
                format!(
                    "has {} entries but {} has {} ranges (one slice end per range)",
                    slices.len(),
                    names[0],
                    ranges.len()
                ),
            ));
        }
        let mut prev = 0usize;
        let mut ends = Vec::with_capacity(slices.len());
        for (k, &s) in slices.iter().enumerate() {
            let s = usize::try_from(s)
                .map_err(|_| err(names[1], format!("entry {k} is negative ({s})")))?;
            if s < prev {
                return Err(err(
                    names[1],
                    format!("must be non-decreasing, but entry {k} is {s} after {prev}"),
                ));
            }
            if s > redranges.len() {
                return Err(err(
                    names[1],
                    format!(
                        "entry {k} is {s}, past the {} ranges of {}",
                        redranges.len(),
                        names[2]
                    ),
                ));
            }
            ends.push(s);
            prev = s;
        }
        for k in 1..ranges.len() {
            if ranges[k].start < ranges[k - 1].end {
                return Err(err(
                    names[0],
                    format!(
                        "must be sorted and disjoint, but range {k} {:?} starts before range {} {:?} ends",
                        ranges[k],
                        k - 1,
                        ranges[k - 1]
                    ),
                ));
            }
        }
        // Each cluster's reduced ranges are folded in index order, so sort them; an
        // overlap would count pairs twice.
        let mut redranges = redranges;
        let mut start = 0;
        for (k, &end) in ends.iter().enumerate() {
            let s = &mut redranges[start..end];
            s.sort_by_key(|r| (r.start, r.end));
            for w in 1..s.len() {
                if s[w].start < s[w - 1].end {
                    return Err(err(
                        names[2],
                        format!(
                            "the ranges of cluster {k} ({}[{start}..{end}]) overlap: {:?} and {:?}",
                            names[2],
                            s[w - 1],
                            s[w]
                        ),
                    ));
                }
            }
            start = end;
        }
        Ok(Blocks {
            ranges,
            slices: ends,
            redranges,
        })
    }

    /// Checks the bounds: output rows in `[0, nb * n_out)`, reduced rows in
    /// `[0, nb * n_red)`, and with `nb > 1` every block within one batch entry.
    fn check(&self, n_out: usize, n_red: usize, nb: usize, names: [&'static str; 3]) -> Result<()> {
        let (lim_out, lim_red) = (nb * n_out, nb * n_red);
        for (k, r) in self.ranges.iter().enumerate() {
            if r.end > lim_out {
                return Err(err(
                    names[0],
                    format!(
                        "range {k} {r:?} is out of bounds: there are {lim_out} rows{}",
                        batch_note(nb, n_out)
                    ),
                ));
            }
            let b = r.start.checked_div(n_out).unwrap_or(0);
            if nb > 1 && !r.is_empty() && (r.end - 1) / n_out != b {
                return Err(err(
                    names[0],
                    format!("range {k} {r:?} straddles two batch entries (each has {n_out} rows)"),
                ));
            }
            for red in self.reduced(k) {
                if red.end > lim_red {
                    return Err(err(
                        names[2],
                        format!(
                            "range {red:?} (of cluster {k}) is out of bounds: there are {lim_red} rows{}",
                            batch_note(nb, n_red)
                        ),
                    ));
                }
                if nb > 1 && !red.is_empty() && !r.is_empty() {
                    let (b0, b1) = (red.start / n_red, (red.end - 1) / n_red);
                    if b0 != b || b1 != b {
                        return Err(err(
                            names[2],
                            format!(
                                "range {red:?} (of cluster {k}, rows {r:?} of batch entry {b}) is not within batch entry {b} (rows {}..{})",
                                b * n_red,
                                (b + 1) * n_red
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The same blocks, seen from the other axis: for each range of the reduced axis
    /// that occurs, the output ranges that interact with it.
    fn transposed(&self) -> Blocks {
        let mut pairs: Vec<(Range<usize>, Range<usize>)> = Vec::new();
        for (k, r) in self.ranges.iter().enumerate() {
            for red in self.reduced(k) {
                pairs.push((red.clone(), r.clone()));
            }
        }
        pairs.sort_by_key(|(a, b)| (a.start, a.end, b.start));
        let mut out = Blocks {
            ranges: Vec::new(),
            slices: Vec::new(),
            redranges: Vec::new(),
        };
        for (a, b) in pairs {
            if out.ranges.last() != Some(&a) {
                out.ranges.push(a);
                out.slices.push(out.redranges.len());
            }
            out.redranges.push(b);
            *out.slices.last_mut().expect("pushed above") += 1;
        }
        out
    }
}

fn batch_note(nb: usize, n: usize) -> String {
    if nb > 1 {
        format!(" ({nb} batch entries of {n}, flattened)")
    } else {
        String::new()
    }
}

fn err(part: &'static str, msg: String) -> KeopsError {
    KeopsError::Ranges { part, msg }
}

/// A flat `(n, 2)` array of `[start, end)` pairs, checked.
fn pairs(flat: &[i64], name: &'static str) -> Result<Vec<Range<usize>>> {
    if flat.len() % 2 != 0 {
        return Err(err(
            name,
            format!("must have shape (n, 2), got {} values", flat.len()),
        ));
    }
    flat.chunks_exact(2)
        .enumerate()
        .map(|(k, p)| {
            let (s, e) = (p[0], p[1]);
            if s < 0 || e < s {
                return Err(err(
                    name,
                    format!("range {k} is [{s}, {e}): ranges need 0 <= start <= end"),
                ));
            }
            Ok(s as usize..e as usize)
        })
        .collect()
}

/// KeOps' `ranges` argument: which blocks of the symbolic matrix a reduction visits.
///
/// ```
/// use keops::{Arg, Genred, Options, Ranges, Reduction};
/// use std::sync::Arc;
/// // i in 0..2 sees j in 0..1; i in 2..3 sees j in 1..3.
/// let r = Ranges::from_keops(&[0, 2, 2, 3], &[1, 2], &[0, 1, 1, 3],
///                            &[0, 1, 1, 3], &[1, 2], &[0, 2, 2, 3])?;
/// let g = Genred::new("y", &["x = Vi(0,1)", "y = Vj(1,1)"], Reduction::Sum, 1)?;
/// let opts = Options { ranges: Some(Arc::new(r)), ..Options::default() };
/// let (x, y) = ([0.0f64; 3], [1.0f64, 10.0, 100.0]);
/// let out = g.call_with(&[Arg::new(&x, [3, 1]), Arg::new(&y, [3, 1])], &opts)?;
/// assert_eq!(out.values.unwrap().data, vec![1.0, 1.0, 110.0]);
/// # Ok::<(), keops::KeopsError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranges {
    /// `(ranges_i, slices_i, redranges_j)`: used when reducing over `j` (axis 1).
    pub over_j: Blocks,
    /// `(ranges_j, slices_j, redranges_i)`: used when reducing over `i` (axis 0).
    pub over_i: Blocks,
}

const NAMES_J: [&str; 3] = ["ranges_i", "slices_i", "redranges_j"];
const NAMES_I: [&str; 3] = ["ranges_j", "slices_j", "redranges_i"];

impl Ranges {
    /// From KeOps' six integer arrays (the `(n, 2)` ones flattened row-major), checking
    /// everything that does not depend on the data: `0 <= start <= end`, one slice end
    /// per range, slice ends non-decreasing and within the reduced ranges, output
    /// ranges sorted and disjoint, and each cluster's reduced ranges disjoint (they are
    /// sorted here).
    pub fn from_keops(
        ranges_i: &[i64],
        slices_i: &[i64],
        redranges_j: &[i64],
        ranges_j: &[i64],
        slices_j: &[i64],
        redranges_i: &[i64],
    ) -> Result<Ranges> {
        Ok(Ranges {
            over_j: Blocks::new(ranges_i, slices_i, redranges_j, NAMES_J)?,
            over_i: Blocks::new(ranges_j, slices_j, redranges_i, NAMES_I)?,
        })
    }

    /// From the blocks of a reduction over `j` alone; the blocks of a reduction over
    /// `i` (which gradients with respect to `Vj` variables use) are derived.
    pub fn from_blocks(over_j: Blocks) -> Result<Ranges> {
        let [r, s, red, ..] = Ranges {
            over_i: over_j.clone(),
            over_j,
        }
        .to_keops();
        let checked = Blocks::new(&r, &s, &red, NAMES_J)?;
        let over_i = checked.transposed();
        Ok(Ranges {
            over_j: checked,
            over_i,
        })
    }

    /// KeOps' six arrays, the `(n, 2)` ones flattened row-major (the inverse of
    /// [`Ranges::from_keops`]).
    pub fn to_keops(&self) -> [Vec<i64>; 6] {
        let flat = |v: &[Range<usize>]| -> Vec<i64> {
            v.iter()
                .flat_map(|r| [r.start as i64, r.end as i64])
                .collect()
        };
        let sl = |v: &[usize]| -> Vec<i64> { v.iter().map(|&s| s as i64).collect() };
        let (a, b) = (&self.over_j, &self.over_i);
        [
            flat(&a.ranges),
            sl(&a.slices),
            flat(&a.redranges),
            flat(&b.ranges),
            sl(&b.slices),
            flat(&b.redranges),
        ]
    }

    /// The half a reduction along `axis` uses, with the KeOps names of its arrays.
    pub fn for_axis(&self, axis: usize) -> &Blocks {
        if axis == 1 {
            &self.over_j
        } else {
            &self.over_i
        }
    }

    /// The same ranges with the roles of `i` and `j` exchanged (KeOps' `swap_axes`).
    pub fn swap_axes(&self) -> Ranges {
        Ranges {
            over_j: self.over_i.clone(),
            over_i: self.over_j.clone(),
        }
    }

    /// Checks both halves against the sizes of a call (`nb` batch entries of `n_i` and
    /// `n_j` rows).
    pub fn check(&self, n_i: usize, n_j: usize, nb: usize) -> Result<()> {
        self.over_j.check(n_i, n_j, nb, NAMES_J)?;
        self.over_i.check(n_j, n_i, nb, NAMES_I)
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // lists of one range
mod tests {
    use super::*;

    fn example() -> Ranges {
        // pykeops' from_matrix docstring example.
        Ranges::from_keops(
            &[2, 5, 7, 12],
            &[2, 3],
            &[1, 4, 4, 9, 4, 9],
            &[1, 4, 4, 9, 20, 30],
            &[1, 3, 3],
            &[2, 5, 2, 5, 7, 12],
        )
        .unwrap()
    }

    #[test]
    fn reads_the_keops_layout() {
        let r = example();
        assert_eq!(r.over_j.reduced(0), &[1..4, 4..9]);
        assert_eq!(r.over_j.reduced(1), &[4..9]);
        assert_eq!(r.over_i.reduced(2), &[] as &[Range<usize>]);
        assert_eq!(r.over_j.pairs(), r.over_i.pairs());
        assert!(r.check(12, 30, 1).is_ok());
        assert_eq!(r.swap_axes().over_j, r.over_i);
    }

    #[test]
    fn transposes_to_the_other_half() {
        let r = example();
        let t = r.over_j.transposed();
        assert_eq!(t.ranges, vec![1..4, 4..9]);
        assert_eq!(t.reduced(1), &[2..5, 7..12]);
        assert_eq!(t.pairs(), r.over_j.pairs());
    }

    #[test]
    fn malformed_ranges_are_named() {
        let msg = |r: Result<Ranges>| r.unwrap_err().to_string();
        let m = msg(Ranges::from_keops(
            &[0, 2, 1, 3],
            &[1, 2],
            &[0, 1, 0, 1],
            &[],
            &[],
            &[],
        ));
        assert!(m.contains("ranges_i") && m.contains("sorted"), "{m}");
        let m = msg(Ranges::from_keops(&[0, 2], &[2, 1], &[0, 1], &[], &[], &[]));
        assert!(m.contains("slices_i") && m.contains("entries"), "{m}");
        let m = msg(Ranges::from_keops(&[0, 2], &[3], &[0, 1], &[], &[], &[]));
        assert!(m.contains("slices_i") && m.contains("past"), "{m}");
        let m = msg(Ranges::from_keops(&[3, 2], &[0], &[], &[], &[], &[]));
        assert!(m.contains("ranges_i") && m.contains("start <= end"), "{m}");
        let m = msg(Ranges::from_keops(
            &[0, 2],
            &[2],
            &[0, 3, 2, 4],
            &[],
            &[],
            &[],
        ));
        assert!(m.contains("redranges_j") && m.contains("overlap"), "{m}");
        let m = msg(Ranges::from_keops(&[0, 2, 5], &[1], &[0, 1], &[], &[], &[]));
        assert!(m.contains("shape (n, 2)"), "{m}");
        let m = example().check(10, 30, 1).unwrap_err().to_string();
        assert!(m.contains("ranges_i") && m.contains("out of bounds"), "{m}");
        let m = example().check(12, 8, 1).unwrap_err().to_string();
        assert!(
            m.contains("redranges_j") && m.contains("out of bounds"),
            "{m}"
        );
    }

    #[test]
    fn batch_blocks_stay_in_their_entry() {
        // Two batch entries of 4 rows (i) and 3 rows (j).
        let ok = Ranges::from_blocks(Blocks {
            ranges: vec![0..4, 4..8],
            slices: vec![1, 2],
            redranges: vec![0..3, 3..6],
        })
        .unwrap();
        assert!(ok.check(4, 3, 2).is_ok());
        let straddle = Ranges::from_blocks(Blocks {
            ranges: vec![2..6],
            slices: vec![1],
            redranges: vec![0..3],
        })
        .unwrap();
        let m = straddle.check(4, 3, 2).unwrap_err().to_string();
        assert!(m.contains("straddles"), "{m}");
        let cross = Ranges::from_blocks(Blocks {
            ranges: vec![4..8],
            slices: vec![1],
            redranges: vec![0..3],
        })
        .unwrap();
        let m = cross.check(4, 3, 2).unwrap_err().to_string();
        assert!(m.contains("batch entry 1"), "{m}");
    }
}
