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

use std::collections::{BTreeMap, HashMap, HashSet};
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
    let tracked: Vec<Tracked> = index
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
        .collect();

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
    let listing = match std::fs::read_dir(&abs) {
        Ok(l) => l,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(source) => return Err(Error::Io { path: abs, source }),
    };
    let mut children = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| Error::Io {
            path: abs.clone(),
            source,
        })?;
        let name = entry.file_name();
        if name.as_bytes() == b".git" {
            continue;
        }
        let child_is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        children.push((join(&rel, name.as_bytes()), child_is_dir));
    }
    children.sort();
    for (child, child_is_dir) in children {
        untracked(repo, root, child, child_is_dir, out)?;
    }
    Ok(())
}
