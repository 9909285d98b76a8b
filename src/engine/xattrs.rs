//! Extended attributes under `user.tierfs.`, the control surface any tool can
//! use (`getfattr`, `setfattr`):
//!
//! - `user.tierfs.tier` (read): where a file's bytes are, per tier, as percent
//!   and bytes, such as `ram 25% 2097152, nvme 100% 8388608, store 100% 8388608`.
//! - `user.tierfs.digest` (read): the whole-file xxh3-128 digest, when known (files
//!   written through the mount; the store keeps it in object metadata).
//! - `user.tierfs.prefetch` (write `ram` or `nvme`): fetches the file (or every
//!   file below the directory) into that tier once, in the background, without
//!   pinning it.
//! - `user.tierfs.pin` (write `ram` or `nvme`, remove to unpin; read on a file
//!   gives the pin that applies to it): keeps a file, or everything below a
//!   directory including files created later, in the tier.

use crate::model::tier_report::TierReport;
use crate::namespace::object_path;
use tierfs_policy::Priority;

use crate::engine::EngineCore;
use crate::error::{FsError, FsResult};
use crate::namespace::Node;
use crate::store::digest_metadata::head_digest;
use crate::tier_manager::job_queue::JobAction;

use crate::model::tier::{Tier, parse_tier};
use tierfs_fuse::FileKind;

pub const TIER: &str = "user.tierfs.tier";
pub const DIGEST: &str = "user.tierfs.digest";
pub const PREFETCH: &str = "user.tierfs.prefetch";
pub const PIN: &str = "user.tierfs.pin";
/// On the mount's root (read): the path of the control socket.
pub const CONTROL: &str = "user.tierfs.control";

impl EngineCore {
    /// The attribute names a node has, each followed by a NUL byte. The digest
    /// is listed when it is known here (written through this cache); it may
    /// still be read from the store's metadata by name.
    pub fn list_xattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        let mut names = Vec::new();
        if node.kind == FileKind::File {
            names.push(TIER);
            if self.known_digest(&node).is_some() {
                names.push(DIGEST);
            }
        }
        if self.manager().pins.effective(&node.path).is_some() {
            names.push(PIN);
        }
        if node.path.is_empty() {
            names.push(CONTROL);
        }
        let mut out = Vec::new();
        for name in names {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// The digest of a staged file's sealed bytes, or of a version uploaded
    /// through this cache.
    fn known_digest(&self, node: &Node) -> Option<u128> {
        match node.staged {
            Some(id) => self
                .writes()
                .registry
                .get(id)
                .ok()??
                .sealed
                .filter(|s| s.size == node.size)
                .map(|s| s.digest),
            None => {
                let id = self.file_id(node);
                self.index().version_info(id).ok()??.digest
            }
        }
    }

    pub async fn get_xattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        if name == PIN {
            return match self.manager().pins.effective(&node.path) {
                Some((_, tier)) => Ok(tier.name().as_bytes().to_vec()),
                None => Err(FsError::NoAttribute),
            };
        }
        if name == CONTROL && node.path.is_empty() {
            let socket = crate::model::paths::socket_path(self.cache_dir());
            return Ok(socket.into_os_string().into_encoded_bytes());
        }
        if node.kind != FileKind::File {
            return Err(FsError::NoAttribute);
        }
        match name {
            TIER => Ok(self.tier_report(&node)?.to_string().into_bytes()),
            DIGEST => self.digest_of(&node).await.map(String::into_bytes),
            _ => Err(FsError::NoAttribute),
        }
    }

    pub fn remove_xattr(&self, ino: u64, name: &str) -> FsResult<()> {
        let node = self.node(ino)?;
        match name {
            PIN => self.manager().unpin(&node.path),
            TIER | DIGEST | CONTROL => {
                Err(FsError::InvalidArgument(format!("{name} is read-only")))
            }
            PREFETCH => Err(FsError::NoAttribute),
            _ => Err(FsError::NotSupported(format!("extended attribute {name}"))),
        }
    }

    pub async fn set_xattr(&self, ino: u64, name: &str, value: &[u8]) -> FsResult<()> {
        let node = self.node(ino)?;
        match name {
            PREFETCH => {
                let tier = parse_tier(name, value).inspect_err(|e| tracing::warn!("{e}"))?;
                self.prefetch(&node, tier);
                Ok(())
            }
            PIN => {
                let tier = parse_tier(name, value).inspect_err(|e| tracing::warn!("{e}"))?;
                self.manager().pin(&node.path, tier).await
            }
            TIER | DIGEST | CONTROL => {
                Err(FsError::InvalidArgument(format!("{name} is read-only")))
            }
            _ => Err(FsError::NotSupported(format!("extended attribute {name}"))),
        }
    }

    /// `ram 25% 2097152, nvme 100% 8388608, store 100% 8388608`: the share of
    /// the file in each tier, and its bytes there.
    fn tier_report(&self, node: &Node) -> FsResult<TierReport> {
        if node.staged.is_some() {
            // Written through the mount, not yet verified in the store.
            return Ok(TierReport::new(node.size, 0, node.size, 0, None));
        }
        // Only looks: the version is bound when the file is opened.
        let id = self.file_id(node);
        let ram = self.reader().ram_bytes_of(id, node.size);
        let nvme = self.reader().nvme_bytes_of(id);
        // A pin's progress: the share of the file in its tier and held there.
        let pin = self.manager().pins.effective(&node.path).map(|(_, tier)| {
            let held = match tier {
                Tier::Ram if self.reader().ram_held(id) => ram,
                Tier::Nvme if self.pin_holds_nvme(&node.path, id) => nvme,
                _ => 0,
            };
            (tier, held)
        });
        Ok(TierReport::new(node.size, ram, nvme, node.size, pin))
    }

    /// The whole-file digest: of the sealed bytes for a staged file, from the
    /// object's metadata otherwise.
    async fn digest_of(&self, node: &Node) -> FsResult<String> {
        if let Some(digest) = self.known_digest(node) {
            return Ok(format!("{digest:032x}"));
        }
        if node.staged.is_some() {
            return Err(FsError::NoAttribute);
        }
        head_digest(self.store().as_ref(), &object_path(&node.path)?)
            .await
            .map_err(FsError::from_store)?
            .ok_or(FsError::NoAttribute)
    }

    /// Fetches every chunk of a file, or of every file below a directory, once,
    /// in the background.
    fn prefetch(&self, node: &Node, tier: Tier) {
        if node.staged.is_some() {
            return; // Its bytes are all local already.
        }
        self.manager().jobs.submit(
            Priority::Explicit,
            JobAction::Fetch(tier),
            vec![node.path.clone()],
            None,
            "prefetch",
        );
    }

    /// Whether the pin of the file at `key` holds version `id` on NVMe.
    fn pin_holds_nvme(&self, key: &str, id: crate::model::version::FileId) -> bool {
        self.manager()
            .placement
            .pinned
            .lock()
            .get(key)
            .is_some_and(|f| f.nvme_held && f.version.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{CHUNK, EngineFixture, errno};
    use crate::namespace::ROOT_INO;

    fn names(list: Vec<u8>) -> Vec<String> {
        list.split(|b| *b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8(n.to_vec()).unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_written_file_lists_its_digest_and_reports_its_tiers() {
        let f = EngineFixture::new();
        let data = vec![7u8; (2 * CHUNK) as usize];
        let node = f.write_file(ROOT_INO, "w.bin", &data).await;
        let list = names(f.core.list_xattr(node.ino).unwrap());
        assert_eq!(list, [TIER, DIGEST]);
        let digest = f.core.get_xattr(node.ino, DIGEST).await.unwrap();
        let expected = format!("{:032x}", crate::model::digest::digest(&data));
        assert_eq!(String::from_utf8(digest).unwrap(), expected);
        let tier = String::from_utf8(f.core.get_xattr(node.ino, TIER).await.unwrap()).unwrap();
        assert!(tier.contains("store 100%"), "{tier}");
        assert_eq!(names(f.core.list_xattr(ROOT_INO).unwrap()), [CONTROL]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_names_and_values_fail_with_their_errno_and_change_nothing() {
        let f = EngineFixture::new();
        f.put("m/a.bin", b"abc");
        let node = f.node("m/a.bin").await;
        assert_eq!(
            errno(f.core.set_xattr(node.ino, PIN, b"disk").await),
            libc::EINVAL
        );
        assert_eq!(
            errno(f.core.set_xattr(node.ino, TIER, b"ram").await),
            libc::EINVAL
        );
        assert_eq!(
            errno(f.core.set_xattr(node.ino, "user.x", b"1").await),
            libc::ENOTSUP
        );
        assert_eq!(errno(f.core.get_xattr(node.ino, PIN).await), libc::ENODATA);
        assert_eq!(
            errno(f.core.get_xattr(node.ino, "user.x").await),
            libc::ENODATA
        );
        assert_eq!(errno(f.core.remove_xattr(node.ino, DIGEST)), libc::EINVAL);
        assert!(f.core.manager().pins.effective("m/a.bin").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pin_on_a_directory_applies_below_it_until_removed() {
        let f = EngineFixture::new();
        f.put("m/a.bin", b"abc");
        let dir = f.node("m").await;
        f.core.set_xattr(dir.ino, PIN, b"nvme").await.unwrap();
        let file = f.node("m/a.bin").await;
        assert_eq!(f.core.get_xattr(file.ino, PIN).await.unwrap(), b"nvme");
        assert!(names(f.core.list_xattr(file.ino).unwrap()).contains(&PIN.to_string()));
        f.core.remove_xattr(dir.ino, PIN).unwrap();
        assert_eq!(errno(f.core.get_xattr(file.ino, PIN).await), libc::ENODATA);
    }
}
