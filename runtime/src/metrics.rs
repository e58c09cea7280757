//! Every metric weir exports, defined in one place, rendered in Prometheus text format.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// Records accepted into each source (decoded rows).
    pub records_in: IntCounterVec,
    /// Micro-batches processed per source.
    pub batches: IntCounterVec,
    /// Time from a micro-batch's first row to the end of its processing.
    pub batch_latency: HistogramVec,
    /// Records dead-lettered per source.
    pub dead_letters: IntCounterVec,
    /// Late rows refused per view.
    pub late_rows: IntCounterVec,
    /// Rows emitted per view.
    pub rows_emitted: IntCounterVec,
    /// Time from a batch's first record received to a view's change published.
    pub end_to_end_latency: HistogramVec,
    /// Current watermark per source (ms since the epoch).
    pub watermark: IntGaugeVec,
    /// Records a source's partition has not read yet (the log's end less its position).
    pub source_lag: IntGaugeVec,
    /// Per shard of a Kinesis source: how far behind the tip, and what it read.
    pub shards: ShardMetrics,
    /// Time to take and write a checkpoint.
    pub checkpoint_duration: Histogram,
    /// Bytes of the last checkpoint written.
    pub checkpoint_bytes: IntGauge,
    /// Checkpoints written.
    pub checkpoints: IntCounter,
    /// Checkpoints that could not be written.
    pub checkpoint_failures: IntCounter,
    /// Messages a sink wrote.
    pub sink_messages: IntCounterVec,
    /// Deliveries of a sink that failed (and are retried).
    pub sink_failures: IntCounterVec,
    /// Each change's end-to-end latency per view, kept only once asked for
    /// ([`Metrics::keep_latency_samples`]): `weir bench` reads exact percentiles from them.
    latency_samples: Mutex<Option<HashMap<String, LatencySamples>>>,
}

/// The end-to-end latencies (seconds) of a view's changes, one per change published.
pub type LatencySamples = Arc<Mutex<Vec<f64>>>;

/// A Kinesis shard's signals: what an operator splits or merges shards by. Apart from
/// `weir_source_lag` because the unit differs (milliseconds, not records).
#[derive(Clone)]
pub struct ShardMetrics {
    /// `weir_source_lag_ms{source, shard}`: GetRecords' MillisBehindLatest.
    pub lag_ms: IntGaugeVec,
    /// `weir_source_shard_records_total{source, shard}`: Kinesis records read (a KPL
    /// aggregate is one, as Kinesis's limits count).
    pub records: IntCounterVec,
    /// `weir_source_shard_bytes_total{source, shard}`: bytes of the records read.
    pub bytes: IntCounterVec,
}

impl ShardMetrics {
    fn register(registry: &Registry) -> Self {
        let labels = &["source", "shard"];
        let lag_ms = IntGaugeVec::new(
            Opts::new(
                "weir_source_lag_ms",
                "Milliseconds a Kinesis shard's reader is behind the shard's tip (MillisBehindLatest).",
            ),
            labels,
        )
        .expect("valid metric definition");
        let records = IntCounterVec::new(
            Opts::new(
                "weir_source_shard_records_total",
                "Records read from a Kinesis shard.",
            ),
            labels,
        )
        .expect("valid metric definition");
        let bytes = IntCounterVec::new(
            Opts::new(
                "weir_source_shard_bytes_total",
                "Bytes of the records read from a Kinesis shard.",
            ),
            labels,
        )
        .expect("valid metric definition");
        for m in [
            Box::new(lag_ms.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(records.clone()),
            Box::new(bytes.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        Self {
            lag_ms,
            records,
            bytes,
        }
    }

    /// Unregistered metrics of the same shape (connectors' unit tests).
    #[cfg(test)]
    pub fn for_test() -> Self {
        Self::register(&Registry::new())
    }

    /// Forget shard `shard` of `source`.
    pub fn forget(&self, source: &str, shard: &str) {
        let _ = self.lag_ms.remove_label_values(&[source, shard]);
        let _ = self.records.remove_label_values(&[source, shard]);
        let _ = self.bytes.remove_label_values(&[source, shard]);
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .expect("valid metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let records_in = counter(
            "weir_records_in_total",
            "Records accepted into a source.",
            "source",
        );
        let batches = counter("weir_batches_total", "Micro-batches processed.", "source");
        let dead_letters = counter(
            "weir_dead_letters_total",
            "Records sent to the dead-letter store.",
            "source",
        );
        let late_rows = counter(
            "weir_late_rows_total",
            "Rows that arrived after their window closed.",
            "view",
        );
        let rows_emitted = counter(
            "weir_view_rows_emitted_total",
            "Rows emitted by a view.",
            "view",
        );
        let sink_messages = counter(
            "weir_sink_messages_total",
            "Messages a sink wrote (again after a crash, for at-least-once delivery).",
            "sink",
        );
        let sink_failures = counter(
            "weir_sink_failed_deliveries_total",
            "Deliveries of a sink that failed and are retried.",
            "sink",
        );
        // Latencies from half a millisecond to seconds.
        let latency = |name: &str, help: &str, label: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
                &[label],
            )
            .expect("valid metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("metric registered once");
            h
        };
        let batch_latency = latency(
            "weir_batch_latency_seconds",
            "Time from a micro-batch's first row until its processing finished (per chunk \
             when its queued chunks go through one by one).",
            "source",
        );
        let end_to_end_latency = latency(
            "weir_end_to_end_latency_seconds",
            "Time from a micro-batch's first record received until a view published \
             the change it made (a window closed by the batch's watermark included).",
            "view",
        );
        let watermark = IntGaugeVec::new(
            Opts::new("weir_watermark_ms", "Current watermark of a source."),
            &["source"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(watermark.clone()))
            .expect("metric registered once");
        let source_lag = IntGaugeVec::new(
            Opts::new(
                "weir_source_lag",
                "Records of a source's partition not read yet (the log's end less the position).",
            ),
            &["source", "partition"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(source_lag.clone()))
            .expect("metric registered once");
        let shards = ShardMetrics::register(&registry);
        let checkpoint_duration = Histogram::with_opts(
            HistogramOpts::new(
                "weir_checkpoint_duration_seconds",
                "Time to take and write a checkpoint.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric definition");
        let checkpoint_bytes = IntGauge::new(
            "weir_checkpoint_bytes",
            "Bytes of the last checkpoint written.",
        )
        .expect("valid metric definition");
        let checkpoints = IntCounter::new("weir_checkpoints_total", "Checkpoints written.")
            .expect("valid metric definition");
        let checkpoint_failures = IntCounter::new(
            "weir_checkpoint_failures_total",
            "Checkpoints that could not be written.",
        )
        .expect("valid metric definition");
        for m in [
            Box::new(checkpoint_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(checkpoint_bytes.clone()),
            Box::new(checkpoints.clone()),
            Box::new(checkpoint_failures.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        Self {
            checkpoint_duration,
            checkpoint_bytes,
            checkpoints,
            checkpoint_failures,
            registry,
            records_in,
            batches,
            batch_latency,
            dead_letters,
            late_rows,
            rows_emitted,
            end_to_end_latency,
            watermark,
            source_lag,
            shards,
            latency_samples: Mutex::new(None),
            sink_messages,
            sink_failures,
        }
    }

    /// The series of view `name`.
    pub fn view(&self, name: &str) -> ViewMetrics {
        ViewMetrics {
            late_rows: self.late_rows.with_label_values(&[name]),
            rows_emitted: self.rows_emitted.with_label_values(&[name]),
            end_to_end_latency: self.end_to_end_latency.with_label_values(&[name]),
            latency_samples: self.latency_samples.lock().as_mut().map(|views| {
                let samples = views.entry(name.to_string()).or_default();
                samples.lock().clear();
                samples.clone()
            }),
        }
    }

    /// From now on, views created keep every change's end-to-end latency as well as
    /// counting it in the histogram (for exact percentiles; memory grows with changes,
    /// so only `weir bench` asks).
    pub fn keep_latency_samples(&self) {
        self.latency_samples.lock().get_or_insert_with(HashMap::new);
    }

    /// The end-to-end latencies (seconds) of view `name`'s changes, as published, if
    /// they were kept.
    pub fn latency_samples(&self, name: &str) -> Option<Vec<f64>> {
        let views = self.latency_samples.lock();
        Some(views.as_ref()?.get(name)?.lock().clone())
    }

    /// Series of a view that `/metrics` does not show (a console preview).
    pub fn unlisted_view() -> ViewMetrics {
        let counter = || prometheus::IntCounter::new("unlisted", "unlisted").expect("valid name");
        let histogram = prometheus::HistogramOpts::new("unlisted", "unlisted");
        ViewMetrics {
            late_rows: counter(),
            rows_emitted: counter(),
            end_to_end_latency: prometheus::Histogram::with_opts(histogram).expect("valid name"),
            latency_samples: None,
        }
    }

    /// Drop view `name`'s series: a view of the same name later starts from zero.
    pub fn forget_view(&self, name: &str) {
        let _ = self.late_rows.remove_label_values(&[name]);
        let _ = self.rows_emitted.remove_label_values(&[name]);
        let _ = self.end_to_end_latency.remove_label_values(&[name]);
        if let Some(views) = self.latency_samples.lock().as_mut() {
            views.remove(name);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// One view's series (see [`Metrics`]).
pub struct ViewMetrics {
    pub late_rows: IntCounter,
    pub rows_emitted: IntCounter,
    pub end_to_end_latency: Histogram,
    pub latency_samples: Option<LatencySamples>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
