//! `cargo xtask`: project chores.
//!
//! - `cargo xtask ci`: fmt check, clippy `-D warnings` on all targets, the
//!   tests, and `cargo doc` with `-D warnings`.
//! - `cargo xtask bench [NAME...] [--quick]`: benchmarks side by side with the
//!   peer tool; prints a table and writes `target/bench/results.json`.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod chaos;
mod fuzz;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// fmt --check, clippy -D warnings, tests, docs with -D warnings.
    Ci,
    /// Run benchmarks (all when no name is given).
    Bench(bench::BenchArgs),
    /// Crash injection: SIGKILL wsync at random instants, check recovery.
    Chaos(chaos::ChaosArgs),
    /// In-process fuzzers (stable toolchain): `--minutes M`, `--target T`.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = project_root();
    match cli.cmd {
        Cmd::Ci => ci(&root),
        Cmd::Bench(args) => bench::run(&root, &args),
        Cmd::Chaos(args) => chaos::run(&root, &args),
        Cmd::Fuzz(args) => fuzz::run(&root, &args),
    }
}

/// The workspace root.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn ci(root: &Path) -> Result<()> {
    cargo(root, &["fmt", "--all", "--check"], &[])?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(root, &["test", "--workspace", "--locked"], &[])?;
    cargo(
        root,
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    println!("xtask ci: all checks passed");
    Ok(())
}

/// Runs `cargo args` in `root`, failing on a non-zero exit.
pub fn cargo(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed with {status}", args.join(" "));
    }
    Ok(())
}
