//! The operator's reads against the real binary on its embedded log: events by id with
//! each delivery's state, a saga's trace, pages of events and keys, plugin history, the
//! effective configuration, metrics history, the live stream, replay previews — and the
//! CLI commands that print them.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    Running, TempDir, client, eventually, evhost, get_json, install, payment_saga_nodes, post_events,
    run_command,
};
use crate::wasm;

const CE_JSON: &str = "application/cloudevents+json";

/// Publishes `event` and waits for every handler's outcome.
async fn publish_and_wait(host: &Running, event: Value) -> Value {
    let response = post_events(
        &client(),
        &host.url,
        "/events?wait=true",
        CE_JSON,
        event.to_string(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn payment(ty: &str, id: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "payments", "type": ty, "subject": "p1", "data": data})
}

/// The one stored event of `ty`, found through `GET /events?type=`.
async fn only_of_type(host: &Running, ty: &str) -> Value {
    let page = get_json(&client(), format!("{}/events?type={ty}", host.url)).await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page:#}");
    events[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sagas_trace_shows_each_event_under_its_cause_with_the_plugin_that_emitted_it() {
    let host = Running::start(&[("payment-saga", wasm::PAYMENT_SAGA)], &[]);
    let http = client();
    let plugins = get_json(&http, format!("{}/plugins", host.url)).await;
    let hash = plugins[0]["hash"].as_str().unwrap().to_owned();

    let created = payment(
        "PaymentCreated",
        "pay-1",
        json!({"payment_id": "p1", "order_id": "o1", "amount": 4200, "currency": "EUR",
               "items": [{"sku": "book", "quantity": 2}]}),
    );
    publish_and_wait(&host, created).await;
    let requested = only_of_type(&host, "InventoryReservationRequested").await;
    let requested_id = requested["event"]["id"].as_str().unwrap().to_owned();
    // The inventory service answers, in the same saga.
    let mut reserved = payment(
        "InventoryReserved",
        "inv-1",
        json!({"payment_id": "p1", "reservation_id": "r1"}),
    );
    reserved["correlationid"] = json!("pay-1");
    reserved["causationid"] = json!(requested_id);
    publish_and_wait(&host, reserved).await;

    // One event: its attributes and where its delivery stands, with the version that ran.
    let shown = get_json(&http, format!("{}/events/pay-1", host.url)).await;
    assert_eq!(shown["event"]["type"], "PaymentCreated");
    assert_eq!(shown["emitted_by"], Value::Null, "published, not emitted");
    let delivery = &shown["deliveries"][0];
    assert_eq!(delivery["subscription"], "payment-saga");
    assert_eq!(delivery["state"], "handled");
    assert_eq!(delivery["version"], hash.as_str(), "{shown:#}");
    assert!(delivery["at"].is_string(), "{shown:#}");

    // The trace, asked from any event of the saga: the same tree.
    for from in ["pay-1", "inv-1"] {
        let trace = get_json(&http, format!("{}/events/{from}/trace", host.url)).await;
        let [_, _, reserved, _] = payment_saga_nodes(&trace);
        assert_eq!(reserved["deliveries"][0]["state"], "handled");
    }

    // The CLI draws the same tree: each event indented under its cause.
    let (code, out, err) = evhost(&["events", "trace", "inv-1", "--url", &host.url], "");
    assert_eq!(code, 0, "{err}");
    let depth = |ty: &str| {
        let line = out
            .lines()
            .find(|l| l.contains(ty))
            .unwrap_or_else(|| panic!("{ty} in {out}"));
        line.find(ty).unwrap()
    };
    assert!(
        depth("PaymentCreated") < depth("InventoryReservationRequested"),
        "{out}"
    );
    assert!(
        depth("InventoryReservationRequested") < depth("InventoryReserved"),
        "{out}"
    );
    assert!(depth("InventoryReserved") < depth("ShipmentRequested"), "{out}");
    assert!(out.contains("emitted by payment-saga"), "{out}");
    assert!(out.contains("handled at") && out.contains(&hash), "{out}");

    let (code, out, err) = evhost(&["events", "show", "pay-1", "--url", &host.url], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("type:    PaymentCreated"), "{out}");
    assert!(
        out.contains("\"order_id\": \"o1\""),
        "the data, pretty-printed: {out}"
    );
    assert!(out.contains("payment-saga: handled at"), "{out}");

    // Unknown ids and bad parameters are named.
    let response = http
        .get(format!("{}/events/nope", host.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("\"nope\""), "{body}");
    let response = http
        .get(format!("{}/events?limit=0", host.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_delivery_names_its_letter_and_a_preview_compares_versions() {
    let dir = TempDir::new("inspect-dlq");
    install(
        &dir.0,
        &[
            ("returns-reject", wasm::RETURNS_REJECT),
            ("healthy", wasm::HEALTHY),
        ],
        &[("returns-reject", "[config]\nreason = \"nope\"\n")],
    );
    let mut host = Running::start_in(&dir.0);
    let http = client();
    publish_and_wait(
        &host,
        json!({"specversion": "1.0", "id": "e-1", "source": "tests", "type": "Ping"}),
    )
    .await;
    // Same id, another source: the lookup asks which.
    publish_and_wait(
        &host,
        json!({"specversion": "1.0", "id": "e-1", "source": "other", "type": "Ping"}),
    )
    .await;

    let response = http.get(format!("{}/events/e-1", host.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("source=") && message.contains("other"),
        "{message}"
    );

    let shown = get_json(&http, format!("{}/events/e-1?source=tests", host.url)).await;
    let deliveries = shown["deliveries"].as_array().unwrap();
    assert_eq!(deliveries[0]["subscription"], "healthy");
    assert_eq!(deliveries[0]["state"], "handled");
    let rejected = &deliveries[1];
    assert_eq!(rejected["subscription"], "returns-reject");
    assert_eq!(rejected["state"], "dead-lettered");
    assert_eq!(rejected["failures"], 1);
    assert_eq!(rejected["last_failure"]["message"], "nope");
    let letters = get_json(&http, format!("{}/dlq?plugin=returns-reject", host.url)).await;
    let letter = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["event"]["source"] == "tests")
        .unwrap();
    assert_eq!(rejected["dead_letter_id"], letter["id"]);

    // Pages of the queue: after the first letter comes the second, then nothing.
    let first = get_json(&http, format!("{}/dlq?limit=1", host.url)).await;
    assert_eq!(first.as_array().unwrap().len(), 1);
    let after = first[0]["id"].as_u64().unwrap();
    let second = get_json(&http, format!("{}/dlq?limit=1&after={after}", host.url)).await;
    assert_eq!(second.as_array().unwrap().len(), 1);
    assert_ne!(second[0]["id"], first[0]["id"]);
    let rest = get_json(&http, format!("{}/dlq?after={}", host.url, second[0]["id"])).await;
    assert_eq!(rest, json!([]));

    // The version that failed is the one loaded: no fix yet.
    let id = letter["id"].as_u64().unwrap();
    let preview = get_json(&http, format!("{}/dlq/preview?ids={id}", host.url)).await;
    let entry = &preview[0];
    assert_eq!(entry["id"], id);
    assert_eq!(entry["failed_version"], entry["current_version"]);
    assert_eq!(entry["fixed_version_loaded"], false);

    // A replay named in a body; the audit log says who, what and how many.
    let response = http
        .post(format!("{}/dlq/replay", host.url))
        .header("content-type", "application/json")
        .body(json!({ "ids": [id] }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({ "replayed": 1 }));
    let audit = host.wait_for_log(
        |line| {
            line["message"] == "admin action"
                && line["action"].as_str().is_some_and(|a| a.contains("/dlq/replay"))
        },
        Duration::from_secs(5),
    );
    assert_eq!(audit["count"], 1, "{audit}");
    let response = http
        .post(format!("{}/dlq/replay", host.url))
        .header("content-type", "application/json")
        .body("{\"ids\": \"all\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_is_listed_by_prefix_a_page_at_a_time() {
    let host = Running::start(&[("user-projection", wasm::USER_PROJECTION)], &[]);
    let http = client();
    for n in 0..5 {
        let event = json!({"specversion": "1.0", "id": format!("u{n}"), "source": "users", "type": "UserCreated",
                           "subject": format!("u{n}"),
                           "data": {"id": format!("u{n}"), "email": format!("u{n}@example.com"), "name": format!("User {n}")}});
        publish_and_wait(&host, event).await;
    }
    let mut keys = Vec::new();
    let mut url = format!("{}/plugins/user-projection/kv?prefix=user:&limit=2", host.url);
    let mut pages = 0;
    loop {
        let page = get_json(&http, url.clone()).await;
        pages += 1;
        for entry in page["entries"].as_array().unwrap() {
            assert!(
                entry["json"].is_object(),
                "a JSON value is served as JSON: {entry}"
            );
            keys.push(entry["key"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_str() {
            Some(after) => {
                url = format!(
                    "{}/plugins/user-projection/kv?prefix=user:&limit=2&after={after}",
                    host.url
                )
            }
            None => break,
        }
    }
    assert_eq!(keys, ["user:u0", "user:u1", "user:u2", "user:u3", "user:u4"]);
    assert_eq!(pages, 3);
    let none = get_json(
        &http,
        format!("{}/plugins/user-projection/kv?prefix=nobody:", host.url),
    )
    .await;
    assert_eq!(none["entries"], json!([]));

    let (code, out, err) = evhost(
        &[
            "plugins",
            "kv",
            "user-projection",
            "--list",
            "--prefix",
            "user:u3",
            "--url",
            &host.url,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("user:u3  {"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_history_records_its_load_swap_refusal_and_removal() {
    let dir = TempDir::new("inspect-history");
    install(&dir.0, &[("healthy", wasm::HEALTHY)], &[]);
    let host = Running::start_in(&dir.0);
    let http = client();
    let plugin = host.plugins.join("healthy.wasm");
    let staged = dir.0.join("healthy.wasm.new");
    let replace = |from: &str| {
        std::fs::copy(from, &staged).unwrap();
        std::fs::rename(&staged, &plugin).unwrap();
    };
    let changes = async |n: usize| {
        let mut history = Value::Null;
        let reached = eventually(Duration::from_secs(20), async || {
            history = get_json(&http, format!("{}/plugins/healthy/history", host.url)).await;
            history["changes"].as_array().is_some_and(|c| c.len() >= n)
        })
        .await;
        assert!(reached, "{history:#}");
        history
    };
    replace(wasm::HEALTHY_V2);
    let history = changes(2).await;
    let (loaded, swapped) = (&history["changes"][0], &history["changes"][1]);
    assert_eq!(loaded["change"], "loaded");
    assert_eq!(swapped["change"], "swapped");
    assert_eq!(swapped["from"], loaded["hash"]);
    assert_eq!(history["serving"], swapped["to"]);

    std::fs::write(&staged, b"not a component").unwrap();
    std::fs::rename(&staged, &plugin).unwrap();
    let history = changes(3).await;
    let refused = &history["changes"][2];
    assert_eq!(refused["change"], "refused");
    assert!(
        refused["reason"].as_str().unwrap().contains("keeps serving"),
        "{refused}"
    );

    std::fs::remove_file(&plugin).unwrap();
    let history = changes(4).await;
    assert_eq!(history["changes"][3]["change"], "removed");
    assert_eq!(
        history["serving"],
        Value::Null,
        "no longer loaded, its history still answers"
    );

    let (code, out, err) = evhost(&["plugins", "history", "healthy", "--url", &host.url], "");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "healthy is not loaded");
    assert!(lines[1].contains("loaded ") && lines[2].contains(" → "), "{out}");
    assert!(
        lines[3].contains("refused: ") && lines[4].contains("removed"),
        "{out}"
    );
    let response = http
        .get(format!("{}/plugins/never/history", host.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_names_each_values_source_and_hides_secrets() {
    let dir = TempDir::new("inspect-config");
    install(&dir.0, &[], &[]);
    let config = dir.0.join("evhost.toml");
    std::fs::write(
        &config,
        "max_body_bytes = 4096\n[[auth.tokens]]\nname = \"ops\"\nsecret = \"an-admin-secret-0123456789\"\nscopes = [\"read\", \"admin\"]\n[bus]\ncapacity = 5000\n",
    )
    .unwrap();
    let mut command = run_command(
        &dir.0,
        &[
            "--config",
            config.to_str().unwrap(),
            "--set",
            "request_timeout=20s",
        ],
    );
    command.env("EVHOST_BUS__MAX_CONCURRENCY", "12");
    let host = Running::spawn(command, &dir.0);
    let response = client()
        .get(format!("{}/config", host.url))
        .bearer_auth("an-admin-secret-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(!text.contains("an-admin-secret-0123456789"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let setting = |key: &str| {
        body["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in {body:#}"))
            .clone()
    };
    let file = config.display().to_string();
    assert_eq!(
        setting("max_body_bytes"),
        json!({"key": "max_body_bytes", "value": 4096, "source": "file", "from": file})
    );
    assert_eq!(setting("bus.capacity")["source"], "file");
    assert_eq!(setting("bus.max_concurrency")["source"], "env");
    assert_eq!(
        setting("bus.max_concurrency")["from"],
        "EVHOST_BUS__MAX_CONCURRENCY"
    );
    assert_eq!(setting("bus.max_concurrency")["value"], 12);
    assert_eq!(setting("request_timeout")["source"], "set");
    assert_eq!(setting("listen")["source"], "flag");
    assert_eq!(setting("drain_timeout")["source"], "default");
    assert_eq!(setting("auth.tokens")["value"][0]["name"], "ops");
}

/// Reads SSE events from `response` until `found` holds for one (its event name and data),
/// or `timeout` passes; returns the names seen.
pub(crate) async fn read_events(
    response: reqwest::Response,
    timeout: Duration,
    mut found: impl FnMut(&str, &Value) -> bool,
) -> Option<Vec<String>> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut names = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let chunk = tokio::time::timeout_at(deadline, body.next()).await.ok()??.ok()?;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("")
                .to_owned();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or("null");
            let data: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            names.push(name.clone());
            if found(&name, &data) {
                return Some(names);
            }
        }
    }
}

/// `GET /stream`, once a place is free: a client that hung up holds its place until the
/// host notices, at the next event it sends it.
async fn connect_stream(http: &reqwest::Client, url: &str) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = http.get(format!("{url}/stream")).send().await.unwrap();
        if response.status() == StatusCode::OK {
            return response;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place of a client that hung up is never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_carries_samples_failures_and_plugin_changes_to_a_bounded_number_of_clients() {
    let dir = TempDir::new("inspect-stream");
    install(&dir.0, &[("returns-reject", wasm::RETURNS_REJECT)], &[]);
    // A stream outlives `request_timeout`: the timeout is for answering, not for streaming.
    let mut host = Running::start_in_with(
        &dir.0,
        &["--set", "max_stream_clients=1", "--set", "request_timeout=1s"],
    );
    let http = client();
    let stream = http.get(format!("{}/stream", host.url)).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let second = http.get(format!("{}/stream", host.url)).send().await.unwrap();
    assert_eq!(
        second.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "one client at most"
    );
    let body: Value = second.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("max_stream_clients"),
        "{body}"
    );

    let publisher = {
        let url = host.url.clone();
        tokio::spawn(async move {
            // Until the stream has seen the failure: the first may come before it listens.
            for n in 0..50 {
                let event =
                    json!({"specversion": "1.0", "id": format!("s{n}"), "source": "tests", "type": "Ping"});
                post_events(&client(), &url, "/events", CE_JSON, event.to_string()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut handled = false;
    let mut failure = false;
    let names = read_events(stream, Duration::from_secs(15), |name, data| {
        handled |= name == "metrics" && data["plugins"]["returns-reject"]["failed"].as_u64() > Some(0);
        failure |= name == "failure" && data["subscription"] == "returns-reject" && data["kind"] == "reject";
        handled && failure
    })
    .await;
    publisher.abort();
    assert!(
        names.is_some(),
        "a metrics sample with the failures and a failure record"
    );

    // The samples are kept: a page that opens later draws the last minutes at once.
    let history = get_json(&http, format!("{}/metrics/history", host.url)).await;
    assert_eq!(history["interval_seconds"], 1);
    let samples = history["samples"].as_array().unwrap();
    assert!(
        samples
            .iter()
            .any(|s| s["plugins"]["returns-reject"]["failed"].as_u64() > Some(0)),
        "{history:#}"
    );
    assert!(
        samples
            .iter()
            .all(|s| s["dead_letters"].is_u64() && s["time"].is_string())
    );

    // The place the first client held is free once the host noticed it hung up (at the
    // next event it sends it, within a second).
    let again = connect_stream(&http, &host.url).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    std::fs::remove_file(host.plugins.join("returns-reject.wasm")).unwrap();
    let names = read_events(again, Duration::from_secs(15), |name, data| {
        name == "plugin" && data["change"] == "removed"
    })
    .await;
    assert!(
        names.is_some(),
        "the removal reaches the stream, past the request timeout"
    );

    // A connected page does not hold the shutdown up: its stream ends.
    let open = connect_stream(&http, &host.url).await;
    host.signal("TERM");
    let mut body = open.bytes_stream();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ends when the host stops");
    assert_eq!(host.wait_exit(Duration::from_secs(20)), 0);
    let held = host.log_lines().into_iter().find(|line| {
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not all stop"))
    });
    assert!(held.is_none(), "{held:?}");
}
