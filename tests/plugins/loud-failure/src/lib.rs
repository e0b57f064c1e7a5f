//! Fails with a 10 MiB message, per `attack` in its config: `reject`, `retry` or `panic`.
//! It also writes to its store first: nothing of a failed invocation may be kept.

use evhost_guest::{Event, Handler, HandlerError, Metadata, config, export_handler, kv};

struct LoudFailure;

impl Handler for LoudFailure {
    fn metadata() -> Metadata {
        Metadata::new("loud-failure", env!("CARGO_PKG_VERSION")).subscribe("Attack")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        kv::set(&format!("written:{}", event.id()), b"true")?;
        let message = "m".repeat(10 << 20);
        match config::get("attack").unwrap_or_default().as_str() {
            "retry" => Err(HandlerError::retry(message)),
            "panic" => panic!("{message}"),
            _ => Err(HandlerError::reject(message)),
        }
    }
}

export_handler!(LoudFailure);
