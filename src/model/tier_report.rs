//! The text of `user.tierfs.tier`: where a file's bytes are, as a share and a
//! byte count per tier (`ram 25% 2097152, nvme 100% 8388608, store 100% 8388608`),
//! then the progress of the pin that applies (`, pin ram 40%`). The engine
//! writes it and `tierfs pin --wait` reads it back, through this one type.

use std::fmt;
use std::str::FromStr;

use crate::model::tier::Tier;

/// A tier's part of a file: whole percent of the file, and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub percent: u64,
    pub bytes: u64,
}

impl Share {
    /// `bytes` of a file of `size`; an empty file is wholly wherever it is.
    pub fn of(bytes: u64, size: u64) -> Share {
        Share {
            percent: (bytes * 100).checked_div(size).unwrap_or(100).min(100),
            bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierReport {
    pub ram: Share,
    pub nvme: Share,
    pub store: Share,
    /// The pin that applies, and the percent of the file it holds in place.
    pub pin: Option<(Tier, u64)>,
}

impl TierReport {
    /// The report for a file of `size` with these bytes in each tier, and the
    /// bytes its pin (if any) holds in place.
    pub fn new(size: u64, ram: u64, nvme: u64, store: u64, pin: Option<(Tier, u64)>) -> Self {
        TierReport {
            ram: Share::of(ram, size),
            nvme: Share::of(nvme, size),
            store: Share::of(store, size),
            pin: pin.map(|(tier, held)| (tier, Share::of(held, size).percent)),
        }
    }
}

impl fmt::Display for TierReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tiers = [
            ("ram", self.ram),
            ("nvme", self.nvme),
            ("store", self.store),
        ];
        for (n, (name, share)) in tiers.into_iter().enumerate() {
            let sep = if n == 0 { "" } else { ", " };
            write!(f, "{sep}{name} {}% {}", share.percent, share.bytes)?;
        }
        if let Some((tier, percent)) = self.pin {
            write!(f, ", pin {tier} {percent}%")?;
        }
        Ok(())
    }
}

/// Text that is not a tier report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTierReport(pub String);

impl fmt::Display for BadTierReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a tier report: '{}'", self.0)
    }
}

fn percent(word: &str) -> Option<u64> {
    word.strip_suffix('%')?.parse().ok()
}

impl FromStr for TierReport {
    type Err = BadTierReport;

    fn from_str(text: &str) -> Result<TierReport, BadTierReport> {
        let bad = || BadTierReport(text.to_string());
        let mut shares = Vec::new();
        let mut pin = None;
        for part in text.split(", ") {
            match part.split(' ').collect::<Vec<_>>()[..] {
                ["pin", tier, p] if pin.is_none() => {
                    let tier = tier.parse::<Tier>().map_err(|_| bad())?;
                    pin = Some((tier, percent(p).ok_or_else(bad)?));
                }
                [name, p, bytes] if pin.is_none() => {
                    let share = Share {
                        percent: percent(p).ok_or_else(bad)?,
                        bytes: bytes.parse().map_err(|_| bad())?,
                    };
                    shares.push((name, share));
                }
                _ => return Err(bad()),
            }
        }
        match shares[..] {
            [("ram", ram), ("nvme", nvme), ("store", store)] => Ok(TierReport {
                ram,
                nvme,
                store,
                pin,
            }),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_report_reads_as_documented() {
        let report = TierReport::new(
            8388608,
            2097152,
            8388608,
            8388608,
            Some((Tier::Ram, 3355444)),
        );
        let text = report.to_string();
        assert_eq!(
            text,
            "ram 25% 2097152, nvme 100% 8388608, store 100% 8388608, pin ram 40%"
        );
        assert_eq!(text.parse::<TierReport>(), Ok(report));
        assert_eq!(
            TierReport::new(0, 0, 0, 0, Some((Tier::Nvme, 0))).pin,
            Some((Tier::Nvme, 100))
        );
        for bad in [
            "ram lots",
            "disk 1% 2",
            "ram 1% 2, nvme 1% 2",
            "",
            "ram 1% 2, nvme 1% 2, store 1% 2, pin gpu 3%",
        ] {
            assert!(bad.parse::<TierReport>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn every_report_reads_back(
            size in 0u64..1 << 40,
            parts in proptest::array::uniform4(0u64..=100),
            pin in proptest::option::of(prop_oneof![Just(Tier::Ram), Just(Tier::Nvme)]),
        ) {
            let part = |p: u64| size * p / 100;
            let report = TierReport::new(
                size, part(parts[0]), part(parts[1]), part(parts[2]),
                pin.map(|t| (t, part(parts[3]))),
            );
            prop_assert_eq!(report.to_string().parse::<TierReport>(), Ok(report));
        }
    }
}
