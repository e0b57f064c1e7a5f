//! Faults of the plugin's own making, per `fault` in its config: `exit` calls `exit(1)`;
//! `handles` opens key-value buckets without ever closing them.

use evhost_guest::bindings::wasi::keyvalue::store;
use evhost_guest::{Event, Handler, HandlerError, Metadata, config, export_handler};

struct OwnFaults;

impl Handler for OwnFaults {
    fn metadata() -> Metadata {
        Metadata::new("own-faults", env!("CARGO_PKG_VERSION")).subscribe("Attack")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        match config::get("fault").unwrap_or_default().as_str() {
            "exit" => std::process::exit(1),
            "handles" => loop {
                let bucket = store::open("default").map_err(|e| HandlerError::retry(format!("{e:?}")))?;
                std::mem::forget(bucket);
            },
            other => Err(HandlerError::reject(format!("unknown fault {other:?}"))),
        }
    }
}

export_handler!(OwnFaults);
