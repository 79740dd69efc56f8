//! `wsync remote` and `wsync serve` end to end: local peers, a real sshd on
//! 127.0.0.1, SIGKILL mid-transfer, watch.
#![allow(clippy::unwrap_used)]

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use wsync_testutils::{KillOnDrop, Sshd, wait_until, wsync, wsync_bin, wsync_cmd, wsync_ok};

use wsync_testutils::TreeSnapshot as Snap;

fn snap(root: &Path) -> Snap {
    wsync_testutils::tree_snapshot(root)
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn fill(root: &Path) {
    write(root, "README.md", b"# hi\n");
    write(root, "src/lib.rs", b"pub fn f() {}\n");
    write(root, "bin/tool", b"#!/bin/sh\necho tool\n");
    std::fs::set_permissions(
        root.join("bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("README.md", root.join("link")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"na\xefve")),
        b"bytes",
    )
    .unwrap();
    write(root, "target/debug/junk", b"excluded by default");
    let big: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    write(root, "data/big.bin", &big);
}

/// Whether folder `d` holds a transfer's temp file (a transfer is under way).
fn has_temp_file(d: &Path) -> bool {
    std::fs::read_dir(d).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .as_bytes()
            .starts_with(b".wsync-tmp.")
    })
}

/// `len` bytes of incompressible xorshift noise (`len` a multiple of 8).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

fn without_target(mut s: Snap) -> Snap {
    s.retain(|k, _| !k.starts_with(b"target"));
    s
}

#[test]
fn local_peer_push_pull_sync_with_stats_json_and_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    std::fs::create_dir_all(&a).unwrap();
    fill(&a);
    let a_s = a.to_str().unwrap();
    let b_s = b.to_str().unwrap();
    let c_s = c.to_str().unwrap();

    let out = wsync_ok(dir.path(), &["remote", "push", a_s, b_s, "--dry-run"]);
    assert!(out.contains("send README.md"), "{out}");
    assert!(!b.exists(), "a dry run writes nothing");

    let out = wsync_ok(dir.path(), &["--json", "remote", "push", a_s, b_s]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["files_sent"], 6, "{v}");
    assert_eq!(without_target(snap(&a)), snap(&b));

    // One byte changes: a delta, mostly matched.
    let mut big = std::fs::read(a.join("data/big.bin")).unwrap();
    big[200_000] ^= 0x55;
    std::fs::write(a.join("data/big.bin"), &big).unwrap();
    let out = wsync_ok(dir.path(), &["--json", "remote", "push", a_s, b_s]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["files_sent"], 1, "{v}");
    assert!(v["matched_bytes"].as_u64().unwrap() > 390_000, "{v}");

    let out = wsync_ok(dir.path(), &["remote", "pull", c_s, b_s, "--stats"]);
    assert!(out.contains("received"), "{out}");
    assert_eq!(snap(&c), snap(&b));

    // Two-way: the first sync records the common base, then an edit on each side.
    wsync_ok(dir.path(), &["remote", "sync", a_s, b_s]);
    write(&b, "src/lib.rs", b"pub fn g() {}\n");
    write(&a, "new.txt", b"new");
    wsync_ok(dir.path(), &["remote", "sync", a_s, b_s]);
    assert_eq!(without_target(snap(&a)), snap(&b));
    assert_eq!(
        std::fs::read(a.join("src/lib.rs")).unwrap(),
        b"pub fn g() {}\n"
    );
}

#[test]
fn conflicts_exit_code_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write(&a, "f.txt", b"base");
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    wsync_ok(dir.path(), &["remote", "sync", a_s, b_s]);
    write(&a, "f.txt", b"mine");
    write(&b, "f.txt", b"theirs!");
    let out = wsync(dir.path(), &["remote", "sync", a_s, b_s]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("sync-conflict"));
    let list = wsync(dir.path(), &["remote", "conflicts", a_s]);
    assert_eq!(list.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&list.stdout).contains("f.sync-conflict-"));
    assert_eq!(snap(&a), snap(&b));
}

#[test]
fn vanished_root_halts_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write(&a, "one", b"1");
    write(&a, "two", b"2");
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    wsync_ok(dir.path(), &["remote", "sync", a_s, b_s]);
    std::fs::rename(&b, dir.path().join("unmounted")).unwrap();
    let out = wsync(dir.path(), &["remote", "sync", a_s, b_s]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-mass-delete"), "{err}");
    assert!(a.join("one").exists() && !b.exists());
}

#[test]
fn missing_remote_wsync_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write(&a, "f", b"x");
    // `sh` stands in for ssh: it runs the remote command locally.
    let out = wsync(
        dir.path(),
        &[
            "remote",
            "push",
            a.to_str().unwrap(),
            "somehost:/tmp/nowhere",
            "--rsh",
            "sh -c 'exec sh -c \"$1\"'",
            "--remote-wsync",
            "/nonexistent/wsync",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer the handshake"), "{err}");
    assert!(err.contains("--remote-wsync"), "{err}");
}

#[test]
fn missing_remote_wsync_over_real_sshd_is_explained() {
    let Some(sshd) = Sshd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    write(&a, "f", b"x");
    let peer = format!("{}:{}", sshd.destination(), dir.path().join("b").display());
    let out = wsync(
        dir.path(),
        &[
            "remote",
            "push",
            a.to_str().unwrap(),
            &peer,
            "--rsh",
            &sshd.ssh_command(),
            "--remote-wsync",
            "/nonexistent/wsync",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer the handshake"), "{err}");
    assert!(err.contains("--remote-wsync"), "{err}");
    assert!(
        !dir.path().join("b").exists(),
        "nothing was created on the peer"
    );
}

#[test]
fn over_real_sshd() {
    let Some(sshd) = Sshd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    std::fs::create_dir_all(&a).unwrap();
    fill(&a);
    let rsh = sshd.ssh_command();
    let bin = wsync_bin();
    let peer = format!("{}:{}", sshd.destination(), b.display());
    let run = |verb: &str, local: &Path| {
        wsync_ok(
            dir.path(),
            &[
                "remote",
                verb,
                local.to_str().unwrap(),
                &peer,
                "--rsh",
                &rsh,
                "--remote-wsync",
                bin.to_str().unwrap(),
            ],
        )
    };
    run("push", &a);
    assert_eq!(without_target(snap(&a)), snap(&b));
    // Reusing one ssh connection across runs (ControlMaster).
    for _ in 0..2 {
        write(&a, "reuse.txt", b"again");
        wsync_ok(
            dir.path(),
            &[
                "remote",
                "push",
                a.to_str().unwrap(),
                &peer,
                "--rsh",
                &rsh,
                "--remote-wsync",
                bin.to_str().unwrap(),
                "--ssh-reuse",
            ],
        );
    }
    assert!(b.join("reuse.txt").exists());
    run("pull", &c);
    assert_eq!(snap(&c), snap(&b));
    // Two-way over ssh: an edit, a deletion and a conflict.
    run("sync", &a);
    write(&b, "README.md", b"# edited remotely\n");
    std::fs::remove_file(a.join("src/lib.rs")).unwrap();
    write(&a, "both.txt", b"local");
    write(&b, "both.txt", b"remote!");
    let out = wsync(
        dir.path(),
        &[
            "remote",
            "sync",
            a.to_str().unwrap(),
            &peer,
            "--rsh",
            &rsh,
            "--remote-wsync",
            bin.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(without_target(snap(&a)), snap(&b));
    assert!(!b.join("src/lib.rs").exists());
    assert_eq!(
        std::fs::read(a.join("README.md")).unwrap(),
        b"# edited remotely\n"
    );
    let copies = snap(&a)
        .keys()
        .filter(|k| k.windows(15).any(|w| w == b".sync-conflict-"))
        .count();
    assert_eq!(copies, 1);
}

#[test]
fn sigkill_mid_transfer_leaves_no_partial_file_and_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    // Incompressible, large enough to be mid-flight when killed.
    let big = noise(96 * 1024 * 1024, 0x9e37_79b9_7f4a_7c15u64);
    std::fs::write(a.join("big.bin"), &big).unwrap();
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let child = wsync_cmd(dir.path())
        .args(["remote", "push", a_s, b_s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let started = wait_until(Duration::from_secs(30), || has_temp_file(&b));
    assert!(started, "the transfer never started");
    child.kill();
    // Whatever happened, the final path holds nothing or the whole file.
    if let Ok(got) = std::fs::read(b.join("big.bin")) {
        assert!(got == big, "partial file at the final path");
    }
    wsync_ok(dir.path(), &["remote", "push", a_s, b_s]);
    assert!(std::fs::read(b.join("big.bin")).unwrap() == big);
}

#[test]
fn watch_propagates_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write(&a, "start.txt", b"s");
    std::fs::create_dir_all(&b).unwrap();
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let child = wsync_cmd(dir.path())
        .args(["remote", "watch", a_s, b_s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = KillOnDrop(child);
    assert!(wait_until(Duration::from_secs(20), || b
        .join("start.txt")
        .exists()));
    write(&a, "from-a.txt", b"A");
    assert!(wait_until(Duration::from_secs(20), || std::fs::read(
        b.join("from-a.txt")
    )
    .is_ok_and(|c| c == b"A")));
    write(&b, "sub/from-b.txt", b"B");
    assert!(wait_until(Duration::from_secs(20), || std::fs::read(
        a.join("sub/from-b.txt")
    )
    .is_ok_and(|c| c == b"B")));
    std::fs::remove_file(a.join("start.txt")).unwrap();
    assert!(wait_until(Duration::from_secs(20), || !b
        .join("start.txt")
        .exists()));
}

/// Pids of `wsync serve` processes serving `root`.
fn serve_pids(root: &Path) -> Vec<u32> {
    let needle = root.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<String> = c
                    .split(|&b| b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                args.iter().any(|a| a == "serve") && args.contains(&needle)
            })
        })
        .collect()
}

#[test]
fn watch_reconnects_after_the_peer_dies() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write(&a, "first.txt", b"1");
    std::fs::create_dir_all(&b).unwrap();
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let child = wsync_cmd(dir.path())
        .args(["remote", "watch", a_s, b_s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = KillOnDrop(child);
    assert!(wait_until(Duration::from_secs(20), || b
        .join("first.txt")
        .exists()));
    assert!(wait_until(Duration::from_secs(10), || serve_pids(&b).len() >= 2));
    // The connection drops: both peer processes die.
    for pid in serve_pids(&b) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    write(&a, "after.txt", b"2");
    assert!(
        wait_until(Duration::from_secs(30), || b.join("after.txt").exists()),
        "watch did not reconnect"
    );
}

#[test]
fn two_runs_on_one_local_root_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    write(&a, "start.txt", b"s");
    std::fs::create_dir_all(&b).unwrap();
    let (a_s, b_s, c_s) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
    );
    // A watch holds the lock of `a` for as long as it runs.
    let child = wsync_cmd(dir.path())
        .args(["remote", "watch", a_s, b_s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watcher = child.id();
    let mut child = KillOnDrop(child);
    assert!(wait_until(Duration::from_secs(20), || b
        .join("start.txt")
        .exists()));
    // Every other run on `a` (even with another peer) is refused, busy,
    // with the holder named; nothing is transferred.
    for verb in ["sync", "push", "pull", "watch"] {
        let out = wsync(dir.path(), &["remote", verb, a_s, c_s]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{verb}: {err}");
        assert!(err.contains(&format!("pid {watcher}")), "{verb}: {err}");
        assert!(err.contains("wsync remote watch"), "{verb}: {err}");
        assert!(!err.contains("panicked"), "{verb}: {err}");
    }
    assert!(!c.join("start.txt").exists());
    // --wait waits, then gives up with the same code.
    let t = std::time::Instant::now();
    let out = wsync(dir.path(), &["remote", "push", a_s, c_s, "--wait", "1"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(t.elapsed() >= Duration::from_millis(900));
    // A dry run changes nothing and is not blocked.
    let out = wsync(dir.path(), &["remote", "push", a_s, c_s, "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Once the holder is gone (even SIGKILLed) the lock is free again, and
    // a waiting run proceeds.
    let waiting = wsync_cmd(dir.path())
        .args(["remote", "push", a_s, c_s, "--wait", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child.kill();
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(std::fs::read(c.join("start.txt")).unwrap(), b"s");
}

#[test]
fn sigkill_of_the_server_mid_transfer_is_a_clear_error_and_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let big = noise(96 * 1024 * 1024, 0x2545_f491_4f6c_dd1du64);
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    // push: the server (receiver) dies; pull: the server (sender) dies.
    for (verb, from, to) in [("push", &a, &b), ("pull", &b, &a)] {
        std::fs::write(from.join("big.bin"), &big).unwrap();
        let _ = std::fs::remove_file(to.join("big.bin"));
        let child = wsync_cmd(dir.path())
            .args(["remote", verb, a_s, b_s])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = wait_until(Duration::from_secs(30), || has_temp_file(to));
        assert!(started, "{verb}: the transfer never started");
        let pids = serve_pids(&b);
        assert_eq!(pids.len(), 1, "{verb}: {pids:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[0] as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{verb}: {err}");
        assert!(err.contains("connection"), "{verb}: {err}");
        assert!(!err.contains("panicked"), "{verb}: {err}");
        // Nothing half-written at a final path on either side.
        for side in [&a, &b] {
            if let Ok(got) = std::fs::read(side.join("big.bin")) {
                assert!(got == big, "{verb}: partial file in {}", side.display());
            }
        }
        if verb == "pull" {
            // The client cleaned up its own temp file.
            assert!(!has_temp_file(&a), "pull left a temp file behind");
        }
        wsync_ok(dir.path(), &["remote", verb, a_s, b_s]);
        assert!(std::fs::read(to.join("big.bin")).unwrap() == big, "{verb}");
        std::fs::remove_file(from.join("big.bin")).unwrap();
        std::fs::remove_file(to.join("big.bin")).unwrap();
    }
}

/// Which way a frame goes through [`Relay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToClient,
}

/// A relay between this test's client engine and a real `wsync serve`
/// process: every frame is decoded and shown to `hook` before it is
/// forwarded unchanged, so a test can act at an exact point of the
/// protocol (a real race, made deterministic).
struct Relay {
    conn: wsync_remote::conn::Conn,
    _server: KillOnDrop,
}

impl Relay {
    fn start(root: &Path, hook: impl Fn(Dir, &[u8]) + Send + Sync + Clone + 'static) -> Self {
        use std::io::{Read, Write};
        let mut server = std::process::Command::new(wsync_bin())
            .args(["serve", "--root"])
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (to_server, from_server) =
            (server.stdin.take().unwrap(), server.stdout.take().unwrap());
        let (c_read, r_write) = std::io::pipe().unwrap();
        let (r_read, c_write) = std::io::pipe().unwrap();
        fn pump(mut from: impl Read, mut to: impl Write, dir: Dir, hook: impl Fn(Dir, &[u8])) {
            let mut preamble = [0u8; 10];
            if from.read_exact(&mut preamble).is_err() || to.write_all(&preamble).is_err() {
                return;
            }
            let _ = to.flush();
            loop {
                let mut head = [0u8; 4];
                if from.read_exact(&mut head).is_err() {
                    return;
                }
                let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
                if from.read_exact(&mut body).is_err() {
                    return;
                }
                hook(dir, &body);
                if to.write_all(&head).is_err()
                    || to.write_all(&body).is_err()
                    || to.flush().is_err()
                {
                    return;
                }
            }
        }
        let h = hook.clone();
        std::thread::spawn(move || pump(r_read, to_server, Dir::ToServer, h));
        std::thread::spawn(move || pump(from_server, r_write, Dir::ToClient, hook));
        let conn = wsync_remote::conn::Conn::from_streams("relay", c_read, c_write).unwrap();
        Self {
            conn,
            _server: KillOnDrop(server),
        }
    }
}

/// Changes bytes of a file in place and puts its mtime back: size and
/// mtime, all a scan sees, stay the same, only the content differs.
fn change_keeping_meta(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    let mut b = [0u8; 64];
    f.read_exact_at(&mut b, at).unwrap();
    for x in &mut b {
        *x ^= 0x5a;
    }
    f.write_all_at(&b, at).unwrap();
    f.set_modified(mtime).unwrap();
}

/// The whole-file fallback: the receiver's copy changes (same size, same
/// mtime) after its block signature was taken, so the delta rebuilds the
/// wrong bytes; the BLAKE3 check catches it and the file is sent whole.
/// Both directions: the server rebuilds (push) and the client does (pull).
#[test]
fn a_rebuilt_file_that_fails_its_hash_is_sent_whole() {
    use std::sync::{Arc, Mutex};
    use wsync_remote::wire::{self, Request, Response};
    let base = noise(256 * 1024, 0x1234_5678_9abc_def1u64);
    let mut edited = base.clone();
    edited[..16].copy_from_slice(b"edited at start!");
    for verb in ["push", "pull"] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        // The sender has the edit; the receiver the old version.
        let (sender, receiver) = if verb == "push" { (&a, &b) } else { (&b, &a) };
        write(sender, "f.bin", &edited);
        write(receiver, "f.bin", &base);
        // An older copy (writes within one clock tick share an mtime).
        std::fs::File::options()
            .write(true)
            .open(receiver.join("f.bin"))
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        // Frames seen: (direction, request or answer name, detail).
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (log2, target) = (Arc::clone(&log), receiver.join("f.bin"));
        let hook = move |dir: Dir, body: &[u8]| {
            let mut log = log2.lock().unwrap();
            match dir {
                Dir::ToServer => match wire::decode_body::<Request>(body).unwrap() {
                    // pull: the client's own copy changes right after it
                    // sent the signature, before the server sees it.
                    Request::Delta { sig, .. } => {
                        if !sig.blocks.is_empty() {
                            change_keeping_meta(&target, 200_000);
                        }
                        log.push(format!("delta sig={}", sig.blocks.len()));
                    }
                    Request::PutBegin { block_size, .. } => {
                        log.push(format!("put block_size={block_size}"));
                    }
                    _ => {}
                },
                Dir::ToClient => match wire::decode_body::<Response>(body).unwrap() {
                    // push: the server's copy changes right after it
                    // answered the signature, before the client sees it.
                    Response::Sigs(_) => {
                        change_keeping_meta(&target, 200_000);
                        log.push("sigs".into());
                    }
                    Response::Err { kind, .. } => log.push(format!("err {kind:?}")),
                    _ => {}
                },
            }
        };
        let relay = Relay::start(&b, hook);
        let mut session = wsync_remote::Session::with_conn(&a, relay.conn, "relay");
        let opts = wsync_remote::SyncOptions::default();
        let report = if verb == "push" {
            session.push(&opts).unwrap()
        } else {
            session.pull(&opts).unwrap()
        };
        session.close().unwrap();
        let log = log.lock().unwrap().clone();
        assert!(report.errors.is_empty(), "{verb}: {report:?}");
        assert_eq!(report.files_sent + report.files_received, 1, "{verb}");
        assert_eq!(
            std::fs::read(receiver.join("f.bin")).unwrap(),
            edited,
            "{verb}: {log:?}"
        );
        // First a delta, then (after the mismatch) the whole file.
        let expected: Vec<String> = if verb == "push" {
            [
                "sigs",
                "put block_size=",
                "err HashMismatch",
                "put block_size=0",
            ]
            .into_iter()
            .map(String::from)
            .collect()
        } else {
            vec!["delta sig=".into(), "delta sig=0".into()]
        };
        assert_eq!(log.len(), expected.len(), "{verb}: {log:?}");
        for (got, want) in log.iter().zip(&expected) {
            assert!(got.starts_with(want.as_str()), "{verb}: {log:?}");
        }
        assert_ne!(
            log[1], "put block_size=0",
            "{verb}: the first put was a delta"
        );
        assert_ne!(
            log[0], "delta sig=0",
            "{verb}: the first request was a delta"
        );
        assert!(
            report.literal_bytes >= edited.len() as u64,
            "{verb}: the retry went whole: {report:?}"
        );
    }
}

/// An overflow of the local watcher (the kernel dropped events and says so
/// with a `Rescan`-flagged event, as notify's inotify backend reports
/// IN_Q_OVERFLOW) makes the next round a full rescan, and a change whose
/// own events were lost still propagates. The test feeds the watch's event
/// channel itself: no event at all for the change (it was lost), then the
/// real overflow event.
#[test]
fn watch_rescans_everything_after_an_overflow() {
    use std::ops::ControlFlow;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write(&a, "start.txt", b"s");
    std::fs::create_dir_all(&b).unwrap();
    let (events, rx) = mpsc::channel();
    let rounds = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (rounds2, stop2, a2, b2) = (Arc::clone(&rounds), Arc::clone(&stop), a.clone(), b.clone());
    let watcher = std::thread::spawn(move || {
        let copts = wsync_remote::ConnectOptions {
            local_wsync: Some(wsync_bin()),
            ..Default::default()
        };
        let opts = wsync_remote::WatchOptions {
            // No periodic rescan during the test: only the overflow.
            rescan_every: Duration::from_secs(3600),
            ..Default::default()
        };
        wsync_remote::watch_events(
            &a2,
            &wsync_remote::PeerSpec::Local(b2),
            &copts,
            &opts,
            rx,
            &mut |ev| {
                if let wsync_remote::WatchEvent::Synced(r) = ev {
                    assert!(r.errors.is_empty(), "{r:?}");
                    rounds2.fetch_add(1, Ordering::SeqCst);
                }
                if stop2.load(Ordering::SeqCst) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
    });
    assert!(wait_until(Duration::from_secs(20), || b
        .join("start.txt")
        .exists()));
    // The change's events are lost: nothing picks it up.
    write(&a, "sub/lost.txt", b"lost event");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!b.join("sub/lost.txt").exists(), "synced without an event?");
    let before = rounds.load(Ordering::SeqCst);
    // The overflow notice.
    events
        .send(Ok(
            notify::Event::new(notify::EventKind::Other).set_flag(notify::event::Flag::Rescan)
        ))
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read(
            b.join("sub/lost.txt")
        )
        .is_ok_and(|c| c == b"lost event")),
        "the rescan did not propagate the change"
    );
    // The round that copied it finishes (and is reported) right after.
    assert!(wait_until(Duration::from_secs(20), || rounds
        .load(Ordering::SeqCst)
        > before));
    // A watcher error is treated the same way.
    write(&a, "lost-too.txt", b"again");
    events
        .send(Err(notify::Error::generic("watch failed")))
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || b
        .join("lost-too.txt")
        .exists()));
    stop.store(true, Ordering::SeqCst);
    events
        .send(Ok(
            notify::Event::new(notify::EventKind::Other).set_flag(notify::event::Flag::Rescan)
        ))
        .unwrap();
    watcher.join().unwrap().unwrap();
}

/// Pids of processes whose command line contains every one of `needles`.
fn pids_with(needles: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if needles.iter().all(|n| cmd.contains(n)) {
            out.push(pid);
        }
    }
    out
}

fn sigkill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

#[test]
fn a_session_agent_serves_later_runs_and_survives_crashes() {
    let Some(sshd) = Sshd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    fill(&a);
    let rsh = sshd.ssh_command();
    let bin = wsync_bin();
    let peer = format!("{}:{}", sshd.destination(), b.display());
    let push_cmd = || {
        let mut c = wsync_cmd(dir.path());
        c.env("XDG_RUNTIME_DIR", &runtime)
            .env("USER", "agenttest")
            .args([
                "remote",
                "push",
                a.to_str().unwrap(),
                &peer,
                "--rsh",
                &rsh,
                "--remote-wsync",
                bin.to_str().unwrap(),
                "--ssh-reuse",
            ]);
        c
    };
    let push = || {
        let out = push_cmd().stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let sock_dir = runtime.join("wsync-ssh-agenttest");
    let sock_dir_s = sock_dir.to_str().unwrap().to_owned();
    let b_s = b.to_str().unwrap().to_owned();
    let agents = || pids_with(&["remote-agent", &sock_dir_s]);
    // The far `wsync serve` itself (not the shell or ssh quoting its
    // command line).
    let server_cmd = format!("{} serve --root {b_s} --sessions", bin.display());
    let servers = || pids_with(&[&server_cmd]);
    struct Reap(Vec<u32>);
    impl Drop for Reap {
        fn drop(&mut self) {
            for p in &self.0 {
                sigkill(*p);
            }
        }
    }

    // The first run starts an agent, which keeps one server alive.
    push();
    assert_eq!(without_target(snap(&a)), snap(&b));
    let agent = agents();
    assert_eq!(agent.len(), 1, "one agent");
    let _reap = Reap(agent.clone());
    let server = servers();
    assert_eq!(server.len(), 1, "one far server");
    let socket_count = || {
        std::fs::read_dir(&sock_dir)
            .unwrap()
            .filter(|e| {
                let n = e.as_ref().unwrap().file_name();
                n.to_string_lossy().starts_with("agent-")
            })
            .count()
    };
    assert_eq!(socket_count(), 1);

    // Later runs go through the same agent and the same server.
    for i in 0..3 {
        write(&a, "again.txt", format!("run {i}").as_bytes());
        push();
        assert_eq!(
            std::fs::read(b.join("again.txt")).unwrap(),
            format!("run {i}").as_bytes()
        );
    }
    assert_eq!(agents(), agent, "the same agent");
    assert_eq!(servers(), server, "the same far server");

    // A client killed mid-transfer: its session is ended for it, no
    // partial file lands, and the next run (same agent) completes.
    let big = noise(64 * 1024 * 1024, 0x517c_c1b7_2722_0a95);
    std::fs::write(a.join("big.bin"), &big).unwrap();
    let mut child = KillOnDrop(
        push_cmd()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = wait_until(Duration::from_secs(30), || has_temp_file(&b));
    assert!(started, "the transfer never started");
    // Meanwhile another run for the same peer does not wait for the busy
    // agent: it connects directly after a short wait for its turn.
    let out = push_cmd()
        .arg("--dry-run")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    child.kill();
    if let Ok(got) = std::fs::read(b.join("big.bin")) {
        assert!(got == big, "partial file at the final path");
    }
    push();
    assert!(std::fs::read(b.join("big.bin")).unwrap() == big);
    assert_eq!(agents(), agent, "the agent outlived the killed client");
    assert_eq!(without_target(snap(&a)), snap(&b));

    // The far server dies: the next run still completes (directly or
    // through a new agent).
    for p in servers() {
        sigkill(p);
    }
    write(&a, "after-server.txt", b"s");
    push();
    assert!(b.join("after-server.txt").exists());

    // The agent is SIGKILLed (its socket stays behind): the next run
    // starts a new one on the same socket.
    for p in agents() {
        sigkill(p);
    }
    write(&a, "after-agent.txt", b"a");
    push();
    assert!(b.join("after-agent.txt").exists());
    let new_agents = agents();
    assert_eq!(new_agents.len(), 1, "{new_agents:?}");
    let _reap2 = Reap(new_agents);
    write(&a, "last.txt", b"l");
    push();
    assert_eq!(without_target(snap(&a)), snap(&b));
    assert_eq!(socket_count(), 1);
}
