//! Start-up against the server: connecting, checking its version, and making sure every
//! stream, KV bucket and consumer is there with exactly the settings evhost relies on.
//!
//! nats-server 2.9 ignores options it does not know rather than refusing them (a consumer
//! given several filter subjects then receives every subject), so every config the server
//! answers with is compared with the one sent, and any difference refuses the start,
//! naming the option.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, ReplayPolicy, pull};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, context::GetStreamErrorKind, stream};

use super::{Compression, NatsOptions};
use crate::store::StorageError;

/// The oldest server evhost works with: what this module does was verified on 2.9.10.
const MIN_VERSION: (u64, u64) = (2, 9);

/// The oldest server that compresses a stream's storage.
const COMPRESSION_VERSION: (u64, u64) = (2, 10);

/// Connects to the server at `options.url` and checks it can carry evhost: JetStream on,
/// version 2.9 or newer. Reconnects without limit once connected.
pub(super) async fn connect(options: &NatsOptions) -> anyhow::Result<async_nats::Client> {
    let mut connect = async_nats::ConnectOptions::new()
        .name("evhost")
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5));
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if let Some(path) = &options.credentials {
        connect = connect
            .credentials_file(path)
            .await
            .with_context(|| format!("reading the NATS credentials file {}", path.display()))?;
    }
    let client = connect
        .connect(options.url.as_str())
        .await
        .with_context(|| format!("connecting to NATS at {}", options.url))?;
    let info = client.server_info();
    if !info.jetstream {
        bail!(
            "the NATS server at {} has JetStream off: start nats-server with `-js` (and a store directory, `-sd`)",
            options.url
        );
    }
    let version = parse_version(&info.version);
    match version {
        Some((major, minor)) if (major, minor) >= MIN_VERSION => {}
        _ => bail!(
            "the NATS server at {} is version {:?}; evhost needs nats-server {}.{} or newer",
            options.url,
            info.version,
            MIN_VERSION.0,
            MIN_VERSION.1
        ),
    }
    if options.compression != Compression::None && version < Some(COMPRESSION_VERSION) {
        bail!(
            "`[nats] compression = \"{}\"` needs nats-server {}.{} or newer; the server at {} is version {:?}. \
             Upgrade the server or leave compression out (older servers drop it silently)",
            options.compression,
            COMPRESSION_VERSION.0,
            COMPRESSION_VERSION.1,
            options.url,
            info.version
        );
    }
    Ok(client)
}

fn parse_version(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The event stream: `<prefix>.events.<partition>`, kept until every subscription's
/// consumer acknowledged an event, refusing publishes when full.
pub(super) fn events_config(options: &NatsOptions, prefix: &str) -> Config {
    Config {
        name: options.stream.clone(),
        description: Some(format!("evhost events in {} partitions", options.partitions)),
        subjects: vec![format!("{prefix}.events.>")],
        retention: RetentionPolicy::Interest,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        max_bytes: options.max_bytes.map_or(-1, |bytes| bytes as i64),
        duplicate_window: options.duplicate_window,
        num_replicas: 1,
        compression: match options.compression {
            Compression::None => None,
            Compression::S2 => Some(stream::Compression::S2),
        },
        ..Config::default()
    }
}

/// The dead-letter stream: `<prefix>.dlq.<subscription>`, kept until replayed or purged.
pub(super) fn dead_letters_config(options: &NatsOptions, prefix: &str) -> Config {
    Config {
        name: format!("{}_DLQ", options.stream),
        description: Some("evhost dead letters".to_owned()),
        subjects: vec![format!("{prefix}.dlq.>")],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        max_bytes: -1,
        duplicate_window: options.duplicate_window,
        num_replicas: 1,
        ..Config::default()
    }
}

/// The event history: a mirror of the event stream the server keeps for `history`
/// (oldest dropped first) so events can be looked up after every subscription handled
/// them (the event stream forgets them then). Its sequences are the event stream's, so
/// an event's offset is the same in both.
pub(super) fn history_config(options: &NatsOptions, history: Duration) -> Config {
    Config {
        name: format!("{}_HISTORY", options.stream),
        description: Some(format!("evhost event history: a mirror of {}", options.stream)),
        mirror: Some(stream::Source {
            name: options.stream.clone(),
            ..stream::Source::default()
        }),
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        max_age: history,
        max_bytes: -1,
        // What the server sets when none is given: it keeps no more than the history.
        duplicate_window: history.min(Duration::from_secs(120)),
        num_replicas: 1,
        ..Config::default()
    }
}

/// The history stream on `js`, made if missing; a history kept for another time is
/// changed to `options.history` (only how long it keeps events differs, which the server
/// changes in place).
pub(super) async fn ensure_history(
    js: &jetstream::Context,
    options: &NatsOptions,
) -> anyhow::Result<stream::Stream> {
    let wanted = history_config(options, options.history);
    if let Ok(mut existing) = js.get_stream(&wanted.name).await {
        let got = existing
            .info()
            .await
            .with_context(|| format!("reading the JetStream stream {}", wanted.name))?
            .config
            .clone();
        if got.max_age != wanted.max_age || got.duplicate_window != wanted.duplicate_window {
            let mut changed = got;
            changed.max_age = wanted.max_age;
            changed.duplicate_window = wanted.duplicate_window;
            js.update_stream(&changed)
                .await
                .with_context(|| format!("keeping the history {} for {:?}", wanted.name, options.history))?;
        }
    }
    ensure_stream(js, wanted).await
}

/// A KV bucket's stream, made by hand: async-nats' `create_key_value` fails against
/// 2.9 servers (it asks for account fields they do not send). One value per key; the
/// duplicate window makes a write repeated with the same message id a no-op.
pub(super) fn bucket_config(options: &NatsOptions, bucket: &str) -> Config {
    Config {
        name: format!("KV_{bucket}"),
        description: Some("evhost key-value data".to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        max_bytes: -1,
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: options.duplicate_window,
        num_replicas: 1,
        ..Config::default()
    }
}

/// A durable pull consumer every process shares for one subscription: it sees every
/// event (2.9 has one filter subject per consumer; the bus matches types itself), or with
/// `partition` every event of that partition, one at a time (`max_ack_pending` 1: the
/// next is not let out before the last is acknowledged or terminated).
/// Redelivered after `ack_wait` when not acknowledged; no `backoff` (a retry is a nak
/// with the policy's delay) and no delivery limit (evhost dead-letters at the policy's
/// last attempt itself).
pub(super) fn consumer_config(
    options: &NatsOptions,
    prefix: &str,
    durable: &str,
    partition: Option<u32>,
) -> pull::Config {
    pull::Config {
        durable_name: Some(durable.to_owned()),
        description: Some("evhost subscription".to_owned()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_deliver: -1,
        filter_subject: match partition {
            Some(partition) => format!("{prefix}.events.{partition}"),
            None => format!("{prefix}.events.>"),
        },
        replay_policy: ReplayPolicy::Instant,
        max_ack_pending: if partition.is_some() { 1 } else { 10_000 },
        ..pull::Config::default()
    }
}

/// The stream `wanted` describes: created if missing, else checked. Refuses a stream
/// that differs in any option evhost sets, naming it.
pub(super) async fn ensure_stream(js: &jetstream::Context, wanted: Config) -> anyhow::Result<stream::Stream> {
    let name = wanted.name.clone();
    let mut stream = match js.get_stream(&name).await {
        Ok(stream) => stream,
        Err(error) if is_not_found(&error.kind()) => js
            .create_stream(wanted.clone())
            .await
            .with_context(|| format!("creating the JetStream stream {name}"))?,
        Err(error) => return Err(error).with_context(|| format!("looking up the JetStream stream {name}")),
    };
    let got = stream
        .info()
        .await
        .with_context(|| format!("reading the JetStream stream {name}"))?
        .config
        .clone();
    let differences = stream_differences(&wanted, &got);
    if !differences.is_empty() {
        bail!(
            "the JetStream stream {name} does not have the settings evhost needs: {}. \
             Settings a server does not know are dropped silently (nats-server before 2.10); \
             a stream made by an earlier configuration must be removed (`nats stream rm {name}`) \
             or the configuration changed back",
            differences.join("; ")
        );
    }
    Ok(stream)
}

fn is_not_found(kind: &GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(error)
        if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The options a server answered with otherwise than asked.
#[derive(Debug, Default)]
struct Differences(Vec<String>);

impl Differences {
    /// Notes `option` if `got` is not `wanted` (compared as they print).
    fn check(&mut self, option: &str, wanted: impl Debug, got: impl Debug) {
        let (wanted, got) = (format!("{wanted:?}"), format!("{got:?}"));
        if wanted != got {
            self.0
                .push(format!("{option}: wanted {wanted}, the server has {got}"));
        }
    }
}

/// Each option of `wanted` that `got` does not have, as `option: wanted W, the server has G`.
fn stream_differences(wanted: &Config, got: &Config) -> Vec<String> {
    let mut differences = Differences::default();
    differences.check("description", &wanted.description, &got.description);
    differences.check("subjects", &wanted.subjects, &got.subjects);
    differences.check(
        "mirror",
        wanted.mirror.as_ref().map(|mirror| &mirror.name),
        got.mirror.as_ref().map(|mirror| &mirror.name),
    );
    differences.check("max_age", wanted.max_age, got.max_age);
    differences.check("retention", wanted.retention, got.retention);
    differences.check("storage", wanted.storage, got.storage);
    differences.check("discard", wanted.discard, got.discard);
    differences.check("max_bytes", wanted.max_bytes, got.max_bytes);
    differences.check("duplicate_window", wanted.duplicate_window, got.duplicate_window);
    if wanted.max_messages_per_subject != 0 {
        differences.check(
            "max_msgs_per_subject",
            wanted.max_messages_per_subject,
            got.max_messages_per_subject,
        );
    }
    differences.check("allow_rollup_hdrs", wanted.allow_rollup, got.allow_rollup);
    differences.check("deny_delete", wanted.deny_delete, got.deny_delete);
    differences.check("allow_direct", wanted.allow_direct, got.allow_direct);
    // Only asked of a 2.10 server (`connect` refuses older ones), which keeps it.
    if wanted.compression.is_some() {
        differences.check("compression", &wanted.compression, &got.compression);
    }
    differences.0
}

/// The durable consumer `wanted` describes on `stream`: created, or updated to `wanted`
/// when another configuration made it, then checked against what the server answered.
pub(super) async fn ensure_consumer(
    stream: &stream::Stream,
    wanted: pull::Config,
) -> Result<jetstream::consumer::PullConsumer, StorageError> {
    let name = wanted.durable_name.clone().unwrap_or_default();
    let mut consumer = stream.create_consumer(wanted.clone()).await.map_err(|error| {
        StorageError::transient(format!("creating the JetStream consumer {name}: {error}"))
    })?;
    let got = consumer
        .info()
        .await
        .map_err(|error| StorageError::transient(format!("reading the JetStream consumer {name}: {error}")))?
        .config
        .clone();
    let mut differences = Differences::default();
    differences.check("filter_subject", &wanted.filter_subject, &got.filter_subject);
    differences.check("ack_policy", wanted.ack_policy, got.ack_policy);
    differences.check("ack_wait", wanted.ack_wait, got.ack_wait);
    differences.check("max_deliver", wanted.max_deliver, got.max_deliver);
    differences.check("max_ack_pending", wanted.max_ack_pending, got.max_ack_pending);
    differences.check("backoff", Vec::<Duration>::new(), &got.backoff);
    let differences = differences.0;
    if differences.is_empty() {
        Ok(consumer)
    } else {
        Err(StorageError::permanent(format!(
            "the JetStream consumer {name} does not have the settings evhost needs: {}",
            differences.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_with_or_without_a_v() {
        assert_eq!(parse_version("2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("v2.10.1-beta"), Some((2, 10)));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn a_dropped_option_is_named() {
        let options = NatsOptions::new("nats://127.0.0.1:4222");
        let wanted = events_config(&options, "evhost");
        let mut got = wanted.clone();
        got.description = Some("evhost events in 4 partitions".to_owned());
        got.discard = DiscardPolicy::Old;
        let differences = stream_differences(&wanted, &got);
        assert_eq!(differences.len(), 2, "{differences:?}");
        assert!(differences[0].starts_with("description: wanted Some(\"evhost events in 16 partitions\")"));
        assert!(differences[1].starts_with("discard"));
    }

    #[test]
    fn a_history_kept_for_another_time_or_of_another_stream_is_named() {
        let options = NatsOptions::new("nats://127.0.0.1:4222");
        let wanted = history_config(&options, Duration::from_secs(3600));
        assert_eq!(wanted.name, "EVHOST_HISTORY");
        assert_eq!(wanted.duplicate_window, Duration::from_secs(120));
        let mut got = wanted.clone();
        got.max_age = Duration::from_secs(60);
        got.mirror = Some(stream::Source {
            name: "OTHER".to_owned(),
            ..stream::Source::default()
        });
        assert_eq!(
            stream_differences(&wanted, &got),
            [
                "mirror: wanted Some(\"EVHOST\"), the server has Some(\"OTHER\")",
                "max_age: wanted 3600s, the server has 60s"
            ]
        );
        // A short history: the server allows no longer duplicate window than it.
        assert_eq!(
            history_config(&options, Duration::from_secs(30)).duplicate_window,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn compression_dropped_by_the_server_is_named() {
        let mut options = NatsOptions::new("nats://127.0.0.1:4222");
        options.compression = Compression::S2;
        let wanted = events_config(&options, "evhost");
        let mut got = wanted.clone();
        got.compression = None;
        assert_eq!(
            stream_differences(&wanted, &got),
            ["compression: wanted Some(S2), the server has None"]
        );
        assert!(stream_differences(&wanted, &wanted).is_empty());
    }
}
