//! Staging files: where bytes written through the mount live until the store has a
//! verified copy. One file per written file under `cache_dir/staging`, named by a
//! number that the write registry keys its record by.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::Xxh3;

use crate::io::chunk_file::read_exact_at;
use crate::model::chunk::ChunkLayout;

/// What sealing a staged file found: its size and digests, whole and per chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedDigests {
    pub size: u64,
    /// xxh3-128 of the whole file.
    pub digest: u128,
    /// xxh3-128 of each chunk, as the NVMe tier checks them.
    pub chunks: Vec<u128>,
}

pub struct StagingArea {
    dir: PathBuf,
    next_id: AtomicU64,
}

impl StagingArea {
    pub fn open(cache_dir: &Path) -> io::Result<StagingArea> {
        let dir = crate::model::paths::staging_dir(cache_dir);
        std::fs::create_dir_all(&dir)?;
        let mut highest = 0;
        for entry in std::fs::read_dir(&dir)? {
            if let Some(id) = parse_name(&entry?.file_name().to_string_lossy()) {
                highest = highest.max(id);
            }
        }
        Ok(StagingArea {
            dir,
            next_id: AtomicU64::new(highest + 1),
        })
    }

    /// Numbers from the registry are taken too, so that no number is reused while
    /// a record may still name it.
    pub fn reserve_above(&self, id: u64) {
        self.next_id.fetch_max(id + 1, Ordering::Relaxed);
    }

    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.data"))
    }

    /// A number and path for a staging file that is moved in from elsewhere.
    pub fn reserve(&self) -> (u64, PathBuf) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (id, self.path(id))
    }

    /// A new, empty staging file.
    pub fn create(&self) -> io::Result<(u64, File)> {
        let (id, path) = self.reserve();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok((id, file))
    }

    pub fn open_file(&self, id: u64) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(id))
    }

    pub fn remove(&self, id: u64) {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(id, "cannot remove staging file: {e}")
            }
            _ => {}
        }
    }

    /// Removes staging files that no record names: left by a crash after their
    /// upload was verified and recorded.
    pub fn sweep(&self, live: &HashSet<u64>) -> io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(id) = parse_name(&entry.file_name().to_string_lossy())
                && !live.contains(&id)
            {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn parse_name(name: &str) -> Option<u64> {
    u64::from_str_radix(name.strip_suffix(".data")?, 16).ok()
}

/// Bytes read and hashed at a time when sealing: several small chunks share
/// one read and one helper thread.
const SEAL_BATCH: u64 = 8 << 20;

/// Hashes a staged file: the whole file and each chunk, in one pass over the
/// bytes, the chunks' own digests on a second thread.
pub fn seal_digests(file: &File, chunk_size: u64) -> io::Result<SealedDigests> {
    let size = file.metadata()?.len();
    let layout = ChunkLayout::new(chunk_size, size);
    let per_batch = (SEAL_BATCH / chunk_size).max(1);
    let mut whole = Xxh3::new();
    let mut chunks = Vec::with_capacity(layout.chunk_count() as usize);
    let mut buf = vec![0u8; (per_batch * chunk_size).min(size) as usize];
    let mut first = 0;
    while first < layout.chunk_count() {
        let last = (first + per_batch).min(layout.chunk_count());
        let start = first * chunk_size;
        let len = ((last - 1) * chunk_size + layout.chunk_len(last - 1) - start) as usize;
        read_exact_at(file, &mut buf[..len], start)?;
        let data = &buf[..len];
        let batch = std::thread::scope(|s| {
            let batch = s.spawn(|| {
                data.chunks(chunk_size as usize)
                    .map(xxhash_rust::xxh3::xxh3_128)
                    .collect::<Vec<_>>()
            });
            whole.update(data);
            batch.join()
        })
        .map_err(|_| io::Error::other("chunk hashing failed"))?;
        chunks.extend(batch);
        first = last;
    }
    Ok(SealedDigests {
        size,
        digest: whole.digest128(),
        chunks,
    })
}

/// Reads up to `len` bytes at `offset`, fewer at the end of the file.
pub fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let size = file.metadata()?.len();
    let end = (offset + len).min(size);
    if end <= offset {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; (end - offset) as usize];
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    buf.truncate(done);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_hashes_whole_file_and_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let area = StagingArea::open(dir.path()).unwrap();
        let (id, file) = area.create().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&data, 0).unwrap();
        let sealed = seal_digests(&file, 4096).unwrap();
        assert_eq!(sealed.size, 10_000);
        assert_eq!(sealed.digest, xxhash_rust::xxh3::xxh3_128(&data));
        assert_eq!(sealed.chunks.len(), 3);
        assert_eq!(sealed.chunks[2], xxhash_rust::xxh3::xxh3_128(&data[8192..]));
        assert_eq!(read_at(&file, 9_990, 100).unwrap(), &data[9_990..]);
        // A new area after a restart does not reuse the number; sweep keeps it.
        let again = StagingArea::open(dir.path()).unwrap();
        let (next, _) = again.create().unwrap();
        assert!(next > id);
        assert_eq!(again.sweep(&HashSet::from([id])).unwrap(), 1);
        assert!(area.path(id).exists() && !area.path(next).exists());
    }

    #[test]
    fn seals_across_several_batches_match_each_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let area = StagingArea::open(dir.path()).unwrap();
        let (_, file) = area.create().unwrap();
        let data: Vec<u8> = (0..(2 * SEAL_BATCH + 5000))
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        file.write_all_at(&data, 0).unwrap();
        for chunk in [64u64 << 10, 3 << 20, 16 << 20] {
            let sealed = seal_digests(&file, chunk).unwrap();
            assert_eq!(sealed.digest, xxhash_rust::xxh3::xxh3_128(&data));
            let want: Vec<u128> = data
                .chunks(chunk as usize)
                .map(xxhash_rust::xxh3::xxh3_128)
                .collect();
            assert_eq!(sealed.chunks, want, "chunk size {chunk}");
        }
    }

    #[test]
    fn empty_file_seals() {
        let dir = tempfile::tempdir().unwrap();
        let area = StagingArea::open(dir.path()).unwrap();
        let (_, file) = area.create().unwrap();
        let sealed = seal_digests(&file, 4096).unwrap();
        assert_eq!((sealed.size, sealed.chunks.len()), (0, 0));
        assert_eq!(sealed.digest, xxhash_rust::xxh3::xxh3_128(b""));
    }
}
