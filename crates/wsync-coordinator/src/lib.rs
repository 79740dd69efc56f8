//! The wsync coordinator: configuration and the atomic git sync engine.
//!
//! A sync run takes the workspace's sync lock, pauses the autonomous
//! writers, snapshots the whole working state, commits only the user's
//! changes, fetches and integrates the remote (fast-forward or a real
//! three-way merge, conflicts settled per strategy), pushes, and finally
//! resumes the writers, logs the run and cleans old snapshots. Any failure
//! after the snapshot restores it; a run killed at any instant is recovered
//! by the next one from `<state>/sync-in-progress.json`.
//!
//! ```
//! use wsync_coordinator::{Config, SyncEngine, SyncOptions};
//! use wsync_testutils::{TestRemote, git};
//!
//! let remote = TestRemote::new();
//! let a = remote.clone_repo("a");
//! a.write("notes.md", "hello\n");
//! a.write("debug.log", "system noise\n");
//! let state = a.path().join(".wsync");
//! let engine = SyncEngine::new(a.path(), &state, Config::default());
//! let report = engine.run(&SyncOptions::default()).unwrap();
//! assert!(report.pushed);
//! assert_eq!(report.files, vec!["notes.md".to_owned()]);
//! // The remote has the note but never the log file.
//! let b = remote.clone_repo("b");
//! assert_eq!(b.read("notes.md"), "hello\n");
//! assert!(!b.exists("debug.log"));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod classify;
pub mod config;
pub mod conflicts;
pub mod daemon;
mod engine;
mod error;
mod fsutil;
mod git;
pub mod health;
pub mod journal;
pub mod queue;
pub mod ratelimit;
pub mod retry;
mod snap;
pub mod synclog;
pub mod watch;
pub mod workspace;

pub use classify::Verdict;
pub use config::{Config, Strategy};
pub use engine::{
    Decision, Integration, Phase, PhaseHook, Reason, Recovery, SyncEngine, SyncMode, SyncOptions,
    SyncReport,
};
pub use error::Error;
pub use git::fsck;
pub use workspace::{InitOptions, StatusReport, emergency_stop, init, status};
