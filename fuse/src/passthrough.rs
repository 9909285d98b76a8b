//! The kernel's backing files for passthrough handles, shared per inode, and the
//! notices that drop an inode's page cache.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak, mpsc};

use fuser::{BackingId, INodeNo, Notifier};

use crate::engine::{Backing, FileIdentity};

/// Work for the notice thread once an inode's page cache is dropped.
type AfterDrop = Box<dyn FnOnce() + Send>;

/// Part of an inode's page cache to drop: `len` bytes from `offset`, all of it
/// when `len` is 0.
struct PageCacheDrop {
    ino: INodeNo,
    offset: u64,
    len: u64,
    then: Option<AfterDrop>,
}

/// Backing ids the kernel gave for passthrough opens, kept until release.
#[derive(Default)]
pub(crate) struct Passthrough {
    pub(crate) enabled: AtomicBool,
    pub(crate) table: Mutex<BackingTable>,
    /// Inodes whose page cache to drop, for the thread that tells the kernel;
    /// set once the session exists.
    page_cache_drops: OnceLock<mpsc::Sender<PageCacheDrop>>,
}

impl Passthrough {
    /// Starts the thread that sends the kernel notices to drop page caches: the
    /// kernel does the work inside the notice's write, which must not hold up a
    /// FUSE worker. It ends with the session, when this is dropped.
    pub(crate) fn start_notices(&self, notifier: Notifier) -> io::Result<()> {
        let (sender, drops) = mpsc::channel::<PageCacheDrop>();
        std::thread::Builder::new()
            .name("tierfs-notify".into())
            .spawn(move || {
                for PageCacheDrop {
                    ino,
                    offset,
                    len,
                    then,
                } in drops
                {
                    // The inode may be gone already (ENOENT): nothing is cached then.
                    match notifier.inval_inode(ino, offset as i64, len as i64) {
                        Ok(()) => tracing::debug!(ino = ino.0, offset, len, "page cache dropped"),
                        Err(e) => tracing::debug!(ino = ino.0, "page cache not dropped: {e}"),
                    }
                    if let Some(then) = then {
                        then();
                    }
                }
            })?;
        let _ = self.page_cache_drops.set(sender);
        Ok(())
    }

    /// Has an inode's page cache dropped in the background, when its next open
    /// will pass through.
    pub(crate) fn drop_page_cache(&self, ino: INodeNo) {
        self.send_drop(ino, 0, 0, None);
    }

    /// Has `len` bytes from `offset` of an inode's page cache dropped in the
    /// background.
    pub(crate) fn drop_page_cache_range(&self, ino: INodeNo, offset: u64, len: u64) {
        if len > 0 {
            self.send_drop(ino, offset, len, None);
        }
    }

    /// Has an inode's page cache dropped, then runs `then` (a reply that waits
    /// for the drop); runs it at once when nothing can be dropped.
    pub(crate) fn drop_page_cache_then(&self, ino: INodeNo, then: impl FnOnce() + Send + 'static) {
        self.send_drop(ino, 0, 0, Some(Box::new(then)));
    }

    fn send_drop(&self, ino: INodeNo, offset: u64, len: u64, then: Option<AfterDrop>) {
        let drops = self
            .page_cache_drops
            .get()
            .filter(|_| self.enabled.load(Ordering::Relaxed));
        let unsent = match drops {
            Some(drops) => drops
                .send(PageCacheDrop {
                    ino,
                    offset,
                    len,
                    then,
                })
                .err()
                .and_then(|e| e.0.then),
            None => then,
        };
        if let Some(then) = unsent {
            then();
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
