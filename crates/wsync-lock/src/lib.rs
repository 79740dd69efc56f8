//! The exclusive sync lock and the pause gate between sync and autonomous
//! writers.
//!
//! This crate will own, per `SPEC.md` ("Locking and the pause protocol"):
//! `SyncLock` (an OS advisory lock with a holder record) and `PauseGate`
//! (writers hold it shared, sync takes it exclusively).
#![deny(missing_docs)]
#![forbid(unsafe_code)]
