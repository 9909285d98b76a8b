//! The tier manager's loop in the engine: ticks of the planner and jobs in
//! priority order, with the engine naming versions as reads name them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use object_store::ObjectMeta;

use crate::engine::EngineCore;
use crate::error::FsResult;
use crate::model::version::FileVersion;
use crate::tier_manager::manager::VersionNaming;
use crate::tier_manager::placement::TICK;

impl VersionNaming for EngineCore {
    /// The version of a listed object as readers see it: the namespace's node
    /// when it has one of that size (it may know the ETag an upload got).
    fn version_of_listed(&self, meta: &ObjectMeta) -> FsResult<Arc<FileVersion>> {
        match self.ns().file_at(meta.location.as_ref()) {
            Some(node) if node.size == meta.size && node.staged.is_none() => self.version_of(&node),
            _ => self.version_of_object(meta),
        }
    }
}

impl EngineCore {
    /// The mover's loop: ticks of the planner, and jobs in priority order.
    pub(crate) fn start_mover(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let mover = self.manager().jobs.clone();
        tokio::spawn(async move {
            let mut last_tick: Option<Instant> = None;
            loop {
                let Some(core) = weak.upgrade() else { return };
                let stale = core.manager().placement.stale.load(Ordering::Relaxed);
                if stale || last_tick.is_none_or(|t| t.elapsed() >= TICK) {
                    core.manager().plan_tick(core.as_ref()).await;
                    last_tick = Some(Instant::now());
                }
                if let Some(job) = mover.next() {
                    core.manager().run_job(job, core.as_ref()).await;
                    continue;
                }
                drop(core);
                tokio::select! {
                    _ = mover.wake.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
        });
    }
}
