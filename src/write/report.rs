//! The uploads' numbers as one report: the log line the housekeeping tick
//! writes when they change, and the `uploads` part of the status.

use std::sync::atomic::Ordering;

use crate::model::units::format_size;
use crate::write::path::WriteSide;

/// Pending, running and finished uploads, as one log line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadReport {
    pub pending: usize,
    pub in_flight: u64,
    pub failed_attempts: u64,
    pub completed: u64,
    pub bytes_uploaded: u64,
    pub dirty_bytes: u64,
}

impl std::fmt::Display for UploadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "uploads: {} pending, {} parts in flight, {} failed attempts, {} completed, {} uploaded; {} not yet in the store",
            self.pending,
            self.in_flight,
            self.failed_attempts,
            self.completed,
            format_size(self.bytes_uploaded),
            format_size(self.dirty_bytes)
        )
    }
}

impl WriteSide {
    pub fn report(&self) -> UploadReport {
        let stats = &self.uploader.stats;
        UploadReport {
            pending: self.pending_uploads(),
            in_flight: stats.in_flight.load(Ordering::Relaxed),
            failed_attempts: stats.failed_attempts.load(Ordering::Relaxed),
            completed: stats.completed.load(Ordering::Relaxed),
            bytes_uploaded: stats.bytes_uploaded.load(Ordering::Relaxed),
            dirty_bytes: self.dirty_bytes(),
        }
    }
}
