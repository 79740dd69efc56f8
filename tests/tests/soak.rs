//! Loop-freedom soak (CI-sized): two clones with daemons and watchers, an
//! autonomous writer rewriting system files all the time, a second writer
//! that rewrites files right after every pull (system files, and a pulled
//! user file with identical bytes), periodic pulls on both sides, and
//! scripted user edits on both sides. Every user edit must arrive on the
//! other side, no commit may contain a system path, and once the user
//! stops there must be zero commits while everything else keeps running.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wsync_lock::{PauseGate, WriterOptions};
use wsync_testutils::{
    KillOnDrop, TestRemote, TestRepo, git, git_output, wait_until, wsync_cmd, wsync_ok,
};

const SYSTEM: [&str; 3] = [
    ".claude/autonomous/service-status.json",
    ".claude/contexts/state.json",
    "logs/run.log",
];

fn setup(repo: &TestRepo) -> KillOnDrop {
    wsync_ok(repo.path(), &["init"]);
    let config = serde_json::json!({
        "enabled": true,
        "watch": { "enabled": true, "code_debounce_ms": 300, "default_debounce_ms": 500,
                   "system_debounce_ms": 1000, "max_wait_ms": 2000 },
        "ratelimit": { "enabled": false },
    });
    std::fs::write(repo.path().join(".wsync/config.json"), config.to_string()).unwrap();
    let child = wsync_cmd(repo.path())
        .args(["daemon", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = KillOnDrop(child);
    let sock = repo.path().join(".wsync/daemon.sock");
    assert!(wait_until(Duration::from_secs(20), || sock.exists()));
    d
}

fn write_as_system(gate: &PauseGate, repo: &TestRepo, rel: &str, text: &str) {
    let g = gate
        .writer(&WriterOptions {
            name: "soak-system".into(),
            max_wait: Duration::from_secs(30),
            ..WriterOptions::default()
        })
        .unwrap();
    repo.write(rel, text);
    g.finish().unwrap();
}

fn spawn_loop(
    stop: &Arc<AtomicBool>,
    every: Duration,
    mut f: impl FnMut() + Send + 'static,
) -> JoinHandle<()> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            f();
            std::thread::sleep(every);
        }
    })
}

#[test]
fn no_loops_every_user_edit_arrives_and_idle_means_no_commits() {
    let t0 = Instant::now();
    let remote = TestRemote::new();
    let seed = remote.clone_repo("seed");
    seed.write(
        SYSTEM[1],
        "{\"focus\": \"x\", \"timestamp\": \"2020-01-01T00:00:00Z\"}\n",
    );
    seed.write("projects/app/main.py", "print('v0')\n");
    seed.commit_all("seed files");
    git(seed.path(), &["push", "-q", "origin", "HEAD:main"]);
    let base = remote.head();
    let a = remote.clone_repo("a");
    let b = remote.clone_repo("b");
    let _da = setup(&a);
    let _db = setup(&b);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();

    // The autonomous system in A: status, timestamp-only context, log.
    {
        let a = TestRepo::at(a.path());
        let gate = PauseGate::new(a.path().join(".wsync"));
        let mut n = 0u64;
        threads.push(spawn_loop(&stop, Duration::from_millis(300), move || {
            n += 1;
            let now = chrono::Utc::now().to_rfc3339();
            write_as_system(
                &gate,
                &a,
                SYSTEM[0],
                &format!("{{\"tick\": {n}, \"timestamp\": \"{now}\"}}\n"),
            );
            write_as_system(
                &gate,
                &a,
                SYSTEM[1],
                &format!("{{\"focus\": \"x\", \"timestamp\": \"{now}\"}}\n"),
            );
            let mut log = std::fs::read_to_string(a.path().join(SYSTEM[2])).unwrap_or_default();
            log.push_str(&format!("{now} tick {n}\n"));
            write_as_system(&gate, &a, SYSTEM[2], &log);
        }));
    }
    // In B: rewrite files right after every pull (HEAD change).
    {
        let b = TestRepo::at(b.path());
        let gate = PauseGate::new(b.path().join(".wsync"));
        let mut last = b.head();
        threads.push(spawn_loop(&stop, Duration::from_millis(100), move || {
            let out = git_output(b.path(), &["rev-parse", "HEAD"]);
            let head = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && head != last {
                last = head;
                let now = chrono::Utc::now().to_rfc3339();
                write_as_system(
                    &gate,
                    &b,
                    SYSTEM[0],
                    &format!("{{\"pulled\": \"{last}\", \"timestamp\": \"{now}\"}}\n"),
                );
                write_as_system(
                    &gate,
                    &b,
                    SYSTEM[1],
                    &format!("{{\"focus\": \"x\", \"timestamp\": \"{now}\"}}\n"),
                );
                // A pulled user file rewritten with the same bytes.
                if let Ok(same) = std::fs::read(b.path().join("projects/app/main.py")) {
                    b.write("projects/app/main.py", same);
                }
            }
        }));
    }
    // Both sides pull every 2 s (what the scheduler does, sped up).
    for repo in [&a, &b] {
        let dir = repo.path().to_path_buf();
        threads.push(spawn_loop(&stop, Duration::from_secs(2), move || {
            let _ = wsync_cmd(&dir)
                .args(["-q", "request-sync", "manual", "poller", "low"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }));
    }

    // The user's edits.
    let edits: [(&TestRepo, u64, &str, &str); 5] = [
        (&a, 1, "projects/app/main.py", "print('v1')\n"),
        (&a, 4, "docs/a.md", "# A\n\nfrom machine a\n"),
        (&b, 6, "docs/b.md", "# B\n\nfrom machine b\n"),
        (&a, 9, "projects/app/main.py", "print('v2')\n"),
        (&a, 12, "projects/app/main.py", "print('v3')\n"),
    ];
    let start = Instant::now();
    for (repo, at, path, text) in edits {
        let due = start + Duration::from_secs(at);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        repo.write(path, text);
    }
    // Every final user version arrives on the other side.
    let arrived = wait_until(Duration::from_secs(40), || {
        let read =
            |r: &TestRepo, p: &str| std::fs::read_to_string(r.path().join(p)).unwrap_or_default();
        read(&b, "projects/app/main.py") == "print('v3')\n"
            && read(&b, "docs/a.md") == "# A\n\nfrom machine a\n"
            && read(&a, "docs/b.md") == "# B\n\nfrom machine b\n"
    });
    assert!(
        arrived,
        "user edits did not arrive; remote: {:?}",
        remote.subjects()
    );
    // Idle window: only the systems and the pollers run.
    let before = remote.head();
    std::thread::sleep(Duration::from_secs(8));
    let after = remote.head();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        before,
        after,
        "commits while only the systems wrote: {:?}",
        remote.subjects()
    );

    // No commit holds a system path.
    let touched = git(
        remote.bare(),
        &["log", "--name-only", "--format=", &format!("{base}..main")],
    );
    for p in touched.lines().filter(|l| !l.is_empty()) {
        assert!(
            !SYSTEM.contains(&p),
            "system path {p} committed; all: {touched}"
        );
    }
    // One commit per settled user edit at most (edits may coalesce; the
    // two sides may also merge, which is not a user commit).
    let commits = git(
        remote.bare(),
        &[
            "rev-list",
            "--count",
            "--no-merges",
            &format!("{base}..main"),
        ],
    );
    let commits: usize = commits.trim().parse().unwrap();
    assert!(
        (3..=5).contains(&commits),
        "{commits} commits for 5 edits: {:?}",
        remote.subjects()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(90),
        "soak took {:?}",
        t0.elapsed()
    );
}
