//! Session agents: one `wsync serve` on the far side kept alive between
//! runs, behind a local Unix socket, so that a run reusing it pays neither
//! for an ssh login nor for the remote shell and program start (Mutagen
//! keeps its agents for the same reason).
//!
//! The agent starts the server with `--sessions` (one client session after
//! another on one stream) and relays one client at a time, frame by frame:
//! the preamble, then whole frames only, so the server never sees a torn
//! frame. A client that goes away without ending its session (killed,
//! broken pipe) gets an `EndSession` sent on its behalf — its unfinished
//! put is dropped with its temp file, exactly as for a dropped connection —
//! and the server's answers up to `SessionEnd` are discarded. The agent
//! exits after [`AgentOptions::idle`] without a client, when the server
//! exits, or when the relay to it fails; the socket lives in a private
//! (0700) folder and is removed on exit.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Error;
use crate::conn::{ConnectOptions, PeerSpec, serve_command};
use crate::wire::{self, Request, Response};

/// The byte an agent sends a client when it starts relaying for it (a
/// client waits a little for it, then connects directly instead).
pub const READY: u8 = 0x06;

/// How long a client waits for its turn at a busy agent.
pub const TURN_WAIT: Duration = Duration::from_secs(2);

/// How an agent behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// Exit after this long without a client (default 60 s, like ssh's
    /// `ControlPersist=60`).
    pub idle: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
        }
    }
}

/// The socket of the agent for `peer` reached with `opts`, in `dir`: one
/// per distinct server command line (host, path, remote shell, program
/// and arguments).
pub fn agent_socket(dir: &Path, peer: &PeerSpec, opts: &ConnectOptions) -> Result<PathBuf, Error> {
    let cmd = serve_command(peer, &server_options(opts))?;
    let key = blake3::hash(format!("{cmd:?}").as_bytes()).to_hex();
    Ok(dir.join(format!("agent-{}.sock", key.get(..16).unwrap_or(&key))))
}

/// The options the agent starts its server with: sessions mode, and no
/// ssh control socket (the agent's own connection is the shared one).
fn server_options(opts: &ConnectOptions) -> ConnectOptions {
    let mut o = opts.clone();
    o.ssh_control_dir = None;
    o.agent = false;
    if !o.serve_args.iter().any(|a| a == "--sessions") {
        o.serve_args.push("--sessions".into());
    }
    o
}

/// Removes the socket file when the agent ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs an agent on `socket` until it has been idle for `agent.idle`, its
/// server exits or the relay to it fails. Returns at once when another
/// agent already answers on `socket`.
pub fn run_agent(
    socket: &Path,
    peer: &PeerSpec,
    opts: &ConnectOptions,
    agent: &AgentOptions,
) -> Result<(), Error> {
    let listener = match UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(socket).is_ok() {
                return Ok(()); // another agent serves this peer
            }
            // A stale socket left by a killed agent.
            std::fs::remove_file(socket).map_err(io_err(socket))?;
            UnixListener::bind(socket).map_err(io_err(socket))?
        }
        Err(e) => return Err(io_err(socket)(e)),
    };
    let _cleanup = Cleanup(socket.to_path_buf());
    let mut cmd = serve_command(peer, &server_options(opts))?;
    let program = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        stop(&mut child);
        return Err(Error::Spawn {
            program,
            source: std::io::Error::other("no pipes to the child"),
        });
    };
    let mut to_server = BufWriter::with_capacity(256 * 1024, stdin);
    let mut from_server = BufReader::with_capacity(256 * 1024, stdout);
    // Clients arrive on their own thread; the loop below waits for them
    // with a timeout (the idle limit, and a look at the server each second).
    let (tx, rx) = mpsc::channel::<UnixStream>();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if tx.send(client).is_err() {
                break;
            }
        }
    });
    let mut idle_since = Instant::now();
    let result = loop {
        if idle_since.elapsed() >= agent.idle {
            break Ok(());
        }
        if !matches!(child.try_wait(), Ok(None)) {
            break Ok(()); // the server is gone
        }
        match rx.recv_timeout(Duration::from_secs(1).min(agent.idle)) {
            Ok(client) => {
                if let Err(e) = relay(&client, &mut to_server, &mut from_server) {
                    break Err(e);
                }
                idle_since = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
        }
    };
    // The end of its input between sessions ends the server.
    drop(to_server);
    stop(&mut child);
    result
}

/// Waits briefly for the server to exit, then kills it.
fn stop(child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn relay_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: "<agent>".into(),
        source: std::io::Error::other(format!("{what}: {e}")),
    }
}

/// Relays one client session. An error means the server side is broken.
fn relay(
    client: &UnixStream,
    to_server: &mut BufWriter<ChildStdin>,
    from_server: &mut BufReader<ChildStdout>,
) -> Result<(), Error> {
    // Tell the client it is its turn (a client that gave up waiting is
    // gone: nothing was started for it).
    if (&*client).write_all(&[READY]).is_err() {
        return Ok(());
    }
    // The client's preamble first; a client gone before sending it has
    // started nothing.
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let mut from_client = BufReader::with_capacity(256 * 1024, client);
    let mut preamble = [0u8; 10];
    if from_client.read_exact(&mut preamble).is_err() {
        return Ok(());
    }
    let _ = client.set_read_timeout(None);
    to_server
        .write_all(&preamble)
        .and_then(|()| to_server.flush())
        .map_err(|e| relay_err("writing to the server", e))?;
    std::thread::scope(|s| {
        let upstream = s.spawn(move || client_to_server(&mut from_client, to_server));
        let down = server_to_client(from_server, client);
        // Unblocks the upstream copy if the client is still connected.
        let _ = client.shutdown(std::net::Shutdown::Both);
        let up = upstream
            .join()
            .unwrap_or_else(|_| Err(relay_err("relay", "a relay thread panicked")));
        down.and(up)
    })
}

/// Copies whole frames from the client until it ends its session; if it
/// goes away first, ends the session on its behalf.
fn client_to_server(
    from_client: &mut BufReader<&UnixStream>,
    to_server: &mut BufWriter<ChildStdin>,
) -> Result<(), Error> {
    let werr = |e: std::io::Error| relay_err("writing to the server", e);
    loop {
        match wire::read_frame(from_client) {
            Ok(frame) => {
                let end = wire::frame_is(&frame, &Request::EndSession);
                to_server.write_all(&frame).map_err(werr)?;
                if end || from_client.buffer().is_empty() {
                    to_server.flush().map_err(werr)?;
                }
                if end {
                    return Ok(());
                }
            }
            Err(_) => {
                let frame =
                    wire::encode(&Request::EndSession).map_err(|e| relay_err("encoding", e))?;
                to_server.write_all(&frame).map_err(werr)?;
                return to_server.flush().map_err(werr);
            }
        }
    }
}

/// Copies the server's preamble and frames to the client up to and
/// including `SessionEnd` (dropping them once the client is gone).
fn server_to_client(
    from_server: &mut BufReader<ChildStdout>,
    client: &UnixStream,
) -> Result<(), Error> {
    let rerr = |e: &dyn std::fmt::Display| relay_err("reading from the server", e);
    let mut to_client = BufWriter::with_capacity(256 * 1024, client);
    let mut client_ok = true;
    let mut preamble = [0u8; 10];
    from_server
        .read_exact(&mut preamble)
        .map_err(|e| rerr(&e))?;
    client_ok &= to_client.write_all(&preamble).is_ok();
    loop {
        let frame = wire::read_frame(from_server).map_err(|e| rerr(&e))?;
        let end = wire::frame_is(&frame, &Response::SessionEnd);
        if client_ok {
            client_ok = to_client.write_all(&frame).is_ok()
                && (!(end || from_server.buffer().is_empty()) || to_client.flush().is_ok());
        }
        if end {
            return Ok(());
        }
    }
}
