//! The tier manager's state: pins resolved to the files they cover, the job
//! queue and the mover, and how often the planner runs.

use crate::model::version::FileVersion;
use crate::tier_manager::demotion::Demoter;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tierfs_policy::{PlanConfig, Tier};

use crate::tier_manager::job_queue::JobQueue;
use crate::tier_manager::mover::Mover;

use crate::tier_manager::pins::PinTable;

/// Pins are resolved again at least this often, to see files others added.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(60);
/// A move that failed is not asked for again for this long.
pub const RETRY_AFTER_SECS: u64 = 10;
/// How often the planner runs when nothing wakes the mover.
pub const TICK: Duration = Duration::from_secs(1);

/// A file a pin covers, at the version resolved last.
#[derive(Debug, Clone)]
pub struct PinnedFile {
    pub tier: Tier,
    pub version: Arc<FileVersion>,
    /// The whole-file digest, when the store's metadata has it.
    pub digest: Option<u128>,
    /// Holds an NVMe hold for the pin (so that eviction passes it by).
    pub nvme_held: bool,
}

#[derive(Default)]
pub struct Placement {
    pub pinned: Mutex<HashMap<String, PinnedFile>>,
    /// Pins or the files below them changed: resolve again at the next tick.
    pub stale: AtomicBool,
    pub last_resolved: Mutex<Option<Instant>>,
}

/// The tier manager's state in the engine.
pub struct TierManager {
    pub pins: PinTable,
    pub jobs: Arc<JobQueue>,
    pub mover: Mover,
    pub demoter: Demoter,
    pub placement: Placement,
    pub plan_config: PlanConfig,
}
