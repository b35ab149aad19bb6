//! Every op of the op table (`keops::formula::ops::all_specs()`), reduced with `Sum` over
//! both axes, in f32 and f64, on both CPU code paths (the tile program and the default
//! `Options`, which may pick a fused kernel), compared with the f64 oracle
//! `keops::reference::reduce` on the same data.
//!
//! Each op is used in formulas where
//! - its operands depend on the pair (`x - y`, ...): the op runs on tiles, once per row;
//! - its operands are i-only, j-only or parameters only, the formula being multiplied by
//!   a pair-dependent kernel: the op is hoisted (a per-row scalar step, a per-tile
//!   instruction shared by a block of rows, or a per-call parameter step, depending on
//!   the side and the axis);
//! - binary and ternary ops also mix dimension-1 and dimension-3 operands and per-row
//!   scalars with tiles.
//!
//! The data are on a grid (`k / 64`, `|k| <= 64`) so that differences, squares and
//! short sums are exact in f32: f32 and f64 then see the same operands for the
//! comparisons (`ArgMin`, `Sign`, `Step`, `IfElse`, ...) and ties break the same way, and
//! values such as 0 (for `Sign`, `Step`, `ReLU`, `XLogX`, `Rsqrt`, `Sqrt`) do occur.
//!
//! Tolerances (see `common::TOL_F64` / `common::TOL_F32`): `|got - want| <= rtol *
//! (|want| + scale) + atol`, with `scale` the sum over the reduced axis of the largest
//! absolute value of any node of the formula at that pair (the scale of the rounding
//! errors of a sum whose terms may cancel). f64: rtol = atol = 1e-10 (only the order of
//! the summation and ulp-level differences of the elementary functions differ). f32:
//! rtol = 1e-4, atol = 1e-6: each op rounds to f32 (6e-8) and the elementary functions
//! are accurate to a few ulps; with formulas of ~10 ops of moderate condition the error of
//! a term stays ~1e-5 relative to its magnitude, and the block summation adds ~1e-6.

mod common;

use common::*;
use keops::formula::ops::all_specs;
use keops::{CpuKernel, Genred, Options, Reduction};
use std::collections::BTreeSet;

const ALIASES: [&str; 7] = [
    "x = Vi(0,3)",
    "y = Vj(1,3)",
    "a = Vi(2,1)",
    "b = Vj(3,1)",
    "p = Pm(4,1)",
    "q = Pm(5,3)",
    "S = Pm(6,9)",
];

/// The pair-dependent kernel that makes a formula with hoisted operands a real pair
/// formula.
const K: &str = "Exp(-SqDist(x,y))";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Operands depend on both `i` and `j`.
    Pair,
    /// Operands depend on `i` (and parameters) only.
    I,
    /// Operands depend on `j` (and parameters) only.
    J,
    /// Operands depend on parameters only.
    Param,
}

/// Operand expressions for one side.
struct Operands {
    /// A dimension-3 operand.
    v3: &'static str,
    /// Another dimension-3 operand.
    w3: &'static str,
    /// A dimension-1 operand.
    v1: &'static str,
    /// Another dimension-1 operand.
    w1: &'static str,
    /// Positive operands (>= 1) of dimensions 3 and 1.
    pos3: &'static str,
    pos1: &'static str,
    /// Non-negative operands (0 occurs with the grid data) of dimensions 3 and 1.
    nn3: &'static str,
    nn1: &'static str,
    /// A dimension-9 operand (for the matrix weight of `WeightedSqNorm`).
    v9: &'static str,
}

fn operands(side: Side) -> Operands {
    match side {
        Side::Pair => Operands {
            v3: "(x - y)",
            w3: "(x * y)",
            v1: "(a - b)",
            w1: "(a * b)",
            pos3: "(Square(x - y) + 1)",
            pos1: "(Square(a - b) + 1)",
            nn3: "Square(x - y)",
            nn1: "Square(a - b)",
            v9: "Concat(Concat(x - y, x * y), y - x)",
        },
        Side::I => Operands {
            v3: "(x + q)",
            w3: "(x * q)",
            v1: "(a + p)",
            w1: "(a * p)",
            pos3: "(Square(x) + 1)",
            pos1: "(Square(a) + 1)",
            nn3: "Square(x)",
            nn1: "Square(a)",
            v9: "Concat(Concat(x, x * q), x - q)",
        },
        Side::J => Operands {
            v3: "(y - q)",
            w3: "(y * q)",
            v1: "(b - p)",
            w1: "(b * p)",
            pos3: "(Square(y) + 1)",
            pos1: "(Square(b) + 1)",
            nn3: "Square(y)",
            nn1: "Square(b)",
            v9: "Concat(Concat(y, y * q), y + q)",
        },
        Side::Param => Operands {
            v3: "(q - p)",
            w3: "(q * p)",
            v1: "(p - 1)",
            w1: "(p * p)",
            pos3: "(Square(q) + 1)",
            pos1: "(Square(p) + 1)",
            nn3: "Square(q)",
            nn1: "Square(p)",
            v9: "(S - p)",
        },
    }
}

/// The formulas (before multiplication by the kernel for hoisted sides) that exercise
/// `name` with operands of `side`. Every name of the op table must have a case here.
fn op_cases(name: &str, side: Side) -> Option<Vec<String>> {
    let o = operands(side);
    let (v3, w3, v1, w1) = (o.v3, o.w3, o.v1, o.w1);
    let (pos3, pos1, nn3, nn1, v9) = (o.pos3, o.pos1, o.nn3, o.nn1, o.v9);
    let pair = side == Side::Pair;
    let c6 = format!("Concat({v3}, {w3})");
    let c2 = format!("Concat({v1}, {w1})");
    let (c6, c2) = (c6.as_str(), c2.as_str());
    // A dimension-3 variable that the side's operands depend on.
    let u3 = match side {
        Side::Pair | Side::I => "x",
        Side::J => "y",
        Side::Param => "q",
    };
    let f = |s: String| s;
    let mut v: Vec<String> = match name {
        // Variables and constants: no operands; used in formulas of each side.
        "Vi" => match side {
            Side::Pair => vec![f("Vi(0,3) - y".into()), f("Vi(2,1) * y".into())],
            _ => vec![f(format!("Vi(0,3) * {v1}")), f(format!("Vi(2,1) + {v3}"))],
        },
        "Vj" => match side {
            Side::Pair => vec![f("x - Vj(1,3)".into()), f("Vj(3,1) * x".into())],
            _ => vec![f(format!("Vj(1,3) * {v1}")), f(format!("Vj(3,1) + {v3}"))],
        },
        "Pm" => vec![f(format!("Pm(5,3) * {v3}")), f(format!("Pm(4,1) - {v1}"))],
        "Var" => match side {
            Side::Pair => vec![f("Var(0,3,0) - Var(1,3,1) + Var(5,3,2)".into())],
            _ => vec![
                f(format!("Var(0,3,0) * {v1}")),
                f(format!("Var(1,3,1) * {v1}")),
                f(format!("Var(4,1,2) + {v3}")),
            ],
        },
        "IntCst" => vec![
            f(format!("IntCst(3) * {v3}")),
            f(format!("{v1} + IntCst(-2)")),
        ],
        "RatCst" => vec![
            f(format!("RatCst(2,7) * {v3}")),
            f(format!("{v1} + RatCst(-3,4)")),
        ],
        "IntInv" => vec![
            f(format!("IntInv(3) * {v3}")),
            f(format!("{v1} - IntInv(5)")),
        ],
        "Zero" => vec![
            f(format!("Concat(Zero(2), {v1})")),
            f(format!("Concat({v1}, Zero(2)) + {v3}")),
        ],
        // Elementwise unary ops.
        "Minus" | "Square" | "Abs" | "Sign" | "Step" | "ReLU" | "Sin" | "Cos" | "Exp" => {
            vec![f(format!("{name}({v3})")), f(format!("{name}({v1})"))]
        }
        "Sqrt" | "XLogX" => vec![
            f(format!("{name}({nn3})")),
            f(format!("{name}({pos1})")),
            f(format!("{name}({pos3})")),
        ],
        "Rsqrt" => vec![f(format!("Rsqrt({pos3})")), f(format!("Rsqrt({nn1})"))],
        // 0 occurs in `nn3` (where both ops take their value at 0).
        "SinXDivX" | "Sinc" | "Atan" => vec![
            f(format!("{name}({v3})")),
            f(format!("{name}({v1})")),
            f(format!("{name}({nn3})")),
        ],
        // Exact on the grid data in both precisions (so both floor alike).
        "Floor" => vec![f(format!("Floor({v3})")), f(format!("Floor(3 * {w1})"))],
        "Asin" | "Acos" => vec![
            f(format!("{name}({w3})")),
            f(format!("{name}(0.5 * {v1})")),
            f(format!("{name}(0.5 * {v3})")),
        ],
        "Round" => vec![
            f(format!("Round({v3}, 1)")),
            f(format!("Round({w1}, 0)")),
            f(format!("Round({w3}, 2)")),
        ],
        "DiffClampInt" => vec![
            f(format!("DiffClampInt(2 * {v3}, -1, 1)")),
            f(format!("DiffClampInt(3 * {v1}, 0, 2)")),
        ],
        "Inv" | "Log" => vec![f(format!("{name}({pos3})")), f(format!("{name}({pos1})"))],
        "Pow" => vec![
            f(format!("Pow({v3}, 3)")),
            f(format!("Pow({v1}, 2)")),
            f(format!("Pow({v3}, 0)")),
            f(format!("Pow({pos3}, -2)")),
            f(format!("Pow({pos1}, -1)")),
        ],
        "ClampInt" => vec![
            f(format!("ClampInt(2 * {v3}, -1, 1)")),
            f(format!("ClampInt(3 * {v1}, 0, 2)")),
        ],
        // Binary ops, with dimension-1 broadcasting both ways.
        "Add" | "Subtract" | "Mult" => {
            let mut c = vec![
                f(format!("{name}({v3}, {w3})")),
                f(format!("{name}({v1}, {v3})")),
                f(format!("{name}({v3}, {v1})")),
                f(format!("{name}({v1}, {w1})")),
            ];
            if pair {
                // Per-row scalars (x, a) with tiles (y, b), both orders and dimensions.
                c.extend([
                    format!("{name}(x, y)"),
                    format!("{name}(y, x)"),
                    format!("{name}(a, y)"),
                    format!("{name}(y, a)"),
                    format!("{name}(b, x)"),
                    format!("{name}(x, b)"),
                ]);
            }
            c
        }
        "Divide" => {
            let mut c = vec![
                f(format!("Divide({v3}, {pos3})")),
                f(format!("Divide({v1}, {pos3})")),
                f(format!("Divide({v3}, {pos1})")),
                f(format!("Divide({v1}, {pos1})")),
            ];
            if pair {
                c.extend([
                    "Divide(x, Square(y) + 1)".to_string(),
                    "Divide(y, Square(x) + 1)".to_string(),
                    "Divide(a, Square(y) + 1)".to_string(),
                    "Divide(y, Square(a) + 1)".to_string(),
                    "Divide(b, Square(x) + 1)".to_string(),
                    "Divide(x, Square(b) + 1)".to_string(),
                ]);
            }
            c
        }
        "Atan2" | "LessThan" | "LessOrEqual" | "Equal" | "NotEqual" => {
            let mut c = vec![
                f(format!("{name}({v3}, {w3})")),
                f(format!("{name}({v1}, {v3})")),
                f(format!("{name}({v3}, {w1})")),
                f(format!("{name}({v1}, {w1})")),
                // Equal operands occur.
                f(format!("{name}({v3}, Round({v3}, 0))")),
            ];
            if pair {
                c.extend([
                    format!("{name}(x, y)"),
                    format!("{name}(a, y)"),
                    format!("{name}(y, a)"),
                ]);
            }
            c
        }
        // The quotient (x - d) / n is an exact integer or far from one on the grid data,
        // so that f32 and f64 floor it alike.
        "Mod" => {
            let mut c = vec![
                f(format!("Mod({v3}, {pos1}, {v1})")),
                f(format!("Mod({v1}, {pos3}, {w3})")),
                f(format!("Mod({w3}, {pos3}, {v3})")),
            ];
            if pair {
                c.push("Mod(x, Square(b) + 1, a)".to_string());
            }
            c
        }
        "Powf" => {
            let mut c = vec![
                f(format!("Powf({pos3}, {v3})")),
                f(format!("Powf({pos3}, {v1})")),
                f(format!("Powf({pos1}, {v3})")),
                f(format!("Powf({pos1}, {w1})")),
            ];
            if pair {
                c.extend([
                    "Powf(Square(x) + 1, y)".to_string(),
                    "Powf(Square(y) + 1, x)".to_string(),
                    "Powf(Square(a) + 1, y)".to_string(),
                ]);
            }
            c
        }
        // Ternary ops, with dimension-1 broadcasting.
        "IfElse" => {
            let mut c = vec![
                f(format!("IfElse({v3}, {w3}, {v3})")),
                f(format!("IfElse({v1}, {v3}, {w3})")),
                f(format!("IfElse({v3}, {v1}, {w1})")),
                f(format!("IfElse({v1}, {w1}, {v3})")),
                f(format!("IfElse({v3}, {w3}, {v1})")),
            ];
            if pair {
                c.extend([
                    "IfElse(x - y, a, b)".to_string(),
                    "IfElse(a - b, x, y)".to_string(),
                    "IfElse(b, x, y)".to_string(),
                    "IfElse(a, y, x)".to_string(),
                ]);
            }
            c
        }
        "Clamp" => {
            let mut c = vec![
                f(format!("Clamp({v3}, {w3}, {pos3})")),
                f(format!("Clamp({v3}, {v1}, {pos1})")),
                f(format!("Clamp({v1}, {w3}, {pos3})")),
                f(format!("Clamp({v3}, {w1}, {pos3})")),
                f(format!("Clamp({v1}, {w1}, {pos1})")),
            ];
            if pair {
                c.extend([
                    "Clamp(x, b - 0.5, b + 0.5)".to_string(),
                    "Clamp(y, a - 0.5, a + 0.5)".to_string(),
                    "Clamp(b, x, Square(y) + 1)".to_string(),
                ]);
            }
            c
        }
        // Vector ops.
        "Sum" => vec![
            f(format!("Sum({v3})")),
            f(format!("Sum(Concat({v3}, {w1}))")),
        ],
        "SumT" => vec![f(format!("SumT({v1}, 3)")), f(format!("SumT({v1}, 2)"))],
        "SqNorm2" | "Norm2" | "Normalize" => {
            vec![f(format!("{name}({v3})")), f(format!("{name}({w3})"))]
        }
        "SqDist" | "Scalprod" => {
            let mut c = vec![f(format!("{name}({v3}, {w3})"))];
            if name == "SqDist" {
                c.push(f(format!("SqDist({v1}, {v3})")));
            }
            if pair {
                c.push(format!("{name}(x, y)"));
                c.push(format!("{name}(y, x)"));
            }
            c
        }
        "WeightedSqNorm" => {
            let mut c = vec![
                f(format!("WeightedSqNorm({v1}, {v3})")),
                f(format!("WeightedSqNorm({w3}, {v3})")),
                f(format!("WeightedSqNorm({v9}, {v3})")),
                f(format!("WeightedSqNorm(S, {v3})")),
            ];
            if pair {
                c.extend([
                    "WeightedSqNorm(b, x)".to_string(),
                    "WeightedSqNorm(x, y)".to_string(),
                    "WeightedSqNorm(S * b, x)".to_string(),
                ]);
            }
            c
        }
        "WeightedSqDist" => {
            let mut c = vec![
                f(format!("WeightedSqDist({v1}, {v3}, {w3})")),
                f(format!("WeightedSqDist({w3}, {v3}, q)")),
                f(format!("WeightedSqDist({v9}, {v3}, {w3})")),
            ];
            if pair {
                c.push("WeightedSqDist(q, x, y)".to_string());
                c.push("WeightedSqDist(S, x, y)".to_string());
            }
            c
        }
        "SqNormIso" => vec![f(format!("SqNormIso({v1}, {v3})"))],
        "SqNormDiag" => vec![f(format!("SqNormDiag({w3}, {v3})"))],
        "SymSqNorm" => {
            let mut c = vec![f(format!("SymSqNorm({v9}, {v3})"))];
            if pair {
                c.push("SymSqNorm(S, x - y)".to_string());
            }
            c
        }
        "MatVecMult" => {
            let mut c = vec![
                f(format!("MatVecMult({v9}, {v3})")),
                f(format!(
                    "MatVecMult(Concat({v3}, {w3}), Extract({w3}, 0, 2))"
                )),
            ];
            if pair {
                c.push("MatVecMult(S, x - y)".to_string());
                c.push("MatVecMult(Concat(x, y), Extract(y, 1, 2))".to_string());
            }
            c
        }
        "VecMatMult" => {
            let mut c = vec![
                f(format!("VecMatMult({v3}, {v9})")),
                f(format!(
                    "VecMatMult(Extract({w3}, 0, 2), Concat({v3}, {w3}))"
                )),
            ];
            if pair {
                c.push("VecMatMult(x - y, S)".to_string());
                c.push("VecMatMult(Extract(y, 1, 2), Concat(x, y))".to_string());
            }
            c
        }
        "TensorProd" => {
            let mut c = vec![
                f(format!("TensorProd({v3}, {w1})")),
                f(format!("TensorProd({v3}, Extract({w3}, 1, 2))")),
            ];
            if pair {
                c.push("TensorProd(x, y)".to_string());
            }
            c
        }
        "Kron" => {
            let mut c = vec![
                f(format!("Kron({v3}, {w3}, Ind(3), Ind(3))")),
                f(format!(
                    "Kron({v9}, Concat({v3}, {w1}), Ind(3,3), Ind(2,2))"
                )),
                f(format!(
                    "Kron(Concat({v3}, {w1}), Concat({v3}, {w3}), Ind(1,2,2), Ind(2,1,3))"
                )),
            ];
            if pair {
                c.push("Kron(x, y, Ind(3,1), Ind(1,3))".to_string());
            }
            c
        }
        "ExtractT" => vec![
            f(format!("ExtractT({v3}, 2, 6)")),
            f(format!("ExtractT({v1}, 0, 3)")),
        ],
        "DifferenceMatrix" => vec![
            f(format!("DifferenceMatrix({v3}, {w3})")),
            f(format!("DifferenceMatrix({v1}, Extract({w3}, 0, 2))")),
        ],
        "BSpline" => vec![
            f(format!("BSpline(Concat({v3}, {w3}), {v1}, 2)")),
            f(format!("BSpline(Concat({v3}, {w3}), {w1}, 0)")),
            f(format!(
                "BSpline(Concat(Concat({v3}, {w3}), {w3} + 1), {v1}, 3)"
            )),
        ],
        "SoftDTW_SqDist" => vec![
            f(format!("SoftDTW_SqDist({v3}, {w3}, {pos1})")),
            f(format!("SoftDTW_SqDist({v1}, Concat({w3}, {v3}), {pos1})")),
        ],
        "AutoFactorize" => vec![f(format!(
            "AutoFactorize(Exp(-SqNorm2({v3})) * SqNorm2({v3}))"
        ))],
        "Factorize" => vec![f(format!(
            "Factorize(Exp(-SqNorm2({v3})) * Sin(SqNorm2({v3})), SqNorm2({v3}))"
        ))],
        // Complex ops: `c6` holds 3 complex numbers, `c2` one (which broadcasts).
        "ComplexReal" | "ComplexImag" | "Conj" | "ComplexExp" | "ComplexSquareAbs"
        | "ComplexAbs" | "ComplexAngle" | "ComplexSum" => {
            vec![f(format!("{name}({c6})")), f(format!("{name}({c2})"))]
        }
        "Real2Complex" | "Imag2Complex" | "ComplexExp1j" => {
            vec![f(format!("{name}({v3})")), f(format!("{name}({v1})"))]
        }
        "ComplexAdd" | "ComplexSubtract" | "ComplexMult" => {
            let mut c = vec![
                f(format!("{name}({c6}, Concat({w3}, {v3}))")),
                f(format!("{name}({c2}, {c6})")),
                f(format!("{name}({c6}, {c2})")),
            ];
            if pair {
                c.push(format!("{name}(Concat(x, a), Concat(y, b))"));
                c.push(format!("{name}(Concat(a, b), Concat(x, y))"));
            }
            c
        }
        // Denominators away from 0.
        "ComplexDivide" => {
            let mut c = vec![
                f(format!("ComplexDivide({c6}, Concat({pos3}, {w3}))")),
                f(format!("ComplexDivide({c6}, Concat({pos1}, {w1}))")),
                f(format!("ComplexDivide({c2}, Concat({w3}, {pos3}))")),
            ];
            if pair {
                c.push("ComplexDivide(Concat(x, a), Concat(Square(y) + 1, b))".to_string());
            }
            c
        }
        "ComplexRealScal" => vec![
            f(format!("ComplexRealScal({v1}, {c6})")),
            f(format!("ComplexRealScal({c6}, {w1})")),
        ],
        "ComplexSumT" => vec![
            f(format!("ComplexSumT({c2}, 6)")),
            f(format!("ComplexSumT({c2}, 2)")),
        ],
        "Extract" => {
            let mut c = vec![
                f(format!("Extract({v3}, 1, 2)")),
                f(format!("Extract({v3}, 2, 1)")),
                f(format!("Extract(Concat({v3}, {w3}), 2, 3)")),
            ];
            if pair {
                c.push("Extract(x, 0, 2) * Extract(y, 1, 2)".to_string());
                // Views into tile registers, multiplied (and summed in one pass).
                c.push("Extract(x - y, 0, 2) * Extract(x * y, 1, 2)".to_string());
            }
            c
        }
        "Concat" => {
            let mut c = vec![
                f(format!("Concat({v3}, {v1})")),
                f(format!("Concat({w1}, {w3})")),
            ];
            if pair {
                c.push("Concat(x, y)".to_string());
                c.push("Concat(b, a)".to_string());
            }
            c
        }
        "Elem" => {
            let mut c = vec![f(format!("Elem({v3}, 0)")), f(format!("Elem({w3}, 2)"))];
            if pair {
                c.push("Elem(x, 1) * Elem(y, 2)".to_string());
                c.push("Elem(x - y, 1) * Elem(x * y, 2)".to_string());
            }
            c
        }
        "ElemT" => vec![
            f(format!("ElemT({v1}, 3, 1)")),
            f(format!("ElemT({w1}, 2, 0)")),
        ],
        "TensorDot" => {
            let mut c = vec![
                f(format!("TensorDot({v3}, {w3}, Ind(3), Ind(3), Ind(), Ind())")),
                f(format!(
                    "TensorDot(Concat({v3}, {w3}), {w3}, Ind(2,3), Ind(3), Ind(1), Ind(0))"
                )),
                f(format!(
                    "TensorDot(Concat({v3}, {w3}), Concat({w3}, {v3}), Ind(3,2), Ind(2,3), Ind(0), Ind(1), Ind(1,0))"
                )),
            ];
            if pair {
                c.push("TensorDot(x, y, Ind(3), Ind(3), Ind(0), Ind(0))".to_string());
                c.push(
                    "TensorDot(Concat(x, y), x - y, Ind(2,3), Ind(3), Ind(), Ind(), Ind(2,0,1))"
                        .to_string(),
                );
            }
            c
        }
        // Integer-valued operands: f32 and f64 round them alike.
        "OneHot" => vec![
            f(format!("OneHot(Sign({v1}) + 1, 3)")),
            f(format!("OneHot(Step({w1}) * 2 - 1, 2)")),
        ],
        "Min" | "Max" | "ArgMin" | "ArgMax" => {
            let mut c = vec![
                f(format!("{name}({v3})")),
                f(format!("{name}(Concat({v3}, {w3}))")),
            ];
            if pair {
                c.push(format!("{name}(Concat(x, y))"));
            }
            c
        }
        // Differential operators: the derivative formulas run on the engines like any
        // other (their correctness as derivatives is tests/autodiff.rs' business).
        "Grad" => vec![
            f(format!("Grad(Exp(-SqNorm2({v3})) * {w1}, {u3}, {v1})")),
            f(format!("Grad(Sin({w3}) * {v1}, {u3}, Cos({v3}))")),
        ],
        "GradFromPos" => vec![f(format!("GradFromPos(Exp(-SqNorm2({v3})), {u3}, 2)"))],
        "Diff" => vec![f(format!("Diff(Sin({w3}) * {v1}, {u3}, {v3})"))],
        "Divergence" => vec![f(format!("Divergence(Sin({w3}) * {v1}, {u3})"))],
        "Laplacian" => vec![f(format!("Laplacian(Exp(-SqNorm2({v3})) * {w1}, {u3})"))],
        "GradMatrix" => vec![f(format!("GradMatrix(Sin({w3}) * {v1}, {u3})"))],
        "TraceOperator" => vec![f(format!("TraceOperator(q * Exp(-SqNorm2({v3})), q)"))],
        _ => return None,
    };
    if side != Side::Pair {
        // Make the formula pair-dependent while the op keeps its hoisted operands.
        v = v.into_iter().map(|s| format!("({s}) * {K}")).collect();
    }
    Some(v)
}

const SIDES: [Side; 4] = [Side::Pair, Side::I, Side::J, Side::Param];

/// Grid data for the aliases: `N` rows of `x`, `a`; `M` rows of `y`, `b`.
fn inputs(n: usize, m: usize, seed: u64) -> Inputs {
    let mut r = Rng::new(seed);
    let mut inp = Inputs::new();
    inp.push(&[n, 3], || r.grid(64, 64.0))
        .push(&[m, 3], || r.grid(64, 64.0))
        .push(&[n, 1], || r.grid(64, 64.0))
        .push(&[m, 1], || r.grid(64, 64.0))
        .push(&[1], || r.grid(64, 64.0))
        .push(&[3], || r.grid(64, 64.0))
        .push(&[9], || r.grid(64, 64.0));
    inp
}

fn kernels() -> [(&'static str, Options); 2] {
    [
        (
            "TileProgram",
            Options {
                kernel: CpuKernel::TileProgram,
                ..Default::default()
            },
        ),
        ("default", Options::default()),
    ]
}

/// Checks one formula: both axes, f32 and f64, both kernels. Returns the largest f32
/// error relative to the magnitude.
fn check_formula(formula: &str, inp: &Inputs) -> f64 {
    let mut worst32 = 0.0f64;
    let gs = [1, 0].map(|axis| {
        Genred::new(formula, &ALIASES, Reduction::Sum, axis)
            .unwrap_or_else(|e| panic!("{formula}: {e}"))
    });
    let oracles = sum_oracles(&gs, inp);
    for (g, SumOracle { want, scale }) in gs.iter().zip(&oracles) {
        let axis = g.axis();
        for (kname, opts) in kernels() {
            let ctx = format!("{formula} [axis {axis}, {kname}");
            let got64 = run_as::<f64>(g, inp, &opts).unwrap_or_else(|e| panic!("{ctx}, f64]: {e}"));
            check_values(&got64, want, Some(scale), TOL_F64, &format!("{ctx}, f64]"));
            let got32 = run_as::<f32>(g, inp, &opts).unwrap_or_else(|e| panic!("{ctx}, f32]: {e}"));
            let e = check_values(&got32, want, Some(scale), TOL_F32, &format!("{ctx}, f32]"));
            worst32 = worst32.max(e);
        }
    }
    worst32
}

/// Runs every case of the names selected by `pick`.
fn check_ops(pick: impl Fn(&str) -> bool) {
    // N = 37 rows (crosses the 32-row blocks), M = 300 (crosses the tiles of 32..256
    // lanes, not a multiple of 16); and tiny sizes.
    let big = inputs(37, 300, 7);
    let tiny = inputs(1, 1, 11);
    let odd = inputs(3, 17, 13);
    let mut n = 0;
    for spec in all_specs().filter(|s| pick(s.name)) {
        let mut worst = 0.0f64;
        for side in SIDES {
            for formula in op_cases(spec.name, side)
                .unwrap_or_else(|| panic!("no test case for op {}", spec.name))
            {
                worst = worst.max(check_formula(&formula, &big));
                n += 1;
            }
        }
        // Tiny problems once per op (pair side).
        if let Some(first) = op_cases(spec.name, Side::Pair).and_then(|c| c.into_iter().next()) {
            check_formula(&first, &tiny);
            check_formula(&first, &odd);
        }
        println!("{:>16}: worst f32 error / magnitude {worst:.2e}", spec.name);
    }
    println!("{n} formulas checked");
}

fn is_unary(name: &str) -> bool {
    all_specs().any(|s| s.name == name && s.formulas == 1 && s.ints == 0)
        && !is_differential(name)
        && !VECTOR.contains(&name)
        && !COMPLEX.contains(&name)
}

fn is_differential(name: &str) -> bool {
    matches!(
        name,
        "Grad"
            | "GradFromPos"
            | "Diff"
            | "Divergence"
            | "Laplacian"
            | "GradMatrix"
            | "TraceOperator"
    )
}

#[test]
fn differential_operators() {
    check_ops(is_differential);
}

#[test]
fn elementwise_unary_ops() {
    check_ops(is_unary);
}

/// Variables, constants and elementwise ops with integer parameters.
const PARAMETRISED: &[&str] = &[
    "Vi",
    "Vj",
    "Pm",
    "Var",
    "IntCst",
    "RatCst",
    "IntInv",
    "Zero",
    "Pow",
    "ClampInt",
    "DiffClampInt",
    "Round",
];

/// Elementwise ops of two or three operands.
const BINARY_TERNARY: &[&str] = &[
    "Add",
    "Subtract",
    "Mult",
    "Divide",
    "Powf",
    "Atan2",
    "LessThan",
    "LessOrEqual",
    "Equal",
    "NotEqual",
    "IfElse",
    "Clamp",
    "Mod",
];

/// Complex ops.
const COMPLEX: &[&str] = &[
    "ComplexReal",
    "ComplexImag",
    "Real2Complex",
    "Imag2Complex",
    "ComplexAdd",
    "ComplexSubtract",
    "ComplexMult",
    "ComplexDivide",
    "ComplexRealScal",
    "Conj",
    "ComplexExp",
    "ComplexExp1j",
    "ComplexSquareAbs",
    "ComplexAbs",
    "ComplexAngle",
    "ComplexSum",
    "ComplexSumT",
];

/// Ops on whole vectors.
const VECTOR: &[&str] = &[
    "Sum",
    "SumT",
    "SqNorm2",
    "Norm2",
    "Normalize",
    "SqDist",
    "Scalprod",
    "WeightedSqNorm",
    "WeightedSqDist",
    "SqNormIso",
    "SqNormDiag",
    "SymSqNorm",
    "Extract",
    "Concat",
    "Elem",
    "ElemT",
    "OneHot",
    "TensorDot",
    "MatVecMult",
    "VecMatMult",
    "TensorProd",
    "Kron",
    "Factorize",
    "AutoFactorize",
    "ExtractT",
    "DifferenceMatrix",
    "BSpline",
    "SoftDTW_SqDist",
    "Min",
    "Max",
    "ArgMin",
    "ArgMax",
];

#[test]
fn complex_ops() {
    check_ops(|n| COMPLEX.contains(&n));
}

#[test]
fn variables_constants_and_parametrised_ops() {
    check_ops(|n| PARAMETRISED.contains(&n));
}

#[test]
fn binary_and_ternary_ops() {
    check_ops(|n| BINARY_TERNARY.contains(&n));
}

#[test]
fn vector_ops() {
    check_ops(|n| VECTOR.contains(&n));
}

/// The op tests' oracle, [`sum_oracles`] (both axes from one evaluation per pair), is
/// `reference::reduce` with `sum_magnitude`'s scales, bit for bit: on the first case of
/// every op, and on batched arguments.
#[test]
fn the_one_pass_oracle_is_the_reference_reduction() {
    let mut batched = Inputs::new();
    let mut r = Rng::new(5);
    batched
        .push(&[2, 5, 3], || r.grid(64, 64.0))
        .push(&[1, 7, 3], || r.grid(64, 64.0))
        .push(&[2, 5, 1], || r.grid(64, 64.0))
        .push(&[2, 7, 1], || r.grid(64, 64.0))
        .push(&[1], || r.grid(64, 64.0))
        .push(&[2, 3], || r.grid(64, 64.0))
        .push(&[9], || r.grid(64, 64.0));
    let plain = inputs(6, 11, 3);
    let mut checked = 0;
    for spec in all_specs() {
        let Some(formula) = op_cases(spec.name, Side::Pair).and_then(|c| c.into_iter().next())
        else {
            continue;
        };
        for inp in [&plain, &batched] {
            let gs =
                [1, 0].map(|axis| Genred::new(&formula, &ALIASES, Reduction::Sum, axis).unwrap());
            let oracles = sum_oracles(&gs, inp);
            for (g, o) in gs.iter().zip(&oracles) {
                let want = keops::reference::reduce(g, &inp.args_f64()).unwrap();
                let (a, b) = (
                    o.want.values.as_ref().unwrap(),
                    want.values.as_ref().unwrap(),
                );
                assert_eq!(a.shape, b.shape, "{formula} axis {}", g.axis());
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a.data), bits(&b.data), "{formula} axis {}", g.axis());
                let scale = sum_magnitude(g, inp);
                assert_eq!(o.scale, scale, "{formula} axis {}", g.axis());
                checked += 1;
            }
        }
    }
    assert!(checked > 4 * 50, "{checked} checks");
}

/// Every name of the op table has cases (so adding an op without a test fails), each
/// test group above covers a disjoint part of the table and together they cover it all,
/// and every op appears with tile operands and with hoisted operands.
#[test]
fn every_op_of_the_table_is_tested() {
    let groups: [&dyn Fn(&str) -> bool; 6] = [
        &is_unary,
        &|n: &str| COMPLEX.contains(&n),
        &|n: &str| PARAMETRISED.contains(&n),
        &|n: &str| BINARY_TERNARY.contains(&n),
        &|n: &str| VECTOR.contains(&n),
        &is_differential,
    ];
    let mut names = BTreeSet::new();
    for spec in all_specs() {
        assert!(
            names.insert(spec.name),
            "op {} listed twice in the table",
            spec.name
        );
        let in_groups = groups.iter().filter(|g| g(spec.name)).count();
        assert_eq!(
            in_groups, 1,
            "op {} is in {in_groups} test groups (expected exactly 1)",
            spec.name
        );
        for side in SIDES {
            let cases = op_cases(spec.name, side)
                .unwrap_or_else(|| panic!("no test case for op {}", spec.name));
            assert!(!cases.is_empty(), "op {}: no case for {side:?}", spec.name);
            for c in &cases {
                // Every case parses, mentions the op, and is a pair formula.
                let g = Genred::new(c, &ALIASES, Reduction::Sum, 1)
                    .unwrap_or_else(|e| panic!("{c}: {e}"));
                assert!(
                    c.contains(&format!("{}(", spec.name)),
                    "case {c} does not use {}",
                    spec.name
                );
                let vars = g.formula().variables();
                let cats: BTreeSet<_> = vars
                    .iter()
                    .filter_map(|v| v.as_var())
                    .map(|v| v.0 as u8)
                    .collect();
                assert!(
                    cats.contains(&0) && cats.contains(&1),
                    "case {c} is not pair-dependent"
                );
            }
        }
    }
    // The table's size as of writing: a smaller table means a lost op.
    assert!(names.len() >= 97, "only {} ops in the table", names.len());
}

/// Mixed broadcasting through the Rust constructors as well (not only the parser): the
/// dimension-1 operand may come first or last, and the result has dimension 3.
#[test]
fn broadcasting_dimensions() {
    for (s, d) in [
        ("a + x", 3),
        ("x - b", 3),
        ("b * x", 3),
        ("x / (Square(b) + 1)", 3),
        ("IfElse(a, x, y)", 3),
        ("IfElse(x, a, b)", 3),
        ("Clamp(a, x, y)", 3),
        ("Clamp(x, a, b)", 3),
        ("SqDist(a, y)", 1),
    ] {
        let g = Genred::new(s, &ALIASES, Reduction::Sum, 1).unwrap();
        assert_eq!(g.formula().dim, d, "{s}");
    }
}

/// Special values: every elementwise op (and the coordinate reductions) on all
/// combinations of `-inf, -2, -0, 0, 0.5, 2, +inf, NaN`, one pair per output, computed
/// on tiles (operands on the reduced side) and as per-row scalars (operands on the
/// output side), f32 and f64, both kernels. The engine must agree with the oracle:
/// same NaN-ness, same infinities, finite values within tolerance.
const SPECIAL: [f64; 8] = [
    f64::NEG_INFINITY,
    -2.0,
    -0.0,
    0.0,
    0.5,
    2.0,
    f64::INFINITY,
    f64::NAN,
];

/// The engines' disagreements with the oracle for `formulas` of `u`, `v`, `w` at every
/// triple of `values`.
fn special_value_mismatches(values: &[f64], formulas: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    let n = values.len();
    // Rows enumerate all (u, v, w) triples.
    let rows = n * n * n;
    let col = |k: usize| -> Vec<f64> {
        (0..rows)
            .map(|r| {
                let t = [r / (n * n), (r / n) % n, r % n];
                values[t[k]]
            })
            .collect()
    };
    // Tile path: operands are Vj and the reduction is over i (axis 0, one i row); scalar
    // path: operands are Vi and the reduction is over j (axis 1, one j row).
    for (path, cat, other, axis) in [("tile", "Vj", "Vi", 0), ("scalar", "Vi", "Vj", 1)] {
        let aliases = [
            format!("u = {cat}(0,1)"),
            format!("v = {cat}(1,1)"),
            format!("w = {cat}(2,1)"),
            format!("z = {other}(3,1)"),
        ];
        let mut inp = Inputs::new();
        for k in 0..3 {
            inp.push_data(&[rows, 1], col(k));
        }
        inp.push_data(&[1, 1], vec![1.0]);
        for f in formulas {
            let g = Genred::new(f, &aliases, Reduction::Sum, axis)
                .unwrap_or_else(|e| panic!("{f}: {e}"));
            let want = keops::reference::reduce(&g, &inp.args_f64()).unwrap();
            let want = &want.values.as_ref().unwrap().data;
            let d = g.formula().dim;
            let uses_w = g
                .formula()
                .variables()
                .iter()
                .any(|v| v.as_var().map(|x| x.1) == Some(2));
            for (kname, opts) in kernels() {
                let got64 = run_as::<f64>(&g, &inp, &opts).unwrap().values.unwrap().data;
                let got32 = f64s(&run_as::<f32>(&g, &inp, &opts).unwrap().values.unwrap().data);
                for (dtype, got, tol) in [("f64", &got64, TOL_F64), ("f32", &got32, TOL_F32)] {
                    for (k, (&x, &w)) in got.iter().zip(want).enumerate() {
                        if !close(x, w, 0.0, tol) {
                            let r = k / d;
                            let at =
                                format!("u={:?}, v={:?}", values[r / (n * n)], values[(r / n) % n]);
                            let at = if uses_w {
                                format!("{at}, w={:?}", values[r % n])
                            } else {
                                at
                            };
                            let msg = format!(
                                "{f} at {at} ({path}, {kname}, {dtype}): got {x:?}, oracle {w:?}"
                            );
                            if !bad.contains(&msg) {
                                bad.push(msg);
                            }
                        }
                    }
                }
            }
        }
    }
    bad
}

fn report(bad: &[String]) {
    let shown: Vec<&String> = bad.iter().take(40).collect();
    assert!(
        bad.is_empty(),
        "{} mismatch(es) with the oracle:\n{}",
        bad.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn special_values_agree_with_the_oracle() {
    let mut formulas: Vec<String> = keops::formula::Unary::SIMPLE
        .iter()
        .map(|u| format!("{}(u)", u.name()))
        .collect();
    formulas.extend(
        [
            "Pow(u, 3)",
            "Pow(u, -2)",
            "Pow(u, 0)",
            "ClampInt(u, -1, 1)",
            "DiffClampInt(u, -1, 1)",
            "Round(u, 0)",
            "Round(u, 2)",
            "Atan2(u, v)",
            "LessThan(u, v)",
            "LessOrEqual(u, v)",
            "Equal(u, v)",
            "NotEqual(u, v)",
            "Mod(u, v, w)",
            "u + v",
            "u - v",
            "u * v",
            "u / v",
            "IfElse(u, v, w)",
            "Clamp(u, v, w)",
            "Min(Concat(Concat(u, v), w))",
            "Max(Concat(Concat(u, v), w))",
            "ArgMin(Concat(Concat(u, v), w))",
            "ArgMax(Concat(Concat(u, v), w))",
            "Sum(Concat(u, v))",
            "SqNorm2(Concat(u, v))",
            "SqDist(u, v)",
            "Scalprod(Concat(u, v), Concat(w, u))",
            "Normalize(Concat(u, v))",
            "WeightedSqNorm(u, Concat(v, w))",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let refs: Vec<&str> = formulas.iter().map(|s| s.as_str()).collect();
    report(&special_value_mismatches(&SPECIAL, &refs));
}

/// Sine and cosine at arguments of any size, where the engines' vectorised reduction by
/// `pi/2` no longer holds (past `math::FAST_TRIG_MAX`): those operands are computed by
/// libm, as per-row scalars and on tiles (beside near operands). The values are exact in
/// f32, so both types see the same operands.
#[test]
fn trigonometry_is_exact_at_any_argument() {
    let values = [
        0.5,
        -3.0,
        1.0e9,
        1.7e9,
        -1.0e10,
        3.0 * 2f64.powi(40),
        -7.0 * 2f64.powi(50),
        12_345_679.0 * 2f64.powi(60),
        1.5 * 2f64.powi(120),
    ];
    assert!(values.iter().all(|&v| v as f32 as f64 == v));
    // `z - 1` is 0 on the reduced side: it puts the operand on tiles, beside near ones.
    let formulas = [
        "Sin(u)",
        "Cos(u)",
        "SinXDivX(u)",
        "Sin(u + (z - 1))",
        "Cos(u + (z - 1))",
        "SinXDivX(u + (z - 1))",
        "Cos(u + (z - 1)) * v + Sin(w + (z - 1))",
    ];
    report(&special_value_mismatches(&values, &formulas));
}

/// `Powf(a, b)` has C's `pow` semantics (pykeops 2.3's `powf`, `torch.pow`): the oracle is
/// libm's `pow` at every pair of special values, and the engines, which compute
/// `exp(b ln|a|)` and fix the special cases with selects, agree with it there, including
/// negative bases with integer exponents, `Powf(0, 0) = 1`, `Powf(1, NaN) = 1`,
/// `Powf(-1, inf) = 1` and the sign of `Powf(-0, -3) = -inf`.
#[test]
fn powf_special_values_are_c_pow() {
    const POW: [f64; 15] = [
        f64::NEG_INFINITY,
        -3.0,
        -2.0,
        -1.0,
        -0.5,
        -0.0,
        0.0,
        0.5,
        1.0,
        2.0,
        2.5,
        3.0,
        10.0,
        f64::INFINITY,
        f64::NAN,
    ];
    let g = Genred::new(
        "Powf(u, v)",
        &["u = Vi(0,1)", "v = Vj(1,1)"],
        Reduction::Sum,
        1,
    )
    .unwrap();
    let mut bad = Vec::new();
    for &u in &POW {
        for &v in &POW {
            let (ud, vd) = ([u], [v]);
            let args = [keops::Arg::new(&ud, [1, 1]), keops::Arg::new(&vd, [1, 1])];
            let oracle = keops::reference::reduce(&g, &args)
                .unwrap()
                .values
                .unwrap()
                .data[0];
            let pow = u.powf(v);
            // (A sum of -0 is +0.)
            if !(oracle == pow || oracle.is_nan() && pow.is_nan()) {
                bad.push(format!(
                    "oracle: Powf({u:?}, {v:?}) = {oracle:?}, pow {pow:?}"
                ));
            }
        }
    }
    bad.extend(special_value_mismatches(&POW, &["Powf(u, v)"]));
    report(&bad);
}
