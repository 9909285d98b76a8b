//! Object keys as paths: the one conversion to the store's `Path`, and the one
//! test of whether a key lies below another.

use object_store::path::Path;

use crate::error::{FsError, FsResult};

/// The store's name for a key: every key → `Path` conversion goes through here,
/// so that a key the store client refuses is one error (EINVAL) everywhere.
pub fn object_path(key: &str) -> FsResult<Path> {
    Path::parse(key).map_err(|e| FsError::InvalidName(format!("{key}: {e}")))
}

/// Whether `key` is `top` or lies below it; the root ("") covers every key.
pub fn is_within(key: &str, top: &str) -> bool {
    top.is_empty()
        || key
            .strip_prefix(top)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether `key` lies strictly below `top`.
pub fn is_below(key: &str, top: &str) -> bool {
    key.len() > top.len() && is_within(key, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_within_itself_its_directories_and_the_root() {
        assert!(is_within("a/b", "a/b"));
        assert!(is_within("a/b/c", "a/b"));
        assert!(is_within("a/b", ""));
        assert!(!is_within("a/bc", "a/b"));
        assert!(!is_within("a", "a/b"));
        assert!(is_below("a/b/c", "a/b"));
        assert!(!is_below("a/b", "a/b"));
        assert!(!is_below("a/bc", "a/b"));
    }

    #[test]
    fn a_key_the_store_refuses_is_invalid_name() {
        assert!(object_path("a/b").is_ok());
        assert!(matches!(object_path("a//b"), Err(FsError::InvalidName(_))));
    }
}
