//! The engine: the namespace and the tiered read path behind the FUSE adapter's
//! [`FsEngine`] trait. Each operation is an async method here; the trait methods
//! hand them to the tokio runtime and answer the kernel when they finish.

use crate::model::version::FileId;
use crate::model::version::FileVersion;
use crate::namespace::object_path;
use crate::tier_manager::demotion::Demoter;
use crate::write::upload_jobs::UploadJobs;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use object_store::ObjectStore;

use crate::store::StoreClient;
use crate::write::path::WriteSide;
use crate::write::registry::WriteRegistry;
use crate::write::staging::StagingArea;
use crate::write::uploader::Uploader;
use parking_lot::Mutex;
use tierfs_fuse::{Attr, DirEntry, Entry, FileKind, Opened, StatFs};

use crate::engine::io_modes::InodeIoModes;
use crate::error::{FsError, FsResult};
use crate::meta::chunk_index::{ChunkIndex, VersionInfo};
use crate::meta::db::MetaDb;
use crate::model::options::MountOptions;
use crate::namespace::{Namespace, Node};
use crate::tier_manager::access::AccessTable;
use crate::tier_manager::job_queue::JobQueue;
use crate::tier_manager::manager::TierManager;
use crate::tier_manager::mover::Mover;
use crate::tier_manager::pins::PinTable;
use crate::tier_manager::placement::Placement;
use crate::tiers::kept_versions::KeptVersions;
use crate::tiers::nvme::NvmeTier;
use crate::tiers::reader::TieredReader;
use tierfs_policy::PlanConfig;

pub mod attributes;
pub mod fuse_bridge;
mod handles;
mod handover;
mod housekeeping;
pub mod io_modes;
pub mod namespace_ops;
mod open_files;
mod page_cache;
mod placement;
mod read;
mod upload_jobs;
mod write_ops;
mod write_passthrough;
pub mod xattrs;

use open_files::{OpenFile, OpenFiles, OpenTarget};
use page_cache::KernelPageCache;

/// The longest an open waits for a version's last NVMe writes, to be served by
/// passthrough (see [`TieredReader::settle_nvme`]).
const NVME_SETTLE: std::time::Duration = std::time::Duration::from_millis(500);

/// Counters of the engine itself.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Seeks that closed a readahead window.
    pub readahead_resets: AtomicU64,
    pub fuse_latency: crate::model::latency::FuseLatency,
}

/// Everything the engine needs to start.
pub struct EngineConfig {
    pub store: StoreClient,
    /// Names the store in cache keys (see `StoreLocation::identity`).
    pub store_id: String,
    pub cache_dir: PathBuf,
    pub options: MountOptions,
}

pub struct EngineCore {
    store: Arc<dyn ObjectStore>,
    store_id: String,
    options: MountOptions,
    cache_dir: PathBuf,
    uid: u32,
    gid: u32,
    ns: Namespace,
    index: Arc<ChunkIndex>,
    reader: Arc<TieredReader>,
    files: Arc<OpenFiles>,
    writes: Arc<WriteSide>,
    uploads: Arc<UploadJobs>,
    dirs: Mutex<HashMap<u64, Arc<[DirEntry]>>>,
    /// Whether each open inode is served through tierfs or from a backing file.
    io_modes: InodeIoModes,
    /// The kernel takes no backing files on this mount (see [`Self::passthrough`]).
    passthrough_unavailable: AtomicBool,
    /// The version each inode had when it was last opened, for FOPEN_KEEP_CACHE.
    last_opened: Mutex<HashMap<u64, FileId>>,
    kernel_cache: KernelPageCache,
    /// The mounted kernel's notices, once there is one.
    kernel: std::sync::OnceLock<Arc<dyn tierfs_fuse::KernelNotices>>,
    /// Page cache handovers run one at a time.
    handovers: tokio::sync::Semaphore,
    next_fh: AtomicU64,
    kept: Arc<KeptVersions>,
    manager: TierManager,
    pub stats: EngineStats,
}

impl EngineCore {
    /// Opens the cache and the registry; must run inside the tokio runtime,
    /// which resumes the uploads that a restart finds.
    pub fn start(config: EngineConfig) -> FsResult<Arc<EngineCore>> {
        let EngineConfig {
            store,
            store_id,
            cache_dir,
            options,
        } = config;
        std::fs::create_dir_all(&cache_dir)?;
        let meta = Arc::new(MetaDb::open(&crate::model::paths::index_dir(&cache_dir))?);
        let index = Arc::new(ChunkIndex::new(meta.clone()));
        let dirty = Arc::new(AtomicU64::new(0));
        let nvme = Arc::new(NvmeTier::open(
            &cache_dir,
            index.clone(),
            options.chunk_size,
            options.cache_size,
            options.cache_min_free,
            dirty.clone(),
        )?);
        let reader = TieredReader::new(store.objects.clone(), nvme, &options);
        let files = Arc::new(OpenFiles::default());
        let kept = Arc::new(KeptVersions::new(reader.clone(), files.clone()));
        let plan_config = PlanConfig::default();
        let jobs = Arc::new(JobQueue::new(
            options.pin_bandwidth,
            options.promote_bandwidth,
        ));
        let access = Arc::new(AccessTable::load(meta.clone(), plan_config.decay)?);
        let manager = TierManager {
            pins: PinTable::load(meta)?,
            mover: Mover::new(jobs.clone(), Arc::new(reader.clone()), options.chunk_size),
            demoter: Demoter::new(reader.clone(), index.clone(), access.clone(), files.clone()),
            jobs,
            plan_config,
            store: store.objects.clone(),
            reader: reader.clone(),
            index: index.clone(),
            access,
            nvme_budget: options.cache_size,
            placement: Placement::default(),
        };
        let registry = Arc::new(WriteRegistry::new(index.clone()));
        let staging = Arc::new(StagingArea::open(&cache_dir)?);
        let uploader = Arc::new(Uploader::new(
            store.clone(),
            registry.clone(),
            staging.clone(),
            options.upload_concurrency,
            options.upload_bandwidth,
        ));
        let writes = Arc::new(WriteSide::new(registry, staging, uploader, dirty));
        let uploads = Arc::new(UploadJobs {
            writes: writes.clone(),
            kept: kept.clone(),
            reader: reader.clone(),
            index: index.clone(),
        });
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let core = Arc::new(EngineCore {
            store: store.objects,
            store_id,
            writes,
            uploads,
            uid: options.uid.unwrap_or(uid),
            gid: options.gid.unwrap_or(gid),
            ns: Namespace::new(options.metadata_ttl),
            options,
            cache_dir,
            index,
            reader,
            files,
            dirs: Mutex::new(HashMap::new()),
            last_opened: Mutex::new(HashMap::new()),
            kernel_cache: KernelPageCache::default(),
            kernel: std::sync::OnceLock::new(),
            handovers: tokio::sync::Semaphore::new(1),
            io_modes: InodeIoModes::default(),
            passthrough_unavailable: AtomicBool::new(false),
            next_fh: AtomicU64::new(1),
            kept,
            manager,
            stats: EngineStats::default(),
        });
        core.recover_writes()?;
        core.start_housekeeping();
        core.start_mover();
        Ok(core)
    }

    pub(crate) fn writes(&self) -> &WriteSide {
        &self.writes
    }

    pub(crate) fn index(&self) -> &ChunkIndex {
        &self.index
    }

    pub fn manager(&self) -> &TierManager {
        &self.manager
    }

    pub(crate) fn access(&self) -> &AccessTable {
        &self.manager.access
    }

    pub(crate) fn kept(&self) -> &KeptVersions {
        &self.kept
    }

    pub(crate) fn ns(&self) -> &Namespace {
        &self.ns
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn cache_dir(&self) -> &std::path::Path {
        &self.cache_dir
    }

    pub fn options(&self) -> &MountOptions {
        &self.options
    }

    /// Names an object (not a version of it) in the chunk index.
    pub(crate) fn object_id(&self, key: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(format!("{}\0{}", self.store_id, key).as_bytes())
    }

    /// Bytes written through the mount that the store does not have verified yet.
    pub fn dirty_bytes(&self) -> u64 {
        self.writes.dirty_bytes()
    }

    /// Uploads queued or running.
    pub fn pending_uploads(&self) -> usize {
        self.writes.pending_uploads()
    }

    pub fn uploader(&self) -> &Uploader {
        &self.writes.uploader
    }

    pub fn reader(&self) -> &Arc<TieredReader> {
        &self.reader
    }

    /// What `stat` shows: the node's POSIX record where it has one, the
    /// mount's defaults where not.
    pub fn entry(&self, node: &Node) -> Entry {
        let (perm, size) = match node.kind {
            FileKind::Directory => (0o755, 0),
            FileKind::File => (0o644, self.direct_size(node).unwrap_or(node.size)),
            FileKind::Symlink => (0o777, node.size),
        };
        let perm = node.posix.perm().unwrap_or(perm);
        let perm = if self.options.read_only {
            perm & 0o7555
        } else {
            perm
        };
        let mtime = node.posix.mtime.unwrap_or(node.mtime);
        let nlink = match node.kind {
            FileKind::Directory => 2 + self.ns.subdir_count(node.ino),
            _ if !self.ns.is_linked(node) => 0,
            _ => 1,
        };
        Entry {
            attr: Attr {
                ino: node.ino,
                kind: node.kind,
                size,
                mtime,
                atime: node.posix.atime.unwrap_or(mtime),
                ctime: node.posix.ctime.unwrap_or(mtime),
                nlink,
                perm,
                uid: node.posix.uid.unwrap_or(self.uid),
                gid: node.posix.gid.unwrap_or(self.gid),
            },
            ttl: self.ns.ttl(),
        }
    }

    pub(crate) fn node(&self, ino: u64) -> FsResult<Node> {
        self.ns.node(ino).ok_or(FsError::NotFound)
    }

    pub(crate) fn dir_node(&self, ino: u64) -> FsResult<Node> {
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
            Some(object_path(&dir.path)?)
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
            Err(e) => {
                // Offline, the names last seen stay usable, so that cached files
                // can still be found and read.
                let Some(entries) = self.ns.last_listing(dir.ino) else {
                    return Err(FsError::from_store(e));
                };
                tracing::info!(path = %dir.path, "store unreachable, serving the last listing: {e}");
                return Ok(entries);
            }
        };
        Ok(self.ns.install_listing(dir.ino, listing))
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Node> {
        let dir = self.dir_node(parent)?;
        if name.len() > crate::namespace::MAX_NAME {
            return Err(FsError::NameTooLong);
        }
        let node = match self.ns.fresh_child(parent, name) {
            Some(found) => found.ok_or(FsError::NotFound)?,
            None => {
                self.list(&dir).await?;
                self.ns
                    .listed_child(parent, name)
                    .ok_or(FsError::NotFound)?
            }
        };
        self.with_posix(node).await
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
    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> FsResult<Opened> {
        let mut node = self.node(ino)?;
        if node.kind == FileKind::Directory {
            return Err(FsError::IsADirectory);
        }
        if write {
            self.writable()?;
        }
        if write || node.staged.is_some() {
            match self.open_staged(node, write, truncate).await? {
                Some(opened) => return Ok(opened),
                // Uploaded and adopted meanwhile: it is the object now.
                None => node = self.node(ino)?,
            }
        }
        if self
            .ns
            .fresh_child(node.parent, &node_name(&node))
            .is_none()
        {
            let path = object_path(&node.path)?;
            let head = object_store::GetOptions {
                head: true,
                ..object_store::GetOptions::default()
            };
            match self.store.get_opts(&path, head).await {
                Ok(got) => {
                    node = self.ns.refresh_file(ino, &got.meta).unwrap_or(node);
                    // The same HEAD carries the object's POSIX record.
                    let posix = crate::store::posix_metadata::posix_of(&got.attributes);
                    if self.options.posix_metadata && self.uploader().client().local_root.is_none()
                    {
                        let read = (got.meta.size, got.meta.e_tag.as_deref());
                        node = self.ns.set_posix(ino, read, posix).unwrap_or(node);
                    }
                }
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
        self.manager
            .access
            .record(&version, crate::model::clock::now_secs());
        let keep_cache = self.last_opened.lock().insert(ino, version.id) == Some(version.id);
        // Served from the kernel's page cache when it holds the file (see
        // `KernelPageCache`): nothing to wait for then.
        let from_page_cache = self.kernel_cache.opened(ino, version.id) && keep_cache;
        if self.passthrough() && !from_page_cache {
            self.reader
                .settle_nvme(version.id, version.size, NVME_SETTLE)
                .await;
        }
        let open = OpenFile::version(ino, version.clone(), from_page_cache);
        let (fh, backing) = self.add_handle(open, |live| {
            self.version_backing(&version, live, !from_page_cache)
        })?;
        Ok(Opened {
            fh,
            keep_cache,
            backing,
        })
    }

    /// fsync on a handle: seals a staged file; nothing to do for a read-only one.
    pub async fn fsync(self: &Arc<Self>, fh: u64) -> FsResult<()> {
        let open = self.handle(fh)?;
        match &open.target {
            OpenTarget::Staged { staged, writer } => {
                if *writer && open.passthrough.load(Ordering::Relaxed) {
                    self.absorb_direct_writes(staged);
                }
                self.fsync_staged(staged).await
            }
            OpenTarget::Version(_) => Ok(()),
        }
    }

    /// The cache name of the version a node shows: its ETag, or its size and
    /// modification time for a store that gives none.
    pub(crate) fn file_id(&self, node: &Node) -> FileId {
        self.version_id(&node.path, node.size, node.etag.as_deref(), node.mtime)
    }

    fn version_id(&self, key: &str, size: u64, etag: Option<&str>, mtime: SystemTime) -> FileId {
        let tag = match etag {
            Some(etag) => etag.to_string(),
            None => format!("{size}:{mtime:?}"),
        };
        FileId::new(&self.store_id, key, &tag, self.options.chunk_size)
    }

    pub(crate) fn version_of(&self, node: &Node) -> FsResult<Arc<FileVersion>> {
        self.bind_version(&node.path, node.size, node.etag.clone(), node.mtime)
    }

    /// The version an object's listing entry shows, bound as the object's current one.
    pub(crate) fn version_of_object(
        &self,
        meta: &object_store::ObjectMeta,
    ) -> FsResult<Arc<FileVersion>> {
        self.bind_version(
            meta.location.as_ref(),
            meta.size,
            meta.e_tag.clone(),
            meta.last_modified.into(),
        )
    }

    fn bind_version(
        &self,
        key: &str,
        size: u64,
        etag: Option<String>,
        mtime: SystemTime,
    ) -> FsResult<Arc<FileVersion>> {
        let id = self.version_id(key, size, etag.as_deref(), mtime);
        let object = self.object_id(key);
        let info = VersionInfo {
            created: mtime
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            key: key.to_string(),
            digest: None,
        };
        if let Some(old) = self.index.bind_object(object, id, &info)? {
            tracing::info!(path = %key, "object changed in the store; dropping its cached chunks");
            self.kept.retire(old)?;
        }
        Ok(Arc::new(FileVersion {
            path: object_path(key)?,
            id,
            size,
            etag,
        }))
    }

    pub fn statfs(&self) -> StatFs {
        let bsize = 4096u64;
        let disk = self.reader.disk_room();
        let free = disk
            .budget
            .saturating_sub(disk.used + self.writes.dirty_bytes());
        StatFs {
            blocks: disk.budget / bsize,
            bfree: free / bsize,
            bavail: free / bsize,
            files: self.ns.node_count(),
            ffree: u32::MAX as u64,
            bsize: bsize as u32,
            namelen: 255,
        }
    }

    pub fn cache_file(&self, id: FileId) -> PathBuf {
        self.reader.cache_file(id)
    }
}

fn node_name(node: &Node) -> String {
    node.path.rsplit('/').next().unwrap_or("").to_string()
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::{CHUNK, EngineFixture, ME, errno};
    use crate::namespace::ROOT_INO;
    use tierfs_fuse::FileKind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_shows_files_and_directories_once_each() {
        let f = EngineFixture::new();
        f.put("m/a.bin", b"a");
        f.put("m/s/b.bin", b"b");
        let m = f.node("m").await;
        let fh = f.core.opendir(m.ino).await.unwrap();
        let mut entries: Vec<_> = f
            .core
            .readdir(fh)
            .unwrap()
            .iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| (e.name.clone(), e.kind))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            entries,
            [
                ("a.bin".to_string(), FileKind::File),
                ("s".to_string(), FileKind::Directory)
            ]
        );
        f.core.releasedir(fh);
        assert_eq!(errno(f.core.readdir(fh)), libc::EBADF);
        assert_eq!(
            errno(f.core.opendir(f.node("m/a.bin").await.ino).await),
            libc::ENOTDIR
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statfs_counts_cached_and_written_bytes_against_the_cache_size() {
        let f = EngineFixture::with(|o| o.cache_size = 64 * CHUNK);
        let empty = f.core.statfs();
        assert_eq!(empty.blocks * empty.bsize as u64, 64 * CHUNK);
        let (_, staged) = f.core.create(ROOT_INO, "w", ME).await.unwrap();
        f.core
            .write_staged(&staged, 0, &vec![0u8; (4 * CHUNK) as usize])
            .unwrap();
        let after = f.core.statfs();
        assert_eq!((empty.bfree - after.bfree) * after.bsize as u64, 4 * CHUNK);
        assert_eq!(
            errno(f.core.open(ROOT_INO, false, false).await),
            libc::EISDIR
        );
    }
}
