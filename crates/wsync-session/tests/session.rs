//! The library end to end: save in one tree, resume in a clone, connect
//! plans, and registry invariants under random re-discoveries.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use wsync_session::{
    BranchCheck, ConnectOptions, DiscoverOptions, Error, HandoffStore, Registry, SaveInput,
    SessionOptions, SyncMode, TmuxInfo, connect_plan, discover, resume,
};
use wsync_testutils::{TestRemote, git};

#[test]
fn save_in_one_clone_resume_in_another() {
    let remote = TestRemote::new();
    let here = remote.clone_repo("here");
    let there = remote.clone_repo("there");
    here.write("crates/core/lib.rs", "// work\n");
    here.commit_all("work");
    git(here.path(), &["push", "-q", "origin", "HEAD:main"]);

    let store = HandoffStore::new(here.path());
    let input = SaveInput {
        env: BTreeMap::from([
            ("RUST_LOG".to_owned(), "trace".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ]),
        tmux: TmuxInfo::parse("dev:1"),
        note: Some("continue".into()),
        ..SaveInput::new(here.path().join("crates/core"))
    };
    let options = SessionOptions {
        env_allow: vec!["RUST_LOG".into()],
        ..SessionOptions::default()
    };
    let report = store.save(&input, &options).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let saved = store.load().unwrap();
    assert_eq!(saved, report.handoff);
    assert_eq!(saved.folder, PathBuf::from("crates/core"));
    assert_eq!(saved.env.len(), 1);
    assert_eq!(saved.tmux.as_ref().map(|t| t.session.as_str()), Some("dev"));

    // The other machine has not pulled yet: same branch, older HEAD.
    let r = resume(&saved, there.path()).unwrap();
    assert_eq!(r.folder, there.path().join("crates/core"));
    assert!(!r.folder_exists);
    assert!(
        matches!(r.branch, BranchCheck::HeadDiffers { .. }),
        "{:?}",
        r.branch
    );
    git(there.path(), &["pull", "-q", "origin", "main"]);
    let r = resume(&saved, there.path()).unwrap();
    assert!(r.folder_exists);
    assert_eq!(r.branch, BranchCheck::Same);

    // And the plan to get there.
    let plan = connect_plan(
        &saved,
        here.path(),
        &ConnectOptions {
            host: "laptop".into(),
            remote_root: Some(there.path().to_path_buf()),
            sync: SyncMode::None,
            ..ConnectOptions::default()
        },
    )
    .unwrap();
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.remote_folder, there.path().join("crates/core"));
    let remote_cmd = plan.steps[0].args.last().unwrap();
    assert!(
        remote_cmd.contains("tmux attach-session -t dev:1"),
        "{remote_cmd}"
    );
}

#[test]
fn a_corrupt_registry_is_an_error_naming_the_file() {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        state.path().join("projects.json"),
        "{\"version\": 1, \"projects\": [",
    )
    .unwrap();
    let err = Registry::open(state.path()).unwrap_err();
    assert!(matches!(err, Error::Json { .. }), "{err}");
    assert!(err.to_string().contains("projects.json"), "{err}");
}

#[test]
fn a_missing_root_is_an_error_naming_it() {
    let err = discover(
        &[PathBuf::from("/no/such/root")],
        &DiscoverOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/no/such/root"), "{err}");
}

fn make_tree(root: &Path, projects: &[(usize, usize, u8)]) {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    let markers = ["Cargo.toml", "go.mod", "package.json", "requirements.txt"];
    for &(group, name, kind) in projects {
        let dir = root.join(format!("g{group}")).join(format!("p{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(markers[usize::from(kind) % 4]), "{}").unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Over random sequences of trees: names stay unique, every found folder
    /// is registered exactly once, nothing else is, and a user-set command
    /// survives as long as its folder is found.
    #[test]
    fn registry_invariants_under_rediscovery(
        rounds in proptest::collection::vec(
            proptest::collection::vec((0..3usize, 0..3usize, 0..4u8), 0..6), 1..4)
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        let state = tmp.path().join("state");
        let mut user_set: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (round, tree) in rounds.iter().enumerate() {
            make_tree(&root, tree);
            let roots = vec![root.clone()];
            let found = discover(&roots, &DiscoverOptions::default()).unwrap().found;
            let mut reg = Registry::open(&state).unwrap();
            reg.merge(&roots, &found, chrono::Utc::now()).unwrap();
            let reg = Registry::open(&state).unwrap();
            let names: std::collections::BTreeSet<_> = reg.projects().iter().map(|p| p.name.clone()).collect();
            prop_assert_eq!(names.len(), reg.projects().len());
            let mut paths: Vec<_> = reg.projects().iter().map(|p| p.path.clone()).collect();
            paths.sort();
            let mut found_paths: Vec<_> = found.iter().map(|f| f.path.clone()).collect();
            found_paths.sort();
            prop_assert_eq!(&paths, &found_paths);
            user_set.retain(|path, _| found_paths.contains(path));
            for (path, command) in &user_set {
                let p = reg.projects().iter().find(|p| &p.path == path).unwrap();
                prop_assert_eq!(&p.command, command);
            }
            // Set a command on the first project of this round.
            if let Some(first) = reg.projects().first() {
                let command = format!("run round {round}");
                let mut reg = Registry::open(&state).unwrap();
                reg.set_command(&first.name, &command).unwrap();
                user_set.insert(first.path.clone(), command);
            }
        }
    }
}

/// A private tmux server (its own `TMUX_TMPDIR`), killed on drop.
struct TmuxServer {
    tmpdir: PathBuf,
}

impl TmuxServer {
    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("tmux");
        cmd.env("TMUX_TMPDIR", &self.tmpdir).env("SHELL", "/bin/sh");
        cmd
    }
}

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

/// Runs `script` (a file) under a pseudo-terminal with `util-linux`
/// `script`, as `ssh -t` would on the host; waits at most 20 s.
fn run_in_pty(script_file: &Path, tmux: &TmuxServer) -> bool {
    let mut child = std::process::Command::new("script")
        .arg("-qec")
        .arg(format!("/bin/sh {}", script_file.display()))
        .arg("/dev/null")
        .env("TMUX_TMPDIR", &tmux.tmpdir)
        .env("SHELL", "/bin/sh")
        // ssh -t passes the user's terminal type; tmux needs one.
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let done = wsync_testutils::wait_until(std::time::Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !done {
        let _ = child.kill();
    }
    let _ = child.wait();
    done
}

/// The remote command with real tmux in a real pty: without the session it
/// creates it in the saved folder; with the session it attaches instead.
#[test]
fn with_tmux_the_remote_command_creates_then_attaches_the_session() {
    let has = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("tmux", "-V") || !has("script", "--version") {
        eprintln!("skipping: tmux or script (util-linux) is not installed");
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let root = host.path().join("ws");
    std::fs::create_dir_all(root.join("app")).unwrap();
    let tmux = TmuxServer {
        tmpdir: host.path().join("tmux"),
    };
    std::fs::create_dir(&tmux.tmpdir).unwrap();
    // The user's login shell (what a new tmux session runs) records where
    // it started, then exits, which ends the session and the client.
    let shell = host.path().join("login-shell");
    let ran = host.path().join("shell-ran");
    std::fs::write(
        &shell,
        format!("#!/bin/sh\necho \"$PWD\" > {}\n", ran.display()),
    )
    .unwrap();
    assert!(
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&shell)
            .status()
            .unwrap()
            .success()
    );
    let handoff = wsync_session::Handoff {
        version: 1,
        root: "/elsewhere/ws".into(),
        folder: "app".into(),
        git: None,
        tmux: TmuxInfo::parse("dev work:2"),
        servers: Vec::new(),
        env: BTreeMap::new(),
        host: "desk".into(),
        saved_at: chrono::Utc::now(),
        note: None,
    };
    let plan = connect_plan(
        &handoff,
        Path::new("/elsewhere/ws"),
        &ConnectOptions {
            host: "laptop".into(),
            remote_root: Some(root.clone()),
            sync: SyncMode::None,
            ..ConnectOptions::default()
        },
    )
    .unwrap();
    let remote_command = plan.steps[0].args.last().unwrap();
    let script_file = host.path().join("remote.sh");
    std::fs::write(
        &script_file,
        format!(
            "SHELL={}; export SHELL\n{remote_command}\n",
            shell.display()
        ),
    )
    .unwrap();

    // No session yet: created, in the folder.
    assert!(
        run_in_pty(&script_file, &tmux),
        "tmux client did not finish"
    );
    let started_in = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(started_in.trim(), root.join("app").to_string_lossy());

    // The session exists (running a short command): attached, not created.
    std::fs::remove_file(&ran).unwrap();
    let made = tmux
        .command()
        .args(["new-session", "-d", "-s", "dev work", "sleep 1"])
        .status()
        .unwrap();
    assert!(made.success());
    assert!(
        run_in_pty(&script_file, &tmux),
        "tmux client did not finish"
    );
    assert!(
        !ran.exists(),
        "a new session was created instead of attaching"
    );
}
