//! SIGKILL of `wsync sync` at exact points (after the snapshot, half-way
//! through the checkout, right before the push): the next run recovers,
//! no byte is lost, `git fsck` is clean, no lock or pause is left.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use wsync_testutils::{KillOnDrop, TestRemote, git, git_output, wait_until, wsync_cmd, wsync_ok};

fn status(dir: &Path) -> Value {
    serde_json::from_str(&wsync_ok(dir, &["--json", "status"])).unwrap()
}

/// Sets up a clone with local edits while the remote moved on (so the
/// sync has a checkout of several files to do), kills `wsync sync` at
/// `phase`, and checks the recovery.
fn kill_at(phase: &str) {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let b = remote.clone_repo("b");
    wsync_ok(a.path(), &["init"]);
    for i in 0..5 {
        b.write(format!("remote/{i}.txt"), format!("remote file {i}\n"));
    }
    b.write("README.md", "# changed remotely\n");
    b.commit_all("remote work");
    git(b.path(), &["push", "-q", "origin", "HEAD:main"]);

    // Local work: a new file, an edit, a deletion, an untracked system file.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    a.write("local/new.bin", &big);
    a.write("local/notes.md", "my notes\n");
    a.write("agent.log", "system noise\n");
    let head_before = a.head();

    let child = wsync_cmd(a.path())
        .args(["sync", "--debug-pause-at", phase])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let marker = a.path().join(format!(".wsync/debug-paused-at-{phase}"));
    assert!(
        wait_until(Duration::from_secs(60), || marker.exists()),
        "never reached {phase}"
    );
    child.kill();
    std::fs::remove_file(&marker).unwrap();

    // The kill left a journal naming the snapshot; status reports it.
    let st = status(a.path());
    assert!(st["interrupted"]["phase"].is_string(), "{st}");
    assert_ne!(st["lock"]["state"], "held", "{st}");
    if phase == "checkout" {
        // Half-way: some remote files are there, not all.
        let present = (0..5)
            .filter(|i| a.exists(format!("remote/{i}.txt")))
            .count();
        assert!(present < 5, "checkout state: {present}");
        // The branch moves to the merge only after the checkout: HEAD is
        // still the user's commit on top of the old HEAD.
        let parents = git(a.path(), &["rev-list", "--parents", "-n", "1", "HEAD"]);
        assert_eq!(
            parents.split_whitespace().nth(1),
            Some(head_before.as_str())
        );
        assert_eq!(parents.split_whitespace().count(), 2, "{parents}");
    }

    let out = wsync_cmd(a.path())
        .arg("sync")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("recovered an interrupted sync"), "{text}");

    // No byte lost: local work intact and pushed, remote work present.
    assert_eq!(a.read_bytes("local/new.bin"), big);
    assert_eq!(a.read("local/notes.md"), "my notes\n");
    assert_eq!(a.read("agent.log"), "system noise\n");
    for i in 0..5 {
        assert_eq!(
            a.read(format!("remote/{i}.txt")),
            format!("remote file {i}\n")
        );
    }
    assert_eq!(a.read("README.md"), "# changed remotely\n");
    let files = git(remote.bare(), &["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        files.contains("local/new.bin") && files.contains("local/notes.md"),
        "{files}"
    );
    assert!(!files.contains("agent.log"));
    assert_eq!(a.head(), remote.head());
    // Only the system file differs from HEAD.
    let porcelain = git(
        a.path(),
        &["status", "--porcelain", "--untracked-files=all"],
    );
    assert_eq!(porcelain.trim(), "?? agent.log", "{porcelain}");
    for repo in [a.path(), remote.bare()] {
        let fsck = git_output(repo, &["fsck", "--no-dangling"]);
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stderr)
        );
    }
    let st = status(a.path());
    assert_eq!(st["lock"]["state"], "free");
    assert_eq!(st["pause"]["state"], "running");
    assert!(st["interrupted"].is_null());
    let log: Value = serde_json::from_str(&wsync_ok(a.path(), &["--json", "log"])).unwrap();
    let results: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, vec!["ok", "recovered"]);
    // The clone that pushed first converges too.
    wsync_ok(b.path(), &["sync"]);
    assert_eq!(b.read_bytes("local/new.bin"), big);
}

#[test]
fn sigkill_after_the_snapshot_is_recovered() {
    kill_at("snapshot");
}

#[test]
fn sigkill_during_checkout_is_recovered() {
    kill_at("checkout");
}

#[test]
fn sigkill_before_push_is_recovered() {
    kill_at("push");
}
