//! Takes 4.5 s per event (`millis` in its config): sleeping (`mode = "sleep"`, the
//! default) or spinning on the clock (`mode = "spin"`).

use std::time::{Duration, Instant};

use evhost_guest::{Event, Handler, HandlerError, Metadata, config, export_handler};

struct SlowCalls;

impl Handler for SlowCalls {
    fn metadata() -> Metadata {
        Metadata::new("slow-calls", env!("CARGO_PKG_VERSION")).subscribe("Attack")
    }

    fn handle(_event: Event) -> Result<(), HandlerError> {
        let millis = config::get("millis")
            .and_then(|v| v.parse().ok())
            .unwrap_or(4_500);
        let duration = Duration::from_millis(millis);
        if config::get("mode").as_deref() == Some("spin") {
            let started = Instant::now();
            let mut n = 0u64;
            while started.elapsed() < duration {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        } else {
            std::thread::sleep(duration);
        }
        Ok(())
    }
}

export_handler!(SlowCalls);
