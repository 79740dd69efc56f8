//! Safe file-system operations confined to one root folder.
//!
//! Every path comes in as root-relative bytes and is validated: not empty,
//! not absolute, no `.`/`..`/empty components, no NUL. Every parent folder
//! is checked with `symlink_metadata` (a symlink anywhere in the parents is
//! refused) and the final component is opened with `O_NOFOLLOW`. Every
//! write goes to a temp file in the same folder, is fsynced, renamed into
//! place and the folder is fsynced. Before anything is overwritten, renamed
//! or deleted, the current entry is compared with what the caller expects.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::delta::{self, Applier, DeltaError, FileBase, Hash, Op, Signature};
use crate::wire::{Entry, Kind, Meta};
use crate::{Error, show};

/// Prefix of temp files; they are never synced.
pub const TMP_PREFIX: &str = ".wsync-tmp.";
/// The root-level folder holding wsync's own state; never synced.
pub const STATE_DIR: &str = ".wsync";
/// Name of the per-root ignore file (gitignore syntax).
pub const IGNORE_FILE: &str = ".wsyncignore";

/// Build outputs and caches excluded by default.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "target/",
    "node_modules/",
    "__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    ".mypy_cache/",
    ".cache/",
    ".gradle/",
    ".tox/",
    ".DS_Store",
];
/// Version-control folders, excluded unless asked for.
pub const VCS_EXCLUDES: &[&str] = &[".git", ".hg", ".svn", ".jj"];

/// Validates a peer-supplied relative path and splits it into components.
pub fn check_rel(rel: &[u8]) -> Result<Vec<&OsStr>, Error> {
    let bad = |why: &str| Error::UnsafePath {
        path: show(rel),
        why: why.into(),
    };
    if rel.is_empty() {
        return Err(bad("empty path"));
    }
    if rel.contains(&0) {
        return Err(bad("contains NUL"));
    }
    if rel.first() == Some(&b'/') {
        return Err(bad("absolute path"));
    }
    let mut out = Vec::new();
    for c in rel.split(|&b| b == b'/') {
        match c {
            b"" => return Err(bad("empty component")),
            b"." | b".." => return Err(bad("`.` or `..` component")),
            _ => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// The meta of a file-system entry (no symlink following).
#[must_use]
pub fn meta_of(md: &fs::Metadata, target: Option<Vec<u8>>) -> Option<Meta> {
    let ft = md.file_type();
    if ft.is_symlink() {
        let target = target.unwrap_or_default();
        Some(Meta {
            kind: Kind::Symlink,
            size: target.len() as u64,
            mtime_ns: 0,
            exec: false,
            target,
        })
    } else if ft.is_dir() {
        Some(Meta {
            kind: Kind::Dir,
            size: 0,
            mtime_ns: 0,
            exec: false,
            target: Vec::new(),
        })
    } else if ft.is_file() {
        Some(Meta {
            kind: Kind::File,
            size: md.len(),
            mtime_ns: md
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.mtime_nsec()),
            exec: md.mode() & 0o100 != 0,
            target: Vec::new(),
        })
    } else {
        // Sockets, fifos, devices: not synced.
        None
    }
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Exclude rules for a scan.
#[derive(Debug)]
pub struct Excludes {
    matcher: Gitignore,
}

impl Excludes {
    /// Defaults (unless `include_vcs`, VCS folders too), `extra` patterns and,
    /// with `read_ignore_file`, the root's `.wsyncignore`.
    pub fn new(
        root: &Path,
        extra: &[String],
        include_vcs: bool,
        read_ignore_file: bool,
    ) -> Result<Self, Error> {
        let mut b = GitignoreBuilder::new(root);
        let mut add = |pattern: &str| {
            b.add_line(None, pattern)
                .map(|_| ())
                .map_err(|source| Error::Pattern {
                    pattern: pattern.to_owned(),
                    source,
                })
        };
        for p in DEFAULT_EXCLUDES {
            add(p)?;
        }
        if !include_vcs {
            for p in VCS_EXCLUDES {
                add(p)?;
            }
        }
        for p in extra {
            add(p)?;
        }
        let file = root.join(IGNORE_FILE);
        let text = if read_ignore_file {
            fs::read_to_string(&file).ok()
        } else {
            None
        };
        if let Some(text) = text {
            for (n, line) in text.lines().enumerate() {
                b.add_line(Some(file.clone()), line)
                    .map_err(|source| Error::Pattern {
                        pattern: format!("{}:{}: {line}", file.display(), n + 1),
                        source,
                    })?;
            }
        }
        let matcher = b.build().map_err(|source| Error::Pattern {
            pattern: "(exclude set)".into(),
            source,
        })?;
        Ok(Self { matcher })
    }

    /// Whether a root-relative path or any of its parents is excluded
    /// (for entries a peer lists).
    #[must_use]
    pub fn excluded_any(&self, rel: &[u8], is_dir: bool) -> bool {
        for (i, &b) in rel.iter().enumerate() {
            if b == b'/' && self.excluded(&rel[..i], true) {
                return true;
            }
        }
        self.excluded(rel, is_dir)
    }

    /// Whether a root-relative path is excluded.
    #[must_use]
    pub fn excluded(&self, rel: &[u8], is_dir: bool) -> bool {
        if rel == STATE_DIR.as_bytes() {
            return true;
        }
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
        if name.starts_with(TMP_PREFIX.as_bytes()) {
            return true;
        }
        self.matcher
            .matched(Path::new(OsStr::from_bytes(rel)), is_dir)
            .is_ignore()
    }
}

/// One root folder and the operations allowed inside it.
#[derive(Debug, Clone)]
pub struct Root {
    path: PathBuf,
    fsync: bool,
}

/// A file being written: temp file, applier, expected destination.
pub struct Put {
    final_path: PathBuf,
    tmp: PathBuf,
    rel: Vec<u8>,
    expect: Option<Meta>,
    applier: Option<Applier<FileBase, BufWriter<File>>>,
    exec: bool,
    mtime_ns: i64,
    old_mode: Option<u32>,
    fsync: bool,
}

impl std::fmt::Debug for Put {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Put")
            .field("final_path", &self.final_path)
            .field("tmp", &self.tmp)
            .finish_non_exhaustive()
    }
}

impl Drop for Put {
    fn drop(&mut self) {
        if self.applier.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Put {
    /// Applies one op.
    pub fn apply(&mut self, op: &Op) -> Result<(), Error> {
        let Some(ap) = self.applier.as_mut() else {
            return Err(Error::Protocol {
                peer: String::new(),
                what: "op after the end of a put".into(),
            });
        };
        ap.apply(op).map_err(|source| Error::Delta {
            path: show(&self.rel),
            source,
        })
    }

    /// Bytes written so far and bytes that came from the old copy.
    #[must_use]
    pub fn counts(&self) -> (u64, u64) {
        self.applier
            .as_ref()
            .map_or((0, 0), |a| (a.written(), a.copied()))
    }

    /// Verifies the hash, sets exec bit and mtime, fsyncs, re-checks the
    /// destination and renames into place. Returns the new meta.
    pub fn finish(self, hash: &Hash) -> Result<Meta, Error> {
        let sealed = self.seal(hash)?;
        let fsync = sealed.fsync;
        commit(vec![sealed], fsync).pop().unwrap_or_else(|| {
            Err(Error::Protocol {
                peer: String::new(),
                what: "empty commit".into(),
            })
        })
    }

    /// Verifies the hash and sets exec bit and mtime on the temp file; the
    /// file reaches its final path with [`commit`].
    pub fn seal(mut self, hash: &Hash) -> Result<Sealed, Error> {
        let Some(ap) = self.applier.take() else {
            return Err(Error::Protocol {
                peer: String::new(),
                what: "put finished twice".into(),
            });
        };
        let size = ap.written();
        match self.seal_inner(ap, hash) {
            Ok(file) => {
                drop(file);
                Ok(Sealed {
                    pending: true,
                    size,
                    final_path: self.final_path.clone(),
                    tmp: self.tmp.clone(),
                    rel: std::mem::take(&mut self.rel),
                    expect: self.expect.take(),
                    fsync: self.fsync,
                })
            }
            Err(e) => {
                let _ = fs::remove_file(&self.tmp);
                Err(e)
            }
        }
    }

    fn seal_inner(
        &self,
        ap: Applier<FileBase, BufWriter<File>>,
        hash: &Hash,
    ) -> Result<File, Error> {
        let out = ap.finish(hash).map_err(|source| Error::Delta {
            path: show(&self.rel),
            source,
        })?;
        let file = out.into_inner().map_err(|e| Error::Io {
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        let base = self.old_mode.unwrap_or(0o644) & 0o777 & !0o111;
        let mode = if self.exec {
            base | ((base & 0o444) >> 2) | 0o100
        } else {
            base
        };
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&self.tmp))?;
        file.set_modified(system_time(self.mtime_ns))
            .map_err(io_err(&self.tmp))?;
        Ok(file)
    }
}

/// A complete, verified temp file waiting to be renamed into place.
#[derive(Debug)]
pub struct Sealed {
    pending: bool,
    size: u64,
    final_path: PathBuf,
    tmp: PathBuf,
    rel: Vec<u8>,
    expect: Option<Meta>,
    fsync: bool,
}

impl Sealed {
    /// The root-relative path.
    #[must_use]
    pub fn rel(&self) -> &[u8] {
        &self.rel
    }

    /// Size of the new content.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        if self.pending {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Above this many files a batch is made durable with one `syncfs`
/// instead of one `fsync` per file.
const SYNCFS_MIN: usize = 4;

/// Makes sealed files durable and renames them into place, in order:
/// data is flushed (per-file fsync, or one `syncfs` for a larger batch)
/// before any rename, each destination is re-checked right before its
/// rename, and the folders are flushed after. One result per file.
pub fn commit(mut batch: Vec<Sealed>, fsync: bool) -> Vec<Result<Meta, Error>> {
    let mut errs: Vec<Option<Error>> = batch.iter().map(|_| None).collect();
    if fsync {
        if batch.len() >= SYNCFS_MIN {
            let synced = batch.first().map(|s| {
                File::open(&s.tmp).and_then(|f| nix::unistd::syncfs(&f).map_err(io::Error::from))
            });
            if let Some(Err(e)) = synced {
                for (i, s) in batch.iter().enumerate() {
                    errs[i] = Some(Error::Io {
                        path: s.tmp.clone(),
                        source: io::Error::new(e.kind(), e.to_string()),
                    });
                }
            }
        } else {
            for (i, s) in batch.iter().enumerate() {
                if let Err(e) = File::open(&s.tmp).and_then(|f| f.sync_all()) {
                    errs[i] = Some(Error::Io {
                        path: s.tmp.clone(),
                        source: e,
                    });
                }
            }
        }
    }
    let mut out = Vec::with_capacity(batch.len());
    let mut parents: Vec<PathBuf> = Vec::new();
    for (s, err) in batch.iter_mut().zip(errs) {
        s.pending = false;
        let r = match err {
            Some(e) => Err(e),
            None => check_expect(&s.final_path, &s.rel, s.expect.as_ref())
                .and_then(|()| fs::rename(&s.tmp, &s.final_path).map_err(io_err(&s.final_path))),
        };
        match r {
            Ok(()) => {
                if let Some(p) = s.final_path.parent()
                    && !parents.iter().any(|q| q == p)
                {
                    parents.push(p.to_path_buf());
                }
                out.push(Ok(()));
            }
            Err(e) => {
                let _ = fs::remove_file(&s.tmp);
                out.push(Err(e));
            }
        }
    }
    if fsync {
        let dir_sync = if parents.len() >= SYNCFS_MIN {
            parents
                .first()
                .map(|p| {
                    File::open(p)
                        .and_then(|d| nix::unistd::syncfs(&d).map_err(io::Error::from))
                        .map_err(io_err(p))
                })
                .unwrap_or(Ok(()))
        } else {
            parents
                .iter()
                .try_for_each(|p| File::open(p).and_then(|d| d.sync_all()).map_err(io_err(p)))
        };
        if let Err(e) = dir_sync {
            let msg = e.to_string();
            for r in &mut out {
                if r.is_ok() {
                    *r = Err(Error::Io {
                        path: PathBuf::from("(folder flush)"),
                        source: io::Error::other(msg.clone()),
                    });
                }
            }
        }
    }
    out.into_iter()
        .zip(&batch)
        .map(|(r, s)| {
            r.and_then(|()| {
                lstat(&s.final_path)?.ok_or_else(|| Error::Changed { path: show(&s.rel) })
            })
        })
        .collect()
}

fn lstat(path: &Path) -> Result<Option<Meta>, Error> {
    match fs::symlink_metadata(path) {
        Ok(md) => {
            let target = if md.file_type().is_symlink() {
                Some(
                    fs::read_link(path)
                        .map_err(io_err(path))?
                        .into_os_string()
                        .into_vec(),
                )
            } else {
                None
            };
            Ok(meta_of(&md, target))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

use std::os::unix::ffi::OsStringExt;

fn check_expect(path: &Path, rel: &[u8], expect: Option<&Meta>) -> Result<(), Error> {
    let now = lstat(path)?;
    if now.as_ref() != expect {
        return Err(Error::Changed { path: show(rel) });
    }
    Ok(())
}

fn sync_parent(path: &Path) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err(parent))?;
    }
    Ok(())
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl Root {
    /// A root at `path` (it need not exist yet). `fsync` should stay on.
    #[must_use]
    pub fn new(path: &Path, fsync: bool) -> Self {
        Self {
            path: path.to_path_buf(),
            fsync,
        }
    }

    /// The root folder.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the root exists as a folder.
    #[must_use]
    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Lists the tree (sorted by path bytes); `(root_exists, entries)`.
    pub fn scan(&self, ex: &Excludes) -> Result<(bool, Vec<Entry>), Error> {
        if !self.exists() {
            return Ok((false, Vec::new()));
        }
        let mut out = Vec::new();
        self.walk(ex, self.path.clone(), Vec::new(), &mut out)?;
        out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok((true, out))
    }

    /// Lists only `paths` (and the subtree of those that are folders),
    /// sorted and without duplicates; invalid, excluded or unreachable
    /// paths are skipped (they are simply not there).
    pub fn scan_paths(
        &self,
        ex: &Excludes,
        paths: &[Vec<u8>],
    ) -> Result<(bool, Vec<Entry>), Error> {
        if !self.exists() {
            return Ok((false, Vec::new()));
        }
        let mut out = Vec::new();
        for rel in paths {
            let Ok(meta) = self.lstat(rel) else { continue };
            let Some(meta) = meta else { continue };
            if ex.excluded_any(rel, meta.kind == Kind::Dir) {
                continue;
            }
            if meta.kind == Kind::Dir {
                let full = self.resolve(rel, false)?;
                self.walk(ex, full, rel.clone(), &mut out)?;
            }
            out.push(Entry {
                path: rel.clone(),
                meta,
            });
        }
        out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        out.dedup_by(|a, b| a.path == b.path);
        Ok((true, out))
    }

    fn walk(
        &self,
        ex: &Excludes,
        start: PathBuf,
        start_rel: Vec<u8>,
        out: &mut Vec<Entry>,
    ) -> Result<(), Error> {
        let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(start, start_rel)];
        while let Some((dir, rel)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                // Vanished meanwhile: its absence shows up next scan.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.is_empty() => continue,
                Err(source) => return Err(Error::Io { path: dir, source }),
            };
            for de in rd {
                let de = de.map_err(io_err(&dir))?;
                let name = de.file_name();
                let mut child = rel.clone();
                if !child.is_empty() {
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                let md = match de.metadata() {
                    Ok(md) => md,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(Error::Io {
                            path: de.path(),
                            source,
                        });
                    }
                };
                if name.as_bytes().starts_with(TMP_PREFIX.as_bytes()) {
                    // Leftover of an interrupted write: remove when stale.
                    let stale = md
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(3600));
                    if stale {
                        let _ = fs::remove_file(de.path());
                    }
                    continue;
                }
                if ex.excluded(&child, md.is_dir()) {
                    continue;
                }
                let target = if md.file_type().is_symlink() {
                    match fs::read_link(de.path()) {
                        Ok(t) => Some(t.into_os_string().into_vec()),
                        Err(_) => continue,
                    }
                } else {
                    None
                };
                let Some(meta) = meta_of(&md, target) else {
                    continue;
                };
                if meta.kind == Kind::Dir {
                    stack.push((de.path(), child.clone()));
                }
                out.push(Entry { path: child, meta });
            }
        }
        Ok(())
    }

    /// Validates `rel`, checks (and with `create`, makes) every parent
    /// folder, refusing symlinks; returns the full path of `rel`.
    pub fn resolve(&self, rel: &[u8], create: bool) -> Result<PathBuf, Error> {
        let comps = check_rel(rel)?;
        if create && !self.path.exists() {
            fs::create_dir_all(&self.path).map_err(io_err(&self.path))?;
        }
        let mut p = self.path.clone();
        let (last, parents) = comps.split_last().ok_or_else(|| Error::UnsafePath {
            path: show(rel),
            why: "empty path".into(),
        })?;
        for c in parents {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(Error::UnsafePath {
                        path: show(rel),
                        why: format!("parent {} is a symlink", p.display()),
                    });
                }
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    return Err(Error::Io {
                        path: p,
                        source: io::Error::new(
                            io::ErrorKind::NotADirectory,
                            "a parent is not a folder",
                        ),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    match fs::create_dir(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(source) => return Err(Error::Io { path: p, source }),
                    }
                    let md = fs::symlink_metadata(&p).map_err(io_err(&p))?;
                    if !md.is_dir() {
                        return Err(Error::UnsafePath {
                            path: show(rel),
                            why: format!("parent {} is not a folder", p.display()),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::NotFound { path: show(rel) });
                }
                Err(source) => return Err(Error::Io { path: p, source }),
            }
        }
        p.push(last);
        Ok(p)
    }

    /// The current meta of `rel` (None: absent).
    pub fn lstat(&self, rel: &[u8]) -> Result<Option<Meta>, Error> {
        match self.resolve(rel, false) {
            Ok(p) => lstat(&p),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a regular file for reading (never through a symlink).
    pub fn open_read(&self, rel: &[u8]) -> Result<(File, Meta), Error> {
        let p = self.resolve(rel, false)?;
        let f = open_nofollow(&p).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                Error::NotFound { path: show(rel) }
            } else {
                Error::Io {
                    path: p.clone(),
                    source,
                }
            }
        })?;
        let md = f.metadata().map_err(io_err(&p))?;
        match meta_of(&md, None) {
            Some(m) if m.kind == Kind::File => Ok((f, m)),
            _ => Err(Error::Io {
                path: p,
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            }),
        }
    }

    /// The block signature of a file.
    pub fn signature(&self, rel: &[u8]) -> Result<(Signature, Meta), Error> {
        let (f, meta) = self.open_read(rel)?;
        let sig = delta::signature(io::BufReader::with_capacity(256 * 1024, &f), meta.size)
            .map_err(io_err(self.path.as_path()))?;
        Ok((sig, meta))
    }

    /// BLAKE3 of a file's content.
    pub fn hash(&self, rel: &[u8]) -> Result<Hash, Error> {
        let (f, _) = self.open_read(rel)?;
        let mut h = blake3::Hasher::new();
        let mut r = io::BufReader::with_capacity(256 * 1024, f);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf).map_err(io_err(&self.path))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(*h.finalize().as_bytes())
    }

    /// Streams a file as a delta against `sig`; returns hash and meta.
    pub fn delta(
        &self,
        rel: &[u8],
        sig: &Signature,
        emit: &mut dyn FnMut(Op) -> io::Result<()>,
    ) -> Result<(Hash, Meta), Error> {
        let (f, meta) = self.open_read(rel)?;
        let hash = delta::generate(io::BufReader::with_capacity(256 * 1024, &f), sig, emit)
            .map_err(|source| Error::Delta {
                path: show(rel),
                source,
            })?;
        // The file must not have changed while it was read.
        let after = f.metadata().ok().and_then(|md| meta_of(&md, None));
        if after.as_ref() != Some(&meta) {
            return Err(Error::Changed { path: show(rel) });
        }
        Ok((hash, meta))
    }

    /// Starts writing `rel`; `block_size > 0` uses the current file as base.
    pub fn begin_put(
        &self,
        rel: &[u8],
        expect: Option<Meta>,
        block_size: u32,
        exec: bool,
        mtime_ns: i64,
    ) -> Result<Put, Error> {
        let final_path = self.resolve(rel, true)?;
        check_expect(&final_path, rel, expect.as_ref())?;
        let (base, old_mode) = if block_size > 0 {
            let f = open_nofollow(&final_path).map_err(io_err(&final_path))?;
            let md = f.metadata().map_err(io_err(&final_path))?;
            if meta_of(&md, None).as_ref() != expect.as_ref() {
                return Err(Error::Changed { path: show(rel) });
            }
            let mode = md.mode();
            (
                Some(FileBase {
                    file: f,
                    len: md.len(),
                }),
                Some(mode),
            )
        } else {
            let mode = fs::symlink_metadata(&final_path)
                .ok()
                .filter(fs::Metadata::is_file)
                .map(|m| m.mode());
            (None, mode)
        };
        let parent = final_path.parent().unwrap_or(&self.path);
        let tmp = parent.join(format!(
            "{TMP_PREFIX}{}.{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        Ok(Put {
            final_path,
            tmp,
            rel: rel.to_vec(),
            expect,
            applier: Some(Applier::new(
                base,
                block_size,
                BufWriter::with_capacity(256 * 1024, file),
            )),
            exec,
            mtime_ns,
            old_mode,
            fsync: self.fsync,
        })
    }

    /// Creates a folder (parents too).
    pub fn mkdir(&self, rel: &[u8], expect: Option<&Meta>) -> Result<Meta, Error> {
        let p = self.resolve(rel, true)?;
        let now = lstat(&p)?;
        match now {
            Some(m) if m.kind == Kind::Dir => return Ok(m),
            ref other if other.as_ref() != expect => {
                return Err(Error::Changed { path: show(rel) });
            }
            Some(_) => {
                // An expected file or symlink is replaced by the folder.
                fs::remove_file(&p).map_err(io_err(&p))?;
            }
            None => {}
        }
        fs::create_dir(&p).map_err(io_err(&p))?;
        if self.fsync {
            sync_parent(&p)?;
        }
        lstat(&p)?.ok_or_else(|| Error::Changed { path: show(rel) })
    }

    /// Creates or replaces a symlink (atomically, via a temp link).
    pub fn symlink(&self, rel: &[u8], target: &[u8], expect: Option<&Meta>) -> Result<Meta, Error> {
        if target.is_empty() || target.contains(&0) {
            return Err(Error::UnsafePath {
                path: show(rel),
                why: "bad symlink target".into(),
            });
        }
        let p = self.resolve(rel, true)?;
        check_expect(&p, rel, expect)?;
        if lstat(&p)?.is_some_and(|m| m.kind == Kind::Dir) {
            fs::remove_dir(&p).map_err(io_err(&p))?;
        }
        let parent = p.parent().unwrap_or(&self.path);
        let tmp = parent.join(format!(
            "{TMP_PREFIX}{}.{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp).map_err(io_err(&tmp))?;
        if let Err(source) = fs::rename(&tmp, &p) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Io { path: p, source });
        }
        if self.fsync {
            sync_parent(&p)?;
        }
        lstat(&p)?.ok_or_else(|| Error::Changed { path: show(rel) })
    }

    /// Deletes a file, a symlink or an empty folder.
    pub fn delete(&self, rel: &[u8], expect: &Meta) -> Result<(), Error> {
        let p = match self.resolve(rel, false) {
            Ok(p) => p,
            Err(Error::NotFound { .. }) => return Err(Error::Changed { path: show(rel) }),
            Err(e) => return Err(e),
        };
        check_expect(&p, rel, Some(expect))?;
        let r = if expect.kind == Kind::Dir {
            fs::remove_dir(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(io_err(&p))?;
        if self.fsync {
            sync_parent(&p)?;
        }
        Ok(())
    }

    /// Renames a file or symlink to a name that must not exist yet.
    pub fn rename(&self, from: &[u8], to: &[u8], expect: &Meta) -> Result<Meta, Error> {
        if expect.kind == Kind::Dir {
            return Err(Error::UnsafePath {
                path: show(from),
                why: "folders are not renamed".into(),
            });
        }
        let src = self.resolve(from, false)?;
        let dst = self.resolve(to, true)?;
        check_expect(&src, from, Some(expect))?;
        // A hard link fails if `to` exists: no silent overwrite.
        fs::hard_link(&src, &dst).map_err(io_err(&dst))?;
        fs::remove_file(&src).map_err(io_err(&src))?;
        if self.fsync {
            sync_parent(&dst)?;
            sync_parent(&src)?;
        }
        lstat(&dst)?.ok_or_else(|| Error::Changed { path: show(to) })
    }

    /// Sets exec bit and mtime of a file.
    pub fn set_meta(
        &self,
        rel: &[u8],
        expect: &Meta,
        exec: bool,
        mtime_ns: i64,
    ) -> Result<Meta, Error> {
        let p = self.resolve(rel, false)?;
        let f = open_nofollow(&p).map_err(io_err(&p))?;
        let md = f.metadata().map_err(io_err(&p))?;
        if meta_of(&md, None).as_ref() != Some(expect) {
            return Err(Error::Changed { path: show(rel) });
        }
        let base = md.mode() & 0o777 & !0o111;
        let mode = if exec {
            base | ((base & 0o444) >> 2) | 0o100
        } else {
            base
        };
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&p))?;
        f.set_modified(system_time(mtime_ns)).map_err(io_err(&p))?;
        lstat(&p)?.ok_or_else(|| Error::Changed { path: show(rel) })
    }

    fn state_path(&self, pair: &str) -> Result<PathBuf, Error> {
        if pair.is_empty() || pair.len() > 64 || !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::UnsafePath {
                path: pair.to_owned(),
                why: "pair id must be hex".into(),
            });
        }
        Ok(self
            .path
            .join(STATE_DIR)
            .join("remote")
            .join(format!("{pair}.state")))
    }

    /// Reads the stored state of a peer pair.
    pub fn state_get(&self, pair: &str) -> Result<Option<Vec<u8>>, Error> {
        let p = self.state_path(pair)?;
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path: p, source }),
        }
    }

    /// Stores the state of a peer pair (temp file, fsync, rename, folder fsync).
    pub fn state_put(&self, pair: &str, data: &[u8]) -> Result<(), Error> {
        let p = self.state_path(pair)?;
        let dir = p.parent().unwrap_or(&self.path).to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}.{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &p)?;
            File::open(&dir)?.sync_all()
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            Error::Io {
                path: p.clone(),
                source,
            }
        })
    }
}

/// Whether a DeltaError is a hash mismatch.
#[must_use]
pub fn is_hash_mismatch(e: &Error) -> bool {
    matches!(
        e,
        Error::Delta {
            source: DeltaError::HashMismatch,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../../x",
            b"a//b",
            b"./a",
            b"a\0b",
            b"a/",
        ] {
            assert!(check_rel(bad).is_err(), "{:?}", show(bad));
        }
        assert_eq!(check_rel(b"a/b\xffc").unwrap().len(), 2);
    }

    #[test]
    fn refuses_writes_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let root = Root::new(dir.path(), true);
        let err = root.begin_put(b"link/evil", None, 0, false, 0).unwrap_err();
        assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
        assert!(root.mkdir(b"link/sub", None).is_err());
        assert!(root.open_read(b"link").is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn put_is_atomic_and_checks_expectation() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path(), true);
        let mut put = root
            .begin_put(b"d/f", None, 0, true, 1_000_000_000_123)
            .unwrap();
        put.apply(&Op::Literal(b"hello".to_vec())).unwrap();
        assert!(!dir.path().join("d/f").exists());
        let meta = put.finish(blake3::hash(b"hello").as_bytes()).unwrap();
        assert!(meta.exec);
        assert_eq!(meta.mtime_ns, 1_000_000_000_123);
        assert_eq!(fs::read(dir.path().join("d/f")).unwrap(), b"hello");
        // A stale expectation is refused and leaves no temp file behind.
        let err = root.begin_put(b"d/f", None, 0, false, 0).unwrap_err();
        assert!(matches!(err, Error::Changed { .. }));
        let mut put = root
            .begin_put(b"d/f", Some(meta.clone()), 0, false, 0)
            .unwrap();
        put.apply(&Op::Literal(b"x".to_vec())).unwrap();
        fs::write(dir.path().join("d/f"), b"user edit").unwrap();
        assert!(put.finish(blake3::hash(b"x").as_bytes()).is_err());
        assert_eq!(fs::read(dir.path().join("d/f")).unwrap(), b"user edit");
        assert_eq!(fs::read_dir(dir.path().join("d")).unwrap().count(), 1);
    }
}
