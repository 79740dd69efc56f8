//! Health checks (`wsync health`): repository integrity, free disk space,
//! stale sync-lock records and queue entries stuck longer than the lock's
//! maximum hold. The daemon runs them every five minutes.
//!
//! Checks never fail as a whole: each one reports `ok`, `warn` or `fail`
//! with a sentence saying why.
//!
//! ```
//! use wsync_coordinator::health::{HealthOptions, check};
//!
//! let repo = wsync_testutils::TestRepo::with_commit();
//! let state = repo.path().join(".wsync");
//! std::fs::create_dir_all(&state)?;
//! let report = check(repo.path(), &state, &HealthOptions::default());
//! assert!(report.healthy(), "{report:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::queue::{EntryStatus, Queue};

/// What to check against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthOptions {
    /// Below this many free bytes on the workspace's file system is a
    /// failure (default 100 MB).
    pub min_free_bytes: u64,
    /// How long `git fsck --connectivity-only` may run (default 60 s).
    pub fsck_timeout: Duration,
    /// Skip the repository check (it reads every reachable object).
    pub skip_fsck: bool,
    /// The sync lock's maximum hold: queue entries running or waiting
    /// longer than this are stuck (default 600 s).
    pub max_hold: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            min_free_bytes: 100 * 1024 * 1024,
            fsck_timeout: Duration::from_secs(60),
            skip_fsck: false,
            max_hold: Duration::from_secs(600),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Worth a look; syncs still run.
    Warn,
    /// Broken; syncs should not run.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `repository`, `disk`, `sync_lock` or `queue`.
    pub name: &'static str,
    /// The outcome.
    pub status: CheckStatus,
    /// Why, in one sentence.
    pub detail: String,
}

/// Every check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// When the checks ran.
    pub checked_at: DateTime<Utc>,
    /// The results.
    pub checks: Vec<Check>,
}

impl HealthReport {
    /// Whether no check failed.
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|c| c.status != CheckStatus::Fail)
    }

    /// The worst status.
    pub fn worst(&self) -> CheckStatus {
        if !self.healthy() {
            CheckStatus::Fail
        } else if self.checks.iter().any(|c| c.status == CheckStatus::Warn) {
            CheckStatus::Warn
        } else {
            CheckStatus::Ok
        }
    }
}

fn check_result(name: &'static str, status: CheckStatus, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

/// Runs every check for the workspace and its state folder.
pub fn check(workspace: &Path, state_dir: &Path, opts: &HealthOptions) -> HealthReport {
    let mut checks = Vec::with_capacity(4);
    if !opts.skip_fsck {
        checks.push(check_repository(workspace, opts.fsck_timeout));
    }
    checks.push(check_disk(workspace, opts.min_free_bytes));
    checks.push(check_lock(state_dir));
    checks.push(check_queue(state_dir, opts.max_hold));
    HealthReport {
        checked_at: Utc::now(),
        checks,
    }
}

/// `git fsck --connectivity-only`, killed after `timeout`.
pub fn check_repository(workspace: &Path, timeout: Duration) -> Check {
    const NAME: &str = "repository";
    let child = Command::new("git")
        .arg("-C")
        .arg(workspace)
        .args([
            "fsck",
            "--connectivity-only",
            "--no-progress",
            "--no-dangling",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return check_result(NAME, CheckStatus::Fail, format!("cannot run git fsck: {e}"));
        }
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut s, &mut err);
                }
                return if status.success() {
                    check_result(
                        NAME,
                        CheckStatus::Ok,
                        format!(
                            "git fsck --connectivity-only passed in {} ms",
                            start.elapsed().as_millis()
                        ),
                    )
                } else {
                    let first = err.lines().take(3).collect::<Vec<_>>().join("; ");
                    check_result(
                        NAME,
                        CheckStatus::Fail,
                        format!(
                            "git fsck in {} failed ({status}): {first}",
                            workspace.display()
                        ),
                    )
                };
            }
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return check_result(
                    NAME,
                    CheckStatus::Warn,
                    format!(
                        "git fsck did not finish within {} s; not checked",
                        timeout.as_secs()
                    ),
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return check_result(
                    NAME,
                    CheckStatus::Fail,
                    format!("waiting for git fsck: {e}"),
                );
            }
        }
    }
}

/// Free space on the workspace's file system against `min_free`.
pub fn check_disk(workspace: &Path, min_free: u64) -> Check {
    const NAME: &str = "disk";
    match fs4::available_space(workspace) {
        Ok(free) if free >= min_free => check_result(
            NAME,
            CheckStatus::Ok,
            format!("{} MB free", free / (1024 * 1024)),
        ),
        Ok(free) => check_result(
            NAME,
            CheckStatus::Fail,
            format!(
                "only {} MB free on the file system of {} (need {} MB)",
                free / (1024 * 1024),
                workspace.display(),
                min_free / (1024 * 1024)
            ),
        ),
        Err(e) => check_result(
            NAME,
            CheckStatus::Warn,
            format!("cannot read free space of {}: {e}", workspace.display()),
        ),
    }
}

/// The sync lock's record: stale (holder died; `status` clears it) or held
/// past its own maximum hold.
pub fn check_lock(state_dir: &Path) -> Check {
    const NAME: &str = "sync_lock";
    use wsync_lock::{LockStatus, SyncLock};
    if !state_dir.is_dir() {
        return check_result(NAME, CheckStatus::Ok, "no state folder yet");
    }
    match SyncLock::new(state_dir).status() {
        Ok(LockStatus::Free) => check_result(NAME, CheckStatus::Ok, "free"),
        Ok(LockStatus::Held(r)) if r.is_overdue() => check_result(
            NAME,
            CheckStatus::Warn,
            format!(
                "held by pid {} ({}: {}) for {} s, past its max hold of {} s",
                r.pid,
                r.caller,
                r.reason,
                r.held_for(Utc::now()).as_secs(),
                r.max_hold_secs
            ),
        ),
        Ok(LockStatus::Held(r)) => check_result(
            NAME,
            CheckStatus::Ok,
            format!(
                "held by pid {} ({}) for {} s",
                r.pid,
                r.caller,
                r.held_for(Utc::now()).as_secs()
            ),
        ),
        Ok(LockStatus::Stale { why, .. }) => check_result(
            NAME,
            CheckStatus::Warn,
            format!("stale lock record cleared: {why}"),
        ),
        Err(e) => check_result(NAME, CheckStatus::Fail, e.to_string()),
    }
}

/// Queue entries running, or due and waiting, longer than `max_hold`.
pub fn check_queue(state_dir: &Path, max_hold: Duration) -> Check {
    const NAME: &str = "queue";
    let queue = Queue::new(state_dir);
    let entries = match queue.list() {
        Ok(e) => e,
        Err(e) => return check_result(NAME, CheckStatus::Fail, e.to_string()),
    };
    let now = Utc::now();
    let limit = chrono::Duration::from_std(max_hold).unwrap_or(chrono::Duration::MAX);
    let mut stuck = Vec::new();
    for e in &entries {
        let since = match e.status {
            EntryStatus::Running => e.started_at.unwrap_or(e.enqueued_at),
            // Waiting counts from when it became due.
            _ => e
                .next_attempt_at
                .unwrap_or(e.enqueued_at)
                .max(e.enqueued_at),
        };
        if e.next_attempt_at.is_some_and(|t| t > now) {
            continue;
        }
        if now - since > limit {
            stuck.push(format!(
                "{} ({} {} for {} s)",
                e.id,
                e.sync_type,
                match e.status {
                    EntryStatus::Running => "running",
                    _ => "waiting",
                },
                (now - since).num_seconds()
            ));
        }
    }
    if stuck.is_empty() {
        check_result(
            NAME,
            CheckStatus::Ok,
            format!("{} entries, none stuck", entries.len()),
        )
    } else {
        check_result(
            NAME,
            CheckStatus::Warn,
            format!(
                "{} entries stuck longer than {} s: {}",
                stuck.len(),
                max_hold.as_secs(),
                stuck.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{ManualClock, Priority, SyncRequest};
    use std::sync::Arc;
    use wsync_testutils::TestRepo;

    #[test]
    fn a_fresh_repository_is_healthy() {
        let repo = TestRepo::with_commit();
        let state = repo.path().join(".wsync");
        std::fs::create_dir_all(&state).unwrap();
        let r = check(repo.path(), &state, &HealthOptions::default());
        assert!(r.healthy(), "{r:?}");
        assert_eq!(r.checks.len(), 4);
        assert_eq!(r.worst(), CheckStatus::Ok);
    }

    #[test]
    fn a_missing_object_fails_the_repository_check() {
        let repo = TestRepo::with_commit();
        let tree = repo.git(&["rev-parse", "HEAD^{tree}"]);
        let tree = tree.trim();
        let obj = repo
            .path()
            .join(".git/objects")
            .join(&tree[..2])
            .join(&tree[2..]);
        std::fs::remove_file(obj).unwrap();
        let c = check_repository(repo.path(), Duration::from_secs(30));
        assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
    }

    #[test]
    fn absurd_disk_threshold_fails_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let c = check_disk(dir.path(), u64::MAX);
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.detail.contains(&dir.path().display().to_string()));
    }

    #[test]
    fn old_queue_entries_are_stuck_and_a_corrupt_queue_fails() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Utc::now() - chrono::Duration::hours(1));
        let q = Queue::with_clock(dir.path(), Arc::new(clock));
        q.enqueue(&SyncRequest::new("manual", "t", Priority::Normal, ""))
            .unwrap();
        let c = check_queue(dir.path(), Duration::from_secs(600));
        assert_eq!(c.status, CheckStatus::Warn, "{c:?}");
        assert!(c.detail.contains("waiting"), "{c:?}");
        std::fs::write(q.path(), "garbage").unwrap();
        let c = check_queue(dir.path(), Duration::from_secs(600));
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.detail.contains("queue.json"));
    }

    #[test]
    fn a_dead_holders_record_is_reported_stale() {
        let dir = tempfile::tempdir().unwrap();
        let record = serde_json::json!({
            "pid": 999_999_u32, "start_time": null, "host": "h", "caller": "c",
            "reason": "r", "acquired_at": Utc::now(), "max_hold_secs": 600
        });
        std::fs::write(dir.path().join("sync.lock"), record.to_string()).unwrap();
        let c = check_lock(dir.path());
        assert_eq!(c.status, CheckStatus::Warn, "{c:?}");
        assert!(c.detail.contains("stale"));
    }
}
