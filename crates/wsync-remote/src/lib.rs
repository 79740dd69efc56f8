//! rsync-style delta transfer and bidirectional sync of a tree with another
//! machine over SSH.
//!
//! This crate will own, per `SPEC.md` ("Remote transfer"): the `wsync serve`
//! protocol (postcard frames with a version handshake), block signatures with
//! a rolling checksum and BLAKE3, zstd-compressed deltas, three-way
//! reconciliation against the last synced state, and the path-safety checks
//! applied to everything a peer sends.
//!
//! Nothing is implemented yet: the API lands with its issue.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
