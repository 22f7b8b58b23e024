//! Human-readable sizes: `parse_size("10G")`, `format_size(10 << 30)`.
//!
//! Suffixes follow `truncate(1)` and Docker: a bare number is bytes; `K`, `M`, `G`, `T`, `P`
//! (any case, with or without `iB`) are powers of 1024; `KB`, `MB`, `GB`, `TB`, `PB` are powers
//! of 1000. A decimal part is allowed (`1.5G`); the result is rounded down to whole bytes.

use thiserror::Error;

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("{0:?} is not a size: expected a number with an optional unit such as 10G, 512MiB or 1TB")]
    Malformed(String),
    #[error("unknown unit {0:?}: use K, M, G, T, P (1024-based, also KiB..PiB) or KB, MB, GB, TB, PB (1000-based)")]
    UnknownUnit(String),
    #[error("{0:?} is too large (more than 2^64 bytes)")]
    Overflow(String),
}

/// Parse `10G`, `10GiB`, `10GB`, `1.5T`, `4096` into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim();
    if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
        return Err(SizeError::Malformed(text.to_string()));
    }
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "ki" => 1 << 10,
        "m" | "mib" | "mi" => 1 << 20,
        "g" | "gib" | "gi" => 1 << 30,
        "t" | "tib" | "ti" => 1 << 40,
        "p" | "pib" | "pi" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        _ => return Err(SizeError::UnknownUnit(unit.to_string())),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let whole: u128 = whole.parse().map_err(|_| SizeError::Overflow(text.to_string()))?;
    let mut bytes = whole
        .checked_mul(multiplier)
        .ok_or_else(|| SizeError::Overflow(text.to_string()))?;
    if !frac.is_empty() {
        // Up to 18 fractional digits are kept exactly; more would not change a byte count.
        let digits = &frac[..frac.len().min(18)];
        let scale = 10u128.pow(digits.len() as u32);
        let frac: u128 = digits.parse().map_err(|_| SizeError::Malformed(text.to_string()))?;
        bytes += frac * multiplier / scale;
    }
    u64::try_from(bytes).map_err(|_| SizeError::Overflow(text.to_string()))
}

/// Format bytes with the largest 1024-based unit that divides them exactly (`10GiB`, `1536MiB`),
/// or as plain bytes.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, unit) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10 gi"), Ok(10 << 30));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("G"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("1.2.3G"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("10X"), Err(SizeError::UnknownUnit(_))));
        assert!(matches!(parse_size("99999999P"), Err(SizeError::Overflow(_))));
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(10 << 30), "10GiB");
        assert_eq!(format_size(1536 << 20), "1536MiB");
        assert_eq!(format_size(1000), "1000B");
    }
}
