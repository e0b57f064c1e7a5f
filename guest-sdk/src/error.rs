//! How a handler fails, and the conversions that let `?` choose between retry and reject.

use std::fmt;

use crate::bindings::evhost::plugin::types as wit;

/// Why a handler did not handle an event.
///
/// The host retries a [`Retry`](Self::Retry) with backoff (up to the plugin's retry policy)
/// and sends a [`Reject`](Self::Reject) straight to the dead-letter queue. Either way the
/// reason reaches the host's error monitor, so write it for the person reading that.
///
/// The SDK's own errors convert with `?`: a payload that does not decode, an event that
/// cannot be encoded or published is rejected; a key-value or configuration failure in the
/// host is retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandlerError {
    /// A transient failure: deliver the event again later.
    Retry(String),
    /// A permanent failure: retrying cannot help.
    Reject(String),
}

impl HandlerError {
    /// A transient failure, e.g. a dependency that is briefly unavailable.
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry(reason.into())
    }

    /// A permanent failure, e.g. a payload that violates the event's schema.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject(reason.into())
    }

    /// Whether the host will deliver the event again.
    pub fn is_retry(&self) -> bool {
        matches!(self, Self::Retry(_))
    }

    /// The reason given.
    pub fn reason(&self) -> &str {
        match self {
            Self::Retry(reason) | Self::Reject(reason) => reason,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry(reason) => write!(f, "retry: {reason}"),
            Self::Reject(reason) => write!(f, "reject: {reason}"),
        }
    }
}

impl std::error::Error for HandlerError {}

impl From<HandlerError> for wit::HandlerError {
    fn from(error: HandlerError) -> Self {
        match error {
            HandlerError::Retry(reason) => Self::Retry(reason),
            HandlerError::Reject(reason) => Self::Reject(reason),
        }
    }
}

/// A value could not be encoded as JSON (for an outgoing event or the key-value store).
///
/// This is a bug in the plugin (e.g. a map with non-string keys), so it converts into
/// [`HandlerError::Reject`].
#[derive(Debug)]
pub struct EncodeError {
    what: String,
    source: serde_json::Error,
}

impl EncodeError {
    pub(crate) fn new(what: impl Into<String>, source: serde_json::Error) -> Self {
        Self {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot encode {} as JSON: {}", self.what, self.source)
    }
}

impl std::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<EncodeError> for HandlerError {
    fn from(error: EncodeError) -> Self {
        Self::Reject(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_and_accessors() {
        let retry = HandlerError::retry("database down");
        assert!(retry.is_retry());
        assert_eq!(retry.reason(), "database down");
        assert_eq!(retry.to_string(), "retry: database down");

        let reject = HandlerError::reject(format!("bad id {}", 7));
        assert!(!reject.is_retry());
        assert_eq!(reject, HandlerError::Reject("bad id 7".into()));
    }

    #[test]
    fn converts_to_the_wit_type() {
        assert!(matches!(
            wit::HandlerError::from(HandlerError::reject("no")),
            wit::HandlerError::Reject(reason) if reason == "no"
        ));
    }
}
