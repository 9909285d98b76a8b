//! The demotion rule the mount options give, and how often it is applied.

use std::time::Duration;

use tierfs_policy::DemoteRule;

use crate::model::options::MountOptions;

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
