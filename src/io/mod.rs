//! File I/O: positional reads and writes (io-uring), chunk buffers, memfd copies, rate limits.

pub mod blocking;
pub mod chunk_buffer;
pub mod chunk_file;
pub mod ram_file;
pub mod rate_limit;
