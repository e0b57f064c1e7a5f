//! Counts, in its own memory, the events its instance has served, and records the count
//! under `served:{event id}`: 1 for every event in a fresh instance, 1, 2, 3… while an
//! instance is reused.
//!
//! By event type it also misbehaves, after counting: `Reject` returns a rejection, `Panic`
//! traps, `Work` computes for as many milliseconds of wall-clock time as its data says (a
//! JSON number) and `Burn` for as many thousand rounds, so that the deadline and fuel can
//! be checked per invocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler, kv};

/// Events this instance has served: state that only reuse lets survive.
static SERVED: AtomicU64 = AtomicU64::new(0);

struct WarmCounter;

impl Handler for WarmCounter {
    fn metadata() -> Metadata {
        Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        kv::set(&format!("served:{}", event.id()), served.to_string().as_bytes())?;
        match event.event_type() {
            "Reject" => Err(HandlerError::reject("asked to reject")),
            "Panic" => panic!("asked to panic"),
            "Work" => {
                let until = Instant::now() + Duration::from_millis(number(&event)?);
                while Instant::now() < until {
                    burn(1);
                }
                Ok(())
            }
            "Burn" => {
                burn(number(&event)?);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

export_handler!(WarmCounter);

/// The event's data read as a number.
fn number(event: &Event) -> Result<u64, HandlerError> {
    event
        .data()
        .and_then(|data| std::str::from_utf8(data).ok())
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| HandlerError::reject(format!("`{}` needs a number as its data", event.event_type())))
}

/// A thousand rounds of arithmetic per unit, the same fuel every time.
fn burn(units: u64) {
    let mut acc = 0u64;
    for i in 0..std::hint::black_box(units * 1_000) {
        acc = std::hint::black_box(acc ^ i.rotate_left(7));
    }
    std::hint::black_box(acc);
}
