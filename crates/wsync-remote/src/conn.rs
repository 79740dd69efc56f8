//! The driving side of a connection to `wsync serve`: spawning it (locally
//! or through `ssh`), the handshake, and pipelined request/response I/O.
//!
//! A writer thread drains a bounded queue of encoded frames into the peer's
//! stdin and a reader thread decodes the peer's frames into a queue, so the
//! caller can keep many requests in flight without either pipe deadlocking.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use crate::Error;
use crate::wire::{self, FrameError, Preamble, Request, Response};

/// Where the other tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSpec {
    /// A folder on this machine (served by a local `wsync serve`).
    Local(PathBuf),
    /// `[USER@]HOST:PATH` over `ssh`.
    Ssh {
        /// `[USER@]HOST`.
        host: String,
        /// The path on the host (relative paths are relative to the login folder).
        path: String,
    },
}

impl PeerSpec {
    /// Parses `[USER@]HOST:PATH` or a plain path, as rsync does: a colon
    /// before the first slash makes it remote.
    pub fn parse(spec: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::PeerSpec {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        if spec.is_empty() {
            return Err(bad("empty"));
        }
        match spec.find(':') {
            Some(colon) if !spec[..colon].contains('/') => {
                let host = &spec[..colon];
                let path = &spec[colon + 1..];
                if host.is_empty() || host.starts_with('-') || host.contains(char::is_whitespace) {
                    return Err(bad("bad host"));
                }
                if path.is_empty() {
                    return Err(bad("missing path after the colon"));
                }
                Ok(Self::Ssh {
                    host: host.to_owned(),
                    path: path.to_owned(),
                })
            }
            _ => Ok(Self::Local(PathBuf::from(spec))),
        }
    }

    /// A stable label for messages and the pair id.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            // A folder the first sync creates must get the same label as
            // on later runs (else the pair state is lost after one run):
            // canonicalize the parent and append the name.
            Self::Local(p) => std::fs::canonicalize(p)
                .or_else(|_| {
                    let name = p.file_name().ok_or(std::io::ErrorKind::NotFound)?;
                    let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
                    std::fs::canonicalize(parent.unwrap_or(Path::new("."))).map(|d| d.join(name))
                })
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
            Self::Ssh { host, path } => format!("{host}:{path}"),
        }
    }
}

/// How to reach the peer.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// The remote-shell command (default `ssh -o BatchMode=yes`); split by `sh`.
    pub rsh: Option<String>,
    /// The `wsync` program on the remote host (default `wsync`).
    pub remote_wsync: Option<String>,
    /// The `wsync` program to run for a local peer (the CLI passes its own
    /// executable). Required for [`PeerSpec::Local`].
    pub local_wsync: Option<PathBuf>,
    /// Extra arguments for `wsync serve` (e.g. `--no-fsync` in benchmarks).
    pub serve_args: Vec<String>,
    /// Share one ssh connection between runs: a folder for ssh's control
    /// sockets (`ControlMaster=auto`, `ControlPersist=60`). Only applied
    /// when the remote shell is `ssh`.
    pub ssh_control_dir: Option<PathBuf>,
    /// Reuse a session agent for ssh peers (see [`crate::agent`]): a
    /// `wsync serve` kept alive behind a socket in `ssh_control_dir`,
    /// started (as `local_wsync remote-agent …`) when none answers. Needs
    /// `ssh_control_dir` and `local_wsync`; falls back to a fresh
    /// connection whenever the agent cannot serve.
    pub agent: bool,
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Builds the command that starts `wsync serve` for `peer`.
pub fn serve_command(peer: &PeerSpec, opts: &ConnectOptions) -> Result<Command, Error> {
    let mut args: Vec<String> = vec!["serve".into(), "--root".into()];
    match peer {
        PeerSpec::Local(path) => {
            let prog = opts.local_wsync.clone().ok_or_else(|| Error::PeerSpec {
                spec: path.display().to_string(),
                why: "no wsync program given for a local peer".into(),
            })?;
            let mut cmd = Command::new(prog);
            cmd.args(&args).arg(path).args(&opts.serve_args);
            Ok(cmd)
        }
        PeerSpec::Ssh { host, path } => {
            args.push(path.clone());
            args.extend(opts.serve_args.iter().cloned());
            let remote = std::iter::once(opts.remote_wsync.as_deref().unwrap_or("wsync"))
                .chain(args.iter().map(String::as_str))
                .map(sh_quote)
                .collect::<Vec<_>>()
                .join(" ");
            let mut rsh = opts
                .rsh
                .clone()
                .unwrap_or_else(|| "ssh -o BatchMode=yes".to_owned());
            let is_ssh = rsh
                .split_whitespace()
                .next()
                .is_some_and(|prog| prog == "ssh" || prog.ends_with("/ssh"));
            if let Some(dir) = opts.ssh_control_dir.as_ref().filter(|_| is_ssh) {
                rsh.push_str(&format!(
                    " -o ControlMaster=auto -o ControlPersist=60 -o ControlPath={}",
                    sh_quote(&format!("{}/%C", dir.display()))
                ));
            }
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(format!("{rsh} \"$@\""))
                .arg("wsync-rsh")
                .arg(host)
                .arg(remote);
            Ok(cmd)
        }
    }
}

/// What the writer thread sends: a ready frame, or requests to encode.
enum Outgoing {
    Frame(Vec<u8>),
    Requests(Vec<Request>),
}

/// A live connection to a `wsync serve`.
pub struct Conn {
    tx: Option<SyncSender<Outgoing>>,
    rx: Receiver<Result<(Response, usize), FrameError>>,
    writer: Option<JoinHandle<std::io::Result<()>>>,
    child: Option<Child>,
    /// The socket to a session agent, when connected through one.
    session: Option<UnixStream>,
    sent: Arc<AtomicU64>,
    received: AtomicU64,
    peer: String,
    /// The peer's host name.
    pub peer_host: String,
    /// The peer's root as it resolved it.
    pub peer_root: Vec<u8>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("peer_host", &self.peer_host)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Spawns `wsync serve` for `peer` and performs the handshake.
    pub fn connect(peer: &PeerSpec, opts: &ConnectOptions) -> Result<Self, Error> {
        if opts.agent
            && matches!(peer, PeerSpec::Ssh { .. })
            && let Some(c) = Self::via_agent(peer, opts)
        {
            return Ok(c);
        }
        Self::spawn(peer, opts)
    }

    /// Connects through the peer's session agent, starting one if none
    /// answers; `None` when that does not work out (the caller then
    /// connects directly, and reports whatever error that gives).
    fn via_agent(peer: &PeerSpec, opts: &ConnectOptions) -> Option<Self> {
        let dir = opts.ssh_control_dir.as_ref()?;
        let prog = opts.local_wsync.as_ref()?;
        let sock = crate::agent::agent_socket(dir, peer, opts).ok()?;
        let stream = match UnixStream::connect(&sock) {
            Ok(s) => s,
            Err(_) => {
                let mut cmd = Command::new(prog);
                cmd.arg("remote-agent").arg("--socket").arg(&sock);
                if let Some(rsh) = &opts.rsh {
                    cmd.arg("--rsh").arg(rsh);
                }
                if let Some(w) = &opts.remote_wsync {
                    cmd.arg("--remote-wsync").arg(w);
                }
                for a in &opts.serve_args {
                    cmd.arg(format!("--serve-arg={a}"));
                }
                cmd.arg("--").arg(peer.label());
                // Its own process group: outlives this run, and a Ctrl-C
                // meant for this run does not reach it.
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let mut child = cmd.spawn().ok()?;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                loop {
                    if let Ok(s) = UnixStream::connect(&sock) {
                        // Reaped by whoever outlives it; not waited for.
                        drop(child);
                        break s;
                    }
                    if !matches!(child.try_wait(), Ok(None))
                        || std::time::Instant::now() >= deadline
                    {
                        return None;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        };
        // The agent serves one client at a time: wait a little for our
        // turn, else connect directly.
        stream
            .set_read_timeout(Some(crate::agent::TURN_WAIT))
            .ok()?;
        let mut turn = [0u8; 1];
        (&stream).read_exact(&mut turn).ok()?;
        if turn != [crate::agent::READY] {
            return None;
        }
        stream.set_read_timeout(None).ok()?;
        let input = stream.try_clone().ok()?;
        let output = stream.try_clone().ok()?;
        let mut c = Self::from_streams(&peer.label(), input, output).ok()?;
        c.session = Some(stream);
        Some(c)
    }

    /// Like [`Conn::connect`], for a watch-only connection.
    pub fn connect_watch(peer: &PeerSpec, opts: &ConnectOptions) -> Result<Self, Error> {
        let c = Self::spawn(peer, opts)?;
        c.send(&Request::Watch)?;
        Ok(c)
    }

    fn spawn(peer: &PeerSpec, opts: &ConnectOptions) -> Result<Self, Error> {
        let mut cmd = serve_command(peer, opts)?;
        let program = format!("{:?}", cmd.get_program());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Spawn {
                program,
                source: std::io::Error::other("no pipes to the child"),
            });
        };
        match Self::from_streams(&peer.label(), stdout, stdin) {
            Ok(mut c) => {
                c.child = Some(child);
                Ok(c)
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Handshakes over an existing stream pair (`input` from the server,
    /// `output` to it) and starts the I/O threads.
    pub fn from_streams<R, W>(peer: &str, input: R, output: W) -> Result<Self, Error>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let mut input = BufReader::with_capacity(256 * 1024, input);
        let mut output = BufWriter::with_capacity(256 * 1024, output);
        let no_answer = |detail: String| Error::NoHandshake {
            peer: peer.to_owned(),
            detail,
        };
        // A peer without wsync may close its stdin at once: that is not
        // the error to report, the missing preamble is.
        let wrote = wire::write_preamble(&mut output);
        match wire::read_preamble(&mut input) {
            Ok(Preamble::Version(v)) if v == wire::PROTOCOL_VERSION => {}
            Ok(Preamble::Version(v)) => {
                return Err(Error::Version {
                    peer: v,
                    ours: wire::PROTOCOL_VERSION,
                });
            }
            Ok(Preamble::NotWsync) => return Err(no_answer("no wsync preamble".into())),
            Err(e) => return Err(no_answer(e.to_string())),
        }
        wrote.map_err(|e| no_answer(e.to_string()))?;
        let (peer_host, peer_root) = match wire::read_msg::<_, Response>(&mut input) {
            Ok((Response::Hello { host, root }, _)) => (host, root),
            Ok((other, _)) => {
                return Err(Error::Protocol {
                    peer: peer.to_owned(),
                    what: format!("expected Hello, got {}", variant(&other)),
                });
            }
            Err(e) => return Err(no_answer(e.to_string())),
        };
        let sent = Arc::new(AtomicU64::new(10));
        let (tx, wrx) = mpsc::sync_channel::<Outgoing>(16);
        let sent2 = Arc::clone(&sent);
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            loop {
                let frame = match wrx.try_recv() {
                    Ok(f) => f,
                    Err(TryRecvError::Empty) => {
                        output.flush()?;
                        match wrx.recv() {
                            Ok(f) => f,
                            Err(_) => break,
                        }
                    }
                    Err(TryRecvError::Disconnected) => break,
                };
                let frames = match frame {
                    Outgoing::Frame(f) => vec![f],
                    // Encoded (and compressed) here, overlapping with the
                    // sender's reading of the next data.
                    Outgoing::Requests(reqs) => reqs
                        .iter()
                        .map(|r| wire::encode(r).map_err(|e| std::io::Error::other(e.to_string())))
                        .collect::<std::io::Result<Vec<_>>>()?,
                };
                for frame in frames {
                    output.write_all(&frame)?;
                    sent2.fetch_add(frame.len() as u64, Ordering::Relaxed);
                }
            }
            output.flush()
        });
        let (rtx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let r = wire::read_msg::<_, Response>(&mut input);
                let stop = r.is_err();
                if rtx.send(r).is_err() || stop {
                    break;
                }
            }
        });
        Ok(Self {
            tx: Some(tx),
            rx,
            writer: Some(writer),
            child: None,
            session: None,
            sent,
            received: AtomicU64::new(0),
            peer: peer.to_owned(),
            peer_host,
            peer_root,
        })
    }

    /// The peer's label.
    #[must_use]
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Bytes written to the peer so far.
    #[must_use]
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes read from the peer so far.
    #[must_use]
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn lost(&self, why: impl Into<String>) -> Error {
        Error::Protocol {
            peer: self.peer.clone(),
            what: format!("connection lost: {}", why.into()),
        }
    }

    /// Queues a request (does not wait for the answer).
    pub fn send(&self, req: &Request) -> Result<(), Error> {
        let frame = wire::encode(req).map_err(|source| Error::Frame {
            peer: self.peer.clone(),
            source,
        })?;
        self.queue(Outgoing::Frame(frame))
    }

    /// Like [`Conn::send`] for several requests in a row, e.g. the frames
    /// of a small file: they are encoded (and compressed) on the writer
    /// thread, while the caller goes on, and handed over at once.
    pub fn send_batch(&self, reqs: Vec<Request>) -> Result<(), Error> {
        if reqs.is_empty() {
            return Ok(());
        }
        self.queue(Outgoing::Requests(reqs))
    }

    fn queue(&self, out: Outgoing) -> Result<(), Error> {
        self.tx
            .as_ref()
            .ok_or_else(|| self.lost("closed"))?
            .send(out)
            .map_err(|_| self.lost("the peer stopped reading"))
    }

    /// Waits for the next answer.
    pub fn recv(&self) -> Result<Response, Error> {
        match self.rx.recv() {
            Ok(Ok((r, n))) => {
                self.received.fetch_add(n as u64, Ordering::Relaxed);
                Ok(r)
            }
            Ok(Err(FrameError::Closed)) | Err(_) => {
                Err(self.lost("the peer closed the connection"))
            }
            Ok(Err(source)) => Err(Error::Frame {
                peer: self.peer.clone(),
                source,
            }),
        }
    }

    /// Waits for the next answer for at most `timeout` (None: timed out).
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Result<Option<Response>, Error> {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok((r, n))) => {
                self.received.fetch_add(n as u64, Ordering::Relaxed);
                Ok(Some(r))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Ok(Err(FrameError::Closed)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(self.lost("the peer closed the connection"))
            }
            Ok(Err(source)) => Err(Error::Frame {
                peer: self.peer.clone(),
                source,
            }),
        }
    }

    /// Sends one request and waits for its answer.
    pub fn call(&self, req: &Request) -> Result<Response, Error> {
        self.send(req)?;
        self.recv()
    }

    /// Turns an `Err` answer into an [`Error`].
    pub fn peer_error(&self, r: Response) -> Error {
        match r {
            Response::Err {
                kind,
                path,
                message,
            } => Error::Peer {
                peer: self.peer.clone(),
                kind,
                path: crate::show(&path),
                message,
            },
            other => Error::Protocol {
                peer: self.peer.clone(),
                what: format!("unexpected answer {}", variant(&other)),
            },
        }
    }

    /// Closes the connection and waits for the peer process to exit.
    pub fn close(mut self) -> Result<(), Error> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), Error> {
        if let Some(stream) = self.session.take() {
            // End the session so the agent's server waits for the next
            // client; what the server still had to say is read first.
            let ended = self.send(&Request::EndSession).is_ok()
                && loop {
                    match self.recv_timeout(std::time::Duration::from_secs(30)) {
                        Ok(Some(Response::SessionEnd)) => break true,
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break false,
                    }
                };
            drop(self.tx.take());
            if let Some(w) = self.writer.take() {
                let _ = w.join();
            }
            let _ = stream.shutdown(std::net::Shutdown::Both);
            if !ended {
                return Err(Error::Protocol {
                    peer: self.peer.clone(),
                    what: "the session agent did not confirm the end of the session".into(),
                });
            }
            return Ok(());
        }
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(mut child) = self.child.take() {
            let status = child.wait().map_err(|source| Error::Spawn {
                program: "wsync serve".into(),
                source,
            })?;
            if !status.success() {
                return Err(Error::Protocol {
                    peer: self.peer.clone(),
                    what: format!("wsync serve exited with {status}"),
                });
            }
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(stream) = self.session.take() {
            // Not closed cleanly: the agent ends the session for us.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        drop(self.tx.take());
        if let Some(mut child) = self.child.take() {
            // Closing stdin ends a healthy server; do not hang on a sick one.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        }
    }
}

/// The name of a response variant, for messages.
#[must_use]
pub fn variant(r: &Response) -> &'static str {
    match r {
        Response::Hello { .. } => "Hello",
        Response::ScanChunk(_) => "ScanChunk",
        Response::ScanEnd { .. } => "ScanEnd",
        Response::Sigs(_) => "Sigs",
        Response::DeltaOps(_) => "DeltaOps",
        Response::DeltaEnd { .. } => "DeltaEnd",
        Response::Done(_) => "Done",
        Response::Hash(_) => "Hash",
        Response::State(_) => "State",
        Response::Notice(_) => "Notice",
        Response::Err { .. } => "Err",
        Response::SessionEnd => "SessionEnd",
    }
}

/// Runs `wsync serve` semantics for a local path in-process (used by tests
/// and by embedders that do not want a child process).
pub fn local_pair(root: &Path, opts: crate::serve::ServeOptions) -> Result<Conn, Error> {
    let (c_read, s_write) = std::io::pipe().map_err(|source| Error::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let (s_read, c_write) = std::io::pipe().map_err(|source| Error::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let r = root.to_path_buf();
    std::thread::spawn(move || {
        let _ = crate::serve::serve(&r, s_read, s_write, &opts);
    });
    Conn::from_streams(&root.display().to_string(), c_read, c_write)
}
