//! `keops`: the command line of keops-rs.
//!
//! - `keops reduce FORMULA --arg NAME=CAT:FILE.npy ... --reduction NAME --axis 0|1 -o OUT.npy`
//!   reduces `.npy` arrays with a KeOps formula (see [`reduce`]);
//! - `keops bench [--quick] [--threads N]` runs the benchmark set and prints a table of
//!   times and ratios against dense NumPy and pykeops (see [`bench`](mod@bench)).
//!
//! Every user error ends the program with a one-line message on stderr that starts with
//! `keops: `, and exit code 2.

#![warn(missing_docs)]

/// `println!` that ignores write errors (a closed pipe must not panic).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

mod bench;
mod error;
mod npy;
mod reduce;

use error::CliError;
use std::process::ExitCode;

/// Top-level usage text.
pub const USAGE: &str = "\
keops: kernel operations on symbolic matrices (keops-rs)

Usage:
  keops reduce FORMULA --arg NAME=CAT:FILE.npy [--arg ...] --reduction NAME --axis 0|1 -o OUT.npy [options]
  keops bench [--quick] [--threads N] [--ref-budget SECONDS]
  keops --help | keops reduce --help | keops bench --help

Commands:
  reduce   reduce .npy arrays with a KeOps formula, write the result as .npy
  bench    run the benchmark set, compare with dense NumPy and pykeops when available
";

/// Exit code of every user error.
const EXIT_USAGE: u8 = 2;
/// Exit code of an internal error (a bug: a panic caught at the top).
const EXIT_INTERNAL: u8 = 101;

fn main() -> ExitCode {
    // A panic is a bug, not a user error: report it on one line too, without a backtrace
    // dump interleaved with the output.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let loc = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "keops: internal error (please report): {}{loc}",
            error::one_line(&msg)
        );
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    match std::panic::catch_unwind(|| run(&args)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("keops: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(_) => ExitCode::from(EXIT_INTERNAL),
    }
}

/// Dispatches on the sub-command.
fn run(args: &[String]) -> Result<(), CliError> {
    match args.first().map(String::as_str) {
        None => Err(CliError::new("no command given; try `keops --help`")),
        Some("-h" | "--help" | "help") => {
            say!("{USAGE}\n{}\n{}", reduce::USAGE, bench::USAGE.trim_end());
            Ok(())
        }
        Some("-V" | "--version") => {
            say!("keops {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("reduce") => reduce::main(&args[1..]),
        Some("bench") => bench::main(&args[1..]),
        Some(other) => Err(CliError::new(format!(
            "unknown command {other:?}; expected `reduce` or `bench` (try `keops --help`)"
        ))),
    }
}
