//! rsync-style delta transfer and bidirectional sync of a tree with another
//! machine over SSH.
//!
//! The far side runs `wsync serve --root PATH` (see [`serve::serve`]) on the
//! `ssh` program's stdin/stdout; this side drives it through a [`Session`]:
//! one-way [`Session::push`]/[`Session::pull`] (with rsync's `--delete`
//! semantics) or a three-way [`Session::sync`] against the last synced
//! state of the pair, which is stored on both sides. Everything a peer
//! sends is validated ([`fsops::check_rel`]); every write is a temp file,
//! fsync, rename and folder fsync.
//!
//! ```
//! use wsync_remote::{Session, SyncOptions, conn::local_pair, serve::ServeOptions};
//!
//! let here = tempfile::tempdir()?;
//! let there = tempfile::tempdir()?;
//! std::fs::write(here.path().join("notes.txt"), "hello")?;
//! // An in-process server for `there`; over SSH use `Session::connect`.
//! let conn = local_pair(there.path(), ServeOptions::default())?;
//! let mut session = Session::with_conn(here.path(), conn, "there");
//! let report = session.sync(&SyncOptions::default())?;
//! assert_eq!(report.files_sent, 1);
//! assert_eq!(std::fs::read(there.path().join("notes.txt"))?, b"hello");
//! session.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod agent;
pub mod conn;
pub mod delta;
pub mod engine;
pub mod fsops;
pub mod serve;
pub mod watch;
pub mod wire;

use std::path::PathBuf;

pub use conn::{ConnectOptions, PeerSpec};
pub use engine::{
    ConflictCopy, PlanItem, Progress, ProgressEvent, Report, Session, SyncOptions, list_conflicts,
};
pub use watch::{WatchEvent, WatchOptions, watch, watch_events};

/// Renders path bytes for messages (lossy UTF-8).
#[must_use]
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A path from a peer (or the caller) was refused.
    #[error("refused path {path:?}: {why}")]
    UnsafePath {
        /// The path, lossily decoded.
        path: String,
        /// Why.
        why: String,
    },
    /// The destination changed since it was scanned; nothing was touched.
    #[error("{path}: changed since it was scanned (left alone; the next run picks it up)")]
    Changed {
        /// The root-relative path.
        path: String,
    },
    /// The entry does not exist.
    #[error("{path}: not found")]
    NotFound {
        /// The root-relative path.
        path: String,
    },
    /// A delta could not be generated or applied.
    #[error("{path}: {source}")]
    Delta {
        /// The root-relative path.
        path: String,
        /// The cause.
        source: delta::DeltaError,
    },
    /// A frame could not be read or written.
    #[error("connection to {peer}: {source}")]
    Frame {
        /// The peer.
        peer: String,
        /// The cause.
        source: wire::FrameError,
    },
    /// The peer sent something out of protocol.
    #[error("protocol error with {peer}: {what}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What happened.
        what: String,
    },
    /// The peer never answered the handshake.
    #[error(
        "peer {peer} did not answer the handshake: is wsync installed on the remote? \
         (use --remote-wsync PATH) [{detail}]"
    )]
    NoHandshake {
        /// The peer.
        peer: String,
        /// What was seen instead.
        detail: String,
    },
    /// The peer speaks another protocol version.
    #[error(
        "peer wsync speaks protocol {peer}, we speak {ours}: install the same wsync version on both sides"
    )]
    Version {
        /// The peer's version.
        peer: u32,
        /// Ours.
        ours: u32,
    },
    /// The peer refused or failed a request.
    #[error("{peer}: {path}: {message}")]
    Peer {
        /// The peer.
        peer: String,
        /// The category.
        kind: wire::ErrorKind,
        /// The path concerned.
        path: String,
        /// The peer's message.
        message: String,
    },
    /// A program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A bad `[USER@]HOST:PATH` or path.
    #[error("bad peer {spec:?}: {why}")]
    PeerSpec {
        /// What was given.
        spec: String,
        /// Why it is wrong.
        why: String,
    },
    /// A root that had files is missing or empty: refusing to propagate
    /// what would be a mass deletion.
    #[error(
        "{side} root {root} is missing or empty, but {known} entries were synced before: \
         refusing to delete them on the other side (is it unmounted?); \
         pass --allow-mass-delete if this is intended"
    )]
    MassDelete {
        /// "local" or "remote".
        side: String,
        /// The root.
        root: String,
        /// Entries in the last synced state.
        known: usize,
    },
    /// The stored sync state is unreadable.
    #[error("sync state {path}: {why}")]
    State {
        /// Where it is.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Watching the tree failed.
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        /// The root.
        path: PathBuf,
        /// The cause.
        source: notify::Error,
    },
    /// A bad exclude pattern.
    #[error("exclude pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern (with file and line for `.wsyncignore`).
        pattern: String,
        /// The cause.
        source: ignore::Error,
    },
}

impl Error {
    /// Whether the error means the connection is gone (worth reconnecting).
    #[must_use]
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Self::Frame { .. }
                | Self::Protocol { .. }
                | Self::NoHandshake { .. }
                | Self::Spawn { .. }
        )
    }
}
