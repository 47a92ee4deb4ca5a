//! Typed settings, read once from environment variables with local defaults.
//!
//! Every parse error names the variable; secrets are wrapped in [`Secret`] so they never print.

use std::{
    fmt,
    net::SocketAddr,
    path::PathBuf,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

/// A configuration value that is wrong or missing. The message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The variable is set but its value does not parse.
    #[error("{var}: {reason}")]
    Invalid {
        /// The environment variable.
        var: &'static str,
        /// What is wrong with it (never the value of a secret).
        reason: String,
    },
    /// A file named by a `*_FILE` variable cannot be read.
    #[error("{var}: cannot read {path}: {source}")]
    File {
        /// The environment variable naming the file.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
}

/// A secret value: its `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call it only where the value is handed to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Looks a variable up by name.
type Lookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A variable a reader asked for, with the default it falls back to (`None` for variables
/// without one, such as secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The environment variable.
    pub name: String,
    /// Its default, as the reader would use it.
    pub default: Option<String>,
}

/// Reads variables from a source (the process environment, or a map in tests).
pub struct Env {
    lookup: Lookup,
    /// Set by [`Env::recording`]: every variable asked for, in order.
    asked: Option<Arc<Mutex<Vec<Variable>>>>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Self::from_fn(|name| std::env::var(name).ok())
    }

    /// Any lookup function; tests use a map.
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            lookup: Box::new(lookup),
            asked: None,
        }
    }

    /// An environment where only `pairs` are set, which remembers every variable asked for and
    /// its default ([`Env::asked`]): `--help` lists a binary's variables by running the same
    /// code that reads them, so the list cannot drift from it.
    pub fn recording<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            asked: Some(Arc::default()),
            ..Self::from_pairs(pairs)
        }
    }

    /// The variables asked for so far, first ask first (empty unless [`Env::recording`]).
    pub fn asked(&self) -> Vec<Variable> {
        self.asked.as_ref().map_or_else(Vec::new, |asked| {
            asked.lock().unwrap_or_else(PoisonError::into_inner).clone()
        })
    }

    fn note(&self, var: &str, default: Option<String>) {
        let Some(asked) = &self.asked else { return };
        let mut asked = asked.lock().unwrap_or_else(PoisonError::into_inner);
        match asked.iter_mut().find(|v| v.name == var) {
            // A reader that asks again with its own default (a worker overriding the shared
            // one) has the last word.
            Some(known) => {
                if default.is_some() {
                    known.default = default;
                }
            }
            None => asked.push(Variable {
                name: var.to_owned(),
                default,
            }),
        }
    }

    /// From `(name, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let map: std::collections::HashMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self::from_fn(move |name| map.get(name).cloned())
    }

    /// The raw value; an empty value counts as unset.
    pub fn raw(&self, var: &str) -> Option<String> {
        self.note(var, None);
        (self.lookup)(var).filter(|v| !v.trim().is_empty())
    }

    /// A string, or the default.
    pub fn string(&self, var: &'static str, default: &str) -> String {
        self.note(var, Some(default.to_owned()));
        self.raw(var).unwrap_or_else(|| default.to_owned())
    }

    /// A parsed value, or the default.
    pub fn parse<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + fmt::Display,
        T::Err: fmt::Display,
    {
        self.note(var, Some(default.to_string()));
        match self.raw(var) {
            None => Ok(default),
            Some(value) => value
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    var,
                    reason: format!("{value:?} is not valid: {e}"),
                }),
        }
    }

    /// A whole number within `range`, or the default.
    pub fn bounded(
        &self,
        var: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        self.bounded_as(var, default, range)
    }

    /// A number of the type the setting is used as (`usize`, `u32`, ...) within `range`, or the
    /// default: each default is written once, and a value the type cannot hold is an error that
    /// names the variable, like any other out of `range`.
    pub fn bounded_as<T>(
        &self,
        var: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + fmt::Display + PartialOrd,
        T::Err: fmt::Display,
    {
        let value = self.parse(var, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::Invalid {
                var,
                reason: format!(
                    "{value} is out of range {}..={}",
                    range.start(),
                    range.end()
                ),
            })
        }
    }

    /// The shape of a worker's coalesced script calls: most calls in one batch (`max_var`,
    /// 1..=1024) and most batches on the wire at once (`in_flight_var`, 1..=64); unset, the
    /// coalescer's defaults (batches of up to 64, four at once).
    pub fn batch_shape(
        &self,
        max_var: &'static str,
        in_flight_var: &'static str,
    ) -> Result<crate::batch::CoalesceSettings, ConfigError> {
        let default = crate::batch::CoalesceSettings::default();
        Ok(crate::batch::CoalesceSettings {
            max_batch: self.bounded_as(max_var, default.max_batch, 1..=1024)?,
            max_batches_in_flight: self.bounded_as(
                in_flight_var,
                default.max_batches_in_flight,
                1..=64,
            )?,
        })
    }

    /// Whole seconds within `range`, or the default.
    pub fn seconds(
        &self,
        var: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.bounded(var, default, range).map(Duration::from_secs)
    }

    /// A socket address such as `127.0.0.1:9464`.
    pub fn addr(&self, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
        let value = self.string(var, default);
        value.parse().map_err(|e| ConfigError::Invalid {
            var,
            reason: format!("{value:?} is not a socket address like 127.0.0.1:9464: {e}"),
        })
    }

    /// A secret from `VAR`, or from the file named by `VAR_FILE` (`file_var`); never both.
    pub fn secret(
        &self,
        var: &'static str,
        file_var: &'static str,
    ) -> Result<Option<Secret>, ConfigError> {
        match (self.raw(var), self.raw(file_var)) {
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                var,
                reason: format!("set either {var} or {file_var}, not both"),
            }),
            (Some(value), None) => Ok(Some(Secret::new(value))),
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                let value = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
                    var: file_var,
                    path: path.clone(),
                    source,
                })?;
                Ok(Some(Secret::new(value.trim_end_matches(['\n', '\r']))))
            }
            (None, None) => Ok(None),
        }
    }

    /// A path, if set.
    pub fn path(&self, var: &'static str) -> Option<PathBuf> {
        self.raw(var).map(PathBuf::from)
    }

    /// A path to a file that must be readable now, so a wrong mount fails at start-up rather
    /// than at the first connection.
    pub fn readable_path(&self, var: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        let Some(path) = self.path(var) else {
            return Ok(None);
        };
        std::fs::File::open(&path).map_err(|source| ConfigError::File {
            var,
            path: path.clone(),
            source,
        })?;
        Ok(Some(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_variable() {
        let env = Env::from_pairs([("STOCKFLOW_MAX_IN_FLIGHT", "lots")]);
        let err = env
            .bounded("STOCKFLOW_MAX_IN_FLIGHT", 10, 1..=100)
            .expect_err("not a number");
        assert!(
            err.to_string().starts_with("STOCKFLOW_MAX_IN_FLIGHT:"),
            "{err}"
        );
    }

    #[test]
    fn typed_numbers_keep_one_default_and_name_the_variable() {
        let env = Env::recording([("N", "12")]);
        assert_eq!(
            env.bounded_as::<usize>("N", 8, 1..=256).expect("in range"),
            12
        );
        assert_eq!(
            env.bounded_as::<u32>("M", 20, 0..=100).expect("default"),
            20
        );
        let asked: Vec<_> = env.asked().into_iter().map(|v| v.default).collect();
        assert_eq!(asked, [Some("8".to_owned()), Some("20".to_owned())]);
        for value in ["0", "257", "-1", "lots"] {
            let env = Env::from_pairs([("N", value)]);
            let err = env.bounded_as::<usize>("N", 8, 1..=256).expect_err(value);
            assert!(err.to_string().starts_with("N:"), "{value}: {err}");
        }
    }

    #[test]
    fn a_batch_shape_defaults_to_the_coalescers_and_names_a_bad_setting() {
        let shape = Env::from_pairs([("B", "16")])
            .batch_shape("B", "F")
            .expect("valid");
        assert_eq!(
            shape,
            crate::batch::CoalesceSettings {
                max_batch: 16,
                ..Default::default()
            }
        );
        for (var, value) in [
            ("B", "0"),
            ("B", "1025"),
            ("F", "0"),
            ("F", "65"),
            ("F", "x"),
        ] {
            let err = Env::from_pairs([(var, value)])
                .batch_shape("B", "F")
                .expect_err(value);
            assert!(err.to_string().starts_with(&format!("{var}:")), "{err}");
        }
    }

    #[test]
    fn out_of_range_is_an_error() {
        let env = Env::from_pairs([("X", "0")]);
        let err = env.bounded("X", 10, 1..=100).expect_err("zero");
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn recording_lists_variables_with_their_defaults() {
        let env = Env::recording([("B", "7")]);
        assert_eq!(env.bounded("B", 5, 1..=10).expect("in range"), 7);
        assert!(env.secret("S", "S_FILE").expect("unset").is_none());
        let _ = env.string("A", "w");
        let _ = env.string("A", "x");
        let _ = env.raw("A");
        let asked = env.asked();
        let shown: Vec<(&str, Option<&str>)> = asked
            .iter()
            .map(|v| (v.name.as_str(), v.default.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                ("B", Some("5")),
                ("S", None),
                ("S_FILE", None),
                ("A", Some("x"))
            ]
        );
        assert!(Env::from_pairs([]).asked().is_empty());
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
    }

    #[test]
    fn secret_from_file_and_not_both() {
        let dir = std::env::temp_dir().join(format!("sf-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").expect("write");
        let path = file.to_string_lossy().into_owned();
        let env = Env::from_fn(move |name| (name == "T_FILE").then(|| path.clone()));
        let secret = env.secret("T", "T_FILE").expect("readable").expect("set");
        assert_eq!(secret.expose(), "s3cret");

        let both = Env::from_pairs([("T", "a"), ("T_FILE", "/x")]);
        assert!(both.secret("T", "T_FILE").is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
