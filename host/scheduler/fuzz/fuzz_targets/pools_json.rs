//! Offline explain on arbitrary bytes as the pools file and as a spec: no panic; an error is one of the typed
//! errors, and an explanation accounts for every pool exactly once.

#![no_main]

use elara_scheduler::{Scheduler, explain_offline, load_pools_json, parse_spec_arg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is a `--spec KEY=VALUE` argument, the rest the pools file.
    let (spec, pools) = text.split_once('\n').unwrap_or(("", text));
    let specs: Vec<(String, String)> = parse_spec_arg(spec).into_iter().collect();
    for size in [0.0, 1.0, 1e9] {
        if let Ok(explanation) = explain_offline(pools, size, &specs, &Scheduler::default()) {
            let n = load_pools_json(pools).expect("explained pools load").len();
            assert_eq!(explanation.ranked.len() + explanation.rejected.len(), n);
            assert_eq!(
                explanation.chosen.as_ref(),
                explanation.ranked.first().map(|r| &r.pool)
            );
        }
    }
});
