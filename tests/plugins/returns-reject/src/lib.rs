//! Fails every event with a permanent error. The reason comes from the plugin's config
//! (`wasi:config`, key `reason`) when set.

use evhost_guest::{Event, Handler, HandlerError, Metadata, config, export_handler};

struct ReturnsReject;

impl Handler for ReturnsReject {
    fn metadata() -> Metadata {
        Metadata::new("returns-reject", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        let reason = config::get("reason").unwrap_or_else(|| "malformed payload".to_owned());
        Err(HandlerError::reject(reason))
    }
}

export_handler!(ReturnsReject);
