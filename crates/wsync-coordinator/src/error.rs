//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Encoding or decoding JSON failed.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The JSON error (with line and column when decoding).
        source: serde_json::Error,
    },
    /// The config file is malformed, has an unknown key or a wrong type.
    #[error("config {}: {}{message}", path.display(), if key.is_empty() { String::new() } else { format!("key `{key}`: ") })]
    Config {
        /// The config file.
        path: PathBuf,
        /// The dotted key at fault (empty when the file is not valid JSON).
        key: String,
        /// What is wrong, with the expected type and the line and column.
        message: String,
    },
    /// A config key given on the command line does not exist.
    #[error("config key `{key}`: {why}")]
    ConfigKey {
        /// The dotted key.
        key: String,
        /// Why it was refused.
        why: String,
    },
    /// A libgit2 operation failed.
    #[error("git {op} in {}: {source}", path.display())]
    Git {
        /// The workspace.
        path: PathBuf,
        /// What was being done.
        op: String,
        /// The libgit2 error.
        source: git2::Error,
    },
    /// The `git` program failed.
    #[error("`{command}` in {} failed ({status}): {stderr}", path.display())]
    GitCommand {
        /// The workspace.
        path: PathBuf,
        /// The command line.
        command: String,
        /// The exit status.
        status: String,
        /// Its error output.
        stderr: String,
    },
    /// The workspace is in a state where syncing would be unsafe.
    #[error("refusing to sync {}: {why}", path.display())]
    Refused {
        /// The workspace.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Another sync holds the lock; nothing was touched.
    #[error("another sync holds the lock {}{}", path.display(), holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as text.
        holder: Option<String>,
    },
    /// The push was rejected every time, even after integrating.
    #[error("push to {remote} rejected {attempts} times: {detail}")]
    PushRejected {
        /// The remote's name.
        remote: String,
        /// How many pushes were tried.
        attempts: u32,
        /// git's last message.
        detail: String,
    },
    /// The run was cancelled (SIGTERM) before it could finish.
    #[error("sync cancelled during {phase}")]
    Cancelled {
        /// The phase where cancellation was noticed.
        phase: String,
    },
    /// The run failed after the snapshot and the workspace was restored.
    #[error("{source} (workspace restored to snapshot {snapshot})")]
    RolledBack {
        /// The snapshot the workspace was restored to.
        snapshot: String,
        /// The original failure.
        source: Box<Error>,
    },
    /// The run failed and restoring the snapshot failed too.
    #[error(
        "{source}; restoring snapshot {snapshot} also failed: {restore} (run `wsync snapshot restore {snapshot}`)"
    )]
    RollbackFailed {
        /// The snapshot that should be restored.
        snapshot: String,
        /// The original failure.
        source: Box<Error>,
        /// The restore failure.
        restore: Box<Error>,
    },
    /// A conflict could not be resolved as asked.
    #[error("conflict {}: {why}", path.display())]
    Conflict {
        /// The workspace-relative path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Stopping a running sync failed.
    #[error("emergency stop of pid {pid}: {why}")]
    Stop {
        /// The process id.
        pid: u32,
        /// Why.
        why: String,
    },
    /// A state file (queue, rate limits, circuit breaker) does not parse.
    #[error("state file {} is corrupt: {source} (`wsync queue clear` or the daemon keeps a copy and starts clean)", path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// The JSON error with line and column.
        source: serde_json::Error,
    },
    /// A line of a JSON-lines file does not parse.
    #[error("{}:{line}: {source}", path.display())]
    CorruptLine {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A value (priority, sync type, …) is not one of the accepted ones.
    #[error("invalid {key} {value:?}: expected {expected}")]
    InvalidValue {
        /// What the value is for.
        key: String,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// Watching the workspace failed.
    #[error("watching {}: {source}", path.display())]
    Watch {
        /// The watched folder.
        path: PathBuf,
        /// The notify error.
        source: notify::Error,
    },
    /// The daemon could not be started, stopped or reached.
    #[error("daemon {}: {why}", path.display())]
    Daemon {
        /// The daemon's PID file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The filter could not be built (bad rules file, pattern or key).
    #[error(transparent)]
    Filter(#[from] wsync_filter::Error),
    /// The lock or pause gate failed.
    #[error(transparent)]
    Lock(#[from] wsync_lock::Error),
    /// Capturing, restoring or managing a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] wsync_snapshot::Error),
}

impl Error {
    pub(crate) fn git(
        path: &std::path::Path,
        op: impl Into<String>,
    ) -> impl FnOnce(git2::Error) -> Self {
        let path = path.to_path_buf();
        let op = op.into();
        move |source| Self::Git { path, op, source }
    }

    /// Whether this error means another sync holds the lock.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Busy { .. })
    }

    /// The original failure behind a rollback wrapper.
    pub fn root(&self) -> &Self {
        match self {
            Self::RolledBack { source, .. } | Self::RollbackFailed { source, .. } => source.root(),
            other => other,
        }
    }
}
