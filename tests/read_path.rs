//! Real FUSE mounts of the `tierfs` binary over a local directory and over a real
//! S3 server on 127.0.0.1, read back byte for byte.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;

use common::*;

const CHUNK: usize = 1 << 20;

/// The sizes that sit on chunk edges, plus one big file.
fn edge_files() -> Vec<(String, Vec<u8>)> {
    [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 100 << 20]
        .into_iter()
        .enumerate()
        .map(|(i, len)| (format!("step-100/f{len}.bin"), random_bytes(len, i as u64)))
        .collect()
}

fn byte_exact_and_random_reads(backend: Backend) {
    let files = edge_files();
    for (key, data) in &files {
        backend.put(key, data);
    }
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M", "ram_size=64M"]);
    for (key, data) in &files {
        let got = std::fs::read(mount.path(key)).unwrap();
        assert!(
            got == *data,
            "{key}: {} bytes read, {} expected, or bytes differ",
            got.len(),
            data.len()
        );
    }
    // Random offsets and lengths, compared with the source.
    let (key, data) = files.last().unwrap();
    let f = File::open(mount.path(key)).unwrap();
    let mut rng_state = 12345u64;
    for _ in 0..200 {
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (rng_state >> 16) as usize % data.len();
        let len = ((rng_state >> 40) as usize % (3 * CHUNK)).min(data.len() - offset);
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset as u64).unwrap();
        assert!(
            buf == data[offset..offset + len],
            "read at {offset}+{len} differs"
        );
    }
    // sha256sum through the mount matches the source.
    let sums = sh(&format!(
        "cd {} && sha256sum step-100/*",
        mount.dir.path().display()
    ));
    assert_eq!(sums.lines().count(), files.len());
}

fn concurrent_readers(backend: Backend) {
    let data = random_bytes(24 << 20, 99);
    backend.put("m/shared.bin", &data);
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);
    let path = mount.path("m/shared.bin");
    std::thread::scope(|s| {
        for reader in 0..16 {
            let (path, data) = (&path, &data);
            s.spawn(move || {
                let f = File::open(path).unwrap();
                // Each reader starts at a different chunk and wraps around.
                let chunks = data.len() / CHUNK;
                for i in 0..chunks {
                    let c = (i + reader) % chunks;
                    let mut buf = vec![0u8; CHUNK];
                    f.read_exact_at(&mut buf, (c * CHUNK) as u64).unwrap();
                    assert!(
                        buf == data[c * CHUNK..(c + 1) * CHUNK],
                        "reader {reader} chunk {c}"
                    );
                }
            });
        }
    });
}

#[test]
fn local_byte_exact_and_random_reads() {
    byte_exact_and_random_reads(Backend::local());
}

#[test]
fn s3_byte_exact_and_random_reads() {
    byte_exact_and_random_reads(Backend::s3());
}

#[test]
fn local_concurrent_readers() {
    concurrent_readers(Backend::local());
}

#[test]
fn s3_concurrent_readers() {
    concurrent_readers(Backend::s3());
}

#[test]
fn s3_second_mount_serves_cached_chunks_with_the_server_stopped() {
    let mut backend = Backend::s3();
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("run/w{i}.bin"),
                random_bytes(3 * CHUNK + 17 * i, 40 + i as u64),
            )
        })
        .collect();
    for (key, data) in &files {
        backend.put(key, data);
    }
    backend.put("run/never-read.bin", &random_bytes(CHUNK, 9));
    // Both mounts talk to the store through a proxy that counts object GETs.
    let proxy = proxy::FaultProxy::start(
        backend.s3_server().port,
        &format!("GET /{BUCKET}/models/run/"),
    );
    let endpoint = format!("endpoint=http://127.0.0.1:{}", proxy.port);
    let opts = [
        "chunk_size=1M",
        "fetch_timeout=2s",
        "fetch_retries=1",
        endpoint.as_str(),
    ];
    let cache = tempfile::tempdir().unwrap();
    {
        let first = Mount::new(&backend, cache.path(), &opts);
        for (key, data) in &files {
            assert!(std::fs::read(first.path(key)).unwrap() == *data);
        }
        // Let the background NVMe writes finish before unmounting.
        wait_until(|| {
            cached_bytes(cache.path()) >= files.iter().map(|(_, d)| d.len() as u64).sum()
        });
        first.unmount();
    }
    let fetched_by_first = proxy.count();
    assert!(
        fetched_by_first >= files.len(),
        "the proxy saw no object GET"
    );
    let second = Mount::new(&backend, cache.path(), &opts);
    for (key, _) in &files {
        std::fs::metadata(second.path(key)).unwrap();
    }
    for (key, data) in &files {
        assert!(std::fs::read(second.path(key)).unwrap() == *data);
    }
    assert_eq!(
        proxy.count(),
        fetched_by_first,
        "cached chunks were fetched from the store"
    );
    std::fs::metadata(second.path("run/never-read.bin")).unwrap();
    backend.s3_server().stop();
    for (key, data) in &files {
        assert!(
            std::fs::read(second.path(key)).unwrap() == *data,
            "{key} not served from the cache"
        );
    }
    // A chunk only the store has fails with EIO once the fetch timeout passes.
    let err = std::fs::read(second.path("run/never-read.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

fn flipped_byte_is_healed(backend: Backend) {
    let data = random_bytes(3 * CHUNK, 7);
    backend.put("heal/w.bin", &data);
    let cache = tempfile::tempdir().unwrap();
    {
        let m = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);
        assert!(std::fs::read(m.path("heal/w.bin")).unwrap() == data);
        wait_until(|| cached_bytes(cache.path()) >= data.len() as u64);
    }
    let cache_file = cache_file(cache.path());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cache_file)
        .unwrap();
    let mut b = [0u8; 1];
    let at = (CHUNK + 1000) as u64;
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    drop(f);
    let m = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);
    assert!(
        std::fs::read(m.path("heal/w.bin")).unwrap() == data,
        "corrupt cache bytes reached the reader"
    );
    assert!(
        m.log().contains("failed its digest check"),
        "the heal was not logged"
    );
}

#[test]
fn local_flipped_byte_in_the_cache_is_healed() {
    flipped_byte_is_healed(Backend::local());
}

#[test]
fn s3_flipped_byte_in_the_cache_is_healed() {
    flipped_byte_is_healed(Backend::s3());
}

fn replaced_object_reads_back_new(backend: Backend) {
    let old = random_bytes(2 * CHUNK + 5, 1);
    let new = random_bytes(CHUNK + 9, 2);
    backend.put("r/model.bin", &old);
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(
        &backend,
        cache.path(),
        &["chunk_size=1M", "metadata_ttl=1s"],
    );
    assert!(std::fs::read(m.path("r/model.bin")).unwrap() == old);
    // Keep mtimes apart on stores that name versions by mtime and size.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    backend.put("r/model.bin", &new);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(
        std::fs::read(m.path("r/model.bin")).unwrap() == new,
        "old bytes served after the object changed"
    );
}

#[test]
fn local_replaced_object_reads_back_new() {
    replaced_object_reads_back_new(Backend::local());
}

#[test]
fn s3_replaced_object_reads_back_new() {
    replaced_object_reads_back_new(Backend::s3());
}

/// The mount's own options in /proc/self/mountinfo: per-mount flags and super options.
fn mount_flags(path: &std::path::Path) -> String {
    let p = path.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(p.as_str()))
        .expect("mounted");
    line.to_string()
}

#[test]
fn ro_and_allow_other_are_honoured() {
    let backend = Backend::local();
    backend.put("m/a.bin", b"abc");
    let cache = tempfile::tempdir().unwrap();
    let ro = Mount::new(&backend, cache.path(), &["ro", "allow_other"]);
    let flags = mount_flags(ro.dir.path());
    assert!(
        flags
            .split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|f| f == "ro"),
        "{flags}"
    );
    assert!(flags.contains("allow_other"), "{flags}");
    let err = std::fs::write(ro.path("m/new.bin"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    ro.unmount();

    let rw = Mount::new(&backend, cache.path(), &[]);
    let flags = mount_flags(rw.dir.path());
    assert!(!flags.contains("allow_other"), "{flags}");
    // A read-write mount takes changes (tests/write_path.rs covers them).
    std::fs::write(rw.path("m/new.bin"), b"x").unwrap();
    assert_eq!(std::fs::read(rw.path("m/new.bin")).unwrap(), b"x");
    let missing = std::fs::metadata(rw.path("m/nope")).unwrap_err();
    assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(std::fs::read(rw.path("m/a.bin")).unwrap(), b"abc");
    // statfs answers; the only extended attribute of an object another tool
    // wrote is where its bytes are (tests/tier_control.rs covers them).
    let df = sh(&format!(
        "stat -f -c '%b %S %l' {}",
        rw.dir.path().display()
    ));
    assert_eq!(df.split_whitespace().nth(2), Some("255"), "{df}");
    let attrs = sh(&format!(
        "getfattr -d -m - {} 2>&1 || true",
        rw.path("m/a.bin").display()
    ));
    assert!(
        attrs.contains("user.tierfs.tier=\"ram 100% 3, nvme 100% 3, store 100% 3\"")
            && !attrs.contains("digest"),
        "{attrs}"
    );
    let one = sh(&format!(
        "getfattr -n user.tierfs.digest {} 2>&1 || true",
        rw.path("m/a.bin").display()
    ));
    assert!(one.contains("No such attribute"), "{one}");
}
