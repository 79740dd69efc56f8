//! One module per command group; each exposes `run(&Ctx, args)`.

pub mod completions;
pub mod init;
pub mod remote;
pub mod snapshot;
pub mod remote;
