//! The placement planner: given what each tier holds, the access statistics,
//! the pins, the budgets and the time, an ordered plan of moves (copy a chunk
//! into a tier, or drop its copy there), each with a reason and a priority.
//!
//! For each local tier the planner keeps, in this order: what must stay (chunks
//! pinned to the tier, and on NVMe the dirty chunks that are not yet in the
//! store), what is pinned there but not yet in it, then the hottest chunks by
//! decayed frequency (ties: most recent, then key) while they fit in the budget
//! and are hot enough for the tier. Everything else in the tier is dropped. The
//! store keeps every clean chunk, so dropping a copy loses nothing.

use std::collections::BTreeSet;

use crate::stats::{AccessStats, Decay};
use crate::tier::Tier;
use serde::Serialize;

/// Bytes each tier may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budgets {
    pub vram: u64,
    pub ram: u64,
    pub nvme: u64,
}

impl Budgets {
    pub fn of(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Vram => self.vram,
            Tier::Ram => self.ram,
            Tier::Nvme => self.nvme,
        }
    }
}

/// A chunk as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<K> {
    pub key: K,
    pub bytes: u64,
    /// The tiers holding a copy now, indexed by [`Tier`] order.
    pub present: [bool; 3],
    pub stats: AccessStats,
    /// The tier it is pinned to.
    pub pin: Option<Tier>,
    /// Written and not yet verified in the store: its NVMe copy is the only one.
    pub dirty: bool,
}

impl<K> Candidate<K> {
    pub fn is_in(&self, tier: Tier) -> bool {
        self.present[tier.index()]
    }

    fn must_stay(&self, tier: Tier) -> bool {
        self.pin == Some(tier) || (tier == Tier::Nvme && self.dirty)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Make a copy in the tier.
    Promote(Tier),
    /// Drop the copy in the tier.
    Demote(Tier),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Pinned,
    Hot,
    /// Not among what the tier keeps: colder than what fits, or not hot enough.
    Cold,
}

/// Lower runs first: explicit work (pins, placements, prefetches), then
/// background promotion, then demotion. Demand reads sit between explicit work
/// and promotion: they are never queued, and background work yields to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Explicit = 0,
    Promotion = 2,
    Demotion = 3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move<K> {
    pub key: K,
    pub action: Action,
    pub reason: Reason,
    pub priority: Priority,
}

/// How hot a chunk must be for each tier, and how fast accesses fade.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanConfig {
    pub decay: Decay,
    /// Least decayed frequency to earn a place in RAM by itself.
    pub ram_min_frequency: f64,
    /// Least decayed frequency to earn (or keep) a place on NVMe.
    pub nvme_min_frequency: f64,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            decay: Decay::default(),
            ram_min_frequency: 2.0,
            nvme_min_frequency: 0.0,
        }
    }
}

impl PlanConfig {
    /// VRAM holds pinned files only; nothing earns it by being read.
    fn min_frequency(&self, tier: Tier) -> Option<f64> {
        match tier {
            Tier::Vram => None,
            Tier::Ram => Some(self.ram_min_frequency),
            Tier::Nvme => Some(self.nvme_min_frequency),
        }
    }
}

/// The plan for `items` at `now`, sorted by priority, then tier, then key. The
/// same items in any order give the same plan.
pub fn plan<K: Ord + Clone>(
    items: &[Candidate<K>],
    budgets: Budgets,
    now: u64,
    config: &PlanConfig,
) -> Vec<Move<K>> {
    let mut order: Vec<&Candidate<K>> = items.iter().collect();
    order.sort_by(|a, b| a.key.cmp(&b.key));
    let mut moves = Vec::new();
    for tier in Tier::ALL {
        let keep = chosen_for(&order, tier, budgets.of(tier), now, config);
        for c in &order {
            let wanted = keep.contains(&c.key);
            if wanted && !c.is_in(tier) {
                let pinned = c.pin == Some(tier);
                moves.push(Move {
                    key: c.key.clone(),
                    action: Action::Promote(tier),
                    reason: if pinned { Reason::Pinned } else { Reason::Hot },
                    priority: if pinned {
                        Priority::Explicit
                    } else {
                        Priority::Promotion
                    },
                });
            } else if !wanted && c.is_in(tier) {
                moves.push(Move {
                    key: c.key.clone(),
                    action: Action::Demote(tier),
                    reason: Reason::Cold,
                    priority: Priority::Demotion,
                });
            }
        }
    }
    moves.sort_by(|a, b| (a.priority, a.action, &a.key).cmp(&(b.priority, b.action, &b.key)));
    moves
}

/// What tier `tier` keeps after the plan. `order` is sorted by key.
fn chosen_for<K: Ord + Clone>(
    order: &[&Candidate<K>],
    tier: Tier,
    budget: u64,
    now: u64,
    config: &PlanConfig,
) -> BTreeSet<K> {
    let mut keep = BTreeSet::new();
    let mut used = 0u64;
    // What must stay and is there stays, even past the budget: nothing else can
    // hold a dirty chunk, and a pin is only dropped by unpinning.
    for c in order.iter().filter(|c| c.must_stay(tier) && c.is_in(tier)) {
        keep.insert(c.key.clone());
        used += c.bytes;
    }
    let mut take = |c: &Candidate<K>, keep: &mut BTreeSet<K>| {
        if !keep.contains(&c.key) && used + c.bytes <= budget {
            used += c.bytes;
            keep.insert(c.key.clone());
        }
    };
    for c in order.iter().filter(|c| c.must_stay(tier) && !c.is_in(tier)) {
        take(c, &mut keep);
    }
    let Some(min_frequency) = config.min_frequency(tier) else {
        return keep;
    };
    let mut hot: Vec<(f64, &Candidate<K>)> = order
        .iter()
        .map(|c| (c.stats.frequency_at(now, config.decay), *c))
        .filter(|(f, c)| *f >= min_frequency && c.stats.hits > 0)
        .collect();
    hot.sort_by(|(fa, a), (fb, b)| {
        fb.total_cmp(fa)
            .then(b.stats.last_access.cmp(&a.stats.last_access))
            .then(a.key.cmp(&b.key))
    });
    for (_, c) in hot {
        take(c, &mut keep);
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(key: u32, bytes: u64, hits: u64, at: u64) -> Candidate<u32> {
        let mut stats = AccessStats::default();
        for _ in 0..hits {
            stats.record(at, Decay::default());
        }
        Candidate {
            key,
            bytes,
            present: [false; 3],
            stats,
            pin: None,
            dirty: false,
        }
    }

    #[test]
    fn hot_chunks_rise_cold_ones_fall_pins_and_dirty_stay() {
        let budgets = Budgets {
            vram: 0,
            ram: 20,
            nvme: 30,
        };
        let mut items = vec![
            chunk(1, 10, 5, 1000), // hot: RAM and NVMe
            chunk(2, 10, 1, 1000), // read once: NVMe only
            chunk(3, 10, 0, 0),    // never read, in RAM: leaves it
            chunk(4, 10, 0, 0),    // pinned to RAM
            chunk(5, 10, 0, 0),    // dirty on NVMe
        ];
        items[2].present = [false, true, true];
        items[3].pin = Some(Tier::Ram);
        items[4].present = [false, false, true];
        items[4].dirty = true;
        let moves = plan(&items, budgets, 1000, &PlanConfig::default());
        let got: Vec<(u32, Action)> = moves.iter().map(|m| (m.key, m.action)).collect();
        assert_eq!(
            got,
            vec![
                (4, Action::Promote(Tier::Ram)),
                (1, Action::Promote(Tier::Ram)),
                (1, Action::Promote(Tier::Nvme)),
                (2, Action::Promote(Tier::Nvme)),
                (3, Action::Demote(Tier::Ram)),
                (3, Action::Demote(Tier::Nvme)),
            ]
        );
        assert_eq!(moves[0].reason, Reason::Pinned);
    }

    fn any_candidate() -> impl Strategy<Value = Candidate<u32>> {
        (
            any::<u32>(),
            1u64..100,
            any::<[bool; 3]>(),
            0u64..6,
            0u64..10_000,
            prop_oneof![
                Just(None),
                Just(Some(Tier::Vram)),
                Just(Some(Tier::Ram)),
                Just(Some(Tier::Nvme))
            ],
            any::<bool>(),
        )
            .prop_map(|(key, bytes, present, hits, at, pin, dirty)| {
                let mut c = chunk(key, bytes, hits, at);
                c.present = present;
                c.pin = pin;
                c.dirty = dirty;
                c
            })
    }

    /// Which tiers hold each key once the plan is carried out.
    fn apply(items: &[Candidate<u32>], moves: &[Move<u32>]) -> Vec<(Candidate<u32>, [bool; 3])> {
        items
            .iter()
            .map(|c| {
                let mut now = c.present;
                for m in moves.iter().filter(|m| m.key == c.key) {
                    match m.action {
                        Action::Promote(t) => now[t.index()] = true,
                        Action::Demote(t) => now[t.index()] = false,
                    }
                }
                (c.clone(), now)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn plans_keep_budgets_pins_and_dirty_chunks(
            items in proptest::collection::btree_map(any::<u32>(), any_candidate(), 0..40)
                .prop_map(|m| m.into_iter().map(|(k, mut c)| { c.key = k; c }).collect::<Vec<_>>()),
            budgets in (0u64..500, 0u64..1000, 0u64..2000),
            now in 0u64..20_000,
        ) {
            let budgets = Budgets { vram: budgets.0, ram: budgets.1, nvme: budgets.2 };
            let config = PlanConfig::default();
            let moves = plan(&items, budgets, now, &config);
            let after = apply(&items, &moves);
            for tier in Tier::ALL {
                let staying: u64 = items
                    .iter()
                    .filter(|c| c.must_stay(tier) && c.is_in(tier))
                    .map(|c| c.bytes)
                    .sum();
                let used: u64 = after
                    .iter()
                    .filter(|(_, p)| p[tier.index()])
                    .map(|(c, _)| c.bytes)
                    .sum();
                // No budget is exceeded beyond what must stay where it is.
                prop_assert!(used <= budgets.of(tier).max(staying));
            }
            for m in &moves {
                let c = items.iter().find(|c| c.key == m.key).unwrap();
                if let Action::Demote(t) = m.action {
                    prop_assert!(c.pin != Some(t), "a pinned chunk was demoted");
                    prop_assert!(!(t == Tier::Nvme && c.dirty), "a dirty chunk was dropped");
                }
                if let Action::Promote(Tier::Vram) = m.action {
                    prop_assert!(c.pin == Some(Tier::Vram));
                }
            }
            // The same input, in any order, gives the same plan.
            let mut reversed = items.clone();
            reversed.reverse();
            prop_assert_eq!(&moves, &plan(&reversed, budgets, now, &config));
        }

        #[test]
        fn pins_that_fit_are_all_placed(
            items in proptest::collection::btree_map(any::<u32>(), any_candidate(), 0..30)
                .prop_map(|m| m.into_iter().map(|(k, mut c)| { c.key = k; c }).collect::<Vec<_>>()),
        ) {
            let need = |t: Tier| -> u64 {
                items.iter().filter(|c| c.must_stay(t)).map(|c| c.bytes).sum()
            };
            let budgets = Budgets { vram: need(Tier::Vram), ram: need(Tier::Ram), nvme: need(Tier::Nvme) };
            let moves = plan(&items, budgets, 0, &PlanConfig::default());
            for (c, present) in apply(&items, &moves) {
                if let Some(t) = c.pin {
                    prop_assert!(present[t.index()], "pin of {} not placed", c.key);
                }
            }
        }
    }
}
