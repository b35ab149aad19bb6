//! Formulas exercising each op of the table, shared by the autodiff and code-generation
//! tests: `x`, `y` (dimension 3), `a`, `b` (scalars), `S` (a 3x3 matrix), `p`.

/// The variables of the cases.
pub const ALIASES: [&str; 6] = [
    "x = Vi(0,3)",
    "y = Vj(1,3)",
    "a = Vi(2,1)",
    "b = Vj(3,1)",
    "S = Pm(4,9)",
    "p = Pm(5,1)",
];

/// Formulas exercising each op of the table (operands positive where the op needs it:
/// the points are drawn in [0.3, 1.7]; some ops get shifted operands to see both signs).
pub fn cases(name: &str) -> Option<Vec<&'static str>> {
    Some(match name {
        "Vi" | "Vj" | "Pm" | "Var" => vec!["x * Vj(1,3) + Pm(5,1)", "Var(0,3,0) * Var(1,3,1)"],
        "IntCst" | "RatCst" | "IntInv" | "Zero" => {
            vec!["IntCst(3) * x + RatCst(2,3) * y + IntInv(4) * a + Zero(3)"]
        }
        "Minus" => vec!["Minus(x * y)"],
        "Square" => vec!["Square(x - y)"],
        "Sqrt" => vec!["Sqrt(x * y)"],
        "Rsqrt" => vec!["Rsqrt(x + y)"],
        "Inv" => vec!["Inv(x + b)"],
        "Exp" => vec!["Exp(-SqDist(x, y))"],
        "Log" => vec!["Log(x * b)"],
        "XLogX" => vec!["XLogX(x * y)"],
        "Abs" => vec!["Abs(x - y) * x"],
        "Sign" => vec!["Sign(x - y) * x"],
        "Step" => vec!["Step(x - y) * y"],
        "ReLU" => vec!["ReLU(x - y)"],
        "Sin" => vec!["Sin(x * y)"],
        "Cos" => vec!["Cos(x + y)"],
        "Pow" => vec!["Pow(x - y, 3)", "Pow(x + y, -2)", "Pow(x, 0) * y"],
        "ClampInt" => vec!["ClampInt(3 * x - 3 * y, -1, 1)"],
        "Add" => vec!["x + y", "x + b"],
        "Subtract" => vec!["x - y", "a - y"],
        "Mult" => vec!["x * y", "a * y"],
        "Divide" => vec!["x / y", "x / b", "a / y"],
        "Powf" => vec!["Powf(x, y)", "Powf(x, b)"],
        "IfElse" => vec!["IfElse(x - y, x * y, Square(y))"],
        "Clamp" => vec!["Clamp(x, y - 0.3, y + 0.3)", "Clamp(x, a, b + 1)"],
        "Sum" => vec!["Sum(x * y)"],
        "SumT" => vec!["SumT(a * b, 3) * x"],
        "SqNorm2" => vec!["SqNorm2(x - y)"],
        "Norm2" => vec!["Norm2(x - y)"],
        "Normalize" => vec!["Normalize(x - y)"],
        "SqDist" => vec!["SqDist(x, y)", "SqDist(a, y)"],
        "Scalprod" => vec!["Scalprod(x, y)"],
        "WeightedSqNorm" => vec![
            "WeightedSqNorm(a, x - y)",
            "WeightedSqNorm(x, y)",
            "WeightedSqNorm(S, x - y)",
            "WeightedSqNorm(x, x)",
        ],
        "WeightedSqDist" => vec!["WeightedSqDist(S, x, y)", "WeightedSqDist(b, x, y)"],
        "Extract" => vec!["Extract(x * y, 1, 2)", "Extract(Concat(x, y), 2, 3)"],
        "Concat" => vec!["Concat(x, y * a)"],
        "Elem" => vec!["Elem(x * y, 1)"],
        "ElemT" => vec!["ElemT(a * b, 3, 2) * x"],
        "TensorDot" => vec![
            "TensorDot(S, x, Ind(3,3), Ind(3), Ind(1), Ind(0))",
            "TensorDot(S, Concat(x, y), Ind(3,3), Ind(2,3), Ind(1), Ind(1), Ind(1,0))",
            "TensorDot(x * a, y, Ind(3), Ind(3), Ind(), Ind())",
        ],
        "OneHot" => vec!["OneHot(Sign(a) + 1, 3) * x"],
        "Min" | "Max" => vec!["Min(x * y)", "Max(x - y)"],
        "ArgMin" | "ArgMax" => vec!["ArgMin(x - y) * a", "ArgMax(x * y) * a"],
        "Grad" => vec!["Grad(Exp(-SqDist(x, y)) * b, x, a)"],
        "GradFromPos" => vec!["GradFromPos(Exp(-SqDist(x, y)), y, 2)"],
        "Diff" => vec!["Diff(Sin(x * y), y, x)"],
        "Divergence" => vec!["Divergence(Sin(x * y), x)"],
        "Laplacian" => vec!["Laplacian(Exp(-SqDist(x, y)) * b, x)"],
        "GradMatrix" => vec!["GradMatrix(Sin(x * y), x)"],
        "TraceOperator" => vec!["TraceOperator(x * Exp(-SqDist(y, Extract(S, 0, 3))), x)"],
        _ => return None,
    })
}
