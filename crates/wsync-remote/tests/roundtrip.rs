//! Push, pull and three-way sync through an in-process `serve`.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{session, snapshot, sync, write};
use wsync_remote::{Error, SyncOptions};

fn every_kind(root: &Path) {
    write(root, "notes.txt", b"hello\n");
    write(root, "deep/a/b/c.txt", b"deep");
    write(root, "bin/run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(
        root.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("notes.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).unwrap();
    std::fs::create_dir_all(root.join("empty/dir")).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff.bin");
    std::fs::write(root.join(odd), b"latin-1 name").unwrap();
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    write(root, "big.bin", &big);
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::symlink_metadata(p).unwrap().modified().unwrap()
}

#[test]
fn push_then_pull_keeps_every_kind() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    every_kind(a.path());
    let mut s = session(a.path(), b.path());
    let r = s.push(&SyncOptions::default()).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(snapshot(a.path()), snapshot(b.path()));
    assert_eq!(
        mtime(&a.path().join("big.bin")),
        mtime(&b.path().join("big.bin"))
    );
    // Unchanged files are skipped without a transfer.
    let r = s.push(&SyncOptions::default()).unwrap();
    assert_eq!(r.files_sent, 0);
    assert!(r.unchanged >= 8);
    // One byte in the big file travels as a delta.
    let mut big = std::fs::read(a.path().join("big.bin")).unwrap();
    big[150_000] ^= 1;
    std::fs::write(a.path().join("big.bin"), &big).unwrap();
    let r = s.push(&SyncOptions::default()).unwrap();
    assert_eq!(r.files_sent, 1);
    assert!(r.matched_bytes > 290_000, "{r:?}");
    assert!(r.literal_bytes < 2_000, "{r:?}");
    assert_eq!(std::fs::read(b.path().join("big.bin")).unwrap(), big);
    s.close().unwrap();

    let mut s = session(c.path(), b.path());
    let r = s.pull(&SyncOptions::default()).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(snapshot(c.path()), snapshot(b.path()));
    s.close().unwrap();
}

#[test]
fn delete_flag_and_dry_run() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "keep.txt", b"k");
    write(b.path(), "extra/old.txt", b"o");
    let mut s = session(a.path(), b.path());
    s.push(&SyncOptions::default()).unwrap();
    assert!(
        b.path().join("extra/old.txt").exists(),
        "without --delete extras stay"
    );
    let dry = s
        .push(&SyncOptions {
            delete: true,
            dry_run: true,
            ..SyncOptions::default()
        })
        .unwrap();
    assert!(
        dry.plan
            .iter()
            .any(|p| p.action == "delete-remote" && p.path == "extra/old.txt")
    );
    assert!(
        b.path().join("extra/old.txt").exists(),
        "dry run changes nothing"
    );
    s.push(&SyncOptions {
        delete: true,
        ..SyncOptions::default()
    })
    .unwrap();
    assert_eq!(snapshot(a.path()), snapshot(b.path()));
    s.close().unwrap();
}

#[test]
fn sync_propagates_and_keeps_both_sides_of_a_conflict() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "one.txt", b"1");
    write(a.path(), "two.txt", b"2");
    write(b.path(), "three.txt", b"3");
    sync(a.path(), b.path());
    assert_eq!(snapshot(a.path()), snapshot(b.path()));
    assert_eq!(snapshot(a.path()).len(), 3);

    // A deletion propagates; an edit beats a deletion.
    std::fs::remove_file(a.path().join("one.txt")).unwrap();
    std::fs::remove_file(a.path().join("two.txt")).unwrap();
    write(b.path(), "two.txt", b"edited on b");
    sync(a.path(), b.path());
    assert!(!b.path().join("one.txt").exists());
    assert_eq!(
        std::fs::read(a.path().join("two.txt")).unwrap(),
        b"edited on b"
    );

    // Both sides edit: newer wins the name, older is kept as a copy on both.
    write(a.path(), "three.txt", b"older edit on a");
    let f = std::fs::File::options()
        .write(true)
        .open(a.path().join("three.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
        .unwrap();
    write(b.path(), "three.txt", b"newer edit on b");
    let r = sync(a.path(), b.path());
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(snapshot(a.path()), snapshot(b.path()));
    assert_eq!(
        std::fs::read(a.path().join("three.txt")).unwrap(),
        b"newer edit on b"
    );
    let copy = a.path().join(&r.conflicts[0].copy);
    assert_eq!(std::fs::read(copy).unwrap(), b"older edit on a");
    assert!(r.conflicts[0].copy.starts_with("three.sync-conflict-"));
    assert_eq!(wsync_remote::list_conflicts(b.path()).unwrap().len(), 1);
    // A second run is quiet.
    let r = sync(a.path(), b.path());
    assert_eq!(r.files_sent + r.files_received + r.deleted, 0, "{r:?}");
}

#[test]
fn type_changes_are_handled() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "x", b"file");
    write(a.path(), "d/inner.txt", b"i");
    sync(a.path(), b.path());
    // file -> folder and folder -> file on one side.
    std::fs::remove_file(a.path().join("x")).unwrap();
    write(a.path(), "x/y.txt", b"now a folder");
    std::fs::remove_dir_all(a.path().join("d")).unwrap();
    write(a.path(), "d", b"now a file");
    let r = sync(a.path(), b.path());
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(snapshot(a.path()), snapshot(b.path()));
    assert_eq!(std::fs::read(b.path().join("d")).unwrap(), b"now a file");
}

#[test]
fn vanished_or_emptied_root_halts() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "f1", b"1");
    write(a.path(), "sub/f2", b"2");
    sync(a.path(), b.path());
    // Emptied local root.
    std::fs::remove_dir_all(a.path().join("sub")).unwrap();
    std::fs::remove_file(a.path().join("f1")).unwrap();
    let mut s = session(a.path(), b.path());
    let err = s.sync(&SyncOptions::default()).unwrap_err();
    assert!(matches!(err, Error::MassDelete { .. }), "{err}");
    assert!(err.to_string().contains("--allow-mass-delete"));
    assert!(b.path().join("sub/f2").exists());
    s.close().unwrap();
    // Vanished (unmounted) remote root: its state copy went with it.
    write(a.path(), "f1", b"1");
    let parked = tempfile::tempdir().unwrap();
    std::fs::rename(b.path(), parked.path().join("b")).unwrap();
    let mut s = session(a.path(), b.path());
    let err = s.sync(&SyncOptions::default()).unwrap_err();
    assert!(matches!(err, Error::MassDelete { .. }), "{err}");
    s.close().unwrap();
    assert!(!b.path().exists(), "a vanished root is not recreated");
    std::fs::rename(parked.path().join("b"), b.path()).unwrap();
    std::fs::remove_file(a.path().join("f1")).unwrap();
    // With the override, the deletion goes through.
    let mut s = session(a.path(), b.path());
    s.sync(&SyncOptions {
        allow_mass_delete: true,
        ..SyncOptions::default()
    })
    .unwrap();
    s.close().unwrap();
    assert!(!b.path().join("f1").exists());
}

#[test]
fn excludes_defaults_vcs_and_ignore_file() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "src/main.rs", b"fn main() {}");
    write(a.path(), "target/debug/app", b"binary");
    write(a.path(), "node_modules/x/index.js", b"js");
    write(a.path(), ".git/HEAD", b"ref: refs/heads/main");
    write(a.path(), ".wsyncignore", b"*.log\n");
    write(a.path(), "run.log", b"log");
    let mut s = session(a.path(), b.path());
    s.push(&SyncOptions {
        excludes: vec!["secret/".into()],
        ..SyncOptions::default()
    })
    .unwrap();
    write(a.path(), "secret/key", b"k");
    s.push(&SyncOptions {
        excludes: vec!["secret/".into()],
        ..SyncOptions::default()
    })
    .unwrap();
    let got = snapshot(b.path());
    let names: Vec<String> = got
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        names,
        vec![".wsyncignore", "src", "src/main.rs"],
        "{names:?}"
    );
    s.push(&SyncOptions {
        include_vcs: true,
        ..SyncOptions::default()
    })
    .unwrap();
    assert!(b.path().join(".git/HEAD").exists());
    s.close().unwrap();
}

#[test]
fn exec_bit_and_mtime_changes_propagate() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "tool", b"#!/bin/sh\n");
    sync(a.path(), b.path());
    std::fs::set_permissions(
        a.path().join("tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    sync(a.path(), b.path());
    let mode = std::fs::metadata(b.path().join("tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "{mode:o}");
    assert_eq!(mode & 0o7000, 0, "never setuid/setgid/sticky");
    assert_eq!(mtime(&a.path().join("tool")), mtime(&b.path().join("tool")));
}

#[test]
fn same_size_edit_within_the_same_mtime_tick_is_seen() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "racy.txt", b"version 1");
    sync(a.path(), b.path());
    // Same size, same mtime: only the content differs (as when an editor
    // saves twice within one timestamp tick right after a sync).
    let p = b.path().join("racy.txt");
    let before = mtime(&p);
    std::fs::write(&p, b"version 2").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(before)
        .unwrap();
    let r = sync(a.path(), b.path());
    assert_eq!(r.files_received, 1, "{r:?}");
    assert_eq!(
        std::fs::read(a.path().join("racy.txt")).unwrap(),
        b"version 2"
    );
}

#[test]
fn scoped_rounds_touch_only_their_paths() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "in/one.txt", b"1");
    write(a.path(), "in/deep/two.txt", b"2");
    write(a.path(), "out.txt", b"o");
    sync(a.path(), b.path());
    write(a.path(), "in/deep/two.txt", b"2 edited");
    write(a.path(), "out.txt", b"o edited");
    std::fs::remove_file(b.path().join("in/one.txt")).unwrap();
    let mut s = session(a.path(), b.path());
    let r = s
        .sync_paths(&SyncOptions::default(), &[b"in".to_vec()])
        .unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(
        std::fs::read(b.path().join("in/deep/two.txt")).unwrap(),
        b"2 edited"
    );
    assert!(
        !a.path().join("in/one.txt").exists(),
        "the deletion inside the scope propagated"
    );
    assert_eq!(
        std::fs::read(b.path().join("out.txt")).unwrap(),
        b"o",
        "outside the scope"
    );
    // A full round afterwards picks up the rest, with nothing lost.
    let r = s.sync(&SyncOptions::default()).unwrap();
    assert_eq!(r.files_sent, 1, "{r:?}");
    assert!(r.conflicts.is_empty());
    s.close().unwrap();
    assert_eq!(snapshot(a.path()), snapshot(b.path()));
}

/// A round that ends with the state both sides already store writes
/// nothing (no transfer, no fsync); any change writes it again.
#[test]
fn unchanged_state_is_not_rewritten() {
    use std::os::unix::fs::MetadataExt;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write(a.path(), "one.txt", b"1");
    write(b.path(), "two.txt", b"2");
    let inodes = |root: &Path| -> Vec<u64> {
        std::fs::read_dir(root.join(".wsync/remote"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().ino())
            .collect()
    };
    sync(a.path(), b.path());
    // Written with a hash for just-modified files; once those are old
    // enough the state settles.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    sync(a.path(), b.path());
    let (la, lb) = (inodes(a.path()), inodes(b.path()));
    assert_eq!((la.len(), lb.len()), (1, 1));
    let r = sync(a.path(), b.path());
    assert_eq!(r.files_sent + r.files_received, 0);
    assert_eq!(
        (inodes(a.path()), inodes(b.path())),
        (la.clone(), lb.clone())
    );
    write(a.path(), "three.txt", b"3");
    sync(a.path(), b.path());
    assert_ne!(inodes(a.path()), la);
    assert_ne!(inodes(b.path()), lb);
    assert_eq!(std::fs::read(b.path().join("three.txt")).unwrap(), b"3");
}

#[test]
fn a_sessions_mode_server_serves_one_session_after_another() {
    use wsync_remote::serve::{ServeOptions, serve};
    use wsync_remote::wire::{self, Preamble, Request, Response};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write(&root, "a.txt", b"a");
    let scan = Request::Scan {
        excludes: Vec::new(),
        include_vcs: false,
    };
    let mut input = Vec::new();
    for _ in 0..2 {
        wire::write_preamble(&mut input).unwrap();
        wire::write_msg(&mut input, &scan).unwrap();
        wire::write_msg(&mut input, &Request::EndSession).unwrap();
    }
    let mut output = Vec::new();
    let opts = ServeOptions {
        sessions: true,
        ..ServeOptions::default()
    };
    serve(&root, std::io::Cursor::new(input), &mut output, &opts).unwrap();
    let mut r = std::io::Cursor::new(output);
    for _ in 0..2 {
        assert!(matches!(
            wire::read_preamble(&mut r).unwrap(),
            Preamble::Version(wire::PROTOCOL_VERSION)
        ));
        let mut kinds = Vec::new();
        loop {
            let (resp, _) = wire::read_msg::<_, Response>(&mut r).unwrap();
            let end = resp == Response::SessionEnd;
            kinds.push(match resp {
                Response::Hello { .. } => "hello",
                Response::ScanChunk(_) => "chunk",
                Response::ScanEnd { .. } => "end",
                Response::SessionEnd => "session-end",
                _ => "other",
            });
            if end {
                break;
            }
        }
        assert_eq!(kinds.first(), Some(&"hello"));
        assert_eq!(kinds.last(), Some(&"session-end"));
        assert!(kinds.contains(&"end"), "{kinds:?}");
    }
    // Nothing after the second session: the end of the input ended it.
    assert!(matches!(
        wire::read_msg::<_, Response>(&mut r),
        Err(wire::FrameError::Closed)
    ));
}
