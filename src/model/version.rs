//! Names of object versions and their chunks, as every tier and table uses them.

use std::collections::HashSet;
use std::sync::Arc;

use object_store::path::Path;

/// One version of one object in one store, as the NVMe tier names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u128);

impl FileId {
    /// Everything that makes cached bytes valid goes into the id: a new ETag or a
    /// new chunk size is a new file, so stale chunks can never be served for it.
    pub fn new(store: &str, key: &str, version: &str, chunk_size: u64) -> FileId {
        let text = format!("{store}\0{key}\0{version}\0{chunk_size}");
        FileId(xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
    }

    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// A chunk of one file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    pub file: FileId,
    pub index: u64,
}

/// One version of one object, as reads see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    pub path: Path,
    pub id: FileId,
    pub size: u64,
    pub etag: Option<String>,
}

/// Which versions open handles read: the seam through which version keeping,
/// uploads and demotion ask the engine's handle table, without calling back
/// into the engine.
pub trait OpenVersions: Send + Sync {
    /// The versions open handles read.
    fn open_versions(&self) -> HashSet<FileId>;

    /// Whether a handle reads version `id`.
    fn is_open(&self, id: FileId) -> bool;

    /// The versions of the object at `key` that open handles read.
    fn open_versions_of(&self, key: &str) -> Vec<Arc<FileVersion>>;
}
