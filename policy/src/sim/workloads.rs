//! Synthetic checkpoint workloads, each with the tier sizes it is judged at.
//! Deterministic: the same scale gives the same trace.
//!
//! - `fleet`: an inference fleet restoring models of 1 to 4 GiB, one restore a
//!   minute, model popularity Zipf-distributed (s = 1.1), each restore reading
//!   its whole file.
//! - `training`: a job writing a 6 GiB checkpoint every 30 minutes; an evaluator
//!   reads each new checkpoint 10 minutes later; every 12th checkpoint the job
//!   fails and restores from the newest one.
//! - `scan`: eight 1 GiB models read in turn every 30 seconds, and halfway a
//!   48 GiB new checkpoint read once from start to end.

use rand::{Rng, SeedableRng};

use super::TraceEvent;

const GIB: u64 = 1 << 30;

/// A workload and the capacities of the RAM and NVMe tiers it runs against.
pub struct Workload {
    pub name: &'static str,
    pub events: Vec<TraceEvent>,
    pub ram: u64,
    pub nvme: u64,
}

fn whole(time: u64, file: String, size: u64) -> TraceEvent {
    TraceEvent {
        time,
        file,
        offset: 0,
        length: size,
        size,
    }
}

/// Every workload; `scale` (0 < scale <= 1) shrinks sizes and counts for a quick run.
pub fn all(scale: f64) -> Vec<Workload> {
    vec![fleet(scale), training(scale), scan(scale)]
}

fn scaled(v: u64, scale: f64) -> u64 {
    ((v as f64 * scale) as u64).max(1)
}

pub fn fleet(scale: f64) -> Workload {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let models = scaled(40, scale.sqrt()) as usize;
    let sizes: Vec<u64> = (0..models)
        .map(|_| scaled(rng.random_range(GIB..=4 * GIB), scale))
        .collect();
    let weights: Vec<f64> = (1..=models).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
    let total: f64 = weights.iter().sum();
    let events = (0..scaled(1000, scale.sqrt()))
        .map(|i| {
            let mut pick = rng.random::<f64>() * total;
            let mut model = 0;
            while model + 1 < models && pick >= weights[model] {
                pick -= weights[model];
                model += 1;
            }
            whole(i * 60, format!("model-{model}"), sizes[model])
        })
        .collect();
    Workload {
        name: "fleet",
        events,
        ram: scaled(8 * GIB, scale),
        nvme: scaled(32 * GIB, scale),
    }
}

pub fn training(scale: f64) -> Workload {
    let size = scaled(6 * GIB, scale);
    let mut events = Vec::new();
    for step in 0..scaled(100, scale.sqrt()) {
        let t = step * 1800;
        let name = format!("ckpt-{step}");
        events.push(whole(t, name.clone(), size));
        events.push(whole(t + 600, name.clone(), size));
        if step % 12 == 11 {
            events.push(whole(t + 900, name, size));
        }
    }
    Workload {
        name: "training",
        events,
        ram: scaled(8 * GIB, scale),
        nvme: scaled(24 * GIB, scale),
    }
}

pub fn scan(scale: f64) -> Workload {
    let model = scaled(GIB, scale);
    let big = scaled(48 * GIB, scale);
    let mut events = Vec::new();
    let rounds = scaled(240, scale.sqrt());
    for round in 0..rounds {
        let t = round * 30;
        for m in 0..8 {
            events.push(whole(t, format!("hot-{m}"), model));
        }
        if round == rounds / 2 {
            events.push(whole(t + 1, "new-checkpoint".into(), big));
        }
    }
    Workload {
        name: "scan",
        events,
        ram: scaled(10 * GIB, scale),
        nvme: scaled(20 * GIB, scale),
    }
}
