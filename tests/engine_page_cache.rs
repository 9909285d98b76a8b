//! The engine without FUSE: which copy of a file its opens are offered after a
//! cold read (the kernel's page cache of the tierfs file, or the NVMe copy by
//! passthrough), and the handover from the one to the other.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tierfs::model::version::ChunkKey;

use common::engine_kit::{CHUNK, core, core_with, open_path, range_reads, wait_for_nvme};
use common::{drop_kernel_cache, random_bytes, resident_pages};
use parking_lot::Mutex;

use tierfs::namespace::ROOT_INO;
use tierfs_fuse::KernelNotices;

/// After a cold read, the kernel's page cache holds the file: the close keeps
/// it, and the next open of the same version is served from it rather than
/// offered the NVMe copy. Reads reaching tierfs through that open (more than a
/// stray page) show the kernel no longer holds it: that close has it dropped,
/// and the next open is offered the NVMe copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opens_are_served_from_the_kernel_page_cache_until_a_read_shows_it_gone() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes((3 * CHUNK) as usize, 7);
    std::fs::write(store.path().join("k.bin"), &data).unwrap();
    let core = core(store.path(), cache.path(), Duration::from_secs(60));
    let fh = open_path(&core, "k.bin").await;
    assert!(core.read(fh, 0, data.len() as u32).await.unwrap() == data);
    assert!(!core.flush(fh).await.unwrap().drop_page_cache);
    assert!(!core.release(fh).drop_page_cache);
    wait_for_nvme(&core, data.len() as u64).await;
    let ino = core.lookup(ROOT_INO, "k.bin").await.unwrap().ino;
    let opened = core.open(ino, false, false).await.unwrap();
    assert!(opened.keep_cache);
    assert!(opened.backing.is_none(), "offered the NVMe copy");
    // No read reaches tierfs: the kernel still holds the file.
    assert!(!core.flush(opened.fh).await.unwrap().drop_page_cache);
    core.release(opened.fh);
    let opened = core.open(ino, false, false).await.unwrap();
    assert!(opened.backing.is_none(), "offered the NVMe copy");
    // A stray page is fetched back: just its bytes from the NVMe copy, with no
    // whole chunk loaded into RAM for it. A chunk is more than the kernel lets
    // go of in passing (an eighth of the file): it is read as any other, and
    // whole chunks come into RAM for the reader streaming on.
    let version = core.handle_version(opened.fh).unwrap().id;
    core.reader().forget_ram(version);
    assert!(core.read(opened.fh, 4096, 4096).await.unwrap() == data[4096..8192]);
    assert_eq!(range_reads(&core), 1);
    let first = ChunkKey {
        file: version,
        index: 0,
    };
    assert!(!core.reader().ram().contains(&first));
    assert!(!core.flush(opened.fh).await.unwrap().drop_page_cache);
    assert!(
        core.read(opened.fh, CHUNK, CHUNK as u32).await.unwrap()
            == data[CHUNK as usize..][..CHUNK as usize]
    );
    assert_eq!(range_reads(&core), 1);
    let second = ChunkKey { index: 1, ..first };
    assert!(core.reader().ram().contains(&second));
    assert_eq!(core.reader().stats.store_fetches.load(Ordering::Relaxed), 3);
    assert!(core.flush(opened.fh).await.unwrap().drop_page_cache);
    core.release(opened.fh);
    let opened = core.open(ino, false, false).await.unwrap();
    assert!(opened.backing.is_some(), "the NVMe copy was not offered");
    core.release(opened.fh);
}

/// Once the kernel is known to take no backing files (no FUSE passthrough, or
/// no privilege for it), no open is offered one, and no close waits to make
/// one possible or asks for the page cache to be dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_backing_files_are_offered_once_passthrough_is_unavailable() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes((3 * CHUNK) as usize, 6);
    std::fs::write(store.path().join("p.bin"), &data).unwrap();
    let core = core(store.path(), cache.path(), Duration::from_secs(60));
    let fh = open_path(&core, "p.bin").await;
    assert!(core.read(fh, 0, data.len() as u32).await.unwrap() == data);
    core.release(fh);
    wait_for_nvme(&core, data.len() as u64).await;
    // A read through an open served from the page cache: the kernel let go of it.
    let fh = open_path(&core, "p.bin").await;
    assert!(core.read(fh, 0, data.len() as u32).await.unwrap() == data);
    core.release(fh);
    let ino = core.lookup(ROOT_INO, "p.bin").await.unwrap().ino;
    let opened = core.open(ino, false, false).await.unwrap();
    assert!(opened.backing.is_some(), "the NVMe copy was not offered");
    core.release(opened.fh);

    core.passthrough_unavailable();
    let opened = core.open(ino, false, false).await.unwrap();
    assert!(opened.backing.is_none());
    assert!(!core.flush(opened.fh).await.unwrap().drop_page_cache);
    core.release(opened.fh);
}

/// The kernel's side of the notices: the inodes whose page cache it was told
/// to drop.
#[derive(Default)]
struct DropsSeen(Mutex<Vec<u64>>);

impl KernelNotices for DropsSeen {
    fn drop_page_cache(&self, ino: u64) {
        self.0.lock().push(ino);
    }
}

/// Left alone for `page_cache_handover` after its last close, a file read into
/// the kernel's page cache through tierfs is handed over: its cache file is
/// read into the page cache, the kernel is told to drop the tierfs file's
/// pages, and the next open is offered the cache file. An open before that
/// puts the handover off until its own close.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_left_alone_hands_its_page_cache_over_to_the_nvme_copy() {
    let (store, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let data = random_bytes((3 * CHUNK + 100) as usize, 8);
    std::fs::write(store.path().join("h.bin"), &data).unwrap();
    let core = core_with(store.path(), cache.path(), |o| {
        o.page_cache_handover = Duration::from_millis(300)
    });
    let drops = Arc::new(DropsSeen::default());
    core.attach_kernel(drops.clone());
    let fh = open_path(&core, "h.bin").await;
    assert!(core.read(fh, 0, data.len() as u32).await.unwrap() == data);
    let version = core.handle_version(fh).unwrap().id;
    core.release(fh);
    wait_for_nvme(&core, data.len() as u64).await;

    // Whatever of the cache file the page cache holds now goes, so that the
    // handover is seen to read it all back.
    let cache_path = core.cache_file(version);
    drop_kernel_cache(&cache_path);
    let cache_file = std::fs::File::open(&cache_path).unwrap();
    assert!(!resident_pages(&cache_file, data.len()).iter().all(|&r| r));

    let ino = core.lookup(ROOT_INO, "h.bin").await.unwrap().ino;
    let opened = core.open(ino, false, false).await.unwrap();
    assert!(opened.backing.is_none(), "offered the NVMe copy");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        drops.0.lock().is_empty(),
        "handed over under an open handle"
    );
    core.release(opened.fh);

    for _ in 0..500 {
        if !drops.0.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*drops.0.lock(), vec![ino]);
    let resident = resident_pages(&cache_file, data.len());
    assert!(
        resident.iter().all(|&r| r),
        "the cache file is not in the page cache"
    );
    let opened = core.open(ino, false, false).await.unwrap();
    assert!(opened.backing.is_some(), "the NVMe copy was not offered");
    core.release(opened.fh);
}
