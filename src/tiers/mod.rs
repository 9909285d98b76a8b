//! The tiers: RAM, NVMe, the tiered reader over them and the store, and versions kept for open readers.

pub mod access;
pub mod kept_versions;
pub mod nvme;
pub mod ram;
pub mod reader;
#[cfg(test)]
pub mod testing;
