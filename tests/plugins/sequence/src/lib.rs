//! Keeps, per ordering key, the order in which the key's events were handled, so a test
//! can check that a key's events arrived one by one in publish order.
//!
//! Each event carries `{"n": N}` and a `subject` (its key). The handler appends `N` to the
//! comma-separated list under `seq:{subject}`. Read, append and write back: a key's events
//! handled at the same time, or out of order, show in the list.

use evhost_guest::serde_json::Value;
use evhost_guest::{Event, Handler, HandlerError, Metadata, export_handler, kv};

struct Sequence;

impl Handler for Sequence {
    fn metadata() -> Metadata {
        Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        let subject = event
            .subject()
            .ok_or_else(|| HandlerError::reject("the event has no subject"))?
            .to_owned();
        let data: Value = event
            .data_json()
            .map_err(|e| HandlerError::reject(format!("the data is not JSON: {e}")))?;
        let n = data["n"]
            .as_u64()
            .ok_or_else(|| HandlerError::reject("the data has no number `n`"))?;
        let key = format!("seq:{subject}");
        let mut list = match kv::get(&key)? {
            Some(bytes) => {
                String::from_utf8(bytes).map_err(|_| HandlerError::reject("the list is not text"))?
            }
            None => String::new(),
        };
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(&n.to_string());
        kv::set(&key, list.as_bytes())?;
        Ok(())
    }
}

export_handler!(Sequence);
