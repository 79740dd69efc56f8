//! Repeated captures of one workspace through a [`LiveScan`], driven over
//! stdin: each input line triggers one capture, answered on stdout with
//! `MICROSECONDS SCAN SNAPSHOT_ID` (SCAN is `full` or `incremental`).
//! `cargo xtask bench snapshot` uses it to time live captures in a
//! release build.
//!
//! ```text
//! cargo run --release -p wsync-snapshot --example live_capture -- WORKSPACE STATE_DIR
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::time::Instant;

use wsync_snapshot::{CaptureOptions, LiveOptions, SnapshotStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(work), Some(state)) = (args.next(), args.next()) else {
        eprintln!("usage: live_capture WORKSPACE STATE_DIR");
        std::process::exit(2);
    };
    let store = SnapshotStore::open(&PathBuf::from(work), &PathBuf::from(state))?;
    // The attribute files libgit2 reads outside the repository, found as
    // the `wsync` daemon finds them.
    let mut live = store.live(&LiveOptions {
        attribute_files: LiveOptions::attribute_files_from(
            std::env::var_os("XDG_CONFIG_HOME").as_deref(),
            std::env::var_os("HOME").as_deref(),
        ),
        ..LiveOptions::default()
    })?;
    let opts = CaptureOptions {
        reason: "live bench".into(),
        ..CaptureOptions::default()
    };
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        line?;
        let before = live.stats().incremental_scans;
        let t = Instant::now();
        let snap = live.capture(&opts)?;
        let micros = t.elapsed().as_micros();
        let scan = if live.stats().incremental_scans > before {
            "incremental"
        } else {
            "full"
        };
        let mut out = stdout.lock();
        writeln!(out, "{micros} {scan} {}", snap.id)?;
        out.flush()?;
    }
    Ok(())
}
