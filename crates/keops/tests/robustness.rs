//! Arbitrary formula text must give a reduction or an error, never a panic: formulas
//! built from the syntax's rules with any operation, arity and operand (numbers at the
//! edges of `i32`, `i64` and `f64` among them) go through parsing, checking with each reduction, a call on
//! small data and the gradients. A stable-toolchain companion of the libFuzzer target
//! in `fuzz/` (whose findings are pinned below).

use keops::{Arg, Cat, Genred, KeopsError, Reduction};
use proptest::prelude::*;

const ALIASES: [&str; 4] = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)", "p = Pm(3,2)"];

/// Every name of the op table, and the syntax's other call forms (`Ind(...)` lists,
/// variables, constants) and a name that is none of them.
fn names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = keops::formula::ops::all_specs().map(|s| s.name).collect();
    names.extend([
        "Ind", "Var", "Vi", "Vj", "Pm", "IntCst", "RatCst", "Zero", "Unknown",
    ]);
    names
}

/// Numbers at the edges: of `i32`, `i64`, `usize` and `f64`, and small ones.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "0.5",
    "-0.5",
    "1e308",
    "1e-320",
    "inf",
    "nan",
    "2147483648",
    "-2147483648",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "16777217",
    "65536",
];

/// Formula text built by the syntax's rules (calls of any arity, infix operators,
/// scalar products, powers), with operands that may not fit: the checks get exercised,
/// not only the tokenizer.
fn text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(&["x", "y", "b", "p", "z"][..]).prop_map(str::to_string),
        prop::sample::select(NUMBERS).prop_map(str::to_string),
    ];
    leaf.prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            (
                prop::sample::select(names()),
                prop::collection::vec(inner.clone(), 0..5)
            )
                .prop_map(|(op, args)| format!("{op}({})", args.join(","))),
            (
                inner.clone(),
                prop::sample::select(&["+", "-", "*", "/", "**", "^"][..]),
                inner.clone()
            )
                .prop_map(|(a, o, b)| format!("({a}{o}{b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}|{b})")),
            inner.prop_map(|a| format!("-{a}")),
        ]
    })
}

/// Parses, checks, runs and differentiates (Sum and LogSumExp) `formula` with each
/// reduction, the axis alternating; any step may fail, but with an error.
fn exercise(formula: &str) {
    for (r, &reduction) in Reduction::ALL.iter().enumerate() {
        let axis = r % 2;
        let g = if reduction == Reduction::SumSoftMaxWeight {
            Genred::with_weight(formula, "b", &ALIASES, reduction, axis)
        } else {
            Genred::new(formula, &ALIASES, reduction, axis)
        };
        let Ok(g) = g else { continue };
        let data = inputs(&g, 3, 4);
        let args: Vec<Arg<'_, f64>> = data.iter().map(|(d, s)| Arg::new(d, s)).collect();
        let _ = g.call(&args);
        if !matches!(reduction, Reduction::Sum | Reduction::LogSumExp) {
            continue;
        }
        for k in 0..g.args().len() {
            if let Ok(grad) = g.grad(k) {
                let rows = if axis == 1 { 3 } else { 4 };
                let dim = g.spec().output_dims().0;
                let og = vec![0.25; rows * dim];
                let _ = grad.call(&args, &Arg::new(&og, [rows, dim]));
            }
        }
    }
}

/// Small arrays of the declared shapes (dimensions over 64 are left empty: the error
/// path is what is exercised then).
fn inputs(g: &Genred, n: usize, m: usize) -> Vec<(Vec<f64>, Vec<usize>)> {
    g.args()
        .iter()
        .map(|d| match d {
            None => (vec![0.5], vec![1, 1]),
            Some(d) => {
                let rows = match d.cat {
                    Cat::Vi => n,
                    Cat::Vj => m,
                    Cat::Pm => 1,
                };
                let dim = if d.dim > 64 { 0 } else { d.dim };
                let data = (0..rows * dim)
                    .map(|k| (k * 37 % 11) as f64 / 7.0 - 0.6)
                    .collect();
                (data, vec![rows, d.dim])
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn token_strings_never_panic(s in text()) {
        exercise(&s);
    }
}

/// Integer constants whose folding overflows `i64` (found by `fuzz/`: `a * b` of two
/// large integers panicked in debug builds and wrapped silently in release ones) are
/// computed in floating point instead.
#[test]
fn integer_constants_that_overflow_are_not_folded() {
    let big = "9223372036854775807";
    for (formula, want) in [
        (format!("({big} * {big}) * x"), 8.507059173023462e37),
        (format!("({big} + {big}) * x"), 1.8446744073709552e19),
        (format!("(-{big} - {big}) * x"), -1.8446744073709552e19),
        (
            "(-9223372036854775807 - 1) / (0 - 1) * x".to_string(),
            9.223_372_036_854_776e18,
        ),
        (
            "(-(-9223372036854775807 - 1)) * x".to_string(),
            9.223_372_036_854_776e18,
        ),
    ] {
        let g = Genred::new(&formula, &["x = Vi(0,1)", "y = Vj(1,1)"], Reduction::Sum, 1)
            .unwrap_or_else(|e| panic!("{formula}: {e}"));
        let (x, y) = ([1.0f64], [0.0f64]);
        let out = g.call(&[Arg::new(&x, [1, 1]), Arg::new(&y, [1, 1])]);
        let a = out
            .unwrap_or_else(|e| panic!("{formula}: {e}"))
            .values
            .expect("values");
        assert!(
            (a.data[0] - want).abs() <= 1e-12 * want.abs(),
            "{formula}: {} != {want}",
            a.data[0]
        );
    }
}

/// `Pow(x, -2147483648)`'s derivative has an exponent below `i32`'s range.
#[test]
fn the_gradient_of_the_lowest_integer_power_is_built() {
    let g = Genred::new(
        "Pow(x, -2147483648) * y",
        &["x = Vi(0,1)", "y = Vj(1,1)"],
        Reduction::Sum,
        1,
    )
    .expect("formula");
    assert!(g.grad(0).is_ok());
    let e = Genred::new("Pow(x, 2147483648)", &["x = Vi(0,1)"], Reduction::Sum, 1);
    assert!(matches!(
        e,
        Err(KeopsError::Arity { .. }) | Err(KeopsError::Parse { .. })
    ));
}

/// Sizes beyond what any formula needs are errors, before anything is allocated
/// (an argument position of 4e10 used to allocate its argument table and abort).
#[test]
fn oversized_formulas_are_errors() {
    let al = ["x = Vi(0,3)", "y = Vj(1,3)"];
    let cases: [(&str, &[&str]); 5] = [
        (
            "TensorDot(x, y, Ind(8192, 8192), Ind(3), Ind(), Ind())",
            &al,
        ),
        ("Vj(40000000000, 2)", &al),
        ("SumT(Sum(x), 16777217)", &al),
        ("OneHot(Sum(x), 100000000000000000)", &al),
        ("Extract(x, 18446744073709551615, 2)", &al),
    ];
    for (formula, aliases) in cases {
        assert!(
            Genred::new(formula, aliases, Reduction::Sum, 1).is_err(),
            "{formula}"
        );
    }
    // TensorDot of two large tensors: its products are counted before being listed.
    let big = "TensorDot(x, y, Ind(4096), Ind(4096), Ind(), Ind())";
    let e = Genred::new(
        big,
        &["x = Vi(0,4096)", "y = Vj(1,4096)"],
        Reduction::Sum,
        1,
    );
    assert!(
        matches!(&e, Err(e) if e.to_string().contains("at most 4194304")),
        "{e:?}"
    );
    let e = Genred::new("x", &al, Reduction::KMin(1 << 23), 1);
    assert!(matches!(e, Err(KeopsError::Reduction { .. })), "{e:?}");
}

/// An output too large for memory is an error, not an abort of the process.
#[test]
fn an_output_too_large_for_memory_is_an_error() {
    let g = Genred::new("SumT(a, 16777216)", &["a = Vi(0,1)"], Reduction::Sum, 1).expect("formula");
    let n = 1 << 22; // 2^22 rows of 2^24 float32: 2^48 bytes, past any address space
    let a = vec![1.0f32; n];
    let e = g.call(&[Arg::new(&a, [n, 1])]);
    assert!(
        matches!(&e, Err(KeopsError::OutOfMemory { bytes, .. }) if *bytes == 1 << 48),
        "{:?}",
        e.as_ref().err()
    );
}
