#![no_main]
//! KernelSolve on formulas, aliases and options from the fuzzer: building and solving
//! must answer an error or a solution, never panic, in f64 and f32, with and without
//! the Nyström preconditioner; a solution's reported residual must be the true one,
//! `b - (K + alpha I) x` computed by the oracle.
use keops::solve::{KernelSolve, Preconditioner, SolveOptions};
use keops::{reference, Arg};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((head, formula, aliases)) = common::split(data) else {
        return;
    };
    let mut h = head.iter().map(|&b| usize::from(b));
    let mut next = |d: usize| h.next().unwrap_or(d);
    let axis = next(1) % 2;
    // The unknown: one of the aliases, by name.
    let Some(var) = aliases
        .get(next(0) % aliases.len().max(1))
        .and_then(|a| a.split('=').next())
        .map(str::trim)
    else {
        return;
    };
    let n = 1 + next(5) % 24;
    let alpha = [0.0, 1e-3, 1.0, 1e-12][next(2) % 4];
    let precond = match next(0) % 4 {
        0 => Preconditioner::None,
        3 => Preconditioner::NystromAuto,
        k => Preconditioner::Nystrom {
            rank: k * next(3) % 12,
        },
    };
    let params = SolveOptions {
        alpha,
        eps: 1e-6,
        max_iter: Some(next(30) % 64),
        precond,
    };
    let Ok(s) = KernelSolve::new(formula, &aliases, var, axis) else {
        return;
    };
    let g = s.genred();
    let Some(bufs) = common::arguments(g, n, n, 16) else {
        return;
    };
    let args: Vec<Arg<'_, f64>> = bufs.iter().map(|(d, s)| Arg::new(d, s)).collect();
    let bufs32 = common::to_f32(&bufs);
    let args32: Vec<Arg<'_, f32>> = bufs32.iter().map(|(d, s)| Arg::new(d, s)).collect();
    let _ = s.call(&args32, &params);
    let Ok(sol) = s.call(&args, &params) else {
        return;
    };
    if sol.iterations == 0 || !sol.residual.is_finite() {
        return;
    }
    // The reported residual is the true one (largest root-mean-square over the
    // systems: with one column, that of the whole).
    let b = &bufs[s.var()].0;
    if b.len() != sol.x.data.len() || g.formula().dim != 1 {
        return;
    }
    let mut with_x = args.clone();
    with_x[s.var()] = Arg::new(&sol.x.data, &sol.x.shape);
    let Ok(kx) = reference::reduce(g, &with_x) else {
        return;
    };
    let Some(kx) = kx.values else { return };
    let rr: f64 = (0..b.len())
        .map(|t| (b[t] - kx.data[t] - alpha * sol.x.data[t]).powi(2))
        .sum();
    let truth = (rr / b.len() as f64).sqrt();
    // Both residuals are exact up to the rounding of K x, about 1e-16 sum_j |K_ij x_j|
    // (huge where x is, on nearly singular systems): estimated by K |x|.
    let abs_x: Vec<f64> = sol.x.data.iter().map(|v| v.abs()).collect();
    with_x[s.var()] = Arg::new(&abs_x, &sol.x.shape);
    let Ok(Some(k_abs)) = reference::reduce(g, &with_x).map(|r| r.values) else {
        return;
    };
    let scale = k_abs
        .data
        .iter()
        .zip(&abs_x)
        .fold(0.0f64, |m, (k, x)| m.max(k.abs() + alpha * x));
    assert!(
        (sol.residual - truth).abs() <= 1e-6 * truth + 1e-12 * scale,
        "reported {} true {truth} (scale {scale})",
        sol.residual
    );
});
