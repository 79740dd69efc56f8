//! The environment allow-list: only named variables are recorded, and never
//! ones whose names look like secrets.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::handoff::Warning;

/// Names matching these (case-insensitive globs) are refused even when
/// allow-listed.
pub const DEFAULT_SECRET_PATTERNS: &[&str] = &["*TOKEN*", "*SECRET*", "*KEY*", "*PASSWORD*"];

/// A compiled allow-list plus secret-name patterns.
#[derive(Debug, Clone)]
pub struct EnvFilter {
    allow: Vec<String>,
    secret: GlobSet,
    secret_patterns: Vec<String>,
}

impl EnvFilter {
    /// Compiles the secret patterns (case-insensitive globs).
    pub fn new(allow: &[String], secret_patterns: &[String]) -> Result<Self> {
        let mut builder = GlobSetBuilder::new();
        for pattern in secret_patterns {
            let glob = GlobBuilder::new(pattern)
                .case_insensitive(true)
                .build()
                .map_err(|source| Error::Pattern {
                    pattern: pattern.clone(),
                    source,
                })?;
            builder.add(glob);
        }
        let secret = builder.build().map_err(|source| Error::Pattern {
            pattern: secret_patterns.join(","),
            source,
        })?;
        Ok(Self {
            allow: allow.to_vec(),
            secret,
            secret_patterns: secret_patterns.to_vec(),
        })
    }

    /// The secret pattern `name` matches, if any.
    pub fn secret_match(&self, name: &str) -> Option<&str> {
        self.secret
            .matches(name)
            .first()
            .and_then(|&i| self.secret_patterns.get(i))
            .map(String::as_str)
    }

    /// Keeps the allow-listed variables of `env`, refusing secret-looking
    /// names. Returns the kept variables and one warning per refused or
    /// missing name.
    pub fn apply(
        &self,
        env: &BTreeMap<String, String>,
    ) -> (BTreeMap<String, String>, Vec<Warning>) {
        let mut kept = BTreeMap::new();
        let mut warnings = Vec::new();
        for name in &self.allow {
            if let Some(pattern) = self.secret_match(name) {
                warnings.push(Warning::SecretRefused {
                    name: name.clone(),
                    pattern: pattern.to_owned(),
                });
                continue;
            }
            match env.get(name) {
                Some(value) => {
                    kept.insert(name.clone(), value.clone());
                }
                None => warnings.push(Warning::EnvNotSet { name: name.clone() }),
            }
        }
        (kept, warnings)
    }
}

/// One-shot [`EnvFilter::apply`] with the given allow-list and patterns.
pub fn filter_env(
    env: &BTreeMap<String, String>,
    allow: &[String],
    secret_patterns: &[String],
) -> Result<(BTreeMap<String, String>, Vec<Warning>)> {
    Ok(EnvFilter::new(allow, secret_patterns)?.apply(env))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn defaults() -> Vec<String> {
        DEFAULT_SECRET_PATTERNS
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    #[test]
    fn only_allowed_and_never_secrets() {
        let env = BTreeMap::from([
            ("EDITOR".to_owned(), "vim".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
            ("github_token".to_owned(), "x".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "y".to_owned()),
            ("DB_Password".to_owned(), "z".to_owned()),
            ("SSH_KEYS".to_owned(), "k".to_owned()),
        ]);
        let allow: Vec<String> = [
            "EDITOR",
            "github_token",
            "AWS_SECRET_ACCESS_KEY",
            "DB_Password",
            "SSH_KEYS",
            "UNSET",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let (kept, warnings) = filter_env(&env, &allow, &defaults()).unwrap();
        assert_eq!(
            kept,
            BTreeMap::from([("EDITOR".to_owned(), "vim".to_owned())])
        );
        let refused: Vec<_> = warnings
            .iter()
            .filter_map(|w| match w {
                Warning::SecretRefused { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            refused,
            [
                "github_token",
                "AWS_SECRET_ACCESS_KEY",
                "DB_Password",
                "SSH_KEYS"
            ]
        );
        assert!(warnings.contains(&Warning::EnvNotSet {
            name: "UNSET".into()
        }));
    }

    #[test]
    fn bad_pattern_is_an_error_naming_it() {
        let err = EnvFilter::new(&[], &["[".into()]).unwrap_err().to_string();
        assert!(err.contains("\"[\""), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the names, a kept variable is allow-listed and contains
        /// none of the secret words in any case.
        #[test]
        fn kept_names_are_allowed_and_not_secret(
            names in proptest::collection::vec("[A-Za-z_]{0,3}(TOKEN|token|Key|SeCrEt|password|PATH|HOME)?[A-Z_]{0,3}", 0..12)
        ) {
            let env: BTreeMap<String, String> = names.iter().map(|n| (n.clone(), "v".to_owned())).collect();
            let (kept, _) = filter_env(&env, &names, &defaults()).unwrap();
            for name in kept.keys() {
                prop_assert!(names.contains(name));
                let upper = name.to_uppercase();
                for word in ["TOKEN", "SECRET", "KEY", "PASSWORD"] {
                    prop_assert!(!upper.contains(word), "{name} kept");
                }
            }
        }
    }
}
