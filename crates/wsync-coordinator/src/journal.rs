//! `<state>/sync-in-progress.json`: written right after the snapshot and
//! updated at each phase, removed when the run is over. If it exists when
//! a run starts (the lock is ours, so its writer is dead), the previous run
//! was killed and the workspace is recovered from the snapshot it names.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::fsutil::{sync_dir, write_atomic};

/// The journal's file name inside the state folder.
pub const JOURNAL: &str = "sync-in-progress.json";

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The snapshot that restores the state before the run.
    pub snapshot: String,
    /// The running process.
    pub pid: u32,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// The phase reached: `snapshot`, `commit`, `fetch`, `integrate`, `push`, `pushed`.
    pub phase: String,
    /// The local branch.
    pub branch: String,
    /// The branch's commit before the run.
    pub head_before: Option<String>,
}

impl Journal {
    /// The journal path inside `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(JOURNAL)
    }

    /// Reads the journal; `None` when no run was interrupted.
    pub fn read(state_dir: &Path) -> Result<Option<Self>, Error> {
        let path = Self::path_in(state_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| Error::Json { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Writes it atomically.
    pub fn write(&self, state_dir: &Path) -> Result<(), Error> {
        let path = Self::path_in(state_dir);
        let bytes = serde_json::to_vec(self).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)
    }

    /// Records a new phase.
    pub fn advance(&mut self, state_dir: &Path, phase: &str) -> Result<(), Error> {
        phase.clone_into(&mut self.phase);
        self.write(state_dir)
    }

    /// Removes the journal (the run is over).
    pub fn remove(state_dir: &Path) -> Result<(), Error> {
        let path = Self::path_in(state_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(state_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { path, source }),
        }
    }
}
