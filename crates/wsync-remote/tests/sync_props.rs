//! Property: random edits on both sides, then a sync, leave both sides
//! equal, and every version either side changed still exists somewhere.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

const PATHS: &[&str] = &["a.txt", "b", "d/x.txt", "d/y", "d/e/z.md", "e"];

#[derive(Debug, Clone)]
enum Edit {
    Write(usize, Vec<u8>),
    Delete(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (0..PATHS.len(), proptest::collection::vec(b'a'..b'e', 0..6)).prop_map(|(p, c)| Edit::Write(p, c)),
        1 => (0..PATHS.len()).prop_map(Edit::Delete),
    ]
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).unwrap(),
        Ok(_) => std::fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

/// Applies an edit; every write gets a distinct mtime (as real edits do).
fn apply(root: &Path, e: &Edit, clock: &mut u64) {
    match e {
        Edit::Write(i, content) => {
            let p = root.join(PATHS[*i]);
            // Make the parents folders (replacing files in the way).
            let mut cur = root.to_path_buf();
            for comp in Path::new(PATHS[*i]).parent().unwrap().components() {
                cur.push(comp);
                if cur.is_file() {
                    std::fs::remove_file(&cur).unwrap();
                }
            }
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            }
            std::fs::write(&p, content).unwrap();
            *clock += 1;
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + *clock))
                .unwrap();
        }
        Edit::Delete(i) => remove_any(&root.join(PATHS[*i])),
    }
}

fn files(snap: &common::Snapshot) -> Vec<(Vec<u8>, Vec<u8>)> {
    snap.iter()
        .filter(|(_, v)| v.0 == 'f')
        .map(|(k, v)| (k.clone(), v.1.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn random_edits_on_both_sides_converge_without_loss(
        initial in proptest::collection::vec(edit(), 0..6),
        rounds in proptest::collection::vec(
            (proptest::collection::vec(edit(), 0..5), proptest::collection::vec(edit(), 0..5)),
            1..3,
        ),
    ) {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        // Emptying a side is a legitimate random edit here; the guard that
        // halts on it has its own tests.
        let opts = wsync_remote::SyncOptions {
            allow_mass_delete: true,
            ..wsync_remote::SyncOptions::default()
        };
        let mut clock = 0u64;
        for e in &initial {
            apply(a.path(), e, &mut clock);
        }
        let r = common::sync_with(a.path(), b.path(), &opts);
        prop_assert!(r.errors.is_empty(), "{:?}", r.errors);
        prop_assert_eq!(common::snapshot(a.path()), common::snapshot(b.path()));
        for (ea, eb) in rounds {
            let base = common::snapshot(a.path());
            for e in &ea {
                apply(a.path(), e, &mut clock);
            }
            for e in &eb {
                apply(b.path(), e, &mut clock);
            }
            // Versions changed on either side must survive.
            let mut must_keep = Vec::new();
            for side in [common::snapshot(a.path()), common::snapshot(b.path())] {
                for (p, c) in files(&side) {
                    if base.get(&p).map(|v| &v.1) != Some(&c) || base.get(&p).map(|v| v.0) != Some('f') {
                        must_keep.push((p, c));
                    }
                }
            }
            let r = common::sync_with(a.path(), b.path(), &opts);
            prop_assert!(r.errors.is_empty(), "{:?}", r.errors);
            let sa = common::snapshot(a.path());
            let sb = common::snapshot(b.path());
            prop_assert_eq!(&sa, &sb);
            let contents: Vec<Vec<u8>> = files(&sa).into_iter().map(|(_, c)| c).collect();
            for (p, c) in must_keep {
                prop_assert!(
                    contents.contains(&c),
                    "lost {:?} = {:?}; now {:?}", String::from_utf8_lossy(&p), String::from_utf8_lossy(&c), sa.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>()
                );
            }
            // A second run has nothing left to do.
            let r = common::sync_with(a.path(), b.path(), &opts);
            prop_assert_eq!(r.files_sent + r.files_received + r.deleted, 0, "{:?}", r);
        }
    }
}
