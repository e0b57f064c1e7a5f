//! Accepts every event and does nothing: measures the cost of an invocation itself.

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler};

struct Noop;

impl Handler for Noop {
    fn metadata() -> Metadata {
        Metadata::new("noop", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        Ok(())
    }
}

export_handler!(Noop);
