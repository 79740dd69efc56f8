//! `wsync filter explain|test|debug|init-rules`, end to end.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use wsync_testutils::{KillOnDrop, TestRepo, wsync, wsync_cmd, wsync_ok};

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn explain_all_layers_human_and_json() {
    let repo = TestRepo::with_commit();
    repo.write(
        ".claude/contexts/p.json",
        r#"{"goal":"ship","timestamp":"2026-01-01T00:00:00Z"}"#,
    );
    repo.write("src/main.rs", "fn main() {}\n");
    repo.commit_all("base");
    repo.write(
        ".claude/contexts/p.json",
        r#"{"goal":"ship","timestamp":"2026-05-05T00:00:00Z"}"#,
    );
    repo.write("src/main.rs", "fn main() { println!(\"hi\"); }\n");
    repo.write("logs/agent.log", "started\n");

    let out = wsync_ok(
        repo.path(),
        &[
            "--json",
            "filter",
            "explain",
            ".claude/contexts/p.json",
            "src/main.rs",
            "logs/agent.log",
        ],
    );
    let v = json(&out);
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["verdict"], "block");
    assert_eq!(rows[0]["layer"], "content");
    assert_eq!(rows[0]["action"], "ANALYZE");
    assert!(rows[0]["reason"].as_str().unwrap().contains("$.timestamp"));
    assert_eq!(rows[1]["verdict"], "sync");
    assert_eq!(rows[1]["rule"], "content:changed");
    assert_eq!(rows[2]["verdict"], "block");
    assert_eq!(rows[2]["layer"], "rules");
    // The config's default excludes (`*.log`) come before the rules.
    assert_eq!(rows[2]["rule"], "exclude:*.log");

    // Human form, from a subfolder (paths relative to the current folder).
    let out = wsync_ok(&repo.path().join("src"), &["filter", "explain", "main.rs"]);
    assert!(out.starts_with("src/main.rs: SYNC"), "{out}");
    assert!(out.contains("rules:   ANALYZE [default]"), "{out}");
}

#[test]
fn explain_attributes_a_recorded_writer_window() {
    let repo = TestRepo::with_commit();
    let state = repo.path().join(".wsync");
    std::fs::create_dir_all(&state).unwrap();
    let start = chrono::DateTime::<chrono::Utc>::from(SystemTime::now());
    repo.write("agent/report.md", "# report\n");
    let end = chrono::DateTime::<chrono::Utc>::from(SystemTime::now());
    std::fs::write(
        state.join("writers.jsonl"),
        format!(
            "{}\n",
            serde_json::json!({"name": "reporter", "pid": 1, "start": start, "end": end})
        ),
    )
    .unwrap();
    let v = json(&wsync_ok(
        repo.path(),
        &["--json", "filter", "explain", "agent/report.md"],
    ));
    assert_eq!(v[0]["verdict"], "block");
    assert_eq!(v[0]["layer"], "process");
    assert!(v[0]["reason"].as_str().unwrap().contains("reporter"));
}

#[test]
fn test_rules_only_and_bad_rules_file() {
    let repo = TestRepo::with_commit();
    let out = wsync_ok(
        repo.path(),
        &["filter", "test", "CLAUDE.md", "logs/x.log", "src/a.rs"],
    );
    assert!(out.contains("rules: builtin"), "{out}");
    assert!(out.contains("ALLOW   CLAUDE.md"), "{out}");
    assert!(out.contains("BLOCK   logs/x.log"), "{out}");
    assert!(out.contains("ANALYZE src/a.rs  [default]"), "{out}");

    let rules = repo.path().join("my.rules");
    std::fs::write(&rules, "ALLOW:.*\\.txt:keep\nBLOCK:.*:rest\n").unwrap();
    let v = json(&wsync_ok(
        repo.path(),
        &[
            "--json",
            "filter",
            "test",
            "--rules",
            rules.to_str().unwrap(),
            "notes/x.txt",
            "CLAUDE.md",
            "logs/x.log",
        ],
    ));
    assert_eq!(v[0]["action"], "ALLOW");
    assert!(v[0]["rule"].as_str().unwrap().ends_with("my.rules:1"));
    assert_eq!(v[1]["action"], "BLOCK");
    // The config's excludes (`*.log` by default) still come first.
    assert_eq!(v[2]["rule"], "exclude:*.log");

    std::fs::write(&rules, "# ok\nALLOW:a:b\nBLOCK:[z-a]:bad range\n").unwrap();
    let out = wsync(
        repo.path(),
        &["filter", "test", "--rules", rules.to_str().unwrap(), "x"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("my.rules:3"), "{err}");
    assert!(err.contains("invalid regex"), "{err}");
    assert!(err.contains("invalid character class range"), "{err}");

    std::fs::write(&rules, "PERMIT:a:b\n").unwrap();
    let out = wsync(
        repo.path(),
        &["filter", "test", "--rules", rules.to_str().unwrap(), "x"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("my.rules:1") && err.contains("PERMIT"),
        "{err}"
    );
}

#[test]
fn init_rules_writes_a_valid_file_once() {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["filter", "init-rules"]);
    let text = repo.read(".wsync/rules.conf");
    assert!(text.contains("BLOCK:.*-status\\.json"), "{text}");
    let out = wsync(repo.path(), &["filter", "init-rules"]);
    assert_eq!(out.status.code(), Some(1), "refuses to overwrite");
    // The written file is what the filter now uses.
    let out = wsync_ok(repo.path(), &["filter", "test", "CLAUDE.md"]);
    assert!(out.contains(".wsync/rules.conf:"), "{out}");
    wsync_ok(repo.path(), &["filter", "init-rules", "--force"]);
}

#[test]
fn debug_prints_decisions_live_and_stops_on_sigint() {
    let repo = TestRepo::with_commit();
    let mut child = KillOnDrop(
        wsync_cmd(repo.path())
            .args(["--json", "filter", "debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let mut stderr = BufReader::new(stderr);
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.contains("watching"), "{first}");
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    repo.write("notes/todo.md", "- write tests\n");
    repo.write("logs/run.log", "tick\n");
    let mut seen: Vec<Value> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(json(&line));
        }
        let has = |p: &str| seen.iter().any(|v| v["path"] == p);
        if has("notes/todo.md") && has("logs/run.log") {
            break;
        }
    }
    if seen.is_empty() {
        child.kill();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        panic!("no decisions; stderr: {first}{rest}");
    }
    let find = |p: &str| {
        seen.iter()
            .find(|v| v["path"] == p)
            .unwrap_or_else(|| panic!("no decision for {p}: {seen:?}"))
    };
    assert_eq!(find("notes/todo.md")["verdict"], "sync");
    assert_eq!(find("logs/run.log")["verdict"], "block");
    assert_eq!(find("logs/run.log")["layer"], "rules");
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let waited = wsync_testutils::wait_until(Duration::from_secs(10), || {
        matches!(child.0.try_wait(), Ok(Some(_)))
    });
    assert!(waited, "debug did not stop on SIGINT");
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}

#[test]
fn a_real_wsync_guard_run_is_attributed_to_the_system() {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["init"]);
    wsync_ok(
        repo.path(),
        &[
            "guard",
            "--name",
            "status-writer",
            "--",
            "sh",
            "-c",
            "mkdir -p agent && echo x > agent/state.txt",
        ],
    );
    assert!(repo.exists("agent/state.txt"));
    let v = json(&wsync_ok(
        repo.path(),
        &["--json", "filter", "explain", "agent/state.txt"],
    ));
    assert_eq!(v[0]["verdict"], "block", "{v}");
    assert_eq!(v[0]["layer"], "process", "{v}");
    assert!(
        v[0]["rule"].as_str().unwrap().ends_with("writers.jsonl:1"),
        "{v}"
    );
    assert!(
        v[0]["reason"].as_str().unwrap().contains("status-writer"),
        "{v}"
    );

    // The same kind of write outside the guard, a little later, is the user's.
    std::thread::sleep(Duration::from_millis(1200));
    repo.write("agent/other.txt", "y\n");
    let v = json(&wsync_ok(
        repo.path(),
        &["--json", "filter", "explain", "agent/other.txt"],
    ));
    assert_eq!(v[0]["verdict"], "sync", "{v}");
}

#[test]
fn a_guard_that_declares_its_paths_leaves_a_simultaneous_user_save_alone() {
    let repo = TestRepo::with_commit();
    wsync_ok(repo.path(), &["init"]);
    // The guarded command writes its own file and, in the same instant, a
    // "user" saves another file: only the declared path is the writer's.
    wsync_ok(
        repo.path(),
        &[
            "guard",
            "--name",
            "status-writer",
            "--path",
            "agent/state.txt",
            "--",
            "sh",
            "-c",
            "mkdir -p agent notes && echo x > agent/state.txt && echo mine > notes/todo.txt",
        ],
    );
    let v = json(&wsync_ok(
        repo.path(),
        &[
            "--json",
            "filter",
            "explain",
            "agent/state.txt",
            "notes/todo.txt",
        ],
    ));
    assert_eq!(v[0]["verdict"], "block", "{v}");
    assert_eq!(v[0]["layer"], "process", "{v}");
    assert_eq!(v[1]["verdict"], "sync", "{v}");
    let log = repo.read(".wsync/writers.jsonl");
    assert!(log.contains("agent/state.txt"), "{log}");
}

#[test]
fn explain_names_the_nested_gitignore_that_blocks_a_path() {
    let repo = TestRepo::with_commit();
    repo.write("web/.gitignore", "dist/\n!keep.txt\n");
    repo.write(".gitignore", "*.txt\n");
    repo.write("web/dist/app.js", "built\n");
    repo.write("web/src/app.ts", "source\n");
    repo.write("web/keep.txt", "kept\n");
    let out = wsync_ok(
        repo.path(),
        &[
            "--json",
            "filter",
            "explain",
            "web/dist/app.js",
            "web/src/app.ts",
            "web/keep.txt",
            "notes.txt",
        ],
    );
    let v = json(&out);
    let rows = v.as_array().unwrap();
    assert_eq!(rows[0]["verdict"], "block");
    assert!(
        rows[0]["rule"]
            .as_str()
            .unwrap()
            .ends_with("web/.gitignore:dist/"),
        "{out}"
    );
    assert_eq!(rows[1]["verdict"], "sync", "{out}");
    assert_eq!(rows[2]["verdict"], "sync", "re-included below: {out}");
    assert_eq!(rows[3]["verdict"], "block", "{out}");
}
