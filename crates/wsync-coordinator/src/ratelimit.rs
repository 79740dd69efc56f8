//! Persistent rate limits (`<state>/ratelimit.json`).
//!
//! Four limits guard the remote and the history from a runaway trigger:
//! syncs per hour (a token bucket of `burst` tokens refilled at
//! `syncs_per_hour`, plus a hard cap of `syncs_per_hour` in any rolling
//! hour), a cooldown between syncs once the burst is spent, commits per
//! hour, and automatic commits per day. Critical requests override all of
//! them. A refusal says which limit and until when.
//!
//! ```
//! use std::sync::Arc;
//! use wsync_coordinator::queue::ManualClock;
//! use wsync_coordinator::ratelimit::{RateLimitConfig, RateLimiter};
//!
//! let state = tempfile::tempdir()?;
//! let clock = ManualClock::new(chrono::Utc::now());
//! let limiter = RateLimiter::with_clock(state.path(), RateLimitConfig::default(), Arc::new(clock));
//! for _ in 0..3 {
//!     assert!(limiter.sync_allowed(false)?.is_none()); // the burst
//!     limiter.record_sync()?;
//! }
//! let refusal = limiter.sync_allowed(false)?.expect("cooldown");
//! assert!(refusal.to_string().contains("until"));
//! assert!(limiter.sync_allowed(true)?.is_none()); // critical overrides
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::queue::Result;
use crate::queue::store;
use crate::queue::{SharedClock, system_clock};

/// The state file's name inside the state folder.
pub const RATELIMIT_FILE: &str = "ratelimit.json";

/// Rate limit settings (`ratelimit` in `config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Whether limits apply at all.
    pub enabled: bool,
    /// Syncs in any rolling hour.
    pub syncs_per_hour: u32,
    /// Syncs that may run back to back before the cooldown applies.
    pub burst: u32,
    /// Commits in any rolling hour.
    pub commits_per_hour: u32,
    /// Automatic (non-manual) commits in any rolling day.
    pub auto_commits_per_day: u32,
    /// Seconds between syncs once the burst is spent.
    pub cooldown_secs: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            syncs_per_hour: 12,
            burst: 3,
            commits_per_hour: 10,
            auto_commits_per_day: 50,
            cooldown_secs: 300,
        }
    }
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// `syncs_per_hour`.
    SyncsPerHour,
    /// The burst is spent and the cooldown has not passed.
    Cooldown,
    /// `commits_per_hour`.
    CommitsPerHour,
    /// `auto_commits_per_day`.
    AutoCommitsPerDay,
    /// The circuit breaker is open.
    CircuitOpen,
}

/// A refused request: which limit, why, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The limit.
    pub limit: Limit,
    /// Try again at or after this time.
    pub until: DateTime<Utc>,
    /// One sentence.
    pub why: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (deferred until {})",
            self.why,
            self.until
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

impl std::error::Error for Refusal {}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    #[serde(default)]
    syncs: Vec<DateTime<Utc>>,
    #[serde(default)]
    commits: Vec<DateTime<Utc>>,
    #[serde(default)]
    auto_commits: Vec<DateTime<Utc>>,
    /// Tokens left in the burst bucket at `tokens_at`.
    #[serde(default)]
    tokens: Option<f64>,
    #[serde(default)]
    tokens_at: Option<DateTime<Utc>>,
}

/// A snapshot of the limits for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimitStatus {
    /// The settings.
    pub config: RateLimitConfig,
    /// Syncs in the last hour.
    pub syncs_last_hour: usize,
    /// Commits in the last hour.
    pub commits_last_hour: usize,
    /// Automatic commits in the last day.
    pub auto_commits_last_day: usize,
    /// Burst tokens left now.
    pub burst_tokens: f64,
    /// Why a normal sync would be refused now, if it would.
    pub sync_refusal: Option<Refusal>,
    /// Why an automatic commit would be refused now, if it would.
    pub commit_refusal: Option<Refusal>,
}

/// A rolling-window limit: refused when `max` or more of `times` fall in
/// the last `span`; it lifts when enough of them have aged out.
fn window_refusal(
    times: &[DateTime<Utc>],
    now: DateTime<Utc>,
    span: Duration,
    max: u32,
    limit: Limit,
) -> Option<Refusal> {
    let mut recent: Vec<DateTime<Utc>> =
        times.iter().filter(|t| **t > now - span).copied().collect();
    let max = max as usize;
    if recent.len() < max {
        return None;
    }
    recent.sort_unstable();
    let until = recent.get(recent.len() - max).copied().unwrap_or(now) + span;
    let (what, per) = match limit {
        Limit::SyncsPerHour => ("syncs", "hour"),
        Limit::CommitsPerHour => ("commits", "hour"),
        _ => ("automatic commits", "day"),
    };
    Some(Refusal {
        limit,
        until,
        why: format!(
            "rate limit: {} {what} in the last {per} (max {max})",
            recent.len()
        ),
    })
}

/// The limiter of one state folder.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    path: PathBuf,
    lock_path: PathBuf,
    config: RateLimitConfig,
    clock: SharedClock,
}

fn secs(n: u64) -> Duration {
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX / 1000))
}

impl RateLimiter {
    /// The limiter of `state_dir` on the system clock.
    pub fn new(state_dir: &Path, config: RateLimitConfig) -> Self {
        Self::with_clock(state_dir, config, system_clock())
    }

    /// The limiter of `state_dir` on `clock`.
    pub fn with_clock(state_dir: &Path, config: RateLimitConfig, clock: SharedClock) -> Self {
        Self {
            path: state_dir.join(RATELIMIT_FILE),
            lock_path: state_dir.join("ratelimit.lock"),
            config,
            clock,
        }
    }

    /// `<state>/ratelimit.json`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<State> {
        Ok(store::read_json(&self.path)?.unwrap_or_default())
    }

    fn tokens(&self, st: &State, now: DateTime<Utc>) -> f64 {
        let cap = f64::from(self.config.burst.max(1));
        let per_sec = f64::from(self.config.syncs_per_hour) / 3600.0;
        match (st.tokens, st.tokens_at) {
            (Some(t), Some(at)) => {
                let elapsed = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
                (t + elapsed * per_sec).min(cap)
            }
            _ => cap,
        }
    }

    fn sync_refusal(&self, st: &State, now: DateTime<Utc>) -> Option<Refusal> {
        let c = &self.config;
        if !c.enabled {
            return None;
        }
        if let Some(r) = window_refusal(
            &st.syncs,
            now,
            Duration::hours(1),
            c.syncs_per_hour,
            Limit::SyncsPerHour,
        ) {
            return Some(r);
        }
        if self.tokens(st, now) < 1.0 {
            let last = st.syncs.iter().max().copied().unwrap_or(now);
            let until = last + secs(c.cooldown_secs);
            if until > now {
                return Some(Refusal {
                    limit: Limit::Cooldown,
                    until,
                    why: format!(
                        "rate limit: burst of {} syncs spent; cooldown {} s after the last sync",
                        c.burst, c.cooldown_secs
                    ),
                });
            }
        }
        None
    }

    fn commit_refusal(&self, st: &State, now: DateTime<Utc>, auto: bool) -> Option<Refusal> {
        let c = &self.config;
        if !c.enabled {
            return None;
        }
        window_refusal(
            &st.commits,
            now,
            Duration::hours(1),
            c.commits_per_hour,
            Limit::CommitsPerHour,
        )
        .or_else(|| {
            auto.then(|| {
                window_refusal(
                    &st.auto_commits,
                    now,
                    Duration::days(1),
                    c.auto_commits_per_day,
                    Limit::AutoCommitsPerDay,
                )
            })
            .flatten()
        })
    }

    /// Why a sync may not start now (`None`: it may). `critical`
    /// overrides every limit. A corrupt state file is an error naming it.
    pub fn sync_allowed(&self, critical: bool) -> Result<Option<Refusal>> {
        if critical {
            return Ok(None);
        }
        let st = self.load()?;
        Ok(self.sync_refusal(&st, self.clock.now()))
    }

    /// Whether a commit may be made now (`auto`: by an automatic sync).
    pub fn commit_allowed(&self, critical: bool, auto: bool) -> Result<Option<Refusal>> {
        if critical {
            return Ok(None);
        }
        let st = self.load()?;
        Ok(self.commit_refusal(&st, self.clock.now(), auto))
    }

    fn update(&self, f: impl FnOnce(&mut State, DateTime<Utc>)) -> Result<()> {
        let _lock = store::FileLock::acquire(&self.lock_path)?;
        let mut st = self.load()?;
        let now = self.clock.now();
        f(&mut st, now);
        let day = Duration::days(1);
        st.syncs.retain(|t| *t > now - day);
        st.commits.retain(|t| *t > now - day);
        st.auto_commits.retain(|t| *t > now - day);
        store::write_json(&self.path, &st)
    }

    /// Records that a sync started now (spends a burst token).
    pub fn record_sync(&self) -> Result<()> {
        self.update(|st, now| {
            let t = self.tokens(st, now);
            st.tokens = Some((t - 1.0).max(0.0));
            st.tokens_at = Some(now);
            st.syncs.push(now);
        })
    }

    /// Records that a sync made a commit now.
    pub fn record_commit(&self, auto: bool) -> Result<()> {
        self.update(|st, now| {
            st.commits.push(now);
            if auto {
                st.auto_commits.push(now);
            }
        })
    }

    /// The current counts and refusals, for `status`.
    pub fn status(&self) -> Result<RateLimitStatus> {
        let st = self.load()?;
        let now = self.clock.now();
        Ok(RateLimitStatus {
            config: self.config.clone(),
            syncs_last_hour: st
                .syncs
                .iter()
                .filter(|t| **t > now - Duration::hours(1))
                .count(),
            commits_last_hour: st
                .commits
                .iter()
                .filter(|t| **t > now - Duration::hours(1))
                .count(),
            auto_commits_last_day: st
                .auto_commits
                .iter()
                .filter(|t| **t > now - Duration::days(1))
                .count(),
            burst_tokens: self.tokens(&st, now),
            sync_refusal: self.sync_refusal(&st, now),
            commit_refusal: self.commit_refusal(&st, now, true),
        })
    }

    /// Keeps a corrupt state file as `ratelimit.json.corrupt-<ts>` and
    /// starts clean; returns the kept copy.
    pub fn recover(&self) -> Result<Option<PathBuf>> {
        store::recover::<State>(&self.path, &self.lock_path, self.clock.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Clock as _, ManualClock};
    use std::sync::Arc;

    fn limiter(cfg: RateLimitConfig) -> (tempfile::TempDir, RateLimiter, ManualClock) {
        let d = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Utc::now());
        let l = RateLimiter::with_clock(d.path(), cfg, Arc::new(clock.clone()));
        (d, l, clock)
    }

    #[test]
    fn burst_then_cooldown_then_refill() {
        let (_d, l, clock) = limiter(RateLimitConfig::default());
        for _ in 0..3 {
            assert!(l.sync_allowed(false).unwrap().is_none());
            l.record_sync().unwrap();
        }
        let r = l.sync_allowed(false).unwrap().unwrap();
        assert_eq!(r.limit, Limit::Cooldown);
        assert_eq!(r.until, clock.now() + Duration::seconds(300));
        assert!(r.to_string().contains("cooldown 300 s"), "{r}");
        assert!(
            l.sync_allowed(true).unwrap().is_none(),
            "critical overrides"
        );
        clock.advance(std::time::Duration::from_secs(301));
        assert!(l.sync_allowed(false).unwrap().is_none());
    }

    #[test]
    fn hourly_cap_holds_even_with_a_large_burst() {
        let cfg = RateLimitConfig {
            burst: 100,
            syncs_per_hour: 4,
            ..Default::default()
        };
        let (_d, l, clock) = limiter(cfg);
        for _ in 0..4 {
            assert!(l.sync_allowed(false).unwrap().is_none());
            l.record_sync().unwrap();
            clock.advance(std::time::Duration::from_secs(60));
        }
        let r = l.sync_allowed(false).unwrap().unwrap();
        assert_eq!(r.limit, Limit::SyncsPerHour);
        clock.advance(std::time::Duration::from_secs(3600 - 240 + 1));
        assert!(l.sync_allowed(false).unwrap().is_none());
    }

    #[test]
    fn commit_limits_per_hour_and_per_day() {
        let cfg = RateLimitConfig {
            commits_per_hour: 2,
            auto_commits_per_day: 3,
            ..Default::default()
        };
        let (_d, l, clock) = limiter(cfg);
        l.record_commit(true).unwrap();
        l.record_commit(true).unwrap();
        assert_eq!(
            l.commit_allowed(false, true).unwrap().unwrap().limit,
            Limit::CommitsPerHour
        );
        clock.advance(std::time::Duration::from_secs(3601));
        l.record_commit(true).unwrap();
        assert_eq!(
            l.commit_allowed(false, true).unwrap().unwrap().limit,
            Limit::AutoCommitsPerDay
        );
        assert!(
            l.commit_allowed(false, false).unwrap().is_none(),
            "manual commits only count per hour"
        );
        assert!(l.commit_allowed(true, true).unwrap().is_none());
        let st = l.status().unwrap();
        assert_eq!((st.commits_last_hour, st.auto_commits_last_day), (1, 3));
    }

    #[test]
    fn disabled_limits_never_refuse_and_state_persists() {
        let (d, l, clock) = limiter(RateLimitConfig {
            enabled: false,
            ..Default::default()
        });
        for _ in 0..50 {
            l.record_sync().unwrap();
        }
        assert!(l.sync_allowed(false).unwrap().is_none());
        let again = RateLimiter::with_clock(d.path(), RateLimitConfig::default(), Arc::new(clock));
        assert_eq!(
            again.sync_allowed(false).unwrap().unwrap().limit,
            Limit::SyncsPerHour
        );
    }

    #[test]
    fn corrupt_state_names_the_file_and_recovers() {
        let (_d, l, _c) = limiter(RateLimitConfig::default());
        std::fs::write(l.path(), "{\"syncs\": 3}").unwrap();
        let err = l.sync_allowed(false).unwrap_err().to_string();
        assert!(err.contains("ratelimit.json"), "{err}");
        assert!(l.recover().unwrap().is_some());
        assert!(l.sync_allowed(false).unwrap().is_none());
    }
}
