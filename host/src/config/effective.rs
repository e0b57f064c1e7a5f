//! The effective configuration as `GET /config` shows it: every setting with its value
//! and where that value came from (the default, the file, an `EVHOST_*` variable, a
//! `--set`, a flag), secrets left out.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::Config;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", content = "from", rename_all = "kebab-case")]
pub enum Source {
    /// Nothing set it.
    Default,
    /// The configuration file (its path).
    File(String),
    /// An environment variable (its name).
    Env(String),
    /// A `--set KEY=VALUE` flag.
    Set(String),
    /// A command-line flag (its name, and the variable that stands for it).
    Flag(String),
}

/// Which layer set each key (dotted, as `bus.capacity`); keys not named kept their
/// default. A key names a value or a whole table (`plugins.limits` set by a variable
/// holding a table covers every key under it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources(BTreeMap<String, Source>);

impl Sources {
    /// Records that `key` was set by `source` (a later layer overrides an earlier one).
    pub fn set(&mut self, key: impl Into<String>, source: Source) {
        let key = key.into();
        // A table set as a whole overrides what was said of its keys before.
        let prefix = format!("{key}.");
        self.0.retain(|known, _| !known.starts_with(&prefix));
        self.0.insert(key, source);
    }

    /// Records every key of the TOML `table` (under `prefix`) as set by `source`.
    pub(super) fn set_table(&mut self, prefix: &str, table: &toml::Table, source: &Source) {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                toml::Value::Table(inner) => self.set_table(&key, inner, source),
                _ => self.set(key, source.clone()),
            }
        }
    }

    /// Where `key`'s value came from: the key itself, else the closest table above it.
    pub fn of(&self, key: &str) -> Source {
        let mut key = key;
        loop {
            if let Some(source) = self.0.get(key) {
                return source.clone();
            }
            match key.rsplit_once('.') {
                Some((parent, _)) => key = parent,
                None => return Source::Default,
            }
        }
    }
}

/// One setting of [`effective`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting {
    /// The dotted key, e.g. `bus.capacity`.
    pub key: String,
    /// Its value (a list as a whole; secrets never appear).
    pub value: Value,
    /// Where it came from.
    #[serde(flatten)]
    pub source: Source,
}

/// Every setting of `config` in key order, with its source. Secrets are not serialized at
/// all (token secrets, the outbox URL, the NATS token), and a password in any URL is
/// replaced by `***`.
pub fn effective(config: &Config) -> Vec<Setting> {
    let value = serde_json::to_value(config).unwrap_or(Value::Null);
    let mut settings = Vec::new();
    flatten("", value, &mut settings, &config.sources);
    settings
}

fn flatten(prefix: &str, value: Value, out: &mut Vec<Setting>, sources: &Sources) {
    match value {
        Value::Object(map) if !map.is_empty() || prefix.is_empty() => {
            for (name, value) in map {
                let key = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}.{name}")
                };
                flatten(&key, value, out, sources);
            }
        }
        other => out.push(Setting {
            key: prefix.to_owned(),
            source: sources.of(prefix),
            value: redact(other),
        }),
    }
}

/// `value` with the password of every URL in it replaced by `***`.
fn redact(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(redact_url(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, redact(v))).collect()),
        other => other,
    }
}

/// `scheme://user:password@host…` as `scheme://user:***@host…`; other text as it is.
fn redact_url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return text.to_owned();
    };
    let Some((user, _password)) = userinfo.split_once(':') else {
        return text.to_owned();
    };
    format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_comes_from_its_own_entry_or_the_closest_table_above_it() {
        let mut sources = Sources::default();
        sources.set("bus.capacity", Source::Env("EVHOST_BUS__CAPACITY".into()));
        sources.set("plugins.limits", Source::Set("plugins.limits".into()));
        assert_eq!(
            sources.of("bus.capacity"),
            Source::Env("EVHOST_BUS__CAPACITY".into())
        );
        assert_eq!(sources.of("bus.max_concurrency"), Source::Default);
        assert_eq!(
            sources.of("plugins.limits.timeout_ms"),
            Source::Set("plugins.limits".into())
        );
        sources.set("plugins", Source::Flag("--x".into()));
        assert_eq!(
            sources.of("plugins.limits.timeout_ms"),
            Source::Flag("--x".into()),
            "a table set whole overrides its keys"
        );
    }

    #[test]
    fn passwords_in_urls_are_redacted_and_other_text_kept() {
        assert_eq!(
            redact_url("nats://app:s3cret@nats:4222"),
            "nats://app:***@nats:4222"
        );
        assert_eq!(
            redact_url("postgres://u:p@db/orders?x=1"),
            "postgres://u:***@db/orders?x=1"
        );
        assert_eq!(redact_url("nats://nats:4222"), "nats://nats:4222");
        assert_eq!(redact_url("nats://token@nats:4222"), "nats://token@nats:4222");
        assert_eq!(redact_url("plain text: a@b"), "plain text: a@b");
    }

    #[test]
    fn the_effective_configuration_names_each_value_and_its_source_without_secrets() {
        let mut config = Config::default();
        config.auth.tokens.push(super::super::TokenSettings {
            name: "ops".into(),
            secret: Some("a-very-long-secret-value".into()),
            secret_file: None,
            secret_env: None,
            sha256: None,
            scopes: vec![crate::http::auth::Scope::Admin],
        });
        config.sources.set("listen", Source::Flag("--listen".into()));
        let settings = effective(&config);
        let listen = settings.iter().find(|s| s.key == "listen").unwrap();
        assert_eq!(listen.source, Source::Flag("--listen".into()));
        let capacity = settings.iter().find(|s| s.key == "bus.capacity").unwrap();
        assert_eq!(capacity.source, Source::Default);
        let text = serde_json::to_string(&settings).unwrap();
        assert!(!text.contains("a-very-long-secret-value"), "{text}");
        assert!(text.contains("\"ops\""), "the token is listed by name: {text}");
    }
}
