//! Health checks (`wsync health`): repository integrity, free disk space,
//! stale sync-lock records, git lock files left behind by a killed git
//! process (in the workspace and in a local-path remote), and queue entries
//! stuck longer than the lock's maximum hold. The daemon runs them every five minutes.
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
    /// The git remote whose repository is also checked for leftover lock
    /// files when it is a local path or `file://` URL (default `origin`).
    pub remote_name: String,
    /// A git lock file older than this is reported as probably left by a
    /// killed git process (default 120 s; git holds its locks for
    /// milliseconds).
    pub stale_git_lock_age: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            min_free_bytes: 100 * 1024 * 1024,
            fsck_timeout: Duration::from_secs(60),
            skip_fsck: false,
            max_hold: Duration::from_secs(600),
            remote_name: "origin".into(),
            stale_git_lock_age: Duration::from_secs(120),
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
    /// `repository`, `disk`, `sync_lock`, `git_locks` or `queue`.
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
    let mut checks = Vec::with_capacity(5);
    if !opts.skip_fsck {
        checks.push(check_repository(workspace, opts.fsck_timeout));
    }
    checks.push(check_disk(workspace, opts.min_free_bytes));
    checks.push(check_lock(state_dir));
    checks.push(check_git_locks(
        workspace,
        &opts.remote_name,
        opts.stale_git_lock_age,
    ));
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

/// Git lock files (`*.lock` under `refs/`, and `index.lock`, `HEAD.lock`,
/// `packed-refs.lock`, `config.lock`, `shallow.lock`) older than `min_age`
/// in the workspace's git folder and, when the remote is a local path or a
/// `file://` URL, in the remote's repository. A git process killed with
/// SIGKILL leaves them behind, and every later fetch or push then fails.
/// They are only reported, with the command that removes them: another git
/// process may legitimately hold one, which only a person can rule out.
pub fn check_git_locks(workspace: &Path, remote_name: &str, min_age: Duration) -> Check {
    const NAME: &str = "git_locks";
    let Ok(repo) = git2::Repository::open(workspace) else {
        return check_result(NAME, CheckStatus::Ok, "not a git repository");
    };
    let mut dirs = vec![repo.path().to_path_buf()];
    if let Some(dir) = repo
        .find_remote(remote_name)
        .ok()
        .and_then(|r| r.url().map(str::to_owned))
        .and_then(|url| local_repo_dir(workspace, &url))
    {
        dirs.push(dir);
    }
    let mut stale = Vec::new();
    for dir in &dirs {
        for name in [
            "index.lock",
            "HEAD.lock",
            "packed-refs.lock",
            "config.lock",
            "shallow.lock",
        ] {
            note_if_stale(&dir.join(name), min_age, &mut stale);
        }
        collect_ref_locks(&dir.join("refs"), min_age, &mut stale, 0);
    }
    if stale.is_empty() {
        return check_result(NAME, CheckStatus::Ok, "no leftover git lock files");
    }
    let list: Vec<String> = stale.iter().map(|p| p.display().to_string()).collect();
    check_result(
        NAME,
        CheckStatus::Warn,
        format!(
            "{} git lock file(s) older than {} s, probably left by a killed git process; \
             fetch/push fail until they are gone. If no git process is running: rm -f {}",
            list.len(),
            min_age.as_secs(),
            list.join(" ")
        ),
    )
}

/// The repository folder of a local-path or `file://` remote URL.
fn local_repo_dir(workspace: &Path, url: &str) -> Option<std::path::PathBuf> {
    let path = match url.strip_prefix("file://") {
        Some(p) => std::path::PathBuf::from(p),
        None if url.contains("://") || (url.contains(':') && !url.starts_with('/')) => {
            return None;
        }
        None => workspace.join(url),
    };
    let dot_git = path.join(".git");
    if dot_git.is_dir() {
        Some(dot_git)
    } else if path.join("refs").is_dir() {
        Some(path)
    } else {
        None
    }
}

fn note_if_stale(path: &Path, min_age: Duration, out: &mut Vec<std::path::PathBuf>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .unwrap_or_default();
    if meta.is_file() && age >= min_age {
        out.push(path.to_path_buf());
    }
}

fn collect_ref_locks(dir: &Path, min_age: Duration, out: &mut Vec<std::path::PathBuf>, depth: u32) {
    // Ref names are a few levels deep; the bound only guards against loops.
    if depth > 16 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect_ref_locks(&path, min_age, out, depth + 1),
            Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "lock") => {
                note_if_stale(&path, min_age, out);
            }
            _ => {}
        }
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
    fn leftover_git_locks_in_the_workspace_and_a_local_remote_are_reported() {
        let remote = wsync_testutils::TestRemote::new();
        let clone = remote.clone_repo("a");
        let quick = Duration::from_secs(120);
        assert_eq!(
            check_git_locks(clone.path(), "origin", quick).status,
            CheckStatus::Ok
        );
        // What a SIGKILLed `git receive-pack` leaves in the bare remote, and
        // a killed `git fetch` in the clone.
        let remote_lock = remote.bare().join("refs/heads/main.lock");
        let local_lock = clone.path().join(".git/refs/remotes/origin/main.lock");
        std::fs::create_dir_all(local_lock.parent().unwrap()).unwrap();
        for p in [&remote_lock, &local_lock] {
            std::fs::write(p, "0123\n").unwrap();
        }
        // Fresh locks may belong to a running git: not reported yet.
        assert_eq!(
            check_git_locks(clone.path(), "origin", quick).status,
            CheckStatus::Ok
        );
        let old = std::time::SystemTime::now() - Duration::from_secs(600);
        for p in [&remote_lock, &local_lock] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let c = check_git_locks(clone.path(), "origin", quick);
        assert_eq!(c.status, CheckStatus::Warn, "{c:?}");
        assert!(
            c.detail.contains(&remote_lock.display().to_string()),
            "{c:?}"
        );
        assert!(
            c.detail.contains(&local_lock.display().to_string()),
            "{c:?}"
        );
        assert!(c.detail.contains("rm -f"), "{c:?}");
        // Reported, never removed.
        assert!(remote_lock.exists() && local_lock.exists());
    }

    #[test]
    fn a_fresh_repository_is_healthy() {
        let repo = TestRepo::with_commit();
        let state = repo.path().join(".wsync");
        std::fs::create_dir_all(&state).unwrap();
        let r = check(repo.path(), &state, &HealthOptions::default());
        assert!(r.healthy(), "{r:?}");
        assert_eq!(r.checks.len(), 5);
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
