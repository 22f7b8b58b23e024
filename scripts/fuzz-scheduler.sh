#!/bin/bash
# Usage: scripts/fuzz-scheduler.sh [SECONDS]   (default 60; the whole run stays within about SECONDS plus build time)
# Fuzzes the scheduler's extra-spec expression parser (and offline explain's pools-file loading) for a bounded time:
#   - with a nightly Rust toolchain: cargo-fuzz (libFuzzer) on host/scheduler/fuzz targets `expr_parse` (2/3 of the
#     time) and `pools_json` (1/3); cargo-fuzz is installed from crates.io when missing. The corpus is kept in
#     target/fuzz-scheduler/corpus, so later runs start where earlier ones stopped.
#   - always: the bounded proptest run host/scheduler/tests/expr_fuzz.rs (release mode; all of SECONDS when there
#     is no nightly, else 10 s), which also compares matching with Cinder 29 (the venv of
#     scripts/scheduler-cinder-venv.sh, made when missing, unless ELARA_CINDER_PY is set).
# ELARA_FUZZ_ENGINE=proptest skips cargo-fuzz even where nightly exists (what a machine without nightly runs).
# Properties (host/scheduler/tests/common/expr_props.rs): no panic; every rejection names a position (a character
# offset in the text, not whitespace, "at character N: why"); an accepted expression prints back to itself.
# Exits non-zero on the first broken property; libFuzzer leaves the input in target/fuzz-scheduler/artifacts.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
SECONDS_TOTAL=${1:-60}
[[ "$SECONDS_TOTAL" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz-scheduler: SECONDS must be a positive whole number, got '$SECONDS_TOTAL'" >&2; exit 2; }
FUZZ_DIR=host/scheduler/fuzz
WORK=$REPO/target/fuzz-scheduler

proptest_seconds=$SECONDS_TOTAL
if [ "${ELARA_FUZZ_ENGINE:-}" != proptest ] && rustup run nightly rustc --version >/dev/null 2>&1; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-scheduler: installing cargo-fuzz from crates.io" >&2
    cargo install --locked cargo-fuzz >&2
  fi
  proptest_seconds=10
  expr_seconds=$(( SECONDS_TOTAL * 2 / 3 > 0 ? SECONDS_TOTAL * 2 / 3 : 1 ))
  pools_seconds=$(( SECONDS_TOTAL - expr_seconds > 0 ? SECONDS_TOTAL - expr_seconds : 1 ))
  for run in "expr_parse:$expr_seconds:256" "pools_json:$pools_seconds:4096"; do
    IFS=: read -r target secs max_len <<<"$run"
    mkdir -p "$WORK/corpus/$target" "$WORK/artifacts/$target"
    echo "== cargo fuzz: $target for ${secs}s"
    log=$WORK/$target.log
    if ! cargo +nightly fuzz run --fuzz-dir "$FUZZ_DIR" --target-dir "$WORK" -O "$target" \
        "$WORK/corpus/$target" "$FUZZ_DIR/seeds/$target" -- \
        -max_total_time="$secs" -max_len="$max_len" -artifact_prefix="$WORK/artifacts/$target/" >"$log" 2>&1; then
      tail -40 "$log"
      echo "fuzz-scheduler: $target FAILED (input in $WORK/artifacts/$target/, log $log)" >&2
      exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$log" | sed "s/^/$target: /"
  done
else
  echo "fuzz-scheduler: no nightly toolchain (or ELARA_FUZZ_ENGINE=proptest), so no cargo-fuzz: bounded property test only"
fi

if [ -z "${ELARA_CINDER_PY:-}" ]; then
  ELARA_CINDER_PY=$(bash scripts/scheduler-cinder-venv.sh | tail -1)   # ~0.1 s when the venv exists
  export ELARA_CINDER_PY
fi
echo "== proptest: expression parser for ${proptest_seconds}s (+ matching compared with Cinder via $ELARA_CINDER_PY)"
ELARA_FUZZ_SECONDS=$proptest_seconds cargo test -q --release -p elara-scheduler --test expr_fuzz -- --nocapture 2>&1 \
  | grep -vE '^\s*(Compiling|Blocking)'
echo "fuzz-scheduler: OK"
