//! The daemon's log file with size-based rotation.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::queue::{Result, store};

/// An append-only log file rotated to `<name>.1`, `<name>.2`, … when it
/// grows past `max_bytes`; `keep` rotated files are kept.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    size: u64,
}

impl LogFile {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<Self> {
        let file = Self::open_file(path)?;
        let size = file.metadata().map_err(|e| store::io_err(path, e))?.len();
        Ok(Self {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1024),
            keep,
            file,
            size,
        })
    }

    fn open_file(path: &Path) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| store::io_err(path, e))
    }

    /// The rotated file number `n` (`daemon.log.1` is the newest).
    pub fn rotated(path: &Path, n: u32) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
        } else {
            for n in (1..self.keep).rev() {
                let from = Self::rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, Self::rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, Self::rotated(&self.path, 1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("daemon.log");
        let mut log = LogFile::open(&p, 1024, 2).unwrap();
        let line = [b'x'; 300];
        for _ in 0..20 {
            log.write_all(&line).unwrap();
        }
        assert!(std::fs::metadata(&p).unwrap().len() <= 1024);
        assert!(LogFile::rotated(&p, 1).exists());
        assert!(LogFile::rotated(&p, 2).exists());
        assert!(!LogFile::rotated(&p, 3).exists());
    }
}
