//! `wsync daemon run|start|stop|status|logs`, `wsync start-scheduler` and
//! `wsync stop-scheduler`: the background queue processor, scheduler,
//! health checker and (when `watch.enabled`) watcher.

use std::io::{Read as _, Seek as _, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use wsync_coordinator::Config;
use wsync_coordinator::daemon::{
    self, Daemon, DaemonEvent, DaemonOptions, EngineRunner, LOG_FILE, LogFile, Processor,
    StopHandle,
};
use wsync_coordinator::health::HealthOptions;
use wsync_coordinator::watch::{WatchEvent, WatchOptions, Watcher};

use crate::ctx::Ctx;
use crate::exit;

/// `wsync daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// What to do.
    #[command(subcommand)]
    pub cmd: DaemonCmd,
}

/// `wsync daemon` subcommands.
#[derive(Debug, Subcommand)]
pub enum DaemonCmd {
    /// Run in the foreground (for systemd, launchd or a terminal) until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Start in the background (logs to `<state>/daemon.log`).
    Start(StartArgs),
    /// Stop the background daemon (SIGTERM; the running sync finishes or rolls back).
    Stop {
        /// Give up waiting after SECS.
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        timeout: u64,
    },
    /// Whether the daemon runs, its pid, the queue and the limits.
    Status,
    /// Print the daemon's log.
    Logs {
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Start with the last N lines.
        #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
        lines: usize,
    },
}

/// `wsync daemon run`.
#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    /// Write the log to FILE (rotated by size) instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Run the watcher even when `watch.enabled` is false.
    #[arg(long)]
    pub watch: bool,
}

/// `wsync daemon start`.
#[derive(Debug, Args, Clone, Default)]
pub struct StartArgs {
    /// Run the watcher even when `watch.enabled` is false.
    #[arg(long)]
    pub watch: bool,
}

/// Runs `wsync daemon ...`.
pub fn run(ctx: &Ctx, args: &DaemonArgs) -> Result<u8> {
    match &args.cmd {
        DaemonCmd::Run(a) => run_loop(
            ctx,
            &LoopOptions {
                exclusive: true,
                watch: a.watch,
                log_file: a.log_file.clone(),
            },
        ),
        DaemonCmd::Start(a) => start(ctx, a.watch),
        DaemonCmd::Stop { timeout } => stop(ctx, Duration::from_secs(*timeout)),
        DaemonCmd::Status => status(ctx),
        DaemonCmd::Logs { follow, lines } => logs(ctx, *follow, *lines),
    }
}

/// Sets `flag` (and stops `handle`) on SIGTERM or SIGINT, from a thread.
pub fn stop_on_signals(flag: Arc<AtomicBool>, handle: Option<StopHandle>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("wsync-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                flag.store(true, Ordering::SeqCst);
                if let Some(h) = &handle {
                    h.stop();
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Where log lines go.
#[derive(Clone)]
pub struct Logger(Arc<Mutex<Box<dyn Write + Send>>>);

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Logger")
    }
}

impl Logger {
    /// Lines to stderr.
    pub fn stderr() -> Self {
        Self(Arc::new(Mutex::new(Box::new(std::io::stderr()))))
    }

    /// Lines to a writer.
    pub fn to(w: Box<dyn Write + Send>) -> Self {
        Self(Arc::new(Mutex::new(w)))
    }

    /// Writes one timestamped line.
    pub fn line(&self, msg: &str) {
        let mut w = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            w,
            "{} {msg}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
        );
        let _ = w.flush();
    }
}

/// How the shared loop runs.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// The daemon proper (one per state folder, PID file, health, scheduler).
    pub exclusive: bool,
    /// Run the watcher regardless of `watch.enabled`.
    pub watch: bool,
    /// Log to this file (rotated) instead of stderr.
    pub log_file: Option<PathBuf>,
}

/// Renders a watch event as a log line (`None`: not worth a line).
pub fn watch_line(ev: &WatchEvent) -> Option<String> {
    Some(match ev {
        WatchEvent::Started { folders, polling } => format!(
            "watch: watching {folders} folder(s){}",
            if *polling { " by polling" } else { "" }
        ),
        WatchEvent::Requested { id, merged, paths } => format!(
            "watch: user change(s) {} → sync requested {id}{}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if *merged { " (merged)" } else { "" }
        ),
        WatchEvent::Ignored { path, reason, .. } => {
            format!("watch: ignored {} ({reason})", path.display())
        }
        WatchEvent::Unchanged { count } => {
            format!("watch: {count} settled path(s) equal HEAD (no change)")
        }
        WatchEvent::Postponed { count } => {
            format!("watch: {count} path(s) wait for the running sync")
        }
        WatchEvent::Rescan => "watch: events overflowed; full status reconcile".into(),
        WatchEvent::FellBackToPolling { why } => format!("watch: WARNING {why}"),
        WatchEvent::Error(e) => format!("watch: error: {e}"),
        _ => return None,
    })
}

fn daemon_line(ev: &DaemonEvent) -> Option<String> {
    Some(match ev {
        DaemonEvent::Started {
            recovered,
            released,
        } => {
            let mut s = format!("daemon: started, pid {}", std::process::id());
            for p in recovered {
                s.push_str(&format!(
                    "; corrupt state file kept as {} and started clean",
                    p.display()
                ));
            }
            if *released > 0 {
                s.push_str(&format!("; {released} interrupted request(s) put back"));
            }
            s
        }
        DaemonEvent::Processed(p) => format!(
            "sync {} ({}) {} in {} ms: {}",
            p.id, p.sync_type, p.outcome, p.ms, p.detail
        ),
        DaemonEvent::Scheduled { id } => format!("scheduler: scheduled sync requested {id}"),
        DaemonEvent::Health(r) => {
            let bad: Vec<String> = r
                .checks
                .iter()
                .filter(|c| c.status != wsync_coordinator::health::CheckStatus::Ok)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            if bad.is_empty() {
                "health: ok".into()
            } else {
                format!("health: {}", bad.join("; "))
            }
        }
        DaemonEvent::Error(e) => format!("daemon: error: {e}"),
        DaemonEvent::Stopped => "daemon: stopped".into(),
        _ => return None,
    })
}

/// The daemon loop (`daemon run`) and the watch loop (`wsync watch`).
pub fn run_loop(ctx: &Ctx, opts: &LoopOptions) -> Result<u8> {
    std::fs::create_dir_all(&ctx.state_dir)
        .with_context(|| format!("cannot create state folder {}", ctx.state_dir.display()))?;
    let config = Config::load(&ctx.state_dir)?;
    let logger = match &opts.log_file {
        Some(p) => Logger::to(Box::new(LogFile::open(
            p,
            config.daemon.log_max_bytes,
            config.daemon.log_keep,
        )?)),
        None => Logger::stderr(),
    };
    let processor = Processor::new(
        &ctx.state_dir,
        config.ratelimit.clone(),
        config.retry.clone(),
    );
    let dopts = DaemonOptions {
        workspace: ctx.workspace.clone(),
        state_dir: ctx.state_dir.clone(),
        config: config.daemon.clone(),
        // Scheduled requests run with reason `scheduled`: the decision
        // engine declines them while automatic syncs are disabled.
        schedule: opts
            .exclusive
            .then(|| Duration::from_secs(config.interval_minutes.max(1).saturating_mul(60))),
        health: opts.exclusive.then(|| HealthOptions {
            max_hold: Duration::from_secs(config.lock.max_hold_secs),
            ..HealthOptions::default()
        }),
        exclusive: opts.exclusive,
    };
    let mut d = Daemon::new(dopts, processor)?;
    let stop = d.stop_handle();
    stop_on_signals(stop.flag().clone(), Some(stop.clone()))?;
    let watcher = if opts.watch || config.watch.enabled {
        let wl = logger.clone();
        let wopts = WatchOptions {
            workspace: ctx.workspace.clone(),
            state_dir: ctx.state_dir.clone(),
            config: config.watch.clone(),
            filters: config.filters.clone(),
        };
        Some(Watcher::start(
            &wopts,
            Box::new(move |ev| {
                if let Some(l) = watch_line(&ev) {
                    wl.line(&l);
                }
            }),
        )?)
    } else {
        None
    };
    let mut runner = EngineRunner::new(&ctx.workspace, &ctx.state_dir);
    runner.live_options = crate::ctx::live_options();
    let dl = logger.clone();
    d.run(&mut runner, &mut |ev| {
        if let Some(l) = daemon_line(&ev) {
            dl.line(&l);
        }
    })?;
    if let Some(w) = watcher {
        w.stop();
    }
    Ok(exit::SUCCESS)
}

fn self_cmd(ctx: &Ctx) -> Result<Command> {
    let exe = std::env::current_exe().context("cannot find the wsync executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--workspace")
        .arg(&ctx.workspace)
        .arg("--state-dir")
        .arg(&ctx.state_dir);
    Ok(cmd)
}

/// Starts the daemon in the background unless one runs; returns its pid.
pub fn ensure_started(ctx: &Ctx, watch: bool) -> Result<(u32, bool)> {
    let st = daemon::status(&ctx.state_dir)?;
    if st.running
        && let Some(r) = st.record
    {
        return Ok((r.pid, false));
    }
    std::fs::create_dir_all(&ctx.state_dir)
        .with_context(|| format!("cannot create state folder {}", ctx.state_dir.display()))?;
    let log = ctx.state_dir.join(LOG_FILE);
    let mut cmd = self_cmd(ctx)?;
    cmd.args(["daemon", "run", "--log-file"]).arg(&log);
    if watch {
        cmd.arg("--watch");
    }
    {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
    }
    // Library warnings (tracing) go to the log file too.
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("cannot start the daemon")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = daemon::status(&ctx.state_dir)?;
        if st.running
            && let Some(r) = st.record
            && r.pid == child.id()
        {
            return Ok((r.pid, true));
        }
        if let Some(code) = child.try_wait().context("waiting for the daemon")? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            bail!(
                "the daemon exited at once ({code}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon did not start within 15 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(ctx: &Ctx, watch: bool) -> Result<u8> {
    let (pid, started) = ensure_started(ctx, watch)?;
    ctx.emit(&json!({ "pid": pid, "started": started }), || {
        if started {
            format!(
                "daemon started, pid {pid} (log: {})",
                ctx.state_dir.join(LOG_FILE).display()
            )
        } else {
            format!("daemon already running, pid {pid}")
        }
    })?;
    Ok(exit::SUCCESS)
}

/// Stops a running daemon; returns whether one was running.
pub fn stop_daemon(state_dir: &Path, timeout: Duration) -> Result<Option<u32>> {
    let st = daemon::status(state_dir)?;
    let (true, Some(rec)) = (st.running, st.record) else {
        return Ok(None);
    };
    let pid = nix::unistd::Pid::from_raw(i32::try_from(rec.pid).context("bad pid in daemon.pid")?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("cannot signal daemon pid {}", rec.pid))?;
    let deadline = Instant::now() + timeout;
    while daemon::status(state_dir)?.running {
        if Instant::now() > deadline {
            bail!(
                "daemon pid {} did not stop within {} s (a sync may still run)",
                rec.pid,
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some(rec.pid))
}

fn stop(ctx: &Ctx, timeout: Duration) -> Result<u8> {
    let stopped = stop_daemon(&ctx.state_dir, timeout)?;
    ctx.emit(&json!({ "stopped": stopped }), || match stopped {
        Some(pid) => format!("daemon pid {pid} stopped"),
        None => "daemon is not running".into(),
    })?;
    Ok(exit::SUCCESS)
}

fn status(ctx: &Ctx) -> Result<u8> {
    let config = Config::load(&ctx.state_dir)?;
    let auto = daemon::auto_status(&ctx.state_dir, &config)?;
    let (st, queue, limits, circuit) = (&auto.daemon, &auto.queue, &auto.ratelimit, &auto.circuit);
    let value = json!({
        "running": st.running,
        "record": st.record,
        "scheduler": { "enabled": config.enabled, "interval_minutes": config.interval_minutes },
        "watch": { "enabled": config.watch.enabled },
        "queue": queue,
        "ratelimit": limits,
        "circuit": circuit,
    });
    ctx.emit(&value, || {
        let on = |b: bool| if b { "enabled" } else { "disabled" };
        let mut s = auto_lines(&auto);
        if let (true, Some(r)) = (st.running, &st.record) {
            s.push_str(&format!(
                "started: {}\n",
                r.started_at.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        s.push_str(&format!(
            "scheduler: {} every {} min; watch: {}\n",
            on(config.enabled),
            config.interval_minutes,
            on(config.watch.enabled)
        ));
        s
    })?;
    Ok(exit::SUCCESS)
}

/// The automatic-sync lines of `wsync status`.
pub fn auto_lines(auto: &daemon::AutoStatus) -> String {
    let mut s = match (&auto.daemon.running, &auto.daemon.record) {
        (true, Some(r)) => format!("daemon: running, pid {}\n", r.pid),
        _ => "daemon: not running\n".into(),
    };
    s.push_str(&format!("queue: {} request(s)\n", auto.queue.len()));
    for e in &auto.queue {
        let until = e
            .next_attempt_at
            .map(|t| format!(" until {}", t.format("%H:%M:%S UTC")))
            .unwrap_or_default();
        let why = e
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        s.push_str(&format!(
            "  {} {} {} ({}){until}{why}\n",
            e.id,
            e.sync_type,
            format!("{:?}", e.status).to_lowercase(),
            e.priority
        ));
    }
    s.push_str(&format!(
        "rate limits: {} sync(s), {} commit(s) in the last hour, {} automatic commit(s) today",
        auto.ratelimit.syncs_last_hour,
        auto.ratelimit.commits_last_hour,
        auto.ratelimit.auto_commits_last_day
    ));
    if let Some(r) = &auto.ratelimit.sync_refusal {
        s.push_str(&format!("; next normal sync refused: {r}"));
    }
    s.push('\n');
    s.push_str(&format!("circuit: {:?}", auto.circuit.state).to_lowercase());
    if let Some(t) = auto.circuit.retry_at {
        s.push_str(&format!(
            " after {} failure(s); trial after {}",
            auto.circuit.consecutive_failures,
            t.format("%H:%M:%S UTC")
        ));
    }
    s.push('\n');
    s
}

fn logs(ctx: &Ctx, follow: bool, lines: usize) -> Result<u8> {
    let path = ctx.state_dir.join(LOG_FILE);
    let mut out = std::io::stdout().lock();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => String::new(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "no daemon log at {} (start it with `wsync daemon start`)",
                path.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let all: Vec<&str> = text.lines().collect();
    for l in &all[all.len().saturating_sub(lines)..] {
        writeln!(out, "{l}").context("cannot write to stdout")?;
    }
    out.flush().ok();
    if !follow {
        return Ok(exit::SUCCESS);
    }
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(stop.clone(), None)?;
    let mut pos = text.len() as u64;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(250));
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < pos {
            pos = 0; // rotated
        }
        if len > pos {
            f.seek(SeekFrom::Start(pos)).ok();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).ok();
            pos += buf.len() as u64;
            out.write_all(&buf).context("cannot write to stdout")?;
            out.flush().ok();
        }
    }
    Ok(exit::SUCCESS)
}

/// `wsync start-scheduler`: enable automatic syncs and make sure the daemon runs.
pub fn start_scheduler(ctx: &Ctx) -> Result<u8> {
    std::fs::create_dir_all(&ctx.state_dir)
        .with_context(|| format!("cannot create state folder {}", ctx.state_dir.display()))?;
    let config = Config::load(&ctx.state_dir)?.with_set("enabled", "true")?;
    config.save(&ctx.state_dir)?;
    let (pid, started) = ensure_started(ctx, false)?;
    ctx.say(format!(
        "automatic syncs enabled (every {} min); daemon {} pid {pid}",
        config.interval_minutes,
        if started {
            "started,"
        } else {
            "already running,"
        }
    ));
    Ok(exit::SUCCESS)
}

/// `wsync stop-scheduler`: disable automatic syncs (the daemon keeps serving requests).
pub fn stop_scheduler(ctx: &Ctx) -> Result<u8> {
    let config = Config::load(&ctx.state_dir)?.with_set("enabled", "false")?;
    config.save(&ctx.state_dir)?;
    ctx.say("automatic syncs disabled; queued requests are still served (`wsync daemon stop` stops the daemon)");
    Ok(exit::SUCCESS)
}
