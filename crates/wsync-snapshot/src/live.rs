//! Captures whose scan costs O(changed) *system calls* too, for callers
//! that capture repeatedly (the sync daemon): a file-system watcher
//! (inotify through `notify`) records which paths changed between
//! captures, so a capture only looks at those, at what the previous one
//! found different from the index, and at index entries that changed.
//!
//! Soundness rests on three rules:
//! - **Barrier.** Before a capture uses the recorded paths it creates a
//!   cookie file in the git folder and waits for the watcher to report it
//!   (as watchman and git's fsmonitor do): inotify delivers events in
//!   order, so every change made before the capture started has been
//!   recorded. Events after the barrier stay for the next capture.
//! - **Watch before look.** A folder is watched before it is listed, so a
//!   change after a scan looked at something is always recorded.
//! - **When in doubt, scan everything.** No previous scan, a queue
//!   overflow, a watcher error, a timed-out barrier, a changed ignore file
//!   (`.gitignore`, `info/exclude`, the config, `core.excludesFile`), too
//!   many recorded paths, a failed capture or the periodic interval
//!   ([`LiveOptions::full_scan_every`]) all make the next capture a full
//!   scan, which also re-creates the watcher. When watching is impossible
//!   (e.g. the inotify watch limit), every capture is a full scan.
//!
//! Writes through a shared memory mapping are not reported by inotify;
//! the periodic full scan bounds how long such a change can be missed.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use git2::{Index, Repository};
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::capture::{self, ScanInput};
use crate::scan::{self, Tracked};
use crate::{CaptureOptions, Result, Snapshot, SnapshotStore, git_err};

/// Tuning for [`LiveScan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveOptions {
    /// A full scan at least this often, whatever the watcher says
    /// (default 10 minutes).
    pub full_scan_every: Duration,
    /// How long a capture waits for the watcher to catch up before it
    /// falls back to a full scan (default 2 s).
    pub barrier_timeout: Duration,
    /// More recorded paths than this between two captures means a full
    /// scan (default 50,000).
    pub max_recorded: usize,
    /// The attribute files outside the repository that libgit2 reads: the
    /// system's (`/etc/gitattributes`) and the user's
    /// (`$XDG_CONFIG_HOME/git/attributes`, else
    /// `~/.config/git/attributes`). Finding the user's takes the
    /// environment, which this library does not read, so the application
    /// passes them. When given, a capture whose changed paths no attribute
    /// file can reach (none of these, no `core.attributesFile`, no
    /// `info/attributes`, no `.gitattributes` in their folders) prints its
    /// patch without asking libgit2 about each path's attributes (a dozen
    /// file-system calls a path). `None` (default): libgit2 is asked.
    pub attribute_files: Option<Vec<PathBuf>>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            full_scan_every: Duration::from_secs(600),
            barrier_timeout: Duration::from_secs(2),
            max_recorded: 50_000,
            attribute_files: None,
        }
    }
}

impl LiveOptions {
    /// The [`LiveOptions::attribute_files`] of an environment where
    /// `XDG_CONFIG_HOME` and `HOME` have these values (empty counts as
    /// unset), located as libgit2 locates them: `/etc/gitattributes`, and
    /// `$XDG_CONFIG_HOME/git/attributes` or else `$HOME/.config/git/attributes`.
    /// `None` without either (libgit2 is then asked).
    pub fn attribute_files_from(
        xdg_config_home: Option<&OsStr>,
        home: Option<&OsStr>,
    ) -> Option<Vec<PathBuf>> {
        let set = |v: Option<&OsStr>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
        let user = match set(xdg_config_home) {
            Some(xdg) => xdg.join("git/attributes"),
            None => set(home)?.join(".config/git/attributes"),
        };
        Some(vec![PathBuf::from("/etc/gitattributes"), user])
    }
}

/// How the last capture of a [`LiveScan`] scanned the working tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Captures that scanned the whole tree.
    pub full_scans: u64,
    /// Captures that only looked at candidates.
    pub incremental_scans: u64,
    /// Why the last full scan was needed.
    pub last_full_reason: Option<String>,
    /// How many candidate paths the last incremental capture looked at.
    pub last_candidates: usize,
    /// Why watching is off (every capture is then a full scan).
    pub watch_error: Option<String>,
}

/// What the watcher's thread records between captures.
#[derive(Default)]
struct Recorded {
    paths: BTreeSet<PathBuf>,
    /// Overflow, watcher error or too many paths: scan everything.
    lost: Option<String>,
    /// The highest cookie number seen.
    cookie: u64,
}

#[derive(Default)]
struct Shared {
    recorded: Mutex<Recorded>,
    cookie_seen: Condvar,
}

/// What the previous capture left for the next.
struct Baseline {
    full_scan_at: Instant,
    /// The stage-0 index entries it scanned against.
    tracked: Vec<Tracked>,
    /// The index file's stamp then: unchanged, its entries are too.
    index_stamp: Option<Stamp>,
    /// Paths that differed from the index (to look at again).
    dirty: BTreeSet<Vec<u8>>,
    /// Files whose change alters ignore rules, with their stat stamps.
    ignore_files: Vec<(PathBuf, Option<Stamp>)>,
}

/// Enough stat data to tell that a file was replaced or rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| Stamp {
        ino: m.ino(),
        size: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Repeated captures of one workspace in O(changed), kept honest by a
/// file-system watcher. See the module documentation of
/// [`SnapshotStore::live`] for the rules.
///
/// ```
/// use wsync_snapshot::{CaptureOptions, LiveOptions, SnapshotStore};
///
/// let tmp = tempfile::tempdir()?;
/// let work = tmp.path().join("work");
/// git2::Repository::init(&work)?;
/// std::fs::write(work.join("notes.txt"), "draft 1\n")?;
///
/// let store = SnapshotStore::open(&work, &tmp.path().join("state"))?;
/// let mut live = store.live(&LiveOptions::default())?;
/// live.capture(&CaptureOptions::default())?; // the first one scans everything
/// std::fs::write(work.join("notes.txt"), "draft 2\n")?;
/// let snap = live.capture(&CaptureOptions::default())?; // looks at notes.txt only
/// assert_eq!(live.stats().incremental_scans, 1);
/// # let _ = snap;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LiveScan {
    store: SnapshotStore,
    repo: Repository,
    opts: LiveOptions,
    shared: Arc<Shared>,
    watcher: Option<RecommendedWatcher>,
    gitdir: PathBuf,
    /// Names this scan's cookies apart from other scans' of the same repo.
    token: String,
    cookies: u64,
    baseline: Option<Baseline>,
    /// A folder the last scan entered could not be watched.
    unwatched: Option<String>,
    stats: LiveStats,
}

impl std::fmt::Debug for LiveScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveScan")
            .field("workspace", &self.store.workspace)
            .field("watching", &self.watcher.is_some())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

const COOKIE_PREFIX: &str = "wsync-live-cookie-";

impl SnapshotStore {
    /// Starts a [`LiveScan`] of this workspace: captures through it look
    /// only at what a file-system watcher saw change since the previous
    /// one (the first capture scans everything).
    pub fn live(&self, opts: &LiveOptions) -> Result<LiveScan> {
        let repo = self.repo()?;
        let gitdir = repo.path().to_path_buf();
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let token = format!(
            "{}.{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        let mut store = self.clone();
        store.attribute_files.clone_from(&opts.attribute_files);
        Ok(LiveScan {
            token,
            store,
            repo,
            opts: opts.clone(),
            shared: Arc::new(Shared::default()),
            watcher: None,
            gitdir,
            cookies: 0,
            baseline: None,
            unwatched: None,
            stats: LiveStats::default(),
        })
    }
}

impl LiveScan {
    /// What the captures so far did.
    pub fn stats(&self) -> &LiveStats {
        &self.stats
    }

    /// Makes the next capture a full scan (e.g. after the caller changed
    /// files in a way a watcher cannot see).
    pub fn invalidate(&mut self) {
        self.baseline = None;
    }

    /// Captures a snapshot, like [`SnapshotStore::capture`], looking only
    /// at what changed since the previous capture when that is known.
    pub fn capture(&mut self, opts: &CaptureOptions) -> Result<Snapshot> {
        let baseline = self.baseline.take();
        let plan = match baseline {
            None => Err(self
                .stats
                .watch_error
                .clone()
                .unwrap_or_else(|| "first capture".into())),
            Some(b) => self.plan(b),
        };
        // The repository's own in-memory index: re-read only when the
        // file changed (libgit2 compares its stat stamp). It is never
        // written back.
        let index_path = self.repo.path().join("index");
        let before = stamp(&index_path);
        let mut index = self
            .repo
            .index()
            .map_err(git_err(&index_path, "cannot read the index"))?;
        index
            .read(false)
            .map_err(git_err(&index_path, "cannot read the index"))?;
        let after = stamp(&index_path);
        let index_mtime = after.map(|s| s.mtime);
        // Which index was read is only certain when the file stood still
        // around the read.
        let index_stamp = if before == after { after } else { None };
        let result = match plan {
            Ok((mut baseline, candidates)) => {
                self.stats.incremental_scans += 1;
                let watcher = &mut self.watcher;
                let unwatched = &mut self.unwatched;
                // The same index file: the same entries (no need to list
                // and compare them again).
                let mut same_index = (index_stamp.is_some() && baseline.index_stamp == index_stamp)
                    .then(|| std::mem::take(&mut baseline.tracked));
                let mut scan = |i: &ScanInput<'_>| {
                    let mut candidates = candidates.clone();
                    let tracked = match same_index.take() {
                        Some(tracked) => tracked,
                        None => {
                            let tracked = scan::tracked_of(i.index);
                            index_changes(&baseline.tracked, &tracked, &mut candidates);
                            tracked
                        }
                    };
                    let mut on_dir = |dir: &Path| {
                        // The folder is scanned now; if it cannot be
                        // watched, the next capture must scan everything.
                        if let Some(w) = watcher.as_mut()
                            && let Err(e) = w.watch(dir, RecursiveMode::NonRecursive)
                        {
                            unwatched.get_or_insert_with(|| {
                                format!("cannot watch {}: {e}", dir.display())
                            });
                        }
                    };
                    scan::scan_candidates(
                        i.repo,
                        i.root,
                        tracked,
                        i.index_mtime,
                        i.filemode,
                        &candidates,
                        &mut on_dir,
                    )
                };
                self.stats.last_candidates = candidates.len();
                let r = capture::capture_from(
                    &self.store,
                    &self.repo,
                    &mut index,
                    index_mtime,
                    opts,
                    false,
                    &mut scan,
                );
                r.map(|(snap, outcome)| (snap, outcome, baseline.full_scan_at))
            }
            Err(why) => {
                self.stats.full_scans += 1;
                self.stats.last_full_reason = Some(why);
                self.rewatch(&index);
                let r = capture::capture_from(
                    &self.store,
                    &self.repo,
                    &mut index,
                    index_mtime,
                    opts,
                    false,
                    &mut |i| scan::scan(i.repo, i.root, i.index, i.index_mtime, i.filemode),
                );
                r.map(|(snap, outcome)| (snap, outcome, Instant::now()))
            }
        };
        // On failure the recorded paths are gone: the next capture must
        // scan everything (no baseline).
        let (snap, outcome, full_scan_at) = result?;
        if outcome.conflicted {
            // Conflicts were resolved in memory: read the file again.
            index
                .read(true)
                .map_err(git_err(&index_path, "cannot read the index"))?;
        }
        if let Some(why) = self.unwatched.take() {
            // Not watched: what changes there next is unknown.
            self.stats.watch_error = Some(why);
        } else if self.watcher.is_some() {
            self.baseline = Some(Baseline {
                full_scan_at,
                tracked: outcome.scan.tracked,
                index_stamp,
                dirty: outcome.changed,
                ignore_files: self.ignore_files(),
            });
        }
        Ok(snap)
    }

    /// Decides whether an incremental scan is sound; if so returns the
    /// baseline and the candidate paths, else why not.
    fn plan(
        &mut self,
        baseline: Baseline,
    ) -> std::result::Result<(Baseline, BTreeSet<Vec<u8>>), String> {
        if self.watcher.is_none() {
            return Err(self
                .stats
                .watch_error
                .clone()
                .unwrap_or_else(|| "not watching".into()));
        }
        if baseline.full_scan_at.elapsed() >= self.opts.full_scan_every {
            return Err("periodic full scan".into());
        }
        self.barrier()?;
        let recorded = std::mem::take(
            &mut *self
                .shared
                .recorded
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if let Some(why) = recorded.lost {
            return Err(why);
        }
        for (path, before) in &baseline.ignore_files {
            if stamp(path) != *before {
                return Err(format!("{} changed", path.display()));
            }
        }
        let root = &self.store.workspace;
        let mut candidates = baseline.dirty.clone();
        for abs in recorded.paths {
            let Ok(rel) = abs.strip_prefix(root) else {
                continue;
            };
            if rel.as_os_str().is_empty() {
                return Err("the workspace folder itself changed".into());
            }
            if rel.file_name().is_some_and(|n| n == ".gitignore") {
                return Err(format!("{} changed", rel.display()));
            }
            candidates.insert(rel.as_os_str().as_bytes().to_vec());
        }
        Ok((baseline, candidates))
    }

    /// Waits until the watcher has reported everything that happened
    /// before this call.
    fn barrier(&mut self) -> std::result::Result<(), String> {
        self.cookies += 1;
        let n = self.cookies;
        let cookie = self
            .gitdir
            .join(format!("{COOKIE_PREFIX}{}-{n}", self.token));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&cookie)
            .map_err(|e| format!("cannot create {}: {e}", cookie.display()))?;
        let _ = std::fs::remove_file(&cookie);
        let deadline = Instant::now() + self.opts.barrier_timeout;
        let mut recorded = self
            .shared
            .recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while recorded.cookie < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the watcher did not catch up in time".into());
            }
            recorded = self
                .shared
                .cookie_seen
                .wait_timeout(recorded, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Replaces the watcher by a new one watching every folder a scan
    /// enters (and the git folder, for cookies). Everything recorded
    /// before is dropped: a full scan follows.
    fn rewatch(&mut self, index: &Index) {
        self.watcher = None;
        self.shared = Arc::new(Shared::default());
        match self.make_watcher(index) {
            Ok(w) => {
                self.watcher = Some(w);
                self.stats.watch_error = None;
            }
            Err(e) => self.stats.watch_error = Some(e),
        }
    }

    fn make_watcher(&self, index: &Index) -> std::result::Result<RecommendedWatcher, String> {
        let shared = Arc::clone(&self.shared);
        let gitdir = self.gitdir.clone();
        let max = self.opts.max_recorded;
        let cookie = format!("{COOKIE_PREFIX}{}-", self.token);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            record(&shared, &gitdir, &cookie, max, res);
        })
        .map_err(|e| format!("cannot start a file-system watcher: {e}"))?;
        watcher
            .watch(&self.gitdir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", self.gitdir.display()))?;
        let tracked = scan::tracked_of(index);
        let root = self.store.workspace.clone();
        self.watch_tree(&mut watcher, &root, b"", &tracked)?;
        Ok(watcher)
    }

    /// Watches `rel` and every folder below it that a scan would enter.
    fn watch_tree(
        &self,
        watcher: &mut RecommendedWatcher,
        root: &Path,
        rel: &[u8],
        tracked: &[Tracked],
    ) -> std::result::Result<(), String> {
        let abs = root.join(OsStr::from_bytes(rel));
        if !rel.is_empty() && !scan::has_tracked_below(tracked, rel) {
            let mut p = rel.to_vec();
            p.push(b'/');
            let ignored = self
                .repo
                .is_path_ignored(Path::new(OsStr::from_bytes(&p)))
                .unwrap_or(false);
            if ignored || abs.join(".git").symlink_metadata().is_ok() {
                return Ok(());
            }
        }
        watcher
            .watch(&abs, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", abs.display()))?;
        let Ok(listing) = std::fs::read_dir(&abs) else {
            return Ok(()); // gone since: the full scan sees it
        };
        for entry in listing.flatten() {
            let name = entry.file_name();
            if name.as_bytes() == b".git" || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            self.watch_tree(watcher, root, &child, tracked)?;
        }
        Ok(())
    }

    /// The files whose change alters ignore rules.
    fn ignore_files(&self) -> Vec<(PathBuf, Option<Stamp>)> {
        let mut files = vec![
            self.gitdir.join("info").join("exclude"),
            self.gitdir.join("config"),
        ];
        if let Ok(p) = self
            .repo
            .config()
            .and_then(|c| c.get_path("core.excludesfile"))
        {
            files.push(p);
        }
        files
            .into_iter()
            .map(|f| {
                let s = stamp(&f);
                (f, s)
            })
            .collect()
    }
}

/// Adds to `candidates` every path whose index entry differs between
/// `before` and `after` (both in path order).
fn index_changes(before: &[Tracked], after: &[Tracked], candidates: &mut BTreeSet<Vec<u8>>) {
    let (mut a, mut b) = (before.iter().peekable(), after.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(x), None) => {
                candidates.insert(x.path.clone());
                a.next();
            }
            (None, Some(y)) => {
                candidates.insert(y.path.clone());
                b.next();
            }
            (Some(x), Some(y)) => match x.path.cmp(&y.path) {
                std::cmp::Ordering::Less => {
                    candidates.insert(x.path.clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    candidates.insert(y.path.clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !x.same_as(y) {
                        candidates.insert(x.path.clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// The watcher thread's handler: collapses events into paths.
fn record(
    shared: &Shared,
    gitdir: &Path,
    cookie: &str,
    max: usize,
    res: notify::Result<notify::Event>,
) {
    let mut rec = shared
        .recorded
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let event = match res {
        Ok(e) => e,
        Err(e) => {
            rec.lost
                .get_or_insert_with(|| format!("watcher error: {e}"));
            return;
        }
    };
    if event.need_rescan() {
        rec.lost
            .get_or_insert_with(|| "the watcher's queue overflowed".into());
    }
    if matches!(
        event.kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    ) {
        return;
    }
    for path in event.paths {
        if path.starts_with(gitdir) {
            if path.parent() == Some(gitdir)
                && let Some(n) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(cookie))
                    .and_then(|n| n.parse::<u64>().ok())
            {
                rec.cookie = rec.cookie.max(n);
                shared.cookie_seen.notify_all();
            }
            continue;
        }
        if rec.paths.len() >= max {
            rec.lost
                .get_or_insert_with(|| format!("more than {max} paths changed"));
            continue;
        }
        rec.paths.insert(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, Flag, ModifyKind};

    /// The daemon keeps a scan behind a mutex shared with its runner.
    #[test]
    fn attribute_files_are_located_as_libgit2_locates_them() {
        let files = |x: Option<&str>, h: Option<&str>| {
            LiveOptions::attribute_files_from(x.map(OsStr::new), h.map(OsStr::new))
        };
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            files(Some("/x"), Some("/h")),
            Some(vec![p("/etc/gitattributes"), p("/x/git/attributes")])
        );
        assert_eq!(
            files(Some(""), Some("/h")),
            Some(vec![
                p("/etc/gitattributes"),
                p("/h/.config/git/attributes")
            ])
        );
        assert_eq!(files(None, Some("")), None);
        assert_eq!(files(None, None), None);
    }

    #[test]
    fn live_scan_is_send() {
        fn send<T: Send>() {}
        send::<LiveScan>();
    }

    fn event(kind: EventKind, path: &str) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn the_handler_records_paths_cookies_and_losses() {
        let shared = Shared::default();
        let git = Path::new("/w/.git");
        let cookie = "wsync-live-cookie-7.0-";
        let rec = |e| record(&shared, git, cookie, 2, e);
        rec(event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/w/read.txt",
        ));
        rec(event(EventKind::Modify(ModifyKind::Any), "/w/a.txt"));
        rec(event(
            EventKind::Create(CreateKind::File),
            "/w/.git/index.lock",
        ));
        rec(event(
            EventKind::Create(CreateKind::File),
            "/w/.git/wsync-live-cookie-7.0-3",
        ));
        // Another scan's cookie (other token) does not count.
        rec(event(
            EventKind::Create(CreateKind::File),
            "/w/.git/wsync-live-cookie-7.1-9",
        ));
        {
            let r = shared.recorded.lock().unwrap();
            assert_eq!(r.cookie, 3);
            assert_eq!(r.paths.len(), 1, "{:?}", r.paths);
            assert!(r.lost.is_none());
        }
        rec(event(EventKind::Modify(ModifyKind::Any), "/w/b.txt"));
        rec(event(EventKind::Modify(ModifyKind::Any), "/w/c.txt"));
        assert!(
            shared.recorded.lock().unwrap().lost.is_some(),
            "over the cap"
        );

        let shared = Shared::default();
        record(
            &shared,
            git,
            cookie,
            10,
            Ok(notify::Event::new(EventKind::Other).set_flag(Flag::Rescan)),
        );
        assert!(shared.recorded.lock().unwrap().lost.is_some(), "overflow");
        let shared = Shared::default();
        record(
            &shared,
            git,
            cookie,
            10,
            Err(notify::Error::generic("boom")),
        );
        assert!(shared.recorded.lock().unwrap().lost.is_some(), "error");
    }
}
