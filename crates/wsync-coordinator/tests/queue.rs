//! The queue under concurrency: many threads, each with its own handle (its
//! own open file description, so the advisory lock really serialises them).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wsync_coordinator::queue::{Finish, Priority, Queue, SyncRequest, pid_alive};

#[test]
fn concurrent_enqueue_claim_and_finish_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    // A consumer claims and finishes while producers enqueue.
    let consumer = {
        let (state, stop) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let q = Queue::new(&state);
            let mut served = 0u32;
            loop {
                match q.claim_next(std::process::id(), pid_alive).unwrap() {
                    Some(e) => {
                        served += 1;
                        q.finish(
                            &e.id,
                            &Finish::Done {
                                detail: String::new(),
                            },
                        )
                        .unwrap();
                    }
                    None if stop.load(Ordering::SeqCst) => break served,
                    None => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            }
        })
    };
    let producers: Vec<_> = (0..8)
        .map(|t| {
            let state = state.clone();
            std::thread::spawn(move || {
                let q = Queue::new(&state);
                for i in 0..25 {
                    let caller = format!("c{}", (t * 25 + i) % 17);
                    q.enqueue(&SyncRequest::new("manual", caller, Priority::Normal, ""))
                        .unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let served = consumer.join().unwrap();
    let q = Queue::new(&state);
    assert!(q.list().unwrap().is_empty());
    let hist = q.history().unwrap();
    assert_eq!(hist.len() as u32, served);
    let total: u32 = hist.iter().map(|h| 1 + h.merged).sum();
    assert_eq!(total, 200, "every request accounted for");
}

#[test]
fn a_torn_history_line_from_a_crash_is_skipped_but_a_bad_middle_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::new(dir.path());
    q.enqueue(&SyncRequest::new("manual", "x", Priority::Normal, ""))
        .unwrap();
    let e = q.claim_next(1, |_| true).unwrap().unwrap();
    q.finish(
        &e.id,
        &Finish::Done {
            detail: "ok".into(),
        },
    )
    .unwrap();
    let path = q.history_path().to_path_buf();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"id\": \"torn");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(q.history().unwrap().len(), 1);
    std::fs::write(&path, format!("garbage\n{text}\n")).unwrap();
    let err = q.history().unwrap_err().to_string();
    assert!(err.contains("queue-history.jsonl:1"), "{err}");
}
