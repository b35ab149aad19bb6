//! The CLI's error: a message shown as `keops: MESSAGE` on one line, exit code 2.

use std::fmt;

/// A user-facing error. Its message is always rendered on a single line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(String);

impl CliError {
    /// An error with this message (newlines are folded when displayed).
    pub fn new(msg: impl Into<String>) -> Self {
        CliError(msg.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&one_line(&self.0))
    }
}

impl std::error::Error for CliError {}

impl From<keops::KeopsError> for CliError {
    fn from(e: keops::KeopsError) -> Self {
        CliError(e.to_string())
    }
}

/// Folds a message onto one line: line breaks (and the spaces around them) become `"; "`.
pub fn one_line(msg: &str) -> String {
    let parts: Vec<&str> = msg
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join("; ")
}

/// Shorthand for the CLI's results.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_fold_to_one_line() {
        assert_eq!(CliError::new("a\n  b\n\nc").to_string(), "a; b; c");
        assert_eq!(one_line("plain"), "plain");
    }
}
