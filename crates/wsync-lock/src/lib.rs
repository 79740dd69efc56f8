//! The exclusive sync lock and the pause gate between sync and autonomous
//! writers, for one wsync state folder.
//!
//! ```
//! use std::time::Duration;
//! use wsync_lock::{LockOptions, LockStatus, PauseGate, PauseOptions, SyncLock, Wait,
//!                  WriterOptions, read_writer_windows};
//!
//! # fn main() -> Result<(), wsync_lock::Error> {
//! let state = tempfile::tempdir().map_err(|source| wsync_lock::Error::Io {
//!     path: std::env::temp_dir(), source })?;
//! let state = state.path();
//!
//! // One sync at a time.
//! let lock = SyncLock::new(state);
//! let opts = LockOptions { caller: "example".into(), reason: "demo".into(),
//!                          ..LockOptions::default() };
//! let guard = lock.acquire(&opts, Wait::Timeout(Duration::from_secs(5)))?;
//! assert!(matches!(lock.status()?, LockStatus::Held(r) if r.caller == "example"));
//! // A second handle, even in this process, is refused.
//! assert!(matches!(lock.try_acquire(&opts), Err(wsync_lock::Error::Busy { .. })));
//! drop(guard);
//! assert_eq!(lock.status()?, LockStatus::Free);
//!
//! // Autonomous writers go through the gate; their windows are logged.
//! let gate = PauseGate::new(state);
//! let writer = gate.writer(&WriterOptions { name: "indexer".into(),
//!                                           ..WriterOptions::default() })?;
//! assert!(!writer.pause_exceeded());
//! drop(writer);
//! assert_eq!(read_writer_windows(state)?[0].name, "indexer");
//!
//! // Sync pauses them; the pause file is visible while it lasts.
//! let pause = gate.pause(&PauseOptions { reason: "sync".into(),
//!                                        ..PauseOptions::default() })?;
//! assert!(pause.acknowledged() && gate.is_paused());
//! drop(pause);
//! assert!(gate.wait_until_resumed(Duration::from_secs(1))?);
//! # Ok(())
//! # }
//! ```
//!
//! # Files in the state folder
//!
//! | file | what |
//! |------|------|
//! | `sync.lock` | `flock`ed exclusively by the sync holder; holds its JSON [`HolderRecord`] while held, empty when free |
//! | `writers.lock` | `flock`ed shared by each writer, exclusively by a pause |
//! | `pausers.lock` | `flock`ed exclusively by a pause for its whole life; decides whether a pause file is live |
//! | `sync-pause.lock` | the visible pause file: `PID\nTIMESTAMP\nREASON\n`, written atomically, removed on release |
//! | `writers.jsonl` | one [`WriterWindow`] per line, compacted to the newest 1000 lines past 256 KiB |
//!
//! # Why the holder record lives in the lock file
//!
//! The record is written in place (truncate, write) right after the lock is
//! taken and emptied before it is released; it is never renamed over,
//! which would swap the inode under the `flock`. So: a free lock with a
//! non-empty record is stale by definition (its holder died), whatever the
//! record says; a reader that sees a held lock with a half-written record
//! retries for a moment. The record is not fsynced: a crash releases the
//! kernel lock anyway and a lost or torn record reads as stale.
//!
//! Every lock handle is close-on-exec, so a command run under the lock never
//! inherits it: when the holder is killed with SIGKILL the lock is free at
//! once, even if a child it started lives on.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod fsutil;
mod pause;
mod process;
mod sync_lock;
mod windows;

pub use error::{Error, Result};
pub use pause::{
    DEFAULT_ACK_TIMEOUT, DEFAULT_MAX_PAUSE, PAUSE_FILE, PAUSERS_LOCK_FILE, PauseGate, PauseGuard,
    PauseInfo, PauseOptions, PauseStatus, WRITERS_LOCK_FILE, WriterGuard, WriterOptions,
};
pub use sync_lock::{
    DEFAULT_MAX_HOLD, HolderRecord, LockOptions, LockStatus, SYNC_LOCK_FILE, SyncLock,
    SyncLockGuard, Wait,
};
pub use windows::{
    WRITERS_LOG_FILE, WRITERS_LOG_KEEP_LINES, WRITERS_LOG_MAX_BYTES, WriterWindow,
    read_writer_windows, writers_log_path,
};
