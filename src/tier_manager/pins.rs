//! Pins: which paths (files, or directories and everything below them) are kept
//! in which tier. Kept in the registry so that a restart keeps them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::tier::Tier;
use parking_lot::RwLock;

use crate::error::{FsError, FsResult};
use crate::meta::db::{MetaDb, Table};

/// `a/b/c`, `a/b`, `a`, then `""` (the root): a path and the directories above it.
pub fn path_and_ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            Some(i) => Some(&current[..i]),
            None if current.is_empty() => None,
            None => Some(""),
        };
        Some(current)
    })
}

pub struct PinTable {
    db: Arc<MetaDb>,
    pins: RwLock<BTreeMap<String, Tier>>,
}

impl PinTable {
    /// The pins the registry holds.
    pub fn load(db: Arc<MetaDb>) -> FsResult<PinTable> {
        let mut pins = BTreeMap::new();
        for item in db.entries(Table::Pins) {
            let (key, value) = item?;
            let (Ok(path), Some(tier)) = (
                String::from_utf8(key.to_vec()),
                value.first().copied().and_then(Tier::from_code),
            ) else {
                return Err(FsError::Cache("a pin record is damaged".into()));
            };
            pins.insert(path, tier);
        }
        Ok(PinTable {
            db,
            pins: RwLock::new(pins),
        })
    }

    pub fn set(&self, path: &str, tier: Tier) -> FsResult<()> {
        let mut pins = self.pins.write();
        self.db.put(Table::Pins, path, [tier.code()])?;
        pins.insert(path.to_string(), tier);
        Ok(())
    }

    /// Removes the pin set on `path` itself; false when there is none.
    pub fn remove(&self, path: &str) -> FsResult<bool> {
        let mut pins = self.pins.write();
        if !pins.contains_key(path) {
            return Ok(false);
        }
        self.db.delete(Table::Pins, path)?;
        pins.remove(path);
        Ok(true)
    }

    /// The pin set on `path` itself.
    pub fn get(&self, path: &str) -> Option<Tier> {
        self.pins.read().get(path).copied()
    }

    /// The pin that applies to `path`: its own, or the nearest directory's above it.
    pub fn effective(&self, path: &str) -> Option<(String, Tier)> {
        let pins = self.pins.read();
        path_and_ancestors(path).find_map(|p| pins.get(p).map(|t| (p.to_string(), *t)))
    }

    pub fn all(&self) -> Vec<(String, Tier)> {
        self.pins
            .read()
            .iter()
            .map(|(p, t)| (p.clone(), *t))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.read().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_end_at_the_root() {
        let all: Vec<&str> = path_and_ancestors("a/b/c").collect();
        assert_eq!(all, ["a/b/c", "a/b", "a", ""]);
        assert_eq!(path_and_ancestors("").collect::<Vec<_>>(), [""]);
    }

    #[test]
    fn the_nearest_pin_applies_and_pins_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Arc::new(MetaDb::open(dir.path()).unwrap());
            let pins = PinTable::load(db).unwrap();
            pins.set("models", Tier::Nvme).unwrap();
            pins.set("models/llama/7b.safetensors", Tier::Ram).unwrap();
            assert_eq!(
                pins.effective("models/llama/7b.safetensors"),
                Some(("models/llama/7b.safetensors".into(), Tier::Ram))
            );
            assert_eq!(
                pins.effective("models/llama/13b.safetensors"),
                Some(("models".into(), Tier::Nvme))
            );
            // A sibling whose name starts the same is not below the directory.
            assert_eq!(pins.effective("models2/x"), None);
            assert!(!pins.remove("models/llama").unwrap());
        }
        let db = Arc::new(MetaDb::open(dir.path()).unwrap());
        let pins = PinTable::load(db).unwrap();
        assert_eq!(pins.all().len(), 2);
        assert!(pins.remove("models").unwrap());
        assert_eq!(pins.effective("models/llama/13b.safetensors"), None);
    }
}
