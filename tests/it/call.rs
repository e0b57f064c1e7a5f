//! `evhost plugins call`: one event through a component offline, in any language, with the
//! outcome and the effects a host would apply printed — the test loop of a plugin author.

use serde_json::{Value, json};

use crate::support::evhost;
use crate::wasm;

/// Runs `evhost plugins call FILE --event - ARGS` with `event` on standard input: the exit
/// code, the report and what went to stderr (the plugin's logs).
fn call(file: &str, event: &Value, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["plugins", "call", file, "--event", "-"];
    all.extend(args);
    let (code, stdout, stderr) = evhost(&all, &event.to_string());
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, report, stderr)
}

fn user(ty: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0", "id": "e1", "source": "users-service", "type": ty, "subject": "u1",
        "time": "2026-01-02T00:00:00Z", "data": data
    })
}

#[test]
fn a_call_prints_what_the_plugin_would_write_and_emit_and_its_logs() {
    let (code, report, stderr) = call(
        wasm::GREETER,
        &user("UserCreated", json!({"id": "u1", "name": "Ada"})),
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["plugin"], "greeter");
    assert_eq!(report["outcome"], "ok");
    assert_eq!(
        report["kv_writes"],
        json!([{"key": "greeted:u1", "value": "yes"}])
    );
    let emitted = &report["emitted"][0];
    assert_eq!(
        (
            &emitted["type"],
            &emitted["subject"],
            &emitted["causationid"],
            &emitted["source"]
        ),
        (
            &json!("UserGreeted"),
            &json!("u1"),
            &json!("e1"),
            &json!("greeter")
        )
    );
    assert!(stderr.contains("greeting Ada"), "the plugin's log: {stderr}");
}

#[test]
fn a_failed_call_names_its_kind_and_reason_keeps_no_effect_and_exits_1() {
    let event = user("UserCreated", json!({}));
    let (code, report, stderr) = call(wasm::RETURNS_REJECT, &event, &["--config", "reason=no such user"]);
    assert_eq!(code, 1);
    assert_eq!(
        (&report["outcome"], &report["reason"]),
        (&json!("reject"), &json!("no such user"))
    );
    assert!(
        stderr.contains("the plugin failed the event: reject: no such user"),
        "{stderr}"
    );

    let (code, report, _) = call(wasm::PANICS, &event, &[]);
    assert_eq!((code, &report["outcome"]), (1, &json!("trap")));
    assert_eq!(report["kv_writes"], json!([]));

    // Bad input is named, not called.
    let (code, _, stderr) = evhost(
        &["plugins", "call", wasm::GREETER, "--event", "-"],
        "{\"type\": \"T\"}",
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("not a valid CloudEvent"), "{stderr}");
    let (code, _, stderr) = evhost(
        &[
            "plugins",
            "call",
            wasm::GREETER,
            "--event",
            "-",
            "--kv",
            "no-equals-sign",
        ],
        &event.to_string(),
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("`--kv no-equals-sign` is not KEY=VALUE"),
        "{stderr}"
    );
}

/// The same read model, called in Rust and in Python, from a store seeded with `--kv`.
#[test]
fn a_call_reads_the_store_seeded_with_kv_in_every_language() {
    let stored = json!({
        "id": "u1", "name": "Ada", "email": "ada@example.com", "phone": null, "address": null,
        "version": 1, "last_event_id": "e0", "updated_at": "2026-01-01T00:00:00Z"
    });
    let seed = format!("user:u1={stored}");
    let renamed = user("UserProfileUpdated", json!({"name": "Ada Lovelace"}));
    let mut reports = Vec::new();
    for plugin in [wasm::USER_PROJECTION, wasm::PY_USER_PROJECTION] {
        let (code, report, stderr) = call(plugin, &renamed, &["--kv", &seed]);
        assert_eq!(code, 0, "{plugin}: {stderr}");
        let written = &report["kv_writes"][0];
        assert_eq!(written["key"], "user:u1");
        assert_eq!(
            (&written["value"]["name"], &written["value"]["version"]),
            (&json!("Ada Lovelace"), &json!(2)),
            "{plugin} updated what --kv stored"
        );
        reports.push(report["kv_writes"].clone());
    }
    assert_eq!(reports[0], reports[1], "the same write in Rust and Python");
}

#[test]
fn a_javascript_plugin_has_console_output_randomness_and_a_clock() {
    let event = json!({"specversion": "1.0", "id": "c1", "source": "t", "type": "Console"});
    let (code, report, stderr) = call(wasm::JS_FAULTS, &event, &[]);
    assert_eq!(code, 0, "{stderr}");
    for line in ["console.log reached the host", "console.error reached the host"] {
        assert!(stderr.contains(line), "{line} in the plugin's log: {stderr}");
    }
    let value = &report["kv_writes"][0]["value"];
    assert_eq!(value["random"], true, "{value}");
    assert!(value["year"].as_i64().unwrap() >= 2026, "{value}");
}
