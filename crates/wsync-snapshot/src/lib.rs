//! Whole-state snapshots of a git workspace and byte-exact rollback.
//!
//! A snapshot records the complete working state of a git work tree — HEAD,
//! the index (staged state), tracked changes and untracked non-ignored files,
//! exec bits and symlinks — as ordinary git objects: a commit under
//! `refs/wsync/snapshots/<ID>` whose tree is the whole working tree and whose
//! parents are HEAD (when born) and an *index commit* whose tree is the real
//! index's tree (the layout `git stash` uses, minus the stash machinery).
//! Capturing never changes HEAD, a branch, a reflog, the index file or any
//! working file, and it only reads files whose stat data changed since the
//! index last saw them, so its cost grows with what changed.
//!
//! Beside each snapshot, in `<state>/snapshots/`, live `ID.meta` (JSON,
//! [`SnapshotMeta`]), `ID.diff` (a unified patch of every uncommitted change,
//! untracked files as new files), `ID.result` (written by the sync engine via
//! [`SnapshotStore::write_result`]) and, when asked for, `ID.bundle` (a real
//! `git bundle` of the snapshot ref that another clone can fetch).
//!
//! [`SnapshotStore::restore`] first captures the current state (so a rollback
//! can itself be rolled back) and then returns the working tree byte for byte
//! to the snapshot, plus the index and HEAD unless `files_only`. Ignored files
//! are never touched.
//!
//! IDs are `sync_YYYYMMDD_HHMMSS_PID` in **UTC**, with `_2`, `_3`, … appended
//! when that name is already taken.
//!
//! Files being rewritten during a capture are captured whole (an old or a
//! new version) when their writer replaces them by rename, or pauses at
//! least 50 ms between in-place rewrites. A writer that truncates and
//! rewrites a file in place continuously must be paused first (the sync
//! engine does this with `wsync-lock`'s pause gate); a file that never
//! reads the same twice fails the capture with [`Error::Unstable`] rather
//! than being captured torn. Submodules and nested repositories are not
//! captured (their gitlink entries are kept as in the index).
//!
//! ```
//! use wsync_snapshot::{CaptureOptions, RestoreOptions, SnapshotStore};
//!
//! let tmp = tempfile::tempdir()?;
//! let work = tmp.path().join("work");
//! git2::Repository::init(&work)?;
//! std::fs::write(work.join("notes.txt"), "draft 1\n")?;
//!
//! let store = SnapshotStore::open(&work, &tmp.path().join("state"))?;
//! let snap = store.capture(&CaptureOptions {
//!     reason: "before an experiment".into(),
//!     ..CaptureOptions::default()
//! })?;
//! assert!(snap.id.starts_with("sync_"));
//!
//! std::fs::write(work.join("notes.txt"), "oops\n")?;
//! std::fs::write(work.join("stray.txt"), "new\n")?;
//! let report = store.restore(&snap.id, &RestoreOptions::default())?;
//! assert_eq!(std::fs::read_to_string(work.join("notes.txt"))?, "draft 1\n");
//! assert!(!work.join("stray.txt").exists());
//!
//! // The rollback is undoable: the safety snapshot holds the later state.
//! store.restore(&report.safety.id, &RestoreOptions::default())?;
//! assert_eq!(std::fs::read_to_string(work.join("stray.txt"))?, "new\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod capture;
mod fsutil;
mod live;
mod manage;
mod objects;
mod patch;
mod restore;
mod scan;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use live::{LiveOptions, LiveScan, LiveStats};
pub use manage::{CleanupReport, PACKS_BEFORE_MERGE, SnapshotInfo, VerifyReport};
pub use restore::RestoreReport;

/// The ref namespace snapshots live under.
pub const REF_PREFIX: &str = "refs/wsync/snapshots/";

/// Everything that can go wrong; each variant names the path, id or command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A git (libgit2) operation failed.
    #[error("{path}: {what}: {source}")]
    Git {
        /// The repository, or the path inside it the operation was about.
        path: PathBuf,
        /// What wsync was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: git2::Error,
    },
    /// The workspace is not a non-bare git work tree.
    #[error("{path} is not a git work tree: {source}")]
    NotARepository {
        /// The workspace.
        path: PathBuf,
        /// Why libgit2 refused it.
        #[source]
        source: git2::Error,
    },
    /// A snapshot's `.meta` file does not exist.
    #[error("snapshot {id}: metadata file {path} does not exist")]
    MissingMeta {
        /// The snapshot id.
        id: String,
        /// The `.meta` file.
        path: PathBuf,
    },
    /// A snapshot's `.meta` file cannot be parsed.
    #[error("snapshot metadata file {path} is corrupt: {source}")]
    CorruptMeta {
        /// The `.meta` file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A snapshot id with characters other than `[A-Za-z0-9_.-]`.
    #[error("invalid snapshot id {id:?} (allowed: letters, digits, '_', '-', '.')")]
    BadId {
        /// The id as given.
        id: String,
    },
    /// A merge, rebase, cherry-pick, revert or bisect is in progress.
    #[error("{path}: a {state} is in progress; finish or abort it first, or force the restore")]
    OperationInProgress {
        /// The workspace.
        path: PathBuf,
        /// Which operation (e.g. "merge").
        state: String,
    },
    /// A file kept changing while it was being read, on every attempt.
    #[error("{path} kept changing while being captured ({attempts} attempts)")]
    Unstable {
        /// The file.
        path: PathBuf,
        /// How many reads were tried.
        attempts: u32,
    },
    /// The working tree holds something restore must not overwrite.
    #[error("{path}: {why}")]
    Blocked {
        /// The path in the way.
        path: PathBuf,
        /// Why it cannot be replaced.
        why: String,
    },
    /// The new objects of a capture could not be stored (e.g. the disk is
    /// full).
    #[error(
        "{path}: cannot store the snapshot's new objects (the largest from {largest}): {source}"
    )]
    StoreObjects {
        /// The pack being written.
        path: PathBuf,
        /// Where the largest of those objects came from (a working file, or
        /// the repository for trees and commits).
        largest: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The `git` program failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    GitCommand {
        /// The command line.
        command: String,
        /// Its exit status, or the spawn error.
        status: String,
        /// Its standard error.
        stderr: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

pub(crate) fn git_err(
    path: impl Into<PathBuf>,
    what: impl Into<String>,
) -> impl FnOnce(git2::Error) -> Error {
    let path = path.into();
    let what = what.into();
    move |source| Error::Git { path, what, source }
}

/// How to capture a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Why it is taken (stored in the `.meta` and the commit message).
    pub reason: String,
    /// Also write `ID.bundle` with `git bundle create`.
    pub bundle: bool,
    /// The state of the autonomous writers when capturing (e.g. "paused").
    pub autonomous_status: String,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            reason: "manual".into(),
            bundle: false,
            autonomous_status: "unknown".into(),
        }
    }
}

/// How to restore a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Restore the working files only; leave HEAD, the branch, the index
    /// and any in-progress merge state alone.
    pub files_only: bool,
    /// Restore even while a merge, rebase or cherry-pick is in progress
    /// (its state is cleaned up unless `files_only`).
    pub force: bool,
}

/// Which snapshots [`SnapshotStore::cleanup`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep this many newest snapshots (default 10).
    pub keep: usize,
    /// Also remove snapshots older than this, even among the newest.
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: 10,
            max_age: None,
        }
    }
}

/// The `ID.meta` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// `sync_YYYYMMDD_HHMMSS_PID[_N]` (UTC).
    pub snapshot_id: String,
    /// When it was captured (RFC 3339, UTC).
    pub timestamp: DateTime<Utc>,
    /// HEAD's commit at capture, `None` for an unborn HEAD.
    pub git_commit: Option<String>,
    /// How many paths differed from HEAD or the index (like
    /// `git status --porcelain | wc -l`).
    pub git_status_files: usize,
    /// The autonomous writers' state, as the caller said.
    pub autonomous_status: String,
    /// Why it was taken.
    pub reason: String,
    /// `refs/wsync/snapshots/<ID>`.
    pub snapshot_ref: String,
    /// The snapshot commit (tree = the whole working tree).
    pub snapshot_commit: String,
    /// The index commit (tree = the index at capture).
    pub index_commit: String,
    /// The branch HEAD pointed to (`refs/heads/...`), `None` when detached.
    #[serde(default)]
    pub head_ref: Option<String>,
    /// Whether `ID.bundle` was written.
    #[serde(default)]
    pub bundle: bool,
    /// Paths whose stage entries were conflicted at capture (the index
    /// commit holds "ours" for them; the working file is exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicted: Vec<String>,
}

/// A captured snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Its id.
    pub id: String,
    /// The snapshot commit id (hex).
    pub commit: String,
    /// Its metadata, as written to `ID.meta`.
    pub meta: SnapshotMeta,
}

/// Captures, restores and manages the snapshots of one workspace.
///
/// Cheap to create; holds only paths (each operation opens the repository),
/// so it is `Send + Sync`. Callers serialise captures and restores with the
/// sync lock; the store itself only guarantees unique ids and atomic files.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    workspace: PathBuf,
    state_dir: PathBuf,
    dir: PathBuf,
    /// The state folder relative to the workspace, as an ignore rule, when
    /// it lies inside it (so that snapshots never capture or remove it).
    state_rule: Option<String>,
    /// The system's and the user's attribute files, when the application
    /// gave them ([`LiveOptions::attribute_files`]).
    attribute_files: Option<Vec<PathBuf>>,
}

impl SnapshotStore {
    /// Opens the store of the git work tree `workspace`, keeping its files
    /// in `<state_dir>/snapshots/` (created on the first capture).
    pub fn open(workspace: &Path, state_dir: &Path) -> Result<Self> {
        let repo = git2::Repository::open(workspace).map_err(|source| Error::NotARepository {
            path: workspace.to_path_buf(),
            source,
        })?;
        let Some(workdir) = repo.workdir().map(Path::to_path_buf) else {
            return Err(Error::NotARepository {
                path: workspace.to_path_buf(),
                source: git2::Error::from_str("the repository is bare"),
            });
        };
        let state_dir = if state_dir.is_absolute() {
            state_dir.to_path_buf()
        } else {
            workspace.join(state_dir)
        };
        let state_rule = fsutil::relative_inside(&workdir, &state_dir).map(|rel| {
            let mut rule = String::from("/");
            for c in rel.to_string_lossy().chars() {
                if matches!(c, '*' | '?' | '[' | ']' | '\\' | '!' | '#' | ' ') {
                    rule.push('\\');
                }
                rule.push(c);
            }
            rule.push('/');
            rule
        });
        Ok(Self {
            dir: state_dir.join("snapshots"),
            workspace: workdir,
            state_dir,
            state_rule,
            attribute_files: None,
        })
    }

    /// The work tree root.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The state folder.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The folder holding the `.meta`, `.diff`, `.result` and `.bundle` files.
    pub fn snapshots_dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `ID.<ext>` (e.g. `ext` = "meta").
    pub fn file(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    pub(crate) fn repo(&self) -> Result<git2::Repository> {
        let repo =
            git2::Repository::open(&self.workspace).map_err(|source| Error::NotARepository {
                path: self.workspace.clone(),
                source,
            })?;
        if let Some(rule) = &self.state_rule {
            repo.add_ignore_rule(rule)
                .map_err(git_err(&self.workspace, "cannot add ignore rule"))?;
        }
        Ok(repo)
    }

    /// Captures the whole working state as a new snapshot.
    pub fn capture(&self, opts: &CaptureOptions) -> Result<Snapshot> {
        let repo = self.repo()?;
        capture::capture(self, &repo, opts)
    }

    /// Captures like [`Self::capture`], through the caller's `repo`, which
    /// must be a repository of this store's work tree. The index is read
    /// through `repo.index()` and left as the file has it, so a caller that
    /// goes on to use the same index (the sync engine commits right after
    /// its snapshot) does not read a large index a second time. When the
    /// state folder lies inside the work tree, its ignore rule is added to
    /// `repo` (in memory).
    pub fn capture_in(&self, repo: &git2::Repository, opts: &CaptureOptions) -> Result<Snapshot> {
        let same = repo.workdir().is_some_and(|w| {
            w == self.workspace
                || std::fs::canonicalize(w).ok() == std::fs::canonicalize(&self.workspace).ok()
        });
        if !same {
            return Err(Error::NotARepository {
                path: self.workspace.clone(),
                source: git2::Error::from_str(&format!(
                    "the repository given is of another work tree ({})",
                    repo.workdir().unwrap_or_else(|| repo.path()).display()
                )),
            });
        }
        if let Some(rule) = &self.state_rule {
            repo.add_ignore_rule(rule)
                .map_err(git_err(&self.workspace, "cannot add ignore rule"))?;
        }
        capture::capture(self, repo, opts)
    }

    /// Returns the workspace to snapshot `id` (after capturing a safety
    /// snapshot of the current state, returned in the report).
    pub fn restore(&self, id: &str, opts: &RestoreOptions) -> Result<RestoreReport> {
        restore::restore(self, id, opts)
    }

    /// Writes `ID.result` (pretty JSON, atomically).
    pub fn write_result(&self, id: &str, result: &serde_json::Value) -> Result<()> {
        check_id(id)?;
        let path = self.file(id, "result");
        let bytes = serde_json::to_vec_pretty(result).map_err(|e| Error::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        fsutil::create_dir(&self.dir)?;
        fsutil::write_atomic(&path, &bytes)?;
        fsutil::sync_dir(&self.dir)
    }

    /// Every snapshot's metadata, newest first.
    pub fn list(&self) -> Result<Vec<SnapshotMeta>> {
        manage::list(self)
    }

    /// The newest snapshot, if any. A torn `.meta` of an older snapshot
    /// does not block it (`list` and `show` still name that file); one
    /// that may be the newest is an error naming it.
    pub fn latest(&self) -> Result<Option<SnapshotMeta>> {
        manage::latest(self)
    }

    /// A snapshot's metadata, its result and which files exist.
    pub fn show(&self, id: &str) -> Result<SnapshotInfo> {
        manage::show(self, id)
    }

    /// Checks that every object of the snapshot is present and readable and
    /// that its bundle (if any) passes `git bundle verify`.
    pub fn verify(&self, id: &str) -> Result<VerifyReport> {
        manage::verify(self, id)
    }

    /// The snapshot's unified patch (`ID.diff`, regenerated from the
    /// objects if the file is gone).
    pub fn diff(&self, id: &str) -> Result<Vec<u8>> {
        manage::diff(self, id)
    }

    /// Removes snapshots beyond the retention (refs and files together).
    pub fn cleanup(&self, retention: &Retention) -> Result<CleanupReport> {
        manage::cleanup(self, retention)
    }

    /// Reads and parses `ID.meta`.
    pub fn meta(&self, id: &str) -> Result<SnapshotMeta> {
        check_id(id)?;
        let path = self.file(id, "meta");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingMeta {
                    id: id.to_owned(),
                    path,
                });
            }
            Err(source) => return Err(Error::Io { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|source| Error::CorruptMeta { path, source })
    }
}

/// Rejects ids that could escape the snapshots folder or the ref namespace.
pub(crate) fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && !id.ends_with(".lock")
        && !id.contains("..")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadId { id: id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["sync_20250101_000000_1", "sync_x_2", "a.b-c"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", ".hidden", "a/b", "x.lock", "a b", "a..b", "é"] {
            assert!(matches!(check_id(bad), Err(Error::BadId { .. })), "{bad}");
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(Retention::default().keep, 10);
        assert!(!CaptureOptions::default().bundle);
        assert_eq!(
            RestoreOptions::default(),
            RestoreOptions {
                files_only: false,
                force: false
            }
        );
    }
}
