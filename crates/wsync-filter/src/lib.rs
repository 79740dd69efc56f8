//! Deciding whether a changed path is a user change (sync it) or a system
//! change (never sync it), in three layers, with every decision explained.
//!
//! 1. **Rules** ([`rules`]): `ACTION:REGEX:DESCRIPTION` lines from
//!    `<state>/rules.conf` (or the built-in defaults), first match wins, plus
//!    gitignore-style excludes from the config and the repo's `.gitignore`.
//!    Pure: [`Filter::rules`] does no I/O. `BLOCK` and `ALLOW` are final;
//!    `ANALYZE` (the default for unmatched paths) goes on to:
//! 2. **Process** ([`process`]): a change whose mtime falls inside a system
//!    writer's window (`<state>/writers.jsonl`, recorded by wsync-lock's
//!    writer guard) is system; so is a file held open by a process whose
//!    command line matches a system-process pattern (Linux `/proc`).
//! 3. **Content** ([`content`]): compared with the HEAD blob — JSON equal
//!    once volatile keys are removed, or text whose changed lines only differ
//!    in timestamps, epoch numbers or UUIDs, is system; identical bytes are
//!    no change; logs and backups are system; everything else is a user
//!    change.
//!
//! ```
//! use std::path::Path;
//! use wsync_filter::{Change, Filter, FilterConfig, Verdict};
//!
//! let ws = tempfile::tempdir()?;
//! let filter = Filter::new(ws.path(), &ws.path().join(".wsync"), &FilterConfig::default())?;
//! // Layer 1 alone: pure and cheap.
//! assert_eq!(filter.rules(Path::new("logs/agent.log")).verdict, Verdict::Block);
//! assert_eq!(filter.rules(Path::new("scripts/deploy.sh")).verdict, Verdict::Sync);
//! // All layers: a new user file is synced, and the decision says why.
//! std::fs::write(ws.path().join("notes.md"), "hello\n")?;
//! let d = filter.classify(&Change::modified("notes.md"));
//! assert_eq!(d.verdict, Verdict::Sync);
//! assert!(d.reason.contains("new file"), "{}", d.reason);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod content;
pub mod process;
pub mod rules;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use content::{ContentAnalyzer, ContentVerdict, DEFAULT_VOLATILE_KEYS};
pub use process::{Clock, DEFAULT_SYSTEM_PROCESS_PATTERNS, SystemClock, WriterWindow};
pub use rules::{Action, Rule, RuleSet, default_rules_text};

/// Errors building a [`Filter`]. Classification itself never fails: missing
/// information degrades to "unknown" and the next layer decides. The
/// underlying error is the [`source`](std::error::Error::source) (printed by
/// `{:#}` with anyhow), not repeated in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A rules line is malformed (missing `:`, unknown action, empty regex).
    #[error("{file}:{line}: {message}", file = .file.display())]
    RuleSyntax {
        /// The rules file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A rule's regex does not compile.
    #[error("{file}:{line}: invalid regex {regex:?}", file = .file.display())]
    RuleRegex {
        /// The rules file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The regex as written.
        regex: String,
        /// The regex error.
        source: regex::Error,
    },
    /// An exclude pattern (config or `.gitignore`) is invalid.
    #[error("invalid exclude pattern {pattern:?}")]
    Exclude {
        /// The pattern, or the file it came from.
        pattern: String,
        /// The parser's error.
        source: ignore::Error,
    },
    /// A volatile-key pattern is not a valid glob.
    #[error("invalid volatile key pattern {pattern:?}")]
    VolatileKey {
        /// The pattern.
        pattern: String,
        /// The glob error.
        source: globset::Error,
    },
    /// A system-process pattern is not a valid regex.
    #[error("invalid system process pattern {pattern:?}")]
    ProcessPattern {
        /// The pattern.
        pattern: String,
        /// The regex error.
        source: regex::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a [`Filter`] is built. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// The rules file; `None` means `<state>/rules.conf` if it exists, else
    /// the built-in rules ([`default_rules_text`]). A given file must exist.
    pub rules_file: Option<PathBuf>,
    /// Gitignore-style patterns whose matches are always blocked.
    pub exclude_patterns: Vec<String>,
    /// Also block what the workspace's top-level `.gitignore` ignores.
    pub use_gitignore: bool,
    /// With `use_gitignore`, also the `.gitignore` files in subfolders
    /// (found by walking the tree once, at construction: worth it for a
    /// long-lived filter such as a watcher's; a caller that only sees
    /// paths `git status` reports needs none of them). Default false.
    pub nested_gitignores: bool,
    /// The action for paths no rule matches (default `ANALYZE`).
    pub default_action: Action,
    /// JSON keys ignored by the content layer, at any depth; glob patterns
    /// (`*_at`, `last_*`) are allowed.
    pub volatile_keys: Vec<String>,
    /// Regexes (unanchored) matched against the command line of processes
    /// holding an `ANALYZE` file open; a match makes the change system.
    pub system_process_patterns: Vec<String>,
    /// Scan `/proc/*/fd` for processes holding `ANALYZE` files open.
    pub scan_open_files: bool,
    /// How long a process's system/not-system verdict is cached.
    pub process_cache_ttl: Duration,
    /// Slack around writer windows (default 50 ms). The guard records
    /// `start` before the writer is let in and `end` after it is done, so a
    /// guarded write's mtime lies inside the window up to the kernel's
    /// coarse file-time clock (a few ms); more slack only misattributes
    /// user edits made just before or after a system write.
    pub writer_window_slack: Duration,
    /// Files larger than this are not content-analysed (rules decide).
    pub max_content_bytes: u64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            rules_file: None,
            exclude_patterns: Vec::new(),
            use_gitignore: true,
            nested_gitignores: false,
            default_action: Action::Analyze,
            volatile_keys: DEFAULT_VOLATILE_KEYS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            system_process_patterns: DEFAULT_SYSTEM_PROCESS_PATTERNS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            scan_open_files: true,
            process_cache_ttl: Duration::from_secs(30),
            writer_window_slack: Duration::from_millis(50),
            max_content_bytes: 8 * 1024 * 1024,
        }
    }
}

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// The path appeared.
    Created,
    /// The path's content changed.
    Modified,
    /// The path disappeared.
    Deleted,
}

/// One changed path, as the watcher or the sync engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Workspace-relative path (`/`-separated on every platform).
    pub path: PathBuf,
    /// What happened.
    pub kind: ChangeKind,
    /// When it happened, if known; `None` means "stat the file" (for a
    /// deletion, pass the event time to get writer-window attribution).
    pub mtime: Option<SystemTime>,
}

impl Change {
    /// A modification of `path` with unknown mtime.
    pub fn modified(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            kind: ChangeKind::Modified,
            mtime: None,
        }
    }

    /// A creation of `path` with unknown mtime.
    pub fn created(path: impl Into<PathBuf>) -> Self {
        Self {
            kind: ChangeKind::Created,
            ..Self::modified(path)
        }
    }

    /// A deletion of `path` at an unknown time.
    pub fn deleted(path: impl Into<PathBuf>) -> Self {
        Self {
            kind: ChangeKind::Deleted,
            ..Self::modified(path)
        }
    }
}

/// The outcome for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// A user change: stage and sync it.
    Sync,
    /// A system change (or no change at all): never stage it.
    Block,
}

/// Which layer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Layer 1: rules and excludes.
    Rules,
    /// Layer 2: writer windows and open files.
    Process,
    /// Layer 3: content compared with HEAD.
    Content,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rules => "rules",
            Self::Process => "process",
            Self::Content => "content",
        })
    }
}

/// A verdict and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Sync or block.
    pub verdict: Verdict,
    /// The layer that decided.
    pub layer: Layer,
    /// The rule that decided: `FILE:LINE`, `builtin:LINE`, `exclude:PATTERN`,
    /// `.gitignore` `FILE:PATTERN`, `WRITERS_FILE:LINE`, `process:PATTERN`,
    /// `content:…`, or `default` for the default action.
    pub rule: Option<String>,
    /// A human sentence explaining the decision.
    pub reason: String,
}

impl Decision {
    fn new(verdict: Verdict, layer: Layer, rule: Option<String>, reason: String) -> Self {
        Self {
            verdict,
            layer,
            rule,
            reason,
        }
    }
}

/// Supplies the "previous" content of a path (instead of the HEAD blob), for
/// tests, benchmarks and hosts that keep their own baseline.
pub type PreviousContent = dyn Fn(&Path) -> Option<Vec<u8>> + Send + Sync;

enum Baseline {
    Git(Mutex<git2::Repository>),
    Custom(Arc<PreviousContent>),
    None,
}

impl fmt::Debug for Baseline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Git(_) => "Baseline::Git",
            Self::Custom(_) => "Baseline::Custom",
            Self::None => "Baseline::None",
        })
    }
}

/// The compiled filter for one workspace. `Send + Sync`; cheap to share
/// behind an `Arc`.
#[derive(Debug)]
pub struct Filter {
    workspace: PathBuf,
    rules: RuleSet,
    rules_origin: String,
    excludes: rules::Excludes,
    default_action: Action,
    process: process::ProcessLayer,
    content: ContentAnalyzer,
    baseline: Baseline,
    max_content_bytes: u64,
}

/// The outcome of layer 1 before it becomes a [`Decision`].
struct RulesOutcome {
    action: Action,
    rule: Option<String>,
    reason: String,
}

impl Filter {
    /// Compiles the rules (from `config.rules_file`, `<state>/rules.conf`,
    /// or the built-ins), the excludes (config plus `.gitignore`), the
    /// volatile keys and the process patterns, and opens the workspace's git
    /// repository (read-only) for HEAD blobs if there is one. Reads files
    /// only here; any invalid input is an error and nothing is half-built.
    pub fn new(workspace: &Path, state_dir: &Path, config: &FilterConfig) -> Result<Self> {
        let workspace =
            std::fs::canonicalize(workspace).unwrap_or_else(|_| workspace.to_path_buf());
        let state_dir = match state_dir.strip_prefix(&workspace) {
            Ok(_) => state_dir.to_path_buf(),
            Err(_) => std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf()),
        };
        let default_file = state_dir.join("rules.conf");
        let (rules, rules_origin) = match &config.rules_file {
            Some(file) => (RuleSet::load(file)?, file.display().to_string()),
            None if default_file.is_file() => (
                RuleSet::load(&default_file)?,
                default_file.display().to_string(),
            ),
            None => (RuleSet::builtin(), rules::BUILTIN_SOURCE.to_owned()),
        };
        let excludes = if config.use_gitignore {
            let mut ex = rules::Excludes::new(&workspace, &config.exclude_patterns)?;
            if config.nested_gitignores {
                ex.load_nested(&workspace)?;
            }
            ex
        } else {
            rules::Excludes::new(
                Path::new("/nonexistent-wsync-root"),
                &config.exclude_patterns,
            )?
        };
        let content = ContentAnalyzer::new(&config.volatile_keys)?;
        let process = process::ProcessLayer::new(&workspace, &state_dir, config)?;
        let baseline = match git2::Repository::open(&workspace) {
            Ok(repo) => Baseline::Git(Mutex::new(repo)),
            Err(_) => Baseline::None,
        };
        Ok(Self {
            workspace,
            rules,
            rules_origin,
            excludes,
            default_action: config.default_action,
            process,
            content,
            baseline,
            max_content_bytes: config.max_content_bytes,
        })
    }

    /// Uses `previous` instead of the HEAD blob as the content baseline.
    #[must_use]
    pub fn with_previous_content(mut self, previous: Arc<PreviousContent>) -> Self {
        self.baseline = Baseline::Custom(previous);
        self
    }

    /// Uses `clock` for the process cache's TTL (tests inject a manual one).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.process.set_clock(clock);
        self
    }

    /// The workspace root (canonicalised when possible).
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// Where the rules came from: a file path or `builtin`.
    pub fn rules_origin(&self) -> &str {
        &self.rules_origin
    }

    /// The compiled rules, in order.
    pub fn rule_set(&self) -> &RuleSet {
        &self.rules
    }

    /// Layer 1 only: excludes, then the first matching rule, then the
    /// default action. Pure (no I/O). `ANALYZE` maps to `Sync` here — the
    /// "don't lose user work" side — with the reason saying so.
    pub fn rules(&self, path: &Path) -> Decision {
        let out = self.rules_outcome(&rel_string(path));
        let verdict = match out.action {
            Action::Block => Verdict::Block,
            Action::Allow | Action::Analyze => Verdict::Sync,
        };
        Decision::new(verdict, Layer::Rules, out.rule, out.reason)
    }

    /// The rules' action for `path` (excludes count as `BLOCK`), pure.
    pub fn action(&self, path: &Path) -> Action {
        self.rules_outcome(&rel_string(path)).action
    }

    fn rules_outcome(&self, path: &str) -> RulesOutcome {
        if let Some(m) = self.excludes.matched(path) {
            return RulesOutcome {
                action: Action::Block,
                reason: format!("excluded by pattern {:?}", m.pattern),
                rule: Some(m.source),
            };
        }
        if let Some(rule) = self.rules.first_match(path) {
            let what = if rule.description.is_empty() {
                String::new()
            } else {
                format!(" ({})", rule.description)
            };
            return RulesOutcome {
                action: rule.action,
                rule: Some(rule.source.clone()),
                reason: format!("{} rule {:?}{what}", rule.action, rule.regex),
            };
        }
        RulesOutcome {
            action: self.default_action,
            rule: Some("default".into()),
            reason: format!("no rule matches; default action {}", self.default_action),
        }
    }

    /// All layers for one change. Deterministic for the same inputs (rules,
    /// files, writer windows, open files, HEAD).
    pub fn classify(&self, change: &Change) -> Decision {
        self.classify_all(std::slice::from_ref(change))
            .pop()
            .unwrap_or_else(|| {
                Decision::new(Verdict::Sync, Layer::Rules, None, "no decision".into())
            })
    }

    /// Reads ahead what the process layer will need: the command line of
    /// every running process, cached for the layer's TTL. Meant for
    /// another thread while the caller does other work (the sync engine
    /// calls it during its snapshot), so that a later [`Self::classify_all`]
    /// only lists `/proc` and reads the descriptors of system processes.
    /// Does nothing when open files are not scanned.
    pub fn prepare(&self) {
        self.process.prepare();
    }

    /// All layers for a batch: the writer windows are read and `/proc` is
    /// scanned once for the whole batch. Decisions are in input order.
    pub fn classify_all(&self, changes: &[Change]) -> Vec<Decision> {
        let outcomes: Vec<RulesOutcome> = changes
            .iter()
            .map(|c| self.rules_outcome(&rel_string(&c.path)))
            .collect();
        let analyze: Vec<&Change> = changes
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.action == Action::Analyze)
            .map(|(c, _)| c)
            .collect();
        let evidence = self.process.gather(&analyze);
        changes
            .iter()
            .zip(outcomes)
            .map(|(change, out)| match out.action {
                Action::Block => Decision::new(Verdict::Block, Layer::Rules, out.rule, out.reason),
                Action::Allow => Decision::new(Verdict::Sync, Layer::Rules, out.rule, out.reason),
                Action::Analyze => self.analyze(change, &out, &evidence),
            })
            .collect()
    }

    fn analyze(
        &self,
        change: &Change,
        out: &RulesOutcome,
        evidence: &process::Evidence,
    ) -> Decision {
        let mut notes = vec![out.reason.clone()];
        match self.process.judge(change, evidence) {
            process::Judgement::System { rule, reason } => {
                return Decision::new(Verdict::Block, Layer::Process, Some(rule), reason);
            }
            process::Judgement::NotSystem(note) | process::Judgement::Unknown(note) => {
                if let Some(note) = note {
                    notes.push(note);
                }
            }
        }
        let rel = rel_string(&change.path);
        if let Some(kind) = content::log_or_backup(&rel) {
            return Decision::new(
                Verdict::Block,
                Layer::Content,
                Some(format!("content:{kind}")),
                format!("{kind} files are system-generated"),
            );
        }
        if change.kind == ChangeKind::Deleted || !self.workspace.join(&change.path).exists() {
            notes.push("deleted: no content to analyse; a deletion is a user change".into());
            return Decision::new(
                Verdict::Sync,
                Layer::Content,
                Some("content:deleted".into()),
                notes.join("; "),
            );
        }
        let abs = self.workspace.join(&change.path);
        let current = match std::fs::metadata(&abs) {
            Ok(meta) if meta.len() > self.max_content_bytes => {
                notes.push(format!(
                    "{} bytes is over the content limit; rules verdict stands",
                    meta.len()
                ));
                return Decision::new(
                    Verdict::Sync,
                    Layer::Rules,
                    out.rule.clone(),
                    notes.join("; "),
                );
            }
            Ok(meta) if !meta.is_file() => {
                notes.push("not a regular file; rules verdict stands".into());
                return Decision::new(
                    Verdict::Sync,
                    Layer::Rules,
                    out.rule.clone(),
                    notes.join("; "),
                );
            }
            _ => std::fs::read(&abs),
        };
        let current = match current {
            Ok(bytes) => bytes,
            Err(e) => {
                notes.push(format!("cannot read the file ({e}); rules verdict stands"));
                return Decision::new(
                    Verdict::Sync,
                    Layer::Rules,
                    out.rule.clone(),
                    notes.join("; "),
                );
            }
        };
        let previous = self.previous(&change.path);
        let verdict = self.content.compare(&rel, previous.as_deref(), &current);
        let (v, layer, rule, reason) = match verdict {
            ContentVerdict::Unchanged => (
                Verdict::Block,
                Layer::Content,
                "content:unchanged",
                "same bytes as the last committed version: no change at all".to_owned(),
            ),
            ContentVerdict::VolatileOnly(why) => {
                (Verdict::Block, Layer::Content, "content:volatile", why)
            }
            ContentVerdict::Changed(why) => (Verdict::Sync, Layer::Content, "content:changed", why),
            ContentVerdict::New => (
                Verdict::Sync,
                Layer::Content,
                "content:new",
                "not in the last commit: a new file is a user change".to_owned(),
            ),
            ContentVerdict::Binary => (
                Verdict::Sync,
                Layer::Rules,
                "content:binary",
                "binary content is not analysed; the rules verdict (ANALYZE → sync) stands"
                    .to_owned(),
            ),
        };
        notes.push(reason);
        Decision::new(v, layer, Some(rule.to_owned()), notes.join("; "))
    }

    /// The baseline content of `path` (HEAD blob, or the injected source).
    fn previous(&self, path: &Path) -> Option<Vec<u8>> {
        match &self.baseline {
            Baseline::Custom(f) => f(path),
            Baseline::None => None,
            Baseline::Git(repo) => {
                let repo = repo.lock().ok()?;
                let tree = repo.head().ok()?.peel_to_tree().ok()?;
                let entry = tree.get_path(path).ok()?;
                let blob = entry.to_object(&repo).ok()?.peel_to_blob().ok()?;
                Some(blob.content().to_vec())
            }
        }
    }

    /// Layer 3 alone on given bytes (for tools, tests and benchmarks).
    pub fn content_analyzer(&self) -> &ContentAnalyzer {
        &self.content
    }

    /// The writer windows currently recorded in `<state>/writers.jsonl`.
    pub fn writer_windows(&self) -> Vec<WriterWindow> {
        self.process.windows().as_ref().clone()
    }

    /// Layer 2 alone for one change (writer windows, then open files),
    /// whatever the rules say: `Some` block decision if it is attributed to
    /// the system, `None` if not (or unknown).
    pub fn process_layer(&self, change: &Change) -> Option<Decision> {
        let evidence = self.process.gather(&[change]);
        match self.process.judge(change, &evidence) {
            process::Judgement::System { rule, reason } => Some(Decision::new(
                Verdict::Block,
                Layer::Process,
                Some(rule),
                reason,
            )),
            process::Judgement::NotSystem(_) | process::Judgement::Unknown(_) => None,
        }
    }
}

/// A workspace-relative path as the rules see it: `/`-separated, no
/// leading `./` or `/`.
pub fn rel_string(path: &Path) -> String {
    let s = path.to_string_lossy();
    let s = if std::path::MAIN_SEPARATOR == '/' {
        s.into_owned()
    } else {
        s.replace(std::path::MAIN_SEPARATOR, "/")
    };
    let mut t = s.as_str();
    while let Some(rest) = t.strip_prefix("./") {
        t = rest;
    }
    t.trim_start_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn filter_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Filter>();
    }

    #[test]
    fn rel_string_normalises() {
        assert_eq!(rel_string(Path::new("./a/b")), "a/b");
        assert_eq!(rel_string(Path::new("/a/b")), "a/b");
    }
}
