//! `wsync projects`: discovery over a generated tree, the registry, launch.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use tempfile::TempDir;
use wsync_testutils::{assert_success, wsync};

/// A source tree (`code/`) and a state folder (`state/`) in a temp folder.
struct Fixture {
    tmp: TempDir,
    root: PathBuf,
    state: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("code");
        let state = tmp.path().join("state");
        Self { tmp, root, state }
    }

    fn touch(&self, rel: &str, text: &str) {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// `wsync --state-dir STATE projects ARGS...`, any exit status.
    fn projects(&self, args: &[&str]) -> Output {
        let mut all = vec!["--state-dir", self.state.to_str().unwrap(), "projects"];
        all.extend_from_slice(args);
        wsync(self.tmp.path(), &all)
    }

    /// Like [`Fixture::projects`], but must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.projects(args);
        assert_success(&out, &format!("wsync projects {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn discover(&self) -> String {
        self.ok(&["discover", self.root.to_str().unwrap()])
    }

    fn list(&self) -> Vec<Value> {
        let out = self.ok(&["list", "--json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

fn find<'a>(projects: &'a [Value], name: &str) -> &'a Value {
    projects
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no project {name} in {projects:#?}"))
}

#[test]
fn discovers_all_four_kinds_and_skips_ignored_folders() {
    let f = Fixture::new();
    f.touch("engine/Cargo.toml", "[package]\nname = \"engine\"\n");
    f.touch("engine/src/main.rs", "fn main() {}\n");
    f.touch("web/package.json", r#"{"scripts": {"dev": "vite"}}"#);
    f.touch("api/package.json", r#"{"scripts": {"start": "node ."}}"#);
    f.touch("ml/pyproject.toml", "[project]\nname = \"ml\"\n");
    f.touch("ml/ml/__main__.py", "print('hi')\n");
    f.touch("svc/go.mod", "module svc\n");
    // Never descended into, or ignored by rules.
    f.touch("web/node_modules/dep/package.json", "{}");
    f.touch("engine/target/debug/build/x/Cargo.toml", "");
    f.touch("ml/.venv/lib/site/pkg/setup.py", "");
    f.touch(".git/hooks/package.json", "{}");
    f.touch(".gitignore", "generated/\n");
    f.touch("generated/out/go.mod", "module gen\n");

    let out = f.discover();
    assert!(out.contains("added"), "{out}");
    let projects = f.list();
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
    assert!(f.state.join("projects.json").is_file());
    // The human listing has every project.
    let text = f.ok(&["list"]);
    for name in names {
        assert!(text.contains(name), "{text}");
    }
}

#[test]
fn user_commands_survive_rediscovery_and_names_disambiguate() {
    let f = Fixture::new();
    f.touch("a/app/go.mod", "module a\n");
    f.touch("b/app/Cargo.toml", "");
    f.discover();
    let projects = f.list();
    assert_eq!(find(&projects, "app")["kind"], "go");
    assert_eq!(find(&projects, "app-2")["kind"], "rust");

    f.ok(&["set", "app-2", "--command", "cargo run --release"]);
    f.discover();
    let projects = f.list();
    assert_eq!(find(&projects, "app-2")["command"], "cargo run --release");
    assert_eq!(find(&projects, "app-2")["user_command"], true);
    assert_eq!(projects.len(), 2);

    let out = f.projects(&["set", "nope", "--command", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn launch_runs_in_the_project_folder_and_passes_the_exit_code_through() {
    let f = Fixture::new();
    f.touch("tool/requirements.txt", "");
    f.discover();
    f.ok(&["set", "tool", "--command", "pwd > where.txt; exit 7"]);
    let out = f.projects(&["launch", "tool"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let where_ = std::fs::read_to_string(f.root.join("tool/where.txt")).unwrap();
    assert_eq!(
        Path::new(where_.trim()).canonicalize().unwrap(),
        f.root.join("tool").canonicalize().unwrap()
    );

    f.ok(&["set", "tool", "--command", "true"]);
    assert_eq!(f.projects(&["launch", "tool"]).status.code(), Some(0));

    // Killed by a signal: 128 + the signal number, as shells report it.
    f.ok(&["set", "tool", "--command", "kill -TERM $$"]);
    assert_eq!(
        f.projects(&["launch", "tool"]).status.code(),
        Some(128 + 15)
    );

    let out = f.projects(&["launch", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
}
