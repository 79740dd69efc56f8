//! `wsync init` and the global options, end to end.

use wsync_testutils::{TestRepo, wsync, wsync_ok};

#[test]
fn init_creates_state_and_excludes_it_once() {
    let repo = TestRepo::with_commit();
    let sub = repo.path().join("src/deep");
    std::fs::create_dir_all(&sub).unwrap();
    // Run from a subfolder: the workspace defaults to the git top-level.
    wsync_ok(&sub, &["init"]);
    assert!(repo.path().join(".wsync").is_dir());
    wsync_ok(&sub, &["init"]);
    let exclude = repo.read(".git/info/exclude");
    assert_eq!(exclude.lines().filter(|l| *l == "/.wsync/").count(), 1);
    // The state folder never shows up as a change.
    assert!(
        repo.status().is_empty(),
        "status: {:?}",
        String::from_utf8_lossy(&repo.status())
    );
}

#[test]
fn explicit_state_dir_and_workspace() {
    let repo = TestRepo::with_commit();
    let other = tempfile::tempdir().unwrap();
    let ws = repo.path().to_str().unwrap();
    let state = other.path().join("state");
    wsync_ok(
        other.path(),
        &[
            "--workspace",
            ws,
            "--state-dir",
            state.to_str().unwrap(),
            "init",
        ],
    );
    assert!(state.is_dir());
    assert!(!repo.path().join(".wsync").exists());
}

#[test]
fn missing_workspace_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = wsync(tmp.path(), &["--workspace", "does/not/exist", "init"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does/not/exist"), "stderr: {err}");
}
