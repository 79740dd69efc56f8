//! The sync queue end to end: `request-sync`, `queue list|clear|history`,
//! `process`, 100 concurrent requesters, corrupt queue files.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use wsync_testutils::{TestRemote, TestRepo, wait_until, wsync, wsync_cmd, wsync_ok};

fn json(repo: &TestRepo, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&wsync_ok(repo.path(), &a)).unwrap()
}

fn config(repo: &TestRepo, value: &Value) {
    std::fs::write(
        repo.path().join(".wsync/config.json"),
        serde_json::to_vec_pretty(value).unwrap(),
    )
    .unwrap();
}

#[test]
fn request_sync_prints_tickets_merges_and_processes() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    wsync_ok(a.path(), &["init"]);
    let t1 = wsync_ok(
        a.path(),
        &["request-sync", "manual", "script", "low", "first"],
    );
    let t1 = t1.trim();
    assert!(t1.starts_with('q'), "{t1}");
    let t2 = wsync_ok(
        a.path(),
        &["-q", "request-sync", "manual", "script", "high"],
    );
    assert_eq!(
        t2.trim(),
        t1,
        "identical pending request merges into the same ticket"
    );
    wsync_ok(a.path(), &["request-sync", "manual", "other"]);
    let list = json(&a, &["queue", "list"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], t1);
    assert_eq!(list[0]["priority"], "high");
    assert_eq!(list[0]["merged"], 1);
    // A bad priority is a usage error naming the value.
    let bad = wsync(a.path(), &["request-sync", "manual", "x", "urgent"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("urgent"));

    a.write("notes.md", "hello\n");
    let done = json(&a, &["process"]);
    let done = done.as_array().unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(done[0]["outcome"], "done");
    assert!(json(&a, &["queue", "list"]).as_array().unwrap().is_empty());
    let b = remote.clone_repo("b");
    assert_eq!(b.read("notes.md"), "hello\n");
    let hist = json(&a, &["queue", "history"]);
    let merged: u64 = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|h| 1 + h["merged"].as_u64().unwrap())
        .sum();
    assert_eq!(merged, 3, "three requests, all accounted for");
    // Nothing due: process says so and succeeds.
    assert!(wsync_ok(a.path(), &["process"]).contains("nothing due"));
}

#[test]
fn rate_limits_defer_with_a_reason_and_critical_overrides() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    wsync_ok(a.path(), &["init"]);
    config(
        &a,
        &serde_json::json!({ "ratelimit": { "burst": 1, "syncs_per_hour": 1 } }),
    );
    wsync_ok(a.path(), &["request-sync", "manual", "one"]);
    wsync_ok(a.path(), &["request-sync", "manual", "two"]);
    let done = json(&a, &["process"]);
    let outcomes: Vec<&str> = done
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["done", "deferred"]);
    let list = json(&a, &["queue", "list"]);
    let e = &list[0];
    assert_eq!(e["status"], "deferred");
    assert!(e["note"].as_str().unwrap().contains("rate limit"), "{e}");
    assert!(e["next_attempt_at"].is_string());
    let status = json(&a, &["status"]);
    let deferred = &status["auto"]["queue"][0];
    assert!(
        deferred["note"].as_str().unwrap().contains("rate limit"),
        "{status}"
    );
    assert!(
        deferred["next_attempt_at"].is_string(),
        "status says until when: {status}"
    );
    assert!(wsync_ok(a.path(), &["status"]).contains("deferred"));
    let st = json(&a, &["daemon", "status"]);
    assert!(
        st["ratelimit"]["sync_refusal"]["why"]
            .as_str()
            .unwrap()
            .contains("1 syncs"),
        "{st}"
    );
    // Critical overrides (the merge upgrades the deferred entry).
    wsync_ok(a.path(), &["request-sync", "manual", "two", "critical"]);
    let done = json(&a, &["process"]);
    assert_eq!(done[0]["outcome"], "done");
}

#[test]
fn corrupt_queue_file_is_a_clear_error_and_clear_keeps_a_copy() {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["init"]);
    let q = repo.path().join(".wsync/queue.json");
    std::fs::write(&q, b"{\"version\": 1, \"entries\": [ {\"id\": ").unwrap();
    for args in [&["queue", "list"][..], &["request-sync", "manual", "x"][..]] {
        let out = wsync(repo.path(), args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("queue.json") && err.contains("corrupt"),
            "{err}"
        );
    }
    assert!(wsync_ok(repo.path(), &["queue", "clear"]).contains("cleared 0"));
    let kept: Vec<_> = std::fs::read_dir(repo.path().join(".wsync"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("queue.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    wsync_ok(repo.path(), &["request-sync", "manual", "x"]);
}

/// 100 processes request syncs at once while a daemon and three `wsync
/// process` runs drain the queue: every request is merged, processed or
/// deferred with a reason; no two syncs overlap (sync.log intervals); the
/// queue file parses at every instant a reader looks.
#[test]
fn hundred_concurrent_requests_are_all_accounted_for() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    wsync_ok(a.path(), &["init"]);
    config(
        &a,
        &serde_json::json!({ "ratelimit": { "burst": 8, "syncs_per_hour": 8 } }),
    );
    let daemon = wsync_testutils::KillOnDrop(
        wsync_cmd(a.path())
            .args(["daemon", "run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let state = a.path().join(".wsync");
    assert!(wait_until(Duration::from_secs(20), || state
        .join("daemon.sock")
        .exists()));

    // A reader checks the queue file all along.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, q) = (stop.clone(), reads.clone(), state.join("queue.json"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(bytes) = std::fs::read(&q) {
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                        panic!(
                            "queue.json invalid mid-run: {e}: {}",
                            String::from_utf8_lossy(&bytes)
                        )
                    });
                    assert!(v["entries"].is_array());
                    reads.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    for i in 0..5 {
        a.write(format!("file{i}.txt"), format!("{i}\n"));
    }
    let mut children = Vec::new();
    for i in 0..100 {
        let caller = format!("caller{}", i % 40);
        let prio = ["low", "normal", "high"][i % 3];
        children.push(
            wsync_cmd(a.path())
                .args([
                    "-q",
                    "request-sync",
                    "manual",
                    &caller,
                    prio,
                    &format!("req {i}"),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        if i % 33 == 0 {
            children.push(
                wsync_cmd(a.path())
                    .args(["-q", "process"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
    }
    let mut tickets: HashMap<String, usize> = HashMap::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let is_request = text.trim().starts_with('q') && !text.contains(' ');
        if is_request {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            *tickets.entry(text.trim().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(
        tickets.values().sum::<usize>(),
        100,
        "every requester got a ticket"
    );

    // Wait until nothing is due: the rest is deferred by the rate limit.
    let settled = wait_until(Duration::from_secs(60), || {
        let list = json(&a, &["queue", "list"]);
        list.as_array()
            .unwrap()
            .iter()
            .all(|e| e["status"] == "deferred")
    });
    assert!(
        settled,
        "queue never settled: {}",
        json(&a, &["queue", "list"])
    );
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(reads.load(Ordering::SeqCst) > 10);
    drop(daemon);

    // Accounting: history + queue, each entry with its merges, is 100.
    let hist = json(&a, &["queue", "history", "--last", "1000"]);
    let queue = json(&a, &["queue", "list"]);
    let count = |v: &Value| -> u64 {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| 1 + e["merged"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        count(&hist) + count(&queue),
        100,
        "history {hist}\nqueue {queue}"
    );
    for e in queue.as_array().unwrap() {
        assert!(
            e["note"].as_str().unwrap().contains("rate limit"),
            "deferred without a reason: {e}"
        );
    }
    for h in hist.as_array().unwrap() {
        assert_eq!(h["outcome"], "done", "{h}");
    }
    // Every ticket id handed out is in the history or the queue.
    let known: std::collections::HashSet<&str> = hist
        .as_array()
        .unwrap()
        .iter()
        .chain(queue.as_array().unwrap())
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for t in tickets.keys() {
        assert!(known.contains(t.as_str()), "ticket {t} lost");
    }

    // No two syncs overlapped: sync.log's lock-held intervals are disjoint.
    let log = std::fs::read_to_string(state.join("sync.log")).unwrap();
    let mut spans: Vec<(f64, f64)> = log
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let start =
                chrono::DateTime::parse_from_rfc3339(v["started_at"].as_str().unwrap()).unwrap();
            let s = start.timestamp_millis() as f64;
            // The run starts before the lock: the git work begins once the
            // `lock` phase (acquisition) is over.
            let lock_ms = v["phases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["phase"] == "lock")
                .map_or(0.0, |p| p["ms"].as_f64().unwrap());
            (s + lock_ms, s + v["duration_ms"].as_f64().unwrap())
        })
        .collect();
    assert!(spans.len() >= 2, "{log}");
    spans.sort_by(|x, y| x.0.total_cmp(&y.0));
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0 + 1.0, "overlapping syncs: {w:?}");
    }
    let b = remote.clone_repo("b");
    for i in 0..5 {
        assert_eq!(b.read(format!("file{i}.txt")), format!("{i}\n"));
    }
}
