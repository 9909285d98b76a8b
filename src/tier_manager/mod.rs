//! The tier manager: pins, access statistics, the job queue, the mover and demotion.

pub mod access;
pub mod demotion;
pub mod job_queue;
pub mod manager;
pub mod mover;
pub mod pins;
pub mod placement;
