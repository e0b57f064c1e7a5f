//! The fixed version of `returns-retry`: the same plugin name, and it handles every event,
//! recording `handled:{event id}`. Swapped in to drain the dead-letter queue by replay.

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler, kv};

struct Fixed;

impl Handler for Fixed {
    fn metadata() -> Metadata {
        Metadata::new("returns-retry", "2.0.0").subscribe("*")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        kv::set(&format!("handled:{}", event.id()), b"true")?;
        Ok(())
    }
}

export_handler!(Fixed);
