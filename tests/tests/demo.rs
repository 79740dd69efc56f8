//! `wsync demo` runs offline and passes its own end checks.
#![allow(clippy::unwrap_used)]

use wsync_testutils::wsync;

#[test]
fn demo_runs_and_the_other_machine_gets_exactly_the_user_edits() {
    let dir = tempfile::tempdir().unwrap();
    let out = wsync(dir.path(), &["--json", "demo"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["system_files_synced"], 0);
    assert_eq!(v["idle_commits"], 0);
    assert!(v["system_writes"].as_u64().unwrap() > 10);
    let changed: Vec<&str> = v["files_changed_on_other_machine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(changed, ["docs/notes.md", "projects/demo/parser.py"]);
}
