//! Generated device code, compiled as host C by the system C compiler (`cc`) and run:
//! every op of the table (the cases of `common::op_cases`) at random points, in float
//! and double, against the f64 oracle. Catches arithmetic mistakes of code generation
//! without a GPU. Skipped, with a printed reason, where no C compiler exists.
//!
//! Tolerance: double within `1e-12 (1 + |want|)`, float within `2e-5 (1 + |want|)`
//! (single-precision libm, a few ulps per op).

mod common;

use common::op_cases::{cases, ALIASES};
use common::{Point, Rng};
use keops::cuda::codegen::{pair_function, prelude, CType};
use keops::formula::ops::all_specs;
use keops::formula::parse::parse;
use keops::formula::Formula;
use keops::Reduction;
use std::fmt::Write;
use std::process::Command;

/// One formula at one point: its C call and the oracle's values.
struct Check {
    what: String,
    want: Vec<f64>,
}

/// The system C compiler (`$CC` or `cc`); `None`, with the skip printed, where none runs.
fn c_compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let found = Command::new(&cc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| cc);
    if found.is_none() {
        eprintln!("SKIPPED: no C compiler (cc) found to compile the generated code");
    }
    found
}

/// Builds one C program evaluating every case at a few points; returns it with the
/// expected values in output order.
fn program(ty: CType) -> (String, Vec<Check>) {
    let mut src = prelude(ty);
    let mut main = String::from("int main(void) {\n  T out[64];\n");
    let mut checks = Vec::new();
    let mut rng = Rng::new(7);
    let mut n = 0;
    for spec in all_specs() {
        let Some(list) = cases(spec.name) else {
            continue;
        };
        for case in list {
            let f: Formula = parse(case, &ALIASES).unwrap_or_else(|e| panic!("{case}: {e}"));
            let name = format!("F{n}");
            n += 1;
            let nargs = f
                .variables()
                .iter()
                .filter_map(|v| v.as_var())
                .map(|v| v.1 + 1)
                .max()
                .unwrap_or(0);
            src.push_str(&pair_function(&f, &name, nargs));
            for t in 0..4 {
                // Shifted points so that signs are both seen, and the origin for the
                // conventions at kinks (Sign(0), Step(0), Rsqrt(0), XLogX(0), ...).
                let (lo, hi) = if t == 3 { (0.0, 0.0) } else { (-0.2, 1.7) };
                let p = Point::random(std::slice::from_ref(&f), &mut rng, lo, hi);
                let want = p.eval(&f);
                let mut args = Vec::new();
                for (k, v) in f.variables().iter().enumerate() {
                    let (_, index) = v.as_var().expect("a variable");
                    let vals: Vec<String> = p.get(v).iter().map(|x| format!("(T){x:?}")).collect();
                    let _ = writeln!(
                        main,
                        "  {{ static const T a{k}[] = {{{}}};",
                        vals.join(", ")
                    );
                    args.push((index, format!("a{k}")));
                }
                let mut slots = vec!["0".to_string(); nargs];
                for (index, a) in &args {
                    slots[*index] = a.clone();
                }
                let _ = writeln!(
                    main,
                    "  {name}({}out);\n  \
                     for (int k = 0; k < {}; k++) printf(\"%.17g\\n\", (double)out[k]);",
                    slots.iter().map(|a| format!("{a}, ")).collect::<String>(),
                    f.dim
                );
                main.push_str(&"  }\n".repeat(args.len()));
                checks.push(Check {
                    what: format!("{} ({case})", spec.name),
                    want,
                });
            }
        }
    }
    main.push_str("  return 0;\n}\n");
    (format!("#include <stdio.h>\n{src}{main}"), checks)
}

#[test]
fn generated_code_matches_the_oracle_as_host_c() {
    let Some(cc) = c_compiler() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("keops-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for ty in [CType::F64, CType::F32] {
        let (src, checks) = program(ty);
        let got = compile_and_run(&cc, &dir, &format!("cases_{}", ty.name()), &src);
        let checks: Vec<(String, Vec<f64>)> = checks
            .into_iter()
            .map(|c| (format!("{} [{}]", c.what, ty.name()), c.want))
            .collect();
        let tol = if ty == CType::F64 { 1e-12 } else { 2e-5 };
        compare(got, &checks, tol);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// LogSumExp's state functions on infinities and NaN (values out of the formula `y`),
/// as host C against the oracle: -inf first, between and last, +inf once and twice,
/// NaN anywhere.
#[test]
fn log_sum_exp_infinities_and_nan_match_the_oracle_as_host_c() {
    use keops::cuda::kernel::{device_functions, KernelSpec};
    use keops::{Arg, Genred, Options};
    let Some(cc) = c_compiler() else {
        return;
    };
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    let rows: [&[f64]; 10] = [
        &[-inf, -inf],
        &[-inf, 1.0, -inf],
        &[2.0, -inf, 3.0],
        &[inf, 1.0],
        &[1.0, inf, inf],
        &[-inf, inf, -inf],
        &[nan, 1.0],
        &[1.0, nan, -inf],
        &[-inf, nan],
        &[0.5, 0.5, -1.0],
    ];
    let dir = std::env::temp_dir().join(format!("keops-lse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let g = Genred::new("y", &["y = Vj(0,1)"], Reduction::LogSumExp, 1).unwrap();
    for ty in [CType::F64, CType::F32] {
        let mut k = KernelSpec::new::<f64>(&g, &Options::default());
        (k.ty, k.acc) = (ty, ty);
        let mut src = format!("#include <stdio.h>\n{}", prelude(ty));
        src.push_str(&device_functions(&k, "L", 5, 1));
        src.push_str("int main(void) {\n  T ov[1]; long long oi[1];\n");
        let mut want = Vec::new();
        for y in rows {
            let vals: Vec<String> = y.iter().map(|&v| c_value(v)).collect();
            let vals = vals.join(", ");
            let _ = writeln!(
                src,
                "  {{ static const T y[] = {{{vals}}}; struct L_state s; L_init(&s);\n    \
                 double comp[1] = {{0}};\n    \
                 for (int j = 0; j < {n}; j++) L_fold(&s, (void*)comp, y + j, j, 1);\n    \
                 L_final(&s, ov, oi); printf(\"%.17g\\n\", isnan(ov[0]) ? NAN : (double)ov[0]); }}",
                n = y.len()
            );
            let out = keops::reference::reduce(&g, &[Arg::new(y, [y.len(), 1])]).unwrap();
            want.push((
                format!("LogSumExp of {y:?} [{}]", ty.name()),
                out.values.unwrap().data,
            ));
        }
        src.push_str("  return 0;\n}\n");
        let got = compile_and_run(&cc, &dir, &format!("lse_{}", ty.name()), &src);
        compare(got, &want, 1e-6);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Powf`'s device function (`k_pow`, written to keep C's `pow` special values under
/// `--use_fast_math`) as host C, at every pair of special values, against libm's `pow`
/// (the oracle's `Powf`): negative bases, zeros of both signs, +-1, infinities, NaN.
#[test]
fn powf_special_values_match_pow_as_host_c() {
    let Some(cc) = c_compiler() else {
        return;
    };
    let (inf, nan) = (f64::INFINITY, f64::NAN);
    let vals = [
        -inf, -3.0, -2.0, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.0, 2.5, 3.0, inf, nan,
    ];
    let dir = std::env::temp_dir().join(format!("keops-pow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for ty in [CType::F64, CType::F32] {
        let mut src = format!("#include <stdio.h>\n{}int main(void) {{\n", prelude(ty));
        let mut want = Vec::new();
        for &a in &vals {
            for &b in &vals {
                let _ = writeln!(
                    src,
                    "  {{ T r = k_pow({}, {}); printf(\"%.17g\\n\", isnan(r) ? NAN : (double)r); }}",
                    c_value(a),
                    c_value(b)
                );
                want.push((
                    format!("Powf({a:?}, {b:?}) [{}]", ty.name()),
                    vec![a.powf(b)],
                ));
            }
        }
        src.push_str("  return 0;\n}\n");
        let got = compile_and_run(&cc, &dir, &format!("pow_{}", ty.name()), &src);
        compare(got, &want, 1e-6);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `v` as a C value of type `T` (infinities and NaN from math.h's macros).
fn c_value(v: f64) -> String {
    format!("(T)({v:?})")
        .replace("inf", "INFINITY")
        .replace("NaN", "NAN")
}

/// Compares the C program's output, in order, with the oracle's values (`(what, want)`)
/// within `tol (1 + |want|)`, NaN matching NaN.
fn compare(got: Vec<f64>, checks: &[(String, Vec<f64>)], tol: f64) {
    let mut got = got.into_iter();
    for (what, want) in checks {
        for (k, w) in want.iter().enumerate() {
            let g = got.next().expect("one line per value");
            let ok =
                g == *w || (g - w).abs() <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan());
            assert!(ok, "{what} value {k}: C gives {g:e}, the oracle {w:e}");
        }
    }
    assert!(got.next().is_none(), "more output than expected");
}

/// Compiles `src` with `cc` and runs it; returns stdout's numbers.
fn compile_and_run(cc: &str, dir: &std::path::Path, stem: &str, src: &str) -> Vec<f64> {
    let c = dir.join(format!("{stem}.c"));
    let exe = dir.join(stem);
    std::fs::write(&c, src).unwrap();
    let out = Command::new(cc)
        .args(["-O1", "-std=c99", "-o"])
        .arg(&exe)
        .arg(&c)
        .arg("-lm")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not compile:\n{}",
        c.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse::<f64>().unwrap())
        .collect()
}

/// The state functions and the tile loop (`{name}_tile`: chunked sums, then `{name}_fold`) of every reduction's kernel,
/// compiled as host C and driven as the kernel drives them: tiles of 5 reduced rows
/// (1D scheme), and chunks of 9 rows whose partial states are combined in order (2D
/// scheme), for both axes, every sum scheme, float and double; against the oracle.
/// Double folds one output row at a time, float as many as the kernel allows (the row
/// counts are odd: the last rows of a thread go past the end, as on the GPU).
#[test]
fn reduction_kernels_match_the_oracle_as_host_c() {
    check_kernels_as_host_c(
        "red",
        common::reduction_cases(),
        &common::REDUCTION_ALIASES,
        2,
        false,
        false,
    );
}

/// The same with fast math, for the formulas whose float32 kernels compute their
/// exponentials as `exp2` of distances between points scaled as they are loaded (the
/// host tile makes the scaled copies the kernel makes; checked to happen).
#[test]
fn prescaled_kernels_match_the_oracle_as_host_c() {
    check_kernels_as_host_c(
        "pre",
        common::prescaled_cases(),
        &common::REDUCTION_ALIASES,
        2,
        false,
        true,
    );
}

/// The same for high dimensions (x and y of dimension 150, beyond the registers of a
/// thread): the chunked kernels ([`keops::cuda::chunks`]), two full chunks and a last
/// short one, and a formula that is not chunkable (read in place).
#[test]
fn chunked_kernels_match_the_oracle_as_host_c() {
    check_kernels_as_host_c(
        "chunk",
        common::chunked_cases(),
        &common::CHUNKED_ALIASES,
        150,
        true,
        false,
    );
}

/// The harness of the two tests above: `cases` on `aliases` (x, y of dimension `d`, b,
/// p); `chunked`: the cases are chunked, but for the last when reducing over j (checked);
/// `fast_math`: float32 kernels with fast math, prescaled (checked).
fn check_kernels_as_host_c(
    stem: &str,
    cases: Vec<(&'static str, Option<&'static str>, Reduction)>,
    aliases: &[&str],
    d: usize,
    chunked: bool,
    fast_math: bool,
) {
    use keops::cuda::kernel::{device_functions, KernelSpec, Role};
    use keops::{Arg, Options, SumScheme};
    let Some(cc) = c_compiler() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("keops-{stem}gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ni, nj) = (7usize, 23usize);
    let mut rng = Rng::new(11);
    // Coordinates scaled so that squared distances stay of order 1.
    let scale = (2.0 / d as f64).sqrt();
    let mut gen =
        |n: usize, s: f64| -> Vec<f64> { (0..n).map(|_| s * rng.uniform(-1.0, 1.0)).collect() };
    let data = [
        gen(ni * d, scale),
        gen(nj * d, scale),
        gen(nj, 1.0),
        gen(1, 1.0),
    ];
    let shapes = [vec![ni, d], vec![nj, d], vec![nj, 1], vec![1]];
    let ncases = cases.len();
    let mut n = 0;
    for ty in [CType::F64, CType::F32] {
        let mut src = format!("#include <stdio.h>\n{}", prelude(ty));
        let mut main = String::from("int main(void) {\n");
        for (k, d) in data.iter().enumerate() {
            let vals: Vec<String> = d.iter().map(|x| format!("(T){x:?}")).collect();
            // Padding: rows past the end that a thread of several rows reads.
            let _ = writeln!(
                main,
                "  static const T d{k}[] = {{{}, 0, 0, 0, 0, 0, 0, 0, 0}};",
                vals.join(", ")
            );
        }
        let mut checks: Vec<(String, Vec<f64>)> = Vec::new();
        for (c, (f, w, r)) in cases.iter().copied().enumerate() {
            for axis in [0, 1] {
                let g = common::case_genred(aliases, f, w, r, axis);
                let args: Vec<Arg<f64>> = data
                    .iter()
                    .zip(&shapes)
                    .map(|(d, s)| Arg::new(d, s))
                    .collect();
                let want = keops::reference::reduce(&g, &args).unwrap();
                let mut want_all = want.values.map(|a| a.data).unwrap_or_default();
                let idx = want.indices.map(|a| a.data).unwrap_or_default();
                let (n_out, n_red) = if axis == 1 { (ni, nj) } else { (nj, ni) };
                let (dv, di) = g.spec().output_dims();
                let schemes: &[SumScheme] = if r == Reduction::Sum {
                    &[SumScheme::Direct, SumScheme::BlockSum, SumScheme::Kahan]
                } else {
                    &[SumScheme::BlockSum]
                };
                for &scheme in schemes {
                    let opts = Options {
                        sum_scheme: scheme,
                        fast_math,
                        ..Options::default()
                    };
                    let mut k = if ty == CType::F64 {
                        KernelSpec::new::<f64>(&g, &opts)
                    } else {
                        KernelSpec::new::<f32>(&g, &opts)
                    };
                    k.ty = ty;
                    if chunked {
                        // The last case uses x outside its sum: chunked over i only.
                        let want = c + 1 < ncases || axis == 0;
                        assert_eq!(k.chunked().is_some(), want, "{f}: chunked {want}");
                    }
                    if fast_math {
                        let want = ty == CType::F32;
                        assert_eq!(k.prescaled().is_some(), want, "{f}: prescaled {want}");
                    }
                    let name = format!("R{n}");
                    n += 1;
                    let rows = if ty == CType::F64 { 1 } else { k.max_rows() };
                    src.push_str(&device_functions(&k, &name, 5, rows));
                    let ptrs: String = k
                        .args
                        .iter()
                        .enumerate()
                        .map(|(a, (role, dim))| match role {
                            Role::Out => format!("d{a} + i * {dim}, "),
                            Role::Red => format!("d{a} + j0 * {dim}, "),
                            _ => format!("d{a}, "),
                        })
                        .collect();
                    let (sv, _) = g.spec().state_len();
                    let acc = k.acc.name();
                    let sv1 = sv.max(1);
                    // Kahan's correction of the states `st` (after a fold).
                    let kahan = |st: &str| {
                        if r == Reduction::Sum && scheme == SumScheme::Kahan {
                            format!("for (int c = 0; c < {sv}; c++) {st}[r].v[c] -= comp[r * {sv1} + c];")
                        } else {
                            String::new()
                        }
                    };
                    // Prints the live rows of `s`, `fix` applied first.
                    let print = |fix: &str| {
                        format!(
                            "for (int r = 0; r < {rows} && i + r < {n_out}; r++) {{\n      \
                             {fix}\n      {name}_final(&s[r], ov, oi);\n      \
                             for (int c = 0; c < {dv}; c++) printf(\"%.17g\\n\", (double)ov[c]);\n      \
                             for (int c = 0; c < {di}; c++) printf(\"%lld\\n\", oi[c]); }}"
                        )
                    };
                    // Threads of `rows` rows from `i`. 1D: tiles of 5. 2D: chunks of 9
                    // (tiles of 5 inside), the chunks' states combined.
                    let _ = writeln!(
                        main,
                        "  for (int i = 0; i < {n_out}; i += {rows}) {{ T ov[{dv1}]; long long oi[{di1}];\n    \
                         struct {name}_state s[{rows}]; {acc} comp[{nc}] = {{0}};\n    \
                         for (int r = 0; r < {rows}; r++) {name}_init(&s[r]);\n    \
                         for (int j0 = 0; j0 < {n_red}; j0 += 5) {name}_tile(s, comp, {ptrs}j0, j0 + 5 < {n_red} ? 5 : {n_red} - j0);\n    \
                         {print_1d}\n  }}\n  \
                         for (int i = 0; i < {n_out}; i += {rows}) {{ T ov[{dv1}]; long long oi[{di1}];\n    \
                         struct {name}_state s[{rows}]; int first = 1;\n    \
                         for (int lo = 0; lo < {n_red}; lo += 9) {{ int hi = lo + 9 < {n_red} ? lo + 9 : {n_red};\n      \
                         struct {name}_state t[{rows}]; {acc} comp[{nc}] = {{0}};\n      \
                         for (int r = 0; r < {rows}; r++) {name}_init(&t[r]);\n      \
                         for (int j0 = lo; j0 < hi; j0 += 5) {name}_tile(t, comp, {ptrs}j0, j0 + 5 < hi ? 5 : hi - j0);\n      \
                         for (int r = 0; r < {rows}; r++) {{ {kahan2}\n        \
                         if (first) s[r] = t[r]; else {name}_combine_states(&s[r], &t[r]); }}\n      \
                         first = 0; }}\n    \
                         {print_2d}\n  }}",
                        dv1 = dv.max(1),
                        di1 = di.max(1),
                        nc = rows * sv1,
                        print_1d = print(&kahan("s")),
                        kahan2 = kahan("t"),
                        // The 2D states are corrected per chunk, as on the GPU.
                        print_2d = print(""),
                    );
                    let mut expect = Vec::new();
                    for i in 0..n_out {
                        expect.extend_from_slice(&want_all[i * dv..(i + 1) * dv]);
                        expect.extend(idx[i * di..(i + 1) * di].iter().map(|&x| x as f64));
                    }
                    for scheme_name in ["1D", "2D"] {
                        checks.push((
                            format!(
                                "{} axis {axis} {scheme:?} {scheme_name} [{}]",
                                r.name(),
                                ty.name()
                            ),
                            expect.clone(),
                        ));
                    }
                }
                want_all.clear();
            }
        }
        main.push_str("  return 0;\n}\n");
        let got = compile_and_run(&cc, &dir, &format!("{stem}_{}", ty.name()), &(src + &main));
        compare(got, &checks, if ty == CType::F64 { 1e-12 } else { 3e-5 });
    }
    let _ = std::fs::remove_dir_all(&dir);
}
