//! Finding what differs between the index and the working tree, in
//! parallel, trusting the index's stat data (like `git status`).
//!
//! Each tracked folder is listed once and each tracked file is `lstat`ed
//! once, split over a few threads (system calls dominate the cost). A file
//! whose stat data matches its index entry, and is not "racily clean"
//! (changed in the same instant the index was written), is not read. Names
//! a folder listing shows that the index does not know are untracked
//! candidates; ignore rules are applied to them (and untracked folders are
//! descended only when not ignored) on the calling thread, through libgit2.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use git2::{Index, Repository};

use crate::fsutil::git_path;
use crate::{Error, Result, git_err};

/// The index entry flag of sparse-checkout entries.
const SKIP_WORKTREE: u16 = 1 << 14;

/// One stage-0 index entry's stat data and identity.
#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    pub path: Vec<u8>,
    pub mode: u32,
    pub id: git2::Oid,
    mtime: (i32, u32),
    ctime: (i32, u32),
    size: u32,
    ino: u32,
    /// Sparse checkout: git does not look at the working file.
    skip_worktree: bool,
}

/// What may differ from the index.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Tracked entries whose stat changed, or that are racily clean:
    /// they must be read and compared (indexes into `tracked`).
    pub suspects: Vec<usize>,
    /// Tracked entries gone from the working tree.
    pub deleted: Vec<usize>,
    /// Untracked, not ignored files and symlinks (relative git paths).
    pub untracked: Vec<Vec<u8>>,
    /// All stage-0 entries.
    pub tracked: Vec<Tracked>,
}

/// The stage-0 entries of `index`, in index (path) order.
pub(crate) fn tracked_of(index: &Index) -> Vec<Tracked> {
    index
        .iter()
        .filter(|e| (e.flags >> 12) & 0x3 == 0)
        .map(|e| Tracked {
            mode: e.mode,
            id: e.id,
            mtime: (e.mtime.seconds(), e.mtime.nanoseconds()),
            ctime: (e.ctime.seconds(), e.ctime.nanoseconds()),
            size: e.file_size,
            ino: e.ino,
            skip_worktree: e.flags_extended & SKIP_WORKTREE != 0,
            path: e.path,
        })
        .collect()
}

impl Tracked {
    /// Same path, object, mode, stat data and flags: a scan that trusted
    /// one may trust the other.
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        self.path == other.path
            && self.mode == other.mode
            && self.id == other.id
            && self.mtime == other.mtime
            && self.ctime == other.ctime
            && self.size == other.size
            && self.ino == other.ino
            && self.skip_worktree == other.skip_worktree
    }
}

/// A tracked folder's direct entries (indexes into the tracked list) and
/// the names of its tracked subfolders.
type Folder<'a> = (Vec<usize>, HashSet<&'a [u8]>);
/// One unit of scan work: a folder's path and what the index has in it.
type Job<'a, 'b> = (&'a [u8], &'b Folder<'a>);

#[derive(Default)]
struct WorkerOut {
    suspects: Vec<usize>,
    deleted: Vec<usize>,
    /// (relative path, is a folder)
    candidates: Vec<(Vec<u8>, bool)>,
}

/// Scans `root` against `index` (stage 0 entries; conflicts must have been
/// resolved in memory). `index_mtime` is the index file's modification time.
pub(crate) fn scan(
    repo: &Repository,
    root: &Path,
    index: &Index,
    index_mtime: Option<(i64, i64)>,
    filemode: bool,
) -> Result<Scan> {
    let tracked = tracked_of(index);

    // Folder → the tracked entries directly in it, and names of tracked
    // subfolders. Every ancestor of a tracked path is a tracked folder.
    let mut dirs: BTreeMap<&[u8], Folder<'_>> = BTreeMap::new();
    dirs.entry(b"").or_default();
    for (i, t) in tracked.iter().enumerate() {
        let (dir, _) = split(&t.path);
        dirs.entry(dir).or_default().0.push(i);
        let mut child = dir;
        while !child.is_empty() {
            let (parent, name) = split(child);
            let entry = dirs.entry(parent).or_default();
            if !entry.1.insert(name) {
                break;
            }
            child = parent;
        }
    }

    let jobs: Vec<Job<'_, '_>> = dirs.iter().map(|(d, v)| (*d, v)).collect();
    // More threads than cores still help a little: much of the time is
    // spent waiting in the kernel.
    let threads = std::thread::available_parallelism()
        .map_or(2, std::num::NonZero::get)
        .saturating_mul(2)
        .clamp(1, (tracked.len() / 1000).clamp(1, 8));
    // Deal folders out round-robin by size so threads get similar work.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&j| std::cmp::Reverse(jobs.get(j).map_or(0, |(_, v)| v.0.len())));
    let mut shares: Vec<Vec<usize>> = vec![Vec::new(); threads];
    for (n, j) in order.into_iter().enumerate() {
        if let Some(s) = shares.get_mut(n % threads) {
            s.push(j);
        }
    }
    let racy_limit = index_mtime;
    let ctx = Ctx {
        root,
        tracked: &tracked,
        racy_limit,
        filemode,
    };
    let results: Vec<Result<WorkerOut>> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        let mut shares = shares.into_iter();
        let mine = shares.next().unwrap_or_default();
        for share in shares {
            let jobs = &jobs;
            let ctx = &ctx;
            handles.push(s.spawn(move || work(ctx, jobs, &share)));
        }
        let mut out = vec![work(&ctx, &jobs, &mine)];
        for h in handles {
            out.push(h.join().unwrap_or_else(|_| {
                Err(Error::Io {
                    path: root.to_path_buf(),
                    source: std::io::Error::other("a scan thread panicked"),
                })
            }));
        }
        out
    });

    let mut scan = Scan::default();
    let mut candidates = Vec::new();
    for r in results {
        let r = r?;
        scan.suspects.extend(r.suspects);
        scan.deleted.extend(r.deleted);
        candidates.extend(r.candidates);
    }
    candidates.sort();
    for (rel, is_dir) in candidates {
        untracked(repo, root, rel, is_dir, &mut scan.untracked)?;
    }
    scan.suspects.sort_unstable();
    scan.deleted.sort_unstable();
    scan.tracked = tracked;
    Ok(scan)
}

struct Ctx<'a> {
    root: &'a Path,
    tracked: &'a [Tracked],
    racy_limit: Option<(i64, i64)>,
    filemode: bool,
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (
            path.get(..i).unwrap_or_default(),
            path.get(i + 1..).unwrap_or_default(),
        ),
        None => (b"", path),
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        p.extend_from_slice(dir);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn work(ctx: &Ctx<'_>, jobs: &[Job<'_, '_>], share: &[usize]) -> Result<WorkerOut> {
    let mut out = WorkerOut::default();
    for &j in share {
        let Some((dir, (files, subdirs))) = jobs.get(j) else {
            continue;
        };
        let abs_dir = ctx.root.join(git_path(dir));
        // Never follow a symlink that now stands where a folder was.
        let real_dir = dir.is_empty()
            || match std::fs::symlink_metadata(&abs_dir) {
                Ok(m) => m.is_dir(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(source) => {
                    return Err(Error::Io {
                        path: abs_dir,
                        source,
                    });
                }
            };
        let listing = match std::fs::read_dir(&abs_dir) {
            Ok(_) if !real_dir => None,
            Ok(l) => Some(l),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                None
            }
            Err(source) => {
                return Err(Error::Io {
                    path: abs_dir,
                    source,
                });
            }
        };
        let Some(listing) = listing else {
            // The folder is gone (or is a file now): its files are deleted.
            out.deleted.extend(files.iter().copied());
            continue;
        };
        // Names present on disk, with whether each is a folder.
        let mut present: HashMap<Vec<u8>, bool> = HashMap::new();
        for entry in listing {
            let entry = entry.map_err(|source| Error::Io {
                path: abs_dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let name = name.as_bytes();
            if name == b".git" {
                continue;
            }
            let is_dir = match entry.file_type() {
                Ok(t) => t.is_dir(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(Error::Io {
                        path: entry.path(),
                        source,
                    });
                }
            };
            present.insert(name.to_vec(), is_dir);
        }
        let mut tracked_names: HashSet<&[u8]> = HashSet::with_capacity(files.len());
        for &i in files {
            let Some(t) = ctx.tracked.get(i) else {
                continue;
            };
            let (_, name) = split(&t.path);
            tracked_names.insert(name);
            if t.mode == 0o160_000 || t.skip_worktree {
                continue; // submodules and sparse entries are not looked at
            }
            match present.get(name) {
                None => out.deleted.push(i),
                Some(&is_dir) => {
                    if is_dir {
                        // A tracked file replaced by a folder: the file is
                        // suspect (it will read as gone), the folder's
                        // contents are untracked.
                        out.suspects.push(i);
                        out.candidates.push((t.path.clone(), true));
                        continue;
                    }
                    let abs = ctx.root.join(git_path(&t.path));
                    match std::fs::symlink_metadata(&abs) {
                        Ok(m) => {
                            if !stat_matches(ctx, t, &m) {
                                out.suspects.push(i);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            out.deleted.push(i);
                        }
                        Err(source) => return Err(Error::Io { path: abs, source }),
                    }
                }
            }
        }
        for (name, is_dir) in present {
            if tracked_names.contains(name.as_slice()) {
                continue;
            }
            if subdirs.contains(name.as_slice()) && is_dir {
                continue; // scanned as its own job
            }
            out.candidates.push((join(dir, &name), is_dir));
        }
    }
    Ok(out)
}

/// Whether the file's stat data proves it unchanged since the index saw it.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn stat_matches(ctx: &Ctx<'_>, t: &Tracked, m: &std::fs::Metadata) -> bool {
    let ft = m.file_type();
    let kind_ok = match t.mode {
        0o120_000 => ft.is_symlink(),
        0o100_644 | 0o100_755 => {
            ft.is_file() && (!ctx.filemode || ((m.mode() & 0o100 != 0) == (t.mode == 0o100_755)))
        }
        _ => false,
    };
    // The index stores 32-bit fields; compare truncated, as git does.
    let same = kind_ok
        && t.mtime == (m.mtime() as i32, m.mtime_nsec() as u32)
        && t.ctime == (m.ctime() as i32, m.ctime_nsec() as u32)
        && t.size == m.len() as u32
        && t.ino == m.ino() as u32;
    if !same {
        return false;
    }
    // Racily clean: changed in the same instant the index was written, so
    // a later same-size edit could hide behind identical stat data.
    match ctx.racy_limit {
        Some((s, ns)) => (i64::from(t.mtime.0), i64::from(t.mtime.1)) < (s, ns),
        None => false,
    }
}

/// Adds the untracked, not ignored files at `rel` (a file, or a folder
/// walked recursively) to `out`.
fn untracked(
    repo: &Repository,
    root: &Path,
    rel: Vec<u8>,
    is_dir: bool,
    out: &mut Vec<Vec<u8>>,
) -> Result<()> {
    let ignored = |rel: &[u8], dir: bool| -> Result<bool> {
        let mut p = rel.to_vec();
        if dir {
            p.push(b'/');
        }
        repo.is_path_ignored(Path::new(OsStr::from_bytes(&p)))
            .map_err(git_err(
                root.join(git_path(rel)),
                "cannot evaluate ignore rules",
            ))
    };
    if ignored(&rel, is_dir)? {
        return Ok(());
    }
    if !is_dir {
        out.push(rel);
        return Ok(());
    }
    let abs: PathBuf = root.join(git_path(&rel));
    // A nested repository is not part of this one.
    if abs.join(".git").symlink_metadata().is_ok() {
        return Ok(());
    }
    let Some(mut children) = children_of(&abs, &rel)? else {
        return Ok(());
    };
    children.sort();
    for (child, child_is_dir) in children {
        untracked(repo, root, child, child_is_dir, out)?;
    }
    Ok(())
}

/// Scans only `candidates` (relative paths of files or folders, whatever
/// they are now) and the racily clean entries: the caller vouches that
/// nothing else changed since a scan whose results it kept (a file-system
/// watcher saw no event there). Folders among the candidates are walked
/// whole; the real folders met are returned too (to be watched).
pub(crate) fn scan_candidates(
    repo: &Repository,
    root: &Path,
    tracked: Vec<Tracked>,
    index_mtime: Option<(i64, i64)>,
    filemode: bool,
    candidates: &BTreeSet<Vec<u8>>,
    on_dir: &mut dyn FnMut(&Path),
) -> Result<Scan> {
    let ctx = Ctx {
        root,
        tracked: &tracked,
        racy_limit: index_mtime,
        filemode,
    };
    let mut part = Partial {
        ctx: &ctx,
        repo,
        suspects: BTreeSet::new(),
        deleted: BTreeSet::new(),
        untracked: BTreeSet::new(),
        real_dirs: HashMap::new(),
        on_dir,
    };
    for (i, t) in tracked.iter().enumerate() {
        if !t.skip_worktree && t.mode != 0o160_000 && is_racy(&ctx, t) {
            part.check(i)?;
        }
    }
    for cand in candidates {
        if cand.is_empty() || cand == b".git" || cand.starts_with(b".git/") {
            continue;
        }
        for i in part.tracked_at(cand) {
            part.check(i)?;
        }
        if !part.parents_real(cand)? {
            continue;
        }
        let abs = root.join(git_path(cand));
        let meta = match std::fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(source) => return Err(Error::Io { path: abs, source }),
        };
        if meta.is_dir() {
            part.walk(cand)?;
        } else if !part.is_tracked(cand) && !part.ignored(cand, false)? {
            part.untracked.insert(cand.clone());
        }
    }
    let Partial {
        suspects,
        deleted,
        untracked,
        ..
    } = part;
    let scan = Scan {
        suspects: suspects.into_iter().collect(),
        deleted: deleted.into_iter().collect(),
        untracked: untracked.into_iter().collect(),
        tracked: Vec::new(),
    };
    Ok(Scan { tracked, ..scan })
}

/// A folder's entries: (relative path, is a folder).
type Children = Vec<(Vec<u8>, bool)>;

/// The entries of folder `abs` (relative path `rel`) except `.git`;
/// `None` when it is gone or not a folder.
fn children_of(abs: &Path, rel: &[u8]) -> Result<Option<Children>> {
    let listing = match std::fs::read_dir(abs) {
        Ok(l) => l,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(source) => {
            return Err(Error::Io {
                path: abs.to_path_buf(),
                source,
            });
        }
    };
    let mut children = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| Error::Io {
            path: abs.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        if name.as_bytes() == b".git" {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        children.push((join(rel, name.as_bytes()), is_dir));
    }
    Ok(Some(children))
}

/// Whether `tracked` (in path order) has an entry below folder `dir`.
pub(crate) fn has_tracked_below(tracked: &[Tracked], dir: &[u8]) -> bool {
    let mut prefix = dir.to_vec();
    prefix.push(b'/');
    let i = tracked.partition_point(|e| e.path < prefix);
    tracked.get(i).is_some_and(|e| e.path.starts_with(&prefix))
}

/// Racily clean: changed in the same instant the index was written, so a
/// later same-size edit could hide behind identical stat data.
fn is_racy(ctx: &Ctx<'_>, t: &Tracked) -> bool {
    match ctx.racy_limit {
        Some((s, ns)) => (i64::from(t.mtime.0), i64::from(t.mtime.1)) >= (s, ns),
        None => false,
    }
}

/// The state of a candidate-only scan.
struct Partial<'a, 'b> {
    ctx: &'a Ctx<'a>,
    repo: &'a Repository,
    suspects: BTreeSet<usize>,
    deleted: BTreeSet<usize>,
    untracked: BTreeSet<Vec<u8>>,
    /// Relative folder → whether it is a real folder (not a link, present).
    real_dirs: HashMap<Vec<u8>, bool>,
    /// Called with each folder's absolute path before it is listed.
    on_dir: &'b mut dyn FnMut(&Path),
}

impl Partial<'_, '_> {
    /// Indexes of the tracked entries at `path` or below it.
    fn tracked_at(&self, path: &[u8]) -> Vec<usize> {
        let t = self.ctx.tracked;
        let mut out = Vec::new();
        let exact = t.partition_point(|e| e.path.as_slice() < path);
        if t.get(exact).is_some_and(|e| e.path == path) {
            out.push(exact);
        }
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        let from = t.partition_point(|e| e.path < prefix);
        for (i, e) in t.iter().enumerate().skip(from) {
            if !e.path.starts_with(&prefix) {
                break;
            }
            out.push(i);
        }
        out
    }

    fn is_tracked(&self, path: &[u8]) -> bool {
        let t = self.ctx.tracked;
        let i = t.partition_point(|e| e.path.as_slice() < path);
        t.get(i).is_some_and(|e| e.path == path)
    }

    fn has_tracked_below(&self, dir: &[u8]) -> bool {
        has_tracked_below(self.ctx.tracked, dir)
    }

    /// Whether every folder above `path` is a real folder.
    fn parents_real(&mut self, path: &[u8]) -> Result<bool> {
        let (dir, _) = split(path);
        if dir.is_empty() {
            return Ok(true);
        }
        if let Some(&known) = self.real_dirs.get(dir) {
            return Ok(known);
        }
        let real = self.parents_real(dir)?
            && match std::fs::symlink_metadata(self.ctx.root.join(git_path(dir))) {
                Ok(m) => m.is_dir(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    false
                }
                Err(source) => {
                    return Err(Error::Io {
                        path: self.ctx.root.join(git_path(dir)),
                        source,
                    });
                }
            };
        self.real_dirs.insert(dir.to_vec(), real);
        Ok(real)
    }

    /// Compares tracked entry `i` with its working file by stat data.
    fn check(&mut self, i: usize) -> Result<()> {
        let Some(t) = self.ctx.tracked.get(i) else {
            return Ok(());
        };
        if t.mode == 0o160_000 || t.skip_worktree {
            return Ok(());
        }
        if !self.parents_real(&t.path)? {
            self.deleted.insert(i);
            return Ok(());
        }
        let abs = self.ctx.root.join(git_path(&t.path));
        match std::fs::symlink_metadata(&abs) {
            Ok(m) => {
                if m.is_dir() || !stat_matches(self.ctx, t, &m) {
                    self.suspects.insert(i);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                self.deleted.insert(i);
            }
            Err(source) => return Err(Error::Io { path: abs, source }),
        }
        Ok(())
    }

    fn ignored(&self, rel: &[u8], dir: bool) -> Result<bool> {
        let mut p = rel.to_vec();
        if dir {
            p.push(b'/');
        }
        self.repo
            .is_path_ignored(Path::new(OsStr::from_bytes(&p)))
            .map_err(git_err(
                self.ctx.root.join(git_path(rel)),
                "cannot evaluate ignore rules",
            ))
    }

    /// Walks the real folder `rel` as a full scan would: untracked, not
    /// ignored files are collected (tracked ones are checked through
    /// [`Self::tracked_at`]); ignored folders and nested repositories
    /// without tracked entries are not entered.
    fn walk(&mut self, rel: &[u8]) -> Result<()> {
        let tracked_below = self.has_tracked_below(rel);
        let abs = self.ctx.root.join(git_path(rel));
        if !tracked_below
            && (self.ignored(rel, true)? || abs.join(".git").symlink_metadata().is_ok())
        {
            return Ok(());
        }
        (self.on_dir)(&abs);
        let Some(children) = children_of(&abs, rel)? else {
            return Ok(());
        };
        for (child, is_dir) in children {
            if is_dir {
                self.walk(&child)?;
            } else if !self.is_tracked(&child) && !self.ignored(&child, false)? {
                self.untracked.insert(child);
            } else if self.is_tracked(&child) {
                let t = self.ctx.tracked;
                let i = t.partition_point(|e| e.path < child);
                self.check(i)?;
            }
        }
        Ok(())
    }
}
