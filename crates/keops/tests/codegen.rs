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
use std::fmt::Write;
use std::process::Command;

/// One formula at one point: its C call and the oracle's values.
struct Check {
    what: String,
    want: Vec<f64>,
}

fn c_compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    Command::new(&cc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| cc)
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
            src.push_str(&pair_function(&f, &name));
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
                let max = args.iter().map(|a| a.0 + 1).max().unwrap_or(0).max(1);
                let mut slots = vec!["0".to_string(); max];
                for (index, a) in &args {
                    slots[*index] = a.clone();
                }
                let _ = writeln!(
                    main,
                    "  const T* args[] = {{{}}}; {name}(args, out);\n  \
                     for (int k = 0; k < {}; k++) printf(\"%.17g\\n\", (double)out[k]);",
                    slots.join(", "),
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
        eprintln!("SKIPPED: no C compiler (cc) found to compile the generated code");
        return;
    };
    let dir = std::env::temp_dir().join(format!("keops-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for ty in [CType::F64, CType::F32] {
        let (src, checks) = program(ty);
        let c = dir.join(format!("cases_{}.c", ty.name()));
        let exe = dir.join(format!("cases_{}", ty.name()));
        std::fs::write(&c, &src).unwrap();
        let out = Command::new(&cc)
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
        let text = String::from_utf8(run.stdout).unwrap();
        let mut got = text.lines().map(|l| l.parse::<f64>().unwrap());
        let tol = if ty == CType::F64 { 1e-12 } else { 2e-5 };
        for check in &checks {
            for (k, w) in check.want.iter().enumerate() {
                let g = got.next().expect("one line per value");
                let ok =
                    g == *w || (g - w).abs() <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan());
                assert!(
                    ok,
                    "{} [{}] value {k}: C gives {g:e}, the oracle {w:e}",
                    check.what,
                    ty.name()
                );
            }
        }
        assert!(got.next().is_none());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
