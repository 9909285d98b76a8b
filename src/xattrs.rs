//! Extended attributes under `user.tierfs.`, the control surface any tool can
//! use (`getfattr`, `setfattr`):
//!
//! - `user.tierfs.tier` (read): where a file's bytes are, per tier, as percent
//!   and bytes, such as `ram 25% 2097152, nvme 100% 8388608, store 100% 8388608`.
//! - `user.tierfs.digest` (read): the whole-file xxh3-128 digest, when known (files
//!   written through the mount; the store keeps it in object metadata).
//! - `user.tierfs.prefetch` (write `ram` or `nvme`): fetches the file into that
//!   tier once, in the background, without pinning it.

use std::sync::Arc;

use object_store::{Attribute, GetOptions};

use crate::engine::EngineCore;
use crate::error::{FsError, FsResult};
use crate::namespace::Node;
use crate::uploader::DIGEST_METADATA;
use crate::write_path::parse_key;
use tierfs_fuse::FileKind;

pub const TIER: &str = "user.tierfs.tier";
pub const DIGEST: &str = "user.tierfs.digest";
pub const PREFETCH: &str = "user.tierfs.prefetch";

/// A tier a file can be fetched into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchTier {
    Ram,
    Nvme,
}

/// Reads an attribute value naming a tier; anything else is refused with the
/// reason in words.
pub fn parse_tier(name: &str, value: &[u8]) -> FsResult<FetchTier> {
    let text = std::str::from_utf8(value)
        .map_err(|_| FsError::InvalidArgument(format!("{name}: the value is not UTF-8")))?;
    match text.trim() {
        "ram" => Ok(FetchTier::Ram),
        "nvme" => Ok(FetchTier::Nvme),
        v if v == "vram" || v.starts_with("vram:") => Err(FsError::InvalidArgument(format!(
            "{name}: '{v}' needs the GPU helper, which this build does not have yet"
        ))),
        v => Err(FsError::InvalidArgument(format!(
            "{name}: '{v}' is not a tier (ram or nvme)"
        ))),
    }
}

impl EngineCore {
    /// The attribute names a node has, each followed by a NUL byte. The digest
    /// is listed when it is known here (written through this cache); it may
    /// still be read from the store's metadata by name.
    pub fn list_xattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let node = self.node(ino)?;
        let mut out = Vec::new();
        if node.kind == FileKind::File {
            let mut names = vec![TIER];
            if self.known_digest(&node).is_some() {
                names.push(DIGEST);
            }
            for name in names {
                out.extend_from_slice(name.as_bytes());
                out.push(0);
            }
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
        if node.kind != FileKind::File {
            return Err(FsError::NoAttribute);
        }
        match name {
            TIER => Ok(self.tier_report(&node)?.into_bytes()),
            DIGEST => self.digest_of(&node).await.map(String::into_bytes),
            _ => Err(FsError::NoAttribute),
        }
    }

    pub async fn set_xattr(self: &Arc<Self>, ino: u64, name: &str, value: &[u8]) -> FsResult<()> {
        let node = self.node(ino)?;
        match name {
            PREFETCH => {
                let tier = parse_tier(name, value).inspect_err(|e| tracing::warn!("{e}"))?;
                if node.kind != FileKind::File {
                    return Err(FsError::IsADirectory);
                }
                self.prefetch_file(node, tier)
            }
            TIER | DIGEST => Err(FsError::InvalidArgument(format!("{name} is read-only"))),
            _ => Err(FsError::NotSupported(format!("extended attribute {name}"))),
        }
    }

    /// `ram 25% 2097152, nvme 100% 8388608, store 100% 8388608`: the share of
    /// the file in each tier, and its bytes there.
    fn tier_report(&self, node: &Node) -> FsResult<String> {
        let share = |bytes: u64| {
            // An empty file is wholly wherever it is.
            let percent = (bytes * 100).checked_div(node.size).unwrap_or(100).min(100);
            format!("{percent}% {bytes}")
        };
        if node.staged.is_some() {
            // Written through the mount, not yet verified in the store.
            return Ok(format!(
                "ram {}, nvme {}, store {}",
                share(0),
                share(node.size),
                share(0)
            ));
        }
        // Only looks: the version is bound when the file is opened.
        let id = self.file_id(node);
        let ram = self.reader().ram_bytes_of(id, node.size);
        let nvme = self.reader().nvme().bytes_of(id);
        Ok(format!(
            "ram {}, nvme {}, store {}",
            share(ram),
            share(nvme),
            share(node.size)
        ))
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
        let head = self
            .store()
            .get_opts(
                &parse_key(&node.path)?,
                GetOptions {
                    head: true,
                    ..GetOptions::default()
                },
            )
            .await
            .map_err(FsError::from_store)?;
        head.attributes
            .get(&Attribute::Metadata(DIGEST_METADATA.into()))
            .map(|v| v.to_string())
            .ok_or(FsError::NoAttribute)
    }

    /// Fetches every chunk of a file once, in the background.
    fn prefetch_file(self: &Arc<Self>, node: Node, tier: FetchTier) -> FsResult<()> {
        if node.staged.is_some() {
            return Ok(()); // Its bytes are all local already.
        }
        let version = self.version_of(&node)?;
        let core = self.clone();
        tokio::spawn(async move {
            match core.reader().load_whole(&version).await {
                Ok(()) => tracing::info!(path = %version.path, "prefetched into {tier:?}"),
                Err(e) => {
                    tracing::warn!(path = %version.path, "prefetch into {tier:?} stopped: {e}")
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_and_bad_values_say_why() {
        assert_eq!(parse_tier(PREFETCH, b"ram").unwrap(), FetchTier::Ram);
        assert_eq!(parse_tier(PREFETCH, b"nvme\n").unwrap(), FetchTier::Nvme);
        let vram = parse_tier(PREFETCH, b"vram:0").unwrap_err().to_string();
        assert!(vram.contains("GPU helper"), "{vram}");
        let bad = parse_tier(PREFETCH, b"disk").unwrap_err();
        assert_eq!(bad.errno().0, libc::EINVAL);
        assert!(bad.to_string().contains("'disk' is not a tier"));
        assert!(parse_tier(PREFETCH, &[0xff]).is_err());
    }
}
