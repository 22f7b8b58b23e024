#!/bin/bash
# Build the wasm driver components (wasm32-wasip2, cargo profile `driver`):
#   bash scripts/build-drivers.sh [DRIVERS_OUT] [TEST_DRIVERS_OUT]
# - every driver under drivers/ whose crate exports a driver (`export_driver!` in its src/) →
#   DRIVERS_OUT/<dir>.wasm (default target/drivers; the daemon's --drivers-dir). A crate without
#   `export_driver!` (a stub) is skipped with a note. ELARA_DRIVERS="local nfs" builds only those.
# - every test driver under tests/drivers/ → TEST_DRIVERS_OUT/<dir>.wasm (default target/test-drivers).
#   ELARA_TEST_DRIVERS=0 skips them.
# One cargo invocation for everything; a warm run is a no-op build plus a compare, and a file is
# copied only when it changed. Prints one `built NAME → PATH` line per component.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib/prereqs.sh
elara_prereqs

DRIVERS_OUT=${1:-$ROOT/target/drivers}
TEST_DRIVERS_OUT=${2:-$ROOT/target/test-drivers}
TARGET=wasm32-wasip2
PROFILE=driver
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

# The package name in a crate's Cargo.toml ([package] name = "...").
package_name() {
  sed -n '/^\[package\]/,/^\[/{s/^name *= *"\([^"]*\)".*/\1/p}' "$1/Cargo.toml" | head -1
}

names=() packages=() outs=()
add() { # add DIR OUT_DIR
  local dir=$1 out=$2 pkg
  pkg=$(package_name "$dir")
  [ -n "$pkg" ] || { echo "build-drivers: no package name in $dir/Cargo.toml" >&2; exit 1; }
  names+=("$(basename "$dir")") packages+=("$pkg") outs+=("$out")
}

if [ -n "${ELARA_DRIVERS:-}" ]; then
  for d in $ELARA_DRIVERS; do
    [ -f "drivers/$d/Cargo.toml" ] || { echo "build-drivers: no driver drivers/$d" >&2; exit 1; }
    add "drivers/$d" "$DRIVERS_OUT"
  done
else
  for dir in drivers/*/; do
    dir=${dir%/}
    [ -f "$dir/Cargo.toml" ] || continue
    if grep -rqs 'export_driver!' "$dir/src"; then
      add "$dir" "$DRIVERS_OUT"
    else
      echo "build-drivers: skipping $dir (no export_driver! yet)"
    fi
  done
fi
if [ "${ELARA_TEST_DRIVERS:-1}" != 0 ]; then
  for dir in tests/drivers/*/; do
    dir=${dir%/}
    [ -f "$dir/Cargo.toml" ] && add "$dir" "$TEST_DRIVERS_OUT"
  done
fi
[ ${#packages[@]} -gt 0 ] || { echo "build-drivers: nothing to build" >&2; exit 1; }

args=()
for p in "${packages[@]}"; do args+=(-p "$p"); done
cargo build --quiet --target "$TARGET" --profile "$PROFILE" "${args[@]}"

for i in "${!packages[@]}"; do
  artifact=$TARGET_DIR/$TARGET/$PROFILE/${packages[$i]//-/_}.wasm
  [ -f "$artifact" ] || { echo "build-drivers: cargo did not produce $artifact" >&2; exit 1; }
  mkdir -p "${outs[$i]}"
  dest=${outs[$i]}/${names[$i]}.wasm
  if ! cmp -s "$artifact" "$dest"; then
    # Replace atomically so a running daemon or test never reads a half-written file.
    cp "$artifact" "$dest.tmp.$$" && mv -f "$dest.tmp.$$" "$dest"
  fi
  echo "built ${names[$i]} → $dest ($(stat -c %s "$dest") bytes)"
done
