//! `/metrics`: the registry every component registers its collectors in, rendered by
//! `prometheus-client` in the OpenMetrics text format (which Prometheus scrapes natively).
//!
//! The HTTP layer registers the bus's and the plugin catalog's collectors and counts its
//! own requests; the host adds the store's, the outbox relay's and the runtime's (see
//! [`App`](crate::App)). Collectors read the components' atomics at scrape time, so the hot
//! paths only ever do an atomic add.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{AppState, PluginCatalog};
use crate::bus::AsyncEventBus;
use crate::metrics::export::{LabelText, counter, counter_family, gauge, histogram_family};
use crate::metrics::{LATENCY_BUCKETS, SubscriptionSnapshot};
use crate::monitor::FailureKind;

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The labels of `evhost_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// The route as registered (`/dlq/{id}`), or `unmatched`, so a scanner cannot grow
    /// the label set.
    route: String,
    method: String,
    status: u16,
}

/// The HTTP layer's own metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
}

impl HttpMetrics {
    /// Registers the request counter in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "evhost_http_requests",
            "HTTP requests answered, by route, method and status.",
            self.requests.clone(),
        );
    }
}

/// The middleware counting every answered request.
pub(crate) async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    state
        .http_metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The bus's counters.
#[derive(Debug)]
pub(crate) struct BusCollector(pub(crate) AsyncEventBus);

impl Collector for BusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let bus = self.0.metrics();
        let e = &mut encoder;
        counter(
            e,
            "evhost_events_accepted",
            "Events the bus accepted.",
            bus.accepted,
        )?;
        gauge(
            e,
            "evhost_events_in_flight",
            "Accepted events not yet fully handled.",
            bus.in_flight,
        )?;
        gauge(
            e,
            "evhost_invocations_running",
            "Handler invocations running now.",
            bus.running,
        )?;
        let handlers = by_name(&bus.subscriptions);
        let outcomes = handlers.iter().flat_map(|(name, handler)| {
            let name = LabelText(name);
            let ok = (
                [("plugin", name), ("outcome", LabelText("ok"))],
                handler.succeeded,
            );
            let failed = FailureKind::ALL
                .iter()
                // Loading is not a delivery outcome; show it only should it ever be counted.
                .filter(|kind| **kind != FailureKind::PluginLoad || handler.failed[kind.index()] > 0)
                .map(move |kind| {
                    let labels = [("plugin", name), ("outcome", LabelText(kind.as_str()))];
                    (labels, handler.failed[kind.index()])
                });
            std::iter::once(ok).chain(failed)
        });
        counter_family(
            e,
            "evhost_deliveries",
            "Handler invocations by plugin and outcome: ok, or the failure kind.",
            outcomes,
        )?;
        histogram_family(
            e,
            "evhost_handler_duration_seconds",
            "Time one handler invocation took, by plugin.",
            &LATENCY_BUCKETS,
            handlers.iter().map(|(name, handler)| {
                (
                    [("plugin", LabelText(name))],
                    handler.sum_seconds,
                    handler.buckets.clone(),
                )
            }),
        )?;
        counter(
            e,
            "evhost_failures_reported",
            "Failures reported to the error monitor.",
            bus.failures_reported,
        )?;
        counter(
            e,
            "evhost_error_monitor_overflow",
            "Failure records the error monitor dropped because its consumer fell behind.",
            bus.monitor_overflow,
        )?;
        counter(
            e,
            "evhost_store_retries",
            "Commits the store failed and the host tried again.",
            bus.store_retries,
        )?;
        gauge(
            e,
            "evhost_dead_letters",
            "Events in the dead-letter queue.",
            bus.dead_letters,
        )
    }
}

/// The plugins folder's counters (or any other catalog's).
pub(crate) struct CatalogCollector(pub(crate) Arc<dyn PluginCatalog>);

impl std::fmt::Debug for CatalogCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogCollector").finish_non_exhaustive()
    }
}

impl Collector for CatalogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let plugins = self.0.plugins();
        let e = &mut encoder;
        let mut fuel: BTreeMap<&str, u64> = BTreeMap::new();
        for plugin in &plugins {
            *fuel.entry(&plugin.name).or_default() += plugin.fuel_consumed;
        }
        counter_family(
            e,
            "evhost_fuel_consumed",
            "Fuel burned by a plugin's invocations (roughly Wasm instructions).",
            fuel.into_iter()
                .map(|(name, consumed)| ([("plugin", LabelText(name))], consumed)),
        )?;
        counter(
            e,
            "evhost_plugin_reloads",
            "Changed plugin files swapped in.",
            self.0.reloads(),
        )?;
        counter(
            e,
            "evhost_plugin_load_failures",
            "Plugin files that failed to load.",
            self.0.load_failures(),
        )?;
        gauge(
            e,
            "evhost_plugins_loaded",
            "Plugins serving now.",
            plugins.len() as u64,
        )
    }
}

/// The registry as OpenMetrics text.
pub(crate) fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8192);
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

/// One handler's counters, summed over its subscriptions.
struct HandlerTotals {
    succeeded: u64,
    failed: [u64; FailureKind::ALL.len()],
    buckets: Vec<u64>,
    sum_seconds: f64,
}

/// Per subscription name, sorted. Names need not be unique (a library user may subscribe
/// two handlers under one name), but a label set may appear only once in the exposition,
/// so their counters are added up.
fn by_name(subscriptions: &[SubscriptionSnapshot]) -> BTreeMap<&str, HandlerTotals> {
    let mut handlers: BTreeMap<&str, HandlerTotals> = BTreeMap::new();
    for subscription in subscriptions {
        let totals = handlers
            .entry(&subscription.name)
            .or_insert_with(|| HandlerTotals {
                succeeded: 0,
                failed: [0; FailureKind::ALL.len()],
                buckets: vec![0; LATENCY_BUCKETS.len() + 1],
                sum_seconds: 0.0,
            });
        totals.succeeded += subscription.succeeded;
        for (kind, count) in &subscription.failed {
            totals.failed[kind.index()] += count;
        }
        for (total, count) in totals.buckets.iter_mut().zip(&subscription.latency.counts) {
            *total += count;
        }
        totals.sum_seconds += subscription.latency.sum_seconds;
    }
    handlers
}
