//! Pure placement policy of tierfs: functions from what the tiers hold, their
//! budgets and the time to what should move. No I/O and no runtime, so every
//! decision can be tested and simulated on its own.

pub mod demotion;
pub mod eviction;
pub mod planner;
pub mod readahead;
pub mod sim;
pub mod stats;

pub use demotion::{CachedFile, DemoteReason, DemoteRule, files_to_demote};
pub use eviction::{bytes_to_free, lru_victims};
pub use planner::{Action, Budgets, Candidate, Move, PlanConfig, Priority, Reason, Tier, plan};
pub use readahead::{ReadaheadPlan, ReadaheadState, page_cache_behind, plan_readahead};
pub use stats::{AccessStats, Decay};
