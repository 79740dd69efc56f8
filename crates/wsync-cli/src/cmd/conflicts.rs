//! `wsync conflicts list|resolve`.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use wsync_coordinator::conflicts::{self, Take};
use wsync_lock::{LockOptions, SyncLock, Wait};

use crate::ctx::Ctx;
use crate::exit::{self, Failure};

/// `wsync conflicts` arguments.
#[derive(Debug, Args)]
pub struct ConflictsArgs {
    /// What to do (default: list).
    #[command(subcommand)]
    pub action: Option<ConflictsAction>,
}

/// The conflicts actions.
#[derive(Debug, Subcommand)]
pub enum ConflictsAction {
    /// Conflicts that still need a decision.
    List {
        /// Every conflict ever logged, including automatic ones.
        #[arg(long)]
        all: bool,
    },
    /// Settle a conflict; the result is committed by the next sync.
    Resolve {
        /// The conflicting path (or its conflict copy).
        path: String,
        /// Which version to keep.
        #[arg(long, value_enum)]
        take: TakeArg,
    },
}

/// Which version `resolve` keeps.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TakeArg {
    /// The local version at the path; the conflict copies are deleted.
    Ours,
    /// The remote version (the newest copy) replaces the path.
    Theirs,
    /// Keep both files.
    Both,
}

/// Runs a conflicts action.
pub fn run(ctx: &Ctx, args: &ConflictsArgs) -> Result<u8> {
    match &args.action {
        None => list(ctx, false),
        Some(ConflictsAction::List { all }) => list(ctx, *all),
        Some(ConflictsAction::Resolve { path, take }) => resolve(ctx, path, *take),
    }
}

fn list(ctx: &Ctx, all: bool) -> Result<u8> {
    let records = if all {
        conflicts::history(&ctx.state_dir)?
    } else {
        conflicts::open_conflicts(&ctx.workspace, &ctx.state_dir)?
    };
    ctx.emit(&records, || {
        if records.is_empty() {
            return if all {
                "no conflicts logged\n".into()
            } else {
                "no open conflicts\n".into()
            };
        }
        let mut s = String::new();
        for r in &records {
            s.push_str(&format!(
                "{}  {}  {}{}\n",
                r.time.format("%Y-%m-%d %H:%M:%S"),
                r.path,
                r.copy
                    .as_ref()
                    .map(|c| format!("remote version in {c}"))
                    .unwrap_or_else(|| format!("{} (kept {})", r.strategy, r.kept)),
                r.note
                    .as_ref()
                    .map(|n| format!(" — {n}"))
                    .unwrap_or_default(),
            ));
        }
        if !all {
            s.push_str("resolve with `wsync conflicts resolve PATH --take ours|theirs|both`\n");
        }
        s
    })?;
    Ok(exit::SUCCESS)
}

fn resolve(ctx: &Ctx, path: &str, take: TakeArg) -> Result<u8> {
    let take = match take {
        TakeArg::Ours => Take::Ours,
        TakeArg::Theirs => Take::Theirs,
        TakeArg::Both => Take::Both,
    };
    // Working files change: not while a sync runs.
    let lock = SyncLock::new(&ctx.state_dir);
    let guard = match lock.acquire(
        &LockOptions {
            caller: "wsync conflicts resolve".into(),
            reason: format!("resolve {path}"),
            max_hold: Duration::from_secs(60),
        },
        Wait::Timeout(Duration::from_secs(10)),
    ) {
        Ok(g) => g,
        Err(e @ wsync_lock::Error::Busy { .. }) => return Err(Failure::new(exit::BUSY, e).into()),
        Err(e) => return Err(e).context("cannot take the sync lock"),
    };
    let rel = relative(ctx, path)?;
    let report = conflicts::resolve(&ctx.workspace, &ctx.state_dir, &rel, take)?;
    drop(guard);
    ctx.emit(&report, || {
        let mut s = format!("resolved {}", report.path);
        if !report.removed.is_empty() {
            s.push_str(&format!("; removed {}", report.removed.join(", ")));
        }
        if !report.kept.is_empty() {
            s.push_str(&format!("; kept {}", report.kept.join(", ")));
        }
        s.push_str("\nthe next `wsync sync` commits it\n");
        s
    })?;
    Ok(exit::SUCCESS)
}

/// A path as given (relative to the current folder or absolute) made
/// relative to the workspace, with `/` separators.
fn relative(ctx: &Ctx, path: &str) -> Result<String> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let abs = cwd.join(path);
    let ws = &ctx.workspace;
    let rel = match abs.strip_prefix(ws) {
        Ok(r) => r.to_path_buf(),
        // Not under the workspace as given: take it as workspace-relative.
        Err(_) if !std::path::Path::new(path).is_absolute() => path.into(),
        Err(_) => bail!("{path} is outside the workspace {}", ws.display()),
    };
    Ok(rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/"))
}
