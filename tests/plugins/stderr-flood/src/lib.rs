//! Writes a mebibyte to stderr and some lines to stdout, then records that it finished:
//! diagnostics output must never make a plugin fail.

use std::io::Write as _;

use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler, kv};

struct StderrFlood;

impl Handler for StderrFlood {
    fn metadata() -> Metadata {
        Metadata::new("stderr-flood", env!("CARGO_PKG_VERSION")).subscribe("Attack")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        println!("stdout line for {}", event.id());
        let line = "e".repeat(63);
        for _ in 0..(1 << 14) {
            eprintln!("{line}");
        }
        // One line far longer than any log record.
        let mut stderr = std::io::stderr();
        let _ = stderr.write_all(&vec![b'L'; 256 << 10]);
        kv::set(&format!("done:{}", event.id()), b"true")?;
        Ok(())
    }
}

export_handler!(StderrFlood);
