//! The watcher on a real repository: user edits request a sync, system
//! writes are ignored, same-bytes rewrites are no change, new folders are
//! watched.
#![allow(clippy::unwrap_used)]

use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use wsync_coordinator::config::FiltersConfig;
use wsync_coordinator::queue::Queue;
use wsync_coordinator::watch::{WatchConfig, WatchEvent, WatchOptions, Watcher};
use wsync_testutils::TestRepo;

fn start(repo: &TestRepo, poll: bool) -> (Watcher, Receiver<WatchEvent>) {
    let state = repo.path().join(".wsync");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(repo.path().join(".git/info/exclude"), "/.wsync/\n").unwrap();
    let (tx, rx) = channel();
    let w = Watcher::start(
        &WatchOptions {
            workspace: repo.path().to_path_buf(),
            state_dir: state,
            config: WatchConfig {
                code_debounce_ms: 150,
                default_debounce_ms: 300,
                system_debounce_ms: 400,
                max_wait_ms: 1000,
                poll,
                poll_interval_ms: 100,
                ..WatchConfig::default()
            },
            filters: FiltersConfig::default(),
        },
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
    )
    .unwrap();
    (w, rx)
}

fn wait_for(
    rx: &Receiver<WatchEvent>,
    secs: u64,
    mut pred: impl FnMut(&WatchEvent) -> bool,
) -> Vec<WatchEvent> {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(e) => {
                let hit = pred(&e);
                seen.push(e);
                if hit {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("event not seen; got {seen:?}");
}

fn requested(e: &WatchEvent, path: &str) -> bool {
    matches!(e, WatchEvent::Requested { paths, .. } if paths.iter().any(|p| p.to_str() == Some(path)))
}

#[test]
fn user_edits_request_a_sync_and_system_writes_are_ignored() {
    let repo = TestRepo::with_commit();
    let (w, rx) = start(&repo, false);
    wait_for(&rx, 10, |e| {
        matches!(e, WatchEvent::Started { polling: false, .. })
    });
    repo.write(".claude/autonomous/service-status.json", "{}\n");
    wait_for(
        &rx,
        10,
        |e| matches!(e, WatchEvent::Ignored { path, .. } if path.ends_with("service-status.json")),
    );
    // A new folder is watched as it appears.
    repo.write("deep/new/dir/code.rs", "fn main() {}\n");
    wait_for(&rx, 10, |e| requested(e, "deep/new/dir/code.rs"));
    let q = Queue::new(&repo.path().join(".wsync")).list().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].sync_type, "watch");
    assert_eq!(q[0].priority, wsync_coordinator::queue::Priority::High);
    // Same bytes as HEAD: no change.
    repo.write("README.md", "# test\n");
    wait_for(&rx, 10, |e| matches!(e, WatchEvent::Unchanged { .. }));
    w.stop();
}

#[test]
fn polling_sees_the_same_changes() {
    let repo = TestRepo::with_commit();
    let (w, rx) = start(&repo, true);
    wait_for(&rx, 10, |e| {
        matches!(e, WatchEvent::Started { polling: true, .. })
    });
    std::thread::sleep(Duration::from_millis(300));
    repo.write("src/a.py", "x = 1\n");
    wait_for(&rx, 10, |e| requested(e, "src/a.py"));
    w.stop();
}

#[test]
fn changes_made_before_start_are_reconciled() {
    let repo = TestRepo::with_commit();
    repo.write("offline-edit.txt", "made while nothing watched\n");
    let (w, rx) = start(&repo, false);
    wait_for(&rx, 10, |e| requested(e, "offline-edit.txt"));
    drop(w);
}
