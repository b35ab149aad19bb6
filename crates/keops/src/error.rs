//! The error type of the crate: every failure a user can cause is one of these.

use thiserror::Error;

/// Everything that can go wrong when building, planning or running a reduction.
///
/// Messages say what was wrong and, where it helps, what was expected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum KeopsError {
    /// A formula string could not be parsed or built (an unknown name, a syntax error,
    /// or an operation whose operands do not fit, located in the text).
    #[error("in formula {input:?} at position {pos}: {msg}")]
    Parse {
        /// The text being parsed.
        input: String,
        /// Byte offset of the problem.
        pos: usize,
        /// What was expected or found.
        msg: String,
    },
    /// An operation was given operands of incompatible dimensions.
    #[error("dimension mismatch in {op}: {msg}")]
    Dim {
        /// The operation's KeOps name.
        op: String,
        /// Details (the dimensions found).
        msg: String,
    },
    /// An operation was used with the wrong number of operands or parameters.
    #[error("{op}: {msg}")]
    Arity {
        /// The operation's KeOps name.
        op: String,
        /// Details.
        msg: String,
    },
    /// A variable is declared twice with different categories or dimensions.
    #[error("conflicting declarations of argument {index}: {first} and {second}")]
    Conflict {
        /// Argument position.
        index: usize,
        /// First declaration.
        first: String,
        /// Second declaration.
        second: String,
    },
    /// Arguments passed at call time do not match the formula.
    #[error("argument {index}: {msg}")]
    Argument {
        /// Argument position (as in `Vi(index, dim)`).
        index: usize,
        /// What is wrong (expected vs actual).
        msg: String,
    },
    /// The set of arguments is wrong as a whole (missing, extra, inconsistent sizes).
    #[error("arguments: {0}")]
    Arguments(String),
    /// A reduction was configured wrongly (unknown name, bad K, bad axis, ...).
    #[error("reduction {reduction}: {msg}")]
    Reduction {
        /// The reduction's name.
        reduction: String,
        /// Details.
        msg: String,
    },
    /// An option has an invalid value.
    #[error("option {name}: {msg}")]
    Option {
        /// Option name.
        name: String,
        /// Details.
        msg: String,
    },
    /// A block-sparse `ranges` argument is malformed or does not fit the data.
    #[error("ranges: {part} {msg}")]
    Ranges {
        /// Which of KeOps' six arrays (`ranges_i`, `slices_i`, `redranges_j`, ...).
        part: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The requested backend is not available on this machine.
    #[error("backend {backend} is not available: {msg}")]
    Backend {
        /// Requested backend.
        backend: String,
        /// Why.
        msg: String,
    },
    /// A CUDA driver call failed (out of memory, launch failure, ...).
    #[error("CUDA: {0}")]
    Cuda(String),
    /// Host memory for a result or its working state could not be allocated.
    #[error("out of memory: {what} needs {bytes} bytes")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// How many bytes were asked for (`usize::MAX` where the size overflows).
        bytes: usize,
    },
    /// NVRTC refused a generated kernel: where its source was saved, and NVRTC's log.
    #[error(
        "NVRTC could not compile the generated kernel (source saved at {source_path}):\n{log}"
    )]
    Compile {
        /// Where the generated source was written.
        source_path: String,
        /// NVRTC's log, with line numbers of that file.
        log: String,
    },
}

impl KeopsError {
    /// The message without "backend ... is not available" where it is that error: for
    /// reports that list what is missing (the GPU status, the libraries tried).
    pub(crate) fn reason(self) -> String {
        match self {
            KeopsError::Backend { msg, .. } => msg,
            other => other.to_string(),
        }
    }
}

/// The value of environment variable `name` (`v`, as read): `None` when unset or blank;
/// `parse` of it trimmed; or, where `parse` refuses it, an error naming the variable and
/// the value and saying that it must be `expected` (never a silent default).
pub(crate) fn parse_env<T>(
    name: &str,
    v: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
    expected: &str,
) -> Result<Option<T>> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => parse(t).map(Some).ok_or_else(|| KeopsError::Option {
            name: name.into(),
            msg: format!("is '{t}'; it must be {expected}"),
        }),
    }
}

/// Shorthand for `Result<T, KeopsError>`.
pub type Result<T, E = KeopsError> = std::result::Result<T, E>;

/// `len` copies of `fill`, or [`KeopsError::OutOfMemory`] naming `what` where the
/// allocator refuses (Rust's `vec!` would abort the process, Python's with it).
pub(crate) fn try_vec<T: Clone>(len: usize, fill: T, what: &str) -> Result<Vec<T>> {
    let oom = || KeopsError::OutOfMemory {
        what: what.to_string(),
        bytes: len.saturating_mul(std::mem::size_of::<T>()),
    };
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| oom())?;
    v.resize(len, fill);
    Ok(v)
}
