//! What the extra-spec expression parser must hold for ANY input text. Checked by `tests/expr_fuzz.rs` (a
//! time-bounded proptest run) and by the cargo-fuzz target `fuzz/fuzz_targets/expr_parse.rs`, both run by
//! `scripts/fuzz-scheduler.sh`.
//!
//! - parsing never panics;
//! - every rejection names a position: a character offset within the text (or its length, "at the end") that
//!   is not whitespace, and its message says `at character N: <why>` with a non-empty why;
//! - an accepted expression prints (`Display`) as text that parses back to the same expression;
//! - matching the expression against capability values of every JSON type never panics;
//! - the request API agrees with the parser, and its refusal names the spec key and the position;
//! - the `--spec KEY=VALUE` splitter never panics.

#![allow(dead_code)]

use elara_scheduler::compat::is_py_space;
use elara_scheduler::{Request, SpecError, parse_expr, parse_spec_arg};
use serde_json::{Value, json};

/// Capability values of every JSON type, some made from the words of `text` so that matches can succeed.
pub fn sample_values(text: &str) -> Vec<Value> {
    let words: Vec<&str> = text.split(is_py_space).filter(|w| !w.is_empty()).collect();
    let mut values = vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(-1.5),
        json!(1e308),
        json!(u64::MAX),
        json!(""),
        json!("True"),
        json!(text),
        json!(words),
        Value::Object(words.iter().map(|w| (w.to_string(), json!(w))).collect()),
    ];
    values.extend(words.iter().map(|w| json!(w)));
    values
}

/// Checks every property for one text; `Err` describes the first one broken. A panic in the library propagates
/// (both fuzzers report it with the input).
pub fn check(text: &str) -> Result<(), String> {
    let len = text.chars().count();
    let parsed = parse_expr(text);
    match &parsed {
        Ok(expr) => {
            let shown = expr.to_string();
            let again = parse_expr(&shown)
                .map_err(|e| format!("{text:?} parsed as {expr:?}, whose text {shown:?} does not parse back: {e}"))?;
            if again.to_string() != shown {
                return Err(format!(
                    "{text:?} parsed as {expr:?}, printed {shown:?}, which parses as {again:?}"
                ));
            }
            for value in sample_values(text) {
                let _ = expr.matches(&value);
            }
        }
        Err(e) => {
            if e.position > len {
                return Err(format!(
                    "{text:?}: rejection at character {} is past the end ({len} characters): {e}",
                    e.position
                ));
            }
            if let Some(c) = text.chars().nth(e.position)
                && is_py_space(c)
            {
                return Err(format!(
                    "{text:?}: rejection points at whitespace {c:?} (character {}): {e}",
                    e.position
                ));
            }
            let prefix = format!("at character {}: ", e.position);
            let shown = e.to_string();
            if !shown.starts_with(&prefix) || e.message.trim().is_empty() {
                return Err(format!("{text:?}: rejection does not say where and why: {shown:?}"));
            }
        }
    }
    match (Request::new(1.0).with_spec("k", text), &parsed) {
        (Ok(_), Ok(_)) => {}
        (Err(SpecError::Parse { key, error, .. }), Err(e)) => {
            if key != "k" || &error != e {
                return Err(format!(
                    "{text:?}: the request reports {key:?} {error:?}, the parser {e:?}"
                ));
            }
            let shown = SpecError::Parse {
                key,
                value: text.to_string(),
                error,
            }
            .to_string();
            if !shown.contains("`k`") || !shown.contains(&format!("at character {}", e.position)) {
                return Err(format!(
                    "{text:?}: the request's refusal names neither key nor position: {shown}"
                ));
            }
        }
        (request, parser) => {
            return Err(format!("{text:?}: the request says {request:?}, the parser {parser:?}"));
        }
    }
    let _ = parse_spec_arg(text);
    Ok(())
}
