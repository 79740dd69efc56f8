//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use wsync_remote::conn::local_pair;
use wsync_remote::serve::ServeOptions;
use wsync_remote::{Session, SyncOptions};

/// What a tree holds: kind, content (or link target) and exec bit.
pub type Snapshot = BTreeMap<Vec<u8>, (char, Vec<u8>, bool)>;

/// Reads a whole tree (no symlink following), skipping `.wsync`.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for de in rd {
        let de = de.unwrap();
        let p = de.path();
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        if rel == b".wsync" {
            continue;
        }
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            out.insert(rel, ('l', t.as_os_str().as_bytes().to_vec(), false));
        } else if md.is_dir() {
            out.insert(rel, ('d', Vec::new(), false));
            walk(root, &p, out);
        } else {
            let exec = md.permissions().mode() & 0o100 != 0;
            out.insert(rel, ('f', std::fs::read(&p).unwrap(), exec));
        }
    }
}

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
