//! The crate's error type.

use std::path::PathBuf;

use crate::HolderRecord;

/// Everything that can go wrong in this crate. Every variant names the path
/// it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The state folder is missing (or is not a folder). `wsync init`
    /// creates it; this crate never creates it on its own.
    #[error("state folder {} does not exist or is not a folder (run `wsync init`)", path.display())]
    NoStateDir {
        /// The state folder.
        path: PathBuf,
    },
    /// A lock or state file exists but is not a regular file (e.g. a folder).
    #[error("{} is not a regular file (remove it; wsync recreates it)", path.display())]
    NotAFile {
        /// The offending path.
        path: PathBuf,
    },
    /// Another holder has the lock and the wait mode gave up.
    #[error("{} is held{}", path.display(), describe_holder(holder.as_deref()))]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// The holder's record, when it could be read.
        holder: Option<Box<HolderRecord>>,
    },
    /// The lock is currently held, but its holder record cannot be read even
    /// after a short grace period (a foreign `flock` on the file, or a holder
    /// stopped between taking the lock and writing its record).
    #[error("{} is held but its holder record is unreadable: {why}", path.display())]
    UnreadableRecord {
        /// The lock file.
        path: PathBuf,
        /// What is wrong with the record.
        why: String,
    },
    /// An operating-system error on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn describe_holder(holder: Option<&HolderRecord>) -> String {
    match holder {
        Some(h) => format!(
            " by pid {} on {} ({}: {}) since {}",
            h.pid,
            h.host,
            h.caller,
            h.reason,
            h.acquired_at.to_rfc3339()
        ),
        None => String::new(),
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
