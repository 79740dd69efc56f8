//! Layer 1: `ACTION:REGEX:DESCRIPTION` rules and gitignore-style excludes.
//!
//! Everything here is compiled once ([`RuleSet::parse`], [`Excludes::new`])
//! and then matched without I/O.
//!
//! # The rules format
//!
//! One rule a line, `ACTION:REGEX:DESCRIPTION`:
//! - `ACTION` is everything before the **first** `:` — `BLOCK`, `ALLOW` or
//!   `ANALYZE` (case-insensitive, surrounding blanks ignored);
//! - `DESCRIPTION` is everything after the **last** `:` (blanks trimmed, may
//!   be empty), so a description cannot contain `:`;
//! - `REGEX` is everything in between, taken verbatim, so it may contain `:`
//!   (`ALLOW:notes/a:b\.md:` is the regex `notes/a:b\.md`).
//!
//! A line with fewer than two `:` is an error. Blank lines and lines whose
//! first non-blank character is `#` are ignored. Regexes are **anchored**:
//! each is matched against the whole workspace-relative path (with `/`
//! separators) as `^(?:REGEX)$`, so `CLAUDE\.md` matches only the top-level
//! `CLAUDE.md` and `docs/.*\.md` matches only under `docs/`. The first rule
//! (in file order) that matches wins.

use std::fmt;
use std::path::{Path, PathBuf};

use regex::RegexSet;
use serde::{Deserialize, Serialize};

use crate::Error;

/// What a rule says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// A system file: never synced.
    Block,
    /// A user file: synced without further analysis.
    Allow,
    /// Mixed: decided by the process and content layers.
    Analyze,
}

impl Action {
    /// Parses `BLOCK`, `ALLOW` or `ANALYZE` (case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_uppercase().as_str() {
            "BLOCK" => Some(Self::Block),
            "ALLOW" => Some(Self::Allow),
            "ANALYZE" | "ANALYSE" => Some(Self::Analyze),
            _ => None,
        }
    }

    /// The keyword as written in rules files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "BLOCK",
            Self::Allow => "ALLOW",
            Self::Analyze => "ANALYZE",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// The action.
    pub action: Action,
    /// The regex as written (matched anchored, see the module docs).
    pub regex: String,
    /// The description (may be empty).
    pub description: String,
    /// Where it came from: `FILE:LINE`, or `builtin:LINE` for the defaults.
    pub source: String,
}

/// An ordered, compiled list of rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    set: RegexSet,
}

/// The built-in rules, used when the state folder has no `rules.conf`.
///
/// The regexes follow the format above (anchored). `wsync filter
/// init-rules` writes this text to `<state>/rules.conf` as a starting point.
const DEFAULT_RULES: &str = r#"# wsync filter rules: ACTION:REGEX:DESCRIPTION, first match wins.
# ACTION is BLOCK (system file, never synced), ALLOW (user file, synced)
# or ANALYZE (decided by the process and content layers).
# REGEX is matched against the whole workspace-relative path (anchored as
# ^(?:REGEX)$) and may contain ':'; DESCRIPTION follows the last ':'.
# Paths no rule matches get the configured default action (ANALYZE).

# wsync's own state and git internals
BLOCK:\.wsync(/.*)?:wsync state folder
BLOCK:(.*/)?\.git(/.*)?:git internals

# Logs and runtime files
BLOCK:(.*/)?logs/.*:log folders
BLOCK:.*\.log(\.[0-9]+)?(\.gz)?:log files
BLOCK:.*\.pid:pid files

# Editor and backup files
BLOCK:.*~:editor backup files
BLOCK:(.*/)?\.#[^/]*:emacs lock files
BLOCK:(.*/)?\.[^/]*\.sw[a-p]:vim swap files
BLOCK:.*\.(bak|orig|rej|tmp|temp):backup and temporary files
BLOCK:(.*/)?(\.DS_Store|Thumbs\.db):desktop metadata

# Generated status files of an autonomous system
BLOCK:.*-status\.json:generated status files
BLOCK:\.claude/autonomous/.*:autonomous system state
BLOCK:\.claude/memory/enhanced-context\.json:auto-saved context
BLOCK:\.claude/intelligence/.*\.log:intelligence logs

# Files both the user and the system write
ANALYZE:\.claude/contexts/.*:context files
ANALYZE:\.claude/decisions/.*:decision logs

# User files
ALLOW:scripts/.*\.sh:user shell scripts
ALLOW:docs/.*\.md:user documentation
ALLOW:projects/.*:user project files
ALLOW:CLAUDE\.md:main config file
"#;

/// The text of the built-in rules (a valid rules file).
pub fn default_rules_text() -> &'static str {
    DEFAULT_RULES
}

/// The label used as the "file" of the built-in rules.
pub const BUILTIN_SOURCE: &str = "builtin";

impl RuleSet {
    /// Parses rules text. `origin` names the file in errors and in each
    /// rule's `source` (`ORIGIN:LINE`). Either every rule compiles or an
    /// error names the first bad line; nothing is half-loaded.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Error> {
        let mut rules = Vec::new();
        let mut lines = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (Some(first), Some(last)) = (line.find(':'), line.rfind(':')) else {
                return Err(Error::RuleSyntax {
                    file: PathBuf::from(origin),
                    line: line_no,
                    message: "missing ':' (expected ACTION:REGEX:DESCRIPTION)".into(),
                });
            };
            if first == last {
                return Err(Error::RuleSyntax {
                    file: PathBuf::from(origin),
                    line: line_no,
                    message: "missing second ':' (expected ACTION:REGEX:DESCRIPTION)".into(),
                });
            }
            let action_text = line.get(..first).unwrap_or_default();
            let regex = line.get(first + 1..last).unwrap_or_default();
            let description = line.get(last + 1..).unwrap_or_default().trim();
            let Some(action) = Action::parse(action_text) else {
                return Err(Error::RuleSyntax {
                    file: PathBuf::from(origin),
                    line: line_no,
                    message: format!(
                        "unknown action {:?} (expected BLOCK, ALLOW or ANALYZE)",
                        action_text.trim()
                    ),
                });
            };
            if regex.is_empty() {
                return Err(Error::RuleSyntax {
                    file: PathBuf::from(origin),
                    line: line_no,
                    message: "empty regex".into(),
                });
            }
            rules.push(Rule {
                action,
                regex: regex.to_owned(),
                description: description.to_owned(),
                source: format!("{origin}:{line_no}"),
            });
            lines.push(line_no);
        }
        // One compilation for the whole set (compiling each rule alone as
        // well would triple the start-up cost of every run); only when the
        // set fails is each rule compiled alone, so the error names its line.
        let set = RegexSet::new(rules.iter().map(|r| anchored(&r.regex))).map_err(|set_err| {
            for (rule, &line) in rules.iter().zip(&lines) {
                // The regex as written first, so the error shows it without
                // our anchoring.
                if let Err(source) = regex::Regex::new(&rule.regex)
                    .and_then(|_| regex::Regex::new(&anchored(&rule.regex)))
                {
                    return Error::RuleRegex {
                        file: PathBuf::from(origin),
                        line,
                        regex: rule.regex.clone(),
                        source,
                    };
                }
            }
            Error::RuleRegex {
                file: PathBuf::from(origin),
                line: 0,
                regex: "(the whole set)".into(),
                source: set_err,
            }
        })?;
        Ok(Self { rules, set })
    }

    /// Reads and parses a rules file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The built-in rules.
    pub fn builtin() -> Self {
        // The built-in text is tested to parse; an empty set is the safe
        // fallback should that ever break.
        Self::parse(DEFAULT_RULES, BUILTIN_SOURCE).unwrap_or_else(|_| Self::empty())
    }

    /// No rules at all.
    pub fn empty() -> Self {
        Self {
            rules: Vec::new(),
            set: RegexSet::empty(),
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule (in file order) matching `path`, a workspace-relative
    /// path with `/` separators.
    pub fn first_match(&self, path: &str) -> Option<&Rule> {
        // RegexSet reports every match; the lowest index is the first rule.
        self.set
            .matches(path)
            .iter()
            .next()
            .and_then(|i| self.rules.get(i))
    }
}

fn anchored(regex: &str) -> String {
    format!("^(?:{regex})$")
}

/// Gitignore-style exclude patterns (config list plus the repo's
/// `.gitignore`), compiled with the `ignore` crate: `**`, `!negation`,
/// trailing `/` for folders, leading `/` for the root all work as in git.
#[derive(Debug, Clone)]
pub struct Excludes {
    config: ignore::gitignore::Gitignore,
    gitignore: ignore::gitignore::Gitignore,
    gitignore_path: PathBuf,
    /// `.gitignore` files below the top level: (their folder relative to
    /// the workspace with a trailing `/`, their rules), deepest first.
    nested: Vec<(String, ignore::gitignore::Gitignore)>,
}

/// Where an exclude match came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcludeMatch {
    /// The pattern as written.
    pub pattern: String,
    /// `exclude:PATTERN` for config patterns, `FILE:LINE` for `.gitignore`.
    pub source: String,
}

impl Excludes {
    /// Compiles the config patterns and, if it exists, `<workspace>/.gitignore`.
    /// Reads the `.gitignore` once, here.
    pub fn new(workspace: &Path, patterns: &[String]) -> Result<Self, Error> {
        let mut builder = ignore::gitignore::GitignoreBuilder::new(workspace);
        for pattern in patterns {
            builder
                .add_line(None, pattern)
                .map_err(|source| Error::Exclude {
                    pattern: pattern.clone(),
                    source,
                })?;
        }
        let config = builder.build().map_err(|source| Error::Exclude {
            pattern: patterns.join(", "),
            source,
        })?;
        let gitignore_path = workspace.join(".gitignore");
        let gitignore = if gitignore_path.is_file() {
            let mut b = ignore::gitignore::GitignoreBuilder::new(workspace);
            if let Some(source) = b.add(&gitignore_path) {
                return Err(Error::Exclude {
                    pattern: gitignore_path.display().to_string(),
                    source,
                });
            }
            b.build().map_err(|source| Error::Exclude {
                pattern: gitignore_path.display().to_string(),
                source,
            })?
        } else {
            ignore::gitignore::Gitignore::empty()
        };
        Ok(Self {
            config,
            gitignore,
            gitignore_path,
            nested: Vec::new(),
        })
    }

    /// Also applies the `.gitignore` files in subfolders of `workspace`
    /// (walks the tree once, now).
    pub fn load_nested(&mut self, workspace: &Path) -> Result<(), Error> {
        self.nested = nested_gitignores(workspace)?;
        Ok(())
    }

    /// No patterns.
    pub fn empty() -> Self {
        Self {
            config: ignore::gitignore::Gitignore::empty(),
            gitignore: ignore::gitignore::Gitignore::empty(),
            gitignore_path: PathBuf::new(),
            nested: Vec::new(),
        }
    }

    /// Whether `path` (workspace-relative, a file) is excluded, and by what.
    /// A `!pattern` whitelist match in either source means not excluded by
    /// that source.
    pub fn matched(&self, path: &str) -> Option<ExcludeMatch> {
        let p = Path::new(path);
        if p.has_root() {
            return None; // not workspace-relative: nothing here applies
        }
        if let ignore::Match::Ignore(glob) = self.config.matched_path_or_any_parents(p, false) {
            return Some(ExcludeMatch {
                pattern: glob.original().to_owned(),
                source: format!("exclude:{}", glob.original()),
            });
        }
        // As in git, the deepest `.gitignore` that has a say decides (a
        // `!pattern` there re-includes what a shallower one ignores).
        for (dir, rules) in &self.nested {
            let Some(below) = path.strip_prefix(dir.as_str()) else {
                continue;
            };
            match rules.matched_path_or_any_parents(Path::new(below), false) {
                ignore::Match::None => {}
                ignore::Match::Whitelist(_) => return None,
                ignore::Match::Ignore(glob) => {
                    let file = glob
                        .from()
                        .map_or_else(|| format!("{dir}.gitignore"), |f| f.display().to_string());
                    return Some(ExcludeMatch {
                        pattern: glob.original().to_owned(),
                        source: format!("{file}:{}", glob.original()),
                    });
                }
            }
        }
        if let ignore::Match::Ignore(glob) = self.gitignore.matched_path_or_any_parents(p, false) {
            let source = match glob.from() {
                Some(file) => format!("{}:{}", file.display(), glob.original()),
                None => format!("{}:{}", self.gitignore_path.display(), glob.original()),
            };
            return Some(ExcludeMatch {
                pattern: glob.original().to_owned(),
                source,
            });
        }
        None
    }
}

/// The `.gitignore` files below the workspace's top level (folders that a
/// shallower `.gitignore` ignores, `.git` and nested repositories are not
/// entered), compiled, deepest first. Read once, at construction.
fn nested_gitignores(
    workspace: &Path,
) -> Result<Vec<(String, ignore::gitignore::Gitignore)>, Error> {
    let mut out = Vec::new();
    let walk = ignore::WalkBuilder::new(workspace)
        .hidden(false)
        .git_global(false)
        .git_exclude(true)
        .require_git(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    for entry in walk.flatten() {
        if entry.depth() < 2 || entry.file_name() != ".gitignore" {
            continue;
        }
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let Some(dir) = entry.path().parent() else {
            continue;
        };
        let Ok(rel) = dir.strip_prefix(workspace) else {
            continue;
        };
        let Some(rel) = rel.to_str() else {
            continue; // a non-UTF-8 folder: its paths never reach the filter
        };
        let mut b = ignore::gitignore::GitignoreBuilder::new(dir);
        if let Some(source) = b.add(entry.path()) {
            return Err(Error::Exclude {
                pattern: entry.path().display().to_string(),
                source,
            });
        }
        let rules = b.build().map_err(|source| Error::Exclude {
            pattern: entry.path().display().to_string(),
            source,
        })?;
        out.push((format!("{rel}/"), rules));
    }
    out.sort_by_key(|(dir, _)| std::cmp::Reverse(dir.matches('/').count()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nested_gitignores_apply_below_their_folder_deepest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let w = tmp.path();
        std::fs::create_dir_all(w.join("web/src/gen")).unwrap();
        std::fs::create_dir_all(w.join("out")).unwrap();
        std::fs::write(w.join(".gitignore"), "*.log\nout/\n").unwrap();
        std::fs::write(w.join("web/.gitignore"), "dist/\n!keep.log\n").unwrap();
        std::fs::write(w.join("web/src/gen/.gitignore"), "*.rs\n").unwrap();
        // Inside an ignored folder: never read.
        std::fs::write(w.join("out/.gitignore"), "[invalid\n").unwrap();
        let mut ex = Excludes::new(w, &[]).unwrap();
        assert_eq!(ex.matched("web/dist/app.js"), None, "not loaded yet");
        ex.load_nested(w).unwrap();
        let hit = |p: &str| ex.matched(p).map(|m| m.source);
        assert!(
            hit("web/dist/app.js")
                .unwrap()
                .ends_with("web/.gitignore:dist/")
        );
        assert_eq!(hit("dist/app.js"), None, "web's rules stay in web/");
        assert!(hit("web/src/gen/x.rs").unwrap().contains("gen/.gitignore"));
        assert_eq!(hit("web/src/x.rs"), None);
        assert_eq!(hit("web/keep.log"), None, "re-included by web/.gitignore");
        assert!(
            hit("web/other.log").is_some(),
            "the top level still applies"
        );
        assert!(hit("a.log").is_some());
        assert_eq!(hit("/etc/passwd"), None);
    }

    #[test]
    fn builtin_rules_parse() {
        let set = RuleSet::parse(DEFAULT_RULES, BUILTIN_SOURCE).unwrap();
        assert!(set.rules().len() > 15);
        assert!(set.rules().iter().all(|r| r.source.starts_with("builtin:")));
    }

    #[test]
    fn regex_may_contain_colons() {
        let set = RuleSet::parse("ALLOW:notes/a:b\\.md:odd name\n", "r.conf").unwrap();
        let rule = set.first_match("notes/a:b.md").unwrap();
        assert_eq!(rule.regex, "notes/a:b\\.md");
        assert_eq!(rule.description, "odd name");
        assert_eq!(rule.source, "r.conf:1");
    }

    #[test]
    fn anchored_full_path() {
        let set = RuleSet::parse("ALLOW:CLAUDE\\.md:main\n", "r").unwrap();
        assert!(set.first_match("CLAUDE.md").is_some());
        assert!(set.first_match("sub/CLAUDE.md").is_none());
        assert!(set.first_match("CLAUDE.md.bak").is_none());
    }

    #[test]
    fn seed_examples() {
        let set = RuleSet::builtin();
        let action = |p: &str| set.first_match(p).map(|r| r.action);
        assert_eq!(
            action(".claude/autonomous/service-status.json"),
            Some(Action::Block)
        );
        assert_eq!(
            action(".claude/memory/enhanced-context.json"),
            Some(Action::Block)
        );
        assert_eq!(action(".claude/intelligence/x.log"), Some(Action::Block));
        assert_eq!(action("logs/sync.log"), Some(Action::Block));
        assert_eq!(action("scripts/deploy.sh"), Some(Action::Allow));
        assert_eq!(action("docs/guide.md"), Some(Action::Allow));
        assert_eq!(action("projects/x/src/main.rs"), Some(Action::Allow));
        assert_eq!(action("CLAUDE.md"), Some(Action::Allow));
        assert_eq!(action(".claude/contexts/p.json"), Some(Action::Analyze));
        assert_eq!(action(".claude/decisions/d.md"), Some(Action::Analyze));
        assert_eq!(action(".wsync/queue.json"), Some(Action::Block));
        assert_eq!(action("src/.main.rs.swp"), Some(Action::Block));
        assert_eq!(action("src/main.rs~"), Some(Action::Block));
        assert_eq!(action("src/.#main.rs"), Some(Action::Block));
        assert_eq!(action("run/app.pid"), Some(Action::Block));
        assert_eq!(action("src/main.rs"), None);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = RuleSet::parse("# c\n\nALLOW:a:b\nBLOCK:(:x\n", "f.conf").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("f.conf:4"), "{msg}");
        let err = RuleSet::parse("DENY:a:b\n", "f.conf").unwrap_err();
        assert!(err.to_string().contains("f.conf:1"), "{err}");
        assert!(err.to_string().contains("DENY"), "{err}");
        let err = RuleSet::parse("ALLOW:a\n", "f.conf").unwrap_err();
        assert!(err.to_string().contains("f.conf:1"), "{err}");
        let err = RuleSet::parse("ALLOW a b\n", "f.conf").unwrap_err();
        assert!(err.to_string().contains("missing ':'"), "{err}");
    }

    #[test]
    fn excludes_gitignore_semantics() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".gitignore"), "target/\n*.tmp\n!keep.tmp\n").unwrap();
        let ex = Excludes::new(
            dir.path(),
            &["build/**/out".to_owned(), "/cache/".to_owned()],
        )
        .unwrap();
        assert!(ex.matched("target/debug/x").is_some());
        assert!(ex.matched("a/target/x").is_some());
        assert!(ex.matched("x.tmp").is_some());
        assert!(ex.matched("keep.tmp").is_none());
        assert!(ex.matched("build/a/b/out").is_some());
        assert!(ex.matched("cache/x").is_some());
        assert!(ex.matched("sub/cache/x").is_none());
        let m = ex.matched("cache/x").unwrap();
        assert_eq!(m.source, "exclude:/cache/");
        assert!(ex.matched("src/main.rs").is_none());
    }
}
