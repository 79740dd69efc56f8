//! The benchmark harness: each benchmark measures wsync and its peer tool
//! (rsync, unison, the git CLI, flock) in the same run and reports ratios.
//!
//! Add a benchmark: write `bench/<name>.rs` with
//! `pub fn run(ctx: &BenchCtx) -> anyhow::Result<Vec<Row>>` and list it in
//! [`BENCHES`]. Numbers are never asserted; they are reported.

mod filter;
mod lock;
mod remote;
mod session;
mod snapshot;
mod sync;
mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

/// `cargo xtask bench` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Benchmarks to run (default: all). Known: see `BENCHES`.
    pub names: Vec<String>,
    /// Fewer iterations and smaller data, for a quick look.
    #[arg(long)]
    pub quick: bool,
}

/// What a benchmark gets.
#[derive(Debug)]
pub struct BenchCtx {
    /// The workspace root.
    pub root: PathBuf,
    /// The release-built `wsync` binary.
    pub wsync: PathBuf,
    /// `--quick` was given.
    pub quick: bool,
}

/// One line of the results table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub metric: String,
    /// wsync's figure.
    pub wsync: f64,
    /// The peer tool's figure in the same run, if there is a peer.
    pub peer: Option<f64>,
    /// The peer tool's name.
    pub peer_name: Option<String>,
    /// Unit of both figures (e.g. "µs", "ms", "MB").
    pub unit: String,
    /// wsync / peer.
    pub ratio: Option<f64>,
    /// The goal, as text (e.g. "≤ 100 µs", "≤ 0.8×").
    pub goal: Option<String>,
}

impl Row {
    /// A row with only a wsync figure.
    pub fn solo(metric: impl Into<String>, wsync: f64, unit: &str) -> Self {
        Self {
            metric: metric.into(),
            wsync,
            peer: None,
            peer_name: None,
            unit: unit.into(),
            ratio: None,
            goal: None,
        }
    }

    /// A row comparing wsync with `peer_name`'s figure.
    pub fn versus(
        metric: impl Into<String>,
        wsync: f64,
        peer_name: &str,
        peer: f64,
        unit: &str,
    ) -> Self {
        Self {
            ratio: (peer > 0.0).then(|| wsync / peer),
            peer: Some(peer),
            peer_name: Some(peer_name.into()),
            ..Self::solo(metric, wsync, unit)
        }
    }

    /// Sets the goal text.
    #[must_use]
    pub fn goal(mut self, goal: impl Into<String>) -> Self {
        self.goal = Some(goal.into());
        self
    }
}

type BenchFn = fn(&BenchCtx) -> Result<Vec<Row>>;

/// Every benchmark, by name.
pub const BENCHES: &[(&str, BenchFn)] = &[
    ("filter", filter::run),
    ("lock", lock::run),
    ("session", session::run),
    ("snapshot", snapshot::run),
    ("sync", sync::run),
    ("watch", watch::run),
    ("remote", remote::run),
];

/// Runs the named benchmarks (all when none) and writes the results.
pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    let selected: Vec<(&str, BenchFn)> = if args.names.is_empty() {
        BENCHES.to_vec()
    } else {
        let mut v = Vec::new();
        for name in &args.names {
            let Some(b) = BENCHES.iter().find(|(n, _)| n == name) else {
                let known: Vec<&str> = BENCHES.iter().map(|(n, _)| *n).collect();
                bail!("unknown benchmark {name:?}; known: {}", known.join(", "));
            };
            v.push(*b);
        }
        v
    };
    if selected.is_empty() {
        bail!("no benchmarks are registered yet");
    }
    crate::cargo(
        root,
        &["build", "--release", "--locked", "-p", "wsync-cli"],
        &[],
    )?;
    let ctx = BenchCtx {
        root: root.to_path_buf(),
        wsync: root.join("target/release/wsync"),
        quick: args.quick,
    };
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir).context("cannot create target/bench")?;
    let results_path = out_dir.join("results.json");
    let mut all: BTreeMap<String, serde_json::Value> = std::fs::read(&results_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for (name, f) in selected {
        eprintln!("== bench {name}");
        let rows = f(&ctx).with_context(|| format!("benchmark {name} failed"))?;
        print_table(name, &rows);
        all.insert(
            name.to_owned(),
            serde_json::json!({
                "measured_at": chrono::Utc::now().to_rfc3339(),
                "quick": args.quick,
                "rows": rows,
            }),
        );
        let tmp = out_dir.join("results.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&all)?).context("cannot write results")?;
        std::fs::rename(&tmp, &results_path).context("cannot write results")?;
    }
    println!("results: {}", results_path.display());
    Ok(())
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Prints rows as a Markdown table (pasteable into a closing note).
pub fn print_table(name: &str, rows: &[Row]) {
    println!("\n### bench {name}\n");
    println!("| metric | wsync | peer | ratio | goal |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let peer = match (&r.peer, &r.peer_name) {
            (Some(p), Some(n)) => format!("{} {} ({n})", fmt_num(*p), r.unit),
            _ => "—".into(),
        };
        let ratio = r.ratio.map_or_else(|| "—".into(), |x| format!("{x:.3}×"));
        println!(
            "| {} | {} {} | {} | {} | {} |",
            r.metric,
            fmt_num(r.wsync),
            r.unit,
            peer,
            ratio,
            r.goal.as_deref().unwrap_or("")
        );
    }
}

/// Summary statistics of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
}

/// Computes p50/p95 (zeros for an empty sample).
pub fn stats(samples: &mut [Duration]) -> Stats {
    if samples.is_empty() {
        return Stats {
            p50: Duration::ZERO,
            p95: Duration::ZERO,
        };
    }
    samples.sort_unstable();
    let pick = |q: f64| {
        let idx = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[idx.min(samples.len() - 1)]
    };
    Stats {
        p50: pick(0.5),
        p95: pick(0.95),
    }
}

/// Times `f` `n` times (after one warm-up run).
pub fn time_n(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<Duration>> {
    f()?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    Ok(v)
}

/// Duration in microseconds as f64.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Duration in milliseconds as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
