//! Durable file writes and path helpers.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use crate::{Result, io_err};

/// Creates `dir` and its parents.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

/// A temp path beside `path` that no other process uses.
pub(crate) fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_else(|| OsStr::new("file"));
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp-{}-{}", std::process::id(), fastish_counter()));
    path.with_file_name(tmp)
}

fn fastish_counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Writes `bytes` to a temp file beside `path`, fsyncs it and renames it
/// over `path` (the caller fsyncs the folder, once for many files).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_beside(path);
    let res = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// fsyncs a folder so that renames into it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// `path` relative to `root` when it lies strictly inside it (comparing
/// canonical forms where they exist).
pub(crate) fn relative_inside(root: &Path, path: &Path) -> Option<PathBuf> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    // The state folder may not exist yet: canonicalize its nearest
    // existing ancestor and re-append the rest.
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name.to_os_string());
        existing = parent.to_path_buf();
    }
    let mut full = std::fs::canonicalize(&existing).unwrap_or(existing);
    for name in rest.iter().rev() {
        full.push(name);
    }
    let rel = full.strip_prefix(&root).ok()?;
    (!rel.as_os_str().is_empty()).then(|| rel.to_path_buf())
}

/// A git path (bytes, `/`-separated) as a relative file-system path.
pub(crate) fn git_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// A fully written temp file waiting to be fsynced and renamed into place.
#[derive(Debug)]
pub(crate) struct Pending {
    pub tmp: PathBuf,
    pub dest: PathBuf,
    pub file: File,
}

impl Pending {
    /// Creates the temp file beside `dest` (with `mode`, subject to the
    /// umask) for the caller to fill.
    pub(crate) fn create(dest: &Path, mode: u32) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = temp_beside(dest);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            file,
        })
    }

    /// Removes the temp file (after a failure).
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// fsyncs the files in parallel (fsync latency, not bandwidth, is the cost),
/// then renames each into place in order. On failure every temp file not
/// yet renamed is removed.
pub(crate) fn commit_all(pending: Vec<Pending>) -> Result<()> {
    let threads = pending.len().clamp(1, 4);
    let chunk = pending.len().div_ceil(threads).max(1);
    let synced: Result<()> = std::thread::scope(|s| {
        let handles: Vec<_> = pending
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    for p in part {
                        p.file.sync_all().map_err(io_err(&p.tmp))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap_or_else(|_| {
                Err(crate::Error::Io {
                    path: PathBuf::new(),
                    source: std::io::Error::other("an fsync thread panicked"),
                })
            })?;
        }
        Ok(())
    });
    let mut rest = pending.into_iter();
    let res = synced.and_then(|()| {
        for p in rest.by_ref() {
            if let Err(source) = std::fs::rename(&p.tmp, &p.dest) {
                let path = p.dest.clone();
                p.discard();
                return Err(crate::Error::Io { path, source });
            }
        }
        Ok(())
    });
    for p in rest {
        p.discard();
    }
    res
}
