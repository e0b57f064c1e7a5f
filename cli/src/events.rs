//! `evhost events …`: stored events and their sagas, read from a running host.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use chrono::SecondsFormat;
use clap::Subcommand;
use serde::Deserialize;

use evhost::store::{DeliveryState, DeliveryView, Offset, StoredEvent};

use crate::cli::{HostArgs, answer, path_segment};

/// `evhost events …`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List stored events, newest first: offset, type, id, subject, and each plugin's
    /// state.
    List {
        /// Only events of this type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events with this subject.
        #[arg(long)]
        subject: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one event: its attributes and data, and where its delivery to each plugin
    /// stands (pending, retrying, handled by which version, dead-lettered).
    Show {
        /// The event's id.
        id: String,
        /// Its source, when several events share the id.
        #[arg(long)]
        source: Option<String>,
        /// Print the host's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
    /// Show the saga the event belongs to as a tree: every event of its correlation under
    /// the event that caused it, with the plugin that emitted it and each delivery's state.
    Trace {
        /// The id of any event of the saga.
        id: String,
        /// Its source, when several events share the id.
        #[arg(long)]
        source: Option<String>,
        /// Print the host's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
}

/// The answer of `GET /events`.
#[derive(Debug, Deserialize)]
struct EventPage {
    events: Vec<StoredEvent>,
}

/// The answer of `GET /events/{id}/trace`.
#[derive(Debug, Deserialize)]
struct Trace {
    correlation: String,
    events: Vec<TraceNode>,
    truncated: bool,
}

#[derive(Debug, Deserialize)]
struct TraceNode {
    #[serde(flatten)]
    event: StoredEvent,
    parent: Option<Offset>,
}

/// Runs `command` against the host.
pub async fn run(host: &HostArgs, command: EventsCommand) -> anyhow::Result<()> {
    let client = host.client()?;
    match command {
        EventsCommand::List {
            event_type,
            subject,
            limit,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(event_type.map(|t| ("type", t)));
            query.extend(subject.map(|s| ("subject", s)));
            let response = client
                .send(client.request(reqwest::Method::GET, "/events").query(&query))
                .await?;
            let page: EventPage = answer(response).await?;
            if page.events.is_empty() {
                println!("no events");
            }
            for stored in &page.events {
                println!("{}", one_line(stored));
            }
        }
        EventsCommand::Show { id, source, json } => {
            let path = format!("/events/{}", path_segment(&id));
            let answer = event_read(host, &path, source.as_deref(), json).await?;
            if let Some(value) = answer {
                let stored: StoredEvent =
                    serde_json::from_value(value).context("reading the host's answer")?;
                print!("{}", details(&stored)?);
            }
        }
        EventsCommand::Trace { id, source, json } => {
            let path = format!("/events/{}/trace", path_segment(&id));
            let answer = event_read(host, &path, source.as_deref(), json).await?;
            if let Some(value) = answer {
                let trace: Trace = serde_json::from_value(value).context("reading the host's answer")?;
                print!("{}", tree(&trace));
            }
        }
    }
    Ok(())
}

/// GETs `path` (with `?source=`): with `json`, prints the answer as it is and returns
/// `None`; otherwise returns it to be printed for a person.
async fn event_read(
    host: &HostArgs,
    path: &str,
    source: Option<&str>,
    json: bool,
) -> anyhow::Result<Option<serde_json::Value>> {
    let client = host.client()?;
    let request = client
        .request(reqwest::Method::GET, path)
        .query(&source.map(|s| ("source", s)).into_iter().collect::<Vec<_>>());
    let value: serde_json::Value = answer(client.send(request).await?).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(None);
    }
    Ok(Some(value))
}

/// `offset  type  id  [subject]  plugin:state …`.
fn one_line(stored: &StoredEvent) -> String {
    let event = &stored.event;
    let mut line = format!("{}  {}  {}", stored.offset, event.ty, event.id);
    if let Some(subject) = &event.subject {
        let _ = write!(line, "  subject={subject}");
    }
    for delivery in &stored.deliveries {
        let _ = write!(
            line,
            "  {}:{}",
            delivery.subscription,
            state_word(&delivery.state)
        );
    }
    line
}

/// The state in one word.
fn state_word(state: &DeliveryState) -> &'static str {
    match state {
        DeliveryState::Pending { attempt: 0, .. } => "pending",
        DeliveryState::Pending { .. } => "retrying",
        DeliveryState::Handled { .. } => "handled",
        DeliveryState::DeadLettered { .. } => "dead-lettered",
        DeliveryState::Purged => "purged",
        DeliveryState::Acknowledged => "acknowledged",
        DeliveryState::InFlight => "in flight",
        DeliveryState::Unknown { .. } => "unknown",
    }
}

/// A delivery's state in a sentence.
fn state_text(delivery: &DeliveryView) -> String {
    let mut text = match &delivery.state {
        DeliveryState::Pending { attempt: 0, .. } => "pending".to_owned(),
        DeliveryState::Pending { attempt, not_before } => match not_before {
            Some(at) => format!(
                "retrying at {} (attempt {} failed)",
                at.to_rfc3339_opts(SecondsFormat::Millis, true),
                attempt
            ),
            None => format!("retrying (attempt {attempt} failed)"),
        },
        DeliveryState::Handled { at, version } => {
            let mut text = "handled".to_owned();
            if let Some(at) = at {
                let _ = write!(text, " at {}", at.to_rfc3339_opts(SecondsFormat::Millis, true));
            }
            if let Some(version) = version {
                let _ = write!(text, " by version {version}");
            }
            text
        }
        DeliveryState::DeadLettered {
            dead_at,
            dead_letter_id,
        } => format!(
            "dead-lettered at {} (evhost dlq show {dead_letter_id})",
            dead_at.to_rfc3339_opts(SecondsFormat::Millis, true)
        ),
        DeliveryState::Purged => "purged from the dead-letter queue".to_owned(),
        DeliveryState::Acknowledged => {
            "acknowledged (handled, or dead-lettered and since purged; the log does not record which)"
                .to_owned()
        }
        DeliveryState::InFlight => "in flight (delivered, not known to be done yet)".to_owned(),
        DeliveryState::Unknown { reason } => format!("unknown: {reason}"),
    };
    if let Some(failure) = &delivery.last_failure {
        let _ = write!(
            text,
            "; {} failure(s), last: {}: {}",
            delivery.failures, failure.kind, failure.message
        );
    }
    if !delivery.unknown.is_empty() {
        let _ = write!(text, "; not recorded: {}", delivery.unknown.join(", "));
    }
    text
}

/// Attributes, data and deliveries, for `events show`.
fn details(stored: &StoredEvent) -> anyhow::Result<String> {
    let event = &stored.event;
    let mut out = String::new();
    writeln!(out, "offset:  {}", stored.offset)?;
    writeln!(out, "type:    {}", event.ty)?;
    writeln!(out, "id:      {}", event.id)?;
    writeln!(out, "source:  {}", event.source)?;
    if let Some(subject) = &event.subject {
        writeln!(out, "subject: {subject}")?;
    }
    if let Some(time) = &event.time {
        writeln!(
            out,
            "time:    {}",
            time.to_rfc3339_opts(SecondsFormat::Millis, true)
        )?;
    }
    for (name, value) in &event.extensions {
        writeln!(out, "{name}: {value}")?;
    }
    match &stored.emitted_by {
        Some(plugin) => writeln!(out, "emitted by plugin {plugin}")?,
        None => writeln!(out, "published")?,
    }
    writeln!(out, "data:")?;
    let json = event.to_json();
    let data = json.get("data").or_else(|| json.get("data_base64"));
    let data = data.map_or_else(|| Ok("(none)".to_owned()), serde_json::to_string_pretty)?;
    for line in data.lines() {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "deliveries:")?;
    if stored.deliveries.is_empty() {
        writeln!(out, "  (no plugin was subscribed)")?;
    }
    for delivery in &stored.deliveries {
        writeln!(out, "  {}: {}", delivery.subscription, state_text(delivery))?;
    }
    Ok(out)
}

/// The trace as a tree, each event under its parent (events whose parent is not in the
/// trace start a tree of their own).
fn tree(trace: &Trace) -> String {
    let mut children: BTreeMap<Option<Offset>, Vec<&TraceNode>> = BTreeMap::new();
    for node in &trace.events {
        children.entry(node.parent).or_default().push(node);
    }
    let mut out = format!("correlation {}\n", trace.correlation);
    let roots = children.get(&None).cloned().unwrap_or_default();
    for (i, root) in roots.iter().enumerate() {
        draw(&mut out, &children, root, "", i + 1 == roots.len());
    }
    if trace.truncated {
        out.push_str("(the trace is cut: the correlation holds more events)\n");
    }
    out
}

fn draw(
    out: &mut String,
    children: &BTreeMap<Option<Offset>, Vec<&TraceNode>>,
    node: &TraceNode,
    indent: &str,
    last: bool,
) {
    let (branch, next_indent) = if last {
        ("└─ ", "   ")
    } else {
        ("├─ ", "│  ")
    };
    let stored = &node.event;
    let origin = stored
        .emitted_by
        .as_deref()
        .map_or_else(|| "published".to_owned(), |plugin| format!("emitted by {plugin}"));
    let _ = writeln!(
        out,
        "{indent}{branch}{}  {}  ({origin}, offset {})",
        stored.event.ty, stored.event.id, stored.offset
    );
    let inner = format!("{indent}{next_indent}");
    let kids = children.get(&Some(stored.offset)).cloned().unwrap_or_default();
    let bar = if kids.is_empty() { " " } else { "│" };
    for delivery in &stored.deliveries {
        let _ = writeln!(
            out,
            "{inner}{bar} · {}: {}",
            delivery.subscription,
            state_text(delivery)
        );
    }
    for (i, child) in kids.iter().enumerate() {
        draw(out, children, child, &inner, i + 1 == kids.len());
    }
}
