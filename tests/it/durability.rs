//! The real binary's durable log: a damaged store at startup, the PostgreSQL outbox relay
//! (`--outbox`) and in-memory mode (`--no-durable`).

use std::time::Duration;

use evhost::Event;
use evhost::outbox::Outbox;
use serde_json::json;
use tokio_postgres::NoTls;

use crate::support::{
    Running, TempDir, client, eventually, evhost, get_text, install, kv, post_events, structured,
};
use crate::wasm;

#[test]
fn a_corrupt_store_is_refused_at_startup_and_left_as_it_was() {
    let dir = TempDir::new("corrupt");
    install(&dir.0, &[], &[]);
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let garbage: Vec<u8> = b"not an evhost store, but someone's notes\n".repeat(200);
    let file = data.join("evhost.db");
    std::fs::write(&file, &garbage).unwrap();
    let (code, _, stderr) = evhost(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--plugins",
            dir.0.join("plugins").to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert_ne!(code, 0, "evhost run refuses to start: {stderr}");
    assert!(
        stderr.contains(file.to_str().unwrap()) && stderr.contains("corrupt"),
        "the error names the file and what is wrong: {stderr}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "nothing was discarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_durable_log_nothing_is_written_to_the_data_directory() {
    let dir = TempDir::new("memory");
    install(&dir.0, &[("user-projection", wasm::USER_PROJECTION)], &[]);
    let host = Running::start_in_with(&dir.0, &["--no-durable"]);
    let http = client();
    let user = json!({"id": "m1", "name": "Mem", "email": "m@example.com"});
    let response = post_events(
        &http,
        &host.url,
        "/events",
        "application/cloudevents+json",
        structured("UserCreated", "m1", "m1", user).to_string(),
    )
    .await;
    assert_eq!(response.status(), 202);
    assert!(
        eventually(Duration::from_secs(10), async || kv(
            &host,
            "user-projection",
            "user:m1"
        )
        .await
        .is_some())
        .await,
        "handled in memory"
    );
    assert!(!dir.0.join("data/evhost.db").exists(), "no log in memory mode");
}

fn database_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Drops the test's schema even when the test fails.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&database_url(), NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
            })
        })
        .join();
    }
}

fn user_created(id: &str) -> Event {
    Event::new(
        "UserCreated",
        "users-db",
        json!({"id": id, "name": format!("User {id}"), "email": format!("{id}@example.com")}),
    )
    .with_subject(id)
    .with_id(format!("outbox-{id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evhost_run_relays_the_committed_outbox_rows_once_across_a_restart() {
    let schema = Schema(format!(
        "evhost_bin_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    let (mut db, connection) = tokio_postgres::connect(&database_url(), NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 is running");
    tokio::spawn(connection);
    Outbox::install_schema(&db, &schema.0).await.unwrap();

    let dir = TempDir::new("outbox");
    install(&dir.0, &[("user-projection", wasm::USER_PROJECTION)], &[]);
    let config = dir.0.join("evhost.toml");
    std::fs::write(
        &config,
        format!(
            "[outbox]\nurl = \"{}\"\nschema = \"{}\"\nrelay_name = \"{}\"\n",
            database_url(),
            schema.0,
            schema.0
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let args = ["--config", config.as_str()];

    // One transaction commits, one rolls back.
    let tx = db.transaction().await.unwrap();
    Outbox::write(&tx, &schema.0, &user_created("o1")).await.unwrap();
    tx.commit().await.unwrap();
    let tx = db.transaction().await.unwrap();
    Outbox::write(&tx, &schema.0, &user_created("gone"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let host = Running::start_in_with(&dir.0, &args);
    let http = client();
    assert!(
        eventually(Duration::from_secs(20), async || kv(
            &host,
            "user-projection",
            "user:o1"
        )
        .await
        .is_some())
        .await,
        "the committed row reached the plugin"
    );
    // The same event published directly is a duplicate: it is in the log already.
    let again = post_events(
        &http,
        &host.url,
        "/events",
        "application/cloudevents+json",
        serde_json::to_string(&user_created("o1")).unwrap(),
    )
    .await;
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["duplicates"],
        json!(["outbox-o1"])
    );
    drop(host);

    // Written while no host runs; relayed after the restart, after the checkpoint.
    Outbox::write(&db, &schema.0, &user_created("o2")).await.unwrap();
    let host = Running::start_in_with(&dir.0, &args);
    assert!(
        eventually(Duration::from_secs(20), async || kv(
            &host,
            "user-projection",
            "user:o2"
        )
        .await
        .is_some())
        .await,
        "the row written meanwhile reached the plugin"
    );
    let o1 = kv(&host, "user-projection", "user:o1").await.unwrap();
    assert_eq!(o1["version"], 1, "relayed and applied once: {o1}");
    // The relay's metrics: what it relayed since this start, caught up, connected.
    let relay = schema.0.as_str();
    let metric = async |name: &str| -> f64 {
        let text = get_text(&client(), format!("{}/metrics", host.url)).await;
        let line = format!("{name}{{relay=\"{relay}\"}} ");
        text.lines()
            .find_map(|sample| sample.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("{line} missing from\n{text}"))
            .parse()
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(10), async || metric("evhost_outbox_lag")
            .await
            == 0.0)
        .await,
        "caught up"
    );
    assert_eq!(
        metric("evhost_outbox_relayed_total").await,
        1.0,
        "o2 since the restart"
    );
    assert_eq!(metric("evhost_outbox_connected").await, 1.0);
    assert_eq!(metric("evhost_outbox_checkpoint").await, 2.0, "rows o1 and o2");
    assert!(
        kv(&host, "user-projection", "user:gone").await.is_none(),
        "rolled back"
    );
}

#[test]
fn a_missing_outbox_schema_refuses_the_start_until_installed() {
    // A schema that was never installed: the relay could only fail, so the host refuses to
    // start and says how to install it, instead of serving half-alive.
    let schema = Schema(format!(
        "evhost_missing_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    let dir = TempDir::new("relay-missing");
    install(&dir.0, &[], &[]);
    let config = dir.0.join("evhost.toml");
    std::fs::write(
        &config,
        format!(
            "[outbox]\nurl = \"{}\"\nschema = \"{}\"\nrelay_name = \"r\"\n",
            database_url(),
            schema.0
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let output = crate::support::run_command(&dir.0, &["--config", config_arg])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "exit status {}; log:\n{log}",
        output.status
    );
    assert!(!log.contains("evhost is ready"), "{log}");
    assert!(
        log.contains(&format!(
            "the evhost outbox is not installed in schema {}",
            schema.0
        )) && log.contains(&format!("evhost outbox install URL --schema {}", schema.0))
            && log.contains("install = true"),
        "{log}"
    );

    // `evhost outbox sql` prints what `install` runs; `install` installs it, twice is fine.
    let (code, sql, stderr) = evhost(&["outbox", "sql", "--schema", &schema.0], "");
    assert_eq!(code, 0, "{stderr}");
    assert!(sql.contains(&format!("\"{}\".outbox (", schema.0)), "{sql}");
    for _ in 0..2 {
        let (code, stdout, stderr) =
            evhost(&["outbox", "install", &database_url(), "--schema", &schema.0], "");
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("installed"), "{stdout}");
    }
    let host = Running::start_in_with(&dir.0, &["--config", config_arg]);
    drop(host);

    // `install = true` installs a missing schema at start.
    let fresh = Schema(format!(
        "evhost_fresh_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    std::fs::write(
        &config,
        format!(
            "[outbox]\nurl = \"{}\"\nschema = \"{}\"\nrelay_name = \"r2\"\ninstall = true\n",
            database_url(),
            fresh.0
        ),
    )
    .unwrap();
    let mut host = Running::start_in_with(&dir.0, &["--config", config_arg]);
    host.wait_for_log(
        |line| line["message"] == "installed the evhost outbox" && line["schema"] == fresh.0.as_str(),
        Duration::from_secs(5),
    );
}
