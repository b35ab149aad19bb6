//! Gaussian kernel density estimate with keops: the job `make demo` runs.
//!
//! a_i = sum_j exp(-|x_i - y_j|^2 / 2s^2) b_j for N = M points in 3-D (200,000 by
//! default; `--n 1000000` for more), in float32 on all cores. Prints the time, the
//! throughput, the peak memory and the largest error against a dense float64
//! computation on a 1,000-row subsample.
//!
//! ```text
//! cargo run --release -p keops --example kde -- [--n N] [--dim D] [--sigma S] [--threads T]
//! ```

use keops::{Arg, Genred, Options, Reduction};
use std::time::Instant;

struct Config {
    n: usize,
    dim: usize,
    sigma: f64,
    threads: Option<usize>,
}

fn parse_args() -> Result<Config, String> {
    let mut c = Config {
        n: 200_000,
        dim: 3,
        sigma: 0.1,
        threads: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--n" => c.n = value("--n")?.parse().map_err(|e| format!("--n: {e}"))?,
            "--dim" => c.dim = value("--dim")?.parse().map_err(|e| format!("--dim: {e}"))?,
            "--sigma" => {
                c.sigma = value("--sigma")?
                    .parse()
                    .map_err(|e| format!("--sigma: {e}"))?
            }
            "--threads" => {
                c.threads = Some(
                    value("--threads")?
                        .parse()
                        .map_err(|e| format!("--threads: {e}"))?,
                )
            }
            "-h" | "--help" => {
                println!("usage: kde [--n N] [--dim D] [--sigma S] [--threads T]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other:?} (try --help)")),
        }
    }
    if c.n == 0 || c.dim == 0 {
        return Err("--n and --dim must be positive".into());
    }
    Ok(c)
}

/// A small deterministic generator (splitmix64), so runs are reproducible.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Peak resident memory of this process in MiB (Linux), if known.
fn peak_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let c = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kde: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&c) {
        eprintln!("kde: {e}");
        std::process::exit(1);
    }
}

fn run(c: &Config) -> keops::Result<()> {
    let (n, d) = (c.n, c.dim);
    let mut rng = Rng(42);
    let x: Vec<f32> = (0..n * d).map(|_| rng.next_f32()).collect();
    let y: Vec<f32> = (0..n * d).map(|_| rng.next_f32()).collect();
    let b: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
    let g = [(1.0 / (2.0 * c.sigma * c.sigma)) as f32];
    let before = peak_mib();

    let kde = Genred::new(
        "Exp(-SqDist(x,y) * g) * b",
        &[
            format!("x = Vi(0,{d})"),
            format!("y = Vj(1,{d})"),
            "b = Vj(2,1)".into(),
            "g = Pm(3,1)".into(),
        ],
        Reduction::Sum,
        1,
    )?;
    let args = [
        Arg::new(&x, [n, d]),
        Arg::new(&y, [n, d]),
        Arg::new(&b, [n, 1]),
        Arg::new(&g, [1]),
    ];
    let opts = Options {
        threads: c.threads,
        ..Default::default()
    };
    let t = Instant::now();
    let out = kde.call_with(&args, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    let a = out.values.expect("Sum returns values").data;

    // Dense float64 check on a subsample of rows.
    let rows = n.min(1000);
    let step = n / rows;
    let mut max_rel = 0.0f64;
    for r in 0..rows {
        let i = r * step;
        let mut s = 0.0f64;
        for j in 0..n {
            let r2: f64 = (0..d)
                .map(|k| (x[i * d + k] as f64 - y[j * d + k] as f64).powi(2))
                .sum();
            s += (-r2 * g[0] as f64).exp() * b[j] as f64;
        }
        max_rel = max_rel.max((a[i] as f64 - s).abs() / s.abs().max(f64::MIN_POSITIVE));
    }

    let pairs = (n as f64) * (n as f64);
    println!(
        "Gaussian KDE, N = M = {n}, D = {d}, sigma = {}, float32, {} thread(s)",
        c.sigma,
        c.threads.unwrap_or_else(rayon_threads)
    );
    println!("time        {secs:.3} s");
    println!("throughput  {:.3e} pairs/s", pairs / secs);
    match (peak_mib(), before) {
        (Some(p), Some(b)) => println!(
            "peak memory {p:.1} MiB (inputs: {:.1} MiB; {:.1} MiB before the reduction)",
            ((2 * d + 1) * n * 4) as f64 / 1048576.0,
            b
        ),
        _ => println!("peak memory n/a"),
    }
    println!("max relative error vs dense float64 on {rows} rows: {max_rel:.2e}");
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
