//! The write path: staging files, the write registry, the uploader and its jobs.

pub mod path;
pub mod registry;
pub mod report;
pub mod staging;
pub mod upload_jobs;
pub mod uploader;
