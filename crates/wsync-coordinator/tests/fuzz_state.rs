//! CI-scale fuzzing of the coordinator's parsers (the long runs are
//! `cargo xtask fuzz --target config|queue|ratelimit|circuit`): mutated
//! real files and raw bytes never panic; errors name the file; a config
//! that parses survives a round trip.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use proptest::prelude::*;
use wsync_coordinator::config::{CONFIG_FILE, Config};
use wsync_coordinator::queue::{Priority, QUEUE_FILE, Queue, SyncRequest};
use wsync_coordinator::ratelimit::{RATELIMIT_FILE, RateLimitConfig, RateLimiter};
use wsync_coordinator::retry::{CIRCUIT_FILE, CircuitBreaker, RetryConfig};

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\"\\ud800\"",
    b"\"9999-12-31T23:59:59Z\"",
    b"\xff",
];

fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    wsync_testutils::mutated(seed, TOKENS)
}

fn config_seed() -> Vec<u8> {
    serde_json::to_vec_pretty(&Config::default().to_value()).unwrap()
}

/// A real state file written by the crate's own writer.
fn state_seed(file: &str) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    match file {
        QUEUE_FILE => {
            let q = Queue::new(d.path());
            q.enqueue(&SyncRequest::new("manual", "t", Priority::High, "a"))
                .unwrap();
            q.enqueue(&SyncRequest::new("watch", "w", Priority::Low, "b"))
                .unwrap();
            q.claim_next(std::process::id(), |_| true).unwrap();
        }
        RATELIMIT_FILE => {
            let r = RateLimiter::new(d.path(), RateLimitConfig::default());
            r.record_sync().unwrap();
            r.record_commit(true).unwrap();
        }
        _ => {
            CircuitBreaker::new(d.path(), RetryConfig::default())
                .record_failure("rejected")
                .unwrap();
        }
    }
    std::fs::read(d.path().join(file)).unwrap()
}

/// Writes `bytes` as `file` and reads it back through the public API:
/// no panic, and an error names the file.
fn read_back(file: &str, bytes: &[u8]) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join(file), bytes).unwrap();
    let err = match file {
        QUEUE_FILE => Queue::new(d.path()).list().err(),
        RATELIMIT_FILE => RateLimiter::new(d.path(), RateLimitConfig::default())
            .status()
            .err(),
        _ => CircuitBreaker::new(d.path(), RetryConfig::default())
            .status()
            .err(),
    };
    if let Some(e) = err {
        assert!(e.to_string().contains(file), "{file}: {e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn config_parser_never_panics_and_roundtrips(bytes in mutated(config_seed())) {
        let path = Path::new(CONFIG_FILE);
        match Config::parse(path, &bytes) {
            Ok(c) => {
                let text = serde_json::to_vec(&c.to_value()).unwrap();
                prop_assert_eq!(Config::parse(path, &text).unwrap(), c);
            }
            Err(e) => prop_assert!(e.to_string().contains(CONFIG_FILE), "{}", e),
        }
    }

    #[test]
    fn config_parser_never_panics_on_raw_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Config::parse(Path::new(CONFIG_FILE), &bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn queue_file_never_panics(bytes in mutated(state_seed(QUEUE_FILE))) {
        read_back(QUEUE_FILE, &bytes);
    }

    #[test]
    fn ratelimit_file_never_panics(bytes in mutated(state_seed(RATELIMIT_FILE))) {
        read_back(RATELIMIT_FILE, &bytes);
    }

    #[test]
    fn circuit_file_never_panics(bytes in mutated(state_seed(CIRCUIT_FILE))) {
        read_back(CIRCUIT_FILE, &bytes);
    }

    #[test]
    fn state_files_never_panic_on_raw_bytes(
        which in 0usize..3,
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        read_back([QUEUE_FILE, RATELIMIT_FILE, CIRCUIT_FILE][which], &bytes);
    }
}
