//! `wsync health [--json]`: repository integrity, free disk, stale lock
//! records and stuck queue entries.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use wsync_coordinator::Config;
use wsync_coordinator::health::{self, CheckStatus, HealthOptions};

use crate::ctx::Ctx;
use crate::exit;

/// `wsync health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Skip `git fsck` (it reads every reachable object).
    #[arg(long)]
    pub quick: bool,
}

/// Runs the checks; exits 1 when one fails.
pub fn run(ctx: &Ctx, args: &HealthArgs) -> Result<u8> {
    let config = Config::load(&ctx.state_dir)?;
    let opts = HealthOptions {
        skip_fsck: args.quick,
        max_hold: Duration::from_secs(config.lock.max_hold_secs),
        ..HealthOptions::default()
    };
    let report = health::check(&ctx.workspace, &ctx.state_dir, &opts);
    ctx.emit(&report, || {
        report
            .checks
            .iter()
            .map(|c| {
                let mark = match c.status {
                    CheckStatus::Ok => "ok  ",
                    CheckStatus::Warn => "WARN",
                    CheckStatus::Fail => "FAIL",
                };
                format!("{mark} {:<10} {}\n", c.name, c.detail)
            })
            .collect()
    })?;
    Ok(if report.healthy() {
        exit::SUCCESS
    } else {
        exit::ERROR
    })
}
