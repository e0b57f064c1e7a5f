//! Tries to make the host hold its data, per `attack` in its config: `kv-values` sets 1 MiB
//! values under new keys in a loop, `kv-keys` sets 8 MiB keys, `emit` emits 1,000 events
//! of 8 MiB each. The host must stop it at its per-invocation budgets.

use evhost_guest::{
    Event, Handler, HandlerError, Metadata, OutgoingEvent, config, export_handler, kv, publish,
};

struct HostHog;

impl Handler for HostHog {
    fn metadata() -> Metadata {
        Metadata::new("host-hog", env!("CARGO_PKG_VERSION")).subscribe("Attack")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        let attack = config::get("attack").unwrap_or_default();
        match attack.as_str() {
            "kv-values" => {
                let value = vec![b'v'; 1 << 20];
                for i in 0.. {
                    kv::set(&format!("value:{}:{i}", event.id()), &value)?;
                }
            }
            "kv-keys" => {
                let mut key = "k".repeat(8 << 20);
                for i in 0.. {
                    key.push_str(&i.to_string());
                    kv::set(&key, b"v")?;
                }
            }
            "emit" => {
                let data = vec![b'd'; 8 << 20];
                for _ in 0..1_000 {
                    publish(OutgoingEvent::new("Hogged").data("application/octet-stream", data.clone()))?;
                }
            }
            other => return Err(HandlerError::reject(format!("unknown attack {other:?}"))),
        }
        Ok(())
    }
}

export_handler!(HostHog);
