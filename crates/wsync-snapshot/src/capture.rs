//! Capturing the working state as git objects, in O(changed).
//!
//! The real index file is read into a separate in-memory `Index` that is
//! never written back. Its tree (with the index's tree cache, only changed
//! folders are re-hashed) becomes the index commit. The scan (see `scan`),
//! which trusts the index's stat data, lists what may differ; exactly those
//! files are read (streamed for large files) and stored as blobs, and the
//! working tree's tree is the index tree with those changes applied —
//! only the folders on the changed paths are rewritten.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, Metadata};
use std::io::{Read as _, Write};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use git2::{
    Commit, DiffFormat, DiffOptions, ErrorCode, Index, IndexEntry, IndexTime, ObjectType, Oid,
    Repository, Signature, Tree,
};

use crate::fsutil::{self, git_path};
use crate::objects::{self, ObjectBatch};
use crate::{
    CaptureOptions, Error, REF_PREFIX, Result, Snapshot, SnapshotMeta, SnapshotStore, git_err,
    io_err,
};

/// Up to this many changed paths, the patch compares only them.
const PATCH_PATHLIST_MAX: usize = 4096;
/// Files up to this size are read into memory; larger ones are streamed.
const SMALL_FILE: u64 = 1 << 20;
/// How many times a file that changes while being read is re-read.
const MAX_ATTEMPTS: u32 = 25;
/// A file changed more recently than this may be mid-write (e.g. truncated
/// but not yet written): its read is trusted only once it has been quiet
/// this long, or once it has been replaced by rename (the version read was
/// complete when it was renamed into place).
const SETTLE: Duration = Duration::from_millis(50);

/// HEAD's commit (None when unborn) and the branch it names (None when
/// detached).
pub(crate) fn head_of(repo: &Repository) -> Result<(Option<Commit<'_>>, Option<String>)> {
    let path = repo.path().to_path_buf();
    match repo.head() {
        Ok(r) => {
            let commit = r
                .peel_to_commit()
                .map_err(git_err(&path, "cannot resolve HEAD"))?;
            let branch = if r.is_branch() {
                r.name().map(str::to_owned)
            } else {
                None
            };
            Ok((Some(commit), branch))
        }
        Err(e) if matches!(e.code(), ErrorCode::UnbornBranch | ErrorCode::NotFound) => {
            let head = repo
                .find_reference("HEAD")
                .map_err(git_err(&path, "cannot read HEAD"))?;
            Ok((None, head.symbolic_target().map(str::to_owned)))
        }
        Err(e) => Err(Error::Git {
            path,
            what: "cannot read HEAD".into(),
            source: e,
        }),
    }
}

/// Replaces conflicted stages by stage 0 entries ("ours", else "theirs"),
/// returning the conflicted paths. The working file, captured separately,
/// keeps the conflict markers.
fn resolve_conflicts(index: &mut Index, index_path: &Path) -> Result<Vec<String>> {
    if !index.has_conflicts() {
        return Ok(Vec::new());
    }
    let err = |what: &str| git_err(index_path, what.to_owned());
    let conflicts: Vec<_> = index
        .conflicts()
        .map_err(err("cannot read conflicts"))?
        .collect::<std::result::Result<_, _>>()
        .map_err(err("cannot read conflicts"))?;
    let mut paths = Vec::new();
    for c in conflicts {
        let Some(any) = c.our.as_ref().or(c.their.as_ref()).or(c.ancestor.as_ref()) else {
            continue;
        };
        let path = any.path.clone();
        index
            .conflict_remove(git_path(&path))
            .map_err(err("cannot resolve a conflict in memory"))?;
        if let Some(mut keep) = c.our.or(c.their) {
            keep.flags &= !0x3000; // the stage bits
            index
                .add(&keep)
                .map_err(err("cannot resolve a conflict in memory"))?;
        }
        paths.push(String::from_utf8_lossy(&path).into_owned());
    }
    Ok(paths)
}

/// The signature of snapshot commits: the repository's identity if it has
/// one, else a fixed one.
fn signature(repo: &Repository) -> Result<Signature<'static>> {
    repo.signature()
        .or_else(|_| Signature::now("wsync", "wsync@localhost"))
        .map_err(git_err(repo.path(), "cannot make a signature"))
}

/// What a scan of the working tree against the index is given.
pub(crate) struct ScanInput<'a> {
    pub repo: &'a Repository,
    pub root: &'a Path,
    /// The index, conflicts resolved in memory.
    pub index: &'a Index,
    /// The index file's modification time, for racy-clean detection.
    pub index_mtime: Option<(i64, i64)>,
    /// `core.filemode`.
    pub filemode: bool,
}

/// What a capture found, beside the snapshot.
pub(crate) struct Outcome {
    /// The scan it used.
    pub scan: crate::scan::Scan,
    /// Paths whose working version differs from the index.
    pub changed: BTreeSet<Vec<u8>>,
    /// Whether the index had conflicts (resolved in memory, so the index
    /// given to [`capture_from`] no longer matches the file).
    pub conflicted: bool,
}

/// The index file's modification time (`None` when there is none).
pub(crate) fn index_mtime(index_path: &Path) -> Result<Option<(i64, i64)>> {
    match std::fs::metadata(index_path) {
        Ok(m) => Ok(Some((m.mtime(), m.mtime_nsec()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: index_path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn capture(
    store: &SnapshotStore,
    repo: &Repository,
    opts: &CaptureOptions,
) -> Result<Snapshot> {
    let index_path = repo.path().join("index");
    // Stat first: an index rewritten after this only makes more entries
    // look racily clean (re-read), never fewer.
    let mtime = index_mtime(&index_path)?;
    // The repository's own index object (reloaded if the file changed
    // since it was last read), so a caller holding `repo` works on what is
    // read here instead of reading a large index a second time.
    let mut index = repo
        .index()
        .map_err(git_err(&index_path, "cannot read the index"))?;
    index
        .read(false)
        .map_err(git_err(&index_path, "cannot read the index"))?;
    let r = capture_from(store, repo, &mut index, mtime, opts, true, &mut |i| {
        crate::scan::scan(i.repo, i.root, i.index, i.index_mtime, i.filemode)
    });
    if !matches!(&r, Ok((_, o)) if !o.conflicted) {
        // Conflicts were resolved in memory only: back to the file.
        let reread = index
            .read(true)
            .map_err(git_err(&index_path, "cannot read the index again"));
        if r.is_ok() {
            reread?;
        }
    }
    let (snapshot, _) = r?;
    Ok(snapshot)
}

/// Captures with `index` (the index file as read; `own_index` when it is
/// `repo`'s own index object) and the given scan.
pub(crate) fn capture_from(
    store: &SnapshotStore,
    repo: &Repository,
    index: &mut Index,
    index_mtime: Option<(i64, i64)>,
    opts: &CaptureOptions,
    own_index: bool,
    scan: &mut dyn FnMut(&ScanInput<'_>) -> Result<crate::scan::Scan>,
) -> Result<(Snapshot, Outcome)> {
    let now = Utc::now();
    let gitdir = repo.path().to_path_buf();
    let (head, head_ref) = head_of(repo)?;
    let index_path = gitdir.join("index");
    let conflicted = resolve_conflicts(index, &index_path)?;
    let had_conflicts = !conflicted.is_empty();
    let index_tree_id = index
        .write_tree_to(repo)
        .map_err(git_err(&index_path, "cannot write the index tree"))?;
    let filemode = repo
        .config()
        .and_then(|c| c.get_bool("core.filemode"))
        .unwrap_or(true);

    // What differs between the index and the working tree.
    let scan = scan(&ScanInput {
        repo,
        root: &store.workspace,
        index,
        index_mtime,
        filemode,
    })?;
    let mut batch = ObjectBatch::new();
    let (work_tree_id, deltas) = work_tree(
        repo,
        &mut batch,
        &store.workspace,
        index_tree_id,
        &scan,
        filemode,
    )?;
    let changed: BTreeSet<Vec<u8>> = deltas.keys().cloned().collect();
    let mut status_paths = changed.clone();

    let find_tree = |id: Oid| {
        repo.find_tree(id)
            .map_err(git_err(&gitdir, format!("cannot read tree {id}")))
    };
    let index_tree = find_tree(index_tree_id)?;
    let head_tree = match &head {
        Some(c) => Some(
            c.tree()
                .map_err(git_err(&gitdir, "cannot read HEAD's tree"))?,
        ),
        None => None,
    };
    // Staged changes count too, like `git status --porcelain` (nothing is
    // staged when the index's tree is HEAD's).
    if head_tree.as_ref().map(Tree::id) != Some(index_tree_id) {
        let d = repo
            .diff_tree_to_tree(head_tree.as_ref(), Some(&index_tree), None)
            .map_err(git_err(&gitdir, "cannot compare HEAD with the index"))?;
        for delta in d.deltas() {
            if let Some(p) = delta.new_file().path_bytes() {
                status_paths.insert(p.to_vec());
            }
        }
    }

    let sig = signature(repo)?;
    let head_parents: Vec<Oid> = head.iter().map(Commit::id).collect();
    let index_commit_id = batch.add(
        repo,
        ObjectType::Commit,
        &objects::commit_bytes(
            index_tree_id,
            &head_parents,
            &sig,
            &sig,
            &format!("wsync index at capture: {}", opts.reason),
        ),
        &gitdir,
    )?;
    let mut parents = head_parents;
    parents.push(index_commit_id);
    let commit_id = batch.add(
        repo,
        ObjectType::Commit,
        &objects::commit_bytes(
            work_tree_id,
            &parents,
            &sig,
            &sig,
            &format!(
                "wsync snapshot: {}\n\nautonomous writers: {}\n",
                opts.reason, opts.autonomous_status
            ),
        ),
        &gitdir,
    )?;
    // Every new object, in one pack, before the ref that names them.
    batch.write(repo)?;
    // A backstop for when nothing runs `cleanup`, checked on every 16th
    // capture of a process (counting packs reads `objects/pack`); a
    // failure here only leaves more packs, never a worse snapshot.
    static CAPTURES: AtomicU32 = AtomicU32::new(0);
    if CAPTURES
        .fetch_add(1, AtomicOrdering::Relaxed)
        .is_multiple_of(16)
    {
        let _ = crate::manage::maintain_packs(repo, crate::manage::PACKS_HARD_LIMIT);
    }

    // Reserve an id by creating its ref (atomic, fails if it exists).
    let base = format!(
        "sync_{}_{}",
        now.format("%Y%m%d_%H%M%S"),
        std::process::id()
    );
    let mut n = 1u32;
    let id = loop {
        let id = if n == 1 {
            base.clone()
        } else {
            format!("{base}_{n}")
        };
        n += 1;
        if store.file(&id, "meta").exists() {
            continue;
        }
        let refname = format!("{REF_PREFIX}{id}");
        if objects::create_ref(repo.commondir(), &refname, commit_id)? {
            break id;
        }
        if n >= 100_000 {
            return Err(Error::Io {
                path: repo.commondir().join(&refname),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "no free snapshot id in this second",
                ),
            });
        }
    };
    let snapshot_ref = format!("{REF_PREFIX}{id}");

    fsutil::create_dir(&store.dir)?;
    // libgit2 looks attributes up while printing the patch, which would
    // read the index file a second time: let it use the copy in memory
    // (never written back). Not when it is the repository's own index
    // already: setting it again would detach it from the repository.
    if !own_index {
        repo.set_index(index)
            .map_err(git_err(&index_path, "cannot use the index read"))?;
    }
    let diff_path = store.file(&id, "diff");
    // Only the paths known to differ need comparing (libgit2 then skips
    // the unchanged folders instead of walking both whole trees).
    let only = (status_paths.len() <= PATCH_PATHLIST_MAX).then_some(&status_paths);
    // Only working files differ from HEAD (the common case): the patch
    // comes from those files alone, without comparing trees.
    let fast = if !had_conflicts && head_tree.as_ref().map(Tree::id) == Some(index_tree_id) {
        crate::patch::of_deltas(repo, &batch, &deltas, store.attribute_files.as_deref())?
    } else {
        None
    };
    let diff_file = match fast {
        Some(bytes) => fsutil::Pending::create(&diff_path, 0o666).and_then(|mut p| {
            match p.file.write_all(&bytes) {
                Ok(()) => Ok(p),
                Err(source) => {
                    let path = p.tmp.clone();
                    p.discard();
                    Err(Error::Io { path, source })
                }
            }
        })?,
        None => {
            let work_tree = find_tree(work_tree_id)?;
            write_patch_file(repo, head_tree.as_ref(), &work_tree, only, &diff_path)?
        }
    };
    if opts.bundle
        && let Err(e) = crate::manage::create_bundle(store, repo, &id)
    {
        diff_file.discard();
        return Err(e);
    }
    let meta = SnapshotMeta {
        snapshot_id: id.clone(),
        timestamp: now,
        git_commit: head.as_ref().map(|c| c.id().to_string()),
        git_status_files: status_paths.len(),
        autonomous_status: opts.autonomous_status.clone(),
        reason: opts.reason.clone(),
        snapshot_ref,
        snapshot_commit: commit_id.to_string(),
        index_commit: index_commit_id.to_string(),
        head_ref,
        bundle: opts.bundle,
        conflicted,
    };
    let meta_path = store.file(&id, "meta");
    let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Io {
        path: meta_path.clone(),
        source: std::io::Error::other(e),
    })?;
    let mut meta_file = match fsutil::Pending::create(&meta_path, 0o666) {
        Ok(f) => f,
        Err(e) => {
            diff_file.discard();
            return Err(e);
        }
    };
    if let Err(source) = meta_file.file.write_all(&bytes) {
        diff_file.discard();
        meta_file.discard();
        return Err(Error::Io {
            path: meta_path,
            source,
        });
    }
    // Both fsynced together; the diff is renamed before the meta, so a
    // listed snapshot always has its diff.
    fsutil::commit_all(vec![diff_file, meta_file])?;
    fsutil::sync_dir(&store.dir)?;
    Ok((
        Snapshot {
            id,
            commit: commit_id.to_string(),
            meta,
        },
        Outcome {
            scan,
            changed,
            conflicted: had_conflicts,
        },
    ))
}

/// Writes the unified patch `old → new` into a temp file beside `path`
/// (the caller fsyncs and renames it with [`fsutil::commit_all`]).
pub(crate) fn write_patch_file(
    repo: &Repository,
    old: Option<&Tree<'_>>,
    new: &Tree<'_>,
    only: Option<&BTreeSet<Vec<u8>>>,
    path: &Path,
) -> Result<fsutil::Pending> {
    let mut pending = fsutil::Pending::create(path, 0o666)?;
    let res = (|| {
        let mut out = std::io::BufWriter::new(&mut pending.file);
        write_patch(repo, old, new, only, &mut out, path)?;
        out.flush().map_err(io_err(&pending.tmp))
    })();
    match res {
        Ok(()) => Ok(pending),
        Err(e) => {
            pending.discard();
            Err(e)
        }
    }
}

/// Prints the unified patch `old → new` (binaries marked, not inlined).
pub(crate) fn write_patch(
    repo: &Repository,
    old: Option<&Tree<'_>>,
    new: &Tree<'_>,
    only: Option<&BTreeSet<Vec<u8>>>,
    out: &mut dyn Write,
    what: &Path,
) -> Result<()> {
    let mut o = DiffOptions::new();
    o.include_typechange(true);
    if let Some(paths) = only {
        // Exact paths, not patterns (a name may hold `*` or `[`).
        o.disable_pathspec_match(true);
        for p in paths {
            o.pathspec(p.as_slice());
        }
    }
    let diff = repo
        .diff_tree_to_tree(old, Some(new), Some(&mut o))
        .map_err(git_err(what, "cannot compute the patch"))?;
    let mut io_error = None;
    let printed = diff.print(DiffFormat::Patch, |_delta, _hunk, line| {
        let origin = line.origin();
        let res = if matches!(origin, '+' | '-' | ' ') {
            out.write_all(&[origin as u8])
                .and_then(|()| out.write_all(line.content()))
        } else {
            out.write_all(line.content())
        };
        match res {
            Ok(()) => true,
            Err(e) => {
                io_error = Some(e);
                false
            }
        }
    });
    if let Some(source) = io_error {
        return Err(Error::Io {
            path: what.to_path_buf(),
            source,
        });
    }
    printed.map_err(git_err(what, "cannot print the patch"))?;
    out.flush().map_err(io_err(what))
}

/// The whole working tree's tree: the index tree with what the scan found
/// different applied (only the changed folders are rewritten), and the
/// paths that differ from the index with their index and working
/// versions. New blobs and trees go into `batch`.
fn work_tree(
    repo: &Repository,
    batch: &mut ObjectBatch,
    root: &Path,
    index_tree: Oid,
    scan: &crate::scan::Scan,
    filemode: bool,
) -> Result<(Oid, crate::patch::Deltas)> {
    let mut changes: Changes = BTreeMap::new();
    // Path → its index version, for the tracked paths that changed.
    let mut olds: BTreeMap<&[u8], (Oid, u32)> = BTreeMap::new();
    for &i in &scan.deleted {
        if let Some(t) = scan.tracked.get(i) {
            changes.insert(t.path.clone(), None);
            olds.insert(&t.path, (t.id, t.mode));
        }
    }
    for &i in &scan.suspects {
        let Some(t) = scan.tracked.get(i) else {
            continue;
        };
        let abs = root.join(git_path(&t.path));
        match read_entry(repo, batch, &abs, &t.path, filemode, Some((t.id, t.mode)))? {
            Some(e) if e.id == t.id && e.mode == t.mode => {}
            Some(e) => {
                changes.insert(t.path.clone(), Some((e.id, e.mode)));
                olds.insert(&t.path, (t.id, t.mode));
            }
            None => {
                changes.insert(t.path.clone(), None);
                olds.insert(&t.path, (t.id, t.mode));
            }
        }
    }
    for path in &scan.untracked {
        let abs = root.join(git_path(path));
        if let Some(e) = read_entry(repo, batch, &abs, path, filemode, None)? {
            changes.insert(path.clone(), Some((e.id, e.mode)));
        }
    }
    let deltas = changes
        .iter()
        .map(|(path, new)| (path.clone(), (olds.get(path.as_slice()).copied(), *new)))
        .collect();
    if changes.is_empty() {
        return Ok((index_tree, deltas));
    }
    let odb = repo
        .odb()
        .map_err(git_err(repo.path(), "cannot open the object database"))?;
    let id = match apply_changes(repo, &odb, batch, Some(index_tree), &changes, b"")? {
        Some(id) => id,
        None => batch.add(repo, ObjectType::Tree, b"", repo.path())?,
    };
    Ok((id, deltas))
}

/// Path → new (blob, mode), or `None` for removed.
type Changes = BTreeMap<Vec<u8>, Option<(Oid, u32)>>;

/// Builds tree `base` with `changes` (paths relative to it) applied, into
/// `batch`; `None` when the result is empty (git stores no empty folders).
/// A file replacing a folder drops what was below it; a folder replacing a
/// file is built from nothing.
fn apply_changes(
    repo: &Repository,
    odb: &git2::Odb<'_>,
    batch: &mut ObjectBatch,
    base: Option<Oid>,
    changes: &Changes,
    what: &[u8],
) -> Result<Option<Oid>> {
    let path = root_of(repo).join(git_path(what));
    // Name → (mode, id).
    let mut entries: BTreeMap<Vec<u8>, (u32, Oid)> = match base {
        Some(id) => objects::read_tree(odb, id, &path)?
            .into_iter()
            .map(|e| (e.name, (e.mode, e.id)))
            .collect(),
        None => BTreeMap::new(),
    };
    // Group by first component: direct changes, and changes below a folder.
    let mut direct: BTreeMap<&[u8], Option<(Oid, u32)>> = BTreeMap::new();
    let mut nested: BTreeMap<&[u8], Changes> = BTreeMap::new();
    for (path, change) in changes {
        match path.iter().position(|b| *b == b'/') {
            None => {
                direct.insert(path.as_slice(), *change);
            }
            Some(i) => {
                let (name, rest) = path.split_at(i);
                nested
                    .entry(name)
                    .or_default()
                    .insert(rest.get(1..).unwrap_or_default().to_vec(), *change);
            }
        }
    }
    for (name, sub) in &nested {
        if matches!(direct.get(name), Some(Some(_))) {
            continue; // a file now stands where the folder was
        }
        let sub_base = entries
            .get(*name)
            .filter(|(mode, _)| *mode == objects::MODE_TREE)
            .map(|(_, id)| *id);
        let mut sub_what = what.to_vec();
        if !sub_what.is_empty() {
            sub_what.push(b'/');
        }
        sub_what.extend_from_slice(name);
        match apply_changes(repo, odb, batch, sub_base, sub, &sub_what)? {
            Some(id) => {
                entries.insert(name.to_vec(), (objects::MODE_TREE, id));
            }
            None => {
                entries.remove(*name);
            }
        }
    }
    for (name, change) in direct {
        if let Some((id, mode)) = change {
            entries.insert(name.to_vec(), (mode, id));
        } else if !nested.contains_key(name) {
            // (A removal with changes below it is a folder replacing the
            // file, handled above.)
            entries.remove(name);
        }
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let mut list: Vec<objects::Entry> = entries
        .into_iter()
        .map(|(name, (mode, id))| objects::Entry { mode, name, id })
        .collect();
    let bytes = objects::tree_bytes(&mut list);
    batch.add(repo, ObjectType::Tree, &bytes, &path).map(Some)
}

fn root_of(repo: &Repository) -> &Path {
    repo.workdir().unwrap_or_else(|| repo.path())
}

/// Reads one working file (or symlink) into a blob and an index entry.
/// `None` when it vanished or is not a file (e.g. a nested repository).
///
/// A file is trusted only when its stat data is identical before and after
/// reading it through one open handle, and it had been quiet for [`SETTLE`]
/// when the read started or was replaced by rename meanwhile (so an in-place
/// rewrite that truncated it but has not written it yet is waited out). A
/// writer that stalls longer than `SETTLE` between truncating and writing a
/// file in place cannot be told apart from a real edit: such writers must
/// pause (`wsync-lock`'s pause gate) or replace files by rename.
fn read_entry(
    repo: &Repository,
    batch: &mut ObjectBatch,
    abs: &Path,
    rel: &[u8],
    filemode: bool,
    old: Option<(Oid, u32)>,
) -> Result<Option<IndexEntry>> {
    let old_mode = old.map_or(0, |(_, mode)| mode);
    let known = old.map(|(id, _)| id);
    for _ in 0..MAX_ATTEMPTS {
        let meta = match std::fs::symlink_metadata(abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    path: abs.into(),
                    source,
                });
            }
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = match std::fs::read_link(abs) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => continue,
                Err(source) => {
                    return Err(Error::Io {
                        path: abs.into(),
                        source,
                    });
                }
            };
            match std::fs::symlink_metadata(abs) {
                Ok(again) if same_stat(&meta, &again) => {}
                _ => continue,
            }
            let target = target.into_os_string().into_vec();
            let oid = batch.add(repo, ObjectType::Blob, &target, abs)?;
            batch.keep(oid, target);
            return Ok(Some(index_entry(&meta, 0o120_000, oid, rel)));
        }
        if !ft.is_file() {
            return Ok(None);
        }
        let mut file = match File::open(abs) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Io {
                    path: abs.into(),
                    source,
                });
            }
        };
        let before = file.metadata().map_err(io_err(abs))?;
        if !before.is_file() {
            continue;
        }
        let age = age_of(&before);
        let Some(oid) = write_blob(repo, batch, &mut file, before.len(), abs, known)? else {
            continue;
        };
        let after = file.metadata().map_err(io_err(abs))?;
        if !same_stat(&before, &after) {
            continue;
        }
        if age < SETTLE {
            match std::fs::symlink_metadata(abs) {
                // Replaced by rename since we opened it: what we read was
                // a finished version.
                Ok(now) if now.ino() != before.ino() || now.dev() != before.dev() => {}
                // Gone (e.g. a writer's temp file renamed away).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                // Possibly mid-write: wait until it has been quiet long
                // enough. If the inode we read then still has the size and
                // mtime it had when we read it, what we read stood still
                // for SETTLE (the same guarantee as a file already quiet
                // when the read began) — even if the path was replaced by
                // rename meanwhile, which only touches the old inode's
                // ctime. Otherwise read again.
                _ => {
                    std::thread::sleep(SETTLE.saturating_sub(age_of(&before)));
                    let later = file.metadata().map_err(io_err(abs))?;
                    if !same_content_stat(&before, &later) {
                        continue;
                    }
                }
            }
        }
        let exec = if filemode {
            before.mode() & 0o100 != 0
        } else {
            old_mode == 0o100_755
        };
        let mode = if exec { 0o100_755 } else { 0o100_644 };
        return Ok(Some(index_entry(&before, mode, oid, rel)));
    }
    Err(Error::Unstable {
        path: abs.to_path_buf(),
        attempts: MAX_ATTEMPTS,
    })
}

/// Size and modification time equal: the inode's content did not change
/// (writes always move the mtime), whatever happened to its links.
fn same_content_stat(a: &Metadata, b: &Metadata) -> bool {
    a.len() == b.len() && a.mtime() == b.mtime() && a.mtime_nsec() == b.mtime_nsec()
}

/// Stores exactly `len` bytes of `file` as a blob (in `batch` unless it is
/// `known` already, or loose and streamed when large); `None` if the file's
/// length was not `len` (it changed while being read).
fn write_blob(
    repo: &Repository,
    batch: &mut ObjectBatch,
    file: &mut File,
    len: u64,
    abs: &Path,
    known: Option<Oid>,
) -> Result<Option<Oid>> {
    if len <= SMALL_FILE {
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0) + 1);
        std::io::Read::by_ref(file)
            .take(len + 1)
            .read_to_end(&mut buf)
            .map_err(io_err(abs))?;
        if buf.len() as u64 != len {
            return Ok(None);
        }
        let id = Oid::hash_object(ObjectType::Blob, &buf)
            .map_err(git_err(abs, "cannot hash the file"))?;
        if Some(id) == known {
            return Ok(Some(id));
        }
        batch.add_hashed(repo, id, ObjectType::Blob, &buf, abs)?;
        batch.keep(id, buf);
        return Ok(Some(id));
    }
    let odb = repo
        .odb()
        .map_err(git_err(abs, "cannot open the object database"))?;
    let size = usize::try_from(len).map_err(|_| Error::Io {
        path: abs.into(),
        source: std::io::Error::other("file too large for this platform"),
    })?;
    let mut writer = odb
        .writer(size, ObjectType::Blob)
        .map_err(git_err(abs, "cannot store the file"))?;
    let copied = std::io::copy(&mut std::io::Read::by_ref(file).take(len), &mut writer)
        .map_err(io_err(abs))?;
    let mut probe = [0u8; 1];
    if copied != len || file.read(&mut probe).map_err(io_err(abs))? != 0 {
        return Ok(None);
    }
    writer
        .finalize()
        .map(Some)
        .map_err(git_err(abs, "cannot store the file"))
}

/// The same content, as far as stat data tells. ctime is left out on
/// purpose: unlinking a file (a writer renaming a new version over it)
/// changes its ctime but not its content.
fn same_stat(a: &Metadata, b: &Metadata) -> bool {
    a.len() == b.len()
        && a.ino() == b.ino()
        && a.dev() == b.dev()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
        && a.mode() == b.mode()
}

/// How long ago the file last changed (content or inode); a time in the
/// future by more than a second (clock skew) counts as long ago.
fn age_of(m: &Metadata) -> Duration {
    let to_dur = |s: i64, ns: i64| {
        Duration::new(
            u64::try_from(s).unwrap_or(0),
            u32::try_from(ns).unwrap_or(0),
        )
    };
    let changed = to_dur(m.mtime(), m.mtime_nsec()).max(to_dur(m.ctime(), m.ctime_nsec()));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    if changed > now + Duration::from_secs(1) {
        return Duration::MAX;
    }
    now.saturating_sub(changed)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn index_entry(m: &Metadata, mode: u32, id: Oid, path: &[u8]) -> IndexEntry {
    // The index format stores 32-bit stat fields; truncation is what git does.
    IndexEntry {
        ctime: IndexTime::new(m.ctime() as i32, m.ctime_nsec() as u32),
        mtime: IndexTime::new(m.mtime() as i32, m.mtime_nsec() as u32),
        dev: m.dev() as u32,
        ino: m.ino() as u32,
        mode,
        uid: m.uid(),
        gid: m.gid(),
        file_size: m.len() as u32,
        id,
        flags: 0,
        flags_extended: 0,
        path: path.to_vec(),
    }
}
