//! The `wsync` command line: argument parsing and output only.
//!
//! Everything the commands do lives in the library crates (`wsync-lock`,
//! `wsync-snapshot`, `wsync-filter`, `wsync-coordinator`, `wsync-remote`);
//! this crate parses arguments, reads the environment, calls them and prints
//! what they return. It is the only crate that prints.
//!
//! ```no_run
//! // The whole binary:
//! fn main() -> std::process::ExitCode {
//!     wsync_cli::run()
//! }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
// This crate is the one place that prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod cmd;
pub mod ctx;
pub mod exit;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use wsync_coordinator::SyncMode;

pub use ctx::Ctx;

/// wsync keeps a workspace in sync across machines while an autonomous
/// system keeps rewriting some of its files.
#[derive(Debug, Parser)]
#[command(
    name = "wsync",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 busy (another sync holds \
the lock), 4 conflicts remain, 5 skipped; wrapped commands pass their own code through."
)]
pub struct Cli {
    /// Options every command accepts.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The workspace root (default: the git top-level of the current folder, else the folder).
    #[arg(long, global = true, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// The state folder (default: `<workspace>/.wsync`).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only data and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Data as JSON on stdout, where the command prints data.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set the workspace up: state folder (kept out of git), config, remote.
    Init(cmd::init::InitArgs),
    /// Sync now: commit user changes, fetch, integrate, push.
    #[command(visible_alias = "sync-now")]
    Sync(cmd::sync::SyncArgs),
    /// Commit user changes locally, fetch and integrate; no push.
    Pull(cmd::sync::SyncArgs),
    /// Commit user changes and push; no fetch.
    Push(cmd::sync::SyncArgs),
    /// Sync bypassing the decision engine's timing (`sync --force`).
    #[command(name = "force-sync")]
    ForceSync(cmd::sync::SyncArgs),
    /// Lock, pause, last sync, pending changes, conflicts, ahead/behind.
    Status(cmd::status::StatusArgs),
    /// The newest sync runs from the sync log.
    Log(cmd::log::LogArgs),
    /// Sync conflicts: list, resolve.
    Conflicts(cmd::conflicts::ConflictsArgs),
    /// The config: show, get, set, enable, disable, interval.
    Config(cmd::config::ConfigArgs),
    /// Stop a running sync, clear the pause, disable automatic syncs.
    #[command(name = "emergency-stop")]
    EmergencyStop(cmd::emergency::EmergencyArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Classify changes as user or system (explain, test rules, watch live).
    Filter(cmd::filter::FilterArgs),
    /// Carry a working session to another machine (save, show, connect, resume).
    Handoff(cmd::handoff::HandoffArgs),
    /// Find projects and launch them with their saved command.
    Projects(cmd::projects::ProjectsArgs),
    /// Sync a folder with another machine over SSH (push, pull, sync, watch).
    Remote(cmd::remote::RemoteArgs),
    /// Answer a `wsync remote` peer on stdin/stdout (run by ssh on the far side).
    Serve(cmd::remote::ServeArgs),
    /// Keep one `wsync serve` on the far side alive behind a local socket
    /// for reuse by `wsync remote` runs (started by them).
    #[command(name = "remote-agent", hide = true)]
    RemoteAgent(cmd::remote::AgentArgs),
    /// The sync lock: who holds it; run a command holding it.
    Lock(cmd::lock::LockArgs),
    /// Run a command as an autonomous writer under the pause gate.
    Guard(cmd::guard::GuardArgs),
    /// The pause gate: status, wait for the end of a pause, run a command with writers paused.
    Pause(cmd::pause::PauseArgs),
    /// Whole-state snapshots: create, list, show, verify, diff, restore, cleanup.
    Snapshot(cmd::snapshot::SnapshotArgs),
    /// Return the workspace to a snapshot (the newest when no id is given).
    Rollback(cmd::snapshot::RestoreArgs),
    /// Queue a sync request; prints the ticket id (identical pending requests merge).
    #[command(name = "request-sync")]
    RequestSync(cmd::queue::RequestArgs),
    /// Drain the sync queue once through the sync engine.
    Process(cmd::queue::ProcessArgs),
    /// The sync queue: list, clear, history.
    Queue(cmd::queue::QueueArgs),
    /// The background daemon: run, start, stop, status, logs.
    Daemon(cmd::daemon::DaemonArgs),
    /// Enable automatic syncs and start the daemon (old name of `config enable`).
    #[command(name = "start-scheduler")]
    StartScheduler,
    /// Disable automatic syncs (old name of `config disable`).
    #[command(name = "stop-scheduler")]
    StopScheduler,
    /// Health checks: repository, disk, stale lock, stuck queue entries.
    Health(cmd::health::HealthArgs),
    /// Watch the workspace and sync user changes as they settle (foreground).
    Watch(cmd::watch::WatchArgs),
    /// A 30-second offline demo: autonomous writes ignored, user edits synced.
    Demo(cmd::demo::DemoArgs),
}

/// Parses the process arguments, runs the command and returns its exit code.
pub fn run() -> ExitCode {
    run_from(std::env::args_os())
}

/// Like [`run`], with explicit arguments (the first is the program name).
pub fn run_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not errors.
            let code = if err.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(&cli.global);
    let code = match dispatch(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("wsync: error: {}", exit::render(&err));
            exit::code_for(&err)
        }
    };
    ExitCode::from(code)
}

fn init_tracing(global: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let default = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("WSYNC_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn dispatch(cli: &Cli) -> anyhow::Result<u8> {
    let ctx = || Ctx::from_args(&cli.global);
    match &cli.command {
        Command::Completions { shell } => cmd::completions::run(*shell),
        Command::Init(args) => cmd::init::run(&ctx()?, args),
        Command::Sync(args) => cmd::sync::run(&ctx()?, args, SyncMode::Sync),
        Command::Pull(args) => cmd::sync::run(&ctx()?, args, SyncMode::Pull),
        Command::Push(args) => cmd::sync::run(&ctx()?, args, SyncMode::Push),
        Command::ForceSync(args) => {
            let forced = cmd::sync::SyncArgs {
                force: true,
                ..args.clone()
            };
            cmd::sync::run(&ctx()?, &forced, SyncMode::Sync)
        }
        Command::Status(args) => cmd::status::run(&ctx()?, args),
        Command::Log(args) => cmd::log::run(&ctx()?, args),
        Command::Conflicts(args) => cmd::conflicts::run(&ctx()?, args),
        Command::Config(args) => cmd::config::run(&ctx()?, args),
        Command::EmergencyStop(args) => cmd::emergency::run(&ctx()?, args),
        Command::Filter(args) => cmd::filter::run(&ctx()?, args),
        Command::Handoff(args) => cmd::handoff::run(&ctx()?, args),
        Command::Projects(args) => cmd::projects::run(&ctx()?, args),
        Command::Remote(args) => cmd::remote::run(&ctx()?, args),
        Command::Serve(args) => cmd::remote::run_serve(args),
        Command::RemoteAgent(args) => cmd::remote::run_agent(args),
        Command::Lock(args) => cmd::lock::run(&ctx()?, args),
        Command::Guard(args) => cmd::guard::run(&ctx()?, args),
        Command::Pause(args) => cmd::pause::run(&ctx()?, args),
        Command::Snapshot(args) => cmd::snapshot::run(&ctx()?, args),
        Command::Rollback(args) => cmd::snapshot::run_rollback(&ctx()?, args),
        Command::RequestSync(args) => cmd::queue::run_request(&ctx()?, args),
        Command::Process(args) => cmd::queue::run_process(&ctx()?, args),
        Command::Queue(args) => cmd::queue::run(&ctx()?, args),
        Command::Daemon(args) => cmd::daemon::run(&ctx()?, args),
        Command::StartScheduler => cmd::daemon::start_scheduler(&ctx()?),
        Command::StopScheduler => cmd::daemon::stop_scheduler(&ctx()?),
        Command::Health(args) => cmd::health::run(&ctx()?, args),
        Command::Watch(args) => cmd::watch::run(&ctx()?, args),
        Command::Demo(args) => cmd::demo::run(&ctx()?, args),
    }
}
