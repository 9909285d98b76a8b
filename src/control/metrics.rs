//! Prometheus metrics: the latency histograms (see [`crate::model::latency`]) and
//! the engine's counters and gauges read when `/metrics` is scraped.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::control::status::Status;
use crate::model::latency::FuseLatency;

type Labels = Vec<(String, String)>;

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

fn gauge(value: u64) -> ConstGauge {
    ConstGauge::new(value.try_into().unwrap_or(i64::MAX))
}

/// Per-tier values as one labelled family.
fn per_tier(values: impl IntoIterator<Item = (String, u64)>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for (tier, v) in values {
        family
            .get_or_create(&label("tier", &tier))
            .set(v.try_into().unwrap_or(i64::MAX));
    }
    family
}

/// The metrics in Prometheus text format.
pub fn render(status: &Status, fuse: &FuseLatency, fetch: &Histogram) -> String {
    let mut registry = Registry::with_prefix("tierfs");
    let tiers = &status.tiers;
    let each = |f: fn(&crate::control::status::TierStatus) -> u64| {
        per_tier(tiers.iter().map(|t| (t.name.clone(), f(t))))
    };
    registry.register(
        "tier_used_bytes",
        "Bytes held in each tier",
        each(|t| t.used),
    );
    registry.register(
        "tier_budget_bytes",
        "Bytes each tier may hold",
        each(|t| t.budget),
    );
    registry.register(
        "tier_pinned_bytes",
        "Bytes pinned to each tier",
        each(|t| t.pinned),
    );
    // Counters as families of gauges would lose their type: one family each.
    let hits = Family::<Labels, prometheus_client::metrics::counter::Counter>::default();
    let misses = Family::<Labels, prometheus_client::metrics::counter::Counter>::default();
    for t in tiers {
        hits.get_or_create(&label("tier", &t.name)).inc_by(t.hits);
        misses
            .get_or_create(&label("tier", &t.name))
            .inc_by(t.misses);
    }
    registry.register("tier_hits", "Chunks found in each tier", hits);
    registry.register(
        "tier_misses",
        "Chunks looked for and not found in each tier",
        misses,
    );
    registry.register(
        "store_fetched_bytes",
        "Bytes fetched from the object store",
        ConstCounter::new(status.store.fetched_bytes),
    );
    registry.register(
        "store_fetches",
        "Ranged GETs answered by the object store",
        ConstCounter::new(status.store.fetches),
    );
    registry.register(
        "fetch_latency_seconds",
        "Latency of ranged GETs from the object store",
        fetch.clone(),
    );
    registry.register(
        "fuse_op_latency_seconds",
        "Latency of FUSE operations served on the runtime, by operation",
        fuse.ops.clone(),
    );
    registry.register(
        "prefetch_resets",
        "Readahead windows closed by a seek",
        ConstCounter::new(status.readahead_resets),
    );
    registry.register(
        "mover_queue_depth",
        "Mover jobs queued or running",
        gauge(status.mover.queued + status.mover.running),
    );
    let moved = Family::<Labels, prometheus_client::metrics::counter::Counter>::default();
    moved
        .get_or_create(&label("direction", "up"))
        .inc_by(status.mover.bytes_up);
    moved
        .get_or_create(&label("direction", "down"))
        .inc_by(status.mover.bytes_down);
    registry.register(
        "mover_moved_bytes",
        "Bytes the mover moved, by direction",
        moved,
    );
    registry.register(
        "uploads_pending",
        "Files waiting for or in upload",
        gauge(status.uploads.pending as u64),
    );
    registry.register(
        "dirty_bytes",
        "Bytes written through the mount and not yet verified in the store",
        gauge(status.uploads.dirty_bytes),
    );
    registry.register(
        "uploaded_bytes",
        "Bytes uploaded to the object store",
        ConstCounter::new(status.uploads.bytes_uploaded),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Reads a counter of the engine.
pub fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
