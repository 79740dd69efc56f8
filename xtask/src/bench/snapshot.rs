//! `cargo xtask bench snapshot`: capturing a 10,000-file workspace with 10
//! modified files and one untracked file — wsync (in-process and through the
//! CLI) against the old system's `git bundle create --all` + `git diff`, and
//! against `git add -A` into a temporary index + `git write-tree` +
//! `git commit-tree` — plus the file-system floor under any capture, new disk
//! bytes per snapshot and restore time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use wsync_snapshot::{CaptureOptions, SnapshotStore};

use super::{BenchCtx, Row, ms, stats};

const GIT_ENV: &[(&str, &str)] = &[
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_AUTHOR_NAME", "bench"),
    ("GIT_AUTHOR_EMAIL", "bench@wsync.invalid"),
    ("GIT_COMMITTER_NAME", "bench"),
    ("GIT_COMMITTER_EMAIL", "bench@wsync.invalid"),
    ("LC_ALL", "C"),
];

fn git_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .envs(GIT_ENV.iter().copied())
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null());
    cmd
}

fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = git_cmd(dir)
        .args(args)
        .output()
        .with_context(|| format!("cannot run git {args:?}"))?;
    if !out.status.success() {
        bail!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Total size of the files under `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

fn generate(work: &Path, files: usize) -> Result<()> {
    std::fs::create_dir_all(work)?;
    git(work, &["init", "-q", "-b", "main"])?;
    for i in 0..files {
        let dir = work.join(format!("d{:03}", i / 100));
        std::fs::create_dir_all(&dir)?;
        let mut body = String::new();
        for line in 0..8 {
            body.push_str(&format!(
                "file {i} line {line}: some ordinary source text\n"
            ));
        }
        std::fs::write(dir.join(format!("f{i:05}.txt")), body)?;
    }
    git(work, &["add", "-A"])?;
    git(work, &["commit", "-q", "-m", "generated"])?;
    // A real workspace's history is packed.
    git(work, &["repack", "-adq"])?;
    git(work, &["prune-packed"])?;
    std::fs::write(work.join(".git/info/exclude"), "/.wsync/\n/old-approach/\n")?;
    Ok(())
}

/// The paths [`modify`] changes in `round`.
fn changed_paths(work: &Path, files: usize, round: usize) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = (0..10)
        .map(|k| {
            let i = (k * (files / 10) + 7) % files;
            work.join(format!("d{:03}/f{i:05}.txt", i / 100))
        })
        .collect();
    paths.push(work.join(format!("untracked-{round}.txt")));
    paths
}

/// The file-system work any capture of a round must do, and nothing else:
/// read the changed files whole; write the new objects' pack, its index
/// and the ref (`sizes[0..3]`, unsynced, as wsync writes them); write the
/// `.diff` and `.meta` (`sizes[3..5]`) through temp file + fsync (both at
/// once) + rename and fsync their folder, as the data-safety rule asks. No hashing, no
/// trees, no diffing: the floor under any implementation.
fn io_floor(
    changed: &[PathBuf],
    scratch: &Path,
    round: usize,
    sizes: [usize; 5],
) -> Result<Duration> {
    use std::io::{Read as _, Write as _};
    let t = Instant::now();
    let mut buf = Vec::new();
    for path in changed {
        buf.clear();
        std::fs::File::open(path)?.read_to_end(&mut buf)?;
    }
    let names = ["pack", "idx", "ref", "diff", "meta"];
    let mut synced = Vec::new();
    for (i, (name, size)) in names.iter().zip(sizes).enumerate() {
        let tmp = scratch.join(format!("{name}-{round}.tmp"));
        let mut f = std::fs::File::create_new(&tmp)?;
        f.write_all(&vec![b'x'; size])?;
        if i >= 3 {
            synced.push((tmp, f));
        } else {
            drop(f);
            std::fs::rename(&tmp, scratch.join(format!("{name}-{round}")))?;
        }
    }
    // Both fsyncs at once, on two threads, as wsync does them.
    std::thread::scope(|s| {
        let handles: Vec<_> = synced
            .iter()
            .map(|(_, f)| s.spawn(|| f.sync_all()))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
        })
    })?;
    for (tmp, _) in synced {
        std::fs::rename(&tmp, tmp.with_extension(""))?;
    }
    std::fs::File::open(scratch)?.sync_all()?;
    Ok(t.elapsed())
}

/// Sizes of what capture `id` wrote: its pack (the newest), the pack's
/// index, the ref, `.diff`, `.meta`.
fn written_sizes(work: &Path, state: &Path, id: &str) -> Result<[usize; 5]> {
    let len = |p: &Path| -> Result<usize> {
        Ok(usize::try_from(
            std::fs::metadata(p)
                .with_context(|| p.display().to_string())?
                .len(),
        )?)
    };
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(work.join(".git/objects/pack"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "pack") {
            let m = std::fs::metadata(&p)?.modified()?;
            if newest.as_ref().is_none_or(|(t, _)| m > *t) {
                newest = Some((m, p));
            }
        }
    }
    let Some((_, pack)) = newest else {
        bail!("no pack after a capture");
    };
    let snaps = state.join("snapshots");
    Ok([
        len(&pack)?,
        len(&pack.with_extension("idx"))?,
        41,
        len(&snaps.join(format!("{id}.diff")))?,
        len(&snaps.join(format!("{id}.meta")))?,
    ])
}

fn modify(work: &Path, files: usize, round: usize) -> Result<()> {
    for k in 0..10 {
        let i = (k * (files / 10) + 7) % files;
        let path = work.join(format!("d{:03}/f{i:05}.txt", i / 100));
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&format!("edited in round {round}\n"));
        std::fs::write(&path, text)?;
    }
    // Exactly one untracked file, as the scenario says: the previous
    // round's goes.
    if round > 0 {
        let _ = std::fs::remove_file(work.join(format!("untracked-{}.txt", round - 1)));
    }
    std::fs::write(work.join(format!("untracked-{round}.txt")), "a new file\n")?;
    Ok(())
}

/// The release-built `live_capture` example: captures through a
/// `LiveScan` in one long-lived process, one per input line.
struct LiveCapture {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl LiveCapture {
    fn start(ctx: &BenchCtx, work: &Path, state: &Path) -> Result<Self> {
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(&ctx.root)
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "wsync-snapshot",
                "--example",
                "live_capture",
            ])
            .status()
            .context("cannot run cargo build")?;
        if !status.success() {
            bail!("building the live_capture example failed: {status}");
        }
        let mut child = Command::new(ctx.root.join("target/release/examples/live_capture"))
            .arg(work)
            .arg(state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start live_capture")?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("live_capture has no pipes");
        };
        Ok(Self {
            child,
            input,
            output: std::io::BufReader::new(output),
        })
    }

    /// One capture: (time inside the process, whether it was incremental,
    /// the snapshot id).
    fn capture(&mut self) -> Result<(Duration, bool, String)> {
        use std::io::{BufRead as _, Write as _};
        self.input.write_all(b"go\n")?;
        self.input.flush()?;
        let mut line = String::new();
        self.output.read_line(&mut line)?;
        let mut parts = line.split_whitespace();
        let (Some(us), Some(scan), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("live_capture failed (answered {line:?})");
        };
        let us: u64 = us.parse().with_context(|| format!("bad answer {line:?}"))?;
        Ok((
            Duration::from_micros(us),
            scan == "incremental",
            id.to_owned(),
        ))
    }
}

impl Drop for LiveCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes back what earlier steps left dirty (untimed), so that no
/// approach's fsyncs pay for another's writes: ext4 commits its journal
/// for everyone at an fsync.
fn flush() -> Result<()> {
    let status = Command::new("sync").status().context("cannot run sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

/// Runs the snapshot benchmarks.
pub fn run(ctx: &BenchCtx) -> Result<Vec<Row>> {
    let (files, runs) = if ctx.quick { (10_000, 7) } else { (10_000, 31) };
    let tmp = tempfile::tempdir().context("cannot create a temp folder")?;
    let work = tmp.path().join("work");
    eprintln!("generating a {files}-file repository…");
    generate(&work, files)?;
    modify(&work, files, 0)?;
    // The edits happened before the sync, not during it.
    std::thread::sleep(Duration::from_millis(200));
    let state = work.join(".wsync");
    let objects = work.join(".git/objects");
    let mut rows = Vec::new();

    // The four approaches run round-robin, so that the machine's load
    // (shared, 2 cores) hits them alike; the first round is a warm-up.
    let store = SnapshotStore::open(&work, &state)?;
    let opts = CaptureOptions {
        reason: "bench".into(),
        ..CaptureOptions::default()
    };
    let ws = work.to_string_lossy().into_owned();
    let old = work.join("old-approach");
    std::fs::create_dir_all(&old)?;
    let tmp_index: PathBuf = tmp.path().join("bench-index");
    let idx = tmp_index.to_string_lossy().into_owned();
    let run_idx = |args: &[&str]| -> Result<Vec<u8>> {
        let out = git_cmd(&work)
            .env("GIT_INDEX_FILE", &idx)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    };
    let (mut lib, mut cli, mut bundle, mut addall, mut live_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut wsync_disk, mut bundle_disk, mut addall_disk) = (0u64, 0u64, 0u64);
    let mut live = LiveCapture::start(ctx, &work, &state)?;
    let (mut floor_t, mut one_off_floor_t) = (Vec::new(), Vec::new());
    let tracked: Vec<PathBuf> = (0..files)
        .map(|i| work.join(format!("d{:03}/f{i:05}.txt", i / 100)))
        .collect();
    // Beside the objects, on the same file system.
    let scratch = work.join(".git/wsync-bench-floor");
    std::fs::create_dir_all(&scratch)?;
    let mut live_incremental = 0usize;
    for round in 0..=runs {
        let keep = round > 0;
        if round > 0 {
            // A fresh round of edits (10 modified files, 1 untracked).
            modify(&work, files, round)?;
            std::thread::sleep(Duration::from_millis(60));
        }
        flush()?;
        // wsync, a long-lived process watching the tree (the daemon's
        // way): the first capture scans everything.
        let (e, incremental, id) = live.capture()?;
        if keep {
            live_t.push(e);
            live_incremental += usize::from(incremental);
        }
        flush()?;
        // The floor under any capture of this round (see `io_floor`), and
        // under a one-off capture, which has no watcher to tell it what
        // changed: it must at least look at every file.
        if keep {
            let sizes = written_sizes(&work, &state, &id)?;
            let changed = changed_paths(&work, files, round);
            floor_t.push(io_floor(&changed, &scratch, round, sizes)?);
            flush()?;
            let t = Instant::now();
            for path in &tracked {
                std::fs::symlink_metadata(path)?;
            }
            let looked = t.elapsed();
            one_off_floor_t.push(looked + io_floor(&changed, &scratch, round + 100_000, sizes)?);
            flush()?;
        }
        // wsync, in-process.
        let before = du(&objects) + du(&state);
        let t = Instant::now();
        store.capture(&opts)?;
        let e = t.elapsed();
        let grown = (du(&objects) + du(&state)).saturating_sub(before);
        if keep {
            lib.push(e);
            wsync_disk += grown;
        }
        flush()?;
        // wsync, through the CLI.
        let t = Instant::now();
        let status = Command::new(&ctx.wsync)
            .args([
                "-q",
                "--workspace",
                &ws,
                "snapshot",
                "create",
                "--reason",
                "bench",
            ])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("wsync snapshot create failed: {status}");
        }
        if keep {
            cli.push(t.elapsed());
        }
        flush()?;
        // The old system: a bundle of everything plus the diff, per sync.
        let before = du(&old);
        let t = Instant::now();
        let base = old.join(format!("sync_{round}"));
        let b = format!("{}.bundle", base.display());
        // `--all` as the old system ran it, minus wsync's own snapshot
        // refs (the old system's repository had none).
        git(
            &work,
            &[
                "bundle",
                "create",
                "-q",
                &b,
                "--exclude=refs/wsync/*",
                "--all",
            ],
        )?;
        let diff = git(&work, &["diff", "HEAD"])?;
        std::fs::write(format!("{}.diff", base.display()), diff)?;
        // Without rewriting the index (a refresh would be a side effect
        // on the other approaches sharing this repository).
        let st = git(&work, &["--no-optional-locks", "status", "--porcelain"])?;
        let count = st.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        std::fs::write(
            format!("{}.meta", base.display()),
            format!("{{\"git_status_files\": {count}}}\n"),
        )?;
        let e = t.elapsed();
        if keep {
            bundle.push(e);
            bundle_disk += du(&old).saturating_sub(before);
        }
        for ext in ["bundle", "diff", "meta"] {
            std::fs::remove_file(format!("{}.{ext}", base.display()))?;
        }
        flush()?;
        // git add -A into a temporary index, write-tree, commit-tree.
        let before = du(&objects);
        let t = Instant::now();
        std::fs::copy(work.join(".git/index"), &tmp_index)?;
        run_idx(&["add", "-A"])?;
        let tree = run_idx(&["write-tree"])?;
        let tree = String::from_utf8_lossy(&tree).trim().to_owned();
        run_idx(&["commit-tree", &tree, "-p", "HEAD", "-m", "snapshot"])?;
        let e = t.elapsed();
        if keep {
            addall.push(e);
            addall_disk += du(&objects).saturating_sub(before);
        }
    }
    std::fs::remove_dir_all(&old)?;
    let per = |total: u64| total as f64 / runs as f64;
    let (wsync_disk, bundle_disk, addall_disk) =
        (per(wsync_disk), per(bundle_disk), per(addall_disk));
    drop(live);
    std::fs::remove_dir_all(&scratch)?;
    let floor = stats(&mut floor_t);
    let one_off_floor = stats(&mut one_off_floor_t);
    let (lib, cli, bundle, addall, live_s) = (
        stats(&mut lib),
        stats(&mut cli),
        stats(&mut bundle),
        stats(&mut addall),
        stats(&mut live_t),
    );

    // Restore: 10 more edits + an untracked file since the snapshot.
    let target = store.capture(&opts)?;
    let mut restore_samples = Vec::new();
    for round in 1..=runs.min(15) {
        modify(&work, files, round)?;
        std::thread::sleep(Duration::from_millis(60));
        flush()?;
        // Through the release binary (xtask itself is a dev build).
        let t = Instant::now();
        let status = Command::new(&ctx.wsync)
            .args(["-q", "--workspace", &ws, "snapshot", "restore", &target.id])
            .stdout(Stdio::null())
            .status()?;
        restore_samples.push(t.elapsed());
        if !status.success() {
            bail!("wsync snapshot restore failed: {status}");
        }
    }
    let restore = stats(&mut restore_samples);
    if !git(&work, &["status", "--porcelain"])?
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .all(|l| l.starts_with(b"??") || l.starts_with(b" M"))
    {
        bail!("restore left an unexpected state");
    }

    let mb = |b: f64| b / 1e6;
    // The release binary is the figure to read: `cargo xtask` builds xtask,
    // and with it the in-process library, as a dev build.
    rows.push(
        Row::versus(
            format!(
                "capture through a live, watching scan (release, long-lived process; \
                 {live_incremental}/{runs} incremental), median"
            ),
            ms(live_s.p50),
            "git bundle --all + git diff",
            ms(bundle.p50),
            "ms",
        )
        .goal("≤ 10 ms, ≤ 0.033× (≥ 30× faster)"),
    );
    rows.push(Row::versus(
        "file-system floor of a capture (read the 11 files; write pack, index, ref; \
         .diff + .meta with fsync, rename, folder fsync; nothing computed), median",
        ms(floor.p50),
        "git bundle --all + git diff",
        ms(bundle.p50),
        "ms",
    ));
    rows.push(Row::versus(
        "capture through a live scan, median",
        ms(live_s.p50),
        "git add -A (temp index) + write-tree + commit-tree",
        ms(addall.p50),
        "ms",
    ));
    rows.push(Row::versus(
        "capture through a live scan, p95",
        ms(live_s.p95),
        "git bundle --all + git diff",
        ms(bundle.p95),
        "ms",
    ));
    rows.push(
        Row::versus(
            "capture via `wsync snapshot create` (release, incl. process start), median",
            ms(cli.p50),
            "git bundle --all + git diff",
            ms(bundle.p50),
            "ms",
        )
        .goal("≤ 10 ms, ≤ 0.033× (≥ 30× faster)"),
    );
    rows.push(Row::versus(
        "file-system floor of a one-off capture (lstat of every tracked file + the floor above; \
         no process start, no index read), median",
        ms(one_off_floor.p50),
        "git bundle --all + git diff",
        ms(bundle.p50),
        "ms",
    ));
    rows.push(Row::versus(
        "capture via `wsync snapshot create`, median",
        ms(cli.p50),
        "git add -A (temp index) + write-tree + commit-tree",
        ms(addall.p50),
        "ms",
    ));
    rows.push(Row::versus(
        "capture via `wsync snapshot create`, p95",
        ms(cli.p95),
        "git bundle --all + git diff",
        ms(bundle.p95),
        "ms",
    ));
    rows.push(Row::solo(
        "capture in-process (dev build of the library), median",
        ms(lib.p50),
        "ms",
    ));
    rows.push(
        Row::versus(
            "new disk per snapshot (objects + files)",
            mb(wsync_disk),
            "git bundle --all + git diff",
            mb(bundle_disk),
            "MB",
        )
        .goal("≤ 1 MB"),
    );
    rows.push(Row::versus(
        "new disk per snapshot",
        mb(wsync_disk),
        "git add -A (temp index) + write-tree + commit-tree",
        mb(addall_disk),
        "MB",
    ));
    rows.push(Row::solo(
        "restore via `wsync snapshot restore` (safety capture + 11 paths back + index + HEAD), median",
        ms(restore.p50),
        "ms",
    ));
    Ok(rows)
}
