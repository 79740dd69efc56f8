//! Property: capture → more random changes → restore gives back exactly the
//! captured tree (bytes, exec bits, symlinks), index and HEAD; restoring the
//! safety snapshot gives back exactly the later state. Capture itself
//! changes nothing, and ignored files are never touched.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use common::{make_room, remove};
use proptest::prelude::*;
use wsync_snapshot::{CaptureOptions, RestoreOptions, SnapshotStore};
use wsync_testutils::{TestRepo, git_output};

const PATHS: &[&[u8]] = &[
    b"a.txt",
    b"b.bin",
    b"dir/c.txt",
    b"dir/sub/d.sh",
    b"e f.txt",
    b"g",
    b"g/h.txt",
    b"n\xffo.txt",
];
const CONTENTS: &[&[u8]] = &[
    b"",
    b"one\n",
    b"two\nlines\n",
    b"\x00\x01binary\xff\xfe",
    b"no newline at end",
];
const TARGETS: &[&str] = &["a.txt", "missing", "dir", "../outside"];

#[derive(Debug, Clone)]
enum Op {
    Write(usize, usize),
    Delete(usize),
    Chmod(usize),
    Symlink(usize, usize),
    Stage(usize),
    Commit,
    Ignored(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        4 => (p.clone(), 0..CONTENTS.len()).prop_map(|(a, b)| Op::Write(a, b)),
        2 => p.clone().prop_map(Op::Delete),
        1 => p.clone().prop_map(Op::Chmod),
        1 => (p.clone(), 0..TARGETS.len()).prop_map(|(a, b)| Op::Symlink(a, b)),
        2 => p.prop_map(Op::Stage),
        1 => Just(Op::Commit),
        1 => (0..3usize, 0..CONTENTS.len()).prop_map(|(a, b)| Op::Ignored(a, b)),
    ]
}

fn rel(i: usize) -> &'static Path {
    Path::new(OsStr::from_bytes(PATHS[i]))
}

fn apply(repo: &TestRepo, op: &Op) {
    match op {
        Op::Write(p, c) => {
            let abs = repo.path().join(rel(*p));
            make_room(repo.path(), &abs);
            std::fs::write(&abs, CONTENTS[*c]).unwrap();
        }
        Op::Delete(p) => remove(&repo.path().join(rel(*p))),
        Op::Chmod(p) => {
            let abs = repo.path().join(rel(*p));
            if let Ok(m) = abs.symlink_metadata()
                && m.is_file()
            {
                let mode = m.permissions().mode() ^ 0o111;
                std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        Op::Symlink(p, t) => {
            let abs = repo.path().join(rel(*p));
            make_room(repo.path(), &abs);
            std::os::unix::fs::symlink(TARGETS[*t], &abs).unwrap();
        }
        Op::Stage(p) => {
            let r = rel(*p);
            let on_disk = repo.path().join(r).symlink_metadata().is_ok();
            let in_index = !git_output(
                repo.path(),
                &[OsStr::new("ls-files"), OsStr::new("--"), r.as_os_str()],
            )
            .stdout
            .is_empty();
            if on_disk || in_index {
                repo.git(&[
                    OsStr::new("add"),
                    OsStr::new("-A"),
                    OsStr::new("--"),
                    r.as_os_str(),
                ]);
            }
        }
        Op::Commit => {
            repo.git(&["commit", "-q", "--allow-empty", "-m", "step"]);
        }
        Op::Ignored(i, c) => {
            repo.write(format!("ign{i}.log"), CONTENTS[*c]);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { bytes: Vec<u8>, exec: bool },
    Link(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    files: BTreeMap<PathBuf, Node>,
    ignored: BTreeMap<PathBuf, Node>,
    index: Vec<u8>,
    head: Vec<u8>,
    head_ref: Vec<u8>,
}

fn walk(root: &Path, dir: &Path, state: &mut State) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        if rel == Path::new(".git") || rel == Path::new(".wsync") {
            continue;
        }
        let m = p.symlink_metadata().unwrap();
        let node = if m.file_type().is_symlink() {
            Node::Link(std::fs::read_link(&p).unwrap())
        } else if m.is_dir() {
            walk(root, &p, state);
            continue;
        } else {
            Node::File {
                bytes: std::fs::read(&p).unwrap(),
                exec: m.permissions().mode() & 0o100 != 0,
            }
        };
        if rel.extension() == Some(OsStr::new("log")) {
            state.ignored.insert(rel, node);
        } else {
            state.files.insert(rel, node);
        }
    }
}

fn state(repo: &TestRepo) -> State {
    let mut s = State {
        files: BTreeMap::new(),
        ignored: BTreeMap::new(),
        index: git_output(repo.path(), &["ls-files", "-s", "-z"]).stdout,
        head: git_output(repo.path(), &["rev-parse", "-q", "--verify", "HEAD"]).stdout,
        head_ref: git_output(repo.path(), &["symbolic-ref", "-q", "HEAD"]).stdout,
    };
    walk(repo.path(), repo.path(), &mut s);
    s
}

fn raw(repo: &TestRepo) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let read = |p: &str| std::fs::read(repo.path().join(p)).unwrap_or_default();
    // `git status` may refresh the index; this one must not write.
    let status = git_output(
        repo.path(),
        &[
            "--no-optional-locks",
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
        ],
    )
    .stdout;
    (read(".git/index"), read(".git/logs/HEAD"), status)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn restore_is_exact_and_undoable(
        unborn in any::<bool>(),
        before in prop::collection::vec(op(), 0..10),
        after in prop::collection::vec(op(), 1..10),
    ) {
        let repo = if unborn { TestRepo::new() } else { TestRepo::with_commit() };
        std::fs::write(repo.path().join(".git/info/exclude"), "/.wsync/\n*.log\n").unwrap();
        for o in &before {
            apply(&repo, o);
        }
        let store = SnapshotStore::open(repo.path(), &repo.path().join(".wsync")).unwrap();
        let at_capture = state(&repo);
        let raw_before = raw(&repo);
        let snap = store.capture(&CaptureOptions::default()).unwrap();
        prop_assert_eq!(&state(&repo), &at_capture, "capture changed the workspace");
        prop_assert_eq!(raw(&repo), raw_before, "capture changed index, reflog or status");

        for o in &after {
            apply(&repo, o);
        }
        let later = state(&repo);
        let report = store.restore(&snap.id, &RestoreOptions::default()).unwrap();
        let restored = state(&repo);
        prop_assert_eq!(&restored.files, &at_capture.files);
        prop_assert_eq!(&restored.index, &at_capture.index);
        prop_assert_eq!(&restored.head, &at_capture.head);
        prop_assert_eq!(&restored.head_ref, &at_capture.head_ref);
        prop_assert_eq!(&restored.ignored, &later.ignored, "ignored files were touched");

        store.restore(&report.safety.id, &RestoreOptions::default()).unwrap();
        prop_assert_eq!(&state(&repo), &later, "restoring the safety snapshot");
    }
}
