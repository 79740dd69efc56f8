//! `wsync config` and config errors, end to end.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use wsync_testutils::{TestRemote, wsync, wsync_ok};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn show_get_set_enable_disable_interval() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    wsync_ok(a.path(), &["init"]);
    let shown: Value = serde_json::from_str(&wsync_ok(a.path(), &["config", "show"])).unwrap();
    assert_eq!(shown["monitoring"]["max_file_changes_before_sync"], 50);
    assert_eq!(shown["monitoring"]["min_time_between_syncs"], 300);
    assert_eq!(shown["conflict_resolution"]["strategy"], "manual");
    assert_eq!(shown["remote"]["name"], "origin");
    assert_eq!(shown["snapshots"]["keep"], 10);
    assert_eq!(shown["lock"]["max_hold_secs"], 600);
    assert_eq!(shown["pause"]["max_secs"], 300);
    assert_eq!(shown["handoff"]["env_allow"], Value::Array(vec![]));
    assert!(
        shown["filters"]["exclude_patterns"]
            .as_array()
            .unwrap()
            .contains(&Value::from("*.log"))
    );

    wsync_ok(a.path(), &["config", "enable"]);
    assert_eq!(
        wsync_ok(a.path(), &["config", "get", "enabled"]).trim(),
        "true"
    );
    wsync_ok(a.path(), &["config", "disable"]);
    assert_eq!(
        wsync_ok(a.path(), &["config", "get", "enabled"]).trim(),
        "false"
    );
    wsync_ok(a.path(), &["config", "interval", "30"]);
    assert_eq!(
        wsync_ok(a.path(), &["config", "get", "interval_minutes"]).trim(),
        "30"
    );
    wsync_ok(
        a.path(),
        &["config", "set", "filters.exclude_patterns", r#"["*.bak"]"#],
    );
    let v: Value = serde_json::from_str(&wsync_ok(
        a.path(),
        &["--json", "config", "get", "filters.exclude_patterns"],
    ))
    .unwrap();
    assert_eq!(v, serde_json::json!(["*.bak"]));
    wsync_ok(
        a.path(),
        &[
            "config",
            "set",
            "commit.message_template",
            "sync {count} from {host}",
        ],
    );
    assert_eq!(
        wsync_ok(a.path(), &["config", "get", "commit.message_template"]).trim(),
        "sync {count} from {host}"
    );
    a.write("x.txt", "x\n");
    wsync_ok(a.path(), &["sync"]);
    assert!(
        remote.subjects()[0].starts_with("sync 1 from "),
        "{:?}",
        remote.subjects()
    );

    // A bad value or key is refused and the file is unchanged.
    let path = a.path().join(".wsync/config.json");
    let before = std::fs::read(&path).unwrap();
    let out = wsync(
        a.path(),
        &["config", "set", "monitoring.min_time_between_syncs", "soon"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("monitoring.min_time_between_syncs") && err.contains("u64"),
        "{err}"
    );
    let out = wsync(a.path(), &["config", "set", "monitoring.nope", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("monitoring.nope"), "{}", stderr(&out));
    let out = wsync(
        a.path(),
        &["config", "set", "conflict_resolution.strategy", "mine"],
    );
    assert!(stderr(&out).contains("auto-ours"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn corrupt_config_is_a_clear_error_and_never_overwritten() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    wsync_ok(a.path(), &["init"]);
    a.write("x.txt", "x\n");
    let path = a.path().join(".wsync/config.json");
    let cases: [(&[u8], &[&str]); 4] = [
        (
            b"{\n  \"enabled\": true,\n  \"interval_minutes\": \n",
            &["line 4", "EOF"],
        ),
        (
            b"{\"monitoring\": {\"min_time_between_syncs\": \"5m\"}}",
            &["monitoring.min_time_between_syncs", "u64", "line 1 column"],
        ),
        (b"{\"colour\": \"blue\"}", &["colour", "unknown field"]),
        (
            b"{\"conflict_resolution\": {\"strategy\": 3}}",
            &["conflict_resolution.strategy"],
        ),
    ];
    for (bytes, wanted) in cases {
        std::fs::write(&path, bytes).unwrap();
        for args in [
            &["sync"][..],
            &["status"],
            &["config", "show"],
            &["init"],
            &["config", "enable"],
        ] {
            let out = wsync(a.path(), args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let err = stderr(&out);
            assert!(err.contains("config.json"), "{args:?}: {err}");
            for w in wanted {
                assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
            }
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "{args:?} touched the file"
            );
        }
    }
    // Nothing was synced meanwhile.
    assert_eq!(remote.subjects(), vec!["initial".to_owned()]);
}

#[test]
fn init_reports_unless_quiet_and_errors_name_each_cause_once() {
    let remote = TestRemote::new();
    let a = remote.clone_repo("a");
    let quiet = wsync(a.path(), &["-q", "init"]);
    assert!(quiet.status.success());
    assert!(
        quiet.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&quiet.stdout)
    );
    let json: Value = serde_json::from_str(&wsync_ok(a.path(), &["--json", "init"])).unwrap();
    assert!(json["state_dir"].as_str().unwrap().ends_with(".wsync"));
    assert!(wsync_ok(a.path(), &["init"]).contains("state folder:"));

    std::fs::write(a.path().join(".wsync/config.json"), "{\n  \"enabled\": ").unwrap();
    let out = wsync(a.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.matches("EOF while parsing").count(), 1, "{err}");
}
