//! The git branch and HEAD of the repository around a folder, read with the
//! `git` program (worktrees, packed refs and `.git` files all handled by git).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a repository stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    /// The repository's top-level folder. In a saved [`crate::Handoff`] it is
    /// relative to the synced root (`""` when the root is the repository).
    pub repo: PathBuf,
    /// The checked-out branch; `None` when HEAD is detached.
    pub branch: Option<String>,
    /// The commit HEAD points at; `None` in a repository without commits.
    pub head: Option<String>,
}

/// The git state of the repository containing `dir`, or `None` when `dir`
/// is not inside a git work tree.
pub fn git_state(dir: &Path) -> Result<Option<GitState>> {
    let Some(top) = run_git(dir, &["rev-parse", "--show-toplevel"])? else {
        return Ok(None);
    };
    let branch = run_git(dir, &["symbolic-ref", "-q", "--short", "HEAD"])?;
    let head = run_git(dir, &["rev-parse", "-q", "--verify", "HEAD^{commit}"])?;
    Ok(Some(GitState {
        repo: PathBuf::from(top),
        branch,
        head,
    }))
}

/// Adds `/NAME` to `.git/info/exclude` of the repository whose top-level is
/// `root` (found with `git rev-parse --git-path`, so worktrees work), unless
/// a line already says it. Returns whether the file changed; `Ok(false)`
/// when `root` is not the top-level of a git work tree.
pub fn exclude_from_git(root: &Path, name: &str) -> Result<bool> {
    let Some(top) = run_git(root, &["rev-parse", "--show-toplevel"])? else {
        return Ok(false);
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), root) {
        return Ok(false);
    }
    let Some(rel) = run_git(root, &["rev-parse", "--git-path", "info/exclude"])? else {
        return Ok(false);
    };
    let path = root.join(rel);
    let pattern = format!("/{name}");
    let mut text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(&path, e)),
    };
    if text.lines().any(|l| l.trim() == pattern) {
        return Ok(false);
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&pattern);
    text.push('\n');
    crate::fsutil::write_atomic(&path, text.as_bytes())?;
    Ok(true)
}

/// Runs git in `dir`: `Some(trimmed stdout)` on success, `None` when git
/// exits non-zero (not a repository, detached, unborn), an error when git
/// cannot run at all.
fn run_git(dir: &Path, args: &[&str]) -> Result<Option<String>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Git {
            path: dir.to_path_buf(),
            message: format!("cannot run git: {e}"),
        })?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok((!text.is_empty()).then_some(text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use wsync_testutils::TestRepo;

    #[test]
    fn branch_head_detached_unborn_and_outside() {
        let repo = TestRepo::new();
        let unborn = git_state(repo.path()).unwrap().unwrap();
        assert_eq!(unborn.branch.as_deref(), Some("main"));
        assert_eq!(unborn.head, None);

        repo.write("a/b.txt", "x");
        let oid = repo.commit_all("one");
        let state = git_state(&repo.path().join("a")).unwrap().unwrap();
        assert_eq!(state.head.as_deref(), Some(oid.as_str()));
        assert_eq!(
            state.repo.canonicalize().unwrap(),
            repo.path().canonicalize().unwrap()
        );

        repo.git(&["checkout", "-q", "--detach"]);
        let detached = git_state(repo.path()).unwrap().unwrap();
        assert_eq!(detached.branch, None);
        assert_eq!(detached.head.as_deref(), Some(oid.as_str()));

        let plain = tempfile::tempdir().unwrap();
        assert_eq!(git_state(plain.path()).unwrap(), None);
    }

    #[test]
    fn exclude_once_and_only_at_the_top_level() {
        let repo = TestRepo::with_commit();
        assert!(exclude_from_git(repo.path(), "rec.json").unwrap());
        assert!(!exclude_from_git(repo.path(), "rec.json").unwrap());
        let exclude = repo.read(".git/info/exclude");
        assert_eq!(exclude.lines().filter(|l| *l == "/rec.json").count(), 1);
        repo.write("rec.json", "{}");
        assert!(repo.status().is_empty());
        std::fs::create_dir_all(repo.path().join("sub")).unwrap();
        assert!(!exclude_from_git(&repo.path().join("sub"), "x").unwrap());
        let plain = tempfile::tempdir().unwrap();
        assert!(!exclude_from_git(plain.path(), "x").unwrap());
    }
}
