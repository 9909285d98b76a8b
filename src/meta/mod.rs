//! The one RocksDB under `cache_dir` as typed tables ([`db::MetaDb`]), and the
//! chunk index that owns the chunk and version tables. Nobody outside this
//! folder touches RocksDB itself.

pub mod chunk_index;
pub mod db;
