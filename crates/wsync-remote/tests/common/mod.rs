//! Helpers shared by the integration tests.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::path::Path;

use wsync_remote::conn::local_pair;
use wsync_remote::serve::ServeOptions;
use wsync_remote::{Session, SyncOptions};

/// What a tree holds: kind, content (or link target) and exec bit.
pub use wsync_testutils::TreeSnapshot as Snapshot;
/// Reads a whole tree (no symlink following), skipping `.wsync`.
pub use wsync_testutils::tree_snapshot as snapshot;

/// A session from `local` to an in-process server for `remote`.
pub fn session(local: &Path, remote: &Path) -> Session {
    let conn = local_pair(remote, ServeOptions::default()).unwrap();
    Session::with_conn(local, conn, &remote.display().to_string())
}

/// Runs one sync round and returns the report.
pub fn sync(local: &Path, remote: &Path) -> wsync_remote::Report {
    sync_with(local, remote, &SyncOptions::default())
}

/// Runs one sync round with options and returns the report.
pub fn sync_with(local: &Path, remote: &Path, opts: &SyncOptions) -> wsync_remote::Report {
    let mut s = session(local, remote);
    let r = s.sync(opts).unwrap();
    s.close().unwrap();
    r
}

/// Writes a file, creating parents.
pub fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}
