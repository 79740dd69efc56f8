//! Layer 3: what changed, compared with the previous (HEAD) content.
//!
//! - identical bytes → [`ContentVerdict::Unchanged`];
//! - no previous content → [`ContentVerdict::New`];
//! - NUL bytes or invalid UTF-8 → [`ContentVerdict::Binary`] (rules decide);
//! - JSON (a `.json` name, or both sides starting with `{`/`[`) →
//!   semantically compared with the volatile keys (glob patterns over key
//!   names, at any depth) ignored: a line-by-line fast path when only
//!   `"key": value` lines changed (the usual pretty-printed rewrite), else
//!   both documents parsed and compared as trees;
//! - other text → volatile-only when the lines are the same except lines
//!   that are equal once timestamps (date *and* time), epoch numbers and
//!   UUIDs are replaced by a placeholder; added or removed lines are a real
//!   change, located with a line diff (`similar`).
//!
//! [`log_or_backup`] names the files that are system output by name alone.

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::Regex;
use serde_json::Value;
use similar::{DiffOp, TextDiff};

use crate::Error;

/// Keys ignored in JSON by default.
pub const DEFAULT_VOLATILE_KEYS: &[&str] =
    &["timestamp", "last_update", "updated_at", "session_id"];

/// The timestamp-ish tokens normalised before comparing changed text lines:
/// ISO 8601 / RFC 3339 date-times (a time part is required: a bare date
/// such as a deadline is what people edit), `H:MM:SS` times (seconds
/// required), `date(1)` / RFC 2822 style dates, UUIDs, and 10- or 13-digit
/// epoch numbers from 2001 to 2286 (with optional fraction).
const VOLATILE_TOKENS: &str = r"(?x)
    \d{4}-\d{2}-\d{2}[T\ ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2}|\ ?UTC)?
  | \b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b
  | \b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*,?\ +(?:\d{1,2}\ +)?(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\ +\d{1,2}(?:\ +\d{4})?\ +\d{1,2}:\d{2}:\d{2}(?:\ +[A-Z]{2,5})?(?:\ +\d{4})?
  | \b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b
  | \b[12]\d{9}(?:\d{3})?(?:\.\d+)?\b
";

/// Layer 3's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentVerdict {
    /// Same bytes as before: no change at all.
    Unchanged,
    /// Only volatile data changed (the reason lists what).
    VolatileOnly(String),
    /// A real change (the reason says where).
    Changed(String),
    /// Nothing to compare with: a new file.
    New,
    /// Binary content: not analysed.
    Binary,
}

impl ContentVerdict {
    /// Whether this verdict marks a system change (or none).
    pub fn is_system(&self) -> bool {
        matches!(self, Self::Unchanged | Self::VolatileOnly(_))
    }
}

/// The compiled content comparer.
#[derive(Debug, Clone)]
pub struct ContentAnalyzer {
    volatile: GlobSet,
    tokens: Regex,
}

impl ContentAnalyzer {
    /// The analyser with [`DEFAULT_VOLATILE_KEYS`].
    pub fn with_defaults() -> Result<Self, Error> {
        let keys: Vec<String> = DEFAULT_VOLATILE_KEYS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        Self::new(&keys)
    }

    /// Compiles the volatile-key patterns (globs over key names).
    pub fn new(volatile_keys: &[String]) -> Result<Self, Error> {
        let mut b = GlobSetBuilder::new();
        for key in volatile_keys {
            let glob = Glob::new(key).map_err(|source| Error::VolatileKey {
                pattern: key.clone(),
                source,
            })?;
            b.add(glob);
        }
        let volatile = b.build().map_err(|source| Error::VolatileKey {
            pattern: volatile_keys.join(", "),
            source,
        })?;
        let tokens = Regex::new(VOLATILE_TOKENS).map_err(|source| Error::ProcessPattern {
            pattern: "(built-in volatile tokens)".into(),
            source,
        })?;
        Ok(Self { volatile, tokens })
    }

    /// Whether `key` is volatile.
    pub fn is_volatile_key(&self, key: &str) -> bool {
        self.volatile.is_match(key)
    }

    /// Compares `current` with `previous` for `path` (workspace-relative;
    /// its extension only picks the JSON path first).
    pub fn compare(&self, path: &str, previous: Option<&[u8]>, current: &[u8]) -> ContentVerdict {
        let Some(previous) = previous else {
            return ContentVerdict::New;
        };
        if previous == current {
            return ContentVerdict::Unchanged;
        }
        if is_binary(previous) || is_binary(current) {
            return ContentVerdict::Binary;
        }
        let (Ok(old), Ok(new)) = (std::str::from_utf8(previous), std::str::from_utf8(current))
        else {
            return ContentVerdict::Binary;
        };
        if !looks_like_json(path, old, new) {
            return self.compare_text(old, new);
        }
        if let Some(v) = self.compare_json_lines(old, new) {
            return v;
        }
        if let (Ok(a), Ok(b)) = (
            serde_json::from_str::<Value>(old),
            serde_json::from_str::<Value>(new),
        ) {
            return self.compare_json(&a, &b);
        }
        self.compare_text(old, new)
    }

    /// The fast path for pretty-printed JSON (the usual on-disk form): when
    /// both have the same number of lines, `old` is valid JSON, and every
    /// line that differs is a `"key": value` member with the same key (and
    /// comma) on both sides, `new` is the same document with those values
    /// replaced, so comparing them decides without building either tree.
    /// `None`: use the full semantic comparison.
    fn compare_json_lines(&self, old: &str, new: &str) -> Option<ContentVerdict> {
        let mut volatile: Vec<String> = Vec::new();
        let mut changed: Option<String> = None;
        let (mut a_lines, mut b_lines) = (old.lines(), new.lines());
        let mut line_no = 0usize;
        loop {
            let (a, b) = match (a_lines.next(), b_lines.next()) {
                (None, None) => break,
                (Some(a), Some(b)) => (a, b),
                _ => return None,
            };
            line_no += 1;
            if a == b {
                continue;
            }
            let (ka, va, ca) = json_pair_line(a)?;
            let (kb, vb, cb) = json_pair_line(b)?;
            if ka != kb || ca != cb {
                return None;
            }
            if self.is_volatile_key(ka) {
                // Still one complete JSON value, so `new` stays valid.
                serde_json::from_str::<serde::de::IgnoredAny>(vb).ok()?;
                volatile.push(format!("{ka:?} (line {line_no})"));
            } else if changed.is_none()
                && serde_json::from_str::<Value>(va).ok()?
                    != serde_json::from_str::<Value>(vb).ok()?
            {
                changed = Some(format!("JSON value of key {ka:?} changed (line {line_no})"));
            }
        }
        if changed.is_none() && volatile.is_empty() {
            return None;
        }
        // The argument above needs `old` to be valid JSON.
        serde_json::from_str::<serde::de::IgnoredAny>(old).ok()?;
        if let Some(why) = changed {
            return Some(ContentVerdict::Changed(why));
        }
        let more = volatile.len().saturating_sub(5);
        volatile.truncate(5);
        if more > 0 {
            volatile.push(format!("and {more} more"));
        }
        Some(ContentVerdict::VolatileOnly(format!(
            "JSON differs only in volatile keys: {}",
            volatile.join(", ")
        )))
    }

    /// Semantic JSON comparison with volatile keys ignored at any depth.
    pub fn compare_json(&self, old: &Value, new: &Value) -> ContentVerdict {
        let mut volatile = Vec::new();
        match self.diff_json(old, new, &mut String::from("$"), &mut volatile) {
            Some(at) => ContentVerdict::Changed(format!("JSON differs at {at}")),
            None if volatile.is_empty() => ContentVerdict::VolatileOnly(
                "JSON is semantically equal (only formatting changed)".into(),
            ),
            None => {
                let more = volatile.len().saturating_sub(5);
                let mut list: Vec<&str> = volatile.iter().take(5).map(String::as_str).collect();
                let extra = format!("and {more} more");
                if more > 0 {
                    list.push(&extra);
                }
                ContentVerdict::VolatileOnly(format!(
                    "JSON differs only in volatile keys: {}",
                    list.join(", ")
                ))
            }
        }
    }

    /// The first non-volatile difference (a JSON path), collecting the
    /// volatile keys that differ on the way.
    fn diff_json(
        &self,
        a: &Value,
        b: &Value,
        at: &mut String,
        volatile: &mut Vec<String>,
    ) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let len = at.len();
                for (k, va) in x {
                    at.truncate(len);
                    at.push('.');
                    at.push_str(k);
                    if self.is_volatile_key(k) {
                        if y.get(k) != Some(va) {
                            volatile.push(at.clone());
                        }
                        continue;
                    }
                    match y.get(k) {
                        None => return Some(format!("{at} (removed)")),
                        Some(vb) => {
                            if let Some(d) = self.diff_json(va, vb, at, volatile) {
                                return Some(d);
                            }
                        }
                    }
                }
                for k in y.keys() {
                    if !x.contains_key(k) {
                        at.truncate(len);
                        at.push('.');
                        at.push_str(k);
                        if self.is_volatile_key(k) {
                            volatile.push(at.clone());
                        } else {
                            return Some(format!("{at} (added)"));
                        }
                    }
                }
                at.truncate(len);
                None
            }
            (Value::Array(x), Value::Array(y)) => {
                if x.len() != y.len() {
                    return Some(format!("{at} (length {} → {})", x.len(), y.len()));
                }
                let len = at.len();
                for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                    at.truncate(len);
                    at.push_str(&format!("[{i}]"));
                    if let Some(d) = self.diff_json(va, vb, at, volatile) {
                        return Some(d);
                    }
                }
                at.truncate(len);
                None
            }
            _ if a == b => None,
            _ => Some(at.clone()),
        }
    }

    /// Text: volatile-only when both have the same lines except lines that
    /// are equal once timestamps, epoch numbers and UUIDs are replaced by a
    /// placeholder. A change in the number of lines is a real change, and a
    /// line diff (`similar`) says where.
    pub fn compare_text(&self, old: &str, new: &str) -> ContentVerdict {
        let (mut a_lines, mut b_lines) = (old.split_inclusive('\n'), new.split_inclusive('\n'));
        let mut changed = 0usize;
        let mut line_no = 0usize;
        loop {
            let (a, b) = match (a_lines.next(), b_lines.next()) {
                (None, None) => break,
                (Some(a), Some(b)) => (a, b),
                _ => return self.describe_line_change(old, new),
            };
            line_no += 1;
            if a == b {
                continue;
            }
            if self.tokens.replace_all(a, "\u{0}T") != self.tokens.replace_all(b, "\u{0}T") {
                return ContentVerdict::Changed(format!(
                    "line {line_no} changed beyond timestamps"
                ));
            }
            changed += 1;
        }
        ContentVerdict::VolatileOnly(format!(
            "{changed} changed line(s), all differing only in timestamps, epoch numbers or UUIDs"
        ))
    }

    /// Where lines were added or removed (the first place), by line diff.
    fn describe_line_change(&self, old: &str, new: &str) -> ContentVerdict {
        let diff = TextDiff::configure()
            .timeout(std::time::Duration::from_millis(200))
            .diff_lines(old, new);
        let why = diff
            .ops()
            .iter()
            .find_map(|op| match *op {
                DiffOp::Equal { .. } => None,
                DiffOp::Insert {
                    new_index, new_len, ..
                } => Some(format!("{new_len} line(s) added at line {}", new_index + 1)),
                DiffOp::Delete {
                    old_index, old_len, ..
                } => Some(format!(
                    "{old_len} line(s) removed at line {}",
                    old_index + 1
                )),
                DiffOp::Replace {
                    old_index,
                    old_len,
                    new_len,
                    ..
                } => Some(format!(
                    "lines {}..{} replaced by {new_len} line(s)",
                    old_index + 1,
                    old_index + old_len
                )),
            })
            .unwrap_or_else(|| "the number of lines changed".into());
        ContentVerdict::Changed(why)
    }
}

/// Splits a line holding one object member, `"key": value[,]`, into the
/// key (without escapes only), the value text and whether a comma follows.
/// The value is checked by the caller. In valid JSON such a line can only
/// be an object member: strings cannot span lines.
fn json_pair_line(line: &str) -> Option<(&str, &str, bool)> {
    let rest = line.trim().strip_prefix('"')?;
    let end = rest.find('"')?;
    let key = rest.get(..end)?;
    if key.contains('\\') {
        return None;
    }
    let rest = rest.get(end + 1..)?.trim_start().strip_prefix(':')?.trim();
    let (value, comma) = match rest.strip_suffix(',') {
        Some(v) => (v.trim_end(), true),
        None => (rest, false),
    };
    (!value.is_empty()).then_some((key, value, comma))
}

fn is_binary(bytes: &[u8]) -> bool {
    bytes.iter().take(8000).any(|&b| b == 0)
}

fn looks_like_json(path: &str, old: &str, new: &str) -> bool {
    let starts = |s: &str| matches!(s.trim_start().as_bytes().first(), Some(b'{' | b'['));
    path.ends_with(".json") || (starts(old) && starts(new))
}

/// `Some("log")` / `Some("backup")` when the name alone marks system
/// output: `*.log`, `*.log.N`, anything under a `logs/` folder; `*~`,
/// `*.bak`, `*.orig`, `*.swp`, `.#*`.
pub fn log_or_backup(path: &str) -> Option<&'static str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let is_log = name.ends_with(".log")
        || name
            .rsplit_once(".log.")
            .is_some_and(|(_, n)| n.chars().all(|c| c.is_ascii_digit() || c == '.') || n == "gz")
        || path.starts_with("logs/")
        || path.contains("/logs/");
    if is_log {
        return Some("log");
    }
    let is_backup = name.ends_with('~')
        || name.ends_with(".bak")
        || name.ends_with(".orig")
        || name.ends_with(".swp")
        || name.starts_with(".#");
    is_backup.then_some("backup")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a() -> ContentAnalyzer {
        ContentAnalyzer::with_defaults().unwrap()
    }

    #[test]
    fn identical_and_new() {
        assert_eq!(
            a().compare("x", Some(b"a"), b"a"),
            ContentVerdict::Unchanged
        );
        assert_eq!(a().compare("x", None, b"a"), ContentVerdict::New);
        assert_eq!(
            a().compare("x", Some(b"a\0"), b"b\0"),
            ContentVerdict::Binary
        );
    }

    #[test]
    fn json_volatile_at_depth() {
        let old = br#"{"status":"ok","timestamp":"2026-01-01T00:00:00Z","svc":[{"name":"a","last_update":1}]}"#;
        let new = br#"{"svc":[{"name":"a","last_update":2}],"status":"ok","timestamp":"2026-01-02T00:00:00Z"}"#;
        let v = a().compare("s.json", Some(old), new);
        assert!(v.is_system(), "{v:?}");
        let new2 = br#"{"svc":[{"name":"b","last_update":2}],"status":"ok","timestamp":"x"}"#;
        let v = a().compare("s.json", Some(old), new2);
        assert_eq!(
            v,
            ContentVerdict::Changed("JSON differs at $.svc[0].name".into())
        );
    }

    #[test]
    fn json_line_fast_path_and_fallbacks() {
        let an = a();
        let old = "{\n  \"a\": 1,\n  \"timestamp\": \"t1\",\n  \"b\": \"x\"\n}\n";
        // Same lines but the volatile value: fast path, volatile.
        let new = old.replace("t1", "t2");
        let v = an.compare("s.json", Some(old.as_bytes()), new.as_bytes());
        assert!(v.is_system(), "{v:?}");
        // A non-volatile value: changed, named by key.
        let new = old.replace("\"x\"", "\"y\"");
        let v = an.compare("s.json", Some(old.as_bytes()), new.as_bytes());
        assert_eq!(
            v,
            ContentVerdict::Changed("JSON value of key \"b\" changed (line 4)".into())
        );
        // The same value spelled differently is not a change.
        let new = old.replace("\"x\"", "\"\\u0078\"");
        let v = an.compare("s.json", Some(old.as_bytes()), new.as_bytes());
        assert!(v.is_system(), "{v:?}");
        // A renamed key on the same line falls back to the tree comparison.
        let new = old.replace("\"b\"", "\"c\"");
        let v = an.compare("s.json", Some(old.as_bytes()), new.as_bytes());
        assert_eq!(
            v,
            ContentVerdict::Changed("JSON differs at $.b (removed)".into())
        );
        // Invalid old JSON never takes the fast path: text rules apply.
        let bad_old = "{\n  \"timestamp\": \"2026-01-01T00:00:00Z\",\n";
        let bad_new = "{\n  \"timestamp\": \"2026-01-02T00:00:00Z\",\n";
        let v = an.compare("s.json", Some(bad_old.as_bytes()), bad_new.as_bytes());
        assert!(v.is_system(), "{v:?}");
        assert!(
            matches!(v, ContentVerdict::VolatileOnly(ref w) if w.contains("changed line")),
            "{v:?}"
        );
    }

    #[test]
    fn glob_volatile_keys() {
        let an = ContentAnalyzer::new(&["*_at".into(), "last_*".into()]).unwrap();
        assert!(an.is_volatile_key("created_at"));
        assert!(an.is_volatile_key("last_seen"));
        assert!(!an.is_volatile_key("timestamp"));
    }

    #[test]
    fn text_timestamps_only() {
        let old = "# Context\nLast updated: 2026-01-01T10:00:00Z\nid 1767225600\nrun 6f1c2a3b-1111-2222-3333-444455556666\nbody\n";
        let new = "# Context\nLast updated: 2026-03-04T11:12:13.456+01:00\nid 1767229999\nrun 0a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff\nbody\n";
        assert!(
            a().compare("c.md", Some(old.as_bytes()), new.as_bytes())
                .is_system()
        );
        let dated = "Generated Sat Nov 21 22:32:08 UTC 2026\n";
        let dated2 = "Generated Sun Nov 22 01:02:03 UTC 2026\n";
        assert!(
            a().compare("c.txt", Some(dated.as_bytes()), dated2.as_bytes())
                .is_system()
        );
        let real =
            "# Context\nLast updated: 2026-03-04T11:12:13Z\nid 1767229999\nrun x\nbody edited\n";
        assert!(
            !a().compare("c.md", Some(old.as_bytes()), real.as_bytes())
                .is_system()
        );
        let added = format!("{old}more\n");
        assert!(
            !a().compare("c.md", Some(old.as_bytes()), added.as_bytes())
                .is_system()
        );
        // Bare dates and HH:MM times are what people edit.
        assert!(
            !a().compare("c.md", Some(b"due 2026-01-05\n"), b"due 2026-02-05\n")
                .is_system()
        );
        assert!(
            !a().compare("c.md", Some(b"at 10:00\n"), b"at 11:30\n")
                .is_system()
        );
        // Small numbers are not epochs.
        assert!(
            !a().compare("c.md", Some(b"count 5\n"), b"count 6\n")
                .is_system()
        );
    }

    #[test]
    fn logs_and_backups() {
        assert_eq!(log_or_backup("a/b.log"), Some("log"));
        assert_eq!(log_or_backup("a/b.log.1"), Some("log"));
        assert_eq!(log_or_backup("logs/x.txt"), Some("log"));
        assert_eq!(log_or_backup("a/x.rs~"), Some("backup"));
        assert_eq!(log_or_backup("a/.#x.rs"), Some("backup"));
        assert_eq!(log_or_backup("src/login.rs"), None);
        assert_eq!(log_or_backup("catalog.md"), None);
    }
}
