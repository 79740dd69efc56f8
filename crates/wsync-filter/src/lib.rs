//! Deciding whether a changed path is a user change (sync it) or a system
//! change (never sync it).
//!
//! This crate will own, per `SPEC.md` ("Filtering"): layer 1 rules
//! (`ACTION:REGEX:DESCRIPTION` lines plus gitignore-style patterns), layer 2
//! process attribution (writer windows, open files under `/proc`) and layer 3
//! content analysis (semantic JSON, timestamp-only text diffs), with every
//! decision explained.
//!
//! Nothing is implemented yet: the API lands with its issue.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
