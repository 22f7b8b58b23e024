//! Cinder's extra-spec value expressions (`cinder/scheduler/filters/extra_specs_ops.py`), parsed once and matched
//! against pool capabilities.
//!
//! Syntax: the value is split on whitespace (Python `str.split()`); when the first word is an operator, the next
//! word is its operand, otherwise the WHOLE value is compared literally (string equality):
//!
//! | expression            | matches a capability `x` when                                   |
//! |-----------------------|-----------------------------------------------------------------|
//! | `= N`                 | `float(x) >= N` (Cinder's bare `=` means `>=`)                   |
//! | `== N` `!= N` `>= N` `<= N` | numeric comparison (`float(x)`, Python float syntax)      |
//! | `< N` `> N`           | numeric, strict — an Elara extension: Cinder 29 has no `<`/`>` and would compare `< N` literally |
//! | `s== T` `s!= T` `s< T` `s<= T` `s> T` `s>= T` | string comparison (code point order)        |
//! | `<in> T`              | `T` is a substring of `x` (a key of a map, an element of a list) |
//! | `<is> B`              | `bool_from_string(x) is B` (`true/yes/on/1/t/y`, `false/no/off/0/f/n`) |
//! | `<or> A <or> B …`     | `x` equals one of the words                                      |
//! | anything else         | `x == value` as strings                                          |
//!
//! Cinder never refuses an expression; it silently treats a mistyped one as a literal or as "never matches".
//! Elara refuses, with the character position and why, only what cannot mean what was written:
//! an operator without operand, a numeric operator with a non-number, `<is>` with a non-boolean, an unknown
//! `<word>` operator, an operator glued to its operand (`>=1000`, which Cinder compares literally), words after a
//! single operand (Cinder silently ignores them), and a malformed `<or>` chain (`<or>` with nothing after,
//! alternatives not separated by `<or>`).

use std::fmt;

use serde_json::Value;
use thiserror::Error;

use crate::compat::{bool_from_str, is_py_space, py_float, strict_bool};

/// Why an extra-spec value does not parse. `position` is a 0-based character (not byte) offset into the value,
/// at most its length (the length itself means "at the end").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("at character {position}: {message}")]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

/// A numeric comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumOp {
    /// Cinder's bare `=`: greater than or equal.
    BareEq,
    Eq,
    Ne,
    Ge,
    Le,
    /// Elara extension (`<`).
    Lt,
    /// Elara extension (`>`).
    Gt,
}

/// A string comparison operator (`s==` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A parsed extra-spec value.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// No operator: the capability must equal this whole text.
    Literal(String),
    Number {
        op: NumOp,
        operand: f64,
        text: String,
    },
    Text {
        op: StrOp,
        operand: String,
    },
    /// `<in>`
    Contains(String),
    /// `<is>`
    Is(bool),
    /// `<or> a <or> b`
    AnyOf(Vec<String>),
}

enum Op {
    Num(NumOp),
    Str(StrOp),
    In,
    Is,
    Or,
}

const OPERATORS: [(&str, Op); 16] = [
    ("=", Op::Num(NumOp::BareEq)),
    ("==", Op::Num(NumOp::Eq)),
    ("!=", Op::Num(NumOp::Ne)),
    (">=", Op::Num(NumOp::Ge)),
    ("<=", Op::Num(NumOp::Le)),
    ("<", Op::Num(NumOp::Lt)),
    (">", Op::Num(NumOp::Gt)),
    ("s==", Op::Str(StrOp::Eq)),
    ("s!=", Op::Str(StrOp::Ne)),
    ("s<", Op::Str(StrOp::Lt)),
    ("s<=", Op::Str(StrOp::Le)),
    ("s>", Op::Str(StrOp::Gt)),
    ("s>=", Op::Str(StrOp::Ge)),
    ("<in>", Op::In),
    ("<is>", Op::Is),
    ("<or>", Op::Or),
];

fn lookup(word: &str) -> Option<&'static Op> {
    OPERATORS.iter().find(|(t, _)| *t == word).map(|(_, op)| op)
}

/// Words of `text` as Python's `str.split()` gives them, with their character offsets.
fn words(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start: Option<(usize, usize)> = None; // (char offset, byte offset)
    for (chars, (byte, c)) in text.char_indices().enumerate() {
        if is_py_space(c) {
            if let Some((cs, bs)) = start.take() {
                out.push((cs, &text[bs..byte]));
            }
        } else if start.is_none() {
            start = Some((chars, byte));
        }
    }
    if let Some((cs, bs)) = start {
        out.push((cs, &text[bs..]));
    }
    out
}

fn err(position: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        position,
        message: message.into(),
    }
}

/// Parses one extra-spec value (the part after `key=`).
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let end = text.chars().count();
    let words = words(text);
    let Some(&(first_pos, first)) = words.first() else {
        return Ok(Expr::Literal(text.to_string()));
    };
    let Some(op) = lookup(first) else {
        if first.len() >= 2 && first.starts_with('<') && first.ends_with('>') {
            return Err(err(
                first_pos,
                format!("unknown operator `{first}` (Cinder's are <in>, <is>, <or>)"),
            ));
        }
        // Longest operator the word starts with, e.g. `>=` in `>=1000`.
        let glued = OPERATORS
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| first.starts_with(t))
            .max_by_key(|t| t.len());
        if let Some(t) = glued {
            return Err(err(
                first_pos + t.chars().count(),
                format!(
                    "operator `{t}` must be followed by a space (Cinder would compare the whole text `{text}` literally)"
                ),
            ));
        }
        return Ok(Expr::Literal(text.to_string()));
    };

    if let Op::Or = op {
        let mut alternatives = Vec::new();
        let mut i = 1;
        loop {
            let Some(&(pos, alt)) = words.get(i) else {
                return Err(err(end, "`<or>` with nothing after it"));
            };
            if alt == "<or>" {
                return Err(err(pos, "expected an alternative after `<or>`, found another `<or>`"));
            }
            alternatives.push(alt.to_string());
            i += 1;
            let Some(&(pos, sep)) = words.get(i) else {
                break;
            };
            if sep != "<or>" {
                return Err(err(pos, format!("expected `<or>` between alternatives, found `{sep}`")));
            }
            i += 1;
        }
        return Ok(Expr::AnyOf(alternatives));
    }

    let Some(&(operand_pos, operand)) = words.get(1) else {
        return Err(err(end, format!("operator `{first}` needs an operand")));
    };
    if let Some(&(pos, extra)) = words.get(2) {
        return Err(err(
            pos,
            format!(
                "unexpected `{extra}`: operator `{first}` takes one word (Cinder would ignore everything after `{operand}`)"
            ),
        ));
    }
    Ok(match op {
        Op::Num(op) => match py_float(operand) {
            Some(n) => Expr::Number {
                op: *op,
                operand: n,
                text: operand.to_string(),
            },
            None => {
                return Err(err(
                    operand_pos,
                    format!("`{operand}` is not a number (operator `{first}` compares numbers)"),
                ));
            }
        },
        Op::Str(op) => Expr::Text {
            op: *op,
            operand: operand.to_string(),
        },
        Op::In => Expr::Contains(operand.to_string()),
        Op::Is => match strict_bool(operand) {
            Some(b) => Expr::Is(b),
            None => {
                return Err(err(
                    operand_pos,
                    format!("`{operand}` is not a boolean (true/false, yes/no, on/off, 1/0, t/f, y/n)"),
                ));
            }
        },
        Op::Or => unreachable!("handled above"),
    })
}

/// `float(x)` on a capability value as Python would do it; `None` where Python raises.
fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::String(s) => py_float(s),
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// `strutils.bool_from_string(x)` on a capability value.
fn as_bool(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => bool_from_str(s),
        // str(int) can be "1"/"0"; str(float) ("1.0") never is one of oslo's strings.
        Value::Number(n) => n
            .as_i64()
            .map(|i| i == 1)
            .or_else(|| n.as_u64().map(|u| u == 1))
            .unwrap_or(false),
        _ => false,
    }
}

impl Expr {
    /// Whether one capability value satisfies the expression, as `extra_specs_ops.match(value, req)`.
    /// Where Cinder would raise a `TypeError` (e.g. `s<` against a number), this is `false`.
    pub fn matches(&self, value: &Value) -> bool {
        if value.is_null() {
            return false;
        }
        match self {
            Expr::Literal(s)
            | Expr::Text {
                op: StrOp::Eq,
                operand: s,
            } => value.as_str() == Some(s.as_str()),
            Expr::Text { op: StrOp::Ne, operand } => value.as_str() != Some(operand.as_str()),
            Expr::Text { op, operand } => {
                let Some(x) = value.as_str() else {
                    return false;
                };
                let y = operand.as_str();
                match op {
                    StrOp::Lt => x < y,
                    StrOp::Le => x <= y,
                    StrOp::Gt => x > y,
                    StrOp::Ge => x >= y,
                    StrOp::Eq | StrOp::Ne => unreachable!("handled above"),
                }
            }
            Expr::AnyOf(alts) => value.as_str().is_some_and(|x| alts.iter().any(|a| a == x)),
            Expr::Number { op, operand, .. } => {
                let Some(x) = as_number(value) else {
                    return false;
                };
                let y = *operand;
                match op {
                    NumOp::BareEq | NumOp::Ge => x >= y,
                    NumOp::Eq => x == y,
                    NumOp::Ne => x != y,
                    NumOp::Le => x <= y,
                    NumOp::Lt => x < y,
                    NumOp::Gt => x > y,
                }
            }
            Expr::Contains(y) => match value {
                Value::String(x) => x.contains(y.as_str()),
                Value::Object(m) => m.contains_key(y),
                Value::Array(a) => a.iter().any(|e| e.as_str() == Some(y.as_str())),
                _ => false,
            },
            Expr::Is(b) => as_bool(value) == *b,
        }
    }
}

impl fmt::Display for NumOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumOp::BareEq => "=",
            NumOp::Eq => "==",
            NumOp::Ne => "!=",
            NumOp::Ge => ">=",
            NumOp::Le => "<=",
            NumOp::Lt => "<",
            NumOp::Gt => ">",
        })
    }
}

impl fmt::Display for StrOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StrOp::Eq => "s==",
            StrOp::Ne => "s!=",
            StrOp::Lt => "s<",
            StrOp::Le => "s<=",
            StrOp::Gt => "s>",
            StrOp::Ge => "s>=",
        })
    }
}

impl fmt::Display for Expr {
    /// The canonical Cinder text of the expression (parses back to the same `Expr`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(s) => f.write_str(s),
            Expr::Number { op, text, .. } => write!(f, "{op} {text}"),
            Expr::Text { op, operand } => write!(f, "{op} {operand}"),
            Expr::Contains(s) => write!(f, "<in> {s}"),
            Expr::Is(b) => write!(f, "<is> {}", if *b { "True" } else { "False" }),
            Expr::AnyOf(alts) => {
                for a in alts {
                    write!(f, "<or> {a}")?;
                    if !std::ptr::eq(a, alts.last().expect("non-empty")) {
                        f.write_str(" ")?;
                    }
                }
                Ok(())
            }
        }
    }
}
