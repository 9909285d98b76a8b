//! Which local copies leave the cache by rule, before any pressure: files not
//! read for a while, and files whose version is old. The store keeps every one of
//! them, so a demoted file is fetched again on its next read.

/// When local copies are removed; `None` turns a rule off. Times in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DemoteRule {
    pub idle: Option<u64>,
    pub age: Option<u64>,
}

/// A file with bytes in a local tier, as the rule sees it. Times are seconds
/// since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile<K> {
    pub key: K,
    pub bytes: u64,
    pub last_access: u64,
    /// When this version was made, when known.
    pub created: Option<u64>,
    /// Must stay: read directly by the kernel, or pinned.
    pub held: bool,
}

/// Why a file was demoted, with how long it had been idle or how old it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoteReason {
    Idle(u64),
    Age(u64),
}

impl std::fmt::Display for DemoteReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoteReason::Idle(s) => write!(f, "not read for {s}s"),
            DemoteReason::Age(s) => write!(f, "version {s}s old"),
        }
    }
}

impl DemoteRule {
    pub fn is_off(&self) -> bool {
        self.idle.is_none() && self.age.is_none()
    }

    /// Why `file` should leave now, if it should.
    pub fn reason<K>(&self, file: &CachedFile<K>, now: u64) -> Option<DemoteReason> {
        if file.held {
            return None;
        }
        let idle = now.saturating_sub(file.last_access);
        if let Some(limit) = self.idle
            && idle >= limit
        {
            return Some(DemoteReason::Idle(idle));
        }
        let age = now.saturating_sub(file.created?);
        match self.age {
            Some(limit) if age >= limit => Some(DemoteReason::Age(age)),
            _ => None,
        }
    }
}

/// The files to demote now, longest idle first (ties by key), so that the same
/// input always gives the same order.
pub fn files_to_demote<K: Ord + Clone>(
    files: &[CachedFile<K>],
    rule: DemoteRule,
    now: u64,
) -> Vec<(K, DemoteReason)> {
    let mut chosen: Vec<(&CachedFile<K>, DemoteReason)> = files
        .iter()
        .filter_map(|f| rule.reason(f, now).map(|r| (f, r)))
        .collect();
    chosen.sort_by(|(a, _), (b, _)| {
        a.last_access
            .cmp(&b.last_access)
            .then_with(|| a.key.cmp(&b.key))
    });
    chosen
        .into_iter()
        .map(|(f, r)| (f.key.clone(), r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(key: u32, last_access: u64, created: Option<u64>, held: bool) -> CachedFile<u32> {
        CachedFile {
            key,
            bytes: 1,
            last_access,
            created,
            held,
        }
    }

    #[test]
    fn idle_and_old_files_leave_held_ones_stay() {
        let rule = DemoteRule {
            idle: Some(100),
            age: Some(1000),
        };
        let files = [
            file(1, 950, Some(900), false), // read 50s ago, young: stays
            file(2, 850, Some(900), false), // idle 150s: leaves
            file(3, 990, Some(0), false),   // 1000s old: leaves
            file(4, 0, Some(0), true),      // held: stays
            file(5, 999, None, false),      // age unknown, fresh: stays
        ];
        assert_eq!(
            files_to_demote(&files, rule, 1000),
            vec![(2, DemoteReason::Idle(150)), (3, DemoteReason::Age(1000))]
        );
        assert!(files_to_demote(&files, DemoteRule::default(), 1000).is_empty());
    }

    fn any_file() -> impl Strategy<Value = CachedFile<u32>> {
        (
            any::<u32>(),
            0u64..1 << 40,
            0u64..10_000,
            proptest::option::of(0u64..10_000),
            any::<bool>(),
        )
            .prop_map(|(key, bytes, last_access, created, held)| CachedFile {
                key,
                bytes,
                last_access,
                created,
                held,
            })
    }

    proptest! {
        #[test]
        fn exactly_the_files_over_a_limit_and_never_held_ones(
            files in proptest::collection::vec(any_file(), 0..40),
            idle in proptest::option::of(0u64..10_000),
            age in proptest::option::of(0u64..10_000),
            now in 0u64..20_000,
        ) {
            let rule = DemoteRule { idle, age };
            let plan = files_to_demote(&files, rule, now);
            for f in &files {
                let over_idle = idle.is_some_and(|l| now.saturating_sub(f.last_access) >= l);
                let over_age = matches!((age, f.created), (Some(l), Some(c)) if now.saturating_sub(c) >= l);
                let chosen = plan.iter().any(|(k, _)| *k == f.key);
                if f.held {
                    prop_assert!(!chosen || files.iter().any(|g| g.key == f.key && !g.held));
                } else if over_idle || over_age {
                    prop_assert!(chosen);
                }
            }
            for (k, _) in &plan {
                let f = files.iter().find(|f| f.key == *k && !f.held);
                prop_assert!(f.is_some(), "a held or unknown file was chosen");
            }
            // The same input gives the same plan.
            prop_assert_eq!(&plan, &files_to_demote(&files, rule, now));
        }
    }
}
