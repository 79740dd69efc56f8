//! Draining the queue through a [`SyncRunner`] under the rate limits, the
//! retry policy and the circuit breaker.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use wsync_snapshot::{LiveOptions, LiveScan, SnapshotStore};

use crate::queue::{
    Finish, Priority, Queue, QueueEntry, Result, SharedClock, pid_alive, system_clock,
};
use crate::ratelimit::{RateLimitConfig, RateLimiter};
use crate::retry::{CircuitBreaker, RetryConfig};
use crate::{Reason, SyncEngine, SyncOptions};

/// What the runner gets besides the entry.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// Set when the daemon is asked to stop: the runner finishes or rolls
    /// back its sync and returns.
    pub cancel: Arc<AtomicBool>,
}

/// How one sync run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The sync ran to the end.
    Synced {
        /// Whether it created a user commit.
        committed: bool,
        /// One line for the history and the log.
        detail: String,
    },
    /// The decision engine declined (nothing to do, too soon, …).
    Skipped {
        /// Why.
        detail: String,
    },
    /// Another sync holds the lock; try again soon without counting.
    Busy {
        /// Who holds it.
        detail: String,
    },
    /// The sync failed (and was rolled back).
    Failed {
        /// The error.
        error: String,
    },
}

/// Runs one sync for a queue entry. The CLI implements it over the
/// coordinator's sync engine; a host may implement it over anything.
pub trait SyncRunner {
    /// Runs the sync `entry` asks for.
    fn run(&mut self, entry: &QueueEntry, ctx: &RunContext) -> RunOutcome;
}

impl<F: FnMut(&QueueEntry, &RunContext) -> RunOutcome> SyncRunner for F {
    fn run(&mut self, entry: &QueueEntry, ctx: &RunContext) -> RunOutcome {
        self(entry, ctx)
    }
}

/// A [`SyncRunner`] over the coordinator's [`SyncEngine`]: the config is
/// re-read for every run, `watch`/`scheduled`/`startup`/`exit`/`threshold`
/// requests run with that reason (so the decision engine applies), other
/// types run as manual syncs, and critical requests are forced.
#[derive(Debug, Clone)]
pub struct EngineRunner {
    workspace: PathBuf,
    state_dir: PathBuf,
    /// How long a run waits for the sync lock before reporting busy.
    pub lock_wait: Duration,
    /// Keep a watching snapshot scan across runs, so pre-sync snapshots
    /// cost O(changed) (default true).
    pub live_snapshots: bool,
    /// How that scan is set up (the application passes what only the
    /// environment tells, such as [`LiveOptions::attribute_files`]).
    pub live_options: LiveOptions,
    live: Option<Arc<Mutex<LiveScan>>>,
}

impl EngineRunner {
    /// A runner for `workspace` with its state folder.
    pub fn new(workspace: &Path, state_dir: &Path) -> Self {
        Self {
            workspace: workspace.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            lock_wait: Duration::from_secs(5),
            live_snapshots: true,
            live_options: LiveOptions::default(),
            live: None,
        }
    }

    /// The live snapshot scan, started on first use (`None` when turned
    /// off or when it cannot start; the run then scans the whole tree).
    fn live(&mut self) -> Option<Arc<Mutex<LiveScan>>> {
        if !self.live_snapshots {
            return None;
        }
        if self.live.is_none() {
            self.live = SnapshotStore::open(&self.workspace, &self.state_dir)
                .and_then(|s| s.live(&self.live_options))
                .ok()
                .map(|l| Arc::new(Mutex::new(l)));
        }
        self.live.clone()
    }

    /// The engine options for an entry.
    pub fn options(&self, entry: &QueueEntry, ctx: &RunContext) -> SyncOptions {
        SyncOptions {
            reason: entry.sync_type.parse::<Reason>().unwrap_or(Reason::Manual),
            force: entry.priority == Priority::Critical,
            caller: format!("wsync queue {} ({})", entry.id, entry.caller),
            lock_wait: Some(self.lock_wait),
            cancel: Some(ctx.cancel.clone()),
            ..SyncOptions::default()
        }
    }
}

impl SyncRunner for EngineRunner {
    fn run(&mut self, entry: &QueueEntry, ctx: &RunContext) -> RunOutcome {
        let engine = match SyncEngine::open(&self.workspace, &self.state_dir) {
            Ok(e) => e,
            Err(e) => {
                return RunOutcome::Failed {
                    error: e.to_string(),
                };
            }
        };
        let opts = SyncOptions {
            live_snapshots: self.live(),
            ..self.options(entry, ctx)
        };
        match engine.run(&opts) {
            Ok(r) if r.skipped() => RunOutcome::Skipped {
                detail: r.decision.why,
            },
            Ok(r) => RunOutcome::Synced {
                committed: !r.files.is_empty(),
                detail: format!(
                    "{} file(s) committed, {} system path(s) left alone, integration {:?}, pushed {}, {} conflict(s)",
                    r.files.len(),
                    r.system_files.len(),
                    r.integration,
                    r.pushed,
                    r.conflicts.len()
                ),
            },
            Err(e) if e.is_busy() => RunOutcome::Busy {
                detail: e.to_string(),
            },
            Err(e) => RunOutcome::Failed {
                error: e.to_string(),
            },
        }
    }
}

/// What happened to one claimed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Processed {
    /// The ticket.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub sync_type: String,
    /// `done`, `skipped`, `deferred`, `retry`, `failed`, `interrupted`.
    pub outcome: &'static str,
    /// Detail, error or refusal.
    pub detail: String,
    /// When it may run again (deferred or retry).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Wall time of the run in milliseconds (0 when it did not run).
    pub ms: u64,
}

/// The queue, limits, breaker and retry policy of one state folder.
#[derive(Debug, Clone)]
pub struct Processor {
    queue: Queue,
    limiter: RateLimiter,
    breaker: CircuitBreaker,
    retry: RetryConfig,
    clock: SharedClock,
    busy_retry: Duration,
}

impl Processor {
    /// On the system clock.
    pub fn new(state_dir: &Path, limits: RateLimitConfig, retry: RetryConfig) -> Self {
        Self::with_clock(state_dir, limits, retry, system_clock())
    }

    /// On `clock`.
    pub fn with_clock(
        state_dir: &Path,
        limits: RateLimitConfig,
        retry: RetryConfig,
        clock: SharedClock,
    ) -> Self {
        Self {
            queue: Queue::with_clock(state_dir, clock.clone()),
            limiter: RateLimiter::with_clock(state_dir, limits, clock.clone()),
            breaker: CircuitBreaker::with_clock(state_dir, retry.clone(), clock.clone()),
            retry,
            clock,
            busy_retry: Duration::from_secs(2),
        }
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The circuit breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Quarantines corrupt queue, rate-limit and circuit files (each kept as
    /// `<name>.corrupt-<ts>`) and returns the kept copies.
    pub fn recover(&self) -> Result<Vec<PathBuf>> {
        let mut kept = Vec::new();
        kept.extend(self.queue.recover()?);
        kept.extend(self.limiter.recover()?);
        kept.extend(self.breaker.recover()?);
        Ok(kept)
    }

    /// Claims and runs due entries until none is due, `cancel` is set or
    /// `max` entries were handled.
    pub fn drain(
        &self,
        runner: &mut dyn SyncRunner,
        cancel: &Arc<AtomicBool>,
        max: usize,
    ) -> Result<Vec<Processed>> {
        let mut out = Vec::new();
        while out.len() < max && !cancel.load(Ordering::SeqCst) {
            match self.process_one(runner, cancel)? {
                Some(p) => out.push(p),
                None => break,
            }
        }
        Ok(out)
    }

    /// Claims the next due entry and runs it; `None` when nothing is due.
    pub fn process_one(
        &self,
        runner: &mut dyn SyncRunner,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Option<Processed>> {
        let Some(entry) = self.queue.claim_next(std::process::id(), pid_alive)? else {
            return Ok(None);
        };
        let critical = entry.priority == Priority::Critical;
        let auto = entry.sync_type != "manual";
        // A sync may commit, so the commit limits defer it as well.
        let refusal = match self.breaker.allow(critical)? {
            Some(r) => Some(r),
            None => match self.limiter.sync_allowed(critical)? {
                Some(r) => Some(r),
                None => self.limiter.commit_allowed(critical, auto)?,
            },
        };
        if let Some(r) = refusal {
            tracing::info!(id = %entry.id, "deferred: {r}");
            self.queue.finish(
                &entry.id,
                &Finish::Retry {
                    at: r.until,
                    why: r.to_string(),
                    counts: false,
                },
            )?;
            return Ok(Some(processed(
                &entry,
                "deferred",
                r.to_string(),
                Some(r.until),
                0,
            )));
        }
        let ctx = RunContext {
            cancel: cancel.clone(),
        };
        let start = std::time::Instant::now();
        let outcome = runner.run(&entry, &ctx);
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let now = self.clock.now();
        Ok(Some(match outcome {
            RunOutcome::Synced { committed, detail } => {
                // Only runs that did git work count against the limits.
                self.limiter.record_sync()?;
                self.breaker.record_success()?;
                if committed {
                    self.limiter.record_commit(auto)?;
                }
                self.queue.finish(
                    &entry.id,
                    &Finish::Done {
                        detail: detail.clone(),
                    },
                )?;
                processed(&entry, "done", detail, None, ms)
            }
            RunOutcome::Skipped { detail } => {
                self.queue.finish(
                    &entry.id,
                    &Finish::Done {
                        detail: format!("skipped: {detail}"),
                    },
                )?;
                processed(&entry, "skipped", detail, None, ms)
            }
            RunOutcome::Busy { detail } => {
                let at = now + chrono::Duration::from_std(self.busy_retry).unwrap_or_default();
                self.queue.finish(
                    &entry.id,
                    &Finish::Retry {
                        at,
                        why: format!("busy: {detail}"),
                        counts: false,
                    },
                )?;
                processed(&entry, "deferred", detail, Some(at), ms)
            }
            RunOutcome::Failed { error } if cancel.load(Ordering::SeqCst) => {
                // Stopped by shutdown (the engine rolled back): not a failure.
                self.queue.finish(
                    &entry.id,
                    &Finish::Retry {
                        at: now,
                        why: format!("interrupted by shutdown: {error}"),
                        counts: false,
                    },
                )?;
                processed(&entry, "interrupted", error, Some(now), ms)
            }
            RunOutcome::Failed { error } => {
                self.limiter.record_sync()?;
                let st = self.breaker.record_failure(&error)?;
                tracing::warn!(id = %entry.id, attempts = entry.attempts, circuit = ?st.state, "sync failed: {error}");
                if entry.attempts >= self.retry.max_attempts.max(1) {
                    self.queue.finish(
                        &entry.id,
                        &Finish::Failed {
                            error: format!("gave up after {} attempts: {error}", entry.attempts),
                        },
                    )?;
                    processed(&entry, "failed", error, None, ms)
                } else {
                    let delay = self.retry.backoff_jittered(entry.attempts);
                    let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                    self.queue.finish(
                        &entry.id,
                        &Finish::Retry {
                            at,
                            why: error.clone(),
                            counts: true,
                        },
                    )?;
                    processed(&entry, "retry", error, Some(at), ms)
                }
            }
        }))
    }
}

fn processed(
    e: &QueueEntry,
    outcome: &'static str,
    detail: String,
    next: Option<DateTime<Utc>>,
    ms: u64,
) -> Processed {
    Processed {
        id: e.id.clone(),
        sync_type: e.sync_type.clone(),
        outcome,
        detail,
        next_attempt_at: next,
        ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{EntryStatus, ManualClock, SyncRequest};

    fn setup(
        limits: RateLimitConfig,
        retry: RetryConfig,
    ) -> (tempfile::TempDir, Processor, ManualClock) {
        let d = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Utc::now());
        let p = Processor::with_clock(d.path(), limits, retry, Arc::new(clock.clone()));
        (d, p, clock)
    }

    fn no_cancel() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    #[test]
    fn drains_in_priority_order_and_defers_past_the_burst() {
        let (_d, p, clock) = setup(RateLimitConfig::default(), RetryConfig::default());
        for (t, prio) in [
            ("a", Priority::Low),
            ("b", Priority::Normal),
            ("c", Priority::High),
            ("d", Priority::Normal),
        ] {
            p.queue()
                .enqueue(&SyncRequest::new(t, "x", prio, ""))
                .unwrap();
            clock.advance(Duration::from_millis(10));
        }
        let mut ran = Vec::new();
        let mut runner = |e: &QueueEntry, _: &RunContext| {
            ran.push(e.sync_type.clone());
            RunOutcome::Synced {
                committed: true,
                detail: "ok".into(),
            }
        };
        let out = p.drain(&mut runner, &no_cancel(), 100).unwrap();
        assert_eq!(ran, ["c", "b", "d"], "burst of 3, then the cooldown");
        assert_eq!(out.last().unwrap().outcome, "deferred");
        assert!(out.last().unwrap().detail.contains("cooldown"));
        let left = p.queue().list().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].status, EntryStatus::Deferred);
        assert_eq!(p.limiter().status().unwrap().commits_last_hour, 3);
    }

    #[test]
    fn failures_back_off_then_give_up_and_open_the_circuit() {
        let retry = RetryConfig {
            max_attempts: 3,
            base_secs: 1,
            failure_threshold: 3,
            ..Default::default()
        };
        let limits = RateLimitConfig {
            enabled: false,
            ..Default::default()
        };
        let (_d, p, clock) = setup(limits, retry);
        p.queue()
            .enqueue(&SyncRequest::new("s", "x", Priority::Normal, ""))
            .unwrap();
        let mut fail = |_: &QueueEntry, _: &RunContext| RunOutcome::Failed {
            error: "push rejected".into(),
        };
        let first = p.process_one(&mut fail, &no_cancel()).unwrap().unwrap();
        assert_eq!(first.outcome, "retry");
        assert!(
            p.process_one(&mut fail, &no_cancel()).unwrap().is_none(),
            "backing off"
        );
        clock.advance(Duration::from_secs(5));
        assert_eq!(
            p.process_one(&mut fail, &no_cancel())
                .unwrap()
                .unwrap()
                .outcome,
            "retry"
        );
        clock.advance(Duration::from_secs(10));
        assert_eq!(
            p.process_one(&mut fail, &no_cancel())
                .unwrap()
                .unwrap()
                .outcome,
            "failed"
        );
        assert!(p.queue().list().unwrap().is_empty());
        assert_eq!(p.queue().history().unwrap()[0].outcome, "failed");
        // Three failures in a row: the circuit is open for normal requests.
        p.queue()
            .enqueue(&SyncRequest::new("s2", "x", Priority::Normal, ""))
            .unwrap();
        let d = p.process_one(&mut fail, &no_cancel()).unwrap().unwrap();
        assert_eq!(d.outcome, "deferred");
        assert!(d.detail.contains("circuit"), "{}", d.detail);
        // Critical passes and its success closes the circuit.
        p.queue()
            .enqueue(&SyncRequest::new("s3", "x", Priority::Critical, ""))
            .unwrap();
        let mut ok = |_: &QueueEntry, _: &RunContext| RunOutcome::Synced {
            committed: false,
            detail: String::new(),
        };
        assert_eq!(
            p.process_one(&mut ok, &no_cancel())
                .unwrap()
                .unwrap()
                .outcome,
            "done"
        );
        assert_eq!(p.breaker().status().unwrap().consecutive_failures, 0);
    }

    #[test]
    fn skipped_and_busy_runs_do_not_spend_the_burst() {
        let (_d, p, clock) = setup(RateLimitConfig::default(), RetryConfig::default());
        let mut skip = |_: &QueueEntry, _: &RunContext| RunOutcome::Skipped {
            detail: "no user changes".into(),
        };
        for i in 0..5 {
            p.queue()
                .enqueue(&SyncRequest::new(
                    "watch",
                    format!("w{i}"),
                    Priority::High,
                    "",
                ))
                .unwrap();
            clock.advance(Duration::from_millis(5));
        }
        let done = p.drain(&mut skip, &no_cancel(), 100).unwrap();
        assert!(done.iter().all(|d| d.outcome == "skipped"), "{done:?}");
        assert_eq!(p.limiter().status().unwrap().syncs_last_hour, 0);
    }

    #[test]
    fn busy_defers_without_counting_an_attempt() {
        let (_d, p, _c) = setup(
            RateLimitConfig {
                enabled: false,
                ..Default::default()
            },
            RetryConfig::default(),
        );
        p.queue()
            .enqueue(&SyncRequest::new("s", "x", Priority::Normal, ""))
            .unwrap();
        let mut busy = |_: &QueueEntry, _: &RunContext| RunOutcome::Busy {
            detail: "pid 1".into(),
        };
        assert_eq!(
            p.process_one(&mut busy, &no_cancel())
                .unwrap()
                .unwrap()
                .outcome,
            "deferred"
        );
        assert_eq!(p.queue().list().unwrap()[0].attempts, 0);
    }
}
