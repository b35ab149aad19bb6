//! `keops bench`: the benchmark set, timed against dense NumPy and pykeops in the same run.
//!
//! keops-rs is timed in-process (best of 3 after a warm-up, or one run after a long warm-up). The inputs and the keops-rs
//! result are then written as `.npy` to a temporary folder and a small Python script
//! ([`REF_SCRIPT`]) times the dense NumPy computation (in chunks of rows, float32) and
//! pykeops' CPU backend on them, and checks the keops-rs result against NumPy's.

use crate::error::{CliError, Result};
use crate::npy;
use crate::reduce::{parse_count, ArgIter};
use keops::{Arg, Genred, Options, Reduction};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Usage text of `keops bench`.
pub const USAGE: &str = "\
Usage: keops bench [--quick] [--threads N] [--ref-budget SECONDS] [--filter TEXT]

Runs the benchmark set (float32, points uniform in [0,1]^D) and prints, per case, the
keops-rs time (best of 3 after a warm-up; 1 run when the warm-up took over 5 s), its throughput, and the times of dense NumPy
and pykeops (CPU) measured in the same run, with speed-up factors (their time / ours).

Options:
  --quick                sizes 10x smaller per axis (smoke test)
  --threads N            CPU threads for keops-rs (and OMP_NUM_THREADS for pykeops)
  --ref-budget SECONDS   time budget of each NumPy / pykeops reference (default 10); past
                         it, a reference is timed on the first rows and extrapolated (~)
  --filter TEXT          only the cases whose label contains TEXT
  -h, --help             this help

The references run with $KEOPS_PYTHON if set, else python3; they show n/a when numpy or
pykeops cannot be imported.
";

/// The Python side of the benchmark (see the file for its protocol).
pub const REF_SCRIPT: &str = include_str!("bench_ref.py");

/// The formulas of the benchmark set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `Exp(-SqDist(x,y)*g)*b`, Sum.
    Gauss,
    /// `SqDist(x,y)`, ArgKMin(10).
    Knn,
    /// `-SqDist(x,y)*g`, LogSumExp.
    Lse,
    /// `Exp(-Sqrt(SqDist(x,y)+1))*Cos(Scalprod(x,y))*b`, Sum: no fused kernel.
    Generic,
}

/// K of the k-NN cases.
const KNN_K: usize = 10;
/// Gaussian scale `s`; the formulas use `g = 1 / (2 s^2)`.
const SIGMA: f64 = 0.2;

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gauss => "gauss",
            Kind::Knn => "knn",
            Kind::Lse => "lse",
            Kind::Generic => "generic",
        }
    }

    fn formula(self) -> &'static str {
        match self {
            Kind::Gauss => "Exp(-SqDist(x,y)*g)*b",
            Kind::Knn => "SqDist(x,y)",
            Kind::Lse => "-SqDist(x,y)*g",
            Kind::Generic => "Exp(-Sqrt(SqDist(x,y)+1))*Cos(Scalprod(x,y))*b",
        }
    }

    fn reduction(self) -> Reduction {
        match self {
            Kind::Gauss | Kind::Generic => Reduction::Sum,
            Kind::Knn => Reduction::ArgKMin(KNN_K),
            Kind::Lse => Reduction::LogSumExp,
        }
    }

    fn uses_g(self) -> bool {
        matches!(self, Kind::Gauss | Kind::Lse)
    }

    fn uses_b(self) -> bool {
        matches!(self, Kind::Gauss | Kind::Generic)
    }
}

/// One benchmark case: `N = M = n` points in dimension `d`.
#[derive(Clone, Debug)]
struct Case {
    label: &'static str,
    kind: Kind,
    n: usize,
    d: usize,
}

/// The benchmark set; `quick` divides every size by 10.
fn cases(quick: bool) -> Vec<Case> {
    let s = |n: usize| if quick { n / 10 } else { n };
    let c = |label, kind, n, d| Case {
        label,
        kind,
        n: s(n),
        d,
    };
    vec![
        c("Gaussian kernel sum", Kind::Gauss, 10_000, 3),
        c("Gaussian kernel sum", Kind::Gauss, 100_000, 3),
        c("Gaussian kernel sum", Kind::Gauss, 200_000, 3),
        c("ArgKMin K=10 (k-NN)", Kind::Knn, 100_000, 3),
        c("ArgKMin K=10 (k-NN)", Kind::Knn, 10_000, 64),
        c("LogSumExp", Kind::Lse, 100_000, 3),
        c("generic formula (tile program)", Kind::Generic, 100_000, 3),
    ]
}

/// SplitMix64: a tiny deterministic generator for the benchmark data.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, 24 random bits.
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    fn fill(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next_f32()).collect()
    }
}

/// Options of `keops bench`.
#[derive(Clone, Debug, PartialEq)]
struct BenchArgs {
    quick: bool,
    threads: Option<usize>,
    budget: f64,
    filter: Option<String>,
}

/// Parses the arguments; `None` asks for the usage.
fn parse(argv: &[String]) -> Result<Option<BenchArgs>> {
    let mut it = ArgIter::new(argv);
    let mut a = BenchArgs {
        quick: false,
        threads: None,
        budget: 10.0,
        filter: None,
    };
    while let Some(f) = it.next_arg()? {
        match f {
            "-h" | "--help" => return Ok(None),
            "--quick" => {
                it.no_value(f)?;
                a.quick = true
            }
            "--threads" => a.threads = Some(parse_count("--threads", it.value(f)?)?),
            "--ref-budget" => {
                let v = it.value(f)?;
                a.budget = match v.trim().parse::<f64>() {
                    Ok(s) if s > 0.0 && s.is_finite() => s,
                    _ => {
                        return Err(CliError::new(format!(
                            "--ref-budget: {v:?} is not a positive number of seconds"
                        )))
                    }
                }
            }
            "--filter" => a.filter = Some(it.value(f)?.to_string()),
            _ => {
                it.no_value(f)?;
                return Err(CliError::new(format!(
                    "unknown argument {f:?} for bench (try `keops bench --help`)"
                )));
            }
        }
    }
    Ok(Some(a))
}

/// A reference time reported by the Python side.
#[derive(Clone, Debug, PartialEq)]
enum RefTime {
    /// Seconds, whether extrapolated from a subset of rows, and the check of our result.
    Time {
        secs: f64,
        estimated: bool,
        check: String,
    },
    /// Not available, and why.
    Na(String),
}

impl RefTime {
    /// `"12.3"`, `"~12.3"` (extrapolated) or `"n/a"`.
    fn cell(&self) -> String {
        match self {
            RefTime::Time {
                secs, estimated, ..
            } => {
                format!("{}{}", if *estimated { "~" } else { "" }, fmt_secs(*secs))
            }
            RefTime::Na(_) => "n/a".into(),
        }
    }

    /// Speed-up of keops-rs: their time / ours.
    fn ratio(&self, ours: f64) -> String {
        match self {
            RefTime::Time {
                secs, estimated, ..
            } => {
                format!("{}{:.1}x", if *estimated { "~" } else { "" }, secs / ours)
            }
            RefTime::Na(_) => "n/a".into(),
        }
    }
}

fn fmt_secs(s: f64) -> String {
    if s < 0.01 {
        format!("{:.2}ms", s * 1e3)
    } else if s < 10.0 {
        format!("{s:.3}s")
    } else {
        format!("{s:.1}s")
    }
}

/// Parses one `RESULT NAME ...` line of the reference script.
fn parse_ref_line(rest: &str) -> RefTime {
    let mut w = rest.split_whitespace();
    match (w.next(), w.next(), w.next()) {
        (Some("n/a"), why, more) => {
            let mut reason = why.unwrap_or("").to_string();
            if let Some(m) = more {
                reason.push(' ');
                reason.push_str(m);
                for x in w {
                    reason.push(' ');
                    reason.push_str(x);
                }
            }
            RefTime::Na(reason)
        }
        (Some(t), Some(how), check) => match t.parse::<f64>() {
            Ok(secs) => RefTime::Time {
                secs,
                estimated: how == "est",
                check: check.unwrap_or("").to_string(),
            },
            Err(_) => RefTime::Na(format!("unreadable output {rest:?}")),
        },
        _ => RefTime::Na(format!("unreadable output {rest:?}")),
    }
}

/// A unique temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("keops-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)
            .map_err(|e| CliError::new(format!("cannot create {}: {e}", p.display())))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Python interpreter: `$KEOPS_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("KEOPS_PYTHON")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// Runs the reference script on the case's files in `dir`: (NumPy, pykeops).
fn references(dir: &Path, case: &Case, g: f64, args: &BenchArgs) -> (RefTime, RefTime) {
    let script = dir.join("bench_ref.py");
    if let Err(e) = std::fs::write(&script, REF_SCRIPT) {
        let na = RefTime::Na(format!("cannot write the script: {e}"));
        return (na.clone(), na);
    }
    let mut cmd = Command::new(python());
    cmd.arg(&script)
        .arg(dir)
        .arg(case.kind.name())
        .arg(format!("{}", args.budget))
        .arg(format!("{g}"))
        .arg(format!("{KNN_K}"));
    if let Some(t) = args.threads {
        cmd.env("OMP_NUM_THREADS", t.to_string());
    }
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            let na = RefTime::Na(format!("cannot run {}: {e}", python()));
            return (na.clone(), na);
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (mut np, mut pk) = (None, None);
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("RESULT numpy ") {
            np = Some(parse_ref_line(rest));
        } else if let Some(rest) = line.strip_prefix("RESULT pykeops ") {
            pk = Some(parse_ref_line(rest));
        }
    }
    let failed = || {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        RefTime::Na(format!(
            "the reference script failed ({}): {last}",
            out.status
        ))
    };
    (np.unwrap_or_else(failed), pk.unwrap_or_else(failed))
}

/// A warm-up past this long is followed by one timed run instead of three.
const LONG_RUN: Duration = Duration::from_secs(5);

/// Best of 3 timed calls after one warm-up (1 timed call when the warm-up took more than
/// [`LONG_RUN`], to keep the full set within minutes); returns the time and the runs.
fn time_best(mut f: impl FnMut() -> Result<()>) -> Result<(Duration, usize)> {
    let t = Instant::now();
    f()?;
    let runs = if t.elapsed() > LONG_RUN { 1 } else { 3 };
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed());
    }
    Ok((best, runs))
}

/// Times one case and its references; prints its row.
fn run_case(case: &Case, args: &BenchArgs) -> Result<()> {
    let (n, d) = (case.n, case.d);
    let seed = 0x6b65_6f70_7300_0000 ^ ((n as u64) << 8) ^ d as u64;
    let mut rng = SplitMix64(seed);
    let x = rng.fill(n * d);
    let y = rng.fill(n * d);
    let b = rng.fill(n);
    let g = 1.0 / (2.0 * SIGMA * SIGMA);
    let gv = [g as f32];
    let kind = case.kind;
    let mut aliases = vec![format!("x = Vi(0,{d})"), format!("y = Vj(1,{d})")];
    let mut call_args = vec![Arg::new(&x, [n, d]), Arg::new(&y, [n, d])];
    if kind.uses_g() {
        aliases.push(format!("g = Pm({},1)", aliases.len()));
        call_args.push(Arg::new(&gv, [1]));
    }
    if kind.uses_b() {
        aliases.push(format!("b = Vj({},1)", aliases.len()));
        call_args.push(Arg::new(&b, [n, 1]));
    }
    let genred = Genred::new(kind.formula(), &aliases, kind.reduction(), 1)?;
    let opts = Options {
        threads: args.threads,
        ..Default::default()
    };
    let mut result = None;
    let (best, runs) = time_best(|| {
        result = Some(genred.call_with(&call_args, &opts)?);
        Ok(())
    })?;
    let best = best.as_secs_f64();

    let dir = TempDir::new()?;
    npy::write(&dir.0.join("x.npy"), &x, &[n, d])?;
    npy::write(&dir.0.join("y.npy"), &y, &[n, d])?;
    if kind.uses_b() {
        npy::write(&dir.0.join("b.npy"), &b, &[n, 1])?;
    }
    match result {
        Some(keops::Reduced {
            values: Some(v), ..
        }) => npy::write(&dir.0.join("keops.npy"), &v.data, &v.shape)?,
        Some(keops::Reduced {
            indices: Some(i), ..
        }) => npy::write(&dir.0.join("keops.npy"), &i.data, &i.shape)?,
        _ => return Err(CliError::new("the benchmark reduction returned no output")),
    }
    let (np, pk) = references(&dir.0, case, g, args);
    let pairs = (n as f64) * (n as f64);
    let check = match &np {
        RefTime::Time { check, .. } => check.clone(),
        RefTime::Na(_) => "-".into(),
    };
    say!(
        "{:<31} {:>7} {:>3} {:>9} {:>4} {:>9} {:>9} {:>8} {:>9} {:>8}  {}",
        case.label,
        n,
        d,
        fmt_secs(best),
        runs,
        format!("{:.3}", pairs / best / 1e9),
        np.cell(),
        np.ratio(best),
        pk.cell(),
        pk.ratio(best),
        check
    );
    for (name, r) in [("numpy", &np), ("pykeops", &pk)] {
        if let RefTime::Na(why) = r {
            if !why.is_empty() {
                say!("    ({name} n/a: {why})");
            }
        }
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
    Ok(())
}

/// `keops bench ...`.
pub fn main(argv: &[String]) -> Result<()> {
    let Some(args) = parse(argv)? else {
        say!("{}", USAGE.trim_end());
        return Ok(());
    };
    let selected: Vec<Case> = cases(args.quick)
        .into_iter()
        .filter(|c| args.filter.as_deref().map_or(true, |f| c.label.contains(f)))
        .collect();
    if selected.is_empty() {
        return Err(CliError::new("--filter matched no case"));
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    say!(
        "keops-rs bench{}: float32, N = M, points uniform in [0,1]^D, g = 1/(2*{SIGMA}^2), {threads} thread(s), python: {}",
        if args.quick { " --quick" } else { "" },
        python()
    );
    say!(
        "{:<31} {:>7} {:>3} {:>9} {:>4} {:>9} {:>9} {:>8} {:>9} {:>8}  check vs NumPy",
        "case",
        "N=M",
        "D",
        "keops-rs",
        "runs",
        "Gpairs/s",
        "NumPy",
        "speedup",
        "pykeops",
        "speedup"
    );
    for case in &selected {
        run_case(case, &args)?;
    }
    say!(
        "keops-rs: best of `runs` after a warm-up (1 run when the warm-up took over 5 s). NumPy: dense float32, in chunks of at most 2000 rows and 2^24 entries; pykeops: \
         backend=\"CPU\", after compilation. ~: reference over its budget, timed on the first rows \
         and extrapolated. speedup = reference time / keops-rs time. check: max error of keops-rs \
         relative to the largest |NumPy value| (k-NN: fraction of indices that differ)."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_in_range() {
        let a = SplitMix64(7).fill(1000);
        assert_eq!(a, SplitMix64(7).fill(1000));
        assert!(a.iter().all(|&v| (0.0..1.0).contains(&v)));
        let mean = a.iter().sum::<f32>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05);
    }

    #[test]
    fn reference_lines_parse() {
        assert_eq!(
            parse_ref_line("1.5 est err=1e-6"),
            RefTime::Time {
                secs: 1.5,
                estimated: true,
                check: "err=1e-6".into()
            }
        );
        assert_eq!(
            parse_ref_line("n/a ModuleNotFoundError"),
            RefTime::Na("ModuleNotFoundError".into())
        );
        assert!(matches!(parse_ref_line("garbage"), RefTime::Na(_)));
    }

    #[test]
    fn bench_arguments() {
        let sv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = parse(&sv(&["--quick", "--threads=2"]))
            .expect("ok")
            .expect("run");
        assert!(a.quick);
        assert_eq!(a.threads, Some(2));
        assert!(parse(&sv(&["--help"])).expect("ok").is_none());
        assert!(parse(&sv(&["--slow"])).is_err());
        assert!(parse(&sv(&["--ref-budget", "-1"])).is_err());
    }
}
