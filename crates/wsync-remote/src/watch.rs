//! Real-time sync: watch both trees and run a sync round whenever either
//! side changes; reconnect with backoff when the connection drops.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Error;
use crate::conn::{Conn, ConnectOptions, PeerSpec};
use crate::engine::{Report, Session, SyncOptions};
use crate::fsops::{STATE_DIR, TMP_PREFIX};
use crate::wire::Response;

/// How `watch` behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Options of every sync round.
    pub sync: SyncOptions,
    /// Quiet time after a change before a round starts.
    pub debounce: Duration,
    /// First reconnect delay (doubles up to `max_backoff`).
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// A full round runs at least this often even without notices.
    pub rescan_every: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            sync: SyncOptions::default(),
            debounce: Duration::from_millis(10),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            rescan_every: Duration::from_secs(60),
        }
    }
}

/// What a watch round reports to the caller.
#[derive(Debug)]
#[non_exhaustive]
pub enum WatchEvent<'a> {
    /// A sync round finished.
    Synced(&'a Report),
    /// Connecting or a round failed; retrying after `retry_in`.
    Disconnected {
        /// The error.
        error: &'a Error,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
}

enum Wake {
    /// Changed root-relative paths (None: rescan everything).
    Local(Option<Vec<Vec<u8>>>),
    /// Changed root-relative paths (empty: rescan everything).
    Remote(Vec<Vec<u8>>),
    RemoteGone,
}

/// Most paths a round syncs one by one; more make it a full round.
const MAX_SCOPED: usize = 500;
/// Quiet time after which deferred state is written.
const STATE_FLUSH_AFTER: Duration = Duration::from_secs(2);

/// The root-relative path of an event path, unless it is wsync's own
/// (state folder, temp files) or the root itself.
fn relevant(root: &Path, p: &Path) -> Option<Vec<u8>> {
    let rel = p.strip_prefix(root).ok()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str());
    if bytes.is_empty()
        || bytes == STATE_DIR.as_bytes()
        || bytes.starts_with(format!("{STATE_DIR}/").as_bytes())
    {
        return None;
    }
    let name = bytes.rsplit(|&b| b == b'/').next().unwrap_or(bytes);
    (!name.starts_with(TMP_PREFIX.as_bytes())).then(|| bytes.to_vec())
}

/// What a local change event asks for (None: nothing).
fn local_wake(root: &Path, ev: notify::Result<notify::Event>) -> Option<Wake> {
    match ev {
        Ok(ev) if ev.need_rescan() => Some(Wake::Local(None)),
        // Opens and reads (our own scans and hashing among them) change
        // nothing.
        Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => None,
        Ok(ev) => {
            let paths: Vec<Vec<u8>> = ev.paths.iter().filter_map(|p| relevant(root, p)).collect();
            (!paths.is_empty()).then_some(Wake::Local(Some(paths)))
        }
        Err(_) => Some(Wake::Local(None)),
    }
}

/// Reports a lost connection, then waits `backoff` (doubling it).
fn pause(
    error: &Error,
    backoff: &mut Duration,
    opts: &WatchOptions,
    on_event: &mut dyn FnMut(WatchEvent<'_>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    on_event(WatchEvent::Disconnected {
        error,
        retry_in: *backoff,
    })?;
    std::thread::sleep(*backoff);
    *backoff = (*backoff * 2).min(opts.max_backoff);
    ControlFlow::Continue(())
}

/// Syncs `local` with `peer` now and after every change on either side,
/// calling `on_event` after each round; returns when it answers
/// `ControlFlow::Break`, or with an error that must halt (mass deletion).
pub fn watch(
    local: &Path,
    peer: &PeerSpec,
    copts: &ConnectOptions,
    opts: &WatchOptions,
    on_event: &mut dyn FnMut(WatchEvent<'_>) -> ControlFlow<()>,
) -> Result<(), Error> {
    use notify::Watcher as _;
    std::fs::create_dir_all(local).map_err(|source| Error::Io {
        path: local.to_path_buf(),
        source,
    })?;
    let root = std::fs::canonicalize(local).unwrap_or_else(|_| local.to_path_buf());
    let (etx, erx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev| {
        let _ = etx.send(ev);
    })
    .map_err(|source| Error::Watch {
        path: local.to_path_buf(),
        source,
    })?;
    watcher
        .watch(&root, notify::RecursiveMode::Recursive)
        .map_err(|source| Error::Watch {
            path: local.to_path_buf(),
            source,
        })?;
    let r = watch_events(local, peer, copts, opts, erx, on_event);
    drop(watcher);
    r
}

/// [`watch`] with the local tree's change events taken from `events`
/// (what a `notify` watcher of `local` reports) instead of a watcher of
/// its own: an event with the `Rescan` flag (the kernel's event queue
/// overflowed and events were lost) or an error makes the next round a
/// full rescan; other events make a round limited to their paths.
pub fn watch_events(
    local: &Path,
    peer: &PeerSpec,
    copts: &ConnectOptions,
    opts: &WatchOptions,
    events: mpsc::Receiver<notify::Result<notify::Event>>,
    on_event: &mut dyn FnMut(WatchEvent<'_>) -> ControlFlow<()>,
) -> Result<(), Error> {
    // A watch holds its session for hours: never through a session agent,
    // which serves one client at a time and would keep others waiting.
    let copts = &ConnectOptions {
        agent: false,
        ..copts.clone()
    };
    let (tx, rx) = mpsc::channel::<Wake>();
    let ltx = tx.clone();
    std::fs::create_dir_all(local).map_err(|source| Error::Io {
        path: local.to_path_buf(),
        source,
    })?;
    let root = std::fs::canonicalize(local).unwrap_or_else(|_| local.to_path_buf());
    std::thread::spawn(move || {
        for ev in events {
            if let Some(w) = local_wake(&root, ev)
                && ltx.send(w).is_err()
            {
                break;
            }
        }
    });

    let mut backoff = opts.min_backoff;
    loop {
        // Connect: one session for the work, one connection for notices.
        let connected = Session::connect(local, peer, copts).and_then(|s| {
            let w = Conn::connect_watch(peer, copts)?;
            Ok((s, w))
        });
        let (mut session, notices) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                if pause(&e, &mut backoff, opts, on_event).is_break() {
                    return Ok(());
                }
                continue;
            }
        };
        let rtx = tx.clone();
        std::thread::spawn(move || {
            loop {
                match notices.recv() {
                    Ok(Response::Notice(paths)) => {
                        if rtx.send(Wake::Remote(paths)).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = rtx.send(Wake::RemoteGone);
                        break;
                    }
                }
            }
        });
        // Drop wakes from before this connection.
        while rx.try_recv().is_ok() {}
        let mut lost: Option<Error> = None;
        let mut full = true;
        let mut dirty: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
        loop {
            let round = if full || dirty.len() > MAX_SCOPED {
                session.sync(&opts.sync)
            } else {
                let paths: Vec<Vec<u8>> = std::mem::take(&mut dirty).into_iter().collect();
                session.sync_paths(&opts.sync, &paths)
            };
            full = false;
            dirty.clear();
            match round {
                Ok(report) => {
                    backoff = opts.min_backoff;
                    if on_event(WatchEvent::Synced(&report)).is_break() {
                        return session.close();
                    }
                }
                Err(e) if e.is_connection() => {
                    lost = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
            // Wait for a change on either side (or the periodic rescan).
            let deadline = Instant::now() + opts.rescan_every;
            let peer_name = session.conn().peer().to_owned();
            let mut absorb = |w: Wake, lost: &mut Option<Error>| match w {
                Wake::RemoteGone => {
                    *lost = Some(Error::Protocol {
                        peer: peer_name.clone(),
                        what: "the watch connection closed".into(),
                    });
                }
                Wake::Local(None) => full = true,
                Wake::Remote(paths) if paths.is_empty() => full = true,
                Wake::Local(Some(paths)) | Wake::Remote(paths) => dirty.extend(paths),
            };
            // Scoped rounds defer writing the pair state; write it once
            // things are quiet for a moment.
            let mut first = None;
            while first.is_none() && session.state_pending() {
                match rx.recv_timeout(STATE_FLUSH_AFTER) {
                    Ok(w) => first = Some(w),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = session.flush_state() {
                            if !e.is_connection() {
                                return Err(e);
                            }
                            lost = Some(e);
                            first = Some(Wake::RemoteGone);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
            let woke = match first {
                Some(w) => Ok(w),
                None => rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
            };
            match woke {
                Ok(w) => absorb(w, &mut lost),
                Err(mpsc::RecvTimeoutError::Timeout) => absorb(Wake::Local(None), &mut lost),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            // Coalesce a burst of events.
            std::thread::sleep(opts.debounce);
            while let Ok(w) = rx.try_recv() {
                absorb(w, &mut lost);
            }
            if lost.is_some() {
                break;
            }
        }
        drop(session);
        if let Some(e) = lost
            && pause(&e, &mut backoff, opts, on_event).is_break()
        {
            return Ok(());
        }
    }
}
