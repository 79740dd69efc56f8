//! `wsync init`: the state folder (kept out of git), the config, the remote.

use anyhow::Result;
use clap::Args;
use wsync_coordinator::InitOptions;

use crate::ctx::Ctx;

/// `wsync init` arguments.
#[derive(Debug, Clone, Default, Args)]
pub struct InitArgs {
    /// Point the sync remote (`remote.name`, default origin) at this URL.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// Sync with this branch on the remote.
    #[arg(long, value_name = "BRANCH")]
    pub branch: Option<String>,
}

/// Sets the workspace up; safe to run again.
pub fn run(ctx: &Ctx, args: &InitArgs) -> Result<u8> {
    let report = wsync_coordinator::init(
        &ctx.workspace,
        &ctx.state_dir,
        &InitOptions {
            remote_url: args.remote.clone(),
            branch: args.branch.clone(),
        },
    )?;
    if ctx.json {
        ctx.emit(&report, String::new)?;
        return Ok(crate::exit::SUCCESS);
    }
    // What init did is status, not data: silent under -q.
    ctx.say({
        let mut s = format!("state folder: {}\n", report.state_dir.display());
        if report.git_initialised {
            s.push_str("created a git repository\n");
        }
        if let Some(p) = &report.excluded {
            s.push_str(&format!("added {p} to .git/info/exclude\n"));
        }
        if report.config_created {
            s.push_str("wrote the default config.json\n");
        }
        if let Some(r) = &report.remote {
            s.push_str(&format!("remote {r}\n"));
        }
        s.trim_end().to_owned()
    });
    Ok(crate::exit::SUCCESS)
}
