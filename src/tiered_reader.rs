//! The read path: for each chunk of a range, RAM, then NVMe (digest checked), then a
//! ranged GET from the object store. Concurrent misses of one chunk share one fetch;
//! a fetched chunk is kept in RAM and written to NVMe in the background.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use parking_lot::Mutex;

use crate::chunk::ChunkLayout;
use crate::chunk_index::{ChunkKey, FileId};
use crate::error::{FsError, FsResult};
use crate::nvme_tier::{NvmeTier, digest};

/// One version of one object, as reads see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    pub path: Path,
    pub id: FileId,
    pub size: u64,
    pub etag: Option<String>,
}

/// Counters of the read path.
#[derive(Debug, Default)]
pub struct ReadStats {
    pub ram_hits: AtomicU64,
    pub store_fetches: AtomicU64,
    pub store_bytes: AtomicU64,
    pub shared_fetches: AtomicU64,
}

type ChunkFuture = Shared<BoxFuture<'static, FsResult<Bytes>>>;

pub struct TieredReader {
    store: Arc<dyn ObjectStore>,
    ram: moka::sync::Cache<ChunkKey, Bytes>,
    nvme: Arc<NvmeTier>,
    chunk_size: u64,
    fetch_timeout: Duration,
    inflight: Mutex<HashMap<ChunkKey, ChunkFuture>>,
    pub stats: ReadStats,
}

impl TieredReader {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        nvme: Arc<NvmeTier>,
        ram_size: u64,
        chunk_size: u64,
        fetch_timeout: Duration,
    ) -> Arc<TieredReader> {
        let ram = moka::sync::Cache::builder()
            .max_capacity(ram_size)
            .weigher(|_k: &ChunkKey, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
            .build();
        Arc::new(TieredReader {
            store,
            ram,
            nvme,
            chunk_size,
            fetch_timeout,
            inflight: Mutex::new(HashMap::new()),
            stats: ReadStats::default(),
        })
    }

    pub fn nvme(&self) -> &NvmeTier {
        &self.nvme
    }

    /// Bytes held by the RAM tier.
    pub fn ram_used(&self) -> u64 {
        self.ram.run_pending_tasks();
        self.ram.weighted_size()
    }

    /// Reads `[offset, offset + len)` of a file, clipped to its size.
    pub async fn read(
        self: &Arc<Self>,
        file: &Arc<FileVersion>,
        offset: u64,
        len: u64,
    ) -> FsResult<Bytes> {
        let layout = ChunkLayout::new(self.chunk_size, file.size);
        let slices = layout.slices(offset, len);
        let chunks = futures::future::try_join_all(
            slices
                .iter()
                .map(|s| self.chunk(file, s.index, layout.chunk_len(s.index))),
        )
        .await?;
        if let ([slice], [chunk]) = (&slices[..], &chunks[..]) {
            return Ok(chunk.slice(slice.start..slice.start + slice.len));
        }
        let mut out = BytesMut::with_capacity(slices.iter().map(|s| s.len).sum());
        for (slice, chunk) in slices.iter().zip(&chunks) {
            out.extend_from_slice(&chunk[slice.start..slice.start + slice.len]);
        }
        Ok(out.freeze())
    }

    /// One whole chunk from the nearest tier that has it.
    pub async fn chunk(
        self: &Arc<Self>,
        file: &Arc<FileVersion>,
        index: u64,
        len: u64,
    ) -> FsResult<Bytes> {
        let key = ChunkKey {
            file: file.id,
            index,
        };
        if let Some(bytes) = self.ram.get(&key) {
            self.stats.ram_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(bytes);
        }
        let shared = {
            let mut inflight = self.inflight.lock();
            if let Some(existing) = inflight.get(&key) {
                self.stats.shared_fetches.fetch_add(1, Ordering::Relaxed);
                existing.clone()
            } else {
                let this = self.clone();
                let file = file.clone();
                let fut = async move {
                    let result = this.load(&file, key, len).await;
                    this.inflight.lock().remove(&key);
                    result
                }
                .boxed()
                .shared();
                inflight.insert(key, fut.clone());
                fut
            }
        };
        // Run the shared fetch on the runtime so that it finishes, and the NVMe
        // copy gets written, even if this reader gives up on it.
        tokio::spawn(shared.clone());
        shared.await
    }

    async fn load(
        self: &Arc<Self>,
        file: &FileVersion,
        key: ChunkKey,
        len: u64,
    ) -> FsResult<Bytes> {
        let nvme = self.nvme.clone();
        let cached = tokio::task::spawn_blocking(move || nvme.read(&key))
            .await
            .map_err(|e| FsError::Cache(e.to_string()))?;
        match cached {
            Ok(Some(bytes)) if bytes.len() as u64 == len => {
                self.ram.insert(key, bytes.clone());
                return Ok(bytes);
            }
            Ok(_) => {}
            // The near tier failing must not fail the read: the store has the bytes.
            Err(e) => tracing::warn!("NVMe tier read failed, fetching from the store: {e}"),
        }
        let bytes = self.fetch(file, key.index, len).await?;
        self.ram.insert(key, bytes.clone());
        let nvme = self.nvme.clone();
        let copy = bytes.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = nvme.write(&key, &copy, digest(&copy)) {
                tracing::warn!("could not keep chunk on NVMe: {e}");
            }
        });
        Ok(bytes)
    }

    async fn fetch(&self, file: &FileVersion, index: u64, len: u64) -> FsResult<Bytes> {
        let start = index * self.chunk_size;
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..start + len)),
            if_match: file.etag.clone(),
            ..GetOptions::default()
        };
        let get = async {
            let result = self.store.get_opts(&file.path, options).await?;
            result.bytes().await
        };
        let bytes = tokio::time::timeout(self.fetch_timeout, get)
            .await
            .map_err(|_| FsError::Timeout(self.fetch_timeout))?
            .map_err(FsError::from_store)?;
        if bytes.len() as u64 != len {
            return Err(FsError::Stale(format!(
                "{}: expected {len} bytes of chunk {index}, the store sent {}",
                file.path,
                bytes.len()
            )));
        }
        self.stats.store_fetches.fetch_add(1, Ordering::Relaxed);
        self.stats.store_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Forgets every RAM chunk of a file version.
    pub fn drop_from_ram(&self, file: FileId, chunks: u64) {
        for index in 0..chunks {
            self.ram.invalidate(&ChunkKey { file, index });
        }
    }
}
