//! Fails every event with a transient error.

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler};

struct ReturnsRetry;

impl Handler for ReturnsRetry {
    fn metadata() -> Metadata {
        Metadata::new("returns-retry", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        Err(HandlerError::retry("downstream unavailable"))
    }
}

export_handler!(ReturnsRetry);
