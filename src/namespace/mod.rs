//! The namespace: inode numbers for object keys and common prefixes, and directory
//! listings trusted for `metadata_ttl`.
//!
//! Inode numbers stay stable for the life of the mount: a path keeps its number even
//! after the kernel forgets it, so a node costs memory until unmount (about 200
//! bytes each; a million objects is about 200 MB).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use object_store::{ListResult, ObjectMeta};
use parking_lot::Mutex;
use tierfs_fuse::{DirEntry, FileKind};

use crate::model::posix::PosixAttrs;

mod keys;
mod local;

pub use keys::{is_below, is_within, object_path};

pub use local::valid_name;

pub const ROOT_INO: u64 = 1;
/// The longest file name, in bytes (NAME_MAX).
pub const MAX_NAME: usize = 255;

/// What the namespace knows about one inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    /// The key relative to the store's prefix; "" for the root.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub etag: Option<String>,
    /// The staging file of a file written through the mount and not yet
    /// verified in the store; its local bytes are the file's contents.
    pub staged: Option<u64>,
    /// Mode, owner and times as the store keeps them (or as set here).
    pub posix: PosixAttrs,
    /// Whether `posix` has been read for the version shown (objects listed
    /// from the store carry theirs only in a HEAD).
    pub posix_known: bool,
}

impl Node {
    /// The file's bytes (or a directory's entries) changed at `now`: its
    /// modification and change times move, in its record too when it has one.
    pub fn modified(&mut self, now: SystemTime) {
        self.mtime = now;
        if self.posix.mtime.is_some() {
            self.posix.mtime = Some(now);
        }
        self.posix.ctime = Some(now);
    }
}

/// The kind under which the namespace files a path: an object (a file or a
/// symbolic link) or a prefix.
pub(crate) fn path_kind(kind: FileKind) -> FileKind {
    match kind {
        FileKind::Directory => FileKind::Directory,
        FileKind::File | FileKind::Symlink => FileKind::File,
    }
}

/// The entries of a directory as a listing finds them.
struct Found {
    entries: Vec<DirEntry>,
    children: HashMap<String, u64>,
}

impl Found {
    /// A directory's listing starts with `.` and `..`.
    fn new(dir: u64, parent: u64) -> Found {
        let dots = [(".", dir), ("..", parent)].map(|(name, ino)| DirEntry {
            ino,
            name: name.into(),
            kind: FileKind::Directory,
        });
        Found {
            entries: dots.to_vec(),
            children: HashMap::new(),
        }
    }

    /// Adds a child; one already found by that name is replaced.
    fn add(&mut self, name: &str, ino: u64, kind: FileKind) {
        if let Some(old) = self.children.insert(name.to_string(), ino) {
            self.entries.retain(|e| e.ino != old || e.name != name);
        }
        self.entries.push(DirEntry {
            ino,
            name: name.to_string(),
            kind,
        });
    }
}

struct Listing {
    entries: Arc<[DirEntry]>,
    children: HashMap<String, u64>,
    listed_at: Instant,
}

struct Tables {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<(String, FileKind), u64>,
    listings: HashMap<u64, Listing>,
    next_ino: u64,
    warned: HashSet<String>,
    /// Children that exist only here (files being written, directories made
    /// through the mount), shown in every listing of their directory.
    local: HashMap<u64, HashMap<String, u64>>,
}

pub struct Namespace {
    tables: Mutex<Tables>,
    ttl: Duration,
    mounted_at: SystemTime,
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Why a key cannot be shown as a file name, if it cannot.
fn unusable_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it has an empty path segment")
    } else if name == "." || name == ".." {
        Some("'.' and '..' cannot be file names")
    } else if name.len() > MAX_NAME {
        Some("a file name is limited to 255 bytes")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else {
        None
    }
}

impl Namespace {
    pub fn new(ttl: Duration) -> Namespace {
        let now = SystemTime::now();
        let root = Node {
            ino: ROOT_INO,
            parent: ROOT_INO,
            path: String::new(),
            kind: FileKind::Directory,
            size: 0,
            mtime: now,
            etag: None,
            staged: None,
            posix: PosixAttrs::default(),
            posix_known: true,
        };
        let mut nodes = HashMap::new();
        nodes.insert(ROOT_INO, root);
        let mut by_path = HashMap::new();
        by_path.insert((String::new(), FileKind::Directory), ROOT_INO);
        Namespace {
            tables: Mutex::new(Tables {
                nodes,
                by_path,
                listings: HashMap::new(),
                next_ino: ROOT_INO + 1,
                warned: HashSet::new(),
                local: HashMap::new(),
            }),
            ttl,
            mounted_at: now,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        self.tables.lock().nodes.get(&ino).cloned()
    }

    /// The file node at `key`, if this namespace has one.
    pub fn file_at(&self, key: &str) -> Option<Node> {
        let tables = self.tables.lock();
        let ino = tables.by_path.get(&(key.to_string(), FileKind::File))?;
        tables.nodes.get(ino).cloned()
    }

    pub fn node_count(&self) -> u64 {
        self.tables.lock().nodes.len() as u64
    }

    /// The listing of a directory if it was taken less than `ttl` ago.
    pub fn fresh_listing(&self, dir: u64) -> Option<Arc<[DirEntry]>> {
        let tables = self.tables.lock();
        let listing = tables.listings.get(&dir)?;
        (listing.listed_at.elapsed() < self.ttl).then(|| listing.entries.clone())
    }

    /// The last listing of a directory, however old.
    pub fn last_listing(&self, dir: u64) -> Option<Arc<[DirEntry]>> {
        let tables = self.tables.lock();
        tables.listings.get(&dir).map(|l| l.entries.clone())
    }

    /// A child of a freshly listed directory: `Some(None)` when the listing is fresh
    /// and has no such name, `None` when the directory must be listed again.
    pub fn fresh_child(&self, dir: u64, name: &str) -> Option<Option<Node>> {
        let tables = self.tables.lock();
        if let Some(node) = tables.local_child(dir, name) {
            return Some(Some(node));
        }
        let listing = tables.listings.get(&dir)?;
        if listing.listed_at.elapsed() >= self.ttl {
            return None;
        }
        Some(
            listing
                .children
                .get(name)
                .and_then(|ino| tables.nodes.get(ino).cloned()),
        )
    }

    /// A child by the directory's last listing, however old.
    pub fn listed_child(&self, dir: u64, name: &str) -> Option<Node> {
        let tables = self.tables.lock();
        if let Some(node) = tables.local_child(dir, name) {
            return Some(node);
        }
        let ino = tables.listings.get(&dir)?.children.get(name)?;
        tables.nodes.get(ino).cloned()
    }

    /// Takes a fresh listing of directory `dir` from the store and returns its
    /// entries, `.` and `..` first.
    pub fn install_listing(&self, dir: u64, listing: ListResult) -> Arc<[DirEntry]> {
        let mut tables = self.tables.lock();
        let Some(dir_node) = tables.nodes.get(&dir).cloned() else {
            return Arc::from(Vec::new());
        };
        let mut found = Found::new(dir, dir_node.parent);
        for prefix in &listing.common_prefixes {
            let Some(name) = prefix.filename() else {
                continue;
            };
            if tables.skip_unusable(prefix.as_ref(), name) {
                continue;
            }
            let path = join(&dir_node.path, name);
            let ino = tables.upsert(dir, path, FileKind::Directory, 0, self.mounted_at, None);
            found.add(name, ino, FileKind::Directory);
        }
        for meta in &listing.objects {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if tables.skip_unusable(meta.location.as_ref(), name) {
                continue;
            }
            if found.children.contains_key(name) {
                tables.warn_once(
                    meta.location.as_ref(),
                    "it is both an object and a prefix; the directory is shown, the object is hidden",
                );
                continue;
            }
            let ino = tables.upsert_object(dir, &dir_node.path, name, meta);
            found.add(name, ino, FileKind::File);
        }
        tables.add_local_children(dir, &mut found);
        let entries: Arc<[DirEntry]> = Arc::from(found.entries);
        tables.listings.insert(
            dir,
            Listing {
                entries: entries.clone(),
                children: found.children,
                listed_at: Instant::now(),
            },
        );
        entries
    }

    /// Updates a file from a HEAD of its object; returns the node as it is now.
    pub fn refresh_file(&self, ino: u64, meta: &ObjectMeta) -> Option<Node> {
        let mut tables = self.tables.lock();
        let node = tables.nodes.get_mut(&ino)?;
        if node.etag != meta.e_tag || meta.e_tag.is_none() {
            node.posix_known = false;
        }
        node.size = meta.size;
        node.mtime = meta.last_modified.into();
        node.etag = meta.e_tag.clone();
        Some(node.clone())
    }

    /// Records the POSIX attributes read for the object version `read` (its
    /// size and ETag); a node that shows another version keeps what it has. A
    /// listing may give no ETag where a HEAD does: the size decides then. A
    /// symbolic link shows as one from here on, in its directory's listing too.
    pub fn set_posix(
        &self,
        ino: u64,
        read: (u64, Option<&str>),
        posix: PosixAttrs,
    ) -> Option<Node> {
        let mut tables = self.tables.lock();
        let node = tables.nodes.get_mut(&ino)?;
        let same = match (node.etag.as_deref(), read.1) {
            (Some(shown), Some(read)) => shown == read,
            _ => node.size == read.0,
        };
        if !same {
            return Some(node.clone());
        }
        node.posix = posix;
        node.posix_known = true;
        if node.kind == FileKind::File && posix.is_symlink() {
            node.kind = FileKind::Symlink;
        }
        let node = node.clone();
        if node.kind == FileKind::Symlink
            && let Some(listing) = tables.listings.get_mut(&node.parent)
        {
            let entries: Vec<DirEntry> = listing
                .entries
                .iter()
                .map(|e| DirEntry {
                    kind: if e.ino == ino {
                        FileKind::Symlink
                    } else {
                        e.kind
                    },
                    ..e.clone()
                })
                .collect();
            listing.entries = entries.into();
        }
        Some(node)
    }

    /// Subdirectories of `dir` as its listing (or, unlisted, the directories
    /// made in it through the mount) shows them.
    pub fn subdir_count(&self, dir: u64) -> u32 {
        let tables = self.tables.lock();
        let is_dir = |ino: &u64| {
            tables
                .nodes
                .get(ino)
                .is_some_and(|n| n.kind == FileKind::Directory)
        };
        let count = match tables.listings.get(&dir) {
            Some(listing) => listing.children.values().filter(|ino| is_dir(ino)).count(),
            None => tables.local.get(&dir).map_or(0, |children| {
                children.values().filter(|ino| is_dir(ino)).count()
            }),
        };
        count as u32
    }

    /// Whether `node` still has a name (a file unlinked while open has none).
    pub fn is_linked(&self, node: &Node) -> bool {
        let key = (node.path.clone(), path_kind(node.kind));
        self.tables.lock().by_path.get(&key) == Some(&node.ino)
    }

    /// Logs a key that cannot be shown, once per key for the life of the mount.
    pub fn warn_once(&self, key: &str, why: &str) {
        self.tables.lock().warn_once(key, why);
    }

    /// Forgets the listing of a directory, so the next lookup asks the store.
    pub fn invalidate(&self, dir: u64) {
        self.tables.lock().listings.remove(&dir);
    }
}

impl Tables {
    fn warn_once(&mut self, key: &str, why: &str) {
        if self.warned.insert(key.to_string()) {
            tracing::warn!(key, "object key not shown: {why}");
        }
    }

    fn skip_unusable(&mut self, key: &str, name: &str) -> bool {
        match unusable_name(name) {
            Some(why) => {
                self.warn_once(key, why);
                true
            }
            None => false,
        }
    }

    fn upsert_object(&mut self, dir: u64, dir_path: &str, name: &str, meta: &ObjectMeta) -> u64 {
        let path = join(dir_path, name);
        let mtime = meta.last_modified.into();
        self.upsert(
            dir,
            path,
            FileKind::File,
            meta.size,
            mtime,
            meta.e_tag.clone(),
        )
    }

    fn upsert(
        &mut self,
        parent: u64,
        path: String,
        kind: FileKind,
        size: u64,
        mtime: SystemTime,
        etag: Option<String>,
    ) -> u64 {
        let key = (path, kind);
        if let Some(ino) = self.by_path.get(&key) {
            let node = self.nodes.get_mut(ino).expect("by_path and nodes agree");
            if node.staged.is_some() {
                // The local bytes are newer than anything the store lists.
                return *ino;
            }
            // Another version of an object may carry another record.
            if kind == FileKind::File && (node.etag != etag || etag.is_none()) {
                node.posix_known = false;
            }
            node.size = size;
            node.mtime = mtime;
            node.etag = etag;
            return *ino;
        }
        let path = key.0.clone();
        let ino = self.allocate_ino(key);
        let node = Node {
            ino,
            parent,
            path,
            kind,
            size,
            mtime,
            etag,
            staged: None,
            posix: PosixAttrs::default(),
            // An object carries its record, and so does a local store's
            // directory.
            posix_known: false,
        };
        self.nodes.insert(ino, node);
        ino
    }

    /// A new inode number for a path, recorded under it.
    fn allocate_ino(&mut self, key: (String, FileKind)) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_path.insert(key, ino);
        ino
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path;

    fn meta(key: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            location: Path::parse(key).unwrap(),
            last_modified: chrono::Utc::now(),
            size,
            e_tag: Some(format!("e-{size}")),
            version: None,
        }
    }

    #[test]
    fn listing_builds_stable_inodes_and_hides_bad_keys() {
        let ns = Namespace::new(Duration::from_secs(60));
        let long = "x".repeat(300);
        let listing = ListResult {
            common_prefixes: vec![Path::parse("model").unwrap(), Path::parse("a").unwrap()],
            objects: vec![meta("a", 5), meta("w.bin", 10), meta(&long, 1)],
            extensions: Default::default(),
        };
        let entries = ns.install_listing(ROOT_INO, listing);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, [".", "..", "model", "a", "w.bin"]);
        let a = ns.fresh_child(ROOT_INO, "a").unwrap().unwrap();
        assert_eq!(a.kind, FileKind::Directory);
        let w = ns.fresh_child(ROOT_INO, "w.bin").unwrap().unwrap();
        assert_eq!((w.size, w.path.as_str()), (10, "w.bin"));
        assert_eq!(ns.fresh_child(ROOT_INO, "missing"), Some(None));
        // Listing again keeps the numbers.
        let again = ListResult {
            common_prefixes: vec![],
            objects: vec![meta("w.bin", 11)],
            extensions: Default::default(),
        };
        ns.install_listing(ROOT_INO, again);
        let w2 = ns.fresh_child(ROOT_INO, "w.bin").unwrap().unwrap();
        assert_eq!((w2.ino, w2.size), (w.ino, 11));
        ns.invalidate(ROOT_INO);
        assert_eq!(ns.fresh_child(ROOT_INO, "w.bin"), None);
    }

    #[test]
    fn listings_expire() {
        let ns = Namespace::new(Duration::ZERO);
        ns.install_listing(
            ROOT_INO,
            ListResult {
                common_prefixes: vec![],
                objects: vec![],
                extensions: Default::default(),
            },
        );
        assert!(ns.fresh_listing(ROOT_INO).is_none());
    }

    #[test]
    fn a_new_version_of_an_object_needs_its_record_read_again_and_a_prefix_never_does() {
        let ns = Namespace::new(Duration::from_secs(60));
        let listing = |size| ListResult {
            common_prefixes: vec![Path::parse("d").unwrap()],
            objects: vec![meta("f", size)],
            extensions: Default::default(),
        };
        ns.install_listing(ROOT_INO, listing(1));
        let f = ns.fresh_child(ROOT_INO, "f").unwrap().unwrap();
        assert!(!f.posix_known);
        let posix = PosixAttrs {
            mode: Some(crate::model::posix::S_IFLNK | 0o777),
            ..PosixAttrs::default()
        };
        let link = ns.set_posix(f.ino, (1, Some("e-1")), posix).unwrap();
        assert_eq!((link.kind, link.posix_known), (FileKind::Symlink, true));
        // A record read for another version is not taken.
        let other = (1, Some("e-9"));
        assert!(
            !ns.set_posix(f.ino, other, PosixAttrs::default())
                .unwrap()
                .posix
                .is_empty()
        );
        ns.install_listing(ROOT_INO, listing(1));
        assert!(ns.fresh_child(ROOT_INO, "f").unwrap().unwrap().posix_known);
        ns.install_listing(ROOT_INO, listing(2));
        assert!(!ns.fresh_child(ROOT_INO, "f").unwrap().unwrap().posix_known);
        // A directory's record, once read, stays through listings.
        let d = ns.fresh_child(ROOT_INO, "d").unwrap().unwrap();
        assert!(!d.posix_known);
        ns.set_posix(d.ino, (0, None), PosixAttrs::default());
        ns.install_listing(ROOT_INO, listing(3));
        assert!(ns.fresh_child(ROOT_INO, "d").unwrap().unwrap().posix_known);
    }
}
