//! The control API (server and client), the status report and Prometheus metrics.

pub mod client;
pub mod metrics;
pub mod server;
pub mod status;
