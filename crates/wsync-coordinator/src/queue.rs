//! The persistent sync request queue (`<state>/queue.json`).
//!
//! Every sync request — from the CLI's `request-sync`, the watcher, the
//! scheduler or a host calling [`Queue::enqueue`] — becomes an entry here.
//! The file is rewritten crash-safely (temp file + fsync + rename + folder
//! fsync) under an advisory lock on `<state>/queue.lock`, so any number of
//! processes may enqueue at once and a SIGKILL at any instant leaves a valid
//! file. Identical pending requests (same type and caller) are merged into
//! one entry whose priority is the highest asked for. Entries are served by
//! priority, then age. Finished entries leave the file and are appended to
//! `<state>/queue-history.jsonl`, so every request stays accounted for.
//!
//! ```
//! use wsync_coordinator::queue::{Priority, Queue, SyncRequest};
//!
//! let state = tempfile::tempdir()?;
//! let queue = Queue::new(state.path());
//! let a = queue.enqueue(&SyncRequest::new("manual", "me", Priority::Normal, "try"))?;
//! let b = queue.enqueue(&SyncRequest::new("manual", "me", Priority::High, "again"))?;
//! assert_eq!(a.id, b.id); // merged
//! assert!(b.merged);
//! assert_eq!(queue.list()?[0].priority, Priority::High);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod clock;
pub(crate) mod store;

use std::cmp::Ordering;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use clock::{Clock, ManualClock, SharedClock, SystemClock, system_clock};

use crate::Error;

/// This module's results.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// The queue file's name inside the state folder.
pub const QUEUE_FILE: &str = "queue.json";
/// The lock file serialising queue updates.
pub const QUEUE_LOCK_FILE: &str = "queue.lock";
/// Finished entries, one JSON object per line.
pub const HISTORY_FILE: &str = "queue-history.jsonl";

/// How urgent a request is. Critical requests also bypass rate limits and
/// the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served first; overrides rate limits.
    Critical,
    /// User edits seen by the watcher.
    High,
    /// The default.
    Normal,
    /// Scheduled and background syncs.
    Low,
}

impl Priority {
    /// 0 for critical … 3 for low: smaller is served first.
    pub fn rank(self) -> u8 {
        match self {
            Self::Critical => 0,
            Self::High => 1,
            Self::Normal => 2,
            Self::Low => 3,
        }
    }

    /// The more urgent of two priorities.
    #[must_use]
    pub fn max(self, other: Self) -> Self {
        if other.rank() < self.rank() {
            other
        } else {
            self
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "critical" => Ok(Self::Critical),
            "high" => Ok(Self::High),
            "normal" | "medium" => Ok(Self::Normal),
            "low" => Ok(Self::Low),
            _ => Err(Error::InvalidValue {
                key: "priority".into(),
                value: s.into(),
                expected: "critical, high, normal or low".into(),
            }),
        }
    }
}

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryStatus {
    /// Waiting to be served.
    Pending,
    /// Waiting until `next_attempt_at` (rate limit, backoff or open circuit).
    Deferred,
    /// Being served by the process `claimed_by`.
    Running,
}

/// A request to sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// What kind of sync (`manual`, `watch`, `scheduled`, `startup`, …).
    #[serde(rename = "type")]
    pub sync_type: String,
    /// Who asked (a script name, `watch`, `daemon`, …).
    pub caller: String,
    /// How urgent.
    pub priority: Priority,
    /// Free text shown in `queue list` and the audit log.
    pub reason: String,
}

impl SyncRequest {
    /// A request.
    pub fn new(
        sync_type: impl Into<String>,
        caller: impl Into<String>,
        priority: Priority,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            sync_type: sync_type.into(),
            caller: caller.into(),
            priority,
            reason: reason.into(),
        }
    }
}

/// One queued request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The ticket id.
    pub id: String,
    /// What kind of sync.
    #[serde(rename = "type")]
    pub sync_type: String,
    /// Who asked.
    pub caller: String,
    /// How urgent (the highest of all merged requests).
    pub priority: Priority,
    /// Why (of the first request).
    pub reason: String,
    /// When the first request arrived.
    pub enqueued_at: DateTime<Utc>,
    /// How many times a sync was started for it.
    #[serde(default)]
    pub attempts: u32,
    /// Not before this time (backoff, rate limit or open circuit).
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Where it stands.
    pub status: EntryStatus,
    /// How many later identical requests were merged into it.
    #[serde(default)]
    pub merged: u32,
    /// Why it is deferred, or the last error.
    #[serde(default)]
    pub note: Option<String>,
    /// The process serving it (when running).
    #[serde(default)]
    pub claimed_by: Option<u32>,
    /// When it started running.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
}

impl QueueEntry {
    /// The request it stands for.
    pub fn request(&self) -> SyncRequest {
        SyncRequest::new(&self.sync_type, &self.caller, self.priority, &self.reason)
    }

    /// Service order: priority, then age, then id.
    pub fn service_order(&self, other: &Self) -> Ordering {
        self.priority
            .rank()
            .cmp(&other.priority.rank())
            .then(self.enqueued_at.cmp(&other.enqueued_at))
            .then(self.id.cmp(&other.id))
    }

    /// Whether it may be claimed at `now`.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.status != EntryStatus::Running && self.next_attempt_at.is_none_or(|t| t <= now)
    }
}

/// The result of [`Queue::enqueue`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    /// The ticket id (an existing entry's id when merged).
    pub id: String,
    /// Whether the request was merged into an identical pending entry.
    pub merged: bool,
    /// Entries in the queue after the update.
    pub queue_len: usize,
}

/// How a claimed entry ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The sync ran; the entry leaves the queue.
    Done {
        /// One line for the history.
        detail: String,
    },
    /// The sync failed for good (attempts exhausted); the entry leaves.
    Failed {
        /// The error.
        error: String,
    },
    /// Try again later; the entry stays.
    Retry {
        /// Not before.
        at: DateTime<Utc>,
        /// Why (error or refusal).
        why: String,
        /// Whether this attempt counts (false for refusals that never ran).
        counts: bool,
    },
}

/// One finished request in `queue-history.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// The ticket id.
    pub id: String,
    /// What kind of sync.
    #[serde(rename = "type")]
    pub sync_type: String,
    /// Who asked.
    pub caller: String,
    /// How urgent.
    pub priority: Priority,
    /// Requests merged into it.
    pub merged: u32,
    /// Attempts made.
    pub attempts: u32,
    /// `done`, `failed` or `cleared`.
    pub outcome: String,
    /// Detail or error.
    pub detail: String,
    /// When it was enqueued.
    pub enqueued_at: DateTime<Utc>,
    /// When it left the queue.
    pub finished_at: DateTime<Utc>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueFile {
    version: u32,
    entries: Vec<QueueEntry>,
}

/// The queue of one state folder.
#[derive(Debug, Clone)]
pub struct Queue {
    path: PathBuf,
    lock_path: PathBuf,
    history_path: PathBuf,
    clock: SharedClock,
}

impl Queue {
    /// The queue of `state_dir` on the system clock.
    pub fn new(state_dir: &Path) -> Self {
        Self::with_clock(state_dir, system_clock())
    }

    /// The queue of `state_dir` on `clock`.
    pub fn with_clock(state_dir: &Path, clock: SharedClock) -> Self {
        Self {
            path: state_dir.join(QUEUE_FILE),
            lock_path: state_dir.join(QUEUE_LOCK_FILE),
            history_path: state_dir.join(HISTORY_FILE),
            clock,
        }
    }

    /// `<state>/queue.json`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<state>/queue-history.jsonl`.
    pub fn history_path(&self) -> &Path {
        &self.history_path
    }

    /// The clock the queue runs on.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn update<T>(
        &self,
        f: impl FnOnce(&mut QueueFile, DateTime<Utc>) -> Result<(T, bool)>,
    ) -> Result<T> {
        let _lock = store::FileLock::acquire(&self.lock_path)?;
        let mut file = self.load()?;
        let now = self.clock.now();
        let (out, changed) = f(&mut file, now)?;
        if changed {
            file.version = 1;
            store::write_json(&self.path, &file)?;
        }
        Ok(out)
    }

    fn load(&self) -> Result<QueueFile> {
        Ok(
            store::read_json::<QueueFile>(&self.path)?.unwrap_or(QueueFile {
                version: 1,
                entries: Vec::new(),
            }),
        )
    }

    /// Adds a request, or merges it into an identical pending entry (same
    /// type and caller, not running): the merged entry takes the higher
    /// priority, and a critical request clears any deferral.
    /// A running daemon is woken at once.
    pub fn enqueue(&self, req: &SyncRequest) -> Result<Enqueued> {
        let done = self.enqueue_quiet(req)?;
        if let Some(state_dir) = self.path.parent() {
            crate::daemon::wake(state_dir);
        }
        Ok(done)
    }

    fn enqueue_quiet(&self, req: &SyncRequest) -> Result<Enqueued> {
        self.update(|file, now| {
            if let Some(e) = file.entries.iter_mut().find(|e| {
                e.status != EntryStatus::Running
                    && e.sync_type == req.sync_type
                    && e.caller == req.caller
            }) {
                e.merged = e.merged.saturating_add(1);
                e.priority = e.priority.max(req.priority);
                if req.priority == Priority::Critical {
                    e.next_attempt_at = None;
                    e.status = EntryStatus::Pending;
                }
                let id = e.id.clone();
                return Ok((
                    Enqueued {
                        id,
                        merged: true,
                        queue_len: file.entries.len(),
                    },
                    true,
                ));
            }
            let id = new_id(now);
            file.entries.push(QueueEntry {
                id: id.clone(),
                sync_type: req.sync_type.clone(),
                caller: req.caller.clone(),
                priority: req.priority,
                reason: req.reason.clone(),
                enqueued_at: now,
                attempts: 0,
                next_attempt_at: None,
                status: EntryStatus::Pending,
                merged: 0,
                note: None,
                claimed_by: None,
                started_at: None,
            });
            Ok((
                Enqueued {
                    id,
                    merged: false,
                    queue_len: file.entries.len(),
                },
                true,
            ))
        })
    }

    /// All entries in service order.
    pub fn list(&self) -> Result<Vec<QueueEntry>> {
        let _lock = store::FileLock::acquire(&self.lock_path)?;
        let mut entries = self.load()?.entries;
        entries.sort_by(QueueEntry::service_order);
        Ok(entries)
    }

    /// Removes every entry that is not running (recorded as `cleared` in
    /// the history); returns how many were removed. A corrupt queue file is
    /// quarantined first, so `clear` is also the manual recovery.
    pub fn clear(&self) -> Result<usize> {
        let _lock = store::FileLock::acquire(&self.lock_path)?;
        let now = self.clock.now();
        let file = match self.load() {
            Ok(f) => f,
            Err(Error::CorruptState { .. }) => {
                store::quarantine(&self.path, now)?;
                QueueFile::default()
            }
            Err(e) => return Err(e),
        };
        let (running, cleared): (Vec<_>, Vec<_>) = file
            .entries
            .into_iter()
            .partition(|e| e.status == EntryStatus::Running);
        for e in &cleared {
            self.record(e, "cleared", "removed by queue clear", now)?;
        }
        store::write_json(
            &self.path,
            &QueueFile {
                version: 1,
                entries: running,
            },
        )?;
        Ok(cleared.len())
    }

    /// Claims the first due entry in service order for process `pid`: it
    /// becomes `running` and its attempt count goes up. Running entries
    /// whose process is gone (per `is_alive`) are released first.
    pub fn claim_next(
        &self,
        pid: u32,
        is_alive: impl Fn(u32) -> bool,
    ) -> Result<Option<QueueEntry>> {
        self.update(|file, now| {
            let mut changed = release_orphans(file, &is_alive);
            let best = file
                .entries
                .iter_mut()
                .filter(|e| e.is_due(now))
                .min_by(|a, b| a.service_order(b));
            let Some(e) = best else {
                return Ok((None, changed));
            };
            e.status = EntryStatus::Running;
            e.claimed_by = Some(pid);
            e.started_at = Some(now);
            e.attempts = e.attempts.saturating_add(1);
            changed = true;
            Ok((Some(e.clone()), changed))
        })
    }

    /// Puts running entries whose process is dead back to pending; returns
    /// how many.
    pub fn release_orphans(&self, is_alive: impl Fn(u32) -> bool) -> Result<usize> {
        self.update(|file, _| {
            let before: Vec<_> = file.entries.iter().map(|e| e.status).collect();
            release_orphans(file, &is_alive);
            let n = file
                .entries
                .iter()
                .zip(before)
                .filter(|(e, b)| e.status != *b)
                .count();
            Ok((n, n > 0))
        })
    }

    /// Records how a claimed entry ended. Requests merged into it while it
    /// ran stay in the queue as their own entries.
    pub fn finish(&self, id: &str, how: &Finish) -> Result<()> {
        self.update(|file, now| {
            let Some(pos) = file.entries.iter().position(|e| e.id == id) else {
                return Ok(((), false));
            };
            match how {
                Finish::Done { detail } => {
                    let e = file.entries.remove(pos);
                    self.record(&e, "done", detail, now)?;
                }
                Finish::Failed { error } => {
                    let e = file.entries.remove(pos);
                    self.record(&e, "failed", error, now)?;
                }
                Finish::Retry { at, why, counts } => {
                    if let Some(e) = file.entries.get_mut(pos) {
                        e.status = EntryStatus::Deferred;
                        e.next_attempt_at = Some(*at);
                        e.note = Some(why.clone());
                        e.claimed_by = None;
                        e.started_at = None;
                        if !counts {
                            e.attempts = e.attempts.saturating_sub(1);
                        }
                    }
                }
            }
            Ok(((), true))
        })
    }

    /// Checks that the queue file parses. When it does not, the bad file is
    /// kept as `queue.json.corrupt-<timestamp>` and the queue starts empty;
    /// returns the kept copy's path. The daemon calls this at start-up.
    pub fn recover(&self) -> Result<Option<PathBuf>> {
        store::recover::<QueueFile>(&self.path, &self.lock_path, self.clock.now())
    }

    /// Every finished entry, oldest first. A bad line is an error naming
    /// the file and line.
    pub fn history(&self) -> Result<Vec<HistoryRecord>> {
        let bytes = match std::fs::read(&self.history_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(store::io_err(&self.history_path, e)),
        };
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let last = lines.len().saturating_sub(1);
        let mut out = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            if line.trim_ascii().is_empty() {
                continue;
            }
            match serde_json::from_slice(line) {
                Ok(r) => out.push(r),
                // A torn last line (SIGKILL mid-append) has no newline yet.
                Err(_) if n == last => {}
                Err(source) => {
                    return Err(Error::CorruptLine {
                        path: self.history_path.clone(),
                        line: n + 1,
                        source,
                    });
                }
            }
        }
        Ok(out)
    }

    fn record(
        &self,
        e: &QueueEntry,
        outcome: &str,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        store::append_jsonl(
            &self.history_path,
            &HistoryRecord {
                id: e.id.clone(),
                sync_type: e.sync_type.clone(),
                caller: e.caller.clone(),
                priority: e.priority,
                merged: e.merged,
                attempts: e.attempts,
                outcome: outcome.into(),
                detail: detail.into(),
                enqueued_at: e.enqueued_at,
                finished_at: now,
            },
        )
    }
}

/// Queues a sync request for the workspace whose state folder is
/// `state_dir` and wakes its daemon: the old `request-sync` API for hosts.
///
/// ```
/// use wsync_coordinator::queue::{Priority, request_sync};
///
/// let state = tempfile::tempdir()?;
/// let ticket = request_sync(state.path(), "manual", "my-host", Priority::High, "user saved")?;
/// assert!(!ticket.merged);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn request_sync(
    state_dir: &Path,
    sync_type: &str,
    caller: &str,
    priority: Priority,
    reason: &str,
) -> Result<Enqueued> {
    Queue::new(state_dir).enqueue(&SyncRequest::new(sync_type, caller, priority, reason))
}

fn release_orphans(file: &mut QueueFile, is_alive: &impl Fn(u32) -> bool) -> bool {
    let mut changed = false;
    for e in &mut file.entries {
        if e.status == EntryStatus::Running && !e.claimed_by.is_some_and(is_alive) {
            e.status = EntryStatus::Pending;
            e.note = Some(format!(
                "released: serving process {} is gone",
                e.claimed_by.map_or_else(|| "?".into(), |p| p.to_string())
            ));
            e.claimed_by = None;
            e.started_at = None;
            changed = true;
        }
    }
    changed
}

fn new_id(now: DateTime<Utc>) -> String {
    format!(
        "q{}-{}-{:04x}",
        now.format("%Y%m%d%H%M%S%3f"),
        std::process::id(),
        fastrand::u16(..)
    )
}

/// Whether process `pid` exists (signal 0).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        // Exists but belongs to someone else.
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn q() -> (tempfile::TempDir, Queue, ManualClock) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Utc::now());
        let queue = Queue::with_clock(dir.path(), Arc::new(clock.clone()));
        (dir, queue, clock)
    }

    #[test]
    fn orders_by_priority_then_age() {
        let (_d, queue, clock) = q();
        queue
            .enqueue(&SyncRequest::new("a", "x", Priority::Low, ""))
            .unwrap();
        clock.advance(Duration::from_secs(1));
        queue
            .enqueue(&SyncRequest::new("b", "x", Priority::High, ""))
            .unwrap();
        clock.advance(Duration::from_secs(1));
        queue
            .enqueue(&SyncRequest::new("c", "x", Priority::High, ""))
            .unwrap();
        clock.advance(Duration::from_secs(1));
        queue
            .enqueue(&SyncRequest::new("d", "x", Priority::Critical, ""))
            .unwrap();
        let order: Vec<_> = queue
            .list()
            .unwrap()
            .into_iter()
            .map(|e| e.sync_type)
            .collect();
        assert_eq!(order, ["d", "b", "c", "a"]);
        let first = queue.claim_next(1, |_| true).unwrap().unwrap();
        assert_eq!(first.sync_type, "d");
        assert_eq!(first.attempts, 1);
    }

    #[test]
    fn identical_pending_requests_merge_but_not_into_running_ones() {
        let (_d, queue, _c) = q();
        let a = queue
            .enqueue(&SyncRequest::new("watch", "w", Priority::Low, "1"))
            .unwrap();
        let b = queue
            .enqueue(&SyncRequest::new("watch", "w", Priority::High, "2"))
            .unwrap();
        assert!(!a.merged && b.merged && a.id == b.id);
        let list = queue.list().unwrap();
        assert_eq!(
            (list.len(), list[0].merged, list[0].priority),
            (1, 1, Priority::High)
        );
        let claimed = queue
            .claim_next(std::process::id(), |_| true)
            .unwrap()
            .unwrap();
        let c = queue
            .enqueue(&SyncRequest::new("watch", "w", Priority::High, "3"))
            .unwrap();
        assert!(!c.merged && c.id != claimed.id);
        queue
            .finish(
                &claimed.id,
                &Finish::Done {
                    detail: "ok".into(),
                },
            )
            .unwrap();
        let hist = queue.history().unwrap();
        assert_eq!(hist.len(), 1);
        assert_eq!((hist[0].merged, hist[0].outcome.as_str()), (1, "done"));
        assert_eq!(queue.list().unwrap().len(), 1);
    }

    #[test]
    fn deferred_entries_wait_and_critical_merge_clears_deferral() {
        let (_d, queue, clock) = q();
        queue
            .enqueue(&SyncRequest::new("s", "x", Priority::Normal, ""))
            .unwrap();
        let e = queue.claim_next(1, |_| true).unwrap().unwrap();
        let at = clock.now() + chrono::Duration::seconds(60);
        queue
            .finish(
                &e.id,
                &Finish::Retry {
                    at,
                    why: "rate limit".into(),
                    counts: false,
                },
            )
            .unwrap();
        assert!(queue.claim_next(1, |_| true).unwrap().is_none());
        let list = queue.list().unwrap();
        assert_eq!(list[0].status, EntryStatus::Deferred);
        assert_eq!(list[0].attempts, 0);
        assert_eq!(list[0].note.as_deref(), Some("rate limit"));
        clock.advance(Duration::from_secs(61));
        assert!(queue.claim_next(1, |_| true).unwrap().is_some());
        // Critical merge resets a deferral.
        let (_d2, queue2, clock2) = q();
        queue2
            .enqueue(&SyncRequest::new("s", "x", Priority::Low, ""))
            .unwrap();
        let e = queue2.claim_next(1, |_| true).unwrap().unwrap();
        let at = clock2.now() + chrono::Duration::seconds(600);
        queue2
            .finish(
                &e.id,
                &Finish::Retry {
                    at,
                    why: "backoff".into(),
                    counts: true,
                },
            )
            .unwrap();
        queue2
            .enqueue(&SyncRequest::new("s", "x", Priority::Critical, ""))
            .unwrap();
        assert!(queue2.claim_next(1, |_| true).unwrap().is_some());
    }

    #[test]
    fn orphaned_running_entries_are_released() {
        let (_d, queue, _c) = q();
        queue
            .enqueue(&SyncRequest::new("s", "x", Priority::Normal, ""))
            .unwrap();
        queue.claim_next(999_999, |_| true).unwrap().unwrap();
        assert!(queue.claim_next(1, |p| p != 999_999).unwrap().is_some());
    }

    #[test]
    fn corrupt_queue_is_a_clear_error_and_recover_keeps_a_copy() {
        let (d, queue, _c) = q();
        std::fs::write(queue.path(), b"[[[").unwrap();
        let err = queue
            .enqueue(&SyncRequest::new("s", "x", Priority::Normal, ""))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&queue.path().display().to_string()),
            "{err}"
        );
        let kept = queue.recover().unwrap().unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"[[[");
        assert!(kept.starts_with(d.path()));
        queue
            .enqueue(&SyncRequest::new("s", "x", Priority::Normal, ""))
            .unwrap();
        assert_eq!(queue.list().unwrap().len(), 1);
        assert!(queue.recover().unwrap().is_none());
    }

    #[test]
    fn clear_keeps_running_entries_and_records_the_rest() {
        let (_d, queue, _c) = q();
        queue
            .enqueue(&SyncRequest::new("a", "x", Priority::Normal, ""))
            .unwrap();
        queue
            .enqueue(&SyncRequest::new("b", "x", Priority::Normal, ""))
            .unwrap();
        queue.claim_next(std::process::id(), |_| true).unwrap();
        assert_eq!(queue.clear().unwrap(), 1);
        assert_eq!(queue.list().unwrap().len(), 1);
        assert_eq!(queue.history().unwrap()[0].outcome, "cleared");
    }

    #[test]
    fn priority_parses_and_rejects_unknown_names() {
        assert_eq!("HIGH".parse::<Priority>().unwrap(), Priority::High);
        let err = "urgent".parse::<Priority>().unwrap_err().to_string();
        assert!(err.contains("urgent") && err.contains("priority"), "{err}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn prio() -> impl Strategy<Value = Priority> {
            prop_oneof![
                Just(Priority::Critical),
                Just(Priority::High),
                Just(Priority::Normal),
                Just(Priority::Low)
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]
            /// Every request is accounted for: entries + merges == requests,
            /// and claims come out in priority order.
            #[test]
            fn every_request_is_accounted_for(reqs in proptest::collection::vec((0u8..4, 0u8..3, prio()), 1..30)) {
                let (_d, queue, clock) = q();
                for (t, c, p) in &reqs {
                    queue.enqueue(&SyncRequest::new(format!("t{t}"), format!("c{c}"), *p, "")).unwrap();
                    clock.advance(Duration::from_millis(5));
                }
                let list = queue.list().unwrap();
                let total: u32 = list.iter().map(|e| 1 + e.merged).sum();
                prop_assert_eq!(total as usize, reqs.len());
                let mut last = 0;
                while let Some(e) = queue.claim_next(1, |_| true).unwrap() {
                    prop_assert!(e.priority.rank() >= last);
                    last = e.priority.rank();
                    queue.finish(&e.id, &Finish::Done { detail: String::new() }).unwrap();
                }
                let done: u32 = queue.history().unwrap().iter().map(|h| 1 + h.merged).sum();
                prop_assert_eq!(done as usize, reqs.len());
            }
        }
    }
}
