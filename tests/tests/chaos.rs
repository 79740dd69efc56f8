//! Crash injection at CI size: a few trials of each scenario of
//! `cargo xtask chaos` (the same harness, `wsync_tests::chaos`), each a
//! real SIGKILL of the real binary's process group at a random instant,
//! then the same command again and the checks (no byte lost, nothing
//! stuck, `git fsck --full` clean, no temp file at a final path, state
//! readable).
#![allow(clippy::unwrap_used)]

use wsync_tests::chaos::{ChaosOptions, Scenario, markdown_table, run_scenario};
use wsync_testutils::wsync_bin;

fn campaign(scenario: Scenario, trials: usize) {
    let opts = ChaosOptions {
        bin: wsync_bin(),
        trials,
        seed: 0x5eed ^ trials as u64,
        baseline_runs: 1,
        scale: 12,
        ssh: true,
    };
    let report = run_scenario(&opts, scenario, &mut |_| {}).unwrap();
    let table = markdown_table(std::slice::from_ref(&report));
    let failures: Vec<String> = report
        .details
        .iter()
        .filter(|t| !t.ok())
        .map(|t| serde_json::to_string_pretty(t).unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{table}\nfailed trials:\n{}",
        failures.join("\n")
    );
    assert_eq!(report.trials, trials);
    assert_eq!(report.recoveries, trials, "{table}");
    assert!(
        report.details.iter().all(|t| t.manifest_files > 0),
        "{table}"
    );
}

#[test]
fn sigkilled_sync_recovers_without_loss() {
    campaign(Scenario::Sync, 4);
}

#[test]
fn sigkilled_rollback_recovers_without_loss() {
    campaign(Scenario::Rollback, 4);
}

#[test]
fn sigkilled_remote_sync_recovers_without_loss() {
    campaign(Scenario::Remote, 4);
}

#[test]
fn sigkilled_daemon_recovers_without_loss() {
    campaign(Scenario::Daemon, 4);
}

/// Regression (found by `cargo xtask chaos`): recovering a killed sync
/// restores its snapshot, which first captures the current state; with an
/// autonomous writer rewriting a log all the time that capture never
/// settled ("kept changing while being captured") and every later sync
/// failed for as long as the writer ran. Recovery now pauses writers.
#[test]
fn recovery_after_a_kill_succeeds_while_a_writer_keeps_writing() {
    use std::process::Stdio;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use wsync_testutils::{KillOnDrop, TestRemote, wait_until, wsync_cmd, wsync_ok};

    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    wsync_ok(a.path(), &["init"]);
    a.write("notes.md", "mine\n");
    // An edit from before the writer started (the filter attributes
    // changes within 500 ms of a writer's window to the writer).
    std::fs::File::options()
        .write(true)
        .open(a.path().join("notes.md"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(30))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, dir) = (stop.clone(), a.path().to_path_buf());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let script = format!("mkdir -p logs && echo tick {n} >> logs/run.log");
                let _ = wsync_cmd(&dir)
                    .args(["guard", "--name", "w", "--max-wait", "20", "--", "sh", "-c"])
                    .arg(script)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let child = wsync_cmd(a.path())
        .args(["sync", "--debug-pause-at", "snapshot"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let marker = a.path().join(".wsync/debug-paused-at-snapshot");
    assert!(wait_until(Duration::from_secs(60), || marker.exists()));
    child.kill();
    std::fs::remove_file(&marker).unwrap();
    // Give the writer time to run again now that the pause holder is dead.
    std::thread::sleep(Duration::from_millis(300));
    let out = wsync_cmd(a.path()).arg("sync").output().unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("recovered an interrupted sync"), "{stdout}");
    assert_eq!(a.read("notes.md"), "mine\n");
    let files = wsync_testutils::git(remote.bare(), &["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        files.contains("notes.md") && !files.contains("run.log"),
        "{files}\n{stdout}"
    );
}

/// Regression (found by `cargo xtask chaos`): a SIGKILL during the fetch
/// killed `git fetch` while it updated `refs/remotes/origin/main`, and its
/// `.lock` file failed every later fetch ("Another git process seems to be
/// running"). Recovery now clears the remote-tracking ref locks the killed
/// run left (those created after it started).
#[test]
fn recovery_clears_a_remote_tracking_ref_lock_left_by_a_killed_fetch() {
    use std::process::Stdio;
    use std::time::Duration;
    use wsync_testutils::{KillOnDrop, TestRemote, wait_until, wsync_cmd};

    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let b = remote.clone_repo("b");
    wsync_testutils::wsync_ok(a.path(), &["init"]);
    b.write("from-b.md", "b\n");
    b.commit_all("b");
    b.git(&["push", "-q", "origin", "HEAD:main"]);
    a.write("from-a.md", "a\n");
    let child = wsync_cmd(a.path())
        .args(["sync", "--debug-pause-at", "committed"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let marker = a.path().join(".wsync/debug-paused-at-committed");
    assert!(wait_until(Duration::from_secs(60), || marker.exists()));
    child.kill();
    std::fs::remove_file(&marker).unwrap();
    // What a fetch killed mid-update leaves behind.
    let lock = a.path().join(".git/refs/remotes/origin/main.lock");
    std::fs::write(&lock, "0000000000000000000000000000000000000000\n").unwrap();
    let out = wsync_cmd(a.path()).arg("sync").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!lock.exists());
    assert_eq!(a.read("from-b.md"), "b\n");
    let files = wsync_testutils::git(remote.bare(), &["ls-tree", "-r", "--name-only", "main"]);
    assert!(files.contains("from-a.md"), "{files}");
}
