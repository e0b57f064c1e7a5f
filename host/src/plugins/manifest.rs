//! Plugin manifests: the `NAME.toml` beside a `NAME.wasm`, and the host-wide defaults (the
//! `[plugins]` table of `evhost.toml`), which share one schema.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::bus::RetryPolicy;
use crate::bus::{BusError, Pattern};
use crate::runtime::{Limits, PluginOptions};

/// How one plugin is run: limits, a subscription override, `wasi:config` values and the
/// retry policy. Every setting is optional; unset ones come from the host-wide defaults
/// ([`Manifest::over`]) and then from [`Limits::default`] and [`RetryPolicy::default`].
///
/// ```
/// use std::path::Path;
/// use evhost::plugins::Manifest;
///
/// let manifest = Manifest::parse(
///     r#"
///     subscriptions = ["UserCreated", "UserDeleted"]
///
///     [limits]
///     timeout = "2s"
///     memory_mb = 32
///     concurrency = 4
///
///     [config]
///     greeting = "hello"
///
///     [retry]
///     max_attempts = 3
///     "#,
///     Path::new("plugins/greeter.toml"),
/// )?;
/// assert_eq!(manifest.plugin_options().limits.memory_bytes, 32 << 20);
/// assert_eq!(manifest.retry.policy().max_attempts, 3);
/// # Ok::<(), evhost::plugins::ManifestError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Per-invocation budgets and the concurrency limit.
    #[serde(default)]
    pub limits: LimitSettings,
    /// Patterns to subscribe to instead of those the plugin declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<Vec<String>>,
    /// Values the plugin reads through `wasi:config/store`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// How failed deliveries are retried.
    #[serde(default)]
    pub retry: RetrySettings,
    /// Opt-in instance reuse: one instance serves up to this many events, one at a time
    /// (see [`PluginOptions::reuse`]). Unset, every event gets a fresh instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<NonZeroU32>,
    /// Each ordering key's events one at a time, in order, across every host sharing a
    /// NATS log (see [`PluginOptions::ordered`](crate::PluginOptions::ordered)). The
    /// embedded log keeps per-key order whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered: Option<bool>,
}

/// The `[limits]` table. Zero is ruled out by the types where it makes no sense.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Fuel per invocation (roughly, Wasm instructions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel: Option<NonZeroU64>,
    /// Wall-clock time per invocation, e.g. `"5s"` or `"250ms"`.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Linear memory per instance, in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<NonZeroU64>,
    /// Most invocations of the plugin running at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<NonZeroUsize>,
    /// Bytes of key-value writes (keys and values) per invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_write_bytes: Option<NonZeroU64>,
    /// Key-value `set` and `delete` calls per invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_writes: Option<NonZeroU64>,
    /// Events one invocation may emit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emit_events: Option<u64>,
    /// Bytes of the events one invocation emits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emit_bytes: Option<u64>,
    /// Hops an emitted event may be from the event that started its chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emit_depth: Option<NonZeroU32>,
    /// Bytes of output (logging, stdout, stderr) kept per invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
}

/// The largest value each `[limits]` and `[retry]` number may have: `(key, max, unit)`.
/// The bounds keep every size far from overflowing anything the host computes with it.
const RANGES: &[(&str, u64, &str)] = &[
    ("limits.memory_mb", 4096, " (a 32-bit memory's 4 GiB)"),
    ("limits.concurrency", 100_000, ""),
    ("limits.kv_write_bytes", 1 << 30, " (1 GiB)"),
    ("limits.kv_writes", 10_000_000, ""),
    ("limits.emit_events", 100_000, ""),
    ("limits.emit_bytes", 1 << 30, " (1 GiB)"),
    ("limits.emit_depth", 1_000, ""),
    ("limits.log_bytes", 1 << 30, " (1 GiB)"),
    ("retry.max_attempts", 1_000, ""),
    ("reuse", 1_000_000, ""),
];
/// The longest invocation timeout: an hour.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3_600);
/// The longest retry backoff: a week.
pub const MAX_BACKOFF: Duration = Duration::from_secs(7 * 24 * 3_600);

/// Checks a duration setting: at most `most` (`said` in words) and, unless `may_be_zero`,
/// more than zero. The message follows the key.
pub(crate) fn check_duration(
    value: Duration,
    may_be_zero: bool,
    most: Duration,
    said: &str,
) -> Result<(), String> {
    if value.is_zero() && !may_be_zero {
        return Err("must be longer than 0 (e.g. \"1s\" or \"250ms\")".to_owned());
    }
    if value > most {
        let value = humantime::format_duration(value);
        return Err(format!("({value}) must be at most {said}"));
    }
    Ok(())
}

/// The `[retry]` table; [`RetrySettings::policy`] fills in the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Deliveries before an event goes to the dead-letter queue (the first one included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<NonZeroU32>,
    /// Delay before the first retry, e.g. `"100ms"`.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub initial_backoff: Option<Duration>,
    /// Longest delay between two attempts, e.g. `"30s"`.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<Duration>,
    /// Factor the delay grows by after each failed attempt (at least 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// Random spread of each delay, as a fraction of it (0 to 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

impl RetrySettings {
    /// The policy these settings describe, with defaults (see [`RetryPolicy::default`])
    /// for what is unset.
    pub fn policy(&self) -> RetryPolicy {
        let defaults = RetryPolicy::default();
        RetryPolicy {
            max_attempts: self.max_attempts.map_or(defaults.max_attempts, NonZeroU32::get),
            initial_backoff: self.initial_backoff.unwrap_or(defaults.initial_backoff),
            max_backoff: self.max_backoff.unwrap_or(defaults.max_backoff),
            multiplier: self.multiplier.unwrap_or(defaults.multiplier),
            jitter: self.jitter.unwrap_or(defaults.jitter),
        }
    }
}

/// Why a manifest was refused. Every variant names the file; the messages say which key
/// is at fault and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("reading {}: {source}", .path.display())]
    Io {
        /// The manifest's path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (an unknown key, a wrong
    /// type). The message names the key and the line and column.
    #[error("{}: {message}", .path.display())]
    Parse {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// A value is out of range.
    #[error("{}`{key}` {message}", file_prefix(.path))]
    Invalid {
        /// The manifest's path (empty for a manifest that was not read from a file).
        path: PathBuf,
        /// The key at fault, dotted (`limits.timeout`).
        key: String,
        /// What was expected.
        message: String,
    },
}

fn file_prefix(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!("{}: ", path.display())
    }
}

impl Manifest {
    /// Reads and validates the manifest at `path`. Blocking: async callers read the file
    /// themselves and call [`Manifest::parse`].
    pub fn from_file(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates a manifest; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = deserialize_toml(text).map_err(|message| ManifestError::Parse {
            path: origin.to_owned(),
            message,
        })?;
        manifest.validate().map_err(|e| match e {
            ManifestError::Invalid { key, message, .. } => ManifestError::Invalid {
                path: origin.to_owned(),
                key,
                message,
            },
            other => other,
        })?;
        Ok(manifest)
    }

    /// This manifest with `defaults` filling what it leaves unset. `config` maps are
    /// merged, this manifest's values winning.
    pub fn over(&self, defaults: &Manifest) -> Manifest {
        let mut config = defaults.config.clone();
        config.extend(self.config.iter().map(|(k, v)| (k.clone(), v.clone())));
        let (own, base) = (&self.limits, &defaults.limits);
        let (own_retry, base_retry) = (&self.retry, &defaults.retry);
        Manifest {
            limits: LimitSettings {
                fuel: own.fuel.or(base.fuel),
                timeout: own.timeout.or(base.timeout),
                memory_mb: own.memory_mb.or(base.memory_mb),
                concurrency: own.concurrency.or(base.concurrency),
                kv_write_bytes: own.kv_write_bytes.or(base.kv_write_bytes),
                kv_writes: own.kv_writes.or(base.kv_writes),
                emit_events: own.emit_events.or(base.emit_events),
                emit_bytes: own.emit_bytes.or(base.emit_bytes),
                emit_depth: own.emit_depth.or(base.emit_depth),
                log_bytes: own.log_bytes.or(base.log_bytes),
            },
            subscriptions: self
                .subscriptions
                .clone()
                .or_else(|| defaults.subscriptions.clone()),
            config,
            retry: RetrySettings {
                max_attempts: own_retry.max_attempts.or(base_retry.max_attempts),
                initial_backoff: own_retry.initial_backoff.or(base_retry.initial_backoff),
                max_backoff: own_retry.max_backoff.or(base_retry.max_backoff),
                multiplier: own_retry.multiplier.or(base_retry.multiplier),
                jitter: own_retry.jitter.or(base_retry.jitter),
            },
            reuse: self.reuse.or(defaults.reuse),
            ordered: self.ordered.or(defaults.ordered),
        }
    }

    /// Checks what the types cannot: positive limits, parseable patterns, a sane retry
    /// policy. The error's `path` is empty; [`Manifest::parse`] fills it in.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |key: &str, message: String| ManifestError::Invalid {
            path: PathBuf::new(),
            key: key.to_owned(),
            message,
        };
        let (limits, retry) = (&self.limits, &self.retry);
        let values = [
            limits.memory_mb.map(NonZeroU64::get),
            limits.concurrency.map(|c| c.get() as u64),
            limits.kv_write_bytes.map(NonZeroU64::get),
            limits.kv_writes.map(NonZeroU64::get),
            limits.emit_events,
            limits.emit_bytes,
            limits.emit_depth.map(|d| u64::from(d.get())),
            limits.log_bytes,
            retry.max_attempts.map(|a| u64::from(a.get())),
            self.reuse.map(|n| u64::from(n.get())),
        ];
        for (&(key, max, unit), value) in RANGES.iter().zip(values) {
            if let Some(value) = value
                && value > max
            {
                return Err(invalid(key, format!("({value}) must be at most {max}{unit}")));
            }
        }
        let durations = [
            ("limits.timeout", limits.timeout, false, MAX_TIMEOUT, "an hour"),
            (
                "retry.initial_backoff",
                retry.initial_backoff,
                true,
                MAX_BACKOFF,
                "a week",
            ),
            (
                "retry.max_backoff",
                retry.max_backoff,
                true,
                MAX_BACKOFF,
                "a week",
            ),
        ];
        for (key, value, may_be_zero, most, said) in durations {
            if let Some(value) = value {
                check_duration(value, may_be_zero, most, said).map_err(|message| invalid(key, message))?;
            }
        }
        if let Some(patterns) = &self.subscriptions {
            if patterns.is_empty() {
                return Err(invalid(
                    "subscriptions",
                    "must list at least one pattern (remove the key to use the plugin's own)".to_owned(),
                ));
            }
            for pattern in patterns {
                Pattern::parse(pattern).map_err(|e| {
                    let message = match e {
                        BusError::InvalidPattern { pattern, reason } => {
                            format!("has an invalid pattern {pattern:?}: {reason}")
                        }
                        other => other.to_string(),
                    };
                    invalid("subscriptions", message)
                })?;
            }
        }
        if self.config.keys().any(String::is_empty) {
            return Err(invalid("config", "has an empty key".to_owned()));
        }
        if let Some(multiplier) = self.retry.multiplier
            && !(multiplier.is_finite() && multiplier >= 1.0)
        {
            return Err(invalid(
                "retry.multiplier",
                format!("must be a number of at least 1.0, not {multiplier}"),
            ));
        }
        if let Some(jitter) = self.retry.jitter
            && !(0.0..=1.0).contains(&jitter)
        {
            return Err(invalid(
                "retry.jitter",
                format!("must be between 0.0 and 1.0, not {jitter}"),
            ));
        }
        // Only when both are set here: the other may come from the defaults, and
        // `RetryPolicy::backoff` caps at the maximum anyway.
        if let (Some(initial), Some(max)) = (self.retry.initial_backoff, self.retry.max_backoff)
            && initial > max
        {
            return Err(invalid(
                "retry.initial_backoff",
                format!(
                    "({}) must not exceed retry.max_backoff ({})",
                    humantime::format_duration(initial),
                    humantime::format_duration(max)
                ),
            ));
        }
        Ok(())
    }

    /// The options [`Runtime::load`](crate::Runtime::load) takes, with
    /// [`Limits::default`] for unset limits.
    pub fn plugin_options(&self) -> PluginOptions {
        let defaults = Limits::default();
        let limits = &self.limits;
        let bytes = |value: Option<u64>, default: usize| {
            value.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
        };
        PluginOptions {
            name: None,
            limits: Limits {
                fuel: limits.fuel.map_or(defaults.fuel, NonZeroU64::get),
                timeout: limits.timeout.unwrap_or(defaults.timeout),
                memory_bytes: bytes(
                    limits.memory_mb.map(|mb| mb.get().saturating_mul(1 << 20)),
                    defaults.memory_bytes,
                ),
                kv_write_bytes: bytes(
                    limits.kv_write_bytes.map(NonZeroU64::get),
                    defaults.kv_write_bytes,
                ),
                kv_writes: bytes(limits.kv_writes.map(NonZeroU64::get), defaults.kv_writes),
                emit_events: bytes(limits.emit_events, defaults.emit_events),
                emit_bytes: bytes(limits.emit_bytes, defaults.emit_bytes),
                emit_depth: limits.emit_depth.map_or(defaults.emit_depth, NonZeroU32::get),
                log_bytes: bytes(limits.log_bytes, defaults.log_bytes),
            },
            config: self.config.clone(),
            subscriptions: self.subscriptions.clone(),
            concurrency: self.limits.concurrency.map(NonZeroUsize::get),
            retry: Some(self.retry.policy()),
            reuse: self.reuse,
            ordered: self.ordered.unwrap_or(false),
        }
    }
}

/// Reads `text` as `T`; an error is one line naming the key, the position and what was
/// expected (or, for a renamed key, what to write instead).
pub(crate) fn deserialize_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let document = toml::Deserializer::parse(text).map_err(|e| describe_toml_error(text, None, &e))?;
    // serde_path_to_error tracks the key being read, which toml's error does not expose.
    serde_path_to_error::deserialize(document).map_err(|e| {
        let key = e.path().to_string();
        match crate::config::renamed_key(&key) {
            Some(hint) => match line_and_column(text, e.inner()) {
                Some((line, column)) => format!("{hint} (line {line}, column {column})"),
                None => hint,
            },
            None => describe_toml_error(text, Some(&key), e.inner()),
        }
    })
}

/// Where in `text` the error is, counted from 1.
fn line_and_column(text: &str, error: &toml::de::Error) -> Option<(usize, usize)> {
    let span = error.span()?;
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}

/// One line: the key (when known), the position and toml's own message.
fn describe_toml_error(text: &str, key: Option<&str>, error: &toml::de::Error) -> String {
    let mut description = String::new();
    if let Some(key) = key.filter(|k| !k.is_empty() && *k != ".") {
        description.push_str(&format!("`{key}` "));
    }
    if let Some((line, column)) = line_and_column(text, error) {
        description.push_str(&format!("at line {line}, column {column}"));
    }
    if !description.is_empty() {
        description.push_str(": ");
    }
    description.push_str(error.message().trim_end());
    description
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "plugins/greeter.toml";

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new(ORIGIN))
    }

    #[test]
    fn a_complete_manifest_is_read() {
        let manifest = parse(
            r#"
            subscriptions = ["User*", "PaymentCreated"]
            reuse = 500

            [limits]
            fuel = 1_000_000
            timeout = "250ms"
            memory_mb = 16
            concurrency = 3

            [config]
            greeting = "hi"

            [retry]
            max_attempts = 7
            initial_backoff = "50ms"
            max_backoff = "1s"
            multiplier = 3.0
            jitter = 0.5
            "#,
        )
        .unwrap();
        let options = manifest.plugin_options();
        assert_eq!(
            options.limits,
            Limits {
                fuel: 1_000_000,
                timeout: Duration::from_millis(250),
                memory_bytes: 16 << 20,
                ..Limits::default()
            }
        );
        assert_eq!(options.concurrency, Some(3));
        assert_eq!(options.reuse.map(NonZeroU32::get), Some(500));
        assert_eq!(
            options.subscriptions.as_deref(),
            Some(&["User*".to_owned(), "PaymentCreated".to_owned()][..])
        );
        assert_eq!(options.config["greeting"], "hi");
        assert_eq!(
            manifest.retry.policy(),
            RetryPolicy {
                max_attempts: 7,
                initial_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                multiplier: 3.0,
                jitter: 0.5,
            }
        );
    }

    #[test]
    fn an_empty_manifest_means_the_defaults() {
        let manifest = parse("").unwrap();
        assert_eq!(manifest, Manifest::default());
        let options = manifest.plugin_options();
        assert_eq!(options.limits, Limits::default());
        assert_eq!(
            options.reuse, None,
            "a fresh instance per event unless the plugin opts in"
        );
        assert_eq!(options.subscriptions, None);
        assert_eq!(options.concurrency, None);
        let policy = manifest.retry.policy();
        assert_eq!(policy, RetryPolicy::default());
        assert_eq!(
            (policy.max_attempts, policy.initial_backoff, policy.max_backoff),
            (5, Duration::from_millis(100), Duration::from_secs(30))
        );
        assert_eq!((policy.multiplier, policy.jitter), (2.0, 0.2));
    }

    /// Parses `text`, expecting a failure whose message names the file and `needles`.
    fn refused(text: &str, needles: &[&str]) -> ManifestError {
        let error = parse(text).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with(ORIGIN), "names the file: {message}");
        for needle in needles {
            assert!(message.contains(needle), "mentions {needle:?}: {message}");
        }
        assert!(!message.contains('\n'), "fits one log line: {message:?}");
        error
    }

    #[test]
    fn schema_errors_name_the_file_the_key_the_position_and_the_expectation() {
        let error = refused(
            "[limits]\nfule = 3\n",
            &[
                "`limits.fule`",
                "line 2, column 1",
                "unknown field `fule`",
                "`fuel`",
            ],
        );
        assert!(matches!(error, ManifestError::Parse { .. }), "{error:?}");
        refused("colour = \"red\"\n", &["`colour`", "line 1", "unknown field"]);
        refused(
            "[limits]\ntimeout = \"fast\"\n",
            &[
                "`limits.timeout`",
                "line 2, column 11",
                "invalid value: string \"fast\", expected a duration",
            ],
        );
        refused(
            "subscriptions = \"User*\"\n",
            &["`subscriptions`", "expected a sequence"],
        );
        refused(
            "[retry]\njitter = \"lots\"\n",
            &["`retry.jitter`", "expected f64"],
        );
        refused("[config]\nkey = 3\n", &["`config.key`", "expected a string"]);
        refused("[limits]\nmemory_mb = -1\n", &["`limits.memory_mb`", "line 2"]);
    }

    #[test]
    fn syntax_errors_name_the_file_and_the_position() {
        let error = refused("[limits\ntimeout = \"5s\"\n", &["line 1"]);
        assert!(matches!(error, ManifestError::Parse { .. }), "{error:?}");
    }

    #[test]
    fn out_of_range_values_name_the_file_and_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[limits]\ntimeout = \"0s\"",
                "limits.timeout",
                "must be longer than 0",
            ),
            (
                "[limits]\nmemory_mb = 17592186044416",
                "limits.memory_mb",
                "must be at most 4096",
            ),
            (
                "[limits]\ntimeout = \"3600001ms\"",
                "limits.timeout",
                "(1h 1ms) must be at most an hour",
            ),
            (
                "[limits]\nkv_write_bytes = 2000000000",
                "limits.kv_write_bytes",
                "at most",
            ),
            ("[limits]\nemit_depth = 5000", "limits.emit_depth", "at most 1000"),
            ("reuse = 1000001", "reuse", "(1000001) must be at most 1000000"),
            (
                "[retry]\ninitial_backoff = \"300000years\"\nmax_backoff = \"300000years\"",
                "retry.initial_backoff",
                "must be at most a week",
            ),
            (
                "[retry]\nmax_backoff = \"7days 1ms\"",
                "retry.max_backoff",
                "(7days 1ms) must be at most a week",
            ),
            ("subscriptions = []", "subscriptions", "at least one pattern"),
            (
                "subscriptions = [\"*User\"]",
                "subscriptions",
                "`*` may only appear at the end",
            ),
            ("[config]\n\"\" = \"x\"", "config", "empty key"),
            ("[retry]\nmultiplier = 0.5", "retry.multiplier", "at least 1.0"),
            ("[retry]\nmultiplier = nan", "retry.multiplier", "at least 1.0"),
            ("[retry]\njitter = 1.5", "retry.jitter", "between 0.0 and 1.0"),
            ("[retry]\njitter = -0.1", "retry.jitter", "between 0.0 and 1.0"),
            (
                "[retry]\ninitial_backoff = \"5s\"\nmax_backoff = \"10ms\"",
                "retry.initial_backoff",
                "(5s) must not exceed retry.max_backoff (10ms)",
            ),
        ];
        for (text, key, expected) in cases {
            let quoted = format!("`{key}`");
            let error = refused(text, &[&quoted, expected]);
            match error {
                ManifestError::Invalid { key: got, path, .. } => {
                    assert_eq!((got.as_str(), path.as_path()), (*key, Path::new(ORIGIN)));
                }
                other => panic!("{text}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn zero_is_refused_where_it_makes_no_sense() {
        for key in [
            "limits.fuel",
            "limits.memory_mb",
            "limits.concurrency",
            "limits.kv_writes",
            "limits.kv_write_bytes",
            "limits.emit_depth",
            "retry.max_attempts",
        ] {
            let (table, name) = key.split_once('.').unwrap();
            let error = refused(
                &format!("[{table}]\n{name} = 0\n"),
                &[&format!("`{key}`"), "nonzero"],
            );
            assert!(matches!(error, ManifestError::Parse { .. }), "{error:?}");
        }
        let error = refused("reuse = 0\n", &["`reuse`", "nonzero"]);
        assert!(matches!(error, ManifestError::Parse { .. }), "{error:?}");
        for zero_is_fine in ["[limits]\nemit_events = 0", "[retry]\ninitial_backoff = \"0s\""] {
            parse(zero_is_fine).unwrap();
        }
    }

    #[test]
    fn a_renamed_key_is_refused_with_its_new_name() {
        refused(
            "[limits]\ntimeout_ms = 2000\n",
            &[
                "`limits.timeout_ms` was renamed: use `limits.timeout`, a duration",
                "line 2",
            ],
        );
        refused(
            "[retry]\ninitial_backoff_ms = 10\n",
            &["use `retry.initial_backoff`"],
        );
    }

    #[test]
    fn validate_without_a_file_names_only_the_key() {
        let manifest = Manifest {
            limits: LimitSettings {
                timeout: Some(Duration::ZERO),
                ..Default::default()
            },
            ..Default::default()
        };
        let error = manifest.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "`limits.timeout` must be longer than 0 (e.g. \"1s\" or \"250ms\")"
        );
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let path = Path::new("/nonexistent/evhost/x.toml");
        let error = Manifest::from_file(path).unwrap_err();
        assert!(matches!(error, ManifestError::Io { .. }), "{error:?}");
        assert!(
            error.to_string().contains("/nonexistent/evhost/x.toml"),
            "{error}"
        );
    }

    #[test]
    fn own_values_win_and_defaults_fill_the_gaps() {
        let defaults = parse(
            r#"
            [limits]
            timeout = "1s"
            memory_mb = 64
            [config]
            region = "eu"
            greeting = "hello"
            [retry]
            max_attempts = 9
            jitter = 0.0
            "#,
        )
        .unwrap();
        let own = parse(
            r#"
            subscriptions = ["Only*"]
            [limits]
            timeout = "50ms"
            [config]
            greeting = "hi"
            [retry]
            jitter = 0.1
            "#,
        )
        .unwrap();
        let merged = own.over(&defaults);
        assert_eq!(merged.limits.timeout, Some(Duration::from_millis(50)));
        assert_eq!(merged.limits.memory_mb, NonZeroU64::new(64));
        assert_eq!(merged.limits.fuel, None);
        assert_eq!(merged.subscriptions, Some(vec!["Only*".to_owned()]));
        assert_eq!(merged.config["greeting"], "hi");
        assert_eq!(merged.config["region"], "eu");
        assert_eq!(merged.retry.max_attempts, NonZeroU32::new(9));
        assert_eq!(merged.retry.jitter, Some(0.1));
        assert_eq!(Manifest::default().over(&defaults), defaults);
        assert_eq!(own.over(&Manifest::default()), own);
    }

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter_and_a_cap() {
        let policy = RetryPolicy::default();
        let middle = 0.5;
        assert_eq!(policy.backoff(1, middle), Duration::from_millis(100));
        assert_eq!(policy.backoff(2, middle), Duration::from_millis(200));
        assert_eq!(policy.backoff(4, middle), Duration::from_millis(800));
        assert_eq!(policy.backoff(40, middle), Duration::from_secs(30));
        assert_eq!(policy.backoff(u32::MAX, middle), Duration::from_secs(30));
        let low = policy.backoff(2, 0.0);
        let high = policy.backoff(2, 0.999_999);
        assert_eq!(low, Duration::from_millis(160));
        assert!(
            high > Duration::from_millis(239) && high <= Duration::from_millis(240),
            "{high:?}"
        );
        assert!(policy.backoff(40, 0.999) <= policy.max_backoff);
    }

    #[test]
    fn host_budgets_are_read_and_fill_in_from_the_defaults() {
        let manifest = parse(
            "[limits]\nkv_write_bytes = 1000\nkv_writes = 10\nemit_events = 0\nemit_bytes = 500\n\
             emit_depth = 3\nlog_bytes = 0\n",
        )
        .unwrap();
        let limits = manifest.plugin_options().limits;
        assert_eq!(
            (
                limits.kv_write_bytes,
                limits.kv_writes,
                limits.emit_events,
                limits.emit_bytes
            ),
            (1000, 10, 0, 500)
        );
        assert_eq!((limits.emit_depth, limits.log_bytes), (3, 0));
        let defaults = Manifest::default().plugin_options().limits;
        assert_eq!(defaults, Limits::default());
        let merged = parse("[limits]\nkv_writes = 7\n").unwrap().over(&manifest);
        assert_eq!(merged.limits.kv_writes, NonZeroU64::new(7));
        assert_eq!(merged.limits.emit_depth, NonZeroU32::new(3));
    }

    #[test]
    fn a_manifest_round_trips_through_toml() {
        let manifest =
            parse("[limits]\ntimeout = \"1m 5ms\"\n[retry]\njitter = 0.5\nmax_backoff = \"2h\"\n").unwrap();
        let text = toml::to_string(&manifest).unwrap();
        assert!(!text.contains("fuel"), "unset values are left out: {text}");
        assert!(
            text.contains("timeout = \"1m 5ms\""),
            "durations are written as read: {text}"
        );
        assert_eq!(parse(&text).unwrap(), manifest);
    }
}
