//! Access statistics per file (by path, so that a new version of a hot file
//! starts hot), as the planner reads them. Counted in memory on each open for
//! reading and written to the registry by the mover's ticks, so that a restart
//! keeps them.

use crate::model::version::FileVersion;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tierfs_policy::{AccessStats, Decay};

use crate::error::FsResult;
use crate::meta::db::{Batch, MetaDb, Table};

/// Below this decayed frequency a file's statistics are forgotten.
const FADED: f64 = 1e-3;

fn encode(stats: &AccessStats) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&stats.frequency.to_bits().to_be_bytes());
    out[8..16].copy_from_slice(&stats.last_access.to_be_bytes());
    out[16..].copy_from_slice(&stats.hits.to_be_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<AccessStats> {
    let word = |i: usize| Some(u64::from_be_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
    Some(AccessStats {
        frequency: f64::from_bits(word(0)?),
        last_access: word(8)?,
        hits: word(16)?,
    })
}

#[derive(Debug, Clone)]
pub struct FileAccess {
    pub stats: AccessStats,
    /// The version last opened, while this process has seen one.
    pub version: Option<Arc<FileVersion>>,
    changed: bool,
}

pub struct AccessTable {
    db: Arc<MetaDb>,
    decay: Decay,
    files: Mutex<HashMap<String, FileAccess>>,
}

impl AccessTable {
    pub fn load(db: Arc<MetaDb>, decay: Decay) -> FsResult<AccessTable> {
        let mut files = HashMap::new();
        for item in db.entries(Table::Access) {
            let (key, value) = item?;
            // A damaged record only loses a file's history.
            if let (Ok(path), Some(stats)) = (String::from_utf8(key.to_vec()), decode(&value)) {
                files.insert(
                    path,
                    FileAccess {
                        stats,
                        version: None,
                        changed: false,
                    },
                );
            }
        }
        Ok(AccessTable {
            db,
            decay,
            files: Mutex::new(files),
        })
    }

    pub fn decay(&self) -> Decay {
        self.decay
    }

    /// Counts one read of `version` at `now`.
    pub fn record(&self, version: &Arc<FileVersion>, now: u64) {
        let mut files = self.files.lock();
        let entry = files
            .entry(version.path.to_string())
            .or_insert_with(|| FileAccess {
                stats: AccessStats::default(),
                version: None,
                changed: true,
            });
        entry.stats.record(now, self.decay);
        entry.version = Some(version.clone());
        entry.changed = true;
    }

    pub fn get(&self, path: &str) -> Option<FileAccess> {
        self.files.lock().get(path).cloned()
    }

    /// Every file with statistics that have not faded by `now`.
    pub fn live(&self, now: u64) -> Vec<(String, FileAccess)> {
        self.files
            .lock()
            .iter()
            .filter(|(_, a)| a.stats.frequency_at(now, self.decay) >= FADED)
            .map(|(p, a)| (p.clone(), a.clone()))
            .collect()
    }

    /// Moves the statistics of `from` to `to` (a rename).
    pub fn rename(&self, from: &str, to: &str) {
        let mut files = self.files.lock();
        if let Some(mut entry) = files.remove(from) {
            entry.changed = true;
            entry.version = None;
            files.insert(to.to_string(), entry);
            files.insert(
                from.to_string(),
                FileAccess {
                    stats: AccessStats::default(),
                    version: None,
                    changed: true,
                },
            );
        }
    }

    /// Writes what changed since the last call and forgets what has faded.
    pub fn persist(&self, now: u64) -> FsResult<()> {
        let mut batch = Batch::default();
        let mut files = self.files.lock();
        files.retain(|path, access| {
            let faded = access.stats.frequency_at(now, self.decay) < FADED;
            if faded {
                batch.delete(Table::Access, path);
            } else if access.changed {
                batch.put(Table::Access, path, encode(&access.stats));
                access.changed = false;
            }
            !faded
        });
        drop(files);
        self.db.write(batch, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::version::FileId;
    use object_store::path::Path;

    fn version(path: &str) -> Arc<FileVersion> {
        Arc::new(FileVersion {
            path: Path::from(path),
            id: FileId(1),
            size: 10,
            etag: None,
        })
    }

    #[test]
    fn statistics_survive_reopening_and_faded_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let decay = Decay {
            half_life_secs: 10.0,
        };
        {
            let db = Arc::new(MetaDb::open(dir.path()).unwrap());
            let table = AccessTable::load(db, decay).unwrap();
            for _ in 0..3 {
                table.record(&version("hot"), 1000);
            }
            table.record(&version("once"), 1000);
            table.rename("once", "moved");
            table.persist(1000).unwrap();
        }
        let db = Arc::new(MetaDb::open(dir.path()).unwrap());
        let table = AccessTable::load(db.clone(), decay).unwrap();
        let hot = table.get("hot").unwrap();
        assert_eq!(hot.stats.hits, 3);
        assert!((hot.stats.frequency - 3.0).abs() < 1e-9);
        assert!(hot.version.is_none());
        assert_eq!(table.get("moved").unwrap().stats.hits, 1);
        // Three hundred half-lives later everything has faded.
        table.persist(1000 + 3000).unwrap();
        let table = AccessTable::load(db, decay).unwrap();
        assert!(table.get("hot").is_none());
    }
}
