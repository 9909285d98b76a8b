//! The engine's error type and its one mapping to errno values.

use std::io;
use std::sync::Arc;

use tierfs_fuse::Errno;

/// Everything that can make a filesystem operation fail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("bad file handle {0}")]
    BadHandle(u64),
    #[error("the object changed in the store: {0}")]
    Stale(String),
    #[error("object store: {0}")]
    Store(String),
    /// A request to the store failed; the store client's error is kept.
    #[error("object store: {}", error_chain(.0.as_ref()))]
    StoreRequest(#[source] Arc<object_store::Error>),
    /// The store refused the credentials or the permission: retrying soon does
    /// not help.
    #[error("object store refused access: {}", error_chain(.0.as_ref()))]
    Denied(#[source] Arc<object_store::Error>),
    #[error("timed out after {0:?} waiting for the object store")]
    Timeout(std::time::Duration),
    #[error("local cache: {0}")]
    Cache(String),
    /// Local file I/O failed (cache files, staging files).
    #[error("local cache: {0}")]
    Io(#[source] Arc<io::Error>),
    /// Local work failed for a reason that is not file I/O (a record that does
    /// not decode, a task that stopped); what failed and its error are kept.
    #[error("local cache: {what}: {}", error_chain(.source.as_ref()))]
    Local {
        what: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The metadata database failed.
    #[error("local cache: {0}")]
    Meta(#[source] Arc<rocksdb::Error>),
    /// A directory whose listing the store client refuses; logged once where found.
    #[error("directory cannot be listed: {0}")]
    Unlistable(String),
    #[error("read-only file system")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttribute,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("bad name {0}")]
    InvalidName(String),
    #[error("file name too long")]
    NameTooLong,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    /// An operation this file system does not offer for that name (ENOTSUP, as
    /// ext4 answers for an attribute namespace it lacks).
    #[error("not supported here: {0}")]
    NotSupported(String),
    /// The kernel reads the file from a backing file that this open cannot
    /// share (ETXTBSY, as for writing a running program).
    #[error("file busy: {0}")]
    Busy(String),
}

impl FsError {
    /// The one place where engine errors become errno values.
    pub fn errno(&self) -> Errno {
        Errno(match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::Stale(_) => libc::ESTALE,
            FsError::Store(_)
            | FsError::StoreRequest(_)
            | FsError::Timeout(_)
            | FsError::Cache(_)
            | FsError::Io(_)
            | FsError::Local { .. }
            | FsError::Meta(_)
            | FsError::Unlistable(_) => libc::EIO,
            FsError::ReadOnly => libc::EROFS,
            FsError::NoAttribute => libc::ENODATA,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::InvalidName(_) | FsError::InvalidArgument(_) => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NoSpace(_) => libc::ENOSPC,
            FsError::Unsupported(_) => libc::EPERM,
            FsError::NotSupported(_) => libc::ENOTSUP,
            FsError::Denied(_) => libc::EACCES,
            FsError::Busy(_) => libc::ETXTBSY,
        })
    }

    /// Local work described by `what` failed with `source`.
    pub fn local(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> FsError {
        FsError::Local {
            what: what.into(),
            source: Arc::new(source),
        }
    }

    pub fn from_store(e: object_store::Error) -> FsError {
        match e {
            object_store::Error::NotFound { .. } => FsError::NotFound,
            object_store::Error::Precondition { path, .. } => FsError::Stale(path),
            e @ (object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }) => FsError::Denied(Arc::new(e)),
            other => FsError::StoreRequest(Arc::new(other)),
        }
    }
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        FsError::Io(Arc::new(e))
    }
}

impl From<rocksdb::Error> for FsError {
    fn from(e: rocksdb::Error) -> Self {
        FsError::Meta(Arc::new(e))
    }
}

/// An error and all its sources on one line, for messages users read.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_the_errno_users_expect() {
        let denied = FsError::from_store(object_store::Error::PermissionDenied {
            path: "k".into(),
            source: "403 Forbidden".into(),
        });
        assert!(matches!(denied, FsError::Denied(_)), "{denied:?}");
        assert_eq!(denied.errno().0, libc::EACCES);
        let unauthenticated = FsError::from_store(object_store::Error::Unauthenticated {
            path: "k".into(),
            source: "bad key".into(),
        });
        assert_eq!(unauthenticated.errno().0, libc::EACCES);
        let missing = FsError::from_store(object_store::Error::NotFound {
            path: "k".into(),
            source: "404".into(),
        });
        assert_eq!(missing.errno().0, libc::ENOENT);
        let other = FsError::from_store(object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        });
        assert_eq!(other.errno().0, libc::EIO);
        assert!(other.to_string().contains("connection reset"), "{other}");
        let source = std::error::Error::source(&other).expect("the store's error is kept");
        assert!(source.to_string().contains("connection reset"));
        let io = FsError::from(io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(io.errno().0, libc::EIO);
        assert!(std::error::Error::source(&io).is_some());
    }

    #[test]
    fn local_failures_keep_what_failed_and_why() {
        let bad = serde_json::from_slice::<u32>(b"{").unwrap_err();
        let e = FsError::local("staged file 7: unreadable record", bad);
        assert_eq!(e.errno().0, libc::EIO);
        assert!(
            e.to_string().starts_with("local cache: staged file 7"),
            "{e}"
        );
        assert!(e.to_string().contains("expected u32"), "{e}");
        let source = std::error::Error::source(&e).expect("the cause is kept");
        assert!(source.to_string().contains("expected u32"));
    }
}
