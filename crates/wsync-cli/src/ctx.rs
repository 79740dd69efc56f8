//! The resolved global options every command receives.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::GlobalArgs;

/// Where a command operates and how it should talk.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The workspace root (a git top-level, or a plain folder).
    pub workspace: PathBuf,
    /// The state folder (`<workspace>/.wsync` unless overridden).
    pub state_dir: PathBuf,
    /// `-v` count.
    pub verbose: u8,
    /// `-q`: print only data and errors.
    pub quiet: bool,
    /// `--json`: data as JSON on stdout.
    pub json: bool,
}

impl Ctx {
    /// Resolves `--workspace` and `--state-dir` against the current folder.
    pub fn from_args(args: &GlobalArgs) -> Result<Self> {
        let cwd = std::env::current_dir().context("cannot read the current folder")?;
        let workspace = match &args.workspace {
            Some(dir) => {
                let dir = cwd.join(dir);
                std::fs::canonicalize(&dir)
                    .with_context(|| format!("workspace {} does not exist", dir.display()))?
            }
            None => git_toplevel(&cwd).unwrap_or(cwd.clone()),
        };
        let state_dir = match &args.state_dir {
            Some(dir) => cwd.join(dir),
            None => workspace.join(".wsync"),
        };
        Ok(Self {
            workspace,
            state_dir,
            verbose: args.verbose,
            quiet: args.quiet,
            json: args.json,
        })
    }

    /// Prints a human message on stdout unless `-q` or `--json`.
    pub fn say(&self, message: impl AsRef<str>) {
        if !self.quiet && !self.json {
            let mut out = std::io::stdout().lock();
            // A closed pipe is not worth an error for a status line.
            let _ = writeln!(out, "{}", message.as_ref());
        }
    }

    /// Prints a warning on stderr unless `-q`.
    pub fn warn(&self, message: impl AsRef<str>) {
        if !self.quiet {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "wsync: warning: {}", message.as_ref());
        }
    }

    /// Prints data: pretty JSON with `--json`, else the `human` rendering.
    pub fn emit<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> Result<()> {
        let mut out = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut out, value).context("cannot encode JSON output")?;
            writeln!(out).context("cannot write to stdout")?;
        } else {
            let text = human();
            if !text.is_empty() {
                write!(out, "{text}").context("cannot write to stdout")?;
                if !text.ends_with('\n') {
                    writeln!(out).context("cannot write to stdout")?;
                }
            }
        }
        Ok(())
    }

    /// The git folder of the workspace, if it is a git work tree.
    pub fn git_dir(&self) -> Option<PathBuf> {
        git_dir_of(&self.workspace)
    }
}

/// The nearest ancestor of `start` (inclusive) that holds a `.git` entry.
///
/// Walking the folders ourselves keeps every CLI start-up free of a `git`
/// subprocess (the guard round trip is benchmarked against `flock`).
pub fn git_toplevel(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| dir.join(".git").exists())
        .map(Path::to_path_buf)
}

/// The git folder of a work tree root: `.git` itself, or the folder a
/// `.git` file (`gitdir: PATH`, used by worktrees and submodules) points to.
pub fn git_dir_of(root: &Path) -> Option<PathBuf> {
    let dot_git = root.join(".git");
    if dot_git.is_dir() {
        return Some(dot_git);
    }
    let text = std::fs::read_to_string(&dot_git).ok()?;
    let target = text.lines().find_map(|l| l.strip_prefix("gitdir:"))?.trim();
    Some(root.join(target))
}

/// Options for the daemon's live snapshot scan, with what only the
/// environment tells: the attribute files libgit2 reads outside any
/// repository (see `LiveOptions::attribute_files_from`).
pub fn live_options() -> wsync_snapshot::LiveOptions {
    wsync_snapshot::LiveOptions {
        attribute_files: wsync_snapshot::LiveOptions::attribute_files_from(
            std::env::var_os("XDG_CONFIG_HOME").as_deref(),
            std::env::var_os("HOME").as_deref(),
        ),
        ..wsync_snapshot::LiveOptions::default()
    }
}
