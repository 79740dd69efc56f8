//! One module per command group; each exposes `run(&Ctx, args)`.

pub mod completions;
pub mod config;
pub mod conflicts;
pub mod daemon;
pub mod demo;
pub mod emergency;
pub mod filter;
pub mod guard;
pub mod handoff;
pub mod health;
pub mod init;
pub mod lock;
pub mod log;
pub mod pause;
pub mod projects;
pub mod queue;
pub mod remote;
pub mod snapshot;
pub mod status;
pub mod sync;
pub mod watch;
