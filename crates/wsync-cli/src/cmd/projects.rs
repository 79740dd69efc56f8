//! `wsync projects discover|list|set|launch`: the project launcher.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use wsync_session::{DiscoverOptions, Registry};

use crate::ctx::Ctx;
use crate::exit;

/// `wsync projects`.
#[derive(Debug, Args)]
pub struct ProjectsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ProjectsAction,
}

/// The project actions.
#[derive(Debug, Subcommand)]
pub enum ProjectsAction {
    /// Find Rust, Node, Python and Go projects under ROOTs (default: the
    /// workspace) and register them; user-set commands are kept.
    Discover {
        /// Folders to search.
        #[arg(value_name = "ROOT")]
        roots: Vec<PathBuf>,
        /// How deep to descend below each root.
        #[arg(long, value_name = "N")]
        max_depth: Option<usize>,
    },
    /// List the registered projects.
    List,
    /// Set a project's launch command.
    Set {
        /// The project.
        name: String,
        /// The command (run with `sh -c` in the project folder).
        #[arg(long, value_name = "CMD")]
        command: String,
    },
    /// Run a project's command in its folder, in the foreground; exits with
    /// the command's code.
    Launch {
        /// The project.
        name: String,
    },
}

/// Runs `wsync projects`.
pub fn run(ctx: &Ctx, args: &ProjectsArgs) -> Result<u8> {
    let mut registry = Registry::open(&ctx.state_dir)?;
    match &args.action {
        ProjectsAction::Discover { roots, max_depth } => {
            let roots = if roots.is_empty() {
                vec![ctx.workspace.clone()]
            } else {
                roots.clone()
            };
            let options = DiscoverOptions {
                max_depth: *max_depth,
            };
            let report = wsync_session::discover(&roots, &options)?;
            for warning in &report.warnings {
                ctx.warn(warning);
            }
            let merge = registry.merge(&roots, &report.found, chrono::Utc::now())?;
            ctx.emit(&merge, || {
                let mut text = String::new();
                for (label, names) in [
                    ("added", &merge.added),
                    ("updated", &merge.updated),
                    ("kept user command", &merge.kept),
                    ("removed", &merge.removed),
                ] {
                    if !names.is_empty() {
                        let _ = writeln!(text, "{label}: {}", names.join(", "));
                    }
                }
                let _ = writeln!(
                    text,
                    "{} projects registered in {}",
                    registry.projects().len(),
                    registry.path().display()
                );
                text
            })?;
            Ok(exit::SUCCESS)
        }
        ProjectsAction::List => {
            ctx.emit(&registry.projects(), || {
                let mut text = String::new();
                let width = registry
                    .projects()
                    .iter()
                    .map(|p| p.name.len())
                    .max()
                    .unwrap_or(0);
                for p in registry.projects() {
                    let _ = writeln!(
                        text,
                        "{:width$}  {:6}  {}  ({})",
                        p.name,
                        p.kind.as_str(),
                        p.command,
                        p.path.display()
                    );
                }
                if text.is_empty() {
                    text.push_str("no projects (run `wsync projects discover`)\n");
                }
                text
            })?;
            Ok(exit::SUCCESS)
        }
        ProjectsAction::Set { name, command } => {
            registry.set_command(name, command)?;
            ctx.say(format!("{name}: {command}"));
            Ok(exit::SUCCESS)
        }
        ProjectsAction::Launch { name } => {
            let project = registry.get(name)?;
            let mut cmd = project.launch_command()?;
            tracing::info!(
                "running `{}` in {}",
                project.command,
                project.path.display()
            );
            let status = cmd.status().with_context(|| {
                format!(
                    "cannot run {} in {}",
                    project.command,
                    project.path.display()
                )
            })?;
            Ok(super::handoff::pass_through(status))
        }
    }
}
