//! One case of the SDK's failure taxonomy per event type. `python/sdk-faults` and
//! `js/sdk-faults` do the same in their SDKs, so tests can hold all three to one outcome
//! per case, this one's being the reference.

use std::collections::BTreeMap;

use evhost_guest::serde_json::Value;
use evhost_guest::{
    Event, Handler, HandlerError, Metadata, OutgoingEvent, config, export_handler, kv, publish,
};

struct SdkFaults;

impl Handler for SdkFaults {
    fn metadata() -> Metadata {
        Metadata::new("sdk-faults", env!("CARGO_PKG_VERSION")).subscribe("*")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        match event.event_type() {
            // The host refuses an outgoing event without a type: the same event would be
            // refused again, so it is a reject.
            "PublishInvalid" => {
                publish(OutgoingEvent::new(""))?;
            }
            // A stored value that is not JSON, read as JSON.
            "CorruptJson" => {
                kv::set("corrupt", b"{not json")?;
                kv::get_json::<Value>("corrupt")?;
            }
            // A value JSON cannot encode: a map whose keys are not strings.
            "EncodeFailure" => {
                let map: BTreeMap<(u8, u8), u8> = BTreeMap::from([((1, 2), 3)]);
                kv::set_json("unencodable", &map)?;
            }
            // JSON data under the media type `text/json`.
            "TextJson" => {
                let data: Value = event.data_json()?;
                kv::set_json("text-json", &data)?;
            }
            // An event with no data at all.
            "PublishNoData" => {
                publish(OutgoingEvent::new("Empty"))?;
            }
            // A configuration key that is not set.
            "ConfigMissing" => {
                let found = config::get("absent").map_or("none", |_| "some");
                kv::set("config-missing", found.as_bytes())?;
            }
            other => {
                return Err(HandlerError::reject(format!(
                    "sdk-faults does not know `{other}`"
                )));
            }
        }
        Ok(())
    }
}

export_handler!(SdkFaults);
