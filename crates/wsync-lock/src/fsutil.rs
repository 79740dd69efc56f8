//! Small file-system helpers shared by the lock and the gate.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext as _, Result};

/// Fails with [`Error::NoStateDir`] unless `dir` is an existing folder.
pub(crate) fn check_state_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::NoStateDir {
            path: dir.to_path_buf(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::NoStateDir {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(e).at(dir),
    }
}

/// Fails with [`Error::NotAFile`] when `path` exists and is not a regular file.
fn check_regular(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Error::NotAFile {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
    }
}

/// Opens (creating if needed, never truncating) a lock file in `state_dir`.
///
/// The handle is close-on-exec (std opens every file with `O_CLOEXEC`), so
/// children never inherit a lock.
pub(crate) fn open_lock_file(state_dir: &Path, path: &Path) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    match open() {
        Ok(file) => {
            // A symlink to something else, or a FIFO, would make no lock.
            check_regular(path)?;
            Ok(file)
        }
        Err(e) => {
            check_state_dir(state_dir)?;
            check_regular(path)?;
            if e.raw_os_error() == Some(21) {
                // EISDIR: raced with someone creating a folder there.
                return Err(Error::NotAFile {
                    path: path.to_path_buf(),
                });
            }
            Err(e).at(path)
        }
    }
}

/// Whether `file` is still the file at `path`: a lock taken on a file that
/// was unlinked or replaced meanwhile locks nothing anyone else sees.
/// (wsync never unlinks its lock files; this guards against people.)
pub(crate) fn is_current(file: &File, path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let ours = file.metadata().at(path)?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.ino() == ours.ino() && now.dev() == ours.dev()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at(path),
    }
}

/// Replaces `path` with `bytes`: temp file in the same folder, fsync,
/// rename, folder fsync. Readers see the old or the new content, never a mix.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp).at(&tmp)?;
        file.write_all(bytes).at(&tmp)?;
        file.sync_all().at(&tmp)?;
        std::fs::rename(&tmp, path).at(path)?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` (missing is fine) and fsyncs its folder.
pub(crate) fn remove_durable(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir);
            }
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at(path),
    }
}

/// Best-effort folder fsync (makes a rename or unlink durable).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Exponential backoff towards a deadline (`None`: no deadline).
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Option<Instant>,
}

impl Backoff {
    /// Starts at 1 ms, doubling up to `max`.
    pub(crate) fn new(deadline: Option<Instant>, max: Duration) -> Self {
        Self {
            next: Duration::from_millis(1),
            max,
            deadline,
        }
    }

    /// Sleeps for the next step; returns `false` (without sleeping) once
    /// the deadline has passed.
    pub(crate) fn wait(&mut self) -> bool {
        let mut step = self.next;
        if let Some(deadline) = self.deadline {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            step = step.min(deadline - now);
        }
        std::thread::sleep(step);
        self.next = (self.next * 2).min(self.max);
        true
    }
}

/// `now + d`, or `None` when that overflows (treated as "no deadline").
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}
