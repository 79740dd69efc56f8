//! `wsync filter explain|test|debug|init-rules`: the user-vs-system filter.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use wsync_filter::{Change, ChangeKind, Decision, Filter, FilterConfig};

use crate::ctx::Ctx;

/// `wsync filter` arguments.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: FilterCommand,
}

/// `wsync filter` subcommands.
#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Classify paths with all three layers (rules, process, content) and say why.
    Explain {
        /// Paths (relative to the current folder, or absolute) inside the workspace.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run only the rules (layer 1) against sample paths; nothing is read.
    Test {
        /// A rules file to try instead of `<state>/rules.conf` / the built-ins.
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// Workspace-relative sample paths (need not exist).
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Watch the workspace and print each change's decision live (until SIGINT/SIGTERM).
    Debug,
    /// Write the built-in rules to `<state>/rules.conf` as a starting point.
    InitRules {
        /// Overwrite an existing rules file.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `wsync filter` subcommand.
pub fn run(ctx: &Ctx, args: &FilterArgs) -> Result<u8> {
    match &args.command {
        FilterCommand::Explain { paths } => explain(ctx, paths),
        FilterCommand::Test { rules, paths } => test(ctx, rules.as_deref(), paths),
        FilterCommand::Debug => debug(ctx),
        FilterCommand::InitRules { force } => init_rules(ctx, *force),
    }
}

fn build(ctx: &Ctx, config: &FilterConfig) -> Result<Filter> {
    Filter::new(&ctx.workspace, &ctx.state_dir, config).context("cannot load the filter")
}

/// The filter settings sync uses: `filters.*` of `<state>/config.json`
/// (defaults when there is none), so `explain` agrees with what sync stages.
/// Mirrors wsync-coordinator's `classify::filter_config`, which that crate
/// does not export.
fn workspace_config(ctx: &Ctx) -> Result<FilterConfig> {
    let config = wsync_coordinator::Config::load(&ctx.state_dir)?;
    let f = &config.filters;
    let default_action = wsync_filter::Action::parse(&f.default_action).with_context(|| {
        format!(
            "filters.default_action: {:?} is not one of \"allow\", \"block\", \"analyze\"",
            f.default_action
        )
    })?;
    Ok(FilterConfig {
        rules_file: f.rules_file.as_ref().map(|p| ctx.workspace.join(p)),
        exclude_patterns: f.exclude_patterns.clone(),
        use_gitignore: f.use_gitignore,
        // Explaining paths git may not list: every .gitignore counts.
        nested_gitignores: true,
        default_action,
        volatile_keys: f.volatile_keys.clone(),
        system_process_patterns: f.system_process_patterns.clone(),
        scan_open_files: f.scan_open_files,
        ..FilterConfig::default()
    })
}

fn explain(ctx: &Ctx, paths: &[PathBuf]) -> Result<u8> {
    let filter = build(ctx, &workspace_config(ctx)?)?;
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let mut changes = Vec::new();
    for p in paths {
        let rel = relative_to(filter.workspace(), &cwd.join(p))
            .with_context(|| format!("{} is outside the workspace", p.display()))?;
        let kind = if filter.workspace().join(&rel).symlink_metadata().is_ok() {
            ChangeKind::Modified
        } else {
            ChangeKind::Deleted
        };
        changes.push(Change {
            path: rel,
            kind,
            mtime: None,
        });
    }
    let decisions = filter.classify_all(&changes);
    let rows: Vec<serde_json::Value> = changes
        .iter()
        .zip(&decisions)
        .map(|(c, d)| {
            json!({
                "path": c.path,
                "kind": c.kind,
                "action": filter.action(&c.path),
                "verdict": d.verdict,
                "layer": d.layer,
                "rule": d.rule,
                "reason": d.reason,
            })
        })
        .collect();
    ctx.emit(&rows, || {
        let mut out = String::new();
        for (c, d) in changes.iter().zip(&decisions) {
            let rules = filter.rules(&c.path);
            out.push_str(&format!(
                "{}: {}\n  rules:   {} [{}] {}\n  decided: {} layer [{}] {}\n",
                c.path.display(),
                verdict_word(d),
                filter.action(&c.path),
                rules.rule.as_deref().unwrap_or("-"),
                rules.reason,
                d.layer,
                d.rule.as_deref().unwrap_or("-"),
                d.reason
            ));
        }
        out
    })?;
    Ok(crate::exit::SUCCESS)
}

fn test(ctx: &Ctx, rules: Option<&Path>, paths: &[String]) -> Result<u8> {
    let mut config = workspace_config(ctx)?;
    if let Some(rules) = rules {
        config.rules_file = Some(rules.to_path_buf());
    }
    let filter = build(ctx, &config)?;
    let rows: Vec<serde_json::Value> = paths
        .iter()
        .map(|p| {
            let d = filter.rules(Path::new(p));
            json!({
                "path": p,
                "action": filter.action(Path::new(p)),
                "verdict": d.verdict,
                "rule": d.rule,
                "reason": d.reason,
            })
        })
        .collect();
    ctx.emit(&rows, || {
        let mut out = format!("rules: {}\n", filter.rules_origin());
        for p in paths {
            let d = filter.rules(Path::new(p));
            out.push_str(&format!(
                "{:<7} {p}  [{}] {}\n",
                filter.action(Path::new(p)).as_str(),
                d.rule.as_deref().unwrap_or("-"),
                d.reason
            ));
        }
        out
    })?;
    Ok(crate::exit::SUCCESS)
}

fn debug(ctx: &Ctx) -> Result<u8> {
    use notify::Watcher as _;
    let filter = build(ctx, &workspace_config(ctx)?)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).context("cannot start the file watcher")?;
    watcher
        .watch(filter.workspace(), notify::RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", filter.workspace().display()))?;
    // On stderr, also with --json, so scripts know when the watch is live.
    eprintln!(
        "wsync: watching {} (rules: {}); Ctrl-C to stop",
        filter.workspace().display(),
        filter.rules_origin()
    );
    let mut pending: Vec<Change> = Vec::new();
    let mut first_at: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(event)) => {
                for change in changes_of(filter.workspace(), &event) {
                    pending.retain(|c| c.path != change.path);
                    pending.push(change);
                    first_at.get_or_insert_with(Instant::now);
                }
            }
            Ok(Err(err)) => ctx.warn(format!("watch error: {err}")),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // A short debounce so an editor's write+rename is one decision.
        if first_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(200)) {
            let batch = std::mem::take(&mut pending);
            first_at = None;
            print_decisions(ctx, &batch, &filter.classify_all(&batch))?;
        }
    }
    Ok(crate::exit::SUCCESS)
}

fn changes_of(workspace: &Path, event: &notify::Event) -> Vec<Change> {
    use notify::EventKind;
    let kind = match event.kind {
        EventKind::Create(_) => ChangeKind::Created,
        EventKind::Modify(_) => ChangeKind::Modified,
        EventKind::Remove(_) => ChangeKind::Deleted,
        _ => return Vec::new(),
    };
    // A new folder's files may be written before the watch on it exists:
    // report what is already inside.
    let mut paths = event.paths.clone();
    if matches!(event.kind, EventKind::Create(_)) {
        for p in &event.paths {
            if p.is_dir() {
                files_under(p, &mut paths);
            }
        }
    }
    paths
        .iter()
        .filter_map(|p| p.strip_prefix(workspace).ok())
        .filter(|rel| !rel.starts_with(".git") && !rel.as_os_str().is_empty())
        .filter(|rel| !workspace.join(rel).is_dir())
        .map(|rel| Change {
            path: rel.to_path_buf(),
            kind: if kind != ChangeKind::Deleted && !workspace.join(rel).exists() {
                ChangeKind::Deleted
            } else {
                kind
            },
            mtime: None,
        })
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => files_under(&p, out),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
}

fn print_decisions(ctx: &Ctx, changes: &[Change], decisions: &[Decision]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for (c, d) in changes.iter().zip(decisions) {
        if ctx.json {
            let line = json!({
                "path": c.path,
                "kind": c.kind,
                "verdict": d.verdict,
                "layer": d.layer,
                "rule": d.rule,
                "reason": d.reason,
            });
            writeln!(out, "{line}").context("cannot write to stdout")?;
        } else {
            writeln!(
                out,
                "{:<5} {:<7} {}  [{}] {}",
                verdict_word(d),
                d.layer.to_string(),
                c.path.display(),
                d.rule.as_deref().unwrap_or("-"),
                d.reason
            )
            .context("cannot write to stdout")?;
        }
    }
    out.flush().context("cannot write to stdout")
}

fn verdict_word(d: &Decision) -> &'static str {
    match d.verdict {
        wsync_filter::Verdict::Sync => "SYNC",
        wsync_filter::Verdict::Block => "BLOCK",
    }
}

fn init_rules(ctx: &Ctx, force: bool) -> Result<u8> {
    let path = ctx.state_dir.join("rules.conf");
    if path.exists() && !force {
        bail!(
            "{} already exists (use --force to overwrite)",
            path.display()
        );
    }
    std::fs::create_dir_all(&ctx.state_dir)
        .with_context(|| format!("cannot create {}", ctx.state_dir.display()))?;
    let tmp = ctx.state_dir.join(".rules.conf.wsync-tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(wsync_filter::default_rules_text().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(dir) = std::fs::File::open(&ctx.state_dir) {
        let _ = dir.sync_all();
    }
    ctx.say(format!("wrote the built-in rules to {}", path.display()));
    Ok(crate::exit::SUCCESS)
}

/// `path` (absolute) relative to `workspace` (canonical), resolving
/// symlinks in the existing part of `path`.
fn relative_to(workspace: &Path, path: &Path) -> Option<PathBuf> {
    let resolved = std::fs::canonicalize(path).ok().or_else(|| {
        let parent = std::fs::canonicalize(path.parent()?).ok()?;
        Some(parent.join(path.file_name()?))
    });
    let candidate = resolved.unwrap_or_else(|| path.to_path_buf());
    let rel = candidate
        .strip_prefix(workspace)
        .or_else(|_| path.strip_prefix(workspace))
        .ok()?;
    (!rel.as_os_str().is_empty()).then(|| rel.to_path_buf())
}
