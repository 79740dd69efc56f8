//! The sync engine through the library: two clones and one bare remote,
//! real git.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use wsync_coordinator::{
    Config, Error, Integration, Phase, Reason, Strategy, SyncEngine, SyncMode, SyncOptions,
};
use wsync_lock::{LockOptions, LockStatus, PauseGate, SyncLock, Wait};
use wsync_testutils::{TestRemote, TestRepo, git, git_output};

/// A clone with its own state folder outside the work tree.
struct Side {
    repo: TestRepo,
    state: PathBuf,
}

impl Side {
    fn new(remote: &TestRemote, name: &str) -> Self {
        let repo = remote.clone_repo(name);
        let state = remote.root().join(format!("{name}-state"));
        Self { repo, state }
    }

    fn engine(&self, config: Config) -> SyncEngine {
        SyncEngine::new(self.repo.path(), &self.state, config)
    }

    fn sync(&self) -> wsync_coordinator::SyncReport {
        self.engine(Config::default())
            .run(&SyncOptions::default())
            .unwrap()
    }

    fn sync_with(&self, strategy: Strategy) -> wsync_coordinator::SyncReport {
        let mut c = Config::default();
        c.conflict_resolution.strategy = strategy;
        self.engine(c).run(&SyncOptions::default()).unwrap()
    }
}

fn clean(repo: &TestRepo) -> bool {
    repo.status().is_empty()
}

fn fsck_ok(path: &Path) {
    wsync_coordinator::fsck(path).unwrap();
}

fn lock_free(state: &Path) -> bool {
    matches!(SyncLock::new(state).status().unwrap(), LockStatus::Free)
        && !PauseGate::new(state).is_paused()
}

#[test]
fn edits_on_both_sides_converge() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let b = Side::new(&remote, "b");
    a.repo.write("a.txt", "from a\n");
    b.repo.write("dir/b.txt", "from b\n");
    b.repo.write("README.md", "# changed by b\n");
    let ra = a.sync();
    assert!(ra.pushed);
    assert_eq!(ra.files, vec!["a.txt".to_owned()]);
    let rb = b.sync();
    assert_eq!(rb.integration, Integration::Merge);
    assert!(rb.pushed);
    let ra2 = a.sync();
    assert_eq!(ra2.integration, Integration::FastForward);
    assert!(!ra2.pushed, "nothing new to push");
    for side in [&a, &b] {
        assert_eq!(side.repo.read("a.txt"), "from a\n");
        assert_eq!(side.repo.read("dir/b.txt"), "from b\n");
        assert_eq!(side.repo.read("README.md"), "# changed by b\n");
        assert!(
            clean(&side.repo),
            "{:?}",
            String::from_utf8_lossy(&side.repo.status())
        );
        assert_eq!(side.repo.head(), remote.head());
        assert!(lock_free(&side.state));
        fsck_ok(side.repo.path());
    }
    // One JSON line per run, with phases and the result.
    let log = wsync_coordinator::synclog::read(&a.state).unwrap();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|e| e.result == "ok"));
    assert!(log[0].phases.iter().any(|p| p.phase == "push"));
    // The snapshot of each run carries its result.
    let id = log[0].snapshot.clone().unwrap();
    let result: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.state.join("snapshots").join(format!("{id}.result"))).unwrap(),
    )
    .unwrap();
    assert_eq!(result["result"], "ok");
    assert_eq!(result["pushed"], true);
}

/// The root entry count of the index's cache-tree extension (`TREE`),
/// or `None` without one: -1 means "invalid, rebuild every tree".
fn index_tree_cache_root(repo: &TestRepo) -> Option<i64> {
    let data = std::fs::read(repo.path().join(".git/index")).unwrap();
    // Header (12 bytes) and entries come first; extensions follow. The
    // first "TREE" after the entries is the extension's signature.
    let at = data.windows(4).rposition(|w| w == b"TREE")?;
    let body = &data[at + 8..];
    let nul = body.iter().position(|&b| b == 0)?;
    let rest = &body[nul + 1..];
    let space = rest.iter().position(|&b| b == b' ')?;
    std::str::from_utf8(&rest[..space]).ok()?.parse().ok()
}

#[test]
fn a_sync_commit_leaves_the_index_tree_cache_valid() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    for i in 0..20 {
        a.repo
            .write(format!("dir{}/f{i}.txt", i % 4), format!("{i}\n"));
    }
    a.sync();
    a.repo.write("dir1/f1.txt", "edited\n");
    a.repo.write("new.txt", "new\n");
    let r = a.sync();
    assert_eq!(r.commits.len(), 1);
    // Written with the commit's tree, so the next snapshot, `git status`
    // and `git commit` reuse it instead of rebuilding every tree.
    assert_eq!(
        index_tree_cache_root(&a.repo),
        Some(22),
        "a valid root entry"
    );
    let tree = git(a.repo.path(), &["write-tree"]);
    assert_eq!(tree, git(a.repo.path(), &["rev-parse", "HEAD^{tree}"]));
}

#[test]
fn a_git_add_during_the_run_is_not_undone_by_the_commit() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let ws = a.repo.path().to_path_buf();
    let opts = SyncOptions {
        on_phase: Some(Arc::new(move |phase| {
            if phase == Phase::Snapshot {
                // The snapshot read the index; the user stages a file
                // before the commit writes the index back.
                std::fs::write(ws.join("staged.txt"), "staged meanwhile\n").unwrap();
                git(&ws, &["add", "staged.txt"]);
            }
        })),
        ..SyncOptions::default()
    };
    a.repo.write("mine.txt", "a\n");
    a.engine(Config::default()).run(&opts).unwrap();
    let tracked = git(a.repo.path(), &["ls-files", "staged.txt"]);
    assert_eq!(tracked.trim(), "staged.txt", "the staging was lost");
}

#[test]
fn old_snapshots_are_cleaned_after_each_run() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let mut config = Config::default();
    config.snapshots.keep = 2;
    for i in 0..4 {
        a.repo.write("n.txt", format!("{i}\n"));
        a.engine(config.clone())
            .run(&SyncOptions::default())
            .unwrap();
    }
    let store = wsync_snapshot::SnapshotStore::open(a.repo.path(), &a.state).unwrap();
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn non_overlapping_edits_of_one_file_merge_cleanly() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let body: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    a.repo.write("f.txt", &body);
    a.sync();
    let b = Side::new(&remote, "b");
    a.repo
        .write("f.txt", body.replace("line 2\n", "line 2 by a\n"));
    b.repo
        .write("f.txt", body.replace("line 19\n", "line 19 by b\n"));
    a.sync();
    let rb = b.sync();
    assert_eq!(rb.integration, Integration::Merge);
    assert!(rb.conflicts.is_empty());
    a.sync();
    let want = body
        .replace("line 2\n", "line 2 by a\n")
        .replace("line 19\n", "line 19 by b\n");
    assert_eq!(a.repo.read("f.txt"), want);
    assert_eq!(b.repo.read("f.txt"), want);
}

fn overlapping(strategy: Strategy) -> (TestRemote, Side, Side, wsync_coordinator::SyncReport) {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let b = Side::new(&remote, "b");
    a.repo.write("notes.md", "a's version\n");
    b.repo.write("notes.md", "b's version\n");
    a.sync_with(strategy);
    let rb = b.sync_with(strategy);
    (remote, a, b, rb)
}

#[test]
fn overlapping_edits_manual_keeps_both() {
    let (_remote, a, b, rb) = overlapping(Strategy::Manual);
    assert_eq!(rb.conflicts.len(), 1);
    let c = &rb.conflicts[0];
    assert_eq!(c.path, "notes.md");
    let copy = c.copy.clone().unwrap();
    assert!(
        copy.starts_with("notes.sync-conflict-") && copy.ends_with(".md"),
        "{copy}"
    );
    // Local stays at the path, the remote version beside it.
    assert_eq!(b.repo.read("notes.md"), "b's version\n");
    assert_eq!(b.repo.read(&copy), "a's version\n");
    assert_eq!(rb.open_conflicts, 1);
    let open = wsync_coordinator::conflicts::open_conflicts(b.repo.path(), &b.state).unwrap();
    assert_eq!(open.len(), 1);
    // The other machine sees both after its next sync.
    a.sync();
    assert_eq!(a.repo.read("notes.md"), "b's version\n");
    assert_eq!(a.repo.read(&copy), "a's version\n");
    assert!(clean(&a.repo) && clean(&b.repo));

    // Resolving: take theirs moves the copy over the path.
    let r = wsync_coordinator::conflicts::resolve(
        b.repo.path(),
        &b.state,
        "notes.md",
        wsync_coordinator::conflicts::Take::Theirs,
    )
    .unwrap();
    assert_eq!(r.removed, vec![copy.clone()]);
    assert_eq!(b.repo.read("notes.md"), "a's version\n");
    assert!(!b.repo.exists(&copy));
    assert!(
        wsync_coordinator::conflicts::open_conflicts(b.repo.path(), &b.state)
            .unwrap()
            .is_empty()
    );
    b.sync();
    a.sync();
    assert_eq!(a.repo.read("notes.md"), "a's version\n");
    assert!(!a.repo.exists(&copy));
}

#[test]
fn overlapping_edits_auto_ours_and_auto_theirs() {
    let (_r, _a, b, rb) = overlapping(Strategy::AutoOurs);
    assert_eq!(rb.conflicts.len(), 1);
    assert!(rb.conflicts[0].copy.is_none());
    assert_eq!(b.repo.read("notes.md"), "b's version\n");
    assert_eq!(rb.open_conflicts, 0);

    let (_r, _a, b, rb) = overlapping(Strategy::AutoTheirs);
    assert_eq!(rb.conflicts.len(), 1);
    assert_eq!(b.repo.read("notes.md"), "a's version\n");
    assert!(clean(&b.repo));
}

#[test]
fn conflict_copies_are_never_copied_and_capped() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let b = Side::new(&remote, "b");
    let mut config = Config::default();
    config.conflict_resolution.max_copies_per_file = 2;
    for round in 0..4 {
        a.repo.write("x.txt", format!("a {round}\n"));
        b.repo.write("x.txt", format!("b {round}\n"));
        a.engine(config.clone())
            .run(&SyncOptions::default())
            .unwrap();
        b.engine(config.clone())
            .run(&SyncOptions::default())
            .unwrap();
        a.engine(config.clone())
            .run(&SyncOptions::default())
            .unwrap();
        // Copies are distinct files even within one second.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let copies: Vec<String> = git(b.repo.path(), &["ls-files"])
        .lines()
        .filter(|l| l.contains(".sync-conflict-"))
        .map(str::to_owned)
        .collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert!(
        copies
            .iter()
            .all(|c| c.matches(".sync-conflict-").count() == 1)
    );
    assert_eq!(b.repo.read("x.txt"), "b 3\n");
}

#[test]
fn excluded_files_are_never_committed_and_stay_untouched() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    a.repo.write("code.rs", "fn main() {}\n");
    a.repo.write("debug.log", "noise\n");
    a.repo.write("node_modules/x/index.js", "x\n");
    a.repo.write("run/app.pid", "123\n");
    // Even a staged system file is not committed.
    a.repo.write("staged.tmp", "tmp\n");
    git(a.repo.path(), &["add", "-f", "staged.tmp"]);
    let r = a.sync();
    assert_eq!(r.files, vec!["code.rs".to_owned()]);
    assert_eq!(r.system_files.len(), 4, "{:?}", r.system_files);
    let files = git(remote.bare(), &["ls-tree", "-r", "--name-only", "main"]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        vec!["README.md", "code.rs"]
    );
    assert_eq!(a.repo.read("debug.log"), "noise\n");
    assert_eq!(a.repo.read("node_modules/x/index.js"), "x\n");
    assert_eq!(a.repo.read("staged.tmp"), "tmp\n");
}

#[test]
fn a_tracked_system_file_changed_on_both_sides_keeps_the_local_copy() {
    let remote = TestRemote::new();
    let seed = Side::new(&remote, "seed");
    // Tracked before it became a system file.
    seed.repo.write("status.json", "{\"v\":0}\n");
    seed.repo.commit_all("status");
    git(seed.repo.path(), &["push", "-q", "origin", "HEAD:main"]);
    let a = Side::new(&remote, "a");
    let b = Side::new(&remote, "b");
    let mut config = Config::default();
    config.filters.exclude_patterns.push("status.json".into());
    // b changes it through a plain git push (another tool), a locally.
    b.repo.write("status.json", "{\"v\":2}\n");
    b.repo.write("user.txt", "u\n");
    b.repo.commit_all("b");
    git(b.repo.path(), &["push", "-q", "origin", "HEAD:main"]);
    a.repo.write("status.json", "{\"v\":1}\n");
    let r = a.engine(config).run(&SyncOptions::default()).unwrap();
    assert_eq!(r.integration, Integration::FastForward);
    assert_eq!(a.repo.read("status.json"), "{\"v\":1}\n");
    assert_eq!(a.repo.read("user.txt"), "u\n");
    assert_eq!(r.kept_local, vec!["status.json".to_owned()]);
}

#[test]
fn a_push_rejected_by_a_racing_clone_is_retried() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let b = Side::new(&remote, "b");
    let pushes = Arc::new(AtomicUsize::new(0));
    let racer = b.repo.path().to_path_buf();
    let count = Arc::clone(&pushes);
    let opts = SyncOptions {
        on_phase: Some(Arc::new(move |phase| {
            if phase == Phase::Push && count.fetch_add(1, Ordering::SeqCst) == 0 {
                // Another machine pushes between our fetch and our push.
                std::fs::write(racer.join("race.txt"), "b won\n").unwrap();
                git(&racer, &["add", "race.txt"]);
                git(&racer, &["commit", "-q", "-m", "race"]);
                git(&racer, &["push", "-q", "origin", "HEAD:main"]);
            }
        })),
        ..SyncOptions::default()
    };
    a.repo.write("mine.txt", "a\n");
    let r = a.engine(Config::default()).run(&opts).unwrap();
    assert!(r.pushed);
    assert_eq!(r.push_attempts, 2);
    assert_eq!(r.integration, Integration::Merge);
    assert_eq!(a.repo.read("race.txt"), "b won\n");
    let files = git(remote.bare(), &["ls-tree", "-r", "--name-only", "main"]);
    assert!(
        files.contains("mine.txt") && files.contains("race.txt"),
        "{files}"
    );
    assert_eq!(a.repo.head(), remote.head());
}

#[test]
fn a_remote_that_moved_before_the_run_is_integrated_before_the_first_push() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let b = Side::new(&remote, "b");
    b.repo.write("theirs.txt", "b\n");
    b.sync();
    // The fetch starts with the run, beside the snapshot and the commit:
    // by the time `a` pushes it already has `b`'s commit, so the one push
    // is accepted (no rejected optimistic push and second round trip).
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&order);
    let opts = SyncOptions {
        on_phase: Some(Arc::new(move |phase| seen.lock().unwrap().push(phase))),
        ..SyncOptions::default()
    };
    a.repo.write("mine.txt", "a\n");
    let r = a.engine(Config::default()).run(&opts).unwrap();
    assert!(r.pushed);
    assert_eq!(r.push_attempts, 1);
    assert_eq!(r.integration, Integration::Merge);
    assert_eq!(a.repo.read("theirs.txt"), "b\n");
    assert_eq!(a.repo.head(), remote.head());
    let order = order.lock().unwrap().clone();
    let at = |p: Phase| order.iter().position(|x| *x == p).unwrap();
    assert!(at(Phase::Snapshot) < at(Phase::Committed), "{order:?}");
    assert!(at(Phase::Committed) < at(Phase::Fetched), "{order:?}");
    assert!(at(Phase::Fetched) < at(Phase::Push), "{order:?}");
    // Nothing of the background fetch is left running or locked.
    assert!(
        !a.repo
            .path()
            .join(".git/refs/remotes/origin/main.lock")
            .exists()
    );
    assert!(lock_free(&a.state));
    fsck_ok(a.repo.path());
}

#[test]
fn unreachable_remote_rolls_back_and_leaves_no_lock_or_pause() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    a.repo.write("keep.txt", "precious\n");
    a.repo.write("README.md", "edited\n");
    let head = a.repo.head();
    let status = a.repo.status();
    git(
        a.repo.path(),
        &["remote", "set-url", "origin", "/nonexistent/remote.git"],
    );
    let err = a
        .engine(Config::default())
        .run(&SyncOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::RolledBack { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/remote.git"), "{err}");
    // Back to the snapshot: HEAD, index and files as they were.
    assert_eq!(a.repo.head(), head);
    assert_eq!(a.repo.status(), status);
    assert_eq!(a.repo.read("keep.txt"), "precious\n");
    assert!(lock_free(&a.state));
    assert!(!a.state.join("sync-in-progress.json").exists());
    let log = wsync_coordinator::synclog::read(&a.state).unwrap();
    assert_eq!(log.last().unwrap().result, "rolled_back");
    fsck_ok(a.repo.path());
}

#[test]
fn cancellation_between_phases_rolls_back() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    a.repo.write("new.txt", "n\n");
    let head = a.repo.head();
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&cancel);
    let opts = SyncOptions {
        cancel: Some(cancel),
        on_phase: Some(Arc::new(move |p| {
            if p == Phase::Committed {
                flag.store(true, Ordering::SeqCst);
            }
        })),
        ..SyncOptions::default()
    };
    let err = a.engine(Config::default()).run(&opts).unwrap_err();
    assert!(matches!(err.root(), Error::Cancelled { .. }), "{err}");
    assert_eq!(a.repo.head(), head);
    assert_eq!(a.repo.read("new.txt"), "n\n");
    assert!(lock_free(&a.state));
    assert_eq!(remote.subjects(), vec!["initial".to_owned()]);
}

#[test]
fn busy_lock_touches_nothing() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    a.repo.write("x.txt", "x\n");
    std::fs::create_dir_all(&a.state).unwrap();
    let held = SyncLock::new(&a.state)
        .acquire(&LockOptions::default(), Wait::Fail)
        .unwrap();
    let err = a
        .engine(Config::default())
        .run(&SyncOptions::default())
        .unwrap_err();
    assert!(err.is_busy(), "{err}");
    drop(held);
    assert_eq!(remote.subjects(), vec!["initial".to_owned()]);
    assert!(!a.state.join("sync.log").exists());
}

#[test]
fn refuses_detached_head_merge_in_progress_and_no_remote() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let head = a.repo.head();
    git(a.repo.path(), &["checkout", "-q", "--detach", &head]);
    let err = a
        .engine(Config::default())
        .run(&SyncOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("detached"), "{err}");
    git(a.repo.path(), &["checkout", "-q", "main"]);
    std::fs::write(a.repo.path().join(".git/MERGE_HEAD"), format!("{head}\n")).unwrap();
    let err = a
        .engine(Config::default())
        .run(&SyncOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("merge is in progress"), "{err}");
    std::fs::remove_file(a.repo.path().join(".git/MERGE_HEAD")).unwrap();
    git(a.repo.path(), &["remote", "remove", "origin"]);
    let err = a
        .engine(Config::default())
        .run(&SyncOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("no remote `origin`"), "{err}");
    assert!(lock_free(&a.state));
}

#[test]
fn pull_only_and_push_only() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let b = Side::new(&remote, "b");
    a.repo.write("a.txt", "a\n");
    let r = a
        .engine(Config::default())
        .run(&SyncOptions {
            mode: SyncMode::Push,
            ..SyncOptions::default()
        })
        .unwrap();
    assert!(r.pushed);
    assert_eq!(r.integration, Integration::None);
    b.repo.write("b.txt", "b\n");
    let r = b
        .engine(Config::default())
        .run(&SyncOptions {
            mode: SyncMode::Pull,
            ..SyncOptions::default()
        })
        .unwrap();
    assert!(!r.pushed);
    assert_eq!(b.repo.read("a.txt"), "a\n");
    // b's change is committed locally, not pushed.
    assert!(!git(remote.bare(), &["ls-tree", "-r", "--name-only", "main"]).contains("b.txt"));
    // Push only with a remote that moved on: an error, rolled back.
    a.repo.write("a2.txt", "a2\n");
    a.sync();
    b.repo.write("b2.txt", "b2\n");
    let err = b
        .engine(Config::default())
        .run(&SyncOptions {
            mode: SyncMode::Push,
            ..SyncOptions::default()
        })
        .unwrap_err();
    assert!(matches!(err.root(), Error::PushRejected { .. }), "{err}");
    assert_eq!(b.repo.read("b2.txt"), "b2\n");
}

#[test]
fn decision_engine_skips_with_a_reason() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let scheduled = SyncOptions {
        reason: Reason::Scheduled,
        ..SyncOptions::default()
    };
    let r = a.engine(Config::default()).run(&scheduled).unwrap();
    assert!(r.skipped());
    assert!(r.decision.why.contains("disabled"), "{}", r.decision.why);
    let mut config = Config {
        enabled: true,
        ..Config::default()
    };
    // No sync yet: runs.
    let r = a.engine(config.clone()).run(&scheduled).unwrap();
    assert!(!r.skipped(), "{}", r.decision.why);
    // Right after: too soon, too few changes.
    a.repo.write("x.txt", "x\n");
    let r = a.engine(config.clone()).run(&scheduled).unwrap();
    assert!(r.skipped());
    assert!(
        r.decision.why.contains("min_time_between_syncs"),
        "{}",
        r.decision.why
    );
    // Enough changes: runs.
    config.monitoring.max_file_changes_before_sync = 1;
    let r = a.engine(config.clone()).run(&scheduled).unwrap();
    assert!(!r.skipped(), "{}", r.decision.why);
    // Force bypasses timing; watch needs user changes.
    config.monitoring.max_file_changes_before_sync = 50;
    let forced = SyncOptions {
        force: true,
        ..scheduled.clone()
    };
    assert!(!a.engine(config.clone()).run(&forced).unwrap().skipped());
    let watch = SyncOptions {
        reason: Reason::Watch,
        ..SyncOptions::default()
    };
    let r = a.engine(config).run(&watch).unwrap();
    assert!(r.skipped() && r.decision.why.contains("no user changes"));
    let log = wsync_coordinator::synclog::read(&a.state).unwrap();
    assert_eq!(log.iter().filter(|e| e.result == "skipped").count(), 3);
}

#[test]
fn dry_run_changes_nothing() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    a.repo.write("x.txt", "x\n");
    a.repo.write("y.log", "y\n");
    let status = a.repo.status();
    let r = a
        .engine(Config::default())
        .run(&SyncOptions {
            dry_run: true,
            ..SyncOptions::default()
        })
        .unwrap();
    assert_eq!(r.outcome, "dry-run");
    assert_eq!(r.files, vec!["x.txt".to_owned()]);
    assert_eq!(r.system_files, vec!["y.log".to_owned()]);
    assert_eq!(a.repo.status(), status);
    assert_eq!(remote.subjects(), vec!["initial".to_owned()]);
}

#[test]
fn first_push_creates_the_remote_branch() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    git(a.repo.path(), &["checkout", "-q", "-b", "feature"]);
    a.repo.write("f.txt", "f\n");
    let r = a.sync();
    assert!(r.pushed);
    let out = git_output(remote.bare(), &["rev-parse", "feature"]);
    assert!(out.status.success());
}

#[test]
fn a_file_edited_during_the_sync_is_kept_and_the_incoming_one_put_beside_it() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let b = Side::new(&remote, "b");
    b.repo.write("README.md", "# from b\n");
    b.sync();
    let path = a.repo.path().join("README.md");
    let opts = SyncOptions {
        on_phase: Some(Arc::new(move |p| {
            if p == Phase::Fetched {
                // The user saves while the sync is between fetch and checkout.
                std::fs::write(&path, "# typed during the sync\n").unwrap();
            }
        })),
        ..SyncOptions::default()
    };
    let r = a.engine(Config::default()).run(&opts).unwrap();
    assert_eq!(r.kept_local, vec!["README.md".to_owned()]);
    assert_eq!(a.repo.read("README.md"), "# typed during the sync\n");
    assert_eq!(r.conflicts.len(), 1);
    let copy = r.conflicts[0].copy.clone().unwrap();
    assert_eq!(a.repo.read(&copy), "# from b\n");
    // The next sync commits both; nothing is lost on either machine.
    a.sync();
    b.sync();
    assert_eq!(b.repo.read("README.md"), "# typed during the sync\n");
    assert_eq!(b.repo.read(&copy), "# from b\n");
}

#[test]
fn every_automatic_reason_waits_while_disabled() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    a.repo.write("x.txt", "x\n");
    for reason in [Reason::Scheduled, Reason::Threshold, Reason::Watch] {
        let r = a
            .engine(Config::default())
            .run(&SyncOptions {
                reason,
                ..SyncOptions::default()
            })
            .unwrap();
        assert!(r.skipped(), "{reason}");
        assert!(r.decision.why.contains("disabled"), "{}", r.decision.why);
    }
    for reason in [Reason::Manual, Reason::Startup, Reason::Exit] {
        let r = a
            .engine(Config::default())
            .run(&SyncOptions {
                reason,
                ..SyncOptions::default()
            })
            .unwrap();
        assert!(!r.skipped(), "{reason}");
    }
    assert!(git(remote.bare(), &["ls-tree", "-r", "--name-only", "main"]).contains("x.txt"));
}

#[test]
fn a_live_snapshot_scan_kept_across_runs_captures_every_pre_sync_state() {
    let remote = TestRemote::new();
    let a = Side::new(&remote, "a");
    let b = Side::new(&remote, "b");
    let live = wsync_snapshot::SnapshotStore::open(a.repo.path(), &a.state)
        .unwrap()
        .live(&wsync_snapshot::LiveOptions::default())
        .unwrap();
    let live = Arc::new(std::sync::Mutex::new(live));
    let opts = SyncOptions {
        live_snapshots: Some(live.clone()),
        ..SyncOptions::default()
    };
    for round in 0..4 {
        // A local edit, an untracked file and a change from the other
        // clone (integrated by merge, which checks files out).
        a.repo.write("notes.txt", format!("round {round}\n"));
        a.repo.write(format!("new/r{round}.txt"), "new\n");
        b.repo.write(format!("b{round}.txt"), "from b\n");
        b.sync();
        let report = a.engine(Config::default()).run(&opts).unwrap();
        assert!(report.pushed, "round {round}: {report:?}");
        // The pre-sync snapshot holds this round's local state exactly.
        let id = report.snapshot.clone().unwrap();
        let show = |path: &str| {
            git_output(
                a.repo.path(),
                &["show", &format!("refs/wsync/snapshots/{id}:{path}")],
            )
        };
        assert_eq!(
            show("notes.txt").stdout,
            format!("round {round}\n").as_bytes()
        );
        assert!(show(&format!("new/r{round}.txt")).status.success());
        assert!(
            !show(&format!("b{round}.txt")).status.success(),
            "b's file arrived after the snapshot"
        );
        if round > 0 {
            assert!(show(&format!("b{}.txt", round - 1)).status.success());
        }
    }
    let stats = live.lock().unwrap().stats().clone();
    assert_eq!(stats.full_scans, 1, "{stats:?}");
    assert_eq!(stats.incremental_scans, 3, "{stats:?}");
    assert!(clean(&a.repo));
    fsck_ok(a.repo.path());
}
