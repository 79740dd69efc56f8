//! `wsync watch`: intelligent auto-sync in the foreground. User changes
//! are requested as high-priority `watch` syncs and processed right here
//! (a running daemon serves them too; the sync lock serialises both);
//! system changes are ignored. Stops on SIGTERM/SIGINT.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::cmd::daemon::{LoopOptions, run_loop};
use crate::ctx::Ctx;

/// `wsync watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Write the log to FILE (rotated by size) instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// Runs the watcher and a queue processor until stopped.
pub fn run(ctx: &Ctx, args: &WatchArgs) -> Result<u8> {
    run_loop(
        ctx,
        &LoopOptions {
            exclusive: false,
            watch: true,
            log_file: args.log_file.clone(),
        },
    )
}
