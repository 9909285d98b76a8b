//! Readahead for an open file: the plan for each read, and the chunks fetched
//! ahead of it while the read waits.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tierfs_policy::{ReadaheadPlan, plan_readahead};

use super::EngineCore;
use super::handles::OpenFile;
use crate::error::FsResult;
use crate::tiered_reader::{FileVersion, Prefetch};

impl EngineCore {
    /// Advances a handle's readahead past a read of `size` bytes at `offset`;
    /// None when readahead is off or the read is empty.
    pub(super) fn plan_readahead(
        &self,
        open: &OpenFile,
        file: &FileVersion,
        offset: u64,
        size: u32,
    ) -> Option<ReadaheadPlan> {
        let chunk_size = self.options.chunk_size;
        let end = (offset + size as u64).min(file.size);
        if self.options.prefetch_max == 0 || end <= offset {
            return None;
        }
        let plan = {
            let mut state = open.readahead.lock();
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
        open.widest_window
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
