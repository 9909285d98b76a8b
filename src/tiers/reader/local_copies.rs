//! The local copies of a file that the engine hands to the kernel or reads
//! outside the chunk path: a whole copy to pass through to (the RAM tier's
//! memfd or the complete NVMe file), the resident pages of a range, and the
//! disk room that staged writes share with cached chunks. The hold protocol
//! lives here so that no caller pairs NVMe holds by hand.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::FsResult;
use crate::io::blocking::run_blocking;
use crate::io::chunk_buffer::ChunkBuffer;
use crate::model::chunk::ChunkLayout;
use crate::model::tier::Tier;
use crate::model::version::{ChunkKey, FileId, FileVersion};
use tierfs_fuse::FileIdentity;

use super::TieredReader;

/// The disk tier's size and what fills it, for `statfs` and write admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskRoom {
    pub budget: u64,
    pub used: u64,
}

impl TieredReader {
    /// A whole local copy of `version` that `accept` takes, with a hold that
    /// keeps its NVMe copy from eviction until [`Self::end_whole_copy`]: the
    /// RAM tier's memfd when the file is held whole there, else (when
    /// `nvme_too`) the NVMe copy once it is complete. Returns the accepted
    /// value and the tier it came from; a copy `accept` refuses (or fails on)
    /// takes no hold.
    pub fn hold_whole_copy<T>(
        &self,
        version: &FileVersion,
        nvme_too: bool,
        mut accept: impl FnMut(File) -> FsResult<Option<T>>,
    ) -> FsResult<Option<(T, Tier)>> {
        // The NVMe hold taken with a memfd is what `end_whole_copy` gives back
        // for every whole copy, whichever tier it came from.
        if let Some(file) = self.ram.backing_file(version.id)
            && let Some(taken) = accept(file)?
        {
            self.nvme.hold(version.id);
            return Ok(Some((taken, Tier::Ram)));
        }
        if !nvme_too {
            return Ok(None);
        }
        match self.hold_nvme_copy(version)? {
            Some(file) => match accept(file) {
                Ok(Some(taken)) => Ok(Some((taken, Tier::Nvme))),
                other => {
                    self.nvme.unhold(version.id);
                    other.map(|_| None)
                }
            },
            None => Ok(None),
        }
    }

    /// The complete NVMe copy of `version`, held until [`Self::end_whole_copy`].
    pub fn hold_nvme_copy(&self, version: &FileVersion) -> FsResult<Option<File>> {
        let layout = ChunkLayout::new(self.chunk_size, version.size);
        self.nvme.hold_complete(version.id, layout)
    }

    /// Ends a hold that [`Self::hold_whole_copy`] or [`Self::hold_nvme_copy`] took.
    pub fn end_whole_copy(&self, id: FileId) {
        self.nvme.unhold(id);
    }

    /// Whether file `id` is held whole in RAM (and so has a memfd to pass
    /// through to).
    pub fn whole_in_ram(&self, id: FileId) -> bool {
        self.ram.holds_whole(id)
    }

    /// Whether RAM holds `id` for a pin or a placement.
    pub fn ram_held(&self, id: FileId) -> bool {
        self.ram.hold_of(id).is_some()
    }

    /// Bytes of file `id` on NVMe.
    pub fn nvme_bytes_of(&self, id: FileId) -> u64 {
        self.nvme.bytes_of(id)
    }

    /// Whether chunk `key` is on NVMe.
    pub fn on_nvme(&self, key: &ChunkKey) -> bool {
        self.nvme.has(key)
    }

    /// Lets the RAM tier's cache drop the chunks `indexes` of file `id`, which
    /// nothing will read there again.
    pub fn let_go_of_ram(&self, id: FileId, indexes: Range<u64>) {
        self.ram.let_go(id, indexes);
    }

    /// `len` bytes at `offset` of `file` when every chunk they touch is local:
    /// from RAM when all of them are there, else just those bytes of the NVMe
    /// copy (checked against the chunk digests). `None` when a chunk is in
    /// neither.
    pub async fn read_resident(
        self: &Arc<Self>,
        file: &Arc<FileVersion>,
        offset: u64,
        len: u64,
    ) -> FsResult<Option<Bytes>> {
        let len = len.min(file.size.saturating_sub(offset));
        let layout = ChunkLayout::new(self.chunk_size, file.size);
        let in_ram = layout.slices(offset, len).iter().all(|slice| {
            self.ram.contains(&ChunkKey {
                file: file.id,
                index: slice.index,
            })
        });
        if in_ram {
            return self.read(file, offset, len).await.map(Some);
        }
        let (reader, id) = (self.clone(), file.id);
        run_blocking(move || reader.nvme.read_checked_range(id, offset, len)).await
    }

    /// The disk tier's budget and its cached bytes.
    pub fn disk_room(&self) -> DiskRoom {
        DiskRoom {
            budget: self.nvme.budget(),
            used: self.nvme.used(),
        }
    }

    /// Evicts clean cached chunks when `dirty` staged bytes growing by
    /// `growth` would push the disk past its budget; a cheap sum decides
    /// before any eviction.
    pub fn make_disk_room(&self, dirty: u64, growth: u64) {
        if self.nvme.used() + dirty + growth <= self.nvme.budget() {
            return;
        }
        if let Err(e) = self.nvme.make_room(growth) {
            tracing::warn!("evicting cached chunks for written data failed: {e}");
        }
    }

    /// The path of file `id`'s NVMe copy.
    pub fn cache_file(&self, id: FileId) -> PathBuf {
        self.nvme.data_path(id)
    }

    /// Moves file `id`'s NVMe copy to `to` when it is still the file
    /// `expected` (the one the kernel reads); false when it is not.
    pub fn surrender_nvme_copy(
        &self,
        id: FileId,
        expected: FileIdentity,
        to: &Path,
    ) -> FsResult<bool> {
        self.nvme.surrender(id, expected, to)
    }

    /// A chunk-sized buffer from the pool for a brief pass over a file.
    pub fn brief_buffer(&self) -> std::io::Result<ChunkBuffer> {
        self.buffers.take_brief(self.chunk_size as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FsError;
    use crate::tiers::ram::HoldKind;
    use crate::tiers::testing::{CHUNK, Fixture, fetch_to_nvme};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whole_copy_comes_from_ram_first_and_holds_nvme_until_ended() {
        let f = Fixture::new();
        let version = f.object("m/w.bin", 3 * CHUNK).await;
        let size = |file: File| Ok(Some(file.metadata()?.len()));
        assert!(
            f.reader
                .hold_whole_copy(&version, true, size)
                .unwrap()
                .is_none()
        );

        fetch_to_nvme(&f.reader, &version).await;
        let (len, tier) = f
            .reader
            .hold_whole_copy(&version, true, size)
            .unwrap()
            .unwrap();
        assert_eq!((len, tier), (3 * CHUNK, Tier::Nvme));
        // Held: eviction passes the copy by.
        f.reader.nvme.make_room(f.reader.nvme.budget()).unwrap();
        assert_eq!(f.reader.nvme_bytes_of(version.id), 3 * CHUNK);
        f.reader.end_whole_copy(version.id);
        assert!(
            f.reader
                .hold_whole_copy(&version, false, size)
                .unwrap()
                .is_none()
        );

        f.reader
            .ram
            .hold(version.id, HoldKind::Pin, version.size)
            .unwrap();
        for index in 0..3 {
            f.reader
                .chunk_into(Tier::Ram, &version, index)
                .await
                .unwrap();
        }
        assert!(f.reader.whole_in_ram(version.id));
        let (_, tier) = f
            .reader
            .hold_whole_copy(&version, false, size)
            .unwrap()
            .unwrap();
        assert_eq!(tier, Tier::Ram);
        f.reader.end_whole_copy(version.id);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_or_failed_copy_takes_no_hold() {
        let f = Fixture::new();
        let version = f.object("m/w.bin", 2 * CHUNK).await;
        fetch_to_nvme(&f.reader, &version).await;
        let refused = f.reader.hold_whole_copy(&version, true, |_| Ok(None::<()>));
        assert!(refused.unwrap().is_none());
        let failed = f
            .reader
            .hold_whole_copy(&version, true, |_| Err::<Option<()>, _>(FsError::ReadOnly));
        assert!(matches!(failed, Err(FsError::ReadOnly)));
        // No hold left: eviction removes the copy.
        f.reader.nvme.make_room(f.reader.nvme.budget()).unwrap();
        assert_eq!(f.reader.nvme_bytes_of(version.id), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resident_reads_come_from_ram_or_nvme_and_never_fetch() {
        let f = Fixture::new();
        let version = f.object("m/w.bin", 3 * CHUNK).await;
        assert!(
            f.reader
                .read_resident(&version, 0, 10)
                .await
                .unwrap()
                .is_none()
        );
        fetch_to_nvme(&f.reader, &version).await;
        let fetched = f
            .reader
            .stats
            .store_fetches
            .load(std::sync::atomic::Ordering::Relaxed);
        let whole = f.reader.read(&version, 0, 3 * CHUNK).await.unwrap();
        f.reader.forget_ram(version.id);
        let got = f
            .reader
            .read_resident(&version, CHUNK - 5, 10)
            .await
            .unwrap();
        assert_eq!(
            got.unwrap(),
            whole.slice(CHUNK as usize - 5..CHUNK as usize + 5)
        );
        // Past the end: cut to the file.
        let tail = f
            .reader
            .read_resident(&version, 3 * CHUNK - 2, 10)
            .await
            .unwrap();
        assert_eq!(tail.unwrap().len(), 2);
        assert_eq!(
            f.reader
                .stats
                .store_fetches
                .load(std::sync::atomic::Ordering::Relaxed),
            fetched
        );
    }
}
