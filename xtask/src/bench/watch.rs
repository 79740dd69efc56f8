//! `cargo xtask bench watch`: intelligent auto-sync against a gitwatch-style
//! loop.
//!
//! - Latency: a user edit → the commit on the bare remote, with the code
//!   debounce set to 0.5 s (goal: p50 ≤ debounce + 300 ms). Peers: the
//!   gitwatch-style shell loop below, measured in the same run, and the old
//!   system's claimed ~5 s as a reference.
//! - Idle: the daemon's RSS and CPU over 60 s (15 s with `--quick`), with
//!   the watcher on and nothing happening.
//! - Soak: 10 min (about 1 min with `--quick`) of an autonomous writer
//!   (status JSON every second, timestamp-only context every 5 s, a log
//!   line every second) with a user edit every 30 s (10 s quick) in the
//!   first 80 %, then only the writer: commits, commits touching system
//!   paths (goal 0) and commits in the idle tail (goal 0), wsync and the
//!   shell loop side by side on their own clones and remotes.
//!
//! The peer is what `gitwatch` does, built from `git` and `sh` only (no
//! inotifywait here): poll `git status` every 200 ms, wait 0.5 s after a
//! change, then `git add -A && git commit && git push`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

const SYSTEM: [&str; 3] = [
    ".claude/autonomous/service-status.json",
    ".claude/memory/enhanced-context.json",
    "logs/agent.log",
];

const PEER_LOOP: &str = r#"
while true; do
  if [ -n "$(git status --porcelain)" ]; then
    sleep 0.5
    git add -A >/dev/null 2>&1
    git commit -q -m "auto" >/dev/null 2>&1
    git push -q origin HEAD:main >/dev/null 2>&1
  fi
  sleep 0.2
done
"#;

fn cmd(program: &str, dir: &Path) -> Command {
    let mut c = Command::new(program);
    c.current_dir(dir)
        .envs(GIT_ENV.iter().copied())
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("WSYNC_LOG")
        .stdin(Stdio::null());
    c
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = cmd("git", dir)
        .args(args)
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {args:?} in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A bare remote and one clone with a first commit, in `root/name`.
fn setup(root: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    git(&dir, &["init", "-q", "--bare", "-b", "main", "remote.git"])?;
    git(&dir, &["clone", "-q", "remote.git", "ws"])?;
    let ws = dir.join("ws");
    std::fs::write(ws.join("README.md"), "# bench\n")?;
    git(&ws, &["add", "-A"])?;
    git(&ws, &["commit", "-q", "-m", "initial"])?;
    git(&ws, &["push", "-q", "origin", "HEAD:main"])?;
    Ok((dir.join("remote.git"), ws))
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_wsync(ctx: &BenchCtx, ws: &Path, code_ms: u64) -> Result<Proc> {
    let state = ws.join(".wsync");
    let out = cmd(ctx.wsync.to_str().unwrap_or("wsync"), ws)
        .arg("init")
        .output()?;
    if !out.status.success() {
        bail!("wsync init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let config = serde_json::json!({
        "enabled": true,
        "watch": { "enabled": true, "code_debounce_ms": code_ms, "default_debounce_ms": 2000,
                   "system_debounce_ms": 5000, "max_wait_ms": 10000 },
        "ratelimit": { "enabled": false },
    });
    std::fs::write(state.join("config.json"), config.to_string())?;
    let child = cmd(ctx.wsync.to_str().unwrap_or("wsync"), ws)
        .args(["daemon", "run", "--log-file"])
        .arg(state.join("daemon.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the wsync daemon")?;
    let p = Proc(child);
    let end = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(state.join("daemon.log"))
        .unwrap_or_default()
        .contains("watching")
    {
        if Instant::now() > end {
            bail!("the wsync daemon did not start watching");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(p)
}

fn start_peer(ws: &Path) -> Result<Proc> {
    let child = cmd("sh", ws)
        .args(["-c", PEER_LOOP])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the shell loop")?;
    Ok(Proc(child))
}

fn remote_head(bare: &Path) -> String {
    git(bare, &["rev-parse", "main"])
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Edit, then time until the bare remote's main moves.
fn latencies(ws: &Path, bare: &Path, n: usize, tag: &str) -> Result<Vec<Duration>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let before = remote_head(bare);
        let t = Instant::now();
        std::fs::create_dir_all(ws.join("src"))?;
        std::fs::write(
            ws.join("src/app.py"),
            format!("# {tag} edit {i}\nprint({i})\n"),
        )?;
        loop {
            if remote_head(bare) != before {
                v.push(t.elapsed());
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("{tag}: edit {i} never reached the remote");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(1200));
    }
    Ok(v)
}

fn proc_stat(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the comm: state is index 0; utime 11, stime 12 (clock ticks).
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    Ok((rss_kb / 1024.0, ticks / 100.0))
}

fn anon_mb(pid: u32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Anonymous:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(kb / 1024.0)
}

fn writer(dirs: Vec<PathBuf>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let now = chrono::Utc::now().to_rfc3339();
            for ws in &dirs {
                let w = |rel: &str, text: &str| {
                    let p = ws.join(rel);
                    if let Some(d) = p.parent() {
                        let _ = std::fs::create_dir_all(d);
                    }
                    let _ = std::fs::write(p, text);
                };
                w(
                    SYSTEM[0],
                    &format!("{{\"tick\": {n}, \"timestamp\": \"{now}\"}}\n"),
                );
                if n.is_multiple_of(5) {
                    w(
                        SYSTEM[1],
                        &format!("{{\"focus\": \"bench\", \"timestamp\": \"{now}\"}}\n"),
                    );
                }
                let mut log = std::fs::read_to_string(ws.join(SYSTEM[2])).unwrap_or_default();
                if log.len() > 100_000 {
                    log.clear();
                }
                log.push_str(&format!("{now} tick {n}\n"));
                w(SYSTEM[2], &log);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}

struct SoakCounts {
    commits: f64,
    system_commits: f64,
    idle_commits: f64,
}

fn counts(bare: &Path, base: &str, idle_from: &str) -> Result<SoakCounts> {
    let commits: f64 = git(
        bare,
        &[
            "rev-list",
            "--count",
            "--no-merges",
            &format!("{base}..main"),
        ],
    )?
    .trim()
    .parse()?;
    let idle: f64 = git(
        bare,
        &["rev-list", "--count", &format!("{idle_from}..main")],
    )?
    .trim()
    .parse()?;
    let mut system = 0.0;
    for c in git(bare, &["rev-list", &format!("{base}..main")])?.lines() {
        let files = git(bare, &["show", "--name-only", "--format=", c])?;
        if files.lines().any(|f| SYSTEM.contains(&f)) {
            system += 1.0;
        }
    }
    Ok(SoakCounts {
        commits,
        system_commits: system,
        idle_commits: idle,
    })
}

/// Runs the benchmark.
pub fn run(ctx: &BenchCtx) -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir().context("cannot create a temp folder")?;
    let root = tmp.path();
    let mut rows = Vec::new();
    let n = if ctx.quick { 8 } else { 25 };

    // Latency.
    let (w_bare, w_ws) = setup(root, "lat-wsync")?;
    let (p_bare, p_ws) = setup(root, "lat-peer")?;
    let lat_w = {
        let _d = start_wsync(ctx, &w_ws, 500)?;
        latencies(&w_ws, &w_bare, n, "wsync")?
    };
    let lat_p = {
        let _p = start_peer(&p_ws)?;
        latencies(&p_ws, &p_bare, n, "peer")?
    };
    let (mut lw, mut lp) = (lat_w.clone(), lat_p.clone());
    let (sw, sp) = (stats(&mut lw), stats(&mut lp));
    rows.push(
        Row::versus(
            "edit → remote p50 (code debounce 0.5 s)",
            ms(sw.p50),
            "gitwatch-style sh loop",
            ms(sp.p50),
            "ms",
        )
        .goal("p50 ≤ 800 ms"),
    );
    rows.push(Row::versus(
        "edit → remote p95",
        ms(sw.p95),
        "gitwatch-style sh loop",
        ms(sp.p95),
        "ms",
    ));
    rows.push(Row::versus(
        "edit → remote p50 vs the old system's claim",
        ms(sw.p50),
        "old system (claimed)",
        5000.0,
        "ms",
    ));

    // Idle.
    let idle_secs = if ctx.quick { 15 } else { 60 };
    let (_i_bare, i_ws) = setup(root, "idle")?;
    {
        let d = start_wsync(ctx, &i_ws, 500)?;
        std::thread::sleep(Duration::from_secs(2));
        let pid = d.0.id();
        let (_, cpu0) = proc_stat(pid)?;
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(idle_secs));
        let (rss, cpu1) = proc_stat(pid)?;
        let anon = anon_mb(pid)?;
        let cpu_pct = (cpu1 - cpu0) / t.elapsed().as_secs_f64() * 100.0;
        rows.push(
            Row::solo(
                format!("daemon idle RSS (watch on, {idle_secs} s)"),
                rss,
                "MB",
            )
            .goal("≤ 10 MB"),
        );
        rows.push(Row::solo(
            "  of which anonymous (heap, stacks; the rest is shared code pages)",
            anon,
            "MB",
        ));
        rows.push(
            Row::solo(format!("daemon idle CPU over {idle_secs} s"), cpu_pct, "%").goal("≈ 0"),
        );
    }

    // Soak.
    let soak = Duration::from_secs(if ctx.quick { 60 } else { 600 });
    let edit_every = Duration::from_secs(if ctx.quick { 10 } else { 30 });
    let (sw_bare, sw_ws) = setup(root, "soak-wsync")?;
    let (sp_bare, sp_ws) = setup(root, "soak-peer")?;
    let (base_w, base_p) = (remote_head(&sw_bare), remote_head(&sp_bare));
    let stop = Arc::new(AtomicBool::new(false));
    let (idle_w, idle_p) = {
        let _d = start_wsync(ctx, &sw_ws, 500)?;
        let _p = start_peer(&sp_ws)?;
        let wr = writer(vec![sw_ws.clone(), sp_ws.clone()], stop.clone());
        let t0 = Instant::now();
        let user_until = soak.mul_f64(0.8);
        let mut next = Duration::from_secs(2);
        let mut k = 0;
        while t0.elapsed() < user_until {
            if t0.elapsed() >= next {
                k += 1;
                for ws in [&sw_ws, &sp_ws] {
                    std::fs::create_dir_all(ws.join("docs"))?;
                    std::fs::write(
                        ws.join("docs/journal.md"),
                        format!("# Journal\n\nentry {k}\n"),
                    )?;
                }
                next += edit_every;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Let the last edit land, then mark the idle tail.
        std::thread::sleep(Duration::from_secs(5));
        let marks = (remote_head(&sw_bare), remote_head(&sp_bare));
        std::thread::sleep(soak.saturating_sub(t0.elapsed()));
        stop.store(true, Ordering::SeqCst);
        let _ = wr.join();
        marks
    };
    let cw = counts(&sw_bare, &base_w, &idle_w)?;
    let cp = counts(&sp_bare, &base_p, &idle_p)?;
    let label = if ctx.quick { "1 min" } else { "10 min" };
    rows.push(Row::versus(
        format!("soak {label}: commits"),
        cw.commits,
        "gitwatch-style sh loop",
        cp.commits,
        "commits",
    ));
    rows.push(
        Row::versus(
            format!("soak {label}: commits with a system path"),
            cw.system_commits,
            "gitwatch-style sh loop",
            cp.system_commits,
            "commits",
        )
        .goal("0"),
    );
    rows.push(
        Row::versus(
            format!("soak {label}: commits in the idle tail"),
            cw.idle_commits,
            "gitwatch-style sh loop",
            cp.idle_commits,
            "commits",
        )
        .goal("0"),
    );
    Ok(rows)
}
