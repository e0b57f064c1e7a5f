//! CloudEvents conformance, with the official Rust SDK (`cloudevents-sdk`) as an independent
//! oracle: events it builds are sent the way it sends them — structured, batch, binary — to
//! the real binary, and a plugin that mirrors what it receives must see the same attributes
//! and byte-identical data in every mode. Then evhost's own JSON serialization of each
//! event is read back by the SDK.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudevents::binding::reqwest::RequestBuilderExt as _;
use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader as _, Data, EventBuilder as _, EventBuilderV10};
use serde_json::{Value, json};

use crate::support::{Running, client, eventually, kv, kv_bytes};
use crate::wasm;

/// The events every mode sends, the id prefixed by the mode.
fn events(mode: &str) -> Vec<cloudevents::Event> {
    let id = |name: &str| format!("{mode}-{name}");
    let time: DateTime<Utc> = "2024-05-06T07:08:09.123456Z".parse().unwrap();
    let build = |builder: EventBuilderV10| builder.build().expect("a valid event");
    vec![
        build(
            EventBuilderV10::new()
                .id(id("json"))
                .source("https://tests.example/orders")
                .ty("com.example.OrderPlaced")
                .subject("order-1")
                .time(time)
                .extension("tenant", "acme")
                .extension("priority", 7_i64)
                .extension("urgent", true)
                .data_with_schema(
                    "application/json",
                    "https://schemas.example/order/v1",
                    json!({"order": 1, "lines": [{"sku": "a", "qty": 2}], "note": "café ☕"}),
                ),
        ),
        build(
            EventBuilderV10::new()
                .id(id("xml"))
                .source("/tests")
                .ty("com.example.Document")
                .data("application/xml", Data::String(r#"<much wow="xml"/>"#.to_owned())),
        ),
        build(
            EventBuilderV10::new()
                .id(id("text"))
                .source("/tests")
                .ty("com.example.Note")
                .data(
                    "text/plain; charset=utf-8",
                    Data::String("line 1\n\"quoted\" ünïcode\n".to_owned()),
                ),
        ),
        build(
            EventBuilderV10::new()
                .id(id("bytes"))
                .source("/tests")
                .ty("com.example.Blob")
                .data(
                    "application/octet-stream",
                    Data::Binary(vec![0, 1, 2, 0xfe, 0xff, b'{', b'"']),
                ),
        ),
        build(
            EventBuilderV10::new()
                .id(id("vendor-json"))
                .source("/tests")
                .ty("com.example.Vendor")
                .data("application/vnd.example.user+json", json!("a JSON string")),
        ),
        build(
            EventBuilderV10::new()
                .id(id("no-data"))
                .source("/tests")
                .ty("com.example.Ping")
                .extension(
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
        ),
    ]
}

/// The bytes a handler must see for the SDK's data.
fn data_bytes(data: Option<&Data>) -> Option<Vec<u8>> {
    data.map(|data| match data {
        Data::Binary(bytes) => bytes.clone(),
        Data::String(text) => text.as_bytes().to_vec(),
        Data::Json(value) => serde_json::to_vec(value).unwrap(),
    })
}

/// The extensions as the mirror plugin stores them: typed, or all strings (binary mode
/// carries every attribute as header text).
fn extensions(event: &cloudevents::Event, as_text: bool) -> BTreeMap<String, Value> {
    event
        .iter_extensions()
        .map(|(name, value)| {
            let value = match (value, as_text) {
                (value, true) => json!(value.to_string()),
                (ExtensionValue::String(text), false) => json!(text),
                (ExtensionValue::Boolean(flag), false) => json!(flag),
                (ExtensionValue::Integer(number), false) => json!(number),
            };
            (name.to_owned(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_events_reach_handlers_identically_in_all_three_modes() {
    let host = Running::start(&[("mirror", wasm::MIRROR)], &[]);
    let url = format!("{}/events", host.url);

    // Structured: one request per event, as the SDK serializes it.
    for event in events("structured") {
        let response = client()
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(serde_json::to_vec(&event).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
    // Batch: the SDK's batch request.
    let response = client()
        .post(&url)
        .events(events("batch"))
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    // Binary: the SDK's HTTP binding.
    for event in events("binary") {
        let response = client().post(&url).event(event).unwrap().send().await.unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }

    for mode in ["structured", "batch", "binary"] {
        for sent in events(mode) {
            let id = sent.id().to_owned();
            assert!(
                eventually(Duration::from_secs(20), async || kv(
                    &host,
                    "mirror",
                    &format!("attributes:{id}")
                )
                .await
                .is_some())
                .await,
                "{id} was handled"
            );
            let attributes = kv(&host, "mirror", &format!("attributes:{id}")).await.unwrap();
            assert_eq!(attributes["source"], sent.source().to_string(), "{id}");
            assert_eq!(attributes["type"], sent.ty(), "{id}");
            assert_eq!(attributes["subject"].as_str(), sent.subject(), "{id}");
            assert_eq!(
                attributes["datacontenttype"].as_str(),
                sent.datacontenttype(),
                "{id}"
            );
            assert_eq!(
                attributes["dataschema"].as_str(),
                sent.dataschema().map(|url| url.as_str()),
                "{id}"
            );
            let time = attributes["time"]
                .as_str()
                .map(|time| time.parse::<DateTime<Utc>>().unwrap());
            assert_eq!(time.as_ref(), sent.time(), "{id}");
            let received: BTreeMap<String, Value> =
                serde_json::from_value(attributes["extensions"].clone()).unwrap();
            assert_eq!(received, extensions(&sent, mode == "binary"), "{id}");
            assert_eq!(
                kv_bytes(&host, "mirror", &format!("data:{id}")).await,
                data_bytes(sent.data()),
                "{id}: the handler sees the data's exact bytes"
            );
        }
    }
}

#[test]
fn the_sdk_reads_back_what_evhost_writes() {
    for sent in events("library") {
        let json = serde_json::to_vec(&sent).unwrap();
        let ours = evhost::Event::from_json(&json).unwrap_or_else(|error| panic!("{}: {error}", sent.id()));
        let written = serde_json::to_vec(&ours).unwrap();
        let read: cloudevents::Event = serde_json::from_slice(&written)
            .unwrap_or_else(|error| panic!("{}: the SDK cannot read evhost's JSON: {error}", sent.id()));
        assert_eq!(read.id(), sent.id());
        assert_eq!(read.source(), sent.source());
        assert_eq!(read.ty(), sent.ty());
        assert_eq!(read.subject(), sent.subject());
        assert_eq!(read.time(), sent.time());
        assert_eq!(read.datacontenttype(), sent.datacontenttype());
        assert_eq!(read.dataschema(), sent.dataschema());
        assert_eq!(
            extensions(&read, false),
            extensions(&sent, false),
            "{}",
            sent.id()
        );
        assert_eq!(data_bytes(read.data()), data_bytes(sent.data()), "{}", sent.id());
    }
}
