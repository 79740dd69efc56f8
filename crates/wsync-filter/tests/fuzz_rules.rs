//! CI-scale fuzzing of the rules parser (the long runs are
//! `cargo xtask fuzz --target rules`): mutated real rules files and raw
//! text never panic; a rejected file names the origin and a line that
//! exists.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use wsync_filter::{Error, RuleSet, default_rules_text};

const TOKENS: &[&str] = &[
    "BLOCK:", "ALLOW:", "ANALYZE:", "allow:", "bogus:", ":", "\n", "#", "(", ")", "*", "+",
    "{9999}", "\\", "[", "(?i)", ".*", "^", "$", "é", "\u{0}",
];

fn mutated_rules() -> impl Strategy<Value = String> {
    let seeds = [
        default_rules_text().to_owned(),
        "BLOCK:\\.log$:logs\nALLOW:^src/:source\n".to_owned(),
    ];
    (
        0..seeds.len(),
        proptest::collection::vec((any::<usize>(), 0..TOKENS.len(), any::<bool>()), 0..8),
    )
        .prop_map(move |(i, edits)| {
            let mut s = seeds[i].clone();
            for (pos, tok, delete) in edits {
                let mut at = pos % (s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                if delete && at < s.len() {
                    s.remove(at);
                } else {
                    s.insert_str(at, TOKENS[tok]);
                }
            }
            s
        })
}

fn check(text: &str) {
    match RuleSet::parse(text, "fuzz.rules") {
        Ok(set) => {
            for p in ["a.txt", "src/main.rs", ".git/config", "x/y.log", ""] {
                let _ = set.first_match(p);
            }
        }
        Err(Error::RuleSyntax { file, line, .. } | Error::RuleRegex { file, line, .. }) => {
            assert_eq!(file.to_str(), Some("fuzz.rules"));
            assert!(
                line >= 1 && line <= text.lines().count(),
                "line {line} of {text:?}"
            );
        }
        Err(e) => {
            assert!(e.to_string().contains("fuzz.rules"), "{e}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_rules_never_panic_and_errors_name_a_line(text in mutated_rules()) {
        check(&text);
    }

    #[test]
    fn raw_text_never_panics(text in "\\PC{0,300}") {
        check(&text);
    }
}
