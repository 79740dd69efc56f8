//! Layer 2: who made the change — writer windows and open files.
//!
//! - **Writer windows**: wsync-lock's writer guard appends one JSON line per
//!   guarded write to `<state>/writers.jsonl` (`{"name", "pid", "start",
//!   "end"}`, RFC 3339 times or epoch seconds). A change whose mtime lies in
//!   `[start - slack, end + slack]` is system. A line without `end` is a
//!   window still open while its pid is alive. The file is parsed
//!   tolerantly (bad lines are skipped) and re-read only when its size or
//!   mtime changes.
//! - **Open files**: once per batch, `/proc` is listed; each process's
//!   command line (read with `sysinfo`, only the listed pids that are not
//!   cached, all of them in one refresh; `Filter::prepare` does it ahead)
//!   is matched against the system-process regexes, the per-pid answer
//!   cached for a TTL (30 s, and only while the pid's start time is the
//!   same; pids that are gone are dropped); then only the system
//!   processes' `/proc/PID/fd` links are compared with the `ANALYZE`
//!   candidates. Processes we may not
//!   inspect, and systems without `/proc`, make the answer "unknown", never
//!   an error.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, TimeZone as _, Utc};
use regex::Regex;
use serde::Serialize;

use crate::{Change, ChangeKind, Error, FilterConfig};

/// The default system-process patterns (the seed's autonomous system).
pub const DEFAULT_SYSTEM_PROCESS_PATTERNS: &[&str] =
    &["claude-autonomous", "claude-[A-Za-z0-9_]+-monitor"];

/// A monotonic time source for the process cache's TTL.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// One recorded system write (a line of `<state>/writers.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriterWindow {
    /// The writer's name (`wsync guard --name`).
    pub name: String,
    /// The writer's pid.
    pub pid: u32,
    /// When it started writing.
    pub start: DateTime<Utc>,
    /// When it finished (for a still-open window of a live pid: now).
    pub end: DateTime<Utc>,
    /// 1-based line in `writers.jsonl`.
    pub line: usize,
    /// The paths the writer declared (absolute, or relative to the
    /// workspace); empty when it declared none.
    pub paths: Vec<PathBuf>,
}

impl WriterWindow {
    /// Whether this window can explain a change to `rel` (workspace-relative,
    /// absolute `abs`): always when the writer declared no paths, else only
    /// for a declared file or anything under a declared folder.
    pub fn covers(&self, rel: &Path, abs: &Path) -> bool {
        self.paths.is_empty()
            || self.paths.iter().any(|p| {
                if p.is_absolute() {
                    abs.starts_with(p)
                } else {
                    rel.starts_with(p)
                }
            })
    }
}

/// Parses `writers.jsonl` text tolerantly: lines that are not JSON objects
/// with a usable `start` are skipped. `now` closes windows without `end`
/// whose pid `alive` says is running; those of dead pids close at `start`.
pub fn parse_writer_windows(
    text: &str,
    now: DateTime<Utc>,
    alive: impl Fn(u32) -> bool,
) -> Vec<WriterWindow> {
    let mut out: Vec<WriterWindow> = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            continue;
        };
        let Some(start) = obj.get("start").and_then(parse_time) else {
            continue;
        };
        let name = obj
            .get("name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let pid = obj
            .get("pid")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0);
        let end = match obj.get("end").and_then(parse_time) {
            Some(end) => end.max(start),
            None if pid != 0 && alive(pid) => now.max(start),
            None => start,
        };
        let paths = obj
            .get("paths")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(serde_json::Value::as_str)
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        // A later record of the same write (pid + start) supersedes it.
        out.retain(|w| !(w.pid == pid && w.start == start));
        out.push(WriterWindow {
            name,
            pid,
            start,
            end,
            line: idx + 1,
            paths,
        });
    }
    out
}

fn parse_time(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    match v {
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        serde_json::Value::Number(n) => {
            let f = n.as_f64()?;
            // Milliseconds if it is too big to be seconds.
            let secs = if f > 1e11 { f / 1000.0 } else { f };
            if !secs.is_finite() || secs < 0.0 {
                return None;
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (whole, nanos) = (secs.trunc() as i64, (secs.fract() * 1e9) as u32);
            Utc.timestamp_opt(whole, nanos).single()
        }
        _ => None,
    }
}

/// What the process layer found for one batch.
#[derive(Debug, Default)]
pub(crate) struct Evidence {
    windows: Arc<Vec<WriterWindow>>,
    holders: HashMap<PathBuf, Vec<u32>>,
    scan_note: Option<String>,
}

/// The process layer's opinion of one change.
#[derive(Debug)]
pub(crate) enum Judgement {
    System { rule: String, reason: String },
    NotSystem(Option<String>),
    Unknown(Option<String>),
}

#[derive(Debug)]
struct PidInfo {
    at: Instant,
    /// The process's start time (`/proc/PID/stat`): a reused pid is
    /// another process, whatever the cache says.
    start: Option<u64>,
    pattern: Option<usize>,
    cmd: String,
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`; the command name before it may hold spaces and
/// parentheses, so fields are counted after the last `)`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(19)?.parse().ok()
}

struct PidCache {
    sys: sysinfo::System,
    pids: HashMap<u32, PidInfo>,
}

impl fmt::Debug for PidCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PidCache")
            .field("pids", &self.pids)
            .finish()
    }
}

#[derive(Debug, Default)]
struct WindowsCache {
    key: Option<(u64, SystemTime)>,
    text: String,
    parsed: Arc<Vec<WriterWindow>>,
    /// Some line had no `end`: re-resolve against "now" on every read.
    has_open: bool,
}

/// Layer 2 state: patterns, caches and the clock.
#[derive(Debug)]
pub(crate) struct ProcessLayer {
    workspace: PathBuf,
    writers_file: PathBuf,
    slack: Duration,
    scan: bool,
    patterns: Vec<Regex>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    pids: Mutex<PidCache>,
    windows: Mutex<WindowsCache>,
}

impl ProcessLayer {
    pub(crate) fn new(
        workspace: &Path,
        state_dir: &Path,
        config: &FilterConfig,
    ) -> Result<Self, Error> {
        let patterns = config
            .system_process_patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|source| Error::ProcessPattern {
                    pattern: p.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            workspace: workspace.to_path_buf(),
            writers_file: state_dir.join("writers.jsonl"),
            slack: config.writer_window_slack,
            scan: config.scan_open_files,
            patterns,
            ttl: config.process_cache_ttl,
            clock: Arc::new(SystemClock),
            pids: Mutex::new(PidCache {
                sys: sysinfo::System::new(),
                pids: HashMap::new(),
            }),
            windows: Mutex::new(WindowsCache::default()),
        })
    }

    pub(crate) fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.clock = clock;
    }

    /// The current writer windows (re-reading and re-parsing the file only
    /// when its size or mtime changed).
    pub(crate) fn windows(&self) -> Arc<Vec<WriterWindow>> {
        let Ok(mut cache) = self.windows.lock() else {
            return Arc::default();
        };
        let key = std::fs::metadata(&self.writers_file)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)));
        if key.is_none() {
            *cache = WindowsCache::default();
            return Arc::default();
        }
        let alive = |pid: u32| Path::new("/proc").join(pid.to_string()).exists();
        if key != cache.key {
            cache.text = std::fs::read_to_string(&self.writers_file).unwrap_or_default();
            cache.key = key;
            cache.has_open = cache.text.lines().any(|l| !l.contains("\"end\""));
            cache.parsed = Arc::new(parse_writer_windows(&cache.text, Utc::now(), alive));
        } else if cache.has_open {
            cache.parsed = Arc::new(parse_writer_windows(&cache.text, Utc::now(), alive));
        }
        Arc::clone(&cache.parsed)
    }

    /// Fills the pid cache with every process's command line (see
    /// [`crate::Filter::prepare`]).
    pub(crate) fn prepare(&self) {
        if self.scan
            && let Some(pids) = list_pids(Path::new("/proc"))
        {
            let _ = self.system_matches(&pids);
        }
    }

    /// Reads the windows and scans `/proc` once for these candidates.
    pub(crate) fn gather(&self, candidates: &[&Change]) -> Evidence {
        if candidates.is_empty() {
            return Evidence::default();
        }
        let windows = self.windows();
        let mut evidence = Evidence {
            windows,
            ..Evidence::default()
        };
        if self.scan {
            let targets: HashSet<PathBuf> = candidates
                .iter()
                .filter(|c| c.kind != ChangeKind::Deleted)
                .map(|c| self.workspace.join(&c.path))
                .collect();
            if !targets.is_empty() {
                let (system, unknown) = match list_pids(Path::new("/proc")) {
                    Some(pids) => self.system_pids(&pids),
                    None => {
                        evidence.scan_note =
                            Some("open-file scan unavailable (no /proc): unknown".into());
                        return evidence;
                    }
                };
                // Only system processes matter, so only their descriptors
                // are read: the per-path cost is a /proc listing plus the
                // fds of a few processes, not of every process.
                let scan = scan_fds(Path::new("/proc"), system.iter().copied(), &targets);
                evidence.holders = scan.holders;
                let blind = scan.unreadable + unknown;
                if blind > 0 {
                    evidence.scan_note = Some(format!(
                        "{blind} process(es) could not be inspected: unknown for those"
                    ));
                }
            }
        }
        evidence
    }

    pub(crate) fn judge(&self, change: &Change, evidence: &Evidence) -> Judgement {
        let abs = self.workspace.join(&change.path);
        let mtime = change.mtime.or_else(|| {
            std::fs::symlink_metadata(&abs)
                .ok()
                .and_then(|m| m.modified().ok())
        });
        if let Some(t) = mtime {
            let t: DateTime<Utc> = t.into();
            let slack = chrono::Duration::from_std(self.slack).unwrap_or_default();
            if let Some(w) = evidence.windows.iter().find(|w| {
                w.start - slack <= t && t <= w.end + slack && w.covers(&change.path, &abs)
            }) {
                return Judgement::System {
                    rule: format!("{}:{}", self.writers_file.display(), w.line),
                    reason: format!(
                        "modified at {} inside the window of system writer {:?} (pid {}, {} .. {})",
                        t.to_rfc3339(),
                        w.name,
                        w.pid,
                        w.start.to_rfc3339(),
                        w.end.to_rfc3339()
                    ),
                };
            }
        }
        let Some(pids) = evidence.holders.get(&abs) else {
            return match &evidence.scan_note {
                Some(note) => Judgement::Unknown(Some(format!("no writer window; {note}"))),
                None if self.scan => Judgement::NotSystem(Some(
                    "no writer window and no process holds it open".into(),
                )),
                None => Judgement::NotSystem(Some("no writer window".into())),
            };
        };
        let mut others = Vec::new();
        for &pid in pids {
            match self.system_match(pid) {
                Some((Some(idx), cmd)) => {
                    let pattern = self.patterns.get(idx).map_or("?", Regex::as_str);
                    return Judgement::System {
                        rule: format!("process:{pattern}"),
                        reason: format!(
                            "held open by pid {pid} ({cmd:?}) matching system process pattern {pattern:?}"
                        ),
                    };
                }
                Some((None, cmd)) => others.push(format!("{pid} ({cmd:?})")),
                None => others.push(format!("{pid} (command line unknown)")),
            }
        }
        Judgement::NotSystem(Some(format!(
            "held open by non-system process(es) {}",
            others.join(", ")
        )))
    }

    /// The listed pids whose command line matches a system pattern, and how
    /// many could not be inspected. Each pid's answer is cached for the TTL;
    /// entries of pids that are gone are dropped.
    fn system_pids(&self, pids: &[u32]) -> (Vec<u32>, usize) {
        let mut system = Vec::new();
        let mut unknown = 0;
        for (&pid, found) in pids.iter().zip(self.system_matches(pids)) {
            match found {
                Some((Some(_), _)) => system.push(pid),
                Some((None, _)) => {}
                // Exited meanwhile, or not ours to read.
                None if Path::new("/proc").join(pid.to_string()).exists() => unknown += 1,
                None => {}
            }
        }
        if let Ok(mut cache) = self.pids.lock() {
            let live: HashSet<u32> = pids.iter().copied().collect();
            cache.pids.retain(|pid, _| live.contains(pid));
        }
        (system, unknown)
    }

    /// Whether `pid`'s command line matches a system pattern (the index),
    /// and the command line; `None` if it cannot be read.
    fn system_match(&self, pid: u32) -> Option<(Option<usize>, String)> {
        self.system_matches(&[pid]).pop().flatten()
    }

    /// [`Self::system_match`] for many pids: the ones not cached (or
    /// cached for an earlier process with that pid) are read through one
    /// `sysinfo` refresh, which lists `/proc` once whatever their number.
    fn system_matches(&self, pids: &[u32]) -> Vec<Option<(Option<usize>, String)>> {
        let now = self.clock.now();
        let Ok(mut cache) = self.pids.lock() else {
            return vec![None; pids.len()];
        };
        let mut out = vec![None; pids.len()];
        let mut stale = Vec::new();
        for (i, (slot, &pid)) in out.iter_mut().zip(pids).enumerate() {
            let start = start_time(pid);
            match cache.pids.get(&pid) {
                Some(info)
                    if now.saturating_duration_since(info.at) < self.ttl && info.start == start =>
                {
                    *slot = Some((info.pattern, info.cmd.clone()));
                }
                _ => stale.push((i, pid, start)),
            }
        }
        if stale.is_empty() {
            return out;
        }
        let spids: Vec<sysinfo::Pid> = stale
            .iter()
            .map(|&(_, pid, _)| sysinfo::Pid::from_u32(pid))
            .collect();
        cache.sys.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&spids),
            true,
            sysinfo::ProcessRefreshKind::nothing()
                .without_tasks()
                .with_cmd(sysinfo::UpdateKind::Always),
        );
        for (i, pid, start) in stale {
            let found = self.read_match(&mut cache, pid, start, now);
            if let Some(slot) = out.get_mut(i) {
                *slot = found;
            }
        }
        out
    }

    /// The command line `sysinfo` (just refreshed) has for `pid`, matched
    /// and cached.
    fn read_match(
        &self,
        cache: &mut PidCache,
        pid: u32,
        start: Option<u64>,
        now: Instant,
    ) -> Option<(Option<usize>, String)> {
        let spid = sysinfo::Pid::from_u32(pid);
        let cmd = cache.sys.process(spid).map(|p| {
            let parts: Vec<String> = p
                .cmd()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            if parts.is_empty() {
                p.name().to_string_lossy().into_owned()
            } else {
                parts.join(" ")
            }
        })?;
        let pattern = self.patterns.iter().position(|re| re.is_match(&cmd));
        cache.pids.insert(
            pid,
            PidInfo {
                at: now,
                start,
                pattern,
                cmd: cmd.clone(),
            },
        );
        Some((pattern, cmd))
    }

    /// How many pids are cached (for tests of the TTL).
    #[cfg(test)]
    fn cached(&self, pid: u32) -> Option<Instant> {
        self.pids.lock().ok()?.pids.get(&pid).map(|i| i.at)
    }
}

/// The result of one `/proc` scan.
#[derive(Debug, Default)]
pub struct OpenFileScan {
    /// Candidate path → pids holding it open (ascending).
    pub holders: HashMap<PathBuf, Vec<u32>>,
    /// Processes whose `fd` folder could not be read (other users').
    pub unreadable: usize,
    /// Whether `proc_root` could be listed at all.
    pub available: bool,
}

/// The numeric entries of `proc_root` except this process; `None` if it
/// cannot be listed.
fn list_pids(proc_root: &Path) -> Option<Vec<u32>> {
    let me = std::process::id();
    let entries = std::fs::read_dir(proc_root).ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
            .filter(|pid| *pid != me)
            .collect(),
    )
}

/// Scans `proc_root/*/fd` of every process (except this one) for
/// descriptors linking to any of `targets` (absolute paths). Never fails:
/// what cannot be read is counted in `unreadable`.
pub fn scan_open_files(proc_root: &Path, targets: &HashSet<PathBuf>) -> OpenFileScan {
    match list_pids(proc_root) {
        Some(pids) => scan_fds(proc_root, pids.into_iter(), targets),
        None => OpenFileScan::default(),
    }
}

/// Scans `proc_root/PID/fd` of the given pids for links to `targets`.
fn scan_fds(
    proc_root: &Path,
    pids: impl Iterator<Item = u32>,
    targets: &HashSet<PathBuf>,
) -> OpenFileScan {
    let mut scan = OpenFileScan {
        available: true,
        ..OpenFileScan::default()
    };
    for pid in pids {
        let fd_dir = proc_root.join(pid.to_string()).join("fd");
        let fds = match std::fs::read_dir(&fd_dir) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                scan.unreadable += 1;
                continue;
            }
            Err(_) => continue, // exited meanwhile, or a kernel thread
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && targets.contains(&link)
            {
                let pids = scan.holders.entry(link).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    for pids in scan.holders.values_mut() {
        pids.sort_unstable();
    }
    scan
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn declared_paths_scope_a_window() {
        let now = Utc::now();
        let text = format!(
            "{{\"name\":\"a\",\"pid\":1,\"start\":\"{t}\",\"end\":\"{t}\",\
             \"paths\":[\"/ws/agent\",\"status.json\"]}}\n\
             {{\"name\":\"b\",\"pid\":2,\"start\":\"{t}\",\"end\":\"{t}\"}}\n",
            t = now.to_rfc3339()
        );
        let w = parse_writer_windows(&text, now, |_| false);
        let ws = Path::new("/ws");
        let covers = |w: &WriterWindow, rel: &str| w.covers(Path::new(rel), &ws.join(rel));
        assert!(covers(&w[0], "agent/state.txt"), "under a declared folder");
        assert!(covers(&w[0], "status.json"), "a declared relative file");
        assert!(!covers(&w[0], "src/main.rs"), "not declared");
        assert!(
            !covers(&w[0], "agentx/file"),
            "component-wise, not by prefix"
        );
        assert!(covers(&w[1], "src/main.rs"), "no paths: the whole window");
    }

    #[test]
    fn parses_tolerantly() {
        let text = concat!(
            "{\"name\":\"a\",\"pid\":10,\"start\":\"2026-01-01T00:00:00Z\",\"end\":\"2026-01-01T00:00:05Z\"}\n",
            "garbage\n",
            "{\"name\":\"b\",\"pid\":11,\"start\":1767225600.5}\n",
            "{\"name\":\"c\",\"pid\":12,\"start\":1767225600000,\"end\":1767225601000}\n",
            "[1,2]\n",
        );
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap();
        let w = parse_writer_windows(text, now, |pid| pid == 11);
        assert_eq!(w.len(), 3);
        assert_eq!(w[0].name, "a");
        assert_eq!(w[0].line, 1);
        assert_eq!(w[1].end, now, "open window of a live pid lasts until now");
        assert_eq!(
            w[2].start,
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
        );
        let dead = parse_writer_windows(text, now, |_| false);
        assert_eq!(dead[1].end, dead[1].start);
    }

    #[test]
    fn later_record_supersedes_open_one() {
        let text = concat!(
            "{\"name\":\"a\",\"pid\":10,\"start\":\"2026-01-01T00:00:00Z\"}\n",
            "{\"name\":\"a\",\"pid\":10,\"start\":\"2026-01-01T00:00:00Z\",\"end\":\"2026-01-01T00:00:09Z\"}\n",
        );
        let w = parse_writer_windows(text, Utc::now(), |_| true);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].line, 2);
    }

    #[derive(Debug)]
    struct Manual(Mutex<Instant>);
    impl Clock for Manual {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    #[test]
    fn pid_cache_honours_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let mut layer =
            ProcessLayer::new(dir.path(), dir.path(), &FilterConfig::default()).unwrap();
        let start = Instant::now();
        let clock = Arc::new(Manual(Mutex::new(start)));
        layer.set_clock(clock.clone());
        let me = std::process::id();
        let (pattern, cmd) = layer.system_match(me).unwrap();
        assert!(pattern.is_none());
        assert!(!cmd.is_empty());
        assert_eq!(layer.cached(me), Some(start));
        *clock.0.lock().unwrap() = start + Duration::from_secs(29);
        layer.system_match(me).unwrap();
        assert_eq!(layer.cached(me), Some(start), "within the TTL: cached");
        *clock.0.lock().unwrap() = start + Duration::from_secs(31);
        layer.system_match(me).unwrap();
        assert_eq!(
            layer.cached(me),
            Some(start + Duration::from_secs(31)),
            "after the TTL: refreshed"
        );
    }

    #[test]
    fn a_reused_pid_is_not_answered_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut layer =
            ProcessLayer::new(dir.path(), dir.path(), &FilterConfig::default()).unwrap();
        let t0 = Instant::now();
        let clock = Arc::new(Manual(Mutex::new(t0)));
        layer.set_clock(clock.clone());
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        layer.system_match(me).unwrap();
        // Pretend the cached answer was about an earlier process with the
        // same pid: within the TTL, it must still be looked up again.
        layer.pids.lock().unwrap().pids.get_mut(&me).unwrap().start = Some(1);
        *clock.0.lock().unwrap() = t0 + Duration::from_secs(1);
        layer.system_match(me).unwrap();
        assert_eq!(layer.cached(me), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            layer.pids.lock().unwrap().pids.get(&me).unwrap().start,
            start_time(me)
        );
    }

    #[test]
    fn many_pids_are_matched_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is not yet `sleep 30`.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read(&cmdline).unwrap_or_default() != b"sleep\x0030\x00" {
            assert!(Instant::now() < deadline, "sleep never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let config = FilterConfig {
            system_process_patterns: vec!["^sleep 30$".into()],
            ..FilterConfig::default()
        };
        let layer = ProcessLayer::new(dir.path(), dir.path(), &config).unwrap();
        let me = std::process::id();
        let gone = u32::MAX - 7; // no such pid
        let pids = [me, child.id(), gone];
        let found = layer.system_matches(&pids);
        assert_eq!(found.len(), 3);
        let mine = found[0].as_ref().unwrap();
        assert!(mine.0.is_none(), "this test is not a system process");
        let sleeper = found[1].as_ref().unwrap();
        assert_eq!(sleeper.0, Some(0), "{sleeper:?}");
        assert_eq!(sleeper.1, "sleep 30");
        assert!(found[2].is_none(), "a pid that does not exist");
        // Answers agree with the one-pid path and come from the cache.
        assert_eq!(layer.system_match(child.id()), found[1]);
        assert!(layer.cached(child.id()).is_some());
        let (system, unknown) = layer.system_pids(&pids);
        assert_eq!(system, vec![child.id()]);
        assert_eq!(unknown, 0);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn prepare_reads_every_command_line_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("31")
            .spawn()
            .unwrap();
        let on = ProcessLayer::new(dir.path(), dir.path(), &FilterConfig::default()).unwrap();
        let off = ProcessLayer::new(
            dir.path(),
            dir.path(),
            &FilterConfig {
                scan_open_files: false,
                ..FilterConfig::default()
            },
        )
        .unwrap();
        on.prepare();
        off.prepare();
        assert!(on.cached(child.id()).is_some(), "cached ahead of a batch");
        assert!(off.cached(child.id()).is_none(), "no scan, nothing read");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn missing_proc_is_unknown_not_error() {
        let targets: HashSet<PathBuf> = [PathBuf::from("/x")].into_iter().collect();
        let scan = scan_open_files(Path::new("/nonexistent-proc"), &targets);
        assert!(!scan.available);
        assert!(scan.holders.is_empty());
    }
}
