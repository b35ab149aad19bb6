//! Bad input gives an `Err(KeopsError::...)` with a clear message, never a panic:
//! formula strings, aliases, arguments at call time, reductions and options.

use keops::formula::parse::parse;
use keops::formula::Formula;
use keops::{Arg, Backend, Genred, KeopsError, Options, Reduction};

const AL: [&str; 3] = ["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"];

/// The error of building a Sum Genred, which must fail.
fn genred_err(formula: &str, aliases: &[&str]) -> KeopsError {
    match Genred::new(formula, aliases, Reduction::Sum, 1) {
        Ok(g) => panic!(
            "{formula:?} with {aliases:?} should fail, got {:?}",
            g.formula()
        ),
        Err(e) => e,
    }
}

/// Asserts a parse error at `pos` whose message contains every word of `words`.
fn assert_parse_err(e: &KeopsError, pos: usize, words: &[&str]) {
    let msg = e.to_string();
    match e {
        KeopsError::Parse { pos: p, .. } => assert_eq!(*p, pos, "position in {msg:?}"),
        _ => panic!("expected a parse error, got {e:?}"),
    }
    assert!(
        msg.contains(&format!("position {pos}")),
        "{msg:?} does not name position {pos}"
    );
    for w in words {
        assert!(msg.contains(w), "{msg:?} does not mention {w:?}");
    }
}

fn assert_msg(e: &KeopsError, words: &[&str]) {
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "{msg:?} does not mention {w:?}");
    }
}

#[test]
fn unknown_operation_names_its_position() {
    let e = genred_err("Exp(-Foo(x,y)) * b", &AL);
    assert_parse_err(&e, 5, &["unknown operation", "Foo"]);
    // Case matters: KeOps names are exact.
    let e = genred_err("exp(x)", &AL);
    assert_parse_err(&e, 0, &["unknown operation", "exp"]);
}

#[test]
fn wrong_arity() {
    let e = genred_err("Exp(x, y)", &AL);
    assert_parse_err(&e, 0, &["Exp", "expects 1", "got 2"]);
    let e = genred_err("b * SqDist(x)", &AL);
    assert_parse_err(&e, 4, &["SqDist", "expects 2", "got 1"]);
    // Integer parameters count too, and must be integers.
    let e = genred_err("Pow(x)", &AL);
    assert_parse_err(&e, 0, &["Pow", "expects 2"]);
    let e = genred_err("Pow(x, 1.5)", &AL);
    assert_parse_err(&e, 7, &["Pow", "integer", "1.5"]);
    let e = genred_err("Pow(x, y)", &AL);
    assert_parse_err(&e, 7, &["Pow", "integer"]);
    // Through the Rust API: an Arity error.
    let x = Formula::vi(0, 3).unwrap();
    let e = Formula::new(keops::formula::Op::Sum, vec![x.clone(), x]).unwrap_err();
    assert!(matches!(e, KeopsError::Arity { .. }), "{e:?}");
    assert_msg(&e, &["Sum", "expects 1", "got 2"]);
}

#[test]
fn dimension_mismatch() {
    let al = ["x = Vi(0,3)", "y = Vj(1,2)"];
    let e = genred_err("x + y", &al);
    assert_parse_err(&e, 2, &["dimension", "Add", "3", "2"]);
    let e = genred_err("Exp(x) * (y - x)", &al);
    assert_parse_err(&e, 12, &["Subtract", "[2, 3]"]);
    let e = genred_err("Scalprod(x, y)", &al);
    assert_parse_err(&e, 0, &["Scalprod", "3", "2"]);
    let e = genred_err("WeightedSqNorm(y, x)", &al);
    assert_parse_err(&e, 0, &["WeightedSqNorm", "1, 3 or 9"]);
    // The named weight layouts check their own dimension.
    let e = genred_err("SqNormDiag(y, x)", &al);
    assert_parse_err(&e, 0, &["SqNormDiag", "dimension 2", "expected 3"]);
    let e = genred_err("SymSqNorm(x, x)", &al);
    assert_parse_err(&e, 0, &["SymSqNorm", "expected 9"]);
    let e = genred_err("SqNormIso(x, x)", &al);
    assert_parse_err(&e, 0, &["SqNormIso", "expected 1"]);
    // Matrix products and Kronecker shapes.
    let e = genred_err("MatVecMult(x, y)", &al);
    assert_parse_err(&e, 0, &["MatVecMult", "3", "not a multiple of 2"]);
    let e = genred_err("VecMatMult(y, x)", &al);
    assert_parse_err(&e, 0, &["VecMatMult", "3", "not a multiple of 2"]);
    let e = genred_err("Kron(x, y, Ind(3), Ind(1,2))", &al);
    assert_parse_err(&e, 0, &["Kron", "[3]", "[1, 2]", "rank"]);
    let e = genred_err("Kron(x, y, Ind(3), Ind(3))", &al);
    assert_parse_err(&e, 0, &["TensorDot", "dimension"]);
    let e = genred_err("Kron(x, y, Ind(3))", &al);
    assert_msg(&e, &["Kron", "Ind"]);
    let e = genred_err("Mod(x, y, x)", &al);
    assert_parse_err(&e, 0, &["Mod", "[3, 2, 3]"]);
    // Through the Rust API: a Dim error naming the op and the dimensions.
    let (x, y) = (Formula::vi(0, 3).unwrap(), Formula::vj(1, 2).unwrap());
    let e = x.add(&y).unwrap_err();
    match &e {
        KeopsError::Dim { op, msg } => {
            assert_eq!(op, "Add");
            assert!(msg.contains("[3, 2]"), "{msg}");
        }
        _ => panic!("{e:?}"),
    }
    let e = x.sqdist(&y).unwrap_err();
    assert!(matches!(e, KeopsError::Dim { .. }), "{e:?}");
    assert!(matches!(
        x.if_else(&y, &x).unwrap_err(),
        KeopsError::Dim { .. }
    ));
    assert!(matches!(
        x.clamp(&x, &y).unwrap_err(),
        KeopsError::Dim { .. }
    ));
    assert!(matches!(y.sum_t(3).unwrap_err(), KeopsError::Dim { .. }));
    assert!(matches!(
        y.elem_t(3, 0).unwrap_err(),
        KeopsError::Dim { .. }
    ));
}

#[test]
fn extract_and_elem_out_of_range() {
    let e = genred_err("Extract(x, 2, 2)", &AL);
    assert_parse_err(&e, 0, &["Extract", "2..4", "dimension 3"]);
    let e = genred_err("b + Extract(x, 0, 0)", &AL);
    assert_parse_err(&e, 4, &["Extract"]);
    let e = genred_err("Extract(x, -1, 2)", &AL);
    assert_parse_err(&e, 0, &["Extract", "-1"]);
    let e = genred_err("Elem(x, 3)", &AL);
    assert_parse_err(&e, 0, &["Elem", "3", "dimension 3"]);
    let e = genred_err("ElemT(b, 2, 2)", &AL);
    assert_parse_err(&e, 0, &["ElemT", "2"]);
    let x = Formula::vi(0, 3).unwrap();
    let e = x.extract(1, 3).unwrap_err();
    assert!(matches!(e, KeopsError::Dim { .. }), "{e:?}");
    assert_msg(&e, &["Extract", "1..4", "3"]);
    assert!(matches!(x.elem(7).unwrap_err(), KeopsError::Dim { .. }));
}

#[test]
fn alias_declared_twice_with_different_dims() {
    let e = genred_err("x", &["x = Vi(0,3)", "x = Vi(0,2)"]);
    match &e {
        KeopsError::Conflict {
            index,
            first,
            second,
        } => {
            assert_eq!(*index, 0);
            assert!(
                first.contains("Vi(0,3)") && second.contains("Vi(0,2)"),
                "{e}"
            );
        }
        _ => panic!("{e:?}"),
    }
    assert_msg(&e, &["argument 0", "Vi(0,3)", "Vi(0,2)"]);
    // The same declaration twice is fine.
    assert!(Genred::new("x", &["x = Vi(0,3)", "x = Vi(0,3)"], Reduction::Sum, 1).is_ok());
}

#[test]
fn same_index_as_vi_and_vj() {
    let e = genred_err("x - y", &["x = Vi(0,3)", "y = Vj(0,3)"]);
    assert!(matches!(e, KeopsError::Conflict { index: 0, .. }), "{e:?}");
    assert_msg(&e, &["argument 0", "Vi(0,3)", "Vj(0,3)"]);
    // Also in the formula itself, without aliases.
    let e = genred_err("Vi(1,3) - Vj(1,3)", &[]);
    assert!(matches!(e, KeopsError::Conflict { index: 1, .. }), "{e:?}");
    assert_msg(&e, &["argument 1"]);
    // And with different dimensions of the same category.
    let e = genred_err("Sum(Vi(0,3)) + Vi(0,2)", &[]);
    assert!(matches!(e, KeopsError::Conflict { index: 0, .. }), "{e:?}");
    assert_msg(&e, &["Vi(0,3)", "Vi(0,2)"]);
}

#[test]
fn unknown_alias() {
    let e = genred_err("Exp(-SqDist(x,z))", &AL);
    assert_parse_err(&e, 14, &["unknown alias", "\"z\""]);
}

#[test]
fn unbalanced_parentheses() {
    let e = genred_err("Exp(-SqDist(x,y)", &AL);
    assert_parse_err(&e, 16, &["the end"]);
    let e = genred_err("Exp(x))", &AL);
    assert_parse_err(&e, 6, &["expected an operator", "end of the formula"]);
    let e = genred_err("(x + y", &AL);
    assert_parse_err(&e, 6, &["\")\""]);
    let e = genred_err(")", &AL);
    assert_parse_err(&e, 0, &["expected a formula"]);
    let e = genred_err("", &AL);
    assert_parse_err(&e, 0, &["expected a formula", "the end"]);
    let e = genred_err("x + ", &AL);
    assert_parse_err(&e, 4, &["expected a formula"]);
}

/// A call left open: the message must say that a `)` is missing (the argument list
/// can go on with `,` or end with `)`), not only that a `,` was expected.
#[test]
fn missing_closing_parenthesis_is_named() {
    for (s, pos) in [
        ("Exp(-SqDist(x,y)", 16),
        ("Exp(x", 5),
        ("SqDist(x, y * b", 15),
    ] {
        let e = genred_err(s, &AL);
        assert_parse_err(&e, pos, &["the end", "\")\""]);
    }
}

#[test]
fn bad_alias_declarations() {
    let e = genred_err("x", &["x Vi(0,3)"]);
    assert!(matches!(e, KeopsError::Parse { .. }), "{e:?}");
    assert_msg(&e, &["alias"]);
    let e = genred_err("x", &["x = Foo(0,3)"]);
    assert!(matches!(e, KeopsError::Parse { .. }), "{e:?}");
    let e = genred_err("x", &["x = Vi(0,0)"]);
    assert!(matches!(e, KeopsError::Parse { .. }), "{e:?}");
    assert_msg(&e, &["at least 1"]);
    let e = genred_err("x", &["x = Vi(-1,3)"]);
    assert!(matches!(e, KeopsError::Parse { .. }), "{e:?}");
    let e = genred_err("x", &["x = Var(0,3,7)"]);
    assert_msg(&e, &["category"]);
    let e = genred_err("Exp", &["Exp = Vi(0,3)"]);
    assert_msg(&e, &["shadows"]);
    let e = genred_err("RatCst(1,0) * x", &AL);
    assert_msg(&e, &["denominator"]);
}

fn gauss() -> Genred {
    Genred::new("Exp(-SqDist(x,y)) * b", &AL, Reduction::Sum, 1).unwrap()
}

const X: [f32; 12] = [0.0; 12];
const Y: [f32; 15] = [0.0; 15];
const B: [f32; 5] = [1.0; 5];

fn call_err(g: &Genred, args: &[Arg<'_, f32>]) -> KeopsError {
    match g.call(args) {
        Ok(r) => panic!("should fail, got {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn missing_and_extra_arguments() {
    let g = gauss();
    let e = call_err(&g, &[Arg::new(&X, [4, 3]), Arg::new(&Y, [5, 3])]);
    assert!(matches!(e, KeopsError::Arguments(_)), "{e:?}");
    assert_msg(&e, &["3 argument(s)", "2 were given"]);
    let e = call_err(&g, &[]);
    assert!(matches!(e, KeopsError::Arguments(_)), "{e:?}");
    let extra = [1.0f32];
    let e = call_err(
        &g,
        &[
            Arg::new(&X, [4, 3]),
            Arg::new(&Y, [5, 3]),
            Arg::new(&B, [5, 1]),
            Arg::new(&extra, [1]),
        ],
    );
    assert!(matches!(e, KeopsError::Arguments(_)), "{e:?}");
    assert_msg(&e, &["argument 3 is extra"]);
    // A position that no variable uses.
    let g = Genred::new("Vi(0,3) - Vj(2,3)", &[] as &[&str], Reduction::Sum, 1).unwrap();
    let e = call_err(
        &g,
        &[
            Arg::new(&X, [4, 3]),
            Arg::new(&B, [5, 1]),
            Arg::new(&Y, [5, 3]),
        ],
    );
    assert!(matches!(e, KeopsError::Argument { index: 1, .. }), "{e:?}");
    assert_msg(&e, &["argument 1"]);
}

#[test]
fn wrong_shapes() {
    let g = gauss();
    // Wrong last dimension.
    let e = call_err(
        &g,
        &[
            Arg::new(&X, [6, 2]),
            Arg::new(&Y, [5, 3]),
            Arg::new(&B, [5, 1]),
        ],
    );
    assert!(matches!(e, KeopsError::Argument { index: 0, .. }), "{e:?}");
    assert_msg(&e, &["argument 0", "last dimension 3", "[6, 2]"]);
    // Too few axes.
    let e = call_err(
        &g,
        &[
            Arg::new(&X, [4, 3]),
            Arg::new(&Y, [15]),
            Arg::new(&B, [5, 1]),
        ],
    );
    assert!(matches!(e, KeopsError::Argument { index: 1, .. }), "{e:?}");
    assert_msg(&e, &["argument 1", "(..., n, 3)"]);
    // Data length not matching the shape.
    let e = call_err(
        &g,
        &[
            Arg::new(&X, [4, 3]),
            Arg::new(&Y, [4, 3]),
            Arg::new(&B, [5, 1]),
        ],
    );
    assert!(matches!(e, KeopsError::Argument { index: 1, .. }), "{e:?}");
    assert_msg(&e, &["argument 1", "12 values", "got 15"]);
    // Mismatched row counts between two Vj arguments.
    let b4 = [1.0f32; 4];
    let e = call_err(
        &g,
        &[
            Arg::new(&X, [4, 3]),
            Arg::new(&Y, [5, 3]),
            Arg::new(&b4, [4, 1]),
        ],
    );
    assert!(matches!(e, KeopsError::Argument { index: 2, .. }), "{e:?}");
    assert_msg(&e, &["argument 2", "4 rows", "5"]);
}

#[test]
fn mismatched_vi_rows() {
    let g = Genred::new(
        "SqDist(x,y) * a",
        &["x = Vi(0,3)", "y = Vj(1,3)", "a = Vi(2,1)"],
        Reduction::Sum,
        1,
    )
    .unwrap();
    let a = [1.0f32; 3];
    let e = call_err(
        &g,
        &[
            Arg::new(&X, [4, 3]),
            Arg::new(&Y, [5, 3]),
            Arg::new(&a, [3, 1]),
        ],
    );
    assert!(matches!(e, KeopsError::Argument { index: 2, .. }), "{e:?}");
    assert_msg(&e, &["argument 2", "Vi", "3 rows", "4"]);
}

#[test]
fn non_broadcastable_batch_dims() {
    let g = gauss();
    let x = [0.0f32; 2 * 4 * 3];
    let y = [0.0f32; 3 * 5 * 3];
    let b = [0.0f32; 5];
    let e = call_err(
        &g,
        &[
            Arg::new(&x, [2, 4, 3]),
            Arg::new(&y, [3, 5, 3]),
            Arg::new(&b, [5, 1]),
        ],
    );
    assert!(matches!(e, KeopsError::Argument { index: 1, .. }), "{e:?}");
    assert_msg(&e, &["argument 1", "batch", "[3]", "broadcast"]);
    // A parameter's batch dims too.
    let g = Genred::new(
        "SqDist(x,y) * p",
        &["x = Vi(0,3)", "y = Vj(1,3)", "p = Pm(2,1)"],
        Reduction::Sum,
        1,
    )
    .unwrap();
    let p = [1.0f32; 3];
    let e = call_err(
        &g,
        &[
            Arg::new(&x, [2, 4, 3]),
            Arg::new(&y[..30], [2, 5, 3]),
            Arg::new(&p, [3, 1]),
        ],
    );
    assert!(matches!(e, KeopsError::Argument { index: 2, .. }), "{e:?}");
    // A parameter of the wrong dimension.
    let e = call_err(
        &g,
        &[
            Arg::new(&X, [4, 3]),
            Arg::new(&Y, [5, 3]),
            Arg::new(&p[..2], [2]),
        ],
    );
    assert!(matches!(e, KeopsError::Argument { index: 2, .. }), "{e:?}");
}

#[test]
fn reduction_errors() {
    let e = Reduction::from_name("SumOfSquares", None).unwrap_err();
    assert!(matches!(e, KeopsError::Reduction { .. }), "{e:?}");
    assert_msg(&e, &["SumOfSquares", "unknown reduction", "LogSumExp"]);
    // pykeops' raw-state reductions are refused (their output is not LogSumExp's);
    // pykeops 2.3 returns that state for LogSumExpWeight too.
    for name in [
        "Max_SumShiftExp",
        "Max_SumShiftExpWeight",
        "LogSumExpWeight",
    ] {
        let e = Reduction::from_name(name, None).unwrap_err();
        assert_msg(&e, &[name, "raw state", "LogSumExp"]);
    }
    for name in ["KMin", "ArgKMin", "KMin_ArgKMin"] {
        let e = Reduction::from_name(name, None).unwrap_err();
        assert!(matches!(e, KeopsError::Reduction { .. }), "{e:?}");
        assert_msg(&e, &[name, "needs K"]);
        assert!(Reduction::from_name(name, Some(2)).is_ok());
    }
    // K = 0.
    let e = Genred::new("SqDist(x,y)", &AL, Reduction::KMin(0), 1).unwrap_err();
    assert!(matches!(e, KeopsError::Reduction { .. }), "{e:?}");
    assert_msg(&e, &["K must be at least 1"]);
    // SumSoftMaxWeight without a weight.
    let e = Genred::new("-SqDist(x,y)", &AL, Reduction::SumSoftMaxWeight, 1).unwrap_err();
    assert!(matches!(e, KeopsError::Reduction { .. }), "{e:?}");
    assert_msg(&e, &["SumSoftMaxWeight", "weight"]);
    // A weight where none is taken; a non-scalar weighted formula.
    let e = Genred::with_weight("-SqDist(x,y)", "b", &AL, Reduction::Sum, 1).unwrap_err();
    assert!(matches!(e, KeopsError::Reduction { .. }), "{e:?}");
    let e = Genred::with_weight("x - y", "b", &AL, Reduction::LogSumExp, 1).unwrap_err();
    assert!(matches!(e, KeopsError::Reduction { .. }), "{e:?}");
    assert_msg(&e, &["scalar", "3"]);
}

#[test]
fn option_errors() {
    let e = Genred::new("SqDist(x,y)", &AL, Reduction::Sum, 2).unwrap_err();
    assert!(
        matches!(&e, KeopsError::Option { name, .. } if name == "axis"),
        "{e:?}"
    );
    assert_msg(&e, &["axis", "got 2"]);
    let g = gauss();
    let args = [
        Arg::new(&X, [4, 3]),
        Arg::new(&Y, [5, 3]),
        Arg::new(&B, [5, 1]),
    ];
    let e = g
        .call_with(
            &args,
            &Options {
                threads: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(&e, KeopsError::Option { name, .. } if name == "threads"),
        "{e:?}"
    );
    assert_msg(&e, &["threads", "at least 1"]);
    // Where no GPU can run, asking for one is a clear error (tests/gpu.rs covers GPUs).
    if !keops::cuda::available() {
        let e = g
            .call_with(
                &args,
                &Options {
                    backend: Backend::Gpu,
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(matches!(&e, KeopsError::Backend { .. }), "{e:?}");
        assert_msg(&e, &["GPU", "not available"]);
        // ... and `auto` runs on the CPU.
        assert!(g.call_with(&args, &Options::default()).is_ok());
    }
    // A fused kernel demanded where none matches.
    let g2 = Genred::new("Sin(x - y) * b", &AL, Reduction::Sum, 1).unwrap();
    let e = g2
        .call_with(
            &args,
            &Options {
                kernel: keops::CpuKernel::Fused,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(&e, KeopsError::Option { name, .. } if name == "kernel"),
        "{e:?}"
    );
    // Option strings.
    assert!(matches!(
        Backend::from_name("TPU").unwrap_err(),
        KeopsError::Option { .. }
    ));
    assert!(matches!(
        keops::SumScheme::from_name("pairwise").unwrap_err(),
        KeopsError::Option { .. }
    ));
    // The other options still work.
    assert!(g
        .call_with(
            &args,
            &Options {
                backend: Backend::Cpu,
                ..Default::default()
            }
        )
        .is_ok());
    assert!(g
        .call_with(
            &args,
            &Options {
                threads: Some(1),
                ..Default::default()
            }
        )
        .is_ok());
}

/// Errors through the plain parser (no Genred) also carry positions.
#[test]
fn parser_positions() {
    let e = parse("Vi(0,3) + Bogus(Vj(1,3))", &[] as &[&str]).unwrap_err();
    assert_parse_err(&e, 10, &["Bogus"]);
    let e = parse("Vi(0,3) $ Vj(1,3)", &[] as &[&str]).unwrap_err();
    assert_parse_err(&e, 8, &["expected an operator"]);
    let e = parse("1e999999999999999999999 * Vi(0,3)", &[] as &[&str]);
    // Either a clean error or a valid formula (an infinite constant); never a panic.
    let _ = e;
    let e = parse("99999999999999999999 * Vi(0,3)", &[] as &[&str]).unwrap_err();
    assert_parse_err(&e, 0, &["out of range"]);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Arbitrary strings over the formula alphabet (and a few non-ASCII characters)
        /// never panic the parser.
        #[test]
        fn parser_never_panics(s in "[xyb(),+*/|0-9. eE\\-]{0,24}|(Exp|Vi|Pow|Extract|Sum|Var|Zero|Elem|IntCst|RatCst|SumT|ElemT|TensorDot|Ind)\\([xyb0-9,() é∑\\-]{0,12}\\)?") {
            let _ = Genred::new(&s, &AL, Reduction::Sum, 1);
            let _ = parse(&s, &AL);
        }

        /// Arbitrary alias declarations never panic either.
        #[test]
        fn aliases_never_panic(s in "[a-zé ]{0,3}=? ?(Vi|Vj|Pm|Var|Exp)?\\(?[0-9, \\-]{0,8}\\)?") {
            let _ = Genred::new("x", &[s.as_str()], Reduction::Sum, 1);
        }

        /// Arbitrary shapes never panic a call.
        #[test]
        fn shapes_never_panic(sx in proptest::collection::vec(0usize..5, 0..4),
                              sy in proptest::collection::vec(0usize..5, 0..4),
                              sb in proptest::collection::vec(0usize..5, 0..4),
                              extra in proptest::collection::vec(0usize..2, 3)) {
            let g = gauss();
            let shapes = [sx, sy, sb];
            let data: Vec<Vec<f32>> = shapes
                .iter()
                .zip(&extra)
                .map(|(s, e)| vec![0.5f32; s.iter().product::<usize>() + e])
                .collect();
            let args: Vec<Arg<'_, f32>> = data.iter().zip(&shapes).map(|(d, s)| Arg::new(d, s)).collect();
            let _ = g.call(&args);
        }
    }
}

/// A shape whose number of elements overflows `usize` must be refused (with an
/// `Argument` error), not wrap around to match the data length.
#[test]
fn shape_size_overflow_is_an_error() {
    let g = gauss();
    // 2^63 * 2 * 3 wraps to 0 in usize arithmetic: the empty slice would "match".
    let empty: [f32; 0] = [];
    let r = std::panic::catch_unwind(|| {
        g.call(&[
            Arg::new(&empty, [1usize << 63, 2, 3]),
            Arg::new(&Y, [5, 3]),
            Arg::new(&B, [5, 1]),
        ])
    });
    match r {
        Ok(Err(KeopsError::Argument { index: 0, .. })) => {}
        Ok(other) => panic!("expected an Argument error for argument 0, got {other:?}"),
        Err(_) => panic!("the call panicked instead of returning an error"),
    }
}

/// Formulas built in code are not limited in depth like parsed ones: a chain of 50,000
/// operations prints, reduces, differentiates and drops without overflowing the stack.
#[test]
fn deep_formulas_built_in_code_do_not_overflow_the_stack() {
    use keops::formula::Unary;
    let depth = 50_000;
    let x = Formula::vi(0, 1).unwrap();
    let y = Formula::vj(1, 1).unwrap();
    let mut f = x.sub(&y).unwrap();
    for k in 0..depth {
        f = if k % 2 == 0 {
            f.unary(Unary::Sin)
        } else {
            f.add(&Formula::float(0.25)).unwrap()
        };
    }
    let text = f.to_string();
    assert!(text.len() > 4 * depth, "{} characters", text.len());
    assert!(
        text.starts_with("(Sin(Sin(") || text.starts_with("(Sin(("),
        "{}",
        &text[..20]
    );
    let g = Genred::from_formula(f.clone(), None, Reduction::Sum, 1).unwrap();
    let (xs, ys) = ([0.1f64, 0.7, -0.3], [0.2f64, -0.5]);
    let args = [Arg::new(&xs, [3, 1]), Arg::new(&ys, [2, 1])];
    let got = g.call(&args).unwrap().values.unwrap();
    let want = keops::reference::reduce(&g, &args).unwrap().values.unwrap();
    for (a, b) in got.data.iter().zip(&want.data) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let dg = keops::formula::diff::grad(&f, &x, &Formula::int(1)).unwrap();
    assert!(dg.node_count() > depth);
    drop((f, g, dg));
}
