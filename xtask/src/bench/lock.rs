//! `cargo xtask bench lock`: the sync lock in-process, and the guard round
//! trip through the CLI against `flock -n FILE true`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use wsync_lock::{LockOptions, PauseGate, SyncLock, WriterOptions};

use super::{BenchCtx, Row, ms, stats, time_n, us};

/// Runs the lock benchmarks.
pub fn run(ctx: &BenchCtx) -> Result<Vec<Row>> {
    let (n_lib, n_cli) = if ctx.quick {
        (2_000, 30)
    } else {
        (20_000, 200)
    };
    let tmp = tempfile::tempdir().context("cannot create a temp folder")?;
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).context("cannot create the state folder")?;
    let mut rows = Vec::new();

    let lock = SyncLock::new(&state);
    let opts = LockOptions {
        caller: "bench".into(),
        reason: "uncontended".into(),
        ..LockOptions::default()
    };
    let mut samples = time_n(n_lib, || {
        lock.try_acquire(&opts)?.release()?;
        Ok(())
    })?;
    let s = stats(&mut samples);
    rows.push(
        Row::solo(
            "sync lock acquire+release, in-process, p50",
            us(s.p50),
            "µs",
        )
        .goal("≤ 100 µs"),
    );
    rows.push(Row::solo(
        "sync lock acquire+release, in-process, p95",
        us(s.p95),
        "µs",
    ));

    let gate = PauseGate::new(&state);
    let wopts = WriterOptions {
        name: "bench".into(),
        ..WriterOptions::default()
    };
    let mut samples = time_n(n_lib / 4, || {
        gate.writer(&wopts)?.finish()?;
        Ok(())
    })?;
    let s = stats(&mut samples);
    rows.push(Row::solo(
        "writer guard enter+leave (window logged), in-process, p50",
        us(s.p50),
        "µs",
    ));

    // Through the CLI: the release binary against util-linux flock(1).
    let flock_file = tmp.path().join("peer.lock");
    let state_arg = state.to_string_lossy().into_owned();
    let flock_arg = flock_file.to_string_lossy().into_owned();
    let wsync = |args: &[&str]| {
        let mut all = vec!["--state-dir", state_arg.as_str()];
        all.extend_from_slice(args);
        run_ok(tmp.path(), &ctx.wsync, &all)
    };
    let flock = || run_ok(tmp.path(), Path::new("flock"), &["-n", &flock_arg, "true"]);
    // Interleaved, one of each per round after a warm-up round, so that
    // load changes on a shared machine hit wsync and the peer alike.
    let (mut guard, mut peer, mut lock_run, mut version) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..=n_cli {
        let g = timed(|| wsync(&["guard", "--", "true"]))?;
        let p = timed(flock)?;
        let l = timed(|| wsync(&["lock", "run", "--", "true"]))?;
        // The start-up floor every `wsync` command pays (a large binary).
        let v = timed(|| wsync(&["--version"]))?;
        if round > 0 {
            guard.push(g);
            peer.push(p);
            lock_run.push(l);
            version.push(v);
        }
    }
    let (g, p, l) = (stats(&mut guard), stats(&mut peer), stats(&mut lock_run));
    let v = stats(&mut version);
    rows.push(Row::versus(
        "`wsync guard -- true` round trip, p50",
        ms(g.p50),
        "flock -n FILE true",
        ms(p.p50),
        "ms",
    ));
    rows.push(Row::versus(
        "`wsync guard -- true` round trip, p95",
        ms(g.p95),
        "flock -n FILE true",
        ms(p.p95),
        "ms",
    ));
    rows.push(Row::versus(
        "`wsync lock run -- true` round trip, p50",
        ms(l.p50),
        "flock -n FILE true",
        ms(p.p50),
        "ms",
    ));
    rows.push(Row::versus(
        "`wsync --version` (start-up floor), p50",
        ms(v.p50),
        "flock -n FILE true",
        ms(p.p50),
        "ms",
    ));
    Ok(rows)
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn run_ok(dir: &Path, program: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !status.success() {
        bail!("{} {args:?} failed: {status}", program.display());
    }
    Ok(())
}
