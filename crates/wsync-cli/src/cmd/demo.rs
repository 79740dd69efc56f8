//! `wsync demo [--keep]`: the whole promise in half a minute, offline.
//!
//! A throwaway workspace with a local bare remote and a second clone; a
//! simulated autonomous system rewriting a status JSON every second, a
//! context file whose only change is a timestamp, and a log; the daemon
//! with the watcher; a few user edits. The daemon's decisions are shown
//! live. At the end the second clone must hold exactly the user's edits
//! and no system file.

use std::collections::BTreeSet;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::json;
use wsync_lock::{PauseGate, WriterOptions};

use crate::cmd::daemon::stop_daemon;
use crate::ctx::Ctx;
use crate::exit;

/// `wsync demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the temporary folder (its path is printed).
    #[arg(long)]
    pub keep: bool,
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .context("cannot run git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {} in {} failed: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn identity(dir: &Path) -> Result<()> {
    git(dir, &["config", "user.name", "wsync demo"])?;
    git(dir, &["config", "user.email", "demo@wsync.invalid"])?;
    git(dir, &["config", "commit.gpgsign", "false"])?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The system paths the simulated autonomous system writes.
const SYSTEM_PATHS: [&str; 3] = [
    ".claude/autonomous/service-status.json",
    ".claude/contexts/project.json",
    "logs/agent.log",
];

/// The simulated autonomous system: status every second, a timestamp-only
/// context update every 2 s, a log line every second; all under the
/// pause gate's writer guard.
fn autonomous(ws: &Path, state: &Path, stop: &AtomicBool, writes: &AtomicU64) -> Result<()> {
    let gate = PauseGate::new(state);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let guard = gate.writer(&WriterOptions {
            name: "demo-autonomous".into(),
            max_wait: Duration::from_secs(30),
            // Declared, so a user save at the same instant is never
            // attributed to this writer.
            paths: SYSTEM_PATHS.iter().map(|p| ws.join(p)).collect(),
        })?;
        let now = chrono::Utc::now().to_rfc3339();
        write(
            &ws.join(SYSTEM_PATHS[0]),
            &format!(
                "{{\n  \"service\": \"running\",\n  \"tick\": {n},\n  \"timestamp\": \"{now}\"\n}}\n"
            ),
        )?;
        if n.is_multiple_of(2) {
            write(
                &ws.join(SYSTEM_PATHS[1]),
                &format!(
                    "{{\n  \"project\": \"demo\",\n  \"focus\": \"parser\",\n  \"last_update\": \"{now}\"\n}}\n"
                ),
            )?;
        }
        let log = ws.join(SYSTEM_PATHS[2]);
        let mut text = std::fs::read_to_string(&log).unwrap_or_default();
        text.push_str(&format!("{now} tick {n}\n"));
        write(&log, &text)?;
        guard.finish()?;
        writes.fetch_add(if n.is_multiple_of(2) { 3 } else { 2 }, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// The simulated writer's thread; stopped and joined on every path out.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Writer {
    fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("the writer thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Prints new daemon log lines with a marker.
struct LogTail {
    path: PathBuf,
    pos: u64,
    /// Set by Ctrl-C: the demo stops, stops the daemon and cleans up.
    interrupted: Arc<AtomicBool>,
}

impl LogTail {
    fn pump(&mut self, ctx: &Ctx, t0: Instant) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return;
        }
        let mut buf = String::new();
        let Ok(n) = f.read_to_string(&mut buf) else {
            return;
        };
        // Only whole lines.
        let whole = buf.rfind('\n').map_or(0, |i| i + 1);
        self.pos += whole.min(n) as u64;
        for line in buf[..whole].lines() {
            let msg = line.split_once(' ').map_or(line, |(_, m)| m);
            let mark = if msg.contains("ignored") || msg.contains("equal HEAD") {
                "  ignored  "
            } else if msg.contains("done") && msg.contains("pushed true") {
                "  PUSHED   "
            } else if msg.contains("sync requested") {
                "  user     "
            } else {
                "  daemon   "
            };
            ctx.say(format!("[{:>5.1}s]{mark}{msg}", t0.elapsed().as_secs_f64()));
        }
    }
}

/// Runs the demo.
pub fn run(ctx: &Ctx, args: &DemoArgs) -> Result<u8> {
    let tmp = tempfile::Builder::new()
        .prefix("wsync-demo-")
        .tempdir()
        .context("cannot create a temp folder")?;
    let root = std::fs::canonicalize(tmp.path()).context("cannot resolve the temp folder")?;
    let interrupted = Arc::new(AtomicBool::new(false));
    crate::cmd::daemon::stop_on_signals(interrupted.clone(), None)?;
    let result = demo(ctx, &root, interrupted);
    if args.keep {
        let kept = tmp.keep();
        ctx.say(format!("kept {}", kept.display()));
    }
    result
}

fn demo(ctx: &Ctx, root: &Path, interrupted: Arc<AtomicBool>) -> Result<u8> {
    let t0 = Instant::now();
    ctx.say(format!("wsync demo in {}", root.display()));
    // Remote, workspace, second machine.
    git(root, &["init", "-q", "--bare", "-b", "main", "remote.git"])?;
    let ws = root.join("workspace");
    let other = root.join("other-machine");
    git(root, &["clone", "-q", "remote.git", "workspace"])?;
    identity(&ws)?;
    write(&ws.join("README.md"), "# demo workspace\n")?;
    write(
        &ws.join(SYSTEM_PATHS[1]),
        "{\n  \"project\": \"demo\",\n  \"focus\": \"parser\",\n  \"last_update\": \"2020-01-01T00:00:00Z\"\n}\n",
    )?;
    git(&ws, &["add", "-A"])?;
    git(&ws, &["commit", "-q", "-m", "initial"])?;
    git(&ws, &["push", "-q", "origin", "HEAD:main"])?;
    git(root, &["clone", "-q", "remote.git", "other-machine"])?;
    identity(&other)?;
    let base = git(root.join("remote.git").as_path(), &["rev-parse", "main"])?
        .trim()
        .to_owned();

    // wsync: state, config with demo-sized debounces, daemon with watcher.
    let state = ws.join(".wsync");
    let demo_ctx = Ctx {
        workspace: ws.clone(),
        state_dir: state.clone(),
        ..ctx.clone()
    };
    wsync_coordinator::init(&ws, &state, &wsync_coordinator::InitOptions::default())?;
    let mut config = wsync_coordinator::Config::load(&state)?;
    for (k, v) in [
        ("enabled", "true"),
        ("watch.enabled", "true"),
        ("watch.code_debounce_ms", "1000"),
        ("watch.default_debounce_ms", "1500"),
        ("watch.system_debounce_ms", "2000"),
        ("watch.max_wait_ms", "4000"),
        ("ratelimit.enabled", "false"),
    ] {
        config = config.with_set(k, v)?;
    }
    config.save(&state)?;
    let exe = std::env::current_exe().context("cannot find the wsync executable")?;
    let log = state.join("daemon.log");
    let mut daemon = Command::new(exe)
        .arg("--workspace")
        .arg(&ws)
        .arg("--state-dir")
        .arg(&state)
        .args(["daemon", "run", "--log-file"])
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the daemon")?;
    let mut tail = LogTail {
        path: log,
        pos: 0,
        interrupted,
    };
    let outcome = (|| -> Result<Summary> {
        wait_for(Duration::from_secs(15), || {
            wsync_coordinator::daemon::status(&state).is_ok_and(|s| s.running)
        })
        .then_some(())
        .context("the daemon did not start")?;
        ctx.say("autonomous system: status JSON every 1 s, timestamp-only context every 2 s, a log line every 1 s");
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            stop: stop.clone(),
            handle: Some({
                let (ws, state, stop, writes) =
                    (ws.clone(), state.clone(), stop.clone(), writes.clone());
                std::thread::spawn(move || autonomous(&ws, &state, &stop, &writes))
            }),
        };
        // The user's edits.
        let edits: [(u64, &str, &str); 3] = [
            (
                3,
                "projects/demo/parser.py",
                "def parse(text):\n    return text.split()\n",
            ),
            (
                8,
                "docs/notes.md",
                "# Notes\n\nThe parser splits on whitespace.\n",
            ),
            (
                13,
                "projects/demo/parser.py",
                "def parse(text):\n    \"\"\"Split on whitespace.\"\"\"\n    return text.split()\n",
            ),
        ];
        let mut next = 0;
        let end_edits = Duration::from_secs(14);
        while t0.elapsed() < end_edits + Duration::from_secs(1) || next < edits.len() {
            if let Some((at, path, text)) = edits.get(next)
                && t0.elapsed() >= Duration::from_secs(*at)
            {
                write(&ws.join(path), text)?;
                ctx.say(format!(
                    "[{:>5.1}s]  USER EDIT  {path}",
                    t0.elapsed().as_secs_f64()
                ));
                next += 1;
            }
            tail.pump(ctx, t0);
            if tail.interrupted.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Wait until the remote holds the last edit (the system keeps writing).
        let want: Vec<(&str, &str)> = vec![(edits[1].1, edits[1].2), (edits[2].1, edits[2].2)];
        let arrived = wait_for_pumped(Duration::from_secs(60), ctx, &mut tail, t0, || {
            want.iter().all(|(p, text)| {
                git(&root.join("remote.git"), &["show", &format!("main:{p}")])
                    .is_ok_and(|s| s == *text)
            })
        });
        if tail.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        // A quiet window: the system writes on, wsync must not commit.
        let head_before = git(&root.join("remote.git"), &["rev-parse", "main"])?
            .trim()
            .to_owned();
        ctx.say("… 6 s more with only the autonomous system writing");
        wait_for_pumped(Duration::from_secs(6), ctx, &mut tail, t0, || false);
        let head_after = git(&root.join("remote.git"), &["rev-parse", "main"])?
            .trim()
            .to_owned();
        writer.finish()?;
        Ok(Summary {
            arrived,
            idle_commits: usize::from(head_before != head_after),
            system_writes: writes.load(Ordering::SeqCst),
        })
    })();
    let stopped = stop_daemon(&state, Duration::from_secs(30));
    let _ = daemon.wait();
    tail.pump(ctx, t0);
    let summary = outcome?;
    stopped?;
    let _ = demo_ctx;

    // The other machine pulls with plain git.
    git(&other, &["pull", "-q", "--ff-only", "origin", "main"])?;
    let files: BTreeSet<String> = git(&other, &["ls-files"])?
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: BTreeSet<String> = [
        "README.md",
        SYSTEM_PATHS[1],
        "docs/notes.md",
        "projects/demo/parser.py",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let commits: Vec<String> = git(&other, &["log", "--format=%s", &format!("{base}..HEAD")])?
        .lines()
        .map(str::to_owned)
        .collect();
    let changed: BTreeSet<String> = git(&other, &["diff", "--name-only", &base, "HEAD"])?
        .lines()
        .map(str::to_owned)
        .collect();
    let user_paths: BTreeSet<String> = ["docs/notes.md", "projects/demo/parser.py"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let same_content = std::fs::read_to_string(other.join("projects/demo/parser.py"))
        .ok()
        .as_deref()
        == std::fs::read_to_string(ws.join("projects/demo/parser.py"))
            .ok()
            .as_deref();
    let ok = summary.arrived
        && files == expected
        && changed == user_paths
        && same_content
        && summary.idle_commits == 0;
    let value = json!({
        "ok": ok,
        "commits_pushed": commits,
        "files_changed_on_other_machine": changed,
        "system_writes": summary.system_writes,
        "system_files_synced": changed.iter().filter(|p| SYSTEM_PATHS.contains(&p.as_str())).count(),
        "idle_commits": summary.idle_commits,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    ctx.emit(&value, || {
        let mut s = String::from("\nsummary\n");
        s.push_str(&format!(
            "  user edits: 3 (2 files); commits pushed: {}\n",
            commits.len()
        ));
        for c in &commits {
            s.push_str(&format!("    - {c}\n"));
        }
        s.push_str(&format!(
            "  system writes: {} → synced: {}\n",
            summary.system_writes,
            changed
                .iter()
                .filter(|p| SYSTEM_PATHS.contains(&p.as_str()))
                .count()
        ));
        s.push_str(&format!(
            "  commits while only the system wrote: {}\n",
            summary.idle_commits
        ));
        s.push_str(&format!(
            "  other machine received: {}\n",
            changed.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        s.push_str(if ok {
            "  OK: exactly the user's edits arrived, no system file, no loop\n"
        } else {
            "  FAILED: see above\n"
        });
        s
    })?;
    if !ok {
        bail!(
            "the demo's checks failed (expected files {expected:?}, got {files:?}; changed {changed:?})"
        );
    }
    Ok(exit::SUCCESS)
}

struct Summary {
    arrived: bool,
    idle_commits: usize,
    system_writes: u64,
}

fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

fn wait_for_pumped(
    timeout: Duration,
    ctx: &Ctx,
    tail: &mut LogTail,
    t0: Instant,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end && !tail.interrupted.load(Ordering::SeqCst) {
        tail.pump(ctx, t0);
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    tail.pump(ctx, t0);
    cond()
}
