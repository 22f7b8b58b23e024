//! Small re-implementations of the Python behaviours Cinder's scheduler relies on, so Elara decides exactly as
//! Cinder does: `str.split()` whitespace, `float(str)`, `round(x, 2)` and oslo's `bool_from_string`.

/// Python's `str.isspace()`: Unicode White_Space plus the ASCII separators U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `float(text)` for a `str`: surrounding whitespace is ignored, `_` is allowed between digits,
/// `inf`/`infinity`/`nan` in any case with an optional sign. `None` where Python raises `ValueError`.
/// (Non-ASCII decimal digits, which Python also accepts, are refused.)
pub fn py_float(text: &str) -> Option<f64> {
    let t = text.trim_matches(is_py_space);
    if t.is_empty() || !t.is_ascii() {
        return None;
    }
    if t.contains('_') {
        let b = t.as_bytes();
        for (i, &ch) in b.iter().enumerate() {
            if ch == b'_' {
                let before = i > 0 && b[i - 1].is_ascii_digit();
                let after = i + 1 < b.len() && b[i + 1].is_ascii_digit();
                if !(before && after) {
                    return None;
                }
            }
        }
        return t.replace('_', "").parse().ok();
    }
    t.parse().ok()
}

/// Python's `round(x, 2)` on a float: the double nearest to the decimal value of `x` correctly rounded to two
/// places, ties to even. Cinder rounds every capacity factor this way (`sched_utils._limit`).
pub fn py_round2(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let y = x * 100.0;
    // Fast path: while |y| < 2^40 the product's error is below 2^-13, so unless y sits within 1e-3 of a
    // half-way point the nearest integer is certain, and k/100 (one correctly rounded division) is the double
    // nearest to the decimal result, as Python's strtod of the rounded text is.
    if y.abs() < (1u64 << 40) as f64 {
        // The nearest integer without a libm call (x86-64's baseline has no rounding instruction): adding and
        // subtracting 2^52 rounds |y| < 2^52 to an integer in the default rounding mode.
        const TWO_52: f64 = (1u64 << 52) as f64;
        let k = ((y.abs() + TWO_52) - TWO_52).copysign(y);
        if (y - k).abs() < 0.499 {
            return k / 100.0;
        }
    }
    // Exact path: Rust's `{:.2}` rounds the exact binary value, ties to even, as CPython's dtoa does.
    format!("{x:.2}").parse().unwrap_or(x)
}

/// oslo.utils `strutils.TRUE_STRINGS`.
pub const TRUE_STRINGS: [&str; 6] = ["1", "t", "true", "on", "y", "yes"];
/// oslo.utils `strutils.FALSE_STRINGS`.
pub const FALSE_STRINGS: [&str; 6] = ["0", "f", "false", "off", "n", "no"];

/// `strutils.bool_from_string(text)` (strict=False, default=False) on a string.
pub fn bool_from_str(text: &str) -> bool {
    let lowered = text.trim_matches(is_py_space).to_lowercase();
    TRUE_STRINGS.contains(&lowered.as_str())
}

/// `Some(b)` when `text` is one of oslo's recognised boolean strings (strict parse), else `None`.
pub fn strict_bool(text: &str) -> Option<bool> {
    let lowered = text.trim_matches(is_py_space).to_lowercase();
    if TRUE_STRINGS.contains(&lowered.as_str()) {
        Some(true)
    } else if FALSE_STRINGS.contains(&lowered.as_str()) {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_like_python() {
        assert_eq!(py_float(" 12.5 "), Some(12.5));
        assert_eq!(py_float("1_000"), Some(1000.0));
        assert_eq!(py_float("1__0"), None);
        assert_eq!(py_float("_1"), None);
        assert_eq!(py_float("1e3"), Some(1000.0));
        assert_eq!(py_float("-Infinity"), Some(f64::NEG_INFINITY));
        assert!(py_float("nan").unwrap().is_nan());
        assert_eq!(py_float("abc"), None);
        assert_eq!(py_float(""), None);
        assert_eq!(py_float("0x10"), None);
    }

    #[test]
    fn round2_like_python() {
        // Values checked against CPython 3.11 `round(x, 2)`.
        for (x, want) in [
            (0.125, 0.12),
            (0.375, 0.38),
            (1.005, 1.0),
            (2.675, 2.67),
            (0.145, 0.14),
            (-0.125, -0.12),
            (1843.2, 1843.2),
            (5.55555, 5.56),
            (1e300, 1e300),
            (0.004, 0.0),
            (-0.006, -0.01),
            (123456.789, 123456.79),
            (-2.5, -2.5),
            (0.5, 0.5),
            (1099511627.775, 1099511627.78),
        ] {
            assert_eq!(py_round2(x), want, "round({x}, 2)");
        }
        assert!(py_round2(f64::INFINITY).is_infinite());
    }

    proptest::proptest! {
        /// The fast path agrees with the exact one (Rust's `{:.2}`, correctly rounded as CPython's).
        #[test]
        fn round2_fast_path_is_exact(x in -1e9f64..1e9, cents in -100_000_000_000i64..100_000_000_000) {
            for v in [x, cents as f64 / 100.0, cents as f64 / 1000.0, cents as f64 / 200.0] {
                let exact: f64 = format!("{v:.2}").parse().unwrap();
                proptest::prop_assert_eq!(py_round2(v), exact, "round({}, 2)", v);
            }
        }
    }

    #[test]
    fn bools_like_oslo() {
        assert!(bool_from_str(" True "));
        assert!(bool_from_str("YES"));
        assert!(!bool_from_str("maybe"));
        assert_eq!(strict_bool("off"), Some(false));
        assert_eq!(strict_bool("maybe"), None);
    }
}
