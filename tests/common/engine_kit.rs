//! Engines without FUSE for the engine tests: on a local directory as the
//! store, with small chunks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tierfs::engine::{EngineConfig, EngineCore};
use tierfs::model::options::MountOptions;
use tierfs::namespace::ROOT_INO;
use tierfs::store::StoreClient;

pub const CHUNK: u64 = 64 << 10;

pub fn options(ttl: Duration) -> MountOptions {
    MountOptions {
        chunk_size: CHUNK,
        metadata_ttl: ttl,
        fetch_timeout: Duration::from_secs(2),
        fetch_retries: 0,
        // Off unless a test is about it: a handover after a test's close would
        // change what its next open is offered.
        page_cache_handover: Duration::ZERO,
        ..MountOptions::default()
    }
}

pub fn config(store_dir: &std::path::Path, cache: &std::path::Path, ttl: Duration) -> EngineConfig {
    EngineConfig {
        store: StoreClient::local(store_dir).unwrap(),
        store_id: format!("file://{}", store_dir.display()),
        cache_dir: cache.to_path_buf(),
        options: options(ttl),
    }
}

pub fn core(
    store_dir: &std::path::Path,
    cache: &std::path::Path,
    ttl: Duration,
) -> Arc<EngineCore> {
    EngineCore::start(config(store_dir, cache, ttl)).unwrap()
}

/// Starts an engine on a cache that an engine dropped just before used. Its
/// background work (an NVMe write, a mover tick) may still hold the chunk index
/// for a moment, and the index's lock refuses a second engine until it lets go.
pub async fn restarted_core(
    store_dir: &std::path::Path,
    cache: &std::path::Path,
    ttl: Duration,
) -> Arc<EngineCore> {
    for _ in 0..500 {
        match EngineCore::start(config(store_dir, cache, ttl)) {
            Ok(core) => return core,
            Err(e) if e.to_string().contains("LOCK") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("restart: {e}"),
        }
    }
    panic!("the dropped engine never let go of the chunk index");
}

pub fn range_reads(core: &EngineCore) -> u64 {
    core.reader()
        .nvme()
        .stats
        .range_reads
        .load(Ordering::Relaxed)
}

pub async fn open_path(core: &EngineCore, path: &str) -> u64 {
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        ino = core
            .lookup(ino, part)
            .await
            .unwrap_or_else(|e| panic!("lookup {part} in {path}: {e}"))
            .ino;
    }
    core.open(ino, false, false).await.unwrap().fh
}

pub async fn wait_for_nvme(core: &EngineCore, bytes: u64) {
    for _ in 0..500 {
        if core.reader().nvme().used() >= bytes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "NVMe tier holds {} bytes, expected {bytes}",
        core.reader().nvme().used()
    );
}

pub fn core_with(
    store_dir: &std::path::Path,
    cache: &std::path::Path,
    tune: impl FnOnce(&mut MountOptions),
) -> Arc<EngineCore> {
    let mut config = config(store_dir, cache, Duration::from_secs(60));
    tune(&mut config.options);
    EngineCore::start(config).unwrap()
}
