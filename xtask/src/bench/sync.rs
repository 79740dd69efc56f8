//! `cargo xtask bench sync`: one sync cycle on a 10,000-file repository
//! with a local bare remote — the full `wsync sync` run (lock, pause,
//! snapshot, filter, commit, fetch, integrate, push, log) against the
//! gitwatch-style shell cycle
//! `git add -A && git commit && git pull --rebase && git push`.
//!
//! Two scenarios, each tool on its own clone and its own bare remote:
//! one local edit with a quiet remote, and one local edit while another
//! clone has pushed one commit (wsync merges, the shell cycle rebases).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::{BenchCtx, Row, ms, stats};

const GIT_ENV: &[(&str, &str)] = &[
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_AUTHOR_NAME", "bench"),
    ("GIT_AUTHOR_EMAIL", "bench@wsync.invalid"),
    ("GIT_COMMITTER_NAME", "bench"),
    ("GIT_COMMITTER_EMAIL", "bench@wsync.invalid"),
    ("GIT_TERMINAL_PROMPT", "0"),
    ("LC_ALL", "C"),
];

fn hermetic(cmd: &mut Command) -> &mut Command {
    cmd.envs(GIT_ENV.iter().copied())
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("WSYNC_LOG")
        .stdin(Stdio::null())
}

fn exec(cmd: &mut Command, what: &str) -> Result<()> {
    let out = hermetic(cmd)
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    exec(
        Command::new("git").current_dir(dir).args(args),
        &format!("git {args:?} in {}", dir.display()),
    )
}

/// A bare remote holding a 10,000-file commit, and `clones` clones of it.
fn setup(root: &Path, name: &str, files: usize, clones: &[&str]) -> Result<Vec<PathBuf>> {
    let seed = root.join(format!("{name}-seed"));
    std::fs::create_dir_all(&seed)?;
    git(&seed, &["init", "-q", "-b", "main"])?;
    for i in 0..files {
        let dir = seed.join(format!("d{:03}", i / 100));
        std::fs::create_dir_all(&dir)?;
        let mut body = String::new();
        for line in 0..8 {
            body.push_str(&format!(
                "file {i} line {line}: some ordinary source text\n"
            ));
        }
        std::fs::write(dir.join(format!("f{i:05}.txt")), body)?;
    }
    git(&seed, &["add", "-A"])?;
    git(&seed, &["commit", "-q", "-m", "generated"])?;
    let bare = root.join(format!("{name}.git"));
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            seed.to_str().context("utf-8 path")?,
            bare.to_str().context("utf-8 path")?,
        ],
    )?;
    std::fs::remove_dir_all(&seed)?;
    let mut out = Vec::new();
    for c in clones {
        let path = root.join(format!("{name}-{c}"));
        git(
            root,
            &[
                "clone",
                "-q",
                bare.to_str().context("utf-8 path")?,
                path.to_str().context("utf-8 path")?,
            ],
        )?;
        git(&path, &["config", "user.name", "bench"])?;
        git(&path, &["config", "user.email", "bench@wsync.invalid"])?;
        git(&path, &["config", "gc.auto", "0"])?;
        out.push(path);
    }
    Ok(out)
}

fn edit(work: &Path, round: usize, files: usize) -> Result<()> {
    let i = (round * 7919 + 13) % files;
    let path = work.join(format!("d{:03}/f{i:05}.txt", i / 100));
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&format!("edited in round {round}\n"));
    std::fs::write(&path, text)?;
    Ok(())
}

/// Another machine pushes one commit touching one file.
fn remote_commit(other: &Path) -> Result<()> {
    static ROUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    git(other, &["pull", "-q", "--rebase"])?;
    let path = other.join(format!("other-{round}.txt"));
    std::fs::write(&path, format!("from the other machine, round {round}\n"))?;
    git(other, &["add", "-A"])?;
    git(other, &["commit", "-q", "-m", "other"])?;
    git(other, &["push", "-q", "origin", "HEAD:main"])
}

fn wsync_cycle(ctx: &BenchCtx, work: &Path) -> Result<()> {
    exec(
        Command::new(&ctx.wsync)
            .current_dir(work)
            .args(["-q", "sync"]),
        "wsync sync",
    )
}

fn shell_cycle(work: &Path) -> Result<()> {
    exec(
        Command::new("sh").current_dir(work).args([
            "-c",
            "git add -A && git commit -q -m 'auto sync' && git pull -q --rebase && git push -q",
        ]),
        "the gitwatch-style cycle",
    )
}

fn measure(
    runs: usize,
    files: usize,
    work: &Path,
    other: Option<&Path>,
    cycle: &dyn Fn(&Path) -> Result<()>,
) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(runs);
    // One warm-up round, not measured.
    for round in 0..=runs {
        if let Some(o) = other {
            remote_commit(o)?;
        }
        edit(work, round, files)?;
        let t = Instant::now();
        cycle(work)?;
        if round > 0 {
            samples.push(t.elapsed());
        }
    }
    Ok(samples)
}

/// Runs the sync benchmark.
pub fn run(ctx: &BenchCtx) -> Result<Vec<Row>> {
    let (files, runs) = if ctx.quick { (10_000, 5) } else { (10_000, 21) };
    let tmp = tempfile::tempdir().context("cannot create a temp folder")?;
    let root = tmp.path();
    eprintln!("generating two {files}-file repositories with bare remotes…");
    let w = setup(root, "wsync", files, &["work", "other"])?;
    let g = setup(root, "shell", files, &["work", "other"])?;
    let (w_work, w_other) = (&w[0], &w[1]);
    let (g_work, g_other) = (&g[0], &g[1]);
    exec(
        Command::new(&ctx.wsync)
            .current_dir(w_work)
            .args(["-q", "init"]),
        "wsync init",
    )?;
    let wsync = |p: &Path| wsync_cycle(ctx, p);
    let mut rows = Vec::new();

    // Interleave the tools so that machine noise hits both alike.
    let mut ws_quiet = Vec::new();
    let mut sh_quiet = Vec::new();
    for _ in 0..runs {
        ws_quiet.extend(measure(1, files, w_work, None, &wsync)?);
        sh_quiet.extend(measure(1, files, g_work, None, &shell_cycle)?);
    }
    let (a, b) = (stats(&mut ws_quiet), stats(&mut sh_quiet));
    rows.push(
        Row::versus(
            "sync cycle, 10k files, 1 local edit, quiet remote (p50)",
            ms(a.p50),
            "add+commit+pull --rebase+push",
            ms(b.p50),
            "ms",
        )
        .goal("≤ 0.8×"),
    );
    rows.push(Row::versus(
        "same, p95",
        ms(a.p95),
        "add+commit+pull --rebase+push",
        ms(b.p95),
        "ms",
    ));

    let mut ws_busy = Vec::new();
    let mut sh_busy = Vec::new();
    for _ in 0..runs {
        ws_busy.extend(measure(1, files, w_work, Some(w_other), &wsync)?);
        sh_busy.extend(measure(1, files, g_work, Some(g_other), &shell_cycle)?);
    }
    let (a, b) = (stats(&mut ws_busy), stats(&mut sh_busy));
    rows.push(
        Row::versus(
            "sync cycle, 10k files, 1 local edit + 1 remote commit (p50)",
            ms(a.p50),
            "add+commit+pull --rebase+push",
            ms(b.p50),
            "ms",
        )
        .goal("≤ 0.8×"),
    );
    rows.push(Row::versus(
        "same, p95",
        ms(a.p95),
        "add+commit+pull --rebase+push",
        ms(b.p95),
        "ms",
    ));

    // Where wsync's time goes (from its own sync.log, quiet-remote runs).
    let log = std::fs::read_to_string(w_work.join(".wsync/sync.log")).unwrap_or_default();
    let mut per_phase: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for p in v["phases"].as_array().into_iter().flatten() {
            if let (Some(name), Some(ms)) = (p["phase"].as_str(), p["ms"].as_f64()) {
                per_phase.entry(name.to_owned()).or_default().push(ms);
            }
        }
    }
    for (name, mut v) in per_phase {
        v.sort_by(f64::total_cmp);
        let median = v.get(v.len() / 2).copied().unwrap_or(0.0);
        rows.push(Row::solo(
            format!("wsync phase `{name}` (p50, in-process)"),
            median,
            "ms",
        ));
    }
    Ok(rows)
}
