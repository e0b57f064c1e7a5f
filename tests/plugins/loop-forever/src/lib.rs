//! Spins forever: the host must stop it at its deadline.

use std::hint::black_box;

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler};

struct LoopForever;

impl Handler for LoopForever {
    fn metadata() -> Metadata {
        Metadata::new("loop-forever", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        let mut n = 0u64;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    }
}

export_handler!(LoopForever);
