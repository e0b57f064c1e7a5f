//! A long computation that does finish eventually — long after any sensible fuel budget.

use std::hint::black_box;

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler};

struct BurnFuel;

impl Handler for BurnFuel {
    fn metadata() -> Metadata {
        Metadata::new("burn-fuel", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        let mut acc = 0u64;
        for i in 0..black_box(50_000_000_000u64) {
            acc = black_box(acc ^ i.rotate_left(7));
        }
        if acc == 42 {
            return Err(HandlerError::reject("unlikely"));
        }
        Ok(())
    }
}

export_handler!(BurnFuel);
