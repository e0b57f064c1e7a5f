//! Counters and latency histograms, kept in atomics so recording costs a few nanoseconds.
//!
//! [`BusMetrics`] is a point-in-time snapshot; the HTTP layer renders it for Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::monitor::FailureKind;

/// Upper bounds (seconds) of the handler latency histogram buckets; the last bucket is +Inf.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

/// Live counters of one subscription.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionMetrics {
    succeeded: AtomicU64,
    failed: [AtomicU64; FailureKind::ALL.len()],
    latency: Histogram,
}

impl SubscriptionMetrics {
    pub(crate) fn record(&self, elapsed: Duration, failure: Option<FailureKind>) {
        match failure {
            None => self.succeeded.fetch_add(1, Ordering::Relaxed),
            Some(kind) => self.failed[kind.index()].fetch_add(1, Ordering::Relaxed),
        };
        self.latency.record(elapsed);
    }

    pub(crate) fn snapshot(&self, name: &str, pattern: String) -> SubscriptionSnapshot {
        SubscriptionSnapshot {
            name: name.to_owned(),
            pattern,
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: FailureKind::ALL
                .iter()
                .map(|kind| (*kind, self.failed[kind.index()].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            latency: self.latency.snapshot(),
        }
    }
}

#[derive(Debug, Default)]
struct Histogram {
    /// One count per bucket of [`LATENCY_BUCKETS`], plus +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A histogram at one moment: non-cumulative counts per bucket of [`LATENCY_BUCKETS`]
/// followed by the +Inf bucket, and the sum of all observations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    /// Per-bucket counts (not cumulative).
    pub counts: Vec<u64>,
    /// Sum of observed latencies in seconds.
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Total number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One subscription's counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubscriptionSnapshot {
    /// The subscription's name.
    pub name: String,
    /// Its pattern.
    pub pattern: String,
    /// Invocations that succeeded.
    pub succeeded: u64,
    /// Failed invocations by kind (kinds with no failures are left out).
    pub failed: Vec<(FailureKind, u64)>,
    /// Handler latency.
    pub latency: HistogramSnapshot,
}

impl SubscriptionSnapshot {
    /// Failed invocations of every kind.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().map(|(_, n)| n).sum()
    }
}

/// A bus's counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BusMetrics {
    /// Events accepted since the bus was created.
    pub accepted: u64,
    /// Accepted events not yet fully handled.
    pub in_flight: u64,
    /// Handler invocations running right now.
    pub running: u64,
    /// Failures reported to the error monitor.
    pub failures_reported: u64,
    /// Failures the error monitor dropped because its channel was full.
    pub monitor_overflow: u64,
    /// Events in the dead-letter queue.
    pub dead_letters: u64,
    /// Times a delivery's commit failed in the store and was tried again (the host's
    /// failures, not the handlers').
    pub store_retries: u64,
    /// Per-subscription counters.
    pub subscriptions: Vec<SubscriptionSnapshot>,
}

/// Writing metrics into a Prometheus registry: each component's [`Collector`] reads its
/// own atomics at scrape time with these, so recording stays as cheap as an atomic add.
///
/// [`Collector`]: prometheus_client::collector::Collector
pub mod export {
    use std::fmt::Write as _;

    use prometheus_client::encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, NoLabelSet,
    };
    use prometheus_client::metrics::MetricType;

    /// A label value from outside (a plugin's or a relay's name), escaped as the text
    /// format requires: `prometheus-client` writes label values as they are.
    #[derive(Debug, Clone, Copy)]
    pub struct LabelText<'a>(pub &'a str);

    impl EncodeLabelValue for LabelText<'_> {
        fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
            for c in self.0.chars() {
                match c {
                    '\\' => encoder.write_str("\\\\")?,
                    '"' => encoder.write_str("\\\"")?,
                    '\n' => encoder.write_str("\\n")?,
                    c => encoder.write_char(c)?,
                }
            }
            Ok(())
        }
    }

    /// A counter without labels; `name` is without the `_total` the encoder appends.
    pub fn counter(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: u64,
    ) -> std::fmt::Result {
        encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)
    }

    /// A gauge without labels, of a count (saturating at `i64::MAX`, the largest gauge).
    pub fn gauge(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        value: u64,
    ) -> std::fmt::Result {
        encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(&i64::try_from(value).unwrap_or(i64::MAX))
    }

    /// A counter family: one sample per label set.
    pub fn counter_family<L: EncodeLabelSet>(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    /// A histogram without labels: the buckets' upper `bounds` and per-bucket `counts`,
    /// the last one the `+Inf` bucket's.
    pub fn histogram(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        bounds: &[f64],
        sum: f64,
        counts: &[u64],
    ) -> std::fmt::Result {
        encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets(bounds, counts), None)
    }

    fn buckets(bounds: &[f64], counts: &[u64]) -> Vec<(f64, u64)> {
        bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(counts.iter().copied())
            .collect()
    }

    /// One histogram per label set: `(labels, sum, per-bucket counts)` with the buckets'
    /// upper `bounds`; the last count is the `+Inf` bucket's. Counts are per bucket, not
    /// cumulative.
    pub fn histogram_family<L: EncodeLabelSet>(
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        bounds: &[f64],
        samples: impl IntoIterator<Item = (L, f64, Vec<u64>)>,
    ) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, sum, counts) in samples {
            family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                sum,
                counts.iter().sum(),
                &buckets(bounds, &counts),
                None,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets() {
        let metrics = SubscriptionMetrics::default();
        metrics.record(Duration::from_micros(3), None);
        metrics.record(Duration::from_millis(2), Some(FailureKind::Timeout));
        metrics.record(Duration::from_secs(60), Some(FailureKind::Timeout));
        let snap = metrics.snapshot("s", "*".into());
        assert_eq!(snap.succeeded, 1);
        assert_eq!(snap.failed, vec![(FailureKind::Timeout, 2)]);
        assert_eq!(snap.latency.counts[0], 1, "3µs ≤ 5µs");
        assert_eq!(snap.latency.counts[6], 1, "2ms ≤ 5ms");
        assert_eq!(snap.latency.counts[LATENCY_BUCKETS.len()], 1, "60s in +Inf");
        assert_eq!(snap.latency.count(), 3);
    }
}
