//! Emits `count` events (config, default 1,000) per event, each of a type it subscribes
//! to, so every emitted event makes it emit again.

use evhost_guest::{Event, Handler, HandlerError, Metadata, OutgoingEvent, config, export_handler, publish};

struct Amplifier;

impl Handler for Amplifier {
    fn metadata() -> Metadata {
        Metadata::new("amplifier", env!("CARGO_PKG_VERSION"))
            .subscribe("Attack")
            .subscribe("Amplified")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        let count: u32 = config::get("count").and_then(|v| v.parse().ok()).unwrap_or(1_000);
        for n in 0..count {
            publish(OutgoingEvent::new("Amplified").subject(format!("{}-{n}", event.id())))?;
        }
        Ok(())
    }
}

export_handler!(Amplifier);
