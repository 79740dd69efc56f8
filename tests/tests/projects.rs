//! `wsync projects`: discovery over a generated tree, the registry, launch.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::Value;
use wsync_testutils::{wsync, wsync_ok};

fn touch(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn list(dir: &Path, state: &Path) -> Vec<Value> {
    let out = wsync_ok(
        dir,
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "projects",
            "list",
            "--json",
        ],
    );
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn find<'a>(projects: &'a [Value], name: &str) -> &'a Value {
    projects
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no project {name} in {projects:#?}"))
}

#[test]
fn discovers_all_four_kinds_and_skips_ignored_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("code");
    let state = tmp.path().join("state");
    touch(&root, "engine/Cargo.toml", "[package]\nname = \"engine\"\n");
    touch(&root, "engine/src/main.rs", "fn main() {}\n");
    touch(&root, "web/package.json", r#"{"scripts": {"dev": "vite"}}"#);
    touch(
        &root,
        "api/package.json",
        r#"{"scripts": {"start": "node ."}}"#,
    );
    touch(&root, "ml/pyproject.toml", "[project]\nname = \"ml\"\n");
    touch(&root, "ml/ml/__main__.py", "print('hi')\n");
    touch(&root, "svc/go.mod", "module svc\n");
    // Never descended into, or ignored by rules.
    touch(&root, "web/node_modules/dep/package.json", "{}");
    touch(&root, "engine/target/debug/build/x/Cargo.toml", "");
    touch(&root, "ml/.venv/lib/site/pkg/setup.py", "");
    touch(&root, ".git/hooks/package.json", "{}");
    touch(&root, ".gitignore", "generated/\n");
    touch(&root, "generated/out/go.mod", "module gen\n");

    let out = wsync_ok(
        tmp.path(),
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "projects",
            "discover",
            root.to_str().unwrap(),
        ],
    );
    assert!(out.contains("added"), "{out}");
    let projects = list(tmp.path(), &state);
    let mut names: Vec<&str> = projects
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["api", "engine", "ml", "svc", "web"]);
    assert_eq!(find(&projects, "engine")["kind"], "rust");
    assert_eq!(find(&projects, "engine")["command"], "cargo run");
    assert_eq!(find(&projects, "web")["command"], "npm run dev");
    assert_eq!(find(&projects, "api")["command"], "npm start");
    assert_eq!(find(&projects, "ml")["kind"], "python");
    assert_eq!(find(&projects, "ml")["command"], "python3 -m ml");
    assert_eq!(find(&projects, "svc")["command"], "go run .");
    // The registry is in the state folder.
    assert!(state.join("projects.json").is_file());
}

#[test]
fn user_commands_survive_rediscovery_and_names_disambiguate() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("code");
    let state = tmp.path().join("state");
    let st = state.to_str().unwrap();
    touch(&root, "a/app/go.mod", "module a\n");
    touch(&root, "b/app/Cargo.toml", "");
    wsync_ok(
        tmp.path(),
        &[
            "--state-dir",
            st,
            "projects",
            "discover",
            root.to_str().unwrap(),
        ],
    );
    let projects = list(tmp.path(), &state);
    assert_eq!(find(&projects, "app")["kind"], "go");
    assert_eq!(find(&projects, "app-2")["kind"], "rust");

    wsync_ok(
        tmp.path(),
        &[
            "--state-dir",
            st,
            "projects",
            "set",
            "app-2",
            "--command",
            "cargo run --release",
        ],
    );
    wsync_ok(
        tmp.path(),
        &[
            "--state-dir",
            st,
            "projects",
            "discover",
            root.to_str().unwrap(),
        ],
    );
    let projects = list(tmp.path(), &state);
    assert_eq!(find(&projects, "app-2")["command"], "cargo run --release");
    assert_eq!(find(&projects, "app-2")["user_command"], true);
    assert_eq!(projects.len(), 2);

    let out = wsync(
        tmp.path(),
        &[
            "--state-dir",
            st,
            "projects",
            "set",
            "nope",
            "--command",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn launch_runs_in_the_project_folder_and_passes_the_exit_code_through() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("code");
    let state = tmp.path().join("state");
    let st = state.to_str().unwrap();
    touch(&root, "tool/requirements.txt", "");
    wsync_ok(
        tmp.path(),
        &[
            "--state-dir",
            st,
            "projects",
            "discover",
            root.to_str().unwrap(),
        ],
    );
    wsync_ok(
        tmp.path(),
        &[
            "--state-dir",
            st,
            "projects",
            "set",
            "tool",
            "--command",
            "pwd > where.txt; exit 7",
        ],
    );
    let out = wsync(
        tmp.path(),
        &["--state-dir", st, "projects", "launch", "tool"],
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let where_ = std::fs::read_to_string(root.join("tool/where.txt")).unwrap();
    assert_eq!(
        Path::new(where_.trim()).canonicalize().unwrap(),
        root.join("tool").canonicalize().unwrap()
    );

    wsync_ok(
        tmp.path(),
        &[
            "--state-dir",
            st,
            "projects",
            "set",
            "tool",
            "--command",
            "true",
        ],
    );
    let out = wsync(
        tmp.path(),
        &["--state-dir", st, "projects", "launch", "tool"],
    );
    assert_eq!(out.status.code(), Some(0));

    let out = wsync(
        tmp.path(),
        &["--state-dir", st, "projects", "launch", "missing"],
    );
    assert_eq!(out.status.code(), Some(1));
}
