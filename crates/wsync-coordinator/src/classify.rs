//! The staging decision: which pending paths are the user's (commit them)
//! and which are the system's (never stage them).

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::Error;
use crate::config::FiltersConfig;
use crate::git::Pending;

/// Why a path is or is not committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Commit it.
    pub user: bool,
    /// The rule or reason, for logs and `status`.
    pub reason: String,
}

/// Decides whether a changed path is a user change.
pub(crate) struct Classifier {
    excludes: Gitignore,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier").finish_non_exhaustive()
    }
}

impl Classifier {
    /// Compiles the exclude patterns once.
    pub fn new(workspace: &Path, filters: &FiltersConfig) -> Result<Self, Error> {
        let mut b = GitignoreBuilder::new(workspace);
        for (i, pat) in filters.exclude_patterns.iter().enumerate() {
            b.add_line(None, pat).map_err(|e| Error::ConfigKey {
                key: format!("filters.exclude_patterns[{i}]"),
                why: format!("invalid pattern {pat:?}: {e}"),
            })?;
        }
        let excludes = b.build().map_err(|e| Error::ConfigKey {
            key: "filters.exclude_patterns".into(),
            why: e.to_string(),
        })?;
        Ok(Self { excludes })
    }

    /// The verdict for one pending path.
    pub fn classify(&self, p: &Pending) -> Verdict {
        self.classify_path(&p.path)
    }

    /// The verdict for a workspace-relative path.
    pub fn classify_path(&self, path: &str) -> Verdict {
        let m = self.excludes.matched_path_or_any_parents(path, false);
        if let Some(glob) = m.is_ignore().then(|| m.inner()).flatten() {
            return Verdict {
                user: false,
                reason: format!("exclude pattern `{}`", glob.original()),
            };
        }
        Verdict {
            user: true,
            reason: "no exclude pattern matched".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_patterns_block_system_files() {
        let c = Classifier::new(Path::new("/ws"), &FiltersConfig::default()).unwrap();
        for p in ["a.log", "x/y/z.tmp", "node_modules/a/b.js", "run/app.pid", ".DS_Store"] {
            assert!(!c.classify_path(p).user, "{p}");
        }
        for p in ["src/main.rs", "README.md", "log/readme.txt", "notes.logs"] {
            assert!(c.classify_path(p).user, "{p}");
        }
        assert!(c.classify_path("a.log").reason.contains("*.log"));
    }

    #[test]
    fn bad_pattern_names_the_key() {
        let f = FiltersConfig {
            exclude_patterns: vec!["ok".into(), "a{b".into()],
            ..FiltersConfig::default()
        };
        let err = Classifier::new(Path::new("/ws"), &f).unwrap_err().to_string();
        assert!(err.contains("filters.exclude_patterns[1]"), "{err}");
    }
}
