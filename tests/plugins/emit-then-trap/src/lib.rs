//! Publishes an event and writes to its store, then panics: neither may take effect.

use evhost_guest::{Event, Handler, HandlerError, Metadata, OutgoingEvent, export_handler, kv, publish};

struct EmitThenTrap;

impl Handler for EmitThenTrap {
    fn metadata() -> Metadata {
        Metadata::new("emit-then-trap", env!("CARGO_PKG_VERSION")).subscribe("Poke")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        publish(OutgoingEvent::new("EmittedBeforeTrap").subject(event.id()))?;
        kv::set("written", b"true")?;
        panic!("trapping after emitting");
    }
}

export_handler!(EmitThenTrap);
