//! `cargo xtask chaos`: crash injection against the release binary.
//!
//! The trial logic lives in `wsync_tests::chaos` (the `tests` package's
//! library) so that `tests/tests/chaos.rs` runs the very same code at CI
//! size; this module only parses arguments, builds the release binary,
//! prints progress and the table, and writes `target/chaos/results.json`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use wsync_tests::chaos::{ChaosOptions, Scenario, ScenarioReport, markdown_table, run_scenario};

/// `cargo xtask chaos` arguments.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Trials per scenario.
    #[arg(long, default_value_t = 100)]
    trials: usize,
    /// sync, rollback, remote, daemon or all.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Seed of the kill times and workloads (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Workload scale divisor (1 = the largest trees; default 4).
    #[arg(long, default_value_t = 4)]
    scale: usize,
    /// Skip `cargo build --release -p wsync-cli` (use the binary as is).
    #[arg(long)]
    no_build: bool,
    /// Test this binary instead of `target/release/wsync` (implies
    /// `--no-build`; e.g. a copy that concurrent builds cannot replace).
    #[arg(long, value_name = "PATH")]
    bin: Option<std::path::PathBuf>,
}

/// Runs the campaign; fails when a goal is missed.
pub fn run(root: &Path, args: &ChaosArgs) -> Result<()> {
    let scenarios: Vec<Scenario> = if args.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        args.scenario
            .split(',')
            .map(|s| s.trim().parse::<Scenario>().map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?
    };
    if !args.no_build && args.bin.is_none() {
        crate::cargo(root, &["build", "--release", "-p", "wsync-cli"], &[])?;
    }
    let bin = args
        .bin
        .clone()
        .unwrap_or_else(|| root.join("target/release/wsync"));
    if !bin.exists() {
        bail!("{} is missing", bin.display());
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    eprintln!(
        "chaos: seed {seed}, {} trials per scenario, scale 1/{}",
        args.trials, args.scale
    );
    let opts = ChaosOptions {
        bin,
        trials: args.trials,
        seed,
        scale: args.scale,
        ..ChaosOptions::default()
    };
    let t0 = Instant::now();
    let mut reports: Vec<ScenarioReport> = Vec::new();
    for sc in scenarios {
        eprintln!("chaos: {} — timing un-killed runs", sc.command());
        let report = run_scenario(&opts, sc, &mut |t| {
            let verdict = if t.ok() { "ok" } else { "FAIL" };
            eprintln!(
                "  {} #{:<3} {:<6} kill at {:>5} ms ({:>3.0}%) phase {:<34} {verdict}",
                sc.as_str(),
                t.index,
                t.variant,
                t.kill_at_ms,
                t.kill_fraction * 100.0,
                t.phase,
            );
            if !t.ok() {
                eprintln!("      {}", serde_json::to_string(t).unwrap_or_default());
            }
        })
        .with_context(|| format!("scenario {}", sc.as_str()))?;
        reports.push(report);
    }
    let table = markdown_table(&reports);
    println!("{table}");
    println!(
        "seed {seed}; {:.0} s; reproduce: cargo xtask chaos --trials {} --scenario {} --seed {seed} --scale {}",
        t0.elapsed().as_secs_f64(),
        args.trials,
        args.scenario,
        args.scale
    );
    let dir = root.join("target/chaos");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = dir.join("results.json");
    let json = serde_json::json!({
        "seed": seed,
        "trials_per_scenario": args.trials,
        "scale": args.scale,
        "elapsed_secs": t0.elapsed().as_secs_f64(),
        "scenarios": reports,
    });
    std::fs::write(&out, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.scenario.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("chaos: goals missed in {}", failed.join(", "));
    }
    Ok(())
}
