//! The daemon loop with the real sync engine: a queued request reaches the
//! remote; the stop handle ends the loop; a second daemon is refused.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use wsync_coordinator::daemon::{
    self, Daemon, DaemonConfig, DaemonEvent, DaemonOptions, EngineRunner, Processor,
};
use wsync_coordinator::health::HealthOptions;
use wsync_coordinator::queue::{Priority, request_sync};
use wsync_coordinator::ratelimit::RateLimitConfig;
use wsync_coordinator::retry::RetryConfig;
use wsync_testutils::{TestRemote, wait_until};

#[test]
fn a_request_is_synced_by_the_daemon_and_stop_ends_it() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let state = a.path().join(".wsync");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(a.path().join(".git/info/exclude"), "/.wsync/\n").unwrap();
    let opts = DaemonOptions {
        workspace: a.path().to_path_buf(),
        state_dir: state.clone(),
        config: DaemonConfig::default(),
        schedule: None,
        health: Some(HealthOptions {
            skip_fsck: true,
            ..HealthOptions::default()
        }),
        exclusive: true,
    };
    let processor = Processor::new(&state, RateLimitConfig::default(), RetryConfig::default());
    let mut d = Daemon::new(opts.clone(), processor.clone()).unwrap();
    assert!(
        Daemon::new(opts, processor).is_err(),
        "one daemon per state folder"
    );
    let stop = d.stop_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let ws = a.path().to_path_buf();
    let st = state.clone();
    let t = std::thread::spawn(move || {
        let mut runner = EngineRunner::new(&ws, &st);
        d.run(&mut runner, &mut |e| {
            let _ = tx.send(e);
        })
        .unwrap();
    });
    a.write("hello.md", "hi\n");
    let ticket = request_sync(&state, "manual", "test", Priority::Normal, "doc").unwrap();
    assert!(wait_until(Duration::from_secs(30), || remote
        .subjects()
        .len()
        == 2));
    stop.stop();
    t.join().unwrap();
    let events: Vec<DaemonEvent> = rx.try_iter().collect();
    assert!(matches!(events.first(), Some(DaemonEvent::Started { .. })));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, DaemonEvent::Health(r) if r.healthy()))
    );
    assert!(events.iter().any(
        |e| matches!(e, DaemonEvent::Processed(p) if p.id == ticket.id && p.outcome == "done")
    ));
    assert!(matches!(events.last(), Some(DaemonEvent::Stopped)));
    assert!(!daemon::status(&state).unwrap().running);
}

#[test]
fn the_scheduler_enqueues_scheduled_syncs() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let state = a.path().join(".wsync");
    std::fs::create_dir_all(&state).unwrap();
    let opts = DaemonOptions {
        workspace: a.path().to_path_buf(),
        state_dir: state.clone(),
        config: DaemonConfig::default(),
        schedule: Some(Duration::from_millis(300)),
        health: None,
        exclusive: true,
    };
    let processor = Processor::new(&state, RateLimitConfig::default(), RetryConfig::default());
    let mut d = Daemon::new(opts, processor).unwrap();
    let stop = d.stop_handle();
    let (tx, rx) = std::sync::mpsc::channel();
    let (ws, st) = (a.path().to_path_buf(), state.clone());
    let t = std::thread::spawn(move || {
        // Automatic sync is disabled by default: the engine declines.
        let mut runner = EngineRunner::new(&ws, &st);
        d.run(&mut runner, &mut |e| {
            let _ = tx.send(e);
        })
        .unwrap();
    });
    let mut scheduled = 0;
    let mut processed = 0;
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while (scheduled < 2 || processed < 2) && std::time::Instant::now() < end {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(DaemonEvent::Scheduled { .. }) => scheduled += 1,
            Ok(DaemonEvent::Processed(p)) if p.sync_type == "scheduled" => {
                assert_eq!(p.outcome, "skipped", "{p:?}");
                processed += 1;
            }
            _ => {}
        }
    }
    stop.stop();
    t.join().unwrap();
    assert!(
        scheduled >= 2 && processed >= 2,
        "{scheduled} scheduled, {processed} processed"
    );
}
