//! The status of a mount, as the control API answers it and `tierfs status`
//! prints it.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::model::tier::Tier;
use serde::{Deserialize, Serialize};

use crate::control::metrics::load;
use crate::engine::EngineCore;
use crate::model::units::format_size;
use crate::tier_manager::job_queue::JobState;
use crate::tiers::ram::HoldKind;
use crate::write::report::UploadReport;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierStatus {
    pub name: String,
    pub budget: u64,
    pub used: u64,
    pub pinned: u64,
    pub hits: u64,
    pub misses: u64,
}

impl TierStatus {
    /// Hits over lookups, when there were any.
    pub fn hit_ratio(&self) -> Option<f64> {
        let all = self.hits + self.misses;
        (all > 0).then(|| self.hits as f64 / all as f64)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub fetches: u64,
    pub fetched_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoverStatus {
    pub queued: u64,
    pub running: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub verify_failures: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinStatus {
    pub path: String,
    pub tier: String,
}

/// A file's access statistics, as the planner sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileStatus {
    pub path: String,
    pub reads: u64,
    /// Decayed reads as of now.
    pub frequency: f64,
    pub last_read: u64,
}

/// The files listed in a status, hottest first.
const HOT_FILES: usize = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub tiers: Vec<TierStatus>,
    pub store: StoreStatus,
    pub mover: MoverStatus,
    pub uploads: UploadReport,
    pub readahead_resets: u64,
    pub pins: Vec<PinStatus>,
    pub hot_files: Vec<FileStatus>,
}

impl EngineCore {
    pub fn status(&self) -> Status {
        let reader = self.reader();
        let nvme = reader.nvme();
        let mover = &self.manager().jobs;
        let jobs = mover.jobs();
        let count = |state: JobState| jobs.iter().filter(|j| j.state == state).count() as u64;
        Status {
            tiers: vec![
                TierStatus {
                    name: "ram".into(),
                    budget: reader.ram().capacity(),
                    used: reader.ram_used(),
                    pinned: reader.ram().reserved(HoldKind::Pin),
                    hits: load(&reader.stats.ram_hits),
                    misses: load(&reader.stats.ram_misses),
                },
                TierStatus {
                    name: "nvme".into(),
                    budget: nvme.budget(),
                    used: nvme.used() + self.dirty_bytes(),
                    pinned: self.manager().pinned_bytes(Tier::Nvme, None),
                    hits: load(&nvme.stats.hits),
                    misses: load(&nvme.stats.misses),
                },
            ],
            store: StoreStatus {
                fetches: load(&reader.stats.store_fetches),
                fetched_bytes: load(&reader.stats.store_bytes),
            },
            mover: MoverStatus {
                queued: count(JobState::Queued),
                running: count(JobState::Running),
                bytes_up: mover.stats.bytes_up.load(Ordering::Relaxed),
                bytes_down: mover.stats.bytes_down.load(Ordering::Relaxed),
                verify_failures: mover.stats.verify_failures.load(Ordering::Relaxed),
            },
            uploads: self.writes().report(),
            readahead_resets: load(&self.stats.readahead_resets),
            pins: self
                .manager()
                .pins
                .all()
                .into_iter()
                .map(|(path, tier)| PinStatus {
                    path: format!("/{path}"),
                    tier: tier.name().into(),
                })
                .collect(),
            hot_files: self.hot_files(),
        }
    }

    fn hot_files(&self) -> Vec<FileStatus> {
        let now = crate::model::clock::now_secs();
        let decay = self.access().decay();
        let mut files: Vec<FileStatus> = self
            .access()
            .live(now)
            .into_iter()
            .map(|(path, a)| FileStatus {
                path: format!("/{path}"),
                reads: a.stats.hits,
                frequency: a.stats.frequency_at(now, decay),
                last_read: a.stats.last_access,
            })
            .collect();
        files.sort_by(|a, b| {
            b.frequency
                .total_cmp(&a.frequency)
                .then(a.path.cmp(&b.path))
        });
        files.truncate(HOT_FILES);
        files
    }
}

impl Status {
    /// A table for people.
    pub fn render(&self, mountpoint: &str) -> String {
        let mut out = format!("tierfs at {mountpoint}\n\n");
        let _ = writeln!(
            out,
            "{:<6} {:>12} {:>12} {:>12} {:>10}",
            "TIER", "BUDGET", "USED", "PINNED", "HIT RATIO"
        );
        for t in &self.tiers {
            let ratio = t
                .hit_ratio()
                .map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0));
            let _ = writeln!(
                out,
                "{:<6} {:>12} {:>12} {:>12} {:>10}",
                t.name,
                format_size(t.budget),
                format_size(t.used),
                format_size(t.pinned),
                ratio
            );
        }
        let _ = writeln!(
            out,
            "\nstore: {} fetched in {} requests",
            format_size(self.store.fetched_bytes),
            self.store.fetches
        );
        let _ = writeln!(
            out,
            "mover: {} queued, {} running; {} moved up, {} down; {} failed verification",
            self.mover.queued,
            self.mover.running,
            format_size(self.mover.bytes_up),
            format_size(self.mover.bytes_down),
            self.mover.verify_failures
        );
        let _ = writeln!(out, "{}", self.uploads);
        if !self.hot_files.is_empty() {
            out.push_str("hot files:\n");
            for f in &self.hot_files {
                let _ = writeln!(out, "  {:>6.1} ({} reads) {}", f.frequency, f.reads, f.path);
            }
        }
        if self.pins.is_empty() {
            out.push_str("pins: none\n");
        } else {
            out.push_str("pins:\n");
            for pin in &self.pins {
                let _ = writeln!(out, "  {:<6} {}", pin.tier, pin.path);
            }
        }
        out
    }
}
