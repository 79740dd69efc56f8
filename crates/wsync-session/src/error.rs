//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file or folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written (the message has the line).
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        source: serde_json::Error,
    },
    /// There is no handoff record to read.
    #[error("no handoff record at {path} (run `wsync handoff save` first)")]
    NoHandoff {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A path is not inside the synced root.
    #[error("{path} is not inside the synced root {root}")]
    OutsideRoot {
        /// The path.
        path: PathBuf,
        /// The synced root.
        root: PathBuf,
    },
    /// A pattern (secret name pattern) is not a valid glob.
    #[error("invalid pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern text.
        pattern: String,
        /// The glob compiler's error.
        source: globset::Error,
    },
    /// Walking a folder tree failed.
    #[error("{path}: {source}")]
    Walk {
        /// The root being walked.
        path: PathBuf,
        /// The walker's error.
        source: ignore::Error,
    },
    /// Running the `git` program failed.
    #[error("git in {path}: {message}")]
    Git {
        /// The folder git ran in.
        path: PathBuf,
        /// What git said.
        message: String,
    },
    /// No project with that name is registered.
    #[error("no project named {name:?} in {path} (see `wsync projects list`)")]
    UnknownProject {
        /// The name asked for.
        name: String,
        /// The registry file.
        path: PathBuf,
    },
    /// A project command is empty.
    #[error("the command for project {name:?} is empty")]
    EmptyCommand {
        /// The project.
        name: String,
    },
    /// The `--rsh` command line is empty or unbalanced.
    #[error("invalid ssh command {command:?}: {why}")]
    BadRsh {
        /// The command line given.
        command: String,
        /// What is wrong with it.
        why: String,
    },
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
