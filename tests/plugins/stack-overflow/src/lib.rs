//! Recurses without end.

use std::hint::black_box;

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler};

struct StackOverflow;

#[expect(unconditional_recursion, reason = "overflowing the stack is the point")]
fn descend(depth: u64) -> u64 {
    let frame = black_box([depth; 8]);
    descend(depth + 1).wrapping_add(frame[0])
}

impl Handler for StackOverflow {
    fn metadata() -> Metadata {
        Metadata::new("stack-overflow", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        black_box(descend(0));
        Ok(())
    }
}

export_handler!(StackOverflow);
