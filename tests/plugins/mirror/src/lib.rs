//! Stores each event as it arrived: `data:{id}` holds the data bytes exactly (absent when the
//! event has none) and `attributes:{id}` a JSON object of every other attribute, extensions
//! with their CloudEvents type (string, boolean or integer).

use evhost_guest::serde_json::{Map, Value, json};
use evhost_guest::{Event, ExtensionValue, Handler, HandlerError, Metadata, export_handler, kv};

struct Mirror;

impl Handler for Mirror {
    fn metadata() -> Metadata {
        Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        if let Some(data) = event.data() {
            kv::set(&format!("data:{}", event.id()), data)?;
        }
        let extensions: Map<String, Value> = event
            .extensions()
            .map(|(name, value)| {
                let value = match value {
                    ExtensionValue::String(text) => json!(text),
                    ExtensionValue::Boolean(flag) => json!(flag),
                    ExtensionValue::Integer(number) => json!(number),
                };
                (name.to_owned(), value)
            })
            .collect();
        let attributes = json!({
            "id": event.id(),
            "source": event.source(),
            "type": event.event_type(),
            "subject": event.subject(),
            "time": event.time(),
            "datacontenttype": event.datacontenttype(),
            "dataschema": event.dataschema(),
            "extensions": extensions,
        });
        kv::set_json(&format!("attributes:{}", event.id()), &attributes)?;
        Ok(())
    }
}

export_handler!(Mirror);
