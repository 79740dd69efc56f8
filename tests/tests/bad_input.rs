//! The bad-input catalogue: hostile or broken inputs across the product,
//! driven through the real `wsync` binary (and, for peer attacks, the
//! protocol spoken to a real `wsync serve` process).
//!
//! Every row asserts the exact outcome: the exit code, that stderr names
//! the file, key, line or path at fault, and that nothing was lost or
//! changed (the working tree, HEAD and the remote's `main` compared
//! before and after; a corrupt state file is never overwritten: its bytes
//! stay at its path or in a `<name>.corrupt-*` copy beside it).
//!
//! Rows: [`STATE_ROWS`] (one per broken state file and command) plus one
//! `#[test]` per remaining row; `catalogue_size` counts them.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufReader, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use wsync_remote::delta::Op;
use wsync_remote::wire::{self, ErrorKind, Kind, Meta, Preamble, Request, Response};
use wsync_testutils::{TestRemote, TestRepo, git, git_output, wsync, wsync_bin, wsync_ok};

// ---------------------------------------------------------------- helpers

/// A workspace cloned from a fresh bare remote, `wsync init`ed, with one
/// synced user file and one uncommitted user edit.
struct Ws {
    remote: TestRemote,
    a: TestRepo,
}

impl Ws {
    fn new() -> Self {
        let remote = TestRemote::new();
        let a = remote.clone_repo("a");
        wsync_ok(a.path(), &["init"]);
        a.write("notes.txt", "user bytes\n");
        a.commit_all("notes");
        git(a.path(), &["push", "-q", "origin", "main"]);
        a.write("draft.txt", "unsaved user edit\n");
        Self { remote, a }
    }

    fn p(&self) -> &Path {
        self.a.path()
    }

    fn state(&self, rel: &str) -> PathBuf {
        self.p().join(".wsync").join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        wsync(self.p(), args)
    }

    /// Working tree (without `.git` and `.wsync`), HEAD, the remote's main.
    fn fingerprint(&self) -> (BTreeMap<Vec<u8>, Vec<u8>>, String, String) {
        (
            tree(self.p(), &[b".git", b".wsync"]),
            git(self.p(), &["rev-parse", "HEAD"]).trim().to_owned(),
            self.remote.head(),
        )
    }
}

/// Every entry under `dir` (symlinks not followed): relative path →
/// content (`-> target` for symlinks, `<dir>` for folders).
fn tree(dir: &Path, skip: &[&[u8]]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, skip: &[&[u8]], out: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if skip.contains(&rel.as_slice()) {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                let t = std::fs::read_link(&path).unwrap();
                let mut v = b"-> ".to_vec();
                v.extend_from_slice(t.as_os_str().as_bytes());
                out.insert(rel, v);
            } else if ft.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                walk(root, &path, skip, out);
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, skip, &mut out);
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts the exit code and that stderr names each of `names`.
fn expect(out: &Output, code: i32, names: &[&str], what: &str) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit code\nstdout: {}\nstderr: {err}",
        stdout(out)
    );
    for n in names {
        assert!(
            err.contains(n),
            "{what}: stderr does not name {n:?}:\n{err}"
        );
    }
    assert!(!err.contains("panicked"), "{what}: panic:\n{err}");
}

/// The bytes are still at `path` or in a `<name>.corrupt-*` copy beside it.
fn kept(path: &Path, bytes: &[u8]) -> bool {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return true;
    }
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.corrupt-"))
                && std::fs::read(e.path()).ok().as_deref() == Some(bytes)
        })
}

// ------------------------------------------------------ state-file table

/// One broken state file and the command that meets it.
struct StateRow {
    /// Path relative to the workspace.
    file: &'static str,
    bytes: &'static [u8],
    args: &'static [&'static str],
    code: i32,
    /// Each must appear in stderr.
    names: &'static [&'static str],
}

/// Broken state files (one row each).
const STATE_ROWS: &[StateRow] = &[
    StateRow {
        file: ".wsync/config.json",
        bytes: b"{\n  \"enabled\": true,\n  \"interval_minutes\": ",
        args: &["sync"],
        code: 1,
        names: &["config.json", "line 3"],
    },
    StateRow {
        file: ".wsync/config.json",
        bytes: b"\x00\xff\xfe garbage",
        args: &["status"],
        code: 1,
        names: &["config.json", "line 1 column 1"],
    },
    StateRow {
        file: ".wsync/config.json",
        bytes: b"{\"enabled\": \"yes\"}",
        args: &["sync"],
        code: 1,
        names: &["config.json", "enabled", "boolean"],
    },
    StateRow {
        file: ".wsync/config.json",
        bytes: b"{\"monitoring\": {\"min_time_between_syncs\": \"5m\"}}",
        args: &["config", "show"],
        code: 1,
        names: &["config.json", "monitoring.min_time_between_syncs", "u64"],
    },
    StateRow {
        file: ".wsync/config.json",
        bytes: b"{\"colour\": \"blue\"}",
        args: &["pull"],
        code: 1,
        names: &["config.json", "colour", "unknown field"],
    },
    StateRow {
        file: ".wsync/config.json",
        bytes: b"{\"filters\": {\"exclude_patterns\": [\"[z-a\"]}}",
        args: &["sync"],
        code: 1,
        names: &["[z-a", "invalid range"],
    },
    StateRow {
        file: ".wsync/config.json",
        bytes: b"{\"enabled\": true} {\"enabled\": false}",
        args: &["status"],
        code: 1,
        names: &["config.json", "trailing characters"],
    },
    StateRow {
        file: ".wsync/queue.json",
        bytes: b"{\"version\": 1, \"entries\": [{\"id\":",
        args: &["queue", "list"],
        code: 1,
        names: &["queue.json", "line 1 column"],
    },
    StateRow {
        file: ".wsync/config.json",
        bytes: b"{\"lock\": {\"max_hold_secs\": -5}}",
        args: &["sync"],
        code: 1,
        names: &["config.json", "lock.max_hold_secs"],
    },
    StateRow {
        file: ".wsync/queue.json",
        bytes: b"{\"version\": 1, \"entries\": [{\"id\": 5}]}",
        args: &["queue", "list"],
        code: 1,
        names: &["queue.json", "line 1 column"],
    },
    StateRow {
        file: ".wsync/queue.json",
        bytes: b"\xff\xfe\x00\x01",
        args: &["request-sync", "manual", "me", "high", "x"],
        code: 1,
        names: &["queue.json"],
    },
    StateRow {
        file: ".wsync/ratelimit.json",
        bytes: b"not json",
        args: &["status"],
        code: 1,
        names: &["ratelimit.json", "line 1 column"],
    },
    StateRow {
        file: ".wsync/circuit.json",
        bytes: b"{\"state\":",
        args: &["status"],
        code: 1,
        names: &["circuit.json", "line 1 column"],
    },
    StateRow {
        file: ".wsync-handoff.json",
        bytes: b"{\"version\":",
        args: &["handoff", "show"],
        code: 1,
        names: &[".wsync-handoff.json", "line 1 column"],
    },
    StateRow {
        file: ".wsync-handoff.json",
        bytes: b"{\"version\": 1}",
        args: &["handoff", "resume"],
        code: 1,
        names: &[".wsync-handoff.json", "missing field"],
    },
    StateRow {
        file: ".wsync/projects.json",
        bytes: b"[1,2",
        args: &["projects", "list"],
        code: 1,
        names: &["projects.json", "line 1 column"],
    },
    StateRow {
        file: ".wsync/projects.json",
        bytes: b"{\"projects\": 7}",
        args: &["projects", "discover", "."],
        code: 1,
        names: &["projects.json"],
    },
    StateRow {
        file: ".wsync/rules.conf",
        bytes: b"BLOCK:\\.log$:logs\nALLOW:(unclosed:bad regex\n",
        args: &["filter", "test", "a.log"],
        code: 1,
        names: &["rules.conf:2", "(unclosed"],
    },
    StateRow {
        file: ".wsync/rules.conf",
        bytes: b"BLOCK:\\.log$:logs\n\nFROB:^x:unknown action\n",
        args: &["sync"],
        code: 1,
        names: &["rules.conf:3", "FROB"],
    },
    StateRow {
        file: ".wsync/rules.conf",
        bytes: b"BLOCK no colons here\n",
        args: &["filter", "test", "a.txt"],
        code: 1,
        names: &["rules.conf:1", "missing ':'"],
    },
];

#[test]
fn state_file_rows() {
    let mut failures = Vec::new();
    for (i, row) in STATE_ROWS.iter().enumerate() {
        let ws = Ws::new();
        if row.file == ".wsync-handoff.json" {
            wsync_ok(ws.p(), &["handoff", "save", "--note", "n"]);
        }
        if row.file == ".wsync/projects.json" {
            ws.a.write("proj/Cargo.toml", "[package]\nname = \"p\"\n");
            wsync_ok(ws.p(), &["projects", "discover", "."]);
        }
        let path = ws.p().join(row.file);
        std::fs::write(&path, row.bytes).unwrap();
        let before = ws.fingerprint();
        let what = format!(
            "row {i}: {} = {:?}, wsync {:?}",
            row.file,
            String::from_utf8_lossy(row.bytes),
            row.args
        );
        let r = std::panic::catch_unwind(|| {
            let out = ws.run(row.args);
            expect(&out, row.code, row.names, &what);
            assert_eq!(
                ws.fingerprint(),
                before,
                "{what}: the workspace or remote changed"
            );
            assert!(
                kept(&path, row.bytes),
                "{what}: the broken file was overwritten"
            );
        });
        if r.is_err() {
            failures.push(what);
        }
    }
    assert!(failures.is_empty(), "failed rows:\n{}", failures.join("\n"));
}

// ------------------------------------------------------ other state files

#[test]
fn corrupt_queue_is_kept_aside_by_queue_clear() {
    let ws = Ws::new();
    let bytes = b"{\"entries\": [";
    std::fs::write(ws.state("queue.json"), bytes).unwrap();
    let before = ws.fingerprint();
    let out = ws.run(&["queue", "clear"]);
    expect(&out, 0, &[], "queue clear");
    assert!(kept(&ws.state("queue.json"), bytes));
    expect(
        &ws.run(&["queue", "list"]),
        0,
        &[],
        "queue list after clear",
    );
    assert_eq!(ws.fingerprint(), before);
}

#[test]
fn corrupt_rate_limit_and_circuit_files_are_recovered_by_queue_clear() {
    let ws = Ws::new();
    std::fs::write(ws.state("ratelimit.json"), b"garbage").unwrap();
    std::fs::write(ws.state("circuit.json"), b"{\"state\":").unwrap();
    let before = ws.fingerprint();
    expect(&ws.run(&["status"]), 1, &["ratelimit.json"], "status");
    // The error tells the user what to run; it must work.
    let out = ws.run(&["queue", "clear"]);
    expect(&out, 0, &[], "queue clear");
    assert!(kept(&ws.state("ratelimit.json"), b"garbage"));
    assert!(kept(&ws.state("circuit.json"), b"{\"state\":"));
    expect(&ws.run(&["status"]), 0, &[], "status after queue clear");
    assert_eq!(ws.fingerprint(), before);
}

#[test]
fn torn_queue_history_line_is_skipped() {
    let ws = Ws::new();
    wsync_ok(ws.p(), &["request-sync", "manual", "me", "high", "first"]);
    wsync_ok(ws.p(), &["queue", "clear"]);
    let path = ws.state("queue-history.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"{\"id\":\"torn").unwrap();
    drop(f);
    let bytes = std::fs::read(&path).unwrap();
    let out = ws.run(&["queue", "history"]);
    expect(&out, 0, &[], "queue history");
    assert!(stdout(&out).contains("cleared"), "{}", stdout(&out));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn torn_sync_log_line_is_skipped() {
    let ws = Ws::new();
    wsync_ok(ws.p(), &["sync"]);
    let path = ws.state("sync.log");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"{\"started_at\":\"2026").unwrap();
    drop(f);
    let out = ws.run(&["log"]);
    expect(&out, 0, &[], "log");
    assert!(stdout(&out).contains("ok"), "{}", stdout(&out));
}

#[test]
fn non_utf8_bytes_in_sync_log_do_not_break_status() {
    let ws = Ws::new();
    wsync_ok(ws.p(), &["sync"]);
    let path = ws.state("sync.log");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"\xff\xfe\x00 garbage\n").unwrap();
    drop(f);
    let bytes = std::fs::read(&path).unwrap();
    let before = ws.fingerprint();
    expect(&ws.run(&["status"]), 0, &[], "status");
    let out = ws.run(&["log"]);
    expect(&out, 0, &[], "log");
    assert!(stdout(&out).contains("ok"), "{}", stdout(&out));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(ws.fingerprint(), before);
}

fn snapshot_ids(ws: &Ws) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(ws.state("snapshots"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".meta"))
                .map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn truncated_snapshot_meta_is_named() {
    let ws = Ws::new();
    wsync_ok(ws.p(), &["snapshot", "create", "--reason", "one"]);
    let id = snapshot_ids(&ws).pop().unwrap();
    let meta = ws.state(&format!("snapshots/{id}.meta"));
    let bytes = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &bytes[..bytes.len() / 2]).unwrap();
    let before = ws.fingerprint();
    let name = format!("{id}.meta");
    expect(
        &ws.run(&["snapshot", "show", &id]),
        1,
        &[&name, "corrupt"],
        "show",
    );
    expect(
        &ws.run(&["snapshot", "list"]),
        1,
        &[&name, "corrupt"],
        "list",
    );
    expect(&ws.run(&["rollback", &id]), 1, &[&name], "rollback ID");
    assert_eq!(ws.fingerprint(), before);
    assert_eq!(std::fs::read(&meta).unwrap(), &bytes[..bytes.len() / 2]);
}

#[test]
fn torn_old_snapshot_meta_does_not_block_rollback_to_the_newest() {
    let ws = Ws::new();
    wsync_ok(ws.p(), &["snapshot", "create", "--reason", "old"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    wsync_ok(ws.p(), &["snapshot", "create", "--reason", "new"]);
    let ids = snapshot_ids(&ws);
    let old = ws.state(&format!("snapshots/{}.meta", ids[0]));
    std::fs::write(&old, b"{\"snapshot_id\": ").unwrap();
    let before = ws.fingerprint();
    let out = ws.run(&["rollback"]);
    expect(&out, 0, &[], "rollback");
    // The newest snapshot is the current state: nothing changes.
    assert_eq!(ws.fingerprint(), before);
    assert_eq!(std::fs::read(&old).unwrap(), b"{\"snapshot_id\": ");
}

#[test]
fn snapshot_ids_that_escape_are_refused() {
    let ws = Ws::new();
    let before = ws.fingerprint();
    for id in ["../../config", "/etc/passwd", "no-such-snapshot"] {
        let out = ws.run(&["snapshot", "restore", id]);
        expect(&out, 1, &[id], "restore");
    }
    assert_eq!(ws.fingerprint(), before);
}

#[test]
fn lock_file_that_is_a_folder() {
    let ws = Ws::new();
    let lock = ws.state("sync.lock");
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir(&lock).unwrap();
    std::fs::write(lock.join("keep"), b"x").unwrap();
    let before = ws.fingerprint();
    for args in [
        &["sync"][..],
        &["lock", "status"],
        &["lock", "run", "--", "true"],
    ] {
        expect(
            &ws.run(args),
            1,
            &["sync.lock", "not a regular file"],
            "lock folder",
        );
    }
    assert_eq!(std::fs::read(lock.join("keep")).unwrap(), b"x");
    assert_eq!(ws.fingerprint(), before);
}

#[test]
fn garbage_lock_record_is_cleared_as_stale() {
    let ws = Ws::new();
    std::fs::write(ws.state("sync.lock"), b"{\"pid\": 12").unwrap();
    let out = ws.run(&["lock", "status"]);
    expect(&out, 0, &[], "lock status");
    assert!(stdout(&out).contains("stale"), "{}", stdout(&out));
    wsync_ok(ws.p(), &["sync"]);
    assert_eq!(ws.a.read("draft.txt"), "unsaved user edit\n");
    assert!(git(ws.remote.bare(), &["ls-tree", "main", "draft.txt"]).contains("draft.txt"));
}

#[test]
fn garbage_pause_file_is_removed_as_stale() {
    let ws = Ws::new();
    let pause = ws.state(wsync_lock::PAUSE_FILE);
    std::fs::write(&pause, b"not-a-pid\n\xff\n").unwrap();
    let out = ws.run(&["pause", "status"]);
    expect(&out, 0, &[], "pause status");
    assert!(stdout(&out).contains("stale"), "{}", stdout(&out));
    expect(
        &ws.run(&["pause", "wait", "--timeout", "1"]),
        0,
        &[],
        "pause wait",
    );
}

#[test]
fn garbage_daemon_pid_file_does_not_block_the_daemon_commands() {
    let ws = Ws::new();
    let pid = ws.state("daemon.pid");
    std::fs::write(&pid, b"12345\n").unwrap();
    let before = ws.fingerprint();
    let out = ws.run(&["daemon", "status"]);
    expect(&out, 0, &[], "daemon status");
    assert!(stdout(&out).contains("not running"), "{}", stdout(&out));
    expect(&ws.run(&["status"]), 0, &[], "status");
    assert_eq!(ws.fingerprint(), before);
}

#[test]
fn remote_sync_state_that_is_garbage_is_treated_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (l, r) = (dir.path().join("l"), dir.path().join("r"));
    std::fs::create_dir_all(&l).unwrap();
    std::fs::write(l.join("a.txt"), b"a\n").unwrap();
    let ok = |args: &[&str]| wsync_ok(dir.path(), args);
    ok(&["remote", "sync", "l", "r"]);
    ok(&["remote", "sync", "l", "r"]);
    // Every local copy of the pair state is garbage.
    for e in std::fs::read_dir(l.join(".wsync/remote")).unwrap() {
        std::fs::write(e.unwrap().path(), b"garbage\xff").unwrap();
    }
    std::fs::write(l.join("b.txt"), b"b\n").unwrap();
    std::fs::write(r.join("c.txt"), b"c\n").unwrap();
    let out = wsync(dir.path(), &["remote", "sync", "l", "r"]);
    expect(&out, 0, &[], "remote sync with a garbage state copy");
    // Nothing lost: every file on both sides.
    for side in [&l, &r] {
        for (f, c) in [("a.txt", "a\n"), ("b.txt", "b\n"), ("c.txt", "c\n")] {
            assert_eq!(
                std::fs::read_to_string(side.join(f)).unwrap(),
                c,
                "{}",
                side.display()
            );
        }
    }
}

#[test]
fn remote_sync_to_a_folder_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    let (l, r) = (dir.path().join("l"), dir.path().join("r"));
    std::fs::create_dir_all(&l).unwrap();
    std::fs::write(l.join("a.txt"), b"a\n").unwrap();
    std::fs::write(l.join("b.txt"), b"b\n").unwrap();
    // `r` is created by the first sync; the pair must keep one state.
    wsync_ok(dir.path(), &["remote", "sync", "l", "r"]);
    std::fs::remove_file(l.join("b.txt")).unwrap();
    wsync_ok(dir.path(), &["remote", "sync", "l", "r"]);
    assert!(!r.join("b.txt").exists(), "the deletion was not propagated");
    assert!(!l.join("b.txt").exists(), "the deleted file came back");
    assert_eq!(std::fs::read(r.join("a.txt")).unwrap(), b"a\n");
    assert_eq!(
        std::fs::read_dir(l.join(".wsync/remote")).unwrap().count(),
        1
    );
}

// ------------------------------------------------- the state folder itself

#[test]
fn state_folder_replaced_by_an_empty_file() {
    let ws = Ws::new();
    std::fs::remove_dir_all(ws.p().join(".wsync")).unwrap();
    std::fs::write(ws.p().join(".wsync"), b"").unwrap();
    let before = ws.fingerprint();
    expect(
        &ws.run(&["sync"]),
        1,
        &[".wsync", "Not a directory"],
        "sync",
    );
    expect(&ws.run(&["init"]), 1, &[".wsync"], "init");
    assert_eq!(ws.fingerprint(), before);
    assert_eq!(std::fs::read(ws.p().join(".wsync")).unwrap(), b"");
}

/// Runs `f` with `dir` bind-mounted read-only over itself; `None` when
/// mounting is not possible here.
fn with_read_only<T>(dir: &Path, f: impl FnOnce() -> T) -> Option<T> {
    let d = dir.to_str().unwrap();
    let ok = Command::new("mount")
        .args(["--bind", d, d])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let ro = Command::new("mount")
        .args(["-o", "remount,ro,bind", d])
        .status()
        .is_ok_and(|s| s.success());
    let out = ro.then(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    let _ = Command::new("umount").arg(d).status();
    match out {
        Some(Ok(v)) => Some(v),
        Some(Err(p)) => std::panic::resume_unwind(p),
        None => None,
    }
}

#[test]
fn unwritable_state_folder() {
    let ws = Ws::new();
    wsync_ok(ws.p(), &["sync"]);
    ws.a.write("draft.txt", "second edit\n");
    let before = ws.fingerprint();
    let ran = with_read_only(&ws.p().join(".wsync"), || {
        expect(
            &ws.run(&["sync"]),
            1,
            &[".wsync/", "Read-only file system"],
            "sync",
        );
        expect(
            &ws.run(&["request-sync", "manual", "me"]),
            1,
            &[".wsync/queue", "Read-only file system"],
            "request-sync",
        );
        expect(
            &ws.run(&["snapshot", "create"]),
            1,
            &[".wsync/", "Read-only"],
            "snapshot",
        );
    });
    if ran.is_none() {
        // Not root / no mount here: a file in place of a subfolder the
        // command must create gives the same "cannot write" path.
        assert!(!wsync_testutils::in_ci(), "mount must work in CI (root)");
        eprintln!("read-only bind mount unavailable; skipped the mount variant");
    }
    assert_eq!(ws.fingerprint(), before);
}

#[test]
fn disk_full_during_snapshot_and_sync() {
    let ws = Ws::new();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", m])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            !wsync_testutils::in_ci(),
            "tmpfs mount must work in CI (root)"
        );
        eprintln!("cannot mount a 1 MiB tmpfs here; disk-full row skipped");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        // The repository and its state folder live on the 1 MiB tmpfs.
        git(
            &mnt,
            &["clone", "-q", ws.remote.bare().to_str().unwrap(), "w"],
        );
        let w = mnt.join("w");
        let repo = TestRepo::at(&w);
        git(&w, &["config", "user.email", "t@example.com"]);
        git(&w, &["config", "user.name", "t"]);
        wsync_ok(&w, &["init"]);
        repo.write("user.txt", "precious\n");
        // Incompressible bytes that fit on disk once but not twice.
        let mut rng = fastrand::Rng::with_seed(7);
        let big: Vec<u8> = (0..700_000).map(|_| rng.u8(..)).collect();
        repo.write("big.bin", &big);
        let before = tree(&w, &[b".git", b".wsync"]);
        let remote_before = ws.remote.head();
        let out = wsync(&w, &["snapshot", "create"]);
        expect(&out, 1, &["big.bin"], "snapshot on a full disk");
        let out = wsync(&w, &["sync"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "sync on a full disk: {}",
            stderr(&out)
        );
        assert_eq!(
            tree(&w, &[b".git", b".wsync"]),
            before,
            "user files changed"
        );
        assert_eq!(ws.remote.head(), remote_before);
    });
    let _ = Command::new("umount").arg(m).status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

// ------------------------------------------------------- git edge states

#[test]
fn detached_head() {
    let ws = Ws::new();
    git(ws.p(), &["checkout", "-q", "--detach", "HEAD"]);
    let before = ws.fingerprint();
    expect(&ws.run(&["sync"]), 1, &["HEAD is detached"], "sync");
    assert_eq!(ws.fingerprint(), before);
}

#[test]
fn repo_mid_rebase() {
    let ws = Ws::new();
    std::fs::remove_file(ws.p().join("draft.txt")).unwrap();
    git(ws.p(), &["checkout", "-q", "-b", "side"]);
    ws.a.write("notes.txt", "side\n");
    ws.a.commit_all("side");
    git(ws.p(), &["checkout", "-q", "main"]);
    ws.a.write("notes.txt", "main\n");
    ws.a.commit_all("main edit");
    git(ws.p(), &["checkout", "-q", "side"]);
    let out = git_output(ws.p(), &["rebase", "main"]);
    assert!(!out.status.success(), "the rebase must stop on a conflict");
    let before = ws.fingerprint();
    let out = ws.run(&["sync"]);
    expect(&out, 1, &["rebase"], "sync mid-rebase");
    assert_eq!(ws.fingerprint(), before);
    assert!(ws.p().join(".git/rebase-merge").exists() || ws.p().join(".git/rebase-apply").exists());
}

#[test]
fn repo_mid_merge() {
    let ws = Ws::new();
    std::fs::remove_file(ws.p().join("draft.txt")).unwrap();
    git(ws.p(), &["checkout", "-q", "-b", "side"]);
    ws.a.write("notes.txt", "side\n");
    ws.a.commit_all("side");
    git(ws.p(), &["checkout", "-q", "main"]);
    ws.a.write("notes.txt", "main\n");
    ws.a.commit_all("main edit");
    assert!(!git_output(ws.p(), &["merge", "side"]).status.success());
    let before = ws.fingerprint();
    expect(&ws.run(&["sync"]), 1, &["merge"], "sync mid-merge");
    assert_eq!(ws.fingerprint(), before);
}

#[test]
fn missing_remote() {
    let ws = Ws::new();
    git(ws.p(), &["remote", "remove", "origin"]);
    let before = ws.fingerprint();
    expect(&ws.run(&["sync"]), 1, &["origin"], "sync without origin");
    assert_eq!(ws.fingerprint(), before);
}

#[test]
fn remote_url_that_does_not_exist() {
    let ws = Ws::new();
    git(
        ws.p(),
        &["remote", "set-url", "origin", "/nonexistent/remote.git"],
    );
    let out = ws.run(&["sync"]);
    expect(
        &out,
        1,
        &["/nonexistent/remote.git"],
        "sync to a missing remote",
    );
    // The user's edit is still in the tree (and in the commit or snapshot).
    assert_eq!(ws.a.read("draft.txt"), "unsaved user edit\n");
}

#[test]
fn remote_that_rejects_pushes() {
    let ws = Ws::new();
    let hook = ws.remote.bare().join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'policy: no pushes today' >&2\nexit 1\n",
    )
    .unwrap();
    Command::new("chmod")
        .args(["755", hook.to_str().unwrap()])
        .status()
        .unwrap();
    let remote_before = ws.remote.head();
    let out = ws.run(&["sync"]);
    expect(&out, 1, &["push"], "sync to a rejecting remote");
    assert_eq!(ws.remote.head(), remote_before, "the remote changed");
    assert_eq!(ws.a.read("draft.txt"), "unsaved user edit\n");
    // The edit is committed locally (ahead of the remote), not lost.
    assert!(
        git(ws.p(), &["log", "--format=%H", "origin/main..HEAD"])
            .lines()
            .count()
            >= 1
            || ws.a.status().windows(9).any(|w| w == b"draft.txt")
    );
}

#[test]
fn not_a_git_repository() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), b"x").unwrap();
    let before = tree(dir.path(), &[]);
    let out = wsync(dir.path(), &["sync"]);
    assert!(matches!(out.status.code(), Some(1 | 2)), "{}", stderr(&out));
    assert!(stderr(&out).contains("git"), "{}", stderr(&out));
    assert_eq!(tree(dir.path(), &[b".wsync"]), before);
}

/// Known gap (reported, not fixed here): `wsync sync` leaves files with
/// non-UTF-8 names alone (the filter matches text), silently. The row
/// pins what holds today: the sync succeeds, the file is untouched in the
/// tree and its bytes are in the sync's snapshot, so nothing is lost.
#[test]
fn non_utf8_file_name_is_kept_and_snapshotted() {
    let ws = Ws::new();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff.txt");
    std::fs::write(ws.p().join(name), b"latin-1 name\n").unwrap();
    let out = ws.run(&["sync"]);
    expect(&out, 0, &[], "sync");
    assert_eq!(std::fs::read(ws.p().join(name)).unwrap(), b"latin-1 name\n");
    assert_eq!(ws.a.read("draft.txt"), "unsaved user edit\n");
    let refs = git(
        ws.p(),
        &["for-each-ref", "--format=%(refname)", "refs/wsync/"],
    );
    let in_snapshot = refs.lines().any(|r| {
        git_output(ws.p(), &["ls-tree", "-r", "-z", "--name-only", r])
            .stdout
            .split(|&b| b == 0)
            .any(|n| n == b"caf\xe9-\xff.txt")
    });
    assert!(in_snapshot, "not in any snapshot: {refs}");
}

#[test]
fn empty_file_replacing_a_folder() {
    let ws = Ws::new();
    ws.a.write("src/lib.rs", "fn main() {}\n");
    wsync_ok(ws.p(), &["sync"]);
    std::fs::remove_dir_all(ws.p().join("src")).unwrap();
    std::fs::write(ws.p().join("src"), b"").unwrap();
    let out = ws.run(&["sync"]);
    expect(&out, 0, &[], "sync");
    assert_eq!(
        git(ws.remote.bare(), &["cat-file", "-s", "main:src"]).trim(),
        "0"
    );
    // The folder's content is still in history (and the snapshot).
    assert_eq!(
        git(ws.remote.bare(), &["show", "main~1:src/lib.rs"]),
        "fn main() {}\n"
    );
}

#[test]
fn unknown_priority_is_a_usage_error() {
    let ws = Ws::new();
    let out = ws.run(&["request-sync", "manual", "me", "urgent"]);
    expect(&out, 2, &["urgent"], "request-sync");
    assert!(
        !ws.state("queue.json").exists()
            || !std::fs::read_to_string(ws.state("queue.json"))
                .unwrap()
                .contains("urgent")
    );
}

// ------------------------------------------------------------ peer attacks

/// A real `wsync serve --root ROOT` process spoken to directly.
struct Peer {
    child: Child,
    r: BufReader<std::process::ChildStdout>,
    w: std::process::ChildStdin,
}

impl Peer {
    fn spawn(root: &Path) -> Child {
        Command::new(wsync_bin())
            .args(["serve", "--root"])
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn start(root: &Path) -> Self {
        let mut child = Self::spawn(root);
        let mut w = child.stdin.take().unwrap();
        let mut r = BufReader::new(child.stdout.take().unwrap());
        wire::write_preamble(&mut w).unwrap();
        assert_eq!(
            wire::read_preamble(&mut r).unwrap(),
            Preamble::Version(wire::PROTOCOL_VERSION)
        );
        let (hello, _): (Response, usize) = wire::read_msg(&mut r).unwrap();
        assert!(matches!(hello, Response::Hello { .. }), "{hello:?}");
        Self { child, r, w }
    }

    fn send(&mut self, req: &Request) {
        wire::write_msg(&mut self.w, req).unwrap();
        self.w.flush().unwrap();
    }

    fn call(&mut self, req: &Request) -> Response {
        self.send(req);
        wire::read_msg(&mut self.r).unwrap().0
    }

    /// PutBegin + one literal + PutEnd (+ Commit): the answer to the put.
    fn put(&mut self, path: &[u8], data: &[u8], hash: Option<[u8; 32]>) -> Response {
        self.send(&Request::PutBegin {
            path: path.to_vec(),
            expect: None,
            block_size: 0,
            exec: false,
            mtime_ns: 0,
        });
        self.send(&Request::PutOps(vec![Op::Literal(data.to_vec())]));
        self.send(&Request::PutEnd {
            hash: hash.unwrap_or_else(|| *blake3_hash(data)),
        });
        self.send(&Request::Commit);
        wire::read_msg(&mut self.r).unwrap().0
    }

    /// Closes stdin and waits: exit code and stderr.
    fn finish(self) -> (Option<i32>, String) {
        drop(self.w);
        let out = self.child.wait_with_output().unwrap();
        (out.status.code(), stderr(&out))
    }
}

fn blake3_hash(data: &[u8]) -> Box<[u8; 32]> {
    // The server checks BLAKE3; compute it through a round trip of the
    // real delta code so the test needs no extra dependency.
    let sig = wsync_remote::delta::signature(&b""[..], 0).unwrap();
    let h = wsync_remote::delta::generate(data, &sig, &mut |_| Ok(())).unwrap();
    Box::new(h)
}

/// Root with a file, a symlink pointing outside, and a canary outside.
struct PeerFixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
}

impl PeerFixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let root = base.join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(base.join("outside/canary"), b"canary").unwrap();
        std::fs::write(root.join("keep.txt"), b"keep me").unwrap();
        std::os::unix::fs::symlink(base.join("outside"), root.join("link")).unwrap();
        Self {
            _dir: dir,
            base,
            root,
        }
    }

    fn all(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        tree(&self.base, &[b"root/.wsync"])
    }
}

fn refused(r: &Response, kind: ErrorKind, path: &[u8]) {
    match r {
        Response::Err {
            kind: k,
            path: p,
            message,
        } => {
            assert_eq!(*k, kind, "{message}");
            assert_eq!(p.as_slice(), path, "{message}");
        }
        other => panic!(
            "expected a refusal of {:?}, got {other:?}",
            String::from_utf8_lossy(path)
        ),
    }
}

fn file_meta(size: u64) -> Meta {
    Meta {
        kind: Kind::File,
        size,
        mtime_ns: 0,
        exec: false,
        target: Vec::new(),
    }
}

#[test]
fn peer_sends_dotdot_paths() {
    let fx = PeerFixture::new();
    let before = fx.all();
    let mut p = Peer::start(&fx.root);
    for path in [&b"../escape.txt"[..], b"d/../../escape.txt", b"..", b"d/.."] {
        let r = p.put(path, b"pwned", None);
        refused(&r, ErrorKind::Unsafe, path);
    }
    let r = p.call(&Request::Mkdir {
        path: b"../newdir".to_vec(),
        expect: None,
    });
    refused(&r, ErrorKind::Unsafe, b"../newdir");
    let r = p.call(&Request::Rename {
        from: b"keep.txt".to_vec(),
        to: b"../stolen.txt".to_vec(),
        expect: file_meta(7),
    });
    assert!(
        matches!(
            r,
            Response::Err {
                kind: ErrorKind::Unsafe,
                ..
            }
        ),
        "{r:?}"
    );
    let (code, err) = p.finish();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(fx.all(), before);
}

#[test]
fn peer_sends_absolute_paths() {
    let fx = PeerFixture::new();
    let before = fx.all();
    let abs = fx.base.join("outside/abs.txt");
    let mut p = Peer::start(&fx.root);
    let r = p.put(abs.as_os_str().as_bytes(), b"pwned", None);
    refused(&r, ErrorKind::Unsafe, abs.as_os_str().as_bytes());
    let r = p.call(&Request::Delete {
        path: fx
            .base
            .join("outside/canary")
            .as_os_str()
            .as_bytes()
            .to_vec(),
        expect: file_meta(6),
    });
    assert!(
        matches!(
            r,
            Response::Err {
                kind: ErrorKind::Unsafe,
                ..
            }
        ),
        "{r:?}"
    );
    let _ = p.finish();
    assert_eq!(fx.all(), before);
}

#[test]
fn peer_writes_through_a_symlink() {
    let fx = PeerFixture::new();
    let before = fx.all();
    let mut p = Peer::start(&fx.root);
    let r = p.put(b"link/canary", b"pwned", None);
    refused(&r, ErrorKind::Unsafe, b"link/canary");
    let r = p.put(b"link/new.txt", b"pwned", None);
    refused(&r, ErrorKind::Unsafe, b"link/new.txt");
    let r = p.call(&Request::Hash {
        path: b"link/canary".to_vec(),
    });
    assert!(
        matches!(r, Response::Err { .. }),
        "read through a symlink: {r:?}"
    );
    let _ = p.finish();
    assert_eq!(fx.all(), before);
}

#[test]
fn peer_plants_a_symlink_then_writes_through_it() {
    let fx = PeerFixture::new();
    let mut p = Peer::start(&fx.root);
    // Planting a symlink is allowed (it is data), following it is not.
    let r = p.call(&Request::Symlink {
        path: b"d/evil".to_vec(),
        target: fx.base.join("outside").as_os_str().as_bytes().to_vec(),
        expect: None,
    });
    assert!(
        matches!(r, Response::Done(_) | Response::Err { .. }),
        "{r:?}"
    );
    let r = p.put(b"d/evil/x.txt", b"pwned", None);
    refused(&r, ErrorKind::Unsafe, b"d/evil/x.txt");
    let _ = p.finish();
    assert_eq!(
        std::fs::read(fx.base.join("outside/canary")).unwrap(),
        b"canary"
    );
    assert!(!fx.base.join("outside/x.txt").exists());
}

#[test]
fn peer_state_pair_that_escapes() {
    let fx = PeerFixture::new();
    let before = fx.all();
    let mut p = Peer::start(&fx.root);
    let r = p.call(&Request::StatePut {
        pair: "../../outside/canary".into(),
        data: b"pwned".to_vec(),
    });
    assert!(matches!(r, Response::Err { .. }), "{r:?}");
    let _ = p.finish();
    assert_eq!(fx.all(), before);
}

#[test]
fn peer_sends_a_wrong_hash_or_stale_expectations() {
    let fx = PeerFixture::new();
    let before = fx.all();
    let mut p = Peer::start(&fx.root);
    let r = p.put(b"new.txt", b"replaced", Some([0; 32]));
    refused(&r, ErrorKind::HashMismatch, b"new.txt");
    let r = p.put(b"keep.txt", b"replaced", None);
    refused(&r, ErrorKind::Changed, b"keep.txt");
    let r = p.call(&Request::Delete {
        path: b"keep.txt".to_vec(),
        expect: file_meta(999),
    });
    refused(&r, ErrorKind::Changed, b"keep.txt");
    // A block copy far outside any base.
    p.send(&Request::PutBegin {
        path: b"keep.txt".to_vec(),
        expect: None,
        block_size: 700,
        exec: false,
        mtime_ns: 0,
    });
    p.send(&Request::PutOps(vec![Op::Copy {
        index: u64::MAX / 2,
        count: u32::MAX,
    }]));
    p.send(&Request::PutEnd { hash: [1; 32] });
    p.send(&Request::Commit);
    let r: Response = wire::read_msg(&mut p.r).unwrap().0;
    assert!(matches!(r, Response::Err { .. }), "{r:?}");
    let _ = p.finish();
    assert_eq!(fx.all(), before);
}

#[test]
fn peer_sends_non_utf8_names() {
    let fx = PeerFixture::new();
    let mut p = Peer::start(&fx.root);
    let r = p.put(b"d/caf\xe9\xff.txt", b"bytes", None);
    assert!(matches!(r, Response::Done(Some(_))), "{r:?}");
    let r = p.put(b"d/nul\0byte", b"x", None);
    assert!(
        matches!(
            r,
            Response::Err {
                kind: ErrorKind::Unsafe,
                ..
            }
        ),
        "{r:?}"
    );
    let _ = p.finish();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9\xff.txt");
    assert_eq!(
        std::fs::read(fx.root.join("d").join(name)).unwrap(),
        b"bytes"
    );
}

/// Sends raw bytes after (or instead of) the preamble; exit code + stderr.
fn serve_raw(root: &Path, bytes: &[u8]) -> (Option<i32>, String) {
    let mut child = Peer::spawn(root);
    let mut w = child.stdin.take().unwrap();
    let _ = w.write_all(bytes);
    drop(w);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), stderr(&out))
}

fn preamble() -> Vec<u8> {
    let mut v = Vec::new();
    wire::write_preamble(&mut v).unwrap();
    v
}

#[test]
fn peer_sends_a_huge_frame_length() {
    let fx = PeerFixture::new();
    let before = fx.all();
    let mut bytes = preamble();
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    bytes.push(0);
    let (code, err) = serve_raw(&fx.root, &bytes);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("frame length 4294967295"), "{err}");
    assert_eq!(fx.all(), before);
}

#[test]
fn peer_sends_a_decompression_bomb() {
    let fx = PeerFixture::new();
    let mut bytes = preamble();
    // A zstd frame claiming a 4 GiB content size.
    let payload: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0xff, 0xff, 0xff, 0xff, 0x00];
    bytes.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
    bytes.push(1);
    bytes.extend_from_slice(payload);
    let (code, err) = serve_raw(&fx.root, &bytes);
    assert_eq!(code, Some(1), "{err}");
    // Refused from the frame's header, before inflating anything.
    assert!(
        err.contains("malformed frame") && err.contains("inflates to 4294967295 bytes"),
        "{err}"
    );
}

#[test]
fn peer_speaks_another_protocol_version() {
    let fx = PeerFixture::new();
    let mut bytes = wire::MAGIC.to_vec();
    bytes.extend_from_slice(&99u32.to_be_bytes());
    let (code, err) = serve_raw(&fx.root, &bytes);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("protocol 99") && err.contains("same wsync version"),
        "{err}"
    );
}

#[test]
fn peer_is_not_wsync() {
    let fx = PeerFixture::new();
    let (code, err) = serve_raw(&fx.root, b"SSH-2.0-OpenSSH_9.6\r\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("preamble"), "{err}");
}

#[test]
fn peer_sends_an_undecodable_message() {
    let fx = PeerFixture::new();
    let mut bytes = preamble();
    bytes.extend_from_slice(&[0, 0, 0, 3, 0, 0xff, 0xff]);
    let (code, err) = serve_raw(&fx.root, &bytes);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("undecodable"), "{err}");
}

#[test]
fn client_meets_a_remote_command_that_is_not_wsync() {
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("l");
    std::fs::create_dir(&l).unwrap();
    std::fs::write(l.join("a.txt"), b"a").unwrap();
    let before = tree(&l, &[]);
    // `--rsh` runs this instead of ssh; the far side prints a banner.
    let fake = dir.path().join("fake-ssh");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'bash: wsync: command not found'\nexit 127\n",
    )
    .unwrap();
    Command::new("chmod")
        .args(["755", fake.to_str().unwrap()])
        .status()
        .unwrap();
    let out = wsync(
        dir.path(),
        &[
            "remote",
            "push",
            "l",
            "host:/srv/x",
            "--rsh",
            fake.to_str().unwrap(),
        ],
    );
    expect(&out, 1, &["host"], "remote push to a non-wsync peer");
    assert!(stderr(&out).contains("wsync"), "{}", stderr(&out));
    assert_eq!(tree(&l, &[b".wsync"]), before);
}

#[test]
fn catalogue_size() {
    // STATE_ROWS plus the other #[test] rows of this file (this one aside).
    let others = include_str!("bad_input.rs").matches("#[test]\nfn ").count() - 2;
    assert!(
        STATE_ROWS.len() + others >= 40,
        "{} rows",
        STATE_ROWS.len() + others
    );
}
