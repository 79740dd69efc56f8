//! End-to-end tests for wsync live in `tests/tests/*.rs`: each drives the
//! built `wsync` binary against real git repositories, bare remotes and a
//! loopback sshd through [`wsync_testutils`](../wsync_testutils/index.html).
//!
//! This library is empty on purpose; the package exists for its tests.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
