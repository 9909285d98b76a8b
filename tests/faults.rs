//! Network faults between tierfs and the store: a proxy on 127.0.0.1 resets
//! connections, answers 500/503 and stalls. Checkpoints written meanwhile reach the
//! store once the faults stop, cached files stay readable throughout, and reads
//! that need the store fail with EIO instead of hanging.

mod common;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use common::proxy::{Fault, FaultProxy};
use common::*;

/// Far beyond the retry budget the mount is given: a read that has not ended by
/// then hangs.
const HANG: Duration = Duration::from_secs(90);

/// Reads a file on another thread; fails the test if the read does not end.
fn read_or_hang(path: PathBuf) -> std::io::Result<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let shown = path.display().to_string();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(&path));
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("reading {shown} hung"))
}

/// A mount that reaches the store through `proxy`, with 1 MiB chunks and a
/// 2-second request timeout.
fn mount_through(
    proxy: &FaultProxy,
    backend: &Backend,
    cache: &std::path::Path,
    options: &[&str],
) -> Mount {
    let endpoint = format!("endpoint={}", proxy.endpoint());
    let mut all = vec!["chunk_size=1M", "fetch_timeout=2s", endpoint.as_str()];
    all.extend_from_slice(options);
    Mount::new(backend, cache, &all)
}

#[test]
fn uploads_survive_network_faults_and_cached_reads_keep_working() {
    let mut backend = Backend::s3();
    let hot = random_bytes((3 << 20) + 11, 1);
    let cold = random_bytes(2 << 20, 2);
    backend.put("hot.bin", &hot);
    backend.put("cold.bin", &cold);
    let proxy = FaultProxy::start(backend.s3_server().port, "PUT /");
    let cache = tempfile::tempdir().unwrap();
    let mount = mount_through(
        &proxy,
        &backend,
        cache.path(),
        &[
            "fetch_retries=1",
            // Short, so that opens and lookups during the faults ask the store.
            "metadata_ttl=1s",
        ],
    );
    assert_eq!(std::fs::read(mount.path("hot.bin")).unwrap(), hot);
    assert_eq!(
        std::fs::metadata(mount.path("cold.bin")).unwrap().len(),
        cold.len() as u64
    );

    let mut written = Vec::new();
    for (i, fault) in [Fault::Reset, Fault::ServerError, Fault::Stall]
        .into_iter()
        .enumerate()
    {
        proxy.set(fault);
        // A checkpoint saved during the fault: written and fsynced at local speed.
        let key = format!("during-{fault:?}.bin");
        let data = random_bytes((7 << 20) + i * 999, 10 + i as u64);
        let mut f = File::create(mount.path(&key)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(1500));

        // Past the kernel's page cache, so the read reaches tierfs's own tiers
        // (fails harmlessly without root).
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
        let got = read_or_hang(mount.path("hot.bin"));
        assert!(
            got.as_deref().ok() == Some(hot.as_slice()),
            "{fault:?}: a cached file must stay readable: {:?}\n{}",
            got.as_ref().err(),
            mount.log()
        );
        let err = read_or_hang(mount.path("cold.bin")).expect_err("the store is unreachable");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{fault:?}: {err}");
        assert!(
            read_or_hang(mount.path(&key)).unwrap() == data,
            "{fault:?}: a file written during the fault reads back"
        );
        assert!(backend.get(&key).is_none(), "{key} reached the store");
        written.push((key, data));
    }
    assert!(proxy.errors_answered() > 0);

    proxy.set(Fault::None);
    for (key, data) in &written {
        let arrived = wait_for(Duration::from_secs(120), || {
            backend.get(key).as_deref() == Some(data.as_slice())
        });
        assert!(arrived, "{key} did not reach the store\n{}", mount.log());
    }
    assert!(read_or_hang(mount.path("cold.bin")).unwrap() == cold);
    assert!(mount.log().contains("upload failed, retrying"));
    let server = backend.s3_server();
    assert!(
        wait_for(Duration::from_secs(30), || server
            .open_multipart_uploads()
            .is_empty()),
        "multipart uploads left open: {:?}",
        server.open_multipart_uploads()
    );
    mount.unmount();

    // Nothing was lost: a fresh cache, straight to the server.
    let cache2 = tempfile::tempdir().unwrap();
    let again = Mount::new(&backend, cache2.path(), &["chunk_size=1M"]);
    for (key, data) in &written {
        assert!(&std::fs::read(again.path(key)).unwrap() == data, "{key}");
    }
}

/// The cache full of bytes the store does not have yet (uploads stalled): a
/// write waits `dirty_wait`, then fails with ENOSPC and the log says why; once
/// the store answers again the uploads drain and writes succeed.
#[test]
fn writes_fail_with_enospc_when_the_cache_is_full_of_unuploaded_bytes() {
    let mut backend = Backend::s3();
    let proxy = FaultProxy::start(backend.s3_server().port, "PUT /");
    let cache = tempfile::tempdir().unwrap();
    let mount = mount_through(
        &proxy,
        &backend,
        cache.path(),
        &["cache_size=8M", "dirty_wait=1s", "fetch_retries=0"],
    );
    // Listed while the store answers, so that creating names needs no request.
    assert_eq!(std::fs::read_dir(mount.dir.path()).unwrap().count(), 0);
    proxy.set(Fault::Stall);
    let first = random_bytes(7 << 20, 1);
    std::fs::write(mount.path("first.bin"), &first).unwrap();
    // With room to spare, the kernel wrote the first file straight into its
    // staging file; near the limit the second goes through tierfs and waits.
    assert!(mount.log().contains("created with passthrough"));
    let second = random_bytes(3 << 20, 2);
    let err = std::fs::write(mount.path("second.bin"), &second).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(
        mount.log().contains("write refused after waiting"),
        "{}",
        mount.log()
    );

    proxy.set(Fault::None);
    let drained = wait_for(Duration::from_secs(120), || {
        backend.get("first.bin").as_deref() == Some(first.as_slice())
    });
    assert!(drained, "{}", mount.log());
    std::fs::write(mount.path("second.bin"), &second).unwrap();
    let arrived = wait_for(Duration::from_secs(120), || {
        backend.get("second.bin").as_deref() == Some(second.as_slice())
    });
    assert!(arrived, "{}", mount.log());
}
