//! Process identity: our own, and whether a recorded process still runs.

use std::sync::OnceLock;

use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};

/// Who we are, computed once per process.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) pid: u32,
    pub(crate) start_time: Option<u64>,
    pub(crate) host: String,
}

/// This process's pid, start time and host name (cached).
pub(crate) fn me() -> &'static Identity {
    static ME: OnceLock<Identity> = OnceLock::new();
    ME.get_or_init(|| {
        let pid = std::process::id();
        let start_time = match liveness(pid) {
            Liveness::Alive { start_time } => Some(start_time),
            Liveness::Dead => None,
        };
        Identity {
            pid,
            start_time,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
        }
    })
}

/// Whether a process runs, and since when (seconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// No such process (or a zombie waiting to be reaped).
    Dead,
    /// Running.
    Alive {
        /// Start time in seconds since the epoch.
        start_time: u64,
    },
}

/// Looks `pid` up in the process table.
pub(crate) fn liveness(pid: u32) -> Liveness {
    if pid == 0 {
        return Liveness::Dead;
    }
    let spid = Pid::from_u32(pid);
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[spid]),
        true,
        ProcessRefreshKind::nothing(),
    );
    match sys.process(spid) {
        Some(p) if !matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead) => {
            Liveness::Alive {
                start_time: p.start_time(),
            }
        }
        _ => Liveness::Dead,
    }
}

/// Why a recorded process (`pid` started at `start_time` on `host`) is not
/// the one running now, or `None` when it still runs (or cannot be checked
/// because it ran on another host).
pub(crate) fn gone_reason(pid: u32, start_time: Option<u64>, host: &str) -> Option<String> {
    if host != me().host {
        return None;
    }
    match liveness(pid) {
        Liveness::Dead => Some(format!("holder pid {pid} is no longer running")),
        Liveness::Alive { start_time: now } => match start_time {
            // Start times are whole seconds from the same boot clock.
            Some(then) if then != now => Some(format!(
                "pid {pid} was reused: the holder started at {then}, the process now \
                 running as {pid} started at {now} (seconds since the epoch)"
            )),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn me_is_alive_with_a_start_time() {
        let me = me();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_time.is_some());
        assert_eq!(gone_reason(me.pid, me.start_time, &me.host), None);
    }

    #[test]
    fn reused_pid_is_detected_by_start_time() {
        let me = me();
        let wrong = me.start_time.map(|t| t.saturating_sub(1000));
        let why = gone_reason(me.pid, wrong, &me.host).unwrap_or_default();
        assert!(why.contains("reused"), "{why}");
    }

    #[test]
    fn dead_pid_and_other_host() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let _ = child.wait();
        let why = gone_reason(pid, None, &me().host).unwrap_or_default();
        assert!(why.contains("no longer running"), "{why}");
        assert_eq!(gone_reason(pid, None, "some-other-host"), None);
        assert_eq!(liveness(0), Liveness::Dead);
    }
}
