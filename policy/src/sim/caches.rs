//! The caches the simulator compares, each a single tier of a given capacity in
//! bytes that holds whole chunks: LRU, moka's own admission and eviction
//! (TinyLFU), Belady's offline optimum (evict what is used again farthest in
//! the future), and the tierfs policy (decayed frequency, as the planner ranks).

use std::collections::{BTreeMap, HashMap};

use crate::stats::{AccessStats, Decay};

use super::{Access, ChunkId};

/// A cache that sees one access at a time and says whether it was a hit.
pub trait SimCache {
    fn access(&mut self, index: usize, access: &Access) -> bool;
}

struct Residents<P: Ord + Copy> {
    order: BTreeMap<(P, ChunkId), u64>,
    rank: HashMap<ChunkId, P>,
    used: u64,
}

impl<P: Ord + Copy> Default for Residents<P> {
    fn default() -> Self {
        Residents {
            order: BTreeMap::new(),
            rank: HashMap::new(),
            used: 0,
        }
    }
}

impl<P: Ord + Copy> Residents<P> {
    fn contains(&self, key: &ChunkId) -> bool {
        self.rank.contains_key(key)
    }

    fn set(&mut self, key: ChunkId, rank: P, bytes: u64) {
        self.remove(&key);
        self.order.insert((rank, key), bytes);
        self.rank.insert(key, rank);
        self.used += bytes;
    }

    fn remove(&mut self, key: &ChunkId) {
        if let Some(rank) = self.rank.remove(key)
            && let Some(bytes) = self.order.remove(&(rank, *key))
        {
            self.used -= bytes;
        }
    }

    fn lowest(&self) -> Option<(P, ChunkId)> {
        self.order.keys().next().copied()
    }

    fn highest(&self) -> Option<(P, ChunkId)> {
        self.order.keys().next_back().copied()
    }
}

pub struct Lru {
    capacity: u64,
    residents: Residents<usize>,
}

impl Lru {
    pub fn new(capacity: u64) -> Lru {
        Lru {
            capacity,
            residents: Residents::default(),
        }
    }
}

impl SimCache for Lru {
    fn access(&mut self, index: usize, a: &Access) -> bool {
        let hit = self.residents.contains(&a.chunk);
        if a.bytes > self.capacity {
            return hit;
        }
        self.residents.set(a.chunk, index, a.bytes);
        while self.residents.used > self.capacity {
            let (_, victim) = self
                .residents
                .lowest()
                .expect("over capacity means not empty");
            self.residents.remove(&victim);
        }
        hit
    }
}

/// Belady's rule with sizes: after each access, evict the chunks used again
/// farthest in the future (never used again first) until the rest fits.
pub struct Belady {
    capacity: u64,
    next_use: Vec<usize>,
    residents: Residents<usize>,
}

impl Belady {
    pub fn new(capacity: u64, accesses: &[Access]) -> Belady {
        let mut next_use = vec![usize::MAX; accesses.len()];
        let mut seen: HashMap<ChunkId, usize> = HashMap::new();
        for (i, a) in accesses.iter().enumerate().rev() {
            if let Some(next) = seen.insert(a.chunk, i) {
                next_use[i] = next;
            }
        }
        Belady {
            capacity,
            next_use,
            residents: Residents::default(),
        }
    }
}

impl SimCache for Belady {
    fn access(&mut self, index: usize, a: &Access) -> bool {
        let hit = self.residents.contains(&a.chunk);
        self.residents.set(a.chunk, self.next_use[index], a.bytes);
        while self.residents.used > self.capacity {
            let (_, victim) = self.residents.highest().expect("not empty");
            self.residents.remove(&victim);
        }
        hit
    }
}

/// Ranks by decayed frequency. Decay multiplies every frequency by the same
/// factor, so `log2(frequency) + last_access / half_life` orders chunks as
/// their frequencies at any later moment do, and never changes between
/// accesses. A missed chunk is admitted only when it ranks above what it would
/// push out: a one-off scan does not flush the hot set.
pub struct Tierfs {
    capacity: u64,
    decay: Decay,
    stats: HashMap<ChunkId, AccessStats>,
    residents: Residents<Rank>,
}

#[derive(Debug, Clone, Copy)]
struct Rank(f64);

impl PartialEq for Rank {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Rank {}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Tierfs {
    pub fn new(capacity: u64, decay: Decay) -> Tierfs {
        Tierfs {
            capacity,
            decay,
            stats: HashMap::new(),
            residents: Residents::default(),
        }
    }

    fn rank(&self, s: &AccessStats) -> Rank {
        Rank(s.frequency.log2() + s.last_access as f64 / self.decay.half_life_secs)
    }
}

impl SimCache for Tierfs {
    fn access(&mut self, _index: usize, a: &Access) -> bool {
        let stats = self.stats.entry(a.chunk).or_default();
        stats.record(a.time, self.decay);
        let stats = *stats;
        let rank = self.rank(&stats);
        if self.residents.contains(&a.chunk) {
            self.residents.set(a.chunk, rank, a.bytes);
            return true;
        }
        if a.bytes > self.capacity {
            return false;
        }
        // Admit only if everything it would push out ranks lower.
        let mut freed = self.capacity - self.residents.used.min(self.capacity);
        let mut victims = Vec::new();
        for ((victim_rank, victim), bytes) in &self.residents.order {
            if freed >= a.bytes {
                break;
            }
            if *victim_rank >= rank {
                return false;
            }
            freed += bytes;
            victims.push(*victim);
        }
        for victim in victims {
            self.residents.remove(&victim);
        }
        self.residents.set(a.chunk, rank, a.bytes);
        false
    }
}

/// moka's sync cache as it is configured by default (TinyLFU admission, LRU
/// eviction within its windows), weighted by bytes.
pub struct Moka {
    cache: moka::sync::Cache<ChunkId, u32>,
}

impl Moka {
    pub fn new(capacity: u64) -> Moka {
        Moka {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|_k: &ChunkId, bytes: &u32| *bytes)
                .build(),
        }
    }
}

impl SimCache for Moka {
    fn access(&mut self, _index: usize, a: &Access) -> bool {
        let hit = self.cache.contains_key(&a.chunk);
        if hit {
            let _ = self.cache.get(&a.chunk);
        } else {
            self.cache
                .insert(a.chunk, a.bytes.try_into().unwrap_or(u32::MAX));
        }
        self.cache.run_pending_tasks();
        hit
    }
}
