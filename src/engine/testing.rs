//! What the engine's unit tests share: an engine without FUSE over a local
//! directory as the store, with small chunks, and the few steps every test
//! takes (put an object, find a path, open, write and seal a file).

use std::sync::Arc;
use std::time::Duration;

use crate::engine::{EngineConfig, EngineCore};
use crate::model::options::{Durability, MountOptions};
use crate::namespace::{Node, ROOT_INO};
use crate::store::StoreClient;
use tierfs_fuse::Creator;

pub const CHUNK: u64 = 64 << 10;

/// The caller the tests create files as: root, with the usual umask.
pub const ME: Creator = Creator {
    uid: 0,
    gid: 0,
    mode: 0o644,
};

pub struct EngineFixture {
    pub core: Arc<EngineCore>,
    /// Shared with the fixture's other mounts (see [`Self::another_mount`]).
    pub store: Arc<tempfile::TempDir>,
    _cache: tempfile::TempDir,
}

impl EngineFixture {
    /// An engine with the test options.
    pub fn new() -> EngineFixture {
        EngineFixture::with(|_| {})
    }

    /// An engine with the test options as `tune` changes them.
    pub fn with(tune: impl FnOnce(&mut MountOptions)) -> EngineFixture {
        EngineFixture::over(Arc::new(tempfile::tempdir().unwrap()), tune)
    }

    /// A second engine on the same store with a cache of its own: what
    /// another mount (or this one after losing its cache) sees.
    pub fn another_mount(&self, tune: impl FnOnce(&mut MountOptions)) -> EngineFixture {
        EngineFixture::over(self.store.clone(), tune)
    }

    fn over(store: Arc<tempfile::TempDir>, tune: impl FnOnce(&mut MountOptions)) -> EngineFixture {
        let cache = tempfile::tempdir().unwrap();
        let mut options = MountOptions {
            chunk_size: CHUNK,
            fetch_timeout: Duration::from_secs(2),
            fetch_retries: 0,
            // A handover after a test's close would change what its next open
            // is offered.
            page_cache_handover: Duration::ZERO,
            // An fsync returns once the file is in the store.
            durability: Durability::Remote,
            ..MountOptions::default()
        };
        tune(&mut options);
        let core = EngineCore::start(EngineConfig {
            store: StoreClient::local(store.path()).unwrap(),
            store_id: format!("file://{}", store.path().display()),
            cache_dir: cache.path().to_path_buf(),
            options,
        })
        .unwrap();
        EngineFixture {
            core,
            store,
            _cache: cache,
        }
    }

    /// Puts `data` at `key` in the store, behind the engine's back.
    pub fn put(&self, key: &str, data: &[u8]) {
        let path = self.store.path().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    /// The bytes at `key` in the store, if any.
    pub fn stored(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.store.path().join(key)).ok()
    }

    /// The node at `path` (`a/b/c`), looked up a name at a time.
    pub async fn node(&self, path: &str) -> Node {
        let mut node = self.core.node(ROOT_INO).unwrap();
        for part in path.split('/') {
            node = self
                .core
                .lookup(node.ino, part)
                .await
                .unwrap_or_else(|e| panic!("lookup {part} in {path}: {e}"));
        }
        node
    }

    /// Opens `path` for reading; returns the handle.
    pub async fn open(&self, path: &str) -> u64 {
        let ino = self.node(path).await.ino;
        self.core.open(ino, false, false).await.unwrap().fh
    }

    /// Creates `name` in the directory `parent`, writes `data` and fsyncs it,
    /// which seals and uploads it (with the fixture's durability); returns
    /// the file's node.
    pub async fn write_file(&self, parent: u64, name: &str, data: &[u8]) -> Node {
        self.write_file_as(parent, name, data, ME).await
    }

    /// [`Self::write_file`] as `creator`.
    pub async fn write_file_as(
        &self,
        parent: u64,
        name: &str,
        data: &[u8],
        creator: Creator,
    ) -> Node {
        let (node, staged) = self.core.create(parent, name, creator).await.unwrap();
        let opened = self.core.add_staged_handle(node.ino, staged, true).unwrap();
        let staged = self.core.writable_handle(opened.fh).unwrap();
        assert_eq!(
            self.core.write_staged(&staged, 0, data).unwrap() as usize,
            data.len()
        );
        self.core.fsync(opened.fh).await.unwrap();
        self.core.flush(opened.fh).await.unwrap();
        self.core.release(opened.fh);
        self.settled().await;
        self.core.node(node.ino).unwrap()
    }

    /// Waits until every file written through the engine is uploaded and
    /// adopted by the cache.
    pub async fn settled(&self) {
        for _ in 0..1000 {
            if self.core.dirty_bytes() == 0 && self.core.pending_uploads() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} bytes still not uploaded", self.core.dirty_bytes());
    }
}

/// The errno of a failed result, for asserts.
pub fn errno<T>(result: crate::error::FsResult<T>) -> i32 {
    match result {
        Ok(_) => panic!("the operation should fail"),
        Err(e) => e.errno().0,
    }
}
