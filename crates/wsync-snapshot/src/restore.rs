//! Returning the workspace to a snapshot.
//!
//! The safety snapshot taken first is an exact tree of the current
//! (non-ignored) working state, so restoring is a tree-to-tree diff from the
//! safety tree to the snapshot tree, applied to the files: only paths that
//! differ are touched, ignored files never are. Then the index is reset to
//! the snapshot's index commit (keeping stat data where the content is the
//! same) and HEAD/the branch to the snapshot's HEAD parent.

use std::fs::{File, Permissions};
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use git2::{Delta, DiffOptions, IndexTime, ObjectType, Oid, Repository, RepositoryState};
use serde::Serialize;

use crate::fsutil::{self, git_path};
use crate::{
    CaptureOptions, Error, RestoreOptions, Result, Snapshot, SnapshotStore, git_err, io_err,
};

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The snapshot that was restored.
    pub restored: String,
    /// The snapshot of the state just before the restore (restore it to
    /// undo the rollback).
    #[serde(serialize_with = "ser_snapshot_id")]
    pub safety: Snapshot,
    /// Files and symlinks written.
    pub written: usize,
    /// Files and symlinks removed.
    pub removed: usize,
    /// Ignored files that stood where the snapshot has a file, moved to
    /// `<state>/snapshots/<safety id>.displaced/` (never deleted).
    pub displaced: Vec<PathBuf>,
    /// The commit HEAD points to afterwards (`None`: unborn or unchanged
    /// because `files_only`).
    pub head: Option<String>,
    /// Whether only files were restored.
    pub files_only: bool,
}

fn ser_snapshot_id<S: serde::Serializer>(s: &Snapshot, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(&s.id)
}

fn state_name(state: RepositoryState) -> &'static str {
    match state {
        RepositoryState::Merge => "merge",
        RepositoryState::Revert | RepositoryState::RevertSequence => "revert",
        RepositoryState::CherryPick | RepositoryState::CherryPickSequence => "cherry-pick",
        RepositoryState::Bisect => "bisect",
        RepositoryState::Rebase
        | RepositoryState::RebaseInteractive
        | RepositoryState::RebaseMerge
        | RepositoryState::ApplyMailbox
        | RepositoryState::ApplyMailboxOrRebase => "rebase",
        RepositoryState::Clean => "nothing",
    }
}

pub(crate) fn restore(
    store: &SnapshotStore,
    id: &str,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let meta = store.meta(id)?;
    let repo = store.repo()?;
    let gitdir = repo.path().to_path_buf();
    // A capture killed while creating its ref (a rollback killed during
    // its safety snapshot, say) left that ref's lock behind.
    crate::manage::sweep_stale_ref_locks(&gitdir);
    let state = repo.state();
    if state != RepositoryState::Clean && !opts.force {
        return Err(Error::OperationInProgress {
            path: store.workspace.clone(),
            state: state_name(state).into(),
        });
    }
    let bad = |what: String| git_err(&gitdir, what);
    let target_id = Oid::from_str(&meta.snapshot_commit)
        .map_err(bad(format!("snapshot {id}: bad commit id in its .meta")))?;
    let target = repo
        .find_commit(target_id)
        .map_err(bad(format!("snapshot {id}: commit {target_id} is missing")))?;
    let parent = |n: usize| {
        target.parent(n).map_err(bad(format!(
            "snapshot {id}: parent {n} of {target_id} is missing"
        )))
    };
    let (head_parent, index_commit) = match target.parent_count() {
        2 => (Some(parent(0)?), parent(1)?),
        1 => (None, parent(0)?),
        n => {
            return Err(Error::Git {
                path: gitdir,
                what: format!("snapshot {id}: {target_id} has {n} parents"),
                source: git2::Error::from_str("not a wsync snapshot commit"),
            });
        }
    };
    let target_tree = target
        .tree()
        .map_err(bad(format!("snapshot {id}: tree missing")))?;
    let index_tree = index_commit
        .tree()
        .map_err(bad(format!("snapshot {id}: index tree missing")))?;

    let safety = crate::capture::capture(
        store,
        &repo,
        &CaptureOptions {
            reason: "pre-restore".into(),
            bundle: false,
            autonomous_status: "unknown".into(),
        },
    )?;
    let safety_tree = repo
        .find_commit(Oid::from_str(&safety.commit).map_err(bad("safety commit".into()))?)
        .and_then(|c| c.tree())
        .map_err(bad("cannot read the safety snapshot".into()))?;

    // Paths to remove and to write, from the exact current state to the target.
    let mut removals: Vec<Vec<u8>> = Vec::new();
    let mut writes: Vec<(Vec<u8>, Oid, u32, bool)> = Vec::new();
    {
        let mut o = DiffOptions::new();
        o.ignore_submodules(true);
        let diff = repo
            .diff_tree_to_tree(Some(&safety_tree), Some(&target_tree), Some(&mut o))
            .map_err(bad("cannot compare the snapshot with the work tree".into()))?;
        for d in diff.deltas() {
            let (old, new) = (d.old_file(), d.new_file());
            match d.status() {
                Delta::Deleted => removals.extend(old.path_bytes().map(<[u8]>::to_vec)),
                Delta::Added => writes.extend(
                    new.path_bytes()
                        .map(|p| (p.to_vec(), new.id(), u32::from(new.mode()), true)),
                ),
                Delta::Modified | Delta::Typechange => writes.extend(
                    new.path_bytes()
                        .map(|p| (p.to_vec(), new.id(), u32::from(new.mode()), false)),
                ),
                _ => {}
            }
        }
    }
    let root = store.workspace.clone();
    let displaced_dir = store.dir.join(format!("{}.displaced", safety.id));
    let mut report = RestoreReport {
        restored: id.to_owned(),
        safety,
        written: 0,
        removed: 0,
        displaced: Vec::new(),
        head: None,
        files_only: opts.files_only,
    };

    removals.sort_unstable_by(|a, b| b.cmp(a));
    for rel in &removals {
        let abs = root.join(git_path(rel));
        match std::fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::Io { path: abs, source }),
        }
        std::fs::remove_file(&abs).map_err(io_err(&abs))?;
        report.removed += 1;
        remove_empty_parents(&root, &abs);
    }

    writes.sort_unstable();
    let mut batch = Batch::default();
    let displace = |rel: &Path, abs: &Path, report: &mut RestoreReport| -> Result<()> {
        let dest = displaced_dir.join(rel);
        if let Some(parent) = dest.parent() {
            fsutil::create_dir(parent)?;
        }
        std::fs::rename(abs, &dest).map_err(io_err(abs))?;
        report.displaced.push(rel.to_path_buf());
        Ok(())
    };
    for (rel_bytes, oid, mode, added) in &writes {
        let rel = git_path(rel_bytes);
        let abs = root.join(rel);
        make_parents(&root, rel, &mut |blocker: &Path| {
            let blocker_rel = blocker.strip_prefix(&root).unwrap_or(blocker).to_path_buf();
            displace(&blocker_rel, blocker, &mut report)
        })?;
        let existing = match std::fs::symlink_metadata(&abs) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(Error::Io { path: abs, source }),
        };
        if *mode == 0o160_000 {
            if existing.is_none() {
                fsutil::create_dir(&abs)?;
            }
            continue;
        }
        let mut keep_perm = None;
        if let Some(m) = &existing {
            if m.is_dir() {
                if std::fs::remove_dir(&abs).is_err() {
                    return Err(Error::Blocked {
                        path: abs,
                        why: "a folder with ignored files stands where the snapshot has a file"
                            .into(),
                    });
                }
            } else if *added {
                // Not in the safety snapshot, so ignored: keep it aside.
                displace(rel, &abs, &mut report)?;
            } else if m.is_file() {
                keep_perm = Some(m.mode() & 0o7777);
            }
        }
        if let Some(p) = write_entry(&repo, &abs, *oid, *mode, keep_perm)? {
            batch.push(p)?;
        }
        report.written += 1;
    }
    batch.commit()?;

    if !opts.files_only {
        let mut index = repo.index().map_err(bad("cannot open the index".into()))?;
        index
            .read(true)
            .map_err(bad("cannot read the index".into()))?;
        index
            .read_tree(&index_tree)
            .map_err(bad("cannot reset the index".into()))?;
        for (rel_bytes, oid, mode, _) in &writes {
            let rel = git_path(rel_bytes);
            let Some(mut e) = index.get_path(rel, 0) else {
                continue;
            };
            if e.id != *oid || e.mode != *mode {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(root.join(rel)) else {
                continue;
            };
            refresh_stat(&mut e, &m);
            index
                .add(&e)
                .map_err(git_err(root.join(rel), "cannot update the index entry"))?;
        }
        index
            .write()
            .map_err(bad("cannot write the index".into()))?;

        set_head(
            &repo,
            id,
            head_parent.as_ref().map(git2::Commit::id),
            meta.head_ref.as_deref(),
        )?;
        report.head = head_parent.as_ref().map(|c| c.id().to_string());
        if state != RepositoryState::Clean {
            repo.cleanup_state()
                .map_err(bad("cannot clear the merge/rebase state".into()))?;
        }
    }
    Ok(report)
}

/// Points HEAD (and its branch) at `commit`, or makes the branch unborn.
fn set_head(repo: &Repository, id: &str, commit: Option<Oid>, branch: Option<&str>) -> Result<()> {
    let gitdir = repo.path().to_path_buf();
    let bad = |what: &str| git_err(&gitdir, what.to_owned());
    let current_target = repo
        .find_reference("HEAD")
        .ok()
        .and_then(|h| h.symbolic_target().map(str::to_owned));
    let msg = format!("wsync: rollback to {id}");
    match (commit, branch) {
        (Some(c), Some(branch)) => {
            if repo.refname_to_id(branch).ok() != Some(c) {
                repo.reference(branch, c, true, &msg)
                    .map_err(bad("cannot move the branch"))?;
            }
            if current_target.as_deref() != Some(branch) {
                repo.set_head(branch).map_err(bad("cannot set HEAD"))?;
            }
        }
        (Some(c), None) => {
            if repo.head().ok().and_then(|h| h.target()) != Some(c) || current_target.is_some() {
                repo.set_head_detached(c)
                    .map_err(bad("cannot detach HEAD"))?;
            }
        }
        (None, Some(branch)) => {
            if let Ok(mut r) = repo.find_reference(branch) {
                r.delete()
                    .map_err(bad("cannot make the branch unborn again"))?;
            }
            if current_target.as_deref() != Some(branch) {
                repo.set_head(branch).map_err(bad("cannot set HEAD"))?;
            }
        }
        (None, None) => {}
    }
    Ok(())
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn refresh_stat(e: &mut git2::IndexEntry, m: &std::fs::Metadata) {
    e.ctime = IndexTime::new(m.ctime() as i32, m.ctime_nsec() as u32);
    e.mtime = IndexTime::new(m.mtime() as i32, m.mtime_nsec() as u32);
    e.dev = m.dev() as u32;
    e.ino = m.ino() as u32;
    e.uid = m.uid();
    e.gid = m.gid();
    e.file_size = m.len() as u32;
}

/// Removes now-empty folders above `abs`, up to (not including) `root`.
fn remove_empty_parents(root: &Path, abs: &Path) {
    let mut dir = abs.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Creates the folders above `rel`; a file or symlink standing where a
/// folder must be is handed to `blocker` (which moves it aside).
fn make_parents(
    root: &Path,
    rel: &Path,
    blocker: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<()> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut dir = root.to_path_buf();
    for comp in parent.components() {
        dir.push(comp);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => blocker(&dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { path: dir, source }),
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(source) => return Err(Error::Io { path: dir, source }),
        }
    }
    Ok(())
}

/// Temp files written but not yet fsynced and renamed; removed if the
/// restore fails before they are committed.
#[derive(Default)]
struct Batch(Vec<fsutil::Pending>);

impl Batch {
    const SIZE: usize = 128;

    fn push(&mut self, p: fsutil::Pending) -> Result<()> {
        self.0.push(p);
        if self.0.len() >= Self::SIZE {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        fsutil::commit_all(std::mem::take(&mut self.0))
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        for p in self.0.drain(..) {
            p.discard();
        }
    }
}

/// Writes blob `oid` at `abs`: a symlink at once, a file as a temp file
/// returned for [`fsutil::commit_all`] (fsync + rename).
fn write_entry(
    repo: &Repository,
    abs: &Path,
    oid: Oid,
    mode: u32,
    keep_perm: Option<u32>,
) -> Result<Option<fsutil::Pending>> {
    let odb = repo
        .odb()
        .map_err(git_err(abs, "cannot open the object database"))?;
    if mode == 0o120_000 {
        let obj = odb
            .read(oid)
            .map_err(git_err(abs, format!("cannot read blob {oid}")))?;
        match std::fs::remove_file(abs) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    path: abs.into(),
                    source,
                });
            }
        }
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(obj.data()), abs)
            .map_err(io_err(abs))?;
        return Ok(None);
    }
    let exec = mode == 0o100_755;
    let mut pending = fsutil::Pending::create(abs, if exec { 0o777 } else { 0o666 })?;
    let res = (|| {
        copy_blob(&odb, oid, &mut pending.file, abs)?;
        if let Some(perm) = keep_perm {
            let perm = if exec {
                perm | ((perm & 0o444) >> 2)
            } else {
                perm & !0o111
            };
            pending
                .file
                .set_permissions(Permissions::from_mode(perm))
                .map_err(io_err(&pending.tmp))?;
        }
        Ok(())
    })();
    match res {
        Ok(()) => Ok(Some(pending)),
        Err(e) => {
            pending.discard();
            Err(e)
        }
    }
}

/// Copies a blob's content into `out`, streaming when the backend can.
fn copy_blob(odb: &git2::Odb<'_>, oid: Oid, out: &mut File, abs: &Path) -> Result<()> {
    let (size, _) = odb
        .read_header(oid)
        .map_err(git_err(abs, format!("cannot read blob {oid}")))?;
    if size > (1 << 20)
        && let Ok((mut reader, _, ObjectType::Blob)) = odb.reader(oid)
    {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(io_err(abs))?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(buf.get(..n).unwrap_or_default())
                .map_err(io_err(abs))?;
        }
    }
    let obj = odb
        .read(oid)
        .map_err(git_err(abs, format!("cannot read blob {oid}")))?;
    out.write_all(obj.data()).map_err(io_err(abs))
}
