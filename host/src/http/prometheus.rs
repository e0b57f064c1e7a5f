//! Renders the counters as Prometheus text exposition format 0.0.4.
//!
//! Hand-rendered: a dozen families do not justify a metrics registry, and the bus already
//! keeps its counters in atomics; this only formats a snapshot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::PluginView;
use crate::metrics::{BusMetrics, LATENCY_BUCKETS, SubscriptionSnapshot};
use crate::monitor::FailureKind;

/// The `Content-Type` of the exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything `/metrics` reports, from one bus snapshot and one catalog listing.
pub(crate) fn render(bus: &BusMetrics, plugins: &[PluginView], reloads: u64, load_failures: u64) -> String {
    let mut out = String::with_capacity(4096);
    let w = &mut out;

    family(
        w,
        "evhost_events_accepted_total",
        "counter",
        "Events the bus accepted.",
    );
    sample(w, "evhost_events_accepted_total", &[], bus.accepted);
    family(
        w,
        "evhost_events_in_flight",
        "gauge",
        "Accepted events not yet fully handled.",
    );
    sample(w, "evhost_events_in_flight", &[], bus.in_flight);
    family(
        w,
        "evhost_invocations_running",
        "gauge",
        "Handler invocations running now.",
    );
    sample(w, "evhost_invocations_running", &[], bus.running);

    let handlers = by_name(&bus.subscriptions);
    family(
        w,
        "evhost_deliveries_total",
        "counter",
        "Handler invocations by plugin and outcome: ok, or the failure kind.",
    );
    for (name, handler) in &handlers {
        sample(
            w,
            "evhost_deliveries_total",
            &[("plugin", name), ("outcome", "ok")],
            handler.succeeded,
        );
        for kind in FailureKind::ALL {
            let count = handler.failed[kind.index()];
            // Loading is not a delivery outcome; show it only should it ever be counted.
            if kind == FailureKind::PluginLoad && count == 0 {
                continue;
            }
            sample(
                w,
                "evhost_deliveries_total",
                &[("plugin", name), ("outcome", kind.as_str())],
                count,
            );
        }
    }

    family(
        w,
        "evhost_handler_duration_seconds",
        "histogram",
        "Time one handler invocation took, by plugin.",
    );
    for (name, handler) in &handlers {
        // The snapshot counts per bucket; Prometheus buckets count everything up to `le`.
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&handler.buckets) {
            cumulative += count;
            let le = bound.to_string();
            sample(
                w,
                "evhost_handler_duration_seconds_bucket",
                &[("plugin", name), ("le", &le)],
                cumulative,
            );
        }
        let count: u64 = handler.buckets.iter().sum();
        sample(
            w,
            "evhost_handler_duration_seconds_bucket",
            &[("plugin", name), ("le", "+Inf")],
            count,
        );
        sample(
            w,
            "evhost_handler_duration_seconds_sum",
            &[("plugin", name)],
            handler.sum_seconds,
        );
        sample(
            w,
            "evhost_handler_duration_seconds_count",
            &[("plugin", name)],
            count,
        );
    }

    family(
        w,
        "evhost_fuel_consumed_total",
        "counter",
        "Fuel burned by a plugin's invocations (roughly Wasm instructions).",
    );
    let mut fuel: BTreeMap<&str, u64> = BTreeMap::new();
    for plugin in plugins {
        *fuel.entry(&plugin.name).or_default() += plugin.fuel_consumed;
    }
    for (name, consumed) in fuel {
        sample(w, "evhost_fuel_consumed_total", &[("plugin", name)], consumed);
    }

    family(
        w,
        "evhost_failures_reported_total",
        "counter",
        "Failures reported to the error monitor.",
    );
    sample(w, "evhost_failures_reported_total", &[], bus.failures_reported);
    family(
        w,
        "evhost_error_monitor_overflow_total",
        "counter",
        "Failure records the error monitor dropped because its consumer fell behind.",
    );
    sample(
        w,
        "evhost_error_monitor_overflow_total",
        &[],
        bus.monitor_overflow,
    );
    family(
        w,
        "evhost_store_retries_total",
        "counter",
        "Commits the store failed and the host tried again.",
    );
    sample(w, "evhost_store_retries_total", &[], bus.store_retries);
    family(
        w,
        "evhost_dead_letters",
        "gauge",
        "Events in the dead-letter queue.",
    );
    sample(w, "evhost_dead_letters", &[], bus.dead_letters);
    family(
        w,
        "evhost_plugin_reloads_total",
        "counter",
        "Changed plugin files swapped in.",
    );
    sample(w, "evhost_plugin_reloads_total", &[], reloads);
    family(
        w,
        "evhost_plugin_load_failures_total",
        "counter",
        "Plugin files that failed to load.",
    );
    sample(w, "evhost_plugin_load_failures_total", &[], load_failures);
    family(w, "evhost_plugins_loaded", "gauge", "Plugins serving now.");
    sample(w, "evhost_plugins_loaded", &[], plugins.len());
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

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // HELP texts are our own constants: nothing to escape.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// The exposition format's label escaping: backslash, double quote and line feed.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label_value(&mut out, "a\\b\"c\nd");
        assert_eq!(out, r#"a\\b\"c\nd"#);
    }

    #[test]
    fn float_values_render_in_a_form_prometheus_parses() {
        let mut out = String::new();
        sample(
            &mut out,
            "m",
            &[("le", &LATENCY_BUCKETS[0].to_string())],
            0.25_f64,
        );
        assert_eq!(out, "m{le=\"0.000005\"} 0.25\n");
    }
}
