//! `wsync snapshot ...` and `wsync rollback`: whole-state snapshots.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use wsync_snapshot::{CaptureOptions, RestoreOptions, Retention, SnapshotStore};

use crate::ctx::Ctx;
use crate::exit;

/// `wsync snapshot` arguments.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// The snapshot subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Capture the whole working state (HEAD, index, changes, untracked files).
    Create {
        /// Why (stored in the metadata).
        #[arg(long, default_value = "manual")]
        reason: String,
        /// Also write a git bundle (`ID.bundle`) that another clone can fetch.
        #[arg(long)]
        bundle: bool,
    },
    /// List snapshots, newest first.
    List,
    /// Print a snapshot's metadata and result.
    Show {
        /// The snapshot id.
        id: String,
    },
    /// Check that all of a snapshot's objects (and its bundle) are intact.
    Verify {
        /// The snapshot id.
        id: String,
    },
    /// Print the snapshot's patch of uncommitted changes.
    Diff {
        /// The snapshot id.
        id: String,
    },
    /// Return the workspace to a snapshot (after snapshotting the current state).
    Restore(RestoreArgs),
    /// Remove old snapshots (refs and files together).
    Cleanup {
        /// Keep this many newest snapshots.
        #[arg(long, default_value_t = 10)]
        keep: usize,
        /// Also remove snapshots older than this (e.g. 30m, 12h, 7d).
        #[arg(long, value_parser = parse_age)]
        max_age: Option<Duration>,
    },
}

/// `wsync snapshot restore` / `wsync rollback` arguments.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot id (for `rollback`: the newest when omitted).
    pub id: Option<String>,
    /// Restore the working files only; leave HEAD, the branch and the index.
    #[arg(long)]
    pub files_only: bool,
    /// Restore even while a merge, rebase or cherry-pick is in progress.
    #[arg(long)]
    pub force: bool,
}

fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (s, m, h, d)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

fn store(ctx: &Ctx) -> Result<SnapshotStore> {
    SnapshotStore::open(&ctx.workspace, &ctx.state_dir)
        .with_context(|| format!("cannot open the snapshots of {}", ctx.workspace.display()))
}

/// Runs `wsync snapshot ...`.
pub fn run(ctx: &Ctx, args: &SnapshotArgs) -> Result<u8> {
    let store = store(ctx)?;
    match &args.command {
        SnapshotCommand::Create { reason, bundle } => {
            let snap = store.capture(&CaptureOptions {
                reason: reason.clone(),
                bundle: *bundle,
                ..CaptureOptions::default()
            })?;
            ctx.emit(&snap.meta, || {
                format!(
                    "{}  ({} changed path(s), commit {})",
                    snap.id,
                    snap.meta.git_status_files,
                    snap.commit.get(..12).unwrap_or(&snap.commit)
                )
            })?;
        }
        SnapshotCommand::List => {
            let metas = store.list()?;
            ctx.emit(&metas, || {
                if metas.is_empty() {
                    return "no snapshots".into();
                }
                let mut out = String::new();
                for m in &metas {
                    out.push_str(&format!(
                        "{}  {}  {:>4} changed  {}\n",
                        m.snapshot_id,
                        m.timestamp.format("%Y-%m-%d %H:%M:%S UTC"),
                        m.git_status_files,
                        m.reason
                    ));
                }
                out
            })?;
        }
        SnapshotCommand::Show { id } => {
            let info = store.show(id)?;
            ctx.emit(&info, || {
                let m = &info.meta;
                let mut out = format!(
                    "id:          {}\ntime:        {}\nreason:      {}\nHEAD:        {}\nbranch:      {}\nchanged:     {}\nautonomous:  {}\nref:         {}{}\ncommit:      {}\nindex:       {}\n",
                    m.snapshot_id,
                    m.timestamp.to_rfc3339(),
                    m.reason,
                    m.git_commit.as_deref().unwrap_or("(unborn)"),
                    m.head_ref.as_deref().unwrap_or("(detached)"),
                    m.git_status_files,
                    m.autonomous_status,
                    m.snapshot_ref,
                    if info.ref_present { "" } else { " (MISSING)" },
                    m.snapshot_commit,
                    m.index_commit,
                );
                for f in &info.files {
                    out.push_str(&format!("file:        {}\n", f.display()));
                }
                if let Some(r) = &info.result {
                    out.push_str(&format!("result:      {r}\n"));
                }
                out
            })?;
        }
        SnapshotCommand::Verify { id } => {
            let report = store.verify(id)?;
            ctx.emit(&report, || {
                let mut out = format!("{}: {} object(s) checked", report.id, report.objects);
                match report.bundle_verified {
                    Some(true) => out.push_str(", bundle verified"),
                    Some(false) => out.push_str(", bundle FAILED"),
                    None => {}
                }
                out.push('\n');
                for p in &report.problems {
                    out.push_str(&format!("problem: {p}\n"));
                }
                out
            })?;
            if !report.is_ok() {
                bail!(
                    "snapshot {id} is damaged: {} problem(s)",
                    report.problems.len()
                );
            }
        }
        SnapshotCommand::Diff { id } => {
            let patch = store.diff(id)?;
            let mut out = std::io::stdout().lock();
            out.write_all(&patch).context("cannot write to stdout")?;
        }
        SnapshotCommand::Restore(r) => {
            let Some(id) = &r.id else {
                bail!("which snapshot? give an id (see `wsync snapshot list`)");
            };
            return restore(ctx, &store, id, r);
        }
        SnapshotCommand::Cleanup { keep, max_age } => {
            let report = store.cleanup(&Retention {
                keep: *keep,
                max_age: *max_age,
            })?;
            ctx.emit(&report, || {
                format!(
                    "removed {} snapshot(s), kept {}{}",
                    report.removed.len(),
                    report.kept,
                    if report.packs_merged {
                        "; merged small packs"
                    } else {
                        ""
                    }
                )
            })?;
        }
    }
    Ok(exit::SUCCESS)
}

/// Runs `wsync rollback [ID]` (the newest snapshot when no id is given).
pub fn run_rollback(ctx: &Ctx, args: &RestoreArgs) -> Result<u8> {
    let store = store(ctx)?;
    let id = match &args.id {
        Some(id) => id.clone(),
        None => match store.latest()? {
            Some(m) => m.snapshot_id,
            None => bail!("no snapshots in {}", store.snapshots_dir().display()),
        },
    };
    restore(ctx, &store, &id, args)
}

/// Restores under the sync lock; a busy lock exits with [`exit::BUSY`].
fn restore(ctx: &Ctx, store: &SnapshotStore, id: &str, args: &RestoreArgs) -> Result<u8> {
    let lock = wsync_lock::SyncLock::new(&ctx.state_dir);
    let guard = match lock.acquire(
        &wsync_lock::LockOptions {
            caller: "wsync snapshot restore".into(),
            reason: format!("restore {id}"),
            ..wsync_lock::LockOptions::default()
        },
        wsync_lock::Wait::Fail,
    ) {
        Ok(g) => g,
        Err(e @ wsync_lock::Error::Busy { .. }) => {
            return Err(exit::Failure::new(
                exit::BUSY,
                anyhow::Error::new(e).context("another sync holds the lock; nothing was touched"),
            )
            .into());
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot take the sync lock")),
    };
    let report = store.restore(
        id,
        &RestoreOptions {
            files_only: args.files_only,
            force: args.force,
        },
    )?;
    guard.release().context("cannot release the sync lock")?;
    ctx.emit(&report, || {
        let mut out = format!(
            "restored {} ({} written, {} removed{})\nthe state before it is snapshot {}: undo with `wsync snapshot restore {}`\n",
            report.restored,
            report.written,
            report.removed,
            if report.files_only { ", files only" } else { "" },
            report.safety.id,
            report.safety.id,
        );
        for p in &report.displaced {
            out.push_str(&format!(
                "moved aside (ignored file in the way): {}\n",
                p.display()
            ));
        }
        out
    })?;
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages() {
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_age("3w").is_err());
        assert!(parse_age("h").is_err());
    }
}
