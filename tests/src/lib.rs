//! End-to-end tests for wsync live in `tests/tests/*.rs`: each drives the
//! built `wsync` binary against real git repositories, bare remotes and a
//! loopback sshd through [`wsync_testutils`](../wsync_testutils/index.html).
//!
//! The library holds only [`chaos`], the crash-injection harness shared by
//! `cargo xtask chaos` and `tests/tests/chaos.rs`:
//!
//! ```
//! use wsync_tests::chaos::{Scenario, is_wsync_temp};
//! assert_eq!("rollback".parse::<Scenario>(), Ok(Scenario::Rollback));
//! assert!(is_wsync_temp(b".queue.json.4242.tmp"));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod chaos;
