//! Counts the events it handles, so a test can prove each one was applied exactly once.
//!
//! For every event it increments `seen:{event id}`, and for the events the payment saga
//! emits also `emitted:{type}:{subject}`. Each counter is read, incremented and written
//! back as decimal text: the write commits with the delivery, so a delivery applied twice
//! leaves a 2, and one never applied leaves no key. With `millis` in its config it takes
//! that long per event first (sleeping), so a test can catch it mid-stream.

use std::time::Duration;

use evhost_guest::{Event, Handler, HandlerError, Metadata, config, export_handler, kv};

/// The payment saga's emitted event types.
const EMITTED: [&str; 3] = [
    "InventoryReservationRequested",
    "ShipmentRequested",
    "PaymentCancelled",
];

struct Recorder;

impl Handler for Recorder {
    fn metadata() -> Metadata {
        Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        if let Some(millis) = config::get("millis").and_then(|v| v.parse().ok()) {
            std::thread::sleep(Duration::from_millis(millis));
        }
        increment(&format!("seen:{}", event.id()))?;
        if EMITTED.contains(&event.event_type()) {
            let subject = event.subject().unwrap_or_default();
            increment(&format!("emitted:{}:{subject}", event.event_type()))?;
        }
        Ok(())
    }
}

export_handler!(Recorder);

/// Adds one to the counter under `key` (absent counts as zero).
fn increment(key: &str) -> Result<(), HandlerError> {
    let count = match kv::get(key)? {
        Some(bytes) => String::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| HandlerError::reject(format!("`{key}` does not hold a count")))?,
        None => 0,
    };
    kv::set(key, (count + 1).to_string().as_bytes())?;
    Ok(())
}
