//! `wsync sync|pull|push|status|log|conflicts|emergency-stop` end to end:
//! two clones and one bare remote, real git, the real binary.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use wsync_testutils::{
    KillOnDrop, Sshd, TestRemote, TestRepo, git, wait_until, wsync, wsync_cmd, wsync_ok,
};

fn init(repo: &TestRepo) {
    wsync_ok(repo.path(), &["init"]);
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&wsync_ok(dir, &all)).unwrap()
}

fn tree(remote: &TestRemote) -> Vec<String> {
    git(remote.bare(), &["ls-tree", "-r", "--name-only", "main"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Spawns `wsync sync --debug-pause-at PHASE` and waits until it is there.
fn paused_sync(repo: &TestRepo, phase: &str) -> KillOnDrop {
    let child = wsync_cmd(repo.path())
        .args(["sync", "--debug-pause-at", phase])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let marker = repo.path().join(format!(".wsync/debug-paused-at-{phase}"));
    assert!(
        wait_until(Duration::from_secs(60), || marker.exists()),
        "sync never reached {phase}"
    );
    child
}

#[test]
fn edits_on_both_sides_converge_through_the_binary() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let b = remote.clone_repo("b");
    init(&a);
    init(&b);
    a.write("a.txt", "from a\n");
    b.write("b.txt", "from b\n");
    wsync_ok(a.path(), &["sync"]);
    let report = json(b.path(), &["sync"]);
    assert_eq!(report["integration"], "merge");
    assert_eq!(report["pushed"], true);
    wsync_ok(a.path(), &["sync-now"]);
    for r in [&a, &b] {
        assert_eq!(r.read("a.txt"), "from a\n");
        assert_eq!(r.read("b.txt"), "from b\n");
        assert!(r.status().is_empty());
        assert_eq!(r.head(), remote.head());
    }
    let status = json(a.path(), &["status"]);
    assert_eq!(status["lock"]["state"], "free");
    assert_eq!(status["pause"]["state"], "running");
    assert_eq!(status["pending_user"], 0);
    assert_eq!(status["ahead"], 0);
    assert_eq!(status["behind"], 0);
    assert_eq!(status["last_sync"]["result"], "ok");
    let log = json(a.path(), &["log", "-n", "1"]);
    assert_eq!(log.as_array().unwrap().len(), 1);
    assert_eq!(log[0]["integration"], "fast-forward");
    let human = wsync_ok(a.path(), &["log"]);
    assert_eq!(human.lines().count(), 2, "{human}");
}

#[test]
fn overlapping_edits_exit_4_and_resolve() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let b = remote.clone_repo("b");
    init(&a);
    init(&b);
    a.write("notes.md", "a\n");
    b.write("notes.md", "b\n");
    wsync_ok(a.path(), &["sync"]);
    let out = wsync(b.path(), &["sync"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("conflicts list"));
    let list = json(b.path(), &["conflicts", "list"]);
    let copy = list[0]["copy"].as_str().unwrap().to_owned();
    assert_eq!(b.read("notes.md"), "b\n");
    assert_eq!(b.read(&copy), "a\n");
    // The next sync still says conflicts remain.
    assert_eq!(code(&wsync(b.path(), &["sync"])), 4);
    wsync_ok(
        b.path(),
        &["conflicts", "resolve", "notes.md", "--take", "ours"],
    );
    assert!(!b.exists(&copy));
    assert_eq!(json(b.path(), &["conflicts"]).as_array().unwrap().len(), 0);
    wsync_ok(b.path(), &["sync"]);
    assert!(!tree(&remote).contains(&copy));
    let all = json(b.path(), &["conflicts", "list", "--all"]);
    assert_eq!(all.as_array().unwrap().len(), 1);
    let out = wsync(
        b.path(),
        &["conflicts", "resolve", "notes.md", "--take", "ours"],
    );
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("no open conflict"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn auto_theirs_from_the_config() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let b = remote.clone_repo("b");
    init(&a);
    init(&b);
    wsync_ok(
        b.path(),
        &[
            "config",
            "set",
            "conflict_resolution.strategy",
            "auto-theirs",
        ],
    );
    a.write("x.txt", "a\n");
    b.write("x.txt", "b\n");
    wsync_ok(a.path(), &["sync"]);
    wsync_ok(b.path(), &["sync"]);
    assert_eq!(b.read("x.txt"), "a\n");
}

#[test]
fn a_rejected_push_is_retried_after_a_racing_clone_pushes() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let b = remote.clone_repo("b");
    init(&a);
    a.write("mine.txt", "a\n");
    let mut child = paused_sync(&a, "push");
    // The race: b pushes while a is between its fetch and its push.
    b.write("theirs.txt", "b\n");
    b.commit_all("b");
    git(b.path(), &["push", "-q", "origin", "HEAD:main"]);
    std::fs::remove_file(a.path().join(".wsync/debug-paused-at-push")).unwrap();
    let out = child.0.wait_with_output_ref();
    assert!(out.0.success(), "{}", out.1);
    let files = tree(&remote);
    assert!(files.contains(&"mine.txt".to_owned()) && files.contains(&"theirs.txt".to_owned()));
    assert_eq!(a.read("theirs.txt"), "b\n");
    let log = json(a.path(), &["log", "-n", "1"]);
    assert_eq!(log[0]["integration"], "merge");
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitRef for std::process::Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read as _;
        let status = self.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        (status, err)
    }
}

#[test]
fn excluded_files_are_never_committed() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    init(&a);
    a.write("src/lib.rs", "pub fn f() {}\n");
    a.write("agent.log", "noise\n");
    a.write("cache.tmp", "tmp\n");
    a.write("node_modules/pkg/index.js", "x\n");
    a.write(".claude/autonomous/state.json", "{}\n");
    let dry = wsync_ok(a.path(), &["sync", "--dry-run"]);
    assert!(dry.contains("commit  src/lib.rs"), "{dry}");
    assert!(dry.contains("skip    agent.log"), "{dry}");
    wsync_ok(a.path(), &["sync"]);
    assert_eq!(
        tree(&remote),
        vec!["README.md".to_owned(), "src/lib.rs".to_owned()]
    );
    assert_eq!(a.read("agent.log"), "noise\n");
    assert_eq!(a.read(".claude/autonomous/state.json"), "{}\n");
    let status = json(a.path(), &["status"]);
    assert_eq!(status["pending_user"], 0);
    assert_eq!(status["pending_system"], 4);
}

#[test]
fn unreachable_remote_rolls_back_and_leaves_nothing_held() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    init(&a);
    a.write("draft.txt", "precious\n");
    let head = a.head();
    git(
        a.path(),
        &[
            "remote",
            "set-url",
            "origin",
            "ssh://127.0.0.1:1/nowhere.git",
        ],
    );
    let out = wsync(a.path(), &["sync"]);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(err.contains("restored to snapshot"), "{err}");
    assert_eq!(a.head(), head);
    assert_eq!(a.read("draft.txt"), "precious\n");
    let status = json(a.path(), &["status"]);
    assert_eq!(status["lock"]["state"], "free");
    assert_eq!(status["pause"]["state"], "running");
    assert!(status["interrupted"].is_null());
    assert_eq!(status["last_run"]["result"], "rolled_back");
}

#[test]
fn busy_exit_3_and_skipped_exit_5() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    init(&a);
    let mut child = paused_sync(&a, "locked");
    let out = wsync(a.path(), &["sync"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("another sync holds the lock"));
    let status = json(a.path(), &["status"]);
    assert_eq!(status["lock"]["state"], "held");
    std::fs::remove_file(a.path().join(".wsync/debug-paused-at-locked")).unwrap();
    assert!(child.0.wait().unwrap().success());

    let out = wsync(a.path(), &["sync", "--reason", "scheduled"]);
    assert_eq!(code(&out), 5);
    assert!(String::from_utf8_lossy(&out.stdout).contains("skipped: automatic sync is disabled"));
    wsync_ok(a.path(), &["config", "enable"]);
    let out = wsync(a.path(), &["sync", "--reason", "scheduled"]);
    assert_eq!(code(&out), 5);
    assert!(String::from_utf8_lossy(&out.stdout).contains("min_time_between_syncs"));
    wsync_ok(a.path(), &["sync", "--reason", "scheduled", "--force"]);
    wsync_ok(a.path(), &["force-sync", "--reason", "scheduled"]);
    let out = wsync(a.path(), &["sync", "--reason", "bogus"]);
    assert_eq!(code(&out), 2);
}

#[test]
fn emergency_stop_kills_a_running_sync_and_disables_automatic_sync() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    init(&a);
    wsync_ok(a.path(), &["config", "enable"]);
    a.write("wip.txt", "work in progress\n");
    let mut child = paused_sync(&a, "committed");
    let report = json(a.path(), &["emergency-stop", "--grace", "1"]);
    assert_eq!(report["stopped_pid"], child.id());
    let status = child.0.wait().unwrap();
    assert!(!status.success());
    assert_eq!(
        wsync_ok(a.path(), &["config", "get", "enabled"]).trim(),
        "false"
    );
    let status = json(a.path(), &["status"]);
    assert_eq!(status["lock"]["state"], "free");
    assert_eq!(status["pause"]["state"], "running");
    assert!(status["interrupted"]["snapshot"].is_string());
    // The next run recovers the killed one, then syncs.
    let out = wsync_ok(a.path(), &["sync"]);
    assert!(out.contains("recovered an interrupted sync"), "{out}");
    assert!(tree(&remote).contains(&"wip.txt".to_owned()));
    assert_eq!(a.read("wip.txt"), "work in progress\n");
}

#[test]
fn pull_and_push_commands() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let b = remote.clone_repo("b");
    init(&a);
    init(&b);
    a.write("a.txt", "a\n");
    wsync_ok(a.path(), &["push"]);
    assert!(tree(&remote).contains(&"a.txt".to_owned()));
    b.write("b.txt", "b\n");
    wsync_ok(b.path(), &["pull"]);
    assert_eq!(b.read("a.txt"), "a\n");
    assert!(!tree(&remote).contains(&"b.txt".to_owned()));
}

#[test]
fn sync_over_ssh_to_loopback() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let b = remote.clone_repo("b");
    let url = sshd.git_url(remote.bare());
    for r in [&a, &b] {
        wsync_ok(r.path(), &["init", "--remote", &url]);
        assert_eq!(git(r.path(), &["remote", "get-url", "origin"]).trim(), url);
    }
    let run = |r: &TestRepo| {
        let out = wsync_cmd(r.path())
            .env("GIT_SSH_COMMAND", sshd.ssh_command())
            .arg("sync")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    a.write("over-ssh.txt", "hello\n");
    run(&a);
    run(&b);
    assert_eq!(b.read("over-ssh.txt"), "hello\n");
    assert_eq!(b.head(), remote.head());
}

#[test]
fn init_sets_remote_and_branch_and_keeps_an_existing_config() {
    let remote = TestRemote::new();
    let a = TestRepo::new();
    a.write("x.txt", "x\n");
    let url = format!("file://{}", remote.bare().display());
    wsync_ok(a.path(), &["init", "--remote", &url, "--branch", "main"]);
    assert_eq!(
        wsync_ok(a.path(), &["config", "get", "remote.branch"]).trim(),
        "main"
    );
    // Unborn local branch: the first sync takes the remote, then pushes.
    let out = wsync(a.path(), &["sync"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tree(&remote).contains(&"x.txt".to_owned()));
    assert_eq!(a.read("README.md"), "# test\n");
    wsync_ok(a.path(), &["config", "interval", "15"]);
    wsync_ok(a.path(), &["init"]);
    assert_eq!(
        wsync_ok(a.path(), &["config", "get", "interval_minutes"]).trim(),
        "15"
    );
}

#[test]
fn sigterm_mid_run_rolls_back_cleanly() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    init(&a);
    a.write("wip.txt", "w\n");
    let head = a.head();
    let mut child = paused_sync(&a, "committed");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    std::fs::remove_file(a.path().join(".wsync/debug-paused-at-committed")).unwrap();
    let (status, err) = child.0.wait_with_output_ref();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("cancelled") && err.contains("restored"),
        "{err}"
    );
    assert_eq!(a.head(), head);
    assert_eq!(a.read("wip.txt"), "w\n");
    assert_eq!(remote.subjects(), vec!["initial".to_owned()]);
    let st = json(a.path(), &["status"]);
    assert_eq!(st["lock"]["state"], "free");
    assert!(st["interrupted"].is_null());
}

#[test]
fn a_non_utf8_name_is_left_alone_with_a_warning() {
    use std::os::unix::ffi::OsStrExt as _;
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    init(&a);
    a.write("ok.txt", "synced\n");
    let odd = a.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::write(&odd, "latin-1 name\n").unwrap();
    let out = wsync(a.path(), &["sync"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not synced: caf\u{fffd}.txt") && err.contains("not valid UTF-8"),
        "{err}"
    );
    assert_eq!(tree(&remote), vec!["README.md", "ok.txt"]);
    assert_eq!(std::fs::read(&odd).unwrap(), b"latin-1 name\n");
    let report = json(a.path(), &["sync", "--force"]);
    assert_eq!(report["not_utf8"], serde_json::json!(["caf\u{fffd}.txt"]));
}
