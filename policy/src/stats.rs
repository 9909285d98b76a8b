//! Access statistics of a file or a chunk: a frequency that decays over time
//! (so that a checkpoint hot last week is not hot today), the last access, and
//! a plain hit count. Times are seconds since the epoch.

/// How fast old accesses stop counting: after one half-life an access counts half.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decay {
    pub half_life_secs: f64,
}

/// Ten minutes: long enough to remember a model restored every few minutes, short
/// enough that a new checkpoint outranks the one it replaces (chosen with the
/// simulator's workloads; see `tierfs-sim`).
impl Default for Decay {
    fn default() -> Self {
        Decay {
            half_life_secs: 600.0,
        }
    }
}

impl Decay {
    fn factor(&self, elapsed: u64) -> f64 {
        if self.half_life_secs <= 0.0 {
            return 0.0;
        }
        0.5f64.powf(elapsed as f64 / self.half_life_secs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AccessStats {
    /// Decayed access count as of `last_access`.
    pub frequency: f64,
    pub last_access: u64,
    pub hits: u64,
}

impl AccessStats {
    /// Counts one access at `now` (an access from the past counts as of `now`,
    /// so that out-of-order events never make the frequency grow backwards).
    pub fn record(&mut self, now: u64, decay: Decay) {
        let now = now.max(self.last_access);
        self.frequency = self.frequency * decay.factor(now - self.last_access) + 1.0;
        self.last_access = now;
        self.hits += 1;
    }

    /// The decayed frequency as seen at `now`.
    pub fn frequency_at(&self, now: u64, decay: Decay) -> f64 {
        self.frequency * decay.factor(now.saturating_sub(self.last_access))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accesses_add_up_and_fade() {
        let decay = Decay {
            half_life_secs: 100.0,
        };
        let mut s = AccessStats::default();
        s.record(1000, decay);
        s.record(1000, decay);
        assert_eq!(s.hits, 2);
        assert!((s.frequency_at(1000, decay) - 2.0).abs() < 1e-9);
        assert!((s.frequency_at(1100, decay) - 1.0).abs() < 1e-9);
        s.record(1100, decay);
        assert!((s.frequency - 2.0).abs() < 1e-9);
    }

    proptest! {
        #[test]
        fn frequency_never_exceeds_hits_and_never_grows_idle(
            times in proptest::collection::vec(0u64..100_000, 1..50),
            later in 0u64..100_000,
            half_life in 1.0f64..10_000.0,
        ) {
            let decay = Decay { half_life_secs: half_life };
            let mut s = AccessStats::default();
            for t in &times {
                s.record(*t, decay);
            }
            prop_assert!(s.frequency <= s.hits as f64 + 1e-9);
            prop_assert!(s.frequency >= 1.0 - 1e-9);
            let now = s.last_access + later;
            prop_assert!(s.frequency_at(now, decay) <= s.frequency + 1e-9);
        }
    }
}
