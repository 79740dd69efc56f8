//! The exclusive sync lock on `<state>/sync.lock`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext as _, Result};
use crate::fsutil::{Backoff, check_state_dir, deadline_after, is_current, open_lock_file};
use crate::process::{gone_reason, me};

/// The lock file's name inside the state folder.
pub const SYNC_LOCK_FILE: &str = "sync.lock";

/// Default [`LockOptions::max_hold`]: 10 minutes.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(600);

/// How long a `Wait::Fail` acquire keeps retrying when the current holder
/// has no live record (a `status` probe or a holder writing its record).
const FAIL_GRACE: Duration = Duration::from_millis(20);

/// How long `status` waits for a live holder's record to become readable.
const READ_GRACE: Duration = Duration::from_millis(200);

/// What to do when the lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Fail at once with [`Error::Busy`] (after a grace of a few
    /// milliseconds when the holder is only probing the lock).
    Fail,
    /// Retry with exponential backoff (1 ms doubling to 100 ms) until this
    /// much time has passed, then fail with [`Error::Busy`].
    Timeout(Duration),
    /// Block until the lock is free.
    Forever,
}

/// Who takes the lock and why; written into the holder record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    /// The program or component taking the lock (e.g. `"wsync sync"`).
    pub caller: String,
    /// Why (e.g. `"scheduled"`, the command line of `wsync lock run`).
    pub reason: String,
    /// How long the holder promises to hold it at most (default 600 s).
    /// Nothing enforces it here; [`HolderRecord::is_overdue`] reports it.
    pub max_hold: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            caller: "wsync".into(),
            reason: String::new(),
            max_hold: DEFAULT_MAX_HOLD,
        }
    }
}

/// The JSON record a holder writes into `sync.lock` while it holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    /// The holder's process id.
    pub pid: u32,
    /// The holder's start time (seconds since the epoch), to tell a reused
    /// pid from the holder.
    pub start_time: Option<u64>,
    /// The host name the holder runs on.
    pub host: String,
    /// [`LockOptions::caller`].
    pub caller: String,
    /// [`LockOptions::reason`].
    pub reason: String,
    /// When the lock was taken.
    pub acquired_at: DateTime<Utc>,
    /// [`LockOptions::max_hold`] in seconds.
    pub max_hold_secs: u64,
}

impl HolderRecord {
    /// How long the lock has been held as of `now` (zero if the clock went
    /// backwards).
    pub fn held_for(&self, now: DateTime<Utc>) -> Duration {
        (now - self.acquired_at).to_std().unwrap_or(Duration::ZERO)
    }

    /// Whether the holder has held the lock longer than its `max_hold` as
    /// of `now`. The coordinator's emergency stop acts on this.
    pub fn is_overdue_at(&self, now: DateTime<Utc>) -> bool {
        self.held_for(now) > Duration::from_secs(self.max_hold_secs)
    }

    /// [`is_overdue_at`](Self::is_overdue_at) now.
    pub fn is_overdue(&self) -> bool {
        self.is_overdue_at(Utc::now())
    }

    fn mine(opts: &LockOptions) -> Self {
        let me = me();
        Self {
            pid: me.pid,
            start_time: me.start_time,
            host: me.host.clone(),
            caller: opts.caller.clone(),
            reason: opts.reason.clone(),
            acquired_at: Utc::now(),
            max_hold_secs: opts.max_hold.as_secs(),
        }
    }
}

/// What [`SyncLock::status`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockStatus {
    /// Nobody holds the lock and no record is left.
    Free,
    /// A live process holds the lock.
    Held(HolderRecord),
    /// Nobody holds the lock, but a record was left behind (its holder
    /// died, or the record is garbage, empty or truncated). `status` has
    /// cleared it.
    Stale {
        /// The record, when it could be parsed.
        record: Option<HolderRecord>,
        /// Why it is stale, in words.
        why: String,
    },
}

impl LockStatus {
    /// Whether the lock is held past the holder's own `max_hold`.
    pub fn is_overdue(&self) -> bool {
        matches!(self, Self::Held(r) if r.is_overdue())
    }
}

/// The exclusive sync lock of one state folder.
///
/// The lock is an OS advisory lock (`flock`) on `<state>/sync.lock`, held on
/// an open file handle for the guard's whole life: when the holder exits or
/// is killed, the kernel releases it, so it can never get stuck. The same
/// file holds the holder's JSON record, written in place after the lock is
/// taken and emptied on release; a non-empty record on a free lock is
/// stale. Two handles in one process conflict like two processes do
/// (`flock` belongs to the open file description).
#[derive(Debug, Clone)]
pub struct SyncLock {
    state_dir: PathBuf,
    path: PathBuf,
}

impl SyncLock {
    /// The sync lock of `state_dir` (nothing is touched until used).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        let path = state_dir.join(SYNC_LOCK_FILE);
        Self { state_dir, path }
    }

    /// `<state>/sync.lock`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock, waiting as `wait` says, and writes the holder record.
    pub fn acquire(&self, opts: &LockOptions, wait: Wait) -> Result<SyncLockGuard> {
        let deadline = match wait {
            Wait::Fail => deadline_after(FAIL_GRACE),
            Wait::Timeout(d) => deadline_after(d),
            Wait::Forever => None,
        };
        let file = loop {
            let file = open_lock_file(&self.state_dir, &self.path)?;
            match wait {
                Wait::Forever => file.lock().at(&self.path)?,
                Wait::Fail => self.lock_with_deadline(&file, deadline, true)?,
                Wait::Timeout(_) => self.lock_with_deadline(&file, deadline, false)?,
            }
            if is_current(&file, &self.path)? {
                break file;
            }
            // Someone removed or replaced the file while we waited.
        };
        // We hold the lock: whatever the file says is left over.
        let previous = read_all(&file).at(&self.path)?;
        let replaced = (!is_blank(&previous)).then(|| stale_status(&self.path, &previous));
        let record = HolderRecord::mine(opts);
        write_record(&file, &record).at(&self.path)?;
        Ok(SyncLockGuard {
            file: Some(file),
            path: self.path.clone(),
            record,
            replaced,
        })
    }

    /// [`acquire`](Self::acquire) with [`Wait::Fail`].
    pub fn try_acquire(&self, opts: &LockOptions) -> Result<SyncLockGuard> {
        self.acquire(opts, Wait::Fail)
    }

    /// Polls `try_lock` with backoff until `deadline`. With `fail_fast`,
    /// gives up at once when a live holder's record is readable.
    fn lock_with_deadline(
        &self,
        file: &File,
        deadline: Option<Instant>,
        fail_fast: bool,
    ) -> Result<()> {
        let mut backoff = Backoff::new(deadline, Duration::from_millis(100));
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(()),
                Err(TryLockError::Error(e)) => return Err(e).at(&self.path),
                Err(TryLockError::WouldBlock) => {}
            }
            let live = if fail_fast { self.live_holder() } else { None };
            if live.is_none() && backoff.wait() {
                continue;
            }
            let holder = live.or_else(|| self.live_holder());
            return Err(Error::Busy {
                path: self.path.clone(),
                holder: holder.map(Box::new),
            });
        }
    }

    /// The holder's record if it is readable and names a live process.
    fn live_holder(&self) -> Option<HolderRecord> {
        let bytes = std::fs::read(&self.path).ok()?;
        let record = parse_record(&bytes).ok()??;
        gone_reason(record.pid, record.start_time, &record.host)
            .is_none()
            .then_some(record)
    }

    /// Free, held (with the record) or stale; a stale record is cleared
    /// (when the file is writable).
    ///
    /// Never panics on a bad record: garbage, empty and truncated records
    /// on a free lock are [`LockStatus::Stale`]. A lock held by someone
    /// whose record stays unreadable is [`Error::UnreadableRecord`].
    pub fn status(&self) -> Result<LockStatus> {
        check_state_dir(&self.state_dir)?;
        let open = |write| OpenOptions::new().read(true).write(write).open(&self.path);
        // Read-only access (another user's state folder) still tells the
        // status; only clearing a stale record needs write access.
        let (file, writable) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(LockStatus::Free),
            Err(e) if e.kind() == ErrorKind::PermissionDenied && open(false).is_ok() => {
                (open(false).at(&self.path)?, false)
            }
            Err(e) => {
                // A folder, a special file, permissions: name the path.
                return Err(match std::fs::symlink_metadata(&self.path) {
                    Ok(m) if !m.is_file() => Error::NotAFile {
                        path: self.path.clone(),
                    },
                    _ => Error::Io {
                        path: self.path.clone(),
                        source: e,
                    },
                });
            }
        };
        match file.try_lock() {
            Ok(()) => {
                let bytes = read_all(&file).at(&self.path)?;
                if bytes.is_empty() {
                    return Ok(LockStatus::Free);
                }
                let status = stale_status(&self.path, &bytes);
                if writable {
                    file.set_len(0).at(&self.path)?;
                }
                Ok(status)
            }
            Err(TryLockError::Error(e)) => Err(e).at(&self.path),
            Err(TryLockError::WouldBlock) => self.read_held_record(&file),
        }
    }

    /// The record of a held lock, retrying while the holder writes it.
    fn read_held_record(&self, file: &File) -> Result<LockStatus> {
        let mut backoff = Backoff::new(deadline_after(READ_GRACE), Duration::from_millis(20));
        loop {
            let bytes = read_all(file).at(&self.path)?;
            let (why, record) = match parse_record(&bytes) {
                Ok(Some(r)) => match gone_reason(r.pid, r.start_time, &r.host) {
                    None => return Ok(LockStatus::Held(r)),
                    // Likely a new holder that has not yet replaced a dead
                    // one's record; retry.
                    Some(why) => (why, Some(r)),
                },
                Ok(None) => ("the record is empty".to_owned(), None),
                Err(why) => (why, None),
            };
            if !backoff.wait() {
                // The lock is held, so a readable record is the best we
                // know even if its pid looks gone (another pid namespace).
                if let Some(r) = record {
                    return Ok(LockStatus::Held(r));
                }
                return Err(Error::UnreadableRecord {
                    path: self.path.clone(),
                    why,
                });
            }
        }
    }
}

/// Holds the sync lock; releases it (and empties the record) on drop.
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub struct SyncLockGuard {
    file: Option<File>,
    path: PathBuf,
    record: HolderRecord,
    replaced: Option<LockStatus>,
}

impl SyncLockGuard {
    /// The record this guard wrote.
    pub fn record(&self) -> &HolderRecord {
        &self.record
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stale record (a [`LockStatus::Stale`]) this acquire found and
    /// replaced, e.g. from a holder that was killed; `None` normally.
    pub fn replaced_stale(&self) -> Option<&LockStatus> {
        self.replaced.as_ref()
    }

    /// Empties the record and releases the lock, reporting errors (drop
    /// does the same but cannot report).
    pub fn release(mut self) -> Result<()> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let cleared = file.set_len(0).at(&self.path);
        // Closing the handle releases the flock even if unlock fails.
        let unlocked = file.unlock().at(&self.path);
        drop(file);
        cleared.and(unlocked)
    }
}

impl Drop for SyncLockGuard {
    fn drop(&mut self) {
        let _ = self.release_inner();
    }
}

fn read_all(mut file: &File) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

fn write_record(file: &File, record: &HolderRecord) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    // No fsync: the record only describes a kernel lock that a crash
    // releases anyway, and a lost or torn record reads as stale.
    file.set_len(0)?;
    file.write_all_at(&bytes, 0)
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

/// `Ok(None)` for an empty record, `Err(why)` for garbage.
pub(crate) fn parse_record(bytes: &[u8]) -> std::result::Result<Option<HolderRecord>, String> {
    if is_blank(bytes) {
        return Ok(None);
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|e| format!("garbage or truncated record ({} bytes): {e}", bytes.len()))
}

/// Classifies a non-empty record found on a free lock.
fn stale_status(path: &Path, bytes: &[u8]) -> LockStatus {
    match parse_record(bytes) {
        Ok(Some(record)) => {
            let why =
                gone_reason(record.pid, record.start_time, &record.host).unwrap_or_else(|| {
                    format!(
                        "holder pid {} on {} no longer holds the lock",
                        record.pid, record.host
                    )
                });
            LockStatus::Stale {
                record: Some(record),
                why,
            }
        }
        Ok(None) => LockStatus::Free,
        Err(why) => LockStatus::Stale {
            record: None,
            why: format!("{}: {why}", path.display()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> HolderRecord {
        HolderRecord::mine(&LockOptions::default())
    }

    #[test]
    fn record_round_trips_and_rejects_garbage() {
        let r = record();
        let bytes = serde_json::to_vec(&r).unwrap_or_default();
        assert_eq!(parse_record(&bytes), Ok(Some(r)));
        assert_eq!(parse_record(b""), Ok(None));
        assert_eq!(parse_record(b" \n"), Ok(None));
        let truncated = &bytes[..bytes.len() / 2];
        assert!(parse_record(truncated).is_err());
        assert!(parse_record(b"12345\n").is_err());
        assert!(parse_record(&[0xff, 0xfe, 0]).is_err());
    }

    #[test]
    fn overdue_is_measured_against_max_hold() {
        let mut r = record();
        r.max_hold_secs = 10;
        let t0 = r.acquired_at;
        assert!(!r.is_overdue_at(t0 + chrono::Duration::seconds(10)));
        assert!(r.is_overdue_at(t0 + chrono::Duration::seconds(11)));
        // A clock that went backwards is not overdue.
        assert!(!r.is_overdue_at(t0 - chrono::Duration::seconds(100)));
        assert!(!LockStatus::Held(record()).is_overdue());
        r.acquired_at = Utc::now() - chrono::Duration::seconds(60);
        assert!(LockStatus::Held(r).is_overdue());
    }
}
