//! The outbox's tables, triggers and functions in PostgreSQL, and writing to them.

use std::fmt;

use anyhow::Context as _;
use chrono::SecondsFormat;
use tokio_postgres::GenericClient;

use crate::event::{Data, Event, ExtensionValue};

/// The SQL that creates an outbox, with the schema name as the psql variable `:"schema"`.
const SQL_TEMPLATE: &str = include_str!("schema.sql");

/// Where the schema name goes in [`SQL_TEMPLATE`]. `psql -v schema=NAME` fills it in the same way.
const PLACEHOLDER: &str = ":\"schema\"";

/// The longest schema name whose channel, `<schema>_outbox`, fits PostgreSQL's 63-byte limit.
const MAX_SCHEMA_LEN: usize = 63 - "_outbox".len();

/// The schema evhost's outbox lives in unless configured otherwise.
pub const DEFAULT_SCHEMA: &str = "evhost";

/// A schema name that is safe to splice into SQL and to derive the channel name from: a plain
/// lower-case identifier, so it never needs quoting and means the same quoted or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaName(String);

impl SchemaName {
    pub(crate) fn parse(name: &str) -> anyhow::Result<Self> {
        let mut bytes = name.bytes();
        let valid = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && name.len() <= MAX_SCHEMA_LEN
            && !name.starts_with("pg_");
        anyhow::ensure!(
            valid,
            "outbox schema name {name:?} is invalid: use 1 to {MAX_SCHEMA_LEN} lower-case letters, \
             digits or underscores, starting with a letter or underscore, and not starting with `pg_`"
        );
        Ok(Self(name.to_owned()))
    }

    /// The channel the schema's notify trigger signals on.
    pub(crate) fn channel(&self) -> String {
        format!("{}_outbox", self.0)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Quoted, as SQL text wants an identifier.
impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// Operations on an outbox schema in PostgreSQL: installing it, and writing events to it from
/// Rust applications. The relay itself is [`OutboxRelay`](super::OutboxRelay).
#[derive(Debug, Clone, Copy)]
pub struct Outbox;

impl Outbox {
    /// The SQL that creates the outbox in `schema`: what [`Outbox::install_schema`] runs, for
    /// applying by hand or reviewing in a migration.
    pub fn schema_sql(schema: &str) -> anyhow::Result<String> {
        let schema = SchemaName::parse(schema)?;
        Ok(render(&schema))
    }

    /// Creates the outbox in `schema` unless it is already there: its tables, the
    /// position and notify triggers and their functions (see the [module docs](super)).
    ///
    /// Safe to call on every start and from several processes at once: it takes an advisory
    /// lock, and when the outbox is already installed it changes nothing and takes no lock on
    /// the outbox table, so it never stalls the applications writing to it.
    pub async fn install_schema(client: &tokio_postgres::Client, schema: &str) -> anyhow::Result<()> {
        let schema = SchemaName::parse(schema)?;
        if is_installed(client, &schema).await? {
            return Ok(());
        }
        // A multi-statement simple query runs as one implicit transaction, so a failure leaves
        // nothing half-created, and the advisory lock lasts until its end.
        let lock = format!(
            "SELECT pg_advisory_xact_lock(hashtext('evhost outbox ' || '{}'));\n",
            schema.as_str()
        );
        client
            .batch_execute(&(lock + &render(&schema)))
            .await
            .with_context(|| format!("installing the evhost outbox in schema {schema}"))
    }

    /// Connects to the database at `url` and [installs](Self::install_schema) the outbox in
    /// `schema` (what `evhost outbox install` does).
    pub async fn install_at(url: &str, schema: &str) -> anyhow::Result<()> {
        Self::install_schema(&connect(url).await?, schema).await
    }

    /// Whether the outbox is installed in `schema`.
    pub async fn is_installed(client: &tokio_postgres::Client, schema: &str) -> anyhow::Result<bool> {
        is_installed(client, &SchemaName::parse(schema)?).await
    }

    /// What a host checks before it serves with a relay: connects to `url` and makes sure
    /// the outbox is in `schema`, installing it when `install` is set. A relay that could
    /// only fail is refused here, with the command that fixes it, rather than leaving the
    /// host to die after it said it was ready. A database that cannot be reached is only
    /// logged: the relay keeps trying, and may connect once the database is up.
    ///
    /// # Errors
    /// When the outbox is not installed (and `install` is off), or installing it failed.
    pub async fn check_at_start(url: &str, schema: &str, install: bool) -> anyhow::Result<()> {
        let schema_name = SchemaName::parse(schema)?;
        let client = match connect(url).await {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(
                    error = %format!("{error:#}"),
                    "the outbox database cannot be reached at start; the relay keeps trying"
                );
                return Ok(());
            }
        };
        if is_installed(&client, &schema_name).await? {
            return Ok(());
        }
        if install {
            Self::install_schema(&client, schema).await?;
            tracing::info!(schema, "installed the evhost outbox");
            return Ok(());
        }
        anyhow::bail!(
            "the evhost outbox is not installed in schema {schema}: install it with \
             `evhost outbox install URL --schema {schema}`, set `install = true` in [outbox], or \
             apply the SQL of `evhost outbox sql --schema {schema}`"
        )
    }

    /// Inserts `event` into the outbox in `schema`, through `client`: pass the transaction that
    /// writes your own data, and the event is relayed if and only if it commits.
    ///
    /// The event is validated first. Its time is truncated to the microsecond, PostgreSQL's
    /// precision, and defaults to the transaction's start. The outbox carries JSON payloads
    /// only, so binary data is refused; inserting an event whose `source` and `id` are already in the outbox fails
    /// with a unique violation.
    ///
    /// ```no_run
    /// # async fn example(client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
    /// use evhost::Event;
    /// use evhost::outbox::{DEFAULT_SCHEMA, Outbox};
    /// use serde_json::json;
    ///
    /// let tx = client.transaction().await?;
    /// tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = $1", &[&"a-1"])
    ///     .await?;
    /// let debited = Event::new("AccountDebited", "accounts", json!({"amount": 10})).with_subject("a-1");
    /// Outbox::write(&tx, DEFAULT_SCHEMA, &debited).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write<C>(client: &C, schema: &str, event: &Event) -> anyhow::Result<()>
    where
        C: GenericClient + Sync,
    {
        let schema = SchemaName::parse(schema)?;
        event
            .validate()
            .context("writing an invalid event to the outbox")?;
        let data = match &event.data {
            None => None,
            Some(Data::Json(value)) => Some(value.to_string()),
            Some(Data::Binary(_)) => {
                anyhow::bail!(
                    "the outbox carries JSON data only; event {} has binary data",
                    event.id
                )
            }
        };
        // PostgreSQL keeps microseconds; truncating here, rather than letting it round, makes
        // the relayed time predictable.
        let time = event
            .time
            .map(|time| time.to_rfc3339_opts(SecondsFormat::Micros, true));
        let extensions = serde_json::Value::Object(
            event
                .extensions
                .iter()
                .map(|(name, value)| {
                    let value = match value {
                        ExtensionValue::String(s) => s.clone().into(),
                        ExtensionValue::Bool(b) => (*b).into(),
                        ExtensionValue::Integer(i) => (*i).into(),
                    };
                    (name.clone(), value)
                })
                .collect(),
        )
        .to_string();
        let sql = format!(
            "INSERT INTO {schema}.outbox \
             (id, source, type, subject, time, datacontenttype, dataschema, data, extensions) \
             VALUES ($1, $2, $3, $4, coalesce($5::text::timestamptz, now()), $6, $7, \
             $8::text::jsonb, $9::text::jsonb)"
        );
        client
            .execute(
                &sql,
                &[
                    &event.id,
                    &event.source,
                    &event.ty,
                    &event.subject,
                    &time,
                    &event.datacontenttype,
                    &event.dataschema,
                    &data,
                    &extensions,
                ],
            )
            .await
            .with_context(|| format!("writing event {} to the outbox in schema {schema}", event.id))?;
        Ok(())
    }
}

fn render(schema: &SchemaName) -> String {
    SQL_TEMPLATE.replace(PLACEHOLDER, &schema.to_string())
}

/// Whether every object the relay and the triggers rely on exists.
/// A connection to `url` (10 s to connect unless the URL says otherwise), driven by a task
/// of its own.
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().context("the outbox database URL is invalid")?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to the outbox database")?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "outbox database connection ended");
        }
    });
    Ok(client)
}

async fn is_installed(client: &tokio_postgres::Client, schema: &SchemaName) -> anyhow::Result<bool> {
    let row = client
        .query_one(
            "SELECT to_regclass($1 || '.outbox_position') IS NOT NULL \
                AND to_regclass($1 || '.outbox_rejected') IS NOT NULL \
                AND (SELECT count(*) FROM pg_trigger \
                     WHERE tgrelid = to_regclass($1 || '.outbox') \
                       AND tgname IN ('outbox_assign_position', 'outbox_notify')) = 2",
            &[&schema.to_string()],
        )
        .await
        .with_context(|| format!("checking whether the evhost outbox is installed in schema {schema}"))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_lower_case_identifiers() {
        for good in ["evhost", "_x", "evhost_test_0a1b", &"a".repeat(MAX_SCHEMA_LEN)] {
            assert!(SchemaName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Evhost",
            "1abc",
            "a-b",
            "a\"b",
            "pg_outbox",
            &"a".repeat(MAX_SCHEMA_LEN + 1),
        ] {
            assert!(SchemaName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_schema_name_replaces_every_placeholder() {
        let sql = Outbox::schema_sql("billing").unwrap();
        assert!(!sql.contains(PLACEHOLDER));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"billing\".outbox ("));
        assert!(sql.contains("SET search_path = \"billing\", pg_temp"));
        assert_eq!(SchemaName::parse("billing").unwrap().channel(), "billing_outbox");
    }
}
