//! Tiers as users name them: the one type ([`Tier`], shared with the policy
//! crate) and the one reading of a tier given in an xattr, the control API or
//! the command line.

use crate::error::{FsError, FsResult};

pub use tierfs_policy::Tier;

/// Why `vram` is refused in this build.
const NO_GPU_HELPER: &str = "needs the GPU helper, which this build does not have yet";

/// Reads a tier named by `what` (an attribute, a request field) that this build
/// can hold; anything else is refused with the reason in words.
pub fn parse_tier(what: &str, value: &[u8]) -> FsResult<Tier> {
    let text = std::str::from_utf8(value)
        .map_err(|_| FsError::InvalidArgument(format!("{what}: the value is not UTF-8")))?
        .trim();
    if text == "vram" || text.starts_with("vram:") {
        return Err(FsError::InvalidArgument(format!(
            "{what}: '{text}' {NO_GPU_HELPER}"
        )));
    }
    match text.parse::<Tier>() {
        Ok(tier) => Ok(tier),
        Err(_) => Err(FsError::InvalidArgument(format!(
            "{what}: '{text}' is not a tier (ram or nvme)"
        ))),
    }
}

/// GPU memory is not a tier of this build: every entry point that takes a tier
/// from users refuses `vram` first (see [`parse_tier`]).
pub fn no_gpu_tier() -> FsError {
    FsError::InvalidArgument(format!("the vram tier {NO_GPU_HELPER}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_and_bad_values_say_why() {
        assert_eq!(
            parse_tier("user.tierfs.prefetch", b"ram").unwrap(),
            Tier::Ram
        );
        assert_eq!(
            parse_tier("user.tierfs.prefetch", b"nvme\n").unwrap(),
            Tier::Nvme
        );
        let vram = parse_tier("user.tierfs.prefetch", b"vram:0")
            .unwrap_err()
            .to_string();
        assert!(vram.contains("GPU helper"), "{vram}");
        let bad = parse_tier("user.tierfs.prefetch", b"disk").unwrap_err();
        assert_eq!(bad.errno().0, libc::EINVAL);
        assert!(bad.to_string().contains("'disk' is not a tier"));
        assert!(parse_tier("user.tierfs.prefetch", &[0xff]).is_err());
    }
}
