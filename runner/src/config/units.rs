//! Durations and sizes as written in a pipeline file.

use std::time::Duration;

/// A value that could not be read, with what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError {
    pub message: String,
    pub help: String,
}

const DURATION_HELP: &str = "write a number with a unit, such as \"250ms\", \"10s\", \"2m\", \"1h\" or \"1m30s\" \
     (units: ns, us, ms, s, m, h, d, w)";

/// Parses a duration: a number with a unit, several of them in a row (`"1m30s"`), as
/// accepted by `humantime`: `ns`, `us`, `ms`, `s`/`sec`, `m`/`min`, `h`/`hr`, `d`, `w`,
/// `M`/`month`, `y`/`year` and their long forms. `"0"` alone is zero; any other number needs
/// a unit.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let trimmed = text.trim();
    if trimmed == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = |why: String| UnitError {
        message: format!("invalid duration \"{text}\": {why}"),
        help: DURATION_HELP.into(),
    };
    if trimmed.starts_with('-') {
        return Err(bad("a duration cannot be negative".into()));
    }
    humantime::parse_duration(trimmed).map_err(|e| {
        use humantime::DurationError as E;
        bad(match e {
            E::UnknownUnit { unit, value, .. } if unit.is_empty() => {
                format!("missing unit after {value}")
            }
            E::UnknownUnit { unit, .. } => format!("unknown unit `{unit}`"),
            E::InvalidCharacter(at) => format!("unexpected character at position {}", at + 1),
            E::NumberExpected(at) => format!("expected a number at position {}", at + 1),
            E::NumberOverflow => "too large".into(),
            E::Empty => "empty".into(),
        })
    })
}

/// `(unit, bytes per unit)`. Case-sensitive.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("kB", 1000),
    ("MB", 1000_u64.pow(2)),
    ("GB", 1000_u64.pow(3)),
    ("TB", 1000_u64.pow(4)),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// A size as a person writes it: in the largest unit it is a whole number of (`"300MB"`,
/// `"1GiB"`, `"1536B"`); what [`parse_size`] reads back to the same value. 0 stays `"0"`.
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_owned();
    }
    SIZE_UNITS
        .iter()
        .filter(|(_, per)| bytes % per == 0)
        .max_by_key(|(_, per)| *per)
        .map_or_else(
            || format!("{bytes}B"),
            |(unit, per)| format!("{}{unit}", bytes / per),
        )
}

const SIZE_HELP: &str = "write an integer number of bytes, or a number with a unit: \
     kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), \
     such as \"300MB\" or \"1.5GiB\"";

/// Parses a size in bytes from a string.
///
/// Accepted: a plain integer (`"1048576"`, bytes), or a number (integer or decimal) followed
/// by one of the units `B`, `kB`, `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`,
/// `TiB` (powers of 1024), optionally separated by one space: `"300MB"`, `"1GiB"`,
/// `"512 KiB"`, `"1.5GiB"`. Units are case-sensitive, and the ambiguous forms `K`, `M`,
/// `G`, `KB`, `mb`, ... are refused with a message asking to choose between the decimal and
/// the binary unit: memory limits are where a factor of 1.07 matters.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let bad = |why: String| UnitError {
        message: format!("invalid size \"{text}\": {why}"),
        help: SIZE_HELP.into(),
    };
    let t = text.trim();
    let number_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(number_end);
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    if number.is_empty() {
        return Err(bad(if t.starts_with('-') {
            "a size cannot be negative".into()
        } else {
            "expected a number first".into()
        }));
    }
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(bad(format!("`{number}` is not a number")));
    }
    let multiplier = if unit.is_empty() {
        1
    } else if let Some((_, m)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) {
        *m
    } else {
        return Err(unknown_unit(text, unit));
    };
    if multiplier == 1 && !fraction.is_empty() {
        return Err(bad("a number of bytes must be a whole number".into()));
    }
    let too_large = || bad("too large".into());
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // Exact decimal arithmetic: floor(0.fraction * multiplier).
        let digits = fraction.len().min(18);
        let frac: u128 = fraction[..digits].parse().map_err(|_| too_large())?;
        let part = frac * u128::from(multiplier) / 10u128.pow(digits as u32);
        bytes = bytes
            .checked_add(u64::try_from(part).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
    }
    Ok(bytes)
}

fn unknown_unit(text: &str, unit: &str) -> UnitError {
    let ambiguous = match unit {
        "K" | "k" | "KB" | "kb" | "Kb" | "kiB" | "kib" => Some(("kB", "KiB")),
        "M" | "m" | "mb" | "Mb" | "mB" | "mib" | "MIB" => Some(("MB", "MiB")),
        "G" | "g" | "gb" | "Gb" | "gB" | "gib" | "GIB" => Some(("GB", "GiB")),
        "T" | "t" | "tb" | "Tb" | "tB" | "tib" | "TIB" => Some(("TB", "TiB")),
        _ => None,
    };
    let help = match ambiguous {
        Some((dec, bin)) => format!(
            "`{unit}` is ambiguous: write `{dec}` for powers of 1000 or `{bin}` for powers of 1024"
        ),
        None => SIZE_HELP.into(),
    };
    UnitError {
        message: format!("invalid size \"{text}\": unknown unit `{unit}`"),
        help,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        let e = parse_duration("10 parsecs").unwrap_err();
        assert_eq!(
            e.message,
            "invalid duration \"10 parsecs\": unknown unit `parsecs`"
        );
        assert!(e.help.contains("\"10s\""));
        assert!(
            parse_duration("10")
                .unwrap_err()
                .message
                .contains("missing unit after 10")
        );
        assert!(
            parse_duration("-1s")
                .unwrap_err()
                .message
                .contains("negative")
        );
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("300MB").unwrap(), 300_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512KiB").unwrap(), 512 * 1024);
        for (bytes, text) in [
            (300_000_000, "300MB"),
            (1 << 30, "1GiB"),
            (1536, "1536B"),
            (0, "0"),
            (7, "7B"),
            (3 << 40, "3TiB"),
        ] {
            assert_eq!(format_size(bytes), text);
            if bytes > 0 {
                assert_eq!(parse_size(text).unwrap(), bytes);
            }
        }
        assert_eq!(parse_size("10kB").unwrap(), 10_000);
        assert_eq!(parse_size("512 KiB").unwrap(), 512 * 1024);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("0.5kB").unwrap(), 500);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("7B").unwrap(), 7);
        assert_eq!(parse_size("0").unwrap(), 0);
        for bad in [
            "1G", "300mb", "1KB", "5 M", "x", "-1MB", "1.5", "1.5B", "1..5MB", "1 MiBs", "",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        let e = parse_size("1G").unwrap_err();
        assert!(e.help.contains("`GB`") && e.help.contains("`GiB`"), "{e:?}");
        let e = parse_size("3 parsecs").unwrap_err();
        assert!(
            e.message.contains("`parsecs`") && e.help.contains("MiB"),
            "{e:?}"
        );
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }
}
