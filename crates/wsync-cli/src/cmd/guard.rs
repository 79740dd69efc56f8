//! `wsync guard`: run a command as an autonomous writer under the pause gate.
//!
//! The guard must never block the autonomous system for good: without a
//! state folder it runs the command straight away (a debug log line says
//! so), when the gate cannot be used it warns and runs the command anyway,
//! and a pause longer than `--max-wait` is waited out only that long.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use wsync_lock::{PauseGate, WriterOptions};

use crate::cmd::lock::{ChildCommand, parse_secs, run_child};
use crate::ctx::Ctx;

/// `wsync guard`.
#[derive(Debug, Args)]
pub struct GuardArgs {
    /// The writer's name in the writer log (default: the command's file name).
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Wait at most SECS for a pause to end, then run anyway (warns).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "300")]
    pub max_wait: Duration,
    /// A file or folder the command writes (repeatable). Recorded in the
    /// writer window so the filter attributes only these paths to the
    /// writer; without any, every change during the run is attributed to it.
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<std::path::PathBuf>,
    /// The command to run.
    #[command(flatten)]
    pub command: ChildCommand,
}

/// Runs CMD inside the gate and exits with its code.
pub fn run(ctx: &Ctx, args: &GuardArgs) -> Result<u8> {
    if !ctx.state_dir.is_dir() {
        tracing::debug!(
            "no state folder at {}; running without the pause gate",
            ctx.state_dir.display()
        );
        return run_child(&args.command.cmd);
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.command.cmd));
    let gate = PauseGate::new(&ctx.state_dir);
    let opts = WriterOptions {
        name: name.clone(),
        max_wait: args.max_wait,
        paths: declared_paths(&args.paths),
    };
    let guard = match gate.writer(&opts) {
        Ok(g) => g,
        Err(err) => {
            ctx.warn(format!(
                "pause gate unavailable ({err}); running {name} without it"
            ));
            return run_child(&args.command.cmd);
        }
    };
    if guard.pause_exceeded() {
        let by = guard
            .paused_by()
            .map_or_else(String::new, |pid| format!(" by pid {pid}"));
        ctx.warn(format!(
            "the pause{by} lasted longer than {}s; running {name} anyway",
            args.max_wait.as_secs_f64()
        ));
    } else if !guard.waited().is_zero() && guard.paused_by().is_some() {
        tracing::info!("waited {:?} for a pause to end", guard.waited());
    }
    let code = run_child(&args.command.cmd);
    if let Err(err) = guard.finish() {
        ctx.warn(format!("cannot record the writer window: {err}"));
    }
    code
}

/// Declared paths made absolute against the current folder, so the filter
/// can match them whatever folder the guard ran in.
fn declared_paths(paths: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_default();
    paths.iter().map(|p| cwd.join(p)).collect()
}

fn default_name(cmd: &[std::ffi::OsString]) -> String {
    cmd.first()
        .and_then(|p| Path::new(p).file_name())
        .map_or_else(|| "writer".into(), |n| n.to_string_lossy().into_owned())
}
