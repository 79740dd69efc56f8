//! `cargo xtask bench remote`: `wsync remote` against rsync and unison over
//! the same loopback sshd, on a generated tree (10,000 files, ~650 MB; a
//! tenth of that with `--quick`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use wsync_testutils::Sshd;

use super::{BenchCtx, Row, ms, stats};

/// Deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

const WORDS: &[&str] = &[
    "sync", "file", "delta", "block", "remote", "local", "state", "merge", "commit", "fn", "let",
    "match", "return", "struct", "impl", "error", "path", "write", "read", "the", "a", "of", "to",
    "and", "in", "is", "for", "with", "on", "value", "data", "config", "test", "result", "option",
];

/// Generates the tree; returns (files, bytes, path of the 8 MB file).
fn generate(root: &Path, files: usize, rng: &mut Rng) -> Result<(usize, u64, PathBuf)> {
    let mut blob = String::new();
    while blob.len() < 1 << 21 {
        let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        blob.push_str(w);
        blob.push(if rng.next().is_multiple_of(12) {
            '\n'
        } else {
            ' '
        });
    }
    let blob = blob.into_bytes();
    let mut total = 0u64;
    let mut eight = None;
    for i in 0..files {
        let dir = root.join(format!("d{:03}/s{}", i / 100, i % 7));
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let kind = i % 100;
        let (path, data) = if kind == 99 {
            let size = if eight.is_none() {
                8 << 20
            } else {
                rng.range(1 << 20, 8 << 20) as usize
            };
            (dir.join(format!("blob{i}.bin")), rng.bytes(size))
        } else {
            let size = if kind >= 90 {
                rng.range(20 << 10, 200 << 10)
            } else {
                rng.range(512, 20 << 10)
            } as usize;
            let start = rng.range(0, (blob.len() - size) as u64) as usize;
            (
                dir.join(format!("f{i}.txt")),
                blob[start..start + size].to_vec(),
            )
        };
        total += data.len() as u64;
        std::fs::write(&path, &data).with_context(|| format!("write {}", path.display()))?;
        if kind == 99 && eight.is_none() {
            eight = Some(path);
        }
    }
    let eight = eight.context("the tree needs at least 100 files")?;
    Ok((files, total, eight))
}

struct Env {
    wsync: PathBuf,
    ssh: String,
    dest: String,
    unison_home: PathBuf,
}

impl Env {
    fn wsync(&self, verb: &str, local: &Path, remote: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(&self.wsync);
        c.args(["remote", verb])
            .arg(local)
            .arg(format!("{}:{}", self.dest, remote.display()))
            .args(["--rsh", &self.ssh, "--remote-wsync"])
            .arg(&self.wsync)
            .args(extra)
            .env_remove("WSYNC_LOG");
        c
    }

    /// `ssh` sharing one connection between runs (what `wsync remote`
    /// does by itself with `--ssh-reuse`), for rsync and plain ssh.
    fn ssh_warm(&self) -> String {
        format!(
            "{} -o ControlMaster=auto -o ControlPersist=60 -o ControlPath={}/cm-%C",
            self.ssh,
            self.unison_home.display()
        )
    }

    fn rsync(&self, local: &Path, remote: &Path, extra: &[&str]) -> Command {
        self.rsync_with(&self.ssh, local, remote, extra)
    }

    /// rsync over the warm shared ssh connection.
    fn rsync_warm(&self, local: &Path, remote: &Path, extra: &[&str]) -> Command {
        self.rsync_with(&self.ssh_warm(), local, remote, extra)
    }

    fn rsync_with(&self, ssh: &str, local: &Path, remote: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new("rsync");
        c.arg("-a")
            .args(extra)
            .args(["-e", ssh])
            .arg(format!("{}/", local.display()))
            .arg(format!("{}:{}/", self.dest, remote.display()));
        c
    }

    fn unison(&self, local: &Path, remote: &Path) -> Command {
        let sshargs = self.ssh.strip_prefix("ssh ").unwrap_or(&self.ssh);
        let mut c = Command::new("unison");
        c.arg(local)
            .arg(format!("ssh://{}/{}", self.dest, remote.display()))
            .args([
                "-batch",
                "-auto",
                "-silent",
                "-times",
                "-perms",
                "0",
                "-confirmbigdel=false",
            ])
            .args(["-sshargs", sshargs])
            .env("UNISON", &self.unison_home);
        c
    }
}

/// Runs a command to completion; returns its wall time and stdout.
fn exec(mut cmd: Command, what: &str) -> Result<(Duration, String)> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    stats(&mut v).p50
}

fn rsync_bytes_sent(stats_out: &str) -> Result<f64> {
    let line = stats_out
        .lines()
        .find(|l| l.starts_with("Total bytes sent:"))
        .context("rsync --stats printed no 'Total bytes sent'")?;
    let digits: String = line.chars().filter(char::is_ascii_digit).collect();
    Ok(digits.parse::<f64>()?)
}

/// Peak RSS (VmHWM, kB) of a process, if it is still there.
fn hwm_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Pids whose command line contains every needle.
fn pids_matching(needles: &[&str], except: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != except && pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                needles.iter().all(|n| c.contains(n))
            })
        })
        .collect()
}

/// Runs `cmd` and samples the peak RSS of it and of the far-side process
/// (found by its command line) until it exits; returns (time, client MB, server MB).
fn run_rss(mut cmd: Command, server_needles: &[&str], what: &str) -> Result<(Duration, f64, f64)> {
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let me = child.id();
    let (mut client, mut server) = (0u64, 0u64);
    let mut server_pids: Vec<u32> = Vec::new();
    let status = loop {
        if let Some(kb) = hwm_kb(me) {
            client = client.max(kb);
        }
        for p in pids_matching(server_needles, me) {
            if !server_pids.contains(&p) {
                server_pids.push(p);
            }
        }
        for &p in &server_pids {
            if let Some(kb) = hwm_kb(p) {
                server = server.max(kb);
            }
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok((t.elapsed(), client as f64 / 1024.0, server as f64 / 1024.0))
}

/// Flushes dirty pages (`sync`) so that a timed copy does not pay for the
/// write-back of the one before it (rsync does not fsync: its data would
/// otherwise still be on its way to the disk during the next run).
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_millis(500));
}

/// The load average, for the record.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn flip_byte(path: &Path, at: u64) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at)?;
    b[0] ^= 0xa5;
    f.write_all_at(&b, at)?;
    Ok(())
}

/// `cargo xtask bench remote`.
pub fn run(ctx: &BenchCtx) -> Result<Vec<Row>> {
    let sshd = Sshd::start().context("the loopback sshd did not start (install openssh-server)")?;
    let work = tempfile::Builder::new()
        .prefix("wsync-bench-remote")
        .tempdir()?;
    let w = work.path();
    let env = Env {
        wsync: ctx.wsync.clone(),
        ssh: sshd.ssh_command(),
        dest: sshd.destination(),
        unison_home: w.join("unison-home"),
    };
    std::fs::create_dir_all(&env.unison_home)?;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let files = if ctx.quick { 1_000 } else { 10_000 };
    let src = w.join("src");
    let (n, bytes, eight) = generate(&src, files, &mut rng)?;
    eprintln!("generated {n} files, {:.0} MB", bytes as f64 / 1e6);
    let mut rows = Vec::new();

    // Initial copy. Every copier runs in every round, the order rotated
    // between rounds and each into a fresh folder, and the median is kept:
    // one run each was at the mercy of whatever the file system was doing
    // (on this VM's ext4, creating files soon after many were deleted is
    // several times slower). The tar pipelines are the transport's floor:
    // one stream through the same ssh, nothing checked, fsynced or compared.
    let have_zstd = Command::new("zstd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let tar_pipe = |dest: &Path, zstd: bool| {
        let (z, unz) = if zstd {
            ("| zstd -1 -q -c ", "zstd -d -q -c | ")
        } else {
            ("", "")
        };
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "tar -C {src} -cf - . {z}| {ssh} {dest_host} 'mkdir -p {dest} && {unz}tar -C {dest} -xf -'",
            src = src.display(),
            ssh = env.ssh,
            dest_host = env.dest,
            dest = dest.display(),
        ));
        c
    };
    type Copier<'a> = (&'static str, Box<dyn Fn(&Path) -> Command + 'a>);
    let mut copiers: Vec<Copier<'_>> = vec![
        (
            "wsync",
            Box::new(|d: &Path| env.wsync("push", &src, d, &[])),
        ),
        ("rsync", Box::new(|d: &Path| env.rsync(&src, d, &[]))),
        ("unison", Box::new(|d: &Path| env.unison(&src, d))),
        (
            "wsync-nofsync",
            Box::new(|d: &Path| env.wsync("push", &src, d, &["--no-fsync"])),
        ),
        ("tar", Box::new(|d: &Path| tar_pipe(d, false))),
    ];
    if have_zstd {
        copiers.push(("tar-zstd", Box::new(|d: &Path| tar_pipe(d, true))));
    }
    let rounds = if ctx.quick { 1 } else { 3 };
    let dest = |name: &str, round: usize| w.join(format!("dst-{name}-{round}"));
    let mut times: std::collections::BTreeMap<&str, Vec<Duration>> = Default::default();
    eprintln!("load average before: {}", load());
    for round in 0..rounds {
        for k in 0..copiers.len() {
            let (name, make) = &copiers[(k + round) % copiers.len()];
            settle();
            let (t, _) = exec(make(&dest(name, round)), name)?;
            eprintln!("initial copy, round {round}: {name} {:.0} ms", ms(t));
            times.entry(name).or_default().push(t);
        }
    }
    settle();
    let med = |name: &str| times.get(name).cloned().map(median).unwrap_or_default();
    let (tw, tr, tu, tnf, tt) = (
        med("wsync"),
        med("rsync"),
        med("unison"),
        med("wsync-nofsync"),
        med("tar"),
    );
    let tz = have_zstd.then(|| med("tar-zstd"));
    // Later steps work on the first round's copies.
    let (dw, dr, du) = (dest("wsync", 0), dest("rsync", 0), dest("unison", 0));
    let label = format!(
        "initial copy ({n} files, {:.0} MB; median of {rounds})",
        bytes as f64 / 1e6
    );
    rows.push(Row::versus(&label, ms(tw), "rsync -a", ms(tr), "ms").goal("≤ 0.8×"));
    rows.push(Row::versus(&label, ms(tw), "unison", ms(tu), "ms"));
    rows.push(Row::versus(
        format!("{label}, without fsync (hidden --no-fsync; rsync does not fsync)"),
        ms(tnf),
        "rsync -a",
        ms(tr),
        "ms",
    ));
    rows.push(Row::versus(
        format!("{label}: floor, `tar -c | ssh | tar -x` (no checks, no fsync)"),
        ms(tt),
        "rsync -a",
        ms(tr),
        "ms",
    ));
    if let Some(tz) = tz {
        rows.push(Row::versus(
            format!("{label}: floor, `tar -c | zstd -1 | ssh | zstd -d | tar -x`"),
            ms(tz),
            "rsync -a",
            ms(tr),
            "ms",
        ));
    }

    // No-op re-sync.
    let reps = if ctx.quick { 3 } else { 5 };
    let time_reps = |mk: &dyn Fn() -> Command, what: &str| -> Result<Duration> {
        let mut v = Vec::new();
        for _ in 0..reps {
            v.push(exec(mk(), what)?.0);
        }
        Ok(median(v))
    };
    let nw = time_reps(&|| env.wsync("push", &src, &dw, &[]), "wsync push")?;
    let nr = time_reps(&|| env.rsync(&src, &dr, &[]), "rsync")?;
    // With reuse, the first run starts the session agent (cold), the
    // following ones go through it (warm).
    let nwr_first = exec(
        env.wsync("push", &src, &dw, &["--ssh-reuse"]),
        "wsync push --ssh-reuse (first)",
    )?
    .0;
    let nwr = time_reps(
        &|| env.wsync("push", &src, &dw, &["--ssh-reuse"]),
        "wsync push --ssh-reuse",
    )?;
    let nrr = time_reps(
        &|| env.rsync_warm(&src, &dr, &[]),
        "rsync over a warm connection",
    )?;
    // What ssh alone costs per run: a fresh login, and a command over a
    // warm connection (the remote login shell still starts every time).
    let ssh_true = |ssh: &str| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("{ssh} {} true", env.dest));
        c
    };
    let sf = time_reps(&|| ssh_true(&env.ssh), "ssh true")?;
    let sw = time_reps(&|| ssh_true(&env.ssh_warm()), "ssh true (warm)")?;
    exec(env.wsync("sync", &src, &dw, &[]), "wsync sync (first)")?;
    let ns = time_reps(&|| env.wsync("sync", &src, &dw, &[]), "wsync sync")?;
    let nu = time_reps(&|| env.unison(&src, &du), "unison")?;
    rows.push(Row::versus("no-op re-sync (push)", ms(nw), "rsync -a", ms(nr), "ms").goal("≤ 0.3×"));
    rows.push(
        Row::versus(
            "no-op re-sync (push, --ssh-reuse: through the warm session agent)",
            ms(nwr),
            "rsync -a",
            ms(nr),
            "ms",
        )
        .goal("≤ 0.3×"),
    );
    rows.push(Row::versus(
        "no-op re-sync (push, --ssh-reuse), first run: starts the agent",
        ms(nwr_first),
        "rsync -a",
        ms(nr),
        "ms",
    ));
    rows.push(Row::versus(
        "no-op re-sync (push): wsync's warm agent vs rsync over a warm ssh master",
        ms(nwr),
        "rsync -a",
        ms(nrr),
        "ms",
    ));
    rows.push(Row::solo(
        "ssh HOST true, fresh connection (part of every cold run)",
        ms(sf),
        "ms",
    ));
    rows.push(Row::solo(
        "ssh HOST true, warm connection (part of every warm run)",
        ms(sw),
        "ms",
    ));
    rows.push(Row::versus(
        "no-op re-sync (two-way sync)",
        ms(ns),
        "unison",
        ms(nu),
        "ms",
    ));

    // One small edit + one byte changed in the 8 MB file.
    let small = src.join("d000/s1/f1.txt");
    let (mut tws, mut trs, mut tus, mut bws, mut brs) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..3u64 {
        let mut text = std::fs::read(&small)?;
        text.extend_from_slice(format!("edit {round}\n").as_bytes());
        std::fs::write(&small, text)?;
        flip_byte(&eight, (1_000_003 + round * 2_000_017) % (8 << 20))?;
        let (t, out) = exec(env.wsync("push", &src, &dw, &["--json"]), "wsync push")?;
        let v: serde_json::Value = serde_json::from_str(&out).context("wsync --json output")?;
        bws.push(v["bytes_sent"].as_f64().unwrap_or(0.0));
        tws.push(t);
        let (t, out) = exec(env.rsync(&src, &dr, &["--stats"]), "rsync --stats")?;
        brs.push(rsync_bytes_sent(&out)?);
        trs.push(t);
        tus.push(exec(env.unison(&src, &du), "unison")?.0);
    }
    // The same with a warm ssh connection, for both (unison kept in step).
    let (mut twr, mut trr) = (Vec::new(), Vec::new());
    for round in 3..6u64 {
        let mut text = std::fs::read(&small)?;
        text.extend_from_slice(format!("edit {round}\n").as_bytes());
        std::fs::write(&small, text)?;
        flip_byte(&eight, (1_000_003 + round * 2_000_017) % (8 << 20))?;
        twr.push(
            exec(
                env.wsync("push", &src, &dw, &["--ssh-reuse"]),
                "wsync push --ssh-reuse",
            )?
            .0,
        );
        trr.push(exec(env.rsync_warm(&src, &dr, &[]), "rsync (warm)")?.0);
        exec(env.unison(&src, &du), "unison")?;
    }
    brs.sort_by(f64::total_cmp);
    bws.sort_by(f64::total_cmp);
    rows.push(Row::versus(
        "small edit + 1 byte in 8 MB: time, wsync's warm agent vs rsync over a warm ssh master",
        ms(median(twr.clone())),
        "rsync -a",
        ms(median(trr)),
        "ms",
    ));
    rows.push(
        Row::versus(
            "small edit + 1 byte in 8 MB: time (--ssh-reuse: through the warm session agent)",
            ms(median(twr)),
            "rsync -a",
            ms(median(trs.clone())),
            "ms",
        )
        .goal("≤ 0.3×"),
    );
    rows.push(
        Row::versus(
            "small edit + 1 byte in 8 MB: time",
            ms(median(tws.clone())),
            "rsync -a",
            ms(median(trs)),
            "ms",
        )
        .goal("≤ 0.3×"),
    );
    rows.push(Row::versus(
        "small edit + 1 byte in 8 MB: time",
        ms(median(tws)),
        "unison",
        ms(median(tus)),
        "ms",
    ));
    rows.push(
        Row::versus(
            "small edit + 1 byte in 8 MB: bytes sent",
            bws[1] / 1e3,
            "rsync -a",
            brs[1] / 1e3,
            "KB",
        )
        .goal("≤ 0.1×"),
    );

    // Watch propagation latency (local change -> visible on the peer).
    let mut watch = env.wsync("watch", &src, &dw, &[]);
    let mut child = watch
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start wsync remote watch")?;
    let probe = |name: &str, timeout: Duration| -> Result<Duration> {
        let rel = format!("watch/{name}");
        let t = Instant::now();
        let p = src.join(&rel);
        std::fs::create_dir_all(p.parent().context("no parent")?)?;
        std::fs::write(&p, name)?;
        let there = dw.join(&rel);
        while !there.exists() {
            if t.elapsed() > timeout {
                bail!("watch did not propagate {rel} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(t.elapsed())
    };
    let warm = probe("warmup", Duration::from_secs(120));
    let mut lat = Vec::new();
    if warm.is_ok() {
        for i in 0..if ctx.quick { 10 } else { 20 } {
            std::thread::sleep(Duration::from_millis(150));
            lat.push(probe(&format!("p{i}"), Duration::from_secs(30))?);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    warm?;
    let s = stats(&mut lat);
    rows.push(Row::solo("watch propagation p50", ms(s.p50), "ms").goal("≤ 100 ms"));
    rows.push(Row::solo("watch propagation p95", ms(s.p95), "ms"));

    // Peak RSS of both ends syncing a big file with a small change.
    let big_mb: u64 = if ctx.quick { 128 } else { 1024 };
    let bsrc = w.join("big-src");
    std::fs::create_dir_all(&bsrc)?;
    let big = bsrc.join("big.bin");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big)?);
        for _ in 0..big_mb {
            f.write_all(&rng.bytes(1 << 20))?;
        }
        f.flush()?;
    }
    let (bw, br) = (w.join("big-wsync"), w.join("big-rsync"));
    exec(env.wsync("push", &bsrc, &bw, &[]), "wsync push (big)")?;
    exec(env.rsync(&bsrc, &br, &[]), "rsync (big)")?;
    flip_byte(&big, big_mb * (1 << 19) + 7)?;
    let bw_s = bw.display().to_string();
    let br_s = br.display().to_string();
    let (_, wc, ws) = run_rss(
        env.wsync("push", &bsrc, &bw, &[]),
        &["serve", &bw_s],
        "wsync push (big)",
    )?;
    let (_, rc, rs) = run_rss(
        env.rsync(&bsrc, &br, &[]),
        &["--server", &br_s],
        "rsync (big)",
    )?;
    let label = format!("peak RSS, {big_mb} MB file, 1 byte changed");
    rows.push(Row::versus(format!("{label}: sender"), wc, "rsync -a", rc, "MB").goal("≤ 64 MB"));
    rows.push(Row::versus(format!("{label}: receiver"), ws, "rsync -a", rs, "MB").goal("≤ 64 MB"));
    eprintln!("load average after: {}", load());
    Ok(rows)
}
