//! Real FUSE mounts: which copy of a file the kernel reads after a cold read
//! through tierfs (its own page cache of the tierfs file, or the NVMe copy by
//! passthrough), and what each close leaves in the page cache.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;

const CHUNK: usize = 1 << 20;

/// A mount with 1 MiB chunks, passthrough on or off, and no page cache
/// handover: that is handed over to the NVMe copy only where a test is about
/// it, so that no handover after a test's close changes what its next open gets.
fn mount(backend: &Backend, cache: &Path, passthrough: bool) -> Mount {
    let passthrough = format!("passthrough={passthrough}");
    Mount::new(
        backend,
        cache,
        &["chunk_size=1M", "page_cache_handover=0", &passthrough],
    )
}

fn passthrough_opens(m: &Mount) -> usize {
    m.log().matches("opened with passthrough").count()
}

/// After a cold read, the kernel's page cache of the tierfs file is the one
/// copy in memory (the NVMe copy is written around the page cache): opens
/// are served from it, not passed through to the NVMe copy, even once that is
/// whole. When the kernel lets go of it, opens hand the kernel the cache file.
#[test]
fn files_wholly_on_nvme_are_read_from_the_page_cache_while_it_holds_them_then_passed_through() {
    let backend = Backend::local();
    let data = random_bytes(3 * CHUNK + 100, 21);
    backend.put("p/w.bin", &data);
    let cache = tempfile::tempdir().unwrap();
    let m = mount(&backend, cache.path(), true);
    let path = m.path("p/w.bin");
    assert!(std::fs::read(&path).unwrap() == data);
    wait_until(|| cached_bytes(cache.path()) >= data.len() as u64);
    let reread = File::open(&path).unwrap();
    let mut buf = vec![0u8; data.len()];
    reread.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == data);
    assert_mostly_cached(&reread, data.len());
    assert_eq!(passthrough_opens(&m), 0, "{}", m.log());
    drop(reread);

    // The reads after the kernel let go of the page cache reach tierfs; once
    // that handle's release has arrived (after close returns), opens pass through.
    wait_until(|| {
        drop_kernel_cache(&path);
        assert!(std::fs::read(&path).unwrap() == data);
        passthrough_opens(&m) > 0
    });
    let f = File::open(&path).unwrap();
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == data);
    // A second open of the same inode, while the first is open, shares the
    // kernel's backing file.
    let before = passthrough_opens(&m);
    assert!(std::fs::read(&path).unwrap() == data);
    assert!(passthrough_opens(&m) > before, "{}", m.log());
    drop(f);
    m.unmount();

    // With passthrough off, the same file reads the same through tierfs.
    let off = mount(&backend, cache.path(), false);
    let before = passthrough_opens(&off);
    assert!(std::fs::read(off.path("p/w.bin")).unwrap() == data);
    assert_eq!(passthrough_opens(&off), before);
}

/// A close of the last handle that read a file through tierfs keeps the page
/// cache those reads filled, for the opens after it. Once a read has shown
/// that the kernel let go of it and the file is whole on NVMe, the close has
/// what is left of it dropped before it returns: the next open passes
/// through, and would otherwise wait for the drop. Without passthrough that
/// page cache serves rereads, so it stays.
#[test]
fn a_close_drops_the_page_cache_only_once_opens_pass_through() {
    let backend = Backend::local();
    let data = random_bytes(3 * CHUNK + 100, 23);
    backend.put("p/d.bin", &data);
    for passthrough in [true, false] {
        let cache = tempfile::tempdir().unwrap();
        let m = mount(&backend, cache.path(), passthrough);
        let path = m.path("p/d.bin");
        assert!(std::fs::read(&path).unwrap() == data);
        wait_until(|| cached_bytes(cache.path()) >= data.len() as u64);
        assert!(std::fs::read(&path).unwrap() == data);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!m.log().contains("page cache dropped"), "{}", m.log());
        if passthrough {
            drop_kernel_cache(&path);
            assert!(std::fs::read(&path).unwrap() == data);
            // Done by the time close returned.
            assert!(m.log().contains("page cache dropped"), "{}", m.log());
        }
    }
}

#[test]
fn a_file_held_open_through_tierfs_is_not_switched_to_passthrough() {
    let backend = Backend::local();
    let data = random_bytes(2 * CHUNK, 22);
    backend.put("p/w.bin", &data);
    let cache = tempfile::tempdir().unwrap();
    let m = mount(&backend, cache.path(), true);
    let path = m.path("p/w.bin");
    // This handle reads through tierfs, and stays open while the file completes.
    let first = File::open(&path).unwrap();
    let mut buf = vec![0u8; data.len()];
    first.read_exact_at(&mut buf, 0).unwrap();
    wait_until(|| cached_bytes(cache.path()) >= data.len() as u64);
    // Opens must not ask for passthrough (the kernel would refuse it), even
    // when the page cache no longer holds the file.
    for _ in 0..2 {
        assert!(std::fs::read(&path).unwrap() == data);
        drop_kernel_cache(&path);
    }
    assert_eq!(passthrough_opens(&m), 0, "{}", m.log());
    drop(first);
    // The kernel sends release after close returns; once it has, opens pass through.
    wait_until(|| {
        assert!(std::fs::read(&path).unwrap() == data);
        drop_kernel_cache(&path);
        passthrough_opens(&m) > 0
    });
}

/// A sequential reader of a file keeps the page cache behind it when that is
/// what the next opens read. Once the kernel has let go of it, and later
/// opens read the NVMe copy, a reader leaves no second copy in the page cache
/// behind it: the chunks it has left behind are dropped while it reads, the
/// chunks near it are kept, and a read back into the dropped part still
/// returns the file's bytes. With passthrough off, the page cache serves
/// rereads, so it is all kept.
#[test]
fn a_sequential_reader_leaves_no_page_cache_behind_when_opens_pass_through() {
    use std::io::Read;
    let backend = Backend::local();
    let chunks = 40;
    let data = random_bytes(chunks * CHUNK, 24);
    backend.put("p/s.bin", &data);
    let pages_per_chunk = CHUNK / 4096;
    let read_whole = |path: &Path| {
        let mut f = File::open(path).unwrap();
        let mut seen = Vec::new();
        f.read_to_end(&mut seen).unwrap();
        assert!(seen == data);
        f
    };
    for passthrough in [true, false] {
        let cache = tempfile::tempdir().unwrap();
        let m = mount(&backend, cache.path(), passthrough);
        let path = m.path("p/s.bin");
        // The cold read: its page cache is what the next opens read.
        let f = read_whole(&path);
        std::thread::sleep(std::time::Duration::from_millis(300));
        // Kept, not dropped behind the reader.
        assert_mostly_cached(&f, data.len());
        assert!(resident_pages(&f, data.len())[..pages_per_chunk].contains(&true));
        drop(f);
        wait_until(|| cached_bytes(cache.path()) >= data.len() as u64);
        drop_kernel_cache(&path);
        let f = read_whole(&path);
        let first_chunk_cached =
            || resident_pages(&f, data.len())[..pages_per_chunk].contains(&true);
        if passthrough {
            // The notices are sent in the background.
            wait_until(|| !first_chunk_cached());
        } else {
            std::thread::sleep(std::time::Duration::from_millis(300));
            assert!(first_chunk_cached());
        }
        let resident = resident_pages(&f, data.len());
        assert!(
            resident[resident.len() - pages_per_chunk..]
                .iter()
                .all(|&r| r),
            "the last chunk is no longer cached (passthrough={passthrough})"
        );
        let mut back = vec![0u8; 2 * CHUNK];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(back == data[..2 * CHUNK]);
        drop(f);
        m.unmount();
    }
}

/// Left alone after its last close, a file read into the kernel's page cache
/// through tierfs is handed over to its NVMe copy: the cache file is read into
/// the page cache, the tierfs file's pages are dropped, and later opens pass
/// through to the cache file, at the speed of a local file in the page cache.
#[test]
fn a_file_left_alone_is_passed_through_to_its_nvme_copy_in_the_page_cache() {
    let backend = Backend::local();
    let data = random_bytes(3 * CHUNK + 100, 25);
    backend.put("p/h.bin", &data);
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(
        &backend,
        cache.path(),
        &["chunk_size=1M", "page_cache_handover=300ms"],
    );
    let path = m.path("p/h.bin");
    assert!(std::fs::read(&path).unwrap() == data);
    wait_until(|| m.log().contains("took over from the page cache"));
    let cache_file = File::open(cache_file(cache.path())).unwrap();
    assert_mostly_cached(&cache_file, data.len());
    let f = File::open(&path).unwrap();
    // Logged once the open's reply is on its way.
    wait_until(|| passthrough_opens(&m) == 1);
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data);
}
