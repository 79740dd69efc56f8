//! Documented process exit codes (also listed in README.md).
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | error: the operation failed; the message says why |
//! | 2 | usage: bad arguments or options |
//! | 3 | busy: another sync holds the lock (nothing was touched) |
//! | 4 | conflicts: the run finished but left conflicts to resolve |
//! | 5 | skipped: the decision engine or a rate limit declined the run |
//!
//! A wrapped command (`wsync lock run`, `wsync guard`, `wsync pause run`,
//! `wsync projects launch`) exits with that command's own code instead.

use std::fmt;

/// Success.
pub const SUCCESS: u8 = 0;
/// The operation failed.
pub const ERROR: u8 = 1;
/// Bad arguments or options (clap's own code).
pub const USAGE: u8 = 2;
/// Another sync holds the lock.
pub const BUSY: u8 = 3;
/// Finished, but conflicts remain.
pub const CONFLICTS: u8 = 4;
/// Declined by the decision engine or a rate limit.
pub const SKIPPED: u8 = 5;

/// An error that carries the exit code it must produce.
///
/// Command handlers wrap an error in `Failure` when the generic [`ERROR`]
/// code would be wrong, e.g. `Failure::new(BUSY, err)`.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What went wrong.
    pub source: anyhow::Error,
}

impl Failure {
    /// Wraps `source` so that the process exits with `code`.
    pub fn new(code: u8, source: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            source: source.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(&self.source))
    }
}

/// An error and its causes on one line, `outer: cause: root`, leaving out
/// a cause whose text the line already holds (the libraries' errors name
/// their source in their own message).
pub fn render(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

impl std::error::Error for Failure {}

/// The exit code for an error returned by a command handler.
pub fn code_for(err: &anyhow::Error) -> u8 {
    if let Some(failure) = err.downcast_ref::<Failure>() {
        return failure.code;
    }
    ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_each_cause_once() {
        let io = std::io::Error::other("EOF while parsing");
        let err = anyhow::Error::new(io).context("config.json: EOF while parsing");
        assert_eq!(render(&err), "config.json: EOF while parsing");
        let err = err.context("cannot load the config");
        assert_eq!(
            render(&err),
            "cannot load the config: config.json: EOF while parsing"
        );
        let wrapped = anyhow::Error::new(Failure::new(BUSY, err));
        assert_eq!(
            render(&wrapped),
            "cannot load the config: config.json: EOF while parsing"
        );
    }
}
