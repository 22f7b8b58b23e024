//! The extra-spec expression parser on arbitrary text: the properties of `tests/common/expr_props.rs` (no panic,
//! every rejection names a position, what is accepted prints back to itself).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/expr_props.rs"]
mod expr_props;

fuzz_target!(|data: &[u8]| {
    // Specs reach Elara as text (CLI arguments, JSON strings): UTF-8 only.
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(broken) = expr_props::check(text)
    {
        panic!("{broken}");
    }
});
