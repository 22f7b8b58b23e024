//! Input validation shared by every door (REST, Docker, CLI). Each check names the field and why.

use crate::error::ApiError;

/// Parse a size: a plain number of bytes, or a number with a unit. `K/M/G/T/P` and `KiB/MiB/...`
/// are binary (1024-based), as Docker and Kubernetes users expect from `10G`; `KB/MB/GB/TB` are
/// decimal. Zero, negative, fractional overflow and unknown units are refused.
pub fn parse_size(field: &str, text: &str) -> Result<u64, ApiError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ApiError::invalid(field, "is empty; give a size such as 10G or 512MiB"));
    }
    if t.starts_with('-') {
        return Err(ApiError::invalid(field, format!("{t:?} is negative")));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(ApiError::invalid(field, format!("{t:?} does not start with a number")));
    }
    let mult: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "p" | "pi" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        other => {
            return Err(ApiError::invalid(
                field,
                format!("unknown unit {other:?} in {t:?}; use K, M, G, T (binary) or KB, MB, GB, TB"),
            ));
        }
    };
    let bytes: u128 = if let Some((int, frac)) = num.split_once('.') {
        if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
            return Err(ApiError::invalid(field, format!("{t:?} is not a number")));
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| overflow(field, t))?
        };
        let scale = 10u128
            .checked_pow(frac.len() as u32)
            .ok_or_else(|| overflow(field, t))?;
        let frac_v: u128 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| overflow(field, t))?
        };
        let whole = int.checked_mul(mult).ok_or_else(|| overflow(field, t))?;
        // Checked: `whole` may sit just under u128::MAX, and a wrapped sum would be a small size.
        whole
            .checked_add(frac_v.checked_mul(mult).ok_or_else(|| overflow(field, t))? / scale)
            .ok_or_else(|| overflow(field, t))?
    } else {
        let n: u128 = num.parse().map_err(|_| overflow(field, t))?;
        n.checked_mul(mult).ok_or_else(|| overflow(field, t))?
    };
    if bytes == 0 {
        return Err(ApiError::invalid(field, "must be greater than zero"));
    }
    // The kernel's loff_t is signed 64-bit.
    if bytes > i64::MAX as u128 {
        return Err(overflow(field, t));
    }
    Ok(bytes as u64)
}

fn overflow(field: &str, t: &str) -> ApiError {
    ApiError::invalid(field, format!("{t:?} is too large (the limit is 8 EiB)"))
}

/// Docker's rule for volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, and at most 128 characters.
/// The same rule applies to snapshots, backends, drivers, nodes and types.
pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    let mut chars = name.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .skip(1)
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if name.len() < 2 || !ok_first || !ok_rest {
        return Err(ApiError::invalid(
            field,
            format!("{name:?} is not a valid name: use [a-zA-Z0-9][a-zA-Z0-9_.-]+ (at least 2 characters)"),
        ));
    }
    if name.len() > 128 {
        return Err(ApiError::invalid(
            field,
            format!("is {} characters long; the limit is 128", name.len()),
        ));
    }
    Ok(())
}

/// A `key=value` label or config pair.
pub fn parse_pair(field: &str, text: &str) -> Result<(String, String), ApiError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(ApiError::invalid(
            field,
            format!("{text:?} is not of the form key=value"),
        )),
    }
}

/// A duration like `30s`, `5m`, `1h` or a plain number of seconds.
pub fn parse_duration(field: &str, text: &str) -> Result<std::time::Duration, ApiError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ApiError::invalid(field, format!("{t:?} is not a duration such as 30s, 5m or 1h")))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        _ => {
            return Err(ApiError::invalid(
                field,
                format!("unknown unit {unit:?} in {t:?}; use ms, s, m or h"),
            ));
        }
    };
    if secs == 0 {
        return Err(ApiError::invalid(field, "must be greater than zero"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_would_wrap_are_refused() {
        // int × 1000 is just under u128::MAX; adding the fraction used to wrap to a tiny size.
        for t in [
            "340282366920938463463374607431768211.999KB",
            "340282366920938463463374607431768211455.5",
            "99999999999999999999999999999999999999999P",
        ] {
            let err = parse_size("size", t).unwrap_err();
            assert!(err.message.contains("too large"), "{t}: {}", err.message);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("size", "10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("size", "10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("size", "10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("size", "1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("size", "4096").unwrap(), 4096);
        assert_eq!(parse_size("size", "512m").unwrap(), 512 << 20);
        for bad in [
            "0",
            "0G",
            "-1G",
            "",
            "G",
            "10X",
            "99999999999999999999999P",
            "1.2.3G",
            "9E",
        ] {
            let e = parse_size("size", bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("size"), "{bad}: {e}");
        }
    }

    #[test]
    fn names() {
        for ok in ["v1", "my-vol", "A.b_c-d", "0abc"] {
            check_name("name", ok).unwrap();
        }
        for bad in ["", "a", "-abc", ".abc", "a b", "a/b", "ä1", &"x".repeat(129)] {
            assert!(check_name("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("t", "30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("t", "2m").unwrap().as_secs(), 120);
        assert!(parse_duration("t", "0").is_err());
        assert!(parse_duration("t", "5d").is_err());
    }
}
