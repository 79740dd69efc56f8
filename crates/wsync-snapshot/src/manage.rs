//! list, show, verify, diff, cleanup and bundles.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use chrono::{DateTime, NaiveDateTime, Utc};
use git2::{ObjectType, Oid, Repository};
use serde::Serialize;

use crate::fsutil;
use crate::{
    Error, REF_PREFIX, Result, Retention, SnapshotMeta, SnapshotStore, check_id, git_err, io_err,
};

/// Objects up to this size are read whole by `verify` (which checks their
/// hash); larger ones only have their header checked.
const VERIFY_READ_LIMIT: usize = 64 << 20;

const EXTS: [&str; 4] = ["meta", "diff", "result", "bundle"];

/// A snapshot's metadata, result and files.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// The `.meta` contents.
    pub meta: SnapshotMeta,
    /// The `.result` contents (a JSON string holding the raw text if the
    /// file is not valid JSON), if written.
    pub result: Option<serde_json::Value>,
    /// Which of `ID.meta`, `ID.diff`, `ID.result`, `ID.bundle` exist.
    pub files: Vec<PathBuf>,
    /// Whether `refs/wsync/snapshots/<ID>` exists.
    pub ref_present: bool,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The snapshot.
    pub id: String,
    /// How many objects were checked.
    pub objects: usize,
    /// `Some(true)` if the bundle passed `git bundle verify`, `Some(false)`
    /// if it failed, `None` if there is no bundle.
    pub bundle_verified: Option<bool>,
    /// Everything wrong, one line each (empty: the snapshot is sound).
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// No problems were found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What `cleanup` removed.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct CleanupReport {
    /// Removed snapshot ids, newest first.
    pub removed: Vec<String>,
    /// How many snapshots remain.
    pub kept: usize,
    /// Whether the repository's packs were merged (captures add one small
    /// pack each; see [`PACKS_BEFORE_MERGE`]).
    pub packs_merged: bool,
}

/// Captures store their objects as one small pack each. Once the
/// repository has more packs than this, `cleanup` merges the small ones
/// with `git repack --geometric=2 -d` (git's own incremental maintenance:
/// every object of the merged packs is kept, unreachable or not, so an
/// object the user's index or a new commit came to share is never lost;
/// pruning stays `git gc`'s job).
pub const PACKS_BEFORE_MERGE: usize = 16;

/// A capture merges packs itself past this many (when nothing runs
/// `cleanup`).
pub(crate) const PACKS_HARD_LIMIT: usize = 64;

/// How many packs the repository whose common folder is `common` has.
pub(crate) fn pack_count(common: &Path) -> usize {
    std::fs::read_dir(common.join("objects/pack")).map_or(0, |dir| {
        dir.filter_map(std::result::Result::ok)
            .filter(|e| e.file_name().as_encoded_bytes().ends_with(b".idx"))
            .count()
    })
}

/// Merges small packs when there are more than `limit`; returns whether it
/// did.
pub(crate) fn maintain_packs(repo: &Repository, limit: usize) -> Result<bool> {
    if pack_count(repo.commondir()) <= limit {
        return Ok(false);
    }
    run_git(
        repo.path(),
        &[
            "repack".as_ref(),
            "--geometric=2".as_ref(),
            "-d".as_ref(),
            "-q".as_ref(),
            "--no-write-bitmap-index".as_ref(),
        ],
    )?;
    Ok(true)
}

pub(crate) fn list(store: &SnapshotStore) -> Result<Vec<SnapshotMeta>> {
    let mut metas = Vec::new();
    for id in ids_with(store, "meta")? {
        metas.push(store.meta(&id)?);
    }
    sort_newest_first(&mut metas);
    Ok(metas)
}

/// The newest snapshot. A corrupt `.meta` of an older snapshot (by the
/// time in its id) does not get in the way; one that may be the newest is
/// an error naming the file.
pub(crate) fn latest(store: &SnapshotStore) -> Result<Option<SnapshotMeta>> {
    let mut metas = Vec::new();
    let mut broken = Vec::new();
    for id in ids_with(store, "meta")? {
        match store.meta(&id) {
            Ok(m) => metas.push(m),
            Err(e @ (Error::CorruptMeta { .. } | Error::MissingMeta { .. })) => {
                broken.push((id_time(&id), e));
            }
            Err(e) => return Err(e),
        }
    }
    sort_newest_first(&mut metas);
    let newest = metas.first().map(|m| id_time(&m.snapshot_id));
    for (when, e) in broken {
        let older = matches!((when, newest), (Some(w), Some(Some(n))) if w < n);
        if !older {
            return Err(e);
        }
    }
    Ok(metas.into_iter().next())
}

fn sort_newest_first(metas: &mut [SnapshotMeta]) {
    metas.sort_by(|a, b| {
        b.timestamp
            .cmp(&a.timestamp)
            .then_with(|| b.snapshot_id.cmp(&a.snapshot_id))
    });
}

/// Ids that have an `ID.<ext>` file.
fn ids_with(store: &SnapshotStore, ext: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(&store.dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: store.dir.clone(),
                source,
            });
        }
    };
    let suffix = format!(".{ext}");
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&store.dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(&suffix)
            && check_id(id).is_ok()
        {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

pub(crate) fn show(store: &SnapshotStore, id: &str) -> Result<SnapshotInfo> {
    let meta = store.meta(id)?;
    let result_path = store.file(id, "result");
    let result = match std::fs::read(&result_path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(Error::Io {
                path: result_path,
                source,
            });
        }
    };
    let files = EXTS
        .iter()
        .map(|ext| store.file(id, ext))
        .filter(|p| p.exists())
        .collect();
    let repo = store.repo()?;
    let ref_present = repo.refname_to_id(&meta.snapshot_ref).is_ok();
    Ok(SnapshotInfo {
        meta,
        result,
        files,
        ref_present,
    })
}

pub(crate) fn diff(store: &SnapshotStore, id: &str) -> Result<Vec<u8>> {
    let meta = store.meta(id)?;
    let path = store.file(id, "diff");
    match std::fs::read(&path) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Io { path, source }),
    }
    // Regenerate from the objects.
    let repo = store.repo()?;
    let gitdir = repo.path().to_path_buf();
    let commit = Oid::from_str(&meta.snapshot_commit)
        .and_then(|oid| repo.find_commit(oid))
        .map_err(git_err(&gitdir, format!("snapshot {id}: commit missing")))?;
    let tree = commit
        .tree()
        .map_err(git_err(&gitdir, format!("snapshot {id}: tree missing")))?;
    let head_tree = if commit.parent_count() == 2 {
        Some(
            commit
                .parent(0)
                .and_then(|c| c.tree())
                .map_err(git_err(&gitdir, format!("snapshot {id}: HEAD missing")))?,
        )
    } else {
        None
    };
    let mut out = Vec::new();
    crate::capture::write_patch(&repo, head_tree.as_ref(), &tree, None, &mut out, &path)?;
    Ok(out)
}

pub(crate) fn verify(store: &SnapshotStore, id: &str) -> Result<VerifyReport> {
    let meta = store.meta(id)?;
    let repo = store.repo()?;
    let mut report = VerifyReport {
        id: id.to_owned(),
        objects: 0,
        bundle_verified: None,
        problems: Vec::new(),
    };
    match repo.refname_to_id(&meta.snapshot_ref) {
        Ok(oid) if oid.to_string() == meta.snapshot_commit => {}
        Ok(oid) => report.problems.push(format!(
            "{} points to {oid}, the .meta says {}",
            meta.snapshot_ref, meta.snapshot_commit
        )),
        Err(e) => {
            report
                .problems
                .push(format!("{} is missing: {}", meta.snapshot_ref, e.message()));
        }
    }
    match Oid::from_str(&meta.snapshot_commit) {
        Ok(oid) => check_objects(&repo, oid, &mut report),
        Err(_) => report.problems.push(format!(
            "the .meta's snapshot_commit {:?} is not an object id",
            meta.snapshot_commit
        )),
    }
    if !store.file(id, "diff").exists() {
        report
            .problems
            .push(format!("{} is missing", store.file(id, "diff").display()));
    }
    let bundle = store.file(id, "bundle");
    if bundle.exists() {
        let ok = match run_git(
            repo.path(),
            &[
                "bundle".as_ref(),
                "verify".as_ref(),
                "-q".as_ref(),
                bundle.as_os_str(),
            ],
        ) {
            Ok(_) => true,
            Err(e) => {
                report.problems.push(format!("bundle: {e}"));
                false
            }
        };
        report.bundle_verified = Some(ok);
    } else if meta.bundle {
        report.bundle_verified = Some(false);
        report
            .problems
            .push(format!("{} is missing", bundle.display()));
    }
    Ok(report)
}

/// Reads the snapshot commit, its parents (not their history), both trees
/// and every object under them.
fn check_objects(repo: &Repository, commit: Oid, report: &mut VerifyReport) {
    let odb = match repo.odb() {
        Ok(o) => o,
        Err(e) => {
            report
                .problems
                .push(format!("cannot open the object database: {}", e.message()));
            return;
        }
    };
    let mut seen: HashSet<Oid> = HashSet::new();
    let mut stack: Vec<(Oid, String)> = vec![(commit, "snapshot commit".into())];
    let mut first = true;
    while let Some((oid, what)) = stack.pop() {
        if !seen.insert(oid) {
            continue;
        }
        report.objects += 1;
        let (size, kind) = match odb.read_header(oid) {
            Ok(h) => h,
            Err(e) => {
                report
                    .problems
                    .push(format!("{what} {oid} is missing: {}", e.message()));
                continue;
            }
        };
        if kind == ObjectType::Blob && size > VERIFY_READ_LIMIT {
            continue;
        }
        if let Err(e) = odb.read(oid) {
            report
                .problems
                .push(format!("{what} {oid} is unreadable: {}", e.message()));
            continue;
        }
        match kind {
            ObjectType::Commit => {
                let Ok(c) = repo.find_commit(oid) else {
                    report
                        .problems
                        .push(format!("{what} {oid} is not a commit"));
                    continue;
                };
                stack.push((c.tree_id(), format!("tree of {what}")));
                if first {
                    first = false;
                    for (n, p) in c.parent_ids().enumerate() {
                        let last = n + 1 == c.parent_count();
                        let name = if last { "index commit" } else { "HEAD commit" };
                        if last {
                            stack.push((p, name.into()));
                        } else {
                            // HEAD: only check it exists and reads.
                            seen.insert(p);
                            report.objects += 1;
                            if let Err(e) = odb.read(p) {
                                report
                                    .problems
                                    .push(format!("{name} {p} is unreadable: {}", e.message()));
                            }
                        }
                    }
                }
            }
            ObjectType::Tree => {
                let Ok(t) = repo.find_tree(oid) else {
                    report.problems.push(format!("{what} {oid} is not a tree"));
                    continue;
                };
                for entry in &t {
                    // Submodule commits live in another repository.
                    if entry.kind() == Some(ObjectType::Commit) {
                        continue;
                    }
                    let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
                    stack.push((entry.id(), format!("{name:?} in {what}")));
                }
            }
            _ => {}
        }
    }
}

pub(crate) fn cleanup(store: &SnapshotStore, retention: &Retention) -> Result<CleanupReport> {
    let repo = store.repo()?;
    let gitdir = repo.path().to_path_buf();
    sweep_stale_ref_locks(&gitdir);
    let mut ids: BTreeSet<String> = BTreeSet::new();
    let refs = repo
        .references_glob(&format!("{REF_PREFIX}*"))
        .map_err(git_err(&gitdir, "cannot list snapshot refs"))?;
    for r in refs.flatten() {
        if let Some(id) = r.name().and_then(|n| n.strip_prefix(REF_PREFIX)) {
            ids.insert(id.to_owned());
        }
    }
    for ext in EXTS {
        ids.extend(ids_with(store, ext)?);
    }
    let mut dated: Vec<(Option<DateTime<Utc>>, String)> = ids
        .into_iter()
        .map(|id| {
            let time = store
                .meta(&id)
                .ok()
                .map(|m| m.timestamp)
                .or_else(|| id_time(&id));
            (time, id)
        })
        .collect();
    dated.sort_by(|a, b| b.cmp(a));
    let now: DateTime<Utc> = SystemTime::now().into();
    let mut report = CleanupReport::default();
    for (n, (time, id)) in dated.iter().enumerate() {
        let too_old = match (retention.max_age, time) {
            (Some(max), Some(t)) => now
                .signed_duration_since(*t)
                .to_std()
                .is_ok_and(|age| age > max),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if n < retention.keep && !too_old {
            report.kept += 1;
            continue;
        }
        remove_snapshot(store, &repo, id)?;
        report.removed.push(id.clone());
    }
    if store.dir.exists() {
        fsutil::sync_dir(&store.dir)?;
    }
    report.packs_merged = maintain_packs(&repo, PACKS_BEFORE_MERGE)?;
    Ok(report)
}

/// Removes `ID.meta` first (so a half-removed snapshot is never listed),
/// then the other files, the displaced folder, and the ref.
fn remove_snapshot(store: &SnapshotStore, repo: &Repository, id: &str) -> Result<()> {
    for ext in EXTS {
        let path = store.file(id, ext);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Io { path, source }),
        }
    }
    let displaced = store.file(id, "displaced");
    if displaced.is_dir() {
        std::fs::remove_dir_all(&displaced).map_err(io_err(&displaced))?;
    }
    let refname = format!("{REF_PREFIX}{id}");
    if let Ok(mut r) = repo.find_reference(&refname) {
        r.delete().map_err(git_err(
            repo.path().join(&refname),
            "cannot delete the snapshot ref",
        ))?;
    }
    Ok(())
}

/// The UTC time in `sync_YYYYMMDD_HHMMSS_...`.
fn id_time(id: &str) -> Option<DateTime<Utc>> {
    let rest = id.strip_prefix("sync_")?;
    let stamp = rest.get(..15)?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%d_%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

/// Writes `ID.bundle` with `git bundle create` (temp + fsync + rename; the
/// caller fsyncs the folder).
pub(crate) fn create_bundle(store: &SnapshotStore, repo: &Repository, id: &str) -> Result<()> {
    let path = store.file(id, "bundle");
    let tmp = fsutil::temp_beside(&path);
    let refname = format!("{REF_PREFIX}{id}");
    let res = (|| {
        run_git(
            repo.path(),
            &[
                "bundle".as_ref(),
                "create".as_ref(),
                "-q".as_ref(),
                tmp.as_os_str(),
                refname.as_ref(),
            ],
        )?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Runs `git --git-dir GITDIR args` and returns its stdout.
fn run_git(gitdir: &Path, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>> {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(gitdir)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE");
    let line = || {
        let mut s = format!("git --git-dir {}", gitdir.display());
        for a in args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    };
    let out = cmd.output().map_err(|e| Error::GitCommand {
        command: line(),
        status: format!("cannot run git: {e}"),
        stderr: String::new(),
    })?;
    if !out.status.success() {
        return Err(Error::GitCommand {
            command: line(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// Removes `refs/wsync/snapshots/ID.lock` files that a killed capture left
/// behind: snapshot ids carry their process id (`sync_DATE_TIME_PID`,
/// maybe `_N`), and a lock whose process is gone can never be finished.
/// Locks of live processes, of this process, of unparsable names, and all
/// locks where `/proc` is unavailable are left alone. Returns how many went.
pub(crate) fn sweep_stale_ref_locks(gitdir: &Path) -> usize {
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return 0;
    }
    let dir = gitdir.join(REF_PREFIX.trim_end_matches('/'));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        let Some(pid) = id_pid(id) else {
            continue;
        };
        if pid == me || proc_root.join(pid.to_string()).exists() {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The process id inside a snapshot id (`sync_YYYYMMDD_HHMMSS_PID[_N]`).
fn id_pid(id: &str) -> Option<u32> {
    let mut parts = id.strip_prefix("sync_")?.split('_');
    let (date, time, pid) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(date, 8) || !digits(time, 6) {
        return None;
    }
    match parts.next() {
        None => {}
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {}
        Some(_) => return None,
    }
    if parts.next().is_some() {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod lock_sweep_tests {
    use super::*;

    #[test]
    fn snapshot_ids_yield_their_pid() {
        assert_eq!(id_pid("sync_20261122_054854_23688"), Some(23688));
        assert_eq!(id_pid("sync_20261122_054854_23688_2"), Some(23688));
        assert_eq!(id_pid("sync_20261122_054854"), None);
        assert_eq!(id_pid("sync_2026112_054854_1"), None);
        assert_eq!(id_pid("sync_20261122_054854_x"), None);
        assert_eq!(id_pid("sync_20261122_054854_1_2_3"), None);
        assert_eq!(id_pid("other_20261122_054854_1"), None);
    }

    #[test]
    fn only_locks_of_dead_processes_are_swept() {
        let git = tempfile::tempdir().unwrap();
        let dir = git.path().join("refs/wsync/snapshots");
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let files = [
            format!("sync_20261122_054854_{dead}.lock"),
            format!("sync_20261122_054854_{dead}_2.lock"),
            format!("sync_20261122_054854_{me}.lock"),
            "sync_20261122_054854_1.lock".to_owned(), // init: alive
            "not-a-snapshot.lock".to_owned(),
            format!("sync_20261122_054854_{dead}"), // a ref, not a lock
        ];
        for f in &files {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        assert_eq!(sweep_stale_ref_locks(git.path()), 2);
        for (i, f) in files.iter().enumerate() {
            assert_eq!(dir.join(f).exists(), i >= 2, "{f}");
        }
    }
}
