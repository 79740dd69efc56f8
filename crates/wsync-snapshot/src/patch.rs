//! The unified patch of a capture, printed from the changed files alone.
//!
//! When only working files differ from HEAD (nothing staged, no conflict),
//! the capture already knows every changed path with its HEAD and working
//! versions, so comparing the HEAD and snapshot trees (libgit2's
//! `diff_tree_to_tree`, which also looks attributes up for every file) is
//! not needed: each file's hunks come from libgit2's text diff of the two
//! blobs, under a header printed as git and libgit2 print it. Whenever the
//! output could differ from the tree comparison — attributes that pick a
//! diff driver, `core.abbrev`, submodules, a file turned into a symlink or
//! back, names git quotes — this returns `None` and the caller compares
//! trees as before.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use git2::{AttrCheckFlags, DiffOptions, Oid, Patch, Repository};

use crate::fsutil::git_path;
use crate::objects::ObjectBatch;
use crate::{Result, git_err};

/// Path → (HEAD version, working version) as (blob, mode); `None` where
/// the path does not exist.
pub(crate) type Deltas = BTreeMap<Vec<u8>, (Option<(Oid, u32)>, Option<(Oid, u32)>)>;

/// Hex digits of the ids in `index` lines (libgit2's and git's default).
const ABBREV: usize = 7;

const KIND: u32 = 0o170_000;
const GITLINK: u32 = 0o160_000;

/// The patch of `deltas` (HEAD → working files), or `None` when the trees
/// must be compared instead (see the module docs).
///
/// `attribute_files` are the system's and the user's attribute files
/// (see [`crate::LiveOptions::attribute_files`]); when given, and no
/// attribute file can reach the changed paths, libgit2 is not asked about
/// each path's attributes.
pub(crate) fn of_deltas(
    repo: &Repository,
    batch: &ObjectBatch,
    deltas: &Deltas,
    attribute_files: Option<&[PathBuf]>,
) -> Result<Option<Vec<u8>>> {
    for (path, (old, new)) in deltas {
        if path
            .iter()
            .any(|&b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\')
        {
            return Ok(None);
        }
        let kinds = (old.map(|(_, m)| m & KIND), new.map(|(_, m)| m & KIND));
        match kinds {
            (Some(GITLINK), _) | (_, Some(GITLINK)) => return Ok(None),
            (Some(a), Some(b)) if a != b => return Ok(None),
            _ => {}
        }
    }
    let gitdir = repo.path();
    let config = repo
        .config()
        .map_err(git_err(gitdir, "cannot read the configuration"))?;
    if config.get_entry("core.abbrev").is_ok() {
        return Ok(None);
    }
    let unreachable = match attribute_files {
        Some(global) => !attributes_may_apply(repo, &config, global, deltas)?,
        None => false,
    };
    for path in deltas.keys().filter(|_| !unreachable) {
        let attr = repo
            .get_attr_bytes(git_path(path), "diff", AttrCheckFlags::FILE_THEN_INDEX)
            .map_err(git_err(git_path(path), "cannot read attributes"))?;
        if attr.is_some() {
            return Ok(None);
        }
    }
    let odb = repo
        .odb()
        .map_err(git_err(gitdir, "cannot open the object database"))?;
    let mut out = Vec::new();
    for (path, (old, new)) in deltas {
        let read = |side: &Option<(Oid, u32)>| -> Result<Cow<'_, [u8]>> {
            match side {
                Some((id, _)) => match batch.blob(*id) {
                    Some(data) => Ok(Cow::Borrowed(data)),
                    None => odb
                        .read(*id)
                        .map(|o| Cow::Owned(o.data().to_vec()))
                        .map_err(git_err(git_path(path), format!("cannot read blob {id}"))),
                },
                None => Ok(Cow::Borrowed(&[])),
            }
        };
        let (old_data, new_data) = (read(old)?, read(new)?);
        print_file(path, *old, *new, &old_data, &new_data, &mut out)?;
    }
    Ok(Some(out))
}

/// Whether an attribute file could apply to a path of `deltas`: one of
/// `global`, the file `core.attributesFile` names, the repository's
/// `info/attributes`, or a `.gitattributes` in the working tree or the
/// index in a folder from the root down to a changed path — every source
/// libgit2 reads for a lookup. Existence is enough (nothing is read); a
/// file that cannot be checked counts as present.
fn attributes_may_apply(
    repo: &Repository,
    config: &git2::Config,
    global: &[PathBuf],
    deltas: &Deltas,
) -> Result<bool> {
    let present = |path: &Path| match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    };
    if global.iter().any(|p| present(p)) || present(&repo.commondir().join("info/attributes")) {
        return Ok(true);
    }
    if let Ok(path) = config.get_path("core.attributesFile")
        && present(&path)
    {
        return Ok(true);
    }
    let Some(root) = repo.workdir() else {
        return Ok(true);
    };
    let index = repo
        .index()
        .map_err(git_err(repo.path(), "cannot read the index"))?;
    let mut folders: BTreeSet<&[u8]> = BTreeSet::new();
    for path in deltas.keys() {
        folders.insert(b"");
        for (i, _) in path.iter().enumerate().filter(|(_, b)| **b == b'/') {
            folders.insert(path.get(..i).unwrap_or_default());
        }
    }
    for folder in folders {
        let mut name = folder.to_vec();
        if !name.is_empty() {
            name.push(b'/');
        }
        name.extend_from_slice(b".gitattributes");
        if present(&root.join(git_path(&name))) || index.get_path(git_path(&name), 0).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Prints one file's header and hunks.
fn print_file(
    path: &[u8],
    old: Option<(Oid, u32)>,
    new: Option<(Oid, u32)>,
    old_data: &[u8],
    new_data: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let what = git_path(path);
    let short = |side: Option<(Oid, u32)>| {
        let mut hex = side.map_or_else(|| Oid::zero().to_string(), |(id, _)| id.to_string());
        hex.truncate(ABBREV);
        hex
    };
    let p = String::from_utf8_lossy(path);
    let _ = writeln!(out, "diff --git a/{p} b/{p}");
    let (old_mode, new_mode) = (old.map_or(0, |(_, m)| m), new.map_or(0, |(_, m)| m));
    if old_mode == new_mode {
        let _ = writeln!(out, "index {}..{} {old_mode:o}", short(old), short(new));
    } else {
        if old.is_none() {
            let _ = writeln!(out, "new file mode {new_mode:o}");
        } else if new.is_none() {
            let _ = writeln!(out, "deleted file mode {old_mode:o}");
        } else {
            let _ = writeln!(out, "old mode {old_mode:o}");
            let _ = writeln!(out, "new mode {new_mode:o}");
        }
        if old.map(|(id, _)| id) != new.map(|(id, _)| id) {
            let _ = writeln!(out, "index {}..{}", short(old), short(new));
        }
    }
    if old.map(|(id, _)| id) == new.map(|(id, _)| id) {
        return Ok(()); // a mode change alone
    }
    let old_name = if old.is_some() {
        format!("a/{p}")
    } else {
        "/dev/null".to_owned()
    };
    let new_name = if new.is_some() {
        format!("b/{p}")
    } else {
        "/dev/null".to_owned()
    };
    let mut opts = DiffOptions::new();
    let patch = Patch::from_buffers(old_data, Some(what), new_data, Some(what), Some(&mut opts))
        .map_err(git_err(what, "cannot compute the patch"))?;
    if patch.delta().flags().is_binary() {
        let _ = writeln!(out, "Binary files {old_name} and {new_name} differ");
        return Ok(());
    }
    let _ = writeln!(out, "--- {old_name}");
    let _ = writeln!(out, "+++ {new_name}");
    let mut patch = patch;
    patch
        .print(&mut |_delta, _hunk, line| {
            match line.origin() {
                'F' | 'B' => {}
                o @ ('+' | '-' | ' ') => {
                    out.push(o as u8);
                    out.extend_from_slice(line.content());
                }
                _ => out.extend_from_slice(line.content()),
            }
            true
        })
        .map_err(git_err(what, "cannot print the patch"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_git_would_quote_take_the_tree_comparison() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::init(tmp.path()).unwrap();
        let id = repo.blob(b"x\n").unwrap();
        for name in [&b"tab\there"[..], b"quote\"d", "caf\u{e9}".as_bytes()] {
            let mut d = Deltas::new();
            d.insert(name.to_vec(), (None, Some((id, 0o100_644))));
            assert!(
                of_deltas(&repo, &ObjectBatch::new(), &d, None)
                    .unwrap()
                    .is_none()
            );
        }
        let mut d = Deltas::new();
        d.insert(b"plain name.txt".to_vec(), (None, Some((id, 0o100_644))));
        let patch = of_deltas(&repo, &ObjectBatch::new(), &d, None)
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8(patch).unwrap().starts_with(
                "diff --git a/plain name.txt b/plain name.txt\nnew file mode 100644\n"
            )
        );
    }
}
