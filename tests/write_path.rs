//! Writing through real mounts, over a local directory and over a real S3 server
//! on 127.0.0.1: every operation a checkpoint writer uses, what reaches the store,
//! and uploads that resume after the daemon is killed.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use common::*;

const UPLOAD_WAIT: Duration = Duration::from_secs(60);

fn assert_in_store(backend: &Backend, key: &str, want: &[u8]) {
    let ok = wait_for(UPLOAD_WAIT, || backend.get(key).as_deref() == Some(want));
    assert!(
        ok,
        "{key}: the store has {:?} bytes, {} were written",
        backend.get(key).map(|d| d.len()),
        want.len()
    );
}

fn assert_gone_from_store(backend: &Backend, key: &str) {
    let ok = wait_for(UPLOAD_WAIT, || backend.get(key).is_none());
    assert!(ok, "{key} is still in the store");
}

fn every_operation(backend: Backend) {
    backend.put("old/existing.bin", &random_bytes(3 << 20, 1));
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);

    // create + sequential write, several chunks and parts.
    let big = random_bytes((12 << 20) + 123, 2);
    std::fs::write(mount.path("big.bin"), &big).unwrap();
    let back = std::fs::read(mount.path("big.bin"))
        .unwrap_or_else(|e| panic!("reading big.bin back: {e}\n{}", mount.log()));
    assert!(back == big);

    // random writes out of order, with a hole, then fsync.
    let mut expect = vec![0u8; 3 << 20];
    {
        let f = File::create(mount.path("random.bin")).unwrap();
        for (i, offset) in [(2usize << 20) + 7, 0, 1 << 20, 5000]
            .into_iter()
            .enumerate()
        {
            let piece = random_bytes(70_000, 10 + i as u64);
            f.write_all_at(&piece, offset as u64).unwrap();
            let end = offset + piece.len();
            if expect.len() < end {
                expect.resize(end, 0);
            }
            expect[offset..end].copy_from_slice(&piece);
        }
        f.set_len(expect.len() as u64).unwrap();
        f.sync_all().unwrap();
    }
    // ftruncate shorter and truncate by path.
    {
        let f = OpenOptions::new()
            .write(true)
            .open(mount.path("random.bin"))
            .unwrap();
        f.set_len(1 << 20).unwrap();
    }
    expect.truncate(1 << 20);
    std::fs::write(mount.path("short.txt"), b"0123456789").unwrap();
    sh(&format!(
        "truncate -s 4 {}",
        mount.path("short.txt").display()
    ));

    // appending to a file that is only in the store copies it first.
    let mut existing = backend.get("old/existing.bin").unwrap();
    {
        let mut f = OpenOptions::new()
            .append(true)
            .open(mount.path("old/existing.bin"))
            .unwrap();
        f.write_all(b"tail").unwrap();
    }
    existing.extend_from_slice(b"tail");

    // mkdir, rename of a file and of a directory, unlink, rmdir.
    std::fs::create_dir(mount.path("dir")).unwrap();
    std::fs::create_dir(mount.path("dir/sub")).unwrap();
    std::fs::write(mount.path("dir/sub/w.bin"), b"weights").unwrap();
    std::fs::write(mount.path("tmpname"), b"renamed file").unwrap();
    std::fs::rename(mount.path("tmpname"), mount.path("dir/final")).unwrap();
    std::fs::rename(mount.path("dir"), mount.path("dir2")).unwrap();
    std::fs::write(mount.path("doomed"), b"x").unwrap();
    std::fs::remove_file(mount.path("doomed")).unwrap();
    std::fs::create_dir(mount.path("empty")).unwrap();
    assert_eq!(
        std::fs::remove_dir(mount.path("dir2"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    std::fs::remove_dir(mount.path("empty")).unwrap();
    assert!(!mount.path("empty").exists());

    // chmod and utimens are kept; symbolic links are made; hard links are
    // refused clearly.
    sh(&format!(
        "chmod 600 {0} && touch -d @1000000000 {0}",
        mount.path("short.txt").display()
    ));
    let meta = std::fs::metadata(mount.path("short.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.mtime(), 1_000_000_000);
    let link = std::fs::hard_link(mount.path("short.txt"), mount.path("hard"));
    assert_eq!(link.unwrap_err().raw_os_error(), Some(libc::EPERM));
    std::os::unix::fs::symlink("short.txt", mount.path("soft")).unwrap();
    assert_eq!(
        std::fs::read_link(mount.path("soft")).unwrap(),
        std::path::Path::new("short.txt")
    );
    // A name the store cannot hold is refused before anything is written.
    let long = "n".repeat(300);
    let err = File::create(mount.path(&long)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));

    // A file being written shows its size to other callers before it is closed.
    {
        let mut f = File::create(mount.path("growing.bin")).unwrap();
        f.write_all(&[7u8; 300_000]).unwrap();
        assert_eq!(
            std::fs::metadata(mount.path("growing.bin")).unwrap().len(),
            300_000
        );
    }
    std::fs::remove_file(mount.path("growing.bin")).unwrap();

    // Through the mount, at once.
    let listing = sh(&format!(
        "cd {} && find . | sort",
        mount.dir.path().display()
    ));
    for name in [
        "./big.bin",
        "./dir2/final",
        "./dir2/sub/w.bin",
        "./old/existing.bin",
    ] {
        assert!(
            listing.lines().any(|l| l == name),
            "{name} missing:\n{listing}"
        );
    }
    assert!(
        !listing.contains("doomed") && !listing.contains("tmpname"),
        "{listing}"
    );
    assert_eq!(
        std::fs::read(mount.path("dir2/final")).unwrap(),
        b"renamed file"
    );
    assert_eq!(std::fs::read(mount.path("random.bin")).unwrap(), expect);

    // In the store, once uploaded.
    assert_in_store(&backend, "big.bin", &big);
    assert_in_store(&backend, "random.bin", &expect);
    assert_in_store(&backend, "short.txt", b"0123");
    assert_in_store(&backend, "old/existing.bin", &existing);
    assert_in_store(&backend, "dir2/sub/w.bin", b"weights");
    assert_in_store(&backend, "dir2/final", b"renamed file");
    assert_gone_from_store(&backend, "doomed");
    assert_gone_from_store(&backend, "tmpname");
    assert_gone_from_store(&backend, "dir/sub/w.bin");
    assert!(mount.log().contains("uploaded and verified"));
    // Writes went straight to the staging files (FUSE passthrough).
    assert!(mount.log().contains("created with passthrough"));
    if let Backend::Local(store) = &backend {
        // Renames and removals leave no empty directories behind in the store,
        // which a later listing would show again.
        assert!(
            wait_for(UPLOAD_WAIT, || !store.path().join("dir").exists()),
            "dir/ stayed in the store directory"
        );
    }

    // A fresh mount with an empty cache sees the same files.
    mount.unmount();
    let cache2 = tempfile::tempdir().unwrap();
    let again = Mount::new(&backend, cache2.path(), &["chunk_size=1M"]);
    assert_eq!(std::fs::read(again.path("big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(again.path("dir2/final")).unwrap(),
        b"renamed file"
    );
}

#[test]
fn every_operation_over_a_local_directory() {
    every_operation(Backend::local());
}

#[test]
fn every_operation_over_s3() {
    every_operation(Backend::s3());
}

/// The way checkpoint libraries save: a directory written file by file under a
/// temporary name and renamed when complete; then a tarball unpacked in place.
#[test]
fn checkpoint_directory_renamed_when_complete_and_tar() {
    let backend = Backend::s3();
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);
    let shards: Vec<Vec<u8>> = (0..4)
        .map(|i| random_bytes((3 << 20) + i * 1000, 40 + i as u64))
        .collect();
    std::fs::create_dir(mount.path("run1")).unwrap();
    std::fs::create_dir(mount.path("run1/.tmp-step-200")).unwrap();
    for (i, shard) in shards.iter().enumerate() {
        let path = mount.path(&format!("run1/.tmp-step-200/shard-{i}.safetensors"));
        let mut f = File::create(&path).unwrap();
        f.write_all(shard).unwrap();
        f.sync_all().unwrap();
    }
    std::fs::rename(
        mount.path("run1/.tmp-step-200"),
        mount.path("run1/step-200"),
    )
    .unwrap();
    for (i, shard) in shards.iter().enumerate() {
        assert_eq!(
            &std::fs::read(mount.path(&format!("run1/step-200/shard-{i}.safetensors"))).unwrap(),
            shard
        );
        assert_in_store(
            &backend,
            &format!("run1/step-200/shard-{i}.safetensors"),
            shard,
        );
    }
    assert!(
        wait_for(UPLOAD_WAIT, || !backend
            .keys()
            .iter()
            .any(|k| k.contains(".tmp-step-200"))),
        "the temporary name stayed in the store: {:?}",
        backend.keys()
    );

    // tar -x into the mount.
    let src = tempfile::tempdir().unwrap();
    sh(&format!(
        "cd {0} && mkdir -p ck/a && head -c 2500000 /dev/urandom > ck/a/x.bin && echo meta > ck/meta.json && tar -cf {0}/ck.tar ck",
        src.path().display()
    ));
    sh(&format!(
        "tar -xf {}/ck.tar -C {}",
        src.path().display(),
        mount.dir.path().display()
    ));
    let want = std::fs::read(src.path().join("ck/a/x.bin")).unwrap();
    assert_eq!(std::fs::read(mount.path("ck/a/x.bin")).unwrap(), want);
    assert_in_store(&backend, "ck/a/x.bin", &want);
    assert_in_store(&backend, "ck/meta.json", b"meta\n");
}

fn daemon_pid(mount: &Mount) -> Option<u32> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("tierfs mount .* {} ", mount.dir.path().display()))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The daemon is killed with SIGKILL at random moments while files are written,
/// fsynced and uploaded; after a restart every fsynced file reaches the store
/// with the right bytes.
#[test]
fn fsynced_files_survive_sigkill() {
    let backend = Backend::s3();
    let cache = tempfile::tempdir().unwrap();
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    // Kill moments drawn from a seeded generator, so that a failure can be replayed.
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("TIERFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("crash test seed {seed} (TIERFS_CRASH_SEED replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..8u64 {
        // Demotion after one idle second: kills also land while local copies
        // of uploaded files are being removed.
        let mount = Mount::new(
            &backend,
            cache.path(),
            &["chunk_size=1M", "upload_concurrency=2", "idle_demote=1s"],
        );
        let pid = daemon_pid(&mount).expect("the daemon runs");
        // Files fsynced in this round: each must survive.
        for i in 0..3u64 {
            let key = format!("r{round}/f{i}.bin");
            let data = random_bytes((6 << 20) + (i as usize * 4321), round * 10 + i);
            let mut f = File::create(
                mount
                    .path(&key)
                    .parent()
                    .map(|p| {
                        std::fs::create_dir_all(p).unwrap();
                        mount.path(&key)
                    })
                    .unwrap(),
            )
            .unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
            expected.push((key, data));
        }
        // Kill at a random moment: during an unsynced write, while uploads are
        // in flight, or while local copies are demoted.
        let f = File::create(mount.path(&format!("r{round}/unsynced.bin"))).unwrap();
        f.write_all_at(&random_bytes(1 << 20, 99), 0).unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
        // SAFETY: kill takes no pointers; pid is the daemon this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        drop(f);
        mount.unmount();
    }
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);
    for (key, data) in &expected {
        assert_eq!(
            &std::fs::read(mount.path(key)).unwrap(),
            data,
            "{key} through the mount"
        );
        assert_in_store(&backend, key, data);
    }
    assert!(
        mount.log().contains("resuming uploads")
            || expected.iter().all(|(k, _)| backend.get(k).is_some())
    );
    // Every upload cut by a kill was resumed and completed, or aborted.
    let mut backend = backend;
    let server = backend.s3_server();
    assert!(
        wait_for(UPLOAD_WAIT, || server.open_multipart_uploads().is_empty()),
        "multipart uploads left open: {:?}",
        server.open_multipart_uploads()
    );
}

/// Old data moves to cheaper storage: once uploaded and idle past `idle_demote`,
/// a file's local copy goes, it still reads back from the store, and the log
/// shows the uploads.
#[test]
fn idle_uploaded_files_leave_the_cache_and_read_back_from_the_store() {
    let backend = Backend::s3();
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M", "idle_demote=2s"]);
    let data = random_bytes((5 << 20) + 77, 7);
    let mut f = File::create(mount.path("ckpt.bin")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_in_store(&backend, "ckpt.bin", &data);
    let cached = || {
        std::fs::read_dir(cache.path().join("chunks"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(
        wait_for(UPLOAD_WAIT, || mount.log().contains("local copy demoted")),
        "{}",
        mount.log()
    );
    assert_eq!(cached(), 0, "{}", mount.log());
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    assert!(std::fs::read(mount.path("ckpt.bin")).unwrap() == data);
    let log = mount.log();
    assert!(log.contains("uploads: 0 pending"), "{log}");
    assert!(log.contains("1 completed"), "{log}");
}

/// A checkpoint replaced the way libraries do it (written under a temporary name,
/// renamed over the old one) while a reader has the old one open: the reader keeps
/// reading the old bytes, also those it had not read before the new version
/// replaced the object in the store; a new open sees the new version.
#[test]
fn readers_of_a_replaced_file_keep_the_old_bytes() {
    let backend = Backend::s3();
    let old = random_bytes(24 << 20, 70);
    backend.put("model.bin", &old);
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M", "prefetch_max=0"]);
    let reader = File::open(mount.path("model.bin")).unwrap();
    let mut head = vec![0u8; 1 << 20];
    reader.read_exact_at(&mut head, 0).unwrap();
    assert!(head == old[..1 << 20]);

    let new = random_bytes(24 << 20, 71);
    std::fs::write(mount.path("model.bin.tmp"), &new).unwrap();
    std::fs::rename(mount.path("model.bin.tmp"), mount.path("model.bin")).unwrap();
    assert_in_store(&backend, "model.bin", &new);
    assert!(
        wait_for(UPLOAD_WAIT, || mount
            .log()
            .contains("uploaded and verified")),
        "{}",
        mount.log()
    );

    // Past the kernel's page cache, so the reads reach tierfs with the old handle.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    let mut rest = vec![0u8; old.len() - (1 << 20)];
    reader.read_exact_at(&mut rest, 1 << 20).unwrap();
    assert!(rest == old[1 << 20..], "the old reader saw other bytes");
    assert!(std::fs::read(mount.path("model.bin")).unwrap() == new);
    drop(reader);
}

/// A file fsynced (its upload starts), changed again and then renamed with its
/// directory while that first upload is still running: the store ends with the
/// final bytes under the final name and nothing under the temporary one.
#[test]
fn a_superseded_upload_leaves_nothing_under_the_old_name() {
    let backend = Backend::s3();
    let cache = tempfile::tempdir().unwrap();
    // Slow uploads, so that the first one is still running at the rename.
    let mount = Mount::new(
        &backend,
        cache.path(),
        &["chunk_size=1M", "upload_bandwidth=1M"],
    );
    std::fs::create_dir(mount.path("tmp")).unwrap();
    let first = random_bytes(3 << 20, 80);
    let mut f = File::create(mount.path("tmp/a.bin")).unwrap();
    f.write_all(&first).unwrap();
    f.sync_all().unwrap();
    f.write_all(b"more").unwrap();
    drop(f);
    std::fs::rename(mount.path("tmp"), mount.path("final")).unwrap();
    let mut want = first;
    want.extend_from_slice(b"more");
    assert_in_store(&backend, "final/a.bin", &want);
    assert!(
        wait_for(UPLOAD_WAIT, || !backend
            .keys()
            .iter()
            .any(|k| k.starts_with("tmp/"))),
        "left in the store: {:?}\n{}",
        backend.keys(),
        mount.log()
    );
}

/// Readers that the kernel serves from the file's cached copy (passthrough)
/// and a writer that opens it meanwhile share that copy: the writer's open
/// succeeds, and the open readers see what it wrote, for an append and for a
/// rewrite from the start, as readers of a local file do.
#[test]
fn a_writer_joins_readers_that_pass_through_the_cached_copy() {
    use std::io::{Read, Seek};
    let backend = Backend::local();
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &[]);
    let path = mount.path("y.bin");
    let first = random_bytes(300_000, 31);
    std::fs::write(&path, &first).unwrap();
    assert_in_store(&backend, "y.bin", &first);
    // Once the upload is adopted as the cached copy, opens pass through it.
    let passed = || mount.log().matches("opened with passthrough").count();
    let mut reader = open_when_counted(&path, UPLOAD_WAIT, || (), passed)
        .unwrap_or_else(|| panic!("no open passed through\n{}", mount.log()));

    let mut appender = OpenOptions::new().append(true).open(&path).unwrap();
    appender.write_all(b"tail").unwrap();
    drop(appender);
    let mut want = first.clone();
    want.extend_from_slice(b"tail");
    let mut seen = Vec::new();
    reader.read_to_end(&mut seen).unwrap();
    assert!(seen == want, "the reader saw {} bytes", seen.len());
    assert_in_store(&backend, "y.bin", &want);

    let rewritten = random_bytes(1000, 32);
    std::fs::write(&path, &rewritten).unwrap();
    reader.rewind().unwrap();
    let mut seen = Vec::new();
    reader.read_to_end(&mut seen).unwrap();
    assert!(seen == rewritten, "the reader saw {} bytes", seen.len());
    assert!(std::fs::read(&path).unwrap() == rewritten);
    assert_in_store(&backend, "y.bin", &rewritten);
    drop(reader);
    assert!(std::fs::read(&path).unwrap() == rewritten);
}

/// A file read while it is being written, and written while it is being read:
/// every open succeeds and sees what was written. (The kernel serves an inode
/// either through the daemon or straight from a backing file, never both.)
#[test]
fn readers_and_writers_of_a_file_being_written_share_it() {
    use std::io::Read;
    let backend = Backend::local();
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &[]);
    let path = mount.path("x.bin");
    let mut writer = File::create(&path).unwrap();
    writer.write_all(&[1u8; 100_000]).unwrap();
    let mut reader = File::open(&path).unwrap();
    let mut seen = Vec::new();
    reader.read_to_end(&mut seen).unwrap();
    assert_eq!(seen.len(), 100_000);
    writer.write_all(&[2u8; 100]).unwrap();
    reader.read_to_end(&mut seen).unwrap();
    assert_eq!(seen.len(), 100_100);
    drop(writer);
    drop(reader);

    // Reopened at once after closing, and written while a reader has it open.
    let mut reader = File::open(&path).unwrap();
    let mut appender = OpenOptions::new().append(true).open(&path).unwrap();
    appender.write_all(&[3u8; 10]).unwrap();
    drop(appender);
    let mut all = Vec::new();
    reader.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 100_110);
    let mut want = vec![1u8; 100_000];
    want.extend_from_slice(&[2u8; 100]);
    want.extend_from_slice(&[3u8; 10]);
    assert!(all == want);
    assert_in_store(&backend, "x.bin", &want);
}

/// A file written, fsynced and closed, then at once reopened, truncated and
/// closed: the two closes seal it concurrently, and the store must end with the
/// last version whatever order their seals finish in (the older seal used to
/// replace the newer record, whose upload then never ran).
#[test]
fn a_file_truncated_right_after_an_fsynced_close_uploads_its_last_version() {
    let backend = Backend::local();
    let cache = tempfile::tempdir().unwrap();
    let mount = Mount::new(&backend, cache.path(), &["chunk_size=1M"]);
    for round in 0..40u64 {
        let name = format!("r{round}.bin");
        let data = random_bytes(3 << 20, round);
        {
            let f = File::create(mount.path(&name)).unwrap();
            f.write_all_at(&data, 0).unwrap();
            f.sync_all().unwrap();
        }
        {
            let f = OpenOptions::new()
                .write(true)
                .open(mount.path(&name))
                .unwrap();
            f.set_len(1 << 20).unwrap();
        }
        let want = &data[..1 << 20];
        assert!(
            wait_for(UPLOAD_WAIT, || backend.get(&name).as_deref() == Some(want)),
            "round {round}: the store has {:?} bytes\n{}",
            backend.get(&name).map(|d| d.len()),
            mount.log()
        );
    }
}
