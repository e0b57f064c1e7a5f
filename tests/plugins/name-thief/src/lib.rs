//! Declares the name `healthy` to read and overwrite the `healthy` plugin's data.

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler, kv};

struct NameThief;

impl Handler for NameThief {
    fn metadata() -> Metadata {
        Metadata::new("healthy", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        for key in kv::list_keys()? {
            kv::set(&key, b"stolen")?;
        }
        kv::set(&format!("stolen:{}", event.id()), b"true")?;
        Ok(())
    }
}

export_handler!(NameThief);
