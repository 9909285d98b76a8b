//! POSIX attributes kept with each object, in the conventions s3fs and rclone
//! use, so that a bucket moves between them and tierfs with its modes, owners
//! and times:
//!
//! - on S3 (and every store with object metadata): `x-amz-meta-mode` (decimal
//!   `st_mode`, file-type bits included), `-uid`, `-gid` (decimal) and
//!   `-mtime`, `-ctime`, `-atime` (seconds since the epoch, with up to nine
//!   decimals: s3fs writes `SEC.NSEC`, rclone a decimal fraction);
//! - on a local-directory store, whose files carry no object metadata: the
//!   same names and values as extended attributes `user.tierfs.mode` ... on
//!   the store's file. (Real file modes would lock the daemon out of files
//!   whose record says 000, and owners need root to set.)
//!
//! A value that does not parse is left out (the default shows instead) and
//! logged at debug level: an object another tool wrote must never make a file
//! unusable.

use std::path::Path as FsPath;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore};

use crate::error::{FsError, FsResult};
use crate::io::blocking::run_blocking;
use crate::model::posix::PosixAttrs;
use crate::store::StoreClient;
use crate::store::s3_metadata::MetadataCopyError;

/// The metadata names, as s3fs writes them after `x-amz-meta-`.
pub const MODE: &str = "mode";
pub const UID: &str = "uid";
pub const GID: &str = "gid";
pub const MTIME: &str = "mtime";
pub const CTIME: &str = "ctime";
pub const ATIME: &str = "atime";

/// The prefix of the extended attributes on a local store's files.
pub const LOCAL_XATTR_PREFIX: &str = "user.tierfs.";

/// The name/value pairs of `attrs`, each attribute that is set.
pub fn posix_pairs(attrs: &PosixAttrs) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    let numbers = [(MODE, attrs.mode), (UID, attrs.uid), (GID, attrs.gid)];
    for (name, value) in numbers {
        if let Some(v) = value {
            pairs.push((name, v.to_string()));
        }
    }
    let times = [
        (MTIME, attrs.mtime),
        (CTIME, attrs.ctime),
        (ATIME, attrs.atime),
    ];
    for (name, value) in times {
        if let Some(t) = value {
            pairs.push((name, format_time(t)));
        }
    }
    pairs
}

/// The attributes that name/value pairs carry; `get` answers a name's value.
pub fn posix_from(get: impl Fn(&str) -> Option<String>) -> PosixAttrs {
    let number = |name: &str| get(name).and_then(|v| parse_or_warn(name, &v, parse_u32));
    let time = |name: &str| get(name).and_then(|v| parse_or_warn(name, &v, parse_time));
    PosixAttrs {
        mode: number(MODE),
        uid: number(UID),
        gid: number(GID),
        mtime: time(MTIME),
        ctime: time(CTIME),
        atime: time(ATIME),
    }
}

/// Adds `attrs` to an upload's or a copy's object attributes.
pub fn add_posix_attributes(attributes: &mut Attributes, attrs: &PosixAttrs) {
    for (name, value) in posix_pairs(attrs) {
        attributes.insert(Attribute::Metadata(name.into()), value.into());
    }
}

/// The POSIX attributes an object's metadata carries.
pub fn posix_of(attributes: &Attributes) -> PosixAttrs {
    posix_from(|name| {
        attributes
            .get(&Attribute::Metadata(name.to_string().into()))
            .map(|v| v.to_string())
    })
}

/// The record on a local store's file; empty when the file has none or the
/// file system keeps no extended attributes.
pub fn read_local_posix(file: &FsPath) -> PosixAttrs {
    posix_from(|name| {
        let value = xattr::get(file, format!("{LOCAL_XATTR_PREFIX}{name}")).ok()??;
        String::from_utf8(value).ok()
    })
}

/// Writes the attributes that `attrs` sets to a local store's file; the
/// others are left as they are.
pub fn write_local_posix(file: &FsPath, attrs: &PosixAttrs) -> std::io::Result<()> {
    for (name, value) in posix_pairs(attrs) {
        xattr::set(
            file,
            format!("{LOCAL_XATTR_PREFIX}{name}"),
            value.as_bytes(),
        )?;
    }
    Ok(())
}

impl StoreClient {
    /// Makes `posix` the record of the stored object at `path` (of `size`
    /// bytes, ETag `etag`) without moving its bytes: extended attributes on a
    /// local store's file, a metadata-replacing copy onto itself on S3 (its
    /// other metadata kept). Returns the ETag the object has afterwards.
    pub async fn keep_posix(
        &self,
        path: &Path,
        size: u64,
        etag: Option<&str>,
        posix: &PosixAttrs,
    ) -> FsResult<Option<String>> {
        if let Some(root) = &self.local_root {
            let (file, posix) = (root.join(path.as_ref()), *posix);
            run_blocking(move || write_local_posix(&file, &posix)).await?;
            return Ok(etag.map(str::to_string));
        }
        let Some(copier) = &self.metadata else {
            return Err(FsError::NotSupported(
                "modes, owners and times of objects in this store".into(),
            ));
        };
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let got = self
            .objects
            .get_opts(path, head)
            .await
            .map_err(FsError::from_store)?;
        if etag.is_some() && got.meta.e_tag.as_deref() != etag {
            return Err(FsError::Stale(path.to_string()));
        }
        let mut attributes = got.attributes;
        add_posix_attributes(&mut attributes, posix);
        let current = got.meta.e_tag.as_deref();
        match copier
            .replace(path.as_ref(), size, current, &attributes)
            .await
        {
            Ok(new) => Ok(new.or(got.meta.e_tag)),
            Err(MetadataCopyError::Changed) => Err(FsError::Stale(path.to_string())),
            Err(MetadataCopyError::Missing) => Err(FsError::NotFound),
            Err(e @ MetadataCopyError::TooLarge(_)) => Err(FsError::NotSupported(e.to_string())),
            Err(e) => Err(FsError::Store(e.to_string())),
        }
    }
}

/// Directory records on a local-directory store, whose directories are real
/// ones: the record is extended attributes on the directory itself, so an
/// empty directory made through the mount (and its mode) outlives the mount.
/// Stores with object metadata only keep directories in memory for now.
impl StoreClient {
    /// Makes the directory at `key` and keeps `posix` as its record; false
    /// for a store that keeps no directories.
    pub async fn keep_dir_posix(&self, key: &str, posix: &PosixAttrs) -> FsResult<bool> {
        let Some(root) = &self.local_root else {
            return Ok(false);
        };
        let (dir, posix) = (root.join(key), *posix);
        run_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            write_local_posix(&dir, &posix)
        })
        .await?;
        Ok(true)
    }

    /// The record of the file or directory at `key` on a local store; None
    /// for a store that keeps records in object metadata.
    pub async fn local_posix(&self, key: &str) -> FsResult<Option<PosixAttrs>> {
        let Some(root) = &self.local_root else {
            return Ok(None);
        };
        let dir = root.join(key);
        run_blocking(move || Ok::<_, FsError>(Some(read_local_posix(&dir)))).await
    }

    /// After a directory's objects moved from `from` to `to`: its directories
    /// that are left (empty ones, with their records) move too.
    pub async fn move_dirs(&self, from: &str, to: &str) -> FsResult<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let (from, to) = (root.join(from), root.join(to));
        run_blocking(move || move_dir_tree(&from, &to)).await
    }

    /// Removes the empty directory at `key` from a local store.
    pub fn remove_dir(&self, key: &str) -> std::io::Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        match std::fs::remove_dir(root.join(key)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// Recreates each directory below `from` (itself included) at `to` with its
/// record, then removes those left empty, deepest first. Files are never
/// touched: one still under `from` keeps its directory there.
fn move_dir_tree(from: &FsPath, to: &FsPath) -> std::io::Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(to)?;
    write_local_posix(to, &read_local_posix(from))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            move_dir_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    }
    match std::fs::remove_dir(from) {
        Err(e) if e.kind() != std::io::ErrorKind::DirectoryNotEmpty => Err(e),
        _ => Ok(()),
    }
}

fn parse_or_warn<T>(name: &str, value: &str, parse: fn(&str) -> Option<T>) -> Option<T> {
    let parsed = parse(value.trim());
    if parsed.is_none() {
        tracing::debug!(
            name,
            value,
            "object metadata that is not a POSIX value is ignored"
        );
    }
    parsed
}

fn parse_u32(text: &str) -> Option<u32> {
    text.parse().ok()
}

/// `SEC`, `SEC.FRACTION` (up to nine digits used) or an rclone-style decimal.
fn parse_time(text: &str) -> Option<SystemTime> {
    let (secs, fraction) = text.split_once('.').unwrap_or((text, ""));
    let secs: u64 = secs.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = &fraction[..fraction.len().min(9)];
    let nanos: u32 = if digits.is_empty() {
        0
    } else {
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Seconds since the epoch, with nanoseconds when there are any (times before
/// 1970 are written as the epoch).
fn format_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    match since.subsec_nanos() {
        0 => since.as_secs().to_string(),
        nanos => format!("{}.{nanos:09}", since.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::posix::{S_IFLNK, S_IFREG};
    use proptest::prelude::*;

    #[test]
    fn s3fs_and_rclone_values_read_back() {
        let got = posix_from(|name| {
            match name {
                MODE => Some("33261"), // 0100755
                UID => Some("1000"),
                GID => Some(" 100 "),
                MTIME => Some("1690000000.5"), // rclone
                CTIME => Some("1690000000"),   // older s3fs
                ATIME => Some("1690000000.123456789123"),
                _ => None,
            }
            .map(str::to_string)
        });
        assert_eq!(got.mode, Some(S_IFREG | 0o755));
        assert_eq!((got.uid, got.gid), (Some(1000), Some(100)));
        let at = |s, n| UNIX_EPOCH + Duration::new(s, n);
        assert_eq!(got.mtime, Some(at(1_690_000_000, 500_000_000)));
        assert_eq!(got.ctime, Some(at(1_690_000_000, 0)));
        assert_eq!(got.atime, Some(at(1_690_000_000, 123_456_789)));
    }

    #[test]
    fn values_that_do_not_parse_are_left_out() {
        let got = posix_from(|name| {
            match name {
                MODE => Some("rwxr-xr-x"),
                UID => Some("-1"),
                MTIME => Some("1e9"),
                CTIME => Some("12.ab"),
                _ => None,
            }
            .map(str::to_string)
        });
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn a_local_file_keeps_its_record_in_extended_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let attrs = PosixAttrs {
            mode: Some(S_IFLNK | 0o777),
            uid: Some(7),
            ..PosixAttrs::default()
        };
        if write_local_posix(&file, &attrs).is_err() {
            eprintln!("skipped: this file system keeps no user extended attributes");
            return;
        }
        assert_eq!(read_local_posix(&file), attrs);
        let more = PosixAttrs {
            gid: Some(8),
            ..PosixAttrs::default()
        };
        write_local_posix(&file, &more).unwrap();
        assert_eq!(read_local_posix(&file), attrs.changed_by(&more));
    }

    fn any_time() -> impl Strategy<Value = Option<SystemTime>> {
        proptest::option::of(
            (0u64..4_000_000_000, 0u32..1_000_000_000)
                .prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n)),
        )
    }

    proptest! {
        #[test]
        fn every_record_round_trips_through_object_metadata(
            mode in proptest::option::of(any::<u32>()),
            uid in proptest::option::of(any::<u32>()),
            gid in proptest::option::of(any::<u32>()),
            mtime in any_time(),
            ctime in any_time(),
            atime in any_time(),
        ) {
            let attrs = PosixAttrs { mode, uid, gid, mtime, ctime, atime };
            let mut attributes = Attributes::new();
            add_posix_attributes(&mut attributes, &attrs);
            prop_assert_eq!(posix_of(&attributes), attrs);
        }
    }
}
