//! Securing the API, against the real binary: tokens and scopes, loopback-only without
//! tokens, the refusal to expose an open API, TLS, the CLI's token and trust, the audit log.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::support::{Running, TempDir, client, evhost, evhost_bin, install, run_command};
use crate::wasm;

const PUBLISHER_SECRET: &str = "publisher-secret-0123456789";
const READER_SECRET: &str = "reader-secret-0123456789";
const ADMIN_SECRET: &str = "admin-secret-0123456789";
const EVERYTHING_SECRET: &str = "everything-secret-0123456789";

/// What a route needs, as a user reads it in the book (`docs/src/running/security.md`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Needs {
    Nothing,
    Publish,
    Read,
    Admin,
    AnyToken,
}

/// Every route of the API (and one that is not), with what it needs.
fn routes() -> Vec<(Method, &'static str, Needs)> {
    vec![
        (Method::GET, "/healthz", Needs::Nothing),
        (Method::GET, "/readyz", Needs::Nothing),
        (Method::GET, "/", Needs::Nothing),
        (Method::GET, "/ui/", Needs::Nothing),
        (Method::GET, "/ui/app.js", Needs::Nothing),
        (Method::GET, "/ui/session", Needs::Nothing),
        (Method::POST, "/events", Needs::Publish),
        (Method::GET, "/metrics", Needs::Read),
        (Method::GET, "/plugins", Needs::Read),
        (Method::GET, "/errors", Needs::Read),
        (Method::GET, "/dlq", Needs::Read),
        (Method::GET, "/dlq/7", Needs::Read),
        (Method::GET, "/plugins/healthy/kv/seen:e-1", Needs::Read),
        (Method::GET, "/plugins/healthy/kv?prefix=seen:", Needs::Read),
        (Method::GET, "/plugins/healthy/history", Needs::Read),
        (Method::GET, "/events?limit=5", Needs::Read),
        (Method::GET, "/events/e-1", Needs::Read),
        (Method::GET, "/events/e-1/trace", Needs::Read),
        (Method::GET, "/metrics/history", Needs::Read),
        (Method::GET, "/stream", Needs::Read),
        (Method::GET, "/config", Needs::Read),
        (Method::GET, "/dlq/preview?all=true", Needs::Read),
        (Method::POST, "/dlq/replay?all=true", Needs::Admin),
        (Method::DELETE, "/dlq?all=true", Needs::Admin),
        (Method::GET, "/no-such-route", Needs::AnyToken),
    ]
}

/// A host whose `evhost.toml` lists one token per scope, each secret given another way:
/// inline, in a file, in an environment variable (a flag), and as its SHA-256.
fn start_with_tokens(dir: &Path) -> Running {
    install(dir, &[("healthy", wasm::HEALTHY)], &[]);
    let secret_file = dir.join("admin.secret");
    std::fs::write(&secret_file, format!("{ADMIN_SECRET}\n")).unwrap();
    let reader_digest = hex::encode(Sha256::digest(READER_SECRET));
    let config = dir.join("evhost.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [[auth.tokens]]
            name = "reader"
            sha256 = "{reader_digest}"
            scopes = ["read"]

            [[auth.tokens]]
            name = "ops"
            secret_file = "{}"
            scopes = ["admin"]

            [[auth.tokens]]
            name = "root"
            secret = "{EVERYTHING_SECRET}"
            scopes = ["publish", "read", "admin"]
            "#,
            secret_file.display()
        ),
    )
    .unwrap();
    let mut command = run_command(
        dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--auth-token",
            "ingest:publish:env:TEST_PUBLISHER_TOKEN",
        ],
    );
    command.env("TEST_PUBLISHER_TOKEN", PUBLISHER_SECRET);
    Running::spawn(command, dir)
}

async fn call(host: &Running, method: &Method, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client().request(method.clone(), format!("{}{path}", host.url));
    if *method == Method::POST && path == "/events" {
        request = request
            .header("content-type", "application/cloudevents+json")
            .body(json!({"specversion": "1.0", "id": "e-1", "source": "tests", "type": "Ping"}).to_string());
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The session cookie of a `POST /ui/session` answer (`name=value`).
fn session_cookie(response: &reqwest::Response) -> String {
    let set = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attribute), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ui_session_stands_for_its_token_acts_only_with_the_csrf_header_and_ends_on_sign_out() {
    let dir = TempDir::new("auth-session");
    let host = start_with_tokens(&dir.0);
    let http = client();
    let sign_in = async |token: &str| {
        http.post(format!("{}/ui/session", host.url))
            .header("x-evhost-csrf", "1")
            .json(&json!({ "token": token }))
            .send()
            .await
            .unwrap()
    };
    // A request as a browser holding `cookie` sends it (with the page's header or not).
    let send = async |method: Method, path: &str, cookie: Option<&str>, csrf: bool| {
        let mut request = http.request(method, format!("{}{path}", host.url));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        if csrf {
            request = request.header("x-evhost-csrf", "1");
        }
        request.send().await.unwrap()
    };
    let error_of = async |response: reqwest::Response| {
        let body: Value = response.json().await.unwrap();
        body["error"].as_str().unwrap().to_owned()
    };

    // Only the host's page signs a browser in: another page cannot send the header.
    let foreign = http
        .post(format!("{}/ui/session", host.url))
        .json(&json!({ "token": READER_SECRET }))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    assert!(foreign.headers().get("set-cookie").is_none());
    let refused = sign_in("not-a-token-of-this-host").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get("set-cookie").is_none());
    let anonymous: Value = send(Method::GET, "/ui/session", None, false)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(anonymous["mode"], "tokens");
    assert_eq!(anonymous["token"], Value::Null, "signed out: {anonymous}");

    // A reader's session reads, and cannot act, with or without the header.
    let response = sign_in(READER_SECRET).await;
    assert_eq!(response.status(), StatusCode::OK);
    let reader = session_cookie(&response);
    let view: Value = response.json().await.unwrap();
    assert_eq!(view["token"], "reader");
    assert_eq!(view["scopes"], json!(["read"]));
    assert!(view["expires_at"].is_string(), "{view}");
    let dlq = send(Method::GET, "/dlq", Some(&reader), false).await;
    assert_eq!(dlq.status(), StatusCode::OK);
    // A cookie of the same name set by another service on this host does not hide it.
    let planted = format!("evhost_session=planted-by-another-service; {reader}");
    let dlq = send(Method::GET, "/dlq", Some(&planted), false).await;
    assert_eq!(dlq.status(), StatusCode::OK);
    let replay = send(Method::POST, "/dlq/replay?all=true", Some(&reader), true).await;
    assert_eq!(replay.status(), StatusCode::FORBIDDEN);

    // An admin's session acts only with the header a foreign page cannot send.
    let root = session_cookie(&sign_in(EVERYTHING_SECRET).await);
    let without = send(Method::POST, "/dlq/replay?all=true", Some(&root), false).await;
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    let message = error_of(without).await;
    assert!(message.contains("x-evhost-csrf"), "{message}");
    let with = send(Method::POST, "/dlq/replay?all=true", Some(&root), true).await;
    assert_eq!(with.status(), StatusCode::OK);

    // A bearer token is judged alone: a session cookie beside a bad token does not help.
    let mixed = http
        .get(format!("{}/dlq", host.url))
        .header("cookie", &root)
        .bearer_auth("not-a-token-of-this-host")
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), StatusCode::UNAUTHORIZED);

    // Signing out ends the session, what it keeps open, and clears the cookie; the other
    // session lives on.
    let stream = send(Method::GET, "/stream", Some(&root), false).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.bytes_stream();
    let out = send(Method::DELETE, "/ui/session", Some(&root), false).await;
    assert_eq!(
        out.status(),
        StatusCode::FORBIDDEN,
        "not without the page's header"
    );
    let out = send(Method::DELETE, "/ui/session", Some(&root), true).await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let after = send(Method::GET, "/dlq", Some(&root), false).await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let message = error_of(after).await;
    assert!(message.contains("sign in again"), "{message}");
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the signed-out session's stream did not end");
    let dlq = send(Method::GET, "/dlq", Some(&reader), false).await;
    assert_eq!(dlq.status(), StatusCode::OK);

    // The audit log names each session's token (its lines arrive through a pipe).
    let opened = || {
        host.log_lines()
            .into_iter()
            .filter(|line| line["message"] == "UI session opened")
            .map(|line| line["token"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while opened().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(opened(), ["reader", "root"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_is_served_from_the_binary_with_a_strict_content_security_policy() {
    let host = Running::start(&[("healthy", wasm::HEALTHY)], &[]);
    let http = client();
    let page = http.get(format!("{}/", host.url)).send().await.unwrap();
    assert_eq!(page.url().path(), "/ui/", "/ redirects to the UI");
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.starts_with("default-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<script type=\"module\" src=\"app.js\"></script>"),
        "{html}"
    );
    let script = http
        .get(format!("{}/ui/pages/dlq.js", host.url))
        .send()
        .await
        .unwrap();
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    // The API's answers carry the policy too.
    let plugins = http.get(format!("{}/plugins", host.url)).send().await.unwrap();
    assert!(plugins.headers().contains_key("content-security-policy"));
    let missing = http.get(format!("{}/ui/nope.js", host.url)).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_allows_exactly_its_endpoints() {
    let dir = TempDir::new("auth-scopes");
    let mut host = start_with_tokens(&dir.0);
    let callers = [
        ("ingest", PUBLISHER_SECRET, vec![Needs::Publish]),
        ("reader", READER_SECRET, vec![Needs::Read]),
        ("ops", ADMIN_SECRET, vec![Needs::Admin]),
        (
            "root",
            EVERYTHING_SECRET,
            vec![Needs::Publish, Needs::Read, Needs::Admin],
        ),
    ];
    for (method, path, needs) in routes() {
        let anonymous = call(&host, &method, path, None).await;
        let status = anonymous.status();
        if needs == Needs::Nothing {
            assert_eq!(status, StatusCode::OK, "{method} {path} is open");
        } else {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a token"
            );
            assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
            let body: Value = anonymous.json().await.unwrap();
            let message = body["error"].as_str().unwrap();
            assert!(message.contains("Authorization: Bearer"), "{message}");
        }
        for (name, secret, scopes) in &callers {
            let response = call(&host, &method, path, Some(secret)).await;
            let status = response.status();
            let allowed = match needs {
                Needs::Nothing | Needs::AnyToken => true,
                scope => scopes.contains(&scope),
            };
            if allowed {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{name} may {method} {path}, got {status}"
                );
                assert!(
                    status.is_success() || status == StatusCode::NOT_FOUND,
                    "{name}: {method} {path} answered {status}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{name} may not {method} {path}");
                let body: Value = response.json().await.unwrap();
                let message = body["error"].as_str().unwrap();
                let scope = format!("{needs:?}").to_lowercase();
                assert!(
                    message.contains(&format!("token `{name}`"))
                        && message.contains(&format!("`{scope}` scope")),
                    "{message}"
                );
                assert!(!message.contains(secret), "the secret is never echoed: {message}");
            }
        }
    }

    // Unknown and malformed tokens.
    for header in [
        "Bearer not-a-token-this-host-knows",
        format!("Basic {PUBLISHER_SECRET}").as_str(),
        "Bearer",
        format!("Bearer {PUBLISHER_SECRET} extra").as_str(),
        format!("Bearer {}", &READER_SECRET[..READER_SECRET.len() - 1]).as_str(),
    ] {
        let response = client()
            .get(format!("{}/plugins", host.url))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("secret"), "no part of the token is echoed: {body}");
    }
    // The digest itself is not a token.
    let digest = hex::encode(Sha256::digest(READER_SECRET));
    let response = call(&host, &Method::GET, "/plugins", Some(&digest)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // The audit log: admin actions and refusals, by token name, never the secret.
    let replay = host.wait_for_log(
        |line| {
            line["target"] == "evhost::audit"
                && line["message"] == "admin action"
                && line["token"] == "ops"
                && line["action"] == "POST /dlq/replay?all=true"
        },
        Duration::from_secs(5),
    );
    assert_eq!(replay["status"], 200, "{replay}");
    host.wait_for_log(
        |line| {
            line["message"] == "admin action"
                && line["token"] == "root"
                && line["action"] == "DELETE /dlq?all=true"
        },
        Duration::from_secs(5),
    );
    let refused = host.wait_for_log(
        |line| {
            line["message"] == "request refused" && line["token"] == "reader" && line["path"] == "/dlq/replay"
        },
        Duration::from_secs(5),
    );
    assert!(refused["reason"].as_str().unwrap().contains("admin"), "{refused}");
    host.wait_for_log(
        |line| line["message"] == "request refused" && line["token"] == "-" && line["path"] == "/events",
        Duration::from_secs(5),
    );
    let log = serde_json::to_string(&host.log_lines()).unwrap();
    for secret in [PUBLISHER_SECRET, READER_SECRET, ADMIN_SECRET, EVERYTHING_SECRET] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_opened_for_a_scraper() {
    let dir = TempDir::new("auth-metrics");
    install(&dir.0, &[], &[]);
    let mut command = run_command(
        &dir.0,
        &[
            "--metrics-open",
            "--auth-token",
            "ingest:publish:env:TEST_PUBLISHER_TOKEN",
        ],
    );
    command.env("TEST_PUBLISHER_TOKEN", PUBLISHER_SECRET);
    let host = Running::spawn(command, &dir.0);
    let metrics = call(&host, &Method::GET, "/metrics", None).await;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics.text().await.unwrap().contains("evhost_"));
    let plugins = call(&host, &Method::GET, "/plugins", None).await;
    assert_eq!(
        plugins.status(),
        StatusCode::UNAUTHORIZED,
        "only /metrics is opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_only_requests_addressed_to_loopback_are_served() {
    let host = Running::start(&[("healthy", wasm::HEALTHY)], &[]);
    let port = host.url.rsplit(':').next().unwrap().to_owned();
    for name in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_owned(),
    ] {
        let response = client()
            .get(format!("{}/plugins", host.url))
            .header("host", &name)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "Host: {name}");
    }
    let health = client()
        .get(format!("{}/healthz", host.url))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK, "health checks stay open");
    for name in [format!("attacker.example:{port}"), "10.1.2.3".to_owned()] {
        for (method, path) in [(Method::GET, "/plugins"), (Method::POST, "/events")] {
            let response = client()
                .request(method.clone(), format!("{}{path}", host.url))
                .header("host", &name)
                .header("content-type", "application/cloudevents+json")
                .body(
                    json!({"specversion": "1.0", "id": "r-1", "source": "page", "type": "Ping"}).to_string(),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "{method} {path} with Host: {name}"
            );
            let body: Value = response.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains("loopback"),
                "the refusal says why: {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_cannot_change_the_hosts_state_through_a_browser() {
    // What a page on any web site could make its visitor's browser send to a loopback
    // host: a form or a no-cors fetch carries no token and needs none here.
    let host = Running::start(&[("returns-reject", wasm::RETURNS_REJECT)], &[]);
    let http = client();
    let publish = |id: &str, headers: &[(&str, &str)]| {
        let mut request = http
            .post(format!("{}/events?wait=true", host.url))
            .header("content-type", "application/cloudevents+json")
            .body(json!({"specversion": "1.0", "id": id, "source": "page", "type": "Ping"}).to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    assert_eq!(publish("direct", &[]).await.unwrap().status(), StatusCode::OK);
    let dead_letters = async || -> Vec<Value> {
        let list: Value = http
            .get(format!("{}/dlq", host.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list.as_array().unwrap().clone()
    };
    assert_eq!(dead_letters().await.len(), 1, "the reject is dead-lettered");

    let own = host.url.clone();
    let foreign = [
        ("origin", "https://attacker.example"),
        ("origin", "null"),
        ("origin", "http://localhost.attacker.example"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ];
    for (name, value) in foreign {
        for path in ["/dlq/replay?all=true", "/dlq?all=true"] {
            let method = if path.starts_with("/dlq?") {
                Method::DELETE
            } else {
                Method::POST
            };
            let response = http
                .request(method.clone(), format!("{}{path}", host.url))
                .header(name, value)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "{method} {path} with {name}: {value}"
            );
            let body: Value = response.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains("another origin"),
                "the refusal says why: {body}"
            );
        }
        let refused = publish("from-a-page", &[(name, value)]).await.unwrap();
        assert_eq!(
            refused.status(),
            StatusCode::FORBIDDEN,
            "POST /events with {name}: {value}"
        );
    }
    assert_eq!(dead_letters().await.len(), 1, "nothing was replayed or purged");
    assert!(
        dead_letters().await[0]["event"]["id"] == "direct",
        "and nothing was published"
    );
    assert!(
        host.log_lines()
            .iter()
            .any(|line| line["message"] == "request refused"
                && line["path"] == "/dlq/replay"
                && line["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.contains("attacker.example"))),
        "a refusal is audited"
    );

    // The host's own pages, reads from anywhere and clients outside a browser still work.
    let read = http
        .get(format!("{}/dlq", host.url))
        .header("origin", "https://attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK, "a read changes nothing");
    let same_origin = http
        .post(format!("{}/dlq/replay?all=true", host.url))
        .header("origin", &own)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(same_origin.status(), StatusCode::OK);
    assert_eq!(same_origin.json::<Value>().await.unwrap()["replayed"], 1);
}

#[test]
fn a_non_loopback_address_without_tokens_refuses_to_start_unless_told() {
    let dir = TempDir::new("auth-exposed");
    install(&dir.0, &[], &[]);
    let data = dir.0.join("data");
    let plugins = dir.0.join("plugins");
    let args = |extra: &[&'static str]| {
        let mut args = vec![
            "run",
            "--listen",
            "0.0.0.0:0",
            "--log-format",
            "json",
            "--plugins",
            plugins.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args
    };
    let (code, _, stderr) = evhost(&args(&[]), "");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("refusing to serve 0.0.0.0:0 without authentication")
            && stderr.contains("[auth]")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
    assert!(!stderr.contains("evhost is ready"), "{stderr}");

    // Said explicitly, it serves, warns, and answers whatever the Host.
    let mut command = std::process::Command::new(evhost_bin());
    command
        .args(args(&["--insecure-no-auth"]))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut host = Running::spawn(command, &dir.0);
    host.wait_for_log(
        |line| {
            line["level"] == "WARN"
                && line["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("--insecure-no-auth")
        },
        Duration::from_secs(5),
    );
    let port = host.url.rsplit(':').next().unwrap().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        client()
            .get(format!("http://127.0.0.1:{port}/plugins"))
            .header("host", "evhost.internal.example")
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, StatusCode::OK);
}

/// A CA and a certificate it signed for `localhost` and `127.0.0.1`: (CA PEM, cert PEM, key PEM).
fn test_pki() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "evhost test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_with_a_generated_certificate_and_the_cli_talks_to_it() {
    let dir = TempDir::new("auth-tls");
    install(&dir.0, &[("healthy", wasm::HEALTHY)], &[]);
    let (ca, cert, key) = test_pki();
    let (ca_file, cert_file, key_file) = (
        dir.0.join("ca.pem"),
        dir.0.join("cert.pem"),
        dir.0.join("key.pem"),
    );
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, format!("{EVERYTHING_SECRET}\n")).unwrap();
    let publisher_file = dir.0.join("publisher-token");
    std::fs::write(&publisher_file, PUBLISHER_SECRET).unwrap();
    let command = run_command(
        &dir.0,
        &[
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
            "--auth-token",
            &format!("root:publish+read+admin:file:{}", token_file.display()),
            "--auth-token",
            &format!("ingest:publish:file:{}", publisher_file.display()),
        ],
    );
    let host = Running::spawn(command, &dir.0);
    assert!(host.url.starts_with("https://127.0.0.1:"), "{}", host.url);

    // A client that trusts the CA.
    let trusted = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca_file).unwrap()).unwrap())
        .build()
        .unwrap();
    let health = trusted.get(format!("{}/healthz", host.url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let plain = client()
        .get(format!("{}/healthz", host.url.replacen("https", "http", 1)))
        .send()
        .await;
    assert!(
        plain.map_or(true, |response| !response.status().is_success()),
        "plain HTTP is not served"
    );
    let untrusted = client().get(format!("{}/healthz", host.url)).send().await;
    assert!(
        untrusted.is_err(),
        "a client that does not trust the CA cannot connect"
    );

    // The CLI, with its CA file and token file.
    let url = host.url.clone();
    let ca_arg = ca_file.to_str().unwrap().to_owned();
    let token_arg = token_file.to_str().unwrap().to_owned();
    let cli = move |args: Vec<&str>| {
        let mut full = args;
        full.extend(["--url", &url, "--ca-cert", &ca_arg]);
        evhost(&full, "")
    };
    let (code, stdout, stderr) = cli(vec![
        "publish",
        "--type",
        "Ping",
        "--id",
        "tls-1",
        "--wait",
        "--token-file",
        &token_arg,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("tls-1"), "{stdout}");
    let (code, stdout, stderr) = cli(vec!["plugins", "list", "--token-file", &token_arg]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("healthy"), "{stdout}");
    let (code, stdout, stderr) = cli(vec!["dlq", "purge", "--token-file", &token_arg]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("purged 0"), "{stdout}");

    // Refusals are clear messages.
    let (code, _, stderr) = cli(vec!["plugins", "list"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("401") && stderr.contains("needs a token") && stderr.contains("--token-file"),
        "{stderr}"
    );
    let publisher_arg = publisher_file.to_str().unwrap().to_owned();
    let (code, _, stderr) = cli(vec!["dlq", "purge", "--token-file", &publisher_arg]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("403") && stderr.contains("token `ingest` lacks the `admin` scope"),
        "{stderr}"
    );
    assert!(!stderr.contains(PUBLISHER_SECRET), "{stderr}");
    // Without the CA the CLI says it cannot connect.
    let (code, _, stderr) = evhost(
        &["plugins", "list", "--url", &host.url, "--token-file", &token_arg],
        "",
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot reach the host"), "{stderr}");
}
