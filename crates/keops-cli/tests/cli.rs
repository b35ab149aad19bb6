//! Integration tests of the `keops` binary: `.npy` files in a temporary folder, the
//! binary run on them, outputs and error messages checked.

use npyz::WriterBuilder;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh temporary folder for one test, removed when dropped.
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(test: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("keops-cli-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    TmpDir(d)
}

fn write<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    data: &[T],
    shape: &[u64],
    order: npyz::Order,
) {
    let f = std::fs::File::create(path).expect("create npy");
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(shape)
        .order(order)
        .writer(std::io::BufWriter::new(f))
        .begin_nd()
        .expect("begin npy");
    w.extend(data.iter().copied()).expect("write npy");
    w.finish().expect("finish npy");
}

fn write_c<T: npyz::AutoSerialize + Copy>(path: &Path, data: &[T], shape: &[u64]) {
    write(path, data, shape, npyz::Order::C)
}

/// Reads an output: (dtype descr, shape, values as f64).
fn read(path: &Path) -> (String, Vec<u64>, Vec<f64>) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let npy = npyz::NpyFile::new(std::io::BufReader::new(f)).expect("read npy");
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => other.descr(),
    };
    let shape = npy.shape().to_vec();
    let vals: Vec<f64> = match descr.as_str() {
        "<f8" => npy.into_vec::<f64>().expect("f8"),
        "<f4" => npy
            .into_vec::<f32>()
            .expect("f4")
            .into_iter()
            .map(f64::from)
            .collect(),
        "<i8" => npy
            .into_vec::<i64>()
            .expect("i8")
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        d => panic!("unexpected dtype {d}"),
    };
    (descr, shape, vals)
}

fn keops(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keops"))
        .args(args)
        .output()
        .expect("run keops")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Deterministic data in [0, 1).
fn data(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// Asserts a user error: exit code 2 and one line on stderr starting with `keops: `.
fn assert_user_error(out: &Output, contains: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {err}");
    assert!(err.starts_with("keops: "), "stderr: {err:?}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(contains),
        "{err:?} should mention {contains:?}"
    );
}

const N: usize = 6;
const M: usize = 9;
const D: usize = 3;

/// x (N, D), y (M, D), b (M,) 1-D, g () 0-d, all float64.
fn gauss_inputs(dir: &Path) -> (Vec<f64>, Vec<f64>, Vec<f64>, f64) {
    let (x, y, b, g) = (data(N * D, 1), data(M * D, 2), data(M, 3), 2.5);
    write_c(&dir.join("x.npy"), &x, &[N as u64, D as u64]);
    write_c(&dir.join("y.npy"), &y, &[M as u64, D as u64]);
    write_c(&dir.join("b.npy"), &b, &[M as u64]);
    write_c(&dir.join("g.npy"), &[g], &[]);
    (x, y, b, g)
}

fn sqdist(x: &[f64], i: usize, y: &[f64], j: usize) -> f64 {
    (0..D).map(|k| (x[i * D + k] - y[j * D + k]).powi(2)).sum()
}

fn gauss_args(dir: &Path) -> Vec<String> {
    ["x=Vi:x.npy", "y=Vj:y.npy", "g=Pm:g.npy", "b=Vj:b.npy"]
        .iter()
        .flat_map(|a| {
            let (name, file) = a.split_once(':').expect("spec");
            [
                "--arg".to_string(),
                format!("{name}:{}", p(&dir.join(file))),
            ]
        })
        .collect()
}

fn run_gauss(dir: &Path, axis: &str, extra: &[&str]) -> Output {
    let out = dir.join(format!("out{axis}.npy"));
    let mut args: Vec<String> = vec!["reduce".into(), "Exp(-SqDist(x,y)*g)*b".into()];
    args.extend(gauss_args(dir));
    args.extend(["--reduction", "Sum", "--axis", axis, "-o", p(&out)].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    keops(&refs)
}

#[test]
fn gaussian_sum_matches_a_direct_computation() {
    let tmp_dir = tmp("gauss");
    let dir = tmp_dir.0.as_path();
    let (x, y, b, g) = gauss_inputs(dir);
    let out = run_gauss(dir, "1", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("out1.npy"));
    let (descr, shape, v) = read(&dir.join("out1.npy"));
    assert_eq!(descr, "<f8");
    assert_eq!(shape, vec![N as u64, 1]);
    for (i, vi) in v.iter().enumerate() {
        let want: f64 = (0..M)
            .map(|j| (-sqdist(&x, i, &y, j) * g).exp() * b[j])
            .sum();
        assert!(
            (vi - want).abs() < 1e-12 * want.abs().max(1.0),
            "row {i}: {vi} vs {want}"
        );
    }
}

#[test]
fn axis_0_reduces_over_i_and_float32_is_kept() {
    let tmp_dir = tmp("axis0");
    let dir = tmp_dir.0.as_path();
    let (x, y, b, g) = gauss_inputs(dir);
    let out = run_gauss(
        dir,
        "0",
        &["--dtype", "float32", "--threads", "1", "--backend", "CPU"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (descr, shape, v) = read(&dir.join("out0.npy"));
    assert_eq!(descr, "<f4");
    assert_eq!(shape, vec![M as u64, 1]);
    for j in 0..M {
        let want: f64 = (0..N)
            .map(|i| (-sqdist(&x, i, &y, j) * g).exp() * b[j])
            .sum();
        assert!(
            (v[j] - want).abs() < 1e-5 * want.abs().max(1.0),
            "col {j}: {} vs {want}",
            v[j]
        );
    }
}

/// The `k` nearest `y` of each `x` (stable on ties).
fn knn(x: &[f64], y: &[f64], i: usize, k: usize) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..M).collect();
    idx.sort_by(|&a, &b| sqdist(x, i, y, a).total_cmp(&sqdist(x, i, y, b)));
    idx[..k].iter().map(|&j| j as f64).collect()
}

#[test]
fn argkmin_writes_int64_indices() {
    let tmp_dir = tmp("argkmin");
    let dir = tmp_dir.0.as_path();
    let (x, y, _, _) = gauss_inputs(dir);
    let out_path = dir.join("knn.npy");
    let out = keops(&[
        "reduce",
        "SqDist(x,y)",
        "--arg",
        &format!("x=Vi:{}", p(&dir.join("x.npy"))),
        "--arg",
        &format!("y=Vj:{}", p(&dir.join("y.npy"))),
        "--reduction",
        "ArgKMin",
        "--k",
        "3",
        "--axis",
        "1",
        "-o",
        p(&out_path),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (descr, shape, v) = read(&out_path);
    assert_eq!(descr, "<i8");
    assert_eq!(shape, vec![N as u64, 3]);
    for i in 0..N {
        assert_eq!(
            &v[i * 3..i * 3 + 3],
            knn(&x, &y, i, 3).as_slice(),
            "row {i}"
        );
    }
    assert!(!dir.join("knn_indices.npy").exists());
}

#[test]
fn min_argmin_writes_values_and_indices() {
    let tmp_dir = tmp("minargmin");
    let dir = tmp_dir.0.as_path();
    let (x, y, _, _) = gauss_inputs(dir);
    let out_path = dir.join("m.npy");
    let out = keops(&[
        "reduce",
        "SqDist(x,y)",
        "--arg",
        &format!("x=Vi:{}", p(&dir.join("x.npy"))),
        "--arg",
        &format!("y=Vj:{}", p(&dir.join("y.npy"))),
        "--reduction",
        "Min_ArgMin",
        "--axis",
        "1",
        "-o",
        p(&out_path),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("m.npy") && stdout.contains("m_indices.npy"),
        "{stdout}"
    );
    let (dv, sv, v) = read(&out_path);
    let (di, si, idx) = read(&dir.join("m_indices.npy"));
    assert_eq!((dv.as_str(), di.as_str()), ("<f8", "<i8"));
    assert_eq!(sv, vec![N as u64, 1]);
    assert_eq!(si, vec![N as u64, 1]);
    for i in 0..N {
        let best = knn(&x, &y, i, 1)[0];
        assert_eq!(idx[i], best);
        assert!((v[i] - sqdist(&x, i, &y, best as usize)).abs() < 1e-12);
    }
}

#[test]
fn sum_softmax_weight_takes_a_weight_formula() {
    let tmp_dir = tmp("softmax");
    let dir = tmp_dir.0.as_path();
    let (x, y, b, _) = gauss_inputs(dir);
    let out_path = dir.join("s.npy");
    let out = keops(&[
        "reduce",
        "-SqDist(x,y)",
        "--weight",
        "b",
        "--arg",
        &format!("x=Vi:{}", p(&dir.join("x.npy"))),
        "--arg",
        &format!("y=Vj:{}", p(&dir.join("y.npy"))),
        "--arg",
        &format!("b=Vj:{}", p(&dir.join("b.npy"))),
        "--reduction",
        "SumSoftMaxWeight",
        "--axis",
        "1",
        "-o",
        p(&out_path),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, shape, v) = read(&out_path);
    assert_eq!(shape, vec![N as u64, 1]);
    for (i, vi) in v.iter().enumerate() {
        let w: Vec<f64> = (0..M).map(|j| (-sqdist(&x, i, &y, j)).exp()).collect();
        let want = w.iter().zip(&b).map(|(w, b)| w * b).sum::<f64>() / w.iter().sum::<f64>();
        assert!((vi - want).abs() < 1e-12, "row {i}");
    }
}

#[test]
fn help_prints_usage() {
    for args in [&["--help"][..], &["reduce", "--help"], &["bench", "--help"]] {
        let out = keops(args);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

#[test]
fn bad_inputs_give_a_one_line_error_and_exit_code_2() {
    let tmp_dir = tmp("errors");
    let dir = tmp_dir.0.as_path();
    gauss_inputs(dir);
    write(
        &dir.join("fortran.npy"),
        &data(N * D, 4),
        &[N as u64, D as u64],
        npyz::Order::Fortran,
    );
    write_c(&dir.join("ints.npy"), &[1i32, 2, 3], &[3]);
    let x = format!("x=Vi:{}", p(&dir.join("x.npy")));
    let y = format!("y=Vj:{}", p(&dir.join("y.npy")));
    let out = dir.join("o.npy");
    let o = p(&out);
    let base = |formula: &'static str, red: &'static str, args: Vec<String>| {
        let mut v: Vec<String> = vec!["reduce".into(), formula.into()];
        for a in args {
            v.push("--arg".into());
            v.push(a);
        }
        v.extend(["--reduction", red, "--axis", "1", "-o", o].map(String::from));
        v
    };
    let run = |v: Vec<String>| keops(&v.iter().map(String::as_str).collect::<Vec<_>>());

    // Unknown reduction.
    assert_user_error(
        &run(base("SqDist(x,y)", "Median", vec![x.clone(), y.clone()])),
        "unknown reduction",
    );
    // Missing file.
    let missing = format!("x=Vi:{}", p(&dir.join("nope.npy")));
    assert_user_error(
        &run(base("SqDist(x,y)", "Sum", vec![missing, y.clone()])),
        "nope.npy",
    );
    // Malformed --arg.
    assert_user_error(
        &run(base("SqDist(x,y)", "Sum", vec!["x:Vi".into(), y.clone()])),
        "NAME=CAT:FILE",
    );
    // Wrong category.
    let wrong = format!("x=Vk:{}", p(&dir.join("x.npy")));
    assert_user_error(
        &run(base("SqDist(x,y)", "Sum", vec![wrong, y.clone()])),
        "Vk",
    );
    // Dimension mismatch in the formula (x is 3-D, z is 2-D).
    write_c(&dir.join("z.npy"), &data(M * 2, 5), &[M as u64, 2]);
    let z = format!("z=Vj:{}", p(&dir.join("z.npy")));
    assert_user_error(
        &run(base("SqDist(x,z)", "Sum", vec![x.clone(), z])),
        "dimension",
    );
    // Formula parse error: keops' message names the position.
    assert_user_error(
        &run(base("SqDist(x,y", "Sum", vec![x.clone(), y.clone()])),
        "position",
    );
    // Unknown alias.
    assert_user_error(
        &run(base("SqDist(x,z)", "Sum", vec![x.clone(), y.clone()])),
        "z",
    );
    // K missing, K for a reduction without K.
    assert_user_error(
        &run(base("SqDist(x,y)", "ArgKMin", vec![x.clone(), y.clone()])),
        "K",
    );
    let mut v = base("SqDist(x,y)", "Sum", vec![x.clone(), y.clone()]);
    v.extend(["--k", "2"].map(String::from));
    assert_user_error(&run(v), "--k");
    // Unknown flag, missing value, missing --axis.
    let mut v = base("SqDist(x,y)", "Sum", vec![x.clone(), y.clone()]);
    v.push("--frobnicate".into());
    assert_user_error(&run(v), "--frobnicate");
    let mut v = base("SqDist(x,y)", "Sum", vec![x.clone(), y.clone()]);
    v.push("--threads".into());
    assert_user_error(&run(v), "--threads");
    assert_user_error(
        &keops(&[
            "reduce",
            "SqDist(x,y)",
            "--arg",
            &x,
            "--arg",
            &y,
            "--reduction",
            "Sum",
            "-o",
            o,
        ]),
        "--axis",
    );
    // Fortran order, integer dtype.
    let f = format!("x=Vi:{}", p(&dir.join("fortran.npy")));
    assert_user_error(
        &run(base("SqDist(x,y)", "Sum", vec![f, y.clone()])),
        "Fortran",
    );
    let i = format!("b=Vj:{}", p(&dir.join("ints.npy")));
    assert_user_error(
        &run(base("SqDist(x,y)*b", "Sum", vec![x.clone(), y.clone(), i])),
        "float32 or float64",
    );
    // Row counts that disagree (two Vj of different lengths).
    let x_as_vj = format!("b=Vj:{}", p(&dir.join("x.npy")));
    assert_user_error(
        &run(base(
            "SqDist(x,y)*Sum(b)",
            "Sum",
            vec![x.clone(), y.clone(), x_as_vj],
        )),
        "rows",
    );
    // The GPU backend of this build, an unknown command.
    let mut v = base("SqDist(x,y)", "Sum", vec![x.clone(), y.clone()]);
    v.extend(["--backend", "GPU"].map(String::from));
    let out = run(v);
    if !out.status.success() {
        assert_user_error(&out, "GPU");
    }
    assert_user_error(&keops(&["frobnicate"]), "unknown command");
    assert_user_error(&keops(&[]), "no command");
}

/// `Grad` in a formula from the command line: the gradient of the Gaussian sum with
/// respect to x, against its closed form.
#[test]
fn gradient_formula_from_the_command_line() {
    let tmp_dir = tmp("grad");
    let dir = tmp_dir.0.as_path();
    let (x, y, b, g) = gauss_inputs(dir);
    let e = data(N, 4);
    write_c(&dir.join("e.npy"), &e, &[N as u64, 1]);
    let out = dir.join("grad.npy");
    let mut args: Vec<String> = vec!["reduce".into(), "Grad(Exp(-SqDist(x,y)*g)*b, x, e)".into()];
    args.extend(gauss_args(dir));
    args.extend([
        "--arg".to_string(),
        format!("e=Vi:{}", p(&dir.join("e.npy"))),
    ]);
    args.extend(["--reduction", "Sum", "--axis", "1", "-o", p(&out)].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = keops(&refs);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let (_, shape, v) = read(&out);
    assert_eq!(shape, vec![N as u64, D as u64]);
    for i in 0..N {
        for k in 0..D {
            let want: f64 = (0..M)
                .map(|j| {
                    let kij = (-sqdist(&x, i, &y, j) * g).exp() * b[j];
                    -2.0 * g * (x[i * D + k] - y[j * D + k]) * kij * e[i]
                })
                .sum();
            let got = v[i * D + k];
            assert!(
                (got - want).abs() < 1e-12 * want.abs().max(1.0),
                "({i},{k}): {got} vs {want}"
            );
        }
    }
}
