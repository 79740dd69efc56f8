//! `cargo xtask bench filter`: accuracy of the user-vs-system filter on a
//! labelled corpus, and latency per layer.
//!
//! The corpus is a real git repository with a committed base tree. A
//! simulated autonomous writer and a simulated user produce changes on one
//! virtual timeline (the agent ticks every 1–30 s, the user edits every
//! 2–60 s); each change is applied to the real file (mtime set to its
//! virtual time), classified by the real `Filter` exactly as the watcher
//! would (stat, `/proc` scan, HEAD blob), then undone. Guarded agent writes
//! append their window to `<state>/writers.jsonl` in wsync-lock's format. A
//! few agent writes are made while a real process whose command line
//! matches a system pattern holds the file open.
//!
//! Ground truth: every agent change is "system" (must be blocked) except
//! one category, agent writes that change real content with no guard and no
//! open file: no filter can tell those from a user's edit, and the product
//! must keep them (synced) rather than risk dropping user work. They are
//! reported separately and are not counted as false negatives. Editor
//! backup/swap files count as system (never synced).
//!
//! The "peer" column is the old system's (seed 002) *claimed* figures,
//! never measured: FP < 1 %, FN < 0.1 %, 0.1 / 5 / 20 ms per layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use wsync_filter::{Change, ChangeKind, Filter, FilterConfig, Verdict};

use super::{BenchCtx, Row};

const PEER: &str = "seed 002, claimed";

/// A tiny deterministic PRNG (xorshift64*), so corpora are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Truth {
    /// Must be blocked.
    System,
    /// Must be synced.
    User,
    /// An agent write nothing can attribute: must be synced by design.
    Unattributable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cat {
    SysStatusRewrite,
    SysAutosave,
    SysTimestampJson,
    SysTimestampText,
    SysLogAppend,
    SysGuardedState,
    SysGuardedContext,
    SysIdenticalRewrite,
    SysEditorBackup,
    SysOpenFile,
    SysUnguardedReal,
    UsrCode,
    UsrDocs,
    UsrScript,
    UsrConfigJson,
    UsrContextJson,
    UsrContextText,
    UsrNotesDate,
    UsrDecision,
    UsrNewFile,
    UsrDelete,
}

impl Cat {
    fn truth(self) -> Truth {
        use Cat::*;
        match self {
            SysUnguardedReal => Truth::Unattributable,
            SysStatusRewrite | SysAutosave | SysTimestampJson | SysTimestampText | SysLogAppend
            | SysGuardedState | SysGuardedContext | SysIdenticalRewrite | SysEditorBackup
            | SysOpenFile => Truth::System,
            _ => Truth::User,
        }
    }
}

/// Weighted categories of each simulated actor.
const AGENT: &[(Cat, u64)] = &[
    (Cat::SysStatusRewrite, 20),
    (Cat::SysAutosave, 10),
    (Cat::SysTimestampJson, 15),
    (Cat::SysTimestampText, 10),
    (Cat::SysLogAppend, 10),
    (Cat::SysGuardedState, 10),
    (Cat::SysGuardedContext, 5),
    (Cat::SysIdenticalRewrite, 5),
    (Cat::SysEditorBackup, 5),
    (Cat::SysUnguardedReal, 3),
];
const USER: &[(Cat, u64)] = &[
    (Cat::UsrCode, 25),
    (Cat::UsrDocs, 10),
    (Cat::UsrScript, 5),
    (Cat::UsrConfigJson, 10),
    (Cat::UsrContextJson, 10),
    (Cat::UsrContextText, 5),
    (Cat::UsrNotesDate, 3),
    (Cat::UsrDecision, 5),
    (Cat::UsrNewFile, 5),
    (Cat::UsrDelete, 3),
];

fn pick(rng: &mut Rng, table: &[(Cat, u64)]) -> Cat {
    let total: u64 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(total);
    for (c, w) in table {
        if x < *w {
            return *c;
        }
        x -= w;
    }
    table.first().map_or(Cat::UsrCode, |(c, _)| *c)
}

fn iso(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

const N_CTX: u64 = 20;
const N_NOTES: u64 = 10;
const N_SRC: u64 = 30;
const N_SMALL: u64 = 10;

fn context_json(i: u64, goal: &str, t: SystemTime, session: u64) -> String {
    let v = serde_json::json!({
        "project": format!("project-{i}"),
        "goal": goal,
        "tasks": [
            {"id": 1, "title": "design", "done": true, "updated_at": iso(t)},
            {"id": 2, "title": "build", "done": false, "updated_at": iso(t)},
        ],
        "timestamp": iso(t),
        "last_update": epoch(t),
        "session_id": format!("sess-{session:08x}"),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

fn notes_md(i: u64, t: SystemTime, body: &str, due: &str) -> String {
    format!(
        "# Notes {i}\n\nLast updated: {}\nGenerated at {}\n\nDue: {due}\n\n{body}\n",
        iso(t),
        epoch(t)
    )
}

fn config_json(i: u64, port: u64, t: SystemTime) -> String {
    let v = serde_json::json!({
        "name": format!("app{i}"),
        "port": port,
        "features": {"cache": true, "deadline": "2026-03-01T12:00:00Z"},
        "updated_at": iso(t),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

fn state_json(i: u64, n: u64, t: SystemTime) -> String {
    let v = serde_json::json!({"agent": i, "queue_len": n, "last": format!("job-{n}"), "timestamp": iso(t)});
    serde_json::to_string(&v).unwrap_or_default() + "\n"
}

fn status_json(n: u64, t: SystemTime) -> String {
    let v = serde_json::json!({
        "services": {"watcher": "up", "indexer": if n.is_multiple_of(7) { "restarting" } else { "up" }},
        "checks": n, "timestamp": iso(t), "uptime_s": n * 30,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@wsync.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@wsync.invalid")
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The committed base tree: relative path → content.
fn base_tree(t0: SystemTime) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(
        ".claude/autonomous/service-status.json".into(),
        status_json(0, t0),
    );
    m.insert(
        ".claude/memory/enhanced-context.json".into(),
        format!("{{\"summary\":\"start\",\"timestamp\":\"{}\"}}\n", iso(t0)),
    );
    for i in 0..N_CTX {
        m.insert(
            format!(".claude/contexts/project-{i}.json"),
            context_json(i, "ship v1", t0, i),
        );
    }
    for i in 0..N_NOTES {
        m.insert(
            format!(".claude/contexts/notes-{i}.md"),
            notes_md(i, t0, "- first idea\n- second idea", "2026-02-01"),
        );
    }
    for i in 0..5 {
        m.insert(
            format!(".claude/decisions/log-{i}.md"),
            "# Decisions\n\n- use git\n".into(),
        );
    }
    for i in 0..N_SRC {
        m.insert(
            format!("src/mod{i}.rs"),
            format!("//! Module {i}.\n\npub fn f{i}() -> u32 {{\n    {i}\n}}\n"),
        );
    }
    for i in 0..N_SMALL {
        m.insert(
            format!("docs/guide{i}.md"),
            format!("# Guide {i}\n\nText.\n"),
        );
        m.insert(format!("scripts/s{i}.sh"), "#!/bin/sh\necho hi\n".into());
        m.insert(format!("config/app{i}.json"), config_json(i, 8000 + i, t0));
        m.insert(format!("state/agent-{i}.json"), state_json(i, 0, t0));
    }
    m.insert("logs/agent.log".into(), "boot\n".into());
    m.insert(".claude/intelligence/insights.log".into(), "boot\n".into());
    m
}

/// One change to make: files to write (path, content) or delete, and how.
struct Plan {
    path: String,
    content: Option<String>,
    guarded: bool,
    hold_open: bool,
}

fn plan(cat: Cat, rng: &mut Rng, t: SystemTime, n: u64, base: &BTreeMap<String, String>) -> Plan {
    let w = |path: String, content: String| Plan {
        path,
        content: Some(content),
        guarded: false,
        hold_open: false,
    };
    let ctx = rng.below(N_CTX);
    let note = rng.below(N_NOTES);
    let src = rng.below(N_SRC);
    let small = rng.below(N_SMALL);
    match cat {
        Cat::SysStatusRewrite => w(
            ".claude/autonomous/service-status.json".into(),
            status_json(n, t),
        ),
        Cat::SysAutosave => w(
            ".claude/memory/enhanced-context.json".into(),
            format!(
                "{{\"summary\":\"tick {n}\",\"timestamp\":\"{}\"}}\n",
                iso(t)
            ),
        ),
        Cat::SysTimestampJson => w(
            format!(".claude/contexts/project-{ctx}.json"),
            context_json(ctx, "ship v1", t, n),
        ),
        Cat::SysTimestampText => w(
            format!(".claude/contexts/notes-{note}.md"),
            notes_md(note, t, "- first idea\n- second idea", "2026-02-01"),
        ),
        Cat::SysLogAppend => {
            let path = if n.is_multiple_of(2) {
                "logs/agent.log"
            } else {
                ".claude/intelligence/insights.log"
            };
            w(path.into(), format!("boot\n{} tick {n}\n", iso(t)))
        }
        Cat::SysGuardedState => Plan {
            guarded: true,
            ..w(format!("state/agent-{small}.json"), state_json(small, n, t))
        },
        Cat::SysGuardedContext => Plan {
            guarded: true,
            ..w(
                format!(".claude/contexts/project-{ctx}.json"),
                context_json(ctx, &format!("agent plan {n}"), t, n),
            )
        },
        Cat::SysIdenticalRewrite => {
            let path = format!(".claude/contexts/project-{ctx}.json");
            let same = base.get(&path).cloned().unwrap_or_default();
            w(path, same)
        }
        Cat::SysEditorBackup => {
            let path = match n % 4 {
                0 => format!("src/mod{src}.rs~"),
                1 => format!("src/.#mod{src}.rs"),
                2 => format!("config/app{small}.json.bak"),
                _ => format!("src/.mod{src}.rs.swp"),
            };
            w(path, "backup\n".into())
        }
        Cat::SysOpenFile => Plan {
            hold_open: true,
            ..w(
                format!(".claude/contexts/project-{ctx}.json"),
                context_json(ctx, &format!("agent rewrite {n}"), t, n),
            )
        },
        Cat::SysUnguardedReal => {
            let i = rng.below(5);
            w(
                format!(".claude/decisions/log-{i}.md"),
                format!("# Decisions\n\n- use git\n- agent decided {n}\n"),
            )
        }
        Cat::UsrCode => {
            let path = format!("src/mod{src}.rs");
            let old = base.get(&path).cloned().unwrap_or_default();
            w(path, format!("{old}\npub fn g{n}() {{}}\n"))
        }
        Cat::UsrDocs => w(
            format!("docs/guide{small}.md"),
            format!("# Guide {small}\n\nText, revised {n}.\n"),
        ),
        Cat::UsrScript => w(
            format!("scripts/s{small}.sh"),
            format!("#!/bin/sh\necho hi {n}\n"),
        ),
        Cat::UsrConfigJson => {
            // The user edits a value; the app's own updated_at stays.
            let path = format!("config/app{small}.json");
            let old = base.get(&path).cloned().unwrap_or_default();
            let new = if n.is_multiple_of(2) {
                old.replace(
                    &format!("\"port\": {}", 8000 + small),
                    &format!("\"port\": {}", 9000 + n % 1000),
                )
            } else {
                old.replace("2026-03-01T12:00:00Z", "2026-04-15T09:30:00Z")
            };
            w(path, new)
        }
        Cat::UsrContextJson => {
            let path = format!(".claude/contexts/project-{ctx}.json");
            let old = base.get(&path).cloned().unwrap_or_default();
            w(
                path,
                old.replace("\"ship v1\"", &format!("\"ship v2 by week {}\"", n % 52)),
            )
        }
        Cat::UsrContextText => {
            let path = format!(".claude/contexts/notes-{note}.md");
            let old = base.get(&path).cloned().unwrap_or_default();
            w(
                path,
                old.replace("- second idea", &format!("- second idea, refined ({n})")),
            )
        }
        Cat::UsrNotesDate => {
            let path = format!(".claude/contexts/notes-{note}.md");
            let old = base.get(&path).cloned().unwrap_or_default();
            w(path, old.replace("Due: 2026-02-01", "Due: 2026-03-15"))
        }
        Cat::UsrDecision => {
            let i = rng.below(5);
            w(
                format!(".claude/decisions/log-{i}.md"),
                format!("# Decisions\n\n- use git\n- we chose option {n}\n"),
            )
        }
        Cat::UsrNewFile => w(format!("src/new{n}.rs"), format!("pub fn n{n}() {{}}\n")),
        Cat::UsrDelete => Plan {
            path: format!("src/mod{src}.rs"),
            content: None,
            guarded: false,
            hold_open: false,
        },
    }
}

struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hold_open(file: &Path) -> Result<Holder> {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3>>'{}'; sleep 60; :", file.display()))
        .arg("claude-autonomous-bench")
        .spawn()
        .context("cannot spawn the holder process")?;
    let holder = Holder(child);
    let targets = [file.to_path_buf()].into_iter().collect();
    for _ in 0..500 {
        if !wsync_filter::process::scan_open_files(Path::new("/proc"), &targets)
            .holders
            .is_empty()
        {
            return Ok(holder);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the holder process never opened {}", file.display())
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    n: u64,
    blocked: u64,
}

struct Accuracy {
    per_cat: BTreeMap<Cat, Tally>,
}

fn write_file(abs: &Path, content: &str, mtime: SystemTime) -> Result<()> {
    if let Some(dir) = abs.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(abs, content).with_context(|| format!("cannot write {}", abs.display()))?;
    let f = std::fs::File::options().write(true).open(abs)?;
    f.set_modified(mtime)?;
    Ok(())
}

fn accuracy(ctx: &BenchCtx) -> Result<Accuracy> {
    let tmp = tempfile::tempdir()?;
    let ws = std::fs::canonicalize(tmp.path())?;
    let state = ws.join(".wsync");
    std::fs::create_dir_all(&state)?;
    let now = SystemTime::now();
    let t0 = now - Duration::from_secs(3 * 24 * 3600);
    let base = base_tree(t0);
    for (p, c) in &base {
        write_file(&ws.join(p), c, t0)?;
    }
    std::fs::write(ws.join(".gitignore"), "/.wsync/\n")?;
    git(&ws, &["init", "-q", "-b", "main"])?;
    git(&ws, &["add", "-A"])?;
    git(&ws, &["commit", "-q", "-m", "base"])?;
    let filter = Filter::new(&ws, &state, &FilterConfig::default())?;

    let events: u64 = if ctx.quick { 600 } else { 3000 };
    let open_file_events: u64 = if ctx.quick { 3 } else { 10 };
    let mut rng = Rng(0x5eed_f11e_2026);
    // Two independent actors on one virtual timeline.
    let mut t_agent = t0 + Duration::from_secs(60);
    let mut t_user = t0 + Duration::from_secs(60);
    let mut per_cat: BTreeMap<Cat, Tally> = BTreeMap::new();
    let writers = state.join("writers.jsonl");
    let mut open_done = 0;
    for n in 0..events {
        let agent_turn = t_agent <= t_user;
        let (cat, t) = if agent_turn {
            let c = if open_done < open_file_events
                && n >= open_done * (events / open_file_events).max(1)
            {
                open_done += 1;
                Cat::SysOpenFile
            } else {
                pick(&mut rng, AGENT)
            };
            let t = t_agent;
            t_agent += rng.range_ms(1000, 30_000);
            (c, t)
        } else {
            let t = t_user;
            t_user += rng.range_ms(2000, 60_000);
            (pick(&mut rng, USER), t)
        };
        let p = plan(cat, &mut rng, t, n, &base);
        let abs = ws.join(&p.path);
        let _holder = if p.hold_open {
            Some(hold_open(&abs)?)
        } else {
            None
        };
        let change = match &p.content {
            Some(c) => {
                if p.guarded {
                    let start = t - rng.range_ms(5, 50);
                    let end = t + rng.range_ms(5, 150);
                    let line = serde_json::json!({"name": "agent", "pid": 4242, "start": iso(start), "end": iso(end)});
                    let mut text = std::fs::read_to_string(&writers).unwrap_or_default();
                    text.push_str(&format!("{line}\n"));
                    std::fs::write(&writers, text)?;
                }
                let existed = abs.exists();
                write_file(&abs, c, t)?;
                Change {
                    path: PathBuf::from(&p.path),
                    kind: if existed {
                        ChangeKind::Modified
                    } else {
                        ChangeKind::Created
                    },
                    mtime: None,
                }
            }
            None => {
                std::fs::remove_file(&abs).ok();
                Change {
                    path: PathBuf::from(&p.path),
                    kind: ChangeKind::Deleted,
                    mtime: Some(t),
                }
            }
        };
        let d = filter.classify(&change);
        let wrong = match cat.truth() {
            Truth::System => d.verdict != Verdict::Block,
            Truth::User | Truth::Unattributable => d.verdict != Verdict::Sync,
        };
        if wrong {
            eprintln!(
                "misclassified {cat:?} {}: {:?} by {} [{}] {}",
                p.path,
                d.verdict,
                d.layer,
                d.rule.as_deref().unwrap_or("-"),
                d.reason
            );
        }
        let tally = per_cat.entry(cat).or_default();
        tally.n += 1;
        if d.verdict == Verdict::Block {
            tally.blocked += 1;
        }
        // Undo, so the next change starts from the committed base.
        match base.get(&p.path) {
            Some(c) => write_file(&abs, c, t0)?,
            None => {
                std::fs::remove_file(&abs).ok();
            }
        }
    }
    Ok(Accuracy { per_cat })
}

/// Latency rows, measured by the `latency` example of wsync-filter built
/// with the release profile (`cargo xtask` itself is a debug build, which
/// would measure unoptimised filter code).
fn latency(ctx: &BenchCtx) -> Result<Vec<Row>> {
    let mut args = vec![
        "run",
        "--release",
        "--locked",
        "--quiet",
        "-p",
        "wsync-filter",
        "--example",
        "latency",
        "--",
    ];
    if ctx.quick {
        args.push("--quick");
    }
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&args)
        .current_dir(&ctx.root)
        .output()
        .context("cannot run the latency example")?;
    if !out.status.success() {
        bail!(
            "the latency example failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the latency example printed no JSON")?;
    let num = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let procs = num("procs");
    let kb = num("json_kb");
    Ok(vec![
        Row::versus(
            "layer 1 rules, per path (p50)",
            num("l1_us"),
            PEER,
            100.0,
            "µs",
        )
        .goal("≤ 2 µs"),
        Row::versus(
            format!("layer 2 process, per path (p50; /proc of {procs} processes, 100 windows)"),
            num("l2_p50_us"),
            PEER,
            5000.0,
            "µs",
        )
        .goal("≤ 1000 µs"),
        Row::solo("layer 2 process, per path (p95)", num("l2_p95_us"), "µs"),
        Row::versus(
            format!("layer 3 content, {kb:.0} KB JSON, volatile-only (p50)"),
            num("l3_volatile_us"),
            PEER,
            20_000.0,
            "µs",
        )
        .goal("≤ 100 µs"),
        Row::versus(
            format!("layer 3 content, {kb:.0} KB JSON, real change (p50)"),
            num("l3_real_us"),
            PEER,
            20_000.0,
            "µs",
        )
        .goal("≤ 100 µs"),
        Row::solo(
            "all layers, one ANALYZE path, 10 KB JSON (p50)",
            num("all_us"),
            "µs",
        ),
    ])
}

/// Runs the corpus and the latency measurements.
pub fn run(ctx: &BenchCtx) -> Result<Vec<Row>> {
    let acc = accuracy(ctx)?;
    let mut sys = Tally::default();
    let mut usr = Tally::default();
    let mut unattr = Tally::default();
    eprintln!("category                  truth           n  blocked");
    for (cat, t) in &acc.per_cat {
        let truth = cat.truth();
        eprintln!(
            "{:<25} {:<14} {:>4} {:>8}",
            format!("{cat:?}"),
            format!("{truth:?}"),
            t.n,
            t.blocked
        );
        let acc_t = match truth {
            Truth::System => &mut sys,
            Truth::User => &mut usr,
            Truth::Unattributable => &mut unattr,
        };
        acc_t.n += t.n;
        acc_t.blocked += t.blocked;
    }
    let fn_count = sys.n - sys.blocked;
    let fp_count = usr.blocked;
    let pct = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    let mut rows = vec![
        Row::solo(
            "corpus: system changes (must block)",
            sys.n as f64,
            "changes",
        ),
        Row::solo("corpus: user changes (must sync)", usr.n as f64, "changes"),
        Row::versus(
            format!("false negatives: system changes synced ({fn_count})"),
            pct(fn_count, sys.n),
            PEER,
            0.1,
            "%",
        )
        .goal("0"),
        Row::versus(
            format!("false positives: user changes blocked ({fp_count})"),
            pct(fp_count, usr.n),
            PEER,
            1.0,
            "%",
        )
        .goal("≤ 0.5 %"),
        Row::solo(
            format!(
                "unattributable agent writes synced by design ({} of {})",
                unattr.n - unattr.blocked,
                unattr.n
            ),
            pct(unattr.n - unattr.blocked, unattr.n),
            "%",
        ),
    ];
    rows.extend(latency(ctx)?);
    Ok(rows)
}
