//! `wsync watch` in the foreground: user edits are committed and pushed,
//! system writes and wsync's own pulls are not, polling works, SIGTERM
//! stops it cleanly.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use wsync_testutils::{KillOnDrop, TestRemote, TestRepo, git, wait_until, wsync_cmd, wsync_ok};

fn configure(repo: &TestRepo, poll: bool) {
    wsync_ok(repo.path(), &["init"]);
    let config = serde_json::json!({
        "enabled": true,
        "watch": { "code_debounce_ms": 200, "default_debounce_ms": 400, "system_debounce_ms": 600,
                   "max_wait_ms": 1500, "poll": poll, "poll_interval_ms": 200 },
        "ratelimit": { "enabled": false },
    });
    std::fs::write(repo.path().join(".wsync/config.json"), config.to_string()).unwrap();
}

fn watch(repo: &TestRepo) -> (KillOnDrop, std::path::PathBuf) {
    let log = repo.path().join(".wsync/watch-test.log");
    let child = wsync_cmd(repo.path())
        .args(["watch", "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = KillOnDrop(child);
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("watching")
    }));
    (w, log)
}

fn check(poll: bool) {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    configure(&a, poll);
    let (mut w, log) = watch(&a);
    a.write(
        ".claude/autonomous/service-status.json",
        "{\"timestamp\": 1}\n",
    );
    a.write("logs/run.log", "line\n");
    a.write("src/lib.rs", "pub fn f() {}\n");
    assert!(
        wait_until(Duration::from_secs(30), || remote.subjects().len() == 2),
        "no commit; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let files = git(remote.bare(), &["ls-tree", "-r", "--name-only", "main"]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        ["README.md", "src/lib.rs"]
    );
    // Rewriting a committed file with the same bytes is not a change; a
    // pulled commit (written by wsync's own integration) is not either.
    a.write("src/lib.rs", "pub fn f() {}\n");
    let b = remote.clone_repo("b");
    b.write("docs/from-b.md", "b\n");
    b.commit_all("from b");
    git(b.path(), &["push", "-q", "origin", "HEAD:main"]);
    wsync_ok(a.path(), &["request-sync", "manual", "test"]);
    assert!(wait_until(Duration::from_secs(30), || a.exists("docs/from-b.md")));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(remote.subjects().len(), 3, "{:?}", remote.subjects());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("ignored .claude/autonomous/service-status.json"),
        "{text}"
    );
    if poll {
        assert!(text.contains("by polling"), "{text}");
    }
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &w.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(w.0.wait().unwrap().success());
}

#[test]
fn watch_syncs_user_edits_and_ignores_system_and_own_writes() {
    check(false);
}

#[test]
fn watch_by_polling_behaves_the_same() {
    check(true);
}

/// With the inotify watch limit reached (a user namespace with a limit of
/// 3 watches), the watcher warns, falls back to polling and still syncs.
#[test]
fn watch_falls_back_to_polling_at_the_inotify_limit() {
    let probe = std::process::Command::new("unshare")
        .args([
            "-Ur",
            "sh",
            "-c",
            "echo 3 > /proc/sys/user/max_inotify_watches",
        ])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(
            !wsync_testutils::in_ci(),
            "CI needs `unshare -Ur` with a writable /proc/sys/user/max_inotify_watches"
        );
        eprintln!("skipping: cannot lower the inotify limit in a user namespace here");
        return;
    }
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    for d in ["one", "two", "three", "four", "five"] {
        a.write(format!("{d}/keep.txt"), "x\n");
    }
    a.commit_all("folders");
    git(a.path(), &["push", "-q", "origin", "HEAD:main"]);
    configure(&a, false);
    let log = a.path().join(".wsync/watch-test.log");
    let mut cmd = std::process::Command::new("unshare");
    wsync_testutils::hermetic(&mut cmd);
    cmd.current_dir(a.path())
        .args([
            "-Ur",
            "sh",
            "-c",
            "echo 3 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"",
        ])
        .arg(wsync_testutils::wsync_bin())
        .args(["watch", "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut w = KillOnDrop(cmd.spawn().unwrap());
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("watching")
    }));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("WARNING") && text.contains("polling"),
        "{text}"
    );
    assert!(text.contains("by polling"), "{text}");
    a.write("four/new.rs", "fn f() {}\n");
    assert!(
        wait_until(Duration::from_secs(30), || remote.subjects().len() == 3),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    w.kill();
}
