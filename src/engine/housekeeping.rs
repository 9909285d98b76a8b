//! Background work of a mount that no request waits for: removing local copies
//! that the demotion rule picks (idle or old files; the store keeps them), and
//! reporting the uploads (see [`UploadReport`]) in the log whenever their numbers change.
//!
//! [`UploadReport`]: crate::write::report::UploadReport

use crate::model::clock::now_secs;
use crate::tier_manager::demotion::{demote_rule, tick_period};
use std::sync::Arc;

use tierfs_policy::DemoteRule;

use crate::engine::EngineCore;
use crate::error::FsResult;

impl EngineCore {
    pub(crate) fn start_housekeeping(self: &Arc<Self>) {
        let rule = demote_rule(self.options());
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(tick_period(rule));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last_report = None;
            loop {
                tick.tick().await;
                let Some(core) = weak.upgrade() else { return };
                if !rule.is_off() {
                    let worker = core.clone();
                    let demoted = tokio::task::spawn_blocking(move || {
                        worker.demote_by_rule(rule, now_secs())
                    })
                    .await;
                    match demoted {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!("demotion failed: {e}"),
                        Err(e) => tracing::warn!("demotion stopped: {e}"),
                    }
                }
                let report = core.writes().report();
                if last_report.as_ref() != Some(&report) {
                    tracing::info!("{report}");
                    last_report = Some(report);
                }
            }
        });
    }

    /// Removes the local copies of the files `rule` picks at `now` (see
    /// [`Demoter`](crate::tier_manager::demotion::Demoter)); returns the bytes
    /// freed. Blocking.
    pub fn demote_by_rule(&self, rule: DemoteRule, now: u64) -> FsResult<u64> {
        self.manager().demoter.demote_by_rule(rule, now)
    }
}
