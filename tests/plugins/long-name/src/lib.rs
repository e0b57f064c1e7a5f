//! Declares a 2 MiB name: the host must refuse it with a message of readable size.

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler};

struct LongName;

impl Handler for LongName {
    fn metadata() -> Metadata {
        Metadata::new("n".repeat(2 << 20), env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        Ok(())
    }
}

export_handler!(LongName);
