//! tierfs: checkpoints in an object store, shown as files, tiered over NVMe and RAM.
//!
//! Subsystems, dependencies flowing one way (cli → control → engine → tier_manager,
//! write → tiers, namespace, store → meta, io → model):

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod control;
pub mod engine;
pub mod error;
pub mod io;
pub mod meta;
pub mod model;
pub mod namespace;
pub mod store;
pub mod tier_manager;
pub mod tiers;
pub mod write;
