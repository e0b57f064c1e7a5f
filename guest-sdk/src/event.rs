//! The event a handler receives.

use std::any::type_name;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::evhost::plugin::types as wit;
use crate::error::{EncodeError, HandlerError};

/// The extension attribute that carries the correlation id.
const CORRELATION_ID: &str = "correlationid";
/// The extension attribute that carries the causation id.
const CAUSATION_ID: &str = "causationid";

/// A CloudEvents 1.0 event, as delivered to [`Handler::handle`](crate::Handler::handle).
///
/// The attribute accessors borrow; [`data_json`](Self::data_json) decodes the payload.
/// For unit tests, build one with [`Event::new`] and the `with_*` methods.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    id: String,
    source: String,
    event_type: String,
    subject: Option<String>,
    time: Option<String>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    data: Option<Vec<u8>>,
    extensions: Vec<(String, ExtensionValue)>,
}

impl Event {
    /// An event with the required attributes and nothing else, e.g. for a unit test.
    pub fn new(id: impl Into<String>, source: impl Into<String>, event_type: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            source: source.into(),
            event_type: event_type.into(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            data: None,
            extensions: Vec::new(),
        }
    }

    /// Sets `subject`.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets `time` (RFC 3339).
    pub fn with_time(mut self, time: impl Into<String>) -> Self {
        self.time = Some(time.into());
        self
    }

    /// Sets `dataschema`.
    pub fn with_dataschema(mut self, dataschema: impl Into<String>) -> Self {
        self.dataschema = Some(dataschema.into());
        self
    }

    /// Sets `data` and its media type.
    pub fn with_data(mut self, datacontenttype: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        self.datacontenttype = Some(datacontenttype.into());
        self.data = Some(data.into());
        self
    }

    /// Sets `data` to `value` encoded as JSON, with media type `application/json`.
    pub fn with_json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, EncodeError> {
        let data = crate::publish::encode_json(&self.event_type, value)?;
        Ok(self.with_data("application/json", data))
    }

    /// Adds an extension attribute, e.g. `with_extension("correlationid", "c-1")`.
    pub fn with_extension(mut self, name: impl Into<String>, value: impl Into<ExtensionValue>) -> Self {
        self.extensions.push((name.into(), value.into()));
        self
    }

    /// The event id, unique within [`source`](Self::source).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The context that produced the event, e.g. `users-service`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The event type, e.g. `UserCreated`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// What the event is about (usually the aggregate id); also the host's ordering key.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// When it happened (RFC 3339), if the producer said.
    pub fn time(&self) -> Option<&str> {
        self.time.as_deref()
    }

    /// The media type of [`data`](Self::data); CloudEvents reads an absent one as JSON.
    pub fn datacontenttype(&self) -> Option<&str> {
        self.datacontenttype.as_deref()
    }

    /// The URI of the schema `data` follows; tells payload versions apart.
    pub fn dataschema(&self) -> Option<&str> {
        self.dataschema.as_deref()
    }

    /// The raw payload.
    pub fn data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }

    /// Decodes the JSON payload into `T`.
    ///
    /// Fails if there is no payload, if `datacontenttype` names something other than JSON,
    /// or if the JSON does not match `T`. The error names the event and the type, and turns
    /// into [`HandlerError::Reject`] with `?`.
    pub fn data_json<T: DeserializeOwned>(&self) -> Result<T, DataError> {
        let data = self
            .data
            .as_deref()
            .ok_or_else(|| self.data_error(DataErrorKind::Missing))?;
        if let Some(content_type) = self.datacontenttype.as_deref()
            && !is_json(content_type)
        {
            return Err(self.data_error(DataErrorKind::NotJson(content_type.to_owned())));
        }
        serde_json::from_slice(data).map_err(|source| {
            self.data_error(DataErrorKind::Invalid {
                target: type_name::<T>(),
                source,
            })
        })
    }

    /// All extension attributes, in the order they arrived.
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &ExtensionValue)> {
        self.extensions.iter().map(|(name, value)| (name.as_str(), value))
    }

    /// The extension attribute `name` (CloudEvents names are lower-case).
    pub fn extension(&self, name: &str) -> Option<&ExtensionValue> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    }

    /// The correlation id: shared by every event of one business transaction.
    pub fn correlation_id(&self) -> Option<&str> {
        self.extension(CORRELATION_ID).and_then(ExtensionValue::as_str)
    }

    /// The causation id: the id of the event that caused this one.
    pub fn causation_id(&self) -> Option<&str> {
        self.extension(CAUSATION_ID).and_then(ExtensionValue::as_str)
    }

    fn data_error(&self, kind: DataErrorKind) -> DataError {
        DataError {
            event_id: self.id.clone(),
            event_type: self.event_type.clone(),
            kind,
        }
    }
}

impl From<wit::Event> for Event {
    fn from(event: wit::Event) -> Self {
        Self {
            id: event.id,
            source: event.source,
            event_type: event.type_,
            subject: event.subject,
            time: event.time,
            datacontenttype: event.datacontenttype,
            dataschema: event.dataschema,
            data: event.data,
            extensions: event
                .extensions
                .into_iter()
                .map(|(name, value)| (name, value.into()))
                .collect(),
        }
    }
}

/// `application/json`, `text/json` and structured-syntax types such as
/// `application/cloudevents+json`, with or without parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// The value of a CloudEvents extension attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtensionValue {
    /// A string (also used for URIs and timestamps).
    String(String),
    /// A boolean.
    Boolean(bool),
    /// A 32-bit integer.
    Integer(i32),
}

impl ExtensionValue {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for ExtensionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) => f.write_str(s),
            Self::Boolean(b) => write!(f, "{b}"),
            Self::Integer(i) => write!(f, "{i}"),
        }
    }
}

impl From<String> for ExtensionValue {
    fn from(value: String) -> Self {
        Self::String(value)
    }
}

impl From<&str> for ExtensionValue {
    fn from(value: &str) -> Self {
        Self::String(value.to_owned())
    }
}

impl From<bool> for ExtensionValue {
    fn from(value: bool) -> Self {
        Self::Boolean(value)
    }
}

impl From<i32> for ExtensionValue {
    fn from(value: i32) -> Self {
        Self::Integer(value)
    }
}

impl From<wit::ExtensionValue> for ExtensionValue {
    fn from(value: wit::ExtensionValue) -> Self {
        match value {
            wit::ExtensionValue::String(s) => Self::String(s),
            wit::ExtensionValue::Boolean(b) => Self::Boolean(b),
            wit::ExtensionValue::Integer(i) => Self::Integer(i),
        }
    }
}

impl From<ExtensionValue> for wit::ExtensionValue {
    fn from(value: ExtensionValue) -> Self {
        match value {
            ExtensionValue::String(s) => Self::String(s),
            ExtensionValue::Boolean(b) => Self::Boolean(b),
            ExtensionValue::Integer(i) => Self::Integer(i),
        }
    }
}

/// An event's payload could not be decoded; see [`Event::data_json`].
///
/// Converts into [`HandlerError::Reject`]: the same bytes will not decode on a retry.
#[derive(Debug)]
pub struct DataError {
    event_id: String,
    event_type: String,
    kind: DataErrorKind,
}

#[derive(Debug)]
enum DataErrorKind {
    Missing,
    NotJson(String),
    Invalid {
        target: &'static str,
        source: serde_json::Error,
    },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            event_id,
            event_type,
            kind,
        } = self;
        write!(f, "{event_type} event `{event_id}`: ")?;
        match kind {
            DataErrorKind::Missing => write!(f, "has no data"),
            DataErrorKind::NotJson(content_type) => {
                write!(f, "data has content type `{content_type}`, not JSON")
            }
            DataErrorKind::Invalid { target, source } => {
                write!(f, "data does not decode as `{target}`: {source}")
            }
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            DataErrorKind::Invalid { source, .. } => Some(source),
            DataErrorKind::Missing | DataErrorKind::NotJson(_) => None,
        }
    }
}

impl From<DataError> for HandlerError {
    fn from(error: DataError) -> Self {
        Self::Reject(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct User {
        id: String,
        age: u32,
    }

    fn event() -> Event {
        Event::new("e-1", "tests", "UserCreated")
    }

    #[test]
    fn decodes_json_data() {
        let event = event()
            .with_json(&serde_json::json!({ "id": "u1", "age": 7 }))
            .unwrap();
        assert_eq!(
            event.data_json::<User>().unwrap(),
            User {
                id: "u1".into(),
                age: 7
            }
        );
        assert_eq!(event.datacontenttype(), Some("application/json"));
    }

    #[test]
    fn absent_content_type_means_json() {
        let mut event = event().with_data("x", br#"{"id":"u1","age":1}"#.to_vec());
        event.datacontenttype = None;
        assert!(event.data_json::<User>().is_ok());
    }

    #[test]
    fn accepts_json_media_types_with_parameters() {
        for content_type in [
            "application/json; charset=utf-8",
            "text/json",
            "application/vnd.a+json",
        ] {
            let event = event().with_data(content_type, br#"{"id":"u1","age":1}"#.to_vec());
            assert!(event.data_json::<User>().is_ok(), "{content_type}");
        }
    }

    #[test]
    fn errors_name_the_event_and_the_problem() {
        let missing = event().data_json::<User>().unwrap_err().to_string();
        assert_eq!(missing, "UserCreated event `e-1`: has no data");

        let text = event()
            .with_data("text/plain", b"hi".to_vec())
            .data_json::<User>()
            .unwrap_err();
        assert_eq!(
            text.to_string(),
            "UserCreated event `e-1`: data has content type `text/plain`, not JSON"
        );

        let invalid = event().with_json(&serde_json::json!({ "id": "u1" })).unwrap();
        let error = invalid.data_json::<User>().unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("does not decode as `evhost_guest::event::tests::User`"),
            "{message}"
        );
        assert!(message.contains("missing field `age`"), "{message}");
        assert!(matches!(HandlerError::from(error), HandlerError::Reject(_)));
    }

    #[test]
    fn correlation_and_causation_ids() {
        let event = event()
            .with_extension("correlationid", "c-1")
            .with_extension("causationid", "e-0")
            .with_extension("priority", 3);
        assert_eq!(event.correlation_id(), Some("c-1"));
        assert_eq!(event.causation_id(), Some("e-0"));
        assert_eq!(event.extension("priority"), Some(&ExtensionValue::Integer(3)));
        assert_eq!(event.extensions().count(), 3);
    }

    #[test]
    fn converts_from_the_wit_type() {
        let event = Event::from(wit::Event {
            id: "e-9".into(),
            source: "s".into(),
            type_: "T".into(),
            subject: Some("u1".into()),
            time: None,
            datacontenttype: None,
            dataschema: Some("https://x/v2".into()),
            data: Some(b"{}".to_vec()),
            extensions: vec![("correlationid".into(), wit::ExtensionValue::String("c".into()))],
        });
        assert_eq!(event.event_type(), "T");
        assert_eq!(event.subject(), Some("u1"));
        assert_eq!(event.dataschema(), Some("https://x/v2"));
        assert_eq!(event.correlation_id(), Some("c"));
    }
}
