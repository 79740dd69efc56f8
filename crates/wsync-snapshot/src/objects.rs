//! The objects a capture creates, built in memory and stored as one pack.
//!
//! libgit2 writes every new object as its own loose file (a temp file, a
//! link and, for each object, a re-scan of `objects/pack`): about 25 file
//! creations per snapshot, most of a capture's time. Here blobs, trees and
//! commits are hashed in memory and written as one self-contained pack (no
//! deltas) with its index, `objects/pack/pack-*.{pack,idx}`: two files per
//! snapshot. Packs of many
//! captures are merged later (see `manage::maintain_packs`).
//!
//! Trees are edited as their raw bytes: read from the object database,
//! changed by name and written back in git's order; the commits are
//! serialised as git does (`tree`, `parent`s, `author`, `committer`, blank
//! line, message).

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::Path;

use flate2::{Compress, Compression, FlushCompress, Status};
use git2::{ObjectType, Odb, Oid, Repository, Signature};

use crate::{Error, Result, git_err};

/// Above this many deflated bytes, the pending objects are written out as a
/// pack and a new one is started (memory stays bounded).
const FLUSH_BYTES: usize = 32 << 20;

/// Objects smaller than this are stored uncompressed (see
/// [`ObjectBatch`]'s `store`).
const STORE_BELOW: usize = 16 << 10;

/// How many bytes of new blobs a batch keeps in memory for the patch.
const KEEP_BYTES: usize = 8 << 20;

/// Mode of a folder in a tree.
pub(crate) const MODE_TREE: u32 = 0o040_000;

/// New objects not yet in the object database.
pub(crate) struct ObjectBatch {
    /// Small objects are stored without compression: on a 3.8 KB tree
    /// (random ids, which do not compress) zlib's fastest level costs
    /// 60 µs here, storing 3 µs. `git gc` recompresses them later.
    store: Compress,
    zlib: Compress,
    pending: Vec<Pending>,
    ids: HashSet<Oid>,
    deflated: usize,
    /// The new blobs' contents, kept for the patch (up to [`KEEP_BYTES`]
    /// in all), so that it does not read them back.
    kept: HashMap<Oid, Vec<u8>>,
    kept_bytes: usize,
}

struct Pending {
    id: Oid,
    /// Where it came from (for errors).
    what: std::path::PathBuf,
    kind: ObjectType,
    size: usize,
    deflated: Vec<u8>,
}

impl std::fmt::Debug for ObjectBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBatch")
            .field("pending", &self.pending.len())
            .field("deflated", &self.deflated)
            .finish()
    }
}

impl ObjectBatch {
    pub(crate) fn new() -> Self {
        Self {
            store: Compress::new(Compression::none(), true),
            zlib: Compress::new(Compression::fast(), true),
            pending: Vec::new(),
            ids: HashSet::new(),
            deflated: 0,
            kept: HashMap::new(),
            kept_bytes: 0,
        }
    }

    /// Adds an object (hashed now, written by [`ObjectBatch::write`]).
    pub(crate) fn add(
        &mut self,
        repo: &Repository,
        kind: ObjectType,
        data: &[u8],
        what: &Path,
    ) -> Result<Oid> {
        let id = Oid::hash_object(kind, data).map_err(git_err(what, "cannot hash an object"))?;
        self.add_hashed(repo, id, kind, data, what)?;
        Ok(id)
    }

    /// Adds an object whose id `id` the caller computed with
    /// [`Oid::hash_object`].
    pub(crate) fn add_hashed(
        &mut self,
        repo: &Repository,
        id: Oid,
        kind: ObjectType,
        data: &[u8],
        what: &Path,
    ) -> Result<()> {
        if self.ids.insert(id) {
            let deflated = self.deflate(data).map_err(|source| Error::Io {
                path: what.to_path_buf(),
                source,
            })?;
            self.deflated += deflated.len();
            self.pending.push(Pending {
                id,
                what: what.to_path_buf(),
                kind,
                size: data.len(),
                deflated,
            });
            if self.deflated >= FLUSH_BYTES {
                self.write(repo)?;
            }
        }
        Ok(())
    }

    /// Keeps the contents of new blob `id` (added already) for
    /// [`ObjectBatch::blob`], while the batch's budget allows.
    pub(crate) fn keep(&mut self, id: Oid, data: Vec<u8>) {
        if self.kept_bytes + data.len() <= KEEP_BYTES {
            self.kept_bytes += data.len();
            self.kept.insert(id, data);
        }
    }

    /// The contents of a new blob kept by [`ObjectBatch::keep`].
    pub(crate) fn blob(&self, id: Oid) -> Option<&[u8]> {
        self.kept.get(&id).map(Vec::as_slice)
    }

    /// `data` as one zlib stream, with the batch's compressor (set up
    /// once: a compressor's tables are far larger than most objects).
    fn deflate(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let z = if data.len() < STORE_BELOW {
            &mut self.store
        } else {
            &mut self.zlib
        };
        z.reset();
        let mut out = Vec::with_capacity(data.len() + 64);
        loop {
            let consumed = usize::try_from(z.total_in()).unwrap_or(usize::MAX);
            let input = data.get(consumed..).unwrap_or_default();
            out.reserve(input.len() / 2 + 64);
            let status = z
                .compress_vec(input, &mut out, FlushCompress::Finish)
                .map_err(std::io::Error::other)?;
            if status == Status::StreamEnd {
                return Ok(out);
            }
        }
    }

    /// How many objects wait to be written.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Writes the pending objects into the object database as one pack
    /// (nothing when there are none): `objects/pack/pack-SUM.pack`, then
    /// its index `pack-SUM.idx` (git reads a pack only through its index),
    /// each through a temp file renamed into place.
    pub(crate) fn write(&mut self, repo: &Repository) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let dir = repo.commondir().join("objects/pack");
        let (pack, offsets) = pack_bytes(&self.pending);
        let sum = pack
            .get(pack.len().saturating_sub(20)..)
            .unwrap_or_default();
        let idx = index_bytes(&self.pending, &offsets, sum);
        let name: String = sum.iter().map(|b| format!("{b:02x}")).collect();
        let pack_path = dir.join(format!("pack-{name}.pack"));
        let idx_path = dir.join(format!("pack-{name}.idx"));
        let stored = crate::fsutil::create_dir(&dir)
            .and_then(|()| write_read_only(&pack_path, &pack))
            .and_then(|()| write_read_only(&idx_path, &idx));
        if let Err(Error::Io { path, source }) = stored {
            let largest = self
                .pending
                .iter()
                .max_by_key(|p| p.size)
                .map(|p| p.what.clone())
                .unwrap_or_default();
            return Err(Error::StoreObjects {
                path,
                largest,
                source,
            });
        }
        stored?;
        self.pending.clear();
        self.deflated = 0;
        Ok(())
    }
}

/// Writes `bytes` to `path` (mode 0444, as git's packs) through a temp
/// file renamed into place. The temp file is named as git names its own
/// (`tmp_pack_*`), so that `git gc` removes one left by a killed process.
/// An existing file of the same name (the same objects) is kept.
fn write_read_only(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_file_name(format!(
        "tmp_pack_wsync_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let res = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|source| Error::Io {
            path: tmp.clone(),
            source,
        })
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })
        });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Creates the loose ref `name` (`refs/…`, under the repository's common
/// folder `common`) pointing at `id`, as git and libgit2 create one: the
/// id is written into `NAME.lock`, which is then hard-linked to `NAME`
/// (failing if it exists) and removed. `Ok(false)` when the name is taken:
/// an existing loose or packed ref, or another writer's lock.
///
/// Written directly rather than through libgit2, which first looks the
/// target up in the object database: for objects in a pack it has not
/// seen yet, that means re-reading `objects/pack` and opening the new
/// pack, a third of a capture's time for one ref. No reflog is written
/// (git keeps none for such refs unless `core.logAllRefUpdates` is
/// `always`).
pub(crate) fn create_ref(common: &Path, name: &str, id: Oid) -> Result<bool> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = common.join(name);
    let packed = common.join("packed-refs");
    match std::fs::read(&packed) {
        Ok(list) => {
            let taken = list
                .split(|b| *b == b'\n')
                .any(|line| line.split(|b| *b == b' ').nth(1) == Some(name.as_bytes()));
            if taken {
                return Ok(false);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                path: packed,
                source,
            });
        }
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
    lock_name.push(".lock");
    let lock = path.with_file_name(lock_name);
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&lock)
    };
    let opened = match open() {
        // The first ref in its folder.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                crate::fsutil::create_dir(parent)?;
            }
            open()
        }
        other => other,
    };
    let mut file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(source) => return Err(Error::Io { path: lock, source }),
    };
    let written = file.write_all(format!("{id}\n").as_bytes());
    drop(file);
    let res = written.map_err(io(&lock)).and_then(|()| {
        match std::fs::hard_link(&lock, &path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            // A file system without hard links: the lock itself keeps
            // other writers out, so a rename is as exclusive.
            Err(_) if !path.exists() => std::fs::rename(&lock, &path)
                .map(|()| true)
                .map_err(io(&path)),
            Err(source) => Err(Error::Io {
                path: path.clone(),
                source,
            }),
        }
    });
    let _ = std::fs::remove_file(&lock);
    res
}

/// A version-2 pack of `objects`, whole (no deltas), ending in its
/// checksum; and each object's offset in it and the CRC-32 of its entry.
fn pack_bytes(objects: &[Pending]) -> (Vec<u8>, Vec<(u64, u32)>) {
    let body: usize = objects.iter().map(|o| o.deflated.len() + 10).sum();
    let mut out = Vec::with_capacity(12 + body + 20);
    let mut offsets = Vec::with_capacity(objects.len());
    out.extend_from_slice(b"PACK");
    out.extend_from_slice(&2u32.to_be_bytes());
    // FLUSH_BYTES keeps a pack far below 2^32 objects.
    out.extend_from_slice(
        &u32::try_from(objects.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for o in objects {
        let start = out.len();
        let kind: u8 = match o.kind {
            ObjectType::Commit => 1,
            ObjectType::Tree => 2,
            ObjectType::Tag => 4,
            _ => 3,
        };
        entry_header(kind, o.size, &mut out);
        out.extend_from_slice(&o.deflated);
        // The index keeps a CRC-32 of each entry as stored.
        let mut crc = flate2::Crc::new();
        crc.update(out.get(start..).unwrap_or_default());
        offsets.push((start as u64, crc.sum()));
    }
    let sum = sha1_smol::Sha1::from(&out).digest().bytes();
    out.extend_from_slice(&sum);
    (out, offsets)
}

/// The version-2 index of a pack written by [`pack_bytes`]: fan-out table,
/// sorted ids, CRC-32 of each entry, offsets, the pack's checksum and the
/// index's own.
fn index_bytes(objects: &[Pending], offsets: &[(u64, u32)], pack_sum: &[u8]) -> Vec<u8> {
    let mut order: Vec<usize> = (0..objects.len()).collect();
    order.sort_by_key(|&i| objects.get(i).map(|o| o.id));
    let n = objects.len();
    let mut out = Vec::with_capacity(8 + 1024 + n * 28 + 40);
    out.extend_from_slice(b"\xfftOc");
    out.extend_from_slice(&2u32.to_be_bytes());
    let mut fanout = [0u32; 256];
    for o in objects {
        let first = o.id.as_bytes().first().copied().unwrap_or(0);
        for slot in fanout.iter_mut().skip(usize::from(first)) {
            *slot += 1;
        }
    }
    for count in fanout {
        out.extend_from_slice(&count.to_be_bytes());
    }
    let sorted: Vec<(&Pending, (u64, u32))> = order
        .iter()
        .filter_map(|&i| Some((objects.get(i)?, *offsets.get(i)?)))
        .collect();
    for (o, _) in &sorted {
        out.extend_from_slice(o.id.as_bytes());
    }
    for (_, (_, crc)) in &sorted {
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let large: Vec<u64> = sorted
        .iter()
        .map(|(_, (off, _))| *off)
        .filter(|off| *off >= 1 << 31)
        .collect();
    let mut next_large = 0u32;
    for (_, (offset, _)) in &sorted {
        let word = match u32::try_from(*offset) {
            Ok(small) if small < 1 << 31 => small,
            _ => {
                let w = (1u32 << 31) | next_large;
                next_large += 1;
                w
            }
        };
        out.extend_from_slice(&word.to_be_bytes());
    }
    for off in large {
        out.extend_from_slice(&off.to_be_bytes());
    }
    out.extend_from_slice(pack_sum);
    let sum = sha1_smol::Sha1::from(&out).digest().bytes();
    out.extend_from_slice(&sum);
    out
}

/// A pack entry's type and size: 3 type bits and 4 size bits, then 7 size
/// bits per byte while the high bit is set.
fn entry_header(kind: u8, size: usize, out: &mut Vec<u8>) {
    let mut rest = size >> 4;
    #[allow(clippy::cast_possible_truncation)]
    let mut byte = (kind << 4) | (size & 0x0f) as u8;
    while rest != 0 {
        out.push(byte | 0x80);
        #[allow(clippy::cast_possible_truncation)]
        {
            byte = (rest & 0x7f) as u8;
        }
        rest >>= 7;
    }
    out.push(byte);
}

/// One entry of a tree object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub mode: u32,
    pub name: Vec<u8>,
    pub id: Oid,
}

impl Entry {
    pub(crate) fn is_tree(&self) -> bool {
        self.mode == MODE_TREE
    }
}

/// The entries of tree `id`, read from the object database.
pub(crate) fn read_tree(odb: &Odb<'_>, id: Oid, what: &Path) -> Result<Vec<Entry>> {
    let obj = odb
        .read(id)
        .map_err(git_err(what, format!("cannot read tree {id}")))?;
    if obj.kind() != ObjectType::Tree {
        return Err(malformed(what, id, "not a tree"));
    }
    parse_tree(obj.data()).ok_or_else(|| malformed(what, id, "malformed tree"))
}

fn malformed(what: &Path, id: Oid, why: &str) -> Error {
    Error::Git {
        path: what.to_path_buf(),
        what: format!("cannot read tree {id}"),
        source: git2::Error::from_str(why),
    }
}

/// Parses a raw tree: `MODE SP NAME NUL ID20`, repeated.
pub(crate) fn parse_tree(mut data: &[u8]) -> Option<Vec<Entry>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data.iter().position(|b| *b == b' ')?;
        let (mode, rest) = data.split_at(sp);
        let rest = rest.get(1..)?;
        let nul = rest.iter().position(|b| *b == 0)?;
        let (name, rest) = rest.split_at(nul);
        let id = rest.get(1..21)?;
        data = rest.get(21..)?;
        if mode.is_empty() || name.is_empty() {
            return None;
        }
        let mode = mode.iter().try_fold(0u32, |m, d| {
            (b'0'..=b'7')
                .contains(d)
                .then(|| m.checked_mul(8)?.checked_add(u32::from(d - b'0')))
                .flatten()
        })?;
        out.push(Entry {
            mode,
            name: name.to_vec(),
            id: Oid::from_bytes(id).ok()?,
        });
    }
    Some(out)
}

/// Git's order of tree entries: by name, a folder's name compared as if it
/// ended in `/`.
fn tree_order(a: &Entry, b: &Entry) -> Ordering {
    let n = a.name.len().min(b.name.len());
    let (pa, pb) = (a.name.get(..n), b.name.get(..n));
    match pa.cmp(&pb) {
        Ordering::Equal => {}
        o => return o,
    }
    let end = |e: &Entry| if e.is_tree() { b'/' } else { 0 };
    let ca = a.name.get(n).copied().unwrap_or_else(|| end(a));
    let cb = b.name.get(n).copied().unwrap_or_else(|| end(b));
    ca.cmp(&cb)
}

/// The raw bytes of a tree of `entries` (sorted here).
pub(crate) fn tree_bytes(entries: &mut [Entry]) -> Vec<u8> {
    entries.sort_by(tree_order);
    let mut out = Vec::with_capacity(entries.len() * 40);
    for e in entries.iter() {
        // Git writes modes in octal without leading zeros.
        let _ = write!(out, "{:o} ", e.mode);
        out.extend_from_slice(&e.name);
        out.push(0);
        out.extend_from_slice(e.id.as_bytes());
    }
    out
}

/// The raw bytes of a commit, as git writes them.
pub(crate) fn commit_bytes(
    tree: Oid,
    parents: &[Oid],
    author: &Signature<'_>,
    committer: &Signature<'_>,
    message: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + message.len());
    let _ = writeln!(out, "tree {tree}");
    for p in parents {
        let _ = writeln!(out, "parent {p}");
    }
    for (field, sig) in [("author", author), ("committer", committer)] {
        out.extend_from_slice(field.as_bytes());
        out.push(b' ');
        signature_line(sig, &mut out);
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(message.as_bytes());
    out
}

/// `Name <email> SECONDS +HHMM`.
fn signature_line(sig: &Signature<'_>, out: &mut Vec<u8>) {
    let when = sig.when();
    let offset = when.offset_minutes();
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.unsigned_abs();
    out.extend_from_slice(sig.name_bytes());
    out.extend_from_slice(b" <");
    out.extend_from_slice(sig.email_bytes());
    out.extend_from_slice(b"> ");
    let _ = write!(
        out,
        "{} {sign}{:02}{:02}",
        when.seconds(),
        abs / 60,
        abs % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mode: u32, name: &str) -> Entry {
        Entry {
            mode,
            name: name.as_bytes().to_vec(),
            id: Oid::zero(),
        }
    }

    #[test]
    fn refs_are_created_once_and_never_over_a_loose_packed_or_locked_one() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init(tmp.path()).unwrap();
        let id = repo.blob(b"x\n").unwrap();
        let common = repo.commondir().to_path_buf();
        // The first ref in a new folder.
        assert!(create_ref(&common, "refs/wsync/snapshots/a", id).unwrap());
        assert_eq!(repo.refname_to_id("refs/wsync/snapshots/a").unwrap(), id);
        assert!(!common.join("refs/wsync/snapshots/a.lock").exists());
        // Taken as a loose ref: left as it is.
        let other = repo.blob(b"y\n").unwrap();
        assert!(!create_ref(&common, "refs/wsync/snapshots/a", other).unwrap());
        assert_eq!(repo.refname_to_id("refs/wsync/snapshots/a").unwrap(), id);
        // Taken as a packed ref only.
        std::fs::write(
            common.join("packed-refs"),
            format!("# pack-refs with: peeled fully-peeled sorted \n{id} refs/wsync/snapshots/b\n"),
        )
        .unwrap();
        assert!(!create_ref(&common, "refs/wsync/snapshots/b", other).unwrap());
        assert!(!common.join("refs/wsync/snapshots/b").exists());
        // A name that only starts like a packed one is free.
        assert!(create_ref(&common, "refs/wsync/snapshots/b2", other).unwrap());
        // Another writer holds the lock.
        std::fs::write(common.join("refs/wsync/snapshots/c.lock"), b"").unwrap();
        assert!(!create_ref(&common, "refs/wsync/snapshots/c", id).unwrap());
        assert!(common.join("refs/wsync/snapshots/c.lock").exists());
        assert!(!common.join("refs/wsync/snapshots/c").exists());
    }

    #[test]
    fn a_folder_sorts_as_if_its_name_ended_in_a_slash() {
        let mut e = [
            entry(MODE_TREE, "a"),
            entry(0o100_644, "a.txt"),
            entry(0o100_644, "a-b"),
            entry(0o100_644, "a0"),
        ];
        e.sort_by(tree_order);
        let names: Vec<_> = e.iter().map(|e| String::from_utf8_lossy(&e.name)).collect();
        // '-' (0x2d) < '.' (0x2e) < '/' (0x2f, the folder) < '0' (0x30).
        assert_eq!(names, ["a-b", "a.txt", "a", "a0"]);
    }

    #[test]
    fn entry_headers_carry_type_and_size() {
        let mut out = Vec::new();
        entry_header(3, 15, &mut out);
        assert_eq!(out, [0x3f]);
        out.clear();
        entry_header(1, 16, &mut out);
        assert_eq!(out, [0x90, 0x01]);
        out.clear();
        entry_header(2, 1000, &mut out);
        // 1000 = 0b11_1110_1000: low 4 bits 8, then 62.
        assert_eq!(out, [0xa8, 62]);
    }

    #[test]
    fn malformed_trees_are_refused() {
        assert!(parse_tree(b"100644 a\0short").is_none());
        assert!(parse_tree(b"10064x a\0aaaaaaaaaaaaaaaaaaaa").is_none());
        assert!(parse_tree(b" a\0aaaaaaaaaaaaaaaaaaaa").is_none());
        assert_eq!(parse_tree(b"").map(|v| v.len()), Some(0));
    }

    #[test]
    fn a_large_batch_is_written_as_several_packs_before_it_grows_too_big() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init(tmp.path()).unwrap();
        let mut batch = ObjectBatch::new();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut ids = Vec::new();
        // Incompressible 1 MB blobs, past FLUSH_BYTES in all.
        for _ in 0..(FLUSH_BYTES >> 20) + 4 {
            let data: Vec<u8> = (0..1 << 20)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng.to_le_bytes()[0]
                })
                .collect();
            ids.push((
                batch
                    .add(&repo, ObjectType::Blob, &data, tmp.path())
                    .unwrap(),
                data,
            ));
        }
        assert!(batch.pending() < ids.len(), "nothing was flushed");
        batch.write(&repo).unwrap();
        for (id, data) in &ids {
            assert_eq!(repo.find_blob(*id).unwrap().content(), data.as_slice());
        }
        assert!(crate::manage::pack_count(repo.commondir()) >= 2);
    }

    #[test]
    fn objects_written_as_a_pack_match_what_git_computes() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init(tmp.path()).unwrap();
        let what = tmp.path();
        let mut batch = ObjectBatch::new();
        let big: Vec<u8> = (0..100_000u32).flat_map(u32::to_le_bytes).collect();
        let blob = batch
            .add(&repo, ObjectType::Blob, b"hello\n", what)
            .unwrap();
        let large = batch.add(&repo, ObjectType::Blob, &big, what).unwrap();
        let again = batch
            .add(&repo, ObjectType::Blob, b"hello\n", what)
            .unwrap();
        assert_eq!(blob, again);
        let mut entries = vec![
            Entry {
                mode: 0o100_644,
                name: b"hello.txt".to_vec(),
                id: blob,
            },
            Entry {
                mode: 0o100_755,
                name: b"big.bin".to_vec(),
                id: large,
            },
        ];
        let tree = batch
            .add(&repo, ObjectType::Tree, &tree_bytes(&mut entries), what)
            .unwrap();
        let sig = Signature::new(
            "A U Thor",
            "a@example.com",
            &git2::Time::new(1_700_000_000, -330),
        )
        .unwrap();
        let commit = batch
            .add(
                &repo,
                ObjectType::Commit,
                &commit_bytes(tree, &[], &sig, &sig, "subject\n\nbody\n"),
                what,
            )
            .unwrap();
        assert_eq!(batch.pending(), 4);
        batch.write(&repo).unwrap();
        assert_eq!(batch.pending(), 0);
        // libgit2 reads them back, and git's own fsck accepts them.
        let c = repo.find_commit(commit).unwrap();
        assert_eq!(c.tree_id(), tree);
        assert_eq!(c.author().when().offset_minutes(), -330);
        assert_eq!(c.message(), Some("subject\n\nbody\n"));
        assert_eq!(repo.find_blob(large).unwrap().content(), big.as_slice());
        let t = repo.find_tree(tree).unwrap();
        assert_eq!(t.get_name("big.bin").unwrap().filemode(), 0o100_755);
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(tmp.path())
            .args(["fsck", "--strict", "--no-dangling"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let odb = repo.odb().unwrap();
        assert_eq!(read_tree(&odb, tree, what).unwrap().len(), 2);
        let packs = std::fs::read_dir(tmp.path().join(".git/objects/pack"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pack"))
            })
            .count();
        assert_eq!(packs, 1);
    }
}
