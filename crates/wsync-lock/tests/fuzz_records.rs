//! CI-scale fuzzing of the lock holder record and the pause file (the
//! long runs are `cargo xtask fuzz --target lock-record|pause-file`):
//! whatever is in the file, `status` answers without panicking, and a
//! record nobody holds is never reported as held.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proptest::prelude::*;
use wsync_lock::{LockOptions, LockStatus, PauseGate, PauseOptions, SyncLock, Wait};

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"\"",
    b":",
    b",",
    b"null",
    b"-1",
    b"4294967296",
    b"1e999",
    b"\n",
    b"\xff",
    b"\"pid\":1,",
    b"\"9999-12-31T23:59:59Z\"",
];

fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    wsync_testutils::mutated(seed, TOKENS)
}

fn record_seed() -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let lock = SyncLock::new(d.path());
    let g = lock.acquire(&LockOptions::default(), Wait::Fail).unwrap();
    let bytes = std::fs::read(lock.path()).unwrap();
    drop(g);
    bytes
}

fn pause_seed() -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let gate = PauseGate::new(d.path());
    let g = gate
        .pause(&PauseOptions {
            reason: "seed".into(),
            ack_timeout: Duration::from_millis(10),
            ..PauseOptions::default()
        })
        .unwrap();
    let bytes = std::fs::read(gate.pause_file()).unwrap();
    drop(g);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn holder_record_never_panics_and_is_never_held(bytes in mutated(record_seed())) {
        let d = tempfile::tempdir().unwrap();
        let lock = SyncLock::new(d.path());
        std::fs::write(lock.path(), &bytes).unwrap();
        // Nobody holds the flock: whatever the record says, not Held.
        match lock.status() {
            Ok(LockStatus::Held(r)) => prop_assert!(false, "held by {:?}", r),
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().contains("sync.lock"), "{}", e),
        }
        // And the lock can be taken.
        let g = lock.acquire(&LockOptions::default(), Wait::Fail);
        prop_assert!(g.is_ok(), "{:?}", g.err());
    }

    #[test]
    fn pause_file_never_panics(bytes in mutated(pause_seed())) {
        let d = tempfile::tempdir().unwrap();
        let gate = PauseGate::new(d.path());
        std::fs::write(gate.pause_file(), &bytes).unwrap();
        let _ = gate.status();
        let _ = gate.is_paused();
    }

    #[test]
    fn raw_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let d = tempfile::tempdir().unwrap();
        let lock = SyncLock::new(d.path());
        std::fs::write(lock.path(), &bytes).unwrap();
        let _ = lock.status();
        let gate = PauseGate::new(d.path());
        std::fs::write(gate.pause_file(), &bytes).unwrap();
        let _ = gate.status();
    }
}
