//! `KernelSolve`: `(K + alpha I) a = b` by conjugate gradients, where `K a` is a `Sum`
//! reduction linear in one of its arguments (KeOps' `varinvalias`), e.g.
//! `Exp(-SqDist(x,y)) * a` with `a = Vj(2,1)`. When the formula scales the unknown by a
//! scalar kernel (`K_ij a_j`, the usual case), each column of `b` (and each batch entry)
//! is its own system, with its own step sizes and stopping test; a formula that mixes
//! the unknown's coordinates (`K_ij` a `d x d` block) is one system of `n d` unknowns
//! per batch entry. All systems share one reduction per iteration. Vectors are kept in
//! `f64` whatever the data type. [`Preconditioner::Nystrom`] cuts the
//! iterations of ill-conditioned systems; [`Preconditioner::NystromAuto`] chooses its
//! rank.
//!
//! ```
//! use keops::solve::{KernelSolve, SolveOptions};
//! use keops::Arg;
//! let s = KernelSolve::new("Exp(-SqDist(x,y)) * a", &["x = Vi(0,1)", "y = Vj(1,1)", "a = Vj(2,1)"], "a", 1)?;
//! let x = [0.0f64, 1.0, 2.0];
//! let b = [1.0f64, 2.0, 3.0];
//! let sol = s.call(&[Arg::new(&x, [3, 1]), Arg::new(&x, [3, 1]), Arg::new(&b, [3, 1])],
//!                  &SolveOptions { alpha: 0.1, ..SolveOptions::default() })?;
//! assert!(sol.converged && sol.iterations <= 3);
//! # Ok::<(), keops::KeopsError>(())
//! ```

mod nystrom;

use crate::error::{KeopsError, Result};
use crate::formula::parse::{parse_with, Aliases};
use crate::formula::{Binary, Formula, Op, Unary};
use crate::plan::{Arg, Array, Element, Genred, Options, Problem};
use crate::reduction::Reduction;
use nystrom::{Kernel, Nystrom};

/// A preconditioner for the conjugate gradients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preconditioner {
    /// Plain conjugate gradients (pykeops' solver).
    #[default]
    None,
    /// `P = L L^T + mu I` with `L` the rank-`rank` partial pivoted Cholesky factor
    /// of `K` (a Nyström approximation whose landmarks are picked greedily) and `mu`
    /// the ridge `alpha`, raised to `1e-9 trace(K)` if smaller. Building
    /// it costs `rank` reductions over one reduced row and `8 rank n` bytes per batch
    /// entry; each iteration then costs `4 rank n` more flops. It pays off when `K`'s
    /// spectrum decays fast compared to `alpha` (smooth kernels, small ridges), where
    /// plain CG needs many iterations. See `README.md` for measured iteration counts.
    Nystrom {
        /// The largest rank (the pivoting stops early once `K` is approximated to
        /// 1e-10 of its largest diagonal entry).
        rank: usize,
    },
    /// [`Preconditioner::Nystrom`] with the rank chosen for each batch entry as it is
    /// built (Python's default, `precond_rank="auto"`). Columns are added until one
    /// lowers the trace of `E = K - L L^T` by at most `mu / 10` (a lower bound of
    /// `E`'s largest eigenvalue: CG then converges in a few iterations), plus those
    /// that cost one product by `K` more (a smooth kernel reaches its numerical rank);
    /// until 16 columns in a row explained little more than their own diagonal
    /// entries (a nearly diagonal kernel, which CG handles alone); or until the build
    /// would cost more than `sqrt(trace(K) / mu) / 4` products (at least 10, at most
    /// 100; counted in pairs of `K` from the formula's sizes, so the rank does not
    /// depend on timings), or the factor more than 1 GiB. Measured at N = 10^4 and
    /// 2,000 (README), it is never slower than rank 100 beyond noise, and up to 40x
    /// faster with small ridges.
    NystromAuto,
}

/// Parameters of a solve, with pykeops' defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveOptions {
    /// The ridge `alpha >= 0` added to the diagonal.
    pub alpha: f64,
    /// Stopping test: a system stops when `|r|^2 < n eps^2` (root-mean-square residual
    /// below `eps`, as pykeops); the answer is then checked on its true residual.
    pub eps: f64,
    /// Iteration limit (`None`: `min(10 n, 10,000)`); reaching it is reported by
    /// [`Solution::converged`], not an error.
    pub max_iter: Option<usize>,
    /// The preconditioner (none by default, as pykeops).
    pub precond: Preconditioner,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            alpha: 1e-10,
            eps: 1e-6,
            max_iter: None,
            precond: Preconditioner::None,
        }
    }
}

/// How a solve is going, as reported to its progress callback (which stops the solve by
/// returning `false`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress {
    /// The Nyström preconditioner of a batch entry has gained a column (its build costs
    /// `O(n rank^2)` flops: minutes at a million rows and rank 1,000).
    Preconditioner {
        /// The batch entry.
        entry: usize,
        /// Its rank so far.
        rank: usize,
    },
    /// A conjugate-gradient iteration is done.
    Iteration {
        /// Iterations done.
        iteration: usize,
        /// The largest root-mean-square (recursive) residual `|r| / sqrt(n)` over the
        /// systems.
        residual: f64,
        /// Systems not yet converged.
        active: usize,
    },
    /// The answer's true residual `b - (K + alpha I) x` was computed (in f64), the
    /// recursive one having met the test.
    Check {
        /// Iterations done.
        iteration: usize,
        /// The largest true root-mean-square residual over the systems.
        residual: f64,
        /// Systems above the test that run again from it (refinement).
        refining: usize,
    },
}

/// The result of a solve.
#[derive(Clone, Debug, PartialEq)]
pub struct Solution<T> {
    /// The solution, of the output's shape (`b`'s, broadcast with the batch).
    pub x: Array<T>,
    /// Conjugate-gradient iterations done (one reduction each; each check of the true
    /// residual costs one more, usually one check per solve).
    pub iterations: usize,
    /// The largest root-mean-square residual over the systems at the end: the true
    /// residual `b - (K + alpha I) x` of `x` as returned, unless the progress callback
    /// stopped the solve (then the recursive one).
    pub residual: f64,
    /// Whether every system met the stopping test on its true residual
    /// `b - (K + alpha I) x` within the iteration limit.
    pub converged: bool,
    /// Whether every system met the test on its recursive residual but some did not
    /// on its true one: rounding in the data type (f32, typically) limits the
    /// accuracy, and no more iterations would help.
    pub precision_limited: bool,
    /// The rank of the Nyström preconditioner built (the largest over batch entries;
    /// 0 without one).
    pub precond_rank: usize,
}

/// A kernel linear system, checked once and solvable for many right-hand sides.
#[derive(Clone, Debug)]
pub struct KernelSolve {
    genred: Genred,
    var: usize,
    /// Whether `K` scales every coordinate of the unknown alike (`K_ij a_j` with a
    /// scalar `K_ij`): then each column is its own system.
    columnwise: bool,
}

impl KernelSolve {
    /// Parses `formula` with `aliases`; `var` names the unknown (an alias of a
    /// variable on the reduced side: `Vj` for `axis = 1`, `Vi` for `axis = 0`) in
    /// which the formula must be linear, with the formula's dimension.
    pub fn new<S: AsRef<str>>(
        formula: &str,
        aliases: &[S],
        var: &str,
        axis: usize,
    ) -> Result<KernelSolve> {
        let al = Aliases::parse(aliases)?;
        let v = parse_with(var, &al)?;
        let (_, index) = v.as_var().ok_or_else(|| KeopsError::Option {
            name: "varinvalias".into(),
            msg: format!("{var:?} is not a variable of the aliases"),
        })?;
        let genred = Genred::new(formula, aliases, Reduction::Sum, axis)?;
        Self::from_genred(genred, index)
    }

    /// From a `Sum` reduction and the position of the unknown among its arguments.
    pub fn from_genred(genred: Genred, var: usize) -> Result<KernelSolve> {
        let err = |msg: String| KeopsError::Option {
            name: "varinvalias".into(),
            msg,
        };
        if genred.spec().kind != Reduction::Sum {
            return Err(KeopsError::Reduction {
                reduction: genred.spec().kind.name().into(),
                msg: "KernelSolve needs a Sum reduction (K a = sum_j K_ij a_j)".into(),
            });
        }
        let decl = genred.arg_decl(var)?;
        let red = genred.red_cat();
        if decl.cat != red {
            return Err(err(format!(
                "the unknown (argument {var}) is a {} variable, but a reduction over axis {} sums over {} rows: it must be {}",
                decl.cat.name(),
                genred.axis(),
                red.name(),
                red.name()
            )));
        }
        if decl.dim != genred.formula().dim {
            return Err(err(format!(
                "the unknown (argument {var}) has dimension {} but the formula has dimension {}: K a must have a's shape",
                decl.dim,
                genred.formula().dim
            )));
        }
        let unknown = Formula::new(
            Op::Var {
                cat: decl.cat,
                index: var,
                dim: decl.dim,
            },
            vec![],
        )?;
        let columnwise = decl.dim == 1 || scales(genred.formula(), &unknown);
        Ok(KernelSolve {
            genred,
            var,
            columnwise,
        })
    }

    /// The reduction `K a`.
    pub fn genred(&self) -> &Genred {
        &self.genred
    }

    /// The position of the unknown among the arguments.
    pub fn var(&self) -> usize {
        self.var
    }

    /// Solves with default engine options; `args[var]` is the right-hand side `b`.
    pub fn call<T: Element>(
        &self,
        args: &[Arg<'_, T>],
        params: &SolveOptions,
    ) -> Result<Solution<T>> {
        self.call_with(args, params, &Options::default(), &mut |_| true)
    }

    /// Solves: `args[var]` is the right-hand side `b`; `progress` is called after each
    /// column of the preconditioner and each iteration, and stops the solve by
    /// returning `false` (the solution so far is returned, not converged: zero if the
    /// preconditioner was not built). `opts` (backend, ranges, ...) apply to every
    /// reduction.
    pub fn call_with<T: Element>(
        &self,
        args: &[Arg<'_, T>],
        params: &SolveOptions,
        opts: &Options,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<Solution<T>> {
        if !(params.alpha >= 0.0 && params.alpha.is_finite()) {
            return Err(KeopsError::Option {
                name: "alpha".into(),
                msg: format!("must be a finite number >= 0, got {}", params.alpha),
            });
        }
        if !(params.eps > 0.0 && params.eps.is_finite()) {
            return Err(KeopsError::Option {
                name: "eps".into(),
                msg: format!("must be a finite number > 0, got {}", params.eps),
            });
        }
        if params.precond == (Preconditioner::Nystrom { rank: 0 }) {
            return Err(KeopsError::Option {
                name: "precond_rank".into(),
                msg: "the Nyström preconditioner's rank must be at least 1".into(),
            });
        }
        let problem = Problem::new(&self.genred, args)?.with_ranges(opts.ranges.as_deref())?;
        let (n_out, n_red) = problem.sizes();
        if n_out != n_red {
            return Err(KeopsError::Argument {
                index: self.var,
                msg: format!(
                    "KernelSolve needs a square system: K has {n_out} output rows but the unknown has {n_red} rows"
                ),
            });
        }
        let shape = problem.output_shapes().0;
        let (n, d) = (n_out, self.genred.formula().dim);
        let nb = problem.batch_len();
        let layout = problem.layout.clone();
        // b broadcast to the output's shape, in f64.
        let b: Vec<f64> = {
            let a = &args[self.var];
            let mut out = Vec::with_capacity(nb * n * d);
            for e in 0..nb {
                let off = problem.batch_offset(self.var, e);
                out.extend(a.data[off..off + n * d].iter().map(|v| v.to_f64()));
            }
            out
        };
        drop(problem);
        if let Some(t) = b.iter().position(|v| !v.is_finite()) {
            return Err(KeopsError::Argument {
                index: self.var,
                msg: format!(
                    "the right-hand side holds a non-finite value ({}, at flat index {t})",
                    b[t]
                ),
            });
        }
        let max_iter = params.max_iter.unwrap_or((10 * n).min(10_000));
        // A system: one column of a batch entry, or a whole batch entry (`width = d`
        // unknowns per row) when K mixes the columns.
        let width = if self.columnwise { 1 } else { d };
        let (len, per_entry) = (n * width, d / width);
        let systems = nb * per_entry;
        let sys = |t: usize| (t / (n * d)) * per_entry + (t % d) / width;
        let dot = |u: &[f64], v: &[f64]| -> Vec<f64> {
            let mut s = vec![0.0; systems];
            for (t, (x, y)) in u.iter().zip(v).enumerate() {
                s[sys(t)] += x * y;
            }
            s
        };
        // The largest root-mean-square residual over the systems, from their |r|^2.
        let rms = |rr: &[f64]| {
            rr.iter()
                .fold(0.0f64, |m, &v| m.max((v / len.max(1) as f64).sqrt()))
        };
        let pre: Vec<Nystrom> = match params.precond {
            Preconditioner::None => Vec::new(),
            Preconditioner::Nystrom { .. } | Preconditioner::NystromAuto => {
                let kernel = Kernel {
                    // Pairs of K in a product: the cost unit of NystromAuto's budget.
                    pairs: opts.ranges.as_ref().map_or(n * n, |r| {
                        r.for_axis(self.genred.axis()).pairs() / nb.max(1)
                    }),
                    genred: &self.genred,
                    args,
                    layout,
                    var: self.var,
                    n,
                    d,
                    width,
                    opts: Options {
                        ranges: None,
                        ..opts.clone()
                    },
                    ranges: opts.ranges.clone(),
                };
                let mut built = Vec::with_capacity(nb);
                for e in 0..nb {
                    match Nystrom::build(&kernel, e, params.precond, params.alpha, progress)? {
                        Some(p) => built.push(p),
                        // Stopped by the callback: nothing solved yet.
                        None => {
                            return Ok(Solution {
                                x: Array {
                                    data: vec![T::ZERO; b.len()],
                                    shape,
                                },
                                iterations: 0,
                                residual: rms(&dot(&b, &b)),
                                converged: false,
                                precision_limited: false,
                                precond_rank: 0,
                            })
                        }
                    }
                }
                built
            }
        };
        // z = M r: the preconditioner applied to each batch entry's systems (`None`
        // without one: then z is r itself, not a copy).
        let precondition = |r: &[f64]| -> Option<Vec<f64>> {
            if pre.is_empty() {
                return None;
            }
            let mut z = r.to_vec();
            for (e, p) in pre.iter().enumerate() {
                p.apply(&mut z[e * n * d..(e + 1) * n * d], per_entry);
            }
            Some(z)
        };
        let tol = len as f64 * params.eps * params.eps;
        // (K + alpha I) v in f64, v rounded to the data type: the reduction with v in
        // the unknown's place.
        let apply = |v: &[f64]| -> Result<Vec<f64>> {
            let vt: Vec<T> = v.iter().map(|&t| T::from_f64(t)).collect();
            let mut a2: Vec<Arg<'_, T>> = args.to_vec();
            a2[self.var] = Arg::new(&vt, shape.clone());
            Ok(sum_values(&self.genred, &a2, opts)?
                .into_iter()
                .zip(&vt)
                .map(|(k, t)| k + params.alpha * t.to_f64())
                .collect())
        };
        let mut x = vec![0.0f64; b.len()];
        let mut r = b.clone();
        let mut rr = dot(&r, &r);
        let mut active: Vec<bool> = rr.iter().map(|&v| v.is_nan() || v >= tol).collect();
        let mut iterations = 0;
        // Each system's stopping test on its recursive |r|^2: tol, lower in refinement.
        let mut target = vec![tol; systems];
        // Each system's best answer so far: x, r and |r|^2 at its best check (the
        // |r|^2 of the last check too, since a worse run is undone).
        #[allow(clippy::type_complexity)]
        let mut best: Option<(Vec<f64>, Vec<f64>, Vec<f64>)> = None;
        let mut limited = false;
        let mut stopped = false;
        'refine: loop {
            let z0 = precondition(&r);
            let mut rz = dot(&r, z0.as_deref().unwrap_or(&r));
            let mut p: Vec<f64> = z0
                .as_deref()
                .unwrap_or(&r)
                .iter()
                .enumerate()
                .map(|(t, &v)| if active[sys(t)] { v } else { 0.0 })
                .collect();
            while active.iter().any(|&a| a) && iterations < max_iter {
                let mp = apply(&p)?;
                let pmp = dot(&p, &mp);
                iterations += 1;
                for (s, &v) in pmp.iter().enumerate().filter(|&(s, _)| active[s]) {
                    if v.is_nan() {
                        return Err(KeopsError::Arguments(format!(
                            "KernelSolve: p^T (K + alpha I) p is NaN at iteration {iterations} (system {s}): the kernel's arguments hold NaN or infinite values, or its formula overflows"
                        )));
                    }
                    if v <= 0.0 {
                        // Named after alpha: raising it is the usual cure.
                        return Err(KeopsError::Option {
                            name: "alpha".into(),
                            msg: format!(
                                "K + alpha I (alpha = {:?}) is not positive definite: p^T (K + alpha I) p = {v:e} at iteration {iterations} (system {s}); KernelSolve needs a symmetric positive (semi-)definite kernel, alpha > 0 for a semi-definite one",
                                params.alpha
                            ),
                        });
                    }
                }
                let step: Vec<f64> = (0..systems)
                    .map(|s| if active[s] { rz[s] / pmp[s] } else { 0.0 })
                    .collect();
                for t in 0..x.len() {
                    let a = step[sys(t)];
                    x[t] += a * p[t];
                    r[t] -= a * mp[t];
                }
                rr = dot(&r, &r);
                for s in 0..systems {
                    if active[s] && rr[s] < target[s] {
                        active[s] = false;
                    }
                }
                let zr = precondition(&r);
                let z = zr.as_deref().unwrap_or(&r);
                let rz_new = dot(&r, z);
                for t in 0..p.len() {
                    let s = sys(t);
                    p[t] = if active[s] {
                        z[t] + rz_new[s] / rz[s] * p[t]
                    } else {
                        0.0
                    };
                }
                rz = rz_new;
                let go_on = progress(Progress::Iteration {
                    iteration: iterations,
                    residual: rms(&rr),
                    active: active.iter().filter(|&&a| a).count(),
                });
                if !go_on {
                    stopped = true;
                    break 'refine;
                }
            }
            if iterations == 0 {
                break; // x = 0 and r = b exactly
            }
            // Iterative refinement. The recursive residual drifts from the true one by
            // the rounding of each K p, and x is returned rounded to the data type: in
            // f32 the true residual sits up to orders of magnitude above the recursive
            // one. So x as returned is checked on its true residual, computed in f64
            // (one more reduction), and a system above the test runs again from it:
            // the K p of that run are of the size of the residual, not of x, so their
            // rounding errs far less. This goes on while each run at least halves the
            // system's true residual; past that, x's own rounding sets the floor.
            for v in x.iter_mut() {
                *v = T::from_f64(*v).to_f64();
            }
            r = self.true_residual(args, (&x, &shape), &b, params.alpha, opts)?;
            rr = dot(&r, &r);
            // Whether the run since the last check at least halved each system's true
            // residual (the first run: yes). A run that ends worse than the system's
            // best check (rounding noise, at the floor) is undone for that system: the
            // answer is its best one.
            let halved: Vec<bool> = match &mut best {
                None => {
                    best = Some((x.clone(), r.clone(), rr.clone()));
                    vec![true; systems]
                }
                Some((bx, br, brr)) => {
                    let halved = (0..systems).map(|s| rr[s] < 0.25 * brr[s]).collect();
                    let worse: Vec<bool> = (0..systems)
                        .map(|s| rr[s] >= brr[s] || rr[s].is_nan())
                        .collect();
                    for t in 0..x.len() {
                        if worse[sys(t)] {
                            (x[t], r[t]) = (bx[t], br[t]);
                        } else {
                            (bx[t], br[t]) = (x[t], r[t]);
                        }
                    }
                    for s in 0..systems {
                        if worse[s] {
                            rr[s] = brr[s];
                        } else {
                            brr[s] = rr[s];
                        }
                    }
                    halved
                }
            };
            let mut again = false;
            for s in 0..systems {
                let (met, halved) = (rr[s] < tol, halved[s]);
                active[s] = !met && halved && iterations < max_iter;
                // A refinement run aims at a quarter of the residual it starts from
                // (below eps if that is lower): one that stopped at eps would barely
                // move an answer just above it.
                target[s] = tol.min(rr[s] / 16.0);
                again |= active[s];
                limited |= !met && !halved;
            }
            let go_on = progress(Progress::Check {
                iteration: iterations,
                residual: rms(&rr),
                refining: active.iter().filter(|&&a| a).count(),
            });
            if !again {
                break;
            }
            if !go_on {
                stopped = true;
                break;
            }
        }
        // Stopped by the callback: unchecked, so not converged.
        let converged = !stopped && rr.iter().all(|&v| v < tol) && !active.iter().any(|&a| a);
        Ok(Solution {
            x: Array {
                data: x.into_iter().map(T::from_f64).collect(),
                shape,
            },
            iterations,
            residual: rms(&rr),
            converged,
            precision_limited: limited && !converged,
            precond_rank: pre.iter().map(|p| p.rank).max().unwrap_or(0),
        })
    }

    /// `b - (K + alpha I) x` in f64, whatever the data type (in f32, `K x` errs by
    /// about `1e-7 |K| |x|`, on an ill-conditioned system more than the residual).
    fn true_residual<T: Element>(
        &self,
        args: &[Arg<'_, T>],
        (x, shape): (&[f64], &[usize]),
        b: &[f64],
        alpha: f64,
        opts: &Options,
    ) -> Result<Vec<f64>> {
        let wide: Vec<_> = args.iter().map(|a| T::widen(a.data)).collect();
        let mut a64: Vec<Arg<'_, f64>> = wide
            .iter()
            .zip(args)
            .map(|(w, a)| Arg::new(w, &a.shape))
            .collect();
        a64[self.var] = Arg::new(x, shape);
        let kx = sum_values(&self.genred, &a64, opts)?;
        Ok((0..b.len()).map(|t| b[t] - kx[t] - alpha * x[t]).collect())
    }
}

/// The values of the `Sum` reduction `genred` on `args`, in `f64`.
fn sum_values<T: Element>(
    genred: &Genred,
    args: &[Arg<'_, T>],
    opts: &Options,
) -> Result<Vec<f64>> {
    let out = genred
        .call_with(args, opts)?
        .values
        .ok_or_else(|| KeopsError::Arguments("internal error: a Sum without values".into()))?;
    Ok(out.data.iter().map(|v| v.to_f64()).collect())
}

/// Whether `f` is `s a` for scalars `s` free of `a` (sums, differences and negations of
/// such terms included): then `K` acts on each coordinate of `a` alike.
fn scales(f: &Formula, a: &Formula) -> bool {
    if f == a {
        return true;
    }
    let free = |g: &Formula| g.dim == 1 && !g.variables().contains(a);
    match (&f.op, f.args.as_slice()) {
        (Op::Binary(Binary::Add | Binary::Subtract), [u, v]) => scales(u, a) && scales(v, a),
        (Op::Binary(Binary::Mult), [u, v]) => {
            (free(u) && scales(v, a)) || (free(v) && scales(u, a))
        }
        (Op::Binary(Binary::Divide), [u, v]) => free(v) && scales(u, a),
        (Op::Unary(Unary::Minus), [u]) => scales(u, a),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `formula` solved for `a = Vj(2,d)`, with `x = Vi(0,1)` and `y = Vj(1,1)`.
    fn on_a_line(formula: &str, d: usize) -> KernelSolve {
        let a = format!("a = Vj(2,{d})");
        KernelSolve::new(formula, &["x = Vi(0,1)", "y = Vj(1,1)", a.as_str()], "a", 1).unwrap()
    }

    /// Dense (K + alpha I) for the Gaussian kernel on 1-D points.
    fn dense(x: &[f64], alpha: f64) -> Vec<Vec<f64>> {
        x.iter()
            .enumerate()
            .map(|(i, &a)| {
                x.iter()
                    .enumerate()
                    .map(|(j, &b)| (-(a - b) * (a - b)).exp() + if i == j { alpha } else { 0.0 })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn solves_several_right_hand_sides_independently() {
        let s = on_a_line("Exp(-SqDist(x,y)) * a", 2);
        let x: Vec<f64> = (0..40).map(|k| (k as f64 * 0.7).sin() * 3.0).collect();
        // Column 1 is 1e4 times column 0 (not more: its residual must reach 1e-10
        // within f64's rounding): each must meet its own test.
        let b: Vec<f64> = (0..80)
            .map(|t| ((t / 2) as f64 * 0.3).cos() * if t % 2 == 1 { 1e4 } else { 1.0 })
            .collect();
        let sol = s
            .call(
                &[
                    Arg::new(&x, [40, 1]),
                    Arg::new(&x, [40, 1]),
                    Arg::new(&b, [40, 2]),
                ],
                &SolveOptions {
                    alpha: 0.5,
                    eps: 1e-10,
                    ..SolveOptions::default()
                },
            )
            .unwrap();
        assert!(sol.converged, "{sol:?}");
        let k = dense(&x, 0.5);
        for c in 0..2 {
            for i in 0..40 {
                let kx: f64 = (0..40).map(|j| k[i][j] * sol.x.data[2 * j + c]).sum();
                let scale = if c == 1 { 1e4 } else { 1.0 };
                assert!(
                    (kx - b[2 * i + c]).abs() < 1e-8 * scale,
                    "{c} {i}: {kx} vs {}",
                    b[2 * i + c]
                );
            }
        }
    }

    #[test]
    fn reports_non_convergence_and_bad_systems() {
        let s = on_a_line("Exp(-SqDist(x,y)) * a", 1);
        let x: Vec<f64> = (0..50).map(|k| k as f64 * 0.05).collect();
        let b = vec![1.0f64; 50];
        let args = [
            Arg::new(&x, [50, 1]),
            Arg::new(&x, [50, 1]),
            Arg::new(&b, [50, 1]),
        ];
        let sol = s
            .call(
                &args,
                &SolveOptions {
                    alpha: 1e-12,
                    eps: 1e-14,
                    max_iter: Some(3),
                    ..SolveOptions::default()
                },
            )
            .unwrap();
        assert!(!sol.converged && sol.iterations == 3 && sol.residual > 1e-14);
        let e = s
            .call(
                &args,
                &SolveOptions {
                    alpha: -1.0,
                    ..SolveOptions::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("alpha"), "{e}");
        // Indefinite: -K.
        let neg = on_a_line("-Exp(-SqDist(x,y)) * a", 1);
        let e = neg.call(&args, &SolveOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("option alpha: K + alpha I (alpha = 1e-10) is not positive definite"),
            "{e}"
        );
        // Non-finite data: in the right-hand side, said before iterating; in the kernel's
        // arguments, when the iteration meets it.
        let mut bad = b.clone();
        bad[7] = f64::NAN;
        let with_b = [args[0].clone(), args[1].clone(), Arg::new(&bad, [50, 1])];
        let e = s.call(&with_b, &SolveOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("argument 2: the right-hand side holds a non-finite value (NaN"),
            "{e}"
        );
        let mut xs = x.clone();
        xs[3] = f64::NAN;
        let with_x = [Arg::new(&xs, [50, 1]), args[1].clone(), args[2].clone()];
        let e = s.call(&with_x, &SolveOptions::default()).unwrap_err();
        assert!(
            e.to_string().contains("is NaN at iteration 1")
                && e.to_string().contains("arguments hold NaN"),
            "{e}"
        );
        // The unknown on the wrong side, of the wrong dimension; a rectangular system.
        let e = KernelSolve::new(
            "Exp(-SqDist(x,y)) * a",
            &["x = Vi(0,1)", "y = Vj(1,1)", "a = Vi(2,1)"],
            "a",
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("must be Vj"), "{e}");
        let e = KernelSolve::new(
            "Exp(-SqDist(x,y)) * a",
            &["x = Vi(0,1)", "y = Vj(1,1)", "a = Vj(2,2)"],
            "x",
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("Vi variable"), "{e}");
        let y = vec![0.0f64; 7];
        let b7 = vec![1.0f64; 7];
        let e = s
            .call(
                &[
                    Arg::new(&x, [50, 1]),
                    Arg::new(&y, [7, 1]),
                    Arg::new(&b7, [7, 1]),
                ],
                &SolveOptions::default(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("square"), "{e}");
    }

    /// `x^T y` residual of `(A + alpha I) x = b` for a dense `A` (n*w x n*w).
    fn residual(a: &[Vec<f64>], alpha: f64, x: &[f64], b: &[f64]) -> f64 {
        (0..b.len())
            .map(|i| {
                let ax: f64 = (0..b.len()).map(|j| a[i][j] * x[j]).sum::<f64>() + alpha * x[i];
                (ax - b[i]).abs()
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn tells_formulas_that_scale_each_column_alike() {
        let al =
            Aliases::parse(&["x = Vi(0,2)", "y = Vj(1,2)", "a = Vj(2,2)", "g = Pm(3,1)"]).unwrap();
        let a = parse_with("a", &al).unwrap();
        for (f, want) in [
            ("Exp(-SqDist(x,y)) * a", true),
            ("a * Exp(-SqDist(x,y) * g) / g", true),
            ("-(Exp(-SqDist(x,y)) * a) + Sum(x) * a - a", true),
            ("Exp(-SqDist(x,y)) * a * x", false),
            ("Exp(-SqDist(x,y)) * (a + Sum(a))", false),
            ("Exp(-SqDist(x,y)) * Concat(Elem(a,1), Elem(a,0))", false),
            ("Scalprod(a, x) * y", false),
        ] {
            assert_eq!(scales(&parse_with(f, &al).unwrap(), &a), want, "{f}");
        }
    }

    #[test]
    fn solves_a_kernel_that_mixes_columns_as_one_system() {
        // K_ij = exp(-|x_i - x_j|^2) [[1, .5], [.5, 1]]: positive definite, but no
        // column of b is a system of its own.
        let s = on_a_line(
            "Exp(-SqDist(x,y)) * (a + Concat(Elem(a,1), Elem(a,0)) * 0.5)",
            2,
        );
        assert!(!s.columnwise);
        let n = 60;
        let x: Vec<f64> = (0..n).map(|k| (k as f64 * 0.7).sin() * 3.0).collect();
        let b: Vec<f64> = (0..2 * n).map(|t| (t as f64 * 0.37).cos()).collect();
        let k = dense(&x, 0.0);
        let big: Vec<Vec<f64>> = (0..2 * n)
            .map(|r| {
                (0..2 * n)
                    .map(|c| k[r / 2][c / 2] * if r % 2 == c % 2 { 1.0 } else { 0.5 })
                    .collect()
            })
            .collect();
        for precond in [Preconditioner::None, Preconditioner::Nystrom { rank: 30 }] {
            let sol = s
                .call(
                    &[
                        Arg::new(&x, [n, 1]),
                        Arg::new(&x, [n, 1]),
                        Arg::new(&b, [n, 2]),
                    ],
                    &SolveOptions {
                        alpha: 0.1,
                        eps: 1e-11,
                        precond,
                        ..SolveOptions::default()
                    },
                )
                .unwrap();
            assert!(sol.converged, "{precond:?}: {sol:?}");
            let res = residual(&big, 0.1, &sol.x.data, &b);
            assert!(res < 1e-9, "{precond:?}: residual {res}");
        }
    }

    /// 1-D Gaussian systems of 300 points on `[-10, 10]` (exact in f32, so that both
    /// types solve the same system), with the root-mean-square residual of an answer,
    /// in f64.
    fn gaussian_300(alpha: f64) -> (Vec<f64>, Vec<f64>, impl Fn(&[f64]) -> f64) {
        let n = 300;
        let xs: Vec<f64> = (0..n)
            .map(|k| ((k as f64 * 0.77).sin() * 10.0) as f32 as f64)
            .collect();
        let bs: Vec<f64> = (0..n)
            .map(|k| (k as f64 * 0.3).cos() as f32 as f64)
            .collect();
        let (k, b) = (dense(&xs, alpha), bs.clone());
        let rms = move |x: &[f64]| {
            let s: f64 = (0..n)
                .map(|i| ((0..n).map(|j| k[i][j] * x[j]).sum::<f64>() - b[i]).powi(2))
                .sum();
            (s / n as f64).sqrt()
        };
        (xs, bs, rms)
    }

    /// Solves the 1-D Gaussian system in `T`, returning the solution, the recursive
    /// residuals reported and the checks (true residual, systems refining).
    #[allow(clippy::type_complexity)] // a test's three traces
    fn traced<T: Element>(
        x: &[f64],
        b: &[f64],
        alpha: f64,
        eps: f64,
    ) -> (Solution<T>, Vec<f64>, Vec<(f64, usize)>) {
        let n = x.len();
        let (xt, bt): (Vec<T>, Vec<T>) = (
            x.iter().map(|&v| T::from_f64(v)).collect(),
            b.iter().map(|&v| T::from_f64(v)).collect(),
        );
        let (mut seen, mut checks) = (Vec::new(), Vec::new());
        let sol = on_a_line("Exp(-SqDist(x,y)) * a", 1)
            .call_with(
                &[
                    Arg::new(&xt, [n, 1]),
                    Arg::new(&xt, [n, 1]),
                    Arg::new(&bt, [n, 1]),
                ],
                &SolveOptions {
                    alpha,
                    eps,
                    ..SolveOptions::default()
                },
                &Options::default(),
                &mut |p| {
                    match p {
                        Progress::Iteration { residual, .. } => seen.push(residual),
                        Progress::Check {
                            residual, refining, ..
                        } => checks.push((residual, refining)),
                        Progress::Preconditioner { .. } => {}
                    }
                    true
                },
            )
            .unwrap();
        (sol, seen, checks)
    }

    #[test]
    fn refines_f32_answers_and_reports_their_true_residual() {
        let below = |seen: &[f64], eps: f64| seen.iter().position(|&r| r < eps);
        let (xs, bs, rms) = gaussian_300(1.0);
        let truth =
            |sol: &Solution<f32>| rms(&sol.x.data.iter().map(|&v| v as f64).collect::<Vec<_>>());
        // Below what an f32 answer can reach (about 1e-7 here; the floor differs between
        // platforms): the first check misses, refinement runs follow, and the best
        // answer is reported as limited by precision, with its true residual.
        let (sol, _, checks) = traced::<f32>(&xs, &bs, 1.0, 2e-8);
        assert!(!sol.converged && sol.precision_limited, "{sol:?}");
        assert!(checks.len() >= 2 && checks[0].1 == 1, "{checks:?}");
        assert_eq!(checks.last(), Some(&(sol.residual, 0)));
        assert!(sol.residual <= checks[0].0, "{checks:?}");
        assert!((sol.residual / truth(&sol) - 1.0).abs() < 1e-6);
        // Within reach: the first answer misses 1.5e-7 (2.0e-7 on x86-64 and on
        // aarch64), its refinement meets it (8.7e-8 and 8.4e-8).
        let (sol, _, checks) = traced::<f32>(&xs, &bs, 1.0, 1.5e-7);
        assert!(sol.converged && truth(&sol) < 1.5e-7, "{sol:?} {checks:?}");
        assert!(checks.len() == 2 && checks[0].0 > 1.5e-7, "{checks:?}");
        assert!((sol.residual / truth(&sol) - 1.0).abs() < 1e-6);
        // cond ~ 1e5: the rounding of the f32 answer keeps it above 1e-5, though the
        // recursive residual went below; the report says so (it said 7e-6 before the
        // check, where the truth is 9e-5).
        let (xs, bs, rms) = gaussian_300(1e-3);
        let (sol, seen, _) = traced::<f32>(&xs, &bs, 1e-3, 1e-5);
        let truth = rms(&sol.x.data.iter().map(|&v| v as f64).collect::<Vec<_>>());
        assert!(
            below(&seen, 1e-5).is_some() && truth > 1e-5,
            "{seen:?} {truth}"
        );
        assert!(!sol.converged && sol.precision_limited, "{sol:?}");
        assert!(
            (sol.residual / truth - 1.0).abs() < 1e-6,
            "{} vs {truth}",
            sol.residual
        );
        // f64: the check confirms the first run.
        let (sol, seen, checks) = traced::<f64>(&xs, &bs, 1e-3, 1e-6);
        assert!(sol.converged && !sol.precision_limited, "{sol:?}");
        assert_eq!(below(&seen, 1e-6), Some(seen.len() - 1));
        assert_eq!(checks, vec![(sol.residual, 0)]);
        assert!((sol.residual / rms(&sol.x.data) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn nystrom_preconditioning_cuts_iterations_not_accuracy() {
        let s = on_a_line("Exp(-SqDist(x,y)) * a", 2);
        let n = 300;
        // A smooth kernel and a small ridge: cond ~ 1e5.
        let x: Vec<f64> = (0..n).map(|k| (k as f64 * 0.77).sin() * 10.0).collect();
        let b: Vec<f64> = (0..2 * n)
            .map(|t| ((t / 2) as f64 * 0.3).cos() + (t % 2) as f64)
            .collect();
        let alpha = 1e-3;
        let solve = |precond| {
            s.call(
                &[
                    Arg::new(&x, [n, 1]),
                    Arg::new(&x, [n, 1]),
                    Arg::new(&b, [n, 2]),
                ],
                &SolveOptions {
                    alpha,
                    eps: 1e-10,
                    precond,
                    ..SolveOptions::default()
                },
            )
            .unwrap()
        };
        let plain = solve(Preconditioner::None);
        let pre = solve(Preconditioner::Nystrom { rank: 40 });
        assert!(plain.converged && pre.converged);
        assert_eq!((plain.precond_rank, pre.precond_rank), (0, 40));
        assert!(
            pre.iterations * 4 < plain.iterations,
            "{} iterations preconditioned, {} plain",
            pre.iterations,
            plain.iterations
        );
        let k = dense(&x, 0.0);
        for c in 0..2 {
            let xc: Vec<f64> = pre.x.data.iter().skip(c).step_by(2).copied().collect();
            let bc: Vec<f64> = b.iter().skip(c).step_by(2).copied().collect();
            assert!(residual(&k, alpha, &xc, &bc) < 1e-8, "column {c}");
        }
        // A rank beyond what K needs stops early: here at K's numerical rank.
        let full = solve(Preconditioner::Nystrom { rank: n });
        assert!(
            full.converged && full.precond_rank < n,
            "{}",
            full.precond_rank
        );
    }

    #[test]
    fn an_automatic_rank_follows_the_kernel_and_the_ridge() {
        let n = 400;
        let x: Vec<f64> = (0..n).map(|k| (k as f64 * 0.77).sin() * 10.0).collect();
        let b: Vec<f64> = (0..n).map(|k| (k as f64 * 0.3).cos()).collect();
        let solve = |x: &[f64], g: f64, alpha: f64, precond| {
            let s = KernelSolve::new(
                "Exp(-SqDist(x,y) * g) * a",
                &["x = Vi(0,1)", "y = Vj(1,1)", "a = Vj(2,1)", "g = Pm(3,1)"],
                "a",
                1,
            )
            .unwrap();
            s.call(
                &[
                    Arg::new(x, [n, 1]),
                    Arg::new(x, [n, 1]),
                    Arg::new(&b, [n, 1]),
                    Arg::new(&[g], [1]),
                ],
                &SolveOptions {
                    alpha,
                    eps: 1e-8,
                    precond,
                    ..SolveOptions::default()
                },
            )
            .unwrap()
        };
        // A smooth kernel, a small ridge: the rank K needs (beyond 10), few iterations.
        let auto = solve(&x, 1.0, 1e-6, Preconditioner::NystromAuto);
        let fixed = solve(&x, 1.0, 1e-6, Preconditioner::Nystrom { rank: 10 });
        assert!(auto.converged && fixed.converged);
        assert!(
            auto.precond_rank > 10 && auto.iterations * 4 < fixed.iterations,
            "auto: rank {}, {} iterations; rank 10: {} iterations",
            auto.precond_rank,
            auto.iterations,
            fixed.iterations
        );
        let k = dense(&x, 0.0);
        assert!(residual(&k, 1e-6, &auto.x.data, &b) < 1e-6);
        // A ridge above K's largest eigenvalue (here its trace): the first column shows
        // that K is within the ridge already; the build adds what costs one product
        // more (here a column costs about an eighth of a product), then stops.
        let ridge = solve(&x, 1.0, 1e3, Preconditioner::NystromAuto);
        assert!(
            ridge.converged && (1..=8).contains(&ridge.precond_rank),
            "{}",
            ridge.precond_rank
        );
        // A nearly diagonal kernel (points 4.5 lengths apart): its columns explain no
        // more than their own diagonal entry, and the build stops after one window.
        let grid: Vec<f64> = (0..n).map(|k| k as f64).collect();
        let near = solve(&grid, 20.0, 1e-6, Preconditioner::NystromAuto);
        assert!(
            near.converged && near.precond_rank < nystrom::DIAGONAL_WINDOW,
            "{}",
            near.precond_rank
        );
    }

    #[test]
    fn the_progress_callback_can_stop_the_preconditioner_build() {
        let (xs, bs, _) = gaussian_300(1e-3);
        let args = [
            Arg::new(&xs, [300, 1]),
            Arg::new(&xs, [300, 1]),
            Arg::new(&bs, [300, 1]),
        ];
        let opts = SolveOptions {
            alpha: 1e-3,
            precond: Preconditioner::Nystrom { rank: 50 },
            ..SolveOptions::default()
        };
        let mut seen = Vec::new();
        let sol = on_a_line("Exp(-SqDist(x,y)) * a", 1)
            .call_with(&args, &opts, &Options::default(), &mut |p| {
                seen.push(p);
                !matches!(p, Progress::Preconditioner { rank: 3, .. })
            })
            .unwrap();
        let want: Vec<Progress> = (1..=3)
            .map(|rank| Progress::Preconditioner { entry: 0, rank })
            .collect();
        assert_eq!(seen, want);
        assert!(!sol.converged && sol.iterations == 0 && sol.x.data.iter().all(|&v| v == 0.0));
        let rms = (bs.iter().map(|v| v * v).sum::<f64>() / 300.0).sqrt();
        assert!((sol.residual - rms).abs() < 1e-12 * rms);
    }

    #[test]
    fn nystrom_preconditioning_follows_batches_and_ranges() {
        use crate::ranges::Ranges;
        use std::sync::Arc;
        let s = KernelSolve::new(
            "Exp(-SqDist(x,y) * g) * a",
            &["x = Vi(0,1)", "y = Vj(1,1)", "a = Vj(2,1)", "g = Pm(3,1)"],
            "a",
            1,
        )
        .unwrap();
        // Two batch entries with their own points and length scales.
        let n = 80;
        let x: Vec<f64> = (0..2 * n).map(|k| (k as f64 * 0.61).sin() * 3.0).collect();
        let b: Vec<f64> = (0..2 * n).map(|t| (t as f64 * 0.17).cos()).collect();
        let g = [0.5, 2.0];
        // Rows 0..40 and 40..80 of each entry interact only with their own half.
        let blocks: Vec<i64> = vec![0, 40, 40, 80, 80, 120, 120, 160];
        let slices = vec![1i64, 2, 3, 4];
        let r = Arc::new(
            Ranges::from_keops(&blocks, &slices, &blocks, &blocks, &slices, &blocks).unwrap(),
        );
        let args = [
            Arg::new(&x, [2, n, 1]),
            Arg::new(&x, [2, n, 1]),
            Arg::new(&b, [2, n, 1]),
            Arg::new(&g, [2, 1]),
        ];
        for ranges in [None, Some(r)] {
            let opts = Options {
                ranges: ranges.clone(),
                ..Options::default()
            };
            let run = |precond| {
                let params = SolveOptions {
                    alpha: 1e-3,
                    eps: 1e-11,
                    precond,
                    ..SolveOptions::default()
                };
                s.call_with(&args, &params, &opts, &mut |_| true).unwrap()
            };
            let plain = run(Preconditioner::None);
            let pre = run(Preconditioner::Nystrom { rank: 25 });
            assert!(plain.converged && pre.converged);
            assert!(
                pre.iterations < plain.iterations,
                "{} vs {}",
                pre.iterations,
                plain.iterations
            );
            for e in 0..2 {
                let xe = &x[e * n..(e + 1) * n];
                let mut k = dense(&xe.iter().map(|v| v * g[e].sqrt()).collect::<Vec<_>>(), 0.0);
                if ranges.is_some() {
                    for (i, row) in k.iter_mut().enumerate() {
                        for (j, v) in row.iter_mut().enumerate() {
                            if i / 40 != j / 40 {
                                *v = 0.0;
                            }
                        }
                    }
                }
                let sol = &pre.x.data[e * n..(e + 1) * n];
                let res = residual(&k, 1e-3, sol, &b[e * n..(e + 1) * n]);
                assert!(res < 1e-8, "entry {e}, ranges {}: {res}", ranges.is_some());
            }
        }
    }
}
