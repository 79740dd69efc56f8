//! Property: a capture through a live (watched, O(changed)) scan records
//! exactly what a full scan records — the same working tree, the same
//! index tree, the same status count — after any sequence of file,
//! folder, link, rename, ignore-rule, stage and commit operations between
//! captures. Plus the fallbacks to a full scan.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::{make_room, remove};
use proptest::prelude::*;
use wsync_snapshot::{CaptureOptions, LiveOptions, LiveScan, Snapshot, SnapshotStore};
use wsync_testutils::{TestRepo, git_output};

const PATHS: &[&[u8]] = &[
    b"a.txt",
    b"dir/c.txt",
    b"dir/sub/d.sh",
    b"g",
    b"g/h.txt",
    b"n\xffo.txt",
    b"new/deep/x.txt",
    b"build/out.o",
];
const DIRS: &[&str] = &["dir", "dir/sub", "g", "new", "moved", "build"];
const CONTENTS: &[&[u8]] = &[b"", b"one\n", b"two\nlines\n", b"\x00\x01bin\xff", b"1234"];

#[derive(Debug, Clone)]
enum Op {
    Write(usize, usize),
    Delete(usize),
    Chmod(usize),
    Symlink(usize),
    RenameDir(usize, usize),
    RemoveDir(usize),
    Stage(usize),
    Commit,
    /// Rewrites `.gitignore` with one of a few rule sets.
    Gitignore(usize),
    /// Same-size rewrite of a file right after the index was written.
    SameSize(usize),
    /// Writes `.gitattributes` (at the root, or in one of `DIRS`) with one
    /// of a few rule sets that change how the patch prints files.
    Attributes(Option<usize>, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    let d = 0..DIRS.len();
    prop_oneof![
        5 => (p.clone(), 0..CONTENTS.len()).prop_map(|(a, b)| Op::Write(a, b)),
        2 => p.clone().prop_map(Op::Delete),
        1 => p.clone().prop_map(Op::Chmod),
        1 => p.clone().prop_map(Op::Symlink),
        2 => (d.clone(), d.clone()).prop_map(|(a, b)| Op::RenameDir(a, b)),
        1 => d.clone().prop_map(Op::RemoveDir),
        2 => p.clone().prop_map(Op::Stage),
        1 => Just(Op::Commit),
        1 => (0..3usize).prop_map(Op::Gitignore),
        1 => p.prop_map(Op::SameSize),
        1 => (prop::option::of(d.clone()), 0..3usize).prop_map(|(d, r)| Op::Attributes(d, r)),
    ]
}

fn rel(i: usize) -> &'static Path {
    Path::new(OsStr::from_bytes(PATHS[i]))
}

fn apply(repo: &TestRepo, op: &Op) {
    let root = repo.path();
    match op {
        Op::Write(p, c) => {
            let abs = root.join(rel(*p));
            make_room(root, &abs);
            std::fs::write(&abs, CONTENTS[*c]).unwrap();
        }
        Op::SameSize(p) => {
            let abs = root.join(rel(*p));
            if let Ok(bytes) = std::fs::read(&abs) {
                let flipped: Vec<u8> = bytes.iter().map(|b| b ^ 1).collect();
                std::fs::write(&abs, flipped).unwrap();
            }
        }
        Op::Delete(p) => remove(&root.join(rel(*p))),
        Op::Chmod(p) => {
            let abs = root.join(rel(*p));
            if let Ok(m) = abs.symlink_metadata()
                && m.is_file()
            {
                let mode = m.permissions().mode() ^ 0o111;
                std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        Op::Symlink(p) => {
            let abs = root.join(rel(*p));
            make_room(root, &abs);
            std::os::unix::fs::symlink("a.txt", &abs).unwrap();
        }
        Op::RenameDir(a, b) => {
            let (from, to) = (root.join(DIRS[*a]), root.join(DIRS[*b]));
            if from.symlink_metadata().is_ok_and(|m| m.is_dir())
                && !to.starts_with(&from)
                && to.symlink_metadata().is_err()
                && to.parent().unwrap().is_dir()
            {
                std::fs::rename(&from, &to).unwrap();
            }
        }
        Op::RemoveDir(d) => {
            let abs = root.join(DIRS[*d]);
            if abs.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&abs).unwrap();
            }
        }
        Op::Stage(p) => {
            // Fails (harmlessly) when the folder is neither on disk nor
            // in the index.
            let _ = git_output(
                root,
                &[
                    OsStr::new("add"),
                    OsStr::new("-A"),
                    OsStr::new("--"),
                    match rel(*p).parent().unwrap().as_os_str() {
                        d if d.is_empty() => OsStr::new("."),
                        d => d,
                    },
                ],
            );
        }
        Op::Commit => {
            repo.git(&["commit", "-q", "--allow-empty", "-m", "step"]);
        }
        Op::Gitignore(i) => {
            let rules: &[u8] = [&b""[..], b"build/\n", b"*.txt\n!a.txt\n"][*i];
            std::fs::write(root.join(".gitignore"), rules).unwrap();
        }
        Op::Attributes(d, i) => {
            let dir = d.map_or_else(|| root.to_path_buf(), |d| root.join(DIRS[d]));
            let rules: &[u8] = [&b"*.txt -diff\n"[..], b"*.sh binary\n", b"d.sh diff\n"][*i];
            if dir.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                std::fs::write(dir.join(".gitattributes"), rules).unwrap();
            }
        }
    }
}

/// The tree of a snapshot's commit and of its index commit.
fn trees(repo: &TestRepo, snap: &Snapshot) -> (String, String) {
    let r = git2::Repository::open(repo.path()).unwrap();
    let work = r
        .find_commit(git2::Oid::from_str(&snap.commit).unwrap())
        .unwrap();
    let index = r
        .find_commit(git2::Oid::from_str(&snap.meta.index_commit).unwrap())
        .unwrap();
    (work.tree_id().to_string(), index.tree_id().to_string())
}

fn live(repo: &TestRepo) -> (SnapshotStore, LiveScan) {
    std::fs::write(repo.path().join(".git/info/exclude"), "*.log\n").unwrap();
    let store = SnapshotStore::open(repo.path(), &repo.path().join(".wsync")).unwrap();
    let live = store
        .live(&LiveOptions {
            // As libgit2 in this process finds them.
            attribute_files: LiveOptions::attribute_files_from(
                std::env::var_os("XDG_CONFIG_HOME").as_deref(),
                std::env::var_os("HOME").as_deref(),
            ),
            ..LiveOptions::default()
        })
        .unwrap();
    (store, live)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn live_capture_equals_full_capture(
        unborn in any::<bool>(),
        rounds in prop::collection::vec(prop::collection::vec(op(), 0..6), 1..5),
    ) {
        let repo = if unborn { TestRepo::new() } else { TestRepo::with_commit() };
        let (store, mut live) = live(&repo);
        let opts = CaptureOptions::default();
        live.capture(&opts).unwrap();
        for round in &rounds {
            for o in round {
                apply(&repo, o);
            }
            let fast = live.capture(&opts).unwrap();
            let full = store.capture(&opts).unwrap();
            prop_assert_eq!(trees(&repo, &fast), trees(&repo, &full), "after {:?}", round);
            prop_assert_eq!(fast.meta.git_status_files, full.meta.git_status_files);
            // The patch written at capture compares only the changed
            // paths; regenerated from the objects it compares everything.
            let written = std::fs::read(store.file(&fast.id, "diff")).unwrap();
            std::fs::remove_file(store.file(&fast.id, "diff")).unwrap();
            let regenerated = store.diff(&fast.id).unwrap();
            prop_assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&regenerated)
            );
        }
        let stats = live.stats();
        prop_assert!(stats.watch_error.is_none(), "{:?}", stats);
        prop_assert_eq!(stats.full_scans + stats.incremental_scans, rounds.len() as u64 + 1);
        // Only ignore-rule edits force a full scan after the first one.
        let gitignore_rounds = rounds
            .iter()
            .filter(|r| r.iter().any(|o| matches!(o, Op::Gitignore(_))))
            .count() as u64;
        prop_assert!(stats.full_scans <= 1 + gitignore_rounds, "{:?}", stats);
    }
}

#[test]
fn later_captures_look_only_at_what_changed() {
    let repo = TestRepo::with_commit();
    for i in 0..200 {
        repo.write(format!("src/m{}/f{i}.rs", i % 10), format!("// {i}\n"));
    }
    repo.commit_all("many files");
    let (_store, mut live) = live(&repo);
    let opts = CaptureOptions::default();
    live.capture(&opts).unwrap();
    assert_eq!(live.stats().full_scans, 1);
    assert_eq!(
        live.stats().last_full_reason.as_deref(),
        Some("first capture")
    );

    repo.write("src/m3/f13.rs", "// edited\n");
    repo.write("notes.txt", "new\n");
    let snap = live.capture(&opts).unwrap();
    let stats = live.stats().clone();
    assert_eq!(stats.incremental_scans, 1, "{stats:?}");
    assert_eq!(snap.meta.git_status_files, 2);
    assert!(
        stats.last_candidates <= 4,
        "looked at {} paths",
        stats.last_candidates
    );

    // A new folder created between captures is watched from then on.
    repo.write("fresh/inner/a.txt", "a\n");
    let snap = live.capture(&opts).unwrap();
    assert_eq!(snap.meta.git_status_files, 3);
    repo.write("fresh/inner/a.txt", "changed\n");
    repo.write("fresh/inner/b.txt", "b\n");
    let snap = live.capture(&opts).unwrap();
    assert_eq!(snap.meta.git_status_files, 4);
    assert_eq!(live.stats().full_scans, 1, "{:?}", live.stats());
}

#[test]
fn ignore_rule_changes_and_invalidate_force_a_full_scan() {
    let repo = TestRepo::with_commit();
    let (_store, mut live) = live(&repo);
    let opts = CaptureOptions::default();
    live.capture(&opts).unwrap();
    repo.write("x.tmp", "x\n");
    live.capture(&opts).unwrap();
    assert_eq!(live.stats().incremental_scans, 1);

    std::fs::write(repo.path().join(".git/info/exclude"), "*.log\n*.tmp\n").unwrap();
    let snap = live.capture(&opts).unwrap();
    assert_eq!(live.stats().full_scans, 2);
    assert!(
        live.stats()
            .last_full_reason
            .as_deref()
            .is_some_and(|r| r.contains("exclude")),
        "{:?}",
        live.stats()
    );
    assert_eq!(snap.meta.git_status_files, 0, "x.tmp is ignored now");

    repo.write(".gitignore", "*.md\n");
    live.capture(&opts).unwrap();
    assert_eq!(live.stats().full_scans, 3);

    live.invalidate();
    live.capture(&opts).unwrap();
    assert_eq!(live.stats().full_scans, 4);
}

#[test]
fn periodic_full_scan() {
    let repo = TestRepo::with_commit();
    std::fs::write(repo.path().join(".git/info/exclude"), "*.log\n").unwrap();
    let store = SnapshotStore::open(repo.path(), &repo.path().join(".wsync")).unwrap();
    let mut live = store
        .live(&LiveOptions {
            full_scan_every: std::time::Duration::ZERO,
            ..LiveOptions::default()
        })
        .unwrap();
    let opts = CaptureOptions::default();
    live.capture(&opts).unwrap();
    live.capture(&opts).unwrap();
    assert_eq!(live.stats().full_scans, 2);
    assert_eq!(
        live.stats().last_full_reason.as_deref(),
        Some("periodic full scan")
    );
}

#[test]
fn a_writer_during_live_captures_is_never_missed() {
    // A separate thread keeps editing files while captures run; after it
    // stops, one more live capture must agree with a full one.
    let repo = TestRepo::with_commit();
    for i in 0..20 {
        repo.write(format!("w/f{i}.txt"), "0\n");
    }
    repo.commit_all("files");
    let (store, mut live) = live(&repo);
    let opts = CaptureOptions::default();
    live.capture(&opts).unwrap();
    let root = repo.path().to_path_buf();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let tmp = root.join(format!("w/.tmp{n}"));
                std::fs::write(&tmp, format!("{n}\n")).unwrap();
                std::fs::rename(&tmp, root.join(format!("w/f{}.txt", n % 20))).unwrap();
                if n.is_multiple_of(7) {
                    std::fs::create_dir_all(root.join(format!("w/d{}", n % 5))).unwrap();
                    std::fs::write(root.join(format!("w/d{}/g.txt", n % 5)), "g\n").unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    for _ in 0..10 {
        live.capture(&opts).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let fast = live.capture(&opts).unwrap();
    let full = store.capture(&opts).unwrap();
    assert_eq!(trees(&repo, &fast), trees(&repo, &full));
    assert!(live.stats().incremental_scans >= 10, "{:?}", live.stats());
}

#[test]
fn too_many_changes_between_captures_mean_a_full_scan() {
    let repo = TestRepo::with_commit();
    std::fs::write(repo.path().join(".git/info/exclude"), "*.log\n").unwrap();
    let store = SnapshotStore::open(repo.path(), &repo.path().join(".wsync")).unwrap();
    let mut live = store
        .live(&LiveOptions {
            max_recorded: 3,
            ..LiveOptions::default()
        })
        .unwrap();
    let opts = CaptureOptions::default();
    live.capture(&opts).unwrap();
    for i in 0..10 {
        repo.write(format!("f{i}.txt"), "x\n");
    }
    let snap = live.capture(&opts).unwrap();
    assert_eq!(snap.meta.git_status_files, 10);
    let stats = live.stats();
    assert_eq!(stats.full_scans, 2, "{stats:?}");
    assert_eq!(
        stats.last_full_reason.as_deref(),
        Some("more than 3 paths changed")
    );
    // Then incremental again.
    repo.write("f0.txt", "y\n");
    live.capture(&opts).unwrap();
    assert_eq!(live.stats().incremental_scans, 1);
}

/// Every place an attribute can come from makes the patch mark the file as
/// binary, as the tree comparison does; without attributes it has hunks.
#[test]
fn attributes_from_every_source_reach_the_patch() {
    type Setup = fn(&TestRepo);
    let cases: &[(&str, Setup)] = &[
        ("none", |_| {}),
        ("root .gitattributes", |r| {
            r.write(".gitattributes", "*.txt -diff\n");
        }),
        ("folder .gitattributes", |r| {
            r.write("dir/.gitattributes", "*.txt -diff\n");
        }),
        ("in the index only", |r| {
            r.write("dir/.gitattributes", "*.txt -diff\n");
            r.commit_all("attributes");
            std::fs::remove_file(r.path().join("dir/.gitattributes")).unwrap();
            r.git(&["update-index", "--assume-unchanged", "dir/.gitattributes"]);
        }),
        ("info/attributes", |r| {
            std::fs::write(r.path().join(".git/info/attributes"), "*.txt -diff\n").unwrap();
        }),
        ("core.attributesFile", |r| {
            let file = r.path().join(".git/my-attributes");
            std::fs::write(&file, "*.txt -diff\n").unwrap();
            r.git(&["config", "core.attributesFile", file.to_str().unwrap()]);
        }),
    ];
    for (what, setup) in cases {
        let repo = TestRepo::new();
        repo.write("dir/c.txt", "one\n");
        repo.write("a.txt", "one\n");
        repo.commit_all("base");
        // Before the scan starts: libgit2 reads `core.attributesFile` once
        // per repository object.
        setup(&repo);
        let (store, mut live) = live(&repo);
        live.capture(&CaptureOptions::default()).unwrap();
        repo.write("dir/c.txt", "one\ntwo\n");
        let snap = live.capture(&CaptureOptions::default()).unwrap();
        let written =
            String::from_utf8(std::fs::read(store.file(&snap.id, "diff")).unwrap()).unwrap();
        std::fs::remove_file(store.file(&snap.id, "diff")).unwrap();
        let regenerated = String::from_utf8(store.diff(&snap.id).unwrap()).unwrap();
        assert_eq!(written, regenerated, "{what}");
        let binary = written.contains("Binary files a/dir/c.txt and b/dir/c.txt differ");
        assert_eq!(binary, *what != "none", "{what}: {written}");
    }
}
