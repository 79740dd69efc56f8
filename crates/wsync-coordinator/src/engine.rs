//! The sync run: lock and pause, snapshot, commit/fetch/integrate/push,
//! resume, log and clean up, with rollback to the snapshot on any failure
//! and recovery of a run that was killed.

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use git2::build::CheckoutBuilder;
use git2::{CheckoutNotificationType, Commit, Oid, Repository, Signature, Tree};
use serde::Serialize;
use wsync_lock::{LockOptions, PauseGate, PauseOptions, SyncLock, Wait};

use crate::Error;
use crate::classify::Classifier;
use crate::config::Config;
use crate::conflicts::{self, ConflictRecord, MergeCtx};
use crate::git::{self, PushOutcome, Target};
use crate::journal::Journal;
use crate::snap;
use crate::synclog::{self, LogEntry, PhaseTime};

/// What a run does with the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMode {
    /// Commit, fetch, integrate and push.
    #[default]
    Sync,
    /// Commit locally, fetch and integrate; no push.
    Pull,
    /// Commit and push; a remote that moved on is an error.
    Push,
}

impl SyncMode {
    /// `sync`, `pull` or `push`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Pull => "pull",
            Self::Push => "push",
        }
    }
}

/// Why a run was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The host started.
    Startup,
    /// The scheduler's interval elapsed.
    Scheduled,
    /// A person asked.
    #[default]
    Manual,
    /// Enough changes piled up.
    Threshold,
    /// The host is exiting.
    Exit,
    /// The watcher saw user changes.
    Watch,
}

impl Reason {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Scheduled => "scheduled",
            Self::Manual => "manual",
            Self::Threshold => "threshold",
            Self::Exit => "exit",
            Self::Watch => "watch",
        }
    }

    /// Every reason.
    pub const ALL: [Self; 6] = [
        Self::Startup,
        Self::Scheduled,
        Self::Manual,
        Self::Threshold,
        Self::Exit,
        Self::Watch,
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown reason {s:?}; expected startup, scheduled, manual, threshold, exit or watch")
            })
    }
}

/// A point in the run, reported to [`SyncOptions::on_phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The lock is held (before recovery and the decision).
    Locked,
    /// The snapshot was captured and the journal written.
    Snapshot,
    /// The user's changes were committed.
    Committed,
    /// The fetch finished.
    Fetched,
    /// Checkout of the integrated tree is half done (called from inside
    /// the checkout, after its first file when there are two or more).
    Checkout,
    /// About to push.
    Push,
}

impl Phase {
    /// The kebab-case name (`locked`, `snapshot`, `committed`, `fetched`, `checkout`, `push`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Locked => "locked",
            Self::Snapshot => "snapshot",
            Self::Committed => "committed",
            Self::Fetched => "fetched",
            Self::Checkout => "checkout",
            Self::Push => "push",
        }
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::Locked,
            Self::Snapshot,
            Self::Committed,
            Self::Fetched,
            Self::Checkout,
            Self::Push,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| format!("unknown phase {s:?}"))
    }
}

/// A callback invoked at each [`Phase`] (tests use it to stop a run at an
/// exact point; hosts can use it for progress).
pub type PhaseHook = Arc<dyn Fn(Phase) + Send + Sync>;

/// How to run.
#[derive(Clone, Default)]
pub struct SyncOptions {
    /// Sync, pull only or push only.
    pub mode: SyncMode,
    /// Why.
    pub reason: Reason,
    /// Bypass the decision engine's timing and thresholds.
    pub force: bool,
    /// Decide and list what would be committed; change nothing.
    pub dry_run: bool,
    /// Who runs (recorded in the lock).
    pub caller: String,
    /// How long to wait for the lock (`None`: fail at once if busy).
    pub lock_wait: Option<Duration>,
    /// Set it (e.g. from a SIGTERM handler) to stop between phases; the
    /// workspace is then restored to the snapshot. The library never
    /// installs signal handlers itself.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Called at each phase.
    pub on_phase: Option<PhaseHook>,
    /// A watching snapshot scan kept across runs (the daemon's): the
    /// pre-sync snapshot then only looks at what changed since the last
    /// one. `None`: every snapshot scans the whole tree.
    pub live_snapshots: Option<Arc<Mutex<wsync_snapshot::LiveScan>>>,
}

impl fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncOptions")
            .field("mode", &self.mode)
            .field("reason", &self.reason)
            .field("force", &self.force)
            .field("dry_run", &self.dry_run)
            .field("caller", &self.caller)
            .field("lock_wait", &self.lock_wait)
            .field("cancel", &self.cancel)
            .field("on_phase", &self.on_phase.as_ref().map(|_| "hook"))
            .field("live_snapshots", &self.live_snapshots.is_some())
            .finish()
    }
}

/// How the remote's commits were brought in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Integration {
    /// Nothing fetched (push only, or the remote has no branch yet).
    #[default]
    None,
    /// The remote had nothing new.
    UpToDate,
    /// The local branch moved forward to the remote's commit.
    FastForward,
    /// A three-way merge commit was made.
    Merge,
}

impl Integration {
    fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::UpToDate => "up-to-date",
            Self::FastForward => "fast-forward",
            Self::Merge => "merge",
        }
    }
}

/// What the decision engine concluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the run goes ahead.
    pub run: bool,
    /// Why (always filled, for logs and the skipped message).
    pub why: String,
    /// Pending user changes, when they were counted.
    pub user_changes: Option<usize>,
    /// Seconds since the last successful sync.
    pub since_last_secs: Option<u64>,
}

/// What a recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// The interrupted run's journal.
    pub journal: Journal,
    /// Whether the workspace was restored to the journal's snapshot.
    pub restored: bool,
    /// The safety snapshot of the state found (before restoring).
    pub safety_snapshot: Option<String>,
}

/// What happened in a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncReport {
    /// `synced`, `skipped`, `dry-run`.
    pub outcome: String,
    /// The decision.
    pub decision: Decision,
    /// The snapshot captured before changing anything.
    pub snapshot: Option<String>,
    /// Mode.
    pub mode: SyncMode,
    /// Reason.
    pub reason: Reason,
    /// Phase timings.
    pub phases: Vec<PhaseTime>,
    /// Commits created.
    pub commits: Vec<String>,
    /// User files committed (or, in a dry run, that would be).
    pub files: Vec<String>,
    /// System paths left alone.
    pub system_files: Vec<String>,
    /// How the remote was integrated.
    pub integration: Integration,
    /// Whether a push landed.
    pub pushed: bool,
    /// Pushes tried.
    pub push_attempts: u32,
    /// Conflicts met in this run.
    pub conflicts: Vec<ConflictRecord>,
    /// Conflicts still open after the run (all runs).
    pub open_conflicts: usize,
    /// An interrupted earlier run that was recovered first.
    pub recovered: Option<Recovery>,
    /// Whether every writer acknowledged the pause in time.
    pub pause_acknowledged: Option<bool>,
    /// Working-tree files left as they were because they differed locally.
    pub kept_local: Vec<String>,
    /// Changed paths never committed because their names are not UTF-8
    /// (shown lossily); they stay in the working tree and the snapshot.
    pub not_utf8: Vec<String>,
}

impl SyncReport {
    fn new(opts: &SyncOptions, decision: Decision) -> Self {
        Self {
            outcome: "synced".into(),
            decision,
            snapshot: None,
            mode: opts.mode,
            reason: opts.reason,
            phases: Vec::new(),
            commits: Vec::new(),
            files: Vec::new(),
            system_files: Vec::new(),
            integration: Integration::None,
            pushed: false,
            push_attempts: 0,
            conflicts: Vec::new(),
            open_conflicts: 0,
            recovered: None,
            pause_acknowledged: None,
            kept_local: Vec::new(),
            not_utf8: Vec::new(),
        }
    }

    /// Whether the decision engine declined the run.
    pub fn skipped(&self) -> bool {
        self.outcome == "skipped"
    }
}

/// The sync engine for one workspace.
#[derive(Debug, Clone)]
pub struct SyncEngine {
    workspace: PathBuf,
    state_dir: PathBuf,
    config: Config,
    host: String,
}

struct Clock {
    t: Instant,
    phases: Vec<PhaseTime>,
}

impl Clock {
    fn new() -> Self {
        Self {
            t: Instant::now(),
            phases: Vec::new(),
        }
    }
    fn lap(&mut self, phase: &str) {
        let now = Instant::now();
        self.phases.push(PhaseTime {
            phase: phase.into(),
            ms: (now - self.t).as_secs_f64() * 1e3,
        });
        self.t = now;
    }
}

impl SyncEngine {
    /// An engine with an explicit config.
    pub fn new(
        workspace: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        config: Config,
    ) -> Self {
        Self {
            workspace: workspace.into(),
            state_dir: state_dir.into(),
            config,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
        }
    }

    /// An engine with the config loaded from `<state_dir>/config.json`.
    pub fn open(
        workspace: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
    ) -> Result<Self, Error> {
        let state_dir = state_dir.into();
        let config = Config::load(&state_dir)?;
        Ok(Self::new(workspace, state_dir, config))
    }

    /// The workspace.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The state folder.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The config in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn classifier(&self) -> Result<Classifier, Error> {
        Classifier::new(&self.workspace, &self.state_dir, &self.config.filters)
    }

    /// Pending changes split into (user, system) paths.
    pub fn pending_changes(&self) -> Result<(Vec<String>, Vec<String>), Error> {
        let repo = git::open(&self.workspace)?;
        let classifier = self.classifier()?;
        let mut user = Vec::new();
        let mut system = Vec::new();
        let (pending, _) = git::pending(&repo, &self.workspace)?;
        let verdicts = classifier.classify_all(&pending);
        for (p, v) in pending.into_iter().zip(verdicts) {
            if v.user {
                user.push(p.path);
            } else {
                system.push(p.path);
            }
        }
        Ok((user, system))
    }

    /// The decision engine: whether a run with these options goes ahead.
    ///
    /// `force`, `manual`, `startup` and `exit` always run. The automatic
    /// reasons (`scheduled`, `threshold`, `watch`) need `enabled`; `watch`
    /// then runs when user changes are pending, `scheduled` and `threshold`
    /// when `monitoring.max_file_changes_before_sync` user changes are
    /// pending or `monitoring.min_time_between_syncs` passed since the last
    /// sync. `scheduled` and `watch` runs with more than
    /// `conflict_resolution.auto_commit_threshold` user changes (when
    /// non-zero) wait for a manual sync.
    pub fn decide(&self, opts: &SyncOptions) -> Result<Decision, Error> {
        let since_last_secs = synclog::last_success(&self.state_dir)?
            .map(|e| u64::try_from((Utc::now() - e.started_at).num_seconds().max(0)).unwrap_or(0));
        let mut d = Decision {
            run: true,
            why: String::new(),
            user_changes: None,
            since_last_secs,
        };
        if opts.force {
            d.why = "forced".into();
            return Ok(d);
        }
        match opts.reason {
            Reason::Manual | Reason::Startup | Reason::Exit => {
                d.why = format!("{} sync", opts.reason);
                return Ok(d);
            }
            Reason::Watch | Reason::Scheduled | Reason::Threshold => {}
        }
        let user = self.pending_changes()?.0.len();
        d.user_changes = Some(user);
        let limit = self.config.conflict_resolution.auto_commit_threshold;
        let skip = |d: &mut Decision, why: String| {
            d.run = false;
            d.why = why;
        };
        if !self.config.enabled {
            skip(
                &mut d,
                "automatic sync is disabled (`wsync config enable`)".into(),
            );
        } else if limit > 0 && user > limit && opts.reason != Reason::Threshold {
            skip(
                &mut d,
                format!(
                    "{user} user changes exceed conflict_resolution.auto_commit_threshold ({limit}); run `wsync sync`"
                ),
            );
        } else if opts.reason == Reason::Watch {
            if user == 0 {
                skip(&mut d, "no user changes pending".into());
            } else {
                d.why = format!("{user} user changes");
            }
        } else {
            let threshold = self.config.monitoring.max_file_changes_before_sync;
            let min = self.config.monitoring.min_time_between_syncs;
            if user >= threshold && threshold > 0 {
                d.why = format!("{user} user changes ≥ threshold {threshold}");
            } else if since_last_secs.is_none_or(|s| s >= min) {
                d.why = match since_last_secs {
                    Some(s) => format!("last sync {s} s ago ≥ {min} s"),
                    None => "no earlier sync".into(),
                };
            } else {
                skip(
                    &mut d,
                    format!(
                        "last sync {} s ago (< monitoring.min_time_between_syncs {min} s) and {user} user changes (< threshold {threshold})",
                        since_last_secs.unwrap_or(0)
                    ),
                );
            }
        }
        Ok(d)
    }

    /// Runs one sync. `Err(Error::Busy)` when another sync holds the lock
    /// (nothing touched); `Ok` with `outcome == "skipped"` when the decision
    /// engine declined; any failure after the snapshot restores it and
    /// returns `Err(Error::RolledBack)`.
    pub fn run(&self, opts: &SyncOptions) -> Result<SyncReport, Error> {
        let started_at = Utc::now();
        let mut clock = Clock::new();
        if opts.dry_run {
            let decision = self.decide(opts)?;
            let mut report = SyncReport::new(opts, decision);
            report.outcome = "dry-run".into();
            let (user, system) = self.pending_changes()?;
            report.files = user;
            report.system_files = system;
            return Ok(report);
        }
        std::fs::create_dir_all(&self.state_dir).map_err(|source| Error::Io {
            path: self.state_dir.clone(),
            source,
        })?;
        let lock = SyncLock::new(&self.state_dir);
        let lock_opts = LockOptions {
            caller: if opts.caller.is_empty() {
                "wsync".into()
            } else {
                opts.caller.clone()
            },
            reason: opts.reason.as_str().into(),
            max_hold: Duration::from_secs(self.config.lock.max_hold_secs),
        };
        let wait = match opts.lock_wait {
            None => Wait::Fail,
            Some(d) => Wait::Timeout(d),
        };
        let guard = lock.acquire(&lock_opts, wait).map_err(|e| match e {
            wsync_lock::Error::Busy { path, holder } => Error::Busy {
                path,
                holder: holder.map(|h| {
                    format!(
                        "pid {} on {}, {} since {}",
                        h.pid, h.host, h.caller, h.acquired_at
                    )
                }),
            },
            other => Error::Lock(other),
        })?;
        hook(opts, Phase::Locked);
        clock.lap("lock");
        let recovered = self.recover_locked()?;
        let repo = git::open(&self.workspace)?;
        crate::workspace::exclude_state_dir(&repo, &self.workspace, &self.state_dir)?;
        let target = git::preflight(
            &repo,
            &self.workspace,
            &self.config.remote.name,
            self.config.remote.branch.as_deref(),
        )?;
        let decision = self.decide(opts)?;
        let mut report = SyncReport::new(opts, decision);
        report.recovered = recovered;
        if !report.decision.run {
            report.outcome = "skipped".into();
            clock.lap("decide");
            report.phases = clock.phases;
            self.log(
                &report,
                started_at,
                "skipped",
                Some(report.decision.why.clone()),
            )?;
            drop(guard);
            return Ok(report);
        }
        let gate = PauseGate::new(&self.state_dir);
        let pause = gate.pause(&PauseOptions {
            reason: format!("wsync {} ({})", opts.mode.as_str(), opts.reason),
            ack_timeout: Duration::from_secs(self.config.pause.ack_timeout_secs),
            max_pause: Duration::from_secs(self.config.pause.max_secs),
        })?;
        report.pause_acknowledged = Some(pause.acknowledged());
        clock.lap("pause");
        // The filter is built (and every process's command line read) on
        // another thread meanwhile: the snapshot mostly waits for files
        // edited a moment ago to settle.
        let classifier = {
            let (ws, state, filters) = (
                self.workspace.clone(),
                self.state_dir.clone(),
                self.config.filters.clone(),
            );
            std::thread::Builder::new()
                .name("wsync-filter".into())
                .spawn(move || {
                    let c = Classifier::new(&ws, &state, &filters)?;
                    c.prepare();
                    Ok::<_, Error>(c)
                })
                .map_err(|source| Error::Io {
                    path: self.state_dir.clone(),
                    source,
                })?
        };
        // The fetch runs beside the snapshot and the commit: it only moves
        // the remote-tracking ref, which neither of them reads.
        let mut early = if opts.mode == SyncMode::Push {
            None
        } else {
            Some(git::FetchInFlight::start(&self.workspace, &target)?)
        };
        let snapshot = snap::capture(
            &repo,
            &self.workspace,
            &self.state_dir,
            opts.live_snapshots.as_deref(),
            &format!("{} {}", opts.mode.as_str(), opts.reason),
            self.config.snapshots.bundles,
            if report.pause_acknowledged == Some(true) {
                "paused"
            } else {
                "pause not acknowledged"
            },
        )?;
        let captured = snapshot;
        let snapshot = captured.id.clone();
        report.snapshot = Some(snapshot.clone());
        let mut journal = Journal {
            snapshot: snapshot.clone(),
            pid: std::process::id(),
            started_at,
            phase: "snapshot".into(),
            branch: target.branch.clone(),
            head_before: git::ref_oid(&repo, &target.local_ref()).map(|o| o.to_string()),
        };
        journal.write(&self.state_dir)?;
        clock.lap("snapshot");
        hook(opts, Phase::Snapshot);
        let outcome = self.phases(
            &repo,
            &target,
            &captured,
            opts,
            &mut journal,
            &mut report,
            &mut clock,
            &mut early,
            classifier,
        );
        // Never left running behind a rollback.
        drop(early);
        let result = match outcome {
            Ok(()) => {
                conflicts::append_conflicts(&self.state_dir, &report.conflicts)?;
                Ok(())
            }
            Err(err) => {
                // Restore the workspace to the snapshot, whatever went wrong.
                drop(repo);
                match snap::restore(&self.workspace, &self.state_dir, &snapshot) {
                    Ok(_) => Err(Error::RolledBack {
                        snapshot: snapshot.clone(),
                        source: Box::new(err),
                    }),
                    Err(restore) => Err(Error::RollbackFailed {
                        snapshot: snapshot.clone(),
                        source: Box::new(err),
                        restore: Box::new(restore),
                    }),
                }
            }
        };
        let pause_result = pause.release();
        clock.lap("finish");
        report.phases = std::mem::take(&mut clock.phases);
        let (label, message) = match &result {
            Ok(()) => ("ok", None),
            Err(Error::RollbackFailed { .. }) => {
                ("failed", result.as_ref().err().map(ToString::to_string))
            }
            Err(e) => ("rolled_back", Some(e.to_string())),
        };
        let _ = snap::write_result(
            &self.workspace,
            &self.state_dir,
            &snapshot,
            &serde_json::json!({
                "result": label,
                "message": message,
                "commits": report.commits,
                "files": report.files.len(),
                "integration": report.integration.as_str(),
                "pushed": report.pushed,
                "conflicts": report.conflicts.len(),
                "finished_at": Utc::now(),
            }),
        );
        self.log(&report, started_at, label, message)?;
        if !matches!(result, Err(Error::RollbackFailed { .. })) {
            // A failed rollback keeps the journal so the next run retries it.
            Journal::remove(&self.state_dir)?;
        }
        let _ = snap::cleanup(
            &self.workspace,
            &self.state_dir,
            self.config.snapshots.keep,
            self.config.snapshots.max_age_days,
        );
        drop(guard);
        result?;
        pause_result?;
        report.open_conflicts = conflicts::open_conflicts(&self.workspace, &self.state_dir)?.len();
        Ok(report)
    }

    fn log(
        &self,
        report: &SyncReport,
        started_at: DateTime<Utc>,
        result: &str,
        message: Option<String>,
    ) -> Result<(), Error> {
        let entry = LogEntry {
            started_at,
            duration_ms: report.phases.iter().map(|p| p.ms).sum(),
            result: result.into(),
            mode: report.mode.as_str().into(),
            reason: report.reason.as_str().into(),
            forced: report.decision.why == "forced",
            snapshot: report.snapshot.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            phases: report.phases.clone(),
            commits: report.commits.clone(),
            files: report.files.clone(),
            system_files: report.system_files.len(),
            integration: report.integration.as_str().into(),
            pushed: report.pushed,
            conflicts: report.conflicts.len(),
            message,
        };
        synclog::append(&self.state_dir, &entry)
    }

    #[allow(clippy::too_many_arguments)]
    fn phases(
        &self,
        repo: &Repository,
        target: &Target,
        captured: &snap::Captured,
        opts: &SyncOptions,
        journal: &mut Journal,
        report: &mut SyncReport,
        clock: &mut Clock,
        early: &mut Option<git::FetchInFlight>,
        classifier: std::thread::JoinHandle<Result<Classifier, Error>>,
    ) -> Result<(), Error> {
        let t = Instant::now();
        let classifier = classifier.join().map_err(|_| Error::Io {
            path: self.state_dir.clone(),
            source: std::io::Error::other("the filter thread panicked"),
        })??;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "filter setup");
        // An unborn branch (a fresh clone target) takes the remote first,
        // so local files land on top of its history instead of beside it.
        let unborn = git::ref_oid(repo, &target.local_ref()).is_none();
        let integrate_first = unborn && opts.mode != SyncMode::Push;
        if integrate_first {
            self.fetch_and_integrate(
                repo,
                target,
                &classifier,
                opts,
                journal,
                report,
                clock,
                early,
            )?;
        }
        check_cancel(opts, "commit")?;
        journal.advance(&self.state_dir, "commit")?;
        // What changed is what the snapshot recorded (no second scan of
        // the working tree); after integrating first, the tree moved on.
        let (pending, not_utf8) = if integrate_first {
            git::pending(repo, &self.workspace)?
        } else {
            git::pending_from_snapshot(
                repo,
                &self.workspace,
                &captured.commit,
                &captured.index_commit,
            )?
        };
        report.not_utf8 = not_utf8;
        self.commit_user_changes(repo, &classifier, pending, opts.reason, report)?;
        clock.lap("commit");
        hook(opts, Phase::Committed);
        // With a new local commit, push first: a push that is accepted
        // proves the remote had nothing we lack (it was a fast-forward), so
        // the fetch is skipped; a rejected one fetches, integrates, retries.
        // (A fetch started with the run makes this moot: it has mostly
        // finished by now, so integrating first costs no round trip.)
        let optimistic = opts.mode == SyncMode::Sync
            && !integrate_first
            && !report.commits.is_empty()
            && early.is_none();
        if opts.mode != SyncMode::Push && !integrate_first && !optimistic {
            self.fetch_and_integrate(
                repo,
                target,
                &classifier,
                opts,
                journal,
                report,
                clock,
                early,
            )?;
        }
        if opts.mode == SyncMode::Pull {
            return Ok(());
        }
        self.push_with_retries(
            repo,
            target,
            &classifier,
            opts,
            journal,
            report,
            clock,
            optimistic,
            early,
        )?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn fetch_and_integrate(
        &self,
        repo: &Repository,
        target: &Target,
        classifier: &Classifier,
        opts: &SyncOptions,
        journal: &mut Journal,
        report: &mut SyncReport,
        clock: &mut Clock,
        early: &mut Option<git::FetchInFlight>,
    ) -> Result<(), Error> {
        let ws = &self.workspace;
        {
            check_cancel(opts, "fetch")?;
            journal.advance(&self.state_dir, "fetch")?;
            // The fetch started with the run, if there is one (only the
            // first time: a rejected push must fetch again).
            let remote = match early.take() {
                Some(f) => f.finish(repo, ws, target)?,
                None => git::fetch(repo, ws, target)?,
            };
            clock.lap("fetch");
            hook(opts, Phase::Fetched);
            check_cancel(opts, "integrate")?;
            journal.advance(&self.state_dir, "integrate")?;
            self.integrate(repo, target, remote, classifier, opts, report)?;
            clock.lap("integrate");
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn push_with_retries(
        &self,
        repo: &Repository,
        target: &Target,
        classifier: &Classifier,
        opts: &SyncOptions,
        journal: &mut Journal,
        report: &mut SyncReport,
        clock: &mut Clock,
        optimistic: bool,
        early: &mut Option<git::FetchInFlight>,
    ) -> Result<(), Error> {
        let ws = &self.workspace;
        // An optimistic first push that is rejected is not a retry.
        let retries = self.config.remote.push_retries + u32::from(optimistic);
        loop {
            let local = git::ref_oid(repo, &target.local_ref());
            let tracking = git::ref_oid(repo, &target.tracking_ref());
            if local.is_none() || (local == tracking && opts.mode == SyncMode::Sync) {
                // Nothing of ours that the remote lacks.
                break;
            }
            check_cancel(opts, "push")?;
            journal.advance(&self.state_dir, "push")?;
            hook(opts, Phase::Push);
            report.push_attempts += 1;
            let pushed = git::push(ws, target)?;
            clock.lap("push");
            match pushed {
                PushOutcome::Pushed => {
                    report.pushed = true;
                    if let Some(l) = local {
                        // Keep the tracking ref in step, as `git push` does.
                        let _ = repo.reference(&target.tracking_ref(), l, true, "wsync: push");
                    }
                    journal.advance(&self.state_dir, "pushed")?;
                    break;
                }
                PushOutcome::Rejected(detail) => {
                    if opts.mode == SyncMode::Push || report.push_attempts > retries {
                        return Err(Error::PushRejected {
                            remote: target.remote.clone(),
                            attempts: report.push_attempts,
                            detail: if opts.mode == SyncMode::Push {
                                format!("{detail} (the remote has new commits: run `wsync sync`)")
                            } else {
                                detail
                            },
                        });
                    }
                    tracing::info!(%detail, "push rejected; fetching and integrating");
                    self.fetch_and_integrate(
                        repo, target, classifier, opts, journal, report, clock, early,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn signature(&self, repo: &Repository) -> Result<Signature<'static>, Error> {
        repo.signature().or_else(|_| {
            Signature::now(
                "wsync",
                &format!("wsync@{}", conflicts::sanitize_host(&self.host)),
            )
            .map_err(Error::git(&self.workspace, "make a signature"))
        })
    }

    /// Stages the user's changes (only those) and commits them.
    fn commit_user_changes(
        &self,
        repo: &Repository,
        classifier: &Classifier,
        pending: Vec<git::Pending>,
        reason: Reason,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let ws = &self.workspace;
        let mut index = repo.index().map_err(Error::git(ws, "read the index"))?;
        // The snapshot read it through this repository; read it again only
        // if someone (`git add` meanwhile) rewrote the file since.
        index
            .read(false)
            .map_err(Error::git(ws, "read the index"))?;
        let head = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let mut unstage = Vec::new();
        let mut files = Vec::new();
        let t = Instant::now();
        let verdicts = classifier.classify_all(&pending);
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "classify");
        for (p, v) in pending.into_iter().zip(verdicts) {
            if p.path.ends_with('/') {
                continue; // a nested repository
            }
            if v.user {
                let path = Path::new(&p.path);
                if p.deleted {
                    index.remove_path(path)
                } else {
                    index.add_path(path)
                }
                .map_err(Error::git(ws, format!("stage {}", p.path)))?;
                files.push(p.path);
            } else {
                if p.staged {
                    unstage.push(p.path.clone());
                }
                report.system_files.push(p.path);
            }
        }
        let t = Instant::now();
        // The tree first: writing it fills the index's tree cache, which is
        // then saved with the index, so the next snapshot, `git status` and
        // `git commit` reuse it instead of rebuilding every tree.
        let mut tree_id = index
            .write_tree()
            .map_err(Error::git(ws, "write the tree"))?;
        index.write().map_err(Error::git(ws, "write the index"))?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "index write");
        if !unstage.is_empty() {
            // A system path someone staged is put back to HEAD in the index
            // only; its working file stays as it is.
            match &head {
                Some(h) => repo
                    .reset_default(Some(h.as_object()), unstage.iter())
                    .map_err(Error::git(ws, "unstage system paths"))?,
                None => {
                    for p in &unstage {
                        index
                            .remove_path(Path::new(p))
                            .map_err(Error::git(ws, format!("unstage {p}")))?;
                    }
                    index.write().map_err(Error::git(ws, "write the index"))?;
                }
            }
            index = repo.index().map_err(Error::git(ws, "read the index"))?;
            tree_id = index
                .write_tree()
                .map_err(Error::git(ws, "write the tree"))?;
            index.write().map_err(Error::git(ws, "write the index"))?;
        }
        if head.as_ref().map(Commit::tree_id) == Some(tree_id)
            || (head.is_none() && files.is_empty())
        {
            return Ok(());
        }
        let tree = repo
            .find_tree(tree_id)
            .map_err(Error::git(ws, "find the tree"))?;
        let sig = self.signature(repo)?;
        let message = self
            .config
            .commit
            .render(&self.host, reason.as_str(), &files);
        let parents: Vec<&Commit<'_>> = head.iter().collect();
        let oid = repo
            .commit(Some("HEAD"), &sig, &sig, &message, &tree, &parents)
            .map_err(Error::git(ws, "commit"))?;
        report.commits.push(oid.to_string());
        report.files = files;
        Ok(())
    }

    /// Brings the remote commit in: fast-forward, or a three-way merge with
    /// conflicts settled per strategy. Checks out only what changed.
    fn integrate(
        &self,
        repo: &Repository,
        target: &Target,
        remote: Option<Oid>,
        classifier: &Classifier,
        opts: &SyncOptions,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let ws = &self.workspace;
        let Some(remote) = remote else {
            return Ok(());
        };
        let local = git::ref_oid(repo, &target.local_ref());
        let remote_commit = repo
            .find_commit(remote)
            .map_err(Error::git(ws, "find the remote commit"))?;
        let Some(local) = local else {
            // Unborn branch: take the remote as it is.
            self.checkout_and_move(repo, target, None, &remote_commit, classifier, opts, report)?;
            report.integration = Integration::FastForward;
            return Ok(());
        };
        if local == remote {
            report.integration = Integration::UpToDate;
            return Ok(());
        }
        let base = repo.merge_base(local, remote).map_err(|e| Error::Refused {
            path: ws.clone(),
            why: format!("the local and remote branches share no history ({e})"),
        })?;
        let local_commit = repo
            .find_commit(local)
            .map_err(Error::git(ws, "find HEAD"))?;
        if base == remote {
            report.integration = Integration::UpToDate;
            return Ok(());
        }
        if base == local {
            self.checkout_and_move(
                repo,
                target,
                Some(&local_commit),
                &remote_commit,
                classifier,
                opts,
                report,
            )?;
            report.integration = Integration::FastForward;
            return Ok(());
        }
        let t = Instant::now();
        let mut index = repo
            .merge_commits(&local_commit, &remote_commit, None)
            .map_err(Error::git(ws, "merge"))?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "merge");
        let mut conflicts = Vec::new();
        if index.has_conflicts() {
            let ctx = MergeCtx {
                strategy: self.config.conflict_resolution.strategy,
                classifier,
                host: &self.host,
                now: Utc::now(),
                local_commit: local.to_string(),
                remote_commit: remote.to_string(),
                max_copies: self.config.conflict_resolution.max_copies_per_file,
            };
            conflicts = conflicts::resolve_index(&mut index, &ctx, ws)?;
        }
        let t = Instant::now();
        let local_tree = local_commit
            .tree()
            .map_err(Error::git(ws, "read HEAD's tree"))?;
        let tree_id = match git::tree_from_index(repo, &local_tree, &index) {
            Ok(id) => {
                debug_assert_eq!(
                    Some(id),
                    index.write_tree_to(repo).ok(),
                    "the incremental merged tree must equal the full one"
                );
                id
            }
            Err(e) => {
                tracing::debug!(%e, "incremental tree failed; writing the whole index");
                index
                    .write_tree_to(repo)
                    .map_err(Error::git(ws, "write the merged tree"))?
            }
        };
        let tree = repo
            .find_tree(tree_id)
            .map_err(Error::git(ws, "find the merged tree"))?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "merged tree");
        let sig = self.signature(repo)?;
        let mut message = format!(
            "wsync: merge {}/{} into {} on {}\n",
            target.remote, target.remote_branch, target.branch, self.host
        );
        if !conflicts.is_empty() {
            message.push_str("\nConflicts:\n");
            for c in &conflicts {
                message.push_str(&format!(
                    "  {} ({}, kept {}{})\n",
                    c.path,
                    c.strategy,
                    c.kept,
                    c.copy
                        .as_ref()
                        .map(|p| format!(", remote version in {p}"))
                        .unwrap_or_default()
                ));
            }
        }
        let merge = repo
            .commit(
                None,
                &sig,
                &sig,
                &message,
                &tree,
                &[&local_commit, &remote_commit],
            )
            .map_err(Error::git(ws, "commit the merge"))?;
        let merge_commit = repo
            .find_commit(merge)
            .map_err(Error::git(ws, "find the merge"))?;
        self.checkout_and_move(
            repo,
            target,
            Some(&local_commit),
            &merge_commit,
            classifier,
            opts,
            report,
        )?;
        report.commits.push(merge.to_string());
        report.conflicts.extend(conflicts);
        report.integration = Integration::Merge;
        Ok(())
    }

    /// Checks out `to` over `from` (only what changed, never overwriting a
    /// file that differs locally), then moves the branch to it.
    #[allow(clippy::too_many_arguments)]
    fn checkout_and_move(
        &self,
        repo: &Repository,
        target: &Target,
        from: Option<&Commit<'_>>,
        to: &Commit<'_>,
        classifier: &Classifier,
        opts: &SyncOptions,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let ws = &self.workspace;
        let to_tree: Tree<'_> = to.tree().map_err(Error::git(ws, "read the tree"))?;
        let kept = RefCell::new(Vec::<String>::new());
        {
            let mut cb = CheckoutBuilder::new();
            cb.safe()
                .allow_conflicts(true)
                .notify_on(CheckoutNotificationType::CONFLICT)
                .notify(|_, path, _, _, _| {
                    if let Some(p) = path {
                        kept.borrow_mut().push(p.to_string_lossy().into_owned());
                    }
                    true
                });
            let hook_fn = opts.on_phase.clone();
            cb.progress(move |_, done, total| {
                if done == 1
                    && total >= 2
                    && let Some(h) = &hook_fn
                {
                    h(Phase::Checkout);
                }
            });
            let mut needed = true;
            match from {
                // Only the paths that differ between the trees are looked
                // at and written.
                Some(f) => {
                    let from_tree = f.tree().map_err(Error::git(ws, "read the tree"))?;
                    let paths = git::changed_paths(repo, ws, &from_tree, &to_tree)?;
                    needed = !paths.is_empty();
                    for p in paths {
                        cb.path(p);
                    }
                    cb.disable_pathspec_match(true);
                }
                None => {
                    cb.recreate_missing(true);
                }
            }
            let t = Instant::now();
            if needed {
                repo.checkout_tree(to_tree.as_object(), Some(&mut cb))
                    .map_err(Error::git(ws, "check out"))?;
            }
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "checkout");
        }
        repo.reference(
            &target.local_ref(),
            to.id(),
            true,
            &format!("wsync: {} {}", report.mode.as_str(), to.id()),
        )
        .map_err(Error::git(ws, "move the branch"))?;
        let kept = kept.into_inner();
        if !kept.is_empty() {
            // Local files that differ were left alone; the index follows the
            // new commit so they show as local modifications.
            repo.reset_default(Some(to.as_object()), kept.iter())
                .map_err(Error::git(ws, "update the index"))?;
            for path in &kept {
                if let Some(record) = self.keep_both(repo, &to_tree, path, classifier, to)? {
                    report.conflicts.push(record);
                }
            }
            report.kept_local.extend(kept);
        }
        Ok(())
    }

    /// A user file that changed locally while the sync ran (after its
    /// changes were committed) and that the remote also changed: the local
    /// version stays, the incoming one is written beside it as a conflict
    /// copy (committed by the next sync), so neither is lost.
    fn keep_both(
        &self,
        repo: &Repository,
        to_tree: &Tree<'_>,
        path: &str,
        classifier: &Classifier,
        to: &Commit<'_>,
    ) -> Result<Option<ConflictRecord>, Error> {
        if classifier.is_system_path(path) || conflicts::is_conflict_copy(path) {
            return Ok(None);
        }
        let Ok(entry) = to_tree.get_path(Path::new(path)) else {
            return Ok(None);
        };
        let Ok(blob) = repo.find_blob(entry.id()) else {
            return Ok(None);
        };
        let local = self.workspace.join(path);
        if std::fs::read(&local).is_ok_and(|b| b == blob.content()) {
            return Ok(None);
        }
        let now = Utc::now();
        let mut name = conflicts::conflict_copy_name(path, now, &self.host);
        let mut n = 1;
        while self.workspace.join(&name).symlink_metadata().is_ok() {
            name = format!(
                "{}-{n}",
                conflicts::conflict_copy_name(path, now, &self.host)
            );
            n += 1;
        }
        crate::fsutil::write_atomic(&self.workspace.join(&name), blob.content())?;
        Ok(Some(ConflictRecord {
            time: now,
            path: path.to_owned(),
            copy: Some(name),
            strategy: crate::config::Strategy::Manual.as_str().into(),
            kept: "ours".into(),
            note: Some(
                "changed locally while the sync ran; the incoming version is beside it".into(),
            ),
            local_commit: String::new(),
            remote_commit: to.id().to_string(),
            host: self.host.clone(),
        }))
    }

    /// Recovers from a killed run, if `<state>/sync-in-progress.json` says
    /// there was one. Takes the lock (fails with `Busy` if a sync runs).
    pub fn recover(&self) -> Result<Option<Recovery>, Error> {
        let lock = SyncLock::new(&self.state_dir);
        let guard = lock
            .acquire(
                &LockOptions {
                    caller: "wsync recover".into(),
                    reason: "recover".into(),
                    max_hold: Duration::from_secs(self.config.lock.max_hold_secs),
                },
                Wait::Fail,
            )
            .map_err(|e| match e {
                wsync_lock::Error::Busy { path, .. } => Error::Busy { path, holder: None },
                other => Error::Lock(other),
            })?;
        let r = self.recover_locked();
        drop(guard);
        r
    }

    /// Recovery with the lock already held by us: the journal's writer is
    /// dead. Before the push landed, the workspace is restored to the
    /// journal's snapshot (the restore snapshots the state found first, so
    /// nothing is lost either way); after it, the run had finished its git
    /// work and only the bookkeeping is redone.
    fn recover_locked(&self) -> Result<Option<Recovery>, Error> {
        let Some(journal) = Journal::read(&self.state_dir)? else {
            return Ok(None);
        };
        tracing::warn!(snapshot = %journal.snapshot, phase = %journal.phase, "recovering an interrupted sync");
        // The restore snapshots the current state first: writers must be
        // paused, or a file they keep rewriting never captures and the
        // recovery (and so every later sync) fails for as long as they run.
        let gate = PauseGate::new(&self.state_dir);
        let _pause = gate.pause(&PauseOptions {
            reason: "wsync recover".into(),
            ack_timeout: Duration::from_secs(self.config.pause.ack_timeout_secs),
            max_pause: Duration::from_secs(self.config.pause.max_secs),
        })?;
        self.clear_stale_git_locks(&journal);
        let mut recovery = Recovery {
            journal: journal.clone(),
            restored: false,
            safety_snapshot: None,
        };
        if journal.phase != "pushed" {
            let safety = snap::restore(&self.workspace, &self.state_dir, &journal.snapshot)?;
            recovery.restored = true;
            recovery.safety_snapshot = safety;
        }
        let _ = snap::write_result(
            &self.workspace,
            &self.state_dir,
            &journal.snapshot,
            &serde_json::json!({
                "result": "interrupted",
                "phase": journal.phase,
                "restored": recovery.restored,
                "safety_snapshot": recovery.safety_snapshot,
                "recovered_at": Utc::now(),
            }),
        );
        let entry = LogEntry {
            started_at: journal.started_at,
            duration_ms: 0.0,
            result: "recovered".into(),
            mode: String::new(),
            reason: String::new(),
            forced: false,
            snapshot: Some(journal.snapshot.clone()),
            host: self.host.clone(),
            pid: journal.pid,
            phases: Vec::new(),
            commits: Vec::new(),
            files: Vec::new(),
            system_files: 0,
            integration: String::new(),
            pushed: journal.phase == "pushed",
            conflicts: 0,
            message: Some(format!(
                "run interrupted during {}; {}",
                journal.phase,
                if recovery.restored {
                    "workspace restored to its snapshot"
                } else {
                    "its push had landed; nothing to restore"
                }
            )),
        };
        synclog::append(&self.state_dir, &entry)?;
        Journal::remove(&self.state_dir)?;
        Ok(Some(recovery))
    }

    /// Removes git lock files a killed run of ours left behind (only those
    /// created after the run started).
    fn clear_stale_git_locks(&self, journal: &Journal) {
        let Ok(repo) = git::open(&self.workspace) else {
            return;
        };
        let git_dir = repo.path().to_path_buf();
        let mut candidates = vec![
            git_dir.join("index.lock"),
            git_dir.join("HEAD.lock"),
            git_dir.join("ORIG_HEAD.lock"),
            git_dir.join("packed-refs.lock"),
            git_dir.join(format!("refs/heads/{}.lock", journal.branch)),
        ];
        // A fetch killed while updating the remote-tracking branch leaves
        // `refs/remotes/<remote>/<branch>.lock`, which fails every later fetch.
        let mut dirs = vec![git_dir.join("refs/remotes").join(&self.config.remote.name)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "lock") {
                    candidates.push(path);
                }
            }
        }
        let since: std::time::SystemTime = journal.started_at.into();
        for lock in candidates {
            let stale = lock
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m + Duration::from_secs(2) >= since);
            if stale {
                tracing::warn!(path = %lock.display(), "removing a git lock left by the interrupted run");
                let _ = std::fs::remove_file(&lock);
            }
        }
    }
}

fn hook(opts: &SyncOptions, phase: Phase) {
    if let Some(h) = &opts.on_phase {
        h(phase);
    }
}

fn check_cancel(opts: &SyncOptions, phase: &str) -> Result<(), Error> {
    if opts
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(Ordering::SeqCst))
    {
        return Err(Error::Cancelled {
            phase: phase.into(),
        });
    }
    Ok(())
}
