//! The background daemon (`wsync daemon run|start|stop|status|logs`).
//!
//! One loop per state folder: it drains the queue when a request arrives
//! (every [`Queue::enqueue`](crate::queue::Queue::enqueue) sends a datagram to `<state>/daemon.sock`) and
//! at least every `queue_interval_secs`, enqueues a scheduled sync every
//! `interval_minutes` when automatic syncs are enabled, runs the health
//! checks every `health_interval_secs`, and stops cleanly when its
//! [`StopHandle`] is used (the CLI wires SIGTERM and SIGINT to it): the
//! running sync is told to finish or roll back, and the loop exits. Between
//! events it sleeps in one blocking `recv` with a timeout: no busy loop.
//!
//! Only one daemon runs per state folder: it holds an advisory lock on
//! `<state>/daemon.lock` for its whole life and records itself in
//! `<state>/daemon.pid`; [`status`] tells a live daemon from a stale file.
//! At start-up corrupt queue, rate-limit and circuit files are kept as
//! `<name>.corrupt-<ts>` and the daemon starts clean.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::AtomicBool;
//! use wsync_coordinator::daemon::{Processor, RunOutcome};
//! use wsync_coordinator::queue::{Priority, SyncRequest};
//! use wsync_coordinator::ratelimit::RateLimitConfig;
//! use wsync_coordinator::retry::RetryConfig;
//!
//! let state = tempfile::tempdir()?;
//! let p = Processor::new(state.path(), RateLimitConfig::default(), RetryConfig::default());
//! p.queue().enqueue(&SyncRequest::new("manual", "doc", Priority::Normal, ""))?;
//! let mut runner = |_: &_, _: &_| RunOutcome::Synced { committed: false, detail: "up to date".into() };
//! let done = p.drain(&mut runner, &Arc::new(AtomicBool::new(false)), 10)?;
//! assert_eq!(done[0].outcome, "done");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod log;
mod process;

use std::fs::{File, OpenOptions};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use log::LogFile;
pub use process::{EngineRunner, Processed, Processor, RunContext, RunOutcome, SyncRunner};

use crate::Error;
use crate::health::{HealthOptions, HealthReport};
use crate::queue::{Priority, Result, SyncRequest, store};

/// The daemon's lock file (held for its whole life).
pub const DAEMON_LOCK_FILE: &str = "daemon.lock";
/// The daemon's PID record.
pub const PID_FILE: &str = "daemon.pid";
/// The datagram socket that wakes the daemon.
pub const SOCKET_FILE: &str = "daemon.sock";
/// The daemon's log file (when started with `daemon start`).
pub const LOG_FILE: &str = "daemon.log";

/// Daemon settings (`daemon` in `config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// The queue is drained at least this often, seconds.
    pub queue_interval_secs: u64,
    /// Health checks run this often, seconds.
    pub health_interval_secs: u64,
    /// The log file is rotated past this size, bytes.
    pub log_max_bytes: u64,
    /// Rotated log files kept (`daemon.log.1` …).
    pub log_keep: u32,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            queue_interval_secs: 30,
            health_interval_secs: 300,
            log_max_bytes: 1024 * 1024,
            log_keep: 3,
        }
    }
}

/// What the daemon's PID file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    /// The daemon's process id.
    pub pid: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The workspace it serves.
    pub workspace: PathBuf,
}

/// Whether a daemon runs for a state folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonStatus {
    /// A daemon holds the lock.
    pub running: bool,
    /// Its record (also when a dead daemon left it behind).
    pub record: Option<PidRecord>,
}

/// Reads whether a daemon serves `state_dir`.
pub fn status(state_dir: &Path) -> Result<DaemonStatus> {
    let lock_path = state_dir.join(DAEMON_LOCK_FILE);
    // Liveness comes from the lock, not from this file: a torn or foreign
    // PID file must not make `status`, `daemon start` or `stop` fail.
    let record: Option<PidRecord> = match store::read_json(&state_dir.join(PID_FILE)) {
        Ok(r) => r,
        Err(Error::CorruptState { .. }) => None,
        Err(e) => return Err(e),
    };
    let file = match File::open(&lock_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DaemonStatus {
                running: false,
                record,
            });
        }
        Err(e) => return Err(store::io_err(&lock_path, e)),
    };
    let running = match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(e)) => return Err(store::io_err(&lock_path, e)),
    };
    Ok(DaemonStatus { running, record })
}

/// Everything about automatic syncing, for `status`: the daemon, the
/// queue (deferred entries say why and until when), the rate limits and
/// the circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoStatus {
    /// The daemon.
    pub daemon: DaemonStatus,
    /// Queued requests in service order.
    pub queue: Vec<crate::queue::QueueEntry>,
    /// Counts and the current refusals.
    pub ratelimit: crate::ratelimit::RateLimitStatus,
    /// The circuit breaker.
    pub circuit: crate::retry::CircuitStatus,
}

/// Reads [`AutoStatus`] for a state folder and its config.
pub fn auto_status(state_dir: &Path, config: &crate::Config) -> Result<AutoStatus> {
    let p = Processor::new(state_dir, config.ratelimit.clone(), config.retry.clone());
    Ok(AutoStatus {
        daemon: status(state_dir)?,
        queue: p.queue().list()?,
        ratelimit: p.limiter().status()?,
        circuit: p.breaker().status()?,
    })
}

/// Wakes the daemon of `state_dir`, if one listens. Best effort: returns
/// whether a datagram was delivered.
pub fn wake(state_dir: &Path) -> bool {
    let path = state_dir.join(SOCKET_FILE);
    if !path.exists() {
        return false;
    }
    UnixDatagram::unbound()
        .and_then(|s| s.send_to(b"w", &path))
        .is_ok()
}

/// Stops a running daemon loop from another thread (or a signal handler
/// thread): sets the flag its sync runner sees and wakes it.
#[derive(Debug, Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    state_dir: PathBuf,
}

impl StopHandle {
    /// Asks the loop to stop.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        wake(&self.state_dir);
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// The flag itself (for a sync runner's cancellation).
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The workspace.
    pub workspace: PathBuf,
    /// The state folder.
    pub state_dir: PathBuf,
    /// Timers and log rotation.
    pub config: DaemonConfig,
    /// Scheduled syncs every this long (`None`: no scheduler).
    pub schedule: Option<Duration>,
    /// Health checks (`None`: none).
    pub health: Option<HealthOptions>,
    /// Hold `daemon.lock` and write `daemon.pid` (false for `wsync watch`,
    /// which may run beside a daemon).
    pub exclusive: bool,
}

/// Something the loop did, for the log.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DaemonEvent {
    /// The loop started.
    Started {
        /// Corrupt state files kept aside.
        recovered: Vec<PathBuf>,
        /// Running entries of dead processes put back.
        released: usize,
    },
    /// An entry was handled.
    Processed(Processed),
    /// A scheduled sync was enqueued.
    Scheduled {
        /// Its ticket.
        id: String,
    },
    /// Health checks ran.
    Health(HealthReport),
    /// The loop hit an error and goes on.
    Error(String),
    /// The loop stopped.
    Stopped,
}

/// A daemon loop, ready to run.
#[derive(Debug)]
pub struct Daemon {
    opts: DaemonOptions,
    processor: Processor,
    stop: StopHandle,
    socket: Option<UnixDatagram>,
    _lock: Option<File>,
}

impl Daemon {
    /// Takes the daemon lock (when exclusive; [`Error::Daemon`] if another
    /// daemon holds it), writes the PID file and binds the wake socket.
    pub fn new(opts: DaemonOptions, processor: Processor) -> Result<Self> {
        std::fs::create_dir_all(&opts.state_dir).map_err(|e| store::io_err(&opts.state_dir, e))?;
        let lock = if opts.exclusive {
            let lock_path = opts.state_dir.join(DAEMON_LOCK_FILE);
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| store::io_err(&lock_path, e))?;
            match f.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let who = store::read_json::<PidRecord>(&opts.state_dir.join(PID_FILE))
                        .ok()
                        .flatten()
                        .map_or_else(String::new, |r| format!(" (pid {})", r.pid));
                    return Err(Error::Daemon {
                        path: opts.state_dir.join(PID_FILE),
                        why: format!("another daemon already serves this state folder{who}"),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(store::io_err(&lock_path, e)),
            }
            store::write_json(
                &opts.state_dir.join(PID_FILE),
                &PidRecord {
                    pid: std::process::id(),
                    started_at: Utc::now(),
                    workspace: opts.workspace.clone(),
                },
            )?;
            Some(f)
        } else {
            None
        };
        // The socket belongs to the exclusive daemon; a `wsync watch` beside
        // it only listens when no daemon does.
        let socket = if opts.exclusive || !status(&opts.state_dir).is_ok_and(|s| s.running) {
            let path = opts.state_dir.join(SOCKET_FILE);
            let _ = std::fs::remove_file(&path);
            match UnixDatagram::bind(&path) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot bind the wake socket ({e}); polling every second instead");
                    None
                }
            }
        } else {
            None
        };
        Ok(Self {
            stop: StopHandle {
                flag: Arc::new(AtomicBool::new(false)),
                state_dir: opts.state_dir.clone(),
            },
            opts,
            processor,
            socket,
            _lock: lock,
        })
    }

    /// A handle that stops the loop.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The processor.
    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// Runs until stopped. `on_event` sees everything the loop does (the
    /// CLI logs it).
    pub fn run(
        &mut self,
        runner: &mut dyn SyncRunner,
        on_event: &mut dyn FnMut(DaemonEvent),
    ) -> Result<()> {
        let recovered = self.processor.recover()?;
        let released = self
            .processor
            .queue()
            .release_orphans(crate::queue::pid_alive)?;
        on_event(DaemonEvent::Started {
            recovered,
            released,
        });
        let tick = Duration::from_secs(self.opts.config.queue_interval_secs.max(1));
        let health_every = Duration::from_secs(self.opts.config.health_interval_secs.max(1));
        let mut next_health = Instant::now();
        // Health checks run beside the loop (fsck may take a while) and
        // wake it when done.
        let mut health_run: Option<std::thread::JoinHandle<HealthReport>> = None;
        let mut next_schedule = self.opts.schedule.map(|d| Instant::now() + d);
        while !self.stop.is_stopped() {
            if health_run
                .as_ref()
                .is_some_and(std::thread::JoinHandle::is_finished)
                && let Some(Ok(report)) = health_run.take().map(std::thread::JoinHandle::join)
            {
                on_event(DaemonEvent::Health(report));
            }
            if let Some(h) = &self.opts.health
                && health_run.is_none()
                && Instant::now() >= next_health
            {
                let (ws, state, h) = (
                    self.opts.workspace.clone(),
                    self.opts.state_dir.clone(),
                    h.clone(),
                );
                health_run = Some(std::thread::spawn(move || {
                    let report = crate::health::check(&ws, &state, &h);
                    wake(&state);
                    report
                }));
                next_health = Instant::now() + health_every;
            }
            if let (Some(at), Some(every)) = (next_schedule, self.opts.schedule)
                && Instant::now() >= at
            {
                match self.processor.queue().enqueue(&SyncRequest::new(
                    "scheduled",
                    "daemon",
                    Priority::Low,
                    "scheduled sync",
                )) {
                    Ok(e) => on_event(DaemonEvent::Scheduled { id: e.id }),
                    Err(e) => on_event(DaemonEvent::Error(e.to_string())),
                }
                next_schedule = Some(Instant::now() + every);
            }
            match self.processor.drain(runner, self.stop.flag(), 1000) {
                Ok(done) => done
                    .into_iter()
                    .for_each(|p| on_event(DaemonEvent::Processed(p))),
                Err(e) => on_event(DaemonEvent::Error(e.to_string())),
            }
            if self.stop.is_stopped() {
                break;
            }
            // Sleep until the next timer, the earliest deferred entry, or a wake-up.
            let mut wait = tick;
            if self.opts.health.is_some() {
                wait = wait.min(next_health.saturating_duration_since(Instant::now()));
            }
            if let Some(at) = next_schedule {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            if let Ok(entries) = self.processor.queue().list() {
                let now = Utc::now();
                if let Some(t) = entries.iter().filter_map(|e| e.next_attempt_at).min() {
                    wait = wait.min((t - now).to_std().unwrap_or(Duration::ZERO));
                }
            }
            self.sleep(wait.max(Duration::from_millis(50)));
        }
        if let Some(Ok(report)) = health_run.map(std::thread::JoinHandle::join) {
            on_event(DaemonEvent::Health(report));
        }
        on_event(DaemonEvent::Stopped);
        Ok(())
    }

    fn sleep(&self, wait: Duration) {
        match &self.socket {
            Some(s) => {
                let _ = s.set_read_timeout(Some(wait));
                let mut buf = [0u8; 16];
                if s.recv(&mut buf).is_ok() {
                    // Several requests may have arrived: swallow them all.
                    let _ = s.set_nonblocking(true);
                    while s.recv(&mut buf).is_ok() {}
                    let _ = s.set_nonblocking(false);
                }
            }
            None => {
                let end = Instant::now() + wait;
                while Instant::now() < end && !self.stop.is_stopped() {
                    std::thread::sleep(
                        Duration::from_secs(1).min(end.saturating_duration_since(Instant::now())),
                    );
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.socket.is_some() {
            let _ = std::fs::remove_file(self.opts.state_dir.join(SOCKET_FILE));
        }
        if self._lock.is_some() {
            let _ = std::fs::remove_file(self.opts.state_dir.join(PID_FILE));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueEntry;
    use crate::ratelimit::RateLimitConfig;
    use crate::retry::RetryConfig;

    fn opts(dir: &Path, exclusive: bool) -> DaemonOptions {
        DaemonOptions {
            workspace: dir.to_path_buf(),
            state_dir: dir.join("state"),
            config: DaemonConfig::default(),
            schedule: None,
            health: None,
            exclusive,
        }
    }

    fn processor(dir: &Path) -> Processor {
        Processor::new(
            &dir.join("state"),
            RateLimitConfig {
                enabled: false,
                ..Default::default()
            },
            RetryConfig::default(),
        )
    }

    #[test]
    fn one_daemon_per_state_folder_and_status_sees_it() {
        let d = tempfile::tempdir().unwrap();
        let first = Daemon::new(opts(d.path(), true), processor(d.path())).unwrap();
        let st = status(&d.path().join("state")).unwrap();
        assert!(st.running);
        assert_eq!(st.record.unwrap().pid, std::process::id());
        let err = Daemon::new(opts(d.path(), true), processor(d.path())).unwrap_err();
        assert!(err.to_string().contains("another daemon"), "{err}");
        drop(first);
        assert!(!status(&d.path().join("state")).unwrap().running);
    }

    #[test]
    fn a_request_wakes_the_loop_promptly_and_stop_ends_it() {
        let d = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::new(opts(d.path(), true), processor(d.path())).unwrap();
        let stop = daemon.stop_handle();
        let state = d.path().join("state");
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let mut runner = move |e: &QueueEntry, _: &RunContext| {
                tx.send(e.id.clone()).unwrap();
                RunOutcome::Synced {
                    committed: false,
                    detail: String::new(),
                }
            };
            daemon.run(&mut runner, &mut |_| {}).unwrap();
        });
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        let id = crate::queue::Queue::new(&state)
            .enqueue(&SyncRequest::new("manual", "t", Priority::Normal, ""))
            .unwrap()
            .id;
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got, id);
        assert!(start.elapsed() < Duration::from_secs(10));
        stop.stop();
        t.join().unwrap();
        assert!(!state.join(SOCKET_FILE).exists());
    }
}
