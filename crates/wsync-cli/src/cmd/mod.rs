//! One module per command group; each exposes `run(&Ctx, args)`.

pub mod completions;
pub mod daemon;
pub mod guard;
pub mod handoff;
pub mod health;
pub mod init;
pub mod lock;
pub mod pause;
pub mod projects;
pub mod queue;
pub mod remote;
pub mod snapshot;
pub mod watch;
