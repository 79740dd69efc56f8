//! `wsync remote push|pull|sync|watch|conflicts` and the `wsync serve`
//! endpoint the other side runs.

use std::io::IsTerminal as _;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use wsync_remote::serve::ServeOptions;
use wsync_remote::watch::WatchEvent;
use wsync_remote::{ConnectOptions, PeerSpec, Report, Session, SyncOptions, WatchOptions};

use crate::Ctx;
use crate::exit;

/// `wsync serve`: answer a `wsync remote` peer on stdin/stdout.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The tree to serve (created on the first write).
    #[arg(long, value_name = "PATH")]
    pub root: PathBuf,
    /// Skip fsync (throwaway data and benchmarks only).
    #[arg(long, hide = true)]
    pub no_fsync: bool,
    /// Serve one client session after another (run by a session agent).
    #[arg(long, hide = true)]
    pub sessions: bool,
}

/// `wsync remote-agent` (started by `wsync remote` runs themselves).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The socket to answer on (in a private folder).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The remote shell, as for `wsync remote`.
    #[arg(long, value_name = "CMD")]
    pub rsh: Option<String>,
    /// The wsync program on the far side.
    #[arg(long, value_name = "PATH")]
    pub remote_wsync: Option<String>,
    /// An extra argument for the far `wsync serve` (repeatable).
    #[arg(long = "serve-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Exit after this many seconds without a client.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub idle: u64,
    /// The peer, `[USER@]HOST:PATH`.
    pub peer: String,
}

/// Runs a session agent until it has been idle long enough.
pub fn run_agent(args: &AgentArgs) -> Result<u8> {
    let peer = PeerSpec::parse(&args.peer)?;
    let opts = ConnectOptions {
        rsh: args.rsh.clone(),
        remote_wsync: args.remote_wsync.clone(),
        serve_args: args.serve_args.clone(),
        ..ConnectOptions::default()
    };
    wsync_remote::agent::run_agent(
        &args.socket,
        &peer,
        &opts,
        &wsync_remote::agent::AgentOptions {
            idle: std::time::Duration::from_secs(args.idle),
        },
    )
    .with_context(|| format!("session agent for {}", args.peer))?;
    Ok(exit::SUCCESS)
}

/// `wsync remote`: sync a folder with another machine over SSH.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RemoteCommand,
}

/// The `remote` subcommands.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Copy LOCAL to PEER (one way; `--delete` removes extras on PEER).
    Push(TransferArgs),
    /// Copy PEER to LOCAL (one way; `--delete` removes extras in LOCAL).
    Pull(TransferArgs),
    /// Two-way sync against the last synced state; conflicts keep both versions.
    Sync(TransferArgs),
    /// Sync now and after every change on either side, until interrupted.
    Watch(TransferArgs),
    /// List conflict copies under LOCAL.
    Conflicts {
        /// The local folder.
        local: PathBuf,
    },
}

/// Options of push, pull, sync and watch.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// The local folder.
    pub local: PathBuf,
    /// `[USER@]HOST:PATH` (over ssh) or a plain PATH (a local peer).
    pub peer: String,
    /// Print the plan; change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Exclude paths matching PATTERN (gitignore syntax; repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Also sync VCS folders (.git, .hg, .svn, .jj).
    #[arg(long)]
    pub include_vcs: bool,
    /// Remote shell command (default `ssh -o BatchMode=yes`), like rsync -e.
    #[arg(long, short = 'e', value_name = "CMD")]
    pub rsh: Option<String>,
    /// The wsync program on the remote host (default `wsync`).
    #[arg(long, value_name = "PATH")]
    pub remote_wsync: Option<String>,
    /// push/pull: delete files on the receiver that the sender does not have.
    #[arg(long)]
    pub delete: bool,
    /// Print a summary (files, bytes sent/received, literal vs matched).
    #[arg(long)]
    pub stats: bool,
    /// Allow a missing or emptied root to propagate deletions.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// Keep the connection — and a `wsync serve` on the far side — open
    /// for 60 s and reuse it on the next run (a session agent, plus ssh
    /// ControlMaster); on by default without `--rsh`.
    #[arg(long, overrides_with = "no_ssh_reuse")]
    pub ssh_reuse: bool,
    /// Open a fresh ssh connection every run.
    #[arg(long)]
    pub no_ssh_reuse: bool,
    /// Skip fsync on both sides (throwaway data and benchmarks only).
    #[arg(long, hide = true)]
    pub no_fsync: bool,
    /// When another `wsync remote` run holds LOCAL, wait up to SECS for it
    /// instead of failing at once (exit code 3 when it is still busy).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
}

/// Takes the lock of LOCAL (`LOCAL/.wsync/remote-lock/sync.lock`, an
/// `flock`; beside the pair states in `.wsync/remote/`, apart from the
/// workspace's own `.wsync/sync.lock`): two runs that change the same
/// local root never overlap. A busy lock fails with [`exit::BUSY`],
/// naming the holder.
fn lock_local(t: &TransferArgs, verb: &str) -> Result<wsync_lock::SyncLockGuard> {
    use wsync_lock::{LockOptions, SyncLock, Wait};
    let dir = t
        .local
        .join(wsync_remote::fsops::STATE_DIR)
        .join("remote-lock");
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the state folder {}", dir.display()))?;
    let opts = LockOptions {
        caller: format!("wsync remote {verb}"),
        reason: format!("{} with {}", t.local.display(), t.peer),
        // A watch holds it for as long as it runs.
        max_hold: if verb == "watch" {
            std::time::Duration::from_secs(365 * 24 * 3600)
        } else {
            LockOptions::default().max_hold
        },
    };
    let wait = t.wait.map_or(Wait::Fail, |s| {
        Wait::Timeout(std::time::Duration::from_secs(s))
    });
    match SyncLock::new(&dir).acquire(&opts, wait) {
        Ok(g) => Ok(g),
        Err(err @ wsync_lock::Error::Busy { .. }) => Err(exit::Failure::new(
            exit::BUSY,
            anyhow::anyhow!(
                "{err}: another wsync remote run is using {}",
                t.local.display()
            ),
        )
        .into()),
        Err(err) => Err(err.into()),
    }
}

/// A private folder for ssh control sockets.
fn ssh_control_dir() -> Option<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let dir = base.join(format!("wsync-ssh-{user}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    // Only a folder of our own, not writable by others.
    let md = std::fs::symlink_metadata(&dir).ok()?;
    use std::os::unix::fs::MetadataExt as _;
    (md.is_dir() && md.mode() & 0o077 == 0).then_some(dir)
}

/// Runs `wsync serve` on stdin/stdout.
pub fn run_serve(args: &ServeArgs) -> Result<u8> {
    let opts = ServeOptions {
        fsync: !args.no_fsync,
        sessions: args.sessions,
        ..ServeOptions::default()
    };
    wsync_remote::serve::serve(&args.root, std::io::stdin(), std::io::stdout(), &opts)
        .with_context(|| format!("serving {}", args.root.display()))?;
    Ok(exit::SUCCESS)
}

/// Runs a `wsync remote` subcommand.
pub fn run(ctx: &Ctx, args: &RemoteArgs) -> Result<u8> {
    match &args.command {
        RemoteCommand::Push(t) => transfer(ctx, t, Mode::Push),
        RemoteCommand::Pull(t) => transfer(ctx, t, Mode::Pull),
        RemoteCommand::Sync(t) => transfer(ctx, t, Mode::Sync),
        RemoteCommand::Watch(t) => watch(ctx, t),
        RemoteCommand::Conflicts { local } => {
            let list = wsync_remote::list_conflicts(local)
                .with_context(|| format!("listing conflicts in {}", local.display()))?;
            let shown: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
            ctx.emit(&serde_json::json!({ "conflicts": shown }), || {
                if shown.is_empty() {
                    "no conflict copies\n".into()
                } else {
                    shown.iter().map(|s| format!("{s}\n")).collect()
                }
            })?;
            Ok(if list.is_empty() {
                exit::SUCCESS
            } else {
                exit::CONFLICTS
            })
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Push,
    Pull,
    Sync,
}

fn connect_options(t: &TransferArgs) -> Result<ConnectOptions> {
    let reuse = !t.no_ssh_reuse && (t.ssh_reuse || t.rsh.is_none());
    Ok(ConnectOptions {
        rsh: t.rsh.clone(),
        remote_wsync: t.remote_wsync.clone(),
        local_wsync: Some(std::env::current_exe().context("cannot find the wsync executable")?),
        serve_args: if t.no_fsync {
            vec!["--no-fsync".into()]
        } else {
            Vec::new()
        },
        ssh_control_dir: if reuse { ssh_control_dir() } else { None },
        agent: reuse,
    })
}

fn sync_options(ctx: &Ctx, t: &TransferArgs) -> SyncOptions {
    let mut opts = SyncOptions {
        dry_run: t.dry_run,
        excludes: t.exclude.clone(),
        include_vcs: t.include_vcs,
        delete: t.delete,
        allow_mass_delete: t.allow_mass_delete,
        ..SyncOptions::default()
    };
    if !ctx.quiet && !ctx.json && std::io::stderr().is_terminal() && !t.dry_run {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        opts.progress = Some(Arc::new(move |ev| match ev {
            wsync_remote::ProgressEvent::Planned { bytes, .. } => bar.set_length(*bytes),
            wsync_remote::ProgressEvent::FileDone { bytes } => {
                bar.inc(*bytes);
                if bar.position() >= bar.length().unwrap_or(0) {
                    bar.finish_and_clear();
                }
            }
            _ => {}
        }));
    }
    opts
}

fn transfer(ctx: &Ctx, t: &TransferArgs, mode: Mode) -> Result<u8> {
    let peer = PeerSpec::parse(&t.peer)?;
    if t.delete && matches!(mode, Mode::Sync) {
        bail!("--delete applies to push and pull; sync propagates deletions by itself");
    }
    if matches!(mode, Mode::Push) && !t.local.is_dir() {
        bail!("local folder {} does not exist", t.local.display());
    }
    let copts = connect_options(t)?;
    let opts = sync_options(ctx, t);
    let verb = match mode {
        Mode::Push => "push",
        Mode::Pull => "pull",
        Mode::Sync => "sync",
    };
    // A dry run changes nothing and needs no lock.
    let _lock = if t.dry_run {
        None
    } else {
        Some(lock_local(t, verb)?)
    };
    let mut session = Session::connect(&t.local, &peer, &copts)
        .with_context(|| format!("connecting to {}", t.peer))?;
    if t.no_fsync {
        session.set_fsync(false);
    }
    let report = match mode {
        Mode::Push => session.push(&opts),
        Mode::Pull => session.pull(&opts),
        Mode::Sync => session.sync(&opts),
    }
    .with_context(|| format!("syncing {} with {}", t.local.display(), t.peer))?;
    session.close().context("closing the connection")?;
    print_report(ctx, t, &report)?;
    Ok(code_for(&report))
}

fn code_for(report: &Report) -> u8 {
    if !report.errors.is_empty() {
        exit::ERROR
    } else if !report.conflicts.is_empty() || !report.unresolved.is_empty() {
        exit::CONFLICTS
    } else {
        exit::SUCCESS
    }
}

fn print_report(ctx: &Ctx, t: &TransferArgs, report: &Report) -> Result<()> {
    for e in &report.errors {
        ctx.warn(e);
    }
    ctx.emit(report, || {
        let mut out = String::new();
        if report.dry_run {
            for item in &report.plan {
                match &item.detail {
                    Some(d) => out.push_str(&format!("{} {} -> {d}\n", item.action, item.path)),
                    None => out.push_str(&format!("{} {}\n", item.action, item.path)),
                }
            }
            out.push_str(&format!("(dry run: {} actions)\n", report.plan.len()));
        }
        for c in &report.conflicts {
            out.push_str(&format!(
                "conflict: {} (other version kept as {})\n",
                c.path, c.copy
            ));
        }
        for u in &report.unresolved {
            out.push_str(&format!("unresolved conflict: {u}\n"));
        }
        if t.stats {
            out.push_str(&format!(
                "files: {} sent, {} received, {} deleted, {} folders created, {} unchanged\n\
                 bytes: {} sent, {} received; content {} literal, {} matched\n",
                report.files_sent,
                report.files_received,
                report.deleted,
                report.dirs_created,
                report.unchanged,
                report.bytes_sent,
                report.bytes_received,
                report.literal_bytes,
                report.matched_bytes
            ));
        }
        out
    })
}

fn watch(ctx: &Ctx, t: &TransferArgs) -> Result<u8> {
    let peer = PeerSpec::parse(&t.peer)?;
    let copts = connect_options(t)?;
    let _lock = lock_local(t, "watch")?;
    let mut sync = sync_options(ctx, t);
    sync.progress = None;
    let opts = WatchOptions {
        sync,
        ..WatchOptions::default()
    };
    ctx.say(format!(
        "watching {} <-> {} (Ctrl-C to stop)",
        t.local.display(),
        t.peer
    ));
    wsync_remote::watch(&t.local, &peer, &copts, &opts, &mut |ev| {
        match ev {
            WatchEvent::Synced(r) => {
                for e in &r.errors {
                    ctx.warn(e);
                }
                let changes = r.files_sent + r.files_received + r.deleted + r.dirs_created;
                if changes > 0 || !r.conflicts.is_empty() {
                    if ctx.json {
                        if let Ok(line) = serde_json::to_string(r) {
                            println!("{line}");
                        }
                    } else {
                        ctx.say(format!(
                            "synced: {} sent, {} received, {} deleted, {} conflicts",
                            r.files_sent,
                            r.files_received,
                            r.deleted,
                            r.conflicts.len()
                        ));
                    }
                }
            }
            WatchEvent::Disconnected { error, retry_in } => {
                ctx.warn(format!("{error}; retrying in {retry_in:?}"));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    })
    .with_context(|| format!("watching {} with {}", t.local.display(), t.peer))?;
    Ok(exit::SUCCESS)
}
