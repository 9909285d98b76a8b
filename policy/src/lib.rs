//! Pure placement policy of tierfs: functions from what the tiers hold, their
//! budgets and the time to what should move. No I/O and no runtime, so every
//! decision can be tested and simulated on its own.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod demotion;
pub mod eviction;
pub mod planner;
pub mod readahead;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stats;
pub mod tier;

pub use demotion::{CachedFile, DemoteReason, DemoteRule, files_to_demote};
pub use eviction::{bytes_to_free, lru_victims};
pub use planner::{Action, Budgets, Candidate, Move, PlanConfig, Priority, Reason, plan};
pub use readahead::{ReadaheadPlan, ReadaheadState, page_cache_behind, plan_readahead};
pub use stats::{AccessStats, Decay};
pub use tier::{Tier, UnknownTier};
