//! Capture and restore against real git repositories.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use wsync_snapshot::{CaptureOptions, Error, RestoreOptions, SnapshotStore};
use wsync_testutils::TestRepo;

fn store(repo: &TestRepo) -> SnapshotStore {
    // What `wsync init` does: keep the state folder out of git.
    std::fs::write(repo.path().join(".git/info/exclude"), "/.wsync/\n").unwrap();
    SnapshotStore::open(repo.path(), &repo.path().join(".wsync")).unwrap()
}

fn opts(reason: &str) -> CaptureOptions {
    CaptureOptions {
        reason: reason.into(),
        ..CaptureOptions::default()
    }
}

/// Status, HEAD, index bytes, HEAD reflog, working files.
type Observed = (Vec<u8>, String, Vec<u8>, String, Vec<(String, Vec<u8>)>);

/// Every observable piece of state capture promises not to touch.
fn observe(repo: &TestRepo) -> Observed {
    let head = repo.git(&["rev-parse", "--verify", "-q", "HEAD^{commit}"]);
    let index = std::fs::read(repo.path().join(".git/index")).unwrap_or_default();
    let reflog = std::fs::read_to_string(repo.path().join(".git/logs/HEAD")).unwrap_or_default();
    let mut files = Vec::new();
    walk(repo.path(), repo.path(), &mut files);
    files.sort();
    // `git status` may refresh the index; this one must not write.
    let status = wsync_testutils::git_output(
        repo.path(),
        &[
            "--no-optional-locks",
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
        ],
    )
    .stdout;
    (status, head, index, reflog, files)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == ".git" || rel == ".wsync" {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            out.push((
                format!("{rel} -> link"),
                t.to_string_lossy().as_bytes().to_vec(),
            ));
        } else if m.is_dir() {
            walk(root, &p, out);
        } else {
            let exec = m.permissions().mode() & 0o111 != 0;
            out.push((format!("{rel} x={exec}"), std::fs::read(&p).unwrap()));
        }
    }
}

#[test]
fn capture_leaves_everything_untouched() {
    let repo = TestRepo::with_commit();
    repo.write("a.txt", "one\n");
    repo.write("src/b.rs", "fn main() {}\n");
    repo.commit_all("two files");
    repo.write("a.txt", "changed\n");
    repo.write("staged.txt", "staged\n");
    repo.git(&["add", "staged.txt"]);
    repo.write("untracked/deep/u.txt", "u\n");
    std::fs::remove_file(repo.path().join("src/b.rs")).unwrap();
    let before = observe(&repo);
    let snap = store(&repo).capture(&opts("test")).unwrap();
    assert_eq!(observe(&repo), before);
    assert!(snap.id.starts_with("sync_"));
    assert_eq!(snap.meta.git_status_files, 4);
    assert_eq!(snap.meta.git_commit.as_deref(), Some(repo.head().as_str()));
    // The snapshot tree holds the working state; the index commit the index.
    let tree = repo.git(&["ls-tree", "-r", "--name-only", &snap.commit]);
    assert_eq!(tree, "README.md\na.txt\nstaged.txt\nuntracked/deep/u.txt\n");
    let index = repo.git(&[
        "ls-tree",
        "-r",
        "--name-only",
        &format!("{}^2", snap.commit),
    ]);
    assert_eq!(index, "README.md\na.txt\nsrc/b.rs\nstaged.txt\n");
    let shown = repo.git(&["show", &format!("{}:a.txt", snap.commit)]);
    assert_eq!(shown, "changed\n");
}

#[test]
fn restore_round_trip() {
    let repo = TestRepo::with_commit();
    repo.write("keep.txt", "v1\n");
    repo.write("run.sh", "#!/bin/sh\n");
    std::fs::set_permissions(
        repo.path().join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    repo.commit_all("c1");
    repo.write("keep.txt", "v2 uncommitted\n");
    std::os::unix::fs::symlink("keep.txt", repo.path().join("link")).unwrap();
    let st = store(&repo);
    let snap = st.capture(&opts("t")).unwrap();
    let at_capture = observe(&repo);

    repo.write("keep.txt", "v3\n");
    repo.write("new.txt", "new\n");
    std::fs::set_permissions(
        repo.path().join("run.sh"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::remove_file(repo.path().join("link")).unwrap();
    repo.commit_all("c2");
    let later = observe(&repo);

    let report = st.restore(&snap.id, &RestoreOptions::default()).unwrap();
    let (s1, h1, _, _, f1) = observe(&repo);
    assert_eq!(f1, at_capture.4);
    assert_eq!(h1, at_capture.1);
    assert_eq!(s1, at_capture.0);

    st.restore(&report.safety.id, &RestoreOptions::default())
        .unwrap();
    let (s2, h2, _, _, f2) = observe(&repo);
    assert_eq!(f2, later.4);
    assert_eq!(h2, later.1);
    assert_eq!(s2, later.0);
}

#[test]
fn missing_and_corrupt_meta_name_the_file() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    let err = st
        .restore("sync_20200101_000000_1", &RestoreOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::MissingMeta { .. }), "{err}");
    assert!(
        err.to_string().contains("sync_20200101_000000_1.meta"),
        "{err}"
    );
    let snap = st.capture(&opts("t")).unwrap();
    let meta = st.file(&snap.id, "meta");
    std::fs::write(&meta, "{ not json").unwrap();
    for err in [st.show(&snap.id).unwrap_err(), st.list().unwrap_err()] {
        assert!(matches!(err, Error::CorruptMeta { .. }), "{err}");
        assert!(
            err.to_string().contains(&meta.display().to_string()),
            "{err}"
        );
    }
}
