//! The one RocksDB under `cache_dir`: the chunk index and the tables of the other subsystems.

pub mod chunk_index;
