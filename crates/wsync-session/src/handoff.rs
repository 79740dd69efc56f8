//! The handoff record: save, load, and resume on the arriving machine.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::connect::shell_quote;
use crate::env::{DEFAULT_SECRET_PATTERNS, EnvFilter};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::git::{GitState, exclude_from_git, git_state};
use crate::procs::{DevServer, ProcScan, scan_processes};

/// The handoff record's file name, at the top of the synced root.
pub const HANDOFF_FILE: &str = ".wsync-handoff.json";

/// The record format version written by this crate.
const VERSION: u32 = 1;

/// What the session layer is configured with.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Environment variable names that may be recorded (config key
    /// `handoff.env_allow`; default empty: none).
    pub env_allow: Vec<String>,
    /// Case-insensitive globs of names that are refused even when
    /// allow-listed (default [`DEFAULT_SECRET_PATTERNS`]).
    pub secret_patterns: Vec<String>,
    /// How dev servers are found.
    pub proc_scan: ProcScan,
    /// Keep the record out of git (`.git/info/exclude`) when the root is a
    /// repository's top-level (default true): it holds host names and
    /// environment values, changes on every save, and travels with
    /// `wsync remote` instead.
    pub exclude_from_git: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            env_allow: Vec::new(),
            secret_patterns: DEFAULT_SECRET_PATTERNS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            proc_scan: ProcScan::default(),
            exclude_from_git: true,
        }
    }
}

/// The tmux session and window the user is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmuxInfo {
    /// Session name (`#S`).
    pub session: String,
    /// Window index (`#I`), if known.
    pub window: Option<String>,
}

impl TmuxInfo {
    /// Parses the output of `tmux display-message -p '#S:#I'`. The session
    /// name may itself contain `:`; the window is after the last one.
    pub fn parse(output: &str) -> Option<Self> {
        let line = output.lines().next()?.trim();
        if line.is_empty() {
            return None;
        }
        match line.rsplit_once(':') {
            Some((session, window))
                if !session.is_empty() && window.chars().all(|c| c.is_ascii_digit()) =>
            {
                Some(Self {
                    session: session.to_owned(),
                    window: (!window.is_empty()).then(|| window.to_owned()),
                })
            }
            _ => Some(Self {
                session: line.to_owned(),
                window: None,
            }),
        }
    }
}

/// Everything the next machine needs to continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    /// Record format version.
    pub version: u32,
    /// The synced root on the saving host (absolute).
    pub root: PathBuf,
    /// The working folder, relative to the synced root (`""` for the root).
    pub folder: PathBuf,
    /// The git repository around the working folder, its `repo` relative to
    /// the root when inside it.
    #[serde(default)]
    pub git: Option<GitState>,
    /// The tmux session, when the user was inside tmux.
    #[serde(default)]
    pub tmux: Option<TmuxInfo>,
    /// Processes running under the root (dev servers).
    #[serde(default)]
    pub servers: Vec<DevServer>,
    /// Allow-listed environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The saving host's name.
    pub host: String,
    /// When it was saved.
    pub saved_at: DateTime<Utc>,
    /// The user's note.
    #[serde(default)]
    pub note: Option<String>,
}

/// Something the caller should tell the user; never fatal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Warning {
    /// An allow-listed variable was not recorded because its name looks
    /// like a secret.
    SecretRefused {
        /// The variable name.
        name: String,
        /// The secret pattern it matched.
        pattern: String,
    },
    /// An allow-listed variable is not set.
    EnvNotSet {
        /// The variable name.
        name: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SecretRefused { name, pattern } => write!(
                f,
                "refused to record {name}: the name matches the secret pattern {pattern}"
            ),
            Self::EnvNotSet { name } => write!(f, "{name} is allow-listed but not set"),
        }
    }
}

/// What [`HandoffStore::save`] is told about the caller's session.
#[derive(Debug, Clone)]
pub struct SaveInput {
    /// The current folder (must be inside the root).
    pub cwd: PathBuf,
    /// The process environment (filtered by the allow-list before saving).
    pub env: BTreeMap<String, String>,
    /// The tmux session, if inside tmux.
    pub tmux: Option<TmuxInfo>,
    /// This host's name.
    pub host: String,
    /// A note for the next machine.
    pub note: Option<String>,
    /// The time to record (default: now).
    pub now: Option<DateTime<Utc>>,
}

impl SaveInput {
    /// An input for `cwd` on this host with no environment, tmux or note.
    pub fn new(cwd: impl Into<PathBuf>) -> Self {
        Self {
            cwd: cwd.into(),
            env: BTreeMap::new(),
            tmux: None,
            host: default_host(),
            note: None,
            now: None,
        }
    }
}

/// The result of a save.
#[derive(Debug, Clone, Serialize)]
pub struct SaveReport {
    /// What was written.
    pub handoff: Handoff,
    /// Where.
    pub path: PathBuf,
    /// Refused or missing environment variables.
    pub warnings: Vec<Warning>,
}

/// This host's name (lossy UTF-8).
pub fn default_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// The handoff record of one synced root.
#[derive(Debug, Clone)]
pub struct HandoffStore {
    root: PathBuf,
    path: PathBuf,
}

impl HandoffStore {
    /// The store for the synced tree at `root` (file [`HANDOFF_FILE`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let path = root.join(HANDOFF_FILE);
        Self { root, path }
    }

    /// The synced root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The record file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the session and writes it atomically (temp file, fsync,
    /// rename, folder fsync).
    pub fn save(&self, input: &SaveInput, options: &SessionOptions) -> Result<SaveReport> {
        let root = self
            .root
            .canonicalize()
            .map_err(|e| Error::io(&self.root, e))?;
        let cwd = input
            .cwd
            .canonicalize()
            .map_err(|e| Error::io(&input.cwd, e))?;
        let folder = cwd
            .strip_prefix(&root)
            .map_err(|_| Error::OutsideRoot {
                path: cwd.clone(),
                root: root.clone(),
            })?
            .to_path_buf();
        let git = git_state(&cwd)?.map(|mut g| {
            if let Ok(rel) = g.repo.strip_prefix(&root) {
                g.repo = rel.to_path_buf();
            }
            g
        });
        let servers = scan_processes(&root, &options.proc_scan)?;
        let filter = EnvFilter::new(&options.env_allow, &options.secret_patterns)?;
        let (env, warnings) = filter.apply(&input.env);
        let handoff = Handoff {
            version: VERSION,
            root,
            folder,
            git,
            tmux: input.tmux.clone(),
            servers,
            env,
            host: input.host.clone(),
            saved_at: input.now.unwrap_or_else(Utc::now),
            note: input.note.clone(),
        };
        if options.exclude_from_git {
            exclude_from_git(&handoff.root, HANDOFF_FILE)?;
        }
        fsutil::write_json(&self.path, &handoff)?;
        Ok(SaveReport {
            handoff,
            path: self.path.clone(),
            warnings,
        })
    }

    /// Reads the record; [`Error::NoHandoff`] when there is none.
    pub fn load(&self) -> Result<Handoff> {
        fsutil::read_json(&self.path)?.ok_or_else(|| Error::NoHandoff {
            path: self.path.clone(),
        })
    }
}

/// How the local repository compares with the saved one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BranchCheck {
    /// Nothing to compare: the saved folder was not in a repository.
    NotRecorded,
    /// Same branch and HEAD.
    Same,
    /// The saved folder is not a repository here (not synced yet?).
    NoLocalRepo,
    /// The checked-out branch differs.
    BranchDiffers {
        /// Branch at save time (`None`: detached).
        saved: Option<String>,
        /// Branch here.
        local: Option<String>,
    },
    /// Same branch, different commit (not pulled yet, or diverged).
    HeadDiffers {
        /// The branch.
        branch: Option<String>,
        /// HEAD at save time.
        saved: Option<String>,
        /// HEAD here.
        local: Option<String>,
    },
}

/// What the arriving machine should do.
#[derive(Debug, Clone, Serialize)]
pub struct Resume {
    /// The saved record.
    pub handoff: Handoff,
    /// The working folder on this machine.
    pub folder: PathBuf,
    /// Whether that folder exists here.
    pub folder_exists: bool,
    /// Branch/HEAD comparison.
    pub branch: BranchCheck,
    /// The saved servers, to restart here.
    pub servers: Vec<ServerRestart>,
}

/// A saved server, placed in this machine's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerRestart {
    /// Its folder here.
    pub folder: PathBuf,
    /// Its command line (run with `sh -c` in `folder`).
    pub command: String,
    /// The ports it listened on.
    pub ports: Vec<u16>,
    /// `cd FOLDER && COMMAND`, ready to paste.
    pub line: String,
}

/// Compares a saved record with this machine's copy of the root.
pub fn resume(handoff: &Handoff, local_root: &Path) -> Result<Resume> {
    let folder = local_root.join(&handoff.folder);
    let folder_exists = folder.is_dir();
    let branch = match &handoff.git {
        None => BranchCheck::NotRecorded,
        Some(saved) => {
            let probe = if folder_exists {
                folder.clone()
            } else {
                local_root.to_path_buf()
            };
            match git_state(&probe)? {
                None => BranchCheck::NoLocalRepo,
                Some(local) if local.branch != saved.branch => BranchCheck::BranchDiffers {
                    saved: saved.branch.clone(),
                    local: local.branch,
                },
                Some(local) if local.head != saved.head => BranchCheck::HeadDiffers {
                    branch: local.branch,
                    saved: saved.head.clone(),
                    local: local.head,
                },
                Some(_) => BranchCheck::Same,
            }
        }
    };
    let servers = handoff
        .servers
        .iter()
        .map(|s| {
            let folder = local_root.join(&s.folder);
            ServerRestart {
                line: format!(
                    "cd {} && {}",
                    shell_quote(&folder.to_string_lossy()),
                    s.command
                ),
                folder,
                command: s.command.clone(),
                ports: s.ports.clone(),
            }
        })
        .collect();
    Ok(Resume {
        handoff: handoff.clone(),
        folder,
        folder_exists,
        branch,
        servers,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tmux_parse() {
        assert_eq!(
            TmuxInfo::parse("work:3\n"),
            Some(TmuxInfo {
                session: "work".into(),
                window: Some("3".into())
            })
        );
        assert_eq!(
            TmuxInfo::parse("a:b:12").map(|t| t.session),
            Some("a:b".into())
        );
        assert_eq!(TmuxInfo::parse("solo").map(|t| t.window), Some(None));
        assert_eq!(TmuxInfo::parse("\n"), None);
    }

    #[test]
    fn save_outside_root_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let err = HandoffStore::new(root.path())
            .save(&SaveInput::new(other.path()), &SessionOptions::default())
            .unwrap_err();
        assert!(matches!(err, Error::OutsideRoot { .. }), "{err}");
        assert!(!root.path().join(HANDOFF_FILE).exists());
    }

    #[test]
    fn load_without_record_says_so() {
        let root = tempfile::tempdir().unwrap();
        let err = HandoffStore::new(root.path()).load().unwrap_err();
        assert!(matches!(err, Error::NoHandoff { .. }));
        assert!(err.to_string().contains(HANDOFF_FILE));
    }
}
