//! The project launcher: discovery of Rust, Node, Python and Go projects and
//! the JSON registry of their launch commands.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil;

/// The registry's file name in the state folder.
pub const REGISTRY_FILE: &str = "projects.json";

/// Folders discovery never descends into.
const NEVER_DESCEND: &[&str] = &[
    "node_modules",
    "target",
    ".venv",
    "venv",
    ".git",
    "__pycache__",
    ".wsync",
];

/// A project's language, by its marker file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectKind {
    /// `Cargo.toml`.
    Rust,
    /// `go.mod`.
    Go,
    /// `package.json`.
    Node,
    /// `pyproject.toml`, `setup.py` or `requirements.txt`.
    Python,
}

impl ProjectKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Go => "go",
            Self::Node => "node",
            Self::Python => "python",
        }
    }
}

/// A project found by [`discover`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    /// Its folder's name (the registry may add a suffix on collision).
    pub name: String,
    /// Its kind.
    pub kind: ProjectKind,
    /// Its folder (absolute).
    pub path: PathBuf,
    /// The default launch command for its kind.
    pub command: String,
}

/// How to discover.
#[derive(Debug, Clone, Default)]
pub struct DiscoverOptions {
    /// How deep to descend below each root (`None`: no limit).
    pub max_depth: Option<usize>,
}

/// What [`discover`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscoverReport {
    /// The projects, sorted by folder.
    pub found: Vec<Found>,
    /// Files that could not be read or parsed (the project is still found,
    /// with a generic command), and unreadable folders.
    pub warnings: Vec<String>,
}

/// Finds projects under `roots`, respecting `.gitignore`, `.ignore` and git
/// exclude rules (also outside git repositories), skipping hidden folders and
/// never descending into `node_modules`, `target`, `.venv`, `venv`, `.git`,
/// `__pycache__` or `.wsync`.
pub fn discover(roots: &[PathBuf], options: &DiscoverOptions) -> Result<DiscoverReport> {
    let mut report = DiscoverReport::default();
    let mut markers: BTreeMap<PathBuf, ProjectKind> = BTreeMap::new();
    for root in roots {
        let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
        let walker = ignore::WalkBuilder::new(&root)
            .hidden(true)
            .require_git(false)
            .max_depth(options.max_depth)
            .sort_by_file_name(Ord::cmp)
            .filter_entry(|entry| {
                !(entry.file_type().is_some_and(|t| t.is_dir())
                    && entry
                        .file_name()
                        .to_str()
                        .is_some_and(|n| NEVER_DESCEND.contains(&n)))
            })
            .build();
        for entry in walker {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    // An unreadable folder is reported, not fatal; a missing
                    // root was caught by canonicalize above.
                    report.warnings.push(err.to_string());
                    continue;
                }
            };
            // Markers are taken from the walk itself: no extra stat per
            // folder and marker.
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let Some(kind) = entry.file_name().to_str().and_then(marker_kind) else {
                continue;
            };
            if let Some(dir) = entry.path().parent() {
                let best = markers.entry(dir.to_path_buf()).or_insert(kind);
                *best = (*best).min(kind);
            }
        }
    }
    for (dir, kind) in markers {
        report
            .found
            .push(classify(&dir, kind, &mut report.warnings));
    }
    Ok(report)
}

/// The kind a marker file name announces.
fn marker_kind(name: &str) -> Option<ProjectKind> {
    match name {
        "Cargo.toml" => Some(ProjectKind::Rust),
        "go.mod" => Some(ProjectKind::Go),
        "package.json" => Some(ProjectKind::Node),
        "pyproject.toml" | "setup.py" | "requirements.txt" => Some(ProjectKind::Python),
        _ => None,
    }
}

/// The project in `dir` of `kind` (when a folder has several markers the
/// first kind in [`ProjectKind`] order wins: Rust, Go, Node, Python).
fn classify(dir: &Path, kind: ProjectKind, warnings: &mut Vec<String>) -> Found {
    let name = dir.file_name().map_or_else(
        || "project".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let command = match kind {
        ProjectKind::Rust => "cargo run".to_owned(),
        ProjectKind::Go => "go run .".to_owned(),
        ProjectKind::Node => node_command(&dir.join("package.json"), warnings),
        ProjectKind::Python => python_command(dir, &name),
    };
    Found {
        name,
        kind,
        path: dir.to_path_buf(),
        command,
    }
}

/// `npm run dev` when the `dev` script exists, else `npm start`.
fn node_command(package_json: &Path, warnings: &mut Vec<String>) -> String {
    let parsed: Result<Option<serde_json::Value>> = fsutil::read_json(package_json);
    match parsed {
        Ok(Some(value)) => {
            if value
                .pointer("/scripts/dev")
                .is_some_and(serde_json::Value::is_string)
            {
                "npm run dev".to_owned()
            } else {
                "npm start".to_owned()
            }
        }
        Ok(None) => "npm start".to_owned(),
        Err(err) => {
            warnings.push(err.to_string());
            "npm start".to_owned()
        }
    }
}

/// `python3 main.py` (or `app.py`) when there is one; `python3 -m PKG` for a
/// package with `__main__.py` (top level or under `src/`); else
/// `python3 -m <folder name>`.
fn python_command(dir: &Path, name: &str) -> String {
    for script in ["main.py", "app.py"] {
        if dir.join(script).is_file() {
            return format!("python3 {script}");
        }
    }
    for base in [dir.to_path_buf(), dir.join("src")] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        let mut packages: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("__main__.py").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        packages.sort();
        if let Some(pkg) = packages.into_iter().next() {
            return format!("python3 -m {pkg}");
        }
    }
    format!("python3 -m {}", name.replace('-', "_"))
}

/// A registered project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Unique name in the registry.
    pub name: String,
    /// Its kind.
    pub kind: ProjectKind,
    /// Its folder.
    pub path: PathBuf,
    /// The launch command (run with `sh -c` in the folder).
    pub command: String,
    /// Whether the user set the command (re-discovery keeps it).
    #[serde(default)]
    pub user_command: bool,
    /// When discovery first registered it.
    pub discovered_at: DateTime<Utc>,
}

impl Project {
    /// A command that runs the launch command with `sh -c` in the project
    /// folder (stdio inherited).
    pub fn launch_command(&self) -> Result<Command> {
        if self.command.trim().is_empty() {
            return Err(Error::EmptyCommand {
                name: self.name.clone(),
            });
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&self.command).current_dir(&self.path);
        Ok(cmd)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    version: u32,
    projects: Vec<Project>,
}

/// What a merge of discovery results changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MergeReport {
    /// Newly registered names.
    pub added: Vec<String>,
    /// Names whose default command was refreshed.
    pub updated: Vec<String>,
    /// Names whose user-set command was kept.
    pub kept: Vec<String>,
    /// Names dropped because discovery under their root no longer finds them.
    pub removed: Vec<String>,
}

/// The project registry (`<state>/projects.json`).
#[derive(Debug, Clone)]
pub struct Registry {
    path: PathBuf,
    projects: Vec<Project>,
}

impl Registry {
    /// Opens the registry in `state_dir` (empty when the file is missing).
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(REGISTRY_FILE);
        let file: RegistryFile = fsutil::read_json(&path)?.unwrap_or_default();
        Ok(Self {
            path,
            projects: file.projects,
        })
    }

    /// The registry file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The projects, sorted by name.
    pub fn projects(&self) -> &[Project] {
        &self.projects
    }

    /// The project named `name`.
    pub fn get(&self, name: &str) -> Result<&Project> {
        self.projects
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::UnknownProject {
                name: name.to_owned(),
                path: self.path.clone(),
            })
    }

    /// Sets a project's command (marked user-set) and saves.
    pub fn set_command(&mut self, name: &str, command: &str) -> Result<()> {
        if command.trim().is_empty() {
            return Err(Error::EmptyCommand {
                name: name.to_owned(),
            });
        }
        let path = self.path.clone();
        let project = self
            .projects
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::UnknownProject {
                name: name.to_owned(),
                path,
            })?;
        command.clone_into(&mut project.command);
        project.user_command = true;
        self.save()
    }

    /// Merges discovery results for `roots` and saves when anything
    /// changed: new projects are added (a colliding name gets `-2`, `-3`, …),
    /// known ones (by path) keep their name and a user-set command, and
    /// registered projects under one of `roots` that were not found again are
    /// removed.
    pub fn merge(
        &mut self,
        roots: &[PathBuf],
        found: &[Found],
        now: DateTime<Utc>,
    ) -> Result<MergeReport> {
        let roots: Vec<PathBuf> = roots
            .iter()
            .map(|r| r.canonicalize().unwrap_or_else(|_| r.clone()))
            .collect();
        let found_paths: BTreeSet<&Path> = found.iter().map(|f| f.path.as_path()).collect();
        let before = self.projects.clone();
        let mut report = MergeReport::default();
        self.projects.retain(|p| {
            let gone = roots.iter().any(|r| p.path.starts_with(r))
                && !found_paths.contains(p.path.as_path());
            if gone {
                report.removed.push(p.name.clone());
            }
            !gone
        });
        for f in found {
            if let Some(p) = self.projects.iter_mut().find(|p| p.path == f.path) {
                p.kind = f.kind;
                if p.user_command {
                    report.kept.push(p.name.clone());
                } else if p.command != f.command {
                    p.command.clone_from(&f.command);
                    report.updated.push(p.name.clone());
                }
                continue;
            }
            let name = self.unique_name(&f.name);
            report.added.push(name.clone());
            self.projects.push(Project {
                name,
                kind: f.kind,
                path: f.path.clone(),
                command: f.command.clone(),
                user_command: false,
                discovered_at: now,
            });
        }
        self.projects.sort_by(|a, b| a.name.cmp(&b.name));
        if self.projects != before {
            self.save()?;
        }
        Ok(report)
    }

    fn unique_name(&self, base: &str) -> String {
        let taken = |n: &str| self.projects.iter().any(|p| p.name == n);
        if !taken(base) {
            return base.to_owned();
        }
        (2..)
            .map(|i| format!("{base}-{i}"))
            .find(|n| !taken(n))
            .unwrap_or_else(|| base.to_owned())
    }

    /// Writes the registry atomically.
    pub fn save(&self) -> Result<()> {
        fsutil::write_json(
            &self.path,
            &RegistryFile {
                version: 1,
                projects: self.projects.clone(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn touch(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn commands_per_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        touch(
            r,
            "web/package.json",
            r#"{"scripts":{"dev":"vite","start":"node x"}}"#,
        );
        touch(r, "api/package.json", r#"{"scripts":{"start":"node x"}}"#);
        touch(r, "broken/package.json", "{");
        touch(r, "tool/pyproject.toml", "");
        touch(r, "tool/src/my_tool/__main__.py", "");
        touch(r, "script/requirements.txt", "");
        touch(r, "script/main.py", "");
        touch(r, "bare-py/setup.py", "");
        let report = discover(&[r.to_path_buf()], &DiscoverOptions::default()).unwrap();
        let cmd = |name: &str| {
            report
                .found
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.command.as_str())
                .unwrap()
        };
        assert_eq!(cmd("web"), "npm run dev");
        assert_eq!(cmd("api"), "npm start");
        assert_eq!(cmd("broken"), "npm start");
        assert_eq!(cmd("tool"), "python3 -m my_tool");
        assert_eq!(cmd("script"), "python3 main.py");
        assert_eq!(cmd("bare-py"), "python3 -m bare_py");
        assert_eq!(report.warnings.len(), 1);
        assert!(
            report.warnings[0].contains("broken"),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn merge_keeps_user_commands_and_disambiguates() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path().canonicalize().unwrap();
        touch(&r, "a/app/Cargo.toml", "");
        touch(&r, "b/app/go.mod", "");
        let state = tmp.path().join("state");
        let roots = vec![r.clone()];
        let mut reg = Registry::open(&state).unwrap();
        let found = discover(&roots, &DiscoverOptions::default()).unwrap().found;
        let report = reg.merge(&roots, &found, Utc::now()).unwrap();
        assert_eq!(report.added, ["app", "app-2"]);
        // Nothing new: the registry file is not rewritten.
        let written = std::fs::metadata(reg.path()).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = reg.merge(&roots, &found, Utc::now()).unwrap();
        assert_eq!(again, MergeReport::default());
        assert_eq!(
            std::fs::metadata(reg.path()).unwrap().modified().unwrap(),
            written
        );
        reg.set_command("app-2", "go run ./cmd/server").unwrap();

        // Re-discovery: names stable, user command kept, vanished removed.
        std::fs::remove_dir_all(r.join("a")).unwrap();
        touch(&r, "c/app/package.json", "{}");
        let mut reg = Registry::open(&state).unwrap();
        let found = discover(&roots, &DiscoverOptions::default()).unwrap().found;
        let report = reg.merge(&roots, &found, Utc::now()).unwrap();
        assert_eq!(report.removed, ["app"]);
        assert_eq!(report.kept, ["app-2"]);
        assert_eq!(report.added, ["app"]);
        let reg = Registry::open(&state).unwrap();
        assert_eq!(reg.get("app-2").unwrap().command, "go run ./cmd/server");
        assert_eq!(reg.get("app").unwrap().kind, ProjectKind::Node);
        assert!(matches!(reg.get("nope"), Err(Error::UnknownProject { .. })));
    }
}
