//! The pause gate between sync and autonomous writers.

use std::fs::{File, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, IoContext as _, Result};
use crate::fsutil::{
    Backoff, atomic_write, check_state_dir, deadline_after, is_current, open_lock_file,
    remove_durable,
};
use crate::process::{Liveness, liveness, me};
use crate::windows::{WriterWindow, append_window};

/// The visible pause file (the seed's format: pid, timestamp, reason).
pub const PAUSE_FILE: &str = "sync-pause.lock";
/// Writers hold this shared while writing; a pause holds it exclusively.
pub const WRITERS_LOCK_FILE: &str = "writers.lock";
/// A pause holds this exclusively for its whole life; it is the authority
/// on whether the pause file is live.
pub const PAUSERS_LOCK_FILE: &str = "pausers.lock";

/// Default [`PauseOptions::max_pause`] and [`WriterOptions::max_wait`]: 5 min.
pub const DEFAULT_MAX_PAUSE: Duration = Duration::from_secs(300);
/// Default [`PauseOptions::ack_timeout`]: 30 s.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How often waiting writers and pollers look again, at most.
const POLL_MAX: Duration = Duration::from_millis(50);

/// How a pause is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseOptions {
    /// Why (third line of the pause file).
    pub reason: String,
    /// How long to wait for in-flight writers to finish. When it passes the
    /// pause proceeds anyway and [`PauseGuard::acknowledged`] is `false`.
    pub ack_timeout: Duration,
    /// How long the pause is meant to last at most (default 300 s). It also
    /// bounds the wait for another pause to end first, and
    /// [`PauseGuard::overdue`] reports it. Writers bound their own wait with
    /// [`WriterOptions::max_wait`].
    pub max_pause: Duration,
}

impl Default for PauseOptions {
    fn default() -> Self {
        Self {
            reason: "sync".into(),
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            max_pause: DEFAULT_MAX_PAUSE,
        }
    }
}

/// How a writer enters the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterOptions {
    /// The writer's name, recorded in its window (e.g. `"indexer"`).
    pub name: String,
    /// How long to wait for a pause to end before writing anyway (default
    /// 300 s); then [`WriterGuard::pause_exceeded`] is `true`.
    pub max_wait: Duration,
    /// The files or folders this writer writes, recorded in its window
    /// (more can be added with [`WriterGuard::wrote`]). Declaring them lets
    /// the filter attribute only those paths to the writer; with none,
    /// every change during the window is attributed to it.
    pub paths: Vec<PathBuf>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            name: "writer".into(),
            max_wait: DEFAULT_MAX_PAUSE,
            paths: Vec::new(),
        }
    }
}

/// The content of the pause file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PauseInfo {
    /// The pausing (sync) process.
    pub pid: u32,
    /// When the pause began (`None` if the line is not a timestamp).
    pub at: Option<DateTime<Utc>>,
    /// Why.
    pub reason: String,
}

impl PauseInfo {
    /// The three lines of the pause file.
    fn render(&self) -> String {
        let at = self
            .at
            .map_or_else(String::new, |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        let reason = self.reason.replace(['\n', '\r'], " ");
        format!("{}\n{at}\n{reason}\n", self.pid)
    }

    /// Parses the seed's format: pid, timestamp (RFC 3339 or Unix
    /// seconds), reason. Only the pid line is required.
    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("").trim();
        let pid = first
            .parse::<u32>()
            .map_err(|_| format!("first line {first:?} is not a process id"))?;
        let at = lines.next().map(str::trim).and_then(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&Utc))
                .ok()
                .or_else(|| {
                    t.parse::<i64>()
                        .ok()
                        .and_then(|s| DateTime::from_timestamp(s, 0))
                })
        });
        let reason = lines.collect::<Vec<_>>().join(" ").trim().to_owned();
        Ok(Self { pid, at, reason })
    }

    /// How long the pause has lasted (zero when unknown).
    pub fn paused_for(&self) -> Duration {
        self.at
            .and_then(|t| (Utc::now() - t).to_std().ok())
            .unwrap_or(Duration::ZERO)
    }
}

/// What [`PauseGate::status`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PauseStatus {
    /// No pause: writers go ahead.
    Running,
    /// A live pause is in effect.
    Paused {
        /// The pause file's content (`None` if someone overwrote it with
        /// something unreadable).
        info: Option<PauseInfo>,
    },
    /// A pause file was left behind by a pause that is gone (its process
    /// died); it has been removed.
    Stale {
        /// The file's content, when readable.
        info: Option<PauseInfo>,
        /// Why it is stale.
        why: String,
    },
}

/// The pause gate of one state folder.
///
/// Writers hold a shared `flock` on `<state>/writers.lock` while they write;
/// a pause holds it exclusively, so taking it both signals the pause and
/// waits for in-flight writers (the acknowledgement). Before that, the
/// pause writes `<state>/sync-pause.lock` (the visible signal, for hosts
/// that only poll a file) so that new writers hold back instead of starving
/// it. The pause file is live only while its pause holds
/// `<state>/pausers.lock`; one left by a killed pause is stale.
#[derive(Debug, Clone)]
pub struct PauseGate {
    state_dir: PathBuf,
}

impl PauseGate {
    /// The gate of `state_dir` (nothing is touched until used).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
        }
    }

    /// `<state>/sync-pause.lock`.
    pub fn pause_file(&self) -> PathBuf {
        self.state_dir.join(PAUSE_FILE)
    }

    fn writers_lock(&self) -> PathBuf {
        self.state_dir.join(WRITERS_LOCK_FILE)
    }

    fn pausers_lock(&self) -> PathBuf {
        self.state_dir.join(PAUSERS_LOCK_FILE)
    }

    /// Pauses writers: writes the pause file, then waits up to
    /// `ack_timeout` for in-flight writers to finish. Waits (up to
    /// `max_pause`) for another pause to end first, else [`Error::Busy`].
    pub fn pause(&self, opts: &PauseOptions) -> Result<PauseGuard> {
        let pausers_path = self.pausers_lock();
        let Some(pausers) = self.lock_until(&pausers_path, deadline_after(opts.max_pause))? else {
            return Err(Error::Busy {
                path: pausers_path,
                holder: None,
            });
        };
        let info = PauseInfo {
            pid: me().pid,
            at: Some(Utc::now()),
            reason: opts.reason.clone(),
        };
        let pause_file = self.pause_file();
        atomic_write(&pause_file, info.render().as_bytes())?;
        let mut guard = PauseGuard {
            pausers: Some(pausers),
            writers: None,
            pause_file,
            info,
            acknowledged: false,
            started: Instant::now(),
            max_pause: opts.max_pause,
        };
        guard.writers = self.lock_until(&self.writers_lock(), deadline_after(opts.ack_timeout))?;
        guard.acknowledged = guard.writers.is_some();
        Ok(guard)
    }

    /// Enters the gate as a writer: waits while a live pause is in effect
    /// (up to `max_wait`, then proceeds with
    /// [`WriterGuard::pause_exceeded`]), then holds the shared lock until
    /// the guard is dropped, which appends its window to `writers.jsonl`.
    pub fn writer(&self, opts: &WriterOptions) -> Result<WriterGuard> {
        let path = self.writers_lock();
        let mut file = open_lock_file(&self.state_dir, &path)?;
        let began = Instant::now();
        let mut backoff = Backoff::new(deadline_after(opts.max_wait), POLL_MAX);
        let mut paused_by = None;
        let locked = loop {
            match self.probe()? {
                PauseStatus::Paused { info } => paused_by = info.map(|i| i.pid).or(paused_by),
                PauseStatus::Running | PauseStatus::Stale { .. } => match file.try_lock_shared() {
                    Ok(()) if is_current(&file, &path)? => break true,
                    // Removed or replaced since we opened it: use the new one.
                    Ok(()) => {
                        file = open_lock_file(&self.state_dir, &path)?;
                        continue;
                    }
                    // A pause releasing, or one cleared by an emergency stop.
                    Err(TryLockError::WouldBlock) => {}
                    Err(TryLockError::Error(e)) => return Err(e).at(&path),
                },
            }
            if !backoff.wait() {
                break false;
            }
        };
        Ok(WriterGuard {
            file: locked.then_some(file),
            state_dir: self.state_dir.clone(),
            name: opts.name.clone(),
            paths: opts.paths.clone(),
            start: Utc::now(),
            waited: began.elapsed(),
            pause_exceeded: !locked,
            paused_by,
            finished: false,
        })
    }

    /// Whether a live pause is in effect now (a stale pause file is
    /// cleared and does not count). When the state cannot be read, a
    /// present pause file counts as a pause.
    pub fn is_paused(&self) -> bool {
        match self.probe() {
            Ok(s) => matches!(s, PauseStatus::Paused { .. }),
            Err(_) => self.pause_file().exists(),
        }
    }

    /// Polls until no live pause is in effect (`Ok(true)`) or `timeout`
    /// passes (`Ok(false)`).
    pub fn wait_until_resumed(&self, timeout: Duration) -> Result<bool> {
        let mut backoff = Backoff::new(deadline_after(timeout), POLL_MAX);
        loop {
            if !matches!(self.probe()?, PauseStatus::Paused { .. }) {
                return Ok(true);
            }
            if !backoff.wait() {
                return Ok(false);
            }
        }
    }

    /// Running, paused, or stale (a stale pause file is removed).
    pub fn status(&self) -> Result<PauseStatus> {
        check_state_dir(&self.state_dir)?;
        self.probe()
    }

    /// Emergency: removes the pause file whoever wrote it and returns what
    /// it said. Waiting writers then go ahead once no process holds the
    /// writers lock exclusively (a live pause keeps its `flock` until it
    /// ends or is killed — stop the holder first).
    pub fn clear(&self) -> Result<Option<PauseInfo>> {
        check_state_dir(&self.state_dir)?;
        let path = self.pause_file();
        let info = read_pause_file(&path)?.and_then(|b| PauseInfo::parse(&b).ok());
        remove_durable(&path)?;
        Ok(info)
    }

    /// Takes `path`'s exclusive lock, polling until `deadline`; `None`
    /// when the deadline passed.
    fn lock_until(&self, path: &Path, deadline: Option<Instant>) -> Result<Option<File>> {
        let mut backoff = Backoff::new(deadline, Duration::from_millis(20));
        let mut file = open_lock_file(&self.state_dir, path)?;
        loop {
            match file.try_lock() {
                Ok(()) if is_current(&file, path)? => return Ok(Some(file)),
                Ok(()) => {
                    file = open_lock_file(&self.state_dir, path)?;
                    continue;
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(e).at(path),
            }
            if !backoff.wait() {
                return Ok(None);
            }
        }
    }

    /// Looks at the pause file and, when present, at whether a pause holds
    /// `pausers.lock`. A stale pause file is removed while the probe holds
    /// `pausers.lock` shared, so no new pause can be writing it meanwhile.
    fn probe(&self) -> Result<PauseStatus> {
        let path = self.pause_file();
        let Some(bytes) = read_pause_file(&path)? else {
            return Ok(PauseStatus::Running);
        };
        let parsed = PauseInfo::parse(&bytes);
        let lock_path = self.pausers_lock();
        let lock = open_lock_file(&self.state_dir, &lock_path)?;
        match lock.try_lock_shared() {
            Err(TryLockError::WouldBlock) => Ok(PauseStatus::Paused { info: parsed.ok() }),
            Err(TryLockError::Error(e)) => Err(e).at(&lock_path),
            // `lock` stays held (shared) until we return: no pause can
            // start writing the file while we look at it and remove it.
            Ok(()) => match read_pause_file(&path)? {
                // A pause ended between our two reads.
                None => Ok(PauseStatus::Running),
                Some(now) => self.clear_stale(&path, PauseInfo::parse(&now)),
            },
        }
    }

    fn clear_stale(
        &self,
        path: &Path,
        parsed: std::result::Result<PauseInfo, String>,
    ) -> Result<PauseStatus> {
        let why = match &parsed {
            Ok(info) => match liveness(info.pid) {
                Liveness::Dead => format!("pausing pid {} is no longer running", info.pid),
                Liveness::Alive { .. } => format!(
                    "no pause holds {} (pid {} is not pausing)",
                    self.pausers_lock().display(),
                    info.pid
                ),
            },
            Err(why) => format!("{}: {why}", path.display()),
        };
        remove_durable(path)?;
        Ok(PauseStatus::Stale {
            info: parsed.ok(),
            why,
        })
    }
}

/// `Some(bytes)` of the pause file, `None` when there is none.
fn read_pause_file(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(21) => Err(Error::NotAFile {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(e).at(path),
    }
}

/// An active pause; ends (removing the pause file) on drop.
#[must_use = "the pause ends when the guard is dropped"]
#[derive(Debug)]
pub struct PauseGuard {
    pausers: Option<File>,
    writers: Option<File>,
    pause_file: PathBuf,
    info: PauseInfo,
    acknowledged: bool,
    started: Instant,
    max_pause: Duration,
}

impl PauseGuard {
    /// Whether every in-flight writer finished within the ack timeout (the
    /// writers lock is held exclusively). `false`: the pause went ahead
    /// while some writer was still writing.
    pub fn acknowledged(&self) -> bool {
        self.acknowledged
    }

    /// What the pause file says.
    pub fn info(&self) -> &PauseInfo {
        &self.info
    }

    /// Whether the pause has lasted longer than its `max_pause`.
    pub fn overdue(&self) -> bool {
        self.started.elapsed() > self.max_pause
    }

    /// Ends the pause, reporting errors (drop does the same silently).
    pub fn release(mut self) -> Result<()> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<()> {
        if self.pausers.is_none() {
            return Ok(());
        }
        // The file goes first: while we still hold the locks no new pause
        // can have replaced it.
        let removed = remove_durable(&self.pause_file).map(drop);
        self.writers = None;
        self.pausers = None;
        removed
    }
}

impl Drop for PauseGuard {
    fn drop(&mut self) {
        let _ = self.release_inner();
    }
}

/// A writer inside the gate; on drop, records its window in
/// `writers.jsonl` and then leaves the gate.
#[must_use = "the writer leaves the gate when the guard is dropped"]
#[derive(Debug)]
pub struct WriterGuard {
    file: Option<File>,
    state_dir: PathBuf,
    name: String,
    paths: Vec<PathBuf>,
    start: DateTime<Utc>,
    waited: Duration,
    pause_exceeded: bool,
    paused_by: Option<u32>,
    finished: bool,
}

impl WriterGuard {
    /// `true` when the writer waited `max_wait` for a pause to end and went
    /// ahead anyway (it then holds no lock). Hosts should log this.
    pub fn pause_exceeded(&self) -> bool {
        self.pause_exceeded
    }

    /// How long the writer waited at the gate.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The pid of the pause the writer waited for, if it saw one.
    pub fn paused_by(&self) -> Option<u32> {
        self.paused_by
    }

    /// When the writer was let in.
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    /// Declares one more file or folder this writer writes (recorded in its
    /// window; see [`WriterOptions::paths`]).
    pub fn wrote(&mut self, path: impl Into<PathBuf>) {
        self.paths.push(path.into());
    }

    /// Leaves the gate, returning the recorded window (drop does the same
    /// but cannot report an error).
    pub fn finish(mut self) -> Result<WriterWindow> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<WriterWindow> {
        self.finished = true;
        let window = WriterWindow {
            name: self.name.clone(),
            pid: me().pid,
            start: self.start,
            end: Utc::now(),
            paths: self
                .paths
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
        };
        // Record before unlocking: once a pause is acknowledged, every
        // window that overlapped it is in the log.
        let appended = append_window(&self.state_dir, &window);
        self.file = None;
        appended.map(|()| window)
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.finish_inner();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_file_round_trips_in_three_lines() {
        let info = PauseInfo {
            pid: 42,
            at: DateTime::from_timestamp(1_750_000_000, 0),
            reason: "sync\nwith newline".into(),
        };
        let text = info.render();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.starts_with("42\n2025-06-15T15:06:40Z\n"), "{text}");
        let back = PauseInfo::parse(text.as_bytes()).unwrap();
        assert_eq!(back.pid, 42);
        assert_eq!(back.at, info.at);
        assert_eq!(back.reason, "sync with newline");
    }

    #[test]
    fn seed_style_and_bad_pause_files() {
        let seed = PauseInfo::parse(b"1234\n1750000000\nmanual sync\n").unwrap();
        assert_eq!(seed.pid, 1234);
        assert_eq!(seed.at, DateTime::from_timestamp(1_750_000_000, 0));
        assert_eq!(PauseInfo::parse(b"77").map(|i| i.pid), Ok(77));
        assert!(PauseInfo::parse(b"").is_err());
        assert!(PauseInfo::parse(b"hello\n").is_err());
        assert!(PauseInfo::parse(&[0xff, 0x00]).is_err());
    }
}
