//! Shared vocabulary, no I/O: chunk layout, digests, units, mount options.

pub mod chunk;
pub mod clock;
pub mod digest;
pub mod latency;
pub mod options;
pub mod paths;
pub mod posix;
pub mod tier;
pub mod tier_report;
pub mod units;
pub mod version;
