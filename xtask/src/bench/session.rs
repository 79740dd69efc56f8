//! `cargo xtask bench session`: `wsync projects discover` over a generated
//! tree against `find` with the same pruning, and `wsync handoff save` (dev
//! servers, ports, git, env) against `ss -ltnp` (listening sockets and their
//! processes).

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, Result, bail};

use super::{BenchCtx, Row, ms, stats, time_n};

/// Runs the session benchmarks.
pub fn run(ctx: &BenchCtx) -> Result<Vec<Row>> {
    let (groups, n) = if ctx.quick { (10, 10) } else { (40, 40) };
    let tmp = tempfile::tempdir().context("cannot create a temp folder")?;
    let root = tmp.path().join("code");
    let state = tmp.path().join("state");
    let files = make_tree(&root, groups)?;
    let mut rows = Vec::new();

    let root_arg = root.to_string_lossy().into_owned();
    let state_arg = state.to_string_lossy().into_owned();
    let mut discover = time_n(n, || {
        run_ok(
            tmp.path(),
            &ctx.wsync,
            &["--state-dir", &state_arg, "projects", "discover", &root_arg],
        )
    })?;
    let find_args = [
        root_arg.as_str(),
        "(",
        "-name",
        "node_modules",
        "-o",
        "-name",
        "target",
        "-o",
        "-name",
        ".venv",
        "-o",
        "-name",
        ".git",
        ")",
        "-prune",
        "-o",
        "(",
        "-name",
        "Cargo.toml",
        "-o",
        "-name",
        "package.json",
        "-o",
        "-name",
        "go.mod",
        "-o",
        "-name",
        "pyproject.toml",
        "-o",
        "-name",
        "requirements.txt",
        ")",
        "-print",
    ];
    let mut find = time_n(n, || run_ok(tmp.path(), Path::new("find"), &find_args))?;
    let (d, f) = (stats(&mut discover), stats(&mut find));
    rows.push(
        Row::versus(
            format!(
                "`projects discover`, {} projects, {files} files (most under pruned folders), p50",
                groups * 4
            ),
            ms(d.p50),
            "find with -prune",
            ms(f.p50),
            "ms",
        )
        .goal("≤ 3× (also parses package.json, loads and merges the registry)"),
    );

    // Three listening dev servers under the root.
    let mut servers = Vec::new();
    for i in 0..3 {
        let dir = root.join(format!("g{i}/node{i}"));
        servers.push(KillOnDrop(
            Command::new("python3")
                .args(["-m", "http.server", "0", "--bind", "127.0.0.1"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start python3 -m http.server")?,
        ));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut save = time_n(n, || {
        run_ok(
            &root,
            &ctx.wsync,
            &[
                "--workspace",
                &root_arg,
                "--state-dir",
                &state_arg,
                "handoff",
                "save",
            ],
        )
    })?;
    let mut ss = time_n(n, || run_ok(&root, Path::new("ss"), &["-ltnp"]))?;
    let (s, p) = (stats(&mut save), stats(&mut ss));
    rows.push(
        Row::versus(
            "`handoff save` with 3 dev servers (scan /proc, ports, git), p50",
            ms(s.p50),
            "ss -ltnp",
            ms(p.p50),
            "ms",
        )
        .goal("≤ 3×"),
    );
    drop(servers);
    Ok(rows)
}

/// `groups` folders each holding a Rust, Node, Python and Go project; the
/// Node ones carry a `node_modules` of 200 files and the Rust ones a
/// `target` of 100. Returns the number of files.
fn make_tree(root: &Path, groups: usize) -> Result<usize> {
    let mut files = 0;
    let mut write = |rel: String, text: &str| -> Result<()> {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        files += 1;
        Ok(())
    };
    for g in 0..groups {
        write(format!("g{g}/rust{g}/Cargo.toml"), "[package]\n")?;
        write(format!("g{g}/rust{g}/src/main.rs"), "fn main() {}\n")?;
        for i in 0..100 {
            write(format!("g{g}/rust{g}/target/debug/deps/f{i}.d"), "x")?;
        }
        write(
            format!("g{g}/node{g}/package.json"),
            r#"{"scripts": {"dev": "vite"}}"#,
        )?;
        for i in 0..200 {
            write(
                format!("g{g}/node{g}/node_modules/dep{}/f{i}.js", i % 20),
                "{}",
            )?;
        }
        write(format!("g{g}/py{g}/requirements.txt"), "")?;
        write(format!("g{g}/py{g}/main.py"), "")?;
        write(format!("g{g}/go{g}/go.mod"), "module x\n")?;
        write(format!("g{g}/go{g}/main.go"), "package main\n")?;
    }
    Ok(files)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_ok(dir: &Path, program: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !status.success() {
        bail!("{} {args:?} failed: {status}", program.display());
    }
    Ok(())
}
