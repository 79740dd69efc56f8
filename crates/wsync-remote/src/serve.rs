//! The far side: `wsync serve --root PATH` answering requests on
//! stdin/stdout (or any reader/writer pair).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::Error;
use crate::delta::Op;
use crate::fsops::{self, Excludes, Put, Root, STATE_DIR, Sealed, TMP_PREFIX};
use crate::wire::{self, ErrorKind, FrameError, Preamble, Request, Response};

/// How `serve` behaves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// fsync files and folders on every write (keep on; off only for tests
    /// of throughput on throwaway data).
    pub fsync: bool,
    /// How long change notices are collected before one is sent (watch).
    pub notice_delay: Duration,
    /// Serve one client session after another on the same stream (for a
    /// session agent that keeps this process alive between runs): each
    /// session starts with the client's preamble (answered with ours and a
    /// `Hello`) and ends with `EndSession` (answered with `SessionEnd`);
    /// the end of the stream between sessions ends the loop.
    pub sessions: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            fsync: true,
            notice_delay: Duration::from_millis(15),
            sessions: false,
        }
    }
}

/// Ops are batched into frames of about this much literal data.
const OPS_BATCH_BYTES: usize = 1024 * 1024;
const OPS_BATCH_COUNT: usize = 4096;
const SCAN_CHUNK: usize = 2000;
/// Pending puts are committed at the latest at this count or size.
const COMMIT_FILES: usize = 1000;
const COMMIT_BYTES: u64 = 64 * 1024 * 1024;

type Pending = Vec<(Vec<u8>, Result<Sealed, Error>)>;

/// Commits pending puts; one answer per put, in order.
fn commit_answers(items: Pending, fsync: bool) -> Vec<Response> {
    let mut batch = Vec::new();
    let mut slots = Vec::with_capacity(items.len());
    for (rel, r) in items {
        match r {
            Ok(sealed) => {
                slots.push((rel, None));
                batch.push(sealed);
            }
            Err(e) => slots.push((rel, Some(e))),
        }
    }
    let mut results = fsops::commit(batch, fsync).into_iter();
    slots
        .into_iter()
        .map(|(rel, err)| match err {
            Some(e) => err_response(&rel, &e),
            None => match results.next() {
                Some(Ok(meta)) => Response::Done(Some(meta)),
                Some(Err(e)) => err_response(&rel, &e),
                None => err_response(
                    &rel,
                    &Error::Changed {
                        path: crate::show(&rel),
                    },
                ),
            },
        })
        .collect()
}

/// Commits batches of puts, the previous batch in the background while
/// the next one arrives; answers always go out in request order.
struct Committer {
    inflight: Option<std::thread::JoinHandle<Vec<Response>>>,
    fsync: bool,
}

impl Committer {
    fn join<W: Write>(&mut self, out: &mut W) -> Result<(), Error> {
        if let Some(h) = self.inflight.take() {
            let answers = h.join().map_err(|_| Error::Protocol {
                peer: "server".into(),
                what: "the commit thread panicked".into(),
            })?;
            for a in &answers {
                send(out, a)?;
            }
        }
        Ok(())
    }

    /// Starts committing `pending` in the background.
    fn start<W: Write>(&mut self, pending: &mut Pending, out: &mut W) -> Result<(), Error> {
        self.join(out)?;
        let items = std::mem::take(pending);
        let fsync = self.fsync;
        self.inflight = Some(std::thread::spawn(move || commit_answers(items, fsync)));
        Ok(())
    }

    /// Commits everything now and answers it.
    fn finish<W: Write>(&mut self, pending: &mut Pending, out: &mut W) -> Result<(), Error> {
        self.join(out)?;
        if !pending.is_empty() {
            for a in &commit_answers(std::mem::take(pending), self.fsync) {
                send(out, a)?;
            }
        }
        Ok(())
    }
}

/// The error category sent to the peer for a local error.
#[must_use]
pub fn error_kind(e: &Error) -> ErrorKind {
    match e {
        Error::UnsafePath { .. } => ErrorKind::Unsafe,
        Error::Changed { .. } => ErrorKind::Changed,
        Error::NotFound { .. } => ErrorKind::NotFound,
        e if fsops::is_hash_mismatch(e) => ErrorKind::HashMismatch,
        _ => ErrorKind::Other,
    }
}

fn err_response(path: &[u8], e: &Error) -> Response {
    Response::Err {
        kind: error_kind(e),
        path: path.to_vec(),
        message: e.to_string(),
    }
}

fn frame_err(e: FrameError) -> Error {
    Error::Frame {
        peer: "client".into(),
        source: e,
    }
}

/// Serves `root` over `input`/`output` until the client closes the stream.
///
/// Writes the preamble and a `Hello`, checks the client's preamble, then
/// answers requests in order. Errors about single paths are answered, not
/// returned; only a broken connection or protocol ends the loop.
pub fn serve<R: Read + Send + 'static, W: Write>(
    root: &Path,
    input: R,
    output: W,
    opts: &ServeOptions,
) -> Result<(), Error> {
    let mut out = BufWriter::with_capacity(256 * 1024, output);
    let mut inp = BufReader::with_capacity(256 * 1024, input);
    let io = |source| Error::Io {
        path: "<stdio>".into(),
        source,
    };
    loop {
        if opts.sessions {
            // Between sessions the stream may end: the agent is done.
            if std::io::BufRead::fill_buf(&mut inp).map_err(io)?.is_empty() {
                return Ok(());
            }
        } else {
            wire::write_preamble(&mut out).map_err(io)?;
        }
        match wire::read_preamble(&mut inp).map_err(io)? {
            Preamble::Version(v) if v == wire::PROTOCOL_VERSION => {}
            Preamble::Version(v) => {
                return Err(Error::Version {
                    peer: v,
                    ours: wire::PROTOCOL_VERSION,
                });
            }
            Preamble::NotWsync => {
                return Err(Error::NoHandshake {
                    peer: "client".into(),
                    detail: "the client did not send the wsync preamble".into(),
                });
            }
        }
        if opts.sessions {
            wire::write_preamble(&mut out).map_err(io)?;
        }
        let root = Root::new(root, opts.fsync);
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        send(
            &mut out,
            &Response::Hello {
                host,
                root: std::os::unix::ffi::OsStrExt::as_bytes(root.path().as_os_str()).to_vec(),
            },
        )?;
        out.flush().map_err(io)?;
        match session(&root, inp, &mut out, opts)? {
            Some(next) => inp = next,
            None => return Ok(()),
        }
    }
}

/// One client session: answers requests until the stream ends (`None`)
/// or, in sessions mode, until `EndSession` (the input back, for the next).
fn session<R: Read + Send + 'static, W: Write>(
    root: &Root,
    mut inp: BufReader<R>,
    out: &mut BufWriter<W>,
    opts: &ServeOptions,
) -> Result<Option<BufReader<R>>, Error> {
    let io = |source| Error::Io {
        path: "<stdio>".into(),
        source,
    };
    let mut put: Option<Result<Put, Error>> = None;
    let mut put_rel: Vec<u8> = Vec::new();
    let mut pending: Pending = Vec::new();
    let mut committer = Committer {
        inflight: None,
        fsync: opts.fsync,
    };
    let mut pending_bytes = 0u64;
    // Frames are read, inflated and decoded on their own thread, a few
    // ahead of the one being applied (bounded: memory stays small).
    let (ftx, frames) = mpsc::sync_channel::<Result<Request, FrameError>>(4);
    let reader = std::thread::spawn(move || {
        loop {
            let r = wire::read_msg::<_, Request>(&mut inp).map(|(r, _)| r);
            // Nothing is read past a session's end: the next session's
            // preamble is not a frame.
            let stop = matches!(r, Err(_) | Ok(Request::EndSession));
            if ftx.send(r).is_err() || stop {
                break;
            }
        }
        inp
    });
    loop {
        let next = match frames.try_recv() {
            Ok(r) => r,
            Err(mpsc::TryRecvError::Empty) => {
                // Nothing more to read for now: answers go out.
                out.flush().map_err(io)?;
                frames.recv().unwrap_or(Err(FrameError::Closed))
            }
            Err(mpsc::TryRecvError::Disconnected) => Err(FrameError::Closed),
        };
        let req: Request = match next {
            Ok(r) => r,
            Err(FrameError::Closed) => {
                committer.finish(&mut pending, out)?;
                out.flush().map_err(io)?;
                return Ok(None);
            }
            Err(e) => return Err(frame_err(e)),
        };
        // Answers stay in request order: pending puts are answered first.
        if !matches!(
            req,
            Request::PutBegin { .. } | Request::PutOps(_) | Request::PutEnd { .. }
        ) {
            committer.finish(&mut pending, out)?;
            pending_bytes = 0;
        }
        match req {
            Request::Commit => {}
            Request::EndSession => {
                // A put left unfinished is dropped with its temp file.
                drop(put.take());
                send(out, &Response::SessionEnd)?;
                out.flush().map_err(io)?;
                if !opts.sessions {
                    return Ok(None);
                }
                return match reader.join() {
                    Ok(inp) => Ok(Some(inp)),
                    Err(_) => Err(io(std::io::Error::other("the frame reader panicked"))),
                };
            }
            Request::Scan {
                excludes,
                include_vcs,
            } => {
                let scanned = Excludes::new(root.path(), &excludes, include_vcs, false)
                    .and_then(|ex| root.scan(&ex));
                send_scan(out, scanned)?;
            }
            Request::ScanPaths {
                paths,
                excludes,
                include_vcs,
            } => {
                let scanned = Excludes::new(root.path(), &excludes, include_vcs, false)
                    .and_then(|ex| root.scan_paths(&ex, &paths));
                send_scan(out, scanned)?;
            }
            Request::Sigs { path } => {
                let r = match root.signature(&path) {
                    Ok((sig, _)) => Response::Sigs(sig),
                    Err(e) => err_response(&path, &e),
                };
                send(out, &r)?;
            }
            Request::Delta { path, sig } => {
                let mut batch: Vec<Op> = Vec::new();
                let mut batch_bytes = 0usize;
                let mut sink_err: Option<Error> = None;
                let result = root.delta(&path, &sig, &mut |op| {
                    if let Op::Literal(d) = &op {
                        batch_bytes += d.len();
                    }
                    batch.push(op);
                    if batch_bytes >= OPS_BATCH_BYTES || batch.len() >= OPS_BATCH_COUNT {
                        batch_bytes = 0;
                        let ops = std::mem::take(&mut batch);
                        if let Err(e) = send(out, &Response::DeltaOps(ops)) {
                            let msg = e.to_string();
                            sink_err = Some(e);
                            return Err(std::io::Error::other(msg));
                        }
                    }
                    Ok(())
                });
                if let Some(e) = sink_err {
                    return Err(e);
                }
                match result {
                    Ok((hash, meta)) => {
                        if !batch.is_empty() {
                            send(out, &Response::DeltaOps(batch))?;
                        }
                        send(out, &Response::DeltaEnd { hash, meta })?;
                    }
                    Err(e) => send(out, &err_response(&path, &e))?,
                }
            }
            Request::PutBegin {
                path,
                expect,
                block_size,
                exec,
                mtime_ns,
            } => {
                put = Some(root.begin_put(&path, expect, block_size, exec, mtime_ns));
                put_rel = path;
            }
            Request::PutOps(ops) => {
                if let Some(Ok(p)) = put.as_mut() {
                    for op in &ops {
                        if let Err(e) = p.apply(op) {
                            put = Some(Err(e));
                            break;
                        }
                    }
                } else if put.is_none() {
                    put = Some(Err(Error::Protocol {
                        peer: "client".into(),
                        what: "PutOps without PutBegin".into(),
                    }));
                }
            }
            Request::PutEnd { hash } => {
                let r = match put.take() {
                    Some(Ok(p)) => p.seal(&hash),
                    Some(Err(e)) => Err(e),
                    None => Err(Error::Protocol {
                        peer: "client".into(),
                        what: "PutEnd without PutBegin".into(),
                    }),
                };
                if let Ok(s) = &r {
                    pending_bytes += s.size();
                }
                pending.push((std::mem::take(&mut put_rel), r));
                if pending.len() >= COMMIT_FILES || pending_bytes >= COMMIT_BYTES {
                    committer.start(&mut pending, out)?;
                    pending_bytes = 0;
                }
            }
            Request::Mkdir { path, expect } => {
                let r = root.mkdir(&path, expect.as_ref());
                send(out, &done(&path, r.map(Some)))?;
            }
            Request::Symlink {
                path,
                target,
                expect,
            } => {
                let r = root.symlink(&path, &target, expect.as_ref());
                send(out, &done(&path, r.map(Some)))?;
            }
            Request::Delete { path, expect } => {
                let r = root.delete(&path, &expect);
                send(out, &done(&path, r.map(|()| None)))?;
            }
            Request::Rename { from, to, expect } => {
                let r = root.rename(&from, &to, &expect);
                send(out, &done(&from, r.map(Some)))?;
            }
            Request::SetMeta {
                path,
                expect,
                exec,
                mtime_ns,
            } => {
                let r = root.set_meta(&path, &expect, exec, mtime_ns);
                send(out, &done(&path, r.map(Some)))?;
            }
            Request::Hash { path } => {
                let r = match root.hash(&path) {
                    Ok(h) => Response::Hash(h),
                    Err(e) => err_response(&path, &e),
                };
                send(out, &r)?;
            }
            Request::StateGet { pair } => {
                let r = match root.state_get(&pair) {
                    Ok(s) => Response::State(s),
                    Err(e) => err_response(pair.as_bytes(), &e),
                };
                send(out, &r)?;
            }
            Request::StatePut { pair, data } => {
                let r = root.state_put(&pair, &data);
                send(out, &done(pair.as_bytes(), r.map(|()| None)))?;
            }
            Request::Watch => {
                out.flush().map_err(io)?;
                return watch_loop(root, frames, out, opts).map(|()| None);
            }
        }
    }
}

fn done(path: &[u8], r: Result<Option<wire::Meta>, Error>) -> Response {
    match r {
        Ok(m) => Response::Done(m),
        Err(e) => err_response(path, &e),
    }
}

/// Answers a scan: the entries in chunks, then the end marker.
fn send_scan<W: Write>(
    out: &mut W,
    scanned: Result<(bool, Vec<wire::Entry>), Error>,
) -> Result<(), Error> {
    match scanned {
        Ok((exists, entries)) => {
            for chunk in entries.chunks(SCAN_CHUNK) {
                send(out, &Response::ScanChunk(chunk.to_vec()))?;
            }
            send(
                out,
                &Response::ScanEnd {
                    root_exists: exists,
                },
            )
        }
        Err(e) => send(out, &err_response(b"", &e)),
    }
}

fn send<W: Write>(out: &mut W, r: &Response) -> Result<(), Error> {
    wire::write_msg(out, r).map(|_| ()).map_err(frame_err)
}

enum WatchMsg {
    Event(notify::Result<notify::Event>),
    ClientGone,
}

/// Sends a `Notice` whenever something under the root changes, until the
/// client closes the connection.
fn watch_loop<W: Write>(
    root: &Root,
    frames: mpsc::Receiver<Result<Request, FrameError>>,
    out: &mut BufWriter<W>,
    opts: &ServeOptions,
) -> Result<(), Error> {
    use notify::Watcher as _;
    let (tx, rx) = mpsc::channel::<WatchMsg>();
    let tx2 = tx.clone();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = tx2.send(WatchMsg::Event(ev));
    })
    .map_err(|source| Error::Watch {
        path: root.path().to_path_buf(),
        source,
    })?;
    if !root.exists() {
        std::fs::create_dir_all(root.path()).map_err(|source| Error::Io {
            path: root.path().to_path_buf(),
            source,
        })?;
    }
    watcher
        .watch(root.path(), notify::RecursiveMode::Recursive)
        .map_err(|source| Error::Watch {
            path: root.path().to_path_buf(),
            source,
        })?;
    std::thread::spawn(move || {
        // Anything the client sends now is ignored; its end closes the loop.
        while let Ok(Ok(_)) = frames.recv() {}
        let _ = tx.send(WatchMsg::ClientGone);
    });
    let prefix = root.path().to_path_buf();
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut rescan = false;
    loop {
        let msg = if pending.is_empty() && !rescan {
            rx.recv().ok()
        } else {
            match rx.recv_timeout(opts.notice_delay) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let paths = if rescan {
                        Vec::new()
                    } else {
                        std::mem::take(&mut pending)
                    };
                    pending.clear();
                    rescan = false;
                    send(out, &Response::Notice(paths))?;
                    out.flush().map_err(|source| Error::Io {
                        path: "<stdout>".into(),
                        source,
                    })?;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            }
        };
        match msg {
            None | Some(WatchMsg::ClientGone) => return Ok(()),
            // Opens and reads (scans, hashing, sending) change nothing.
            Some(WatchMsg::Event(Ok(ev))) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
            Some(WatchMsg::Event(Ok(ev))) => {
                if ev.need_rescan() {
                    rescan = true;
                }
                for p in ev.paths {
                    let Ok(rel) = p.strip_prefix(&prefix) else {
                        continue;
                    };
                    let rel = std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()).to_vec();
                    let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(&rel);
                    if rel.starts_with(STATE_DIR.as_bytes())
                        && (rel.len() == STATE_DIR.len() || rel.get(STATE_DIR.len()) == Some(&b'/'))
                        || name.starts_with(TMP_PREFIX.as_bytes())
                    {
                        continue;
                    }
                    if !pending.contains(&rel) && pending.len() < 10_000 {
                        pending.push(rel);
                    }
                }
            }
            Some(WatchMsg::Event(Err(_))) => rescan = true,
        }
    }
}
