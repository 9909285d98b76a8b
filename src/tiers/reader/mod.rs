//! The read path: for each chunk of a range, RAM, then NVMe (digest checked), then a
//! ranged GET from the object store. Concurrent misses of one chunk share one fetch;
//! a fetched chunk is kept in RAM and written to NVMe in the background.

use crate::model::tier::Tier;
use crate::model::tier::no_gpu_tier;
use crate::model::version::ChunkKey;
use crate::model::version::FileId;
use crate::model::version::FileVersion;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use object_store::ObjectStore;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod fetch;
mod local_copies;
mod nvme_settle;

pub use local_copies::DiskRoom;

use crate::io::chunk_buffer::{BufferPool, ChunkBuffer};
use crate::model::chunk::ChunkLayout;

use crate::error::{FsError, FsResult};
use crate::io::blocking::run_blocking;
use crate::model::digest::digest;
use crate::model::latency::latency_histogram;
use crate::model::options::MountOptions;
use crate::tiers::nvme::NvmeTier;
use crate::tiers::ram::RamTier;
use prometheus_client::metrics::histogram::Histogram;

/// Counters of the read path.
#[derive(Debug, Default)]
pub struct ReadStats {
    pub ram_hits: AtomicU64,
    /// Chunks asked of the RAM tier that it did not have.
    pub ram_misses: AtomicU64,
    pub store_fetches: AtomicU64,
    pub store_bytes: AtomicU64,
    pub shared_fetches: AtomicU64,
    pub prefetched: AtomicU64,
    /// Readahead skipped because the memory budget was spent.
    pub prefetch_skipped: AtomicU64,
}

type ChunkFuture = Shared<BoxFuture<'static, FsResult<Bytes>>>;

/// Where a chunk asked for ahead of a reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// Fetched already: in RAM.
    InRam,
    /// Being loaded, by this call or an earlier one.
    OnItsWay,
    /// Not started: the memory for chunks in flight is spent.
    NoMemory,
}

/// Sizes of the RAM tier and of the memory for chunks in flight; together they
/// never exceed `ram_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    pub ram_tier: u64,
    pub in_flight: u64,
}

impl MemoryBudget {
    /// Chunks being fetched, read from NVMe or written to it get up to half of
    /// `ram_size`, at most twice `fetch_concurrency` chunks; the RAM tier gets the
    /// rest. Twice: parallel fetches finish together, and their NVMe writes
    /// (which queue on the cache file) must not hold up the next fetches.
    pub fn split(ram_size: u64, chunk_size: u64, fetch_concurrency: u32) -> MemoryBudget {
        let in_flight = (2 * chunk_size * fetch_concurrency as u64).min(ram_size / 2);
        MemoryBudget {
            ram_tier: ram_size - in_flight,
            in_flight,
        }
    }
}

/// A read joined from two or more chunks, and its share of the memory budget,
/// given back when the last slice of it is dropped.
struct JoinedRead {
    buffer: ChunkBuffer,
    _memory: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for JoinedRead {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

pub struct TieredReader {
    store: Arc<dyn ObjectStore>,
    ram: RamTier,
    nvme: Arc<NvmeTier>,
    chunk_size: u64,
    fetch_timeout: Duration,
    inflight: Mutex<HashMap<ChunkKey, ChunkFuture>>,
    /// Memory for whole chunks, reused as chunks leave RAM.
    buffers: Arc<BufferPool>,
    /// Bytes of chunks in flight (fetching, or on their way to NVMe).
    memory: Arc<Semaphore>,
    memory_total: u64,
    /// Ranged GETs in flight.
    fetches: Arc<Semaphore>,
    /// Readers waiting for a chunk that RAM did not have; the mover yields to them.
    demand_waiting: AtomicU64,
    /// Fetched chunks on their way to NVMe, by version, and a wake-up as each lands.
    nvme_pending: Mutex<HashMap<FileId, u64>>,
    nvme_landed: tokio::sync::Notify,
    /// A wake-up as each load ends, for readers keeping their readahead full.
    chunk_loaded: tokio::sync::Notify,
    pub stats: ReadStats,
    pub fetch_latency: Histogram,
}

impl TieredReader {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        nvme: Arc<NvmeTier>,
        options: &MountOptions,
    ) -> Arc<TieredReader> {
        let budget = MemoryBudget::split(
            options.ram_size,
            options.chunk_size,
            options.fetch_concurrency,
        );
        Arc::new(TieredReader {
            store,
            ram: RamTier::new(budget.ram_tier, options.chunk_size),
            nvme,
            chunk_size: options.chunk_size,
            fetch_timeout: options.fetch_timeout,
            inflight: Mutex::new(HashMap::new()),
            // Idle buffers are kept up to the in-flight share (what a reader
            // streaming through a file refills), and only while the buffers in
            // use and idle together fit in `ram_size`.
            buffers: BufferPool::new(
                usize::try_from(options.chunk_size).unwrap_or(usize::MAX),
                budget.in_flight,
                options.ram_size,
            ),
            memory: Arc::new(Semaphore::new(budget.in_flight as usize)),
            memory_total: budget.in_flight,
            fetches: Arc::new(Semaphore::new(options.fetch_concurrency as usize)),
            demand_waiting: AtomicU64::new(0),
            nvme_pending: Mutex::new(HashMap::new()),
            nvme_landed: tokio::sync::Notify::new(),
            chunk_loaded: tokio::sync::Notify::new(),
            stats: ReadStats::default(),
            fetch_latency: latency_histogram(),
        })
    }

    /// Loads every chunk of a version (from the store where it must), so that
    /// the tiers hold it whole; stops at the first chunk that fails.
    pub async fn load_whole(self: &Arc<Self>, file: &Arc<FileVersion>) -> FsResult<()> {
        let layout = crate::model::chunk::ChunkLayout::new(self.chunk_size, file.size);
        for index in 0..layout.chunk_count() {
            self.chunk(file, index).await?;
        }
        Ok(())
    }

    /// Bytes of a version held in the RAM tier.
    pub fn ram_bytes_of(&self, file: FileId, size: u64) -> u64 {
        let layout = crate::model::chunk::ChunkLayout::new(self.chunk_size, size);
        self.ram.settle();
        (0..layout.chunk_count())
            .filter(|index| {
                self.ram.contains(&ChunkKey {
                    file,
                    index: *index,
                })
            })
            .map(|index| layout.chunk_len(index))
            .sum()
    }

    /// Drops every chunk of a version from the RAM tier, held or not.
    pub fn forget_ram(&self, file: FileId) {
        self.ram.forget(file);
    }

    /// The memory chunks are read into.
    pub fn buffer_pool(&self) -> &Arc<BufferPool> {
        &self.buffers
    }

    pub fn ram(&self) -> &RamTier {
        &self.ram
    }

    /// Resolves when the next load of a chunk ends (one that ends after this
    /// call), whatever its outcome.
    pub fn chunk_loaded(&self) -> tokio::sync::futures::Notified<'_> {
        self.chunk_loaded.notified()
    }

    /// Readers waiting now for chunks RAM did not have.
    pub fn demand_waiting(&self) -> u64 {
        self.demand_waiting.load(Ordering::Relaxed)
    }

    pub fn nvme(&self) -> &NvmeTier {
        &self.nvme
    }

    /// Bytes held by the RAM tier.
    pub fn ram_used(&self) -> u64 {
        self.ram.used()
    }

    /// Bytes of the in-flight budget in use now.
    pub fn in_flight_bytes(&self) -> u64 {
        self.memory_total - self.memory.available_permits() as u64
    }

    /// Permits for a chunk of `len` bytes; a chunk larger than the whole budget
    /// takes all of it.
    fn permits_for(&self, len: u64) -> u32 {
        len.min(self.memory_total)
            .max(1)
            .try_into()
            .unwrap_or(u32::MAX)
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
        let chunks =
            futures::future::try_join_all(slices.iter().map(|s| self.chunk(file, s.index))).await?;
        if let ([slice], [chunk]) = (&slices[..], &chunks[..]) {
            return Ok(chunk.slice(slice.start..slice.start + slice.len));
        }
        // A read across chunks is joined into memory that is already faulted in:
        // with the kernel's readahead windows unaligned to chunks, a streaming
        // reader's requests nearly all cross one. That memory counts as in
        // flight until the reply is sent, so that the joins of many readers
        // cannot take the daemon past `ram_size`.
        let total: usize = slices.iter().map(|s| s.len).sum();
        let memory = self
            .memory
            .clone()
            .acquire_many_owned(self.permits_for(self.buffers.brief_footprint(total) as u64))
            .await
            .map_err(|e| FsError::local("waiting for read memory", e))?;
        let mut buffer = self.buffers.take_brief(total)?;
        for (slice, chunk) in slices.iter().zip(&chunks) {
            buffer
                .extend_from_slice(&chunk[slice.start..slice.start + slice.len])
                .expect("the slices add up to the buffer's size");
        }
        Ok(Bytes::from_owner(JoinedRead {
            buffer,
            _memory: memory,
        }))
    }

    /// One whole chunk from the nearest tier that has it, waiting for memory.
    pub async fn chunk(self: &Arc<Self>, file: &Arc<FileVersion>, index: u64) -> FsResult<Bytes> {
        let key = ChunkKey {
            file: file.id,
            index,
        };
        if let Some(bytes) = self.ram.get(&key) {
            self.stats.ram_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(bytes);
        }
        self.stats.ram_misses.fetch_add(1, Ordering::Relaxed);
        self.demand_waiting.fetch_add(1, Ordering::Relaxed);
        let result = self.start_load(file, key, None).await;
        self.demand_waiting.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// One whole chunk for the tier manager, not counted as a demand read: kept
    /// in RAM (in the held set when its file is held) for `Ram`, made sure to be
    /// on NVMe before it returns for `Nvme`.
    pub async fn chunk_into(
        self: &Arc<Self>,
        tier: Tier,
        file: &Arc<FileVersion>,
        index: u64,
    ) -> FsResult<Bytes> {
        if tier == Tier::Vram {
            return Err(no_gpu_tier());
        }
        let key = ChunkKey {
            file: file.id,
            index,
        };
        let bytes = match self.ram.get(&key) {
            Some(bytes) => bytes,
            None => self.start_load(file, key, None).await?,
        };
        if tier == Tier::Ram {
            self.ram.insert(key, bytes.clone());
        } else if !self.nvme.has(&key) {
            let nvme = self.nvme.clone();
            let copy = bytes.clone();
            let written = run_blocking(move || nvme.write(&key, &copy, digest(&copy))).await?;
            if !written {
                return Err(FsError::NoSpace(format!(
                    "no room on NVMe for chunk {index} of /{}",
                    file.path
                )));
            }
        }
        Ok(bytes)
    }

    /// Starts loading a chunk ahead of a reader, unless it is in RAM, already on
    /// its way, or the memory budget is spent: readahead shrinks rather than
    /// allocating past `ram_size`.
    pub fn prefetch(self: &Arc<Self>, file: &Arc<FileVersion>, index: u64) -> Prefetch {
        let key = ChunkKey {
            file: file.id,
            index,
        };
        if self.ram.contains(&key) {
            return Prefetch::InRam;
        }
        if self.inflight.lock().contains_key(&key) {
            return Prefetch::OnItsWay;
        }
        let len = ChunkLayout::new(self.chunk_size, file.size).chunk_len(index);
        let Ok(permit) = self
            .memory
            .clone()
            .try_acquire_many_owned(self.permits_for(len))
        else {
            self.stats.prefetch_skipped.fetch_add(1, Ordering::Relaxed);
            return Prefetch::NoMemory;
        };
        self.stats.prefetched.fetch_add(1, Ordering::Relaxed);
        // The load runs on the runtime; nobody waits for it here.
        drop(self.start_load(file, key, Some(permit)));
        Prefetch::OnItsWay
    }

    /// Joins the load of `key` in flight, or starts one. The load runs on the
    /// runtime, so it finishes, and the NVMe copy gets written, even if every
    /// reader gives up on it.
    fn start_load(
        self: &Arc<Self>,
        file: &Arc<FileVersion>,
        key: ChunkKey,
        permit: Option<OwnedSemaphorePermit>,
    ) -> ChunkFuture {
        let mut inflight = self.inflight.lock();
        if let Some(existing) = inflight.get(&key) {
            self.stats.shared_fetches.fetch_add(1, Ordering::Relaxed);
            return existing.clone();
        }
        let this = self.clone();
        let file = file.clone();
        let fut = async move {
            let len = ChunkLayout::new(this.chunk_size, file.size).chunk_len(key.index);
            let result = async {
                let permit = match permit {
                    Some(p) => p,
                    None => this
                        .memory
                        .clone()
                        .acquire_many_owned(this.permits_for(len))
                        .await
                        .map_err(|e| FsError::local("waiting for chunk memory", e))?,
                };
                this.load(&file, key, len, permit).await
            }
            .await;
            // On every outcome, so that a failed load is retried by the next reader.
            this.inflight.lock().remove(&key);
            this.chunk_loaded.notify_waiters();
            result
        }
        .boxed()
        .shared();
        inflight.insert(key, fut.clone());
        tokio::spawn(fut.clone());
        fut
    }

    async fn load(
        self: &Arc<Self>,
        file: &FileVersion,
        key: ChunkKey,
        len: u64,
        permit: OwnedSemaphorePermit,
    ) -> FsResult<Bytes> {
        // A chunk the index does not know goes to the store at once: the hop to a
        // blocking thread would delay every cold fetch by a scheduling round.
        let cached = match self.nvme.record(&key) {
            Ok(Some(record)) => {
                let nvme = self.nvme.clone();
                let buffers = self.buffers.clone();
                run_blocking(move || nvme.read_recorded(&key, record, &buffers)).await
            }
            other => other.map(|_| None),
        };
        match cached {
            Ok(Some(bytes)) if bytes.len() as u64 == len => {
                self.ram.insert(key, bytes.clone());
                return Ok(bytes);
            }
            Ok(_) => {}
            // The near tier failing must not fail the read: the store has the bytes.
            Err(e) => tracing::warn!("NVMe tier read failed, fetching from the store: {e}"),
        }
        let (bytes, chunk_digest) = self.fetch(file, key.index, len).await?;
        self.ram.insert(key, bytes.clone());
        let copy = bytes.clone();
        let this = self.clone();
        *self.nvme_pending.lock().entry(key.file).or_default() += 1;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = this.nvme.write(&key, &copy, chunk_digest) {
                tracing::warn!("could not keep chunk on NVMe: {e}");
            }
            // The chunk's memory counts as in flight until it is on disk, and
            // is given back before anyone waiting for the write hears of it.
            drop(permit);
            this.nvme_write_done(key.file);
        });
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path;
    use proptest::prelude::*;

    pub(super) fn reader(dir: &std::path::Path) -> Arc<TieredReader> {
        reader_of(dir, Arc::new(object_store::memory::InMemory::new()))
    }

    fn reader_of(dir: &std::path::Path, store: Arc<dyn ObjectStore>) -> Arc<TieredReader> {
        crate::tiers::testing::reader_over(dir, store).0
    }

    #[tokio::test]
    async fn a_read_joined_from_two_chunks_counts_as_in_flight_until_it_is_dropped() {
        use object_store::ObjectStoreExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(object_store::memory::InMemory::new());
        let bytes: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
        let path = Path::from("model.bin");
        store.put(&path, bytes.clone().into()).await.unwrap();
        let reader = reader_of(dir.path(), store);
        let file = Arc::new(FileVersion {
            path,
            id: FileId(3),
            size: bytes.len() as u64,
            etag: None,
        });
        // Both chunks loaded and on NVMe: nothing else is in flight.
        reader.load_whole(&file).await.unwrap();
        reader
            .settle_nvme(file.id, file.size, Duration::from_secs(10))
            .await;
        assert_eq!(reader.in_flight_bytes(), 0);
        let joined = reader.read(&file, 3000, 2048).await.unwrap();
        assert_eq!(&joined[..], &bytes[3000..5048]);
        assert_eq!(
            reader.in_flight_bytes(),
            4096,
            "the join holds a pooled chunk's memory"
        );
        let tail = joined.slice(100..);
        drop(joined);
        assert_eq!(reader.in_flight_bytes(), 4096, "a slice still holds it");
        drop(tail);
        assert_eq!(reader.in_flight_bytes(), 0);
        // A read inside one chunk is a slice of it, with no memory of its own.
        let inside = reader.read(&file, 4096, 1000).await.unwrap();
        assert_eq!(&inside[..], &bytes[4096..5096]);
        assert_eq!(reader.in_flight_bytes(), 0);
    }

    proptest! {
        #[test]
        fn the_budget_never_exceeds_ram_size(ram in 0u64..1 << 40, chunk in 1u64..1 << 30, n in 1u32..1024) {
            let b = MemoryBudget::split(ram, chunk, n);
            prop_assert_eq!(b.ram_tier + b.in_flight, ram);
            prop_assert!(b.in_flight <= 2 * chunk * n as u64);
        }
    }
}
