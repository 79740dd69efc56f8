//! The seam to `wsync-snapshot`: capture before a run, restore on failure
//! and recovery, the `.result` file, retention.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use wsync_snapshot::{CaptureOptions, LiveScan, RestoreOptions, Retention, SnapshotStore};

use crate::Error;

/// A captured snapshot, as the engine needs it.
pub(crate) struct Captured {
    /// The snapshot id.
    pub id: String,
    /// The snapshot commit: its tree is the whole (non-ignored) working tree.
    pub commit: String,
    /// The commit whose tree is the index at capture time.
    pub index_commit: String,
}

/// Captures a snapshot, through `live` when given (only what changed since
/// its previous capture is looked at).
pub(crate) fn capture(
    repo: &git2::Repository,
    workspace: &Path,
    state_dir: &Path,
    live: Option<&Mutex<LiveScan>>,
    reason: &str,
    bundle: bool,
    autonomous_status: &str,
) -> Result<Captured, Error> {
    let opts = CaptureOptions {
        reason: reason.into(),
        bundle,
        autonomous_status: autonomous_status.into(),
    };
    let snap = match live {
        Some(live) => live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .capture(&opts)?,
        // Through the engine's repository: the commit that follows reuses
        // the index read here.
        None => SnapshotStore::open(workspace, state_dir)?.capture_in(repo, &opts)?,
    };
    Ok(Captured {
        id: snap.id,
        commit: snap.commit,
        index_commit: snap.meta.index_commit,
    })
}

/// Restores a snapshot (forced: also over a half-done merge); returns the
/// safety snapshot's id (the state found before restoring).
pub(crate) fn restore(
    workspace: &Path,
    state_dir: &Path,
    id: &str,
) -> Result<Option<String>, Error> {
    let store = SnapshotStore::open(workspace, state_dir)?;
    let report = store.restore(
        id,
        &RestoreOptions {
            files_only: false,
            force: true,
        },
    )?;
    Ok(Some(report.safety.id))
}

/// Writes the snapshot's `.result`.
pub(crate) fn write_result(
    workspace: &Path,
    state_dir: &Path,
    id: &str,
    value: &serde_json::Value,
) -> Result<(), Error> {
    SnapshotStore::open(workspace, state_dir)?.write_result(id, value)?;
    Ok(())
}

/// Keeps the newest `keep` snapshots (and none older than `max_age_days`).
pub(crate) fn cleanup(
    workspace: &Path,
    state_dir: &Path,
    keep: usize,
    max_age_days: Option<u64>,
) -> Result<(), Error> {
    SnapshotStore::open(workspace, state_dir)?.cleanup(&Retention {
        keep,
        max_age: max_age_days.map(|d| Duration::from_secs(d * 86_400)),
    })?;
    Ok(())
}
