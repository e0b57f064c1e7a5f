//! # greeter
//!
//! The book's Rust walkthrough (`docs/src/plugins/rust.md` includes this file): a tour of
//! the guest SDK in one handler.
//!
//! **Subscribes to** `UserCreated` with `{ "id", "name" }` (anything else in the data is
//! ignored). **Stores** `greeted:{id}` → `yes`. **Emits** `UserGreeted` with the user id as
//! its subject. **Fails** with `reject` when the data does not decode, and with `retry`
//! when the store fails.

// ANCHOR: plugin
use evhost_guest::serde::Deserialize;
use evhost_guest::{Event, Handler, HandlerError, Metadata, OutgoingEvent, export_handler, kv, log, publish};

#[derive(Deserialize)]
#[serde(crate = "evhost_guest::serde")] // the SDK re-exports serde
struct UserCreated {
    id: String,
    name: String,
}

struct Greeter;

impl Handler for Greeter {
    fn metadata() -> Metadata {
        Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")).subscribe("UserCreated")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        let user: UserCreated = event.data_json()?; // bad data is a `reject`
        log::info!("greeting {}", user.name);
        kv::set(&format!("greeted:{}", user.id), b"yes")?; // the plugin's own store
        publish(OutgoingEvent::new("UserGreeted").subject(&user.id))?; // sent only if we return Ok
        Ok(())
    }
}

export_handler!(Greeter);
// ANCHOR_END: plugin
