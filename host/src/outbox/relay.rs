//! The relay loop: read the outbox after the checkpoint, hand batches to the target, wait for
//! a notification or the poll interval, and reconnect with backoff when anything breaks.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Statement};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::OutboxTarget;
use super::row::{COLUMNS, OutboxRow};
use super::schema::{DEFAULT_SCHEMA, SchemaName};

/// Bounds every query, so a connection that died silently (no RST, e.g. a network partition)
/// is noticed in seconds rather than after the kernel's TCP timeouts.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Used unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First delay before reconnecting; doubles per failed attempt up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Settings of one [`OutboxRelay`].
#[derive(Clone)]
pub struct OutboxConfig {
    /// The PostgreSQL URL, e.g. `postgres://evhost@db.internal/orders`. The relay sets
    /// `application_name=evhost-outbox-<relay_name>` and a 10 s `connect_timeout` unless the URL
    /// sets them.
    pub url: String,
    /// The schema holding the outbox (see [`Outbox::install_schema`](super::Outbox::install_schema)).
    pub schema: String,
    /// Names this relay's checkpoint in the target. Run one relay per name and target.
    pub relay_name: String,
    /// Most rows read and appended per round trip; also the most events one
    /// [`OutboxTarget::append_with_checkpoint`] call receives.
    pub batch_size: usize,
    /// How long the relay waits for a notification before reading anyway. Notifications are
    /// the fast path; this bounds the delay when one is lost.
    pub poll_interval: Duration,
}

impl OutboxConfig {
    /// Defaults for everything but the URL: schema `evhost`, relay name `outbox`, batches of
    /// 500 rows, a 5 s poll.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            relay_name: "outbox".to_owned(),
            batch_size: 500,
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// Leaves the URL out: it may carry a password.
impl fmt::Debug for OutboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxConfig")
            .field("url", &"<redacted>")
            .field("schema", &self.schema)
            .field("relay_name", &self.relay_name)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// Relays the rows of a PostgreSQL outbox into an [`OutboxTarget`], in commit order, exactly
/// once. See the [module docs](super) for how, and for what happens to malformed rows.
pub struct OutboxRelay {
    config: OutboxConfig,
    target: Arc<dyn OutboxTarget>,
    metrics: Arc<RelayMetrics>,
}

/// What a relay has done, read at scrape time by its [`OutboxRelay::metrics_collector`].
#[derive(Debug, Default)]
struct RelayMetrics {
    name: String,
    connected: AtomicBool,
    relayed: AtomicU64,
    rejected: AtomicU64,
    /// The last position relayed (the checkpoint).
    checkpoint: AtomicI64,
    /// The newest position the outbox had handed out when the relay last looked.
    newest: AtomicI64,
}

impl prometheus_client::collector::Collector for RelayMetrics {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> fmt::Result {
        use crate::metrics::export::{LabelText, counter_family};
        use prometheus_client::metrics::MetricType;
        let relay = [("relay", LabelText(&self.name))];
        let e = &mut encoder;
        counter_family(
            e,
            "evhost_outbox_relayed",
            "Outbox rows relayed into the log as events.",
            [(relay, self.relayed.load(Ordering::Relaxed))],
        )?;
        counter_family(
            e,
            "evhost_outbox_rejected",
            "Outbox rows that were not valid events, recorded in outbox_rejected and passed over.",
            [(relay, self.rejected.load(Ordering::Relaxed))],
        )?;
        let checkpoint = self.checkpoint.load(Ordering::Relaxed);
        let lag = (self.newest.load(Ordering::Relaxed) - checkpoint).max(0);
        for (name, help, value) in [
            (
                "evhost_outbox_lag",
                "Outbox positions handed out but not yet relayed, when the relay last looked.",
                lag,
            ),
            (
                "evhost_outbox_checkpoint",
                "The last outbox position relayed.",
                checkpoint,
            ),
            (
                "evhost_outbox_connected",
                "1 while the relay is connected to the outbox database.",
                i64::from(self.connected.load(Ordering::Relaxed)),
            ),
        ] {
            e.encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_family(&relay)?
                .encode_gauge(&value)?;
        }
        Ok(())
    }
}

impl fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OutboxRelay {
    /// A relay from the outbox `config` describes into `target`. Nothing happens until
    /// [`run`](Self::run).
    pub fn new(config: OutboxConfig, target: Arc<dyn OutboxTarget>) -> Self {
        let metrics = Arc::new(RelayMetrics {
            name: config.relay_name.clone(),
            ..RelayMetrics::default()
        });
        Self {
            config,
            target,
            metrics,
        }
    }

    /// A collector of this relay's metrics for a Prometheus registry: rows relayed and
    /// rejected, the checkpoint, the lag behind the outbox and whether it is connected.
    pub fn metrics_collector(&self) -> Box<dyn prometheus_client::collector::Collector> {
        Box::new(Arc::clone(&self.metrics))
    }

    /// Relays until `shutdown` is cancelled, then returns `Ok(())`. A batch already handed to
    /// the target is finished first; cancelling never leaves it half-applied.
    ///
    /// Connection failures and target errors are logged and retried with exponential backoff
    /// (100 ms doubling to 30 s), resuming from the target's checkpoint. It returns an error
    /// only for what retrying cannot fix: an invalid configuration, an outbox schema that is
    /// missing or incompatible, or a checkpoint ahead of the outbox's last position (the outbox
    /// was recreated, and relaying would silently skip its rows).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let relay = Prepared::new(&self.config, self.target, self.metrics)?;
        let mut backoff = Backoff::default();
        loop {
            let ended = relay.session(&shutdown, &mut backoff).await;
            relay.metrics.connected.store(false, Ordering::Relaxed);
            match ended {
                Ok(()) => return Ok(()),
                Err(Interrupted::Fatal(error)) => {
                    return Err(error.context(format!("outbox relay {:?} stopped", relay.name)));
                }
                Err(Interrupted::Retry(error)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        relay = %relay.name,
                        error = %format!("{error:#}"),
                        retry_in = ?delay,
                        "outbox relay interrupted; resuming from the checkpoint"
                    );
                    if shutdown
                        .run_until_cancelled(tokio::time::sleep(delay))
                        .await
                        .is_none()
                    {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Why a session ended, other than shutdown.
enum Interrupted {
    /// Retrying cannot help; `run` returns it.
    Fatal(anyhow::Error),
    /// Reconnect after a backoff and resume from the checkpoint.
    Retry(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Interrupted {
    fn from(error: E) -> Self {
        Self::Retry(error.into())
    }
}

/// The validated configuration and the SQL built from it.
struct Prepared {
    pg: tokio_postgres::Config,
    target: Arc<dyn OutboxTarget>,
    metrics: Arc<RelayMetrics>,
    name: String,
    schema: SchemaName,
    batch_size: usize,
    poll_interval: Duration,
    select_sql: String,
    reject_sql: String,
    last_position_sql: String,
}

impl Prepared {
    fn new(
        config: &OutboxConfig,
        target: Arc<dyn OutboxTarget>,
        metrics: Arc<RelayMetrics>,
    ) -> anyhow::Result<Self> {
        let schema = SchemaName::parse(&config.schema)?;
        anyhow::ensure!(config.batch_size > 0, "outbox batch_size must be at least 1");
        anyhow::ensure!(
            !config.poll_interval.is_zero(),
            "outbox poll_interval must be longer than zero"
        );
        anyhow::ensure!(
            !config.relay_name.is_empty(),
            "outbox relay_name must not be empty"
        );
        let mut pg: tokio_postgres::Config =
            config.url.parse().context("the outbox database URL is invalid")?;
        if pg.get_application_name().is_none() {
            pg.application_name(format!("evhost-outbox-{}", config.relay_name));
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        Ok(Self {
            pg,
            target,
            metrics,
            name: config.relay_name.clone(),
            batch_size: config.batch_size,
            poll_interval: config.poll_interval,
            select_sql: format!(
                "SELECT {COLUMNS} FROM {schema}.outbox WHERE position > $1 ORDER BY position LIMIT $2"
            ),
            reject_sql: format!(
                "INSERT INTO {schema}.outbox_rejected (relay, position, error) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING"
            ),
            last_position_sql: format!("SELECT n FROM {schema}.outbox_position"),
            schema,
        })
    }

    /// One connection's worth of relaying. Returns `Ok(())` on shutdown.
    async fn session(&self, shutdown: &CancellationToken, backoff: &mut Backoff) -> Result<(), Interrupted> {
        let Some(connected) = shutdown.run_until_cancelled(self.pg.connect(NoTls)).await else {
            return Ok(());
        };
        let (client, connection) = connected.context("connecting to the outbox database")?;
        let wake = Arc::new(Notify::new());
        let mut connection = AbortOnDropHandle::new(tokio::spawn(drive(connection, Arc::clone(&wake))));

        // LISTEN before the first read: a commit after it either is in that read or notifies.
        let listen = format!("LISTEN \"{}\"", self.schema.channel());
        bounded(client.batch_execute(&listen)).await?;
        let statements = self.prepare(&client).await?;
        let mut checkpoint = self.checkpoint(&client, &statements).await?;
        self.metrics.checkpoint.store(checkpoint, Ordering::Relaxed);
        self.metrics.connected.store(true, Ordering::Relaxed);
        tracing::info!(relay = %self.name, schema = self.schema.as_str(), checkpoint, "outbox relay connected");

        let limit = i64::try_from(self.batch_size).unwrap_or(i64::MAX);
        loop {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&checkpoint, &limit];
            let query = bounded(client.query(&statements.select, &params));
            let Some(rows) = shutdown.run_until_cancelled(query).await else {
                return Ok(());
            };
            let rows = rows?;
            let full = rows.len() == self.batch_size;
            let rows = rows
                .iter()
                .map(OutboxRow::from_pg)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| {
                    Interrupted::Fatal(anyhow::Error::new(error).context(format!(
                        "the outbox table in schema {} does not have the column types evhost expects",
                        self.schema
                    )))
                })?;
            if let Some(last) = rows.last().map(|row| row.position) {
                self.relay_batch(&client, &statements, rows, last).await?;
                checkpoint = last;
                self.metrics.checkpoint.store(last, Ordering::Relaxed);
            }
            backoff.reset();
            if full {
                self.metrics.newest.fetch_max(checkpoint, Ordering::Relaxed);
                continue;
            }
            // Caught up with what was committed; the counter also counts positions of
            // transactions still open, which the lag then includes.
            let newest: i64 = bounded(client.query_one(&statements.last_position, &[]))
                .await?
                .try_get(0)?;
            self.metrics.newest.store(newest, Ordering::Relaxed);
            // Caught up. A notification that arrived meanwhile left a permit, so this returns
            // at once rather than missing it.
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = wake.notified() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
                ended = &mut connection => {
                    let error = match ended {
                        Ok(Ok(())) => anyhow::anyhow!("the server closed the connection"),
                        Ok(Err(error)) => anyhow::Error::new(error),
                        Err(join) => anyhow::Error::new(join),
                    };
                    return Err(error.context("outbox database connection lost").into());
                }
            }
        }
    }

    /// Fails fatally when the schema is missing: a relay retrying forever against a table that
    /// does not exist would only hide the mistake.
    async fn prepare(&self, client: &Client) -> Result<Statements, Interrupted> {
        let prepared = async {
            Ok::<_, tokio_postgres::Error>(Statements {
                select: client.prepare(&self.select_sql).await?,
                reject: client.prepare(&self.reject_sql).await?,
                last_position: client.prepare(&self.last_position_sql).await?,
            })
        };
        match bounded_pg(prepared).await {
            Ok(statements) => Ok(statements),
            Err(Bounded::Pg(error)) if is_missing_object(&error) => {
                Err(Interrupted::Fatal(anyhow::Error::new(error).context(format!(
                    "the evhost outbox is not installed in schema {0}, or is from another version; \
                     install it with `evhost outbox install URL --schema {0}` (or `[outbox] install = true`, \
                     Outbox::install_schema, or the SQL of `evhost outbox sql --schema {0}`)",
                    self.schema
                ))))
            }
            Err(error) => Err(anyhow::Error::from(error)
                .context("preparing the outbox queries")
                .into()),
        }
    }

    /// The target's checkpoint, checked against the outbox.
    async fn checkpoint(&self, client: &Client, statements: &Statements) -> Result<i64, Interrupted> {
        let checkpoint = self
            .target
            .checkpoint(&self.name)
            .await
            .context("reading the relay's checkpoint from the target")?
            .unwrap_or(0);
        let last: i64 = bounded(client.query_one(&statements.last_position, &[]))
            .await?
            .try_get(0)?;
        if checkpoint > last {
            return Err(Interrupted::Fatal(anyhow::anyhow!(
                "the relay's checkpoint, position {checkpoint}, is past the last position the \
                 outbox in schema {} has handed out ({last}): the outbox was recreated or its \
                 counter reset, and relaying would silently skip its rows; restore the counter \
                 (UPDATE {}.outbox_position SET n = {checkpoint}) or use a new relay name",
                self.schema,
                self.schema
            )));
        }
        Ok(checkpoint)
    }

    /// Hands one batch to the target. A row that is not a valid event is recorded in
    /// `outbox_rejected` first (idempotently, so a retried batch records it once), then passed
    /// over; the checkpoint still moves to `last`.
    async fn relay_batch(
        &self,
        client: &Client,
        statements: &Statements,
        rows: Vec<OutboxRow>,
        last: i64,
    ) -> Result<(), Interrupted> {
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let position = row.position;
            match row.into_event() {
                Ok(event) => events.push(event),
                Err(malformed) => {
                    let error = malformed.to_string();
                    tracing::error!(
                        relay = %self.name,
                        schema = self.schema.as_str(),
                        position,
                        error,
                        "outbox row is not a valid event; recorded in outbox_rejected and passed over"
                    );
                    let recorded =
                        bounded(client.execute(&statements.reject, &[&self.name, &position, &error]))
                            .await
                            .context("recording a malformed outbox row in outbox_rejected")?;
                    // A retried batch finds the row recorded already: counted once.
                    self.metrics.rejected.fetch_add(recorded, Ordering::Relaxed);
                }
            }
        }
        let count = events.len();
        self.target
            .append_with_checkpoint(events, &self.name, last)
            .await
            .with_context(|| format!("appending outbox events up to position {last}"))?;
        self.metrics.relayed.fetch_add(count as u64, Ordering::Relaxed);
        tracing::debug!(relay = %self.name, count, checkpoint = last, "outbox batch relayed");
        Ok(())
    }
}

struct Statements {
    select: Statement,
    reject: Statement,
    last_position: Statement,
}

/// Drives the connection: answers to queries, and notifications, which wake the relay.
async fn drive<S, T>(mut connection: Connection<S, T>, wake: Arc<Notify>) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message? {
            AsyncMessage::Notification(_) => wake.notify_one(),
            AsyncMessage::Notice(notice) => tracing::debug!(%notice, "outbox database notice"),
            _ => {}
        }
    }
    Ok(())
}

/// Schema objects that retrying cannot conjure up.
fn is_missing_object(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        [
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_COLUMN,
            SqlState::UNDEFINED_FUNCTION,
            SqlState::INVALID_SCHEMA_NAME,
        ]
        .contains(code)
    })
}

#[derive(Debug, thiserror::Error)]
enum Bounded {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    #[error("no answer from the outbox database within {QUERY_TIMEOUT:?}")]
    TimedOut,
}

async fn bounded_pg<T>(
    request: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Bounded> {
    match tokio::time::timeout(QUERY_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Bounded::TimedOut),
    }
}

async fn bounded<T>(request: impl Future<Output = Result<T, tokio_postgres::Error>>) -> anyhow::Result<T> {
    Ok(bounded_pg(request).await?)
}

/// Exponential backoff with jitter, so relays of several processes do not reconnect in step
/// after a database restart.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// Somewhere between half and all of the current step; the step then doubles.
    fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(BACKOFF_MAX);
        step.mul_f64(0.5 + 0.5 * fastrand::f64())
    }

    /// After progress: the next failure is a fresh one.
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let mut steps = Vec::new();
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(delay <= BACKOFF_MAX);
            steps.push(delay);
        }
        assert!(steps[0] >= BACKOFF_MIN / 2 && steps[0] <= BACKOFF_MIN);
        assert!(steps[11] >= BACKOFF_MAX / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn invalid_configurations_are_refused_before_connecting() {
        struct Nowhere;
        impl OutboxTarget for Nowhere {
            fn checkpoint<'a>(
                &'a self,
                _: &'a str,
            ) -> futures::future::BoxFuture<'a, anyhow::Result<Option<i64>>> {
                unreachable!()
            }
            fn append_with_checkpoint<'a>(
                &'a self,
                _: Vec<crate::Event>,
                _: &'a str,
                _: i64,
            ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
                unreachable!()
            }
        }
        let valid = OutboxConfig::new("postgres://evhost@localhost/app");
        assert!(Prepared::new(&valid, Arc::new(Nowhere), Arc::default()).is_ok());
        let invalid = [
            OutboxConfig {
                schema: "Bad-Schema".to_owned(),
                ..valid.clone()
            },
            OutboxConfig {
                batch_size: 0,
                ..valid.clone()
            },
            OutboxConfig {
                poll_interval: Duration::ZERO,
                ..valid.clone()
            },
            OutboxConfig {
                url: "postgres://[".to_owned(),
                ..valid.clone()
            },
        ];
        for config in invalid {
            assert!(
                Prepared::new(&config, Arc::new(Nowhere), Arc::default()).is_err(),
                "{config:?}"
            );
        }
    }

    #[test]
    fn debug_output_hides_the_url() {
        let config = OutboxConfig::new("postgres://evhost:secret@localhost/app");
        assert!(!format!("{config:?}").contains("secret"));
    }
}
