//! The attacks, one per way a plugin was found to hurt the host: each runs while the host,
//! its health endpoint and a healthy plugin are watched (see [`Siege`]).

use std::time::{Duration, Instant};

use crate::SERIAL;
use crate::siege::{MESSAGE_LIMIT, Siege};
use crate::wasm;

/// How long each attack is watched.
const WATCH: Duration = Duration::from_secs(4);
/// Failed attackers are retried once, quickly, then dead-lettered.
const RETRY_ONCE: &str = "[retry]\nmax_attempts = 2\ninitial_backoff = \"50ms\"\nmax_backoff = \"50ms\"\n";

fn manifest(extra: &str) -> String {
    format!("{extra}\n{RETRY_ONCE}")
}

/// Starts `plugin` (its test-plugin name and file) with `manifest`, publishes `n` attack
/// events, watches the host and returns the siege for the attack's own assertions.
async fn siege(plugin: &str, wasm: &str, manifest: &str, n: usize) -> Siege {
    let mut siege = Siege::start(&[(plugin, wasm)], &[(plugin, manifest)]).await;
    siege.publish("Attack", n).await;
    let watch = siege.watch(WATCH).await;
    watch.assert_host_unharmed(plugin);
    siege.assert_healthy_saw_everything().await;
    siege
}

// 1. Host memory through host calls.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_writes_of_a_megabyte_each_stop_at_the_write_budget() {
    let _serial = SERIAL.lock().await;
    let config = manifest("[config]\nattack = \"kv-values\"");
    let siege = siege("host-hog", wasm::HOST_HOG, &config, 16).await;
    siege
        .assert_failures("host-hog", "resource-limit", "`kv_write_bytes`")
        .await;
    let attack = siege.failures("host-hog").await.remove(0);
    let key = format!("value:{}:0", attack["event_id"].as_str().unwrap());
    assert_eq!(
        siege.kv("host-hog", &key).await,
        None,
        "no write of a failed invocation is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_eight_megabytes_are_refused() {
    let _serial = SERIAL.lock().await;
    let config = manifest("[config]\nattack = \"kv-keys\"");
    let siege = siege("host-hog", wasm::HOST_HOG, &config, 16).await;
    siege
        .assert_failures("host-hog", "resource-limit", "longer than the 1024 allowed")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitting_events_of_eight_megabytes_stops_at_the_emit_budget() {
    let _serial = SERIAL.lock().await;
    let config = manifest("[config]\nattack = \"emit\"");
    let siege = siege("host-hog", wasm::HOST_HOG, &config, 16).await;
    siege
        .assert_failures("host-hog", "resource-limit", "`emit_bytes`")
        .await;
    let accepted = siege.metric("evhost_events_accepted_total").await;
    assert_eq!(
        accepted as usize,
        siege_published(&siege).await,
        "no event of a failed invocation was emitted"
    );
}

/// How many events the healthy plugin was sent: everything accepted was published by the
/// test (the warm-up included) unless a plugin emitted something.
async fn siege_published(siege: &Siege) -> usize {
    let plugins = crate::support::get_json(&siege.http, format!("{}/plugins", siege.host.url)).await;
    let healthy = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "healthy")
        .unwrap();
    healthy["counters"]["succeeded"].as_u64().unwrap() as usize
}

// 2. Messages and names of any size.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_reject_reason_is_cut_everywhere_it_is_kept() {
    let _serial = SERIAL.lock().await;
    let config = manifest("[config]\nattack = \"reject\"");
    let siege = siege("loud-failure", wasm::LOUD_FAILURE, &config, 16).await;
    siege.assert_failures("loud-failure", "reject", "mmmm").await;
    let attack = siege.failures("loud-failure").await.remove(0);
    let key = format!("written:{}", attack["event_id"].as_str().unwrap());
    assert_eq!(
        siege.kv("loud-failure", &key).await,
        None,
        "no write of a failed invocation is kept"
    );
    // The dead-letter history holds the cut message too.
    let letters =
        crate::support::get_json(&siege.http, format!("{}/dlq?plugin=loud-failure", siege.host.url)).await;
    let letters = letters.as_array().unwrap();
    assert!(!letters.is_empty(), "rejected events are dead-lettered");
    for letter in letters {
        for failure in letter["failures"].as_array().unwrap() {
            let message = failure["message"].as_str().unwrap();
            assert!(
                message.len() <= MESSAGE_LIMIT,
                "a stored message of {} bytes",
                message.len()
            );
        }
    }
    let body = siege
        .http
        .get(format!("{}/errors?limit=1000", siege.host.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        body.len() < 1000 * (MESSAGE_LIMIT + 1024),
        "/errors answered {} bytes",
        body.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_panic_message_is_cut() {
    let _serial = SERIAL.lock().await;
    let config = manifest("[config]\nattack = \"panic\"");
    let siege = siege("loud-failure", wasm::LOUD_FAILURE, &config, 16).await;
    siege.assert_failures("loud-failure", "trap", "mmmm").await;
    let attack = siege.failures("loud-failure").await.remove(0);
    let key = format!("written:{}", attack["event_id"].as_str().unwrap());
    assert_eq!(
        siege.kv("loud-failure", &key).await,
        None,
        "no write of a failed invocation is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_megabyte_plugin_name_is_refused_with_a_short_message() {
    let _serial = SERIAL.lock().await;
    let mut siege = Siege::start(&[("long-name", wasm::LONG_NAME)], &[]).await;
    siege.watch(WATCH).await.assert_host_unharmed("long-name");
    let refused = siege.failure("long-name.wasm", Duration::from_secs(5)).await;
    assert_eq!(refused["kind"], "plugin-load");
    let message = refused["message"].as_str().unwrap();
    assert!(message.len() < 1024, "a message of {} bytes", message.len());
    assert!(message.contains("but it is loaded as `long-name`"), "{message}");
}

// 3. Slow host calls.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_a_hundred_thousand_buffered_keys_again_and_again_stops_at_the_deadline() {
    let _serial = SERIAL.lock().await;
    let config = manifest(
        "[limits]\ntimeout = \"2s\"\nkv_writes = 200000\nkv_write_bytes = 20000000\n\
         [config]\nkeys = \"100000\"\nlists = \"0\"",
    );
    let mut siege = Siege::start(&[("kv-lister", wasm::KV_LISTER)], &[("kv-lister", &config)]).await;
    let started = Instant::now();
    siege.publish("Attack", 1).await;
    let first = siege.failure("kv-lister", Duration::from_secs(10)).await;
    let stopped_after = started.elapsed();
    assert_eq!(first["kind"], "timeout", "{first}");
    assert!(
        stopped_after < Duration::from_millis(3500),
        "the invocation was stopped {stopped_after:?} after it started, against a 2 s deadline"
    );
    siege.watch(WATCH).await.assert_host_unharmed("kv-lister");
    siege
        .assert_failures("kv-lister", "timeout", "no result within")
        .await;
}

// 4. One slow plugin must not starve the others.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_sleeping_in_every_call_does_not_hold_up_the_others() {
    let _serial = SERIAL.lock().await;
    let config = manifest("[config]\nmode = \"sleep\"");
    // Four calls at a time of 4.5 s each: 16 events keep it busy past the watch.
    let siege = siege("slow-calls", wasm::SLOW_CALLS, &config, 16).await;
    assert!(
        siege.failures("slow-calls").await.is_empty(),
        "sleeping is no failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_spinning_in_every_call_does_not_hold_up_the_others() {
    let _serial = SERIAL.lock().await;
    let config = manifest("[limits]\nfuel = 18446744073709551615\n[config]\nmode = \"spin\"");
    let siege = siege("slow-calls", wasm::SLOW_CALLS, &config, 16).await;
    assert!(
        siege.failures("slow-calls").await.is_empty(),
        "spinning is no failure"
    );
}

// 5. Event amplification.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitting_a_thousand_events_per_call_stops_at_the_emit_budget() {
    let _serial = SERIAL.lock().await;
    let siege = siege("amplifier", wasm::AMPLIFIER, &manifest(""), 4).await;
    siege
        .assert_failures("amplifier", "resource-limit", "`emit_events`")
        .await;
    let accepted = siege.metric("evhost_events_accepted_total").await;
    assert_eq!(
        accepted as usize,
        siege_published(&siege).await,
        "nothing was emitted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_feeding_itself_within_its_budget_cannot_grow_the_bus_without_bound() {
    let _serial = SERIAL.lock().await;
    let config = manifest("[config]\ncount = \"50\"");
    // The healthy plugin shares the events published from outside, not the thousand the
    // amplifier keeps emitting: handling those is load, not the isolation measured here.
    let healthy = "subscriptions = [\"Attack\", \"WarmUp\"]";
    let mut siege = Siege::start(
        &[("amplifier", wasm::AMPLIFIER)],
        &[("amplifier", &config), ("healthy", healthy)],
    )
    .await;
    siege.publish("Attack", 1).await;
    let watch = siege.watch(Duration::from_secs(6)).await;
    watch.assert_host_unharmed("amplifier");
    // Emitted events in flight are bounded by the amplifier's `bus.emitted_capacity`
    // (1,000), on top of the few events the test published.
    for _ in 0..10 {
        let in_flight = siege.metric("evhost_events_in_flight").await;
        assert!(in_flight <= 1_100.0, "{in_flight} events in flight");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    siege.assert_failures("amplifier", "resource-limit", "emit").await;
}

// 6. A valid-looking manifest must not panic the bus.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_of_a_quarter_million_years_is_refused_at_load() {
    let _serial = SERIAL.lock().await;
    let config = "[retry]\ninitial_backoff = \"300000years\"\nmax_backoff = \"300000years\"\n";
    let mut siege = Siege::start(
        &[("returns-retry", wasm::RETURNS_RETRY)],
        &[("returns-retry", config)],
    )
    .await;
    siege.watch(WATCH).await.assert_host_unharmed("returns-retry");
    let refused = siege.failure("returns-retry.wasm", Duration::from_secs(5)).await;
    let message = refused["message"].as_str().unwrap();
    assert_eq!(refused["kind"], "plugin-load");
    assert!(
        message.contains("`retry.initial_backoff` (") && message.contains("must be at most a week"),
        "{message}"
    );
}

// 7. The plugin's own faults are the plugin's, not the host's.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_calling_exit_is_a_trap_naming_the_code() {
    let _serial = SERIAL.lock().await;
    let config = manifest("[config]\nfault = \"exit\"");
    let siege = siege("own-faults", wasm::OWN_FAULTS, &config, 8).await;
    siege
        .assert_failures("own-faults", "trap", "exited with code 1")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_opening_handles_without_end_is_stopped_at_the_handle_limit() {
    let _serial = SERIAL.lock().await;
    let config = manifest("[config]\nfault = \"handles\"");
    let siege = siege("own-faults", wasm::OWN_FAULTS, &config, 8).await;
    siege
        .assert_failures("own-faults", "resource-limit", "resource handles")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_grown_past_its_limit_is_a_resource_limit() {
    let _serial = SERIAL.lock().await;
    let siege = siege("table-grower", wasm::TABLE_GROWER, &manifest(""), 8).await;
    siege
        .assert_failures("table-grower", "resource-limit", "table")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_function_past_the_deadline_is_a_timeout() {
    let _serial = SERIAL.lock().await;
    let mut siege = Siege::start(&[], &[]).await;
    let config = "[limits]\ntimeout = \"1s\"\n";
    std::fs::write(siege.host.plugins.join("slow-start.toml"), config).unwrap();
    std::fs::copy(wasm::SLOW_START, siege.host.plugins.join("slow-start.wasm")).unwrap();
    siege.watch(WATCH).await.assert_host_unharmed("slow-start");
    let refused = siege.failure("slow-start.wasm", Duration::from_secs(10)).await;
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("`metadata` failed (timeout)"), "{message}");
}

// 8. Plugin files are checked before they are read.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_gigabyte_file_is_refused_unread_and_the_host_becomes_ready() {
    let _serial = SERIAL.lock().await;
    let dir = crate::support::TempDir::new("huge");
    crate::support::install(&dir.0, &[("healthy", wasm::HEALTHY)], &[]);
    let huge = std::fs::File::create(dir.0.join("plugins/huge.wasm")).unwrap();
    std::io::Write::write_all(&mut &huge, b"\0asm\x0d\0\x01\0").unwrap();
    huge.set_len(4 << 30).unwrap();
    crate::support::evhost_bin(); // built before the clock starts
    let started = Instant::now();
    let host = crate::support::Running::start_in(&dir.0);
    let ready_after = started.elapsed();
    let rss = crate::siege::rss(host.pid());
    eprintln!("ready after {ready_after:?} at {} MB", rss >> 20);
    assert!(
        ready_after < Duration::from_secs(20),
        "ready after {ready_after:?}"
    );
    assert!(rss < 300 << 20, "{} MB resident", rss >> 20);
    let errors = crate::support::get_json(&crate::support::client(), format!("{}/errors", host.url)).await;
    let refused = errors
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["subscription"] == "huge.wasm")
        .unwrap_or_else(|| panic!("huge.wasm was refused: {errors}"));
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("4294967296 bytes, over the limit of 67108864 bytes"),
        "{message}"
    );
}

// 9. Output must never make a plugin fail.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_on_stderr_is_logged_within_budget_and_the_plugin_succeeds() {
    let _serial = SERIAL.lock().await;
    let siege = siege("stderr-flood", wasm::STDERR_FLOOD, &manifest(""), 4).await;
    assert!(
        siege.failures("stderr-flood").await.is_empty(),
        "writing output is no failure"
    );
    let logs = siege.host.log_lines();
    let from_plugin: Vec<_> = logs
        .iter()
        .filter(|line| line["plugin"] == "stderr-flood")
        .collect();
    let handled = siege_published(&siege).await;
    let done = from_plugin
        .iter()
        .filter(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.contains("went over its budget"))
        })
        .count();
    assert!(done > 0, "the dropped output is reported");
    let output_lines = from_plugin
        .iter()
        .filter(|line| line["stream"].is_string())
        .count();
    // 64 KiB of budget per invocation in lines of 64 bytes, plus the stdout line.
    let per_event = output_lines as f64 / handled as f64;
    assert!(per_event < 1100.0, "{per_event} lines logged per event");
    let stdout = from_plugin.iter().any(|line| {
        line["stream"] == "stdout"
            && line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("stdout line for"))
    });
    assert!(stdout, "stdout reaches the log");
}

// 10. No plugin can take over another's data by its name.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_declaring_another_plugins_name_is_refused() {
    let _serial = SERIAL.lock().await;
    let mut siege = siege("name-thief", wasm::NAME_THIEF, "", 8).await;
    let refused = siege.failure("name-thief.wasm", Duration::from_secs(5)).await;
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("declares the name `healthy`, but it is loaded as `name-thief`"),
        "{message}"
    );
    let attack = siege.publish("Attack", 1).await.remove(0);
    siege.wait_handled(&attack, Duration::from_secs(5)).await;
    assert_eq!(
        siege.kv("healthy", &format!("seen:{attack}")).await,
        Some(serde_json::json!(true)),
        "the healthy plugin's data is its own"
    );
}
