//! The README's first command, `scripts/quickstart.sh`, run as a newcomer runs it: it builds
//! the example plugins with cargo, drops what cargo wrote into a plugins folder as it is,
//! and must show the read model, the saga's state and the events the saga emitted.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The sections of the script's output, by the title after `== `.
fn sections(output: &str) -> Vec<(&str, &str)> {
    output
        .split("\u{1b}[1m== ")
        .skip(1)
        .map(|section| {
            let (title, body) = section.split_once('\n').unwrap_or((section, ""));
            (title.trim_end_matches("\u{1b}[0m"), body)
        })
        .collect()
}

fn section<'a>(sections: &[(&str, &'a str)], title: &str) -> &'a str {
    sections
        .iter()
        .find(|(t, _)| t.starts_with(title))
        .unwrap_or_else(|| panic!("no section {title:?} in the quick start's output"))
        .1
}

/// `scripts/quickstart.sh` as a newcomer runs it, but on `port` and with the test
/// command's build of the host.
fn quickstart(port: u16) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut command = Command::new("bash");
    command
        .arg(root.join("scripts/quickstart.sh"))
        // The test command's build of the host serves; the script is otherwise the one a
        // newcomer runs.
        .env("QUICKSTART_PROFILE", "dev")
        .env("QUICKSTART_PORT", port.to_string())
        .env_remove("EVHOST_URL");
    // This test's own cargo settings are not the newcomer's.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" || key == "RUSTFLAGS"
        {
            command.env_remove(key.as_ref());
        }
    }
    command.output().expect("running scripts/quickstart.sh")
}

#[test]
fn the_quick_start_shows_the_read_model_and_what_the_saga_did() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = quickstart(port);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the quick start failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let sections = sections(&stdout);

    let plugins = section(&sections, "Starting evhost");
    for file in [
        "user_projection.wasm",
        "payment_saga.wasm",
        "user_created_versions.wasm",
    ] {
        assert!(
            plugins.contains(file),
            "cargo's file {file} is installed as it is:\n{plugins}"
        );
    }
    for name in ["user-projection", "payment-saga", "user-created-versions"] {
        assert!(
            plugins.lines().any(|line| line.starts_with(&format!("{name} "))),
            "{name} is served under the name it declares:\n{plugins}"
        );
    }

    let user: Value = serde_json::from_str(section(&sections, "The user projection's read model"))
        .expect("the read model is JSON");
    assert_eq!(user["name"], "Ada Lovelace", "{user}");
    assert_eq!(user["email"], "ada@example.com", "{user}");

    let saga: Value =
        serde_json::from_str(section(&sections, "The saga's state")).expect("the saga's state is JSON");
    assert_eq!(saga["status"], "shipment-requested", "{saga}");

    let emitted = section(&sections, "The events the saga emitted");
    for event in ["InventoryReservationRequested", "ShipmentRequested"] {
        assert!(emitted.contains(event), "the saga emitted {event}:\n{emitted}");
    }
    assert!(
        section(&sections, "Stopping evhost").contains("stopped"),
        "the host drained and stopped:\n{stdout}"
    );
}

#[test]
fn the_quick_start_refuses_a_port_something_else_listens_on() {
    // Another host answering there would otherwise be mistaken for the quick start's.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = quickstart(taken.local_addr().unwrap().port());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("something already listens on 127.0.0.1:") && stderr.contains("QUICKSTART_PORT"),
        "{stderr}"
    );
}
