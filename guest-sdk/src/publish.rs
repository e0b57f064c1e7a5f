//! Emitting follow-up events: sagas, compensations, notifications.

use std::fmt;

use serde::Serialize;

use crate::bindings::evhost::plugin::publisher as wit;
use crate::error::{EncodeError, HandlerError};
use crate::event::ExtensionValue;

/// An event to emit with [`publish`].
///
/// The host fills in `id`, `source` (the plugin's name), `time`, the correlation id of the
/// event being handled and, as causation id, that event's id. The fields are public so tests
/// can inspect what a plugin's logic would emit.
///
/// ```
/// # use evhost_guest::OutgoingEvent;
/// let event = OutgoingEvent::new("ShipmentRequested")
///     .subject("order-7")
///     .json(&evhost_guest::serde_json::json!({ "order_id": "order-7" }))?;
/// assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
/// # Ok::<(), evhost_guest::EncodeError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingEvent {
    /// The event type, e.g. `ShipmentRequested`.
    pub event_type: String,
    /// What the event is about; carry the aggregate id so the host keeps related events in
    /// order.
    pub subject: Option<String>,
    /// The media type of `data`.
    pub datacontenttype: Option<String>,
    /// The URI of the schema `data` follows.
    pub dataschema: Option<String>,
    /// The payload.
    pub data: Option<Vec<u8>>,
    /// Extension attributes.
    pub extensions: Vec<(String, ExtensionValue)>,
}

impl OutgoingEvent {
    /// An event of type `event_type` with no other attributes yet.
    pub fn new(event_type: impl Into<String>) -> Self {
        Self {
            event_type: event_type.into(),
            subject: None,
            datacontenttype: None,
            dataschema: None,
            data: None,
            extensions: Vec::new(),
        }
    }

    /// Sets `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets `dataschema`.
    pub fn dataschema(mut self, dataschema: impl Into<String>) -> Self {
        self.dataschema = Some(dataschema.into());
        self
    }

    /// Sets the payload and its media type.
    pub fn data(mut self, datacontenttype: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        self.datacontenttype = Some(datacontenttype.into());
        self.data = Some(data.into());
        self
    }

    /// Sets the payload to `value` encoded as JSON, with media type `application/json`.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Self, EncodeError> {
        let data = encode_json(&self.event_type, value)?;
        Ok(self.data("application/json", data))
    }

    /// Adds an extension attribute.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<ExtensionValue>) -> Self {
        self.extensions.push((name.into(), value.into()));
        self
    }
}

/// `value` as JSON bytes, for the data of an event of type `event_type`.
pub(crate) fn encode_json<T: Serialize + ?Sized>(
    event_type: &str,
    value: &T,
) -> Result<Vec<u8>, EncodeError> {
    serde_json::to_vec(value)
        .map_err(|source| EncodeError::new(format!("the data of `{event_type}`"), source))
}

impl From<OutgoingEvent> for wit::OutgoingEvent {
    fn from(event: OutgoingEvent) -> Self {
        Self {
            type_: event.event_type,
            subject: event.subject,
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

/// Queues `event` for publication and returns the id the host gave it.
///
/// Queued events are published only if the current `handle` call returns `Ok`; a failing or
/// panicking handler emits nothing, so publish freely before the last fallible step.
pub fn publish(event: OutgoingEvent) -> Result<String, PublishError> {
    let event_type = event.event_type.clone();
    wit::publish(&event.into()).map_err(|reason| PublishError { event_type, reason })
}

/// The host refused an outgoing event because it is invalid (e.g. an empty type).
///
/// Converts into [`HandlerError::Reject`]: the same handler would build the same event again.
#[derive(Clone, Debug)]
pub struct PublishError {
    event_type: String,
    reason: String,
}

impl PublishError {
    /// The host's reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "publishing a `{}` event failed: {}",
            self.event_type, self.reason
        )
    }
}

impl std::error::Error for PublishError {}

impl From<PublishError> for HandlerError {
    fn from(error: PublishError) -> Self {
        Self::Reject(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_converts() {
        let event = OutgoingEvent::new("ShipmentRequested")
            .subject("p-1")
            .dataschema("https://example.invalid/shipment/v1")
            .json(&serde_json::json!({ "order_id": "o-1" }))
            .unwrap()
            .extension("priority", true);
        assert_eq!(event.data.as_deref(), Some(br#"{"order_id":"o-1"}"#.as_slice()));

        let wit = wit::OutgoingEvent::from(event);
        assert_eq!(wit.type_, "ShipmentRequested");
        assert_eq!(wit.subject.as_deref(), Some("p-1"));
        assert_eq!(wit.datacontenttype.as_deref(), Some("application/json"));
        assert!(matches!(wit.extensions[0].1, wit::ExtensionValue::Boolean(true)));
    }

    #[test]
    fn encode_errors_name_the_event() {
        let mut map = std::collections::BTreeMap::new();
        map.insert((1, 2), "tuple keys are not JSON");
        let error = OutgoingEvent::new("Odd").json(&map).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot encode the data of `Odd` as JSON"),
            "{error}"
        );
    }
}
