//! Rate limits persist across handles and processes' worth of updates.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::Utc;
use wsync_coordinator::queue::{Clock as _, ManualClock};
use wsync_coordinator::ratelimit::{Limit, RateLimitConfig, RateLimiter};

#[test]
fn concurrent_records_all_count_and_limits_survive_a_new_handle() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Utc::now());
    let cfg = RateLimitConfig {
        syncs_per_hour: 1000,
        burst: 1000,
        commits_per_hour: 40,
        ..RateLimitConfig::default()
    };
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (d, c, cfg) = (dir.path().to_path_buf(), clock.clone(), cfg.clone());
            std::thread::spawn(move || {
                let l = RateLimiter::with_clock(&d, cfg, Arc::new(c));
                for _ in 0..10 {
                    l.record_sync().unwrap();
                    l.record_commit(true).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let l = RateLimiter::with_clock(dir.path(), cfg, Arc::new(clock.clone()));
    let st = l.status().unwrap();
    assert_eq!(
        (
            st.syncs_last_hour,
            st.commits_last_hour,
            st.auto_commits_last_day
        ),
        (40, 40, 40)
    );
    let r = l.commit_allowed(false, true).unwrap().unwrap();
    assert_eq!(r.limit, Limit::CommitsPerHour);
    assert!(r.until > clock.now());
}
