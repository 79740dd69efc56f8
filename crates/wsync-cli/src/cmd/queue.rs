//! `wsync request-sync`, `wsync process` and `wsync queue list|clear`: the
//! persistent sync queue from the shell (the old coordinator's API).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use wsync_coordinator::Config;
use wsync_coordinator::daemon::{EngineRunner, Processed, Processor};
use wsync_coordinator::queue::{Priority, Queue, QueueEntry, SyncRequest};
use wsync_coordinator::ratelimit::{RateLimitConfig, RateLimiter};
use wsync_coordinator::retry::{CircuitBreaker, RetryConfig};

use crate::ctx::Ctx;
use crate::exit;

/// `wsync request-sync TYPE CALLER [PRIORITY] [REASON]`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The kind of sync (`manual`, `watch`, `scheduled`, `startup`, `exit`,
    /// `threshold`, or any name an old script uses; unknown names run as manual).
    #[arg(value_name = "TYPE")]
    pub sync_type: String,
    /// Who asks (a script or host name).
    pub caller: String,
    /// critical, high, normal or low (critical overrides rate limits).
    #[arg(default_value = "normal", value_parser = parse_priority)]
    pub priority: Priority,
    /// Why, shown in `queue list` and the history.
    #[arg(default_value = "")]
    pub reason: String,
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    s.parse::<Priority>().map_err(|e| e.to_string())
}

/// `wsync process`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Handle at most N entries.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max: usize,
}

/// `wsync queue`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: QueueCmd,
}

/// `wsync queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// List the queued requests in service order (`--json` for data).
    List,
    /// Remove every queued request that is not running (a corrupt queue file
    /// is kept as `queue.json.corrupt-<ts>`).
    Clear,
    /// Show finished requests (newest last).
    History {
        /// Only the last N.
        #[arg(long, value_name = "N", default_value_t = 20)]
        last: usize,
    },
}

/// Runs `wsync request-sync`.
pub fn run_request(ctx: &Ctx, args: &RequestArgs) -> Result<u8> {
    std::fs::create_dir_all(&ctx.state_dir)
        .with_context(|| format!("cannot create state folder {}", ctx.state_dir.display()))?;
    let queue = Queue::new(&ctx.state_dir);
    let req = SyncRequest::new(&args.sync_type, &args.caller, args.priority, &args.reason);
    let done = queue.enqueue(&req)?;
    ctx.emit(&done, || {
        if ctx.quiet {
            done.id.clone()
        } else if done.merged {
            format!("{} (merged into a pending identical request)", done.id)
        } else {
            done.id.clone()
        }
    })?;
    Ok(exit::SUCCESS)
}

/// Runs `wsync process`: drains the queue once through the sync engine.
pub fn run_process(ctx: &Ctx, args: &ProcessArgs) -> Result<u8> {
    let config = Config::load(&ctx.state_dir)?;
    let processor = Processor::new(
        &ctx.state_dir,
        config.ratelimit.clone(),
        config.retry.clone(),
    );
    let mut runner = EngineRunner::new(&ctx.workspace, &ctx.state_dir);
    runner.live_options = crate::ctx::live_options();
    let cancel = Arc::new(AtomicBool::new(false));
    crate::cmd::daemon::stop_on_signals(cancel.clone(), None)?;
    let done = processor.drain(&mut runner, &cancel, args.max)?;
    let failed = done
        .iter()
        .any(|p| p.outcome == "failed" || p.outcome == "retry");
    ctx.emit(&done, || render_processed(&done))?;
    Ok(if failed { exit::ERROR } else { exit::SUCCESS })
}

/// One line per processed entry.
pub fn render_processed(done: &[Processed]) -> String {
    if done.is_empty() {
        return "nothing due in the queue\n".into();
    }
    let mut out = String::new();
    for p in done {
        out.push_str(&format!(
            "{} {:<10} {:<11} {}",
            p.id, p.sync_type, p.outcome, p.detail
        ));
        if let Some(t) = p.next_attempt_at {
            out.push_str(&format!(" (next attempt {})", t.format("%H:%M:%S")));
        }
        out.push('\n');
    }
    out
}

/// Runs `wsync queue ...`.
pub fn run(ctx: &Ctx, args: &QueueArgs) -> Result<u8> {
    let queue = Queue::new(&ctx.state_dir);
    match &args.cmd {
        QueueCmd::List => {
            let entries = queue.list()?;
            ctx.emit(&entries, || render_list(&entries))?;
        }
        QueueCmd::Clear => {
            let n = queue.clear()?;
            // The corrupt-state error names `queue clear` as the manual
            // recovery for the rate-limit and circuit files too: keep a
            // corrupt one aside (`<name>.corrupt-<ts>`) and start clean.
            let mut kept = Vec::new();
            kept.extend(RateLimiter::new(&ctx.state_dir, RateLimitConfig::default()).recover()?);
            kept.extend(CircuitBreaker::new(&ctx.state_dir, RetryConfig::default()).recover()?);
            for p in &kept {
                ctx.warn(format!("kept a corrupt state file as {}", p.display()));
            }
            ctx.emit(&json!({ "cleared": n, "kept_corrupt": kept }), || {
                format!("cleared {n} queued request(s)")
            })?;
        }
        QueueCmd::History { last } => {
            let all = queue.history()?;
            let tail = &all[all.len().saturating_sub(*last)..];
            ctx.emit(&tail, || {
                tail.iter()
                    .map(|h| {
                        format!(
                            "{} {} {:<10} {:<8} merged {} attempts {} {}\n",
                            h.finished_at.format("%Y-%m-%d %H:%M:%S"),
                            h.id,
                            h.sync_type,
                            h.outcome,
                            h.merged,
                            h.attempts,
                            h.detail
                        )
                    })
                    .collect()
            })?;
        }
    }
    Ok(exit::SUCCESS)
}

fn render_list(entries: &[QueueEntry]) -> String {
    if entries.is_empty() {
        return "queue is empty\n".into();
    }
    let mut out = String::new();
    for e in entries {
        out.push_str(&format!(
            "{} {:<8} {:<9} {:<10} {:<12} attempts {} merged {}",
            e.id,
            e.priority,
            format!("{:?}", e.status).to_lowercase(),
            e.sync_type,
            e.caller,
            e.attempts,
            e.merged
        ));
        if let Some(t) = e.next_attempt_at {
            out.push_str(&format!(" not before {}", t.format("%H:%M:%S")));
        }
        if let Some(n) = &e.note {
            out.push_str(&format!(" — {n}"));
        }
        if !e.reason.is_empty() {
            out.push_str(&format!(" [{}]", e.reason));
        }
        out.push('\n');
    }
    out
}
