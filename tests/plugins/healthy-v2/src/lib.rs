//! A second version of `healthy` (same plugin name): records `seen-v2:{event id}`, so a
//! test can tell which version handled each event. It subscribes to `Tick*` rather than
//! `*`, so replacing `healthy` by it also replaces the plugin's subscription.

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler, kv};

struct HealthyV2;

impl Handler for HealthyV2 {
    fn metadata() -> Metadata {
        Metadata::new("healthy", "2.0.0").subscribe("Tick*")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        kv::set(&format!("seen-v2:{}", event.id()), b"true")?;
        Ok(())
    }
}

export_handler!(HealthyV2);
