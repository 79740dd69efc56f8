//! Property: whatever both clones do to a handful of files, syncing a, b,
//! a leaves identical trees and loses no written content (under `manual`,
//! an edit beats a delete and both sides of a conflict survive).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use wsync_coordinator::{Config, SyncEngine, SyncOptions};
use wsync_testutils::{TestRemote, TestRepo, git};

#[derive(Debug, Clone)]
enum Op {
    Keep,
    Write(String),
    Delete,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Keep),
        "[a-z]{1,12}".prop_map(|s| Op::Write(format!("{s}\n"))),
        Just(Op::Delete),
    ]
}

fn apply(repo: &TestRepo, ops: &[Op]) -> Vec<String> {
    let mut written = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let path = format!("f{i}.txt");
        match op {
            Op::Keep => {}
            Op::Write(s) => {
                repo.write(&path, s);
                written.push(s.clone());
            }
            Op::Delete => {
                let _ = std::fs::remove_file(repo.path().join(&path));
            }
        }
    }
    written
}

fn files(repo: &TestRepo) -> BTreeMap<String, String> {
    git(repo.path(), &["ls-files"])
        .lines()
        .map(|p| (p.to_owned(), repo.read(p)))
        .collect()
}

fn sync(repo: &TestRepo, state: &std::path::Path) {
    SyncEngine::new(repo.path(), state, Config::default())
        .run(&SyncOptions::default())
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]
    #[test]
    fn both_sides_converge_and_nothing_written_is_lost(
        a_ops in proptest::collection::vec(op(), 4),
        b_ops in proptest::collection::vec(op(), 4),
    ) {
        let remote = TestRemote::new();
        let seed = remote.clone_repo("seed");
        for i in 0..4 {
            seed.write(format!("f{i}.txt"), format!("base {i}\n"));
        }
        seed.commit_all("base");
        git(seed.path(), &["push", "-q", "origin", "HEAD:main"]);
        let a = remote.clone_repo("a");
        let b = remote.clone_repo("b");
        let (sa, sb) = (remote.root().join("sa"), remote.root().join("sb"));
        let mut written = apply(&a, &a_ops);
        written.extend(apply(&b, &b_ops));
        sync(&a, &sa);
        sync(&b, &sb);
        sync(&a, &sa);
        let (fa, fb) = (files(&a), files(&b));
        prop_assert_eq!(&fa, &fb);
        prop_assert!(a.status().is_empty() && b.status().is_empty());
        let contents: Vec<&String> = fa.values().collect();
        for w in &written {
            prop_assert!(contents.contains(&w), "{:?} lost; tree {:?}", w, fa);
        }
    }
}
