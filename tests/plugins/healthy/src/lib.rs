//! Handles everything and records `seen:{event id}` in its key-value store.

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler, kv};

struct Healthy;

impl Handler for Healthy {
    fn metadata() -> Metadata {
        Metadata::new("healthy", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        kv::set(&format!("seen:{}", event.id()), b"true")?;
        Ok(())
    }
}

export_handler!(Healthy);
