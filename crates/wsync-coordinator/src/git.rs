//! The git layer: libgit2 for local trees, the index, merges and checkout;
//! the `git` program for fetch and push (so the user's ssh config, agents
//! and credential helpers apply). No libgit2 networking.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use git2::{Oid, Repository, RepositoryState, Status, StatusOptions};

use crate::Error;

/// Where the sync goes: the local branch and its remote counterpart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The local branch name (`main`).
    pub branch: String,
    /// The remote's name (`origin`).
    pub remote: String,
    /// The branch on the remote.
    pub remote_branch: String,
}

impl Target {
    pub fn local_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }
    pub fn tracking_ref(&self) -> String {
        format!("refs/remotes/{}/{}", self.remote, self.remote_branch)
    }
}

/// Opens the workspace's repository (the workspace must be its work tree).
pub(crate) fn open(workspace: &Path) -> Result<Repository, Error> {
    Repository::open(workspace).map_err(Error::git(workspace, "open repository"))
}

/// Checks that a sync may start and names the branch and remote.
pub(crate) fn preflight(
    repo: &Repository,
    workspace: &Path,
    remote: &str,
    remote_branch: Option<&str>,
) -> Result<Target, Error> {
    let refuse = |why: String| Error::Refused {
        path: workspace.to_path_buf(),
        why,
    };
    if repo.is_bare() {
        return Err(refuse("the repository is bare".into()));
    }
    let busy = match repo.state() {
        RepositoryState::Clean => None,
        RepositoryState::Merge => Some("a merge is in progress (finish it or `git merge --abort`)"),
        RepositoryState::Revert | RepositoryState::RevertSequence => {
            Some("a revert is in progress")
        }
        RepositoryState::CherryPick | RepositoryState::CherryPickSequence => {
            Some("a cherry-pick is in progress")
        }
        RepositoryState::Bisect => Some("a bisect is in progress"),
        RepositoryState::Rebase
        | RepositoryState::RebaseInteractive
        | RepositoryState::RebaseMerge => Some("a rebase is in progress"),
        RepositoryState::ApplyMailbox | RepositoryState::ApplyMailboxOrRebase => {
            Some("a `git am` is in progress")
        }
    };
    if let Some(why) = busy {
        return Err(refuse(why.into()));
    }
    if repo.head_detached().unwrap_or(false) {
        return Err(refuse("HEAD is detached (check out a branch first)".into()));
    }
    let head = repo
        .find_reference("HEAD")
        .map_err(Error::git(workspace, "read HEAD"))?;
    let branch = head
        .symbolic_target()
        .and_then(|t| t.strip_prefix("refs/heads/"))
        .ok_or_else(|| refuse("HEAD does not point at a branch".into()))?
        .to_owned();
    if repo.find_remote(remote).is_err() {
        return Err(refuse(format!(
            "no remote `{remote}` is configured (`wsync init --remote URL`)"
        )));
    }
    Ok(Target {
        remote_branch: remote_branch.map_or_else(|| branch.clone(), str::to_owned),
        branch,
        remote: remote.to_owned(),
    })
}

/// One changed path in the working tree or the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Workspace-relative path with `/` separators.
    pub path: String,
    /// Deleted from the working tree.
    pub deleted: bool,
    /// Not tracked yet.
    pub created: bool,
    /// The index differs from HEAD for this path.
    pub staged: bool,
}

/// Changed paths, and the changed paths that cannot be synced because
/// their names are not UTF-8 (shown lossily; the filter matches text).
pub(crate) type PendingSet = (Vec<Pending>, Vec<String>);

/// Every changed, non-ignored path (untracked files included).
pub(crate) fn pending(repo: &Repository, workspace: &Path) -> Result<PendingSet, Error> {
    let mut opts = StatusOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .include_unmodified(false)
        .exclude_submodules(true)
        .renames_head_to_index(false)
        .renames_index_to_workdir(false);
    let statuses = repo
        .statuses(Some(&mut opts))
        .map_err(Error::git(workspace, "status"))?;
    let mut out = Vec::with_capacity(statuses.len());
    let mut not_utf8 = Vec::new();
    for entry in statuses.iter() {
        let s = entry.status();
        if s.contains(Status::IGNORED) || s.is_empty() {
            continue;
        }
        let Some(path) = std::str::from_utf8(entry.path_bytes())
            .ok()
            .map(str::to_owned)
        else {
            // Non-UTF-8 names cannot be matched by the filter; leave them
            // alone, and say so.
            not_utf8.push(String::from_utf8_lossy(entry.path_bytes()).into_owned());
            continue;
        };
        let deleted = s.contains(Status::WT_DELETED)
            || (s.contains(Status::INDEX_DELETED) && !s.contains(Status::WT_NEW));
        let created = s.contains(Status::WT_NEW) || s.contains(Status::INDEX_NEW);
        let staged = s.intersects(
            Status::INDEX_NEW
                | Status::INDEX_MODIFIED
                | Status::INDEX_DELETED
                | Status::INDEX_TYPECHANGE
                | Status::INDEX_RENAMED,
        );
        out.push(Pending {
            path,
            deleted,
            created,
            staged,
        });
    }
    Ok((out, not_utf8))
}

/// The changes a snapshot recorded, without scanning the working tree
/// again: HEAD's tree against the snapshot's working tree (tracked changes
/// and untracked files) and against its index tree (what is staged).
pub(crate) fn pending_from_snapshot(
    repo: &Repository,
    workspace: &Path,
    snapshot_commit: &str,
    index_commit: &str,
) -> Result<PendingSet, Error> {
    let gerr = |op: &str| Error::git(workspace, op.to_owned());
    let tree_of = |id: &str| -> Result<git2::Tree<'_>, Error> {
        let oid = Oid::from_str(id).map_err(gerr("parse a snapshot id"))?;
        repo.find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(gerr("read a snapshot tree"))
    };
    let work = tree_of(snapshot_commit)?;
    let index = tree_of(index_commit)?;
    let head = repo.head().ok().and_then(|h| h.peel_to_tree().ok());
    let mut opts = git2::DiffOptions::new();
    opts.ignore_submodules(true);
    let mut map: std::collections::BTreeMap<String, Pending> = std::collections::BTreeMap::new();
    let mut not_utf8 = std::collections::BTreeSet::new();
    let to_work = repo
        .diff_tree_to_tree(head.as_ref(), Some(&work), Some(&mut opts))
        .map_err(gerr("diff HEAD to the snapshot"))?;
    let to_index = repo
        .diff_tree_to_tree(head.as_ref(), Some(&index), Some(&mut opts))
        .map_err(gerr("diff HEAD to the index"))?;
    for (diff, staged) in [(&to_work, false), (&to_index, true)] {
        for d in diff.deltas() {
            let Some(raw) = d.new_file().path().or_else(|| d.old_file().path()) else {
                continue;
            };
            let Some(path) = raw.to_str().map(str::to_owned) else {
                not_utf8.insert(raw.to_string_lossy().into_owned());
                continue;
            };
            let entry = map.entry(path.clone()).or_insert_with(|| Pending {
                deleted: work.get_path(Path::new(&path)).is_err(),
                created: head
                    .as_ref()
                    .is_none_or(|h| h.get_path(Path::new(&path)).is_err()),
                staged: false,
                path,
            });
            entry.staged |= staged;
        }
    }
    Ok((map.into_values().collect(), not_utf8.into_iter().collect()))
}

/// Paths that differ between two trees (either side), for a checkout
/// limited to what changed.
pub(crate) fn changed_paths(
    repo: &Repository,
    workspace: &Path,
    from: &git2::Tree<'_>,
    to: &git2::Tree<'_>,
) -> Result<Vec<String>, Error> {
    let diff = repo
        .diff_tree_to_tree(Some(from), Some(to), None)
        .map_err(Error::git(workspace, "diff trees"))?;
    let mut out = Vec::new();
    for d in diff.deltas() {
        for f in [d.old_file(), d.new_file()] {
            if let Some(p) = f.path().and_then(|p| p.to_str())
                && out.last().is_none_or(|l: &String| l != p)
            {
                out.push(p.to_owned());
            }
        }
    }
    Ok(out)
}

/// The tree of an in-memory (merge) index, built by applying only the
/// entries that differ from `base` (the merge's local tree): writes the
/// few changed subtrees instead of every tree of a large index.
pub(crate) fn tree_from_index(
    repo: &Repository,
    base: &git2::Tree<'_>,
    index: &git2::Index,
) -> Result<Oid, git2::Error> {
    let mut opts = git2::DiffOptions::new();
    opts.ignore_submodules(false).include_typechange(true);
    let diff = repo.diff_tree_to_index(Some(base), Some(index), Some(&mut opts))?;
    let mut update = git2::build::TreeUpdateBuilder::new();
    for d in diff.deltas() {
        match d.status() {
            git2::Delta::Deleted => {
                let path = d
                    .old_file()
                    .path()
                    .ok_or_else(|| git2::Error::from_str("no path"))?;
                update.remove(path);
            }
            git2::Delta::Added | git2::Delta::Modified | git2::Delta::Typechange => {
                let f = d.new_file();
                let path = f.path().ok_or_else(|| git2::Error::from_str("no path"))?;
                let mode = match f.mode() {
                    git2::FileMode::Blob => git2::FileMode::Blob,
                    git2::FileMode::BlobExecutable => git2::FileMode::BlobExecutable,
                    git2::FileMode::Link => git2::FileMode::Link,
                    git2::FileMode::Commit => git2::FileMode::Commit,
                    _ => return Err(git2::Error::from_str("unexpected file mode")),
                };
                update.upsert(path, f.id(), mode);
            }
            git2::Delta::Unmodified => {}
            _ => return Err(git2::Error::from_str("unexpected delta")),
        }
    }
    update.create_updated(repo, base)
}

/// The commit a ref points at, if the ref exists.
pub(crate) fn ref_oid(repo: &Repository, name: &str) -> Option<Oid> {
    repo.refname_to_id(name).ok()
}

/// Runs the `git` program in the workspace with no terminal prompts.
/// The `git` program in `workspace`: never prompting, messages in English
/// (they are parsed), stdin closed.
fn git_command<S: AsRef<std::ffi::OsStr>>(workspace: &Path, args: &[S]) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(workspace)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    cmd
}

fn git_program(workspace: &Path, args: &[&str]) -> Result<std::process::Output, Error> {
    git_command(workspace, args)
        .output()
        .map_err(|source| Error::Io {
            path: PathBuf::from("git"),
            source,
        })
}

fn command_error(workspace: &Path, args: &[&str], out: &std::process::Output) -> Error {
    Error::GitCommand {
        path: workspace.to_path_buf(),
        command: format!("git {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}

/// The arguments of `git fetch` of the one remote branch into its
/// tracking ref.
fn fetch_args(target: &Target) -> Vec<String> {
    vec![
        "fetch".into(),
        "--quiet".into(),
        "--no-tags".into(),
        "--no-write-fetch-head".into(),
        "--no-recurse-submodules".into(),
        target.remote.clone(),
        format!(
            "+refs/heads/{}:{}",
            target.remote_branch,
            target.tracking_ref()
        ),
    ]
}

/// What a finished fetch means: the remote branch's commit, or `None`
/// when the remote has no such branch.
fn fetch_result(
    repo: &Repository,
    workspace: &Path,
    target: &Target,
    args: &[String],
    out: &std::process::Output,
) -> Result<Option<Oid>, Error> {
    if out.status.success() {
        return Ok(ref_oid(repo, &target.tracking_ref()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("couldn't find remote ref") {
        return Ok(None);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Err(command_error(workspace, &args, out))
}

/// `git fetch` of the one remote branch into its tracking ref. Returns the
/// remote branch's commit, or `None` when the remote has no such branch.
pub(crate) fn fetch(
    repo: &Repository,
    workspace: &Path,
    target: &Target,
) -> Result<Option<Oid>, Error> {
    let args = fetch_args(target);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = git_program(workspace, &argv)?;
    fetch_result(repo, workspace, target, &args, &out)
}

/// A `git fetch` running in the background while the run snapshots and
/// commits (it only moves the remote-tracking ref, which neither reads).
/// Dropping it unused waits for it: a killed fetch could leave a ref lock
/// behind.
#[derive(Debug)]
#[must_use = "a fetch started early is waited for with `finish`"]
pub(crate) struct FetchInFlight {
    child: Option<std::process::Child>,
    args: Vec<String>,
}

impl FetchInFlight {
    /// Starts `git fetch` (see [`fetch`]).
    pub(crate) fn start(workspace: &Path, target: &Target) -> Result<Self, Error> {
        let args = fetch_args(target);
        let child = git_command(workspace, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Io {
                path: PathBuf::from("git"),
                source,
            })?;
        Ok(Self {
            child: Some(child),
            args,
        })
    }

    /// Waits for the fetch; the same answer as [`fetch`].
    pub(crate) fn finish(
        mut self,
        repo: &Repository,
        workspace: &Path,
        target: &Target,
    ) -> Result<Option<Oid>, Error> {
        let Some(child) = self.child.take() else {
            return fetch(repo, workspace, target);
        };
        let out = child.wait_with_output().map_err(|source| Error::Io {
            path: PathBuf::from("git"),
            source,
        })?;
        fetch_result(repo, workspace, target, &self.args, &out)
    }
}

impl Drop for FetchInFlight {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = child.wait_with_output();
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PushOutcome {
    /// The remote branch now points at our commit.
    Pushed,
    /// The remote refused a non-fast-forward update (someone pushed first).
    Rejected(String),
}

/// `git push` (never forced) of the local branch to the remote branch.
pub(crate) fn push(workspace: &Path, target: &Target) -> Result<PushOutcome, Error> {
    let refspec = format!("{}:refs/heads/{}", target.local_ref(), target.remote_branch);
    let args = [
        "push",
        "--porcelain",
        target.remote.as_str(),
        refspec.as_str(),
    ];
    let out = git_program(workspace, &args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Porcelain: one line per ref, `FLAG \t from:to \t summary`; `!` = rejected.
    let rejected = stdout
        .lines()
        .find(|l| l.starts_with('!'))
        .map(|l| l.split('\t').nth(2).unwrap_or(l).trim().to_owned());
    if let Some(why) = rejected {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let non_ff = why.contains("fetch first")
            || why.contains("non-fast-forward")
            || why.contains("stale info")
            || stderr.contains("non-fast-forward");
        if non_ff {
            return Ok(PushOutcome::Rejected(why));
        }
        let mut err = command_error(workspace, &args, &out);
        if let Error::GitCommand { stderr, .. } = &mut err {
            *stderr = format!("{why}; {stderr}");
        }
        return Err(err);
    }
    if out.status.success() {
        return Ok(PushOutcome::Pushed);
    }
    Err(command_error(workspace, &args, &out))
}

/// `git fsck --no-dangling` (used by health checks and tests).
pub fn fsck(workspace: &Path) -> Result<(), Error> {
    let args = ["fsck", "--no-dangling", "--no-progress"];
    let out = git_program(workspace, &args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(command_error(workspace, &args, &out))
    }
}

/// Commits ahead of and behind the tracking ref, when both exist.
pub(crate) fn ahead_behind(repo: &Repository, target: &Target) -> Option<(usize, usize)> {
    let local = ref_oid(repo, &target.local_ref())?;
    let remote = ref_oid(repo, &target.tracking_ref())?;
    repo.graph_ahead_behind(local, remote).ok()
}
