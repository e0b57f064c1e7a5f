//! The HTTP API over real HTTP: a server on 127.0.0.1:0, a `reqwest` client, the async
//! bus with native handlers, a `MemoryKv` and a fixed plugin catalog.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use reqwest::{Client, RequestBuilder, Response, StatusCode, header};
use serde_json::{Value, json};

use super::*;
use crate::bus::{AsyncBusConfig, AsyncEventBus, Backpressure, EventBus, HandlerError, from_fn};
use crate::event::{Data, Event, ExtensionValue};
use crate::monitor::{ErrorMonitor, FailureKind, FailureRecord};
use crate::runtime::Limits;
use crate::store::{KeyValueReader, KeyValueStore, MemoryKv};

/// Subscribed to `*`: records every event it sees, in order.
const AUDIT: &str = "audit";
/// Subscribed to `Bad*`: rejects everything.
const STRICT: &str = "strict";
/// Subscribed to `Odd*`; its name needs escaping in Prometheus labels.
const ODD: &str = "odd \"name\"\\path";

const AUDIT_FUEL: u64 = 1234;
const RELOADS: u64 = 2;
const LOAD_FAILURES: u64 = 1;

struct TestCatalog {
    plugins: Vec<PluginView>,
}

impl PluginCatalog for TestCatalog {
    fn plugins(&self) -> Vec<PluginView> {
        self.plugins.clone()
    }

    fn reloads(&self) -> u64 {
        RELOADS
    }

    fn load_failures(&self) -> u64 {
        LOAD_FAILURES
    }
}

fn view(name: &str, subscription: &str, fuel_consumed: u64) -> PluginView {
    PluginView {
        name: name.to_owned(),
        version: "0.1.0".to_owned(),
        hash: format!("{:016x}", name.len()),
        file: PathBuf::from(format!("plugins/{name}.wasm")),
        subscriptions: vec![subscription.to_owned()],
        imports: vec!["wasi:keyvalue/store@0.2.0-draft".to_owned()],
        limits: Limits::default(),
        concurrency: Some(4),
        reuse: 1,
        loaded_at: Utc::now(),
        reloads: 0,
        fuel_consumed,
    }
}

struct Harness {
    base: String,
    client: Client,
    state: Arc<AppState>,
    kv: Arc<MemoryKv>,
    /// What `audit` handled, in order.
    seen: Arc<Mutex<Vec<Arc<Event>>>>,
}

struct Options {
    bus: AsyncBusConfig,
    start_bus: bool,
    max_body_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bus: AsyncBusConfig::default(),
            start_bus: true,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

async fn start() -> Harness {
    start_with(Options::default()).await
}

async fn start_with(options: Options) -> Harness {
    let bus = AsyncEventBus::with_config(options.bus);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    bus.subscribe(
        "*",
        from_fn(AUDIT, move |event| {
            record.lock().unwrap().push(event);
            async { Ok::<_, HandlerError>(()) }
        }),
    )
    .unwrap();
    bus.subscribe(
        "Bad*",
        from_fn(STRICT, |event| async move {
            Err(HandlerError::reject(format!("{} is refused", event.ty)))
        }),
    )
    .unwrap();
    bus.subscribe("Odd*", from_fn(ODD, |_| async { Ok::<_, HandlerError>(()) }))
        .unwrap();
    if options.start_bus {
        bus.start().await.unwrap();
    }
    let catalog = TestCatalog {
        plugins: vec![
            view(AUDIT, "*", AUDIT_FUEL),
            view(STRICT, "Bad*", 0),
            view(ODD, "Odd*", 7),
        ],
    };
    let kv = Arc::new(MemoryKv::default());
    let state = Arc::new(AppState {
        max_body_bytes: options.max_body_bytes,
        ..AppState::new(bus, Arc::clone(&kv) as Arc<dyn KeyValueStore>, Arc::new(catalog))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(Arc::clone(&state));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Harness {
        base,
        client: Client::new(),
        state,
        kv,
        seen,
    }
}

impl Harness {
    fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(format!("{}{path}", self.base))
    }

    fn post(&self, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> RequestBuilder {
        self.client
            .post(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
    }

    fn structured(&self, path: &str, event: &Value) -> RequestBuilder {
        self.post(path, "application/cloudevents+json", event.to_string())
    }

    fn batch(&self, path: &str, events: &Value) -> RequestBuilder {
        self.post(path, "application/cloudevents-batch+json", events.to_string())
    }

    /// Waits until every accepted event was handled.
    async fn settle(&self) {
        self.state.bus.wait().await;
    }

    fn seen(&self) -> Vec<Arc<Event>> {
        self.seen.lock().unwrap().clone()
    }

    fn seen_ids(&self) -> Vec<String> {
        self.seen().iter().map(|e| e.id.clone()).collect()
    }
}

fn event(id: &str, ty: &str, subject: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "tests",
        "type": ty,
        "subject": subject,
        "datacontenttype": "application/json",
        "data": {"n": id},
    })
}

async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    json_of(response).await
}

async fn json_of(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        content_type, "application/json",
        "every answer here is JSON ({status})"
    );
    (status, response.json().await.unwrap())
}

/// The `error` message of a JSON error body.
fn message(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

// ---------------------------------------------------------------- POST /events, modes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_event_is_accepted_and_handled() {
    let h = start().await;
    let mut body = event("s1", "UserCreated", "u1");
    body["traceparent"] = json!("00-abc-01");
    let (status, json) = send(h.structured("/events", &body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json, json!({"accepted": ["s1"], "duplicates": []}));
    h.settle().await;
    let seen = h.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].ty, "UserCreated");
    assert_eq!(seen[0].subject.as_deref(), Some("u1"));
    assert_eq!(seen[0].json_data(), Some(&json!({"n": "s1"})));
    assert_eq!(
        seen[0].extensions["traceparent"],
        ExtensionValue::String("00-abc-01".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_is_accepted_whole_and_in_order() {
    let h = start().await;
    let batch = json!([
        event("b1", "UserCreated", "u1"),
        event("b2", "UserUpdated", "u1"),
        event("b3", "UserUpdated", "u1"),
    ]);
    let (status, json) = send(h.batch("/events", &batch)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json, json!({"accepted": ["b1", "b2", "b3"], "duplicates": []}));
    h.settle().await;
    assert_eq!(h.seen_ids(), ["b1", "b2", "b3"], "one subject: handled in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_batch_accepts_nothing() {
    let h = start().await;
    let (status, json) = send(h.batch("/events", &json!([]))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json, json!({"accepted": [], "duplicates": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_reads_headers_and_json_data() {
    let h = start().await;
    let request = h
        .post("/events", "application/json; charset=utf-8", r#"{"name": "Ada"}"#)
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin1")
        .header("ce-source", "tests")
        .header("ce-type", "UserCreated")
        .header("ce-subject", "caf%C3%A9")
        .header("ce-time", "2024-01-02T03:04:05Z")
        .header("ce-dataschema", "https://schemas.example/user/v1")
        .header("CE-ComExampleExt", "value")
        .header("x-not-an-attribute", "ignored");
    let (status, json) = send(request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json, json!({"accepted": ["bin1"], "duplicates": []}));
    h.settle().await;
    let seen = h.seen();
    let event = &seen[0];
    assert_eq!(event.id, "bin1");
    assert_eq!(event.subject.as_deref(), Some("café"), "percent-decoded");
    assert_eq!(event.time.unwrap().to_rfc3339(), "2024-01-02T03:04:05+00:00");
    assert_eq!(
        event.dataschema.as_deref(),
        Some("https://schemas.example/user/v1")
    );
    assert_eq!(
        event.datacontenttype.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(event.data, Some(Data::Json(json!({"name": "Ada"}))));
    assert_eq!(
        event.extensions,
        BTreeMap::from([("comexampleext".to_owned(), ExtensionValue::String("value".into()))]),
        "header names arrive lower-cased; only ce-* headers are attributes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_keeps_other_content_as_bytes() {
    let h = start().await;
    let bytes = vec![0_u8, 1, 2, 0xff, b'{'];
    let request = h
        .post("/events", "application/octet-stream", bytes.clone())
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin2")
        .header("ce-source", "tests")
        .header("ce-type", "BlobStored");
    let (status, _) = send(request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.settle().await;
    let seen = h.seen();
    assert_eq!(seen[0].data, Some(Data::Binary(bytes)));
    assert_eq!(
        seen[0].datacontenttype.as_deref(),
        Some("application/octet-stream")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_data_reaches_handlers_as_the_same_bytes_in_every_mode() {
    let h = start().await;
    let xml = r#"<much wow="xml"/>"#;
    let attributes = |id: &str, content_type: &str| {
        json!({"specversion": "1.0", "id": id, "source": "tests", "type": "Doc",
               "datacontenttype": content_type, "data": xml})
    };
    let (status, body) = send(h.post(
        "/events",
        "application/cloudevents+json",
        attributes("structured-xml", "application/xml").to_string(),
    ))
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let batch = json!([attributes("batch-text", "text/plain; charset=utf-8")]);
    let (status, body) =
        send(h.post("/events", "application/cloudevents-batch+json", batch.to_string())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    for (id, content_type) in [
        ("binary-xml", "application/xml"),
        ("binary-text", "text/plain; charset=utf-8"),
    ] {
        let request = h
            .post("/events", content_type, xml.as_bytes().to_vec())
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "tests")
            .header("ce-type", "Doc");
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    // A string of a JSON content type stays a JSON string.
    let json_string = json!({"specversion": "1.0", "id": "structured-json", "source": "tests",
                             "type": "Doc", "datacontenttype": "application/json", "data": xml});
    let (status, _) = send(h.post("/events", "application/cloudevents+json", json_string.to_string())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.settle().await;
    let seen = h.seen();
    let data = |id: &str| seen.iter().find(|event| event.id == id).unwrap().data.clone();
    for id in ["structured-xml", "batch-text", "binary-xml", "binary-text"] {
        assert_eq!(data(id), Some(Data::Binary(xml.as_bytes().to_vec())), "{id}");
    }
    assert_eq!(data("structured-json"), Some(Data::Json(json!(xml))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_extension_is_unset_in_structured_and_batch_mode() {
    let h = start().await;
    let with_null = |id: &str| {
        json!({"specversion": "1.0", "id": id, "source": "s", "type": "T",
               "unsetextension": null, "kept": "yes"})
    };
    let (status, body) = send(h.post(
        "/events",
        "application/cloudevents+json",
        with_null("r-1").to_string(),
    ))
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let batch = json!([with_null("r-2")]);
    let (status, body) =
        send(h.post("/events", "application/cloudevents-batch+json", batch.to_string())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    h.settle().await;
    for event in h.seen() {
        assert_eq!(
            event.extensions,
            BTreeMap::from([("kept".to_owned(), ExtensionValue::String("yes".into()))]),
            "{}",
            event.id
        );
    }
}

// ---------------------------------------------------------------- POST /events, errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_naming_the_problem() {
    let h = start().await;
    let (status, json) = send(h.post(
        "/events",
        "application/cloudevents+json",
        r#"{"specversion": "1.0", "id": "#,
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&json).contains("not valid JSON"), "{json}");

    let (status, json) = send(h.post("/events", "application/cloudevents-batch+json", "[{,]")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&json).contains("batch is not valid JSON"), "{json}");

    let (status, json) = send(h.batch("/events", &event("x", "T", "s"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message(&json).contains("must be a JSON array of events, got an object"),
        "{json}"
    );
    assert_eq!(h.state.bus.metrics().accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_attribute_is_400_naming_it() {
    let h = start().await;
    let mut body = event("m1", "UserCreated", "u1");
    body.as_object_mut().unwrap().remove("type");
    let (status, json) = send(h.structured("/events", &body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(message(&json), "missing required attribute `type`");

    let mut body = event("m2", "UserCreated", "u1");
    body["source"] = json!("");
    let (status, json) = send(h.structured("/events", &body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(message(&json), "attribute `source` must not be empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specversion_is_400() {
    let h = start().await;
    let mut body = event("v1", "UserCreated", "u1");
    body["specversion"] = json!("0.3");
    let (status, json) = send(h.structured("/events", &body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&json).contains("`specversion` must be \"1.0\""), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_errors_name_the_header() {
    let h = start().await;
    let without_source = h
        .post("/events", "application/json", "{}")
        .header("ce-specversion", "1.0")
        .header("ce-id", "e1")
        .header("ce-type", "UserCreated");
    let (status, json) = send(without_source).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&json).contains("`ce-source` header"), "{json}");

    let bad_json = h
        .post("/events", "application/vnd.example+json", "{not json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "e2")
        .header("ce-source", "tests")
        .header("ce-type", "UserCreated");
    let (status, json) = send(bad_json).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&json).contains("body is not valid JSON"), "{json}");

    let bad_extension = h
        .post("/events", "text/plain", "hi")
        .header("ce-specversion", "1.0")
        .header("ce-id", "e3")
        .header("ce-source", "tests")
        .header("ce-type", "UserCreated")
        .header("ce-my_ext", "x");
    let (status, json) = send(bad_extension).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&json).contains("extension name `my_ext`"), "{json}");

    let bare = h.post("/events", "text/plain", "no attributes at all");
    let (status, json) = send(bare).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&json).contains("application/cloudevents+json"), "{json}");
    assert_eq!(h.state.bus.metrics().accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_with_bad_second_event_accepts_nothing() {
    let h = start().await;
    let mut bad = event("b2", "UserCreated", "u1");
    bad.as_object_mut().unwrap().remove("id");
    let batch = json!([
        event("b1", "UserCreated", "u1"),
        bad,
        event("b3", "UserCreated", "u1")
    ]);
    let (status, json) = send(h.batch("/events", &batch)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message(&json).starts_with("event at index 1: missing required attribute `id`"),
        "{json}"
    );
    h.settle().await;
    assert_eq!(h.state.bus.metrics().accepted, 0);
    assert!(h.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413() {
    let h = start_with(Options {
        max_body_bytes: 1024,
        ..Options::default()
    })
    .await;
    let mut small = event("ok", "UserCreated", "u1");
    small["data"] = json!("x".repeat(800));
    let (status, _) = send(h.structured("/events", &small)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "a body under the limit passes");

    let mut big = event("big", "UserCreated", "u1");
    big["data"] = json!("x".repeat(1500));
    let (status, json) = send(h.structured("/events", &big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(message(&json), "the request body exceeds the limit of 1024 bytes");
    h.settle().await;
    assert_eq!(h.seen_ids(), ["ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_cloudevents_format_is_415() {
    let h = start().await;
    let (status, json) = send(h.post("/events", "application/cloudevents+xml", "<event/>")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(message(&json).contains("application/cloudevents+xml"), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_wait_parameter_is_400() {
    let h = start().await;
    let (status, json) = send(h.structured("/events?wait=maybe", &event("w", "T", "s"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&json).contains("`wait`"), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_accepting_is_503() {
    let h = start().await;
    h.state.set_accepting(false);
    for path in ["/events", "/events?wait=true"] {
        let (status, json) = send(h.structured(path, &event("n1", "UserCreated", "u1"))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(message(&json).contains("shutting down"), "{json}");
    }
    assert_eq!(h.state.bus.metrics().accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_bus_is_503() {
    let h = start().await;
    h.state.bus.stop().await.unwrap();
    let (status, json) = send(h.batch("/events", &json!([event("n1", "UserCreated", "u1")]))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(message(&json).contains("shutting down"), "{json}");
    let (status, _) = send(h.structured("/events?wait=true", &event("n2", "UserCreated", "u1"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_bus_is_503_with_retry_after() {
    // Not started: the first event is accepted and stays in flight, filling the bus.
    let h = start_with(Options {
        bus: AsyncBusConfig {
            capacity: 1,
            backpressure: Backpressure::Reject,
            ..AsyncBusConfig::default()
        },
        start_bus: false,
        ..Options::default()
    })
    .await;
    let (status, _) = send(h.structured("/events", &event("f1", "UserCreated", "u1"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let response = h
        .structured("/events", &event("f2", "UserCreated", "u1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    let (status, json) = json_of(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(message(&json).contains("capacity"), "{json}");

    let (status, json) =
        send(h.batch("/events", &json!([event("g1", "T", "s"), event("g2", "T", "s")]))).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "a batch over the capacity can never fit"
    );
    assert!(message(&json).contains("split it"), "{json}");
}

// ---------------------------------------------------------------- POST /events?wait=true

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_true_reports_every_handler_outcome() {
    let h = start().await;
    let (status, json) = send(h.structured("/events?wait=true", &event("w1", "UserCreated", "u1"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json,
        json!({
            "ok": true,
            "accepted": ["w1"],
            "events": [{"id": "w1", "ok": true, "outcomes": [{"plugin": AUDIT, "ok": true}]}]
        })
    );
    // Handled before the answer, not merely accepted.
    assert_eq!(h.seen_ids(), ["w1"]);

    let (status, json) = send(h.structured("/events?wait=true", &event("w2", "BadThing", "u1"))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "handler failures are reported, not an HTTP error"
    );
    assert_eq!(json["ok"], false);
    assert_eq!(json["accepted"], json!(["w2"]));
    let delivery = &json["events"][0];
    assert_eq!(delivery["ok"], false);
    let outcomes: HashMap<&str, &Value> = delivery["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["plugin"].as_str().unwrap(), o))
        .collect();
    assert_eq!(outcomes.len(), 2);
    assert_eq!(*outcomes[AUDIT], json!({"plugin": AUDIT, "ok": true}));
    assert_eq!(
        *outcomes[STRICT],
        json!({"plugin": STRICT, "ok": false, "kind": "reject", "message": "BadThing is refused"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_true_batch_reports_each_event_in_order() {
    let h = start().await;
    let batch = json!([
        event("k1", "UserCreated", "u1"),
        event("k2", "BadThing", "u1"),
        event("k3", "UserUpdated", "u1"),
        event("other", "UserCreated", "u2"),
    ]);
    let (status, json) = send(h.batch("/events?wait", &batch)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["ok"], false);
    assert_eq!(json["accepted"], json!(["k1", "k2", "k3", "other"]));
    let summary: Vec<(String, bool)> = json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("k1".to_owned(), true),
            ("k2".to_owned(), false),
            ("k3".to_owned(), true),
            ("other".to_owned(), true)
        ]
    );
    let u1: Vec<String> = h
        .seen()
        .iter()
        .filter(|e| e.subject.as_deref() == Some("u1"))
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(u1, ["k1", "k2", "k3"], "one subject: handled in order");
}

// ---------------------------------------------------------------- health

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_follow_the_state() {
    let h = start().await;
    assert_eq!(
        send(h.get("/healthz")).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(
        send(h.get("/readyz")).await,
        (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "starting"}))
    );
    h.state.set_ready(true);
    assert_eq!(
        send(h.get("/readyz")).await,
        (StatusCode::OK, json!({"status": "ready"}))
    );
    h.state.set_accepting(false);
    assert_eq!(
        send(h.get("/readyz")).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "shutting down"})
        )
    );
    assert_eq!(send(h.get("/healthz")).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_and_wrong_method_405() {
    let h = start().await;
    let (status, json) = send(h.get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(message(&json), "no endpoint GET /nope");

    let response = h.client.put(format!("{}/events", h.base)).send().await.unwrap();
    let allow = response.headers()[header::ALLOW].to_str().unwrap().to_owned();
    assert!(allow.contains("POST") && allow.contains("GET"), "{allow}");
    let (status, json) = json_of(response).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(message(&json), "/events does not support PUT");
}

// ---------------------------------------------------------------- /metrics

/// One sample line of the text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of what `/metrics` produces: every family has `# HELP` and `# TYPE`
/// before its samples, every sample is `name{labels} value` with a float value and
/// properly escaped label values. Panics with the offending line otherwise.
fn parse_exposition(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
    let mut types = HashMap::new();
    let mut helps = HashMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "OpenMetrics ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        let line = *line;
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect(line);
            assert!(!help.is_empty(), "{line}");
            helps.insert(name.to_owned(), help.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(helps.contains_key(name), "HELP before TYPE: {line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "one TYPE per family: {line}"
            );
        } else {
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "unexpected line {line:?}"
            );
            let sample = parse_sample(line);
            let family = [
                ("_bucket", "histogram"),
                ("_sum", "histogram"),
                ("_count", "histogram"),
                ("_total", "counter"),
            ]
            .iter()
            .find_map(|(suffix, kind)| {
                let base = sample.name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some(*kind)).then_some(base)
            })
            .unwrap_or(&sample.name);
            assert!(
                types.get(family).map(String::as_str) != Some("counter") || sample.name.ends_with("_total"),
                "a counter's samples end in _total: {line}"
            );
            assert!(types.contains_key(family), "sample before its TYPE: {line}");
            samples.push(sample);
        }
    }
    (types, samples)
}

fn parse_sample(line: &str) -> Sample {
    let mut chars = line.chars().peekable();
    let mut name = String::new();
    while let Some(c) = chars.next_if(|c| *c != '{' && *c != ' ') {
        name.push(c);
    }
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "metric name in {line}"
    );
    let mut labels = BTreeMap::new();
    if chars.next_if_eq(&'{').is_some() {
        loop {
            let mut label = String::new();
            loop {
                match chars.next().expect(line) {
                    '=' => break,
                    c => label.push(c),
                }
            }
            assert!(
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "label name in {line}"
            );
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next().expect(line) {
                    '\\' => match chars.next().expect(line) {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => panic!("bad escape \\{other} in {line}"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            assert!(labels.insert(label, value).is_none(), "duplicate label in {line}");
            match chars.next().expect(line) {
                ',' => {}
                '}' => break,
                other => panic!("unexpected {other:?} after a label in {line}"),
            }
        }
    }
    assert_eq!(chars.next(), Some(' '), "one space before the value in {line}");
    let value: String = chars.collect();
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("value is not a float in {line}"));
    Sample { name, labels, value }
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == wanted)
        .collect();
    assert_eq!(matching.len(), 1, "exactly one sample {name}{labels:?}");
    matching[0].value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_was_sent() {
    let h = start().await;
    for id in ["m1", "m2"] {
        let (status, _) = send(h.structured("/events", &event(id, "UserCreated", id))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let batch = json!([event("m3", "UserUpdated", "m1"), event("m4", "BadThing", "m4")]);
    assert_eq!(send(h.batch("/events", &batch)).await.0, StatusCode::ACCEPTED);
    let binary = h
        .post("/events", "text/plain", "odd")
        .header("ce-specversion", "1.0")
        .header("ce-id", "m5")
        .header("ce-source", "tests")
        .header("ce-type", "OddThing");
    assert_eq!(send(binary).await.0, StatusCode::ACCEPTED);
    h.settle().await;

    let response = h.get("/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let (types, samples) = parse_exposition(&text);

    for (family, kind) in [
        ("evhost_events_accepted", "counter"),
        ("evhost_events_in_flight", "gauge"),
        ("evhost_invocations_running", "gauge"),
        ("evhost_deliveries", "counter"),
        ("evhost_handler_duration_seconds", "histogram"),
        ("evhost_fuel_consumed", "counter"),
        ("evhost_error_monitor_overflow", "counter"),
        ("evhost_store_retries", "counter"),
        ("evhost_failures_reported", "counter"),
        ("evhost_plugin_reloads", "counter"),
        ("evhost_plugin_load_failures", "counter"),
        ("evhost_plugins_loaded", "gauge"),
        ("evhost_http_requests", "counter"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "{family}");
    }
    assert_eq!(value(&samples, "evhost_events_accepted_total", &[]), 5.0);
    assert_eq!(value(&samples, "evhost_events_in_flight", &[]), 0.0);
    assert_eq!(value(&samples, "evhost_invocations_running", &[]), 0.0);
    let deliveries = |plugin: &str, outcome: &str| {
        value(
            &samples,
            "evhost_deliveries_total",
            &[("plugin", plugin), ("outcome", outcome)],
        )
    };
    assert_eq!(deliveries(AUDIT, "ok"), 5.0);
    assert_eq!(deliveries(AUDIT, "reject"), 0.0);
    assert_eq!(deliveries(STRICT, "ok"), 0.0);
    assert_eq!(deliveries(STRICT, "reject"), 1.0);
    assert_eq!(deliveries(STRICT, "out-of-fuel"), 0.0);
    assert_eq!(deliveries(ODD, "ok"), 1.0, "escaped label values read back");

    // The histogram: cumulative buckets ending in +Inf = _count = invocations.
    for (plugin, invocations) in [(AUDIT, 5.0), (STRICT, 1.0), (ODD, 1.0)] {
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name == "evhost_handler_duration_seconds_bucket" && s.labels["plugin"] == plugin)
            .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
            .collect();
        assert_eq!(buckets.len(), LATENCY_BUCKETS_WITH_INF, "{plugin}");
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "cumulative: {buckets:?}"
        );
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, invocations));
        let count = value(
            &samples,
            "evhost_handler_duration_seconds_count",
            &[("plugin", plugin)],
        );
        assert_eq!(count, invocations);
        let sum = value(
            &samples,
            "evhost_handler_duration_seconds_sum",
            &[("plugin", plugin)],
        );
        assert!(sum >= 0.0);
    }

    assert_eq!(
        value(&samples, "evhost_fuel_consumed_total", &[("plugin", AUDIT)]),
        AUDIT_FUEL as f64
    );
    assert_eq!(value(&samples, "evhost_failures_reported_total", &[]), 1.0);
    assert_eq!(value(&samples, "evhost_error_monitor_overflow_total", &[]), 0.0);
    assert_eq!(
        value(&samples, "evhost_plugin_reloads_total", &[]),
        RELOADS as f64
    );
    assert_eq!(
        value(&samples, "evhost_plugin_load_failures_total", &[]),
        LOAD_FAILURES as f64
    );
    assert_eq!(value(&samples, "evhost_plugins_loaded", &[]), 3.0);
    assert_eq!(
        value(
            &samples,
            "evhost_http_requests_total",
            &[("route", "/events"), ("method", "POST"), ("status", "202")]
        ),
        4.0,
        "each request counted once, by its route"
    );
}

const LATENCY_BUCKETS_WITH_INF: usize = crate::metrics::LATENCY_BUCKETS.len() + 1;

// ---------------------------------------------------------------- /plugins

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_lists_the_catalog_with_counters() {
    let h = start().await;
    let batch = json!([event("p1", "UserCreated", "u1"), event("p2", "BadThing", "u1")]);
    assert_eq!(send(h.batch("/events", &batch)).await.0, StatusCode::ACCEPTED);
    h.settle().await;

    let (status, json) = send(h.get("/plugins")).await;
    assert_eq!(status, StatusCode::OK);
    let plugins = json.as_array().unwrap();
    assert_eq!(plugins.len(), 3);
    let audit = plugins.iter().find(|p| p["name"] == AUDIT).unwrap();
    assert_eq!(audit["version"], "0.1.0");
    assert_eq!(audit["hash"], format!("{:016x}", AUDIT.len()));
    assert_eq!(audit["file"], "plugins/audit.wasm");
    assert_eq!(audit["subscriptions"], json!(["*"]));
    assert_eq!(audit["imports"], json!(["wasi:keyvalue/store@0.2.0-draft"]));
    let limits = Limits::default();
    assert_eq!(
        audit["limits"],
        json!({
            "fuel": limits.fuel,
            "timeout_ms": limits.timeout.as_millis() as u64,
            "memory_bytes": limits.memory_bytes,
            "kv_write_bytes": limits.kv_write_bytes,
            "kv_writes": limits.kv_writes,
            "emit_events": limits.emit_events,
            "emit_bytes": limits.emit_bytes,
            "emit_depth": limits.emit_depth,
            "log_bytes": limits.log_bytes,
        })
    );
    assert_eq!(audit["concurrency"], 4);
    assert_eq!(audit["reuse"], 1);
    assert!(audit["loaded_at"].as_str().is_some());
    assert_eq!(audit["reloads"], 0);
    assert_eq!(audit["fuel_consumed"], AUDIT_FUEL);
    assert_eq!(audit["counters"]["succeeded"], 2);
    assert_eq!(audit["counters"]["failed"], json!({}));
    assert_eq!(audit["counters"]["latency_count"], 2);

    let strict = plugins.iter().find(|p| p["name"] == STRICT).unwrap();
    assert_eq!(strict["counters"]["succeeded"], 0);
    assert_eq!(strict["counters"]["failed"], json!({"reject": 1}));
    assert_eq!(strict["counters"]["latency_count"], 1);
}

// ---------------------------------------------------------------- /errors

fn failure(n: u32) -> FailureRecord {
    FailureRecord {
        subscription: STRICT.to_owned(),
        handler_version: Some("abc".to_owned()),
        event_id: format!("e{n}"),
        event_type: "BadThing".to_owned(),
        attempt: 1,
        kind: FailureKind::Reject,
        message: "no".to_owned(),
        time: Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_lists_recent_records_newest_first() {
    let h = start().await;
    for n in 1..=3 {
        h.state.errors.push(failure(n));
    }
    let (status, json) = send(h.get("/errors")).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e3", "e2", "e1"]);
    assert_eq!(json[0]["kind"], "reject");
    assert_eq!(json[0]["subscription"], STRICT);

    let (_, json) = send(h.get("/errors?limit=1")).await;
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["event_id"], "e3");

    let (status, json) = send(h.get("/errors?limit=lots")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&json).contains("`limit`"), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_failures_reach_errors_endpoint() {
    let h = start().await;
    h.state
        .errors
        .spawn_consumer(h.state.bus.errors().expect("the stream is not taken yet"));
    let (status, _) = send(h.structured("/events?wait=true", &event("x1", "BadThing", "u1"))).await;
    assert_eq!(status, StatusCode::OK);
    // The consumer runs on its own task: poll until it caught up, with a deadline.
    let records = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, json) = send(h.get("/errors")).await;
            if !json.as_array().unwrap().is_empty() {
                return json;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the failure reached /errors");
    assert_eq!(records[0]["event_id"], "x1");
    assert_eq!(records[0]["subscription"], STRICT);
    assert_eq!(records[0]["kind"], "reject");
    assert_eq!(records[0]["message"], "BadThing is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_errors_keeps_the_last_records_from_its_stream() {
    let monitor = ErrorMonitor::new(10);
    let recent = Arc::new(RecentErrors::new(2));
    let consumer = recent.spawn_consumer(monitor.errors().unwrap());
    for n in 1..=3 {
        monitor.report(failure(n));
    }
    // Dropping the monitor closes the stream; the consumer ends after the last record.
    drop(monitor);
    consumer.await.unwrap();
    let ids: Vec<String> = recent.recent(10).into_iter().map(|r| r.event_id).collect();
    assert_eq!(ids, ["e3", "e2"]);
    assert!(RecentErrors::new(0).recent(10).is_empty());
}

// ---------------------------------------------------------------- key-value reader

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_values_are_served_read_only() {
    let h = start().await;
    h.kv.commit(
        AUDIT,
        vec![
            ("user:u1".into(), Some(br#"{"name":"Ada"}"#.to_vec())),
            ("blob".into(), Some(vec![0, 159, 146, 150])),
            ("orders/o1".into(), Some(b"[1,2]".to_vec())),
        ],
    )
    .await
    .unwrap();
    h.kv.commit("ghost", vec![("k".into(), Some(b"1".to_vec()))])
        .await
        .unwrap();

    for path in ["/plugins/audit/kv/user:u1", "/plugins/audit/kv/user%3Au1"] {
        let (status, json) = send(h.get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(json, json!({"name": "Ada"}), "{path}");
    }
    let (status, json) = send(h.get("/plugins/audit/kv/orders/o1")).await;
    assert_eq!((status, json), (StatusCode::OK, json!([1, 2])));

    let response = h.get("/plugins/audit/kv/blob").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), [0, 159, 146, 150]);

    let (status, json) = send(h.get("/plugins/audit/kv/user:u2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(message(&json), r#"plugin "audit" has no key "user:u2""#);

    let (status, json) = send(h.get("/plugins/ghost/kv/k")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "in the store but not a loaded plugin"
    );
    assert_eq!(message(&json), r#"no plugin named "ghost" is loaded"#);

    let response = h
        .client
        .put(format!("{}/plugins/audit/kv/user:u1", h.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "read-only");
    assert_eq!(
        h.kv.get(AUDIT, "user:u1").await.unwrap().map(|v| v.value),
        Some(br#"{"name":"Ada"}"#.to_vec())
    );
}
