//! Latency histograms that operations feed as they happen; the control API
//! renders them for Prometheus.

use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

type Labels = Vec<(String, String)>;

/// 100 µs to about 26 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// Latency of FUSE operations, by operation.
#[derive(Debug, Clone)]
pub struct FuseLatency {
    pub(crate) ops: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for FuseLatency {
    fn default() -> Self {
        FuseLatency {
            ops: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl FuseLatency {
    pub fn observe(&self, op: &'static str, took: Duration) {
        self.ops
            .get_or_create(&vec![("op".to_string(), op.to_string())])
            .observe(took.as_secs_f64());
    }
}
