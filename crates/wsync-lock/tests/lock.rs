//! In-process tests of the sync lock and the pause gate (threads and
//! separate handles; cross-process tests drive the binary in
//! `tests/tests/lock.rs`).
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use wsync_lock::{
    Error, LockOptions, LockStatus, PauseGate, PauseOptions, PauseStatus, SyncLock, Wait,
    WriterOptions, read_writer_windows,
};

fn opts(reason: &str) -> LockOptions {
    LockOptions {
        caller: "test".into(),
        reason: reason.into(),
        ..LockOptions::default()
    }
}

fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn record_json(pid: u32, start_time: Option<u64>) -> String {
    serde_json::json!({
        "pid": pid, "start_time": start_time,
        "host": gethostname(), "caller": "old", "reason": "crashed",
        "acquired_at": "2025-06-13T19:58:05Z", "max_hold_secs": 600
    })
    .to_string()
}

fn gethostname() -> String {
    // The same name the crate records (gethostname(2) via /proc).
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn two_handles_in_one_process_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let a = SyncLock::new(dir.path());
    let b = SyncLock::new(dir.path());
    let guard = a.acquire(&opts("first"), Wait::Fail).unwrap();
    assert_eq!(guard.record().pid, std::process::id());
    assert!(guard.replaced_stale().is_none());

    match b.try_acquire(&opts("second")) {
        Err(Error::Busy { path, holder }) => {
            assert_eq!(path, dir.path().join("sync.lock"));
            assert_eq!(holder.unwrap().reason, "first");
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    let t = Instant::now();
    let err = b
        .acquire(&opts("second"), Wait::Timeout(Duration::from_millis(150)))
        .unwrap_err();
    assert!(matches!(err, Error::Busy { .. }));
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert!(err.to_string().contains("sync.lock"), "{err}");

    // A blocked Forever waiter gets it as soon as the guard goes.
    let (tx, rx) = mpsc::channel();
    let dir2 = dir.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        let g = SyncLock::new(&dir2)
            .acquire(&opts("third"), Wait::Forever)
            .unwrap();
        tx.send(g.record().reason.clone()).unwrap();
    });
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    match a.status().unwrap() {
        LockStatus::Held(r) => assert_eq!(r.reason, "first"),
        other => panic!("{other:?}"),
    }
    guard.release().unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "third");
    waiter.join().unwrap();
    assert_eq!(a.status().unwrap(), LockStatus::Free);
    assert_eq!(std::fs::read(a.path()).unwrap(), b"");
}

#[test]
fn exactly_one_thread_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let dir = dir.path().to_path_buf();
            let inside = inside.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let g = SyncLock::new(&dir)
                        .acquire(&opts(&format!("t{i}")), Wait::Forever)
                        .unwrap();
                    let n = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    assert_eq!(n, 0, "two holders at once");
                    std::thread::sleep(Duration::from_micros(200));
                    inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    drop(g);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn overdue_holder_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let lock = SyncLock::new(dir.path());
    let _g = lock
        .acquire(
            &LockOptions {
                max_hold: Duration::ZERO,
                ..opts("quick")
            },
            Wait::Fail,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let status = lock.status().unwrap();
    assert!(status.is_overdue(), "{status:?}");
}

#[test]
fn garbage_empty_and_truncated_records_are_stale_and_cleared() {
    let full = record_json(dead_pid(), None);
    let truncated = full[..full.len() / 2].to_owned();
    for (content, expect_stale) in [
        ("", false),
        ("\n  \n", false),
        ("garbage \u{0}\u{1}", true),
        ("12345\n", true),
        (truncated.as_str(), true),
        ("{\"pid\": 1}", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let lock = SyncLock::new(dir.path());
        std::fs::write(lock.path(), content).unwrap();
        let status = lock.status().unwrap();
        if expect_stale {
            match &status {
                LockStatus::Stale { record: None, why } => {
                    assert!(why.contains("sync.lock"), "{why}");
                }
                other => panic!("{content:?}: {other:?}"),
            }
        } else {
            assert_eq!(status, LockStatus::Free, "{content:?}");
        }
        // Cleared: the next look says free.
        assert_eq!(lock.status().unwrap(), LockStatus::Free, "{content:?}");
        assert!(std::fs::read(lock.path()).unwrap().is_empty());
    }
}

#[test]
fn dead_holder_record_is_stale_and_replaced_by_acquire() {
    let dir = tempfile::tempdir().unwrap();
    let lock = SyncLock::new(dir.path());
    let pid = dead_pid();
    std::fs::write(lock.path(), record_json(pid, Some(1))).unwrap();
    match lock.status().unwrap() {
        LockStatus::Stale {
            record: Some(r),
            why,
        } => {
            assert_eq!(r.pid, pid);
            assert_eq!(r.caller, "old");
            assert!(why.contains("no longer running"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // Acquire also reports what it replaced.
    std::fs::write(lock.path(), record_json(pid, None)).unwrap();
    let g = lock.try_acquire(&opts("new")).unwrap();
    assert!(matches!(
        g.replaced_stale(),
        Some(LockStatus::Stale { record: Some(r), .. }) if r.pid == pid
    ));
}

#[test]
fn reused_pid_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let lock = SyncLock::new(dir.path());
    // Our own pid, but a start time long before we started.
    std::fs::write(lock.path(), record_json(std::process::id(), Some(1000))).unwrap();
    match lock.status().unwrap() {
        LockStatus::Stale { why, .. } => assert!(why.contains("reused"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn foreign_holder_without_record_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let lock = SyncLock::new(dir.path());
    std::fs::write(lock.path(), "not json").unwrap();
    let foreign = File::open(lock.path()).unwrap();
    foreign.lock().unwrap();
    let err = lock.status().unwrap_err();
    assert!(matches!(err, Error::UnreadableRecord { .. }), "{err:?}");
    assert!(err.to_string().contains("sync.lock"), "{err}");
    let busy = lock.try_acquire(&opts("x")).unwrap_err();
    assert!(matches!(busy, Error::Busy { holder: None, .. }), "{busy:?}");
    drop(foreign);
    assert!(matches!(lock.status().unwrap(), LockStatus::Stale { .. }));

    // Held, with a readable record whose pid looks gone (e.g. a holder in
    // another pid namespace): still held, never stale.
    let pid = dead_pid();
    std::fs::write(lock.path(), record_json(pid, None)).unwrap();
    let foreign = File::open(lock.path()).unwrap();
    foreign.lock().unwrap();
    assert!(matches!(lock.status().unwrap(), LockStatus::Held(r) if r.pid == pid));
    assert!(
        std::fs::read(lock.path()).unwrap().len() > 10,
        "not cleared"
    );
}

#[test]
fn missing_state_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let is_no_state = |e: &Error| matches!(e, Error::NoStateDir { path } if path == &missing);
    let lock = SyncLock::new(&missing);
    assert!(is_no_state(&lock.try_acquire(&opts("x")).unwrap_err()));
    let err = lock.status().unwrap_err();
    assert!(is_no_state(&err));
    assert!(err.to_string().contains("wsync init"), "{err}");
    let gate = PauseGate::new(&missing);
    assert!(is_no_state(
        &gate.pause(&PauseOptions::default()).unwrap_err()
    ));
    assert!(is_no_state(
        &gate.writer(&WriterOptions::default()).unwrap_err()
    ));
    assert!(is_no_state(&gate.status().unwrap_err()));
    assert!(is_no_state(&read_writer_windows(&missing).unwrap_err()));
    assert!(!gate.is_paused());
    assert!(!missing.exists(), "nothing may create the state folder");

    // A file where the folder should be.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(matches!(
        SyncLock::new(&file).status().unwrap_err(),
        Error::NoStateDir { .. }
    ));
}

#[test]
fn lock_files_that_are_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "sync.lock",
        "writers.lock",
        "sync-pause.lock",
        "writers.jsonl",
    ] {
        std::fs::create_dir(dir.path().join(name)).unwrap();
    }
    let lock = SyncLock::new(dir.path());
    for err in [
        lock.status().unwrap_err(),
        lock.try_acquire(&opts("x")).unwrap_err(),
    ] {
        assert!(matches!(err, Error::NotAFile { ref path } if path.ends_with("sync.lock")));
    }
    let gate = PauseGate::new(dir.path());
    let err = gate.status().unwrap_err();
    assert!(err.to_string().contains("sync-pause.lock"), "{err}");
    let err = gate.writer(&WriterOptions::default()).unwrap_err();
    assert!(err.to_string().contains("is not a regular file"), "{err}");
    let err = read_writer_windows(dir.path()).unwrap_err();
    assert!(err.to_string().contains("writers.jsonl"), "{err}");
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn pause_waits_for_writer_then_blocks_new_writers() {
    let dir = tempfile::tempdir().unwrap();
    let gate = PauseGate::new(dir.path());
    let writer = gate
        .writer(&WriterOptions {
            name: "busy".into(),
            ..WriterOptions::default()
        })
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let d = dir.path().to_path_buf();
    let pauser = std::thread::spawn(move || {
        let gate = PauseGate::new(&d);
        let p = gate
            .pause(&PauseOptions {
                reason: "test sync".into(),
                ack_timeout: Duration::from_secs(20),
                ..PauseOptions::default()
            })
            .unwrap();
        tx.send(p.acknowledged()).unwrap();
        // Hold the pause until told to end.
        std::thread::sleep(Duration::from_millis(400));
        p.release().unwrap();
    });
    // The pause file appears at once, but the pause waits for the writer.
    assert!(wsync_testutils::wait_until(Duration::from_secs(5), || {
        gate.is_paused()
    }));
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    let pause_file = lines(&gate.pause_file());
    assert_eq!(pause_file.len(), 3, "{pause_file:?}");
    assert_eq!(pause_file[0], std::process::id().to_string());
    assert!(pause_file[1].ends_with('Z'), "{pause_file:?}");
    assert_eq!(pause_file[2], "test sync");
    let window = writer.finish().unwrap();
    assert_eq!(window.name, "busy");
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "acknowledged"
    );

    // A new writer waits for the pause to end.
    let t = Instant::now();
    let w2 = gate.writer(&WriterOptions::default()).unwrap();
    assert!(!w2.pause_exceeded());
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert!(w2.paused_by() == Some(std::process::id()));
    assert!(!gate.pause_file().exists(), "removed on release");
    drop(w2);
    pauser.join().unwrap();
    let windows = read_writer_windows(dir.path()).unwrap();
    assert_eq!(windows.len(), 2);
    assert!(windows[0].end <= windows[1].start);
}

#[test]
fn ack_timeout_and_max_wait_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let gate = PauseGate::new(dir.path());
    let writer = gate.writer(&WriterOptions::default()).unwrap();
    let t = Instant::now();
    let pause = gate
        .pause(&PauseOptions {
            ack_timeout: Duration::from_millis(100),
            ..PauseOptions::default()
        })
        .unwrap();
    assert!(!pause.acknowledged());
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(!pause.overdue());
    drop(writer);

    let w = gate
        .writer(&WriterOptions {
            name: "impatient".into(),
            max_wait: Duration::from_millis(150),
            ..WriterOptions::default()
        })
        .unwrap();
    assert!(w.pause_exceeded());
    assert!(w.waited() >= Duration::from_millis(150));
    assert!(gate.is_paused());
    assert!(!gate.wait_until_resumed(Duration::from_millis(50)).unwrap());
    drop(w);
    assert_eq!(
        read_writer_windows(dir.path())
            .unwrap()
            .last()
            .unwrap()
            .name,
        "impatient"
    );
    drop(pause);
    assert!(gate.wait_until_resumed(Duration::from_millis(50)).unwrap());
    assert_eq!(gate.status().unwrap(), PauseStatus::Running);
}

#[test]
fn second_pause_waits_for_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let gate = PauseGate::new(dir.path());
    let first = gate.pause(&PauseOptions::default()).unwrap();
    let err = gate
        .pause(&PauseOptions {
            max_pause: Duration::from_millis(100),
            ..PauseOptions::default()
        })
        .unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err:?}");
    assert!(err.to_string().contains("pausers.lock"), "{err}");
    drop(first);
    let second = gate.pause(&PauseOptions::default()).unwrap();
    assert!(second.acknowledged());
}

#[test]
fn stale_pause_files_are_ignored_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let gate = PauseGate::new(dir.path());
    let dead = dead_pid();
    for (content, why) in [
        (
            format!("{dead}\n2025-06-13T19:58:05Z\nold sync\n"),
            "no longer running",
        ),
        ("garbage".to_owned(), "sync-pause.lock"),
        (String::new(), "sync-pause.lock"),
    ] {
        std::fs::write(gate.pause_file(), &content).unwrap();
        assert!(!gate.is_paused() || gate.pause_file().exists());
        std::fs::write(gate.pause_file(), &content).unwrap();
        match gate.status().unwrap() {
            PauseStatus::Stale { why: w, .. } => assert!(w.contains(why), "{w}"),
            other => panic!("{content:?}: {other:?}"),
        }
        assert!(!gate.pause_file().exists());
        std::fs::write(gate.pause_file(), &content).unwrap();
        let t = Instant::now();
        let w = gate.writer(&WriterOptions::default()).unwrap();
        assert!(!w.pause_exceeded());
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn clear_removes_a_live_pause_file() {
    let dir = tempfile::tempdir().unwrap();
    let gate = PauseGate::new(dir.path());
    let pause = gate
        .pause(&PauseOptions {
            reason: "stuck".into(),
            ..PauseOptions::default()
        })
        .unwrap();
    let info = gate.clear().unwrap().unwrap();
    assert_eq!(info.reason, "stuck");
    assert!(!gate.pause_file().exists());
    assert!(!gate.is_paused());
    assert_eq!(gate.clear().unwrap(), None);
    drop(pause);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_bytes_in_any_file_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().unwrap();
        let lock = SyncLock::new(dir.path());
        std::fs::write(lock.path(), &bytes).unwrap();
        let status = lock.status().unwrap();
        let free_or_stale = matches!(status, LockStatus::Free | LockStatus::Stale { .. });
        prop_assert!(free_or_stale);
        prop_assert_eq!(lock.status().unwrap(), LockStatus::Free);
        drop(lock.try_acquire(&opts("after")).unwrap());

        let gate = PauseGate::new(dir.path());
        std::fs::write(gate.pause_file(), &bytes).unwrap();
        let status = gate.status().unwrap();
        let stale = matches!(status, PauseStatus::Stale { .. });
        prop_assert!(stale, "{:?}", status);
        prop_assert!(!gate.is_paused());

        let log = dir.path().join("writers.jsonl");
        std::fs::write(&log, &bytes).unwrap();
        let _ = read_writer_windows(dir.path());
        drop(gate.writer(&WriterOptions::default()).unwrap());
        // Our own line is always readable, whatever came before it.
        let text = std::fs::read(&log).unwrap();
        let last = text.split(|b| *b == b'\n').rfind(|l| !l.is_empty()).unwrap();
        prop_assert!(serde_json::from_slice::<serde_json::Value>(last).is_ok());
    }
}

/// Many writers and repeated pauses on separate handles: while an
/// acknowledged pause lasts, no writer is inside the gate, and every writer
/// gets in eventually.
#[test]
fn acknowledged_pauses_exclude_writers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    let dir = tempfile::tempdir().unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let paused = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let (dir, inside, paused, stop) = (
                dir.path().to_path_buf(),
                inside.clone(),
                paused.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let gate = PauseGate::new(&dir);
                let mut entered = 0;
                // At least once: after the pauses end, everyone gets in.
                while entered == 0 || !stop.load(SeqCst) {
                    let w = gate
                        .writer(&WriterOptions {
                            name: format!("w{i}"),
                            max_wait: Duration::from_secs(60),
                            ..WriterOptions::default()
                        })
                        .unwrap();
                    assert!(!w.pause_exceeded());
                    inside.fetch_add(1, SeqCst);
                    assert!(!paused.load(SeqCst), "writer inside an acknowledged pause");
                    std::thread::sleep(Duration::from_millis(1));
                    inside.fetch_sub(1, SeqCst);
                    w.finish().unwrap();
                    entered += 1;
                }
                entered
            })
        })
        .collect();
    let gate = PauseGate::new(dir.path());
    for _ in 0..15 {
        let p = gate
            .pause(&PauseOptions {
                ack_timeout: Duration::from_secs(60),
                ..PauseOptions::default()
            })
            .unwrap();
        assert!(p.acknowledged());
        paused.store(true, SeqCst);
        assert_eq!(inside.load(SeqCst), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(inside.load(SeqCst), 0);
        paused.store(false, SeqCst);
        p.release().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, SeqCst);
    for w in writers {
        assert!(w.join().unwrap() > 0);
    }
    let windows = read_writer_windows(dir.path()).unwrap();
    assert!(windows.len() >= 4);
}

/// A waiter that opened `sync.lock` before someone deleted it does not
/// end up "holding" the unlinked file next to the holder of the new one.
#[test]
fn waiter_on_a_deleted_lock_file_follows_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let lock = SyncLock::new(dir.path());
    let a = lock.try_acquire(&opts("a")).unwrap();
    let (tx, rx) = mpsc::channel();
    let d = dir.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        let g = SyncLock::new(&d)
            .acquire(&opts("w"), Wait::Forever)
            .unwrap();
        tx.send(()).unwrap();
        drop(g);
    });
    std::thread::sleep(Duration::from_millis(100));
    std::fs::remove_file(lock.path()).unwrap();
    let b = lock.try_acquire(&opts("b")).unwrap();
    drop(a);
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the waiter got the unlinked file while b holds the new one"
    );
    drop(b);
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    waiter.join().unwrap();
}
