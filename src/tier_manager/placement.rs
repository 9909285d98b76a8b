//! The pins as resolved to the files they cover, and how often the planner runs.

use crate::model::version::FileVersion;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tierfs_policy::Tier;

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
