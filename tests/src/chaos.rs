//! Crash injection: runs a wsync command, SIGKILLs its whole process group
//! at an instant drawn uniformly over an un-killed run's duration, runs the
//! same command again and checks that nothing was lost or left stuck.
//!
//! One module serves both `cargo xtask chaos` (many trials, the release
//! binary) and `tests/tests/chaos.rs` (a few trials, the test binary).
//!
//! Per trial:
//! 1. a fresh set of trees (clones + bare remote, or two plain folders);
//! 2. a manifest: the git blob id (`git hash-object --no-filters`) of every
//!    user file in every tree;
//! 3. the command, killed (SIGKILL to its process group, so git and ssh
//!    children die with it) at the drawn instant;
//! 4. the phase the kill hit, from the sync journal
//!    (`<state>/sync-in-progress.json`) when the command keeps one, else
//!    from what is on disk (new safety snapshot, temp files being written)
//!    and the kill-time fraction;
//! 5. the same command again, which must succeed;
//! 6. the checks: every (path, blob) of the manifest is in a working tree,
//!    a commit reachable from a ref of any repository (snapshots live under
//!    `refs/wsync/snapshots/`, the remote's branches) or, for `remote`, in
//!    either folder; no sync lock held, no pause, no git `*.lock` file left;
//!    `git fsck --full` clean everywhere; no wsync temp file in a user tree
//!    or in a remote commit; queue, status and config readable.
//!
//! Nothing here prints; results come back as data.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use wsync_testutils::{Sshd, hermetic};

/// What can go wrong in the harness itself (not in wsync).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A set-up command failed.
    #[error("{what}: {detail}")]
    Setup {
        /// The command.
        what: String,
        /// Its stderr or the reason.
        detail: String,
    },
}

type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A crash-injection scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `wsync sync`: two clones and a bare remote, user edits on both
    /// sides, an autonomous writer running under `wsync guard`.
    Sync,
    /// `wsync rollback` of a workspace with many changes since the snapshot.
    Rollback,
    /// `wsync remote sync` with edits on both sides, over a loopback sshd
    /// (even trials, when sshd is available) or to a local peer.
    Remote,
    /// `wsync request-sync` then `wsync daemon run` processing the queue.
    Daemon,
}

impl Scenario {
    /// Every scenario, in table order.
    pub const ALL: [Self; 4] = [Self::Sync, Self::Rollback, Self::Remote, Self::Daemon];

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Rollback => "rollback",
            Self::Remote => "remote",
            Self::Daemon => "daemon",
        }
    }

    /// The command line being killed (for the report).
    pub fn command(self) -> &'static str {
        match self {
            Self::Sync => "wsync sync",
            Self::Rollback => "wsync rollback",
            Self::Remote => "wsync remote sync LOCAL PEER",
            Self::Daemon => "wsync request-sync + wsync daemon run",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown scenario {s:?}: sync, rollback, remote or daemon"))
    }
}

/// How to run a campaign.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The `wsync` binary under test.
    pub bin: PathBuf,
    /// Trials per scenario.
    pub trials: usize,
    /// Seed of the kill times and workloads.
    pub seed: u64,
    /// Un-killed runs timed per scenario (the median is the duration).
    pub baseline_runs: usize,
    /// Workload scale: 1 is the full size; smaller numbers mean fewer files.
    pub scale: usize,
    /// Use a loopback sshd for the remote scenario when one can start.
    pub ssh: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        Self {
            bin: PathBuf::from("target/release/wsync"),
            trials: 100,
            seed: 1,
            baseline_runs: 3,
            scale: 4,
            ssh: true,
        }
    }
}

/// One killed run and what was found after it.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Scenario.
    pub scenario: Scenario,
    /// Trial number (0-based).
    pub index: usize,
    /// `ssh` or `local` for remote; empty otherwise.
    pub variant: String,
    /// When the kill was sent, after the spawn.
    pub kill_at_ms: u64,
    /// The kill time as a fraction of the measured duration.
    pub kill_fraction: f64,
    /// The phase the kill hit.
    pub phase: String,
    /// Where the phase came from: `journal`, `disk` or `time`.
    pub phase_source: String,
    /// Whether the command had already exited when the kill came.
    pub finished_before_kill: bool,
    /// Whether the next run of the same command succeeded.
    pub recovered: bool,
    /// What the failed recovery said.
    pub recovery_error: Option<String>,
    /// Files of the manifest at the same path (always 0 when nothing is lost).
    pub manifest_files: usize,
    /// Manifest entries whose bytes are nowhere (tree label and path).
    pub lost: Vec<String>,
    /// Bytes of those entries.
    pub bytes_lost: u64,
    /// Manifest entries found only under another path (e.g. a conflict copy).
    pub relocated: Vec<String>,
    /// Held sync locks, pauses and git `*.lock` files left after recovery.
    pub stuck: Vec<String>,
    /// Repositories where `git fsck --full` failed.
    pub fsck_failures: Vec<String>,
    /// Final paths holding bytes that existed nowhere before the trial (a
    /// torn or partial write), and temp-named files in a remote commit.
    pub temps_at_final: Vec<String>,
    /// wsync temp files left in a user folder (under their temp name, never
    /// synced; `wsync remote` removes its own after an hour). Not a goal.
    pub user_tree_temps: Vec<String>,
    /// Files of the autonomous writer that reached a remote commit, and a
    /// remote `main` that is not a descendant of the one before the trial
    /// (history rewritten: a force-push).
    pub system_committed: Vec<String>,
    /// State files or commands that did not parse.
    pub unreadable: Vec<String>,
    /// User edits that the recovered run did not deliver: sync/daemon, a
    /// file of `a` missing from the remote's `main`; remote, a path whose
    /// two sides differ.
    pub not_synced: Vec<String>,
    /// wsync temp files left inside state folders (not a goal).
    pub litter: usize,
    /// Harness trouble (set-up failed): the trial says nothing about wsync.
    pub harness_error: Option<String>,
}

impl Trial {
    /// Whether every goal held.
    pub fn ok(&self) -> bool {
        self.harness_error.is_none()
            && self.recovered
            && self.lost.is_empty()
            && self.stuck.is_empty()
            && self.fsck_failures.is_empty()
            && self.temps_at_final.is_empty()
            && self.system_committed.is_empty()
            && self.unreadable.is_empty()
            && self.not_synced.is_empty()
    }
}

/// The figures of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario.
    pub scenario: Scenario,
    /// Its command.
    pub command: String,
    /// Measured un-killed duration per variant, in ms.
    pub duration_ms: BTreeMap<String, u64>,
    /// Trials run.
    pub trials: usize,
    /// Kills per phase.
    pub phases: BTreeMap<String, usize>,
    /// Trials whose next run succeeded.
    pub recoveries: usize,
    /// Bytes lost (goal 0).
    pub bytes_lost: u64,
    /// Files lost (goal 0).
    pub files_lost: usize,
    /// Stuck locks or pauses (goal 0).
    pub stuck_locks: usize,
    /// fsck failures (goal 0).
    pub fsck_failures: usize,
    /// Temp files at a final path (goal 0).
    pub temps_at_final: usize,
    /// System writes committed (goal 0).
    pub system_committed: usize,
    /// Unreadable state (goal 0).
    pub unreadable: usize,
    /// User edits not delivered by the recovered run (goal 0).
    pub not_synced: usize,
    /// Harness errors (goal 0: a trial that did not run says nothing).
    pub harness_errors: usize,
    /// Manifest entries found only under another path.
    pub relocated: usize,
    /// Temp files left in state folders and (by name) in user folders.
    pub litter: usize,
    /// Every trial.
    pub details: Vec<Trial>,
}

impl ScenarioReport {
    /// Whether every goal held in every trial.
    pub fn ok(&self) -> bool {
        self.trials > 0 && self.details.iter().all(Trial::ok)
    }

    fn from_trials(scenario: Scenario, duration_ms: BTreeMap<String, u64>, t: Vec<Trial>) -> Self {
        let mut phases = BTreeMap::new();
        for x in &t {
            *phases.entry(x.phase.clone()).or_insert(0) += 1;
        }
        let count = |f: &dyn Fn(&Trial) -> usize| t.iter().map(f).sum::<usize>();
        Self {
            scenario,
            command: scenario.command().into(),
            duration_ms,
            trials: t.len(),
            phases,
            recoveries: count(&|x| usize::from(x.recovered)),
            bytes_lost: t.iter().map(|x| x.bytes_lost).sum(),
            files_lost: count(&|x| x.lost.len()),
            stuck_locks: count(&|x| x.stuck.len()),
            fsck_failures: count(&|x| x.fsck_failures.len()),
            temps_at_final: count(&|x| x.temps_at_final.len()),
            system_committed: count(&|x| x.system_committed.len()),
            unreadable: count(&|x| x.unreadable.len()),
            not_synced: count(&|x| x.not_synced.len()),
            harness_errors: count(&|x| usize::from(x.harness_error.is_some())),
            relocated: count(&|x| x.relocated.len()),
            litter: count(&|x| x.litter + x.user_tree_temps.len()),
            details: t,
        }
    }
}

/// Runs `opts.trials` trials of `scenario`; `progress` sees each trial.
pub fn run_scenario(
    opts: &ChaosOptions,
    scenario: Scenario,
    progress: &mut dyn FnMut(&Trial),
) -> Result<ScenarioReport> {
    let sshd = if scenario == Scenario::Remote && opts.ssh {
        Sshd::start()
    } else {
        None
    };
    let variants: Vec<&str> = match (scenario, &sshd) {
        (Scenario::Remote, Some(_)) => vec!["ssh", "local"],
        (Scenario::Remote, None) => vec!["local"],
        _ => vec![""],
    };
    let env = Env {
        bin: opts.bin.clone(),
        scale: opts.scale.max(1),
        sshd,
    };
    let mut rng = fastrand::Rng::with_seed(opts.seed ^ (scenario as u64).wrapping_mul(0x9E37_79B9));
    let mut durations = BTreeMap::new();
    for v in &variants {
        let mut times = Vec::new();
        for _ in 0..opts.baseline_runs.max(1) {
            let mut setup = env.setup(scenario, v, &mut rng)?;
            let t0 = Instant::now();
            let out = setup.run_to_end(&env)?;
            times.push(t0.elapsed());
            if !out.success {
                return Err(Error::Setup {
                    what: format!("un-killed {} ({v})", scenario.command()),
                    detail: out.detail,
                });
            }
        }
        times.sort();
        let median = times.get(times.len() / 2).copied().unwrap_or_default();
        durations.insert((*v).to_owned(), median);
    }
    let mut trials = Vec::new();
    for index in 0..opts.trials {
        let variant = variants.get(index % variants.len()).copied().unwrap_or("");
        let duration = durations.get(variant).copied().unwrap_or_default();
        let fraction = rng.f64();
        let kill_at = duration.mul_f64(fraction);
        let mut trial = Trial {
            scenario,
            index,
            variant: variant.to_owned(),
            kill_at_ms: u64::try_from(kill_at.as_millis()).unwrap_or(u64::MAX),
            kill_fraction: fraction,
            phase: String::new(),
            phase_source: String::new(),
            finished_before_kill: false,
            recovered: false,
            recovery_error: None,
            manifest_files: 0,
            lost: Vec::new(),
            bytes_lost: 0,
            relocated: Vec::new(),
            stuck: Vec::new(),
            fsck_failures: Vec::new(),
            temps_at_final: Vec::new(),
            user_tree_temps: Vec::new(),
            system_committed: Vec::new(),
            unreadable: Vec::new(),
            not_synced: Vec::new(),
            litter: 0,
            harness_error: None,
        };
        if let Err(e) = env.trial(scenario, variant, kill_at, &mut rng, &mut trial) {
            trial.harness_error = Some(e.to_string());
            if trial.phase.is_empty() {
                "harness-error".clone_into(&mut trial.phase);
            }
        }
        progress(&trial);
        trials.push(trial);
    }
    let durations = durations
        .into_iter()
        .map(|(k, v)| {
            let k = if k.is_empty() { "run".to_owned() } else { k };
            (k, u64::try_from(v.as_millis()).unwrap_or(u64::MAX))
        })
        .collect();
    Ok(ScenarioReport::from_trials(scenario, durations, trials))
}

/// The Markdown table of a campaign.
pub fn markdown_table(reports: &[ScenarioReport]) -> String {
    let mut s = String::from(
        "| scenario | un-killed run | trials | kills per phase | recoveries | bytes lost (goal 0) | stuck locks (goal 0) | fsck failures (goal 0) | torn/temp file at final path (goal 0) | system write committed or history rewritten (goal 0) | unreadable state (goal 0) | edits not synced after recovery (goal 0) | harness errors (goal 0) | temp litter left (no goal) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let phases: Vec<String> = r.phases.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let dur: Vec<String> = r
            .duration_ms
            .iter()
            .map(|(k, v)| {
                if k == "run" {
                    format!("{v} ms")
                } else {
                    format!("{k} {v} ms")
                }
            })
            .collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario.as_str(),
            dur.join(", "),
            r.trials,
            phases.join(", "),
            r.recoveries,
            r.trials,
            r.bytes_lost,
            r.stuck_locks,
            r.fsck_failures,
            r.temps_at_final,
            r.system_committed,
            r.unreadable,
            r.not_synced,
            r.harness_errors,
            r.litter,
        ));
    }
    s
}

// ---------------------------------------------------------------------------
// Set-up

/// The trees of one trial.
struct Setup {
    _tmp: tempfile::TempDir,
    scenario: Scenario,
    variant: String,
    /// Working trees: (label, path, has a `.git`).
    trees: Vec<(String, PathBuf)>,
    /// Git repositories to fsck and to search: (label, path).
    repos: Vec<(String, PathBuf)>,
    /// The workspace wsync runs in (sync, rollback, daemon) or LOCAL (remote).
    ws: PathBuf,
    /// The bare remote (sync, daemon).
    bare: Option<PathBuf>,
    /// The peer folder (remote).
    peer: Option<PathBuf>,
    /// The autonomous writer (sync).
    writer: Option<Writer>,
    /// The queued ticket (daemon).
    ticket: Option<String>,
    /// Start-up lines in the daemon log before the current run.
    daemon_starts: usize,
    /// Remote: the blob of each path right after the first sync (the base).
    base: BTreeMap<Vec<u8>, String>,
    /// Sync, daemon: (path, blob) of `a`'s HEAD before the trial; a
    /// manifest entry of `a` not in it is a user edit the run must push.
    a_head: HashSet<(Vec<u8>, String)>,
}

struct Env {
    bin: PathBuf,
    scale: usize,
    sshd: Option<Sshd>,
}

/// The result of a run to its end.
struct RunEnd {
    success: bool,
    detail: String,
}

const SYSTEM_FILES: [&str; 2] = [".claude/autonomous/service-status.json", "logs/run.log"];

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = git_out(dir, args)?;
    if !out.status.success() {
        return Err(Error::Setup {
            what: format!("git {} in {}", args.join(" "), dir.display()),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn git_out(dir: &Path, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("git");
    hermetic(&mut cmd);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(io(dir))
}

fn write(root: &Path, rel: &str, data: &[u8]) -> Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(&p, data).map_err(io(&p))
}

/// Sets the mtime of every user file under `root` to `age` ago.
fn backdate(root: &Path, age: Duration) -> Result<()> {
    let when = std::time::SystemTime::now() - age;
    for (rel, _) in walk(root)? {
        let p = root.join(OsStr::from_bytes(&rel));
        std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(when))
            .map_err(io(&p))?;
    }
    Ok(())
}

/// A user's edits: rewrites `src/f{i}.txt` for each `i` in `range`
/// (deleting every `delete_every`-th instead) and, with `new_dir`, adds
/// `{new_dir}/n{i}.txt`. `delete_every == usize::MAX` with `new_dir` only adds.
fn churn(
    root: &Path,
    rng: &mut fastrand::Rng,
    range: std::ops::Range<usize>,
    delete_every: usize,
    tag: &str,
    new_dir: Option<&str>,
) -> Result<()> {
    for i in range {
        if delete_every == usize::MAX {
            // only new files
        } else if i % delete_every == 0 {
            let p = root.join(format!("src/f{i}.txt"));
            std::fs::remove_file(&p).map_err(io(&p))?;
        } else {
            write(root, &format!("src/f{i}.txt"), &text(rng, tag, 24))?;
        }
        if let Some(dir) = new_dir {
            write(root, &format!("{dir}/n{i}.txt"), &text(rng, tag, 8))?;
        }
    }
    Ok(())
}

fn random_bytes(rng: &mut fastrand::Rng, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        v.extend_from_slice(&rng.u64(..).to_le_bytes());
    }
    v.truncate(n);
    v
}

fn text(rng: &mut fastrand::Rng, tag: &str, lines: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..lines {
        s.push_str(&format!("{tag} line {i} {:016x}\n", rng.u64(..)));
    }
    s.into_bytes()
}

impl Env {
    fn wsync(&self, dir: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        hermetic(&mut cmd)
            .current_dir(dir)
            .env_remove("WSYNC_LOG")
            .stdin(Stdio::null());
        cmd
    }

    fn wsync_out(&self, dir: &Path, args: &[&str]) -> Result<Output> {
        self.wsync(dir).args(args).output().map_err(io(&self.bin))
    }

    fn wsync_ok(&self, dir: &Path, args: &[&str]) -> Result<String> {
        let out = self.wsync_out(dir, args)?;
        if !out.status.success() {
            return Err(Error::Setup {
                what: format!("wsync {} in {}", args.join(" "), dir.display()),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn setup(&self, scenario: Scenario, variant: &str, rng: &mut fastrand::Rng) -> Result<Setup> {
        let tmp = tempfile::Builder::new()
            .prefix("wsync-chaos-")
            .tempdir()
            .map_err(io(Path::new("/tmp")))?;
        let root = tmp.path().canonicalize().map_err(io(tmp.path()))?;
        let n = (120 / self.scale).max(6);
        let big = (4 << 20) / self.scale;
        let mut s = Setup {
            scenario,
            variant: variant.to_owned(),
            trees: Vec::new(),
            repos: Vec::new(),
            ws: root.join("a"),
            bare: None,
            peer: None,
            writer: None,
            ticket: None,
            daemon_starts: 0,
            base: BTreeMap::new(),
            a_head: HashSet::new(),
            _tmp: tmp,
        };
        match scenario {
            Scenario::Sync | Scenario::Daemon => {
                let bare = root.join("remote.git");
                git(&root, &["init", "-q", "--bare", "-b", "main", "remote.git"])?;
                git(&root, &["clone", "-q", "remote.git", "seed"])?;
                let seed = root.join("seed");
                for i in 0..n {
                    write(&seed, &format!("src/f{i}.txt"), &text(rng, "seed", 20))?;
                }
                write(&seed, "data/shared.bin", &random_bytes(rng, big))?;
                write(&seed, ".gitignore", b"/ignored/\n")?;
                git(&seed, &["add", "-A"])?;
                git(&seed, &["commit", "-q", "-m", "initial"])?;
                git(&seed, &["push", "-q", "origin", "HEAD:main"])?;
                git(&root, &["clone", "-q", "remote.git", "a"])?;
                git(&root, &["clone", "-q", "remote.git", "b"])?;
                let (a, b) = (root.join("a"), root.join("b"));
                // b: pushed work (a has to fetch and check it out) plus
                // uncommitted edits that stay local.
                for i in 0..n / 2 {
                    write(&b, &format!("src/f{i}.txt"), &text(rng, "b", 25))?;
                    write(&b, &format!("from-b/n{i}.txt"), &text(rng, "b-new", 10))?;
                }
                write(&b, "data/b.bin", &random_bytes(rng, big / 2))?;
                git(&b, &["add", "-A"])?;
                git(&b, &["commit", "-q", "-m", "b's work"])?;
                git(&b, &["push", "-q", "origin", "HEAD:main"])?;
                write(&b, "b-local.md", &text(rng, "b-local", 5))?;
                // a: edits, new files, deletions, a big binary, an ignored file.
                churn(&a, rng, n / 2..n, 7, "a", Some("from-a"))?;
                write(&a, "data/a.bin", &random_bytes(rng, big))?;
                write(&a, "ignored/cache.bin", &random_bytes(rng, 4096))?;
                std::fs::remove_dir_all(&seed).map_err(io(&seed))?;
                self.wsync_ok(&a, &["init"])?;
                let cfg = serde_json::json!({
                    "enabled": true,
                    "ratelimit": { "enabled": false },
                });
                write(&a, ".wsync/config.json", cfg.to_string().as_bytes())?;
                s.trees = vec![("a".into(), a.clone()), ("b".into(), b.clone())];
                s.repos = vec![
                    ("a".into(), a.clone()),
                    ("b".into(), b),
                    ("remote.git".into(), bare.clone()),
                ];
                s.bare = Some(bare);
                // The user's edits were made a while ago: the filter
                // attributes changes within 500 ms of a `wsync guard`
                // window to the autonomous writer, which starts now.
                backdate(&a, Duration::from_secs(30))?;
                s.a_head = tree_blobs(&a, "HEAD")?;
                if scenario == Scenario::Sync {
                    s.writer = Some(Writer::start(&self.bin, &a));
                } else {
                    let out = self.wsync_ok(
                        &a,
                        &[
                            "--json",
                            "request-sync",
                            "manual",
                            "chaos",
                            "high",
                            "chaos trial",
                        ],
                    )?;
                    let v: serde_json::Value =
                        serde_json::from_str(&out).map_err(|e| Error::Setup {
                            what: "request-sync --json".into(),
                            detail: e.to_string(),
                        })?;
                    s.ticket = v["id"].as_str().map(str::to_owned);
                }
            }
            Scenario::Rollback => {
                let a = root.join("a");
                std::fs::create_dir_all(&a).map_err(io(&a))?;
                git(&a, &["init", "-q", "-b", "main"])?;
                for i in 0..n * 2 {
                    write(&a, &format!("src/f{i}.txt"), &text(rng, "base", 20))?;
                }
                write(&a, "data/big.bin", &random_bytes(rng, big))?;
                git(&a, &["add", "-A"])?;
                git(&a, &["commit", "-q", "-m", "base"])?;
                self.wsync_ok(&a, &["init"])?;
                for i in 0..n / 2 {
                    write(&a, &format!("src/f{i}.txt"), &text(rng, "snap", 22))?;
                }
                self.wsync_ok(&a, &["snapshot", "create", "--reason", "chaos base"])?;
                // After the snapshot: many edits, new files, deletions, a new big file.
                churn(&a, rng, 0..n * 2, 5, "later", None)?;
                churn(&a, rng, 0..n, usize::MAX, "unused", Some("new"))?;
                write(&a, "data/big.bin", &random_bytes(rng, big))?;
                git(&a, &["add", "new"])?;
                s.trees = vec![("a".into(), a.clone())];
                s.repos = vec![("a".into(), a)];
            }
            Scenario::Remote => {
                let (a, p) = (root.join("local"), root.join("peer"));
                std::fs::create_dir_all(&p).map_err(io(&p))?;
                for i in 0..n {
                    write(&a, &format!("src/f{i}.txt"), &text(rng, "base", 20))?;
                }
                write(&a, "data/big.bin", &random_bytes(rng, big))?;
                write(&a, "data/mid.bin", &random_bytes(rng, big / 4))?;
                s.ws = a.clone();
                s.peer = Some(p.clone());
                // The base: one un-killed sync.
                let end = self
                    .remote_sync(&s)?
                    .wait_with_output()
                    .map_err(io(&self.bin))?;
                if !end.status.success() {
                    return Err(Error::Setup {
                        what: "first remote sync".into(),
                        detail: String::from_utf8_lossy(&end.stderr).into_owned(),
                    });
                }
                let files = walk(&a)?;
                let ids = hash_files(&a, &files)?;
                s.base = files.into_iter().map(|(p, _)| p).zip(ids).collect();
                // Non-conflicting edits on both sides.
                for i in 0..n / 2 {
                    write(&a, &format!("src/f{i}.txt"), &text(rng, "local", 22))?;
                    write(&a, &format!("new-local/n{i}.txt"), &text(rng, "ln", 6))?;
                }
                churn(&p, rng, n / 2..n, 6, "peer", Some("new-peer"))?;
                write(&a, "data/big.bin", &random_bytes(rng, big))?;
                write(&p, "data/peer.bin", &random_bytes(rng, big / 2))?;
                // A delta, not a whole file: change a few bytes of mid.bin.
                let mid = p.join("data/mid.bin");
                let mut m = std::fs::read(&mid).map_err(io(&mid))?;
                if let Some(b) = m.get_mut(100) {
                    *b ^= 0xff;
                }
                std::fs::write(&mid, m).map_err(io(&mid))?;
                s.trees = vec![("local".into(), a), ("peer".into(), p)];
            }
        }
        Ok(s)
    }

    fn remote_sync(&self, s: &Setup) -> Result<Child> {
        let peer = s.peer.as_deref().unwrap_or(Path::new("/nonexistent"));
        let mut cmd = self.wsync(&s.ws);
        cmd.arg("remote").arg("sync").arg(&s.ws);
        match (&self.sshd, s.variant.as_str()) {
            (Some(sshd), "ssh") => {
                cmd.arg(format!("{}:{}", sshd.destination(), peer.display()))
                    .arg("--rsh")
                    .arg(sshd.ssh_command())
                    .arg("--remote-wsync")
                    .arg(&self.bin);
            }
            _ => {
                cmd.arg(peer);
            }
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(io(&self.bin))
    }

    /// Spawns the command under test in its own process group.
    fn spawn(&self, s: &Setup) -> Result<Child> {
        let mut cmd = self.wsync(&s.ws);
        match s.scenario {
            Scenario::Sync => {
                cmd.arg("sync");
            }
            Scenario::Rollback => {
                cmd.arg("rollback");
            }
            Scenario::Remote => return self.remote_sync(s),
            Scenario::Daemon => {
                cmd.args(["daemon", "run", "--log-file"])
                    .arg(s.ws.join(".wsync/chaos-daemon.log"));
            }
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(io(&self.bin))
    }
}

/// Reads the whole stderr of a finished child.
fn finish(child: Child) -> RunEnd {
    match child.wait_with_output() {
        Ok(out) => RunEnd {
            success: out.status.success(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        },
        Err(e) => RunEnd {
            success: false,
            detail: e.to_string(),
        },
    }
}

fn signal_group(child: &Child, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Whether the daemon scenario's ticket is finished (in the history).
fn ticket_done(ws: &Path, ticket: &str) -> Option<String> {
    let hist = std::fs::read_to_string(ws.join(".wsync/queue-history.jsonl")).ok()?;
    hist.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["id"].as_str() == Some(ticket))
        .map(|v| {
            v["status"]
                .as_str()
                .or_else(|| v["outcome"].as_str())
                .unwrap_or("finished")
                .to_owned()
        })
}

impl Setup {
    /// Runs the command under test to its natural end (the daemon: until
    /// the ticket is finished, then SIGTERM).
    fn run_to_end(&mut self, env: &Env) -> Result<RunEnd> {
        self.daemon_starts = std::fs::read_to_string(self.ws.join(".wsync/chaos-daemon.log"))
            .map(|t| t.matches("daemon: started").count())
            .unwrap_or(0);
        let mut child = env.spawn(self)?;
        let end = self.await_end(&mut child)?;
        Ok(end.unwrap_or_else(|| finish(child)))
    }

    /// Waits for the daemon's ticket and stops it; `None` for the other
    /// scenarios (the caller collects the exit).
    fn await_end(&self, child: &mut Child) -> Result<Option<RunEnd>> {
        let Some(ticket) = &self.ticket else {
            return Ok(None);
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut outcome = None;
        while Instant::now() < deadline {
            if let Some(o) = ticket_done(&self.ws, ticket) {
                outcome = Some(o);
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(Some(RunEnd {
                    success: false,
                    detail: format!("daemon exited early: {status}"),
                }));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // SIGTERM once the daemon has started (its handler is installed
        // before the start-up line), to the daemon alone: a health-check
        // child must not see it.
        let log = self.ws.join(".wsync/chaos-daemon.log");
        let started = || {
            std::fs::read_to_string(&log)
                .map(|t| t.matches("daemon: started").count())
                .unwrap_or(0)
        };
        let until = Instant::now() + Duration::from_secs(30);
        while started() <= self.daemon_starts && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = wait_timeout(child, Duration::from_secs(60));
        let ok_exit = status.is_some_and(|s| s.success());
        if status.is_none() {
            signal_group(child, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
        Ok(Some(match outcome {
            Some(o) if o == "done" && ok_exit => RunEnd {
                success: true,
                detail: String::new(),
            },
            o => RunEnd {
                success: false,
                detail: format!("ticket outcome {o:?}, daemon exit {status:?}"),
            },
        }))
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

// ---------------------------------------------------------------------------
// The autonomous writer

/// Rewrites a status JSON and appends to a log through `wsync guard`
/// every few milliseconds, until dropped.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(bin: &Path, ws: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (bin, ws, flag) = (bin.to_path_buf(), ws.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::SeqCst) {
                n += 1;
                let script = format!(
                    "mkdir -p .claude/autonomous logs && \
                     printf '{{\"tick\":{n},\"state\":\"running\"}}\\n' > .claude/autonomous/service-status.json && \
                     echo \"tick {n}\" >> logs/run.log"
                );
                let mut cmd = Command::new(&bin);
                hermetic(&mut cmd)
                    .current_dir(&ws)
                    .args([
                        "guard",
                        "--name",
                        "chaos-writer",
                        "--max-wait",
                        "20",
                        "--",
                        "sh",
                        "-c",
                    ])
                    .arg(script)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let _ = cmd.status();
                std::thread::sleep(Duration::from_millis(15));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Manifests and checks

/// (tree label, path) → (blob id, size).
type Manifest = BTreeMap<(String, Vec<u8>), (String, u64)>;

/// Whether a path is wsync's own or git's (never user data).
fn skipped(rel: &[u8]) -> bool {
    rel == b".git" || rel == b".wsync" || rel.starts_with(b".git/") || rel.starts_with(b".wsync/")
}

fn is_system(rel: &[u8]) -> bool {
    SYSTEM_FILES.iter().any(|s| s.as_bytes() == rel)
}

/// Every regular file under `root` (not `.git`, not `.wsync`), relative.
fn walk(root: &Path) -> Result<Vec<(Vec<u8>, u64)>> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<(Vec<u8>, u64)>) -> Result<()> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(dir)(e)),
        };
        for de in rd {
            let de = de.map_err(io(dir))?;
            let p = de.path();
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .as_os_str()
                .as_bytes()
                .to_vec();
            if skipped(&rel) {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                go(root, &p, out)?;
            } else if md.is_file() {
                out.push((rel, md.len()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// Blob ids of `paths` under `root` through one `git hash-object`.
fn hash_files(root: &Path, paths: &[(Vec<u8>, u64)]) -> Result<Vec<String>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = Command::new("git");
    hermetic(&mut cmd);
    let mut child = cmd
        .args(["hash-object", "--no-filters", "--stdin-paths"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(root))?;
    let mut input = Vec::new();
    for (p, _) in paths {
        input.extend_from_slice(p);
        input.push(b'\n');
    }
    let mut stdin = child.stdin.take().ok_or_else(|| Error::Setup {
        what: "git hash-object".into(),
        detail: "no stdin".into(),
    })?;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(io(root))?;
    let _ = writer.join();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    if !out.status.success() || ids.len() != paths.len() {
        return Err(Error::Setup {
            what: format!("git hash-object in {}", root.display()),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(ids)
}

fn manifest(s: &Setup) -> Result<Manifest> {
    let mut m = Manifest::new();
    for (label, root) in &s.trees {
        let files: Vec<_> = walk(root)?
            .into_iter()
            .filter(|(p, _)| !is_system(p))
            .collect();
        let ids = hash_files(root, &files)?;
        for ((p, size), id) in files.into_iter().zip(ids) {
            m.insert((label.clone(), p), (id, size));
        }
    }
    if s.base.is_empty() {
        return Ok(m);
    }
    // Two-way sync: a base version that the user changed or deleted on the
    // other side is meant to go (the un-killed run replaces it too).
    let labels: Vec<String> = s.trees.iter().map(|(l, _)| l.clone()).collect();
    let superseded: Vec<(String, Vec<u8>)> = m
        .iter()
        .filter(|((label, path), (blob, _))| {
            s.base.get(path) == Some(blob)
                && labels.iter().filter(|l| *l != label).any(|other| {
                    m.get(&(other.clone(), path.clone())).map(|(b, _)| b) != Some(blob)
                })
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in superseded {
        m.remove(&k);
    }
    Ok(m)
}

/// Where bytes can be after a trial: (path, blob) pairs and blobs.
#[derive(Default)]
struct Found {
    pairs: HashSet<(Vec<u8>, String)>,
    blobs: HashSet<String>,
}

impl Found {
    fn add(&mut self, path: Vec<u8>, blob: String) {
        self.blobs.insert(blob.clone());
        self.pairs.insert((path, blob));
    }
}

fn collect_found(s: &Setup) -> Result<Found> {
    let mut f = Found::default();
    for (_, root) in &s.trees {
        let files = walk(root)?;
        let ids = hash_files(root, &files)?;
        for ((p, _), id) in files.into_iter().zip(ids) {
            f.add(p, id);
        }
    }
    for (_, repo) in &s.repos {
        let commits = git(repo, &["rev-list", "--all"])?;
        for c in commits.lines() {
            for (path, oid) in tree_blobs(repo, c)? {
                f.add(path, oid);
            }
        }
    }
    Ok(f)
}

/// (path, blob) of every file in `rev`'s tree.
fn tree_blobs(repo: &Path, rev: &str) -> Result<HashSet<(Vec<u8>, String)>> {
    let out = git_out(repo, &["ls-tree", "-r", "-z", "--full-tree", rev])?;
    let mut set = HashSet::new();
    for rec in out.stdout.split(|b| *b == 0) {
        // "<mode> <type> <oid>\t<path>"
        let Some(tab) = rec.iter().position(|b| *b == b'\t') else {
            continue;
        };
        let head = String::from_utf8_lossy(rec.get(..tab).unwrap_or_default()).into_owned();
        let mut parts = head.split(' ');
        if parts.nth(1) == Some("blob")
            && let Some(oid) = parts.next()
        {
            set.insert((
                rec.get(tab + 1..).unwrap_or_default().to_vec(),
                oid.to_owned(),
            ));
        }
    }
    Ok(set)
}

/// Names of wsync temp files (read from the crates' fsutil code):
/// `.NAME.PID.tmp` (coordinator), `.NAME.tmp.PID` (lock),
/// `.wsync-tmp.*` (session, remote), `.NAME.tmp-PID-N` (snapshot).
pub fn is_wsync_temp(name: &[u8]) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    if name.starts_with(".wsync-tmp.") {
        return true;
    }
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let coordinator = rest
        .strip_suffix(".tmp")
        .and_then(|stem| stem.rsplit_once('.'))
        .is_some_and(|(_, pid)| digits(pid));
    let lock = rest
        .rsplit_once(".tmp.")
        .is_some_and(|(_, pid)| digits(pid));
    let snapshot = rest
        .rsplit_once(".tmp-")
        .and_then(|(_, tail)| tail.split_once('-'))
        .is_some_and(|(a, b)| digits(a) && digits(b));
    coordinator || lock || snapshot
}

fn file_name(rel: &[u8]) -> &[u8] {
    rel.rsplit(|b| *b == b'/').next().unwrap_or(rel)
}

/// All files under `dir`, any depth, relative to `dir` (for state folders and `.git`).
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for de in rd.flatten() {
            let p = de.path();
            match de.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    out
}

/// Git lock files that would block the next git command.
fn git_locks(gitdir: &Path) -> Vec<String> {
    all_files(gitdir)
        .into_iter()
        .filter(|p| {
            p.extension() == Some(OsStr::new("lock"))
                && !p.components().any(|c| c.as_os_str() == "objects")
        })
        .map(|p| p.display().to_string())
        .collect()
}

fn json_of(out: &Output) -> Option<serde_json::Value> {
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

impl Env {
    fn trial(
        &self,
        scenario: Scenario,
        variant: &str,
        kill_at: Duration,
        rng: &mut fastrand::Rng,
        t: &mut Trial,
    ) -> Result<()> {
        let mut s = self.setup(scenario, variant, rng)?;
        let manifest = manifest(&s)?;
        t.manifest_files = manifest.len();
        let known = collect_found(&s)?.blobs;
        let snaps_before = self.snapshot_count(&s);
        let remote_before = s
            .bare
            .as_ref()
            .and_then(|b| git(b, &["rev-parse", "main"]).ok())
            .map(|o| o.trim().to_owned());

        // The killed run.
        let mut child = self.spawn(&s)?;
        let t0 = Instant::now();
        let deadline = t0 + kill_at;
        let mut exited = false;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(2)));
        }
        let writing = self.temps_present(&s);
        signal_group(&child, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        // The daemon never exits by itself: a kill after the ticket finished
        // is a kill of the idle daemon.
        let done_before_kill = s
            .ticket
            .as_deref()
            .is_some_and(|id| ticket_done(&s.ws, id).is_some());
        t.finished_before_kill = exited || done_before_kill;
        self.classify(&s, t, snaps_before, remote_before.as_deref(), writing);

        // The next run of the same command.
        let end = s.run_to_end(self)?;
        t.recovered = end.success;
        if !end.success {
            t.recovery_error = Some(end.detail);
        }
        drop(s.writer.take());
        if let (Some(bare), Some(before)) = (&s.bare, &remote_before) {
            let kept = git_out(bare, &["merge-base", "--is-ancestor", before, "main"])?;
            if !kept.status.success() {
                t.system_committed.push(format!(
                    "remote.git: main no longer contains {before} (force-push)"
                ));
            }
        }
        self.check(&s, &manifest, &known, t)
    }

    /// Whether the recovered run finished the job.
    fn check_delivered(&self, s: &Setup, manifest: &Manifest, t: &mut Trial) -> Result<()> {
        match s.scenario {
            Scenario::Rollback => {}
            Scenario::Sync | Scenario::Daemon => {
                let Some(bare) = &s.bare else { return Ok(()) };
                let tip = tree_blobs(bare, "main")?;
                for ((label, path), (blob, _)) in manifest {
                    if label == "a"
                        && !path.starts_with(b"ignored/")
                        && !s.a_head.contains(&(path.clone(), blob.clone()))
                        && !tip.contains(&(path.clone(), blob.clone()))
                    {
                        t.not_synced
                            .push(format!("a:{}", String::from_utf8_lossy(path)));
                    }
                }
            }
            Scenario::Remote => {
                let mut sides = Vec::new();
                for (_, root) in &s.trees {
                    let files: Vec<_> = walk(root)?
                        .into_iter()
                        .filter(|(p, _)| !is_wsync_temp(file_name(p)))
                        .collect();
                    let ids = hash_files(root, &files)?;
                    let m: BTreeMap<Vec<u8>, String> =
                        files.into_iter().map(|(p, _)| p).zip(ids).collect();
                    sides.push(m);
                }
                if let [x, y] = sides.as_slice() {
                    for k in x.keys().chain(y.keys()) {
                        if x.get(k) != y.get(k) {
                            t.not_synced.push(String::from_utf8_lossy(k).into_owned());
                        }
                    }
                    t.not_synced.sort();
                    t.not_synced.dedup();
                }
            }
        }
        Ok(())
    }

    fn snapshot_count(&self, s: &Setup) -> usize {
        if s.scenario == Scenario::Remote {
            return 0;
        }
        git(&s.ws, &["for-each-ref", "refs/wsync/snapshots/"])
            .map(|o| o.lines().count())
            .unwrap_or(0)
    }

    fn temps_present(&self, s: &Setup) -> bool {
        s.trees.iter().any(|(_, root)| {
            all_files(root).iter().any(|p| {
                p.file_name()
                    .is_some_and(|n| n.as_bytes().starts_with(b".wsync-tmp."))
            })
        })
    }

    fn classify(
        &self,
        s: &Setup,
        t: &mut Trial,
        snaps_before: usize,
        remote_before: Option<&str>,
        writing: bool,
    ) {
        let q = match t.kill_fraction {
            f if f < 0.25 => "q1",
            f if f < 0.5 => "q2",
            f if f < 0.75 => "q3",
            _ => "q4",
        };
        let (phase, source) = match s.scenario {
            Scenario::Sync | Scenario::Daemon => {
                let journal = std::fs::read(s.ws.join(".wsync/sync-in-progress.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["phase"].as_str().map(str::to_owned));
                if let Some(p) = journal {
                    (p, "journal")
                } else if t.finished_before_kill {
                    ("after-exit".to_owned(), "disk")
                } else {
                    let moved = s
                        .bare
                        .as_ref()
                        .and_then(|b| git(b, &["rev-parse", "main"]).ok())
                        .map(|o| o.trim().to_owned())
                        .as_deref()
                        != remote_before;
                    if moved {
                        ("finishing (journal removed)".to_owned(), "disk")
                    } else {
                        ("starting (no journal yet)".to_owned(), "disk")
                    }
                }
            }
            Scenario::Rollback => {
                if t.finished_before_kill {
                    ("after-exit".to_owned(), "disk")
                } else if self.snapshot_count(s) > snaps_before {
                    ("restoring (safety snapshot taken)".to_owned(), "disk")
                } else {
                    ("before safety snapshot".to_owned(), "disk")
                }
            }
            Scenario::Remote => {
                if t.finished_before_kill {
                    ("after-exit".to_owned(), "disk")
                } else if writing {
                    ("writing files".to_owned(), "disk")
                } else {
                    (format!("time {q}"), "time")
                }
            }
        };
        t.phase = phase;
        t.phase_source = source.to_owned();
    }

    fn check(
        &self,
        s: &Setup,
        manifest: &Manifest,
        known: &HashSet<String>,
        t: &mut Trial,
    ) -> Result<()> {
        // Bytes.
        let found = collect_found(s)?;
        for ((label, path), (blob, size)) in manifest {
            if found.pairs.contains(&(path.clone(), blob.clone())) {
                continue;
            }
            let name = format!("{label}:{}", String::from_utf8_lossy(path));
            if found.blobs.contains(blob) {
                t.relocated.push(name);
            } else {
                t.lost.push(name);
                t.bytes_lost += size;
            }
        }
        // Temp files at user paths and in commits; litter in state folders.
        for (label, root) in &s.trees {
            let files: Vec<_> = walk(root)?
                .into_iter()
                .filter(|(p, _)| !is_system(p))
                .collect();
            let ids = hash_files(root, &files)?;
            for ((rel, _), id) in files.iter().zip(ids) {
                let name = format!("{label}:{}", String::from_utf8_lossy(rel));
                if is_wsync_temp(file_name(rel)) {
                    // Not at a final path, but left in the user's folder.
                    t.user_tree_temps.push(name);
                } else if !known.contains(&id) {
                    // Bytes that were nowhere before the trial: a torn write.
                    t.temps_at_final
                        .push(format!("{name} (unknown content {id})"));
                }
            }
            t.litter += all_files(&root.join(".wsync"))
                .iter()
                .filter(|p| p.file_name().is_some_and(|n| is_wsync_temp(n.as_bytes())))
                .count();
        }
        if let Some(bare) = &s.bare {
            let names = git(bare, &["log", "--all", "--name-only", "--format="])?;
            for n in names.lines().filter(|n| !n.is_empty()) {
                if is_wsync_temp(file_name(n.as_bytes())) {
                    t.temps_at_final.push(format!("remote.git:{n}"));
                }
                if is_system(n.as_bytes()) {
                    t.system_committed.push(format!("remote.git:{n}"));
                }
            }
        }
        self.check_delivered(s, manifest, t)?;
        // Locks and pauses.
        if s.scenario != Scenario::Remote {
            let lock = self.wsync_out(&s.ws, &["--json", "lock", "status"])?;
            match json_of(&lock) {
                Some(v) if v["state"] == "free" => {}
                Some(v) => t.stuck.push(format!("sync lock: {v}")),
                None => t.unreadable.push("wsync lock status --json".into()),
            }
            let pause = self.wsync_out(&s.ws, &["--json", "pause", "status"])?;
            match json_of(&pause) {
                Some(v) if v["state"] == "running" => {}
                Some(v) => t.stuck.push(format!("pause: {v}")),
                None => t.unreadable.push("wsync pause status --json".into()),
            }
            for (args, what) in [
                (&["--json", "queue", "list"][..], "wsync queue list --json"),
                (&["--json", "status"][..], "wsync status --json"),
            ] {
                if json_of(&self.wsync_out(&s.ws, args)?).is_none() {
                    t.unreadable.push(what.into());
                }
            }
            if !self.wsync_out(&s.ws, &["config", "show"])?.status.success() {
                t.unreadable.push("wsync config show".into());
            }
        }
        for (label, repo) in &s.repos {
            let gitdir = if repo.join(".git").is_dir() {
                repo.join(".git")
            } else {
                repo.clone()
            };
            for l in git_locks(&gitdir) {
                t.stuck.push(format!("{label}: {l}"));
            }
            let fsck = git_out(repo, &["fsck", "--full", "--no-progress", "--no-dangling"])?;
            if !fsck.status.success() {
                t.fsck_failures.push(format!(
                    "{label}: {}",
                    String::from_utf8_lossy(&fsck.stderr).trim()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::is_wsync_temp;

    #[test]
    fn temp_names_of_every_crate_are_recognised() {
        for n in [
            ".queue.json.1234.tmp",
            ".sync.lock.tmp.99",
            ".wsync-tmp.x.json.5",
            ".ID.meta.tmp-12-3",
        ] {
            assert!(is_wsync_temp(n.as_bytes()), "{n}");
        }
        for n in ["queue.json", ".tmp", "a.tmp", ".x.tmp.y", "notes.tmp-1-2"] {
            assert!(!is_wsync_temp(n.as_bytes()), "{n}");
        }
    }
}
