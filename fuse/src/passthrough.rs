//! The kernel's backing files for passthrough handles, shared per inode, and the
//! notices that drop an inode's page cache.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak, mpsc};

use fuser::{BackingId, INodeNo, Notifier};

use crate::engine::{Backing, FileIdentity};

/// Backing ids the kernel gave for passthrough opens, kept until release.
#[derive(Default)]
pub(crate) struct Passthrough {
    pub(crate) enabled: AtomicBool,
    pub(crate) table: Mutex<BackingTable>,
    /// Inodes whose page cache to drop, for the thread that tells the kernel;
    /// set once the session exists.
    page_cache_drops: OnceLock<mpsc::Sender<INodeNo>>,
}

impl Passthrough {
    /// Starts the thread that sends the kernel notices to drop page caches: the
    /// kernel does the work inside the notice's write, which must not hold up a
    /// reply. It ends with the session, when this is dropped.
    pub(crate) fn start_notices(&self, notifier: Notifier) -> io::Result<()> {
        let (sender, inodes) = mpsc::channel::<INodeNo>();
        std::thread::Builder::new()
            .name("tierfs-notify".into())
            .spawn(move || {
                for ino in inodes {
                    // The inode may be gone already (ENOENT): nothing is cached then.
                    match notifier.inval_inode(ino, 0, 0) {
                        Ok(()) => tracing::debug!(ino = ino.0, "page cache dropped"),
                        Err(e) => tracing::debug!(ino = ino.0, "page cache not dropped: {e}"),
                    }
                }
            })?;
        let _ = self.page_cache_drops.set(sender);
        Ok(())
    }

    /// Has an inode's page cache dropped in the background, when its next open
    /// will pass through.
    pub(crate) fn drop_page_cache(&self, ino: INodeNo) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        if let Some(drops) = self.page_cache_drops.get() {
            let _ = drops.send(ino);
        }
    }

    /// The backing id for a handle the engine offered passthrough: shared with
    /// the inode's other passthrough handles of the same file, registered with
    /// the kernel otherwise. None when it cannot be had (another file is passed
    /// through, or the kernel refuses backing files, which turns passthrough off);
    /// the handle then goes through tierfs.
    pub(crate) fn backing_for(
        &self,
        ino: u64,
        fh: u64,
        backing: &Backing,
        register: impl FnOnce(&std::fs::File) -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let mut table = self.table.lock().unwrap();
        let live = table
            .by_inode
            .get(&ino)
            .and_then(|(identity, id)| Some((*identity, id.upgrade()?)));
        let id = match live {
            Some((identity, id)) if identity == backing.identity => id,
            // Another file is still passed through: the kernel would refuse a
            // second backing file. The engine offers the live one, so this is
            // a close racing this open.
            Some(_) => return None,
            None => match register(&backing.file) {
                Ok(id) => Arc::new(id),
                Err(e) => {
                    // Unprivileged mounts cannot register backing files: stop
                    // offering them, read and write through tierfs.
                    tracing::info!("FUSE passthrough unavailable ({e}); going through tierfs");
                    self.enabled.store(false, Ordering::Relaxed);
                    return None;
                }
            },
        };
        table
            .by_inode
            .insert(ino, (backing.identity, Arc::downgrade(&id)));
        table.by_handle.insert(fh, id.clone());
        Some(id)
    }
}

/// The kernel allows one backing file per inode at a time, so every passthrough
/// open of an inode shares one backing id; each handle keeps it alive.
#[derive(Default)]
pub(crate) struct BackingTable {
    pub(crate) by_handle: HashMap<u64, Arc<BackingId>>,
    pub(crate) by_inode: HashMap<u64, (FileIdentity, Weak<BackingId>)>,
}
