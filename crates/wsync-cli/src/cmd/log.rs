//! `wsync log`: the newest runs from `<state>/sync.log`.

use anyhow::Result;
use clap::Args;
use wsync_coordinator::synclog;

use crate::ctx::Ctx;

/// `wsync log` arguments.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// How many runs, newest first.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub count: usize,
}

/// Prints the newest runs.
pub fn run(ctx: &Ctx, args: &LogArgs) -> Result<u8> {
    let entries = synclog::tail(&ctx.state_dir, args.count)?;
    ctx.emit(&entries, || {
        if entries.is_empty() {
            return "no syncs logged yet\n".into();
        }
        let mut s = String::new();
        for e in &entries {
            s.push_str(&format!(
                "{}  {:<11} {:<4} {:<9} {:>6} ms  {} file(s)  {}{}{}\n",
                e.started_at.format("%Y-%m-%d %H:%M:%S"),
                e.result,
                e.mode,
                e.reason,
                e.duration_ms.round(),
                e.files.len(),
                e.integration,
                if e.pushed { ", pushed" } else { "" },
                e.message
                    .as_ref()
                    .map(|m| format!(" — {m}"))
                    .unwrap_or_default()
            ));
        }
        s
    })?;
    Ok(crate::exit::SUCCESS)
}
