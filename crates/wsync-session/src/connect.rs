//! `handoff connect HOST`: the commands that carry the record to HOST and
//! open a shell there in the same folder and tmux session.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::handoff::{HANDOFF_FILE, Handoff};
use crate::procs::DevServer;

/// How the handoff record reaches the other host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Two-way sync of the whole tree with `wsync remote sync` (carries the
    /// record with everything else; edits on HOST are never overwritten:
    /// conflicts keep both versions).
    #[default]
    Remote,
    /// Copy only the record file over ssh (`cat > tmp && mv`).
    File,
    /// Do not sync; the tree is already there.
    None,
}

/// What `connect` is told.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `[USER@]HOST` as ssh takes it.
    pub host: String,
    /// The synced root on HOST (default: the same path as here).
    pub remote_root: Option<PathBuf>,
    /// The ssh command line (default `ssh`), split like a shell would.
    pub rsh: Option<String>,
    /// Run this non-interactive command in the folder instead of opening
    /// tmux or a login shell.
    pub command: Option<String>,
    /// How the record is carried.
    pub sync: SyncMode,
    /// The `wsync` program to run `remote sync` with (default `wsync`).
    pub wsync_exe: Option<PathBuf>,
    /// The `wsync` program on HOST (default `wsync` on its `PATH`).
    pub remote_wsync: Option<String>,
}

/// One command of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanStep {
    /// What it is for.
    pub what: String,
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// A file to feed on stdin.
    pub stdin_file: Option<PathBuf>,
}

impl PlanStep {
    /// The step as one shell command line.
    pub fn command_line(&self) -> String {
        let mut words = vec![self.program.clone()];
        words.extend(self.args.iter().cloned());
        let mut line = shell_join(&words);
        if let Some(file) = &self.stdin_file {
            line.push_str(" < ");
            line.push_str(&shell_quote(&file.to_string_lossy()));
        }
        line
    }

    /// A [`Command`] running the step (stdio inherited, except a stdin file
    /// the caller must open and attach: see [`PlanStep::stdin_file`]).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if self.stdin_file.is_none() {
            cmd.stdin(Stdio::inherit());
        }
        cmd
    }
}

/// Everything `connect` will run, in order.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectPlan {
    /// The commands.
    pub steps: Vec<PlanStep>,
    /// The synced root on HOST.
    pub remote_root: PathBuf,
    /// The working folder on HOST.
    pub remote_folder: PathBuf,
    /// The servers to restart over there.
    pub servers: Vec<DevServer>,
}

/// Builds the connect plan for a saved record of the tree at `local_root`.
pub fn connect_plan(
    handoff: &Handoff,
    local_root: &Path,
    options: &ConnectOptions,
) -> Result<ConnectPlan> {
    let rsh_line = options.rsh.clone().unwrap_or_else(|| "ssh".to_owned());
    let rsh = shell_words(&rsh_line)?;
    let Some((ssh_program, ssh_args)) = rsh.split_first() else {
        return Err(Error::BadRsh {
            command: rsh_line,
            why: "empty".into(),
        });
    };
    let remote_root = options
        .remote_root
        .clone()
        .unwrap_or_else(|| handoff.root.clone());
    let remote_folder = remote_root.join(&handoff.folder);
    let host = options.host.clone();
    let ssh = |extra: &[&str], remote_command: String| {
        let mut args = ssh_args.to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(host.clone());
        args.push(remote_command);
        (ssh_program.clone(), args)
    };

    let mut steps = Vec::new();
    match options.sync {
        SyncMode::Remote => {
            let exe = options
                .wsync_exe
                .clone()
                .unwrap_or_else(|| PathBuf::from("wsync"));
            let mut args = vec!["remote".to_owned(), "sync".to_owned()];
            if options.rsh.is_some() {
                args.push("--rsh".to_owned());
                args.push(rsh_line.clone());
            }
            if let Some(remote_wsync) = &options.remote_wsync {
                args.push("--remote-wsync".to_owned());
                args.push(remote_wsync.clone());
            }
            args.push(local_root.to_string_lossy().into_owned());
            args.push(format!("{host}:{}", remote_root.to_string_lossy()));
            steps.push(PlanStep {
                what: "sync the tree (and the handoff record) to the host".into(),
                program: exe.to_string_lossy().into_owned(),
                args,
                stdin_file: None,
            });
        }
        SyncMode::File => {
            let dir = shell_quote(&remote_root.to_string_lossy());
            let file = shell_quote(&remote_root.join(HANDOFF_FILE).to_string_lossy());
            let tmp = shell_quote(
                &remote_root
                    .join(format!("{}{HANDOFF_FILE}", crate::fsutil::TMP_PREFIX))
                    .to_string_lossy(),
            );
            let (program, args) = ssh(
                &[],
                format!("mkdir -p {dir} && cat > {tmp} && mv -f {tmp} {file}"),
            );
            steps.push(PlanStep {
                what: "copy the handoff record to the host".into(),
                program,
                args,
                stdin_file: Some(local_root.join(HANDOFF_FILE)),
            });
        }
        SyncMode::None => {}
    }

    let cd = format!("cd {}", shell_quote(&remote_folder.to_string_lossy()));
    let (extra, remote_command, what): (&[&str], String, &str) = match (
        &options.command,
        &handoff.tmux,
    ) {
        (Some(command), _) => (
            &[],
            format!("{cd} && {command}"),
            "run the command in the folder",
        ),
        (None, Some(tmux)) => {
            let session = shell_quote(&tmux.session);
            let target = match &tmux.window {
                Some(w) => shell_quote(&format!("{}:{w}", tmux.session)),
                None => session.clone(),
            };
            (
                &["-t"],
                format!(
                    "{cd} && if command -v tmux >/dev/null 2>&1; then \
                     tmux attach-session -t {target} 2>/dev/null || tmux new-session -A -s {session}; \
                     else exec \"${{SHELL:-/bin/sh}}\" -l; fi"
                ),
                "open the tmux session in the folder (a login shell without tmux)",
            )
        }
        (None, None) => (
            &["-t"],
            format!("{cd} && exec \"${{SHELL:-/bin/sh}}\" -l"),
            "open a login shell in the folder",
        ),
    };
    let (program, args) = ssh(extra, remote_command);
    steps.push(PlanStep {
        what: what.to_owned(),
        program,
        args,
        stdin_file: None,
    });
    Ok(ConnectPlan {
        steps,
        remote_root,
        remote_folder,
        servers: handoff.servers.clone(),
    })
}

/// Quotes `word` for a POSIX shell (unchanged when it needs no quoting).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Quotes and joins words into one command line.
pub(crate) fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits a command line into words like a POSIX shell (quotes and
/// backslashes; no expansions).
pub fn shell_words(line: &str) -> Result<Vec<String>> {
    let bad = |why: &str| Error::BadRsh {
        command: line.to_owned(),
        why: why.to_owned(),
    };
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(bad("unterminated single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(bad("unterminated double quote")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(bad("unterminated double quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(bad("trailing backslash")),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::handoff::TmuxInfo;
    use proptest::prelude::*;

    fn record() -> Handoff {
        Handoff {
            version: 1,
            root: "/home/me/ws".into(),
            folder: "app/web".into(),
            git: None,
            tmux: Some(TmuxInfo {
                session: "dev work".into(),
                window: Some("2".into()),
            }),
            servers: Vec::new(),
            env: Default::default(),
            host: "a".into(),
            saved_at: chrono::Utc::now(),
            note: None,
        }
    }

    #[test]
    fn tmux_plan_attaches_or_creates_with_fallback_shell() {
        let plan = connect_plan(
            &record(),
            Path::new("/home/me/ws"),
            &ConnectOptions {
                host: "box".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(plan.steps.len(), 2);
        assert_eq!(
            plan.steps[0].command_line(),
            "wsync remote sync /home/me/ws box:/home/me/ws"
        );
        let ssh = &plan.steps[1];
        assert_eq!(ssh.program, "ssh");
        assert_eq!(&ssh.args[..2], ["-t", "box"]);
        let remote = &ssh.args[2];
        assert!(remote.starts_with("cd /home/me/ws/app/web && "), "{remote}");
        assert!(
            remote.contains("tmux attach-session -t 'dev work:2'"),
            "{remote}"
        );
        assert!(
            remote.contains("tmux new-session -A -s 'dev work'"),
            "{remote}"
        );
        assert!(remote.contains("exec \"${SHELL:-/bin/sh}\" -l"), "{remote}");
    }

    /// The remote command, run by a real `sh` on a host without tmux,
    /// falls back to a login shell in the saved folder.
    #[test]
    fn without_tmux_the_remote_command_opens_a_login_shell_in_the_folder() {
        let host = tempfile::tempdir().unwrap();
        let root = host.path().join("ws");
        std::fs::create_dir_all(root.join("app/web")).unwrap();
        let empty_path = host.path().join("bin");
        std::fs::create_dir(&empty_path).unwrap();
        // The user's "shell" records where it started and how.
        let shell = host.path().join("fake-login-shell");
        let out = host.path().join("shell-ran");
        std::fs::write(
            &shell,
            format!("#!/bin/sh\necho \"$PWD $1\" > {}\n", out.display()),
        )
        .unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(&shell)
            .status()
            .unwrap();
        let plan = connect_plan(
            &record(),
            Path::new("/l"),
            &ConnectOptions {
                host: "h".into(),
                remote_root: Some(root.clone()),
                sync: SyncMode::None,
                ..Default::default()
            },
        )
        .unwrap();
        let remote = plan.steps[0].args.last().unwrap();
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg(remote)
            .env_clear()
            .env("PATH", &empty_path)
            .env("SHELL", &shell)
            .status()
            .unwrap();
        assert!(status.success());
        let ran = std::fs::read_to_string(&out).unwrap();
        let web = root.join("app/web");
        assert_eq!(ran.trim(), format!("{} -l", web.display()));
    }

    #[test]
    fn file_sync_and_command_with_custom_rsh() {
        let plan = connect_plan(
            &record(),
            Path::new("/l"),
            &ConnectOptions {
                host: "u@h".into(),
                remote_root: Some("/r oot".into()),
                rsh: Some("ssh -p 2222 -o 'A=b c'".into()),
                command: Some("pwd".into()),
                sync: SyncMode::File,
                wsync_exe: None,
                remote_wsync: None,
            },
        )
        .unwrap();
        let copy = &plan.steps[0];
        assert_eq!(copy.args[..4], ["-p", "2222", "-o", "A=b c"]);
        assert_eq!(copy.args[4], "u@h");
        assert_eq!(
            copy.stdin_file.as_deref(),
            Some(Path::new("/l/.wsync-handoff.json"))
        );
        let run = &plan.steps[1];
        assert_eq!(
            run.args[4..],
            ["u@h".to_owned(), "cd '/r oot/app/web' && pwd".to_owned()]
        );
        assert_eq!(plan.remote_folder, PathBuf::from("/r oot/app/web"));
    }

    #[test]
    fn bad_rsh_is_an_error() {
        assert!(shell_words("ssh 'oops").is_err());
        let err = connect_plan(
            &record(),
            Path::new("/l"),
            &ConnectOptions {
                rsh: Some("  ".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, Error::BadRsh { .. }));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Quoting then splitting gives back the words.
        #[test]
        fn quote_split_round_trip(words in proptest::collection::vec(".{0,12}", 0..6)) {
            let line = shell_join(&words);
            prop_assert_eq!(shell_words(&line).unwrap(), words);
        }
    }
}
