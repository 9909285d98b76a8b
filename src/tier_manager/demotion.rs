//! Demotion by rule: the local copies (NVMe and RAM) of files that the rule
//! the mount options give picks (idle or old files) are removed; the store
//! keeps them. Files the kernel reads directly, files open, and files pinned to
//! RAM stay.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tierfs_policy::{CachedFile, DemoteRule, files_to_demote};

use crate::error::FsResult;
use crate::meta::chunk_index::ChunkIndex;
use crate::model::options::MountOptions;
use crate::model::units::format_size;
use crate::model::version::{FileId, OpenVersions};
use crate::tier_manager::access::AccessTable;
use crate::tiers::ram::HoldKind;
use crate::tiers::reader::TieredReader;

/// The demotion rule the options give; a zero duration turns its rule off.
pub fn demote_rule(options: &MountOptions) -> DemoteRule {
    let secs = |d: Duration| (!d.is_zero()).then(|| d.as_secs().max(1));
    DemoteRule {
        idle: secs(options.idle_demote),
        age: secs(options.age_demote),
    }
}

/// How often the rule is applied: a quarter of its shortest limit, between one
/// second and five (the upload report shares the tick).
pub fn tick_period(rule: DemoteRule) -> Duration {
    let shortest = rule.idle.into_iter().chain(rule.age).min().unwrap_or(20);
    Duration::from_secs((shortest / 4).clamp(1, 5))
}

/// Applies the demotion rule to what the tiers hold.
pub struct Demoter {
    reader: Arc<TieredReader>,
    index: Arc<ChunkIndex>,
    access: Arc<AccessTable>,
    open: Arc<dyn OpenVersions>,
}

impl Demoter {
    pub fn new(
        reader: Arc<TieredReader>,
        index: Arc<ChunkIndex>,
        access: Arc<AccessTable>,
        open: Arc<dyn OpenVersions>,
    ) -> Demoter {
        Demoter {
            reader,
            index,
            access,
            open,
        }
    }

    /// When the file of version `id` was last opened for reading, if known.
    fn last_opened_at(&self, id: FileId) -> u64 {
        self.index
            .version_info(id)
            .ok()
            .flatten()
            .and_then(|v| self.access.get(&v.key))
            .map_or(0, |a| a.stats.last_access)
    }

    /// The files on NVMe as the rule sees them.
    fn cached_files(&self, rule: DemoteRule) -> Vec<CachedFile<FileId>> {
        let open: HashSet<FileId> = self.open.open_versions();
        self.reader
            .nvme()
            .cached_files()
            .into_iter()
            .map(|(id, usage, held)| CachedFile {
                key: id,
                bytes: usage.bytes,
                // Reads served from RAM or by the kernel touch no NVMe chunk;
                // the file's opens count too.
                last_access: usage.last_access.max(self.last_opened_at(id)),
                created: match rule.age {
                    Some(_) => self
                        .index
                        .version_info(id)
                        .ok()
                        .flatten()
                        .map(|v| v.created),
                    None => None,
                },
                // A file pinned to RAM stays, its NVMe copy too.
                held: held
                    || open.contains(&id)
                    || self
                        .reader
                        .ram()
                        .hold_of(id)
                        .is_some_and(|h| h.kind == HoldKind::Pin),
            })
            .collect()
    }

    /// Removes the local copies (NVMe and RAM) of the files `rule` picks at
    /// `now`. Returns the bytes freed. Blocking.
    pub fn demote_by_rule(&self, rule: DemoteRule, now: u64) -> FsResult<u64> {
        let mut freed = 0;
        for (id, reason) in files_to_demote(&self.cached_files(rule), rule, now) {
            let name = self
                .index
                .version_info(id)
                .ok()
                .flatten()
                .map_or_else(|| id.hex(), |v| v.key);
            let bytes = self.reader.nvme().demote(id)?;
            self.reader.forget_ram(id);
            tracing::info!(
                path = %name,
                "local copy demoted ({reason}): {} freed, the store keeps it",
                format_size(bytes)
            );
            freed += bytes;
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use tierfs_policy::Decay;

    use super::*;
    use crate::model::clock::now_secs;
    use crate::tiers::testing::{Fixture, OpenSet, fetch_to_nvme};

    #[tokio::test]
    async fn idle_files_leave_the_local_tiers_and_open_ones_stay() {
        let f = Fixture::new();
        let idle = f.object("idle.bin", 3 * 4096 - 100).await;
        let open = f.object("open.bin", 4096).await;
        fetch_to_nvme(&f.reader, &idle).await;
        fetch_to_nvme(&f.reader, &open).await;
        let open_set = Arc::new(OpenSet::default());
        open_set.0.lock().push(open.clone());
        let access = Arc::new(AccessTable::load(f.meta.clone(), Decay::default()).unwrap());
        let demoter = Demoter::new(f.reader.clone(), f.index.clone(), access, open_set);
        let rule = DemoteRule {
            idle: Some(60),
            age: None,
        };

        assert_eq!(
            demoter.demote_by_rule(rule, now_secs()).unwrap(),
            0,
            "nothing is idle yet"
        );
        let later = now_secs() + 3600;
        assert_eq!(demoter.demote_by_rule(rule, later).unwrap(), idle.size);
        assert_eq!(f.reader.nvme().bytes_of(idle.id), 0);
        assert_eq!(f.reader.ram_bytes_of(idle.id, idle.size), 0);
        assert_eq!(
            f.reader.nvme().bytes_of(open.id),
            open.size,
            "an open file stays"
        );
    }
}
