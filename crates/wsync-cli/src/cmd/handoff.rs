//! `wsync handoff save|show|connect|resume`: carry a working session from
//! one machine to another.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use wsync_session::{
    BranchCheck, ConnectOptions, Handoff, HandoffStore, SaveInput, SaveReport, SessionOptions,
    SyncMode, TmuxInfo,
};

use crate::ctx::Ctx;
use crate::exit;

/// `wsync handoff`.
#[derive(Debug, Args)]
pub struct HandoffArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: HandoffAction,
}

/// The handoff actions.
#[derive(Debug, Subcommand)]
pub enum HandoffAction {
    /// Record the working folder, branch, tmux session, dev servers and
    /// allow-listed environment in `<workspace>/.wsync-handoff.json`.
    Save(SaveArgs),
    /// Print the saved record.
    Show,
    /// Save, sync the record to HOST, then `ssh -t HOST` into the same folder
    /// and tmux session (a login shell when tmux is missing there).
    Connect(ConnectArgs),
    /// On the arriving machine: where to go, whether the branch matches, and
    /// the server commands to restart.
    Resume {
        /// Also start the saved servers in the background (`sh -c` in their
        /// folders; output in `<state>/servers/N.log`).
        #[arg(long)]
        start: bool,
    },
}

/// Options of `handoff save` (also used by `connect`).
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// A note for the next machine.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    /// Also allow this environment variable (added to the config's
    /// `handoff.env_allow`; secret-looking names are still refused).
    #[arg(long = "env-allow", value_name = "NAME")]
    pub env_allow: Vec<String>,
}

/// How `connect` carries the record.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SyncArg {
    /// `wsync remote sync` of the whole workspace (two-way; conflicts keep both).
    Remote,
    /// Copy only the handoff file over ssh.
    File,
    /// Do not sync.
    None,
}

/// Options of `handoff connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// `[USER@]HOST` to continue on.
    pub host: String,
    /// Show the commands instead of running them.
    #[arg(long)]
    pub print: bool,
    /// Run this command in the folder on HOST instead of opening tmux or a
    /// shell (non-interactive; scripts and tests).
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// The ssh command line (default `ssh`).
    #[arg(long, value_name = "CMD")]
    pub rsh: Option<String>,
    /// The `wsync` program on HOST (default `wsync` on its PATH).
    #[arg(long, value_name = "PATH")]
    pub remote_wsync: Option<String>,
    /// The workspace's path on HOST (default: the same path as here).
    #[arg(long, value_name = "DIR")]
    pub remote_root: Option<PathBuf>,
    /// How the record reaches HOST.
    #[arg(long, value_enum, default_value = "remote")]
    pub sync: SyncArg,
    /// Save options.
    #[command(flatten)]
    pub save: SaveArgs,
}

/// Runs `wsync handoff`.
pub fn run(ctx: &Ctx, args: &HandoffArgs) -> Result<u8> {
    let store = HandoffStore::new(&ctx.workspace);
    match &args.action {
        HandoffAction::Save(save_args) => {
            let report = save(ctx, &store, save_args)?;
            ctx.emit(&report, || render(&report.handoff))?;
            ctx.say(format!("saved {}", report.path.display()));
            Ok(exit::SUCCESS)
        }
        HandoffAction::Show => {
            let handoff = store.load()?;
            ctx.emit(&handoff, || render(&handoff))?;
            Ok(exit::SUCCESS)
        }
        HandoffAction::Connect(connect_args) => connect(ctx, &store, connect_args),
        HandoffAction::Resume { start } => resume(ctx, &store, *start),
    }
}

/// Saves the session and prints the warnings.
fn save(ctx: &Ctx, store: &HandoffStore, args: &SaveArgs) -> Result<SaveReport> {
    let mut options = SessionOptions {
        env_allow: config_env_allow(ctx)?,
        ..SessionOptions::default()
    };
    for name in &args.env_allow {
        if !options.env_allow.contains(name) {
            options.env_allow.push(name.clone());
        }
    }
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    // Outside the workspace (e.g. `--workspace DIR` from elsewhere) the
    // session starts at the workspace root.
    let cwd = if cwd.starts_with(&ctx.workspace)
        || cwd
            .canonicalize()
            .is_ok_and(|c| c.starts_with(&ctx.workspace))
    {
        cwd
    } else {
        ctx.workspace.clone()
    };
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let input = SaveInput {
        env,
        tmux: current_tmux(),
        note: args.note.clone(),
        ..SaveInput::new(cwd)
    };
    let report = store.save(&input, &options)?;
    for warning in &report.warnings {
        ctx.warn(warning.to_string());
    }
    Ok(report)
}

/// The config's `handoff.env_allow` (`<state>/config.json`; empty when
/// there is no config).
fn config_env_allow(ctx: &Ctx) -> Result<Vec<String>> {
    let config = wsync_coordinator::Config::load(&ctx.state_dir)?;
    Ok(config.handoff.env_allow)
}

/// The tmux session and window, when running inside tmux.
fn current_tmux() -> Option<TmuxInfo> {
    std::env::var_os("TMUX").filter(|v| !v.is_empty())?;
    let out = Command::new("tmux")
        .args(["display-message", "-p", "#S:#I"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    TmuxInfo::parse(&String::from_utf8_lossy(&out.stdout))
}

fn connect(ctx: &Ctx, store: &HandoffStore, args: &ConnectArgs) -> Result<u8> {
    let report = save(ctx, store, &args.save)?;
    let options = ConnectOptions {
        host: args.host.clone(),
        remote_root: args.remote_root.clone(),
        rsh: args.rsh.clone(),
        command: args.command.clone(),
        sync: match args.sync {
            SyncArg::Remote => SyncMode::Remote,
            SyncArg::File => SyncMode::File,
            SyncArg::None => SyncMode::None,
        },
        wsync_exe: std::env::current_exe().ok(),
        remote_wsync: args.remote_wsync.clone(),
    };
    let plan = wsync_session::connect_plan(&report.handoff, store.root(), &options)?;
    if args.print {
        ctx.emit(&plan, || {
            let mut text = String::new();
            for step in &plan.steps {
                let _ = writeln!(text, "# {}\n{}", step.what, step.command_line());
            }
            text.push_str(&servers_text(&report.handoff, &plan.remote_root));
            text
        })?;
        return Ok(exit::SUCCESS);
    }
    let Some((open, sync_steps)) = plan.steps.split_last() else {
        bail!("empty connect plan");
    };
    for step in sync_steps {
        ctx.say(format!("{}: {}", step.what, step.command_line()));
        let mut cmd = step.command();
        if let Some(file) = &step.stdin_file {
            let f = std::fs::File::open(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            cmd.stdin(f);
        }
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {}", step.program))?;
        if status.code() == Some(i32::from(exit::CONFLICTS)) {
            // Both versions were kept; the record itself went across.
            ctx.warn("the sync left conflicts (see `wsync remote conflicts`); continuing");
        } else if !status.success() {
            bail!(
                "could not {} ({}): {status}",
                step.what,
                step.command_line()
            );
        }
    }
    let servers = servers_text(&report.handoff, &plan.remote_root);
    if !servers.is_empty() {
        ctx.say(servers.trim_end());
    }
    ctx.say(format!("{}: {}", open.what, open.command_line()));
    let status = open
        .command()
        .status()
        .with_context(|| format!("cannot run {}", open.program))?;
    Ok(pass_through(status))
}

fn resume(ctx: &Ctx, store: &HandoffStore, start: bool) -> Result<u8> {
    let handoff = store.load()?;
    let resume = wsync_session::resume(&handoff, &ctx.workspace)?;
    if !resume.folder_exists {
        ctx.warn(format!(
            "{} does not exist here yet (sync first?)",
            resume.folder.display()
        ));
    }
    match &resume.branch {
        BranchCheck::BranchDiffers { saved, local } => ctx.warn(format!(
            "branch differs: saved on {} was {}, here it is {}",
            handoff.host,
            saved.as_deref().unwrap_or("(detached)"),
            local.as_deref().unwrap_or("(detached)")
        )),
        BranchCheck::HeadDiffers {
            branch,
            saved,
            local,
        } => ctx.warn(format!(
            "HEAD differs on {}: saved {}, here {} (pull or sync first?)",
            branch.as_deref().unwrap_or("(detached)"),
            short(saved.as_deref()),
            short(local.as_deref())
        )),
        BranchCheck::NoLocalRepo => ctx.warn(format!(
            "{} was a git repository on {}, but is not one here",
            resume.folder.display(),
            handoff.host
        )),
        BranchCheck::Same | BranchCheck::NotRecorded => {}
    }
    ctx.emit(&resume, || {
        let mut text = render(&handoff);
        let _ = writeln!(
            text,
            "\ncontinue with:\n  cd {}",
            wsync_session::shell_quote(&resume.folder.to_string_lossy())
        );
        if let Some(tmux) = &handoff.tmux {
            let _ = writeln!(
                text,
                "  tmux new-session -A -s {}",
                wsync_session::shell_quote(&tmux.session)
            );
        }
        for (name, value) in &handoff.env {
            let _ = writeln!(
                text,
                "  export {name}={}",
                wsync_session::shell_quote(value)
            );
        }
        if !resume.servers.is_empty() && !start {
            text.push_str("servers to restart (or run `wsync handoff resume --start`):\n");
            for server in &resume.servers {
                let _ = writeln!(text, "  {}{}", server.line, ports_text(&server.ports));
            }
        }
        text
    })?;
    if start {
        start_servers(ctx, &resume.servers)?;
    }
    Ok(exit::SUCCESS)
}

/// Starts each server detached (own process group, stdin closed, output to
/// a log file in the state folder); they outlive this process.
fn start_servers(ctx: &Ctx, servers: &[wsync_session::ServerRestart]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let logs = ctx.state_dir.join("servers");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    for (i, server) in servers.iter().enumerate() {
        let log_path = logs.join(format!("{}.log", i + 1));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let err = log
            .try_clone()
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(&server.command)
            .current_dir(&server.folder)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} in {}",
                    server.command,
                    server.folder.display()
                )
            })?;
        ctx.say(format!(
            "started pid {}: {} (log {})",
            child.id(),
            server.line,
            log_path.display()
        ));
    }
    Ok(())
}

fn short(oid: Option<&str>) -> &str {
    oid.map_or("(no commit)", |o| o.get(..12).unwrap_or(o))
}

/// The saved servers and the commands that restart them under `root`.
fn servers_text(handoff: &Handoff, root: &Path) -> String {
    let mut text = String::new();
    if handoff.servers.is_empty() {
        return text;
    }
    text.push_str("servers to restart:\n");
    for server in &handoff.servers {
        let _ = writeln!(
            text,
            "  cd {} && {}{}",
            wsync_session::shell_quote(&root.join(&server.folder).to_string_lossy()),
            server.command,
            ports_text(&server.ports)
        );
    }
    text
}

fn ports_text(ports: &[u16]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("    # listening on {}", list.join(", "))
}

/// A readable rendering of a record.
fn render(handoff: &Handoff) -> String {
    let mut text = String::new();
    let when = handoff.saved_at.with_timezone(&chrono::Local);
    let _ = writeln!(
        text,
        "saved on {} at {}",
        handoff.host,
        when.format("%Y-%m-%d %H:%M:%S %Z")
    );
    if let Some(note) = &handoff.note {
        let _ = writeln!(text, "note:    {note}");
    }
    let folder = if handoff.folder.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        handoff.folder.display().to_string()
    };
    let _ = writeln!(text, "folder:  {folder} (under {})", handoff.root.display());
    if let Some(git) = &handoff.git {
        let _ = writeln!(
            text,
            "git:     {} at {}",
            git.branch.as_deref().unwrap_or("(detached)"),
            short(git.head.as_deref())
        );
    }
    if let Some(tmux) = &handoff.tmux {
        let window = tmux
            .window
            .as_deref()
            .map(|w| format!(", window {w}"))
            .unwrap_or_default();
        let _ = writeln!(text, "tmux:    session {}{window}", tmux.session);
    }
    for (name, value) in &handoff.env {
        let _ = writeln!(text, "env:     {name}={value}");
    }
    if handoff.servers.is_empty() {
        text.push_str("servers: none\n");
    } else {
        text.push_str("servers:\n");
        for server in &handoff.servers {
            let folder = if server.folder.as_os_str().is_empty() {
                ".".to_owned()
            } else {
                server.folder.display().to_string()
            };
            let ports = if server.ports.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = server.ports.iter().map(u16::to_string).collect();
                format!(" ports {}", list.join(","))
            };
            let _ = writeln!(
                text,
                "  pid {} in {folder}{ports}: {}",
                server.pid, server.command
            );
        }
    }
    text
}

/// A child's exit status as our exit code (128 + signal when killed).
pub(crate) fn pass_through(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(exit::ERROR),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(exit::ERROR),
        (None, None) => exit::ERROR,
    }
}
