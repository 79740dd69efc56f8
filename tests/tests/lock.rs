//! `wsync lock`, `wsync guard` and `wsync pause`, end to end with real
//! processes and real SIGKILL.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use wsync_testutils::{KillOnDrop, TestRepo, wait_until, wsync, wsync_cmd, wsync_ok};

fn init() -> TestRepo {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["init"]);
    repo
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&wsync_ok(dir, &all)).unwrap()
}

fn spawn(dir: &Path, args: &[&str]) -> KillOnDrop {
    KillOnDrop(
        wsync_cmd(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `words` split at spaces, then `script` as one argument
/// (`sh_args("guard -- sh -c", "exit 3")`).
fn sh_args<'a>(words: &'a str, script: &'a str) -> Vec<&'a str> {
    let mut v: Vec<&str> = words.split(' ').collect();
    v.push(script);
    v
}

/// Waits until `wsync GROUP status` reports `state`.
fn wait_state(dir: &Path, group: &str, state: &str) {
    assert!(
        wait_until(
            Duration::from_secs(20),
            || json(dir, &[group, "status"])["state"] == state
        ),
        "{group} never became {state}"
    );
}

/// Waits until the file `rel` exists in `dir`.
fn wait_file(dir: &Path, rel: &str) {
    assert!(
        wait_until(Duration::from_secs(20), || dir.join(rel).exists()),
        "{rel} never appeared"
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn kill(pid: &str, sig: &str) {
    let _ = Command::new("kill").args([sig, pid.trim()]).status();
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Kills the process whose pid a test command wrote, when dropped.
struct Orphan(String);

impl Drop for Orphan {
    fn drop(&mut self) {
        kill(&self.0, "-KILL");
    }
}

#[test]
fn sigkilled_holder_frees_the_lock_and_leaves_a_stale_record() {
    let repo = init();
    let dir = repo.path();
    for round in 0..2 {
        let mut holder = spawn(
            dir,
            &sh_args(
                "lock run --reason holder -- sh -c",
                "echo $$ > child.pid; exec sleep 30",
            ),
        );
        wait_file(dir, "child.pid");
        wait_state(dir, "lock", "held");
        let status = json(dir, &["lock", "status"]);
        assert_eq!(status["record"]["pid"], holder.id());
        assert_eq!(status["record"]["reason"], "holder");
        assert_eq!(status["record"]["caller"], "wsync lock run");
        let child_pid = repo.read("child.pid");
        let _orphan = Orphan(child_pid.clone());
        std::fs::remove_file(dir.join("child.pid")).unwrap();

        // Kill wsync only: the command it ran lives on without the lock
        // (the lock handle is close-on-exec, never inherited).
        holder.kill();
        assert!(alive(&child_pid), "the orphaned command still runs");

        if round == 0 {
            let status = json(dir, &["lock", "status"]);
            assert_eq!(status["state"], "stale", "{status}");
            assert_eq!(status["record"]["pid"], holder.id());
            let why = status["why"].as_str().unwrap();
            assert!(why.contains("no longer running"), "{why}");
            assert_eq!(status["cleared"], true);
            assert_eq!(json(dir, &["lock", "status"])["state"], "free");
            // Free at once, without waiting.
            wsync_ok(dir, &["lock", "run", "--", "true"]);
        } else {
            // Acquire right away: it replaces the stale record itself.
            let out = wsync(dir, &["-v", "lock", "run", "--", "true"]);
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            assert!(
                stderr(&out).contains("replaced a stale"),
                "{}",
                stderr(&out)
            );
            assert_eq!(json(dir, &["lock", "status"])["state"], "free");
        }
    }
}

#[test]
fn racing_processes_hold_the_lock_one_at_a_time() {
    let repo = init();
    let dir = repo.path();
    repo.write("counter", "0\n");
    let script = "c=$(cat counter); c=$((c+1)); echo $c > counter; echo $c >> seen; \
                  sleep 0.02; c=$(cat counter); echo $((c-1)) > counter";
    let n = 16;
    let children: Vec<_> = (0..n)
        .map(|_| {
            wsync_cmd(dir)
                .args(["lock", "run", "--wait", "120", "--", "sh", "-c", script])
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let seen = repo.read("seen");
    assert_eq!(seen.lines().count(), n, "{seen}");
    assert!(
        seen.lines().all(|l| l == "1"),
        "two holders at once: {seen}"
    );
    assert_eq!(repo.read("counter").trim(), "0");
    assert_eq!(json(dir, &["lock", "status"])["state"], "free");
}

#[test]
fn busy_lock_exit_codes_and_passthrough() {
    let repo = init();
    let dir = repo.path();
    let out = wsync(dir, &["lock", "run", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let mut holder = spawn(
        dir,
        &["lock", "run", "--reason", "hold", "--", "sleep", "30"],
    );
    wait_state(dir, "lock", "held");
    for args in [
        &["lock", "run", "--", "touch", "ran"][..],
        &["lock", "run", "--wait", "0.3", "--", "touch", "ran"][..],
    ] {
        let out = wsync(dir, args);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("sync.lock") && err.contains("hold"), "{err}");
    }
    assert!(!repo.exists("ran"));
    holder.kill();
    let out = wsync(dir, &["lock", "run", "--", "/does/not/exist"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
}

#[test]
fn lock_run_forwards_sigterm_and_holds_until_the_command_ends() {
    let repo = init();
    let dir = repo.path();
    let script = "trap 'echo got > term; exit 9' TERM; touch ready; sleep 30 & wait";
    let mut holder = KillOnDrop(
        wsync_cmd(dir)
            .args(["lock", "run", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_file(dir, "ready");
    kill(&holder.id().to_string(), "-TERM");
    let status = holder.0.wait().unwrap();
    assert_eq!(status.code(), Some(9));
    assert_eq!(repo.read("term").trim(), "got");
    assert_eq!(json(dir, &["lock", "status"])["state"], "free");
}

#[test]
fn pause_waits_for_a_writer_then_blocks_new_writers() {
    let repo = init();
    let dir = repo.path();
    let mut writer = spawn(
        dir,
        &sh_args(
            "guard --name slow -- sh -c",
            "touch w.started; sleep 1; touch w.done",
        ),
    );
    wait_file(dir, "w.started");
    let pause_script = "test -e w.done && echo acked > p.ok; \
                        cat .wsync/sync-pause.lock > p.tmp && mv p.tmp p.content; \
                        while [ ! -e g2.launched ]; do sleep 0.05; done; \
                        sleep 1.5; touch p.done";
    let mut args = vec!["pause", "run", "--reason", "e2e pause"];
    args.extend(sh_args("--ack-timeout 30 -- sh -c", pause_script));
    let mut pauser = spawn(dir, &args);
    // The pause file shows up before the writer finishes…
    wait_state(dir, "pause", "paused");
    // …but the paused command only runs once the writer is done.
    wait_file(dir, "p.content");
    assert_eq!(repo.read("p.ok").trim(), "acked");
    assert!(writer.0.wait().unwrap().success());
    let content = repo.read("p.content");
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), 3, "{content}");
    assert_eq!(lines[0], pauser.id().to_string());
    assert!(
        chrono_like(lines[1]),
        "timestamp line {:?} in {content}",
        lines[1]
    );
    assert_eq!(lines[2], "e2e pause");

    // A writer arriving now (the pause lasts until it has been launched)
    // waits for the pause to end.
    repo.write("g2.launched", "");
    let out = wsync(
        dir,
        &[
            "-v",
            "guard",
            "--",
            "sh",
            "-c",
            "test -e p.done && touch g2.ok",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(repo.exists("g2.ok"), "the writer ran during the pause");
    assert!(
        stderr(&out).contains("for a pause to end"),
        "{}",
        stderr(&out)
    );
    assert!(pauser.0.wait().unwrap().success());
    assert!(!repo.exists(".wsync/sync-pause.lock"), "removed on release");
    assert_eq!(json(dir, &["pause", "status"])["state"], "running");
    let log = repo.read(".wsync/writers.jsonl");
    let windows: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(windows.len(), 2, "{log}");
    assert_eq!(windows[0]["name"], "slow");
    assert_eq!(windows[0]["pid"], writer.id());
    assert_eq!(windows[1]["name"], "sh");
}

fn chrono_like(s: &str) -> bool {
    s.len() == 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T' && s.ends_with('Z')
}

#[test]
fn writer_proceeds_after_max_wait_and_pause_wait_times_out() {
    let repo = init();
    let dir = repo.path();
    assert_eq!(
        wsync(dir, &["pause", "wait", "--timeout", "1"])
            .status
            .code(),
        Some(0)
    );
    let _pauser = spawn(dir, &["pause", "run", "--", "sleep", "30"]);
    wait_state(dir, "pause", "paused");
    let out = wsync(dir, &["guard", "--max-wait", "0.3", "--", "touch", "late"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(repo.exists("late"));
    assert!(
        stderr(&out).contains("lasted longer than 0.3s"),
        "{}",
        stderr(&out)
    );
    let out = wsync(dir, &["pause", "wait", "--timeout", "0.2"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("still paused"), "{}", stderr(&out));
    // A second pause cannot start while this one lasts (it would wait up
    // to the max pause); the writer log has the late writer.
    assert!(repo.read(".wsync/writers.jsonl").contains("\"touch\""));
}

#[test]
fn sigkilled_pauser_leaves_a_stale_pause_file() {
    let repo = init();
    let dir = repo.path();
    let mut pauser = spawn(
        dir,
        &sh_args("pause run -- sh -c", "echo $$ > child.pid; exec sleep 30"),
    );
    wait_file(dir, "child.pid");
    wait_state(dir, "pause", "paused");
    let _orphan = Orphan(repo.read("child.pid"));
    pauser.kill();
    assert!(repo.exists(".wsync/sync-pause.lock"));
    let status = json(dir, &["pause", "status"]);
    assert_eq!(status["state"], "stale", "{status}");
    assert_eq!(status["info"]["pid"], pauser.id());
    assert!(
        status["why"]
            .as_str()
            .unwrap()
            .contains("no longer running")
    );
    assert!(!repo.exists(".wsync/sync-pause.lock"));
    // Writers are not held back by it (a stale file written back is ignored too).
    std::fs::write(
        dir.join(".wsync/sync-pause.lock"),
        format!("{}\n2025-06-13T19:58:05Z\nold\n", pauser.id()),
    )
    .unwrap();
    let out = wsync(dir, &["guard", "--max-wait", "20", "--", "true"]);
    assert!(out.status.success());
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn garbage_records_are_reported_stale_by_the_cli() {
    let repo = init();
    let dir = repo.path();
    for (content, state) in [
        ("", "free"),
        ("{\"pid\": 12, \"host\": \"x\"", "stale"),
        ("\u{0}\u{1}garbage", "stale"),
    ] {
        std::fs::write(dir.join(".wsync/sync.lock"), content).unwrap();
        let status = json(dir, &["lock", "status"]);
        assert_eq!(status["state"], state, "{content:?}: {status}");
        if state == "stale" {
            assert!(status["why"].as_str().unwrap().contains("sync.lock"));
        }
        assert_eq!(json(dir, &["lock", "status"])["state"], "free");
    }
    std::fs::write(dir.join(".wsync/sync-pause.lock"), "garbage").unwrap();
    let text = wsync_ok(dir, &["pause", "status"]);
    assert!(
        text.contains("stale") && text.contains("sync-pause.lock"),
        "{text}"
    );
    assert_eq!(json(dir, &["pause", "status"])["state"], "running");
}

#[test]
fn missing_state_folder() {
    let repo = TestRepo::with_commit();
    let dir = repo.path();
    for args in [
        &["lock", "status"][..],
        &["lock", "run", "--", "touch", "ran"][..],
        &["pause", "status"][..],
        &["pause", "wait"][..],
        &["pause", "run", "--", "touch", "ran"][..],
    ] {
        let out = wsync(dir, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(".wsync") && err.contains("wsync init"),
            "{err}"
        );
    }
    assert!(!repo.exists("ran"));
    // The guard never blocks the autonomous writer: it just runs.
    let out = wsync(dir, &["guard", "--", "sh", "-c", "touch ran; exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(repo.exists("ran"));
    assert!(!repo.exists(".wsync"), "nothing created the state folder");
}

#[test]
fn lock_files_that_are_folders() {
    let repo = init();
    let dir = repo.path();
    std::fs::create_dir(dir.join(".wsync/sync.lock")).unwrap();
    for args in [&["lock", "status"][..], &["lock", "run", "--", "true"][..]] {
        let out = wsync(dir, args);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("sync.lock is not a regular file"), "{err}");
    }
    std::fs::create_dir(dir.join(".wsync/writers.lock")).unwrap();
    let out = wsync(dir, &["guard", "--", "touch", "ran"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(repo.exists("ran"));
    assert!(stderr(&out).contains("writers.lock"), "{}", stderr(&out));
}

#[test]
fn sigkilled_writer_does_not_hold_up_a_pause() {
    let repo = init();
    let dir = repo.path();
    let mut writer = spawn(
        dir,
        &sh_args(
            "guard --name doomed -- sh -c",
            "echo $$ > child.pid; exec sleep 30",
        ),
    );
    wait_file(dir, "child.pid");
    let _orphan = Orphan(repo.read("child.pid"));
    writer.kill();
    // The orphaned command does not inherit the shared lock: the pause is
    // acknowledged at once (no "still busy" warning).
    let out = wsync(dir, &["pause", "run", "--ack-timeout", "20", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}
