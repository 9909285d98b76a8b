//! The engine without FUSE: lookups, reads through the tiers, shared fetches, the
//! cache across restarts, ETag changes and bounded failures.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::engine_kit::{
    CHUNK, core, core_with, open_path, options, restarted_core, wait_for_nvme,
};
use common::random_bytes;
use tierfs::engine::{EngineConfig, EngineCore};
use tierfs::namespace::ROOT_INO;
use tierfs::store::{StoreClient, StoreLocation};
use tierfs_fuse::FileKind;

use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_are_byte_exact_across_chunk_edges() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes((5 * CHUNK + 3) as usize, 1);
    std::fs::create_dir_all(store.path().join("m/s")).unwrap();
    std::fs::write(store.path().join("m/s/w.bin"), &data).unwrap();
    let core = core(store.path(), cache.path(), Duration::from_secs(60));
    let dir = core.lookup(ROOT_INO, "m").await.unwrap();
    assert_eq!(dir.kind, FileKind::Directory);
    assert!(
        matches!(core.lookup(ROOT_INO, "missing").await, Err(e) if e.errno().0 == libc::ENOENT)
    );
    let fh = open_path(&core, "m/s/w.bin").await;
    for (offset, len) in [
        (0, 10),
        (CHUNK - 5, 10),
        (0, 5 * CHUNK + 3),
        (5 * CHUNK, 100),
        (3, 2 * CHUNK),
    ] {
        let got = core.read(fh, offset, len as u32).await.unwrap();
        let end = ((offset + len) as usize).min(data.len());
        assert_eq!(
            &got[..],
            &data[offset as usize..end],
            "read at {offset}+{len}"
        );
    }
    assert!(core.read(fh, 10 * CHUNK, 10).await.unwrap().is_empty());
    assert!(matches!(core.read(fh + 100, 0, 1).await, Err(e) if e.errno().0 == libc::EBADF));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_of_one_chunk_share_one_fetch() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes(CHUNK as usize, 2);
    std::fs::write(store.path().join("w.bin"), &data).unwrap();
    let core = core(store.path(), cache.path(), Duration::from_secs(60));
    let fh = open_path(&core, "w.bin").await;
    let reads = (0..16).map(|i| core.read(fh, i * 100, 100));
    for (i, got) in futures::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(&got.unwrap()[..], &data[i * 100..i * 100 + 100]);
    }
    assert_eq!(core.reader().stats.store_fetches.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_survives_a_restart_and_drops_changed_objects() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes((3 * CHUNK) as usize, 3);
    std::fs::write(store.path().join("w.bin"), &data).unwrap();
    let old_file;
    {
        let first = core(store.path(), cache.path(), Duration::from_secs(60));
        let fh = open_path(&first, "w.bin").await;
        assert_eq!(
            &first.read(fh, 0, data.len() as u32).await.unwrap()[..],
            &data[..]
        );
        wait_for_nvme(&first, data.len() as u64).await;
        old_file = first.handle_version(fh).unwrap().id;
    }
    // A restarted engine serves every chunk from NVMe: no fetch reaches the store.

    let second = restarted_core(store.path(), cache.path(), Duration::ZERO).await;
    let old_fh = open_path(&second, "w.bin").await;
    assert_eq!(
        &second.read(old_fh, 0, data.len() as u32).await.unwrap()[..],
        &data[..]
    );
    assert_eq!(
        second.reader().stats.store_fetches.load(Ordering::Relaxed),
        0
    );
    assert!(second.cache_file(old_file).exists());

    // The object changes in the store: the next open binds the new version; the
    // old version's cache file stays while a handle reads it, and goes with it.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let new = random_bytes((CHUNK + 1) as usize, 4);
    std::fs::write(store.path().join("w.bin"), &new).unwrap();
    let fh = open_path(&second, "w.bin").await;
    assert_eq!(
        &second.read(fh, 0, new.len() as u32).await.unwrap()[..],
        &new[..]
    );
    assert!(second.cache_file(old_file).exists());
    second.release(old_fh);
    second.release(fh);
    assert!(!second.cache_file(old_file).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_with_eio_instead_of_hanging() {
    let cache = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = options(Duration::from_secs(60));
    opts.endpoint = Some(format!("http://127.0.0.1:{port}"));
    opts.fetch_timeout = Duration::from_secs(1);
    let location = StoreLocation::parse("s3://ckpt/p").unwrap();
    let store = location.build(&opts, 1, opts.fetch_timeout).unwrap();
    let core = EngineCore::start(EngineConfig {
        store,
        store_id: location.identity(&opts),
        cache_dir: cache.path().to_path_buf(),
        options: opts,
    })
    .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(60), core.lookup(ROOT_INO, "x"))
        .await
        .expect("the lookup hung");
    assert_eq!(result.unwrap_err().errno().0, libc::EIO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_readers_get_readahead_and_random_readers_do_not() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes((12 * CHUNK) as usize, 5);
    std::fs::write(store.path().join("seq.bin"), &data).unwrap();
    std::fs::write(store.path().join("rnd.bin"), &data).unwrap();
    let core = core_with(store.path(), cache.path(), |o| o.prefetch_max = 4);
    let stats = &core.reader().stats;

    // Sequential, in 4 KiB requests: every chunk is fetched once, most of them
    // ahead of the reader.
    let fh = open_path(&core, "seq.bin").await;
    let mut offset = 0;
    while offset < data.len() as u64 {
        let got = core.read(fh, offset, 4096).await.unwrap();
        assert_eq!(&got[..], &data[offset as usize..offset as usize + 4096]);
        offset += 4096;
    }
    assert_eq!(stats.store_fetches.load(Ordering::Relaxed), 12);
    let ahead = stats.prefetched.load(Ordering::Relaxed);
    assert!(ahead >= 8, "only {ahead} chunks were fetched ahead");

    // Random: chunks touched in a scattered order get nothing ahead.
    let before = stats.prefetched.load(Ordering::Relaxed);
    let fh = open_path(&core, "rnd.bin").await;
    for index in [7u64, 2, 10, 4, 9] {
        let got = core.read(fh, index * CHUNK + 10, 100).await.unwrap();
        let at = (index * CHUNK + 10) as usize;
        assert_eq!(&got[..], &data[at..at + 100]);
    }
    assert_eq!(stats.prefetched.load(Ordering::Relaxed), before);
    assert_eq!(stats.store_fetches.load(Ordering::Relaxed), 12 + 5);
}

/// Reads a whole file front to back in half-chunk reads, checking every byte, and
/// calls `after_each` after each read.
async fn read_in_halves(core: &EngineCore, fh: u64, data: &[u8], mut after_each: impl FnMut()) {
    let mut offset = 0;
    while offset < data.len() as u64 {
        let got = core.read(fh, offset, CHUNK as u32 / 2).await.unwrap();
        assert_eq!(
            &got[..],
            &data[offset as usize..(offset + CHUNK / 2) as usize]
        );
        after_each();
        offset += CHUNK / 2;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readahead_shrinks_to_the_memory_budget() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes((32 * CHUNK) as usize, 6);
    std::fs::write(store.path().join("big.bin"), &data).unwrap();
    // Room for four chunks in flight and four in the RAM tier; readahead wants 16.
    let core = core_with(store.path(), cache.path(), |o| {
        o.ram_size = 8 * CHUNK;
        o.prefetch_max = 16;
        o.fetch_concurrency = 16;
    });
    let reader = core.reader();
    let fh = open_path(&core, "big.bin").await;
    let mut peak_in_flight = 0;
    read_in_halves(&core, fh, &data, || {
        peak_in_flight = peak_in_flight.max(reader.in_flight_bytes());
        assert!(
            reader.ram_used() <= 4 * CHUNK,
            "RAM tier over its share: {}",
            reader.ram_used()
        );
    })
    .await;
    assert!(peak_in_flight <= 4 * CHUNK, "in flight: {peak_in_flight}");
    assert!(reader.stats.prefetch_skipped.load(Ordering::Relaxed) > 0);
    assert!(reader.stats.prefetched.load(Ordering::Relaxed) > 0);
}

/// Reads chunk `index` whole and checks every byte.
async fn read_chunk(core: &EngineCore, fh: u64, data: &[u8], index: u64) {
    let got = core.read(fh, index * CHUNK, CHUNK as u32).await.unwrap();
    let at = (index * CHUNK) as usize;
    assert_eq!(&got[..], &data[at..at + CHUNK as usize]);
}

/// Waits until no chunk is being fetched or written to NVMe.
async fn settle_loads(core: &EngineCore) {
    for _ in 0..3000 {
        if core.reader().in_flight_bytes() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "chunks still in flight: {}",
        core.reader().in_flight_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_fetched_ahead_do_not_count_against_the_window() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes((40 * CHUNK) as usize, 8);
    std::fs::write(store.path().join("big.bin"), &data).unwrap();
    let core = core_with(store.path(), cache.path(), |o| o.prefetch_max = 4);
    let reader = core.reader();
    let fh = open_path(&core, "big.bin").await;
    let file = core.handle_version(fh).unwrap().id;
    let in_ram = |index: u64| {
        reader
            .ram()
            .contains(&tierfs::model::version::ChunkKey { file, index })
    };
    // Whole chunks, front to back, each read's fetches landed before the next:
    // the window opens at 1 and reaches 4 at the third chunk.
    for index in 0..=6u64 {
        read_chunk(&core, fh, &data, index).await;
        settle_loads(&core).await;
    }
    // Chunks that arrived early wait in RAM without holding the window back:
    // the reader at chunk 6 has fetches up to twice its window ahead, no further.
    assert!((7..=14).all(in_ram), "chunks 7 to 14 should be in RAM");
    assert!(!in_ram(15));
    assert_eq!(reader.stats.store_fetches.load(Ordering::Relaxed), 15);
    // Each of them was looked for on NVMe first, and counted as a miss there.
    assert_eq!(reader.nvme().stats.misses.load(Ordering::Relaxed), 15);
}

/// A store that holds back the GET of the byte range starting at `held` until a
/// permit is added: a slow fetch for the reader to wait on while others land.
#[derive(Debug)]
struct HeldBackStore {
    inner: Arc<dyn ObjectStore>,
    held: u64,
    gate: tokio::sync::Semaphore,
}

impl std::fmt::Display for HeldBackStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeldBackStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for HeldBackStore {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if matches!(&options.range, Some(GetRange::Bounded(r)) if r.start == self.held) {
            let _ = self.gate.acquire().await;
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_landing_while_a_read_waits_make_room_for_the_next() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes((40 * CHUNK) as usize, 9);
    std::fs::write(store.path().join("big.bin"), &data).unwrap();
    let held = Arc::new(HeldBackStore {
        inner: StoreClient::local(store.path()).unwrap().objects,
        held: 3 * CHUNK,
        gate: tokio::sync::Semaphore::new(0),
    });
    let mut options = options(Duration::from_secs(60));
    options.prefetch_max = 4;
    options.fetch_timeout = Duration::from_secs(60);
    let core = EngineCore::start(EngineConfig {
        store: StoreClient {
            objects: held.clone(),
            multipart: None,
            local_root: None,
            metadata: None,
        },
        store_id: "held-back".into(),
        cache_dir: cache.path().to_path_buf(),
        options,
    })
    .unwrap();
    let fh = open_path(&core, "big.bin").await;
    // Chunks 0 to 2 in whole-chunk reads open the window to 4 chunks; chunk 3,
    // fetched ahead, is held back.
    for index in 0..3u64 {
        read_chunk(&core, fh, &data, index).await;
    }
    let waiting = {
        let core = core.clone();
        tokio::spawn(async move { core.read(fh, 3 * CHUNK, CHUNK as u32).await })
    };
    // While the read waits for chunk 3, every chunk that lands makes room for the
    // next, up to twice the window ahead (chunk 11): all fetched but chunk 3.
    let fetched = || core.reader().stats.store_fetches.load(Ordering::Relaxed);
    for _ in 0..1000 {
        if fetched() >= 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fetched(),
        11,
        "chunks 0 to 11 but 3 should have been fetched"
    );
    assert!(!waiting.is_finished());
    held.gate.add_permits(1);
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(&got[..], &data[(3 * CHUNK) as usize..(4 * CHUNK) as usize]);
}

/// Local copies leave by rule: a file idle past the limit, or a version older than
/// the age limit, is removed from NVMe and RAM and read again from the store; a
/// file a handle has open stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_old_copies_are_demoted_and_read_again_from_the_store() {
    use tierfs_policy::DemoteRule;
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        random_bytes((3 * CHUNK) as usize, 5),
        random_bytes((2 * CHUNK + 9) as usize, 6),
    );
    std::fs::write(store.path().join("a.bin"), &a).unwrap();
    std::fs::write(store.path().join("b.bin"), &b).unwrap();
    let core = core(store.path(), cache.path(), Duration::from_secs(60));
    let fa = open_path(&core, "a.bin").await;
    assert_eq!(&core.read(fa, 0, a.len() as u32).await.unwrap()[..], &a[..]);
    let version_a = core.handle_version(fa).unwrap();
    core.release(fa);
    let fb = open_path(&core, "b.bin").await;
    assert_eq!(&core.read(fb, 0, b.len() as u32).await.unwrap()[..], &b[..]);
    wait_for_nvme(&core, (a.len() + b.len()) as u64).await;

    let now = tierfs::model::clock::now_secs();
    let idle = DemoteRule {
        idle: Some(3600),
        age: None,
    };
    // Nothing has been idle for an hour yet.
    assert_eq!(core.demote_by_rule(idle, now).unwrap(), 0);
    // Two hours on: a.bin leaves; b.bin is open and stays.
    let freed = core.demote_by_rule(idle, now + 7200).unwrap();
    assert_eq!(freed, a.len() as u64);
    assert!(!core.cache_file(version_a.id).exists());
    assert_eq!(core.reader().nvme().used(), b.len() as u64);
    let fa = open_path(&core, "a.bin").await;
    let fetched = core.reader().stats.store_fetches.load(Ordering::Relaxed);
    assert_eq!(&core.read(fa, 0, a.len() as u32).await.unwrap()[..], &a[..]);
    assert!(
        core.reader().stats.store_fetches.load(Ordering::Relaxed) > fetched,
        "a demoted file is read from the store, not from RAM"
    );
    core.release(fa);
    core.release(fb);

    // By age: both versions were made (mtime) just now; a day later both go.
    let old = DemoteRule {
        idle: None,
        age: Some(86_400),
    };
    assert_eq!(core.demote_by_rule(old, now + 60).unwrap(), 0);
    wait_for_nvme(&core, (a.len() + b.len()) as u64).await;
    let freed = core.demote_by_rule(old, now + 2 * 86_400).unwrap();
    assert_eq!(freed, (a.len() + b.len()) as u64);
    assert_eq!(core.reader().nvme().used(), 0);
}

/// A sequential reader streaming through a file leaves behind chunks that later
/// opens read from the NVMe copy: they leave the RAM tier, and their memory is
/// refilled with the chunks fetched next instead of fresh memory being faulted in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streaming_reader_leaves_the_ram_tier_and_refills_its_buffers() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes((64 * CHUNK) as usize, 7);
    std::fs::write(store.path().join("big.bin"), &data).unwrap();
    std::fs::write(
        store.path().join("rnd.bin"),
        random_bytes((8 * CHUNK) as usize, 8),
    )
    .unwrap();
    let core = core_with(store.path(), cache.path(), |o| {
        o.ram_size = 128 * CHUNK;
        o.prefetch_max = 4;
    });
    let reader = core.reader();
    let fh = open_path(&core, "big.bin").await;
    read_in_halves(&core, fh, &data, || {}).await;
    // Room for the whole file, but it holds only what is near the reader's end.
    assert!(
        reader.ram_used() <= 32 * CHUNK,
        "RAM tier kept {} of {} bytes",
        reader.ram_used(),
        data.len()
    );
    assert!(
        reader.buffer_pool().reused() > 0,
        "no chunk buffer was reused"
    );

    // A random reader's chunks stay.
    let used = reader.ram_used();
    let fh = open_path(&core, "rnd.bin").await;
    for index in [5u64, 1, 7, 3] {
        core.read(fh, index * CHUNK, 100).await.unwrap();
    }
    assert_eq!(reader.ram_used(), used + 4 * CHUNK);
}
