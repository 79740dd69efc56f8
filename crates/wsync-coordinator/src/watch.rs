//! Intelligent auto-sync (`wsync watch`): filesystem events, debounced per
//! path class, classified by the filter; user changes enqueue a
//! high-priority `watch` sync, system changes are dropped.
//!
//! - Events come from `notify` through `notify-debouncer-full` (rename
//!   pairing, overflow rescan). Every folder of the workspace except `.git`,
//!   the state folder and git-ignored folders gets its own non-recursive
//!   watch; new folders are added as they appear.
//! - Each path settles on its own: quiet for its class's debounce (code
//!   5 s, default 30 s, system 300 s) or at the latest `max_wait_ms` after
//!   its first event ([`Settler`]), so a file rewritten every second never
//!   starves a user edit beside it.
//! - A settled batch is ignored while a sync holds the lock (postponed until
//!   it is released); then every path that equals HEAD and the index (git's
//!   own status, via its stat cache) is dropped — this is what makes wsync's
//!   own checkout and merge writes invisible — and the rest goes through
//!   [`wsync_filter::Filter::classify_all`].
//! - Event overflow triggers a full status reconcile; reaching the inotify
//!   watch limit falls back to polling with a warning. The watcher never
//!   exits on its own.
//!
//! ```no_run
//! use wsync_coordinator::watch::{WatchConfig, WatchOptions, Watcher};
//!
//! let opts = WatchOptions {
//!     workspace: "/home/me/ws".into(),
//!     state_dir: "/home/me/ws/.wsync".into(),
//!     config: WatchConfig::default(),
//!     filters: wsync_coordinator::config::FiltersConfig::default(),
//! };
//! let watcher = Watcher::start(&opts, Box::new(|event| eprintln!("{event:?}")))?;
//! std::thread::sleep(std::time::Duration::from_secs(60));
//! watcher.stop();
//! # Ok::<(), wsync_coordinator::Error>(())
//! ```

mod settle;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{EventKind, MetadataKind, ModifyKind};
use notify::{PollWatcher, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, NoCache, new_debouncer_opt};
use serde::{Deserialize, Serialize};
use wsync_filter::{Change, ChangeKind, Filter, Verdict};

pub use settle::{PathClass, Settler, Timings};

use crate::Error;
use crate::queue::{Priority, Queue, Result, SyncRequest, store};

/// Watch settings (`watch` in `config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Whether the daemon runs the watcher.
    pub enabled: bool,
    /// Quiet time before a code file's change is acted on, milliseconds.
    pub code_debounce_ms: u64,
    /// Quiet time for other files, milliseconds.
    pub default_debounce_ms: u64,
    /// Quiet time for paths the rules block, milliseconds.
    pub system_debounce_ms: u64,
    /// A path is acted on at the latest this long after its first event,
    /// milliseconds (never before its own debounce).
    pub max_wait_ms: u64,
    /// File extensions (without the dot) that count as code.
    pub code_extensions: Vec<String>,
    /// Poll instead of using inotify (also the fallback at the watch limit).
    pub poll: bool,
    /// Milliseconds between scans when polling.
    pub poll_interval_ms: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            code_debounce_ms: 5_000,
            default_debounce_ms: 30_000,
            system_debounce_ms: 300_000,
            max_wait_ms: 60_000,
            code_extensions: [
                "rs", "py", "js", "ts", "tsx", "jsx", "sh", "bash", "zsh", "go", "c", "h", "cc",
                "cpp", "hpp", "java", "kt", "rb", "php", "swift", "cs", "lua", "pl", "sql", "toml",
                "yaml", "yml",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            poll: false,
            poll_interval_ms: 2_000,
        }
    }
}

impl WatchConfig {
    /// The debounce timings.
    pub fn timings(&self) -> Timings {
        Timings {
            code: Duration::from_millis(self.code_debounce_ms),
            default: Duration::from_millis(self.default_debounce_ms),
            system: Duration::from_millis(self.system_debounce_ms),
            max_wait: Duration::from_millis(self.max_wait_ms),
        }
    }
}

/// What the watcher needs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The workspace root.
    pub workspace: PathBuf,
    /// The state folder (never watched).
    pub state_dir: PathBuf,
    /// Timings.
    pub config: WatchConfig,
    /// The `filters` config section (the same filter the engine uses).
    pub filters: crate::config::FiltersConfig,
}

/// Something the watcher saw or did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// Watching started.
    Started {
        /// Folders watched.
        folders: usize,
        /// Whether polling is used.
        polling: bool,
    },
    /// User changes settled and a sync was requested.
    Requested {
        /// The ticket.
        id: String,
        /// Merged into a pending request.
        merged: bool,
        /// The user paths.
        paths: Vec<PathBuf>,
    },
    /// A settled path is a system change and was dropped.
    Ignored {
        /// The path.
        path: PathBuf,
        /// The filter's reason.
        reason: String,
        /// The filter's rule.
        rule: Option<String>,
    },
    /// Settled paths equal HEAD (e.g. written by wsync's own checkout).
    Unchanged {
        /// How many.
        count: usize,
    },
    /// A sync holds the lock; settled paths wait for it.
    Postponed {
        /// How many.
        count: usize,
    },
    /// Events were lost; a full status reconcile ran.
    Rescan,
    /// The watch limit was reached; polling from now on.
    FellBackToPolling {
        /// Why.
        why: String,
    },
    /// A recoverable error (the watcher goes on).
    Error(String),
}

/// A running watcher; [`stop`](Self::stop) or drop ends it.
#[derive(Debug)]
pub struct Watcher {
    stop: Arc<AtomicBool>,
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

enum Msg {
    Events(DebounceEventResult),
    Stop,
}

/// The sink for watcher events.
pub type EventSink = Box<dyn FnMut(WatchEvent) + Send>;

impl Watcher {
    /// Builds the filter, watches the workspace and starts the watch thread.
    /// A startup reconcile requests a sync for user changes made while
    /// nothing watched.
    pub fn start(opts: &WatchOptions, mut sink: EventSink) -> Result<Self> {
        let workspace = std::fs::canonicalize(&opts.workspace)
            .map_err(|e| store::io_err(&opts.workspace, e))?;
        let state_dir =
            std::fs::canonicalize(&opts.state_dir).unwrap_or_else(|_| opts.state_dir.clone());
        let filter = Filter::new(
            &workspace,
            &state_dir,
            &crate::classify::filter_config(&workspace, &opts.filters)?,
        )?;
        let (tx, rx) = channel::<Msg>();
        let mut backend =
            Backend::new(&workspace, &state_dir, &opts.config, tx.clone(), &mut sink)?;
        sink(WatchEvent::Started {
            folders: backend.folders,
            polling: backend.polling,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stop_c = stop.clone();
        let mut core = Core {
            workspace,
            state_dir,
            config: opts.config.clone(),
            settler: Settler::new(opts.config.timings()),
            filter,
            sink,
            queue: Queue::new(&opts.state_dir),
            reconcile_due: None,
        };
        let thread = std::thread::Builder::new()
            .name("wsync-watch".into())
            .spawn(move || {
                core.reconcile("startup");
                core.run(&rx, &mut backend, &stop_c);
            })
            .map_err(|e| store::io_err(&opts.workspace, e))?;
        Ok(Self {
            stop,
            tx,
            thread: Some(thread),
        })
    }

    /// Stops watching and waits for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum AnyDebouncer {
    Native(Debouncer<RecommendedWatcher, NoCache>),
    Poll(Debouncer<PollWatcher, NoCache>),
}

impl AnyDebouncer {
    fn watch(&mut self, dir: &Path) -> notify::Result<()> {
        match self {
            Self::Native(d) => d.watch(dir, RecursiveMode::NonRecursive),
            Self::Poll(d) => d.watch(dir, RecursiveMode::NonRecursive),
        }
    }
}

struct Backend {
    debouncer: AnyDebouncer,
    folders: usize,
    polling: bool,
    workspace: PathBuf,
    state_dir: PathBuf,
    config: WatchConfig,
    tx: Sender<Msg>,
}

fn debounce_window(config: &WatchConfig) -> Duration {
    // The library's own window only pairs renames and merges bursts; our
    // per-class debounce does the rest. Short, but not a busy tick.
    let t = config.timings();
    (t.code.min(t.default).min(t.system) / 5)
        .clamp(Duration::from_millis(50), Duration::from_millis(200))
}

impl Backend {
    fn new(
        workspace: &Path,
        state_dir: &Path,
        config: &WatchConfig,
        tx: Sender<Msg>,
        sink: &mut EventSink,
    ) -> Result<Self> {
        let mut b = Self {
            debouncer: Self::make(workspace, config, tx.clone(), config.poll)?,
            folders: 0,
            polling: config.poll,
            workspace: workspace.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            config: config.clone(),
            tx,
        };
        if let Err(e) = b.watch_tree(workspace) {
            b.fall_back(&e, sink)?;
        }
        Ok(b)
    }

    fn make(
        workspace: &Path,
        config: &WatchConfig,
        tx: Sender<Msg>,
        poll: bool,
    ) -> Result<AnyDebouncer> {
        let window = debounce_window(config);
        let handler = move |r: DebounceEventResult| {
            let _ = tx.send(Msg::Events(r));
        };
        let err = |source| Error::Watch {
            path: workspace.to_path_buf(),
            source,
        };
        Ok(if poll {
            let cfg = notify::Config::default()
                .with_poll_interval(Duration::from_millis(config.poll_interval_ms.max(100)));
            AnyDebouncer::Poll(
                new_debouncer_opt(window, Some(window), handler, NoCache, cfg).map_err(err)?,
            )
        } else {
            AnyDebouncer::Native(
                new_debouncer_opt(
                    window,
                    Some(window),
                    handler,
                    NoCache,
                    notify::Config::default(),
                )
                .map_err(err)?,
            )
        })
    }

    fn fall_back(&mut self, e: &notify::Error, sink: &mut EventSink) -> Result<()> {
        let why = format!(
            "{e}; falling back to polling every {} ms",
            self.config.poll_interval_ms
        );
        tracing::warn!("watch limit reached: {why}");
        sink(WatchEvent::FellBackToPolling { why });
        self.debouncer = Self::make(&self.workspace, &self.config, self.tx.clone(), true)?;
        self.polling = true;
        self.folders = 0;
        let ws = self.workspace.clone();
        self.watch_tree(&ws)
            .map_err(|source| Error::Watch { path: ws, source })
    }

    /// Watches `root` and every non-ignored folder below it.
    fn watch_tree(&mut self, root: &Path) -> notify::Result<()> {
        let state_dir = self.state_dir.clone();
        let walker = ignore::WalkBuilder::new(root)
            .hidden(false)
            .parents(true)
            .git_ignore(true)
            .git_exclude(true)
            .git_global(false)
            .require_git(false)
            .filter_entry(move |e| e.file_name() != ".git" && e.path() != state_dir)
            .build();
        for entry in walker.flatten() {
            if entry.file_type().is_some_and(|t| t.is_dir()) {
                match self.debouncer.watch(entry.path()) {
                    Ok(()) => self.folders += 1,
                    Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => return Err(e),
                    // A folder that vanished meanwhile.
                    Err(e) => tracing::debug!(path = %entry.path().display(), "cannot watch: {e}"),
                }
            }
        }
        Ok(())
    }
}

struct Core {
    workspace: PathBuf,
    state_dir: PathBuf,
    config: WatchConfig,
    settler: Settler,
    filter: Filter,
    sink: EventSink,
    queue: Queue,
    /// A reconcile that had to wait for a running sync.
    reconcile_due: Option<&'static str>,
}

impl Core {
    fn run(&mut self, rx: &Receiver<Msg>, backend: &mut Backend, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            let mut timeout = self
                .settler
                .next_deadline()
                .map_or(Duration::from_secs(3600), |d| {
                    d.saturating_duration_since(Instant::now())
                });
            if self.reconcile_due.is_some() {
                timeout = timeout.min(Duration::from_millis(250));
            }
            match rx.recv_timeout(timeout) {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Msg::Events(Ok(events))) => {
                    let now = Instant::now();
                    for ev in events {
                        if ev.need_rescan() {
                            (self.sink)(WatchEvent::Rescan);
                            self.reconcile("overflow");
                            continue;
                        }
                        // Reads (ours included: the filter and git status
                        // read files) and access-time updates change nothing.
                        if matches!(
                            ev.kind,
                            EventKind::Access(_)
                                | EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime))
                        ) {
                            continue;
                        }
                        // Debounce from when it happened, not from when the
                        // library's window let it through.
                        let at = ev.time.min(now);
                        for p in &ev.paths {
                            self.on_path(p, backend, at);
                        }
                    }
                }
                Ok(Msg::Events(Err(errors))) => {
                    for e in errors {
                        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) && !backend.polling {
                            if let Err(err) = backend.fall_back(&e, &mut self.sink) {
                                (self.sink)(WatchEvent::Error(err.to_string()));
                            }
                            self.reconcile("fallback");
                        } else {
                            (self.sink)(WatchEvent::Error(e.to_string()));
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.flush(Instant::now());
        }
    }

    fn rel(&self, p: &Path) -> Option<PathBuf> {
        if p.starts_with(&self.state_dir) {
            return None;
        }
        let rel = p.strip_prefix(&self.workspace).ok()?;
        if rel.as_os_str().is_empty() || rel.components().any(|c| c.as_os_str() == ".git") {
            return None;
        }
        Some(rel.to_path_buf())
    }

    fn class_of(&self, rel: &Path) -> PathClass {
        if self.filter.action(rel) == wsync_filter::Action::Block {
            return PathClass::System;
        }
        let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if self
            .config
            .code_extensions
            .iter()
            .any(|c| c.eq_ignore_ascii_case(ext))
        {
            PathClass::Code
        } else {
            PathClass::Default
        }
    }

    fn on_path(&mut self, abs: &Path, backend: &mut Backend, now: Instant) {
        let Some(rel) = self.rel(abs) else { return };
        if abs.is_dir() {
            // A new (or moved-in) folder: watch it and note what it holds.
            if let Err(e) = backend.watch_tree(abs)
                && matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
                && !backend.polling
                && let Err(err) = backend.fall_back(&e, &mut self.sink)
            {
                (self.sink)(WatchEvent::Error(err.to_string()));
            }
            let files: Vec<PathBuf> = ignore::WalkBuilder::new(abs)
                .hidden(false)
                .build()
                .flatten()
                .filter(|e| e.file_type().is_some_and(|t| !t.is_dir()))
                .filter_map(|e| self.rel(e.path()))
                .collect();
            for f in files {
                let class = self.class_of(&f);
                self.settler.note(&f, class, now);
            }
            return;
        }
        let class = self.class_of(&rel);
        self.settler.note(&rel, class, now);
    }

    fn flush(&mut self, now: Instant) {
        if let Some(why) = self.reconcile_due.take() {
            self.reconcile(why);
        }
        if self.settler.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let settled = self.settler.take_settled(now);
        if settled.is_empty() {
            return;
        }
        // wsync's own sync: wait until it is done, then compare with HEAD.
        if matches!(
            wsync_lock::SyncLock::new(&self.state_dir).status(),
            Ok(wsync_lock::LockStatus::Held(_))
        ) {
            for (p, class) in &settled {
                self.settler
                    .postpone(p, *class, now, Duration::from_millis(250));
            }
            (self.sink)(WatchEvent::Postponed {
                count: settled.len(),
            });
            return;
        }
        let paths: Vec<PathBuf> = settled.into_iter().map(|(p, _)| p).collect();
        self.decide(paths, "watch");
    }

    /// Drops paths equal to HEAD and the index, classifies the rest and
    /// requests a sync for user changes.
    fn decide(&mut self, paths: Vec<PathBuf>, why: &str) {
        let repo = git2::Repository::open(&self.workspace).ok();
        let mut changes = Vec::new();
        let mut unchanged = 0;
        let mut need_reconcile = false;
        for rel in paths {
            if crate::conflicts::is_conflict_copy(&wsync_filter::rel_string(&rel)) {
                unchanged += 1;
                continue;
            }
            let exists = self.workspace.join(&rel).symlink_metadata().is_ok();
            if let Some(repo) = &repo {
                match repo.status_file(&rel) {
                    Ok(s) if s.is_empty() || s.contains(git2::Status::IGNORED) => {
                        unchanged += 1;
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) if e.code() == git2::ErrorCode::NotFound => {
                        unchanged += 1;
                        continue;
                    }
                    Err(_) => {
                        need_reconcile = true;
                        continue;
                    }
                }
            }
            changes.push(Change {
                kind: if exists {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Deleted
                },
                path: rel,
                mtime: None,
            });
        }
        if unchanged > 0 {
            tracing::debug!(unchanged, "settled paths equal HEAD");
            (self.sink)(WatchEvent::Unchanged { count: unchanged });
        }
        if need_reconcile {
            self.reconcile("ambiguous path");
        }
        self.request(&changes, why);
    }

    fn request(&mut self, changes: &[Change], why: &str) {
        if changes.is_empty() {
            return;
        }
        let decisions = self.filter.classify_all(changes);
        let mut user = Vec::new();
        for (c, d) in changes.iter().zip(decisions) {
            if d.verdict == Verdict::Sync {
                user.push(c.path.clone());
            } else {
                tracing::debug!(path = %c.path.display(), rule = ?d.rule, "system change ignored: {}", d.reason);
                (self.sink)(WatchEvent::Ignored {
                    path: c.path.clone(),
                    reason: d.reason,
                    rule: d.rule,
                });
            }
        }
        if user.is_empty() {
            return;
        }
        let shown: Vec<String> = user
            .iter()
            .take(5)
            .map(|p| wsync_filter::rel_string(p))
            .collect();
        let more = if user.len() > 5 {
            format!(" and {} more", user.len() - 5)
        } else {
            String::new()
        };
        let reason = format!(
            "{why}: {} user change(s): {}{more}",
            user.len(),
            shown.join(", ")
        );
        match self
            .queue
            .enqueue(&SyncRequest::new("watch", "watch", Priority::High, reason))
        {
            Ok(e) => (self.sink)(WatchEvent::Requested {
                id: e.id,
                merged: e.merged,
                paths: user,
            }),
            Err(e) => (self.sink)(WatchEvent::Error(e.to_string())),
        }
    }

    /// A full `git status`: every changed, non-ignored path is decided now.
    fn reconcile(&mut self, why: &'static str) {
        let Ok(repo) = git2::Repository::open(&self.workspace) else {
            return;
        };
        if matches!(
            wsync_lock::SyncLock::new(&self.state_dir).status(),
            Ok(wsync_lock::LockStatus::Held(_))
        ) {
            // A sync is changing the tree: reconcile once it is done.
            self.reconcile_due = Some(why);
            return;
        }
        let mut opts = git2::StatusOptions::new();
        opts.include_untracked(true)
            .recurse_untracked_dirs(true)
            .include_ignored(false)
            .exclude_submodules(true);
        let statuses = match repo.statuses(Some(&mut opts)) {
            Ok(s) => s,
            Err(e) => {
                (self.sink)(WatchEvent::Error(format!("status reconcile: {e}")));
                return;
            }
        };
        let changes: Vec<Change> = statuses
            .iter()
            .filter_map(|s| {
                let path = PathBuf::from(s.path()?);
                if self.rel(&self.workspace.join(&path)).is_none()
                    || crate::conflicts::is_conflict_copy(&wsync_filter::rel_string(&path))
                {
                    return None;
                }
                let deleted = s
                    .status()
                    .intersects(git2::Status::WT_DELETED | git2::Status::INDEX_DELETED);
                Some(Change {
                    kind: if deleted {
                        ChangeKind::Deleted
                    } else {
                        ChangeKind::Modified
                    },
                    path,
                    mtime: None,
                })
            })
            .collect();
        drop(statuses);
        self.request(&changes, why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify_debouncer_full::DebouncedEvent;
    use wsync_testutils::TestRepo;

    fn next(rx: &Receiver<WatchEvent>, what: impl Fn(&WatchEvent) -> bool) -> WatchEvent {
        let end = Instant::now() + Duration::from_secs(10);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Ok(e) = rx.recv_timeout(left)
                && what(&e)
            {
                return e;
            }
        }
        panic!("event not seen");
    }

    /// An overflow (the kernel dropped events) makes the watcher reconcile
    /// with a full status: a change it never saw an event for is found.
    #[test]
    fn overflow_runs_a_full_reconcile() {
        let repo = TestRepo::with_commit();
        let state = repo.path().join(".wsync");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(repo.path().join(".git/info/exclude"), "/.wsync/\n").unwrap();
        repo.write("unseen.rs", "fn main() {}\n");
        let (tx, rx) = channel();
        let w = Watcher::start(
            &WatchOptions {
                workspace: repo.path().to_path_buf(),
                state_dir: state.clone(),
                config: WatchConfig::default(),
                filters: crate::config::FiltersConfig::default(),
            },
            Box::new(move |e| {
                let _ = tx.send(e);
            }),
        )
        .unwrap();
        // The start-up reconcile finds it; clear the queue, then overflow.
        next(&rx, |e| matches!(e, WatchEvent::Requested { .. }));
        Queue::new(&state).clear().unwrap();
        let rescan = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        w.tx.send(Msg::Events(Ok(vec![DebouncedEvent::new(
            rescan,
            Instant::now(),
        )])))
        .unwrap();
        next(&rx, |e| matches!(e, WatchEvent::Rescan));
        let e = next(&rx, |e| matches!(e, WatchEvent::Requested { .. }));
        assert!(
            matches!(&e, WatchEvent::Requested { paths, .. } if paths == &[PathBuf::from("unseen.rs")]),
            "{e:?}"
        );
        assert_eq!(Queue::new(&state).list().unwrap().len(), 1);
        w.stop();
    }
}
