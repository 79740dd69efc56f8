//! `cargo xtask fuzz [--minutes M] [--target T]`: in-process mutational
//! fuzzers that run on the stable toolchain (cargo-fuzz needs nightly).
//!
//! Each target runs in its own worker process (this binary, re-executed
//! with `--worker`), on one thread:
//! - inputs: 10 % pure random bytes, the rest mutated seeds (made by the
//!   real encoders and writers): bit flips, random bytes, inserts,
//!   deletes, duplications, splices, interesting integers at length
//!   fields, dictionary tokens, and for framed targets a mutation inside
//!   one frame with its length fixed up;
//! - panics: every execution runs under `catch_unwind`;
//! - hangs: a watchdog thread flags an execution that runs over 1 s and
//!   ends the worker (saving the input) after 20 s;
//! - allocations: the worker caps its own address space
//!   (`prlimit --as`, its size after warm-up + 256 MiB, one malloc arena),
//!   so an execution that tries to allocate more aborts the worker with
//!   "memory allocation of N bytes failed". This bounds C allocations
//!   (zstd) too, which a counting `#[global_allocator]` would not see, and
//!   needs no `unsafe` (the workspace forbids it). The supervisor then
//!   replays the same seed from the last checkpoint, saving each input
//!   first, to keep the one that aborted.
//!
//! A debug `cargo xtask fuzz` builds xtask in release and runs a copy of it
//! (`target/fuzz/xtask-fuzz`). Findings go to `target/fuzz/crashes/<target>/`; figures to
//! `target/fuzz/results.json`; `target/fuzz/totals.json` adds up the
//! executions of every run.

mod targets;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

/// Arguments of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Total minutes, split evenly across the targets run.
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Run only these targets (repeatable); all when omitted.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
    /// RNG seed of the run (random when omitted).
    #[arg(long)]
    seed: Option<u64>,
    /// Internal: run one target in this process.
    #[arg(long, hide = true)]
    worker: Option<String>,
    /// Internal: seconds for the worker.
    #[arg(long, hide = true, default_value_t = 10.0)]
    secs: f64,
    /// Internal: already running the optimized copy.
    #[arg(long, hide = true)]
    in_release: bool,
    /// Internal: save each input from this execution on (replay).
    #[arg(long, hide = true)]
    save_from: Option<u64>,
}

/// Per-exec time over which an execution counts as a hang.
const SLOW: Duration = Duration::from_secs(1);
/// Per-exec time after which the worker gives up on the execution.
const STUCK: Duration = Duration::from_secs(20);
/// Address-space headroom per execution.
const ALLOC_CAP: u64 = 256 * 1024 * 1024;
const CHECKPOINT_EVERY: u64 = 4096;
/// Crashing inputs saved per worker run at most.
const MAX_SAVED: u64 = 50;

/// One target's figures for one run.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct TargetResult {
    target: String,
    executions: u64,
    seconds: f64,
    execs_per_sec: f64,
    panics: u64,
    hangs: u64,
    over_allocations: u64,
    invariant_failures: u64,
    peak_rss_kib: u64,
    crashes: Vec<String>,
}

impl TargetResult {
    fn findings(&self) -> u64 {
        self.panics + self.hangs + self.over_allocations + self.invariant_failures
    }
}

/// Runs `cargo xtask fuzz`.
pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    let out_dir = root.join("target/fuzz");
    if let Some(name) = &args.worker {
        return worker(&out_dir, name, args);
    }
    if args.list {
        for n in targets::NAMES {
            println!("{n}");
        }
        return Ok(());
    }
    let names: Vec<String> = if args.targets.is_empty() {
        targets::NAMES.iter().map(|s| (*s).to_owned()).collect()
    } else {
        for t in &args.targets {
            if !targets::NAMES.contains(&t.as_str()) && !t.starts_with("selftest-") {
                bail!(
                    "unknown target {t:?} (known: {})",
                    targets::NAMES.join(", ")
                );
            }
        }
        args.targets.clone()
    };
    std::fs::create_dir_all(&out_dir)?;
    if cfg!(debug_assertions) && !args.in_release {
        // Fuzz an optimized build (several times the executions per
        // second), from a private copy so that a rebuild during the run
        // cannot swap the workers' binary.
        crate::cargo(root, &["build", "--release", "-p", "xtask"], &[])?;
        let copy = out_dir.join("xtask-fuzz");
        std::fs::copy(root.join("target/release/xtask"), &copy)
            .context("copy the release xtask")?;
        let status = Command::new(&copy)
            .args(std::env::args_os().skip(1))
            .arg("--in-release")
            .status()
            .context("run the release xtask")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let secs = (args.minutes * 60.0 / names.len() as f64).max(1.0);
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let mut results = Vec::new();
    for name in &names {
        eprintln!("fuzz {name}: {secs:.0} s (seed {seed})");
        let r = supervise(&out_dir, name, secs, seed)?;
        eprintln!(
            "fuzz {name}: {} executions, {:.0}/s, {} findings",
            r.executions,
            r.execs_per_sec,
            r.findings()
        );
        results.push(r);
    }
    let totals = add_totals(&out_dir, &results)?;
    let json = serde_json::json!({
        "seed": seed,
        "minutes": args.minutes,
        "finished_at": chrono::Utc::now().to_rfc3339(),
        "targets": results,
    });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    println!(
        "| target | executions (this run) | execs/s | panics | hangs | over-alloc | invariant | total executions (all runs) | total findings |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let t = totals.get(&r.target).cloned().unwrap_or_default();
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            r.target,
            r.executions,
            r.execs_per_sec,
            r.panics,
            r.hangs,
            r.over_allocations,
            r.invariant_failures,
            t.executions,
            t.findings
        );
    }
    let found: u64 = results.iter().map(TargetResult::findings).sum();
    if found > 0 {
        bail!(
            "{found} finding(s); inputs under {}",
            out_dir.join("crashes").display()
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Total {
    executions: u64,
    findings: u64,
    runs: u64,
}

fn add_totals(out_dir: &Path, results: &[TargetResult]) -> Result<BTreeMap<String, Total>> {
    let path = out_dir.join("totals.json");
    let mut totals: BTreeMap<String, Total> = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{} is not valid totals JSON", path.display()))?,
        Err(_) => BTreeMap::new(),
    };
    for r in results
        .iter()
        .filter(|r| !r.target.starts_with("selftest-"))
    {
        let t = totals.entry(r.target.clone()).or_default();
        t.executions += r.executions;
        t.findings += r.findings();
        t.runs += 1;
    }
    let tmp = out_dir.join("totals.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&totals)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(totals)
}

/// Runs one worker; on an abort, replays it to keep the input.
fn supervise(out_dir: &Path, name: &str, secs: f64, seed: u64) -> Result<TargetResult> {
    let exe = std::env::current_exe()?;
    let spawn = |save_from: Option<u64>| -> Result<std::process::Child> {
        let mut c = Command::new(&exe);
        c.args(["fuzz", "--worker", name, "--secs", &secs.to_string()])
            .args(["--seed", &seed.to_string()])
            .env("MALLOC_ARENA_MAX", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = save_from {
            c.args(["--save-from", &n.to_string()]);
        }
        Ok(c.spawn()?)
    };
    let started = Instant::now();
    let mut child = spawn(None)?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let stderr = child.stderr.take().context("worker stderr")?;
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let mut checkpoint = 0u64;
    let mut result: Option<TargetResult> = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(n) = line.strip_prefix("ckpt ") {
            checkpoint = n.trim().parse().unwrap_or(checkpoint);
        } else if let Some(j) = line.strip_prefix("result ") {
            result = Some(serde_json::from_str(j)?);
        }
    }
    let status = child.wait()?;
    let stderr = err_thread.join().unwrap_or_default();
    if let Some(r) = result {
        return Ok(r);
    }
    // The worker died: an abort (allocation failure) or a stuck execution.
    let mut r = TargetResult {
        target: name.to_owned(),
        executions: checkpoint,
        seconds: started.elapsed().as_secs_f64(),
        ..TargetResult::default()
    };
    r.execs_per_sec = checkpoint as f64 / r.seconds.max(1e-9);
    let crash_dir = out_dir.join("crashes").join(name);
    std::fs::create_dir_all(&crash_dir)?;
    if stderr.contains("stuck execution") {
        r.hangs += 1;
        r.crashes.push(stderr.trim().to_owned());
        return Ok(r);
    }
    if stderr.contains("memory allocation of") {
        r.over_allocations += 1;
    } else {
        r.panics += 1;
    }
    eprintln!("fuzz {name}: worker died ({status}): {}", stderr.trim());
    eprintln!("fuzz {name}: replaying from execution {checkpoint} to keep the input");
    let mut replay = spawn(Some(checkpoint))?;
    let _ = replay.wait();
    let current = crash_dir.join("current.bin");
    if current.exists() {
        let dest = crash_dir.join(format!("abort-{seed}-{checkpoint}.bin"));
        std::fs::rename(&current, &dest)?;
        r.crashes.push(dest.display().to_string());
    }
    Ok(r)
}

struct Shared {
    input: Mutex<Vec<u8>>,
    /// Milliseconds since `epoch` when the running execution began; 0 idle.
    started_ms: AtomicU64,
}

fn worker(out_dir: &Path, name: &str, args: &FuzzArgs) -> Result<()> {
    // Scratch files live on tmpfs when there is one: the state-file
    // targets fsync and rename on every run, which is disk-bound elsewhere.
    let shm = Path::new("/dev/shm");
    let scratch = if shm.is_dir() {
        shm.join(format!("wsync-fuzz-{}", std::process::id()))
            .join(name)
    } else {
        out_dir.join("scratch").join(name)
    };
    let crash_dir = out_dir.join("crashes").join(name);
    std::fs::create_dir_all(&crash_dir)?;
    let mut target = targets::make(name, &scratch)?;
    let seeds = target.seeds()?;
    let dict = target.dictionary();
    let framed = target.framed();
    let seed = args.seed.unwrap_or(1);
    let mut rng = fastrand::Rng::with_seed(seed ^ hash_name(name));
    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        input: Mutex::new(Vec::new()),
        started_ms: AtomicU64::new(0),
    });
    {
        let shared = Arc::clone(&shared);
        let crash_dir = crash_dir.clone();
        std::thread::spawn(move || watchdog(&shared, epoch, &crash_dir));
    }
    std::panic::set_hook(Box::new(|_| {}));
    // Warm up on the seeds (they must all run cleanly), then cap memory.
    for s in &seeds {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| target.exec(s)));
    }
    cap_address_space();
    let deadline = Duration::from_secs_f64(args.secs);
    let mut r = TargetResult {
        target: name.to_owned(),
        ..TargetResult::default()
    };
    let mut input = Vec::new();
    let mut n = 0u64;
    let stdout = std::io::stdout();
    while epoch.elapsed() < deadline {
        make_input(&mut rng, &seeds, dict, framed, &mut input);
        if args.save_from.is_some_and(|f| n >= f) {
            std::fs::write(crash_dir.join("current.bin"), &input)?;
        }
        {
            let mut g = shared
                .input
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            g.clear();
            g.extend_from_slice(&input);
        }
        let t0 = epoch.elapsed();
        shared
            .started_ms
            .store(t0.as_millis() as u64 + 1, Ordering::SeqCst);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target.exec(&input)));
        shared.started_ms.store(0, Ordering::SeqCst);
        let took = epoch.elapsed() - t0;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                r.invariant_failures += 1;
                r.crashes
                    .push(save(&crash_dir, "invariant", n, &input, &why)?);
            }
            Err(p) => {
                r.panics += 1;
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                r.crashes.push(save(&crash_dir, "panic", n, &input, &msg)?);
            }
        }
        if took > SLOW {
            r.hangs += 1;
            r.crashes
                .push(save(&crash_dir, "slow", n, &input, &format!("{took:?}"))?);
        }
        n += 1;
        if n.is_multiple_of(CHECKPOINT_EVERY) {
            let mut o = stdout.lock();
            let _ = writeln!(o, "ckpt {n}");
            let _ = o.flush();
        }
    }
    r.executions = n;
    r.seconds = epoch.elapsed().as_secs_f64();
    r.execs_per_sec = n as f64 / r.seconds.max(1e-9);
    r.peak_rss_kib = proc_status_kib("VmHWM:").unwrap_or(0);
    if shm.is_dir() {
        let _ = std::fs::remove_dir_all(scratch.parent().unwrap_or(&scratch));
    }
    let mut o = stdout.lock();
    writeln!(o, "result {}", serde_json::to_string(&r)?)?;
    o.flush()?;
    Ok(())
}

fn watchdog(shared: &Shared, epoch: Instant, crash_dir: &Path) {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let s = shared.started_ms.load(Ordering::SeqCst);
        if s == 0 {
            continue;
        }
        let running = (epoch.elapsed().as_millis() as u64).saturating_sub(s - 1);
        if running > STUCK.as_millis() as u64 {
            let input = shared.input.lock().map(|g| g.clone()).unwrap_or_default();
            let path = crash_dir.join(format!("stuck-{}.bin", chrono::Utc::now().timestamp()));
            let _ = std::fs::write(&path, input);
            eprintln!(
                "stuck execution over {STUCK:?}; input saved to {}",
                path.display()
            );
            std::process::exit(3);
        }
    }
}

fn save(dir: &Path, kind: &str, n: u64, input: &[u8], why: &str) -> Result<String> {
    // Keep the first inputs of a run; a target that fails on everything
    // would otherwise fill the disk.
    static SAVED: AtomicU64 = AtomicU64::new(0);
    if SAVED.fetch_add(1, Ordering::SeqCst) >= MAX_SAVED {
        return Ok(format!("{kind} #{n} (not saved: over {MAX_SAVED} inputs)"));
    }
    let path = dir.join(format!("{kind}-{n}-{}.bin", blake3_hex(input)));
    std::fs::write(&path, input)?;
    std::fs::write(path.with_extension("txt"), why)?;
    Ok(path.display().to_string())
}

fn blake3_hex(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h = (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

fn hash_name(name: &str) -> u64 {
    u64::from_str_radix(&blake3_hex(name.as_bytes()), 16).unwrap_or(0)
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Caps this process's address space at its current size + [`ALLOC_CAP`].
fn cap_address_space() {
    let Some(vm) = proc_status_kib("VmSize:") else {
        eprintln!("fuzz: cannot read VmSize; no allocation cap");
        return;
    };
    let cap = vm * 1024 + ALLOC_CAP;
    let ok = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--as={cap}:{cap}"),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("fuzz: prlimit failed; no allocation cap");
    }
}

const INTERESTING_U32: &[u32] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    16 * 1024 * 1024,
    16 * 1024 * 1024 + 1,
];

/// Fills `out` with the next input.
fn make_input(
    rng: &mut fastrand::Rng,
    seeds: &[Vec<u8>],
    dict: &[&[u8]],
    framed: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    if seeds.is_empty() || rng.u8(..) < 26 {
        let len = rng.usize(..512);
        out.extend((0..len).map(|_| rng.u8(..)));
        return;
    }
    out.extend_from_slice(&seeds[rng.usize(..seeds.len())]);
    let rounds = 1 + rng.usize(..6);
    for _ in 0..rounds {
        if framed && rng.bool() {
            mutate_in_frame(rng, seeds, dict, out);
        } else {
            mutate(rng, seeds, dict, out);
        }
    }
    out.truncate(1 << 20);
}

/// Mutates the body of one frame and fixes its length field.
fn mutate_in_frame(rng: &mut fastrand::Rng, seeds: &[Vec<u8>], dict: &[&[u8]], out: &mut Vec<u8>) {
    let mut spans = Vec::new();
    let mut at = 0usize;
    while let Some(h) = out.get(at..at + 4) {
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len == 0 || at + 4 + len > out.len() {
            break;
        }
        spans.push((at, len));
        at += 4 + len;
    }
    if spans.is_empty() {
        mutate(rng, seeds, dict, out);
        return;
    }
    let (start, len) = spans[rng.usize(..spans.len())];
    let mut body = out[start + 4..start + 4 + len].to_vec();
    mutate(rng, seeds, dict, &mut body);
    if body.is_empty() {
        body.push(0);
    }
    let mut rebuilt = out[..start].to_vec();
    rebuilt.extend_from_slice(&(body.len() as u32).to_be_bytes());
    rebuilt.extend_from_slice(&body);
    rebuilt.extend_from_slice(&out[start + 4 + len..]);
    *out = rebuilt;
}

/// One byte-level mutation.
fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>], dict: &[&[u8]], out: &mut Vec<u8>) {
    let len = out.len();
    match rng.u8(..10) {
        0 if len > 0 => {
            let i = rng.usize(..len);
            out[i] ^= 1 << rng.u8(..8);
        }
        1 if len > 0 => {
            let i = rng.usize(..len);
            out[i] = rng.u8(..);
        }
        2 => {
            let i = rng.usize(..=len);
            let n = 1 + rng.usize(..16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            out.splice(i..i, bytes);
        }
        3 if len > 0 => {
            let i = rng.usize(..len);
            let n = 1 + rng.usize(..(len - i).min(64));
            out.drain(i..i + n);
        }
        4 if len > 0 => {
            let i = rng.usize(..len);
            let n = 1 + rng.usize(..(len - i).min(256));
            let copy = out[i..i + n].to_vec();
            let j = rng.usize(..=len);
            out.splice(j..j, copy);
        }
        5 if !seeds.is_empty() => {
            let other = &seeds[rng.usize(..seeds.len())];
            let cut = rng.usize(..=len);
            let from = rng.usize(..=other.len());
            out.truncate(cut);
            out.extend_from_slice(&other[from..]);
        }
        6 if len >= 4 => {
            let v = INTERESTING_U32[rng.usize(..INTERESTING_U32.len())];
            let i = rng.usize(..=len - 4);
            let bytes = if rng.bool() {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            out[i..i + 4].copy_from_slice(&bytes);
        }
        7 if len > 0 => {
            // A postcard varint: 5 bytes that decode to a huge length.
            let i = rng.usize(..len);
            out.splice(i..i, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
        8 if !dict.is_empty() => {
            let tok = dict[rng.usize(..dict.len())];
            let i = rng.usize(..=len);
            out.splice(i..i, tok.iter().copied());
        }
        _ if len > 0 => {
            let i = rng.usize(..len);
            let n = 1 + rng.usize(..(len - i).min(32));
            let b = rng.u8(..);
            out[i..i + n].fill(b);
        }
        _ => out.push(rng.u8(..)),
    }
}
