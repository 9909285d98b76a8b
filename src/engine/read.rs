//! Reads for the kernel, and readahead for an open file: the plan for each
//! read, and the chunks fetched ahead of it while the read waits.

use crate::model::version::FileVersion;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tierfs_fuse::ReadData;
use tierfs_policy::{ReadaheadPlan, plan_readahead};

use super::EngineCore;
use super::open_files::{OpenTarget, VersionHandle};
use crate::error::FsResult;
use crate::io::blocking::run_blocking;
use crate::tiers::reader::Prefetch;

impl EngineCore {
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        Ok(self.kernel_read(fh, offset, size).await?.data)
    }

    /// A read for the kernel: the bytes, and what it may drop of its page cache.
    pub async fn kernel_read(&self, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        let open = self.handle(fh)?;
        let reading = match &open.target {
            OpenTarget::Version(reading) => reading,
            OpenTarget::Staged { staged, .. } => {
                let staged = staged.clone();
                let data = run_blocking(move || {
                    crate::write::staging::read_at(&staged.file, offset, size as u64)
                })
                .await?;
                return Ok(ReadData {
                    data: Bytes::from(data),
                    drop_behind: None,
                });
            }
        };
        let file = &reading.version;
        if reading.from_page_cache {
            // Stray pages while the page cache still counts as holding the
            // file; a reader streaming through a dropped page cache after that.
            let still_held = self
                .kernel_cache
                .missed(open.ino, file.id, size.into(), file.size);
            if still_held && let Some(data) = self.read_lost_pages(file, offset, size).await? {
                return Ok(ReadData {
                    data,
                    drop_behind: None,
                });
            }
        } else {
            self.kernel_cache.filled(open.ino, file.id);
        }
        let plan = self.plan_readahead(reading, offset, size);
        let drop_behind = plan
            .as_ref()
            .and_then(|plan| self.page_cache_left_behind(open.ino, reading, plan.state));
        let data = self
            .read_keeping_window_full(file, plan.as_ref(), offset, size)
            .await?;
        Ok(ReadData { data, drop_behind })
    }

    /// Advances a handle's readahead past a read of `size` bytes at `offset`;
    /// None when readahead is off or the read is empty.
    pub(super) fn plan_readahead(
        &self,
        reading: &VersionHandle,
        offset: u64,
        size: u32,
    ) -> Option<ReadaheadPlan> {
        let file = &reading.version;
        let chunk_size = self.options.chunk_size;
        let end = (offset + size as u64).min(file.size);
        if self.options.prefetch_max == 0 || end <= offset {
            return None;
        }
        let plan = {
            let mut state = reading.readahead.lock();
            let plan = plan_readahead(
                *state,
                offset / chunk_size,
                (end - 1) / chunk_size,
                file.size.div_ceil(chunk_size),
                self.options.prefetch_max as u64,
            );
            *state = plan.state;
            plan
        };
        if plan.reset {
            self.stats.readahead_resets.fetch_add(1, Ordering::Relaxed);
        }
        reading
            .widest_window
            .fetch_max(plan.state.window, Ordering::Relaxed);
        Some(plan)
    }

    /// Reads a range, keeping the plan's window of chunks on their way while the
    /// read waits: each chunk that lands makes room for the next, so the store
    /// stays busy while the reader waits for the oldest fetch. Without a plan,
    /// or with nothing to fetch ahead, just the read.
    pub(super) async fn read_keeping_window_full(
        &self,
        file: &Arc<FileVersion>,
        plan: Option<&ReadaheadPlan>,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let Some(plan) = plan.filter(|p| p.state.window > 0 && !p.prefetch.is_empty()) else {
            return self.reader.read(file, offset, size as u64).await;
        };
        let read = self.reader.read(file, offset, size as u64);
        tokio::pin!(read);
        loop {
            // Listening before the walk: a load that ends during it wakes the
            // next round instead of being missed.
            let loaded = self.reader.chunk_loaded();
            tokio::pin!(loaded);
            loaded.as_mut().enable();
            self.prefetch_ahead(file, plan);
            tokio::select! {
                biased;
                data = &mut read => return data,
                _ = loaded => {}
            }
        }
    }

    /// Starts the first chunks of the plan's range that are neither in RAM nor on
    /// their way, until a window of them is on its way or the memory for chunks
    /// in flight is spent. Those fetched already wait in RAM and do not count.
    fn prefetch_ahead(&self, file: &Arc<FileVersion>, plan: &ReadaheadPlan) {
        let mut on_the_way = 0;
        for index in plan.prefetch.clone() {
            if on_the_way >= plan.state.window {
                break;
            }
            match self.reader.prefetch(file, index) {
                Prefetch::InRam => {}
                Prefetch::OnItsWay => on_the_way += 1,
                Prefetch::NoMemory => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use crate::engine::testing::{CHUNK, EngineFixture};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sequential_reader_fetches_ahead_and_a_seek_resets_the_window() {
        let f = EngineFixture::with(|o| o.prefetch_max = 4);
        let data: Vec<u8> = (0..16 * CHUNK).map(|i| (i % 253) as u8).collect();
        f.put("s.bin", &data);
        let fh = f.open("s.bin").await;
        let piece = (CHUNK / 2) as u32;
        for step in 0..8 {
            let offset = step * piece as u64;
            let got = f.core.read(fh, offset, piece).await.unwrap();
            assert_eq!(
                &got[..],
                &data[offset as usize..(offset + piece as u64) as usize]
            );
        }
        let stats = &f.core.reader().stats;
        assert!(stats.prefetched.load(Ordering::Relaxed) > 0);
        let resets = f.core.stats.readahead_resets.load(Ordering::Relaxed);
        let got = f.core.read(fh, 12 * CHUNK, 10).await.unwrap();
        assert_eq!(
            &got[..],
            &data[12 * CHUNK as usize..12 * CHUNK as usize + 10]
        );
        assert_eq!(
            f.core.stats.readahead_resets.load(Ordering::Relaxed),
            resets + 1
        );
        f.core.release(fh);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_prefetch_only_the_chunks_read_are_fetched() {
        let f = EngineFixture::with(|o| o.prefetch_max = 0);
        f.put("s.bin", &vec![1u8; (8 * CHUNK) as usize]);
        let fh = f.open("s.bin").await;
        f.core.read(fh, 0, CHUNK as u32).await.unwrap();
        f.core.read(fh, CHUNK, CHUNK as u32).await.unwrap();
        let stats = &f.core.reader().stats;
        assert_eq!(stats.store_fetches.load(Ordering::Relaxed), 2);
        assert_eq!(stats.prefetched.load(Ordering::Relaxed), 0);
        f.core.release(fh);
    }
}
