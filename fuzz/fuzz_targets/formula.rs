#![no_main]
//! Formula strings and aliases from the fuzzer: parsing and checking must answer an
//! error or a reduction, never panic; a reduction that runs must match the oracle.
use keops::formula::{Binary, Op};
use keops::{reference, Arg, Genred, Reduction};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((head, formula, aliases)) = common::split(data) else {
        return;
    };
    let mut h = head.iter().copied();
    let red = h.next().unwrap_or(0);
    let axis = (h.next().unwrap_or(0) % 2) as usize;
    let reduction = match red % 8 {
        0 => Reduction::Sum,
        1 => Reduction::LogSumExp,
        2 => Reduction::Min,
        3 => Reduction::ArgMax,
        4 => Reduction::MinArgMin,
        5 => Reduction::KMin(2),
        6 => Reduction::ArgKMin(1),
        _ => Reduction::SumSoftMaxWeight,
    };
    let g = if red % 8 == 7 {
        Genred::with_weight(formula, "x", &aliases, reduction, axis)
    } else {
        Genred::new(formula, &aliases, reduction, axis)
    };
    let Ok(g) = g else { return };
    // Calls only where the data stays small (the checks above ran whatever the sizes).
    if g.spec().output_dims().0.max(g.spec().output_dims().1) > 4096 {
        return;
    }
    // Sizes from the header too: 8 rows and columns or more reach the GEMM paths.
    let (n, m) = (
        1 + h.next().unwrap_or(2) as usize % 40,
        1 + h.next().unwrap_or(3) as usize % 40,
    );
    let Some(bufs) = common::arguments(&g, n, m, 64) else {
        return;
    };
    let args: Vec<Arg<'_, f64>> = bufs.iter().map(|(d, s)| Arg::new(d, s)).collect();
    let got = g.call(&args);
    let want = reference::reduce(&g, &args);
    assert_eq!(
        got.is_ok(),
        want.is_ok(),
        "engine {:?} oracle {:?}",
        got.as_ref().err(),
        want.as_ref().err()
    );
    // Sine and cosine turn the rounding of a large computed argument into any value in
    // [-1, 1] (condition number |x|): their values are not compared, errors and panics
    // are. (Their accuracy at any argument is `tests/ops.rs`' business, as Powf's.)
    let trig = formula.contains("Sin") || formula.contains("Cos");
    // Powf of a negative base is real only at integer exponents (C's pow): a computed
    // exponent that rounds onto an integer or off it turns a value into NaN, and back.
    let pow = g.formula().topo_order().iter().any(|f| {
        matches!(f.op, Op::Binary(Binary::Powf)) && f.args[1].as_const().is_none()
    });
    if let (Ok(got), Ok(want), false) = (&got, &want, trig || pow) {
        if let (Some(a), Some(b)) = (&got.values, &want.values) {
            // Past 1e12 a value comes from a cancellation at a singularity (`Inv` of a
            // difference rounding to 0 or not, or to +0 rather than -0): rounding
            // decides, not the engine. Such a term changes its whole output row, on
            // either side: a LogSumExp is that term where its sign came out positive
            // and moderate where it came out negative; a KMin keeps it or the next value.
            let huge = |v: &f64| v.abs() > 1e12;
            let rows = if axis == 1 { n } else { m };
            let width = (a.data.len() / rows).max(1);
            for (ra, rb) in a.data.chunks(width).zip(b.data.chunks(width)) {
                if ra.iter().chain(rb).any(huge) {
                    continue;
                }
                for (x, y) in ra.iter().zip(rb) {
                    let ok = (x.is_nan() && y.is_nan())
                        || x == y
                        || (x - y).abs() <= 1e-6 * (1.0 + y.abs());
                    assert!(ok, "engine {x} oracle {y}");
                }
            }
        }
    }
    // float32 (other kernels: GEMM paths, fused kernels in f32): an answer where f64 has one.
    let bufs32 = common::to_f32(&bufs);
    let args32: Vec<Arg<'_, f32>> = bufs32.iter().map(|(d, s)| Arg::new(d, s)).collect();
    assert_eq!(
        g.call(&args32).is_ok(),
        got.is_ok(),
        "f32 and f64 disagree on an error"
    );
    for k in 0..g.args().len() {
        if let Ok(gr) = g.grad(k) {
            let _ = gr;
        }
    }
});
