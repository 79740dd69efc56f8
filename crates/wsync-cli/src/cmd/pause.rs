//! `wsync pause status|wait|run`: the pause gate for hosts that poll and
//! for running a command with writers paused.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use wsync_lock::{DEFAULT_MAX_PAUSE, PauseGate, PauseOptions, PauseStatus};

use crate::cmd::lock::{ChildCommand, command_line, parse_secs, run_child};
use crate::ctx::Ctx;
use crate::exit::{self, Failure};

/// `wsync pause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: PauseCmd,
}

/// `wsync pause` subcommands.
#[derive(Debug, Subcommand)]
pub enum PauseCmd {
    /// Show whether writers are paused (a stale pause file is removed).
    Status,
    /// Wait until writers may write again: exit 0 when resumed, 3 (busy) on timeout.
    Wait {
        /// Give up after SECS (fractions allowed).
        #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "300")]
        timeout: Duration,
    },
    /// Run CMD with autonomous writers paused; exits with CMD's code.
    Run(PauseRunArgs),
}

/// `wsync pause run`.
#[derive(Debug, Args)]
pub struct PauseRunArgs {
    /// Why (third line of the pause file; default: the command line).
    #[arg(long, value_name = "R")]
    pub reason: Option<String>,
    /// Wait at most SECS for in-flight writers to finish, then run anyway (warns).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    pub ack_timeout: Duration,
    /// The command to run.
    #[command(flatten)]
    pub command: ChildCommand,
}

/// Runs `wsync pause ...`.
pub fn run(ctx: &Ctx, args: &PauseArgs) -> Result<u8> {
    let gate = PauseGate::new(&ctx.state_dir);
    match &args.cmd {
        PauseCmd::Status => status(ctx, &gate),
        PauseCmd::Wait { timeout } => {
            // Fails with the "run `wsync init`" error when there is no state.
            gate.status()?;
            if gate.wait_until_resumed(*timeout)? {
                Ok(exit::SUCCESS)
            } else {
                let err = anyhow::anyhow!(
                    "writers are still paused after {}s ({})",
                    timeout.as_secs_f64(),
                    gate.pause_file().display()
                );
                Err(Failure::new(exit::BUSY, err).into())
            }
        }
        PauseCmd::Run(run) => run_paused(ctx, &gate, run),
    }
}

fn status(ctx: &Ctx, gate: &PauseGate) -> Result<u8> {
    let status = gate.status()?;
    let path = gate.pause_file().display().to_string();
    let mut value = serde_json::to_value(&status).context("cannot encode the status")?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("path".into(), json!(path));
        if let PauseStatus::Paused { info: Some(info) } = &status {
            obj.insert("paused_secs".into(), json!(info.paused_for().as_secs()));
        }
    }
    ctx.emit(&value, || match &status {
        PauseStatus::Running => "writers: running (not paused)".to_owned(),
        PauseStatus::Paused { info: Some(i) } => format!(
            "writers: paused by pid {} since {} for {}s: {}",
            i.pid,
            i.at.map_or_else(|| "?".into(), |t| t.to_rfc3339()),
            i.paused_for().as_secs(),
            i.reason
        ),
        PauseStatus::Paused { info: None } => {
            format!("writers: paused ({path} is unreadable)")
        }
        PauseStatus::Stale { why, .. } => {
            format!("writers: running; removed a stale pause file: {why}")
        }
    })?;
    Ok(exit::SUCCESS)
}

fn run_paused(ctx: &Ctx, gate: &PauseGate, args: &PauseRunArgs) -> Result<u8> {
    let opts = PauseOptions {
        reason: args
            .reason
            .clone()
            .unwrap_or_else(|| command_line(&args.command.cmd)),
        ack_timeout: args.ack_timeout,
        max_pause: DEFAULT_MAX_PAUSE,
    };
    let pause = match gate.pause(&opts) {
        Ok(p) => p,
        Err(err @ wsync_lock::Error::Busy { .. }) => {
            return Err(Failure::new(exit::BUSY, err).into());
        }
        Err(err) => return Err(err.into()),
    };
    if !pause.acknowledged() {
        ctx.warn(format!(
            "writers still busy after {}s; running anyway",
            args.ack_timeout.as_secs_f64()
        ));
    }
    let code = run_child(&args.command.cmd);
    pause
        .release()
        .with_context(|| format!("cannot end the pause ({})", gate.pause_file().display()))?;
    code
}
