//! The local tiers: the one name every part of tierfs uses for them, in the
//! interface (`vram`, `ram`, `nvme`), in the registry (a byte) and in plans.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The local tiers, fastest first; the store below them holds everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Vram,
    Ram,
    Nvme,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Vram, Tier::Ram, Tier::Nvme];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::Vram => "vram",
            Tier::Ram => "ram",
            Tier::Nvme => "nvme",
        }
    }

    /// The tier's byte in stored records; stable across releases.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The tier a stored byte names; None for a byte of no known tier.
    pub fn from_code(code: u8) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.code() == code)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A word that names no tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTier(pub String);

impl fmt::Display for UnknownTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is not a tier (vram, ram or nvme)", self.0)
    }
}

impl std::error::Error for UnknownTier {}

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(text: &str) -> Result<Tier, UnknownTier> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == text)
            .ok_or_else(|| UnknownTier(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_go_both_ways() {
        for tier in Tier::ALL {
            assert_eq!(tier.to_string().parse::<Tier>(), Ok(tier));
            assert_eq!(Tier::from_code(tier.code()), Some(tier));
        }
        assert_eq!(Tier::from_code(9), None);
        assert!("disk".parse::<Tier>().is_err());
        assert_eq!(Tier::Vram.code(), 0);
        assert_eq!(Tier::Nvme.code(), 2);
    }
}
