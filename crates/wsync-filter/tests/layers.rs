//! The three layers through the public API, with real files, a real git
//! repository and real processes.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use wsync_filter::{Change, Filter, FilterConfig, Layer, Verdict};
use wsync_testutils::{KillOnDrop, TestRepo, wait_until};

fn filter_for(ws: &Path) -> Filter {
    Filter::new(ws, &ws.join(".wsync"), &FilterConfig::default()).unwrap()
}

#[test]
fn head_blob_json_text_and_unchanged() {
    let repo = TestRepo::with_commit();
    let status =
        r#"{"state":"ok","timestamp":"2026-01-01T00:00:00Z","jobs":[{"id":1,"last_update":"a"}]}"#;
    repo.write("ctx/state.json", status);
    repo.write(
        "ctx/notes.md",
        "# Notes\nLast updated: 2026-01-01 10:00:00\nbody\n",
    );
    repo.write("src/main.rs", "fn main() {}\n");
    repo.commit_all("base");
    let f = filter_for(repo.path());

    // Identical rewrite: no change at all.
    repo.write("src/main.rs", "fn main() {}\n");
    let d = f.classify(&Change::modified("src/main.rs"));
    assert_eq!(
        (d.verdict, d.layer),
        (Verdict::Block, Layer::Content),
        "{d:?}"
    );
    assert_eq!(d.rule.as_deref(), Some("content:unchanged"));

    // Volatile keys only, at depth.
    repo.write(
        "ctx/state.json",
        r#"{"jobs":[{"id":1,"last_update":"b"}],"state":"ok","timestamp":"2026-02-02T00:00:00Z"}"#,
    );
    let d = f.classify(&Change::modified("ctx/state.json"));
    assert_eq!(
        (d.verdict, d.layer),
        (Verdict::Block, Layer::Content),
        "{d:?}"
    );
    assert!(d.reason.contains("$.timestamp"), "{}", d.reason);

    // A real JSON edit.
    repo.write(
        "ctx/state.json",
        r#"{"state":"degraded","timestamp":"x","jobs":[{"id":1,"last_update":"b"}]}"#,
    );
    let d = f.classify(&Change::modified("ctx/state.json"));
    assert_eq!(d.verdict, Verdict::Sync, "{d:?}");
    assert!(d.reason.contains("$.state"), "{}", d.reason);

    // Text: timestamp-only vs real.
    repo.write(
        "ctx/notes.md",
        "# Notes\nLast updated: 2026-03-03 11:11:11\nbody\n",
    );
    assert_eq!(
        f.classify(&Change::modified("ctx/notes.md")).verdict,
        Verdict::Block
    );
    repo.write(
        "ctx/notes.md",
        "# Notes\nLast updated: 2026-03-03 11:11:11\nbody, edited\n",
    );
    assert_eq!(
        f.classify(&Change::modified("ctx/notes.md")).verdict,
        Verdict::Sync
    );

    // New and deleted files are user changes.
    repo.write("src/new.rs", "// new\n");
    assert_eq!(
        f.classify(&Change::created("src/new.rs")).verdict,
        Verdict::Sync
    );
    std::fs::remove_file(repo.path().join("src/main.rs")).unwrap();
    assert_eq!(
        f.classify(&Change::deleted("src/main.rs")).verdict,
        Verdict::Sync
    );
}

#[test]
fn gitignore_and_config_excludes_block_first() {
    let repo = TestRepo::with_commit();
    repo.write(".gitignore", "target/\n*.cache\n!keep.cache\n");
    let config = FilterConfig {
        exclude_patterns: vec!["scripts/generated/**".into()],
        ..FilterConfig::default()
    };
    let f = Filter::new(repo.path(), &repo.path().join(".wsync"), &config).unwrap();
    let d = f.rules(Path::new("target/debug/app"));
    assert_eq!(d.verdict, Verdict::Block);
    assert!(d.rule.unwrap().ends_with(":target/"));
    assert_eq!(f.rules(Path::new("x.cache")).verdict, Verdict::Block);
    assert_eq!(f.rules(Path::new("keep.cache")).verdict, Verdict::Sync);
    // The exclude beats the built-in `ALLOW:scripts/.*\.sh`.
    let d = f.rules(Path::new("scripts/generated/a.sh"));
    assert_eq!(d.verdict, Verdict::Block);
    assert_eq!(d.rule.as_deref(), Some("exclude:scripts/generated/**"));
    assert_eq!(f.rules(Path::new("scripts/a.sh")).verdict, Verdict::Sync);
}

#[test]
fn rules_file_in_state_dir_replaces_builtins() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".wsync");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("rules.conf"),
        "# mine\nALLOW:.*\\.log:keep logs\nBLOCK:.*:everything else\n",
    )
    .unwrap();
    let f = Filter::new(dir.path(), &state, &FilterConfig::default()).unwrap();
    let d = f.rules(Path::new("a.log"));
    assert_eq!(d.verdict, Verdict::Sync);
    assert!(d.rule.unwrap().ends_with("rules.conf:2"));
    let d = f.rules(Path::new("src/x.rs"));
    assert_eq!(d.verdict, Verdict::Block);
    assert!(d.rule.unwrap().ends_with("rules.conf:3"));
}

#[test]
fn bad_rules_files_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join(".wsync");
    std::fs::create_dir_all(&state).unwrap();
    let cases = [
        ("ALLOW:a:b\n\nBLOCK:(unclosed:bad\n", 3, "invalid regex"),
        ("# c\nDENY:x:y\n", 2, "unknown action \"DENY\""),
        ("ALLOW:a:b\nBLOCK no colon here\n", 2, "missing ':'"),
        ("ALLOW:only-one-colon\n", 1, "missing second ':'"),
    ];
    for (text, line, what) in cases {
        let file = state.join("rules.conf");
        std::fs::write(&file, text).unwrap();
        let err = Filter::new(dir.path(), &state, &FilterConfig::default()).unwrap_err();
        let msg = err.to_string();
        let expect = format!("{}:{line}", std::fs::canonicalize(&file).unwrap().display());
        assert!(msg.contains(&expect), "{msg} should name {expect}");
        assert!(msg.contains(what), "{msg} should say {what}");
    }
    // The regex error itself is the source.
    std::fs::write(state.join("rules.conf"), "BLOCK:(unclosed:bad\n").unwrap();
    let err = Filter::new(dir.path(), &state, &FilterConfig::default()).unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("unclosed group"), "{source}");
    assert!(
        !source.contains("^(?:"),
        "shows the regex as written: {source}"
    );
    // An explicit file that does not exist is an error, not the built-ins.
    let config = FilterConfig {
        rules_file: Some(dir.path().join("nope.conf")),
        ..FilterConfig::default()
    };
    let err = Filter::new(dir.path(), &state, &config).unwrap_err();
    assert!(err.to_string().contains("nope.conf"), "{err}");
}

fn window_line(name: &str, start: SystemTime, end: SystemTime) -> String {
    let s: DateTime<Utc> = start.into();
    let e: DateTime<Utc> = end.into();
    serde_json::json!({"name": name, "pid": 4242, "start": s, "end": e}).to_string() + "\n"
}

#[test]
fn writer_window_attribution_from_writers_jsonl() {
    let repo = TestRepo::with_commit();
    let state = repo.path().join(".wsync");
    std::fs::create_dir_all(&state).unwrap();
    let f = filter_for(repo.path());
    let t0 = SystemTime::now();
    repo.write("agent/out.txt", "written by the agent\n");
    let t1 = SystemTime::now();
    std::fs::write(state.join("writers.jsonl"), window_line("agent", t0, t1)).unwrap();
    let d = f.classify(&Change::created("agent/out.txt"));
    assert_eq!(
        (d.verdict, d.layer),
        (Verdict::Block, Layer::Process),
        "{d:?}"
    );
    assert!(d.rule.as_deref().unwrap().ends_with("writers.jsonl:1"));
    assert!(d.reason.contains("\"agent\""), "{}", d.reason);

    // A change well after the window is the user's.
    let later = Change {
        mtime: Some(t1 + Duration::from_secs(5)),
        ..Change::modified("agent/out.txt")
    };
    assert_eq!(f.classify(&later).verdict, Verdict::Sync);
    // Rules still come first: an ALLOW path is not attributed.
    repo.write("scripts/x.sh", "echo\n");
    let allow = Change {
        mtime: Some(t0),
        ..Change::modified("scripts/x.sh")
    };
    assert_eq!(f.classify(&allow).layer, Layer::Rules);
}

fn hold_open(file: &Path, argv0: &str) -> KillOnDrop {
    // `; :` keeps sh from exec'ing sleep, so sh itself (whose command line
    // carries argv0) keeps fd 3.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3>>'{}'; sleep 30; :", file.display()))
        .arg(argv0)
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

#[test]
fn a_real_process_holding_the_file_open_is_detected() {
    let repo = TestRepo::with_commit();
    repo.write("ctx/live.json", "{\"a\":1}\n");
    repo.write("ctx/mine.json", "{\"a\":1}\n");
    let abs = std::fs::canonicalize(repo.path().join("ctx/live.json")).unwrap();
    let mine = std::fs::canonicalize(repo.path().join("ctx/mine.json")).unwrap();
    let _system = hold_open(&abs, "claude-autonomous-worker");
    let _user = hold_open(&mine, "my-editor");
    let f = filter_for(repo.path());
    let held = |p: &Path| {
        let targets = [p.to_path_buf()].into_iter().collect();
        !wsync_filter::process::scan_open_files(Path::new("/proc"), &targets)
            .holders
            .is_empty()
    };
    assert!(wait_until(Duration::from_secs(10), || held(&abs) && held(&mine)));
    let d = f.classify(&Change::modified("ctx/live.json"));
    assert_eq!(
        (d.verdict, d.layer),
        (Verdict::Block, Layer::Process),
        "{d:?}"
    );
    assert_eq!(d.rule.as_deref(), Some("process:claude-autonomous"));
    assert!(
        d.reason.contains("claude-autonomous-worker"),
        "{}",
        d.reason
    );
    // A non-system holder does not make it system; content decides (new file).
    let d = f.classify(&Change::modified("ctx/mine.json"));
    assert_eq!(d.verdict, Verdict::Sync, "{d:?}");
    assert!(!d.reason.contains("held open"), "{}", d.reason);
    // Batch form: same answers, in order.
    let all = f.classify_all(&[
        Change::modified("ctx/mine.json"),
        Change::modified("ctx/live.json"),
    ]);
    assert_eq!(all[0].verdict, Verdict::Sync);
    assert_eq!(all[1].verdict, Verdict::Block);
}

#[test]
fn injected_previous_content_and_determinism() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.json"), r#"{"v":1,"session_id":"new"}"#).unwrap();
    let f = filter_for(dir.path()).with_previous_content(Arc::new(|p: &Path| {
        (p == Path::new("s.json")).then(|| br#"{"v":1,"session_id":"old"}"#.to_vec())
    }));
    let a = f.classify(&Change::modified("s.json"));
    let b = f.classify(&Change::modified("s.json"));
    assert_eq!(a, b);
    assert_eq!((a.verdict, a.layer), (Verdict::Block, Layer::Content));
}

#[test]
fn logs_and_backups_are_system_even_with_custom_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("r.conf");
    std::fs::write(&rules, "ALLOW:keep/.*:keep\n").unwrap();
    let config = FilterConfig {
        rules_file: Some(rules),
        ..FilterConfig::default()
    };
    let f = Filter::new(dir.path(), &dir.path().join(".wsync"), &config).unwrap();
    std::fs::write(dir.path().join("run.log"), "x\n").unwrap();
    let d = f.classify(&Change::modified("run.log"));
    assert_eq!(
        (d.verdict, d.layer),
        (Verdict::Block, Layer::Content),
        "{d:?}"
    );
    std::fs::write(dir.path().join("a.rs.orig"), "x\n").unwrap();
    assert_eq!(
        f.classify(&Change::modified("a.rs.orig")).verdict,
        Verdict::Block
    );
}
