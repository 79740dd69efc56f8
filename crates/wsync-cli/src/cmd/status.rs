//! `wsync status`: lock, pause, last sync, pending changes, conflicts,
//! ahead/behind.

use anyhow::Result;
use clap::Args;
use wsync_coordinator::workspace::LockView;
use wsync_coordinator::{StatusReport, SyncEngine};
use wsync_lock::PauseStatus;

use crate::ctx::Ctx;

/// `wsync status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {}

/// Prints the status.
pub fn run(ctx: &Ctx, _args: &StatusArgs) -> Result<u8> {
    let engine = SyncEngine::open(&ctx.workspace, &ctx.state_dir)?;
    let report = wsync_coordinator::status(&engine)?;
    // Automatic sync: daemon, queue (why and until when), limits, circuit.
    let auto = wsync_coordinator::daemon::auto_status(&ctx.state_dir, engine.config())?;
    let mut value = serde_json::to_value(&report)?;
    value["auto"] = serde_json::to_value(&auto)?;
    ctx.emit(&value, || {
        human(&report) + &crate::cmd::daemon::auto_lines(&auto)
    })?;
    Ok(crate::exit::SUCCESS)
}

fn human(r: &StatusReport) -> String {
    let mut s = String::new();
    s.push_str(&format!("workspace: {}\n", r.workspace.display()));
    s.push_str(&format!(
        "automatic sync: {} (every {} min)\n",
        if r.enabled { "enabled" } else { "disabled" },
        r.interval_minutes
    ));
    s.push_str(&match &r.lock {
        LockView::Free => "lock: free\n".to_owned(),
        LockView::Held { holder, overdue } => format!(
            "lock: held by pid {} ({}, {}) since {}{}\n",
            holder.pid,
            holder.caller,
            holder.reason,
            holder.acquired_at.format("%Y-%m-%d %H:%M:%S UTC"),
            if *overdue { " — OVERDUE" } else { "" }
        ),
        LockView::Stale { why, .. } => format!("lock: stale record ({why})\n"),
    });
    s.push_str(match &r.pause {
        PauseStatus::Running => "pause: writers running\n",
        PauseStatus::Paused { .. } => "pause: writers paused\n",
        PauseStatus::Stale { .. } => "pause: a stale pause file was cleared\n",
    });
    match &r.last_sync {
        Some(e) => s.push_str(&format!(
            "last sync: {} ({} ms, {} file(s), {})\n",
            e.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            e.duration_ms.round(),
            e.files.len(),
            e.integration
        )),
        None => s.push_str("last sync: never\n"),
    }
    if let Some(e) = r.last_run.as_ref().filter(|e| e.result != "ok") {
        s.push_str(&format!(
            "last run: {} at {}{}\n",
            e.result,
            e.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            e.message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    s.push_str(&format!(
        "pending: {} user change(s), {} system change(s)\n",
        r.pending_user, r.pending_system
    ));
    if let (Some(b), Some(u)) = (&r.branch, &r.upstream) {
        match (r.ahead, r.behind) {
            (Some(a), Some(bh)) => {
                s.push_str(&format!(
                    "branch: {b} → {u}: {a} ahead, {bh} behind (as of the last fetch)\n"
                ));
            }
            _ => s.push_str(&format!("branch: {b} → {u} (not fetched yet)\n")),
        }
    }
    if let Some(p) = &r.git_problem {
        s.push_str(&format!("git: {p}\n"));
    }
    if let Some(j) = &r.interrupted {
        s.push_str(&format!(
            "interrupted sync: pid {} during {} (the next sync recovers snapshot {})\n",
            j.pid, j.phase, j.snapshot
        ));
    }
    if r.conflicts.is_empty() {
        s.push_str("conflicts: none\n");
    } else {
        s.push_str(&format!(
            "conflicts: {} (`wsync conflicts list`)\n",
            r.conflicts.len()
        ));
    }
    s
}
