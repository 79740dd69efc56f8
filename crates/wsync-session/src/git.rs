//! The git branch and HEAD of the repository around a folder.
//!
//! Read straight from the files (`.git` folder or `gitdir:` file, `commondir`
//! for worktrees, loose refs, `packed-refs`): a `git` process costs a few
//! milliseconds each and `handoff save` would need several. Anything the
//! files do not answer plainly (reftable storage, an odd HEAD) falls back to
//! the `git` program.

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

/// The folders of one work tree.
#[derive(Debug)]
struct Layout {
    /// The work tree's top-level folder.
    top: PathBuf,
    /// Its git folder (`.git`, or `.git/worktrees/NAME` for a worktree).
    git_dir: PathBuf,
    /// The folder shared by all worktrees (refs, `info/exclude`).
    common_dir: PathBuf,
}

/// The work tree around `dir` (the nearest ancestor with a `.git`).
fn layout(dir: &Path) -> Result<Option<Layout>> {
    let dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    for top in dir.ancestors() {
        let dot_git = top.join(".git");
        let git_dir = if dot_git.is_dir() {
            dot_git
        } else if dot_git.is_file() {
            let text = std::fs::read_to_string(&dot_git).map_err(|e| Error::io(&dot_git, e))?;
            let Some(target) = text.lines().find_map(|l| l.strip_prefix("gitdir:")) else {
                continue;
            };
            top.join(target.trim())
        } else {
            continue;
        };
        let common_dir = match std::fs::read_to_string(git_dir.join("commondir")) {
            Ok(rel) => git_dir.join(rel.trim()),
            Err(_) => git_dir.clone(),
        };
        return Ok(Some(Layout {
            top: top.to_path_buf(),
            git_dir,
            common_dir,
        }));
    }
    Ok(None)
}

fn is_oid(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolves a ref from loose files (worktree-private first) or
/// `packed-refs`. `Ok(None)` when it does not exist (an unborn branch).
fn resolve_ref(layout: &Layout, name: &str, depth: u8) -> Result<Option<String>> {
    for dir in [&layout.git_dir, &layout.common_dir] {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let text = text.trim();
                if let Some(target) = text.strip_prefix("ref:") {
                    if depth >= 5 {
                        return Ok(None);
                    }
                    return resolve_ref(layout, target.trim(), depth + 1);
                }
                if is_oid(text) {
                    return Ok(Some(text.to_owned()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // A folder of that name (refs/heads/a when asking for refs/heads).
            Err(_) if path.is_dir() => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    let packed = layout.common_dir.join("packed-refs");
    let text = match std::fs::read_to_string(&packed) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&packed, e)),
    };
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('^'))
        .find_map(|l| {
            let (oid, refname) = l.split_once(' ')?;
            (refname.trim() == name && is_oid(oid)).then(|| oid.to_owned())
        }))
}

/// Branch and HEAD from the files; `Ok(None)` when git must be asked.
fn read_head(layout: &Layout) -> Result<Option<(Option<String>, Option<String>)>> {
    if layout.common_dir.join("reftable").exists() {
        return Ok(None);
    }
    let path = layout.git_dir.join("HEAD");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let text = text.trim();
    if let Some(target) = text.strip_prefix("ref:") {
        let target = target.trim();
        let Some(branch) = target.strip_prefix("refs/heads/") else {
            return Ok(None);
        };
        let head = resolve_ref(layout, target, 0)?;
        return Ok(Some((Some(branch.to_owned()), head)));
    }
    if is_oid(text) {
        return Ok(Some((None, Some(text.to_owned()))));
    }
    Ok(None)
}

/// The git state of the repository containing `dir`, or `None` when `dir`
/// is not inside a git work tree.
pub fn git_state(dir: &Path) -> Result<Option<GitState>> {
    let Some(layout) = layout(dir)? else {
        return Ok(None);
    };
    let (branch, head) = match read_head(&layout)? {
        Some(found) => found,
        None => (
            run_git(dir, &["symbolic-ref", "-q", "--short", "HEAD"])?,
            run_git(dir, &["rev-parse", "-q", "--verify", "HEAD^{commit}"])?,
        ),
    };
    Ok(Some(GitState {
        repo: layout.top,
        branch,
        head,
    }))
}

/// Adds `/NAME` to `info/exclude` of the repository whose top-level is
/// `root` (in the common git folder, so worktrees share it), unless a line
/// already says it. Returns whether the file changed; `Ok(false)` when
/// `root` is not the top-level of a git work tree.
pub fn exclude_from_git(root: &Path, name: &str) -> Result<bool> {
    let Some(layout) = layout(root)? else {
        return Ok(false);
    };
    let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
    if layout.top != root {
        return Ok(false);
    }
    let path = layout.common_dir.join("info").join("exclude");
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
    fn packed_refs_and_worktrees_match_git() {
        let repo = TestRepo::with_commit();
        repo.git(&["switch", "-q", "-c", "feature/x"]);
        repo.write("f.txt", "f");
        let oid = repo.commit_all("feature");
        repo.git(&["pack-refs", "--all"]);
        assert!(!repo.path().join(".git/refs/heads/feature/x").exists());
        let state = git_state(repo.path()).unwrap().unwrap();
        assert_eq!(state.branch.as_deref(), Some("feature/x"));
        assert_eq!(state.head.as_deref(), Some(oid.as_str()));

        let wt = repo.path().parent().unwrap().join("wt");
        repo.git(&[
            "worktree",
            "add",
            "-q",
            "-b",
            "side",
            wt.to_str().unwrap(),
            "main",
        ]);
        let main_oid = repo.git(&["rev-parse", "main"]).trim().to_owned();
        let state = git_state(&wt).unwrap().unwrap();
        assert_eq!(state.branch.as_deref(), Some("side"));
        assert_eq!(state.head.as_deref(), Some(main_oid.as_str()));
        assert_eq!(state.repo, wt.canonicalize().unwrap());
        // A worktree's exclude is the shared one.
        assert!(exclude_from_git(&wt, "rec.json").unwrap());
        assert!(repo.read(".git/info/exclude").contains("/rec.json"));
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
