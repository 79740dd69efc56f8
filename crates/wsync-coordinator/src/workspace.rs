//! Workspace-level operations: `init`, `status`, `emergency-stop`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use wsync_lock::{HolderRecord, LockStatus, PauseGate, PauseStatus, SyncLock};

use crate::Error;
use crate::config::Config;
use crate::conflicts::{self, ConflictRecord};
use crate::engine::SyncEngine;
use crate::fsutil::write_atomic;
use crate::git;
use crate::journal::Journal;
use crate::synclog::{self, LogEntry};

/// How to set a workspace up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitOptions {
    /// Set the remote (`remote.name` in the config, default `origin`) to this URL.
    pub remote_url: Option<String>,
    /// Sync with this remote branch (`remote.branch`).
    pub branch: Option<String>,
}

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitReport {
    /// The state folder.
    pub state_dir: PathBuf,
    /// A git repository was created.
    pub git_initialised: bool,
    /// `config.json` was written with the defaults (it did not exist).
    pub config_created: bool,
    /// The pattern added to `.git/info/exclude`, if one was added.
    pub excluded: Option<String>,
    /// The remote that was added or re-pointed, if any.
    pub remote: Option<String>,
}

/// Sets a workspace up: the state folder, kept out of git; a git repository
/// if there is none; `config.json` with the defaults if missing (an
/// existing one is validated, never overwritten with defaults); the remote.
pub fn init(workspace: &Path, state_dir: &Path, opts: &InitOptions) -> Result<InitReport, Error> {
    std::fs::create_dir_all(state_dir).map_err(|source| Error::Io {
        path: state_dir.to_path_buf(),
        source,
    })?;
    let mut report = InitReport {
        state_dir: state_dir.to_path_buf(),
        git_initialised: false,
        config_created: false,
        excluded: None,
        remote: None,
    };
    let repo = match git2::Repository::open(workspace) {
        Ok(r) => r,
        Err(_) => {
            report.git_initialised = true;
            git2::Repository::init(workspace).map_err(Error::git(workspace, "init"))?
        }
    };
    report.excluded = exclude_state_dir(&repo, workspace, state_dir)?;
    let config_path = Config::path_in(state_dir);
    let mut config = Config::load(state_dir)?;
    let mut save = !config_path.exists();
    report.config_created = save;
    if let Some(b) = &opts.branch {
        config.remote.branch = Some(b.clone());
        save = true;
    }
    if let Some(url) = &opts.remote_url {
        let name = config.remote.name.clone();
        let r = if repo.find_remote(&name).is_ok() {
            repo.remote_set_url(&name, url)
        } else {
            repo.remote(&name, url).map(|_| ())
        };
        r.map_err(Error::git(workspace, format!("set remote {name}")))?;
        report.remote = Some(format!("{name} = {url}"));
    }
    if save {
        config.save(state_dir)?;
    }
    Ok(report)
}

/// Adds the state folder to `.git/info/exclude` when it lies inside the
/// work tree. Returns the pattern when the file changed.
pub(crate) fn exclude_state_dir(
    repo: &git2::Repository,
    workspace: &Path,
    state_dir: &Path,
) -> Result<Option<String>, Error> {
    let ws = workspace
        .canonicalize()
        .unwrap_or_else(|_| workspace.to_path_buf());
    let st = state_dir
        .canonicalize()
        .unwrap_or_else(|_| state_dir.to_path_buf());
    let Ok(rel) = st.strip_prefix(&ws) else {
        return Ok(None);
    };
    if rel.as_os_str().is_empty() {
        return Ok(None);
    }
    let pattern = format!("/{}/", rel.to_string_lossy().trim_end_matches('/'));
    let path = repo.path().join("info").join("exclude");
    let existing = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(Error::Io { path, source }),
    };
    if existing.lines().any(|l| l.trim() == pattern) {
        return Ok(None);
    }
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&pattern);
    text.push('\n');
    write_atomic(&path, text.as_bytes())?;
    Ok(Some(pattern))
}

/// The lock as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LockView {
    /// Nobody syncs.
    Free,
    /// A sync runs.
    Held {
        /// Who.
        holder: HolderRecord,
        /// Held past `lock.max_hold_secs`.
        overdue: bool,
    },
    /// A record was left by a dead holder.
    Stale {
        /// Who it was.
        holder: Option<HolderRecord>,
        /// Why it is stale.
        why: String,
    },
}

/// Everything `wsync status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The workspace.
    pub workspace: PathBuf,
    /// The state folder.
    pub state_dir: PathBuf,
    /// Automatic sync enabled.
    pub enabled: bool,
    /// Minutes between scheduled syncs.
    pub interval_minutes: u64,
    /// The sync lock.
    pub lock: LockView,
    /// The pause gate.
    pub pause: PauseStatus,
    /// The newest successful sync.
    pub last_sync: Option<LogEntry>,
    /// The newest run of any result.
    pub last_run: Option<LogEntry>,
    /// Pending user changes (would be committed).
    pub pending_user: usize,
    /// Pending system changes (never committed).
    pub pending_system: usize,
    /// Conflicts that need a person.
    pub conflicts: Vec<ConflictRecord>,
    /// The local branch.
    pub branch: Option<String>,
    /// `remote/branch`.
    pub upstream: Option<String>,
    /// Local commits the remote lacks (as of the last fetch).
    pub ahead: Option<usize>,
    /// Remote commits not integrated yet (as of the last fetch).
    pub behind: Option<usize>,
    /// A run that was killed and will be recovered by the next sync.
    pub interrupted: Option<Journal>,
    /// Why the git part is unavailable (not a repository, detached HEAD…).
    pub git_problem: Option<String>,
}

/// Gathers the status of a workspace (read-only; takes no lock).
pub fn status(engine: &SyncEngine) -> Result<StatusReport, Error> {
    let ws = engine.workspace();
    let state = engine.state_dir();
    let config = engine.config();
    let lock = match SyncLock::new(state).status() {
        Ok(LockStatus::Free) | Err(_) => LockView::Free,
        Ok(LockStatus::Held(h)) => LockView::Held {
            overdue: h.is_overdue(),
            holder: h,
        },
        Ok(LockStatus::Stale { record, why }) => LockView::Stale {
            holder: record,
            why,
        },
    };
    let pause = PauseGate::new(state).status()?;
    let log = synclog::read(state)?;
    let mut report = StatusReport {
        workspace: ws.to_path_buf(),
        state_dir: state.to_path_buf(),
        enabled: config.enabled,
        interval_minutes: config.interval_minutes,
        lock,
        pause,
        last_sync: log.iter().rev().find(|e| e.result == "ok").cloned(),
        last_run: log.last().cloned(),
        pending_user: 0,
        pending_system: 0,
        conflicts: conflicts::open_conflicts(ws, state)?,
        branch: None,
        upstream: None,
        ahead: None,
        behind: None,
        interrupted: Journal::read(state)?,
        git_problem: None,
    };
    match engine.pending_changes() {
        Ok((user, system)) => {
            report.pending_user = user.len();
            report.pending_system = system.len();
        }
        Err(e) => report.git_problem = Some(e.to_string()),
    }
    if let Ok(repo) = git::open(ws) {
        match git::preflight(
            &repo,
            ws,
            &config.remote.name,
            config.remote.branch.as_deref(),
        ) {
            Ok(target) => {
                if let Some((a, b)) = git::ahead_behind(&repo, &target) {
                    report.ahead = Some(a);
                    report.behind = Some(b);
                }
                report.upstream = Some(format!("{}/{}", target.remote, target.remote_branch));
                report.branch = Some(target.branch);
            }
            Err(e) => report.git_problem = Some(e.to_string()),
        }
    }
    Ok(report)
}

/// What `emergency_stop` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopReport {
    /// The sync process that was stopped.
    pub stopped_pid: Option<u32>,
    /// It needed SIGKILL after the grace period.
    pub killed: bool,
    /// A lock holder that was left alone because it is not a wsync process.
    pub not_wsync: Option<u32>,
    /// A pause that was cleared.
    pub pause_cleared: bool,
    /// `enabled` was switched off in the config.
    pub disabled: bool,
}

/// Stops a running sync (only a live process whose name or command line is
/// wsync's: SIGTERM, then SIGKILL after `grace`), clears the pause, and
/// turns automatic sync off (`enabled = false`). The next sync recovers
/// the killed run from its journal.
pub fn emergency_stop(state_dir: &Path, grace: Duration) -> Result<StopReport, Error> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let mut report = StopReport {
        stopped_pid: None,
        killed: false,
        not_wsync: None,
        pause_cleared: false,
        disabled: false,
    };
    if let Ok(LockStatus::Held(holder)) = SyncLock::new(state_dir).status() {
        let pid = holder.pid;
        if pid != std::process::id() {
            if is_wsync_process(pid) {
                let target = Pid::from_raw(i32::try_from(pid).map_err(|_| Error::Stop {
                    pid,
                    why: "pid out of range".into(),
                })?);
                kill(target, Signal::SIGTERM).map_err(|e| Error::Stop {
                    pid,
                    why: format!("SIGTERM: {e}"),
                })?;
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && process_alive(pid) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if process_alive(pid) {
                    let _ = kill(target, Signal::SIGKILL);
                    report.killed = true;
                    let until = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < until && process_alive(pid) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                report.stopped_pid = Some(pid);
                // Reading the status clears the dead holder's record.
                let _ = SyncLock::new(state_dir).status();
            } else {
                report.not_wsync = Some(pid);
            }
        }
    }
    report.pause_cleared = PauseGate::new(state_dir).clear()?.is_some();
    let config = Config::load(state_dir)?;
    if config.enabled {
        let mut c = config;
        c.enabled = false;
        c.save(state_dir)?;
        report.disabled = true;
    }
    Ok(report)
}

fn process_alive(pid: u32) -> bool {
    // A zombie (exited, not reaped yet) counts as gone.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
    match stat {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` is a live process whose executable name or first argument
/// is wsync's.
pub fn is_wsync_process(pid: u32) -> bool {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
    let mut sys = System::new();
    let spid = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[spid]),
        true,
        ProcessRefreshKind::nothing()
            .with_cmd(UpdateKind::Always)
            .with_exe(UpdateKind::Always),
    );
    let Some(p) = sys.process(spid) else {
        return false;
    };
    let is_wsync = |s: &std::ffi::OsStr| {
        Path::new(s)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("wsync"))
    };
    is_wsync(p.name())
        || p.exe().is_some_and(|e| is_wsync(e.as_os_str()))
        || p.cmd().first().is_some_and(|a| is_wsync(a))
}
