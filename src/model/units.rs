//! Sizes and durations as users write them in mount options: `64G`, `8M`, `30s`.

use std::time::Duration;

const UNITS: [(char, u64); 5] = [
    ('K', 1 << 10),
    ('M', 1 << 20),
    ('G', 1 << 30),
    ('T', 1 << 40),
    ('P', 1 << 50),
];

/// Parses a byte count: digits with an optional binary suffix (K, M, G, T, P, with an
/// optional `i` and `B`), as in `500G`, `64GiB`, `8M`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "'{text}' is not a size: expected a number with an optional K, M, G or T suffix, like 64G"
        )
    };
    let t = text.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix(['i']).unwrap_or(t);
    let (digits, multiplier) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let upper = c.to_ascii_uppercase();
            let (_, m) = UNITS.iter().find(|(u, _)| *u == upper).ok_or_else(bad)?;
            (&t[..t.len() - 1], *m)
        }
        _ => (t, 1),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Writes a byte count in the largest unit that divides it exactly, so that
/// `parse_size(format_size(n)) == n`.
pub fn format_size(n: u64) -> String {
    for (unit, m) in UNITS.iter().rev() {
        if n >= *m && n.is_multiple_of(*m) {
            return format!("{}{unit}", n / m);
        }
    }
    n.to_string()
}

/// Parses a duration: digits with a suffix `ms`, `s`, `m`, `h` or `d`; plain digits
/// are seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "'{text}' is not a duration: expected a number with a unit ms, s, m, h or d, like 30s"
        )
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(bad()),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("'{text}' is too long"))
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_users_write() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("64G"), Ok(64 << 30));
        assert_eq!(parse_size("64GiB"), Ok(64 << 30));
        assert_eq!(parse_size("500g"), Ok(500 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn garbage_sizes_are_rejected() {
        for bad in [
            "",
            "G",
            "12X",
            "-5",
            "1.5G",
            "abc",
            "5 G",
            "99999999999999999999",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.contains(bad.trim()) || err.contains("too large"),
                "{err}"
            );
        }
        assert!(
            parse_size("17000000000P")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn durations_users_write() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("s").is_err());
    }

    proptest! {
        #[test]
        fn size_round_trips(n in 0u64..(1u64 << 62)) {
            prop_assert_eq!(parse_size(&format_size(n)), Ok(n));
        }

        #[test]
        fn duration_round_trips(ms in 0u64..(1u64 << 40)) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn parse_size_never_panics(s in ".{0,12}") {
            let _ = parse_size(&s);
        }
    }
}
