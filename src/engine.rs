//! The engine: the namespace and the tiered read path behind the FUSE adapter's
//! [`FsEngine`] trait. Each operation is an async method here; the trait methods
//! hand them to the tokio runtime and answer the kernel when they finish.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parking_lot::Mutex;
use tierfs_fuse::{Attr, Backing, DirEntry, Entry, FileKind, FsEngine, Opened, Reply, StatFs};
use tracing::Instrument;

use crate::chunk::ChunkLayout;
use crate::chunk_index::{ChunkIndex, FileId};
use crate::error::{FsError, FsResult};
use crate::namespace::{Namespace, Node};
use crate::nvme_tier::NvmeTier;
use crate::options::MountOptions;
use crate::tiered_reader::{FileVersion, TieredReader};
use tierfs_policy::{ReadaheadState, plan_readahead};

/// An open file: the version it reads and how its reader moves through it.
struct OpenFile {
    ino: u64,
    version: Arc<FileVersion>,
    readahead: Mutex<ReadaheadState>,
    /// The widest readahead window this handle reached, in chunks.
    widest_window: AtomicU64,
    /// The NVMe copy is held for the kernel to read directly.
    passthrough: AtomicBool,
}

/// Counters of the engine itself.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Seeks that closed a readahead window.
    pub readahead_resets: AtomicU64,
}

/// Everything the engine needs to start.
pub struct EngineConfig {
    pub store: Arc<dyn ObjectStore>,
    /// Names the store in cache keys (see `StoreLocation::identity`).
    pub store_id: String,
    pub cache_dir: PathBuf,
    pub options: MountOptions,
}

pub struct EngineCore {
    store: Arc<dyn ObjectStore>,
    store_id: String,
    options: MountOptions,
    uid: u32,
    gid: u32,
    ns: Namespace,
    index: Arc<ChunkIndex>,
    reader: Arc<TieredReader>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<[DirEntry]>>>,
    /// Open handles per inode that read through tierfs. The kernel refuses a
    /// passthrough open of an inode that has such handles, so none is offered then.
    cached_opens: Mutex<HashMap<u64, usize>>,
    /// The version each inode had when it was last opened, for FOPEN_KEEP_CACHE.
    last_opened: Mutex<HashMap<u64, FileId>>,
    next_fh: AtomicU64,
    pub stats: EngineStats,
}

impl EngineCore {
    pub fn start(config: EngineConfig) -> FsResult<Arc<EngineCore>> {
        let EngineConfig {
            store,
            store_id,
            cache_dir,
            options,
        } = config;
        std::fs::create_dir_all(&cache_dir)?;
        let index = Arc::new(ChunkIndex::open(&cache_dir.join("index"))?);
        let nvme = Arc::new(NvmeTier::open(
            &cache_dir,
            index.clone(),
            options.chunk_size,
            options.cache_size,
            options.cache_min_free,
        )?);
        let reader = TieredReader::new(store.clone(), nvme, &options);
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(Arc::new(EngineCore {
            store,
            store_id,
            uid: options.uid.unwrap_or(uid),
            gid: options.gid.unwrap_or(gid),
            ns: Namespace::new(options.metadata_ttl),
            options,
            index,
            reader,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            last_opened: Mutex::new(HashMap::new()),
            cached_opens: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            stats: EngineStats::default(),
        }))
    }

    pub fn reader(&self) -> &Arc<TieredReader> {
        &self.reader
    }

    pub fn entry(&self, node: &Node) -> Entry {
        let (perm, size) = match node.kind {
            FileKind::Directory => (0o755, 0),
            FileKind::File => (0o644, node.size),
        };
        let perm = if self.options.read_only {
            perm & 0o555
        } else {
            perm
        };
        Entry {
            attr: Attr {
                ino: node.ino,
                kind: node.kind,
                size,
                mtime: node.mtime,
                perm,
                uid: self.uid,
                gid: self.gid,
            },
            ttl: self.ns.ttl(),
        }
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        self.ns.node(ino).ok_or(FsError::NotFound)
    }

    fn dir_node(&self, ino: u64) -> FsResult<Node> {
        let node = self.node(ino)?;
        if node.kind != FileKind::Directory {
            return Err(FsError::NotADirectory);
        }
        Ok(node)
    }

    async fn list(&self, dir: &Node) -> FsResult<Arc<[DirEntry]>> {
        let prefix = if dir.path.is_empty() {
            None
        } else {
            Some(Path::parse(&dir.path).map_err(|e| FsError::Store(e.to_string()))?)
        };
        let listing = match self.store.list_with_delimiter(prefix.as_ref()).await {
            Ok(listing) => listing,
            Err(object_store::Error::InvalidPath { source }) => {
                // The store client refuses the whole listing when one key has an
                // empty, '.' or '..' segment; the directory cannot be shown.
                let why = format!(
                    "the directory holds a key that cannot be a path ({source}); it cannot be listed"
                );
                self.ns.warn_once(&dir.path, &why);
                return Err(FsError::Unlistable(why));
            }
            Err(e) => return Err(FsError::from_store(e)),
        };
        Ok(self.ns.install_listing(dir.ino, listing))
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Node> {
        let dir = self.dir_node(parent)?;
        if let Some(found) = self.ns.fresh_child(parent, name) {
            return found.ok_or(FsError::NotFound);
        }
        self.list(&dir).await?;
        self.ns.listed_child(parent, name).ok_or(FsError::NotFound)
    }

    /// Lists a directory (from the cache while fresh) and returns a handle to the
    /// snapshot that readdir pages through.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let dir = self.dir_node(ino)?;
        let entries = match self.ns.fresh_listing(ino) {
            Some(entries) => entries,
            None => self.list(&dir).await?,
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, entries);
        Ok(fh)
    }

    pub fn readdir(&self, fh: u64) -> FsResult<Arc<[DirEntry]>> {
        self.dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// Opens a file at the version the store has now. When the parent's listing
    /// is stale the object is checked with a HEAD; if the store cannot be reached
    /// the last known version is served, so cached files stay readable offline.
    pub async fn open(&self, ino: u64, write: bool) -> FsResult<Opened> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let mut node = self.node(ino)?;
        if node.kind == FileKind::Directory {
            return Err(FsError::IsADirectory);
        }
        if self
            .ns
            .fresh_child(node.parent, &node_name(&node))
            .is_none()
        {
            let path = Path::parse(&node.path).map_err(|e| FsError::Store(e.to_string()))?;
            match self.store.head(&path).await {
                Ok(meta) => node = self.ns.refresh_file(ino, &meta).unwrap_or(node),
                Err(object_store::Error::NotFound { .. }) => {
                    self.ns.invalidate(node.parent);
                    return Err(FsError::NotFound);
                }
                Err(e) => {
                    tracing::info!(path = %node.path, "store unreachable, serving the known version: {e}")
                }
            }
        }
        let version = self.version_of(&node)?;
        let keep_cache = self.last_opened.lock().insert(ino, version.id) == Some(version.id);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let backing = {
            let mut cached_opens = self.cached_opens.lock();
            let cached = cached_opens.entry(ino).or_default();
            let backing = if self.options.passthrough && *cached == 0 {
                let layout = ChunkLayout::new(self.options.chunk_size, version.size);
                self.reader
                    .nvme()
                    .hold_complete(version.id, layout)?
                    .map(|file| Backing {
                        version: version.id.0,
                        file,
                    })
            } else {
                None
            };
            if backing.is_none() {
                *cached += 1;
            }
            backing
        };
        let open = OpenFile {
            ino,
            version,
            readahead: Mutex::new(ReadaheadState::default()),
            widest_window: AtomicU64::new(0),
            passthrough: AtomicBool::new(backing.is_some()),
        };
        self.files.lock().insert(fh, Arc::new(open));
        Ok(Opened {
            fh,
            keep_cache,
            backing,
        })
    }

    /// A handle offered passthrough reads through tierfs after all.
    pub fn end_passthrough(&self, fh: u64) {
        let open = self.files.lock().get(&fh).cloned();
        if let Some(open) = open
            && open.passthrough.swap(false, Ordering::Relaxed)
        {
            self.reader.nvme().unhold(open.version.id);
            *self.cached_opens.lock().entry(open.ino).or_default() += 1;
        }
    }

    /// The cache identity of a file's current version; binding it drops the
    /// chunks of the version before it when the ETag changed.
    fn version_of(&self, node: &Node) -> FsResult<Arc<FileVersion>> {
        let tag = match &node.etag {
            Some(etag) => etag.clone(),
            None => format!("{}:{:?}", node.size, node.mtime),
        };
        let id = FileId::new(&self.store_id, &node.path, &tag, self.options.chunk_size);
        let object =
            xxhash_rust::xxh3::xxh3_128(format!("{}\0{}", self.store_id, node.path).as_bytes());
        if let Some(old) = self.index.bind_object(object, id)? {
            tracing::info!(path = %node.path, "object changed in the store; dropping its cached chunks");
            self.reader.nvme().drop_file(old)?;
        }
        Ok(Arc::new(FileVersion {
            path: Path::parse(&node.path).map_err(|e| FsError::Store(e.to_string()))?,
            id,
            size: node.size,
            etag: node.etag.clone(),
        }))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let open = self
            .files
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))?;
        let file = &open.version;
        let chunk_size = self.options.chunk_size;
        let end = (offset + size as u64).min(file.size);
        if self.options.prefetch_max > 0 && end > offset {
            let plan = {
                let mut state = open.readahead.lock();
                let plan = plan_readahead(
                    *state,
                    offset / chunk_size,
                    (end - 1) / chunk_size,
                    file.size.div_ceil(chunk_size),
                    self.options.prefetch_max as u64,
                );
                *state = plan.state;
                plan
            };
            if plan.reset {
                self.stats.readahead_resets.fetch_add(1, Ordering::Relaxed);
            }
            open.widest_window
                .fetch_max(plan.state.window, Ordering::Relaxed);
            for index in plan.prefetch {
                self.reader.prefetch(file, index);
            }
        }
        self.reader.read(file, offset, size as u64).await
    }

    pub fn release(&self, fh: u64) {
        let Some(open) = self.files.lock().remove(&fh) else {
            return;
        };
        tracing::debug!(
            path = %open.version.path,
            widest_readahead = open.widest_window.load(Ordering::Relaxed),
            passthrough = open.passthrough.load(Ordering::Relaxed),
            "file closed"
        );
        if open.passthrough.load(Ordering::Relaxed) {
            self.reader.nvme().unhold(open.version.id);
        } else {
            let mut cached_opens = self.cached_opens.lock();
            if let Some(n) = cached_opens.get_mut(&open.ino) {
                *n -= 1;
                if *n == 0 {
                    cached_opens.remove(&open.ino);
                }
            }
        }
    }

    pub fn statfs(&self) -> StatFs {
        let bsize = 4096u64;
        let nvme = self.reader.nvme();
        StatFs {
            blocks: nvme.budget() / bsize,
            bfree: nvme.budget().saturating_sub(nvme.used()) / bsize,
            bavail: nvme.budget().saturating_sub(nvme.used()) / bsize,
            files: self.ns.node_count(),
            ffree: u32::MAX as u64,
            bsize: bsize as u32,
            namelen: 255,
        }
    }

    /// The file version an open handle reads, for tests and tools.
    pub fn handle_version(&self, fh: u64) -> Option<Arc<FileVersion>> {
        self.files.lock().get(&fh).map(|open| open.version.clone())
    }

    pub fn cache_file(&self, id: FileId) -> PathBuf {
        self.reader.nvme().data_path(id)
    }
}

fn node_name(node: &Node) -> String {
    node.path.rsplit('/').next().unwrap_or("").to_string()
}

/// The engine as the FUSE adapter sees it: each call runs on the runtime.
#[derive(Clone)]
pub struct Engine {
    core: Arc<EngineCore>,
    runtime: tokio::runtime::Handle,
}

impl Engine {
    pub fn new(core: Arc<EngineCore>, runtime: tokio::runtime::Handle) -> Engine {
        Engine { core, runtime }
    }

    fn spawn<T, F>(&self, reply: Reply<T>, work: impl FnOnce(Arc<EngineCore>) -> F)
    where
        T: Send + 'static,
        F: Future<Output = FsResult<T>> + Send + 'static,
    {
        let fut = work(self.core.clone());
        self.runtime
            .spawn(async move { answer(reply, fut.await) }.instrument(tracing::Span::current()));
    }
}

fn answer<T>(reply: Reply<T>, result: FsResult<T>) {
    if let Err(e) = &result {
        match e {
            FsError::NotFound | FsError::NoAttribute | FsError::Unlistable(_) => {
                tracing::debug!("{e}")
            }
            _ => tracing::warn!("{e}"),
        }
    }
    reply(result.map_err(|e| e.errno()))
}

impl FsEngine for Engine {
    fn lookup(&self, parent: u64, name: &OsStr, reply: Reply<Entry>) {
        let Some(name) = name.to_str().map(str::to_string) else {
            return answer(reply, Err(FsError::NotFound));
        };
        self.spawn(reply, |core| async move {
            let node = core.lookup(parent, &name).await?;
            Ok(core.entry(&node))
        });
    }

    fn forget(&self, _ino: u64, _nlookup: u64) {
        // Inode numbers live as long as the mount (see namespace.rs).
    }

    fn getattr(&self, ino: u64, reply: Reply<Entry>) {
        answer(reply, self.core.node(ino).map(|n| self.core.entry(&n)));
    }

    fn opendir(&self, ino: u64, reply: Reply<u64>) {
        self.spawn(reply, |core| async move { core.opendir(ino).await });
    }

    fn readdir(&self, _ino: u64, fh: u64, reply: Reply<Arc<[DirEntry]>>) {
        answer(reply, self.core.readdir(fh));
    }

    fn releasedir(&self, _ino: u64, fh: u64) {
        self.core.releasedir(fh);
    }

    fn open(&self, ino: u64, write: bool, reply: Reply<Opened>) {
        self.spawn(reply, |core| async move { core.open(ino, write).await });
    }

    fn read(&self, _ino: u64, fh: u64, offset: u64, size: u32, reply: Reply<Bytes>) {
        self.spawn(
            reply,
            |core| async move { core.read(fh, offset, size).await },
        );
    }

    fn release(&self, _ino: u64, fh: u64, reply: Reply<()>) {
        self.core.release(fh);
        answer(reply, Ok(()));
    }

    fn passthrough_refused(&self, fh: u64) {
        self.core.end_passthrough(fh);
    }

    fn statfs(&self, reply: Reply<StatFs>) {
        answer(reply, Ok(self.core.statfs()));
    }

    fn getxattr(&self, ino: u64, _name: &OsStr, reply: Reply<Vec<u8>>) {
        answer(reply, self.core.node(ino).and(Err(FsError::NoAttribute)));
    }

    fn listxattr(&self, ino: u64, reply: Reply<Vec<u8>>) {
        answer(reply, self.core.node(ino).map(|_| Vec::new()));
    }
}
