//! tierfs: checkpoints in an object store, shown as files, tiered over NVMe and RAM.

pub mod aws_profile;
pub mod chunk;
pub mod chunk_file;
pub mod chunk_index;
pub mod chunk_recency;
pub mod cli;
pub mod engine;
pub mod error;
pub mod fs_engine;
pub mod housekeeping;
pub mod mount;
pub mod namespace;
pub mod nvme_tier;
pub mod options;
pub mod size;
pub mod staging;
pub mod store;
pub mod tiered_reader;
pub mod upload_jobs;
pub mod uploader;
pub mod version_keeper;
pub mod write_ops;
pub mod write_passthrough;
pub mod write_path;
pub mod write_registry;
pub mod xattrs;
