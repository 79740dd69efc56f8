//! Dev servers: processes whose working folder is under the synced root,
//! with the TCP ports they listen on, read from Linux `/proc`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::connect::shell_join;
use crate::error::{Error, Result};

/// Programs that are never recorded as dev servers: shells, multiplexers,
/// editors, pagers and wsync itself.
pub const DEFAULT_IGNORED_PROGRAMS: &[&str] = &[
    "sh",
    "bash",
    "zsh",
    "fish",
    "dash",
    "ksh",
    "tcsh",
    "csh",
    "nu",
    "tmux",
    "tmux: server",
    "screen",
    "ssh",
    "sshd",
    "vim",
    "nvim",
    "vi",
    "emacs",
    "nano",
    "less",
    "more",
    "man",
    "git",
    "wsync",
    "top",
    "htop",
];

/// A process running under the synced root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevServer {
    /// Its process id on the saving host.
    pub pid: u32,
    /// Its argument vector.
    pub argv: Vec<String>,
    /// The argument vector as one shell-quoted command line.
    pub command: String,
    /// Its working folder, relative to the synced root (`""` for the root).
    pub folder: PathBuf,
    /// TCP ports it listens on (IPv4 and IPv6), ascending.
    pub ports: Vec<u16>,
}

/// How to scan `/proc`.
#[derive(Debug, Clone)]
pub struct ProcScan {
    /// The proc filesystem (default `/proc`).
    pub proc_root: PathBuf,
    /// Program names (comm or argv\[0\] base name) never recorded.
    pub ignored_programs: Vec<String>,
    /// Process ids never recorded (the caller's own pid is always skipped).
    pub exclude_pids: Vec<u32>,
}

impl Default for ProcScan {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            ignored_programs: DEFAULT_IGNORED_PROGRAMS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            exclude_pids: Vec::new(),
        }
    }
}

/// The processes whose working folder is `root` or below it, sorted by pid.
///
/// Processes that vanish or cannot be inspected (another user's) are
/// skipped. Without a proc filesystem the list is empty.
pub fn scan_processes(root: &Path, scan: &ProcScan) -> Result<Vec<DevServer>> {
    let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
    let entries = match std::fs::read_dir(&scan.proc_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&scan.proc_root, e)),
    };
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || scan.exclude_pids.contains(&pid) {
            continue;
        }
        let dir = entry.path();
        let Ok(cwd) = std::fs::read_link(dir.join("cwd")) else {
            continue;
        };
        let Ok(folder) = cwd.strip_prefix(&root) else {
            continue;
        };
        let argv = read_cmdline(&dir.join("cmdline"));
        if argv.is_empty() {
            // Kernel threads and zombies have no command line.
            continue;
        }
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if is_ignored(comm.trim(), &argv, &scan.ignored_programs) {
            continue;
        }
        found.push(DevServer {
            pid,
            command: shell_join(&argv),
            argv,
            folder: folder.to_path_buf(),
            ports: Vec::new(),
        });
    }
    if !found.is_empty() {
        let listening = listening_inodes(&scan.proc_root)?;
        for server in &mut found {
            server.ports = ports_of(&scan.proc_root, server.pid, &listening);
        }
    }
    found.sort_by_key(|s| s.pid);
    Ok(found)
}

fn read_cmdline(path: &Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    bytes
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn is_ignored(comm: &str, argv: &[String], ignored: &[String]) -> bool {
    let base = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).trim_start_matches('-'))
        .unwrap_or("");
    let comm = comm.trim_start_matches('-');
    ignored.iter().any(|name| name == comm || name == base)
}

/// Socket inode → port of every TCP socket in LISTEN state, from
/// `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn listening_inodes(proc_root: &Path) -> Result<BTreeMap<u64, u16>> {
    let mut map = BTreeMap::new();
    for table in ["net/tcp", "net/tcp6"] {
        let path = proc_root.join(table);
        let text = match read_big(&path) {
            Ok(text) => text,
            // No IPv6 (or no /proc): nothing listens there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&path, e)),
        };
        map.extend(parse_tcp_table(&String::from_utf8_lossy(&text)));
    }
    Ok(map)
}

/// Reads a generated `/proc` table with a large first read: the kernel
/// rebuilds the table on every `read`, so the small probing reads of
/// `read_to_string` cost a full walk each.
fn read_big(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = Vec::with_capacity(1 << 16);
    std::fs::File::open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Parses one `/proc/net/tcp{,6}` table: `(inode, port)` for LISTEN rows.
/// Malformed rows are skipped.
fn parse_tcp_table(text: &str) -> Vec<(u64, u16)> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            if *fields.get(3)? != LISTEN {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            (inode != 0).then_some((inode, port))
        })
        .collect()
}

/// The listening ports among `pid`'s open file descriptors.
fn ports_of(proc_root: &Path, pid: u32, listening: &BTreeMap<u64, u16>) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return Vec::new();
    };
    let ports: BTreeSet<u16> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let text = target.to_str()?;
            let inode = text.strip_prefix("socket:[")?.strip_suffix(']')?;
            listening.get(&inode.parse::<u64>().ok()?).copied()
        })
        .collect();
    ports.into_iter().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_listen_rows_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000 100 0 0 10 0\n\
   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 23456 1 0000 20 4 30 10 -1\n\
   garbage line\n\
   2: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 777 1\n";
        assert_eq!(parse_tcp_table(table), vec![(12345, 8080), (777, 3000)]);
    }

    #[test]
    fn shells_and_wsync_are_ignored() {
        let ignored: Vec<String> = DEFAULT_IGNORED_PROGRAMS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert!(is_ignored("bash", &["-bash".into()], &ignored));
        assert!(is_ignored(
            "x",
            &["/usr/local/bin/wsync".into(), "serve".into()],
            &ignored
        ));
        assert!(!is_ignored(
            "node",
            &["node".into(), "server.js".into()],
            &ignored
        ));
    }

    #[test]
    fn finds_a_child_running_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let sub = root.path().join("app");
        std::fs::create_dir(&sub).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&sub)
            .spawn()
            .unwrap();
        let found = scan_processes(root.path(), &ProcScan::default());
        let _ = child.kill();
        let _ = child.wait();
        let found = found.unwrap();
        let server = found.iter().find(|s| s.pid == child.id()).unwrap();
        assert_eq!(server.folder, PathBuf::from("app"));
        assert_eq!(server.argv, ["sleep", "30"]);
        assert_eq!(server.command, "sleep 30");
        assert!(server.ports.is_empty());
        // Nothing else of ours runs there.
        assert_eq!(found.len(), 1, "{found:?}");
    }

    #[test]
    fn finds_the_port_this_process_listens_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proc_root = Path::new("/proc");
        let listening = listening_inodes(proc_root).unwrap();
        assert!(ports_of(proc_root, std::process::id(), &listening).contains(&port));
        drop(listener);
        let listening = listening_inodes(proc_root).unwrap();
        assert!(!ports_of(proc_root, std::process::id(), &listening).contains(&port));
    }
}
