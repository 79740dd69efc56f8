//! The staging decision: which pending paths are the user's (commit them)
//! and which are the system's (never stage them), by `wsync-filter`.

use std::path::{Path, PathBuf};

use wsync_filter::{Action, Change, ChangeKind, Filter, FilterConfig, Verdict as FilterVerdict};

use crate::Error;
use crate::config::FiltersConfig;
use crate::git::Pending;

/// Why a path is or is not committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Commit it.
    pub user: bool,
    /// The layer, rule and reason, for logs and `status`.
    pub reason: String,
}

/// Decides whether a changed path is a user change.
#[derive(Debug)]
pub(crate) struct Classifier {
    filter: Filter,
    workspace: PathBuf,
}

/// The `wsync-filter` settings for a workspace's `filters.*` config.
pub fn filter_config(workspace: &Path, filters: &FiltersConfig) -> Result<FilterConfig, Error> {
    let default_action =
        Action::parse(&filters.default_action).ok_or_else(|| Error::ConfigKey {
            key: "filters.default_action".into(),
            why: format!(
                "{:?} is not one of \"allow\", \"block\", \"analyze\"",
                filters.default_action
            ),
        })?;
    Ok(FilterConfig {
        rules_file: filters.rules_file.as_ref().map(|p| workspace.join(p)),
        exclude_patterns: filters.exclude_patterns.clone(),
        use_gitignore: filters.use_gitignore,
        default_action,
        volatile_keys: filters.volatile_keys.clone(),
        system_process_patterns: filters.system_process_patterns.clone(),
        scan_open_files: filters.scan_open_files,
        ..FilterConfig::default()
    })
}

impl Classifier {
    /// Builds the filter once for a run.
    pub fn new(workspace: &Path, state_dir: &Path, filters: &FiltersConfig) -> Result<Self, Error> {
        let config = filter_config(workspace, filters)?;
        let filter = Filter::new(workspace, state_dir, &config)?;
        Ok(Self {
            filter,
            workspace: workspace.to_path_buf(),
        })
    }

    /// Reads ahead what classifying will need (see
    /// [`wsync_filter::Filter::prepare`]).
    pub fn prepare(&self) {
        self.filter.prepare();
    }

    /// Verdicts for pending paths, in order (all three layers; one `/proc`
    /// scan for the batch).
    pub fn classify_all(&self, pending: &[Pending]) -> Vec<Verdict> {
        let changes: Vec<Change> = pending
            .iter()
            .map(|p| {
                let kind = if p.deleted {
                    ChangeKind::Deleted
                } else if p.created {
                    ChangeKind::Created
                } else {
                    ChangeKind::Modified
                };
                let mtime = if p.deleted {
                    None
                } else {
                    self.workspace
                        .join(&p.path)
                        .symlink_metadata()
                        .and_then(|m| m.modified())
                        .ok()
                };
                Change {
                    path: PathBuf::from(&p.path),
                    kind,
                    mtime,
                }
            })
            .collect();
        self.filter
            .classify_all(&changes)
            .into_iter()
            .map(|d| Verdict {
                user: d.verdict == FilterVerdict::Sync,
                reason: format!(
                    "{} ({}{})",
                    d.reason,
                    d.layer,
                    d.rule.map(|r| format!(": {r}")).unwrap_or_default()
                ),
            })
            .collect()
    }

    /// Whether layer 1 (rules and excludes; no I/O) calls a path system.
    /// Used to settle merge conflicts of system files automatically.
    pub fn is_system_path(&self, path: &str) -> bool {
        self.filter.rules(Path::new(path)).verdict == FilterVerdict::Block
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_patterns_block_system_files() {
        let ws = tempfile::tempdir().unwrap();
        let c = Classifier::new(
            ws.path(),
            &ws.path().join(".wsync"),
            &FiltersConfig::default(),
        )
        .unwrap();
        for p in [
            "a.log",
            "x/y/z.tmp",
            "node_modules/a/b.js",
            "run/app.pid",
            ".DS_Store",
        ] {
            assert!(c.is_system_path(p), "{p}");
        }
        for p in ["src/main.rs", "README.md", "notes.logs"] {
            assert!(!c.is_system_path(p), "{p}");
        }
    }

    #[test]
    fn bad_settings_name_the_key() {
        let ws = tempfile::tempdir().unwrap();
        let f = FiltersConfig {
            default_action: "maybe".into(),
            ..FiltersConfig::default()
        };
        let err = Classifier::new(ws.path(), ws.path(), &f)
            .unwrap_err()
            .to_string();
        assert!(err.contains("filters.default_action"), "{err}");
    }
}
