//! Allocates a megabyte at a time until memory runs out.

use std::hint::black_box;

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler};

struct GrowMemory;

impl Handler for GrowMemory {
    fn metadata() -> Metadata {
        Metadata::new("grow-memory", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(black_box(vec![1u8; 1 << 20]));
        }
    }
}

export_handler!(GrowMemory);
