//! A host under attack, and what is watched while the attack runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Running, client, get_json, post_events};
use crate::wasm;

/// How much the host's resident memory may grow while an attack runs.
pub const RSS_GROWTH_LIMIT: u64 = 300 << 20;
/// How fast `/healthz` must answer while an attack runs.
pub const HEALTHZ_LIMIT: Duration = Duration::from_millis(100);
/// How fast the healthy plugin must handle an event it shares with the attacker.
pub const HANDLED_LIMIT: Duration = Duration::from_secs(1);
/// The longest failure message the host keeps (`MAX_MESSAGE_BYTES` and the note saying
/// how much was cut).
pub const MESSAGE_LIMIT: usize = 4096 + 64;

/// A running host with `healthy` and an attacker.
pub struct Siege {
    pub host: Running,
    pub http: reqwest::Client,
    baseline_rss: u64,
    published: Vec<String>,
}

/// What was measured while an attack ran.
#[derive(Debug)]
pub struct Watch {
    /// The largest resident memory seen, above the baseline taken before the attack.
    pub rss_growth: u64,
    /// The slowest `/healthz` answer.
    pub slowest_healthz: Duration,
    /// The slowest the healthy plugin handled a shared event, and how many were checked.
    pub slowest_handled: Duration,
    pub probes: usize,
}

impl Watch {
    /// The host stayed well: memory, health and the healthy plugin within their limits.
    pub fn assert_host_unharmed(&self, attack: &str) {
        eprintln!(
            "{attack}: RSS +{} MB, slowest /healthz {:?}, slowest healthy handling {:?} over {} events",
            self.rss_growth >> 20,
            self.slowest_healthz,
            self.slowest_handled,
            self.probes
        );
        assert!(
            self.rss_growth < RSS_GROWTH_LIMIT,
            "{attack}: the host grew by {} MB",
            self.rss_growth >> 20
        );
        assert!(
            self.slowest_healthz < HEALTHZ_LIMIT,
            "{attack}: /healthz took {:?}",
            self.slowest_healthz
        );
        assert!(self.probes > 0, "{attack}: no event was checked");
        assert!(
            self.slowest_handled < HANDLED_LIMIT,
            "{attack}: the healthy plugin took {:?}",
            self.slowest_handled
        );
    }
}

impl Siege {
    /// Starts the host with `healthy` and `plugins` (name, built `.wasm`) and `manifests`,
    /// handles one event to warm up and takes the memory baseline.
    pub async fn start(plugins: &[(&str, &str)], manifests: &[(&str, &str)]) -> Self {
        let mut all = vec![("healthy", wasm::HEALTHY)];
        all.extend_from_slice(plugins);
        let host = Running::start(&all, manifests);
        let mut siege = Self {
            host,
            http: client(),
            baseline_rss: 0,
            published: Vec::new(),
        };
        let warm_up = siege.publish("WarmUp", 1).await.remove(0);
        siege.wait_handled(&warm_up, Duration::from_secs(10)).await;
        siege.baseline_rss = rss(siege.host.pid());
        siege
    }

    /// Publishes `n` events of type `ty`, each with its own subject; returns their ids.
    pub async fn publish(&mut self, ty: &str, n: usize) -> Vec<String> {
        let events: Vec<Value> = (0..n)
            .map(|_| {
                let id = uuid::Uuid::now_v7().to_string();
                json!({"specversion": "1.0", "id": id, "source": "siege", "type": ty, "subject": id, "data": {}})
            })
            .collect();
        let ids: Vec<String> = events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        let response = post_events(
            &self.http,
            &self.host.url,
            "/events",
            "application/cloudevents-batch+json",
            Value::Array(events).to_string(),
        )
        .await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        self.published.extend(ids.iter().cloned());
        ids
    }

    /// Waits until the healthy plugin has handled event `id`; returns how long that took.
    pub async fn wait_handled(&self, id: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let url = format!("{}/plugins/healthy/kv/seen:{id}", self.host.url);
        loop {
            let status = self.http.get(&url).send().await.unwrap().status();
            if status == 200 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "the healthy plugin did not handle {id} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// For `duration`: publishes an `Attack` event every 100 ms (the attacker and the
    /// healthy plugin both get it) and times the healthy plugin on it, pings `/healthz`
    /// every 25 ms, and samples the host's resident memory every 20 ms.
    pub async fn watch(&mut self, duration: Duration) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = std::thread::spawn({
            let (stop, peak, pid) = (Arc::clone(&stop), Arc::clone(&peak), self.host.pid());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        let pinger = tokio::spawn({
            let (stop, http) = (Arc::clone(&stop), client());
            let url = format!("{}/healthz", self.host.url);
            async move {
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let status = http.get(&url).send().await.unwrap().status();
                    assert_eq!(status, 200);
                    slowest = slowest.max(started.elapsed());
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                slowest
            }
        });
        let started = Instant::now();
        let (mut slowest_handled, mut probes) = (Duration::ZERO, 0);
        while started.elapsed() < duration {
            let posted = Instant::now();
            let id = self.publish("Attack", 1).await.remove(0);
            self.wait_handled(&id, Duration::from_secs(30)).await;
            // From before the publish: the time to accept the event counts too.
            slowest_handled = slowest_handled.max(posted.elapsed());
            probes += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        let slowest_healthz = pinger.await.unwrap();
        Watch {
            rss_growth: peak.load(Ordering::Relaxed).saturating_sub(self.baseline_rss),
            slowest_healthz,
            slowest_handled,
            probes,
        }
    }

    /// The failure records `/errors` holds for `plugin`, newest first.
    pub async fn failures(&self, plugin: &str) -> Vec<Value> {
        let records = get_json(&self.http, format!("{}/errors?limit=1000", self.host.url)).await;
        records
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["subscription"] == plugin)
            .cloned()
            .collect()
    }

    /// Waits for a failure record of `plugin` and returns it.
    pub async fn failure(&self, plugin: &str, timeout: Duration) -> Value {
        let started = Instant::now();
        loop {
            if let Some(record) = self.failures(plugin).await.pop() {
                return record;
            }
            assert!(
                started.elapsed() < timeout,
                "no failure of {plugin} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts that every failure record of `plugin` has `kind`, a message naming
    /// `mentions` and at most [`MESSAGE_LIMIT`] bytes; returns how many there are.
    pub async fn assert_failures(&self, plugin: &str, kind: &str, mentions: &str) -> usize {
        let records = self.failures(plugin).await;
        assert!(!records.is_empty(), "{plugin} failed");
        for record in &records {
            let message = record["message"].as_str().unwrap();
            assert_eq!(
                record["kind"],
                kind,
                "{plugin}: {}",
                &message[..message.len().min(500)]
            );
            assert!(
                message.len() <= MESSAGE_LIMIT,
                "{plugin}: a message of {} bytes",
                message.len()
            );
            assert!(message.contains(mentions), "{plugin}: {message}");
        }
        records.len()
    }

    /// The value of `key` in `plugin`'s store, if any.
    pub async fn kv(&self, plugin: &str, key: &str) -> Option<Value> {
        crate::support::kv(&self.host, plugin, key).await
    }

    /// Every event this test published was handled by the healthy plugin.
    pub async fn assert_healthy_saw_everything(&self) {
        for id in &self.published {
            self.wait_handled(id, Duration::from_secs(10)).await;
        }
    }

    /// A number from the host's `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.host.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }
}

/// The resident memory of process `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}
