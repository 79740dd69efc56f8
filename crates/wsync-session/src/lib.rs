//! Session handoff between machines, the project launcher registry and the
//! environment allow-list.
//!
//! The user walks from one machine to another and continues where they left
//! off. [`HandoffStore::save`] records a [`Handoff`] — the working folder
//! relative to the synced root, the git branch and HEAD there, the tmux
//! session, the dev servers running under the root (command line, folder,
//! listening TCP ports read from `/proc`), allow-listed environment
//! variables, host and time — in a small JSON file inside the synced tree,
//! so that a tree sync carries it. [`connect_plan`] turns it into the commands that sync and
//! open `ssh -t HOST` in the same folder and tmux session; [`resume`] tells
//! the arriving machine where to go and what to restart.
//!
//! The project launcher ([`discover`], [`Registry`]) finds Rust, Node,
//! Python and Go projects and keeps a JSON registry of their launch
//! commands in the state folder.
//!
//! The library never prints and never reads environment variables: the
//! caller passes the environment, the tmux session, the current folder and
//! the host in.
//!
//! ```
//! use std::collections::BTreeMap;
//! use wsync_session::{HandoffStore, SaveInput, SessionOptions};
//!
//! let root = tempfile::tempdir()?;
//! let env = BTreeMap::from([
//!     ("RUST_LOG".to_owned(), "debug".to_owned()),
//!     ("API_TOKEN".to_owned(), "hunter2".to_owned()),
//! ]);
//! let options = SessionOptions {
//!     env_allow: vec!["RUST_LOG".into(), "API_TOKEN".into()],
//!     ..SessionOptions::default()
//! };
//! let store = HandoffStore::new(root.path());
//! let input = SaveInput {
//!     env,
//!     note: Some("halfway through the parser".into()),
//!     ..SaveInput::new(root.path())
//! };
//! let report = store.save(&input, &options)?;
//! assert_eq!(report.handoff.env.get("RUST_LOG").map(String::as_str), Some("debug"));
//! // Secret-looking names are refused even when allow-listed.
//! assert!(!report.handoff.env.contains_key("API_TOKEN"));
//! assert_eq!(report.warnings.len(), 1);
//! assert_eq!(store.load()?, report.handoff);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod connect;
mod env;
mod error;
mod fsutil;
mod git;
mod handoff;
mod procs;
mod projects;

pub use connect::{ConnectOptions, ConnectPlan, PlanStep, SyncMode, shell_quote, shell_words};
pub use env::{DEFAULT_SECRET_PATTERNS, EnvFilter, filter_env};
pub use error::{Error, Result};
pub use git::{GitState, exclude_from_git, git_state};
pub use handoff::{
    BranchCheck, HANDOFF_FILE, Handoff, HandoffStore, Resume, SaveInput, SaveReport, ServerRestart,
    SessionOptions, TmuxInfo, Warning, default_host, resume,
};
pub use procs::{DEFAULT_IGNORED_PROGRAMS, DevServer, ProcScan, listening_inodes, scan_processes};
pub use projects::{
    DiscoverOptions, DiscoverReport, Found, MergeReport, Project, ProjectKind, REGISTRY_FILE,
    Registry, discover,
};

pub use connect::connect_plan;
