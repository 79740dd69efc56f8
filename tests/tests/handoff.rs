//! `wsync handoff`: save/show, dev-server detection, secrets, resume, and
//! connect through a real loopback sshd.
#![allow(clippy::unwrap_used)]

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use wsync_testutils::{
    KillOnDrop, Sshd, TestRepo, assert_success, wait_until, wsync_cmd, wsync_ok, wsync_spawn,
};

const FILE: &str = ".wsync-handoff.json";

fn show_json(dir: &Path) -> Value {
    serde_json::from_str(&wsync_ok(dir, &["handoff", "show", "--json"])).unwrap()
}

#[test]
fn save_show_round_trip_in_a_repo_subfolder() {
    let repo = TestRepo::with_commit();
    let sub = repo.path().join("src/deep");
    std::fs::create_dir_all(&sub).unwrap();
    let out = wsync_cmd(&sub)
        .args([
            "handoff",
            "save",
            "--note",
            "fix the parser",
            "--env-allow",
            "EDITOR_MODE",
        ])
        .env("EDITOR_MODE", "insert")
        .output()
        .unwrap();
    assert_success(&out, "handoff save");
    assert!(repo.path().join(FILE).is_file());

    let saved = show_json(&sub);
    assert_eq!(saved["folder"], "src/deep");
    assert_eq!(saved["note"], "fix the parser");
    assert_eq!(saved["git"]["branch"], "main");
    assert_eq!(saved["git"]["head"], repo.head().trim());
    assert_eq!(saved["git"]["repo"], "");
    assert_eq!(saved["env"]["EDITOR_MODE"], "insert");
    assert!(!saved["host"].as_str().unwrap().is_empty());
    assert_eq!(
        Path::new(saved["root"].as_str().unwrap()),
        repo.path().canonicalize().unwrap()
    );

    // The human rendering says what, where, when and from which host.
    let text = wsync_ok(repo.path(), &["handoff", "show"]);
    assert!(text.contains("fix the parser"), "{text}");
    assert!(text.contains("src/deep"), "{text}");
    assert!(text.contains(saved["host"].as_str().unwrap()), "{text}");
    assert!(text.contains("main at"), "{text}");
}

#[test]
fn secret_looking_variables_are_refused_even_when_allowed() {
    let repo = TestRepo::with_commit();
    let out = wsync_cmd(repo.path())
        .args([
            "handoff",
            "save",
            "--env-allow",
            "GITHUB_TOKEN",
            "--env-allow",
            "db_password",
            "--env-allow",
            "AWS_SECRET_ACCESS_KEY",
            "--env-allow",
            "NODE_ENV",
        ])
        .env("GITHUB_TOKEN", "ghp_do_not_leak")
        .env("db_password", "hunter2")
        .env("AWS_SECRET_ACCESS_KEY", "abc123leak")
        .env("NODE_ENV", "development")
        .output()
        .unwrap();
    assert_success(&out, "handoff save");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in ["GITHUB_TOKEN", "db_password", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            stderr.contains(&format!("refused to record {name}")),
            "{stderr}"
        );
    }
    let file = repo.read(FILE);
    for secret in ["ghp_do_not_leak", "hunter2", "abc123leak"] {
        assert!(!file.contains(secret), "{file}");
    }
    let saved = show_json(repo.path());
    assert_eq!(saved["env"], serde_json::json!({"NODE_ENV": "development"}));
}

#[test]
fn a_running_dev_server_and_its_port_are_recorded() {
    let repo = TestRepo::with_commit();
    let web = repo.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    // A real listening process (tests/src/bin/tcp_listener.rs) in web/.
    let mut server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tcp_listener"))
            .current_dir(&web)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u64 = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));

    wsync_ok(repo.path(), &["handoff", "save"]);
    let saved = show_json(repo.path());
    let servers = saved["servers"].as_array().unwrap();
    let found = servers
        .iter()
        .find(|s| s["pid"] == server.id())
        .unwrap_or_else(|| panic!("server {} not in {servers:#?}", server.id()));
    assert_eq!(found["folder"], "web");
    assert_eq!(found["ports"], serde_json::json!([port]));
    assert!(found["command"].as_str().unwrap().contains("tcp_listener"));
    let text = wsync_ok(repo.path(), &["handoff", "show"]);
    assert!(text.contains(&format!("ports {port}")), "{text}");

    // resume offers the command to restart it, in this machine's tree.
    let resume = wsync_ok(repo.path(), &["handoff", "resume"]);
    assert!(resume.contains("servers to restart"), "{resume}");
    assert!(resume.contains("tcp_listener"), "{resume}");

    // connect prints the servers to restart on the other host, in its tree.
    let plan = wsync_ok(
        repo.path(),
        &[
            "handoff",
            "connect",
            "elsewhere",
            "--print",
            "--remote-root",
            "/far/ws",
        ],
    );
    assert!(plan.contains("servers to restart"), "{plan}");
    assert!(plan.contains("cd /far/ws/web && "), "{plan}");
    assert!(plan.contains(&format!("listening on {port}")), "{plan}");
    server.kill();

    // resume --start restarts it here, detached, in the same folder.
    let started = wsync_ok(repo.path(), &["handoff", "resume", "--start"]);
    let pgid: i32 = started
        .lines()
        .find_map(|l| l.strip_prefix("started pid "))
        .and_then(|rest| rest.split(':').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{started}"));
    let _group = KillGroupOnDrop(pgid);
    let listening_again = wait_until(Duration::from_secs(20), || {
        wsync_ok(repo.path(), &["handoff", "save"]);
        show_json(repo.path())["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["folder"] == "web" && !s["ports"].as_array().unwrap().is_empty())
    });
    assert!(listening_again, "the restarted server never listened");
}

/// SIGKILLs a whole process group on drop.
struct KillGroupOnDrop(i32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .status();
    }
}

#[test]
fn resume_warns_when_the_branch_or_head_differs() {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["handoff", "save"]);
    let out = wsync_cmd(repo.path())
        .args(["handoff", "resume"])
        .output()
        .unwrap();
    assert_success(&out, "resume");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("differs"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("cd {}", repo.path().display())),
        "{stdout}"
    );

    repo.git(&["switch", "-q", "-c", "feature"]);
    let out = wsync_cmd(repo.path())
        .args(["handoff", "resume"])
        .output()
        .unwrap();
    assert_success(&out, "resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("branch differs") && stderr.contains("feature"),
        "{stderr}"
    );

    repo.git(&["switch", "-q", "main"]);
    repo.write("x.txt", "x");
    repo.commit_all("moved on");
    let out = wsync_cmd(repo.path())
        .args(["handoff", "resume", "--json"])
        .output()
        .unwrap();
    assert_success(&out, "resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HEAD differs"), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["branch"]["state"], "head_differs");
}

/// `wsync handoff connect DEST --rsh SSH EXTRA...` run in `dir` against
/// the loopback sshd.
fn connect(sshd: &Sshd, dir: &Path, extra: &[&str]) -> std::process::Output {
    let (dest, rsh) = (sshd.destination(), sshd.ssh_command());
    let mut args = vec!["handoff", "connect", dest.as_str(), "--rsh", rsh.as_str()];
    args.extend_from_slice(extra);
    wsync_cmd(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The remote command printed `REMOTE_PWD=<expected>`.
fn assert_remote_pwd(out: &std::process::Output, expected: &Path) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pwd = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REMOTE_PWD="))
        .unwrap_or_else(|| panic!("no REMOTE_PWD in {stdout}"));
    assert_eq!(
        Path::new(pwd).canonicalize().unwrap(),
        expected.canonicalize().unwrap()
    );
}

#[test]
fn connect_print_shows_sync_and_ssh_commands() {
    let Some(sshd) = Sshd::start() else { return };
    let repo = TestRepo::with_commit();
    let out = connect(&sshd, repo.path(), &["--print"]);
    assert_success(&out, "handoff connect --print");
    let out = String::from_utf8_lossy(&out.stdout);
    let dest = sshd.destination();
    assert!(out.contains("remote sync --rsh"), "{out}");
    assert!(
        out.contains(&format!("{dest}:{}", repo.path().display())),
        "{out}"
    );
    assert!(out.contains(&format!(" -t {dest} ")), "{out}");
    assert!(out.contains("exec \"${SHELL:-/bin/sh}\" -l"), "{out}");
    // --print saved the record but ran nothing remote.
    assert!(repo.path().join(FILE).is_file());
}

#[test]
fn connect_runs_a_command_in_the_same_folder_over_real_ssh() {
    let Some(sshd) = Sshd::start() else { return };
    let repo = TestRepo::with_commit();
    let sub = repo.path().join("app");
    std::fs::create_dir_all(&sub).unwrap();
    let far = tempfile::tempdir().unwrap();
    let far_root = far.path().join("ws");
    std::fs::create_dir_all(far_root.join("app")).unwrap();
    let out = connect(
        &sshd,
        &sub,
        &[
            "--sync",
            "file",
            "--remote-root",
            far_root.to_str().unwrap(),
            "--note",
            "over ssh",
            "--command",
            "echo REMOTE_PWD=$(pwd); exit 3",
        ],
    );
    // The remote command's exit code passes through.
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_remote_pwd(&out, &far_root.join("app"));
    // The record arrived, complete.
    let arrived: Value =
        serde_json::from_str(&std::fs::read_to_string(far_root.join(FILE)).unwrap()).unwrap();
    assert_eq!(arrived["note"], "over ssh");
    assert_eq!(arrived["folder"], "app");
}

#[test]
fn connect_syncs_the_tree_with_wsync_remote_then_runs_in_the_folder() {
    let Some(sshd) = Sshd::start() else { return };
    let repo = TestRepo::with_commit();
    repo.write("app/main.rs", "fn main() {}\n");
    let far = tempfile::tempdir().unwrap();
    let far_root = far.path().join("ws");
    let bin = wsync_testutils::wsync_bin();
    let out = connect(
        &sshd,
        &repo.path().join("app"),
        &[
            "--remote-wsync",
            bin.to_str().unwrap(),
            "--remote-root",
            far_root.to_str().unwrap(),
            "--command",
            "echo REMOTE_PWD=$(pwd)",
        ],
    );
    assert_success(&out, "handoff connect with wsync remote sync");
    assert_remote_pwd(&out, &far_root.join("app"));
    // The whole tree went across, the record with it.
    assert_eq!(
        std::fs::read_to_string(far_root.join("app/main.rs")).unwrap(),
        "fn main() {}\n"
    );
    let arrived: Value =
        serde_json::from_str(&std::fs::read_to_string(far_root.join(FILE)).unwrap()).unwrap();
    assert_eq!(arrived["folder"], "app");
}

#[test]
fn the_config_allow_list_is_used_and_still_refuses_secrets() {
    let repo = TestRepo::with_commit();
    let state = repo.path().join(".wsync");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("config.json"),
        r#"{"handoff": {"env_allow": ["RUST_LOG", "STRIPE_API_KEY"]}}"#,
    )
    .unwrap();
    let out = wsync_cmd(repo.path())
        .args(["handoff", "save", "--json"])
        .env("RUST_LOG", "debug")
        .env("STRIPE_API_KEY", "sk_live_do_not_leak")
        .env("NOT_ALLOWED", "nope")
        .output()
        .unwrap();
    assert_success(&out, "handoff save");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["handoff"]["env"],
        serde_json::json!({"RUST_LOG": "debug"})
    );
    assert_eq!(report["warnings"][0]["kind"], "secret_refused");
    assert_eq!(report["warnings"][0]["name"], "STRIPE_API_KEY");
    assert!(!repo.read(FILE).contains("sk_live"));

    // A broken config is an error naming the file, not a silent default.
    std::fs::write(
        state.join("config.json"),
        r#"{"handoff": {"env_allow": 3}}"#,
    )
    .unwrap();
    let out = wsync_cmd(repo.path())
        .args(["handoff", "save"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("env_allow"), "{stderr}");
}

#[test]
fn the_record_survives_sigkill_at_any_instant() {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["handoff", "save", "--note", "first"]);
    for i in 0..24u64 {
        let note = format!("round {i}");
        let mut child = wsync_spawn(repo.path(), &["handoff", "save", "--note", &note]);
        std::thread::sleep(Duration::from_micros(i * 700));
        child.kill();
        // Old or new, but always a complete record.
        let saved: Value = serde_json::from_str(&repo.read(FILE)).unwrap();
        assert!(saved["note"].as_str().unwrap().len() > 4, "{saved}");
    }
    // A clean save sweeps temp files left by killed writers.
    wsync_ok(repo.path(), &["handoff", "save"]);
    let leftovers: Vec<_> = std::fs::read_dir(repo.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".wsync-tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_record_stays_out_of_git() {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["handoff", "save"]);
    wsync_ok(repo.path(), &["handoff", "save"]);
    assert!(repo.path().join(FILE).is_file());
    assert!(
        repo.status().is_empty(),
        "status: {:?}",
        String::from_utf8_lossy(&repo.status())
    );
    let exclude = repo.read(".git/info/exclude");
    assert_eq!(
        exclude
            .lines()
            .filter(|l| *l == "/.wsync-handoff.json")
            .count(),
        1
    );
}
