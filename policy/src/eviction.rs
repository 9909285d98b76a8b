//! Which cached bytes make room for new ones.

/// How many bytes a tier must free before it can take `incoming` more bytes,
/// counting both its own budget and a floor of free space on the disk under it.
pub fn bytes_to_free(used: u64, incoming: u64, budget: u64, disk_free: u64, min_free: u64) -> u64 {
    let over_budget = (used + incoming).saturating_sub(budget);
    let under_floor = (min_free + incoming).saturating_sub(disk_free);
    over_budget.max(under_floor)
}

/// Least recently used first: takes entries from `oldest_first` (key and size)
/// until at least `bytes_to_free` bytes are covered. Returns fewer only when the
/// entries run out.
pub fn lru_victims<K>(
    oldest_first: impl IntoIterator<Item = (K, u64)>,
    bytes_to_free: u64,
) -> Vec<K> {
    let mut freed = 0;
    let mut victims = Vec::new();
    for (key, size) in oldest_first {
        if freed >= bytes_to_free {
            break;
        }
        freed += size;
        victims.push(key);
    }
    victims
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frees_nothing_when_it_fits() {
        assert_eq!(bytes_to_free(10, 5, 100, 1000, 100), 0);
        assert_eq!(bytes_to_free(98, 5, 100, 1000, 100), 3);
        assert_eq!(bytes_to_free(0, 5, 100, 102, 100), 3);
        assert!(lru_victims([(1, 10)], 0).is_empty());
    }

    proptest! {
        #[test]
        fn victims_are_the_oldest_and_enough(
            sizes in proptest::collection::vec(1u64..100, 0..50), need in 0u64..3000
        ) {
            let entries: Vec<(usize, u64)> = sizes.iter().copied().enumerate().collect();
            let victims = lru_victims(entries.clone(), need);
            // A prefix of the order, in order.
            prop_assert!(victims.iter().enumerate().all(|(i, v)| *v == i));
            let freed: u64 = victims.iter().map(|v| sizes[*v]).sum();
            let total: u64 = sizes.iter().sum();
            prop_assert!(freed >= need.min(total));
            // Minimal: without the newest victim it would not be enough.
            if let Some(last) = victims.last() {
                prop_assert!(freed - sizes[*last] < need);
            }
        }

        #[test]
        fn freeing_the_answer_makes_room(
            used in 0u64..1 << 40, incoming in 0u64..1 << 30, budget in 0u64..1 << 40,
            disk_free in 0u64..1 << 40, min_free in 0u64..1 << 35
        ) {
            let f = bytes_to_free(used, incoming, budget, disk_free, min_free);
            if f <= used {
                prop_assert!(used - f + incoming <= budget.max(incoming));
                prop_assert!(disk_free + f >= min_free + incoming);
            }
        }
    }
}
