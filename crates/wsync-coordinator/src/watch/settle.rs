//! Per-path debouncing with a max-wait cap: each path settles on its own
//! once it has been quiet for its class's debounce, or at the latest
//! `max_wait` after its first event, so a file rewritten every second can
//! neither starve itself nor the user edit next to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How quickly a path's changes are acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathClass {
    /// Source code and scripts (`watch.code_debounce_secs`, 5 s).
    Code,
    /// Everything else (`watch.default_debounce_secs`, 30 s).
    Default,
    /// Paths the filter's rules block (`watch.system_debounce_secs`, 300 s).
    System,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Instant,
    last: Instant,
    class: PathClass,
}

/// Debounce timings per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Quiet time for code paths.
    pub code: Duration,
    /// Quiet time for other paths.
    pub default: Duration,
    /// Quiet time for system paths.
    pub system: Duration,
    /// A path settles at the latest this long after its first event
    /// (never earlier than its debounce).
    pub max_wait: Duration,
}

impl Timings {
    fn debounce(&self, class: PathClass) -> Duration {
        match class {
            PathClass::Code => self.code,
            PathClass::Default => self.default,
            PathClass::System => self.system,
        }
    }

    fn cap(&self, class: PathClass) -> Duration {
        self.max_wait.max(self.debounce(class))
    }
}

/// The paths waiting to settle.
#[derive(Debug)]
pub struct Settler {
    timings: Timings,
    pending: HashMap<PathBuf, Pending>,
}

impl Settler {
    /// An empty settler.
    pub fn new(timings: Timings) -> Self {
        Self {
            timings,
            pending: HashMap::new(),
        }
    }

    /// Notes an event on `path` at `now`.
    pub fn note(&mut self, path: &Path, class: PathClass, now: Instant) {
        self.pending
            .entry(path.to_path_buf())
            .and_modify(|p| {
                p.last = now;
                p.class = class;
            })
            .or_insert(Pending {
                first: now,
                last: now,
                class,
            });
    }

    /// Puts `path` back to settle again after `delay` (e.g. while a sync
    /// holds the lock).
    pub fn postpone(&mut self, path: &Path, class: PathClass, now: Instant, delay: Duration) {
        let d = self.timings.debounce(class);
        let at = now + delay;
        // Settles when quiet for its debounce from `last`: make `last`
        // such that last + debounce == at, and restart the cap.
        let last = at.checked_sub(d).unwrap_or(now);
        self.pending.insert(
            path.to_path_buf(),
            Pending {
                first: last,
                last,
                class,
            },
        );
    }

    fn deadline(&self, p: &Pending) -> Instant {
        (p.last + self.timings.debounce(p.class)).min(p.first + self.timings.cap(p.class))
    }

    /// Removes and returns the paths settled at `now`, with their class.
    pub fn take_settled(&mut self, now: Instant) -> Vec<(PathBuf, PathClass)> {
        let settled: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| self.deadline(p) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<_> = settled
            .into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|p| (k, p.class)))
            .collect();
        out.sort();
        out
    }

    /// When the next path settles.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| self.deadline(p)).min()
    }

    /// How many paths wait.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timings {
        Timings {
            code: Duration::from_secs(5),
            default: Duration::from_secs(30),
            system: Duration::from_secs(300),
            max_wait: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_path_rewritten_every_second_never_starves_a_user_edit() {
        let mut s = Settler::new(t());
        let t0 = Instant::now();
        s.note(Path::new("status.json"), PathClass::Default, t0);
        s.note(
            Path::new("src/main.rs"),
            PathClass::Code,
            t0 + Duration::from_millis(500),
        );
        let mut user_settled_at = None;
        let mut status_settled_at = None;
        for sec in 1..=120u64 {
            let now = t0 + Duration::from_secs(sec);
            if status_settled_at.is_none() {
                s.note(Path::new("status.json"), PathClass::Default, now);
            }
            for (p, _) in s.take_settled(now) {
                if p == Path::new("src/main.rs") {
                    user_settled_at.get_or_insert(sec);
                } else {
                    status_settled_at.get_or_insert(sec);
                }
            }
        }
        assert_eq!(
            user_settled_at,
            Some(6),
            "code debounce 5 s after its only event"
        );
        assert_eq!(status_settled_at, Some(60), "the max-wait cap");
    }

    #[test]
    fn quiet_paths_settle_after_their_class_debounce() {
        let mut s = Settler::new(t());
        let t0 = Instant::now();
        s.note(Path::new("a.rs"), PathClass::Code, t0);
        s.note(Path::new("notes.txt"), PathClass::Default, t0);
        s.note(Path::new(".claude/autonomous/x"), PathClass::System, t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(s.take_settled(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(s.take_settled(t0 + Duration::from_secs(5)).len(), 1);
        assert_eq!(s.take_settled(t0 + Duration::from_secs(30)).len(), 1);
        // System: debounce 300 s is longer than the cap, the debounce wins.
        assert!(s.take_settled(t0 + Duration::from_secs(299)).is_empty());
        assert_eq!(s.take_settled(t0 + Duration::from_secs(300)).len(), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn postpone_moves_the_deadline() {
        let mut s = Settler::new(t());
        let t0 = Instant::now();
        s.postpone(
            Path::new("a.rs"),
            PathClass::Code,
            t0,
            Duration::from_millis(250),
        );
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_millis(250)));
    }
}
