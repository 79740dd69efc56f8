//! The daemon end to end: start/status/logs/stop, SIGKILL mid-sync and
//! restart, corrupt state files kept aside at start-up, SIGTERM.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use wsync_testutils::{KillOnDrop, TestRemote, TestRepo, wait_until, wsync, wsync_cmd, wsync_ok};

fn json(repo: &TestRepo, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&wsync_ok(repo.path(), &a)).unwrap()
}

fn spawn_daemon(repo: &TestRepo) -> KillOnDrop {
    let child = wsync_cmd(repo.path())
        .args(["daemon", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let d = KillOnDrop(child);
    let state = repo.path().join(".wsync");
    assert!(
        wait_until(Duration::from_secs(20), || state
            .join("daemon.sock")
            .exists()),
        "daemon did not start"
    );
    d
}

/// Stops a background daemon when the test ends, even on a failure.
struct StopOnDrop(std::path::PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = wsync(&self.0, &["daemon", "stop", "--timeout", "30"]);
    }
}

#[test]
fn start_status_logs_stop() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    wsync_ok(a.path(), &["init"]);
    let _guard = StopOnDrop(a.path().to_path_buf());
    let out = wsync_ok(a.path(), &["daemon", "start"]);
    assert!(out.contains("daemon started"), "{out}");
    let again = wsync_ok(a.path(), &["daemon", "start"]);
    assert!(again.contains("already running"), "{again}");
    let st = json(&a, &["daemon", "status"]);
    assert_eq!(st["running"], true);
    let pid = st["record"]["pid"].as_u64().unwrap();
    // A request is served promptly (no 30 s tick).
    a.write("n.md", "x\n");
    wsync_ok(a.path(), &["request-sync", "manual", "t"]);
    assert!(wait_until(Duration::from_secs(20), || remote
        .subjects()
        .len()
        == 2));
    assert!(wait_until(Duration::from_secs(5), || {
        wsync_ok(a.path(), &["daemon", "logs"]).contains("done")
    }));
    let logs = wsync_ok(a.path(), &["daemon", "logs", "-n", "100"]);
    assert!(
        logs.contains("daemon: started") && logs.contains("health:"),
        "{logs}"
    );
    let stop = wsync_ok(a.path(), &["daemon", "stop"]);
    assert!(stop.contains(&pid.to_string()), "{stop}");
    assert_eq!(json(&a, &["daemon", "status"])["running"], false);
    assert!(wsync_ok(a.path(), &["daemon", "logs"]).contains("daemon: stopped"));
    assert!(wsync_ok(a.path(), &["daemon", "stop"]).contains("not running"));
}

#[test]
fn sigterm_stops_the_foreground_daemon_cleanly() {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["init"]);
    let mut d = spawn_daemon(&repo);
    nix_kill(d.id(), "-TERM");
    let status = d.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!repo.path().join(".wsync/daemon.sock").exists());
    assert!(!repo.path().join(".wsync/daemon.pid").exists());
}

fn nix_kill(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// The remote's pre-receive hook holds the first push for a while (and
/// then rejects it): the daemon is SIGKILLed right in the middle of that
/// sync. After a restart the queue entry is still there, the interrupted
/// run is recovered, the sync completes and the file arrives intact.
#[test]
fn sigkill_mid_sync_then_restart_completes_without_losing_a_byte() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    wsync_ok(a.path(), &["init"]);
    let marker = slow_first_push(&remote);
    let body: Vec<u8> = (0..200_000u32).flat_map(u32::to_le_bytes).collect();
    a.write("data.bin", &body);
    a.write("notes.md", "important\n");
    let mut d = spawn_daemon(&a);
    let ticket = wsync_ok(a.path(), &["-q", "request-sync", "manual", "test", "high"]);
    assert!(
        wait_until(Duration::from_secs(30), || marker.exists()),
        "push never started"
    );
    d.kill(); // SIGKILL mid-push
    let q = json(&a, &["queue", "list"]);
    let q = q.as_array().unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["id"], ticket.trim());
    assert_eq!(q[0]["status"], "running");
    assert_eq!(a.read_bytes("data.bin"), body);

    let d2 = spawn_daemon(&a);
    assert!(
        wait_until(Duration::from_secs(60), || json(&a, &["queue", "list"])
            .as_array()
            .unwrap()
            .is_empty()),
        "queue: {}",
        json(&a, &["queue", "list"])
    );
    drop(d2);
    let hist = json(&a, &["queue", "history"]);
    let last = hist.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["id"], ticket.trim());
    assert_eq!(last["outcome"], "done", "{last}");
    let b = remote.clone_repo("b");
    assert_eq!(b.read_bytes("data.bin"), body);
    assert_eq!(b.read("notes.md"), "important\n");
    assert_eq!(a.read_bytes("data.bin"), body);
    assert_eq!(json(&a, &["lock", "status"])["state"], "free");
}

fn slow_first_push(remote: &TestRemote) -> std::path::PathBuf {
    let marker = remote.root().join("push-started");
    let hook = remote.bare().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nif [ ! -e '{m}' ]; then touch '{m}'; sleep 3; exit 1; fi\nexit 0\n",
            m = marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    marker
}

/// SIGTERM while a sync pushes: the sync is rolled back (nothing half
/// done), the daemon exits 0, the request stays queued uncounted, and the
/// next daemon completes it.
#[test]
fn sigterm_mid_sync_rolls_back_keeps_the_request_and_exits_cleanly() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    wsync_ok(a.path(), &["init"]);
    let marker = slow_first_push(&remote);
    a.write("notes.md", "keep me\n");
    let head = a.head();
    let mut d = spawn_daemon(&a);
    let ticket = wsync_ok(a.path(), &["-q", "request-sync", "manual", "test"]);
    assert!(
        wait_until(Duration::from_secs(30), || marker.exists()),
        "push never started"
    );
    nix_kill(d.id(), "-TERM");
    let status = d.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let q = json(&a, &["queue", "list"]);
    assert_eq!(q[0]["id"], ticket.trim(), "{q}");
    assert_eq!(
        q[0]["attempts"], 0,
        "an interrupted run does not count: {q}"
    );
    assert_eq!(a.head(), head, "the local commit was rolled back");
    assert_eq!(a.read("notes.md"), "keep me\n");
    assert_eq!(json(&a, &["lock", "status"])["state"], "free");
    assert_eq!(remote.subjects().len(), 1);
    let _d2 = spawn_daemon(&a);
    assert!(wait_until(Duration::from_secs(30), || remote
        .subjects()
        .len()
        == 2));
    assert_eq!(remote.clone_repo("b").read("notes.md"), "keep me\n");
}

#[test]
fn corrupt_state_files_are_kept_aside_and_the_daemon_starts_clean() {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["init"]);
    let state = repo.path().join(".wsync");
    std::fs::write(state.join("queue.json"), "not json at all").unwrap();
    std::fs::write(state.join("ratelimit.json"), "{\"syncs\": 12}").unwrap();
    std::fs::write(state.join("circuit.json"), "").unwrap();
    // Commands name the bad file.
    let out = wsync(repo.path(), &["queue", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue.json"));
    let out = wsync(repo.path(), &["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1));
    // The daemon keeps copies and starts clean.
    let _guard = StopOnDrop(repo.path().to_path_buf());
    wsync_ok(repo.path(), &["daemon", "start"]);
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for f in ["queue.json", "ratelimit.json", "circuit.json"] {
        let kept: Vec<_> = names
            .iter()
            .filter(|n| n.starts_with(&format!("{f}.corrupt-")))
            .collect();
        assert_eq!(kept.len(), 1, "{f}: {names:?}");
    }
    let kept = names
        .iter()
        .find(|n| n.starts_with("queue.json.corrupt-"))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(state.join(kept)).unwrap(),
        "not json at all"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        wsync_ok(repo.path(), &["daemon", "logs"]).contains("kept as")
    }));
    wsync_ok(repo.path(), &["request-sync", "manual", "x"]);
    wsync_ok(repo.path(), &["daemon", "stop"]);
}

#[test]
fn health_reports_every_check_and_fails_on_a_broken_repository() {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["init"]);
    let report = json(&repo, &["health"]);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["repository", "disk", "sync_lock", "git_locks", "queue"]
    );
    let tree = repo.git(&["rev-parse", "HEAD^{tree}"]);
    let tree = tree.trim();
    std::fs::remove_file(
        repo.path()
            .join(".git/objects")
            .join(&tree[..2])
            .join(&tree[2..]),
    )
    .unwrap();
    let out = wsync(repo.path(), &["health"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL repository"));
}

#[test]
fn logs_follow_prints_new_lines_as_they_come() {
    use std::io::{BufRead as _, BufReader};
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["init"]);
    let log = repo.path().join(".wsync/daemon.log");
    std::fs::write(&log, "old line\n").unwrap();
    let mut child = KillOnDrop(
        wsync_cmd(repo.path())
            .args(["daemon", "logs", "-f", "-n", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "old line\n");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"new line\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "new line\n");
    nix_kill(child.id(), "-INT");
    assert!(child.0.wait().unwrap().success());
}
