//! Edge cases: concurrent writers, unborn HEAD, bundles, odd names, large
//! files, merges in progress, retention, verification.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wsync_snapshot::{CaptureOptions, Error, RestoreOptions, Retention, SnapshotStore};
use wsync_testutils::{TestRepo, git, git_output};

fn store(repo: &TestRepo) -> SnapshotStore {
    std::fs::write(repo.path().join(".git/info/exclude"), "/.wsync/\n").unwrap();
    SnapshotStore::open(repo.path(), &repo.path().join(".wsync")).unwrap()
}

fn capture(st: &SnapshotStore) -> wsync_snapshot::Snapshot {
    st.capture(&CaptureOptions::default()).unwrap()
}

fn blob(repo: &TestRepo, commit: &str, path: &str) -> Vec<u8> {
    let out = git_output(
        repo.path(),
        &["cat-file", "blob", &format!("{commit}:{path}")],
    );
    assert!(out.status.success(), "{path} missing in {commit}");
    out.stdout
}

/// Version `n` of the hot file: large enough that a torn read shows.
fn version(n: u64) -> Vec<u8> {
    let mut v = format!("version {n}\n").into_bytes();
    let line = format!("filler line of version {n:>12}\n");
    while v.len() < 256 * 1024 {
        v.extend_from_slice(line.as_bytes());
    }
    v.extend_from_slice(format!("end {n}\n").as_bytes());
    v
}

fn is_whole_version(bytes: &[u8]) -> bool {
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let Some(n) = std::str::from_utf8(first)
        .ok()
        .and_then(|l| l.strip_prefix("version "))
        .and_then(|n| n.parse().ok())
    else {
        return false;
    };
    bytes == version(n)
}

fn writer_during_captures() {
    let repo = TestRepo::with_commit();
    repo.write("hot.txt", version(0));
    repo.commit_all("hot");
    let st = store(&repo);
    let stop = Arc::new(AtomicBool::new(false));
    let path = repo.path().join("hot.txt");
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                let tmp = path.with_extension("tmp~");
                std::fs::write(&tmp, version(n)).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                n += 1;
            }
            n
        })
    };
    for _ in 0..8 {
        let snap = capture(&st);
        let bytes = blob(&repo, &snap.commit, "hot.txt");
        assert!(
            is_whole_version(&bytes),
            "torn capture ({} bytes)",
            bytes.len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 2, "the writer barely ran");
}

#[test]
fn writer_thread_replacing_by_rename_is_captured_whole() {
    writer_during_captures();
}

#[test]
fn writer_process_replacing_by_rename_is_captured_whole() {
    let repo = TestRepo::with_commit();
    repo.write("hot.txt", version(0));
    repo.commit_all("hot");
    let st = store(&repo);
    // Complete versions prepared outside the work tree; a shell loop copies
    // each to a temp file and renames it over hot.txt, as fast as it can.
    let versions = tempfile::tempdir().unwrap();
    for n in 1..=3 {
        std::fs::write(versions.path().join(format!("v{n}")), version(n)).unwrap();
    }
    let script = "while :; do for v in v1 v2 v3; do cp \"$V/$v\" hot.tmp~ && mv -f hot.tmp~ hot.txt; done; done";
    let child = std::process::Command::new("sh")
        .args(["-c", script])
        .env("V", versions.path())
        .current_dir(repo.path())
        .spawn()
        .unwrap();
    let mut child = wsync_testutils::KillOnDrop(child);
    std::thread::sleep(Duration::from_millis(50));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let snap = capture(&st);
        let bytes = blob(&repo, &snap.commit, "hot.txt");
        assert!(
            is_whole_version(&bytes),
            "torn capture ({} bytes)",
            bytes.len()
        );
        seen.insert(bytes.get(..12).unwrap().to_vec());
    }
    child.kill();
    assert!(!seen.is_empty());
}

#[test]
fn unborn_repository_capture_and_restore() {
    let repo = TestRepo::new();
    let st = store(&repo);
    repo.write("first.txt", "1\n");
    repo.write("second.txt", "2\n");
    repo.git(&["add", "first.txt"]);
    let snap = capture(&st);
    assert_eq!(snap.meta.git_commit, None);
    assert_eq!(snap.meta.head_ref.as_deref(), Some("refs/heads/main"));
    assert_eq!(
        repo.git(&["rev-list", "--count", "--parents", &snap.commit])
            .trim(),
        "2"
    );
    // Move on: commit, change, add.
    repo.commit_all("now born");
    repo.write("third.txt", "3\n");
    st.restore(&snap.id, &RestoreOptions::default()).unwrap();
    assert!(
        git_output(repo.path(), &["rev-parse", "-q", "--verify", "HEAD"])
            .stdout
            .is_empty()
    );
    assert_eq!(repo.git(&["ls-files"]), "first.txt\n");
    assert!(!repo.exists("third.txt"));
    assert_eq!(repo.read("second.txt"), "2\n");
}

#[test]
fn bundle_verifies_and_fetches_into_a_fresh_clone() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    repo.write("README.md", "# changed\n");
    repo.write("new/file.txt", "untracked\n");
    let snap = st
        .capture(&CaptureOptions {
            bundle: true,
            ..CaptureOptions::default()
        })
        .unwrap();
    let bundle = st.file(&snap.id, "bundle");
    let b = bundle.to_str().unwrap();
    git(repo.path(), &["bundle", "verify", "-q", b]);
    let report = st.verify(&snap.id).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.bundle_verified, Some(true));

    let fresh = TestRepo::new();
    let refname = format!("refs/wsync/snapshots/{}", snap.id);
    git(
        fresh.path(),
        &["fetch", "-q", b, &format!("{refname}:{refname}")],
    );
    assert_eq!(fresh.git(&["rev-parse", &refname]).trim(), snap.commit);
    assert_eq!(blob(&fresh, &refname, "new/file.txt"), b"untracked\n");
    assert_eq!(blob(&fresh, &refname, "README.md"), b"# changed\n");
}

#[test]
fn non_utf8_names_round_trip() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    let tracked = Path::new(OsStr::from_bytes(b"caf\xe9.txt"));
    let untracked = Path::new(OsStr::from_bytes(b"d\xff/n\xfe.bin"));
    repo.write(tracked, "tracked\n");
    repo.commit_all("latin-1 name");
    repo.write(tracked, "modified\n");
    repo.write(untracked, b"\x00\x01");
    let snap = capture(&st);
    std::fs::remove_file(repo.path().join(tracked)).unwrap();
    std::fs::remove_dir_all(repo.path().join(untracked.parent().unwrap())).unwrap();
    st.restore(&snap.id, &RestoreOptions::default()).unwrap();
    assert_eq!(repo.read_bytes(tracked), b"modified\n");
    assert_eq!(repo.read_bytes(untracked), b"\x00\x01");
    let patch = st.diff(&snap.id).unwrap();
    assert!(
        patch.windows(7).any(|w| w == b"tracked"),
        "patch lacks the change"
    );
}

#[test]
fn large_file_is_streamed_and_restored() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    let big: Vec<u8> = (0..(5u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    repo.write("big.bin", &big);
    let snap = capture(&st);
    repo.write("big.bin", "small now");
    st.restore(&snap.id, &RestoreOptions::default()).unwrap();
    assert!(repo.read_bytes("big.bin") == big);
    let patch = String::from_utf8_lossy(&st.diff(&snap.id).unwrap()).into_owned();
    assert!(patch.contains("Binary files"), "binary not marked: {patch}");
}

fn conflicted_merge(repo: &TestRepo) {
    repo.write("c.txt", "base\n");
    repo.commit_all("base");
    repo.git(&["checkout", "-q", "-b", "other"]);
    repo.write("c.txt", "theirs\n");
    repo.commit_all("theirs");
    repo.git(&["checkout", "-q", "main"]);
    repo.write("c.txt", "ours\n");
    repo.commit_all("ours");
    let out = git_output(repo.path(), &["merge", "-q", "other"]);
    assert!(!out.status.success(), "the merge should conflict");
    assert!(repo.path().join(".git/MERGE_HEAD").exists());
}

#[test]
fn restore_refuses_during_a_merge_unless_forced() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    repo.write("x.txt", "x\n");
    let snap = capture(&st);
    let head = repo.head();
    conflicted_merge(&repo);
    let err = st
        .restore(&snap.id, &RestoreOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::OperationInProgress { .. }), "{err}");
    assert!(err.to_string().contains("merge"), "{err}");
    // Forced: the failed merge is rolled back (the coordinator's rollback).
    let report = st
        .restore(
            &snap.id,
            &RestoreOptions {
                force: true,
                ..RestoreOptions::default()
            },
        )
        .unwrap();
    assert!(!repo.path().join(".git/MERGE_HEAD").exists());
    assert_eq!(repo.head(), head);
    assert!(!repo.exists("c.txt"));
    assert_eq!(repo.read("x.txt"), "x\n");
    assert_eq!(
        repo.git(&["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/main"
    );
    // The safety snapshot kept the conflicted file with its markers.
    let safety = st.meta(&report.safety.id).unwrap();
    assert_eq!(safety.conflicted, vec!["c.txt".to_owned()]);
    let kept = String::from_utf8(blob(&repo, &safety.snapshot_commit, "c.txt")).unwrap();
    assert!(kept.contains("<<<<<<<"), "{kept}");
}

#[test]
fn files_only_leaves_head_and_index() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    repo.write("f.txt", "at capture\n");
    let snap = capture(&st);
    repo.write("f.txt", "later\n");
    let head = repo.commit_all("later");
    let index = std::fs::read(repo.path().join(".git/index")).unwrap();
    st.restore(
        &snap.id,
        &RestoreOptions {
            files_only: true,
            force: false,
        },
    )
    .unwrap();
    assert_eq!(repo.read("f.txt"), "at capture\n");
    assert_eq!(repo.head(), head);
    assert_eq!(
        std::fs::read(repo.path().join(".git/index")).unwrap(),
        index
    );
}

#[test]
fn state_folder_inside_the_workspace_is_never_captured_or_removed() {
    let repo = TestRepo::with_commit();
    // No exclude rule: the store must still keep its own folder out.
    let st = SnapshotStore::open(repo.path(), &repo.path().join(".wsync")).unwrap();
    let first = capture(&st);
    let tree = repo.git(&["ls-tree", "-r", "--name-only", &first.commit]);
    assert_eq!(tree, "README.md\n");
    let second = capture(&st);
    st.restore(&first.id, &RestoreOptions::default()).unwrap();
    assert!(st.file(&second.id, "meta").exists());
    assert_eq!(st.list().unwrap().len(), 3);
}

#[test]
fn ids_are_unique_and_listed_newest_first() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    let ids: Vec<String> = (0..4).map(|_| capture(&st).id).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 4);
    let pid = std::process::id().to_string();
    assert!(
        ids.iter()
            .all(|id| id.starts_with("sync_") && id.contains(&pid))
    );
    let listed: Vec<String> = st
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.snapshot_id)
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    assert_eq!(st.latest().unwrap().unwrap().snapshot_id, ids[3]);
}

#[test]
fn cleanup_removes_refs_and_files_together() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    let ids: Vec<String> = (0..5).map(|_| capture(&st).id).collect();
    st.write_result(&ids[0], &serde_json::json!({"ok": true}))
        .unwrap();
    let report = st
        .cleanup(&Retention {
            keep: 2,
            max_age: None,
        })
        .unwrap();
    assert_eq!(report.kept, 2);
    assert_eq!(report.removed.len(), 3);
    for id in &ids[..3] {
        for ext in ["meta", "diff", "result"] {
            assert!(!st.file(id, ext).exists(), "{id}.{ext} left behind");
        }
        let r = git_output(
            repo.path(),
            &[
                "rev-parse",
                "-q",
                "--verify",
                &format!("refs/wsync/snapshots/{id}"),
            ],
        );
        assert!(!r.status.success(), "ref of {id} left behind");
    }
    let left: Vec<String> = st
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.snapshot_id)
        .collect();
    assert_eq!(left, vec![ids[4].clone(), ids[3].clone()]);
    let report = st
        .cleanup(&Retention {
            keep: 10,
            max_age: Some(Duration::ZERO),
        })
        .unwrap();
    assert_eq!(report.removed.len(), 2);
    assert!(st.list().unwrap().is_empty());
}

#[test]
fn result_is_written_and_shown() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    let snap = capture(&st);
    st.write_result(&snap.id, &serde_json::json!({"status": "pushed"}))
        .unwrap();
    let info = st.show(&snap.id).unwrap();
    assert_eq!(info.result, Some(serde_json::json!({"status": "pushed"})));
    assert!(info.ref_present);
    assert_eq!(info.files.len(), 3);
}

#[test]
fn verify_reports_a_missing_object() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    repo.write("only-here.txt", "unique content 8c1f\n");
    let snap = capture(&st);
    assert!(st.verify(&snap.id).unwrap().is_ok());
    let oid = repo.git(&["rev-parse", &format!("{}:only-here.txt", snap.commit)]);
    let oid = oid.trim();
    // Snapshot objects are stored as a pack: turn them into loose objects
    // (out of the repository first, or git skips the ones it has).
    let packs = repo.path().join(".git/objects/pack");
    for entry in std::fs::read_dir(&packs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "pack") {
            let bytes = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            std::fs::remove_file(path.with_extension("idx")).unwrap();
            let mut child = std::process::Command::new("git")
                .arg("-C")
                .arg(repo.path())
                .args(["unpack-objects", "-q"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), &bytes).unwrap();
            assert!(child.wait().unwrap().success());
        }
    }
    let loose = repo
        .path()
        .join(format!(".git/objects/{}/{}", &oid[..2], &oid[2..]));
    std::fs::remove_file(loose).unwrap();
    let report = st.verify(&snap.id).unwrap();
    assert!(!report.is_ok());
    assert!(
        report.problems.iter().any(|p| p.contains(oid)),
        "{:?}",
        report.problems
    );
}

#[test]
fn bad_ids_are_rejected() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    let err = st
        .restore("../../etc", &RestoreOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::BadId { .. }), "{err}");
}

#[test]
fn ignored_file_in_the_way_is_moved_aside_not_lost() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    repo.write("data.log", "tracked log\n");
    repo.git(&["add", "data.log"]);
    let snap = capture(&st);
    repo.git(&["rm", "-q", "--cached", "data.log"]);
    std::fs::write(repo.path().join(".git/info/exclude"), "/.wsync/\n*.log\n").unwrap();
    repo.write("data.log", "precious ignored\n");
    let report = st.restore(&snap.id, &RestoreOptions::default()).unwrap();
    assert_eq!(repo.read("data.log"), "tracked log\n");
    assert_eq!(report.displaced, vec![std::path::PathBuf::from("data.log")]);
    let aside = st
        .snapshots_dir()
        .join(format!("{}.displaced/data.log", report.safety.id));
    assert_eq!(
        std::fs::read_to_string(aside).unwrap(),
        "precious ignored\n"
    );
}

#[test]
fn capture_in_uses_the_callers_repository_and_leaves_its_index_as_the_file_has_it() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    let other = TestRepo::with_commit();
    let theirs = git2::Repository::open(other.path()).unwrap();
    let err = st
        .capture_in(&theirs, &CaptureOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::NotARepository { .. }), "{err}");
    assert!(err.to_string().contains("another work tree"), "{err}");

    // The caller's repository, its index read once and still usable after.
    let mine = git2::Repository::open(repo.path()).unwrap();
    repo.write("a.txt", "new\n");
    repo.git(&["add", "a.txt"]);
    repo.write("a.txt", "newer\n");
    let index_bytes = std::fs::read(repo.path().join(".git/index")).unwrap();
    let snap = st.capture_in(&mine, &CaptureOptions::default()).unwrap();
    assert_eq!(blob(&repo, &snap.commit, "a.txt"), b"newer\n");
    assert_eq!(blob(&repo, &snap.meta.index_commit, "a.txt"), b"new\n");
    let index = mine.index().unwrap();
    assert!(index.get_path(Path::new("a.txt"), 0).is_some());
    assert_eq!(
        std::fs::read(repo.path().join(".git/index")).unwrap(),
        index_bytes,
        "the index file is untouched"
    );
    // The engine goes on with the same index object: staging works.
    let mut index = mine.index().unwrap();
    index.add_path(Path::new("a.txt")).unwrap();
    drop(index);

    // Conflicts are resolved in memory for the snapshot only: the
    // caller's index has them again afterwards.
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    conflicted_merge(&repo);
    let mine = git2::Repository::open(repo.path()).unwrap();
    assert!(mine.index().unwrap().has_conflicts());
    let snap = st.capture_in(&mine, &CaptureOptions::default()).unwrap();
    assert_eq!(snap.meta.conflicted, vec!["c.txt".to_owned()]);
    assert!(mine.index().unwrap().has_conflicts());
}

fn packs(repo: &TestRepo) -> usize {
    std::fs::read_dir(repo.path().join(".git/objects/pack"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .as_encoded_bytes()
                .ends_with(b".idx")
        })
        .count()
}

#[test]
fn captures_write_one_pack_each_and_cleanup_merges_them_without_losing_objects() {
    let repo = TestRepo::with_commit();
    let st = store(&repo);
    let loose_before = git_output(repo.path(), &["count-objects"]).stdout;
    let mut snaps = Vec::new();
    for n in 0..=wsync_snapshot::PACKS_BEFORE_MERGE {
        repo.write(format!("dir{}/file.txt", n % 3), format!("version {n}\n"));
        repo.write("untracked.bin", [0u8, 1, 2, u8::try_from(n).unwrap()]);
        snaps.push(capture(&st));
    }
    // No loose objects: one pack per capture.
    assert_eq!(
        git_output(repo.path(), &["count-objects"]).stdout,
        loose_before
    );
    let before = packs(&repo);
    assert!(
        before > wsync_snapshot::PACKS_BEFORE_MERGE,
        "{before} packs"
    );
    let report = st
        .cleanup(&Retention {
            keep: 5,
            max_age: None,
        })
        .unwrap();
    assert!(report.packs_merged);
    let after = packs(&repo);
    assert!(after < 4, "{after} packs after the merge");
    // The kept snapshots restore; the removed ones' objects are still there
    // (pruning is git gc's job: the user's index may share them).
    for s in &snaps {
        let out = git_output(
            repo.path(),
            &["cat-file", "-e", &format!("{}^{{tree}}", s.commit)],
        );
        assert!(out.status.success(), "{} lost", s.commit);
    }
    let fsck = git_output(repo.path(), &["fsck", "--strict", "--no-dangling"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    let newest = snaps.last().unwrap();
    repo.write("dir0/file.txt", "changed after\n");
    st.restore(&newest.id, &RestoreOptions::default()).unwrap();
    assert_eq!(
        std::fs::read(repo.path().join("untracked.bin")).unwrap(),
        [
            0u8,
            1,
            2,
            u8::try_from(wsync_snapshot::PACKS_BEFORE_MERGE).unwrap()
        ]
    );
    // Few packs: nothing to merge.
    assert!(!st.cleanup(&Retention::default()).unwrap().packs_merged);
}

#[test]
fn the_patch_printed_from_changed_files_equals_the_tree_comparison() {
    use std::os::unix::fs::PermissionsExt as _;
    let repo = TestRepo::with_commit();
    repo.write("text.txt", "one\ntwo\nthree\n");
    repo.write("no-eol.txt", "last line");
    repo.write("bin.dat", [0u8, 1, 2, 3, 0, 5]);
    repo.write("mode-only.sh", "#!/bin/sh\n");
    repo.write("mode-and-text.sh", "#!/bin/sh\necho 1\n");
    repo.write("gone.txt", "bye\n");
    repo.write("deep/er/file.txt", "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n");
    std::os::unix::fs::symlink("text.txt", repo.path().join("link")).unwrap();
    repo.commit_all("kinds");
    let st = store(&repo);
    repo.write("text.txt", "one\n2\nthree\nfour\n");
    repo.write("no-eol.txt", "last line, still no end");
    repo.write("bin.dat", [0u8, 9, 2, 3, 0, 5, 6]);
    let exec = |p: &str| {
        std::fs::set_permissions(repo.path().join(p), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    };
    exec("mode-only.sh");
    repo.write("mode-and-text.sh", "#!/bin/sh\necho 2\n");
    exec("mode-and-text.sh");
    std::fs::remove_file(repo.path().join("gone.txt")).unwrap();
    repo.write("deep/er/file.txt", "a\nb\nc\nd\ne\nF\ng\nh\ni\nj\nK\n");
    std::fs::remove_file(repo.path().join("link")).unwrap();
    std::os::unix::fs::symlink("no-eol.txt", repo.path().join("link")).unwrap();
    repo.write("empty-new.txt", "");
    repo.write("new dir/new file.txt", "fresh\n");
    let snap = capture(&st);
    let written = std::fs::read(st.file(&snap.id, "diff")).unwrap();
    std::fs::remove_file(st.file(&snap.id, "diff")).unwrap();
    let regenerated = st.diff(&snap.id).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&written),
        String::from_utf8_lossy(&regenerated)
    );
    let text = String::from_utf8_lossy(&written).into_owned();
    for expected in [
        "Binary files a/bin.dat and b/bin.dat differ",
        "old mode 100644\nnew mode 100755\n",
        "deleted file mode 100644",
        "new file mode 100644\nindex 0000000..e69de29\n--- /dev/null\n+++ b/empty-new.txt\n",
        "\\ No newline at end of file",
        "index ",
        "120000",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in\n{text}");
    }
    // And git applies it: from HEAD, the patch gives the captured tree.
    let check = tempfile::tempdir().unwrap();
    git(
        check.path(),
        &["clone", "-q", repo.path().to_str().unwrap(), "c"],
    );
    let c = check.path().join("c");
    std::fs::write(check.path().join("p.diff"), &written).unwrap();
    // (Binary files are only marked, so that one is copied over.)
    git(
        &c,
        &[
            "apply",
            "--exclude=bin.dat",
            check.path().join("p.diff").to_str().unwrap(),
        ],
    );
    std::fs::copy(repo.path().join("bin.dat"), c.join("bin.dat")).unwrap();
    git(&c, &["add", "-A"]);
    let tree = git_output(&c, &["write-tree"]).stdout;
    let want = git_output(
        repo.path(),
        &["rev-parse", &format!("{}^{{tree}}", snap.commit)],
    )
    .stdout;
    assert_eq!(
        String::from_utf8_lossy(&tree),
        String::from_utf8_lossy(&want)
    );
}

#[test]
fn a_linked_worktree_keeps_its_snapshot_objects_and_refs_in_the_common_repository() {
    let repo = TestRepo::with_commit();
    let linked = repo.path().parent().unwrap().join(format!(
        "{}-linked",
        repo.path().file_name().unwrap().to_string_lossy()
    ));
    git(
        repo.path(),
        &[
            "worktree".as_ref(),
            "add".as_ref(),
            "-q".as_ref(),
            "-b".as_ref(),
            "side".as_ref(),
            linked.as_os_str(),
        ],
    );
    let wt = TestRepo::at(&linked);
    let st = SnapshotStore::open(wt.path(), &repo.path().join(".wsync-linked")).unwrap();
    std::fs::write(repo.path().join(".git/info/exclude"), "/.wsync-linked/\n").unwrap();
    wt.write("in-linked.txt", "only in the linked worktree\n");
    let snap = capture(&st);
    // Seen from the main worktree: git finds the ref and every object.
    let refname = format!("refs/wsync/snapshots/{}", snap.id);
    assert_eq!(
        git(repo.path(), &["rev-parse", &refname]).trim(),
        snap.commit
    );
    assert_eq!(
        blob(&repo, &snap.commit, "in-linked.txt"),
        b"only in the linked worktree\n"
    );
    assert!(
        !repo
            .path()
            .join(".git/worktrees")
            .read_dir()
            .unwrap()
            .any(|e| { e.unwrap().path().join("objects").exists() })
    );
    let fsck = git_output(repo.path(), &["fsck", "--strict", "--no-dangling"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    // And it restores in the linked worktree.
    wt.write("in-linked.txt", "changed\n");
    st.restore(&snap.id, &RestoreOptions::default()).unwrap();
    assert_eq!(wt.read("in-linked.txt"), "only in the linked worktree\n");
    std::fs::remove_dir_all(&linked).unwrap();
}
