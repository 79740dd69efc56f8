//! An autonomous host embedding wsync: it rewrites its status file every
//! second under a [`WriterGuard`](wsync_lock::WriterGuard) (so a sync never
//! sees a half-written file and the filter knows the write is the
//! system's), and asks for a sync when it has produced something a person
//! should see on their other machines.
//!
//! ```sh
//! cargo run -p wsync-coordinator --example autonomous_host -- /path/to/workspace 10
//! ```
//!
//! Start `wsync daemon start` (or `wsync watch`) in the workspace to serve
//! the requests; the status file is never committed.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use wsync_coordinator::queue::{Priority, request_sync};
use wsync_lock::{PauseGate, WriterOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let workspace = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let rounds: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    let state_dir = workspace.join(".wsync");
    std::fs::create_dir_all(&state_dir)?;
    let gate = PauseGate::new(&state_dir);
    let status = workspace.join(".claude/autonomous/service-status.json");
    std::fs::create_dir_all(status.parent().unwrap_or(&workspace))?;
    for round in 1..=rounds {
        // Waits while a sync holds the pause; records the write window.
        let guard = gate.writer(&WriterOptions {
            name: "autonomous-host".into(),
            ..WriterOptions::default()
        })?;
        if guard.pause_exceeded() {
            println!("a sync paused us for too long; writing anyway (logged)");
        }
        let body = format!(
            "{{\"service\": \"ok\", \"round\": {round}, \"timestamp\": \"{}\"}}\n",
            chrono::Utc::now().to_rfc3339()
        );
        let tmp = status.with_extension("json.tmp");
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &status)?;
        guard.finish()?;
        if round == rounds {
            // A result meant for the user's other machines. A write by a
            // registered writer counts as a system write (the filter's
            // process layer), so results go where the rules ALLOW them.
            std::fs::create_dir_all(workspace.join("docs"))?;
            std::fs::write(
                workspace.join("docs/report.md"),
                format!("# Report\n\n{rounds} rounds done.\n"),
            )?;
            let ticket = request_sync(
                &state_dir,
                "manual",
                "autonomous-host",
                Priority::High,
                "report ready",
            )?;
            println!("sync requested: {} (merged: {})", ticket.id, ticket.merged);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}
