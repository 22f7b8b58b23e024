//! Fuzzing of the extra-spec expression parser with proptest, bounded in time, where cargo-fuzz (nightly) is not
//! available. The properties are in `common/expr_props.rs` (no panic; every rejection names a position; what is
//! accepted prints back to itself).
//!
//! - `ELARA_FUZZ_SECONDS` (default 3): how long `parser_holds_its_properties` generates inputs;
//!   `scripts/fuzz-scheduler.sh` runs it longer, in release mode.
//! - `ELARA_FUZZ_SEED`: the first seed (default: from the clock); a failure prints the seed that reproduces it.
//!
//! `matching_agrees_with_cinder` also compares, on generated (capability, requirement) pairs, what Elara's parsed
//! expressions match with what Cinder 29's `extra_specs_ops.match` says (needs `ELARA_CINDER_PY`).

mod common;

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use elara_scheduler::expr::{Expr, NumOp};
use elara_scheduler::parse_expr;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Value, json};

use common::{cinder, expr_props};

/// Operators, operator-like words and operands that exercise every branch of the parser.
const TOKENS: &[&str] = &[
    "=",
    "==",
    "!=",
    ">=",
    "<=",
    "<",
    ">",
    "s==",
    "s!=",
    "s<",
    "s<=",
    "s>",
    "s>=",
    "<in>",
    "<is>",
    "<or>",
    "<all-in>",
    "<>",
    "<",
    "s",
    "<or",
    "or>",
    "=>",
    "=<",
    "===",
    "1000",
    "1_000",
    "1__0",
    "_1",
    "1e3",
    "-2.5",
    ".5",
    "inf",
    "-Infinity",
    "nan",
    "0x10",
    "１２",
    "True",
    "false",
    "yes",
    "off",
    "1",
    "0",
    "t",
    "n",
    "maybe",
    "gold",
    "Gold",
    "rack-1",
    "fast disks",
    "ä",
    "日本",
    "\u{0}",
    "",
];

/// Separators: Python's `str.split()` whitespace (ASCII, Unicode, U+001C..U+001F) and nothing (glued tokens).
const SEPARATORS: &[&str] = &[
    " ", " ", "  ", "\t", "\n", "\u{a0}", "\u{2003}", "\u{3000}", "\u{1c}", "\u{85}", "",
];

/// Texts: sequences of tokens and separators, mutated tokens, and arbitrary strings.
fn text_strategy() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        6 => proptest::sample::select(TOKENS).prop_map(String::from),
        1 => "\\PC{0,6}",
        1 => (proptest::sample::select(TOKENS), "[0-9a-z<>=!_.+-]{0,4}").prop_map(|(t, s)| format!("{t}{s}")),
    ];
    let piece = (proptest::sample::select(SEPARATORS), token).prop_map(|(s, t)| format!("{s}{t}"));
    // The shapes Cinder documents: `OP OPERAND` and `<or> A <or> B …`, with varied spacing.
    let space = proptest::sample::select(&SEPARATORS[..SEPARATORS.len() - 1]);
    let operator = proptest::sample::select(&TOKENS[..16]);
    let operand = prop_oneof![4 => proptest::sample::select(TOKENS).prop_map(String::from), 1 => "[0-9.e_-]{1,5}"];
    let unary = (space.clone(), operator, space.clone(), operand.clone(), space.clone())
        .prop_map(|(a, op, b, x, c)| format!("{a}{op}{b}{x}{c}"));
    let or_chain = proptest::collection::vec((space.clone(), operand, space), 1..4).prop_map(|alts| {
        alts.iter()
            .map(|(a, x, b)| format!("<or>{a}{x}{b}"))
            .collect::<Vec<_>>()
            .join(" ")
    });
    prop_oneof![
        4 => unary,
        2 => or_chain,
        6 => (proptest::collection::vec(piece, 0..7), proptest::sample::select(SEPARATORS))
            .prop_map(|(pieces, end)| pieces.concat() + end),
        1 => any::<String>(),
        1 => "\\PC{0,40}",
    ]
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(i as u64)
                .to_le_bytes(),
        );
    }
    bytes
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
    })
}

fn runner(seed: u64, cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(seed)))
}

#[test]
fn parser_holds_its_properties() {
    let budget = Duration::from_secs(env_u64("ELARA_FUZZ_SECONDS").unwrap_or(3));
    let first_seed = env_u64("ELARA_FUZZ_SEED")
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as u64);
    const ROUND: u32 = 2_000;
    let start = Instant::now();
    let mut rounds = 0u64;
    let (accepted, refused) = (Cell::new(0u64), Cell::new(0u64));
    loop {
        let seed = first_seed.wrapping_add(rounds);
        let result = runner(seed, ROUND).run(&text_strategy(), |text| {
            let counter = if parse_expr(&text).is_ok() { &accepted } else { &refused };
            counter.set(counter.get() + 1);
            expr_props::check(&text).map_err(TestCaseError::fail)
        });
        if let Err(e) = result {
            panic!("expression parser property broken (reproduce with ELARA_FUZZ_SEED={seed}): {e}");
        }
        rounds += 1;
        if start.elapsed() >= budget {
            break;
        }
    }
    eprintln!(
        "expression fuzzing: {} inputs in {:.1} s (seeds {first_seed}..+{rounds}): {accepted} accepted, {refused} refused, \
         no panic, every refusal positioned",
        u64::from(ROUND) * rounds,
        start.elapsed().as_secs_f64(),
        accepted = accepted.get(),
        refused = refused.get(),
    );
    assert!(
        accepted.get() > 0 && refused.get() > 0,
        "the generator must produce both valid and invalid expressions"
    );
}

/// What Cinder may answer for one pair: a match result, or an exception.
fn cinder_answer(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(e) => Err(e.clone()),
        other => panic!("unexpected harness answer {other}"),
    }
}

#[test]
fn matching_agrees_with_cinder() {
    let Some(python) = cinder::python("matching_agrees_with_cinder") else {
        return;
    };
    let seed = env_u64("ELARA_FUZZ_SEED").unwrap_or(0x00C1_DE12);
    let values = proptest::sample::select(vec![
        json!(5000),
        json!(3000.0),
        json!(-1),
        json!(0),
        json!(1),
        json!(1.5),
        json!(true),
        json!(false),
        json!("5000"),
        json!("1e3"),
        json!("gold"),
        json!("Gold"),
        json!("True"),
        json!("yes"),
        json!("off"),
        json!("rack-1-a"),
        json!(""),
        json!("fast disks"),
        json!("1_000"),
        json!("inf"),
        json!({"max": "high", "gold": 1}),
    ]);
    let mut pairs: Vec<(Value, String, Expr)> = Vec::new();
    let mut runner = runner(seed, 1);
    let strategy = (values, text_strategy());
    while pairs.len() < 20_000 {
        let (value, text) = strategy.new_tree(&mut runner).expect("generate").current();
        let Ok(expr) = parse_expr(&text) else {
            continue;
        };
        // `<` and `>` are Elara's (oslo specs_matcher's): Cinder 29 compares them literally, by design.
        if matches!(
            expr,
            Expr::Number {
                op: NumOp::Lt | NumOp::Gt,
                ..
            }
        ) {
            continue;
        }
        pairs.push((value, text, expr));
    }
    let input: Vec<Value> = pairs.iter().map(|(v, t, _)| json!([v, t])).collect();
    let answer = cinder::run(&python, &["--match"], &json!({ "pairs": input }));
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), pairs.len());
    let mut differences = Vec::new();
    let mut cinder_raised = 0;
    for ((value, text, expr), theirs) in pairs.iter().zip(results) {
        let ours = expr.matches(value);
        match cinder_answer(theirs) {
            Ok(m) if m == ours => {}
            // Cinder's filter lets a TypeError escape (e.g. `<in>` on a number); Elara says "no match".
            Err(e) if e.starts_with("TypeError") && !ours => cinder_raised += 1,
            other => differences.push(format!(
                "capability {value} vs {text:?} ({expr:?}): cinder {other:?}, elara {ours}"
            )),
        }
    }
    eprintln!(
        "compared {} (capability, requirement) matches with Cinder's extra_specs_ops.match; {cinder_raised} where it raised TypeError",
        pairs.len()
    );
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
