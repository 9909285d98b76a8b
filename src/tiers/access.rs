//! Tier access for the tier manager's mover: each step of a job (hold a file in
//! a tier, load a chunk into it, check it, let go of it) is one call here. The
//! tiered reader implements it over RAM and NVMe; the mover's tests, over a
//! table of their own.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::error::{FsError, FsResult};
use crate::model::tier::{Tier, no_gpu_tier};
use crate::model::units::format_size;
use crate::model::version::{ChunkKey, FileId, FileVersion};
use crate::tiers::ram::HoldKind;
use crate::tiers::reader::TieredReader;

/// A chunk on its way into a tier.
pub type ChunkLoad<'a> = BoxFuture<'a, FsResult<Bytes>>;

pub trait TierAccess: Send + Sync {
    /// Whether chunk `key` is in `tier`.
    fn has_chunk(&self, tier: Tier, key: &ChunkKey) -> bool;

    /// Bytes of `version` in `tier`.
    fn bytes_in(&self, tier: Tier, version: &FileVersion) -> u64;

    /// Holds `version` in `tier`: in RAM its room is reserved and its chunks
    /// are kept (ENOSPC when they do not fit next to the other holds); on NVMe
    /// it is passed by eviction.
    fn hold(&self, tier: Tier, version: &FileVersion, kind: HoldKind) -> FsResult<()>;

    /// Ends a hold of `kind` on file `id` in `tier`, if it has one; the bytes
    /// stay as ordinary cache. Returns the bytes no longer held.
    fn release(&self, tier: Tier, id: FileId, kind: HoldKind) -> u64;

    /// Removes `version`'s copy from `tier`; returns the bytes freed.
    fn drop_copy(&self, tier: Tier, version: &FileVersion) -> FsResult<u64>;

    /// Drops every local copy of file `id`, so that the next read fetches it
    /// from the store.
    fn drop_all(&self, id: FileId) -> FsResult<()>;

    /// Makes chunk `index` of `version` present in `tier` (from a faster tier
    /// or the store, not counted as a demand read) and returns its bytes.
    fn load_into<'a>(
        &'a self,
        tier: Tier,
        version: &'a Arc<FileVersion>,
        index: u64,
    ) -> ChunkLoad<'a>;

    /// The digest recorded for chunk `key` when it was fetched, if any.
    fn recorded_digest(&self, key: &ChunkKey) -> FsResult<Option<u128>>;

    /// Chunks that readers are waiting for now.
    fn demand_waiting(&self) -> u64;
}

impl TierAccess for Arc<TieredReader> {
    fn has_chunk(&self, tier: Tier, key: &ChunkKey) -> bool {
        match tier {
            Tier::Ram => self.ram().contains(key),
            Tier::Nvme => self.nvme().has(key),
            Tier::Vram => false,
        }
    }

    fn bytes_in(&self, tier: Tier, version: &FileVersion) -> u64 {
        match tier {
            Tier::Ram => self.ram_bytes_of(version.id, version.size),
            Tier::Nvme => self.nvme().bytes_of(version.id),
            Tier::Vram => 0,
        }
    }

    fn hold(&self, tier: Tier, version: &FileVersion, kind: HoldKind) -> FsResult<()> {
        match tier {
            Tier::Ram => self
                .ram()
                .hold(version.id, kind, version.size)
                .map_err(|no| {
                    FsError::NoSpace(format!(
                        "/{} ({}) does not fit in RAM: {} is free of holds",
                        version.path,
                        format_size(no.wanted),
                        format_size(no.free)
                    ))
                }),
            Tier::Nvme => {
                self.nvme().hold(version.id);
                Ok(())
            }
            Tier::Vram => Err(no_gpu_tier()),
        }
    }

    fn release(&self, tier: Tier, id: FileId, kind: HoldKind) -> u64 {
        match tier {
            Tier::Ram => {
                if self.ram().hold_of(id).is_some_and(|h| h.kind == kind) {
                    self.ram().release(id).map_or(0, |hold| hold.bytes)
                } else {
                    0
                }
            }
            Tier::Nvme => {
                self.nvme().unhold(id);
                0
            }
            Tier::Vram => 0,
        }
    }

    fn drop_copy(&self, tier: Tier, version: &FileVersion) -> FsResult<u64> {
        match tier {
            Tier::Ram => {
                let bytes = self.ram_bytes_of(version.id, version.size);
                self.ram().forget(version.id);
                Ok(bytes)
            }
            Tier::Nvme => self.nvme().demote(version.id),
            Tier::Vram => Err(no_gpu_tier()),
        }
    }

    fn drop_all(&self, id: FileId) -> FsResult<()> {
        self.forget_ram(id);
        self.nvme().drop_file(id)
    }

    fn load_into<'a>(
        &'a self,
        tier: Tier,
        version: &'a Arc<FileVersion>,
        index: u64,
    ) -> ChunkLoad<'a> {
        Box::pin(self.chunk_into(tier, version, index))
    }

    fn recorded_digest(&self, key: &ChunkKey) -> FsResult<Option<u128>> {
        self.nvme().recorded_digest(key)
    }

    fn demand_waiting(&self) -> u64 {
        TieredReader::demand_waiting(self)
    }
}
