//! What an operator's page watches: a one-second sample of the bus kept for the last
//! [`HISTORY_SECONDS`] (`GET /metrics/history`), and `GET /stream`, Server-Sent Events of
//! those samples, failures, plugin changes and dead-letter counts as they happen.
//!
//! Nothing here can hold the bus back: samples read counters, every feed is a broadcast
//! channel whose sender never waits, and a client that falls behind gets a `lagged`
//! event (with how many it missed) instead of slowing anyone down.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use super::session::Session;
use crate::bus::AsyncEventBus;
use crate::metrics::{BusMetrics, HistogramSnapshot, LATENCY_BUCKETS};

/// How much history `GET /metrics/history` keeps: 20 minutes of one-second samples.
pub const HISTORY_SECONDS: usize = 20 * 60;

/// How many `GET /stream` clients may be connected at once unless configured otherwise.
pub const DEFAULT_STREAM_CLIENTS: usize = 16;

/// How far a stream client may fall behind a feed before it is told it lagged.
const FEED_CAPACITY: usize = 256;

/// One plugin over one second.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PluginSample {
    /// Events handled successfully.
    pub handled: u64,
    /// Invocations that failed (any kind).
    pub failed: u64,
    /// Median handler latency in milliseconds, estimated from the histogram's buckets;
    /// absent when nothing ran.
    pub p50_ms: Option<f64>,
    /// 99th percentile, likewise.
    pub p99_ms: Option<f64>,
}

/// The bus over one second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The end of the second.
    pub time: DateTime<Utc>,
    /// Events accepted during it.
    pub accepted: u64,
    /// Events in the bus at its end.
    pub in_flight: u64,
    /// Dead letters at its end.
    pub dead_letters: u64,
    /// Failure records the monitor dropped so far (its consumer fell behind).
    pub monitor_overflow: u64,
    /// Per plugin (subscriptions of one name added up).
    pub plugins: BTreeMap<String, PluginSample>,
}

/// What `GET /stream` sends besides failures and plugin changes.
#[derive(Debug, Clone)]
enum Feed {
    Metrics(Arc<Sample>),
    DeadLetters(u64),
}

/// The samples, the live feeds and the stream clients' budget.
#[derive(Debug)]
pub struct Live {
    samples: Mutex<VecDeque<Arc<Sample>>>,
    feed: broadcast::Sender<Feed>,
    clients: Arc<Semaphore>,
    max_clients: usize,
    /// Cancelled on shutdown: every stream ends, so the server's graceful shutdown does
    /// not wait for clients that never hang up.
    closing: CancellationToken,
}

impl Live {
    /// At most `max_clients` stream clients at once.
    pub fn new(max_clients: usize) -> Self {
        Self {
            samples: Mutex::new(VecDeque::with_capacity(HISTORY_SECONDS)),
            feed: broadcast::channel(FEED_CAPACITY).0,
            clients: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            closing: CancellationToken::new(),
        }
    }

    /// Ends every stream, and refuses new ones: the host is shutting down.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Samples `bus` every second until the bus is dropped or the task aborted.
    pub fn spawn_sampler(self: &Arc<Self>, bus: AsyncEventBus) -> tokio::task::JoinHandle<()> {
        let live = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut previous = bus.metrics();
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let now = bus.metrics();
                live.record(sample(&previous, &now, Utc::now()));
                previous = now;
            }
        })
    }

    fn record(&self, sample: Sample) {
        let sample = Arc::new(sample);
        let dead_letters_changed = {
            let mut samples = self.samples.lock();
            let changed = samples
                .back()
                .is_none_or(|last| last.dead_letters != sample.dead_letters);
            if samples.len() == HISTORY_SECONDS {
                samples.pop_front();
            }
            samples.push_back(Arc::clone(&sample));
            changed
        };
        let dead_letters = sample.dead_letters;
        // No client connected is fine.
        let _ = self.feed.send(Feed::Metrics(sample));
        if dead_letters_changed {
            let _ = self.feed.send(Feed::DeadLetters(dead_letters));
        }
    }

    /// The kept samples, oldest first.
    pub fn history(&self) -> Vec<Arc<Sample>> {
        self.samples.lock().iter().cloned().collect()
    }
}

/// The second between `before` and `after`.
fn sample(before: &BusMetrics, after: &BusMetrics, time: DateTime<Utc>) -> Sample {
    let mut plugins: BTreeMap<String, (PluginSample, Vec<u64>)> = BTreeMap::new();
    for now in &after.subscriptions {
        let (plugin, buckets) = plugins.entry(now.name.clone()).or_default();
        let then = before
            .subscriptions
            .iter()
            .find(|s| s.name == now.name && s.pattern == now.pattern);
        plugin.handled += now.succeeded - then.map_or(0, |t| t.succeeded.min(now.succeeded));
        plugin.failed += now
            .failed_total()
            .saturating_sub(then.map_or(0, |t| t.failed_total()));
        buckets.resize(now.latency.counts.len(), 0);
        for (i, count) in now.latency.counts.iter().enumerate() {
            let earlier = then.and_then(|t| t.latency.counts.get(i)).copied().unwrap_or(0);
            buckets[i] += count.saturating_sub(earlier);
        }
    }
    Sample {
        time,
        accepted: after.accepted.saturating_sub(before.accepted),
        in_flight: after.in_flight,
        dead_letters: after.dead_letters,
        monitor_overflow: after.monitor_overflow,
        plugins: plugins
            .into_iter()
            .map(|(name, (mut plugin, buckets))| {
                let histogram = HistogramSnapshot {
                    counts: buckets,
                    sum_seconds: 0.0,
                };
                plugin.p50_ms = quantile_ms(&histogram, 0.5);
                plugin.p99_ms = quantile_ms(&histogram, 0.99);
                (name, plugin)
            })
            .collect(),
    }
}

/// The `q` quantile of `histogram` in milliseconds, interpolated linearly within its
/// bucket as Prometheus's `histogram_quantile` does; the +Inf bucket answers its lower
/// bound. `None` for an empty histogram.
fn quantile_ms(histogram: &HistogramSnapshot, q: f64) -> Option<f64> {
    let total = histogram.count();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, count) in histogram.counts.iter().enumerate() {
        let below = seen;
        seen += count;
        if (seen as f64) >= rank && *count > 0 {
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let Some(upper) = LATENCY_BUCKETS.get(i) else {
                return Some(lower * 1000.0);
            };
            let within = (rank - below as f64) / *count as f64;
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
    }
    LATENCY_BUCKETS.last().map(|bound| bound * 1000.0)
}

/// The answer of `GET /metrics/history`.
#[derive(Debug, Serialize)]
pub(crate) struct History {
    interval_seconds: u64,
    samples: Vec<Arc<Sample>>,
}

/// `GET /metrics/history`: the last minutes of one-second samples, oldest first.
pub(crate) async fn history(State(state): State<Arc<AppState>>) -> Json<History> {
    Json(History {
        interval_seconds: 1,
        samples: state.live.history(),
    })
}

/// `GET /stream`: Server-Sent Events — `metrics` (a [`Sample`] every second), `failure`
/// (each failure record), `plugin` (each plugin change), `dlq` (the dead-letter count when
/// it changes), and `lagged` (`{"feed", "missed"}`) when this client fell behind and
/// should refetch. At most [`Live::new`]'s clients at once; the next gets `503`.
///
/// A stream opened by a browser session ends when the session does (signed out or
/// expired): what it reads is the session's to read.
pub(crate) async fn stream(
    State(state): State<Arc<AppState>>,
    session: Option<Extension<Session>>,
) -> Result<Response, ApiError> {
    if state.live.closing.is_cancelled() {
        return Err(ApiError::Unavailable {
            message: "evhost is shutting down".to_owned(),
            retry_after: None,
        });
    }
    let Ok(permit) = Arc::clone(&state.live.clients).try_acquire_owned() else {
        return Err(ApiError::Unavailable {
            message: format!(
                "{} stream clients are connected, the most this host serves (`max_stream_clients`)",
                state.live.max_clients
            ),
            retry_after: Some(5),
        });
    };
    let feed = events(state.live.feed.subscribe(), "metrics", |feed| match feed {
        Feed::Metrics(sample) => SseEvent::default().event("metrics").json_data(&*sample),
        Feed::DeadLetters(count) => SseEvent::default()
            .event("dlq")
            .json_data(serde_json::json!({ "dead_letters": count })),
    });
    let failures = events(state.errors.subscribe(), "failure", |record| {
        SseEvent::default().event("failure").json_data(&record)
    });
    let mut merged = futures::stream::select(feed, failures).boxed();
    if let Some(changes) = state.plugins.changes() {
        let plugins = events(changes, "plugin", |change| {
            SseEvent::default().event("plugin").json_data(&change)
        });
        merged = futures::stream::select(merged, plugins).boxed();
    }
    // The permit lives as long as the response's stream: a disconnect frees the place.
    let ended = async move {
        match session {
            Some(Extension(session)) => session.ended().await,
            None => std::future::pending().await,
        }
    };
    let stream = merged
        .take_until(state.live.closing.clone().cancelled_owned())
        .take_until(ended)
        .map(move |event| {
            let _held = &permit;
            event
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// `receiver` as SSE events made by `make`; a lag becomes a `lagged` event naming `feed`.
fn events<T: Clone + Send + 'static>(
    receiver: broadcast::Receiver<T>,
    feed: &'static str,
    make: fn(T) -> Result<SseEvent, axum::Error>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    futures::stream::unfold(receiver, move |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(item) => make(item),
            Err(broadcast::error::RecvError::Lagged(missed)) => SseEvent::default()
                .event("lagged")
                .json_data(serde_json::json!({ "feed": feed, "missed": missed })),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        // Serializing our own types cannot fail; a comment stands in if it ever did.
        let event = event.unwrap_or_else(|_| SseEvent::default().comment("unserializable"));
        Some((Ok(event), receiver))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::SubscriptionSnapshot;
    use crate::monitor::FailureKind;

    fn metrics(accepted: u64, succeeded: u64, failed: u64, latency: Vec<u64>) -> BusMetrics {
        BusMetrics {
            accepted,
            in_flight: 3,
            running: 0,
            failures_reported: 0,
            monitor_overflow: 0,
            dead_letters: failed,
            store_retries: 0,
            subscriptions: vec![SubscriptionSnapshot {
                name: "billing".into(),
                pattern: "Order*".into(),
                succeeded,
                failed: vec![(FailureKind::Reject, failed)],
                latency: HistogramSnapshot {
                    counts: latency,
                    sum_seconds: 0.0,
                },
            }],
        }
    }

    #[test]
    fn a_sample_is_the_difference_of_two_snapshots_with_quantiles_from_the_buckets() {
        let mut before = vec![0; LATENCY_BUCKETS.len() + 1];
        before[5] = 100; // ≤ 1 ms
        let mut after = before.clone();
        after[5] += 98; // 98 more ≤ 1 ms, i.e. in (0.5, 1] ms
        after[7] += 2; // 2 in (5, 10] ms
        let sample = sample(
            &metrics(10, 50, 1, before),
            &metrics(110, 148, 3, after),
            Utc::now(),
        );
        assert_eq!(
            (sample.accepted, sample.in_flight, sample.dead_letters),
            (100, 3, 3)
        );
        let billing = &sample.plugins["billing"];
        assert_eq!((billing.handled, billing.failed), (98, 2));
        let p50 = billing.p50_ms.unwrap();
        assert!((0.5..=1.0).contains(&p50), "{p50}");
        let p99 = billing.p99_ms.unwrap();
        assert!((5.0..=10.0).contains(&p99), "{p99}");
    }

    #[test]
    fn an_idle_second_has_no_quantiles_and_the_ring_keeps_the_last_samples() {
        let idle = metrics(5, 5, 0, vec![0; LATENCY_BUCKETS.len() + 1]);
        let quiet = sample(&idle, &idle, Utc::now());
        assert_eq!(quiet.plugins["billing"].p99_ms, None);
        let live = Live::new(1);
        let mut feed = live.feed.subscribe();
        live.record(quiet.clone());
        live.record(quiet.clone());
        assert!(matches!(feed.try_recv(), Ok(Feed::Metrics(_))));
        assert!(
            matches!(feed.try_recv(), Ok(Feed::DeadLetters(0))),
            "the first sample tells the count"
        );
        assert!(
            matches!(feed.try_recv(), Ok(Feed::Metrics(_))),
            "an unchanged count is not repeated"
        );
        assert!(feed.try_recv().is_err());
        for _ in 0..HISTORY_SECONDS + 5 {
            live.record(quiet.clone());
        }
        assert_eq!(live.history().len(), HISTORY_SECONDS);
        assert!(
            matches!(feed.try_recv(), Err(broadcast::error::TryRecvError::Lagged(_))),
            "a listener that fell behind is told"
        );
    }
}
