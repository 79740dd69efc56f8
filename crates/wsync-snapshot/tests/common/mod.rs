//! Helpers shared by the integration tests of this crate.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

/// Removes a file, symlink or folder (whatever is there, if anything).
pub fn remove(path: &Path) {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).unwrap(),
        Ok(_) => std::fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
}

/// Makes room for a file at `abs`: files or symlinks standing where its
/// folders must be go away (the file ↔ folder transitions), so does a
/// folder at `abs` itself.
pub fn make_room(root: &Path, abs: &Path) {
    let rel = abs.strip_prefix(root).unwrap();
    let mut dir = root.to_path_buf();
    for comp in rel.parent().unwrap().components() {
        dir.push(comp);
        if dir.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&dir).unwrap();
        }
    }
    std::fs::create_dir_all(abs.parent().unwrap()).unwrap();
    remove(abs);
}
