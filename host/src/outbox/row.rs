//! One outbox row, and the CloudEvent it carries.
//!
//! Columns whose PostgreSQL types need driver features evhost does not enable (`jsonb`,
//! `timestamptz`) are selected as text. Converting them can therefore never make the SELECT
//! itself fail: a bad value surfaces here, for that row alone, as a [`MalformedRow`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::event::{Data, Event, EventError, ExtensionValue, SPEC_VERSION};

/// The select list [`OutboxRow::from_pg`] reads, in its order. `time` comes as RFC 3339 in UTC
/// with an era suffix, so dates before year 1 cannot pass for dates after it.
pub(crate) const COLUMNS: &str = "position, id, source, type, subject, \
    to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"BC'), \
    datacontenttype, dataschema, data::text, extensions::text";

/// One row of the outbox table, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboxRow {
    pub(crate) position: i64,
    pub(crate) id: String,
    pub(crate) source: String,
    pub(crate) ty: String,
    pub(crate) subject: Option<String>,
    /// `None` when the timestamp is infinite.
    pub(crate) time: Option<String>,
    pub(crate) datacontenttype: Option<String>,
    pub(crate) dataschema: Option<String>,
    pub(crate) data: Option<String>,
    pub(crate) extensions: String,
}

/// Why a row cannot become an [`Event`]. The schema's CHECK constraints refuse most of these at
/// insert time; what remains (e.g. a JSON number too large for a 64-bit float) ends up here.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MalformedRow {
    #[error("column `time` must be a finite timestamp between years 1 and 9999, got {0}")]
    Time(String),
    #[error("column `data` holds JSON evhost cannot represent: {0}")]
    Data(serde_json::Error),
    #[error("column `extensions` {0}")]
    Extensions(String),
    #[error("the row is not a valid CloudEvent: {0}")]
    Event(#[from] EventError),
}

impl OutboxRow {
    /// Reads a row selected with [`COLUMNS`].
    pub(crate) fn from_pg(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            position: row.try_get(0)?,
            id: row.try_get(1)?,
            source: row.try_get(2)?,
            ty: row.try_get(3)?,
            subject: row.try_get(4)?,
            time: row.try_get(5)?,
            datacontenttype: row.try_get(6)?,
            dataschema: row.try_get(7)?,
            data: row.try_get(8)?,
            extensions: row.try_get(9)?,
        })
    }

    /// The CloudEvent this row describes, validated as [`Event::validate`] does.
    pub(crate) fn into_event(self) -> Result<Event, MalformedRow> {
        let time = parse_time(self.time.as_deref())?;
        let data = match self.data {
            None => None,
            Some(text) => match serde_json::from_str(&text).map_err(MalformedRow::Data)? {
                Value::Null => None,
                json => Some(Data::Json(json)),
            },
        };
        let event = Event {
            id: self.id,
            source: self.source,
            ty: self.ty,
            specversion: SPEC_VERSION.to_owned(),
            subject: self.subject,
            time: Some(time),
            datacontenttype: self.datacontenttype,
            dataschema: self.dataschema,
            data,
            extensions: parse_extensions(&self.extensions)?,
        };
        event.validate()?;
        Ok(event)
    }
}

fn parse_time(text: Option<&str>) -> Result<DateTime<Utc>, MalformedRow> {
    let text = text.ok_or_else(|| MalformedRow::Time("an infinite timestamp".to_owned()))?;
    let rfc3339 = text
        .strip_suffix("AD")
        .ok_or_else(|| MalformedRow::Time(text.to_owned()))?;
    DateTime::parse_from_rfc3339(rfc3339)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| MalformedRow::Time(rfc3339.to_owned()))
}

/// The same value rules as the CloudEvents JSON format (see `Event::from_value`).
fn parse_extensions(text: &str) -> Result<BTreeMap<String, ExtensionValue>, MalformedRow> {
    let value: Value = serde_json::from_str(text).map_err(|e| MalformedRow::Extensions(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(MalformedRow::Extensions(format!(
            "must be a JSON object, got {}",
            crate::event::json_kind(&value)
        )));
    };
    map.into_iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(s) => ExtensionValue::String(s),
                Value::Bool(b) => ExtensionValue::Bool(b),
                Value::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                    Some(i) => ExtensionValue::Integer(i),
                    None => return Err(EventError::ExtensionValue { name }.into()),
                },
                _ => return Err(EventError::ExtensionValue { name }.into()),
            };
            Ok((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row() -> OutboxRow {
        OutboxRow {
            position: 7,
            id: "order-1-created".to_owned(),
            source: "orders".to_owned(),
            ty: "OrderCreated".to_owned(),
            subject: Some("order-1".to_owned()),
            time: Some("2024-05-06T07:08:09.123456ZAD".to_owned()),
            datacontenttype: Some("application/json".to_owned()),
            dataschema: Some("https://schemas.example/order/v1".to_owned()),
            data: Some(r#"{"total": 42}"#.to_owned()),
            extensions: r#"{"correlationid": "flow-1", "priority": 3, "traced": true}"#.to_owned(),
        }
    }

    #[test]
    fn every_column_maps_onto_the_event() {
        let event = row().into_event().unwrap();
        assert_eq!(event.id, "order-1-created");
        assert_eq!(event.source, "orders");
        assert_eq!(event.ty, "OrderCreated");
        assert_eq!(event.specversion, "1.0");
        assert_eq!(event.subject.as_deref(), Some("order-1"));
        assert_eq!(
            event.time.unwrap().to_rfc3339(),
            "2024-05-06T07:08:09.123456+00:00"
        );
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(
            event.dataschema.as_deref(),
            Some("https://schemas.example/order/v1")
        );
        assert_eq!(event.json_data(), Some(&json!({"total": 42})));
        assert_eq!(event.correlation_id(), Some("flow-1"));
        assert_eq!(event.extensions["priority"], ExtensionValue::Integer(3));
        assert_eq!(event.extensions["traced"], ExtensionValue::Bool(true));
    }

    #[test]
    fn sql_null_and_json_null_data_both_mean_no_payload() {
        for data in [None, Some("null".to_owned())] {
            let event = OutboxRow { data, ..row() }.into_event().unwrap();
            assert_eq!(event.data, None);
        }
    }

    #[test]
    fn json_numbers_beyond_a_float_are_malformed() {
        let huge = format!(r#"{{"n": 1{}}}"#, "0".repeat(400));
        let err = OutboxRow {
            data: Some(huge),
            ..row()
        }
        .into_event()
        .unwrap_err();
        assert!(matches!(err, MalformedRow::Data(_)), "{err}");
    }

    #[test]
    fn times_outside_rfc3339_are_malformed() {
        for time in [
            None,
            Some("0044-03-15T00:00:00.000000ZBC"),
            Some("12345-01-01T00:00:00.000000ZAD"),
        ] {
            let err = OutboxRow {
                time: time.map(str::to_owned),
                ..row()
            }
            .into_event()
            .unwrap_err();
            assert!(matches!(err, MalformedRow::Time(_)), "{err}");
        }
    }

    #[test]
    fn bad_extensions_are_malformed() {
        for extensions in [
            r#"[1]"#,
            r#"{"Bad": 1}"#,
            r#"{"x": 1.5}"#,
            r#"{"x": {"a": 1}}"#,
            r#"{"id": "x"}"#,
        ] {
            let result = OutboxRow {
                extensions: extensions.to_owned(),
                ..row()
            }
            .into_event();
            assert!(result.is_err(), "{extensions} was accepted");
        }
    }

    #[test]
    fn empty_required_attributes_are_malformed() {
        let err = OutboxRow {
            ty: String::new(),
            ..row()
        }
        .into_event()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the row is not a valid CloudEvent: attribute `type` must not be empty"
        );
    }
}
