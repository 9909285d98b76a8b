//! Background work of a mount that no request waits for: removing local copies
//! that the demotion rule picks (idle or old files; the store keeps them), and
//! reporting the uploads (see [`UploadReport`]) in the log whenever their numbers change.
//!
//! [`UploadReport`]: crate::write::report::UploadReport

use crate::model::clock::now_secs;
use crate::model::version::FileId;
use crate::tier_manager::demotion::{demote_rule, tick_period};
use std::collections::HashSet;
use std::sync::Arc;

use tierfs_policy::{CachedFile, DemoteRule, files_to_demote};

use crate::engine::EngineCore;
use crate::error::FsResult;

use crate::model::units::format_size;

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

    /// When the file of version `id` was last opened for reading, if known.
    fn last_opened_at(&self, id: FileId) -> u64 {
        self.index()
            .version_info(id)
            .ok()
            .flatten()
            .and_then(|v| self.access().get(&v.key))
            .map_or(0, |a| a.stats.last_access)
    }

    /// Removes the local copies (NVMe and RAM) of the files `rule` picks at `now`,
    /// leaving alone those the kernel reads directly or a handle has open.
    /// Returns the bytes freed. Blocking.
    pub fn demote_by_rule(&self, rule: DemoteRule, now: u64) -> FsResult<u64> {
        let nvme = self.reader().nvme();
        let open: HashSet<FileId> = self.open_files().open_versions();
        let files: Vec<CachedFile<FileId>> = nvme
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
                        .index()
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
                        .reader()
                        .ram()
                        .hold_of(id)
                        .is_some_and(|h| h.kind == crate::tiers::ram::HoldKind::Pin),
            })
            .collect();
        let mut freed = 0;
        for (id, reason) in files_to_demote(&files, rule, now) {
            let name = self
                .index()
                .version_info(id)
                .ok()
                .flatten()
                .map_or_else(|| id.hex(), |v| v.key);
            let bytes = nvme.demote(id)?;
            self.reader().forget_ram(id);
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
