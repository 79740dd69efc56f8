//! The wsync coordinator: configuration and the atomic git sync engine.
//!
//! This crate will own, per `SPEC.md` ("Atomic git sync"): `config.json`,
//! the four-phase sync run (lock and pause, snapshot, commit/fetch/integrate/
//! push, resume and log) with rollback on any failure, conflict handling, the
//! persistent queue, rate limits, retry, the daemon, scheduler, watcher,
//! health checks and the audit log. It composes `wsync-lock`,
//! `wsync-snapshot` and `wsync-filter`.
//!
//! Nothing is implemented yet: the API lands with its issue.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
