//! Retry with exponential backoff and jitter, and a persistent circuit
//! breaker (`<state>/circuit.json`).
//!
//! A failed sync is retried after `base · 2^(attempt-1)` (capped at `max`)
//! with ±`jitter` randomness, at most `max_attempts` times. Independently,
//! after `failure_threshold` consecutive failed syncs the circuit opens:
//! non-critical syncs are refused for `open_secs`, then one trial sync is
//! let through (half-open); its success closes the circuit, its failure
//! opens it again.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use wsync_coordinator::queue::ManualClock;
//! use wsync_coordinator::retry::{CircuitBreaker, CircuitState, RetryConfig};
//!
//! let cfg = RetryConfig { failure_threshold: 2, ..RetryConfig::default() };
//! assert!(cfg.backoff(2, 0.5) > cfg.backoff(1, 0.5));
//! let state = tempfile::tempdir()?;
//! let clock = ManualClock::new(chrono::Utc::now());
//! let breaker = CircuitBreaker::with_clock(state.path(), cfg, Arc::new(clock.clone()));
//! breaker.record_failure("push rejected")?;
//! breaker.record_failure("push rejected")?;
//! assert_eq!(breaker.status()?.state, CircuitState::Open);
//! assert!(breaker.allow(false)?.is_some());
//! clock.advance(Duration::from_secs(601));
//! assert!(breaker.allow(false)?.is_none()); // half-open trial
//! breaker.record_success()?;
//! assert_eq!(breaker.status()?.state, CircuitState::Closed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::queue::Result;
use crate::queue::store;
use crate::queue::{SharedClock, system_clock};
use crate::ratelimit::{Limit, Refusal};

/// The circuit breaker's state file inside the state folder.
pub const CIRCUIT_FILE: &str = "circuit.json";

/// Retry and circuit breaker settings (`retry` in `config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per queued request before it is dropped as failed.
    pub max_attempts: u32,
    /// First retry delay, seconds.
    pub base_secs: u64,
    /// Longest retry delay, seconds.
    pub max_secs: u64,
    /// Random spread of each delay, percent (20 = ±20 %).
    pub jitter_percent: u32,
    /// Consecutive failed syncs that open the circuit.
    pub failure_threshold: u32,
    /// Seconds the circuit stays open before a trial sync.
    pub open_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_secs: 10,
            max_secs: 1800,
            jitter_percent: 20,
            failure_threshold: 5,
            open_secs: 600,
        }
    }
}

impl RetryConfig {
    /// The delay before retry number `attempt` (1-based), with `unit` in
    /// `[0, 1)` choosing the jitter (0.5 = none).
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let raw = (self.base_secs as f64 * 2f64.powi(i32::try_from(exp).unwrap_or(30)))
            .min(self.max_secs as f64);
        let jitter = f64::from(self.jitter_percent.min(100)) / 100.0;
        let spread = jitter * (unit.clamp(0.0, 1.0) * 2.0 - 1.0);
        Duration::from_secs_f64((raw * (1.0 + spread)).max(0.0))
    }

    /// [`backoff`](Self::backoff) with random jitter.
    pub fn backoff_jittered(&self, attempt: u32) -> Duration {
        self.backoff(attempt, fastrand::f64())
    }
}

/// Closed (normal), open (refusing) or half-open (one trial allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Syncs run.
    #[default]
    Closed,
    /// Non-critical syncs are refused until the pause ends.
    Open,
    /// The pause ended; the next sync is a trial.
    HalfOpen,
}

/// The persisted breaker, as shown by `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitStatus {
    /// The state.
    pub state: CircuitState,
    /// Failed syncs in a row.
    pub consecutive_failures: u32,
    /// When it last opened.
    pub opened_at: Option<DateTime<Utc>>,
    /// When a trial sync will be let through.
    pub retry_at: Option<DateTime<Utc>>,
    /// The last failure.
    pub last_error: Option<String>,
}

/// The circuit breaker of one state folder.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    path: PathBuf,
    lock_path: PathBuf,
    config: RetryConfig,
    clock: SharedClock,
}

impl CircuitBreaker {
    /// The breaker of `state_dir` on the system clock.
    pub fn new(state_dir: &Path, config: RetryConfig) -> Self {
        Self::with_clock(state_dir, config, system_clock())
    }

    /// The breaker of `state_dir` on `clock`.
    pub fn with_clock(state_dir: &Path, config: RetryConfig, clock: SharedClock) -> Self {
        Self {
            path: state_dir.join(CIRCUIT_FILE),
            lock_path: state_dir.join("circuit.lock"),
            config,
            clock,
        }
    }

    /// `<state>/circuit.json`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The persisted state (closed when never written).
    pub fn status(&self) -> Result<CircuitStatus> {
        Ok(store::read_json(&self.path)?.unwrap_or_default())
    }

    fn update(&self, f: impl FnOnce(&mut CircuitStatus, DateTime<Utc>)) -> Result<CircuitStatus> {
        let _lock = store::FileLock::acquire(&self.lock_path)?;
        let mut st = self.status()?;
        f(&mut st, self.clock.now());
        store::write_json(&self.path, &st)?;
        Ok(st)
    }

    /// Why a sync may not run now (`None`: it may). An open circuit whose
    /// pause has ended turns half-open and lets this one trial through.
    /// `critical` always passes.
    pub fn allow(&self, critical: bool) -> Result<Option<Refusal>> {
        let st = self.status()?;
        if critical || st.state == CircuitState::Closed || st.state == CircuitState::HalfOpen {
            return Ok(None);
        }
        let now = self.clock.now();
        let until = st.retry_at.unwrap_or(now);
        if until > now {
            return Ok(Some(Refusal {
                limit: Limit::CircuitOpen,
                until,
                why: format!(
                    "circuit breaker open after {} consecutive failed syncs (last: {})",
                    st.consecutive_failures,
                    st.last_error.as_deref().unwrap_or("unknown")
                ),
            }));
        }
        self.update(|s, _| s.state = CircuitState::HalfOpen)?;
        Ok(None)
    }

    /// A sync succeeded: the circuit closes.
    pub fn record_success(&self) -> Result<()> {
        let st = self.status()?;
        if st == CircuitStatus::default() {
            return Ok(());
        }
        self.update(|s, _| *s = CircuitStatus::default())
            .map(|_| ())
    }

    /// A sync failed; returns the new state.
    pub fn record_failure(&self, error: &str) -> Result<CircuitStatus> {
        let threshold = self.config.failure_threshold.max(1);
        let pause = chrono::Duration::seconds(
            i64::try_from(self.config.open_secs).unwrap_or(i64::MAX / 1000),
        );
        self.update(|s, now| {
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.last_error = Some(error.to_owned());
            if s.state == CircuitState::HalfOpen || s.consecutive_failures >= threshold {
                s.state = CircuitState::Open;
                s.opened_at = Some(now);
                s.retry_at = Some(now + pause);
            }
        })
    }

    /// Keeps a corrupt state file as `circuit.json.corrupt-<ts>` and starts
    /// closed; returns the kept copy.
    pub fn recover(&self) -> Result<Option<PathBuf>> {
        store::recover::<CircuitStatus>(&self.path, &self.lock_path, self.clock.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::ManualClock;
    use std::sync::Arc;

    #[test]
    fn backoff_grows_is_capped_and_jitter_stays_in_bounds() {
        let cfg = RetryConfig {
            base_secs: 2,
            max_secs: 30,
            jitter_percent: 25,
            ..Default::default()
        };
        assert_eq!(cfg.backoff(1, 0.5), Duration::from_secs(2));
        assert_eq!(cfg.backoff(2, 0.5), Duration::from_secs(4));
        assert_eq!(cfg.backoff(3, 0.5), Duration::from_secs(8));
        assert_eq!(cfg.backoff(20, 0.5), Duration::from_secs(30));
        assert_eq!(cfg.backoff(1, 0.0), Duration::from_secs_f64(1.5));
        assert_eq!(cfg.backoff(1, 1.0), Duration::from_secs_f64(2.5));
        for _ in 0..100 {
            let d = cfg.backoff_jittered(3).as_secs_f64();
            assert!((6.0..=10.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn breaker_opens_half_opens_and_reopens_on_a_failed_trial() {
        let d = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Utc::now());
        let cfg = RetryConfig {
            failure_threshold: 3,
            open_secs: 60,
            ..Default::default()
        };
        let b = CircuitBreaker::with_clock(d.path(), cfg, Arc::new(clock.clone()));
        b.record_failure("a").unwrap();
        b.record_failure("b").unwrap();
        assert!(b.allow(false).unwrap().is_none());
        assert_eq!(b.record_failure("c").unwrap().state, CircuitState::Open);
        let r = b.allow(false).unwrap().unwrap();
        assert_eq!(r.limit, Limit::CircuitOpen);
        assert!(
            r.why.contains("3 consecutive") && r.why.contains('c'),
            "{}",
            r.why
        );
        assert!(b.allow(true).unwrap().is_none(), "critical passes");
        clock.advance(Duration::from_secs(61));
        assert!(b.allow(false).unwrap().is_none());
        assert_eq!(b.status().unwrap().state, CircuitState::HalfOpen);
        assert_eq!(b.record_failure("d").unwrap().state, CircuitState::Open);
        clock.advance(Duration::from_secs(61));
        assert!(b.allow(false).unwrap().is_none());
        b.record_success().unwrap();
        assert_eq!(b.status().unwrap(), CircuitStatus::default());
    }

    #[test]
    fn corrupt_circuit_file_is_named_and_recovered() {
        let d = tempfile::tempdir().unwrap();
        let b = CircuitBreaker::new(d.path(), RetryConfig::default());
        std::fs::write(b.path(), "nope").unwrap();
        assert!(
            b.allow(false)
                .unwrap_err()
                .to_string()
                .contains("circuit.json")
        );
        assert!(b.recover().unwrap().is_some());
        assert!(b.allow(false).unwrap().is_none());
    }
}
