//! Crash-safe JSON state files shared by the queue, the rate limiter and the
//! circuit breaker: every write is temp file + fsync + rename + folder fsync,
//! and every read-modify-write happens under an advisory lock on a sibling
//! `.lock` file, so concurrent processes never lose an update and a SIGKILL
//! at any instant leaves either the old or the new file.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::queue::Result;

/// An I/O error about `path`.
pub(crate) fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An exclusive advisory lock on `<file>.lock`, released on drop.
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the lock on `path` is held.
    pub(crate) fn acquire(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        file.lock().map_err(|e| io_err(path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock too; unlock explicitly so
        // the release does not wait for a forked child's copy of the fd.
        if self.file.unlock().is_err() {
            tracing::debug!(path = %self.path.display(), "unlock failed; the close releases it");
        }
    }
}

/// Reads and parses a JSON state file; `Ok(None)` when it does not exist.
/// A file that does not parse is [`Error::CorruptState`] naming the file.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::CorruptState {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `value` as pretty JSON to `path` atomically and durably.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes =
        serde_json::to_vec_pretty(value).map_err(|e| io_err(path, std::io::Error::other(e)))?;
    bytes.push(b'\n');
    write_bytes(path, &bytes)
}

/// Writes `bytes` to `path`: temp file in the same folder, fsync, rename,
/// folder fsync (the crate's one implementation).
pub(crate) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsutil::write_atomic(path, bytes)
}

/// Moves a corrupt state file aside as `<name>.corrupt-<UTC timestamp>` and
/// returns the new path (`None` when the file is already gone).
pub(crate) fn quarantine(
    path: &Path,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<PathBuf>> {
    if !path.exists() {
        return Ok(None);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = path.with_file_name(format!(
        "{name}.corrupt-{}",
        now.format("%Y%m%dT%H%M%S%.3fZ")
    ));
    let mut n = 1;
    while target.exists() {
        target = path.with_file_name(format!(
            "{name}.corrupt-{}-{n}",
            now.format("%Y%m%dT%H%M%S%.3fZ")
        ));
        n += 1;
    }
    std::fs::rename(path, &target).map_err(|e| io_err(path, e))?;
    if let Some(dir) = path.parent() {
        crate::fsutil::sync_dir(dir)?;
    }
    Ok(Some(target))
}

/// Under the lock at `lock_path`: when the JSON state file `path` does not
/// parse as `T`, keeps it as `<name>.corrupt-<ts>` (returned) so the owner
/// starts clean.
pub(crate) fn recover<T: DeserializeOwned>(
    path: &Path,
    lock_path: &Path,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<PathBuf>> {
    let _lock = FileLock::acquire(lock_path)?;
    match read_json::<T>(path) {
        Ok(_) => Ok(None),
        Err(Error::CorruptState { .. }) => quarantine(path, now),
        Err(e) => Err(e),
    }
}

/// Appends one JSON line to `path` (created if missing) and fsyncs it.
pub(crate) fn append_jsonl<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let line = serde_json::to_string(value).map_err(|e| io_err(path, std::io::Error::other(e)))?;
    crate::fsutil::append_line(path, &line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_json(&p, &vec![1, 2, 3]).unwrap();
        let back: Option<Vec<i32>> = read_json(&p).unwrap();
        assert_eq!(back, Some(vec![1, 2, 3]));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn corrupt_file_error_names_the_file_and_quarantine_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("queue.json");
        std::fs::write(&p, b"{not json").unwrap();
        let err = read_json::<Vec<i32>>(&p).unwrap_err();
        assert!(err.to_string().contains("queue.json"), "{err}");
        let kept = quarantine(&p, chrono::Utc::now()).unwrap().unwrap();
        assert!(!p.exists());
        assert_eq!(std::fs::read(&kept).unwrap(), b"{not json");
        assert!(
            kept.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("queue.json.corrupt-")
        );
    }
}
