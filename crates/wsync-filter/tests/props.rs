//! Properties: volatile-only JSON changes are blocked, any other JSON change
//! is synced, and the first matching rule wins.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Map, Value};
use wsync_filter::{Action, Change, ContentAnalyzer, Filter, FilterConfig, RuleSet, Verdict};

const VOLATILE: &[&str] = &["timestamp", "last_update", "updated_at", "session_id"];

/// Non-volatile key names (never one of `VOLATILE`).
fn key() -> impl Strategy<Value = String> {
    "[a-z]{1,6}".prop_filter("not volatile", |k| !VOLATILE.contains(&k.as_str()))
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-zA-Z0-9 :-]{0,12}".prop_map(Value::String),
    ]
}

/// Random documents; objects may carry volatile keys at any depth.
fn doc() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            (
                prop::collection::btree_map(key(), inner.clone(), 0..5),
                prop::collection::btree_map(prop::sample::select(VOLATILE), inner, 0..3),
            )
                .prop_map(|(plain, vol)| {
                    let mut m: Map<String, Value> = plain.into_iter().collect();
                    for (k, v) in vol {
                        m.insert(k.to_owned(), v);
                    }
                    Value::Object(m)
                }),
        ]
    })
}

/// Rewrites every volatile value (and adds one at the top) using `seed`.
fn touch_volatile(v: &mut Value, seed: u64) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if VOLATILE.contains(&k.as_str()) {
                    *val = Value::String(format!(
                        "2026-01-{:02}T00:00:{:02}Z",
                        seed % 28 + 1,
                        seed % 60
                    ));
                } else {
                    touch_volatile(val, seed.wrapping_add(1));
                }
            }
        }
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| touch_volatile(x, seed.wrapping_add(7))),
        _ => {}
    }
}

/// Changes one non-volatile leaf (or adds a key to a leaf-only document).
/// Returns false if nothing non-volatile could be changed.
fn touch_real(v: &mut Value, pick: usize) -> bool {
    match v {
        Value::Object(m) => {
            let keys: Vec<String> = m
                .keys()
                .filter(|k| !VOLATILE.contains(&k.as_str()))
                .cloned()
                .collect();
            if keys.is_empty() {
                m.insert("zzreal".into(), Value::Bool(true));
                return true;
            }
            let k = &keys[pick % keys.len()];
            let child = m.get_mut(k).unwrap();
            if touch_real(child, pick / 3) {
                return true;
            }
            *child = Value::String(format!("changed-{pick}"));
            true
        }
        Value::Array(a) => {
            if a.is_empty() {
                a.push(Value::Null);
                return true;
            }
            let n = a.len();
            touch_real(&mut a[pick % n], pick / 3) || {
                a.push(Value::Bool(false));
                true
            }
        }
        Value::String(s) => {
            s.push('!');
            true
        }
        Value::Bool(b) => {
            *b = !*b;
            true
        }
        Value::Number(n) => {
            *v = Value::from(n.as_i64().unwrap_or(0).wrapping_add(1));
            true
        }
        Value::Null => {
            *v = Value::Bool(true);
            true
        }
    }
}

fn render(v: &Value, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(v).unwrap()
    } else {
        serde_json::to_vec(v).unwrap()
    }
}

fn analyzer() -> ContentAnalyzer {
    ContentAnalyzer::with_defaults().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn only_volatile_keys_changed_is_blocked(d in doc(), seed in any::<u64>(), pretty in any::<bool>(), pretty_old in any::<bool>()) {
        let mut after = d.clone();
        touch_volatile(&mut after, seed);
        let old = render(&d, pretty_old);
        let new = if pretty { serde_json::to_vec_pretty(&after).unwrap() } else { serde_json::to_vec(&after).unwrap() };
        let v = analyzer().compare("s.json", Some(&old), &new);
        prop_assert!(v.is_system(), "{:?}\nold {}\nnew {}", v, String::from_utf8_lossy(&old), String::from_utf8_lossy(&new));
    }

    #[test]
    fn any_non_volatile_change_is_synced(d in doc(), pick in any::<usize>(), seed in any::<u64>(), pretty_old in any::<bool>()) {
        let mut after = d.clone();
        touch_volatile(&mut after, seed);
        prop_assume!(touch_real(&mut after, pick));
        prop_assume!(after != d);
        let old = render(&d, pretty_old);
        let new = serde_json::to_vec_pretty(&after).unwrap();
        let v = analyzer().compare("s.json", Some(&old), &new);
        prop_assert!(!v.is_system(), "{:?}\nold {}\nnew {}", v, String::from_utf8_lossy(&old), String::from_utf8_lossy(&new));
    }

    /// Through the whole filter (a real file, injected baseline).
    #[test]
    fn whole_filter_agrees(d in doc(), seed in any::<u64>(), pick in any::<usize>(), real in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut after = d.clone();
        touch_volatile(&mut after, seed);
        let changed = real && touch_real(&mut after, pick) && after != d;
        std::fs::write(dir.path().join("ctx.json"), serde_json::to_vec(&after).unwrap()).unwrap();
        let old = serde_json::to_vec(&d).unwrap();
        let config = FilterConfig { scan_open_files: false, ..FilterConfig::default() };
        let f = Filter::new(dir.path(), &dir.path().join(".wsync"), &config).unwrap()
            .with_previous_content(Arc::new(move |_: &Path| Some(old.clone())));
        let dec = f.classify(&Change::modified("ctx.json"));
        prop_assert_eq!(dec.verdict, if changed { Verdict::Sync } else { Verdict::Block }, "{:?}", dec);
    }

    /// The lowest-numbered matching rule decides, whatever the order.
    #[test]
    fn first_match_wins(
        rules in prop::collection::vec((0..3usize, 0..6usize), 1..12),
        path in prop::sample::select(vec!["a/b.txt", "a/c.log", "docs/x.md", "b.txt", "a/b/c/d.rs"]),
    ) {
        let patterns = [r"a/.*", r".*\.txt", r".*\.log", r"docs/.*", r".*", r"nomatch/.*"];
        let actions = ["BLOCK", "ALLOW", "ANALYZE"];
        let text: String = rules.iter().enumerate()
            .map(|(i, (a, p))| format!("{}:{}:rule {i}\n", actions[*a], patterns[*p]))
            .collect();
        let set = RuleSet::parse(&text, "p.conf").unwrap();
        let expected = rules.iter().enumerate().find(|(_, (_, p))| {
            regex::Regex::new(&format!("^(?:{})$", patterns[*p])).unwrap().is_match(path)
        });
        match (set.first_match(path), expected) {
            (None, None) => {}
            (Some(rule), Some((i, (a, _)))) => {
                prop_assert_eq!(&rule.source, &format!("p.conf:{}", i + 1));
                prop_assert_eq!(rule.action, Action::parse(actions[*a]).unwrap());
            }
            (got, want) => prop_assert!(false, "got {:?}, want {:?}", got, want),
        }
    }
}
