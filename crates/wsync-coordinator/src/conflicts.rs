//! Conflicts: resolving a three-way merge's conflicting entries per
//! strategy, conflict copies (`NAME.sync-conflict-YYYYMMDD-HHMMSS-HOST.EXT`),
//! `<state>/conflicts.log`, and `conflicts list|resolve`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use git2::{Index, IndexEntry};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::classify::Classifier;
use crate::config::Strategy;
use crate::fsutil::{append_line, read_json_lines};

/// The conflicts log's file name inside the state folder.
pub const CONFLICTS_LOG: &str = "conflicts.log";

/// The marker every conflict copy's name carries.
pub const COPY_MARKER: &str = ".sync-conflict-";

/// Whether `path` is itself a conflict copy.
pub fn is_conflict_copy(path: &str) -> bool {
    file_name(path).contains(COPY_MARKER)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Keeps `[A-Za-z0-9._-]` of a host name so it is safe in a file name.
pub fn sanitize_host(host: &str) -> String {
    let s: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() { "host".into() } else { s }
}

/// The copy name for `path`: `dir/NAME.sync-conflict-YYYYMMDD-HHMMSS-HOST.EXT`
/// (`NAME.sync-conflict-…-HOST` when there is no extension; a leading dot
/// does not start an extension).
pub fn conflict_copy_name(path: &str, when: DateTime<Utc>, host: &str) -> String {
    let (dir, name) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let stamp = when.format("%Y%m%d-%H%M%S");
    let host = sanitize_host(host);
    match name.rfind('.').filter(|&i| i > 0) {
        Some(i) => format!(
            "{dir}{}{COPY_MARKER}{stamp}-{host}.{}",
            &name[..i],
            &name[i + 1..]
        ),
        None => format!("{dir}{name}{COPY_MARKER}{stamp}-{host}"),
    }
}

/// The stem all copies of `path` start with (`dir/NAME.sync-conflict-`).
fn copy_prefix(path: &str) -> String {
    let probe = conflict_copy_name(path, DateTime::<Utc>::MIN_UTC, "h");
    match probe.find(COPY_MARKER) {
        Some(i) => probe[..i + COPY_MARKER.len()].to_owned(),
        None => probe,
    }
}

/// How one conflicting path was settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The workspace-relative path.
    pub path: String,
    /// The conflict copy holding the remote version, if one was written.
    pub copy: Option<String>,
    /// `manual`, `auto-ours`, `auto-theirs`, or `system` for system files.
    pub strategy: String,
    /// What is at the path now: `ours`, `theirs`, `deleted`.
    pub kept: String,
    /// Extra detail (copy limit reached, copy of a copy, …).
    pub note: Option<String>,
    /// The local commit that was merged.
    pub local_commit: String,
    /// The remote commit that was merged.
    pub remote_commit: String,
    /// The host that merged.
    pub host: String,
}

impl ConflictRecord {
    /// Whether a person still has to look at it.
    pub fn needs_attention(&self) -> bool {
        self.strategy == Strategy::Manual.as_str() && self.copy.is_some()
    }
}

/// One line of `conflicts.log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum LogLine {
    Conflict(ConflictRecord),
    Resolved {
        time: DateTime<Utc>,
        path: String,
        copy: Option<String>,
        take: String,
    },
}

/// What the merge needs to know to settle conflicts.
pub(crate) struct MergeCtx<'a> {
    pub strategy: Strategy,
    pub classifier: &'a Classifier,
    pub host: &'a str,
    pub now: DateTime<Utc>,
    pub local_commit: String,
    pub remote_commit: String,
    pub max_copies: usize,
}

const STAGE_MASK: u16 = 0x3000;

fn stage0(mut e: IndexEntry) -> IndexEntry {
    e.flags &= !STAGE_MASK;
    e
}

fn entry_path(e: &IndexEntry) -> String {
    String::from_utf8_lossy(&e.path).into_owned()
}

/// Settles every conflict in a merge index (ours, theirs or both kept) and
/// returns what was done. The index has no conflicts afterwards.
pub(crate) fn resolve_index(
    index: &mut Index,
    ctx: &MergeCtx<'_>,
    workspace: &Path,
) -> Result<Vec<ConflictRecord>, Error> {
    let gerr = |op: &str| Error::git(workspace, op.to_owned());
    let conflicts: Vec<git2::IndexConflict> = index
        .conflicts()
        .map_err(gerr("list conflicts"))?
        .collect::<Result<_, _>>()
        .map_err(gerr("read conflicts"))?;
    let mut existing: HashSet<String> = index.iter().map(|e| entry_path(&e)).collect();
    let mut records = Vec::new();
    for c in conflicts {
        let Some(path) = c
            .our
            .as_ref()
            .or(c.their.as_ref())
            .or(c.ancestor.as_ref())
            .map(entry_path)
        else {
            continue;
        };
        let ours = c.our.map(stage0);
        let theirs = c.their.map(stage0);
        let system = ctx.classifier.is_system_path(&path);
        let mut note = None;
        let strategy = if system {
            "system".to_owned()
        } else {
            ctx.strategy.as_str().to_owned()
        };
        // (entry kept at the path, copy to write)
        let (keep, copy): (Option<IndexEntry>, Option<IndexEntry>) = if system {
            (ours.or(theirs), None)
        } else {
            match ctx.strategy {
                Strategy::AutoOurs => (ours, None),
                Strategy::AutoTheirs => (theirs, None),
                Strategy::Manual => match (ours, theirs) {
                    // An edit beats a delete.
                    (None, Some(t)) => (Some(t), None),
                    (Some(o), None) => (Some(o), None),
                    (None, None) => (None, None),
                    (Some(o), Some(t)) => {
                        if is_conflict_copy(&path) {
                            note = Some("a conflict copy is never copied again; local kept".into());
                            (Some(o), None)
                        } else {
                            let prefix = copy_prefix(&path);
                            let count = existing.iter().filter(|p| p.starts_with(&prefix)).count();
                            if count >= ctx.max_copies {
                                note = Some(format!(
                                    "{count} copies exist (limit {}); the remote version stays in commit {}",
                                    ctx.max_copies, ctx.remote_commit
                                ));
                                (Some(o), None)
                            } else {
                                (Some(o), Some(t))
                            }
                        }
                    }
                },
            }
        };
        let kept = describe_kept(keep.as_ref(), &copy, ctx.strategy, system);
        index
            .conflict_remove(Path::new(&path))
            .map_err(gerr("remove conflict"))?;
        if let Some(k) = keep {
            index.add(&k).map_err(gerr("stage resolution"))?;
        } else {
            existing.remove(&path);
        }
        let mut copy_name = None;
        if let Some(mut t) = copy {
            let mut name = conflict_copy_name(&path, ctx.now, ctx.host);
            let mut n = 1;
            while existing.contains(&name) {
                name = format!("{}-{n}", conflict_copy_name(&path, ctx.now, ctx.host));
                n += 1;
            }
            t.path = name.clone().into_bytes();
            index.add(&t).map_err(gerr("stage conflict copy"))?;
            existing.insert(name.clone());
            copy_name = Some(name);
        }
        records.push(ConflictRecord {
            time: ctx.now,
            path,
            copy: copy_name,
            strategy,
            kept,
            note,
            local_commit: ctx.local_commit.clone(),
            remote_commit: ctx.remote_commit.clone(),
            host: ctx.host.to_owned(),
        });
    }
    Ok(records)
}

fn describe_kept(
    keep: Option<&IndexEntry>,
    copy: &Option<IndexEntry>,
    strategy: Strategy,
    system: bool,
) -> String {
    match (keep, system, strategy, copy.is_some()) {
        (None, ..) => "deleted",
        (Some(_), true, ..) => "ours",
        (Some(_), false, Strategy::AutoTheirs, _) => "theirs",
        (Some(_), false, _, _) => "ours",
    }
    .into()
}

/// Appends settled conflicts to `<state>/conflicts.log`.
pub fn append_conflicts(state_dir: &Path, records: &[ConflictRecord]) -> Result<(), Error> {
    let path = state_dir.join(CONFLICTS_LOG);
    for r in records {
        let line =
            serde_json::to_string(&LogLine::Conflict(r.clone())).map_err(|source| Error::Json {
                path: path.clone(),
                source,
            })?;
        append_line(&path, &line)?;
    }
    Ok(())
}

/// Every conflict ever logged, oldest first.
pub fn history(state_dir: &Path) -> Result<Vec<ConflictRecord>, Error> {
    let lines: Vec<LogLine> = read_json_lines(&state_dir.join(CONFLICTS_LOG))?;
    Ok(lines
        .into_iter()
        .filter_map(|l| match l {
            LogLine::Conflict(r) => Some(r),
            LogLine::Resolved { .. } => None,
        })
        .collect())
}

/// Conflicts that still need a person: a manual conflict whose copy is
/// still in the working tree and that was not resolved with `resolve`.
pub fn open_conflicts(workspace: &Path, state_dir: &Path) -> Result<Vec<ConflictRecord>, Error> {
    let lines: Vec<LogLine> = read_json_lines(&state_dir.join(CONFLICTS_LOG))?;
    let mut open: Vec<ConflictRecord> = Vec::new();
    for l in lines {
        match l {
            LogLine::Conflict(r) if r.needs_attention() => {
                open.retain(|o| o.copy != r.copy);
                open.push(r);
            }
            LogLine::Conflict(_) => {}
            LogLine::Resolved { path, copy, .. } => {
                open.retain(|o| !(o.path == path && (copy.is_none() || o.copy == copy)));
            }
        }
    }
    open.retain(|r| {
        r.copy
            .as_ref()
            .is_some_and(|c| workspace.join(c).symlink_metadata().is_ok())
    });
    Ok(open)
}

/// Which version `resolve` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The local version at the path; the copies are deleted.
    Ours,
    /// The remote version (the newest copy) replaces the path.
    Theirs,
    /// Keep both files as they are.
    Both,
}

impl Take {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Theirs => "theirs",
            Self::Both => "both",
        }
    }
}

/// What `resolve` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolveReport {
    /// The path.
    pub path: String,
    /// Copies that were removed (or moved over the path).
    pub removed: Vec<String>,
    /// Copies that were kept (with `both`).
    pub kept: Vec<String>,
}

/// Settles the open conflicts of `path` (workspace-relative). The changes
/// are left in the working tree for the next sync to commit. The caller
/// holds the sync lock.
pub fn resolve(
    workspace: &Path,
    state_dir: &Path,
    path: &str,
    take: Take,
) -> Result<ResolveReport, Error> {
    let path = path.trim_start_matches("./").to_owned();
    let mut open: Vec<ConflictRecord> = open_conflicts(workspace, state_dir)?
        .into_iter()
        .filter(|r| r.path == path || r.copy.as_deref() == Some(path.as_str()))
        .collect();
    if open.is_empty() {
        return Err(Error::Conflict {
            path: PathBuf::from(&path),
            why: "no open conflict for this path (see `wsync conflicts list`)".into(),
        });
    }
    open.sort_by_key(|r| r.time);
    let target = open[0].path.clone();
    let copies: Vec<String> = open.iter().filter_map(|r| r.copy.clone()).collect();
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    let mut report = ResolveReport {
        path: target.clone(),
        removed: Vec::new(),
        kept: Vec::new(),
    };
    match take {
        Take::Ours => {
            for c in &copies {
                let p = workspace.join(c);
                std::fs::remove_file(&p).map_err(io(&p))?;
                report.removed.push(c.clone());
            }
        }
        Take::Theirs => {
            let (newest, older) = copies.split_last().ok_or_else(|| Error::Conflict {
                path: PathBuf::from(&target),
                why: "no conflict copy left".into(),
            })?;
            let from = workspace.join(newest);
            let to = workspace.join(&target);
            std::fs::rename(&from, &to).map_err(io(&to))?;
            report.removed.push(newest.clone());
            for c in older {
                let p = workspace.join(c);
                std::fs::remove_file(&p).map_err(io(&p))?;
                report.removed.push(c.clone());
            }
        }
        Take::Both => report.kept.clone_from(&copies),
    }
    let log = state_dir.join(CONFLICTS_LOG);
    for c in copies {
        let line = LogLine::Resolved {
            time: Utc::now(),
            path: target.clone(),
            copy: Some(c),
            take: take.as_str().into(),
        };
        let text = serde_json::to_string(&line).map_err(|source| Error::Json {
            path: log.clone(),
            source,
        })?;
        append_line(&log, &text)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    #[test]
    fn copy_names() {
        assert_eq!(
            conflict_copy_name("a/b/notes.md", t(), "box"),
            "a/b/notes.sync-conflict-20260102-030405-box.md"
        );
        assert_eq!(
            conflict_copy_name("Makefile", t(), "my host.lan"),
            "Makefile.sync-conflict-20260102-030405-my-host-lan"
        );
        assert_eq!(
            conflict_copy_name(".bashrc", t(), "h"),
            ".bashrc.sync-conflict-20260102-030405-h"
        );
        assert_eq!(copy_prefix("a/notes.md"), "a/notes.sync-conflict-");
    }

    proptest! {
        #[test]
        fn a_copy_is_recognised_and_keeps_its_folder(
            dir in "([a-z]{1,5}/){0,3}",
            stem in "[a-zA-Z0-9_]{1,8}",
            ext in proptest::option::of("[a-z]{1,4}"),
            host in "[ -~]{0,12}",
        ) {
            let path = match &ext { Some(e) => format!("{dir}{stem}.{e}"), None => format!("{dir}{stem}") };
            prop_assert!(!is_conflict_copy(&path));
            let copy = conflict_copy_name(&path, t(), &host);
            prop_assert!(is_conflict_copy(&copy));
            prop_assert!(copy.starts_with(&dir));
            prop_assert!(!copy[dir.len()..].contains('/'));
            prop_assert!(copy.starts_with(&copy_prefix(&path)));
            if let Some(e) = &ext {
                let suffix = format!(".{e}");
                prop_assert!(copy.ends_with(&suffix));
            }
        }
    }
}
