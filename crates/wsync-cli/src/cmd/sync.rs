//! `wsync sync|pull|push|force-sync`: one run of the sync engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use wsync_coordinator::{Phase, Reason, SyncEngine, SyncMode, SyncOptions, SyncReport};

use crate::ctx::Ctx;
use crate::exit::{self, Failure};

/// `wsync sync` options (also used by `pull`, `push`, `force-sync`).
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// Why: startup, scheduled, manual, threshold, exit or watch.
    #[arg(long, default_value = "manual", value_parser = parse_reason)]
    pub reason: Reason,
    /// Bypass the decision engine's timing and thresholds.
    #[arg(long)]
    pub force: bool,
    /// Show what would be committed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait up to this many seconds for a busy lock instead of failing.
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
    /// Test hook: stop at PHASE (locked, snapshot, committed, fetched,
    /// checkout, push) and wait until `<state>/debug-paused-at-PHASE` is removed.
    #[arg(long, hide = true, value_name = "PHASE", value_parser = parse_phase)]
    pub debug_pause_at: Option<Phase>,
}

fn parse_reason(s: &str) -> Result<Reason, String> {
    s.parse()
}

fn parse_phase(s: &str) -> Result<Phase, String> {
    s.parse()
}

/// Runs the engine in `mode`.
pub fn run(ctx: &Ctx, args: &SyncArgs, mode: SyncMode) -> Result<u8> {
    let engine = SyncEngine::open(&ctx.workspace, &ctx.state_dir)?;
    // SIGTERM/SIGINT stop the run between phases (rolled back), never mid-write.
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&cancel))
            .context("cannot install the signal handler")?;
    }
    let opts = SyncOptions {
        mode,
        reason: args.reason,
        force: args.force,
        dry_run: args.dry_run,
        caller: format!("wsync {}", mode.as_str()),
        lock_wait: args.wait.map(Duration::from_secs),
        cancel: Some(cancel),
        on_phase: args
            .debug_pause_at
            .map(|p| debug_pause(p, ctx.state_dir.clone())),
        // A one-off run has no watcher to learn from: full scan.
        live_snapshots: None,
    };
    let report = match engine.run(&opts) {
        Ok(r) => r,
        Err(e) if e.is_busy() => return Err(Failure::new(exit::BUSY, e).into()),
        Err(e) => return Err(e.into()),
    };
    if ctx.json || !ctx.quiet {
        // `-q`: the exit code says it all.
        ctx.emit(&report, || human(&report))?;
    }
    for name in &report.not_utf8 {
        ctx.warn(format!(
            "not synced: {name} (its name is not valid UTF-8; rename it to sync it)"
        ));
    }
    if report.skipped() {
        return Ok(exit::SKIPPED);
    }
    if report.open_conflicts > 0 {
        ctx.warn(format!(
            "{} conflict(s) need attention: `wsync conflicts list`",
            report.open_conflicts
        ));
        return Ok(exit::CONFLICTS);
    }
    Ok(exit::SUCCESS)
}

fn debug_pause(phase: Phase, state_dir: PathBuf) -> wsync_coordinator::PhaseHook {
    let fired = AtomicBool::new(false);
    Arc::new(move |p| {
        // Only the first time: a retried push passes the same phase again.
        if p != phase || fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let marker = state_dir.join(format!("debug-paused-at-{}", p.as_str()));
        if std::fs::write(&marker, std::process::id().to_string()).is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while marker_exists(&marker) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

fn marker_exists(p: &Path) -> bool {
    p.exists()
}

fn human(r: &SyncReport) -> String {
    let mut out = String::new();
    if let Some(rec) = &r.recovered {
        out.push_str(&format!(
            "recovered an interrupted sync (phase {}, snapshot {}){}\n",
            rec.journal.phase,
            rec.journal.snapshot,
            if rec.restored {
                ", workspace restored"
            } else {
                ""
            }
        ));
    }
    match r.outcome.as_str() {
        "skipped" => out.push_str(&format!("skipped: {}\n", r.decision.why)),
        "dry-run" => {
            out.push_str(&format!(
                "dry run ({}): {} user change(s) would be committed, {} system change(s) left alone\n",
                r.decision.why,
                r.files.len(),
                r.system_files.len()
            ));
            for f in &r.files {
                out.push_str(&format!("  commit  {f}\n"));
            }
            for f in &r.system_files {
                out.push_str(&format!("  skip    {f}\n"));
            }
        }
        _ => {
            let integration = serde_json::to_value(r.integration)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            out.push_str(&format!(
                "{}: {} file(s) committed, {} system change(s) left alone, remote: {}, {}",
                r.mode.as_str(),
                r.files.len(),
                r.system_files.len(),
                integration,
                if r.pushed { "pushed" } else { "nothing pushed" }
            ));
            if let Some(s) = &r.snapshot {
                out.push_str(&format!(" (snapshot {s})"));
            }
            out.push('\n');
            for c in &r.conflicts {
                out.push_str(&format!(
                    "  conflict {} ({}; kept {}{})\n",
                    c.path,
                    c.strategy,
                    c.kept,
                    c.copy
                        .as_ref()
                        .map(|p| format!("; remote version in {p}"))
                        .unwrap_or_default()
                ));
            }
            if !r.kept_local.is_empty() {
                out.push_str(&format!(
                    "  left local versions of {} changed file(s): {}\n",
                    r.kept_local.len(),
                    r.kept_local.join(", ")
                ));
            }
        }
    }
    out
}
