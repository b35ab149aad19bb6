//! Gradients of reductions: for a [`Genred`] and one of its arguments, the computation
//! of `d <output, G> / d argument` for an output gradient `G`, itself made of reductions
//! (so it runs on the same engines and can be differentiated again).
//!
//! With `O` the forward output, `L = log sum exp F` over the reduced axis and
//! `H(e) = Grad(F, v, e)`:
//!
//! | reduction | gradient with respect to `v` |
//! | --- | --- |
//! | `Sum` | `Sum H(G)` |
//! | `LogSumExp` (scalar `F`, output-side or parameter `v`) | `SumSoftMaxWeight(F, H(G))` |
//! | `LogSumExp` (otherwise) | `Sum H(G * Exp(F - O))` (weighted: `+ Grad(W, v, G * Exp(F - O))`) |
//! | `SumSoftMaxWeight(F, W)` (output-side or parameter `v`) | `SumSoftMaxWeight(F, H(<G, W - O>) + Grad(W, v, G))` |
//! | `SumSoftMaxWeight(F, W)` (reduced-side `v`) | `Sum Exp(F - L) (H(<G, W - O>) + Grad(W, v, G))` |
//! | `Min`, `Max`, `KMin` (and with `Arg`) | `H(G)` at the selected pairs only |
//! | `ArgMin`, `ArgMax`, `ArgKMin` | zero |
//!
//! A variable indexed like the output rows gets a reduction over the same axis, one
//! indexed by the reduced axis a reduction over the other axis, and a parameter the same
//! reduction summed over the output rows. Batch dimensions that an argument broadcasts
//! over are summed, so the gradient has the argument's shape.

use crate::error::{KeopsError, Result};
use crate::formula::diff::grad;
use crate::formula::eval::PointEvaluator;
use crate::formula::{Cat, Formula};
use crate::plan::{Arg, Array, Element, Genred, Options, Problem};
use crate::reduction::Reduction;

/// An input of a gradient reduction beyond the forward arguments, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extra {
    /// The output gradient `G` (`Vi` for an `axis = 1` reduction, `Vj` otherwise).
    OutputGrad,
    /// The forward output values `O`.
    Output,
    /// `log sum exp F` over the reduced axis.
    LogSumExp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Side {
    /// Indexed like the output rows.
    Out,
    /// Indexed by the reduced axis.
    Reduced,
    /// A parameter.
    Param,
}

#[derive(Clone, Debug)]
enum Method {
    /// One reduction over the forward arguments followed by the extras.
    Reduce { genred: Genred, extras: Vec<Extra> },
    /// `h` (a formula in the forward variables and `e`, a variable of `F`'s dimension)
    /// evaluated at the pairs that `select` picks, with `e = G_s * unit(s mod D)`.
    Selected {
        h: Formula,
        e: Formula,
        select: Genred,
    },
    /// Arg-reductions: piecewise constant outputs.
    Zero,
}

/// The gradient of a reduction with respect to one argument; see the module docs.
///
/// ```
/// use keops::{Genred, Reduction, Arg};
/// let g = Genred::new("Exp(-SqDist(x,y)) * b", &["x = Vi(0,1)", "y = Vj(1,1)", "b = Vj(2,1)"],
///                     Reduction::Sum, 1)?;
/// let dx = g.grad(0)?; // with respect to x
/// let (x, y, b, e) = ([0.5f64], [0.0f64], [1.0f64], [1.0f64]);
/// let args = [Arg::new(&x, &[1, 1]), Arg::new(&y, &[1, 1]), Arg::new(&b, &[1, 1])];
/// let out = dx.call(&args, &Arg::new(&e, &[1, 1]))?;
/// assert!((out.data[0] - (-2.0 * 0.5 * (-0.25f64).exp())).abs() < 1e-15);
/// # Ok::<(), keops::KeopsError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Gradient {
    forward: Genred,
    wrt: usize,
    side: Side,
    method: Method,
}

impl Genred {
    /// The gradient of this reduction with respect to argument `wrt`, as a new plan:
    /// call it with the forward arguments and the output gradient.
    pub fn grad(&self, wrt: usize) -> Result<Gradient> {
        Gradient::new(self, wrt)
    }
}

impl Gradient {
    fn new(fwd: &Genred, wrt: usize) -> Result<Gradient> {
        let n = fwd.args().len();
        let decl = fwd.arg_decl(wrt)?;
        let v = Formula::var(decl.cat, wrt, decl.dim)?;
        let axis = fwd.axis();
        let (out_cat, red_cat) = (fwd.out_cat(), fwd.red_cat());
        let side = match decl.cat {
            c if c == out_cat => Side::Out,
            c if c == red_cat => Side::Reduced,
            _ => Side::Param,
        };
        let f = fwd.formula().clone();
        let declared = fwd.declared()?;
        let extra_var = |k: usize, dim: usize| Formula::var(out_cat, n + k, dim);
        let spec = *fwd.spec();
        let red_axis = if side == Side::Reduced {
            1 - axis
        } else {
            axis
        };
        let reduce = |h: Formula, weight: Option<Formula>, kind: Reduction, extras: Vec<Extra>| {
            let mut all = declared.clone();
            for (k, x) in extras.iter().enumerate() {
                let dim = match x {
                    Extra::OutputGrad | Extra::Output => spec.output_dims().0,
                    Extra::LogSumExp => 1,
                };
                all.push(extra_var(k, dim)?);
            }
            let genred = Genred::from_parts(h, weight, kind, red_axis, &all)?;
            Ok::<Method, KeopsError>(Method::Reduce { genred, extras })
        };
        let d = f.dim;
        let method = match (spec.kind, fwd.weight()) {
            (Reduction::Sum, _) => {
                let g = extra_var(0, d)?;
                reduce(
                    grad(&f, &v, &g)?,
                    None,
                    Reduction::Sum,
                    vec![Extra::OutputGrad],
                )?
            }
            (Reduction::LogSumExp, None) if d == 1 && side != Side::Reduced => {
                let g = extra_var(0, 1)?;
                let h = grad(&f, &v, &g)?;
                reduce(
                    f.clone(),
                    Some(h),
                    Reduction::SumSoftMaxWeight,
                    vec![Extra::OutputGrad],
                )?
            }
            (Reduction::LogSumExp, None) => {
                let (g, o) = (extra_var(0, d)?, extra_var(1, d)?);
                let e = g.mul(&f.sub(&o)?.exp())?;
                let extras = vec![Extra::OutputGrad, Extra::Output];
                reduce(grad(&f, &v, &e)?, None, Reduction::Sum, extras)?
            }
            (Reduction::LogSumExp, Some(w)) => {
                let (g, o) = (extra_var(0, w.dim)?, extra_var(1, w.dim)?);
                let ge = g.mul(&f.sub(&o)?.exp())?;
                let h = grad(&f, &v, &ge.mul(w)?.sum())?.add(&grad(w, &v, &ge)?)?;
                let extras = vec![Extra::OutputGrad, Extra::Output];
                reduce(h, None, Reduction::Sum, extras)?
            }
            (Reduction::SumSoftMaxWeight, Some(w)) => {
                let (g, o) = (extra_var(0, w.dim)?, extra_var(1, w.dim)?);
                let inner = grad(&f, &v, &g.scalprod(&w.sub(&o)?)?)?.add(&grad(w, &v, &g)?)?;
                if side == Side::Reduced {
                    let l = extra_var(2, 1)?;
                    let h = f.sub(&l)?.exp().mul(&inner)?;
                    let extras = vec![Extra::OutputGrad, Extra::Output, Extra::LogSumExp];
                    reduce(h, None, Reduction::Sum, extras)?
                } else {
                    let extras = vec![Extra::OutputGrad, Extra::Output];
                    reduce(f.clone(), Some(inner), Reduction::SumSoftMaxWeight, extras)?
                }
            }
            (Reduction::ArgMin | Reduction::ArgMax | Reduction::ArgKMin(_), _) => Method::Zero,
            (kind, _) => {
                let select_kind = match kind {
                    Reduction::Min | Reduction::MinArgMin => Reduction::MinArgMin,
                    Reduction::Max | Reduction::MaxArgMax => Reduction::MaxArgMax,
                    Reduction::KMin(k) | Reduction::KMinArgKMin(k) => Reduction::KMinArgKMin(k),
                    other => {
                        return Err(KeopsError::Reduction {
                            reduction: other.name().into(),
                            msg: "has no gradient rule".into(),
                        })
                    }
                };
                let e = extra_var(0, d)?;
                Method::Selected {
                    h: grad(&f, &v, &e)?,
                    e,
                    select: Genred::from_parts(f.clone(), None, select_kind, axis, &declared)?,
                }
            }
        };
        Ok(Gradient {
            forward: fwd.clone(),
            wrt,
            side,
            method,
        })
    }

    /// The gradient reduction and the extra inputs it takes after the forward arguments
    /// (`None` for the min/max family and the arg-reductions, computed otherwise). A
    /// parameter's gradient is this reduction's output summed over its rows.
    pub fn reduction(&self) -> Option<(&Genred, &[Extra])> {
        match &self.method {
            Method::Reduce { genred, extras } => Some((genred, extras)),
            _ => None,
        }
    }

    /// Computes the gradient with default options: `args` are the forward arguments,
    /// `output_grad` the gradient with respect to the forward output (of its shape).
    /// Returns an array of argument `wrt`'s shape.
    pub fn call<T: Element>(
        &self,
        args: &[Arg<'_, T>],
        output_grad: &Arg<'_, T>,
    ) -> Result<Array<T>> {
        self.call_with(args, output_grad, &Options::default())
    }

    /// As [`Gradient::call`], with options. Forward quantities the gradient needs (the
    /// output for `LogSumExp`/`SumSoftMaxWeight`, the selected indices for the min/max
    /// family) are recomputed here: one more reduction.
    pub fn call_with<T: Element>(
        &self,
        args: &[Arg<'_, T>],
        output_grad: &Arg<'_, T>,
        opts: &Options,
    ) -> Result<Array<T>> {
        let problem = Problem::new(&self.forward, args)?.with_ranges(opts.ranges.as_deref())?;
        let (shape_v, shape_i) = problem.output_shapes();
        let expected = if self.forward.spec().output_dims().0 > 0 {
            shape_v
        } else {
            shape_i
        };
        if output_grad.shape != expected || output_grad.data.len() != expected.iter().product() {
            return Err(KeopsError::Argument {
                index: args.len(),
                msg: format!(
                    "the output gradient must have the output's shape {expected:?}, got {:?} ({} values)",
                    output_grad.shape,
                    output_grad.data.len()
                ),
            });
        }
        // The output gradient as rows: [..batch, n, K*D] for the K-min family.
        let (n_out, _) = problem.sizes();
        let row_shape = |dim: usize| {
            let mut s = problem.layout.batch.clone();
            s.extend([n_out, dim]);
            s
        };
        let (dv, _) = self.forward.spec().output_dims();
        let target = &args[self.wrt].shape;
        match &self.method {
            Method::Zero => Ok(Array {
                data: vec![T::ZERO; target.iter().product()],
                shape: target.clone(),
            }),
            Method::Reduce { genred, extras } => {
                let mut owned: Vec<(Vec<T>, Vec<usize>)> = Vec::new();
                for x in extras {
                    match x {
                        Extra::OutputGrad => {}
                        Extra::Output => {
                            let o = self.forward.call_with(args, opts)?;
                            owned.push((values(o.values)?.data, row_shape(dv)));
                        }
                        Extra::LogSumExp => {
                            let lse = Genred::from_formula(
                                self.forward.formula().clone(),
                                None,
                                Reduction::LogSumExp,
                                self.forward.axis(),
                            )?;
                            let l = lse.call_with(args, opts)?;
                            owned.push((values(l.values)?.data, row_shape(1)));
                        }
                    }
                }
                let mut all: Vec<Arg<'_, T>> = args.to_vec();
                let mut owned_iter = owned.iter();
                for x in extras {
                    all.push(match x {
                        Extra::OutputGrad => Arg::new(output_grad.data, row_shape(dv)),
                        _ => {
                            let (d, s) = owned_iter.next().expect("one array per extra");
                            Arg::new(d, s)
                        }
                    });
                }
                let mut out = values(genred.call_with(&all, opts)?.values)?;
                if genred.spec().kind == Reduction::SumSoftMaxWeight && self.side != Side::Reduced {
                    // A soft-max average over no pair is 0/0; its gradient is 0.
                    let dim = genred.spec().output_dims().0;
                    for (row, empty) in problem.empty_rows().into_iter().enumerate() {
                        if empty {
                            out.data[row * dim..(row + 1) * dim].fill(T::ZERO);
                        }
                    }
                }
                let out = if self.side == Side::Param {
                    sum_rows(out)
                } else {
                    out
                };
                Ok(sum_to_shape(out, target))
            }
            Method::Selected { h, e, select } => {
                let sel = select.call_with(args, opts)?;
                let idx = sel.indices.ok_or_else(|| {
                    KeopsError::Arguments("internal error: selection without indices".into())
                })?;
                Ok(sum_to_shape(
                    self.at_selected(&problem, h, e, &idx.data, output_grad.data),
                    target,
                ))
            }
        }
    }

    /// Evaluates `h` at the selected pairs and accumulates into the argument's rows.
    fn at_selected<T: Element>(
        &self,
        problem: &Problem<'_, T>,
        h: &Formula,
        e: &Formula,
        idx: &[i64],
        g: &[T],
    ) -> Array<T> {
        let axis = self.forward.axis();
        let (n_out, _) = problem.sizes();
        let d = self.forward.formula().dim;
        let slots = self.forward.spec().output_dims().0;
        let decl = problem.genred.args()[self.wrt].expect("checked at construction");
        let dv = decl.dim;
        let rows = match self.side {
            Side::Out => n_out,
            Side::Reduced => problem.sizes().1,
            Side::Param => 1,
        };
        let nb = problem.batch_len();
        let mut acc = vec![0.0f64; nb * rows * dv];
        let ev = PointEvaluator::new(std::slice::from_ref(h));
        let e_index = e.as_var().map(|v| v.1).unwrap_or(usize::MAX);
        let decls = problem.genred.args();
        for b in 0..nb {
            for r in 0..n_out {
                for s in 0..slots {
                    let flat = (b * n_out + r) * slots + s;
                    let Ok(j) = usize::try_from(idx[flat]) else {
                        continue; // empty reduction: nothing selected
                    };
                    let (i_row, j_row) = if axis == 1 { (r, j) } else { (j, r) };
                    let mut ev_e = vec![0.0; d];
                    ev_e[s % d] = g[flat].to_f64();
                    let vals: Vec<Vec<f64>> = decls
                        .iter()
                        .enumerate()
                        .map(|(k, dk)| match dk {
                            Some(dk) => {
                                let off = problem.batch_offset(k, b)
                                    + match dk.cat {
                                        Cat::Vi => i_row * dk.dim,
                                        Cat::Vj => j_row * dk.dim,
                                        Cat::Pm => 0,
                                    };
                                problem.args[k].data[off..off + dk.dim]
                                    .iter()
                                    .map(|x| x.to_f64())
                                    .collect()
                            }
                            None => Vec::new(),
                        })
                        .collect();
                    let out = ev.eval(|_, k| if k == e_index { &ev_e } else { &vals[k] });
                    let row = match self.side {
                        Side::Out => r,
                        Side::Reduced => j,
                        Side::Param => 0,
                    };
                    let dst = &mut acc[(b * rows + row) * dv..(b * rows + row + 1) * dv];
                    dst.iter_mut().zip(&out).for_each(|(a, o)| *a += o);
                }
            }
        }
        let mut shape = problem.layout.batch.clone();
        if self.side != Side::Param {
            shape.push(rows);
        }
        shape.push(dv);
        Array {
            data: acc.into_iter().map(T::from_f64).collect(),
            shape,
        }
    }
}

fn values<T>(v: Option<Array<T>>) -> Result<Array<T>> {
    v.ok_or_else(|| KeopsError::Arguments("internal error: reduction without values".into()))
}

/// Sums an array `[..batch, n, d]` over `n`.
fn sum_rows<T: Element>(a: Array<T>) -> Array<T> {
    let k = a.shape.len();
    let (n, d) = (a.shape[k - 2], a.shape[k - 1]);
    let outer = a.data.len() / (n * d).max(1);
    let mut out = vec![0.0f64; outer * d];
    for (o, chunk) in a.data.chunks(n * d.max(1)).enumerate().take(outer) {
        for (r, x) in chunk.iter().enumerate() {
            out[o * d + r % d] += x.to_f64();
        }
    }
    let mut shape = a.shape[..k - 2].to_vec();
    shape.push(d);
    Array {
        data: out.into_iter().map(T::from_f64).collect(),
        shape,
    }
}

/// Sums `a` down to `target` (NumPy broadcasting in reverse: leading dimensions that
/// `target` lacks and dimensions where it has 1 are summed).
fn sum_to_shape<T: Element>(a: Array<T>, target: &[usize]) -> Array<T> {
    if a.shape == target {
        return a;
    }
    let (ra, rt) = (a.shape.len(), target.len());
    let mut out = vec![0.0f64; target.iter().product()];
    let mut coord = vec![0usize; ra];
    for x in &a.data {
        let mut flat = 0;
        for (t, &len) in target.iter().enumerate() {
            let c = (ra + t).checked_sub(rt).map(|k| coord[k]).unwrap_or(0);
            flat = flat * len + if len == 1 { 0 } else { c };
        }
        out[flat] += x.to_f64();
        for k in (0..ra).rev() {
            coord[k] += 1;
            if coord[k] < a.shape[k] {
                break;
            }
            coord[k] = 0;
        }
    }
    Array {
        data: out.into_iter().map(T::from_f64).collect(),
        shape: target.to_vec(),
    }
}
