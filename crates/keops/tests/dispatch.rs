//! Every SIMD code path (AVX-512, AVX2+FMA, SSE4.1, baseline) gives the oracle's
//! results: the kernels are one source compiled several times, and a bug that only one
//! instruction set shows (a bad lane count, a wrong tail) must not hide behind the
//! machine's best path.

mod common;

use keops::cpu::Isa;
use keops::{reference, Arg, CpuKernel, Genred, Options, Reduction};

fn data(n: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut r = common::Rng::new(seed);
    (0..n * d).map(|_| r.unit()).collect()
}

/// Checks `cases` on `x`, `y`, `b` (`(n, dx)`, `(m, dx)`, `(m, db)`) with every
/// instruction set this CPU has and both CPU code paths against the oracle: float64 to
/// 1e-12 with exact indices, float32 to `tol32`.
fn check_every_isa(
    cases: &[(&str, Reduction)],
    (x, y, b): (&[f64], &[f64], &[f64]),
    (n, m, dx, db): (usize, usize, usize, usize),
    tol32: f64,
) {
    let al = [
        format!("x = Vi(0,{dx})"),
        format!("y = Vj(1,{dx})"),
        format!("b = Vj(2,{db})"),
    ];
    let available = Isa::available();
    println!("this CPU: {available:?}");
    let to32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let (x32, y32, b32) = (to32(x), to32(y), to32(b));
    for &(f, red) in cases {
        let g = Genred::new(f, &al, red, 1).unwrap();
        let args64 = [
            Arg::new(x, [n, dx]),
            Arg::new(y, [m, dx]),
            Arg::new(b, [m, db]),
        ];
        let want = reference::reduce(&g, &args64).unwrap();
        let args32 = [
            Arg::new(&x32, [n, dx]),
            Arg::new(&y32, [m, dx]),
            Arg::new(&b32, [m, db]),
        ];
        for isa in Isa::ALL.into_iter().filter(|&i| i <= available) {
            for kernel in [CpuKernel::Auto, CpuKernel::TileProgram] {
                let opts = Options {
                    isa: Some(isa),
                    kernel,
                    ..Default::default()
                };
                let ctx = format!("{f} {isa:?} {kernel:?}");
                let got = g.call_with(&args64, &opts).unwrap();
                if let (Some(a), Some(w)) = (&got.values, &want.values) {
                    for (u, v) in a.data.iter().zip(&w.data) {
                        assert!(
                            (u - v).abs() <= 1e-12 * (1.0 + v.abs()),
                            "{ctx} f64: {u} vs {v}"
                        );
                    }
                }
                assert_eq!(got.indices, want.indices, "{ctx} f64 indices");
                let got = g.call_with(&args32, &opts).unwrap();
                assert!(got.values.is_some() || got.indices.is_some(), "{ctx}");
                if let (Some(a), Some(w)) = (&got.values, &want.values) {
                    for (u, v) in a.data.iter().zip(&w.data) {
                        let u = *u as f64;
                        assert!(
                            (u - v).abs() <= tol32 * (1.0 + v.abs()),
                            "{ctx} f32: {u} vs {v}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_instruction_set_agrees_with_the_oracle() {
    let (n, m) = (45, 1030);
    let (x, y, b) = (data(n, 3, 1), data(m, 3, 2), data(m, 2, 3));
    let cases = [
        ("Exp(-SqDist(x,y) * 4) * b", Reduction::Sum),
        (
            "Cos(Scalprod(x,y)) * Log(1 + Sqrt(SqDist(x,y))) * b",
            Reduction::Sum,
        ),
        ("Sin(x - y) * Elem(b, 1)", Reduction::LogSumExp),
        ("SqDist(x,y)", Reduction::ArgKMin(4)),
        ("Concat(SqDist(x,y), Sum(x*y))", Reduction::MinArgMin),
    ];
    check_every_isa(&cases, (&x, &y, &b), (n, m, 3, 2), 2e-5);
}

/// The blocked distances of high dimensions (rows two at a time, chunks of 64 and 16
/// lanes, a rest) on every instruction set: the AVX2 and SSE paths have fewer
/// registers for the same sums.
#[test]
fn every_instruction_set_agrees_on_high_dimensions() {
    let (n, m, d) = (37, 300, 64);
    let (x, y, b) = (data(n, d, 4), data(m, d, 5), data(m, 1, 6));
    let cases = [
        ("SqDist(x,y)", Reduction::ArgKMin(5)),
        ("Sum(Square(y - x))", Reduction::MinArgMin),
        ("Exp(-SqDist(x,y) / 16) * b", Reduction::Sum),
    ];
    check_every_isa(&cases, (&x, &y, &b), (n, m, d, 1), 1e-5);
}
