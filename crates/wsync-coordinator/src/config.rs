//! `<state>/config.json`: every key has a default, unknown keys and wrong
//! types are errors naming the key, and the file is never overwritten with
//! defaults behind the user's back.
//!
//! Adding a section (for example `watch`) takes one field in [`Config`]
//! with `#[serde(default)]` and a type that implements `Default`,
//! `Serialize` and `Deserialize` with `#[serde(deny_unknown_fields)]`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;
use crate::fsutil::write_atomic;

/// The file name of the config inside the state folder.
pub const CONFIG_FILE: &str = "config.json";

/// The whole configuration. Missing keys take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Whether automatic syncs (scheduled, watch, threshold) may run.
    pub enabled: bool,
    /// Minutes between scheduled syncs.
    pub interval_minutes: u64,
    /// Which remote and branch to sync with.
    pub remote: RemoteConfig,
    /// How conflicting edits are resolved.
    pub conflict_resolution: ConflictConfig,
    /// What is never committed (exclude patterns and the filter's settings).
    pub filters: FiltersConfig,
    /// The decision engine's thresholds.
    pub monitoring: MonitoringConfig,
    /// Snapshot retention.
    pub snapshots: SnapshotsConfig,
    /// The sync lock.
    pub lock: LockConfig,
    /// The pause gate between sync and autonomous writers.
    pub pause: PauseConfig,
    /// Commit messages.
    pub commit: CommitConfig,
    /// Session handoff (used by the session crate).
    pub handoff: HandoffConfig,
    /// Rate limits on syncs and commits.
    pub ratelimit: crate::ratelimit::RateLimitConfig,
    /// Retry backoff and the circuit breaker.
    pub retry: crate::retry::RetryConfig,
    /// The daemon's timers and log rotation.
    pub daemon: crate::daemon::DaemonConfig,
    /// The watcher (intelligent auto-sync).
    pub watch: crate::watch::WatchConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: false,
            interval_minutes: 60,
            remote: RemoteConfig::default(),
            conflict_resolution: ConflictConfig::default(),
            filters: FiltersConfig::default(),
            monitoring: MonitoringConfig::default(),
            snapshots: SnapshotsConfig::default(),
            lock: LockConfig::default(),
            pause: PauseConfig::default(),
            commit: CommitConfig::default(),
            handoff: HandoffConfig::default(),
            ratelimit: crate::ratelimit::RateLimitConfig::default(),
            retry: crate::retry::RetryConfig::default(),
            daemon: crate::daemon::DaemonConfig::default(),
            watch: crate::watch::WatchConfig::default(),
        }
    }
}

/// `remote.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// The git remote's name (default `origin`).
    pub name: String,
    /// The remote branch; `null` means the current local branch's name.
    pub branch: Option<String>,
    /// How often a rejected push fetches, integrates and tries again.
    pub push_retries: u32,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            name: "origin".into(),
            branch: None,
            push_retries: 3,
        }
    }
}

/// How conflicting edits of the same file are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Keep the local version at the path and the remote one beside it.
    #[default]
    Manual,
    /// Keep the local version.
    AutoOurs,
    /// Keep the remote version.
    AutoTheirs,
}

impl Strategy {
    /// The config spelling (`manual`, `auto-ours`, `auto-theirs`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::AutoOurs => "auto-ours",
            Self::AutoTheirs => "auto-theirs",
        }
    }
}

/// `conflict_resolution.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConflictConfig {
    /// `manual` (default), `auto-ours` or `auto-theirs`.
    pub strategy: Strategy,
    /// Automatic runs (scheduled, watch) with more user changes than this
    /// are skipped and ask for a manual sync; 0 means no limit.
    pub auto_commit_threshold: usize,
    /// At most this many conflict copies of one file are kept (10).
    pub max_copies_per_file: usize,
}

impl Default for ConflictConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Manual,
            auto_commit_threshold: 0,
            max_copies_per_file: 10,
        }
    }
}

/// `filters.*`: passed to `wsync-filter`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FiltersConfig {
    /// Gitignore-style patterns that are never committed.
    pub exclude_patterns: Vec<String>,
    /// A rules file of `ACTION:REGEX:DESCRIPTION` lines (relative to the
    /// workspace); `null` means `<state>/rules.conf` if present, else the
    /// built-in rules.
    pub rules_file: Option<PathBuf>,
    /// Also never commit what the workspace's `.gitignore` ignores.
    pub use_gitignore: bool,
    /// JSON keys whose changes alone make a change a system change.
    pub volatile_keys: Vec<String>,
    /// Command-line patterns of the autonomous system's processes.
    pub system_process_patterns: Vec<String>,
    /// Look for system processes holding changed files open (`/proc`).
    pub scan_open_files: bool,
    /// The action for paths no rule decides: `allow`, `block` or `analyze`.
    pub default_action: String,
}

impl Default for FiltersConfig {
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Self {
            exclude_patterns: strings(&[
                "*.tmp",
                "*.log",
                ".DS_Store",
                "node_modules/",
                ".git/hooks/",
                "*.pid",
                "*.swp",
                "*~",
                ".wsync/",
            ]),
            rules_file: None,
            use_gitignore: true,
            volatile_keys: strings(wsync_filter::DEFAULT_VOLATILE_KEYS),
            system_process_patterns: strings(wsync_filter::DEFAULT_SYSTEM_PROCESS_PATTERNS),
            scan_open_files: true,
            default_action: "analyze".into(),
        }
    }
}

/// `monitoring.*`: the decision engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    /// An automatic run goes ahead once this many user changes are pending.
    pub max_file_changes_before_sync: usize,
    /// Seconds an automatic run waits after the last sync.
    pub min_time_between_syncs: u64,
    /// Whether a failed sync is flagged for alerting (status, health).
    pub alert_on_sync_failure: bool,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            max_file_changes_before_sync: 50,
            min_time_between_syncs: 300,
            alert_on_sync_failure: true,
        }
    }
}

/// `snapshots.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    /// How many snapshots are kept (newest first).
    pub keep: usize,
    /// Whether every snapshot also writes a git bundle.
    pub bundles: bool,
    /// Snapshots older than this many days are removed (`null`: no limit).
    pub max_age_days: Option<u64>,
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        Self {
            keep: 10,
            bundles: false,
            max_age_days: None,
        }
    }
}

/// `lock.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockConfig {
    /// The longest a sync may hold the lock before it counts as stuck.
    pub max_hold_secs: u64,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self { max_hold_secs: 600 }
    }
}

/// `pause.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PauseConfig {
    /// A writer blocked longer than this proceeds (and it is logged).
    pub max_secs: u64,
    /// How long sync waits for in-flight writes before going ahead.
    pub ack_timeout_secs: u64,
}

impl Default for PauseConfig {
    fn default() -> Self {
        Self {
            max_secs: 300,
            ack_timeout_secs: 30,
        }
    }
}

/// `commit.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommitConfig {
    /// Template with `{host}`, `{reason}`, `{count}` and `{files}`.
    pub message_template: String,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            message_template: "wsync: {reason} sync from {host} ({count} files)\n\n{files}".into(),
        }
    }
}

impl CommitConfig {
    /// Renders the template. `{files}` lists at most 50 paths, one a line.
    pub fn render(&self, host: &str, reason: &str, files: &[String]) -> String {
        let mut list: Vec<&str> = files.iter().take(50).map(String::as_str).collect();
        let more;
        if files.len() > 50 {
            more = format!("… and {} more", files.len() - 50);
            list.push(&more);
        }
        self.message_template
            .replace("{host}", host)
            .replace("{reason}", reason)
            .replace("{count}", &files.len().to_string())
            .replace("{files}", &list.join("\n"))
            .trim_end()
            .to_owned()
            + "\n"
    }
}

/// `handoff.*` (read by the session crate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HandoffConfig {
    /// Environment variable names that a handoff may carry (default none).
    pub env_allow: Vec<String>,
}

impl Config {
    /// The config path inside `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(CONFIG_FILE)
    }

    /// Loads `<state>/config.json`; a missing file means all defaults.
    pub fn load(state_dir: &Path) -> Result<Self, Error> {
        let path = Self::path_in(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Parses config bytes; errors name the key (or line and column) and
    /// the expected type. `path` is only used in messages.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, Error> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed: Result<Self, _> = serde_path_to_error::deserialize(&mut de);
        let config = parsed.map_err(|e| config_error(path, &e))?;
        de.end().map_err(|e| Error::Config {
            path: path.to_path_buf(),
            key: String::new(),
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// Validates a JSON value as a whole config.
    pub fn from_value(path: &Path, value: Value) -> Result<Self, Error> {
        let parsed: Result<Self, _> = serde_path_to_error::deserialize(value);
        parsed.map_err(|e| config_error(path, &e))
    }

    /// Writes the config atomically (temp file, fsync, rename, folder fsync).
    pub fn save(&self, state_dir: &Path) -> Result<(), Error> {
        let path = Self::path_in(state_dir);
        let mut text = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        text.push(b'\n');
        write_atomic(&path, &text)
    }

    /// The whole config as JSON.
    pub fn to_value(&self) -> Value {
        // Serialising these plain structs cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The value at a dotted key such as `monitoring.min_time_between_syncs`.
    pub fn get(&self, key: &str) -> Result<Value, Error> {
        let mut cur = self.to_value();
        for part in key.split('.') {
            cur = match cur {
                Value::Object(mut map) => map.remove(part).ok_or_else(|| unknown_key(key))?,
                _ => return Err(unknown_key(key)),
            };
        }
        Ok(cur)
    }

    /// Returns a copy with `key` set to `value`, validated as a whole.
    /// `value` is parsed as JSON; text that is not JSON is taken as a string.
    pub fn with_set(&self, key: &str, value: &str) -> Result<Self, Error> {
        let new: Value =
            serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        let mut root = self.to_value();
        let mut cur = &mut root;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Value::Object(map) = cur else {
                return Err(unknown_key(key));
            };
            let slot = map.get_mut(*part).ok_or_else(|| unknown_key(key))?;
            if i + 1 == parts.len() {
                *slot = new;
                break;
            }
            cur = slot;
        }
        Self::from_value(Path::new(CONFIG_FILE), root)
    }
}

fn unknown_key(key: &str) -> Error {
    Error::ConfigKey {
        key: key.into(),
        why: "no such key (see `wsync config show`)".into(),
    }
}

fn config_error(path: &Path, e: &serde_path_to_error::Error<serde_json::Error>) -> Error {
    let key = e.path().to_string();
    let key = if key == "." { String::new() } else { key };
    Error::Config {
        path: path.to_path_buf(),
        key,
        message: e.inner().to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_round_trip_and_every_key_has_one() {
        let c = Config::parse(Path::new("c.json"), b"{}").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.remote.name, "origin");
        assert_eq!(c.snapshots.keep, 10);
        assert_eq!(c.lock.max_hold_secs, 600);
        assert_eq!(c.pause.max_secs, 300);
        assert_eq!(c.monitoring.max_file_changes_before_sync, 50);
        let text = serde_json::to_vec(&c).unwrap();
        assert_eq!(Config::parse(Path::new("c.json"), &text).unwrap(), c);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(Path::new("c.json"), br#"{"monitoring": {"bogus": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("monitoring.bogus"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_expected_type() {
        let err = Config::parse(
            Path::new("c.json"),
            b"{\n \"monitoring\": {\"min_time_between_syncs\": \"soon\"}}",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("monitoring.min_time_between_syncs"), "{err}");
        assert!(err.contains("u64"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn malformed_names_line_and_column() {
        let err = Config::parse(Path::new("c.json"), b"{\n  \"enabled\": 1x\n}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2 column"), "{err}");
        let err = Config::parse(Path::new("c.json"), b"{} x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn strategy_spelling() {
        let c = Config::parse(
            Path::new("c.json"),
            br#"{"conflict_resolution": {"strategy": "auto-theirs"}}"#,
        )
        .unwrap();
        assert_eq!(c.conflict_resolution.strategy, Strategy::AutoTheirs);
        let err = Config::parse(
            Path::new("c.json"),
            br#"{"conflict_resolution": {"strategy": "theirs"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("conflict_resolution.strategy"), "{err}");
        assert!(err.contains("auto-theirs"), "{err}");
    }

    #[test]
    fn get_and_set_dotted_keys() {
        let c = Config::default();
        assert_eq!(
            c.get("remote.name").unwrap(),
            Value::String("origin".into())
        );
        assert!(c.get("remote.nope").is_err());
        let c2 = c
            .with_set("monitoring.min_time_between_syncs", "5")
            .unwrap();
        assert_eq!(c2.monitoring.min_time_between_syncs, 5);
        // Not JSON: taken as a string.
        let c3 = c.with_set("remote.branch", "dev").unwrap();
        assert_eq!(c3.remote.branch.as_deref(), Some("dev"));
        let c4 = c
            .with_set("filters.exclude_patterns", r#"["*.bak"]"#)
            .unwrap();
        assert_eq!(c4.filters.exclude_patterns, vec!["*.bak".to_owned()]);
        let err = c.with_set("enabled", "maybe").unwrap_err().to_string();
        assert!(err.contains("enabled") && err.contains("bool"), "{err}");
        assert!(c.with_set("nope", "1").is_err());
    }

    #[test]
    fn template_renders_all_placeholders() {
        let c = CommitConfig {
            message_template: "{host}|{reason}|{count}|{files}".into(),
        };
        assert_eq!(
            c.render("h", "manual", &["a".into(), "b".into()]),
            "h|manual|2|a\nb\n"
        );
    }
}
