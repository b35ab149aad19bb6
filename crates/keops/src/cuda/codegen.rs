//! Formulas printed as C: the per-pair function of a generated kernel.
//!
//! The same text compiles as CUDA device code (NVRTC) and as host C (the system C
//! compiler), so that the arithmetic of code generation is checked against the oracle
//! on machines without a GPU. The prelude defines `T` and the `k_*` math functions for
//! both targets; every op of the table has its printer here (an exhaustive `match`) or,
//! for elementwise ops, next to its definition (`Unary::c_expr`).

use super::prescale::Prescaled;
use crate::formula::ops::Op;
use crate::formula::{topo_order, Cat, Formula};
use std::collections::HashMap;
use std::fmt::Write;

/// The floating type of generated code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CType {
    /// `float`.
    F32,
    /// `double`.
    F64,
}

impl CType {
    /// The C name of the type.
    pub fn name(self) -> &'static str {
        match self {
            CType::F32 => "float",
            CType::F64 => "double",
        }
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            CType::F32 => 4,
            CType::F64 => 8,
        }
    }

    /// The C type of the engines' element type `T`.
    pub fn of<T: crate::plan::Element>() -> CType {
        if T::NAME == "float64" {
            CType::F64
        } else {
            CType::F32
        }
    }
}

/// Definitions the generated functions use: `T`, `KEOPS_FN` (a device function under
/// NVRTC, a static inline one in host C), `KEOPS_UNROLL` (unroll the next loop, so that
/// arrays it indexes stay in registers; nothing in host C), `KEOPS_KEEP(x)` (the value
/// of `x` stays in a register: an empty `asm` the compiler cannot see through, so that it
/// does not reload `x` from memory inside a loop; nothing in host C) and the `k_*` math
/// functions.
pub fn prelude(ty: CType) -> String {
    let (t, f, reg) = match ty {
        CType::F32 => ("float", "f", "f"),
        CType::F64 => ("double", "", "d"),
    };
    let mut s = String::new();
    s.push_str(
        "#ifdef __CUDACC__\n#define KEOPS_FN __device__ __forceinline__\n\
         #define KEOPS_UNROLL _Pragma(\"unroll\")\n#define KEOPS_UNROLL_J _Pragma(\"unroll 4\")\n\
         #define INFINITY __int_as_float(0x7f800000)\n#define NAN __int_as_float(0x7fffffff)\n#else\n\
         #include <math.h>\n#define KEOPS_FN static inline\n#define KEOPS_UNROLL\n#define KEOPS_UNROLL_J\n\
         #define KEOPS_KEEP(x)\n#endif\n",
    );
    let _ = writeln!(
        s,
        "#ifdef __CUDACC__\n#define KEOPS_KEEP(x) asm volatile(\"\" : \"+{reg}\"(x))\n#endif"
    );
    let _ = writeln!(s, "typedef {t} T;");
    for (name, libm) in [
        ("exp", "exp"),
        ("exp2", "exp2"),
        ("log", "log"),
        ("sin", "sin"),
        ("cos", "cos"),
        ("sqrt", "sqrt"),
        ("abs", "fabs"),
        ("round", "round"),
        ("floor", "floor"),
        ("atan", "atan"),
        ("asin", "asin"),
        ("acos", "acos"),
    ] {
        let _ = writeln!(s, "KEOPS_FN T k_{name}(T x) {{ return {libm}{f}(x); }}");
    }
    // Powf: C's pow, computed as the CPU engine does (`Real::powf_`), so that it keeps
    // pow's special values under --use_fast_math too (where powf is exp2(y log2 x)).
    let _ = writeln!(
        s,
        "KEOPS_FN T k_pow(T x, T y) {{ T l = log{f}(fabs{f}(x));\n\
         \x20 T r = (y == (T)0 || l == (T)0) ? (T)1 : exp{f}(y * l);\n\
         \x20 T h = y * (T)0.5; int in = floor{f}(y) == y, odd = in && floor{f}(h) != h;\n\
         \x20 if (x < (T)0 && !in && x > -(T)INFINITY) r = (T)NAN;\n\
         \x20 return odd && signbit(x) ? -r : r; }}"
    );
    let _ = writeln!(
        s,
        "KEOPS_FN T k_atan2(T y, T x) {{ return atan2{f}(y, x); }}"
    );
    let _ = writeln!(s, "KEOPS_FN T k_rsqrt(T x) {{ return (T)1 / sqrt{f}(x); }}");
    // Integer powers by repeated squaring, as the engines (same rounding).
    s.push_str(
        "KEOPS_FN T k_powi(T x, int m) { unsigned e = m < 0 ? -m : m; T b = x, acc = 1;\n\
         \x20 while (e) { if (e & 1) acc *= b; b *= b; e >>= 1; }\n\
         \x20 return m < 0 ? (T)1 / acc : acc; }\n",
    );
    s
}

/// A C literal of type `T` for `v`.
pub(crate) fn literal(v: f64) -> String {
    if v.is_finite() {
        format!("(T)({v:?})")
    } else if v.is_nan() {
        "(T)NAN".into()
    } else if v > 0.0 {
        "(T)INFINITY".into()
    } else {
        "(T)(-INFINITY)".into()
    }
}

/// `const T* a0, ..., const T* a{n-1}, ` (with its trailing separator): the pointer
/// parameters of generated functions, one per argument.
pub fn pointer_params(n: usize) -> String {
    (0..n).map(|k| format!("const T* a{k}, ")).collect()
}

/// `void name(const T* a0, ..., const T* a{nargs-1}, T* out)`: `F` at one pair, where
/// `ak` points to the `dim` values of argument `k` (its row for `Vi`/`Vj`, the parameter
/// for `Pm`) and `out` receives `F`'s `dim` values. `Vi`, `Vj` and `Pm` are only a
/// matter of where the caller points `ak`. One pointer per argument (not an array of
/// pointers) so that, once inlined, rows copied into registers stay in registers.
/// `nargs` must exceed every argument index of `f`.
pub fn pair_function(f: &Formula, name: &str, nargs: usize) -> String {
    pair_function_with(f, name, nargs, None)
}

/// [`pair_function`], with the exponentials of `fold` computed as `exp2` of distances
/// between points that the caller has scaled.
pub fn pair_function_with(
    f: &Formula,
    name: &str,
    nargs: usize,
    fold: Option<&Prescaled>,
) -> String {
    let nodes = topo_order(std::slice::from_ref(f));
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut body = String::new();
    for (n, node) in nodes.iter().enumerate() {
        let v = format!("v{n}");
        let a: Vec<&str> = node.args.iter().map(|x| names[&x.id()].as_str()).collect();
        let dims: Vec<usize> = node.args.iter().map(|x| x.dim).collect();
        match fold.and_then(|x| x.code(node, &v, &names)) {
            Some(code) => body.push_str(&code),
            None => node_code(&mut body, &node.op, &v, node.dim, &a, &dims),
        }
        names.insert(node.id(), v);
    }
    let root = &names[&f.id()];
    let mut s = String::new();
    let params = pointer_params(nargs);
    let _ = writeln!(s, "KEOPS_FN void {name}({params}T* out) {{");
    s.push_str(&body);
    let _ = writeln!(
        s,
        "  for (int k = 0; k < {}; k++) out[k] = {root}[k];\n}}",
        f.dim
    );
    s
}

/// `T name(const T* a0, ..., const T* a{nargs-1})`: the sum `s` (`Sum`, `SqNorm2`,
/// `Scalprod` or `SqDist` of coordinatewise operands, see [`super::chunks`]) over
/// coordinates `0..len`, where `ak` points to argument `k`'s coordinates from the chunk's
/// first (to its value, for dimension 1). Each coordinate's terms are scalar temporaries,
/// in the order and with the arithmetic of [`pair_function`].
pub fn chunk_sum_function(s: &Formula, name: &str, nargs: usize, len: usize) -> String {
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut body = String::new();
    for (m, node) in topo_order(&s.args).iter().enumerate() {
        let a: Vec<&str> = node.args.iter().map(|x| names[&x.id()].as_str()).collect();
        let e = match &node.op {
            Op::Var { index, dim: 1, .. } => format!("a{index}[0]"),
            Op::Var { index, .. } => format!("a{index}[k]"),
            Op::Unary(u) => u.c_expr(a[0]),
            Op::Binary(b) => b.c_expr(a[0], a[1]),
            Op::Ternary(t) => t.c_expr(a[0], a[1], a[2]),
            op => literal(op.const_value().unwrap_or(0.0)),
        };
        let _ = writeln!(body, "    const T t{m} = {e};");
        names.insert(node.id(), format!("t{m}"));
    }
    let x = |i: usize| names[&s.args[i].id()].as_str();
    let term = match s.op {
        Op::Sum => x(0).to_string(),
        Op::SqNorm2 => format!("{0} * {0}", x(0)),
        Op::Scalprod => format!("{} * {}", x(0), x(1)),
        _ => format!("({0} - {1}) * ({0} - {1})", x(0), x(1)),
    };
    format!(
        "KEOPS_FN T {name}({}) {{\n  T s = 0;\n  KEOPS_UNROLL for (int k = 0; k < {len}; k++) {{\n\
         {body}    s += {term};\n  }}\n  return s;\n}}\n",
        pointer_params(nargs).trim_end_matches(", ")
    )
}

/// Element `k` of operand `a` of dimension `d` (dimension 1 broadcasts).
fn at(a: &str, d: usize, k: &str) -> String {
    if d == 1 {
        format!("{a}[0]")
    } else {
        format!("{a}[{k}]")
    }
}

/// The statements computing node `v` (dimension `dim`) from its operands.
fn node_code(s: &mut String, op: &Op, v: &str, dim: usize, a: &[&str], d: &[usize]) {
    let decl = format!("  T {v}[{dim}];\n");
    let each = |s: &mut String, expr: String| {
        s.push_str(&decl);
        let _ = writeln!(s, "  for (int k = 0; k < {dim}; k++) {v}[k] = {expr};");
    };
    match op {
        Op::Var { cat, index, .. } => {
            let _ = writeln!(
                s,
                "  const T* {v} = a{index}; /* {} */",
                match cat {
                    Cat::Vi => "Vi",
                    Cat::Vj => "Vj",
                    Cat::Pm => "Pm",
                }
            );
        }
        Op::IntCst(_) | Op::RatCst(..) | Op::FloatCst(_) | Op::Zero(_) => {
            each(s, literal(op.const_value().unwrap_or(0.0)));
        }
        Op::Unary(u) => each(s, u.c_expr(&format!("{}[k]", a[0]))),
        Op::Binary(b) => each(s, b.c_expr(&at(a[0], d[0], "k"), &at(a[1], d[1], "k"))),
        Op::Ternary(t) => each(
            s,
            t.c_expr(
                &at(a[0], d[0], "k"),
                &at(a[1], d[1], "k"),
                &at(a[2], d[2], "k"),
            ),
        ),
        Op::Sum | Op::SqNorm2 | Op::Scalprod | Op::SqDist => {
            let n = d.iter().copied().max().unwrap_or(1);
            let term = match op {
                Op::Sum => at(a[0], d[0], "k"),
                Op::SqNorm2 => format!("{0}[k] * {0}[k]", a[0]),
                Op::Scalprod => format!("{} * {}", at(a[0], d[0], "k"), at(a[1], d[1], "k")),
                _ => format!(
                    "({0} - {1}) * ({0} - {1})",
                    at(a[0], d[0], "k"),
                    at(a[1], d[1], "k")
                ),
            };
            let _ = writeln!(
                s,
                "  T {v}[1] = {{0}};\n  for (int k = 0; k < {n}; k++) {v}[0] += {term};"
            );
        }
        Op::SumT(_) => each(s, format!("{}[0]", a[0])),
        Op::WeightedSqNorm => {
            let (w, x, n) = (a[0], a[1], d[1]);
            let _ = writeln!(s, "  T {v}[1] = {{0}};");
            if d[0] == n * n && n > 1 {
                let _ = writeln!(
                    s,
                    "  for (int k = 0; k < {n}; k++) for (int l = 0; l < {n}; l++) \
                     {v}[0] += {x}[k] * {w}[k * {n} + l] * {x}[l];"
                );
            } else {
                let _ = writeln!(
                    s,
                    "  for (int k = 0; k < {n}; k++) {v}[0] += {} * {x}[k] * {x}[k];",
                    at(w, d[0], "k")
                );
            }
        }
        Op::Extract { start, .. } => each(s, format!("{}[{start} + k]", a[0])),
        Op::Concat => each(
            s,
            format!("(k < {0} ? {1}[k] : {2}[k - {0}])", d[0], a[0], a[1]),
        ),
        Op::Elem(m) => each(s, format!("{}[{m}]", a[0])),
        Op::ComplexPart { imag } => each(s, format!("{}[2 * k + {}]", a[0], *imag as u8)),
        Op::ToComplex { imag } => each(
            s,
            format!("(k % 2 == {} ? {}[k / 2] : (T)0)", *imag as u8, a[0]),
        ),
        Op::ElemT { m, .. } => each(s, format!("(k == {m} ? {}[0] : (T)0)", a[0])),
        Op::OneHot(_) => each(s, format!("(k_round({}[0]) == (T)k ? (T)1 : (T)0)", a[0])),
        Op::TensorDot(td) => {
            s.push_str(&decl);
            let _ = writeln!(s, "  for (int k = 0; k < {dim}; k++) {v}[k] = 0;");
            for &(o, i, j) in td.terms() {
                let _ = writeln!(s, "  {v}[{o}] += {}[{i}] * {}[{j}];", a[0], a[1]);
            }
        }
        Op::CoordMin | Op::CoordMax | Op::CoordArgMin | Op::CoordArgMax => {
            let cmp = if matches!(op, Op::CoordMin | Op::CoordArgMin) {
                "<"
            } else {
                ">"
            };
            let (x, n) = (a[0], d[0]);
            if matches!(op, Op::CoordMin | Op::CoordMax) {
                let _ = writeln!(
                    s,
                    "  T {v}[1] = {{{x}[0]}};\n  \
                     for (int k = 1; k < {n}; k++) if ({x}[k] {cmp} {v}[0]) {v}[0] = {x}[k];"
                );
            } else {
                let _ = writeln!(
                    s,
                    "  T {v}[1];\n  {{ T best = {x}[0]; int arg = 0;\n    \
                     for (int k = 1; k < {n}; k++) if ({x}[k] {cmp} best) {{ best = {x}[k]; arg = k; }}\n    \
                     {v}[0] = (T)arg; }}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formula::parse::parse;

    #[test]
    fn prints_a_gaussian_kernel() {
        let f = parse(
            "Exp(-SqDist(x, y)) * b",
            &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"],
        )
        .unwrap();
        let c = pair_function(&f, "F", 3);
        assert!(c.starts_with("KEOPS_FN void F(const T* a0, const T* a1, const T* a2, T* out) {"));
        assert!(c.contains("= a0;") && c.contains("= a1;") && c.contains("= a2;"));
        assert!(c.contains("k_exp("));
        assert!(prelude(CType::F32).contains("typedef float T;"));
        assert!(prelude(CType::F64).contains("return exp(x)"));
    }
}
