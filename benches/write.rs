//! Write throughput of tierfs, in one run, on one machine, against one s3s-fs
//! server on 127.0.0.1:
//! - a sequential write of a big file through the mount (1 MiB writes, then
//!   fsync) against the same write to a file on the same disk;
//! - the upload that follows (from the file's close until the object is uploaded
//!   and verified) against the raw object_store multipart upload of the same size
//!   with the same part size and concurrency.
//!
//! Full run (writes its section of BENCHMARKS.md): `cargo bench --bench write`
//!   TIERFS_BENCH_FILE_MB (default 1024) sets the file size, TIERFS_BENCH_RUNS
//!   (default 3) the runs; the median is reported.
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a small smoke run
//! that prints the table and writes nothing. The page cache is dropped before
//! each timed write (needs root). Needs /dev/fuse and
//! `bash tests/setup.sh`.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use harness::{MB, Row, drop_page_cache, median};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

/// tierfs's default part (chunk) size and upload concurrency, used by both sides.
const PART: usize = 8 << 20;
const CONCURRENCY: usize = 8;
const BLOCK: usize = 1 << 20;

/// Writes `size` bytes cycled from `pattern` in 1 MiB writes, fsyncs and closes;
/// MB/s over the whole.
fn write_file(path: &Path, size: usize, pattern: &[u8]) -> f64 {
    let start = Instant::now();
    let mut f = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut written = 0;
    while written < size {
        let at = written % pattern.len();
        let n = BLOCK.min(size - written).min(pattern.len() - at);
        f.write_all(&pattern[at..at + n]).unwrap();
        written += n;
    }
    f.sync_all().unwrap();
    drop(f);
    size as f64 / MB / start.elapsed().as_secs_f64()
}

/// The raw client's multipart upload of the same bytes; MB/s.
fn raw_multipart(client: &dyn ObjectStore, key: &str, size: usize, pattern: &[u8]) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = ObjectPath::parse(format!("models/{key}")).unwrap();
    let start = Instant::now();
    runtime.block_on(async {
        let upload = client.put_multipart(&path).await.unwrap();
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut written = 0;
        while written < size {
            writer.wait_for_capacity(CONCURRENCY).await.unwrap();
            let at = written % pattern.len();
            let n = PART.min(size - written).min(pattern.len() - at);
            writer.write(&pattern[at..at + n]);
            written += n;
        }
        writer.finish().await.unwrap();
    });
    size as f64 / MB / start.elapsed().as_secs_f64()
}

/// Waits until the log says `key` was uploaded and verified; the time it took.
fn wait_uploaded(mount: &Mount, key: &str, since: Instant) -> Duration {
    let needle = format!("key={key} ");
    let done = wait_for(Duration::from_secs(600), || {
        mount
            .log()
            .lines()
            .any(|l| l.contains("uploaded and verified") && l.contains(&needle))
    });
    assert!(done, "{key} was not uploaded:\n{}", mount.log());
    since.elapsed()
}

fn main() {
    let harness::Scale {
        full,
        file_mb,
        runs,
    } = harness::Scale::from_env(32);
    let size = file_mb << 20;
    let backend = Backend::s3();
    let Backend::S3(server) = &backend else {
        unreachable!()
    };
    let client = server.client();
    // Random bytes, so that no layer can compress or skip them.
    let pattern = random_bytes(64 << 20, 11);
    let scratch = tempfile::tempdir().unwrap();
    let (mut direct, mut through, mut raw, mut upload) = (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        // Each timed write starts with no dirty pages left from the one before
        // (their writeback would slow whichever write comes next).
        drop_page_cache();
        let disk_file = scratch.path().join("direct.bin");
        direct.push(write_file(&disk_file, size, &pattern));
        std::fs::remove_file(&disk_file).unwrap();
        drop_page_cache();

        // The cache on the same disk as the direct file.
        let cache = tempfile::tempdir_in(scratch.path()).unwrap();
        let cache_size = format!("cache_size={}", 3 * size as u64 + (1 << 30));
        let mount = Mount::new(&backend, cache.path(), &[cache_size.as_str()]);
        let key = format!("ckpt-{run}.bin");
        through.push(write_file(&mount.path(&key), size, &pattern));
        let closed = Instant::now();
        let took = wait_uploaded(&mount, &key, closed);
        upload.push(size as f64 / MB / took.as_secs_f64());
        mount.unmount();
        drop_page_cache();

        raw.push(raw_multipart(
            client.as_ref(),
            &format!("raw-{run}.bin"),
            size,
            &pattern,
        ));
        for key in [format!("models/{key}"), format!("models/raw-{run}.bin")] {
            let path = ObjectPath::parse(key).unwrap();
            block_on(client.delete(&path)).unwrap();
        }
    }
    println!(
        "runs, MB/s: direct {direct:.0?}, through the mount {through:.0?}, raw upload {raw:.0?}, upload {upload:.0?}"
    );
    let rows = [
        Row {
            case: format!("sequential write of {file_mb} MiB + fsync"),
            tierfs: median(through),
            baseline_name: "same write to the same disk".into(),
            baseline: median(direct),
            unit: "MB/s",
            goal: ">= 0.8",
            rss_mib: None,
            paired_ratio: None,
        },
        Row {
            case: "upload after close, until verified".into(),
            tierfs: median(upload),
            baseline_name: format!(
                "object_store multipart upload ({} MiB parts, {CONCURRENCY} at once)",
                PART >> 20
            ),
            baseline: median(raw),
            unit: "MB/s",
            goal: ">= 0.9",
            rss_mib: None,
            paired_ratio: None,
        },
    ];
    let table = harness::render_table(&rows);
    println!("{table}");
    if full {
        harness::write_section(
            "write",
            &format!(
                "## Writes\n\nMeasured by `cargo bench --bench write` (see benches/write.rs) on {}, \
                 against s3s-fs 0.17 on 127.0.0.1. File: {file_mb} MiB of random bytes written in \
                 1 MiB writes, the page cache dropped before each timed write; median of {runs} runs. The upload is timed from the file's close \
                 until tierfs logs it uploaded and verified (size, ETag and digest checked).\n\n{table}",
                harness::machine()
            ),
        );
    }
}
