//! The whole-file digest that tierfs keeps in each object it writes, as object
//! metadata `tierfs-digest` (32 hex digits of xxh3-128): written with the
//! upload, read back by verification, the mover and `user.tierfs.digest`.

use object_store::path::Path;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore};

/// Object metadata that carries the whole-file xxh3-128 digest.
pub const DIGEST_METADATA: &str = "tierfs-digest";

/// The attributes an upload carries for a file of `digest`.
pub fn digest_attributes(digest: u128) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(DIGEST_METADATA.into()),
        format!("{digest:032x}").into(),
    );
    attributes
}

/// The digest text an object's attributes carry, as stored.
pub fn digest_text(attributes: &Attributes) -> Option<String> {
    attributes
        .get(&Attribute::Metadata(DIGEST_METADATA.into()))
        .map(|v| v.to_string())
}

/// The digest text the object at `path` carries, read with a HEAD.
pub async fn head_digest(
    store: &dyn ObjectStore,
    path: &Path,
) -> object_store::Result<Option<String>> {
    let head = GetOptions {
        head: true,
        ..GetOptions::default()
    };
    let got = store.get_opts(path, head).await?;
    Ok(digest_text(&got.attributes))
}

/// The digest as a number; None for text that is not one.
pub fn parse_digest(text: &str) -> Option<u128> {
    u128::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_written_reads_back() {
        let d = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        let text = digest_text(&digest_attributes(d)).unwrap();
        assert_eq!(text.len(), 32);
        assert_eq!(parse_digest(&text), Some(d));
        assert_eq!(digest_text(&Attributes::new()), None);
        assert_eq!(parse_digest("not hex"), None);
    }
}
