//! Crash injection at CI size: a few trials of each scenario of
//! `cargo xtask chaos` (the same harness, `wsync_tests::chaos`), each a
//! real SIGKILL of the real binary's process group at a random instant,
//! then the same command again and the checks (no byte lost, nothing
//! stuck, `git fsck --full` clean, no temp file at a final path, state
//! readable).
#![allow(clippy::unwrap_used)]

use wsync_tests::chaos::{ChaosOptions, Scenario, markdown_table, run_scenario};
use wsync_testutils::wsync_bin;

fn campaign(scenario: Scenario, trials: usize) {
    let opts = ChaosOptions {
        bin: wsync_bin(),
        trials,
        seed: 0x5eed ^ trials as u64,
        baseline_runs: 1,
        scale: 12,
        ssh: true,
    };
    let report = run_scenario(&opts, scenario, &mut |_| {}).unwrap();
    let table = markdown_table(std::slice::from_ref(&report));
    let failures: Vec<String> = report
        .details
        .iter()
        .filter(|t| !t.ok())
        .map(|t| serde_json::to_string_pretty(t).unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{table}\nfailed trials:\n{}",
        failures.join("\n")
    );
    assert_eq!(report.trials, trials);
    assert_eq!(report.recoveries, trials, "{table}");
    assert!(report.details.iter().all(|t| t.manifest_files > 0), "{table}");
}

#[test]
fn sigkilled_sync_recovers_without_loss() {
    campaign(Scenario::Sync, 4);
}

#[test]
fn sigkilled_rollback_recovers_without_loss() {
    campaign(Scenario::Rollback, 4);
}

#[test]
fn sigkilled_remote_sync_recovers_without_loss() {
    campaign(Scenario::Remote, 4);
}

#[test]
fn sigkilled_daemon_recovers_without_loss() {
    campaign(Scenario::Daemon, 4);
}
