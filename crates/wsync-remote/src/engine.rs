//! Planning and running push, pull and three-way sync between a local root
//! and a connected `wsync serve`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::conn::{Conn, ConnectOptions, PeerSpec, variant};
use crate::delta::{Hash, Op, Signature};
use crate::fsops::{Excludes, Root};
use crate::wire::{Entry, ErrorKind, Kind, Meta, Request, Response};
use crate::{Error, show};

/// Files smaller than this go whole (compressed) instead of as a delta.
pub const DELTA_MIN: u64 = 16 * 1024;
/// Requests kept in flight per batch.
const WINDOW: usize = 64;
/// Literal bytes per `PutOps` frame.
const OPS_BATCH_BYTES: usize = 1024 * 1024;
/// Marks conflict copies in names.
pub const CONFLICT_MARK: &str = ".sync-conflict-";

/// A progress notification.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ProgressEvent {
    /// The plan is ready: this many transfers of this many bytes.
    Planned {
        /// Files to transfer.
        files: u64,
        /// Their total size.
        bytes: u64,
    },
    /// One file was transferred (or failed).
    FileDone {
        /// Its size.
        bytes: u64,
    },
}

/// A progress callback.
pub type Progress = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

/// What a run does.
#[derive(Clone)]
pub struct SyncOptions {
    /// Plan only; change nothing.
    pub dry_run: bool,
    /// Extra gitignore-style excludes (the local `.wsyncignore` is added).
    pub excludes: Vec<String>,
    /// Sync VCS folders (`.git`, …) too.
    pub include_vcs: bool,
    /// push/pull: delete on the receiver what the sender does not have.
    pub delete: bool,
    /// Allow a missing or emptied root to propagate deletions.
    pub allow_mass_delete: bool,
    /// Most conflict copies kept per file; beyond, the conflict is left
    /// unresolved (both sides untouched) and reported.
    pub conflict_cap: usize,
    /// Progress callback.
    pub progress: Option<Progress>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            excludes: Vec::new(),
            include_vcs: false,
            delete: false,
            allow_mass_delete: false,
            conflict_cap: 5,
            progress: None,
        }
    }
}

impl std::fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncOptions")
            .field("dry_run", &self.dry_run)
            .field("excludes", &self.excludes)
            .field("include_vcs", &self.include_vcs)
            .field("delete", &self.delete)
            .field("allow_mass_delete", &self.allow_mass_delete)
            .field("conflict_cap", &self.conflict_cap)
            .finish_non_exhaustive()
    }
}

/// One planned action, for `--dry-run` and reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanItem {
    /// `send`, `receive`, `delete-local`, `delete-remote`, `rename-local`,
    /// `rename-remote`, `mkdir-local`, `mkdir-remote`, `unresolved`.
    pub action: String,
    /// The path (lossy UTF-8).
    pub path: String,
    /// Extra detail (rename target, reason).
    pub detail: Option<String>,
}

/// A conflict resolved by keeping both versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictCopy {
    /// The contested path (now holding the newer version).
    pub path: String,
    /// Where the older version was kept (on both sides).
    pub copy: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// The plan.
    pub plan: Vec<PlanItem>,
    /// Entries left alone because they were unchanged.
    pub unchanged: u64,
    /// Files (and links) written on the peer.
    pub files_sent: u64,
    /// Files (and links) written here.
    pub files_received: u64,
    /// Entries deleted (both sides).
    pub deleted: u64,
    /// Folders created (both sides).
    pub dirs_created: u64,
    /// Bytes written to the connection.
    pub bytes_sent: u64,
    /// Bytes read from the connection.
    pub bytes_received: u64,
    /// Content bytes that travelled as literal data.
    pub literal_bytes: u64,
    /// Content bytes rebuilt from the receiver's old copy.
    pub matched_bytes: u64,
    /// Conflicts resolved by keeping both versions.
    pub conflicts: Vec<ConflictCopy>,
    /// Conflicts left alone (cap reached, conflict copy edited on both sides).
    pub unresolved: Vec<String>,
    /// Per-path failures (the rest of the run went on).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Local,
    Remote,
}

impl Side {
    fn other(self) -> Self {
        match self {
            Self::Local => Self::Remote,
            Self::Remote => Self::Local,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Rename {
        on: Side,
        from: Vec<u8>,
        to: Vec<u8>,
        expect: Meta,
    },
    Delete {
        on: Side,
        path: Vec<u8>,
        expect: Meta,
    },
    Copy {
        from: Side,
        path: Vec<u8>,
        src: Meta,
        dest: Option<Meta>,
    },
    Record {
        path: Vec<u8>,
        local: Meta,
        remote: Meta,
        hash: Option<Hash>,
    },
    Unresolved {
        path: Vec<u8>,
        why: String,
    },
}

impl Step {
    fn plan_item(&self) -> PlanItem {
        let item = |action: String, path: &[u8], detail: Option<String>| PlanItem {
            action,
            path: show(path),
            detail,
        };
        match self {
            Self::Rename { on, from, to, .. } => {
                item(format!("rename-{}", on.name()), from, Some(show(to)))
            }
            Self::Delete { on, path, .. } => item(format!("delete-{}", on.name()), path, None),
            Self::Copy {
                from, path, src, ..
            } => {
                let action = match (src.kind, from) {
                    (Kind::Dir, f) => format!("mkdir-{}", f.other().name()),
                    (_, Side::Local) => "send".into(),
                    (_, Side::Remote) => "receive".into(),
                };
                item(action, path, None)
            }
            Self::Record { path, .. } => item("record".into(), path, None),
            Self::Unresolved { path, why } => item("unresolved".into(), path, Some(why.clone())),
        }
    }
}

/// Whether two metas describe the same synced entry.
fn same(a: &Meta, b: &Meta) -> bool {
    a.kind == b.kind
        && match a.kind {
            Kind::File => a.size == b.size && a.mtime_ns == b.mtime_ns && a.exec == b.exec,
            Kind::Dir => true,
            Kind::Symlink => a.target == b.target,
        }
}

fn changed(now: Option<&Meta>, base: Option<&Meta>) -> bool {
    match (now, base) {
        (None, None) => false,
        (Some(a), Some(b)) => !same(a, b),
        _ => true,
    }
}

/// Whether a path names a conflict copy.
#[must_use]
pub fn is_conflict_copy(path: &[u8]) -> bool {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    name.windows(CONFLICT_MARK.len())
        .any(|w| w == CONFLICT_MARK.as_bytes())
}

/// `dir/NAME.EXT` → `dir/NAME.sync-conflict-YYYYMMDD-HHMMSS-HOST.EXT`.
#[must_use]
pub fn conflict_name(path: &[u8], stamp: &str, host: &str) -> Vec<u8> {
    let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&b""[..], path),
    };
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    let mut out = dir.to_vec();
    out.extend_from_slice(stem);
    out.extend_from_slice(format!("{CONFLICT_MARK}{stamp}-{host}").as_bytes());
    out.extend_from_slice(ext);
    out
}

/// How many conflict copies of `path` exist in `tree`.
fn conflict_copies_of(path: &[u8], tree: &BTreeMap<Vec<u8>, Meta>) -> usize {
    let probe = conflict_name(path, "", "");
    // probe = dir/stem.sync-conflict--.ext ; match prefix up to the mark.
    let mark_at = probe
        .windows(CONFLICT_MARK.len())
        .position(|w| w == CONFLICT_MARK.as_bytes())
        .map_or(probe.len(), |i| i + CONFLICT_MARK.len());
    let prefix = &probe[..mark_at];
    tree.range(prefix.to_vec()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter(|(k, _)| !k[prefix.len()..].contains(&b'/'))
        .count()
}

/// The stored state of a peer pair: per path, the meta on each side when
/// both last agreed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    entries: Vec<(Vec<u8>, Meta, Meta, Option<Hash>)>,
}

/// Per path: local meta, remote meta, and for files modified shortly
/// before the state was written the BLAKE3 of the synced content (an edit
/// within the same mtime tick keeps size and mtime; the hash catches it).
type State = BTreeMap<Vec<u8>, (Meta, Meta, Option<Hash>)>;

/// Files modified this recently when the state is written keep a hash.
const RACY_NS: i64 = 2_000_000_000;

fn decode_state(bytes: Option<&[u8]>, what: &str) -> Result<State, Error> {
    let Some(bytes) = bytes else {
        return Ok(State::new());
    };
    let f: StateFile = postcard::from_bytes(bytes).map_err(|e| Error::State {
        path: what.to_owned(),
        why: e.to_string(),
    })?;
    Ok(f.entries
        .into_iter()
        .map(|(p, l, r, h)| (p, (l, r, h)))
        .collect())
}

fn encode_state(state: &State) -> Result<Vec<u8>, Error> {
    let f = StateFile {
        version: 1,
        entries: state
            .iter()
            .map(|(p, (l, r, h))| (p.clone(), l.clone(), r.clone(), *h))
            .collect(),
    };
    postcard::to_stdvec(&f).map_err(|e| Error::State {
        path: "(new state)".into(),
        why: e.to_string(),
    })
}

#[derive(Debug, Default)]
struct Tree {
    exists: bool,
    entries: BTreeMap<Vec<u8>, Meta>,
}

/// A connection between a local root and a peer.
#[derive(Debug)]
pub struct Session {
    local: Root,
    local_fsync: bool,
    conn: Conn,
    pair: String,
    local_host: String,
    /// The pair state as of the last round (scoped rounds reuse it).
    cached: Option<(State, usize)>,
    /// The cached state has not been written yet.
    state_dirty: bool,
}

enum Outcome {
    Set(Meta, Meta, Option<Hash>),
    Remove,
}

impl Session {
    /// Connects to `peer` (spawning `wsync serve` locally or through ssh).
    pub fn connect(local: &Path, peer: &PeerSpec, opts: &ConnectOptions) -> Result<Self, Error> {
        let conn = Conn::connect(peer, opts)?;
        Ok(Self::with_conn(local, conn, &peer.label()))
    }

    /// A session over an established connection; `peer_label` identifies
    /// the peer in the pair id (use [`PeerSpec::label`]).
    #[must_use]
    pub fn with_conn(local: &Path, conn: Conn, peer_label: &str) -> Self {
        let local_abs = std::fs::canonicalize(local).unwrap_or_else(|_| local.to_path_buf());
        let mut h = blake3::Hasher::new();
        h.update(std::os::unix::ffi::OsStrExt::as_bytes(
            local_abs.as_os_str(),
        ));
        h.update(b"\0");
        h.update(peer_label.as_bytes());
        let pair = h.finalize().to_hex()[..32].to_owned();
        Self {
            local: Root::new(local, true),
            local_fsync: true,
            conn,
            pair,
            local_host: gethostname::gethostname().to_string_lossy().into_owned(),
            cached: None,
            state_dirty: false,
        }
    }

    /// Turns fsync off for local writes (throwaway data only).
    pub fn set_fsync(&mut self, fsync: bool) {
        self.local = Root::new(self.local.path(), fsync);
        self.local_fsync = fsync;
    }

    /// The connection.
    #[must_use]
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Ends the session cleanly.
    pub fn close(mut self) -> Result<(), Error> {
        self.flush_state()?;
        self.conn.close()
    }

    fn all_excludes(&self, opts: &SyncOptions) -> Vec<String> {
        let mut v = opts.excludes.clone();
        if let Ok(text) = std::fs::read_to_string(self.local.path().join(crate::fsops::IGNORE_FILE))
        {
            v.extend(text.lines().map(str::to_owned));
        }
        v
    }

    fn scan_both(
        &self,
        opts: &SyncOptions,
        scope: Option<&[Vec<u8>]>,
    ) -> Result<(Tree, Tree), Error> {
        let patterns = self.all_excludes(opts);
        self.conn.send(&match scope {
            None => Request::Scan {
                excludes: patterns.clone(),
                include_vcs: opts.include_vcs,
            },
            Some(paths) => Request::ScanPaths {
                paths: paths.to_vec(),
                excludes: patterns.clone(),
                include_vcs: opts.include_vcs,
            },
        })?;
        let ex = Excludes::new(self.local.path(), &patterns, opts.include_vcs, false)?;
        let (exists, list) = match scope {
            None => self.local.scan(&ex)?,
            Some(paths) => self.local.scan_paths(&ex, paths)?,
        };
        let local = Tree {
            exists,
            entries: list.into_iter().map(|e| (e.path, e.meta)).collect(),
        };
        let mut remote = Tree::default();
        loop {
            match self.conn.recv()? {
                Response::ScanChunk(entries) => {
                    for Entry { path, meta } in entries {
                        crate::fsops::check_rel(&path)?;
                        if ex.excluded_any(&path, meta.kind == Kind::Dir) {
                            continue;
                        }
                        if meta.kind == Kind::Symlink
                            && (meta.target.is_empty() || meta.target.contains(&0))
                        {
                            continue;
                        }
                        remote.entries.insert(path, meta);
                    }
                }
                Response::ScanEnd { root_exists } => {
                    remote.exists = root_exists;
                    break;
                }
                r @ Response::Err { .. } => return Err(self.conn.peer_error(r)),
                other => return Err(self.unexpected(&other, "scan")),
            }
        }
        Ok((local, remote))
    }

    fn unexpected(&self, r: &Response, during: &str) -> Error {
        Error::Protocol {
            peer: self.conn.peer().to_owned(),
            what: format!("unexpected {} during {during}", variant(r)),
        }
    }

    /// Copies the local tree to the peer (`delete`: and removes extras there).
    pub fn push(&mut self, opts: &SyncOptions) -> Result<Report, Error> {
        self.one_way(Side::Local, opts)
    }

    /// Copies the peer's tree here (`delete`: and removes extras here).
    pub fn pull(&mut self, opts: &SyncOptions) -> Result<Report, Error> {
        self.one_way(Side::Remote, opts)
    }

    fn one_way(&mut self, from: Side, opts: &SyncOptions) -> Result<Report, Error> {
        let (local, remote) = self.scan_both(opts, None)?;
        let (src, dst) = match from {
            Side::Local => (&local, &remote),
            Side::Remote => (&remote, &local),
        };
        let root_name = |side: Side| match side {
            Side::Local => self.local.path().display().to_string(),
            Side::Remote => self.conn.peer().to_owned(),
        };
        if !src.exists {
            return Err(Error::NotFound {
                path: format!("{} root {}", from.name(), root_name(from)),
            });
        }
        if opts.delete
            && src.entries.is_empty()
            && !dst.entries.is_empty()
            && !opts.allow_mass_delete
        {
            return Err(Error::MassDelete {
                side: from.name().into(),
                root: root_name(from),
                known: dst.entries.len(),
            });
        }
        let mut report = Report {
            dry_run: opts.dry_run,
            ..Report::default()
        };
        let mut steps = Vec::new();
        for (p, s) in &src.entries {
            match dst.entries.get(p) {
                Some(d) if same(s, d) => report.unchanged += 1,
                Some(d) if d.kind == Kind::Dir && s.kind != Kind::Dir => {
                    steps.push(Step::Delete {
                        on: from.other(),
                        path: p.clone(),
                        expect: d.clone(),
                    });
                    steps.push(Step::Copy {
                        from,
                        path: p.clone(),
                        src: s.clone(),
                        dest: None,
                    });
                }
                d => steps.push(Step::Copy {
                    from,
                    path: p.clone(),
                    src: s.clone(),
                    dest: d.cloned(),
                }),
            }
        }
        if opts.delete {
            for (p, d) in &dst.entries {
                if !src.entries.contains_key(p) {
                    steps.push(Step::Delete {
                        on: from.other(),
                        path: p.clone(),
                        expect: d.clone(),
                    });
                }
            }
        }
        report.plan = steps.iter().map(Step::plan_item).collect();
        if !opts.dry_run {
            self.execute(&steps, opts, &mut report)?;
        }
        self.finish_report(&mut report);
        Ok(report)
    }

    fn finish_report(&self, report: &mut Report) {
        report.bytes_sent = self.conn.bytes_sent();
        report.bytes_received = self.conn.bytes_received();
    }

    /// The agreed state, the larger number of entries either copy lists
    /// (a root that vanished takes its copy with it), and whether both
    /// copies decoded and hold exactly that state.
    fn load_state(&self) -> Result<(State, usize, bool), Error> {
        let remote = match self.conn.call(&Request::StateGet {
            pair: self.pair.clone(),
        })? {
            Response::State(s) => s,
            r @ Response::Err { .. } => return Err(self.conn.peer_error(r)),
            other => return Err(self.unexpected(&other, "state read")),
        };
        let local = self.local.state_get(&self.pair)?;
        // A copy that does not decode (torn or overwritten by hand) counts
        // as lost, like a missing one: what the other copy says is then
        // compared by content, which can keep extra files but never drop
        // one. Failing here instead would block every later sync of the
        // pair until someone found the hashed file under `.wsync/remote/`.
        let (l, r) = (
            decode_state(local.as_deref(), "local state"),
            decode_state(remote.as_deref(), "remote state"),
        );
        let decoded = l.is_ok() && r.is_ok();
        let (l, r) = (l.unwrap_or_default(), r.unwrap_or_default());
        let known = l.len().max(r.len());
        if l == r {
            return Ok((l, known, decoded));
        }
        // The copies disagree (a run died between the two writes, or one
        // side lost its copy): keep only what both agree on; the rest is
        // compared by content.
        let agreed: State = l.into_iter().filter(|(p, v)| r.get(p) == Some(v)).collect();
        Ok((agreed, known, false))
    }

    /// Whether a scoped round left state that is not written yet.
    #[must_use]
    pub fn state_pending(&self) -> bool {
        self.state_dirty
    }

    /// Writes the state of the last rounds to both sides if it is pending.
    /// (Scoped rounds defer this: a stale state is safe, it only costs
    /// content comparisons of what changed since.)
    pub fn flush_state(&mut self) -> Result<(), Error> {
        if self.state_dirty
            && let Some((state, _)) = &self.cached
        {
            self.save_state(state)?;
            self.state_dirty = false;
        }
        Ok(())
    }

    fn save_state(&self, state: &State) -> Result<(), Error> {
        let bytes = encode_state(state)?;
        match self.conn.call(&Request::StatePut {
            pair: self.pair.clone(),
            data: bytes.clone(),
        })? {
            Response::Done(_) => {}
            r @ Response::Err { .. } => return Err(self.conn.peer_error(r)),
            other => return Err(self.unexpected(&other, "state write")),
        }
        self.local.state_put(&self.pair, &bytes)
    }

    /// Three-way sync against the last synced state of this pair.
    pub fn sync(&mut self, opts: &SyncOptions) -> Result<Report, Error> {
        self.sync_scoped(opts, None)
    }

    /// Like [`Session::sync`], limited to `paths` (root-relative; folders
    /// with their subtrees), e.g. the paths a watcher reported. Everything
    /// else, and its state, is left as it is. A round that would delete
    /// many entries becomes a full round (with the mass-deletion guard).
    pub fn sync_paths(&mut self, opts: &SyncOptions, paths: &[Vec<u8>]) -> Result<Report, Error> {
        self.sync_scoped(opts, Some(paths))
    }

    fn sync_scoped(
        &mut self,
        opts: &SyncOptions,
        scope: Option<&[Vec<u8>]>,
    ) -> Result<Report, Error> {
        let in_scope = |p: &[u8]| {
            scope.is_none_or(|sc| {
                sc.iter().any(|d| {
                    p == d.as_slice() || (p.starts_with(d) && p.get(d.len()) == Some(&b'/'))
                })
            })
        };
        let (state, known_files, stored) = match (scope, self.cached.as_ref()) {
            (Some(_), Some(c)) => (c.0.clone(), c.1, false),
            _ => {
                // A full round reads both copies again (written ones first).
                self.flush_state()?;
                self.load_state()?
            }
        };
        // What both sides have stored, when they agree: a round that ends
        // with the same state writes nothing.
        let stored = stored.then(|| state.clone());
        let (local, remote) = self.scan_both(opts, scope)?;
        if scope.is_none() && known_files > 0 && !opts.allow_mass_delete {
            for (side, tree) in [(Side::Local, &local), (Side::Remote, &remote)] {
                if !tree.exists || tree.entries.is_empty() {
                    return Err(Error::MassDelete {
                        side: side.name().into(),
                        root: match side {
                            Side::Local => self.local.path().display().to_string(),
                            Side::Remote => self.conn.peer().to_owned(),
                        },
                        known: known_files,
                    });
                }
            }
        }
        // Files recorded with a hash (modified right before the last run)
        // whose size and mtime still match: compare content, since an edit
        // within the same mtime tick keeps both.
        let (racy_local, racy_remote) = self.racy_changes(&state, &local, &remote)?;
        let mut report = Report {
            dry_run: opts.dry_run,
            ..Report::default()
        };
        let mut steps = Vec::new();
        let mut compare: Vec<(Vec<u8>, Meta, Meta)> = Vec::new();
        let mut paths: BTreeSet<&Vec<u8>> = local.entries.keys().collect();
        paths.extend(remote.entries.keys());
        paths.extend(state.keys().filter(|p| in_scope(p)));
        let now = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
        for p in paths {
            let l = local.entries.get(p);
            let r = remote.entries.get(p);
            let s = state.get(p);
            let lc = changed(l, s.map(|s| &s.0)) || racy_local.contains(p);
            let rc = changed(r, s.map(|s| &s.1)) || racy_remote.contains(p);
            match (lc, rc) {
                (false, false) => report.unchanged += u64::from(l.is_some()),
                (true, false) | (false, true) => {
                    let (from, x, y) = if lc {
                        (Side::Local, l, r)
                    } else {
                        (Side::Remote, r, l)
                    };
                    match (x, y) {
                        (None, Some(y)) => steps.push(Step::Delete {
                            on: from.other(),
                            path: p.clone(),
                            expect: y.clone(),
                        }),
                        (Some(x), y) => {
                            if let Some(y) =
                                y.filter(|y| y.kind == Kind::Dir && x.kind != Kind::Dir)
                            {
                                steps.push(Step::Delete {
                                    on: from.other(),
                                    path: p.clone(),
                                    expect: y.clone(),
                                });
                                steps.push(Step::Copy {
                                    from,
                                    path: p.clone(),
                                    src: x.clone(),
                                    dest: None,
                                });
                            } else {
                                steps.push(Step::Copy {
                                    from,
                                    path: p.clone(),
                                    src: x.clone(),
                                    dest: y.cloned(),
                                });
                            }
                        }
                        (None, None) => {}
                    }
                }
                (true, true) => match (l, r) {
                    (None, None) => {}
                    // Edit beats delete.
                    (Some(l), None) => steps.push(Step::Copy {
                        from: Side::Local,
                        path: p.clone(),
                        src: l.clone(),
                        dest: None,
                    }),
                    (None, Some(r)) => steps.push(Step::Copy {
                        from: Side::Remote,
                        path: p.clone(),
                        src: r.clone(),
                        dest: None,
                    }),
                    (Some(l), Some(r)) => {
                        if l.kind == r.kind && l.kind != Kind::File && same(l, r) {
                            steps.push(Step::Record {
                                path: p.clone(),
                                local: l.clone(),
                                remote: r.clone(),
                                hash: None,
                            });
                        } else if l.kind == Kind::File && r.kind == Kind::File && l.size == r.size {
                            compare.push((p.clone(), l.clone(), r.clone()));
                        } else {
                            steps.extend(self.conflict(p, l, r, &local, &remote, &now, opts));
                        }
                    }
                },
            }
        }
        // Same-size files changed on both sides: equal content is no conflict.
        if !compare.is_empty() {
            let remote_hashes =
                self.remote_hashes(&compare.iter().map(|c| c.0.clone()).collect::<Vec<_>>())?;
            for ((p, l, r), rh) in compare.iter().zip(remote_hashes) {
                let lh = self.local.hash(p);
                match (lh, rh) {
                    (Ok(a), Ok(b)) if a == b => steps.push(Step::Record {
                        path: p.clone(),
                        local: l.clone(),
                        remote: r.clone(),
                        hash: Some(a),
                    }),
                    (Ok(_), Ok(_)) => {
                        steps.extend(self.conflict(p, l, r, &local, &remote, &now, opts));
                    }
                    (Err(e), _) | (_, Err(e)) => report.errors.push(e.to_string()),
                }
            }
        }
        keep_nonempty_dirs(&mut steps, &local, &remote);
        let deletions = steps
            .iter()
            .filter(|s| matches!(s, Step::Delete { .. }))
            .count();
        if scope.is_some() && deletions > 100 {
            return self.sync_scoped(opts, None);
        }
        report.plan = steps.iter().map(Step::plan_item).collect();
        for st in &steps {
            match st {
                Step::Unresolved { path, why } => {
                    report.unresolved.push(format!("{}: {why}", show(path)));
                }
                Step::Rename { from, to, .. } => report.conflicts.push(ConflictCopy {
                    path: show(from),
                    copy: show(to),
                }),
                _ => {}
            }
        }
        if opts.dry_run {
            self.finish_report(&mut report);
            return Ok(report);
        }
        let outcomes = self.execute(&steps, opts, &mut report)?;
        let mut next = state;
        for (p, o) in outcomes {
            match o {
                Outcome::Set(l, r, h) => {
                    next.insert(p, (l, r, h));
                }
                Outcome::Remove => {
                    next.remove(&p);
                }
            }
        }
        // Both sides deleted, or excluded now: forget.
        next.retain(|p, _| {
            !in_scope(p)
                || local.entries.contains_key(p)
                || remote.entries.contains_key(p)
                || steps_touch(&steps, p)
        });
        let racy_after = now_ns() - RACY_NS;
        for (l, r, h) in next.values_mut() {
            if l.kind != Kind::File || (l.mtime_ns < racy_after && r.mtime_ns < racy_after) {
                *h = None;
            }
        }
        let known = known_files.max(next.len());
        self.state_dirty = stored.as_ref() != Some(&next);
        self.cached = Some((next, known));
        if scope.is_none() {
            self.flush_state()?;
        }
        self.finish_report(&mut report);
        Ok(report)
    }

    /// Paths whose content differs from the hash recorded in the state
    /// although size and mtime match, per side.
    fn racy_changes(
        &self,
        state: &State,
        local: &Tree,
        remote: &Tree,
    ) -> Result<(PathSet, PathSet), Error> {
        let mut lset = BTreeSet::new();
        let mut rset = BTreeSet::new();
        let mut remote_check: Vec<(Vec<u8>, Hash)> = Vec::new();
        for (p, (sl, sr, h)) in state {
            let Some(h) = h else { continue };
            if local.entries.get(p).is_some_and(|m| same(m, sl))
                && self.local.hash(p).is_ok_and(|now| now != *h)
            {
                lset.insert(p.clone());
            }
            if remote.entries.get(p).is_some_and(|m| same(m, sr)) {
                remote_check.push((p.clone(), *h));
            }
        }
        let paths: Vec<Vec<u8>> = remote_check.iter().map(|(p, _)| p.clone()).collect();
        for ((p, h), now) in remote_check.into_iter().zip(self.remote_hashes(&paths)?) {
            if now.is_ok_and(|now| now != h) {
                rset.insert(p);
            }
        }
        Ok((lset, rset))
    }

    #[allow(clippy::too_many_arguments)]
    fn conflict(
        &self,
        p: &[u8],
        l: &Meta,
        r: &Meta,
        local: &Tree,
        remote: &Tree,
        now: &str,
        opts: &SyncOptions,
    ) -> Vec<Step> {
        if is_conflict_copy(p) {
            return vec![Step::Unresolved {
                path: p.to_vec(),
                why: "a conflict copy was changed on both sides (no conflict copy of a conflict copy)".into(),
            }];
        }
        let existing =
            conflict_copies_of(p, &local.entries).max(conflict_copies_of(p, &remote.entries));
        if existing >= opts.conflict_cap {
            return vec![Step::Unresolved {
                path: p.to_vec(),
                why: format!(
                    "{existing} conflict copies exist already (cap {})",
                    opts.conflict_cap
                ),
            }];
        }
        let loser = if l.kind == Kind::Dir {
            Side::Remote
        } else if r.kind == Kind::Dir || l.mtime_ns < r.mtime_ns {
            Side::Local
        } else {
            Side::Remote
        };
        let (lose_meta, win_meta) = match loser {
            Side::Local => (l, r),
            Side::Remote => (r, l),
        };
        let host = match loser {
            Side::Local => self.local_host.clone(),
            Side::Remote => self.conn.peer_host.clone(),
        };
        let mut name = conflict_name(p, now, &host);
        let mut n = 1;
        while local.entries.contains_key(&name) || remote.entries.contains_key(&name) {
            name = conflict_name(p, &format!("{now}-{n}"), &host);
            n += 1;
        }
        vec![
            Step::Rename {
                on: loser,
                from: p.to_vec(),
                to: name.clone(),
                expect: lose_meta.clone(),
            },
            Step::Copy {
                from: loser.other(),
                path: p.to_vec(),
                src: win_meta.clone(),
                dest: None,
            },
            Step::Copy {
                from: loser,
                path: name,
                src: lose_meta.clone(),
                dest: None,
            },
        ]
    }

    fn remote_hashes(&self, paths: &[Vec<u8>]) -> Result<Vec<Result<Hash, Error>>, Error> {
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(WINDOW * 4) {
            for p in chunk {
                self.conn.send(&Request::Hash { path: p.clone() })?;
            }
            for _ in chunk {
                out.push(match self.conn.recv()? {
                    Response::Hash(h) => Ok(h),
                    r @ Response::Err { .. } => Err(self.conn.peer_error(r)),
                    other => return Err(self.unexpected(&other, "hash")),
                });
            }
        }
        Ok(out)
    }

    /// Sends small requests to the peer, all in flight, answers in order.
    fn remote_batch(&self, reqs: &[Request]) -> Result<Vec<Result<Option<Meta>, Error>>, Error> {
        let mut out = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(WINDOW * 4) {
            for r in chunk {
                self.conn.send(r)?;
            }
            for _ in chunk {
                out.push(match self.conn.recv()? {
                    Response::Done(m) => Ok(m),
                    r @ Response::Err { .. } => Err(self.conn.peer_error(r)),
                    other => return Err(self.unexpected(&other, "batch")),
                });
            }
        }
        Ok(out)
    }

    fn execute(
        &mut self,
        steps: &[Step],
        opts: &SyncOptions,
        report: &mut Report,
    ) -> Result<Vec<(Vec<u8>, Outcome)>, Error> {
        let mut outcomes: Vec<(Vec<u8>, Outcome)> = Vec::new();
        let fail = |report: &mut Report, e: &Error| report.errors.push(e.to_string());

        // 1. Renames (conflict copies), so the winners can take the name.
        let mut remote_reqs = Vec::new();
        for st in steps {
            if let Step::Rename {
                on,
                from,
                to,
                expect,
            } = st
            {
                match on {
                    Side::Local => {
                        if let Err(e) = self.local.rename(from, to, expect) {
                            fail(report, &e);
                        }
                    }
                    Side::Remote => remote_reqs.push(Request::Rename {
                        from: from.clone(),
                        to: to.clone(),
                        expect: expect.clone(),
                    }),
                }
            }
        }
        for r in self.remote_batch(&remote_reqs)? {
            if let Err(e) = r {
                fail(report, &e);
            }
        }

        // 2. Deletions, deepest first.
        let mut dels: Vec<(&Side, &Vec<u8>, &Meta)> = steps
            .iter()
            .filter_map(|st| match st {
                Step::Delete { on, path, expect } => Some((on, path, expect)),
                _ => None,
            })
            .collect();
        dels.sort_by(|a, b| b.1.cmp(a.1));
        let mut remote_reqs = Vec::new();
        let mut remote_paths = Vec::new();
        for (on, path, expect) in dels {
            match on {
                Side::Local => match self.local.delete(path, expect) {
                    Ok(()) => {
                        report.deleted += 1;
                        outcomes.push((path.clone(), Outcome::Remove));
                    }
                    Err(e) => fail(report, &e),
                },
                Side::Remote => {
                    remote_reqs.push(Request::Delete {
                        path: path.clone(),
                        expect: expect.clone(),
                    });
                    remote_paths.push(path.clone());
                }
            }
        }
        for (p, r) in remote_paths
            .into_iter()
            .zip(self.remote_batch(&remote_reqs)?)
        {
            match r {
                Ok(_) => {
                    report.deleted += 1;
                    outcomes.push((p, Outcome::Remove));
                }
                Err(e) => fail(report, &e),
            }
        }

        // 3. Folders (parents first) and symlinks.
        let mut remote_reqs = Vec::new();
        let mut remote_meta = Vec::new();
        let mut copies: Vec<(&Side, &Vec<u8>, &Meta, &Option<Meta>)> = steps
            .iter()
            .filter_map(|st| match st {
                Step::Copy {
                    from,
                    path,
                    src,
                    dest,
                } => Some((from, path, src, dest)),
                _ => None,
            })
            .collect();
        copies.sort_by(|a, b| a.1.cmp(b.1));
        for &(from, path, src, dest) in &copies {
            if src.kind == Kind::File {
                continue;
            }
            match from {
                Side::Remote => {
                    let r = if src.kind == Kind::Dir {
                        self.local.mkdir(path, dest.as_ref())
                    } else {
                        self.local.symlink(path, &src.target, dest.as_ref())
                    };
                    match r {
                        Ok(m) => {
                            if src.kind == Kind::Dir {
                                report.dirs_created += 1;
                            } else {
                                report.files_received += 1;
                            }
                            outcomes.push((path.clone(), Outcome::Set(m, src.clone(), None)));
                        }
                        Err(e) => fail(report, &e),
                    }
                }
                Side::Local => {
                    remote_reqs.push(if src.kind == Kind::Dir {
                        Request::Mkdir {
                            path: path.clone(),
                            expect: dest.clone(),
                        }
                    } else {
                        Request::Symlink {
                            path: path.clone(),
                            target: src.target.clone(),
                            expect: dest.clone(),
                        }
                    });
                    remote_meta.push((path.clone(), src.clone()));
                }
            }
        }
        for ((p, src), r) in remote_meta
            .into_iter()
            .zip(self.remote_batch(&remote_reqs)?)
        {
            match r {
                Ok(Some(m)) => {
                    if src.kind == Kind::Dir {
                        report.dirs_created += 1;
                    } else {
                        report.files_sent += 1;
                    }
                    outcomes.push((p, Outcome::Set(src, m, None)));
                }
                Ok(None) => {}
                Err(e) => fail(report, &e),
            }
        }

        // 4. Files, pipelined.
        let sends: Vec<FileCopy> = copies
            .iter()
            .filter(|c| *c.0 == Side::Local && c.2.kind == Kind::File)
            .map(|c| FileCopy {
                path: c.1.clone(),
                src: c.2.clone(),
                dest: c.3.clone(),
            })
            .collect();
        let recvs: Vec<FileCopy> = copies
            .iter()
            .filter(|c| *c.0 == Side::Remote && c.2.kind == Kind::File)
            .map(|c| FileCopy {
                path: c.1.clone(),
                src: c.2.clone(),
                dest: c.3.clone(),
            })
            .collect();
        if let Some(p) = &opts.progress {
            p(&ProgressEvent::Planned {
                files: (sends.len() + recvs.len()) as u64,
                bytes: sends.iter().chain(&recvs).map(|c| c.src.size).sum(),
            });
        }
        for (item, r) in sends.iter().zip(self.send_files(&sends, opts, report)?) {
            match r {
                Ok((l, m, h)) => {
                    report.files_sent += 1;
                    outcomes.push((item.path.clone(), Outcome::Set(l, m, Some(h))));
                }
                Err(e) => fail(report, &e),
            }
        }
        for (item, r) in recvs.iter().zip(self.recv_files(&recvs, opts, report)?) {
            match r {
                Ok((l, m, h)) => {
                    report.files_received += 1;
                    outcomes.push((item.path.clone(), Outcome::Set(l, m, Some(h))));
                }
                Err(e) => fail(report, &e),
            }
        }

        // 5. Both sides already agree.
        for st in steps {
            if let Step::Record {
                path,
                local,
                remote,
                hash,
            } = st
            {
                outcomes.push((
                    path.clone(),
                    Outcome::Set(local.clone(), remote.clone(), *hash),
                ));
            }
        }
        Ok(outcomes)
    }

    fn send_files(
        &self,
        items: &[FileCopy],
        opts: &SyncOptions,
        report: &mut Report,
    ) -> Result<FileResults, Error> {
        let mut q = SendQueue::new(items.len());

        // Files the receiver has a copy of go as deltas, a window at a
        // time (signatures first); all others stream whole, back to back.
        let (delta, whole): (Vec<usize>, Vec<usize>) = (0..items.len()).partition(|&i| {
            let it = &items[i];
            it.src.size >= DELTA_MIN
                && it
                    .dest
                    .as_ref()
                    .is_some_and(|d| d.kind == Kind::File && d.size >= DELTA_MIN)
        });
        let groups = delta
            .chunks(WINDOW)
            .map(|c| (true, c))
            .chain(whole.chunks(WINDOW).map(|c| (false, c)));
        for (want_sigs, chunk) in groups {
            if want_sigs {
                for &i in chunk {
                    self.conn.send(&Request::Sigs {
                        path: items[i].path.clone(),
                    })?;
                    q.pending.push_back(Pending::Sigs(i));
                }
            }
            while q.pending.iter().any(|p| matches!(p, Pending::Sigs(_))) {
                q.handle(self)?;
            }
            for &i in chunk {
                let sig = q.sigs.remove(&i);
                self.stream_put(
                    &items[i],
                    sig,
                    &mut q.sent_meta[i],
                    &mut q.local_err[i],
                    report,
                )?;
                q.pending.push_back(Pending::Put(i, true));
                if let Some(p) = &opts.progress {
                    p(&ProgressEvent::FileDone {
                        bytes: items[i].src.size,
                    });
                }
            }
        }
        q.commit(self)?;
        // A delta whose rebuilt file did not match (the receiver's copy
        // changed after its signature was taken): send those whole.
        for i in std::mem::take(&mut q.retry) {
            self.stream_put(
                &items[i],
                None,
                &mut q.sent_meta[i],
                &mut q.local_err[i],
                report,
            )?;
            q.pending.push_back(Pending::Put(i, false));
        }
        q.commit(self)?;
        Ok(finish_results(q.results, items))
    }

    fn stream_put(
        &self,
        it: &FileCopy,
        sig: Option<Signature>,
        sent_meta: &mut Option<(Meta, Hash)>,
        local_err: &mut Option<Error>,
        report: &mut Report,
    ) -> Result<(), Error> {
        let sig = sig.unwrap_or_default();
        // A small file's frames go to the writer thread in one hand-over.
        let mut queue = vec![Request::PutBegin {
            path: it.path.clone(),
            expect: it.dest.clone(),
            block_size: if sig.blocks.is_empty() {
                0
            } else {
                sig.block_size
            },
            exec: it.src.exec,
            mtime_ns: it.src.mtime_ns,
        }];
        let mut batch: Vec<Op> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut literal = 0u64;
        let mut conn_err: Option<Error> = None;
        let r = self.local.delta(&it.path, &sig, &mut |op| {
            if let Op::Literal(d) = &op {
                batch_bytes += d.len();
                literal += d.len() as u64;
            }
            batch.push(op);
            if batch_bytes >= OPS_BATCH_BYTES || batch.len() >= 4096 {
                batch_bytes = 0;
                queue.push(Request::PutOps(std::mem::take(&mut batch)));
                if let Err(e) = self.conn.send_batch(std::mem::take(&mut queue)) {
                    let msg = e.to_string();
                    conn_err = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            }
            Ok(())
        });
        if let Some(e) = conn_err {
            return Err(e);
        }
        if !batch.is_empty() {
            queue.push(Request::PutOps(batch));
        }
        let hash = match r {
            Ok((hash, meta)) if same(&meta, &it.src) => {
                report.literal_bytes += literal;
                report.matched_bytes += meta.size.saturating_sub(literal);
                *sent_meta = Some((meta, hash));
                hash
            }
            Ok(_) => {
                *local_err = Some(Error::Changed {
                    path: show(&it.path),
                });
                // A wrong hash makes the server discard the temp file.
                [0; 32]
            }
            Err(e) => {
                *local_err = Some(e);
                [0; 32]
            }
        };
        queue.push(Request::PutEnd { hash });
        self.conn.send_batch(queue)
    }

    fn recv_files(
        &self,
        items: &[FileCopy],
        opts: &SyncOptions,
        report: &mut Report,
    ) -> Result<FileResults, Error> {
        let mut results: Vec<Option<Result<Synced, Error>>> = items.iter().map(|_| None).collect();
        let mut staged: Vec<(usize, crate::fsops::Sealed, (Meta, Hash))> = Vec::new();
        let mut staged_bytes = 0u64;
        let fsync = self.local_fsync;
        let commit = |staged: &mut Vec<(usize, crate::fsops::Sealed, (Meta, Hash))>,
                      results: &mut Vec<Option<Result<Synced, Error>>>| {
            let (idx, rest): (Vec<usize>, Vec<Received>) = std::mem::take(staged)
                .into_iter()
                .map(|(i, s, m)| (i, (s, m)))
                .unzip();
            let (sealed, metas): (Vec<_>, Vec<_>) = rest.into_iter().unzip();
            for ((i, r), m) in idx
                .into_iter()
                .zip(crate::fsops::commit(sealed, fsync))
                .zip(metas)
            {
                results[i] = Some(r.map(|l| (l, m.0, m.1)));
            }
        };
        let mut retry = Vec::new();
        let mut first_pass = true;
        let all: Vec<usize> = (0..items.len()).collect();
        let mut todo = all;
        loop {
            for chunk in todo.chunks(WINDOW) {
                let mut block_sizes = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    let it = &items[i];
                    let sig = match &it.dest {
                        Some(d)
                            if first_pass
                                && d.kind == Kind::File
                                && d.size >= DELTA_MIN
                                && it.src.size >= DELTA_MIN =>
                        {
                            match self.local.signature(&it.path) {
                                Ok((s, m)) if same(&m, d) => s,
                                _ => Signature::default(),
                            }
                        }
                        _ => Signature::default(),
                    };
                    block_sizes.push(if sig.blocks.is_empty() {
                        0
                    } else {
                        sig.block_size
                    });
                    self.conn.send(&Request::Delta {
                        path: it.path.clone(),
                        sig,
                    })?;
                }
                for (&i, bs) in chunk.iter().zip(block_sizes) {
                    let it = &items[i];
                    let r = self.recv_one(it, bs, report)?;
                    if let Some(p) = &opts.progress {
                        p(&ProgressEvent::FileDone { bytes: it.src.size });
                    }
                    match r {
                        Ok((sealed, meta)) => {
                            staged_bytes += sealed.size();
                            staged.push((i, sealed, meta));
                            if staged.len() >= 1000 || staged_bytes >= 128 * 1024 * 1024 {
                                commit(&mut staged, &mut results);
                                staged_bytes = 0;
                            }
                        }
                        Err(e) if first_pass && crate::fsops::is_hash_mismatch(&e) => {
                            retry.push(i);
                        }
                        Err(e) => results[i] = Some(Err(e)),
                    }
                }
            }
            if retry.is_empty() || !first_pass {
                break;
            }
            first_pass = false;
            todo = std::mem::take(&mut retry);
        }
        commit(&mut staged, &mut results);
        Ok(finish_results(results, items))
    }

    /// Receives one streamed delta into a local temp file. The outer error
    /// is a broken connection; the inner one concerns this file only.
    fn recv_one(
        &self,
        it: &FileCopy,
        bs: u32,
        report: &mut Report,
    ) -> Result<Result<Received, Error>, Error> {
        let mut put =
            self.local
                .begin_put(&it.path, it.dest.clone(), bs, it.src.exec, it.src.mtime_ns);
        loop {
            match self.conn.recv()? {
                Response::DeltaOps(ops) => {
                    if let Ok(p) = put.as_mut() {
                        for op in &ops {
                            if let Err(e) = p.apply(op) {
                                put = Err(e);
                                break;
                            }
                        }
                    }
                }
                Response::DeltaEnd { hash, meta } => {
                    let p = match put {
                        Ok(p) => p,
                        Err(e) => return Ok(Err(e)),
                    };
                    if !same(&meta, &it.src) {
                        return Ok(Err(Error::Changed {
                            path: show(&it.path),
                        }));
                    }
                    let (written, copied) = p.counts();
                    return Ok(p.seal(&hash).map(|sealed| {
                        report.literal_bytes += written - copied;
                        report.matched_bytes += copied;
                        (sealed, (meta, hash))
                    }));
                }
                r @ Response::Err { .. } => return Ok(Err(self.conn.peer_error(r))),
                other => return Err(self.unexpected(&other, "file transfer")),
            }
        }
    }
}

/// An answer `send_files` waits for.
enum Pending {
    /// The signature of item `i`.
    Sigs(usize),
    /// The put of item `i` (`true`: first try, a delta may be retried whole).
    Put(usize, bool),
}

/// What `send_files` keeps per item while answers arrive in order.
struct SendQueue {
    pending: VecDeque<Pending>,
    sigs: HashMap<usize, Signature>,
    results: Vec<Option<Result<Synced, Error>>>,
    sent_meta: Vec<Option<(Meta, Hash)>>,
    local_err: Vec<Option<Error>>,
    retry: Vec<usize>,
}

impl SendQueue {
    fn new(n: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            sigs: HashMap::new(),
            results: (0..n).map(|_| None).collect(),
            sent_meta: vec![None; n],
            local_err: (0..n).map(|_| None).collect(),
            retry: Vec::new(),
        }
    }

    /// Takes the next answer and files it under its item.
    fn handle(&mut self, s: &Session) -> Result<(), Error> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        match (p, s.conn.recv()?) {
            (Pending::Sigs(i), Response::Sigs(sig)) => {
                self.sigs.insert(i, sig);
            }
            (Pending::Sigs(_), Response::Err { .. }) => {}
            (Pending::Put(i, _), Response::Done(Some(m))) => {
                if let Some((l, h)) = self.sent_meta[i].take() {
                    self.results[i] = Some(Ok((l, m, h)));
                }
            }
            (Pending::Put(i, first), r @ Response::Err { .. }) => {
                if let Some(e) = self.local_err[i].take() {
                    self.results[i] = Some(Err(e));
                } else if first
                    && matches!(
                        r,
                        Response::Err {
                            kind: ErrorKind::HashMismatch,
                            ..
                        }
                    )
                {
                    self.retry.push(i);
                } else {
                    self.results[i] = Some(Err(s.conn.peer_error(r)));
                }
            }
            (_, other) => return Err(s.unexpected(&other, "file transfer")),
        }
        Ok(())
    }

    /// Asks the peer to make every pending put durable and takes all answers.
    fn commit(&mut self, s: &Session) -> Result<(), Error> {
        s.conn.send(&Request::Commit)?;
        while !self.pending.is_empty() {
            self.handle(s)?;
        }
        Ok(())
    }
}

/// A file both sides now hold: local meta, remote meta, content BLAKE3.
type Synced = (Meta, Meta, Hash);
/// A received file waiting to be committed, with the sender's meta and hash.
type Received = (crate::fsops::Sealed, (Meta, Hash));
/// A set of root-relative paths.
type PathSet = BTreeSet<Vec<u8>>;
/// Per-file results.
type FileResults = Vec<Result<Synced, Error>>;

#[derive(Debug, Clone)]
struct FileCopy {
    path: Vec<u8>,
    src: Meta,
    dest: Option<Meta>,
}

/// One result per item; an item that never got an answer changed under us.
fn finish_results(results: Vec<Option<Result<Synced, Error>>>, items: &[FileCopy]) -> FileResults {
    results
        .into_iter()
        .zip(items)
        .map(|(r, it)| {
            r.unwrap_or_else(|| {
                Err(Error::Changed {
                    path: show(&it.path),
                })
            })
        })
        .collect()
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn steps_touch(steps: &[Step], p: &[u8]) -> bool {
    steps.iter().any(|s| match s {
        Step::Copy { path, .. } | Step::Record { path, .. } => path == p,
        _ => false,
    })
}

/// A folder deletion on a side where something under it is kept becomes a
/// re-creation of the folder on the other side (edit beats delete).
fn keep_nonempty_dirs(steps: &mut [Step], local: &Tree, remote: &Tree) {
    let mut deleting: BTreeSet<(Side, Vec<u8>)> = BTreeSet::new();
    for st in steps.iter() {
        if let Step::Delete { on, path, .. } = st {
            deleting.insert((*on, path.clone()));
        }
    }
    for st in steps.iter_mut() {
        let Step::Delete { on, path, expect } = st else {
            continue;
        };
        if expect.kind != Kind::Dir {
            continue;
        }
        let tree = match on {
            Side::Local => local,
            Side::Remote => remote,
        };
        let mut prefix = path.clone();
        prefix.push(b'/');
        let kept = tree
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .any(|(k, _)| !deleting.contains(&(*on, k.clone())));
        if kept {
            *st = Step::Copy {
                from: *on,
                path: path.clone(),
                src: expect.clone(),
                dest: None,
            };
        }
    }
}

/// Lists conflict copies under `root` (root-relative paths).
pub fn list_conflicts(root: &Path) -> Result<Vec<PathBuf>, Error> {
    let ex = Excludes::new(root, &[], false, true)?;
    let (_, entries) = Root::new(root, false).scan(&ex)?;
    Ok(entries
        .into_iter()
        .filter(|e| is_conflict_copy(&e.path))
        .map(|e| {
            PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.path))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names() {
        assert_eq!(
            show(&conflict_name(
                b"dir/notes.txt",
                "20260101-120000",
                "box.lan"
            )),
            "dir/notes.sync-conflict-20260101-120000-box_lan.txt"
        );
        assert_eq!(
            show(&conflict_name(b".bashrc", "20260101-120000", "h")),
            ".bashrc.sync-conflict-20260101-120000-h"
        );
        assert!(is_conflict_copy(&conflict_name(b"a/b", "x", "h")));
        assert!(!is_conflict_copy(b"a.sync-conflict/b"));
        let mut tree = BTreeMap::new();
        let m = Meta {
            kind: Kind::File,
            size: 1,
            mtime_ns: 1,
            exec: false,
            target: vec![],
        };
        tree.insert(conflict_name(b"d/n.txt", "1", "h"), m.clone());
        tree.insert(conflict_name(b"d/n.txt", "2", "h"), m.clone());
        tree.insert(b"d/n.txt".to_vec(), m);
        assert_eq!(conflict_copies_of(b"d/n.txt", &tree), 2);
    }
}
