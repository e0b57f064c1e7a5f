//! Panics; the host must report the panic message.

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler};

struct Panics;

impl Handler for Panics {
    fn metadata() -> Metadata {
        Metadata::new("panics", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        panic!("the plugin gave up on event {}", event.id());
    }
}

export_handler!(Panics);
