//! `<state>/sync.log`: one JSON line per run.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::fsutil::{append_line, read_json_lines};

/// The sync log's file name inside the state folder.
pub const SYNC_LOG: &str = "sync.log";

/// How long one phase took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    /// The phase (`lock`, `snapshot`, `commit`, `fetch`, `integrate`, `push`, `finish`).
    pub phase: String,
    /// Milliseconds.
    pub ms: f64,
}

/// One line of `sync.log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// Total milliseconds.
    pub duration_ms: f64,
    /// `ok`, `skipped`, `rolled_back`, `failed`, `recovered`.
    pub result: String,
    /// `sync`, `pull`, `push`.
    pub mode: String,
    /// Why the run happened.
    pub reason: String,
    /// `--force` was given.
    pub forced: bool,
    /// The snapshot taken, if any.
    pub snapshot: Option<String>,
    /// The host.
    pub host: String,
    /// The process.
    pub pid: u32,
    /// Phase timings.
    pub phases: Vec<PhaseTime>,
    /// Commits created (user commit, merge commit).
    pub commits: Vec<String>,
    /// User files committed.
    pub files: Vec<String>,
    /// System paths left alone.
    pub system_files: usize,
    /// `none`, `up-to-date`, `fast-forward`, `merge`.
    pub integration: String,
    /// Whether the push landed.
    pub pushed: bool,
    /// Conflicts met in this run.
    pub conflicts: usize,
    /// Why it was skipped or what failed.
    pub message: Option<String>,
}

/// Appends one entry.
pub fn append(state_dir: &Path, entry: &LogEntry) -> Result<(), Error> {
    let path = state_dir.join(SYNC_LOG);
    let line = serde_json::to_string(entry).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    append_line(&path, &line)
}

/// Every entry, oldest first (torn or foreign lines are skipped).
pub fn read(state_dir: &Path) -> Result<Vec<LogEntry>, Error> {
    read_json_lines(&state_dir.join(SYNC_LOG))
}

/// The newest `n` entries, newest first.
pub fn tail(state_dir: &Path, n: usize) -> Result<Vec<LogEntry>, Error> {
    let mut all = read(state_dir)?;
    all.reverse();
    all.truncate(n);
    Ok(all)
}

/// The newest entry whose run actually synced (`ok`).
pub fn last_success(state_dir: &Path) -> Result<Option<LogEntry>, Error> {
    Ok(read(state_dir)?
        .into_iter()
        .rev()
        .find(|e| e.result == "ok"))
}
