//! `TensorDot(a, b, Ind(dims_a), Ind(dims_b), Ind(cont_a), Ind(cont_b)[, Ind(perm)])`:
//! keopscore's tensor contraction of two flattened (row-major) tensors.
//!
//! The result's natural axes are `a`'s kept (not contracted) axes, then `b`'s, in order;
//! with `perm` they are then moved as keopscore does: natural axis `r` goes to position
//! `perm[r]` of the result (NumPy's `moveaxis(t, range(n), perm)`, which is
//! `transpose(t, argsort(perm))`, the inverse of `torch.permute(perm)`). Contraction pairs `cont_a[t]` with
//! `cont_b[t]`. The op is bilinear, so its vjp is two more `TensorDot`s
//! ([`TensorDot::grad_a`], [`TensorDot::grad_b`]).

use super::ops::MAX_DIM;
use crate::error::{KeopsError, Result};

/// The most products `a[i] * b[j]` one `TensorDot` may sum (each is stored, and unrolled
/// in generated GPU code).
pub const MAX_TERMS: usize = 1 << 22;

/// The parameters of a `TensorDot`, checked, with the products it sums.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorDot {
    /// Shape of `a`.
    pub dims_a: Vec<usize>,
    /// Shape of `b`.
    pub dims_b: Vec<usize>,
    /// Contracted axes of `a`.
    pub cont_a: Vec<usize>,
    /// Contracted axes of `b`, paired with `cont_a`.
    pub cont_b: Vec<usize>,
    /// Where each natural axis of the result goes (keopscore's `permute`).
    pub perm: Vec<usize>,
    /// `(out, a, b)` flat indices: `out[o] += a[i] * b[j]`.
    terms: Vec<(u32, u32, u32)>,
}

fn err(msg: String) -> KeopsError {
    KeopsError::Dim {
        op: "TensorDot".into(),
        msg,
    }
}

/// Row-major strides of a shape.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * dims[k + 1];
    }
    s
}

/// The axes of `0..rank` not in `cont`, in order.
fn kept(rank: usize, cont: &[usize]) -> Vec<usize> {
    (0..rank).filter(|k| !cont.contains(k)).collect()
}

/// Position of each element of `perm` (`inv[perm[q]] = q`).
fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (q, &r) in perm.iter().enumerate() {
        inv[r] = q;
    }
    inv
}

impl TensorDot {
    /// Checks the parameters (axes in range and distinct, contracted sizes equal, `perm`
    /// a permutation of the result's axes; empty `perm` = identity).
    pub fn new(
        dims_a: Vec<usize>,
        dims_b: Vec<usize>,
        cont_a: Vec<usize>,
        cont_b: Vec<usize>,
        perm: Vec<usize>,
    ) -> Result<TensorDot> {
        if dims_a.contains(&0) || dims_b.contains(&0) {
            return Err(err(format!(
                "shapes must have positive sizes, got {dims_a:?} and {dims_b:?}"
            )));
        }
        if cont_a.len() != cont_b.len() {
            return Err(err(format!(
                "contract as many axes of a as of b, got {cont_a:?} and {cont_b:?}"
            )));
        }
        for (cont, dims, which) in [(&cont_a, &dims_a, "a"), (&cont_b, &dims_b, "b")] {
            for (t, &k) in cont.iter().enumerate() {
                if k >= dims.len() || cont[..t].contains(&k) {
                    return Err(err(format!(
                        "contracted axes {cont:?} of {which} must be distinct axes of its shape {dims:?}"
                    )));
                }
            }
        }
        for (&ka, &kb) in cont_a.iter().zip(&cont_b) {
            if dims_a[ka] != dims_b[kb] {
                return Err(err(format!(
                    "axis {ka} of a has size {} but axis {kb} of b has size {}",
                    dims_a[ka], dims_b[kb]
                )));
            }
        }
        // Sizes are checked before any product is formed, so none overflows, and the
        // products summed (one entry each) stay few enough to store and to generate code for.
        let size = |dims: &[usize]| {
            dims.iter()
                .try_fold(1usize, |p, &d| p.checked_mul(d).filter(|&p| p <= MAX_DIM))
        };
        let (Some(size_a), Some(size_b)) = (size(&dims_a), size(&dims_b)) else {
            return Err(err(format!(
                "shapes {dims_a:?} and {dims_b:?}: each tensor may have at most {MAX_DIM} entries"
            )));
        };
        let contracted: usize = cont_a.iter().map(|&k| dims_a[k]).product();
        let products = (size_a / contracted).saturating_mul(size_b);
        if products > MAX_TERMS {
            return Err(err(format!(
                "contracting shapes {dims_a:?} and {dims_b:?} sums {products} products; at most {MAX_TERMS} are supported"
            )));
        }
        let (ka, kb) = (kept(dims_a.len(), &cont_a), kept(dims_b.len(), &cont_b));
        let rank = ka.len() + kb.len();
        let perm = if perm.is_empty() {
            (0..rank).collect()
        } else {
            perm
        };
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        if sorted != (0..rank).collect::<Vec<_>>() {
            return Err(err(format!(
                "the permutation {perm:?} must order the {rank} axes of the result"
            )));
        }
        let mut td = TensorDot {
            dims_a,
            dims_b,
            cont_a,
            cont_b,
            perm,
            terms: Vec::new(),
        };
        td.terms = td.enumerate_terms(&ka, &kb);
        Ok(td)
    }

    fn enumerate_terms(&self, ka: &[usize], kb: &[usize]) -> Vec<(u32, u32, u32)> {
        let (sa, sb) = (strides(&self.dims_a), strides(&self.dims_b));
        // Unpermuted result axes: (stride in a, stride in b, size).
        let pre: Vec<(usize, usize, usize)> = ka
            .iter()
            .map(|&k| (sa[k], 0, self.dims_a[k]))
            .chain(kb.iter().map(|&k| (0, sb[k], self.dims_b[k])))
            .collect();
        let out_dims: Vec<usize> = inverse(&self.perm).iter().map(|&r| pre[r].2).collect();
        let so = strides(&out_dims);
        let cont: Vec<(usize, usize, usize)> = self
            .cont_a
            .iter()
            .zip(&self.cont_b)
            .map(|(&a, &b)| (sa[a], sb[b], self.dims_a[a]))
            .collect();
        let mut terms = Vec::new();
        let mut idx = vec![0usize; pre.len()];
        loop {
            let (mut o, mut ia, mut ib) = (0, 0, 0);
            for (r, &i) in idx.iter().enumerate() {
                o += i * so[self.perm[r]];
                ia += i * pre[r].0;
                ib += i * pre[r].1;
            }
            let mut c = vec![0usize; cont.len()];
            loop {
                let (mut ja, mut jb) = (ia, ib);
                for (t, &i) in c.iter().enumerate() {
                    ja += i * cont[t].0;
                    jb += i * cont[t].1;
                }
                terms.push((o as u32, ja as u32, jb as u32));
                if !odometer(&mut c, cont.iter().map(|x| x.2)) {
                    break;
                }
            }
            if !odometer(&mut idx, pre.iter().map(|x| x.2)) {
                break;
            }
        }
        terms
    }

    /// Dimension of `a` (product of its shape).
    pub fn dim_a(&self) -> usize {
        self.dims_a.iter().product()
    }

    /// Dimension of `b`.
    pub fn dim_b(&self) -> usize {
        self.dims_b.iter().product()
    }

    /// Shape of the result (after the permutation).
    pub fn out_dims(&self) -> Vec<usize> {
        let (ka, kb) = self.kept_axes();
        let pre: Vec<usize> = ka
            .iter()
            .map(|&k| self.dims_a[k])
            .chain(kb.iter().map(|&k| self.dims_b[k]))
            .collect();
        inverse(&self.perm).iter().map(|&r| pre[r]).collect()
    }

    /// Dimension of the result.
    pub fn out_dim(&self) -> usize {
        self.out_dims().iter().product()
    }

    /// The products summed: `out[o] += a[i] * b[j]` for each `(o, i, j)`.
    pub fn terms(&self) -> &[(u32, u32, u32)] {
        &self.terms
    }

    fn kept_axes(&self) -> (Vec<usize>, Vec<usize>) {
        (
            kept(self.dims_a.len(), &self.cont_a),
            kept(self.dims_b.len(), &self.cont_b),
        )
    }

    /// The gradient with respect to `a`: `TensorDot(g, b, <this>)` has `a`'s shape.
    pub fn grad_a(&self) -> Result<TensorDot> {
        self.grad(true)
    }

    /// The gradient with respect to `b`: `TensorDot(g, a, <this>)` has `b`'s shape.
    pub fn grad_b(&self) -> Result<TensorDot> {
        self.grad(false)
    }

    fn grad(&self, wrt_a: bool) -> Result<TensorDot> {
        let (ka, kb) = self.kept_axes();
        let a = Side {
            dims: &self.dims_a,
            cont: &self.cont_a,
            kept: &ka,
            offset: 0,
        };
        let b = Side {
            dims: &self.dims_b,
            cont: &self.cont_b,
            kept: &kb,
            offset: ka.len(),
        };
        if wrt_a {
            self.adjoint(&a, &b)
        } else {
            self.adjoint(&b, &a)
        }
    }

    /// The gradient with respect to operand `me`: `g` contracted with `other` over the
    /// result axes that came from `other`, then permuted into `me`'s axis order.
    fn adjoint(&self, me: &Side<'_>, other: &Side<'_>) -> Result<TensorDot> {
        // Position in the result of each natural axis.
        let inv = &self.perm;
        let out = self.out_dims();
        let cont_g: Vec<usize> = (0..other.kept.len())
            .map(|s| inv[other.offset + s])
            .collect();
        let g_kept = kept(out.len(), &cont_g);
        let mut sorted_other = other.cont.to_vec();
        sorted_other.sort_unstable();
        let rank = |v: &[usize], x: usize| v.iter().position(|&k| k == x).unwrap_or(0);
        // For each axis of `me`, the natural axis of the adjoint's result that holds it.
        let take: Vec<usize> = (0..me.dims.len())
            .map(|axis| match me.kept.iter().position(|&k| k == axis) {
                // A kept axis: where g holds it, among g's kept axes.
                Some(m) => rank(&g_kept, inv[me.offset + m]),
                // A contracted axis: its partner in `other`, after g's kept axes.
                None => {
                    let t = rank(me.cont, axis);
                    g_kept.len() + rank(&sorted_other, other.cont[t])
                }
            })
            .collect();
        let perm = inverse(&take);
        TensorDot::new(out, other.dims.to_vec(), cont_g, other.kept.to_vec(), perm)
    }
}

/// One operand of a `TensorDot`: its shape, contracted and kept axes, and where its
/// kept axes start among the unpermuted result's axes.
struct Side<'a> {
    dims: &'a [usize],
    cont: &'a [usize],
    kept: &'a [usize],
    offset: usize,
}

/// Advances a multi-index over `sizes` (last axis fastest); false after the last one.
fn odometer(
    idx: &mut [usize],
    sizes: impl DoubleEndedIterator<Item = usize> + ExactSizeIterator,
) -> bool {
    let sizes: Vec<usize> = sizes.collect();
    for k in (0..idx.len()).rev() {
        idx[k] += 1;
        if idx[k] < sizes[k] {
            return true;
        }
        idx[k] = 0;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(td: &TensorDot, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; td.out_dim()];
        for &(o, i, j) in td.terms() {
            out[o as usize] += a[i as usize] * b[j as usize];
        }
        out
    }

    #[test]
    fn matrix_products_and_permutations() {
        // (2x3) . (3x2) = 2x2, then transposed.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
        let td = TensorDot::new(vec![2, 3], vec![3, 2], vec![1], vec![0], vec![]).unwrap();
        assert_eq!(apply(&td, &a, &b), vec![58.0, 64.0, 139.0, 154.0]);
        let tt = TensorDot::new(vec![2, 3], vec![3, 2], vec![1], vec![0], vec![1, 0]).unwrap();
        assert_eq!(apply(&tt, &a, &b), vec![58.0, 139.0, 64.0, 154.0]);
        // Outer product (nothing contracted), full contraction (scalar).
        let outer = TensorDot::new(vec![2], vec![3], vec![], vec![], vec![]).unwrap();
        assert_eq!(
            apply(&outer, &[1.0, 2.0], &[1.0, 2.0, 3.0]),
            vec![1.0, 2.0, 3.0, 2.0, 4.0, 6.0]
        );
        let full = TensorDot::new(vec![2, 3], vec![3, 2], vec![0, 1], vec![1, 0], vec![]).unwrap();
        assert_eq!(full.out_dim(), 1);
        assert_eq!(
            apply(&full, &a, &b),
            vec![1.0 * 7.0 + 2.0 * 9.0 + 3.0 * 11.0 + 4.0 * 8.0 + 5.0 * 10.0 + 6.0 * 12.0]
        );
    }

    /// keopscore's reading of `permute` (checked against keopscore 2.3): natural axis
    /// `r` goes to position `perm[r]`.
    #[test]
    fn permute_moves_natural_axes_as_keopscore() {
        // a: [2, 3], b: [4], nothing contracted: natural axes (a0, a1, b0) of sizes
        // (2, 3, 4); [2, 0, 1] sends a0 last, a1 first, b0 second: shape [3, 4, 2].
        let td = TensorDot::new(vec![2, 3], vec![4], vec![], vec![], vec![2, 0, 1]).unwrap();
        assert_eq!(td.out_dims(), vec![3, 4, 2]);
        let a: Vec<f64> = (0..6).map(|k| k as f64).collect();
        let b: Vec<f64> = (0..4).map(|k| 10.0f64.powi(k)).collect();
        let out = apply(&td, &a, &b);
        for (i0, i1, j) in
            (0..2).flat_map(|i0| (0..3).flat_map(move |i1| (0..4).map(move |j| (i0, i1, j))))
        {
            assert_eq!(out[(i1 * 4 + j) * 2 + i0], a[i0 * 3 + i1] * b[j]);
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(TensorDot::new(vec![2, 3], vec![2], vec![1], vec![0], vec![]).is_err());
        assert!(TensorDot::new(vec![2, 3], vec![3], vec![1, 1], vec![0, 0], vec![]).is_err());
        assert!(TensorDot::new(vec![2, 3], vec![3], vec![1], vec![0], vec![1]).is_err());
        assert!(TensorDot::new(vec![2], vec![3], vec![5], vec![0], vec![]).is_err());
    }

    /// `<g, TD(a, b)> = <grad_a(g, b), a> = <grad_b(g, a), b>` for random data.
    #[test]
    fn gradients_are_adjoint() {
        let cases = [
            (vec![2, 3, 4], vec![4, 3, 5], vec![1, 2], vec![1, 0], vec![]),
            (vec![2, 3, 4], vec![4, 5], vec![2], vec![0], vec![2, 0, 1]),
            (vec![3, 2], vec![2, 3], vec![], vec![], vec![3, 1, 0, 2]),
            (vec![2, 3], vec![3, 2], vec![0, 1], vec![1, 0], vec![]),
        ];
        let mut seed = 1u64;
        let mut rnd = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                })
                .collect()
        };
        for (da, db, ca, cb, p) in cases {
            let td = TensorDot::new(da, db, ca, cb, p).unwrap();
            let (a, b, g) = (rnd(td.dim_a()), rnd(td.dim_b()), rnd(td.out_dim()));
            let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
            let lhs = dot(&g, &apply(&td, &a, &b));
            let ga = td.grad_a().unwrap();
            assert_eq!(ga.dims_a, td.out_dims());
            assert_eq!(ga.out_dim(), td.dim_a());
            assert!((dot(&apply(&ga, &g, &b), &a) - lhs).abs() < 1e-12, "{td:?}");
            let gb = td.grad_b().unwrap();
            assert_eq!(gb.out_dim(), td.dim_b());
            assert!((dot(&apply(&gb, &g, &a), &b) - lhs).abs() < 1e-12, "{td:?}");
        }
    }
}
