//! Per-layer latency of the filter, printed as one JSON object.
//!
//! `cargo run --release -p wsync-filter --example latency [-- --quick]`;
//! `cargo xtask bench filter` runs it and turns the figures into rows.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use wsync_filter::{Change, Filter, FilterConfig};

fn iso(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()
}

/// p50 and p95 of `n` timed runs of `f` (after one warm-up).
fn time(n: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((v.len().saturating_sub(1)) as f64 * q).round() as usize;
        v.get(i).copied().unwrap_or_default()
    };
    (at(0.5), at(0.95))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let iters = if quick { 50 } else { 500 };
    let tmp = tempfile::tempdir()?;
    let ws = std::fs::canonicalize(tmp.path())?;
    let state = ws.join(".wsync");
    std::fs::create_dir_all(&state)?;

    // Paths like a workspace's: every rule kind, and unmatched ones.
    let mut paths: Vec<PathBuf> = Vec::new();
    for i in 0..20 {
        paths.push(format!(".claude/contexts/project-{i}.json").into());
        paths.push(format!("src/deep/module/mod{i}.rs").into());
        paths.push(format!("docs/guide{i}.md").into());
        paths.push(format!("scripts/s{i}.sh").into());
        paths.push(format!("logs/agent-{i}.log").into());
        paths.push(format!("state/agent-{i}-status.json").into());
    }
    for p in &paths {
        let abs = ws.join(p);
        if let Some(d) = abs.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&abs, "{}\n")?;
    }
    // 100 finished writer windows, as a busy agent leaves them.
    let t0 = SystemTime::now() - Duration::from_secs(3600);
    let mut text = String::new();
    for i in 0..100u64 {
        let s = t0 - Duration::from_secs(1000 - i * 5);
        let e = s + Duration::from_millis(80);
        text.push_str(&format!(
            "{{\"name\":\"agent\",\"pid\":4242,\"start\":\"{}\",\"end\":\"{}\"}}\n",
            iso(s),
            iso(e)
        ));
    }
    std::fs::write(state.join("writers.jsonl"), text)?;
    let filter = Filter::new(&ws, &state, &FilterConfig::default())?;

    let (l1, _) = time(iters, || {
        for p in &paths {
            std::hint::black_box(filter.rules(p));
        }
    });
    let l1_us = us(l1) / paths.len() as f64;

    let change = Change::modified(".claude/contexts/project-3.json");
    let (l2p50, l2p95) = time(iters, || {
        std::hint::black_box(filter.process_layer(&change));
    });
    let procs = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0);

    let doc = |t: &str, v: u64| {
        let items: Vec<serde_json::Value> = (0..60)
            .map(|i| {
                serde_json::json!({"id": i, "name": format!("item-{i}"), "value": v + i,
                    "tags": ["a", "b"], "last_update": t})
            })
            .collect();
        serde_json::to_vec_pretty(&serde_json::json!({"items": items, "timestamp": t}))
            .unwrap_or_default()
    };
    let old = doc("2026-01-01T00:00:00Z", 1);
    let vol = doc("2026-01-02T00:00:00Z", 1);
    let real = doc("2026-01-01T00:00:00Z", 2);
    let analyzer = filter.content_analyzer();
    let (l3v, _) = time(iters * 4, || {
        std::hint::black_box(analyzer.compare("a.json", Some(&old), &vol));
    });
    let (l3r, _) = time(iters * 4, || {
        std::hint::black_box(analyzer.compare("a.json", Some(&old), &real));
    });

    let prev = Arc::new(old.clone());
    std::fs::write(ws.join("big.json"), &vol)?;
    let f2 = Filter::new(&ws, &state, &FilterConfig::default())?
        .with_previous_content(Arc::new(move |_: &Path| Some(prev.as_ref().clone())));
    let big = Change::modified("big.json");
    let (all, _) = time(iters, || {
        std::hint::black_box(f2.classify(&big));
    });

    let out = serde_json::json!({
        "l1_us": l1_us,
        "l2_p50_us": us(l2p50),
        "l2_p95_us": us(l2p95),
        "procs": procs,
        "json_kb": old.len() as f64 / 1024.0,
        "l3_volatile_us": us(l3v),
        "l3_real_us": us(l3r),
        "all_us": us(all),
    });
    println!("{out}");
    Ok(())
}
