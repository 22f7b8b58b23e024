#!/bin/bash
# The whole test suite, on a fresh Debian 12 machine as root:
#   bash scripts/test.sh
# Installs what the tests need (only where missing), builds the host and the wasm drivers, starts
# the real services the tests use on 127.0.0.1 (each with a readiness check), runs every test, and
# stops the services by pid on the way out.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/.work
mkdir -p "$WORK"
source scripts/lib/prereqs.sh
elara_prereqs
elara_apt_install curl

SERVICES=()
cleanup() {
  local rc=$?
  for s in "${SERVICES[@]}"; do bash "scripts/services/$s.sh" stop "$WORK/$s" >/dev/null 2>&1 || true; done
  exit $rc
}
trap cleanup EXIT

echo "== checks"
# The daemon's modules depend one way: a cycle among them fails the run (and names it).
python3 scripts/check-modules.py
# One format for the workspace (rustfmt.toml).
cargo fmt --all --check >/dev/null || { echo "cargo fmt --all --check: the code is not formatted; run cargo fmt --all"; exit 1; }

echo "== build"
bash scripts/build-drivers.sh "$ROOT/target/drivers"
cargo build -p elara
export ELARA_BIN=$ROOT/target/debug/elara ELARA_DRIVERS_DIR=$ROOT/target/drivers

echo "== services"
# Each service script prints KEY=VALUE lines (endpoints, credentials) that the tests read from the
# environment; each is stopped by pid on the way out.
start_service() {
  local name=$1 out
  SERVICES+=("$name")
  echo "-- $name"
  out=$(bash "scripts/services/$name.sh" start "$WORK/$name") || { echo "$out"; echo "service $name failed to start"; exit 1; }
  while IFS= read -r line; do
    if [[ $line =~ ^[A-Z_][A-Z0-9_]*= ]]; then export "${line?}"; echo "   $line" | sed -E 's/(SECRET[A-Z_]*=|TOKEN=|PASSWORD=).*/\1***/'; fi
  done <<< "$out"
}
# etcd with TLS (client certificates) and user/password auth: every etcd-backed test goes through them.
ETCD_TLS=1 start_service etcd
# Docker tests start a private dockerd each (they restart and kill it); install it up front so
# parallel tests never race apt.
elara_apt_install docker.io busybox-static
start_service s3
start_service cinder
start_service nfs
if [ -x scripts/scheduler-cinder-venv.sh ]; then
  ELARA_CINDER_PY=$(bash scripts/scheduler-cinder-venv.sh | tail -1)
  # The comparison with Cinder's own scheduler must run, not skip.
  export ELARA_CINDER_PY ELARA_REQUIRE_CINDER=1
  echo "-- cinder (in-process scheduler) python: $ELARA_CINDER_PY"
fi

echo "== tests"
touch "$WORK/test.started"
# The host side (default members: store, runtime, scheduler, daemon, conformance, integration
# tests), then the drivers' and the SDK's own unit tests (lib only: their cdylib is a wasm component).
# Both runs always complete (`set +e`), so a failure still gets the summary and the services' errors.
set +e
cargo test --no-fail-fast 2>&1 | tee "$WORK/test.log"
status=${PIPESTATUS[0]}
cargo test --no-fail-fast --lib -p elara-driver-local -p elara-driver-cinder -p elara-driver-s3 -p elara-driver-nfs -p elara-driver-sdk 2>&1 | tee -a "$WORK/test.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
set -e
passed=$(grep -oE '^test result: [a-zA-Z]+\. [0-9]+ passed' "$WORK/test.log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed' "$WORK/test.log" | awk '{s+=$1} END {print s+0}')
echo "elara: $passed passed, $failed failed"
if [ "$status" != 0 ]; then
  # What the services logged as errors during the run, to tell a product bug from a service fault.
  for s in "${SERVICES[@]}"; do
    find "$WORK/$s" -type f \( -name '*.log' -o -name '*.stdout' -o -name '*.err' \) -newer "$WORK/test.started" 2>/dev/null |
      while IFS= read -r log; do
        errors=$(grep -E 'ERROR|Error|Traceback|FATAL|panic' "$log" | tail -n 15) || continue
        echo "--- errors in $log (last 15)"; echo "$errors"
      done
  done
fi
exit "$status"
