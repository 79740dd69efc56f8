//! `wsync completions SHELL`.

use anyhow::Result;
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::Cli;

/// Writes the completion script for `shell` to stdout.
pub fn run(shell: Shell) -> Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "wsync", &mut std::io::stdout());
    Ok(crate::exit::SUCCESS)
}
