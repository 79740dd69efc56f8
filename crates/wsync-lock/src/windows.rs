//! `<state>/writers.jsonl`: one JSON line per finished writer window.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext as _, Result};
use crate::fsutil::{Backoff, atomic_write, check_state_dir, deadline_after, is_current};

/// The log's name inside the state folder.
pub const WRITERS_LOG_FILE: &str = "writers.jsonl";

/// When the log grows past this many bytes it is compacted…
pub const WRITERS_LOG_MAX_BYTES: u64 = 256 * 1024;

/// …to at most this many of its newest lines (and half the bytes).
pub const WRITERS_LOG_KEEP_LINES: usize = 1000;

/// How long an append waits for another appender or compactor.
const APPEND_WAIT: Duration = Duration::from_secs(2);

/// When a named writer wrote: the filter treats changes inside a window as
/// made by the autonomous system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterWindow {
    /// [`WriterOptions::name`](crate::WriterOptions::name).
    pub name: String,
    /// The writer's process id.
    pub pid: u32,
    /// When the writer was let in.
    pub start: DateTime<Utc>,
    /// When its guard was dropped.
    pub end: DateTime<Utc>,
    /// The paths the writer declared it writes (files or folders, as the
    /// host gave them). Empty means "unknown": the filter then attributes
    /// any change made during the window to the writer; with paths, only
    /// changes under them, so a user's save at the same instant elsewhere
    /// is not mistaken for a system write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// The path of the writer log of `state_dir`.
pub fn writers_log_path(state_dir: &Path) -> PathBuf {
    state_dir.join(WRITERS_LOG_FILE)
}

/// Reads every window in `<state>/writers.jsonl`, oldest first.
///
/// A missing log is empty. A torn last line (a writer killed mid-append)
/// is skipped; a bad line elsewhere is an error naming the file and line.
pub fn read_writer_windows(state_dir: &Path) -> Result<Vec<WriterWindow>> {
    check_state_dir(state_dir)?;
    let path = writers_log_path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if e.raw_os_error() == Some(21) => return Err(Error::NotAFile { path }),
        Err(e) => return Err(e).at(&path),
    };
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<WriterWindow>(line) {
            Ok(w) => out.push(w),
            // The final fragment without a newline: a torn append.
            Err(_) if i == last => {}
            Err(e) => {
                return Err(Error::Io {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("line {}: not a writer window: {e}", i + 1),
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// Appends `window` as one line; compacts the log when it is too big.
///
/// Appenders and the compactor serialize on a `flock` of the log itself.
/// The compactor renames a new file over it, so an appender that locked
/// the old inode notices and reopens.
pub(crate) fn append_window(state_dir: &Path, window: &WriterWindow) -> Result<()> {
    let path = writers_log_path(state_dir);
    let mut line = serde_json::to_vec(window)
        .map_err(std::io::Error::other)
        .at(&path)?;
    line.push(b'\n');
    let mut backoff = Backoff::new(deadline_after(APPEND_WAIT), Duration::from_millis(20));
    loop {
        let file = OpenOptions::new()
            .append(true)
            .read(true)
            .create(true)
            .open(&path)
            .map_err(|e| {
                if e.raw_os_error() == Some(21) {
                    Error::NotAFile { path: path.clone() }
                } else {
                    Error::Io {
                        path: path.clone(),
                        source: e,
                    }
                }
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) if backoff.wait() => continue,
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Busy { path, holder: None });
            }
            Err(TryLockError::Error(e)) => return Err(e).at(&path),
        }
        if !is_current(&file, &path)? {
            // Replaced (compacted) or removed since we opened it.
            continue;
        }
        let len = file.metadata().at(&path)?.len();
        return append_locked(&file, &path, &line, len);
    }
}

fn append_locked(mut file: &File, path: &Path, line: &[u8], len: u64) -> Result<()> {
    // Never glue a line onto a torn one.
    let mut last = [0u8; 1];
    let needs_newline =
        len > 0 && file.read_at(&mut last, len - 1).at(path)? == 1 && last[0] != b'\n';
    let mut buf = Vec::with_capacity(line.len() + 1);
    if needs_newline {
        buf.push(b'\n');
    }
    buf.extend_from_slice(line);
    file.write_all(&buf).at(path)?;
    if len + buf.len() as u64 > WRITERS_LOG_MAX_BYTES {
        compact(path)?;
    }
    Ok(())
}

/// Rewrites the log with its newest lines: at most
/// [`WRITERS_LOG_KEEP_LINES`] and at most half of
/// [`WRITERS_LOG_MAX_BYTES`], so compactions stay rare.
fn compact(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).at(path)?;
    let budget = usize::try_from(WRITERS_LOG_MAX_BYTES / 2).unwrap_or(usize::MAX);
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut size = 0usize;
    for line in bytes.rsplit(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if kept.len() >= WRITERS_LOG_KEEP_LINES || size + line.len() + 1 > budget {
            break;
        }
        size += line.len() + 1;
        kept.push(line);
    }
    let mut out = Vec::with_capacity(size);
    for line in kept.iter().rev() {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    atomic_write(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(i: u32) -> WriterWindow {
        let t = Utc::now();
        WriterWindow {
            name: format!("writer-{i}"),
            pid: i,
            start: t,
            end: t,
            paths: Vec::new(),
        }
    }

    #[test]
    fn append_read_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_writer_windows(dir.path()).ok(), Some(vec![]));
        append_window(dir.path(), &window(1)).unwrap();
        let path = writers_log_path(dir.path());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"name\":\"tor").unwrap();
        let got = read_writer_windows(dir.path()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "writer-1");
        // The next append starts on a fresh line; the torn fragment is now
        // in the middle and is reported with its line number.
        append_window(dir.path(), &window(2)).unwrap();
        let err = read_writer_windows(dir.path())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("line 2") && err.contains("writers.jsonl"),
            "{err}"
        );
    }

    #[test]
    fn log_is_compacted_to_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = window(0);
        w.name = "x".repeat(200);
        let per_line = serde_json::to_vec(&w).map(|v| v.len() + 1).unwrap_or(1) as u64;
        let n = (WRITERS_LOG_MAX_BYTES / per_line) as u32 + 50;
        for i in 0..n {
            w.pid = i;
            append_window(dir.path(), &w).unwrap();
        }
        let size = std::fs::metadata(writers_log_path(dir.path()))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size <= WRITERS_LOG_MAX_BYTES, "{size}");
        let all = read_writer_windows(dir.path()).unwrap();
        assert!(all.len() <= WRITERS_LOG_KEEP_LINES + 100 && all.len() >= 100);
        assert_eq!(all.last().map(|w| w.pid), Some(n - 1));
        // Newest kept, in order.
        assert!(all.windows(2).all(|p| p[0].pid + 1 == p[1].pid));
    }
}
