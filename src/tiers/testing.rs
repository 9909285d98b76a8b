//! What the tests of the tiers and of their users share: a tiered reader over
//! a temporary cache directory and an in-memory store, and a set of open
//! versions.

use std::collections::HashSet;
use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;

use crate::meta::chunk_index::ChunkIndex;
use crate::meta::db::MetaDb;
use crate::model::options::MountOptions;
use crate::model::tier::Tier;
use crate::model::version::{FileId, FileVersion, OpenVersions};
use crate::tiers::nvme::NvmeTier;
use crate::tiers::reader::TieredReader;

pub const CHUNK: u64 = 4096;

/// A reader with 4 KiB chunks over `dir` and `store`, with the database its
/// chunk index is in.
pub fn reader_over(
    dir: &std::path::Path,
    store: Arc<dyn ObjectStore>,
) -> (Arc<TieredReader>, Arc<ChunkIndex>, Arc<MetaDb>) {
    let meta = Arc::new(MetaDb::open(&dir.join("index")).unwrap());
    let index = Arc::new(ChunkIndex::new(meta.clone()));
    let nvme = NvmeTier::open(dir, index.clone(), CHUNK, 1 << 20, 0, Arc::default()).unwrap();
    let options = MountOptions {
        chunk_size: CHUNK,
        ..MountOptions::default()
    };
    (
        TieredReader::new(store, Arc::new(nvme), &options),
        index,
        meta,
    )
}

/// A reader over a temporary directory and an in-memory store.
pub struct Fixture {
    pub store: Arc<InMemory>,
    pub reader: Arc<TieredReader>,
    pub index: Arc<ChunkIndex>,
    pub meta: Arc<MetaDb>,
    _dir: tempfile::TempDir,
}

impl Default for Fixture {
    fn default() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        let (reader, index, meta) = reader_over(dir.path(), store.clone());
        Fixture {
            store,
            reader,
            index,
            meta,
            _dir: dir,
        }
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::default()
    }

    /// An object of `size` bytes, version v1, in the store (not fetched).
    pub async fn object(&self, key: &str, size: u64) -> Arc<FileVersion> {
        stored(&self.store, key, "v1", size).await
    }
}

/// Puts `size` bytes at `key` in the store as version `tag`, and returns that
/// version (nothing is fetched yet).
pub async fn stored(store: &InMemory, key: &str, tag: &str, size: u64) -> Arc<FileVersion> {
    let path = Path::from(key);
    store
        .put(&path, vec![7u8; size as usize].into())
        .await
        .unwrap();
    Arc::new(FileVersion {
        path,
        id: FileId::new("test", key, tag, CHUNK),
        size,
        etag: None,
    })
}

/// Fetches every chunk of `version` onto NVMe.
pub async fn fetch_to_nvme(reader: &Arc<TieredReader>, version: &Arc<FileVersion>) {
    for index in 0..version.size.div_ceil(CHUNK) {
        reader.chunk_into(Tier::Nvme, version, index).await.unwrap();
    }
}

/// The versions a test says are open.
#[derive(Default)]
pub struct OpenSet(pub Mutex<Vec<Arc<FileVersion>>>);

impl OpenVersions for OpenSet {
    fn open_versions(&self) -> HashSet<FileId> {
        self.0.lock().iter().map(|v| v.id).collect()
    }

    fn is_open(&self, id: FileId) -> bool {
        self.open_versions().contains(&id)
    }

    fn open_versions_of(&self, key: &str) -> Vec<Arc<FileVersion>> {
        let open = self.0.lock();
        open.iter()
            .filter(|v| v.path.as_ref() == key)
            .cloned()
            .collect()
    }
}
