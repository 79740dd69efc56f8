//! `wsync snapshot ...` and `wsync rollback`, end to end through the binary.
#![allow(clippy::unwrap_used)]

use wsync_testutils::{TestRepo, git_output, wsync, wsync_ok};

fn repo() -> TestRepo {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["init", "-q"]);
    repo
}

fn create(repo: &TestRepo, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "snapshot", "create"];
    args.extend_from_slice(extra);
    serde_json::from_str(&wsync_ok(repo.path(), &args)).unwrap()
}

fn id_of(v: &serde_json::Value) -> String {
    v["snapshot_id"].as_str().unwrap().to_owned()
}

#[test]
fn create_list_show_verify_diff_cleanup() {
    let repo = repo();
    repo.write("README.md", "# edited\n");
    repo.write("notes/new.txt", "untracked\n");
    let before = repo.status();
    let meta = create(&repo, &["--reason", "e2e", "--bundle"]);
    assert_eq!(repo.status(), before, "create changed the workspace");
    let id = id_of(&meta);
    assert!(id.starts_with("sync_"));
    assert_eq!(meta["reason"], "e2e");
    assert_eq!(meta["git_status_files"], 2);
    assert_eq!(meta["git_commit"].as_str().unwrap(), repo.head());
    assert_eq!(meta["snapshot_ref"], format!("refs/wsync/snapshots/{id}"));
    assert!(meta["timestamp"].as_str().unwrap().contains('T'));

    let listed: serde_json::Value =
        serde_json::from_str(&wsync_ok(repo.path(), &["snapshot", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["snapshot_id"], id.as_str());
    let human = wsync_ok(repo.path(), &["snapshot", "list"]);
    assert!(human.contains(&id) && human.contains("e2e"), "{human}");

    let shown = wsync_ok(repo.path(), &["snapshot", "show", &id]);
    assert!(
        shown.contains("refs/heads/main") && shown.contains(".bundle"),
        "{shown}"
    );
    let verified = wsync_ok(repo.path(), &["snapshot", "verify", &id]);
    assert!(verified.contains("bundle verified"), "{verified}");
    let diff = wsync_ok(repo.path(), &["snapshot", "diff", &id]);
    assert!(
        diff.contains("+# edited") && diff.contains("+++ b/notes/new.txt"),
        "{diff}"
    );

    for _ in 0..3 {
        create(&repo, &[]);
    }
    let out = wsync_ok(repo.path(), &["snapshot", "cleanup", "--keep", "2"]);
    assert!(out.contains("removed 2"), "{out}");
    let refs = repo.git(&[
        "for-each-ref",
        "--format=%(refname)",
        "refs/wsync/snapshots/",
    ]);
    assert_eq!(refs.lines().count(), 2, "{refs}");
    assert!(
        !repo
            .path()
            .join(format!(".wsync/snapshots/{id}.meta"))
            .exists()
    );
    assert!(
        !repo
            .path()
            .join(format!(".wsync/snapshots/{id}.bundle"))
            .exists()
    );
}

#[test]
fn rollback_restores_the_newest_and_can_be_undone() {
    let repo = repo();
    repo.write("work.txt", "at snapshot\n");
    let at_snapshot = repo.status();
    let snap = id_of(&create(&repo, &[]));
    repo.write("work.txt", "later\n");
    repo.write("stray.txt", "later too\n");
    let head = repo.commit_all("later commit");
    let later = repo.status();

    let out = wsync_ok(repo.path(), &["rollback"]);
    assert!(
        out.contains(&format!("restored {snap}")) && out.contains("undo with"),
        "{out}"
    );
    assert_eq!(repo.read("work.txt"), "at snapshot\n");
    assert!(!repo.exists("stray.txt"));
    assert_ne!(repo.head(), head);
    assert_eq!(repo.status(), at_snapshot);

    // The newest snapshot is now the safety one: rolling back again undoes.
    let listed: serde_json::Value =
        serde_json::from_str(&wsync_ok(repo.path(), &["--json", "snapshot", "list"])).unwrap();
    let newest = listed[0]["snapshot_id"].as_str().unwrap().to_owned();
    assert_eq!(repo_meta_reason(&repo, &newest), "pre-restore");
    let report: serde_json::Value =
        serde_json::from_str(&wsync_ok(repo.path(), &["--json", "rollback"])).unwrap();
    assert_eq!(report["restored"], newest.as_str());
    assert_eq!(repo.head(), head);
    assert_eq!(repo.read("stray.txt"), "later too\n");
    assert_eq!(repo.status(), later);
}

fn repo_meta_reason(repo: &TestRepo, id: &str) -> String {
    let text = repo.read(format!(".wsync/snapshots/{id}.meta"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["reason"].as_str().unwrap().to_owned()
}

#[test]
fn restore_while_the_sync_lock_is_held_exits_busy() {
    let repo = repo();
    repo.write("f.txt", "one\n");
    let id = id_of(&create(&repo, &[]));
    repo.write("f.txt", "two\n");
    let lock = wsync_lock::SyncLock::new(repo.path().join(".wsync"));
    let guard = lock
        .try_acquire(&wsync_lock::LockOptions {
            caller: "test".into(),
            reason: "hold".into(),
            ..wsync_lock::LockOptions::default()
        })
        .unwrap();
    let out = wsync(repo.path(), &["snapshot", "restore", &id]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(repo.read("f.txt"), "two\n", "a busy restore touched files");
    let out = wsync(repo.path(), &["rollback"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    guard.release().unwrap();
    wsync_ok(repo.path(), &["rollback", &id]);
    assert_eq!(repo.read("f.txt"), "one\n");
}

#[test]
fn restore_refuses_during_a_merge_unless_forced() {
    let repo = repo();
    let id = id_of(&create(&repo, &[]));
    repo.write("c.txt", "base\n");
    repo.commit_all("base");
    repo.git(&["checkout", "-q", "-b", "other"]);
    repo.write("c.txt", "theirs\n");
    repo.commit_all("theirs");
    repo.git(&["checkout", "-q", "main"]);
    repo.write("c.txt", "ours\n");
    repo.commit_all("ours");
    assert!(
        !git_output(repo.path(), &["merge", "-q", "other"])
            .status
            .success()
    );

    let out = wsync(repo.path(), &["snapshot", "restore", &id]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("merge is in progress"), "{err}");
    wsync_ok(repo.path(), &["snapshot", "restore", "--force", &id]);
    assert!(!repo.path().join(".git/MERGE_HEAD").exists());
    assert!(!repo.exists("c.txt"));
    assert!(repo.status().is_empty());
}

#[test]
fn files_only_keeps_head() {
    let repo = repo();
    repo.write("a.txt", "snap\n");
    let id = id_of(&create(&repo, &[]));
    repo.write("a.txt", "committed later\n");
    let head = repo.commit_all("later");
    wsync_ok(repo.path(), &["snapshot", "restore", "--files-only", &id]);
    assert_eq!(repo.read("a.txt"), "snap\n");
    assert_eq!(repo.head(), head);
}

#[test]
fn missing_and_corrupt_meta_are_clear_errors() {
    let repo = repo();
    let out = wsync(repo.path(), &["snapshot", "show", "sync_20200101_000000_1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sync_20200101_000000_1.meta"), "{err}");

    let id = id_of(&create(&repo, &[]));
    let meta = repo.path().join(format!(".wsync/snapshots/{id}.meta"));
    std::fs::write(&meta, "garbage").unwrap();
    for args in [vec!["snapshot", "restore", id.as_str()], vec!["rollback"]] {
        let out = wsync(repo.path(), &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{id}.meta")) && err.contains("corrupt"),
            "{err}"
        );
    }
    let out = wsync(repo.path(), &["rollback"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn rollback_without_snapshots_says_so() {
    let repo = repo();
    let out = wsync(repo.path(), &["rollback"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no snapshots"), "{err}");
}
