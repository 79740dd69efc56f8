//! `wsync lock status|run`: the sync lock from the shell.
//!
//! Also home of `run_child`, the wrapped-command runner `wsync lock run`,
//! `wsync guard` and `wsync pause run` share.

use std::ffi::OsString;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context as _, Result};
use chrono::Utc;
use clap::{Args, Subcommand};
use serde_json::json;
use wsync_lock::{LockOptions, LockStatus, SyncLock, Wait};

use crate::ctx::Ctx;
use crate::exit::{self, Failure};

/// `wsync lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: LockCmd,
}

/// `wsync lock` subcommands.
#[derive(Debug, Subcommand)]
pub enum LockCmd {
    /// Show who holds the sync lock (free / held / stale; a stale record is cleared).
    Status,
    /// Run CMD holding the sync lock (e.g. a manual rebase); exits with CMD's code,
    /// or 3 (busy) when the lock is not free in time.
    Run(LockRunArgs),
}

/// `wsync lock run`.
#[derive(Debug, Args)]
pub struct LockRunArgs {
    /// Wait up to SECS for the lock (fractions allowed; `forever` blocks).
    /// Default: fail at once when it is held.
    #[arg(long, value_name = "SECS", value_parser = parse_wait)]
    pub wait: Option<Wait>,
    /// Why, recorded in the lock (default: the command line).
    #[arg(long, value_name = "R")]
    pub reason: Option<String>,
    /// The command to run.
    #[command(flatten)]
    pub command: ChildCommand,
}

/// A wrapped command: `[--] CMD [ARGS...]`, everything after the options.
#[derive(Debug, Args)]
pub struct ChildCommand {
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub cmd: Vec<OsString>,
}

/// Runs `wsync lock ...`.
pub fn run(ctx: &Ctx, args: &LockArgs) -> Result<u8> {
    match &args.cmd {
        LockCmd::Status => status(ctx),
        LockCmd::Run(run) => run_locked(ctx, run),
    }
}

fn status(ctx: &Ctx) -> Result<u8> {
    let lock = SyncLock::new(&ctx.state_dir);
    let status = lock.status()?;
    let path = lock.path().display().to_string();
    let now = Utc::now();
    // Clearing needs write access; a read-only look leaves the record.
    let cleared = std::fs::metadata(lock.path()).is_ok_and(|m| m.len() == 0);
    let value = match &status {
        LockStatus::Free => json!({ "path": path, "state": "free" }),
        LockStatus::Held(r) => json!({
            "path": path, "state": "held", "record": r,
            "held_secs": r.held_for(now).as_secs(), "overdue": r.is_overdue_at(now),
        }),
        LockStatus::Stale { record, why } => json!({
            "path": path, "state": "stale", "record": record, "why": why, "cleared": cleared,
        }),
    };
    ctx.emit(&value, || match &status {
        LockStatus::Free => format!("sync lock: free ({path})"),
        LockStatus::Held(r) => format!(
            "sync lock: held by pid {} on {} ({}: {}) since {}, for {}s (max hold {}s){}",
            r.pid,
            r.host,
            r.caller,
            r.reason,
            r.acquired_at.to_rfc3339(),
            r.held_for(now).as_secs(),
            r.max_hold_secs,
            if r.is_overdue_at(now) {
                ", OVERDUE"
            } else {
                ""
            }
        ),
        LockStatus::Stale { record, why } => {
            let who = record.as_ref().map_or_else(String::new, |r| {
                format!(" (pid {} on {}, {}: {})", r.pid, r.host, r.caller, r.reason)
            });
            let done = if cleared {
                "cleared"
            } else {
                "found (read-only)"
            };
            format!("sync lock: free; {done} a stale record{who}: {why}")
        }
    })?;
    Ok(exit::SUCCESS)
}

fn run_locked(ctx: &Ctx, args: &LockRunArgs) -> Result<u8> {
    let lock = SyncLock::new(&ctx.state_dir);
    let opts = LockOptions {
        caller: "wsync lock run".into(),
        reason: args
            .reason
            .clone()
            .unwrap_or_else(|| command_line(&args.command.cmd)),
        ..LockOptions::default()
    };
    let guard = match lock.acquire(&opts, args.wait.unwrap_or(Wait::Fail)) {
        Ok(g) => g,
        Err(err @ wsync_lock::Error::Busy { .. }) => {
            return Err(Failure::new(exit::BUSY, err).into());
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(LockStatus::Stale { why, .. }) = guard.replaced_stale() {
        tracing::info!("replaced a stale sync lock record: {why}");
    }
    // The lock stays in this process (its handle is close-on-exec); we
    // outlive the child because signals are forwarded, not obeyed.
    let code = run_child(&args.command.cmd);
    guard
        .release()
        .with_context(|| format!("cannot release {}", lock.path().display()))?;
    code
}

/// Parses `--wait`: seconds (fractions allowed), `0` = fail at once,
/// `forever` = block.
pub(crate) fn parse_wait(s: &str) -> Result<Wait, String> {
    if matches!(s, "forever" | "inf") {
        return Ok(Wait::Forever);
    }
    let d = parse_secs(s)?;
    Ok(if d.is_zero() {
        Wait::Fail
    } else {
        Wait::Timeout(d)
    })
}

/// Parses a non-negative number of seconds (fractions allowed).
pub(crate) fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a number of seconds ≥ 0"))
}

/// The command line as one string, for records and messages.
pub(crate) fn command_line(cmd: &[OsString]) -> String {
    cmd.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with our stdio and returns its exit code (128 + signal when
/// it was killed; 127 when it cannot be found, 126 when it cannot run).
///
/// While it runs, SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to us are
/// forwarded to it instead of ending us, so a lock or pause held here lasts
/// exactly as long as the command. (SIGKILL cannot be caught: if only we
/// are killed, the kernel releases our locks and the command runs on
/// unguarded; `wsync lock status` then shows the record as stale.)
pub(crate) fn run_child(cmd: &[OsString]) -> Result<u8> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let Some((program, rest)) = cmd.split_first() else {
        return Err(Failure::new(exit::USAGE, anyhow::anyhow!("no command given")).into());
    };
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .context("cannot install signal handlers")?;
    let handle = signals.handle();
    let mut child = match Command::new(program).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            handle.close();
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            let err =
                anyhow::Error::new(e).context(format!("cannot run {}", program.to_string_lossy()));
            return Err(Failure::new(code, err).into());
        }
    };
    let pid = child.id();
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            if let (Ok(pid), Ok(sig)) =
                (i32::try_from(pid), nix::sys::signal::Signal::try_from(sig))
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
    });
    let status = child.wait();
    handle.close();
    let _ = forwarder.join();
    let status = status.with_context(|| format!("waiting for {}", program.to_string_lossy()))?;
    Ok(exit_code(status))
}

/// A child's exit status as our exit code (128 + signal when killed).
pub(crate) fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(exit::ERROR),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(exit::ERROR),
        (None, None) => exit::ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_and_secs_parse() {
        assert_eq!(parse_wait("0"), Ok(Wait::Fail));
        assert_eq!(
            parse_wait("1.5"),
            Ok(Wait::Timeout(Duration::from_millis(1500)))
        );
        assert_eq!(parse_wait("forever"), Ok(Wait::Forever));
        assert!(parse_wait("-1").is_err());
        assert!(parse_wait("soon").is_err());
        assert!(parse_secs("NaN").is_err());
        assert_eq!(parse_secs(" 2 "), Ok(Duration::from_secs(2)));
    }
}
