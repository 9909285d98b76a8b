//! NVMe tier read speed: digest-checked chunk reads through `NvmeTier` against plain
//! `pread` of the same cache file, measured in the same run.
//!
//! Run: `cargo bench --bench nvme_read` (TIERFS_BENCH_MB sets the data size, default
//! 512). The page cache is not dropped, so both sides read from memory: the ratio
//! shows what the digest check and the tier's bookkeeping cost.

mod harness;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;
use tierfs::model::version::ChunkKey;
use tierfs::model::version::FileId;

use tierfs::io::chunk_buffer::BufferPool;
use tierfs::meta::chunk_index::ChunkIndex;
use tierfs::model::digest::digest;
use tierfs::tiers::nvme::NvmeTier;

const CHUNK: u64 = 8 << 20;

fn main() {
    let mb = harness::env_num("TIERFS_BENCH_MB", 512) as u64;
    let chunks = (mb << 20) / CHUNK;
    let dir = tempfile::tempdir().expect("temp dir");
    let index = Arc::new(ChunkIndex::open(&dir.path().join("index")).expect("index"));
    let tier = NvmeTier::open(
        dir.path(),
        index,
        CHUNK,
        u64::MAX / 2,
        0,
        Default::default(),
    )
    .expect("tier");
    let file = FileId(42);
    let mut data = vec![0u8; CHUNK as usize];
    for i in 0..chunks {
        data.iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = (i as usize * 31 + j * 7) as u8);
        tier.write(&ChunkKey { file, index: i }, &data, digest(&data))
            .expect("write");
    }
    let total = (chunks * CHUNK) as f64 / 1e6;
    // Chunk buffers come from a pool, as on the read path, and `pread` reuses one
    // buffer: neither side pays for fresh memory per chunk.
    let buffers = BufferPool::new(CHUNK as usize, 2 * CHUNK, u64::MAX);
    let mut rows = Vec::new();
    for round in 0..3 {
        let start = Instant::now();
        for i in 0..chunks {
            let got = tier
                .read(&ChunkKey { file, index: i }, &buffers)
                .expect("read")
                .expect("present");
            assert_eq!(got.len() as u64, CHUNK);
        }
        let tier_mbs = total / start.elapsed().as_secs_f64();

        let f = std::fs::File::open(tier.data_path(file)).expect("cache file");
        let mut buf = vec![0u8; CHUNK as usize];
        let start = Instant::now();
        for i in 0..chunks {
            f.read_exact_at(&mut buf, i * CHUNK).expect("pread");
        }
        let raw_mbs = total / start.elapsed().as_secs_f64();
        rows.push((round, tier_mbs, raw_mbs));
    }
    println!("NVMe tier read, {chunks} chunks of 8 MiB, page cache warm");
    println!("| round | NvmeTier::read MB/s | pread MB/s | ratio |");
    println!("| --- | --- | --- | --- |");
    for (round, t, r) in rows {
        println!("| {round} | {t:.0} | {r:.0} | {:.2} |", t / r);
    }
}
