//! Whole-state snapshots of a git workspace and byte-exact rollback.
//!
//! This crate will own, per `SPEC.md` ("Snapshots and rollback"): capturing
//! HEAD, the index, tracked changes and untracked non-ignored files as git
//! objects under `refs/wsync/snapshots/<ID>` without touching the working
//! state; the `ID.meta`, `ID.diff`, `ID.result` and `ID.bundle` files beside
//! each snapshot; restore (itself undoable); list, show, verify and cleanup.
//!
//! Nothing is implemented yet: the API lands with its issue.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
