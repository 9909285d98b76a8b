//! Read throughput of tierfs against the physical limits and against other FUSE
//! clients, in one run, on one machine, against one s3s-fs server on 127.0.0.1.
//!
//! Full run (writes BENCHMARKS.md): `cargo bench --bench throughput`
//!   TIERFS_BENCH_FILE_MB (default 1024) sets the size of the big file,
//!   TIERFS_BENCH_RUNS (default 3) the runs per case; the median is reported;
//!   TIERFS_BENCH_MODEL_MB (default 3072) the size of the safetensors model.
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a small smoke run
//! that prints the table and writes nothing.
//! Needs root (to drop the page cache), /dev/fuse, and `bash tests/setup.sh`.
//! rclone and s3fs rows are measured when those programs are installed
//! (`apt-get install rclone s3fs`).

#[path = "throughput/cold.rs"]
mod cold;
#[path = "../tests/common/mod.rs"]
mod common;
mod harness;
#[path = "throughput/peers.rs"]
mod peers;
#[path = "throughput/safetensors.rs"]
mod safetensors;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use futures::StreamExt;
use harness::{CpuMeter, MB, Row, drop_page_cache, median, paired_ratio, with_steal};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use peers::{installed, peer_cold_read};
use safetensors::safetensors_rows;

/// Reads a whole file sequentially in `bs`-byte reads; MB/s.
fn read_speed(path: &Path, bs: usize) -> f64 {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0u8; bs];
    let start = Instant::now();
    let mut total = 0usize;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    total as f64 / MB / start.elapsed().as_secs_f64()
}

/// `count` reads of `bs` bytes at pseudo-random offsets; MB/s.
fn random_speed(path: &Path, bs: usize, count: usize, size: u64) -> f64 {
    let f = File::open(path).unwrap();
    let mut buf = vec![0u8; bs];
    let mut x = 0x9e3779b97f4a7c15u64;
    let start = Instant::now();
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x % (size - bs as u64)) & !4095;
        f.read_exact_at(&mut buf, offset).unwrap();
    }
    (bs * count) as f64 / MB / start.elapsed().as_secs_f64()
}

/// Peak resident memory of the tierfs daemon serving `mountpoint`, in MiB.
fn daemon_peak_rss(mountpoint: &Path) -> Option<f64> {
    let pid = daemon_pid(mountpoint)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Drops the page cache, then reads the store's copy of `under` (a key or a
/// folder of keys) back into it: every cold case starts with the client's caches
/// empty and the store serving from memory, as a remote store's disk is not this
/// machine's. Without it the store's disk reads would share this machine's disk
/// with the cache being written, and the baselines measured without a drop would
/// not pay them.
fn cold_start(backend: &Backend, under: &str) {
    drop_page_cache();
    let Backend::S3(server) = backend else {
        return;
    };
    fn warm(path: &Path) {
        if path.is_dir() {
            for e in std::fs::read_dir(path).unwrap().flatten() {
                warm(&e.path());
            }
        } else if let Ok(mut f) = File::open(path) {
            std::io::copy(&mut f, &mut std::io::sink()).unwrap();
        }
    }
    warm(&server.data.path().join(BUCKET).join("models").join(under));
}

/// Uploads `size` random bytes as `key`, in 8 MiB parts.
fn put_big(client: &dyn ObjectStore, key: &str, size: usize, seed: u64) {
    let mut left = size;
    let mut part = 0;
    put_parts(client, key, || {
        if left == 0 {
            return None;
        }
        let n = left.min(8 << 20);
        let bytes = random_bytes(n, seed * 1_000_003 + part);
        left -= n;
        part += 1;
        Some(bytes)
    });
}

/// Uploads the local file `path` as `key`, in 8 MiB parts, without holding it
/// in memory (models run to several GiB).
fn put_file(client: &dyn ObjectStore, key: &str, path: &Path) {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    put_parts(client, key, || {
        let mut part = Vec::with_capacity(8 << 20);
        (&mut file)
            .take(8 << 20)
            .read_to_end(&mut part)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (!part.is_empty()).then_some(part)
    });
}

/// A multipart upload of the parts `next_part` gives until it gives none.
fn put_parts(client: &dyn ObjectStore, key: &str, mut next_part: impl FnMut() -> Option<Vec<u8>>) {
    block_on(async {
        let path = ObjectPath::parse(format!("models/{key}")).unwrap();
        let upload = client.put_multipart(&path).await.unwrap();
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        while let Some(part) = next_part() {
            // A few parts in flight at most, not the whole object in memory.
            writer.wait_for_capacity(4).await.unwrap();
            writer.write(&part);
        }
        writer.finish().await.unwrap();
    });
}

/// The raw object_store client doing parallel 8 MiB ranged GETs; MB/s.
fn raw_parallel_get(client: &dyn ObjectStore, key: &str, size: u64, concurrency: usize) -> f64 {
    let path = ObjectPath::parse(format!("models/{key}")).unwrap();
    let ranges: Vec<std::ops::Range<u64>> = (0..size.div_ceil(8 << 20))
        .map(|i| i * (8 << 20)..((i + 1) * (8 << 20)).min(size))
        .collect();
    // A multi-threaded runtime, as tierfs itself uses.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let total: usize = runtime.block_on(async {
        futures::stream::iter(ranges)
            .map(|r| {
                let path = path.clone();
                async move { client.get_range(&path, r).await.unwrap().len() }
            })
            .buffer_unordered(concurrency)
            .fold(0, |a, n| async move { a + n })
            .await
    });
    total as f64 / MB / start.elapsed().as_secs_f64()
}

fn main() {
    let harness::Scale {
        full,
        file_mb,
        runs,
    } = harness::Scale::from_env(16);
    let size = (file_mb as u64) << 20;
    // Checkpoints of several GiB: a model that outgrows the default RAM tier.
    let model_mb = harness::env_num("TIERFS_BENCH_MODEL_MB", if full { 3072 } else { file_mb });
    let backend = Backend::s3();
    let Backend::S3(server) = &backend else {
        unreachable!()
    };
    let client = server.client();
    put_big(client.as_ref(), "big.bin", size as usize, 1);
    let scratch = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    let dropped = drop_page_cache();

    let (cold_rows, cold_detail) =
        cold::cold_rows(&backend, client.as_ref(), size, runs, scratch.path());
    rows.extend(cold_rows);

    // NVMe-resident with the page cache dropped, RAM-resident, page-cache re-read.
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(
        &backend,
        cache.path(),
        &[&format!("ram_size={}M", file_mb * 2 + 64)],
    );
    read_speed(&m.path("big.bin"), 1 << 20);
    wait_for_cache(cache.path(), size);
    m.unmount();
    let cache_file = cache_file(cache.path());
    let (mut nvme, mut direct) = (Vec::new(), Vec::new());
    let m = Mount::new(&backend, cache.path(), &[]);
    // Both sides read the same blocks from a disk whose speed can swing from one read
    // to the next (on a VM, per-pair ratios of the same two reads ranged from 0.35 to
    // 2.4): which side reads first alternates, so that neither always gets the fast
    // turn, and a full run takes at least 9 pairs (a pair costs seconds).
    let pairs = if full { runs.max(9) } else { runs };
    let through_tierfs = m.path("big.bin");
    let read_cold = |path: &Path, speeds: &mut Vec<f64>| {
        drop_page_cache();
        speeds.push(read_speed(path, 1 << 20));
    };
    for run in 0..pairs {
        if run % 2 == 0 {
            read_cold(&through_tierfs, &mut nvme);
            read_cold(&cache_file, &mut direct);
        } else {
            read_cold(&cache_file, &mut direct);
            read_cold(&through_tierfs, &mut nvme);
        }
    }
    let (mut rand4k, mut rand1m, mut local4k, mut local1m) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        rand4k.push(random_speed(&m.path("big.bin"), 4096, 4000, size));
        local4k.push(random_speed(&cache_file, 4096, 4000, size));
        rand1m.push(random_speed(&m.path("big.bin"), 1 << 20, 200, size));
        local1m.push(random_speed(&cache_file, 1 << 20, 200, size));
    }
    // The peak over this daemon's life: the sequential and the random reads.
    let nvme_rss = daemon_peak_rss(m.dir.path());
    m.unmount();
    rows.push(Row {
        case: "NVMe-resident, page cache dropped".into(),
        tierfs: median(nvme.clone()),
        baseline_name: "direct read of the cache file".into(),
        baseline: median(direct.clone()),
        unit: "MB/s",
        goal: ">= 0.95",
        rss_mib: nvme_rss,
        paired_ratio: paired_ratio(&nvme, &direct),
    });
    rows.push(Row {
        case: "random 4 KiB reads, NVMe-resident".into(),
        tierfs: median(rand4k.clone()),
        baseline_name: "same reads of the cache file".into(),
        baseline: median(local4k.clone()),
        unit: "MB/s",
        goal: "",
        rss_mib: nvme_rss,
        paired_ratio: paired_ratio(&rand4k, &local4k),
    });
    rows.push(Row {
        case: "random 1 MiB reads, NVMe-resident".into(),
        tierfs: median(rand1m.clone()),
        baseline_name: "same reads of the cache file".into(),
        baseline: median(local1m.clone()),
        unit: "MB/s",
        goal: "",
        rss_mib: nvme_rss,
        paired_ratio: paired_ratio(&rand1m, &local1m),
    });

    let tmpfs_file = PathBuf::from(format!("/dev/shm/tierfs-bench-{}", std::process::id()));
    std::fs::copy(&cache_file, &tmpfs_file).unwrap();
    let ram_size = format!("ram_size={}M", file_mb * 2 + 64);
    // Pinned to RAM: held whole in a memfd that the kernel reads by passthrough.
    let m = Mount::new(&backend, cache.path(), &[&ram_size]);
    let pin = run_tierfs(&[
        "pin",
        "--tier",
        "ram",
        "--wait",
        m.path("big.bin").to_str().unwrap(),
    ]);
    assert!(
        pin.status.success(),
        "pin: {}",
        String::from_utf8_lossy(&pin.stderr)
    );
    // Runs of: page cache dropped, re-read with it kept, tmpfs; and peak RSS.
    let measure = |m: &Mount| {
        let (mut dropped, mut kept, mut shm) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            drop_page_cache();
            dropped.push(read_speed(&m.path("big.bin"), 1 << 20));
            kept.push(read_speed(&m.path("big.bin"), 1 << 20));
            shm.push(read_speed(&tmpfs_file, 1 << 20));
        }
        let rss = daemon_peak_rss(m.dir.path());
        m.unmount();
        (dropped, kept, shm, rss)
    };
    let (ram, hot, shm, ram_rss) = measure(&m);
    // Kept by the RAM tier's cache after a read, not pinned: every request goes
    // through tierfs.
    let m = Mount::new(&backend, cache.path(), &[&ram_size, "passthrough=false"]);
    read_speed(&m.path("big.bin"), 1 << 20);
    let (cached, cached_hot, shm2, cached_rss) = measure(&m);
    std::fs::remove_file(&tmpfs_file).ok();
    for (case, speeds, tmpfs, rss) in [
        (
            "RAM-resident (pinned), page cache dropped",
            ram,
            &shm,
            ram_rss,
        ),
        ("re-read, page cache kept (pinned)", hot, &shm, ram_rss),
        (
            "RAM-resident (read cache, not pinned), page cache dropped",
            cached,
            &shm2,
            cached_rss,
        ),
        (
            "re-read, page cache kept (read cache)",
            cached_hot,
            &shm2,
            cached_rss,
        ),
    ] {
        rows.push(Row {
            case: case.into(),
            tierfs: median(speeds.clone()),
            baseline_name: "tmpfs".into(),
            baseline: median(tmpfs.clone()),
            unit: "MB/s",
            goal: if case.starts_with("RAM") {
                ">= 0.8"
            } else {
                ">= 0.95"
            },
            rss_mib: rss,
            paired_ratio: paired_ratio(&speeds, tmpfs),
        });
    }

    rows.push(small_files(&backend));
    rows.extend(safetensors_rows(
        &backend,
        client.as_ref(),
        scratch.path(),
        model_mb,
        runs,
    ));
    rows.push(parallel_cold_rss(&backend, client.as_ref(), size));
    let sizes = format!("Big file: {file_mb} MiB; safetensors model: {model_mb} MiB");
    report(&rows, full, &sizes, runs, dropped, &cold_detail);
}

fn wait_for_cache(cache: &Path, size: u64) {
    use std::os::unix::fs::MetadataExt;
    for _ in 0..6000 {
        let on_disk: u64 = std::fs::read_dir(cache.join("chunks"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.metadata().map(|m| m.blocks() * 512).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if on_disk >= size {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the NVMe tier never held the file");
}

/// 1,000 small files read once, cold, one after another, through tierfs vs the
/// raw client's GETs of the same objects one after another; files/s.
fn small_files(backend: &Backend) -> Row {
    let Backend::S3(server) = backend else {
        unreachable!()
    };
    let client = server.client();
    let keys: Vec<ObjectPath> = (0..1000)
        .map(|i| ObjectPath::parse(format!("models/small/f{i:04}")).unwrap())
        .collect();
    block_on(async {
        futures::stream::iter(keys.iter().enumerate())
            .for_each_concurrent(32, |(i, path)| {
                let client = client.clone();
                async move {
                    client
                        .put(path, random_bytes(16 << 10, i as u64).into())
                        .await
                        .unwrap();
                }
            })
            .await
    });
    cold_start(backend, "small");
    let start = Instant::now();
    block_on(async {
        for path in &keys {
            client.get(path).await.unwrap().bytes().await.unwrap();
        }
    });
    let raw = keys.len() as f64 / start.elapsed().as_secs_f64();
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(backend, cache.path(), &[]);
    cold_start(backend, "small");
    let start = Instant::now();
    let mut n = 0;
    for e in std::fs::read_dir(m.path("small")).unwrap().flatten() {
        std::fs::read(e.path()).unwrap();
        n += 1;
    }
    let tierfs = n as f64 / start.elapsed().as_secs_f64();
    Row {
        case: "1,000 files of 16 KiB, cold, one at a time".into(),
        tierfs,
        baseline_name: "object_store GET, one at a time".into(),
        baseline: raw,
        unit: "files/s",
        goal: "",
        rss_mib: daemon_peak_rss(m.dir.path()),
        paired_ratio: None,
    }
}

/// Eight cold sequential readers of eight files at once with ram_size=256M: the
/// daemon's peak memory is what counts.
fn parallel_cold_rss(backend: &Backend, client: &dyn ObjectStore, size: u64) -> Row {
    for i in 0..8 {
        put_big(client, &format!("par/f{i}.bin"), size as usize, 100 + i);
    }
    let cache = tempfile::tempdir().unwrap();
    let m = Mount::new(backend, cache.path(), &["ram_size=256M"]);
    cold_start(backend, "par");
    let start = Instant::now();
    std::thread::scope(|s| {
        for i in 0..8 {
            let p = m.path(&format!("par/f{i}.bin"));
            s.spawn(move || read_speed(&p, 1 << 20));
        }
    });
    let speed = (8 * size) as f64 / MB / start.elapsed().as_secs_f64();
    let rss = daemon_peak_rss(m.dir.path());
    Row {
        case: "8 parallel cold readers, ram_size=256M (goal: peak RSS <= 512 MiB)".into(),
        tierfs: speed,
        baseline_name: "-".into(),
        baseline: f64::NAN,
        unit: "MB/s",
        goal: "RSS <= 512",
        rss_mib: rss,
        paired_ratio: None,
    }
}

fn report(rows: &[Row], full: bool, sizes: &str, runs: usize, dropped: bool, detail: &str) {
    let table = harness::render_table(rows);
    println!("{table}\n{detail}");
    if !full {
        return;
    }
    harness::write_section(
        "throughput",
        &format!(
            "Measured by `cargo bench --bench throughput` (see benches/throughput.rs) on {}, \
             against s3s-fs 0.17 on 127.0.0.1. {sizes}; median of {runs} runs per case (of {} for the NVMe-resident pair); \
             page cache dropped between cold runs: {dropped}, after which the store's copy of the objects \
             read is read back into it (the store serves from memory, as a remote store's disk is not this \
             machine's), for tierfs and its baselines alike. Where tierfs and its baseline ran side by side \
             in each run (the cold reads of tierfs, the raw client, rclone and s3fs; NVMe, RAM and \
             safetensors reads against their local baselines), the ratio is the median of the per-run \
             ratios, as this host's speed drifts over a session.\n\n{table}\n{detail}",
            harness::machine(),
            runs.max(9)
        ),
    );
}
