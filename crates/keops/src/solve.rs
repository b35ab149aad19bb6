//! `KernelSolve`: `(K + alpha I) a = b` by conjugate gradients, where `K a` is a `Sum`
//! reduction linear in one of its arguments (KeOps' `varinvalias`), e.g.
//! `Exp(-SqDist(x,y)) * a` with `a = Vj(2,1)`. Each column of `b` (and each batch entry)
//! is its own system, with its own step sizes and stopping test, and all of them share
//! one reduction per iteration. Vectors are kept in `f64` whatever the data type.
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

use crate::error::{KeopsError, Result};
use crate::formula::parse::{parse_with, Aliases};
use crate::formula::Cat;
use crate::plan::{Arg, Array, Element, Genred, Options, Problem};
use crate::reduction::Reduction;

/// Parameters of a solve, with pykeops' defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SolveOptions {
    /// The ridge `alpha >= 0` added to the diagonal.
    pub alpha: f64,
    /// Stopping test: a system stops when `|r|^2 < n eps^2` (root-mean-square residual
    /// below `eps`, as pykeops).
    pub eps: f64,
    /// Iteration limit (`None`: `min(10 n, 10,000)`); reaching it is reported by
    /// [`Solution::converged`], not an error.
    pub max_iter: Option<usize>,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            alpha: 1e-10,
            eps: 1e-6,
            max_iter: None,
        }
    }
}

/// One conjugate-gradient iteration, as reported to a progress callback.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Iterations done.
    pub iteration: usize,
    /// The largest root-mean-square residual `|r| / sqrt(n)` over the systems.
    pub residual: f64,
    /// Systems not yet converged.
    pub active: usize,
}

/// The result of a solve.
#[derive(Clone, Debug, PartialEq)]
pub struct Solution<T> {
    /// The solution, of the output's shape (`b`'s, broadcast with the batch).
    pub x: Array<T>,
    /// Iterations done (reductions computed).
    pub iterations: usize,
    /// The largest root-mean-square residual over the systems at the end.
    pub residual: f64,
    /// Whether every system met the stopping test within the iteration limit.
    pub converged: bool,
}

/// A kernel linear system, checked once and solvable for many right-hand sides.
#[derive(Clone, Debug)]
pub struct KernelSolve {
    genred: Genred,
    var: usize,
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
        let red = if genred.axis() == 1 { Cat::Vj } else { Cat::Vi };
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
        Ok(KernelSolve { genred, var })
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
    /// iteration and stops the solve by returning `false` (the solution so far is
    /// returned, not converged). `opts` (backend, ranges, ...) apply to every reduction.
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
        let systems = nb * d;
        // The system (batch entry, column) of flat index t, and <u, v> per system.
        let sys = |t: usize| (t / (n * d)) * d + t % d;
        let dot = |u: &[f64], v: &[f64]| -> Vec<f64> {
            let mut s = vec![0.0; systems];
            for (t, (x, y)) in u.iter().zip(v).enumerate() {
                s[sys(t)] += x * y;
            }
            s
        };
        let tol = n as f64 * params.eps * params.eps;
        let mut x = vec![0.0f64; b.len()];
        let mut r = b.clone();
        let mut rr = dot(&r, &r);
        let mut active: Vec<bool> = rr.iter().map(|&v| v.is_nan() || v >= tol).collect();
        let mut p: Vec<f64> = r
            .iter()
            .enumerate()
            .map(|(t, &v)| if active[sys(t)] { v } else { 0.0 })
            .collect();
        let rms = |rr: &[f64]| {
            rr.iter()
                .fold(0.0f64, |m, &v| m.max((v / n.max(1) as f64).sqrt()))
        };
        let mut iterations = 0;
        while active.iter().any(|&a| a) && iterations < max_iter {
            // K p through the reduction, with p in the unknown's place.
            let pt: Vec<T> = p.iter().map(|&v| T::from_f64(v)).collect();
            let mut a2: Vec<Arg<'_, T>> = args.to_vec();
            a2[self.var] = Arg::new(&pt, shape.clone());
            let kp = self.genred.call_with(&a2, opts)?.values.ok_or_else(|| {
                KeopsError::Arguments("internal error: a Sum without values".into())
            })?;
            let mp: Vec<f64> = kp
                .data
                .iter()
                .zip(&p)
                .map(|(k, &v)| k.to_f64() + params.alpha * v)
                .collect();
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
                .map(|s| if active[s] { rr[s] / pmp[s] } else { 0.0 })
                .collect();
            for t in 0..x.len() {
                let a = step[sys(t)];
                x[t] += a * p[t];
                r[t] -= a * mp[t];
            }
            let rr_new = dot(&r, &r);
            for s in 0..systems {
                if active[s] && rr_new[s] < tol {
                    active[s] = false;
                }
            }
            for t in 0..p.len() {
                let s = sys(t);
                p[t] = if active[s] {
                    r[t] + rr_new[s] / rr[s] * p[t]
                } else {
                    0.0
                };
            }
            rr = rr_new;
            let go_on = progress(Progress {
                iteration: iterations,
                residual: rms(&rr),
                active: active.iter().filter(|&&a| a).count(),
            });
            if !go_on {
                break;
            }
        }
        Ok(Solution {
            x: Array {
                data: x.into_iter().map(T::from_f64).collect(),
                shape,
            },
            iterations,
            residual: rms(&rr),
            converged: !active.iter().any(|&a| a),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let s = KernelSolve::new(
            "Exp(-SqDist(x,y)) * a",
            &["x = Vi(0,1)", "y = Vj(1,1)", "a = Vj(2,2)"],
            "a",
            1,
        )
        .unwrap();
        let x: Vec<f64> = (0..40).map(|k| (k as f64 * 0.7).sin() * 3.0).collect();
        // Column 1 is 1e6 times column 0: each must meet its own test.
        let b: Vec<f64> = (0..80)
            .map(|t| ((t / 2) as f64 * 0.3).cos() * if t % 2 == 1 { 1e6 } else { 1.0 })
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
                    max_iter: None,
                },
            )
            .unwrap();
        assert!(sol.converged, "{sol:?}");
        let k = dense(&x, 0.5);
        for c in 0..2 {
            for i in 0..40 {
                let kx: f64 = (0..40).map(|j| k[i][j] * sol.x.data[2 * j + c]).sum();
                let scale = if c == 1 { 1e6 } else { 1.0 };
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
        let s = KernelSolve::new(
            "Exp(-SqDist(x,y)) * a",
            &["x = Vi(0,1)", "y = Vj(1,1)", "a = Vj(2,1)"],
            "a",
            1,
        )
        .unwrap();
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
        let neg = KernelSolve::new(
            "-Exp(-SqDist(x,y)) * a",
            &["x = Vi(0,1)", "y = Vj(1,1)", "a = Vj(2,1)"],
            "a",
            1,
        )
        .unwrap();
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
}
