//! `wsync init`: create the state folder and keep it out of git.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};

use crate::ctx::Ctx;

/// Creates the state folder and adds it to `.git/info/exclude`.
pub fn run(ctx: &Ctx) -> Result<u8> {
    std::fs::create_dir_all(&ctx.state_dir)
        .with_context(|| format!("cannot create state folder {}", ctx.state_dir.display()))?;
    ctx.say(format!("state folder: {}", ctx.state_dir.display()));
    if let (Some(git_dir), Ok(rel)) = (ctx.git_dir(), ctx.state_dir.strip_prefix(&ctx.workspace)) {
        let pattern = format!("/{}/", rel.to_string_lossy().trim_end_matches('/'));
        if add_exclude(&git_dir.join("info").join("exclude"), &pattern)? {
            ctx.say(format!("added {pattern} to .git/info/exclude"));
        }
    }
    Ok(crate::exit::SUCCESS)
}

/// Appends `pattern` to the exclude file unless a line already says it.
/// Returns whether the file changed. Written to a temp file, fsynced and
/// renamed so that a crash never leaves a truncated exclude file.
fn add_exclude(path: &Path, pattern: &str) -> Result<bool> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if existing.lines().any(|l| l.trim() == pattern) {
        return Ok(false);
    }
    let mut text = existing;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(pattern);
    text.push('\n');
    let dir = path.parent().context("exclude file has no parent folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(".exclude.wsync-tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(true)
}
