//! `wsync emergency-stop`: stop a running sync, clear the pause, disable
//! automatic syncs.

use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::ctx::Ctx;

/// `wsync emergency-stop` arguments.
#[derive(Debug, Args)]
pub struct EmergencyArgs {
    /// Seconds between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 10)]
    pub grace: u64,
}

/// Stops everything.
pub fn run(ctx: &Ctx, args: &EmergencyArgs) -> Result<u8> {
    let report =
        wsync_coordinator::emergency_stop(&ctx.state_dir, Duration::from_secs(args.grace))?;
    ctx.emit(&report, || {
        let mut s = String::new();
        match (report.stopped_pid, report.not_wsync) {
            (Some(pid), _) => s.push_str(&format!(
                "stopped sync pid {pid}{}\n",
                if report.killed {
                    " (SIGKILL after the grace period)"
                } else {
                    ""
                }
            )),
            (None, Some(pid)) => s.push_str(&format!(
                "the lock holder pid {pid} is not a wsync process; left alone\n"
            )),
            (None, None) => s.push_str("no sync was running\n"),
        }
        if report.pause_cleared {
            s.push_str("pause cleared\n");
        }
        s.push_str(if report.disabled {
            "automatic sync disabled (`wsync config enable` to turn it back on)\n"
        } else {
            "automatic sync is off\n"
        });
        s
    })?;
    Ok(crate::exit::SUCCESS)
}
