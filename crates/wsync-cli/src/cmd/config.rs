//! `wsync config show|get|set|enable|disable|interval`.

use anyhow::Result;
use clap::{Args, Subcommand};
use wsync_coordinator::Config;

use crate::ctx::Ctx;

/// `wsync config` arguments.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ConfigAction,
}

/// The config actions.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the whole config (defaults filled in).
    Show,
    /// Print one key, e.g. `monitoring.min_time_between_syncs`.
    Get {
        /// The dotted key.
        key: String,
    },
    /// Set one key; VALUE is JSON (`true`, `5`, `["*.bak"]`) or else a string.
    Set {
        /// The dotted key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Allow automatic syncs (scheduled, watch, threshold).
    Enable,
    /// Stop automatic syncs.
    Disable,
    /// Set the scheduled sync interval.
    Interval {
        /// Minutes between scheduled syncs.
        minutes: u64,
    },
}

/// Runs a config action. Every change validates the whole config and is
/// written atomically; a broken file is reported, never replaced.
pub fn run(ctx: &Ctx, args: &ConfigArgs) -> Result<u8> {
    let config = Config::load(&ctx.state_dir)?;
    let path = Config::path_in(&ctx.state_dir);
    let updated = match &args.action {
        ConfigAction::Show => {
            let value = config.to_value();
            // Always JSON: the config is JSON.
            let text = serde_json::to_string_pretty(&value)?;
            ctx.emit(&value, || text)?;
            return Ok(crate::exit::SUCCESS);
        }
        ConfigAction::Get { key } => {
            let value = config.get(key)?;
            ctx.emit(&value, || match &value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })?;
            return Ok(crate::exit::SUCCESS);
        }
        ConfigAction::Set { key, value } => config.with_set(key, value)?,
        ConfigAction::Enable => config.with_set("enabled", "true")?,
        ConfigAction::Disable => config.with_set("enabled", "false")?,
        ConfigAction::Interval { minutes } => {
            config.with_set("interval_minutes", &minutes.to_string())?
        }
    };
    std::fs::create_dir_all(&ctx.state_dir)?;
    updated.save(&ctx.state_dir)?;
    ctx.say(format!("updated {}", path.display()));
    Ok(crate::exit::SUCCESS)
}
