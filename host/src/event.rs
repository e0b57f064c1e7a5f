//! CloudEvents 1.0 events: the unit everything in evhost carries.
//!
//! An [`Event`] is built in Rust with [`Event::new`] (id and time filled in) or parsed from
//! the CloudEvents JSON format with [`Event::from_json`]. Parsing and [`Event::validate`]
//! reject a missing or empty required attribute, a wrong `specversion` and a bad extension
//! with an [`EventError`] that names the attribute.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The only CloudEvents version evhost speaks.
pub const SPEC_VERSION: &str = "1.0";

/// Extension carrying the id shared by every event of one business flow.
pub const CORRELATION_ID: &str = "correlationid";
/// Extension carrying the id of the event that caused this one.
pub const CAUSATION_ID: &str = "causationid";
/// The extension attribute that counts hops from the event that started a chain: absent
/// (or 0) on an event published from outside, one more than its cause's on an emitted one.
/// The host refuses to emit an event deeper than a plugin's `emit_depth` limit.
pub const CAUSATION_DEPTH: &str = "causationdepth";

/// Attribute names the CloudEvents JSON format reserves; they can never be extensions.
const RESERVED: &[&str] = &[
    "id",
    "source",
    "type",
    "specversion",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// A CloudEvents 1.0 event.
///
/// Fields are public so handlers can read them freely; anything built by hand is checked
/// by [`Event::validate`] before a bus accepts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique within `source`; producers retrying a publish reuse it.
    pub id: String,
    /// Identifies the context that produced the event, e.g. `users-service`.
    pub source: String,
    /// The event type subscriptions match on, e.g. `UserCreated`.
    pub ty: String,
    /// Always [`SPEC_VERSION`].
    pub specversion: String,
    /// What the event is about, e.g. the aggregate id. evhost uses it as the ordering key.
    pub subject: Option<String>,
    /// When the occurrence happened.
    pub time: Option<DateTime<Utc>>,
    /// Media type of `data`, e.g. `application/json`.
    pub datacontenttype: Option<String>,
    /// URI of the schema `data` adheres to; handlers use it to tell payload versions apart.
    pub dataschema: Option<String>,
    /// The payload.
    pub data: Option<Data>,
    /// Extension attributes, keyed by their (lower-case alphanumeric) name.
    pub extensions: BTreeMap<String, ExtensionValue>,
}

/// An event payload: JSON, or raw bytes (`data_base64` in the JSON format).
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// A JSON value (objects, arrays, strings, numbers…).
    Json(Value),
    /// Opaque bytes.
    Binary(Vec<u8>),
}

/// The value of an extension attribute, one of the CloudEvents types JSON can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionValue {
    /// A string (also how URIs and timestamps travel).
    String(String),
    /// A boolean.
    Bool(bool),
    /// A 32-bit signed integer, as the specification requires.
    Integer(i32),
}

impl fmt::Display for ExtensionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) => f.write_str(s),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Integer(i) => write!(f, "{i}"),
        }
    }
}

impl From<&str> for ExtensionValue {
    fn from(value: &str) -> Self {
        Self::String(value.to_owned())
    }
}

impl From<String> for ExtensionValue {
    fn from(value: String) -> Self {
        Self::String(value)
    }
}

impl From<bool> for ExtensionValue {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl From<i32> for ExtensionValue {
    fn from(value: i32) -> Self {
        Self::Integer(value)
    }
}

/// Why an event is not a valid CloudEvent. Every variant names the attribute at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// The document is not JSON, or not a JSON object.
    #[error("event is not valid JSON: {0}")]
    Json(String),
    /// The document is JSON but not an object.
    #[error("event must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// A required attribute is absent.
    #[error("missing required attribute `{0}`")]
    Missing(&'static str),
    /// A required attribute is present but empty.
    #[error("attribute `{0}` must not be empty")]
    Empty(&'static str),
    /// An attribute has the wrong JSON type.
    #[error("attribute `{attribute}` must be {expected}")]
    WrongType {
        /// The attribute name.
        attribute: String,
        /// What was expected, e.g. "a string".
        expected: &'static str,
    },
    /// `specversion` is not `1.0`.
    #[error("attribute `specversion` must be \"1.0\", got {0:?}")]
    SpecVersion(String),
    /// `time` is not an RFC 3339 timestamp.
    #[error("attribute `time` must be an RFC 3339 timestamp, got {0:?}")]
    Time(String),
    /// `data_base64` is not valid base64.
    #[error("attribute `data_base64` is not valid base64: {0}")]
    Base64(String),
    /// Both `data` and `data_base64` are present.
    #[error("attributes `data` and `data_base64` are mutually exclusive")]
    DataConflict,
    /// An extension name is not lower-case alphanumeric, or is reserved.
    #[error(
        "extension name `{0}` is invalid: names are 1 or more lower-case letters a-z or digits 0-9 and must not be a reserved attribute"
    )]
    ExtensionName(String),
    /// An extension value is not a string, boolean or 32-bit integer.
    #[error("extension `{name}` must be a string, boolean or 32-bit integer")]
    ExtensionValue {
        /// The extension name.
        name: String,
    },
}

impl Event {
    /// A new event of type `ty` from `source`, with a fresh time-ordered id, the current time,
    /// and `data` as its JSON payload (`datacontenttype` `application/json`). `Value::Null`
    /// means no payload.
    ///
    /// ```
    /// use evhost::Event;
    /// use serde_json::json;
    ///
    /// let event = Event::new("UserCreated", "users-service", json!({"id": "u1"}))
    ///     .with_subject("u1");
    /// assert!(event.validate().is_ok());
    /// ```
    pub fn new(ty: impl Into<String>, source: impl Into<String>, data: Value) -> Self {
        let (data, datacontenttype) = match data {
            Value::Null => (None, None),
            json => (Some(Data::Json(json)), Some("application/json".to_owned())),
        };
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            source: source.into(),
            ty: ty.into(),
            specversion: SPEC_VERSION.to_owned(),
            subject: None,
            time: Some(Utc::now()),
            datacontenttype,
            dataschema: None,
            data,
            extensions: BTreeMap::new(),
        }
    }

    /// Sets the id (producers that retry a publish keep the same id).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the subject, which is also the ordering key.
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets `dataschema`.
    pub fn with_dataschema(mut self, schema: impl Into<String>) -> Self {
        self.dataschema = Some(schema.into());
        self
    }

    /// Sets an extension attribute. The name is checked by [`Event::validate`].
    pub fn with_extension(mut self, name: impl Into<String>, value: impl Into<ExtensionValue>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }

    /// Sets the correlation id extension.
    pub fn with_correlation_id(self, id: impl Into<String>) -> Self {
        self.with_extension(CORRELATION_ID, id.into())
    }

    /// Sets the causation id extension.
    pub fn with_causation_id(self, id: impl Into<String>) -> Self {
        self.with_extension(CAUSATION_ID, id.into())
    }

    /// Marks this event as caused by `cause`: the causation id becomes `cause.id`, the
    /// correlation id is carried over (or starts at `cause.id` when `cause` has none) and
    /// the causation depth is one more than `cause`'s.
    pub fn caused_by(self, cause: &Event) -> Self {
        let correlation = cause.correlation_id().unwrap_or(&cause.id).to_owned();
        let depth = i32::try_from(cause.causation_depth().saturating_add(1)).unwrap_or(i32::MAX);
        self.with_correlation_id(correlation)
            .with_causation_id(cause.id.clone())
            .with_extension(CAUSATION_DEPTH, depth)
    }

    /// The correlation id, if set as a string extension.
    pub fn correlation_id(&self) -> Option<&str> {
        self.string_extension(CORRELATION_ID)
    }

    /// The causation id, if set as a string extension.
    pub fn causation_id(&self) -> Option<&str> {
        self.string_extension(CAUSATION_ID)
    }

    /// How many hops this event is from the event that started its chain (the
    /// `causationdepth` extension, an integer or its decimal text): 0 when absent or not
    /// a non-negative number.
    pub fn causation_depth(&self) -> u32 {
        match self.extensions.get(CAUSATION_DEPTH) {
            Some(ExtensionValue::Integer(depth)) => u32::try_from(*depth).unwrap_or(0),
            Some(ExtensionValue::String(depth)) => depth.parse().unwrap_or(0),
            _ => 0,
        }
    }

    /// The key whose events reach each subscription one at a time, in publish order.
    pub fn ordering_key(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The JSON payload, if the event carries one.
    pub fn json_data(&self) -> Option<&Value> {
        match &self.data {
            Some(Data::Json(value)) => Some(value),
            _ => None,
        }
    }

    fn string_extension(&self, name: &str) -> Option<&str> {
        match self.extensions.get(name) {
            Some(ExtensionValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// Checks the CloudEvents rules: required attributes present and non-empty,
    /// `specversion` 1.0, extension names lower-case alphanumeric and not reserved.
    pub fn validate(&self) -> Result<(), EventError> {
        for (name, value) in [("id", &self.id), ("source", &self.source), ("type", &self.ty)] {
            if value.is_empty() {
                return Err(EventError::Empty(name));
            }
        }
        if self.specversion != SPEC_VERSION {
            return Err(EventError::SpecVersion(self.specversion.clone()));
        }
        for name in self.extensions.keys() {
            check_extension_name(name)?;
        }
        Ok(())
    }

    /// Parses one event in the CloudEvents JSON format and validates it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EventError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| EventError::Json(e.to_string()))?;
        Self::from_value(value)
    }

    /// Builds an event from an already parsed JSON value and validates it.
    pub fn from_value(value: Value) -> Result<Self, EventError> {
        match value {
            Value::Object(map) => Self::from_map(map),
            other => Err(EventError::NotAnObject(json_kind(&other))),
        }
    }

    fn from_map(mut map: Map<String, Value>) -> Result<Self, EventError> {
        let specversion = take_required(&mut map, "specversion")?;
        if specversion != SPEC_VERSION {
            return Err(EventError::SpecVersion(specversion));
        }
        let id = take_required(&mut map, "id")?;
        let source = take_required(&mut map, "source")?;
        let ty = take_required(&mut map, "type")?;
        let subject = take_optional(&mut map, "subject")?;
        let time = take_optional(&mut map, "time")?
            .map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| EventError::Time(t))
            })
            .transpose()?;
        let datacontenttype = take_optional(&mut map, "datacontenttype")?;
        let dataschema = take_optional(&mut map, "dataschema")?;
        let data = match (map.remove("data"), map.remove("data_base64")) {
            (Some(_), Some(_)) => return Err(EventError::DataConflict),
            (Some(Value::Null), None) | (None, None) => None,
            (Some(json), None) => Some(Data::Json(json)),
            (None, Some(Value::String(encoded))) => {
                Some(Data::Binary(base64_decode(&encoded).map_err(EventError::Base64)?))
            }
            (None, Some(_)) => {
                return Err(EventError::WrongType {
                    attribute: "data_base64".to_owned(),
                    expected: "a string",
                });
            }
        };
        // A string `data` of a non-JSON content type is the payload itself (JSON format
        // §3.1): `<a/>` of `application/xml` reaches handlers as those bytes, as it would
        // in binary mode.
        let data = match (data, &datacontenttype) {
            (Some(Data::Json(Value::String(text))), Some(content_type))
                if !is_json_media_type(content_type) =>
            {
                Some(Data::Binary(text.into_bytes()))
            }
            (data, _) => data,
        };
        let mut extensions = BTreeMap::new();
        for (name, value) in map {
            check_extension_name(&name)?;
            let value = match value {
                // A null attribute is unset (JSON format §2.2).
                Value::Null => continue,
                Value::String(s) => ExtensionValue::String(s),
                Value::Bool(b) => ExtensionValue::Bool(b),
                Value::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                    Some(i) => ExtensionValue::Integer(i),
                    None => return Err(EventError::ExtensionValue { name }),
                },
                _ => return Err(EventError::ExtensionValue { name }),
            };
            extensions.insert(name, value);
        }
        let event = Self {
            id,
            source,
            ty,
            specversion,
            subject,
            time,
            datacontenttype,
            dataschema,
            data,
            extensions,
        };
        Ok(event)
    }

    /// The event in the CloudEvents JSON format.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("an event always serializes to JSON")
    }
}

/// Whether `content_type` (a `datacontenttype` or `Content-Type` value, parameters and
/// case allowed) names JSON: `application/json`, `text/json`, or any `+json` structured
/// syntax suffix. The one rule evhost uses wherever it decides whether data is JSON.
pub fn is_json_media_type(content_type: &str) -> bool {
    let Ok(media) = content_type.trim().parse::<mime::Mime>() else {
        return false;
    };
    let json_type =
        media.subtype() == mime::JSON && (media.type_() == mime::APPLICATION || media.type_() == mime::TEXT);
    json_type || media.suffix() == Some(mime::JSON)
}

fn check_extension_name(name: &str) -> Result<(), EventError> {
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !RESERVED.contains(&name);
    if valid {
        Ok(())
    } else {
        Err(EventError::ExtensionName(name.to_owned()))
    }
}

fn take_optional(map: &mut Map<String, Value>, name: &'static str) -> Result<Option<String>, EventError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(EventError::WrongType {
            attribute: name.to_owned(),
            expected: "a string",
        }),
    }
}

fn take_required(map: &mut Map<String, Value>, name: &'static str) -> Result<String, EventError> {
    match take_optional(map, name)? {
        None => Err(EventError::Missing(name)),
        Some(s) if s.is_empty() => Err(EventError::Empty(name)),
        Some(s) => Ok(s),
    }
}

/// How an error message names the kind of a JSON value.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn base64_decode(encoded: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| e.to_string())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", &self.specversion)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("source", &self.source)?;
        map.serialize_entry("type", &self.ty)?;
        if let Some(subject) = &self.subject {
            map.serialize_entry("subject", subject)?;
        }
        if let Some(time) = &self.time {
            map.serialize_entry("time", &time.to_rfc3339_opts(SecondsFormat::AutoSi, true))?;
        }
        if let Some(ct) = &self.datacontenttype {
            map.serialize_entry("datacontenttype", ct)?;
        }
        if let Some(schema) = &self.dataschema {
            map.serialize_entry("dataschema", schema)?;
        }
        for (name, value) in &self.extensions {
            match value {
                ExtensionValue::String(s) => map.serialize_entry(name, s)?,
                ExtensionValue::Bool(b) => map.serialize_entry(name, b)?,
                ExtensionValue::Integer(i) => map.serialize_entry(name, i)?,
            }
        }
        match &self.data {
            Some(Data::Json(value)) => map.serialize_entry("data", value)?,
            Some(Data::Binary(bytes)) => map.serialize_entry("data_base64", &base64_encode(bytes))?,
            None => {}
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_value(value).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({"specversion": "1.0", "id": "1", "source": "tests", "type": "UserCreated"})
    }

    fn parse(value: Value) -> Result<Event, EventError> {
        Event::from_json(value.to_string().as_bytes())
    }

    #[test]
    fn new_fills_in_id_time_and_content_type() {
        let a = Event::new("UserCreated", "users", json!({"id": 1}));
        let b = Event::new("UserCreated", "users", json!({"id": 2}));
        assert_ne!(a.id, b.id);
        assert!(a.time.is_some());
        assert_eq!(a.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn json_round_trip_keeps_every_attribute() {
        let event = Event::new(
            "PaymentCreated",
            "payments",
            json!({"amount": 42, "items": [1, 2]}),
        )
        .with_subject("order-7")
        .with_dataschema("https://schemas.example/payment/v2")
        .with_correlation_id("flow-1")
        .with_causation_id("cause-1")
        .with_extension("priority", 3)
        .with_extension("traced", true);
        let text = serde_json::to_string(&event).unwrap();
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.correlation_id(), Some("flow-1"));
        assert_eq!(back.causation_id(), Some("cause-1"));
        assert_eq!(back.ordering_key(), Some("order-7"));
    }

    #[test]
    fn binary_data_travels_as_base64() {
        let mut event = Event::new("Blob", "tests", Value::Null);
        event.data = Some(Data::Binary(vec![0, 1, 2, 255]));
        let json = event.to_json();
        assert_eq!(json["data_base64"], "AAEC/w==");
        assert_eq!(Event::from_value(json).unwrap(), event);
    }

    #[test]
    fn parses_the_specification_example() {
        let event = parse(json!({
            "specversion": "1.0",
            "type": "com.github.pull_request.opened",
            "source": "https://github.com/cloudevents/spec/pull",
            "subject": "123",
            "id": "A234-1234-1234",
            "time": "2018-04-05T17:31:00Z",
            "comexampleextension1": "value",
            "comexampleothervalue": 5,
            "datacontenttype": "text/xml",
            "data": "<much wow=\"xml\"/>"
        }))
        .unwrap();
        assert_eq!(event.ty, "com.github.pull_request.opened");
        assert_eq!(event.time.unwrap().to_rfc3339(), "2018-04-05T17:31:00+00:00");
        assert_eq!(
            event.extensions["comexampleothervalue"],
            ExtensionValue::Integer(5)
        );
        assert_eq!(
            event.data,
            Some(Data::Binary(b"<much wow=\"xml\"/>".to_vec())),
            "a string of a non-JSON type is the payload itself"
        );
    }

    #[test]
    fn each_missing_required_attribute_is_named() {
        for attribute in ["id", "source", "type", "specversion"] {
            let mut value = minimal();
            value.as_object_mut().unwrap().remove(attribute);
            assert_eq!(parse(value), Err(EventError::Missing(attribute)), "{attribute}");
        }
    }

    #[test]
    fn each_empty_required_attribute_is_named() {
        for attribute in ["id", "source", "type"] {
            let mut value = minimal();
            value[attribute] = json!("");
            assert_eq!(parse(value), Err(EventError::Empty(attribute)), "{attribute}");
        }
    }

    #[test]
    fn wrong_specversion_is_rejected() {
        let mut value = minimal();
        value["specversion"] = json!("0.3");
        let err = parse(value).unwrap_err();
        assert_eq!(err, EventError::SpecVersion("0.3".into()));
        assert!(err.to_string().contains("specversion"));
    }

    #[test]
    fn wrong_attribute_type_is_named() {
        let mut value = minimal();
        value["id"] = json!(5);
        let err = parse(value).unwrap_err();
        assert_eq!(err.to_string(), "attribute `id` must be a string");
    }

    #[test]
    fn bad_time_is_rejected() {
        let mut value = minimal();
        value["time"] = json!("yesterday");
        assert_eq!(parse(value), Err(EventError::Time("yesterday".into())));
    }

    #[test]
    fn bad_extension_names_are_rejected() {
        for name in ["Upper", "with-dash", "with_underscore", "ümlaut"] {
            let mut value = minimal();
            value[name] = json!("x");
            assert_eq!(
                parse(value),
                Err(EventError::ExtensionName(name.into())),
                "{name}"
            );
        }
        let event = Event::new("T", "s", Value::Null).with_extension("Bad-Name", "x");
        assert_eq!(
            event.validate(),
            Err(EventError::ExtensionName("Bad-Name".into()))
        );
    }

    #[test]
    fn bad_extension_values_are_rejected() {
        for bad in [json!({"a": 1}), json!([1]), json!(1.5), json!(1u64 << 40)] {
            let mut value = minimal();
            value["myext"] = bad;
            assert_eq!(
                parse(value),
                Err(EventError::ExtensionValue { name: "myext".into() })
            );
        }
    }

    #[test]
    fn malformed_json_and_non_objects_are_rejected() {
        assert!(matches!(Event::from_json(b"{not json"), Err(EventError::Json(_))));
        assert_eq!(Event::from_json(b"[1]"), Err(EventError::NotAnObject("an array")));
    }

    #[test]
    fn data_and_data_base64_conflict() {
        let mut value = minimal();
        value["data"] = json!(1);
        value["data_base64"] = json!("AA==");
        assert_eq!(parse(value), Err(EventError::DataConflict));
    }

    #[test]
    fn caused_by_carries_correlation_and_sets_causation() {
        let root = Event::new("PaymentCreated", "payments", Value::Null);
        let first = Event::new("InventoryReservationRequested", "saga", Value::Null).caused_by(&root);
        assert_eq!(first.correlation_id(), Some(root.id.as_str()));
        assert_eq!(first.causation_id(), Some(root.id.as_str()));
        let second = Event::new("ShipmentRequested", "saga", Value::Null).caused_by(&first);
        assert_eq!(second.correlation_id(), Some(root.id.as_str()));
        assert_eq!(second.causation_id(), Some(first.id.as_str()));
    }

    #[test]
    fn each_hop_of_a_chain_is_one_deeper_than_its_cause() {
        let root = Event::new("A", "s", Value::Null);
        assert_eq!(root.causation_depth(), 0);
        let first = Event::new("B", "s", Value::Null).caused_by(&root);
        let second = Event::new("C", "s", Value::Null).caused_by(&first);
        assert_eq!((first.causation_depth(), second.causation_depth()), (1, 2));
        assert_eq!(second.correlation_id(), Some(root.id.as_str()));
        let from_text = root.clone().with_extension(CAUSATION_DEPTH, "7");
        assert_eq!(from_text.causation_depth(), 7);
        let negative = root.with_extension(CAUSATION_DEPTH, -3);
        assert_eq!(negative.causation_depth(), 0);
    }

    #[test]
    fn one_rule_says_which_media_types_are_json() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/json",
            "application/vnd.example.user+json",
            "application/cloudevents+json",
        ] {
            assert!(is_json_media_type(json), "{json}");
        }
        for other in [
            "text/plain",
            "application/xml",
            "application/jsonx",
            "json",
            "",
            "application/octet-stream",
        ] {
            assert!(!is_json_media_type(other), "{other}");
        }
    }

    #[test]
    fn a_string_of_a_non_json_type_is_the_payload_itself() {
        let mut value = minimal();
        value["datacontenttype"] = json!("text/plain");
        value["data"] = json!("héllo \"quoted\"");
        let event = parse(value.clone()).unwrap();
        assert_eq!(
            event.data,
            Some(Data::Binary("héllo \"quoted\"".as_bytes().to_vec()))
        );
        value["datacontenttype"] = json!("application/json");
        let event = parse(value.clone()).unwrap();
        assert_eq!(event.data, Some(Data::Json(json!("héllo \"quoted\""))));
        value.as_object_mut().unwrap().remove("datacontenttype");
        let event = parse(value).unwrap();
        assert_eq!(
            event.data,
            Some(Data::Json(json!("héllo \"quoted\""))),
            "JSON is the default"
        );
    }

    #[test]
    fn a_null_extension_is_unset() {
        let mut value = minimal();
        value["unsetextension"] = Value::Null;
        let event = parse(value).unwrap();
        assert!(event.extensions.is_empty(), "{:?}", event.extensions);
    }
}
