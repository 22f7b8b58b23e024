#!/bin/bash
# Usage: scripts/scheduler-cinder-venv.sh [VENV]
# Creates a Python venv holding OpenStack Cinder 29.0.0 (pinned with tests/scheduler/constraints-cinder29-py311.txt)
# for the scheduler comparison tests (tests/scheduler/cinder_compare.py). Installs only when missing.
# Default VENV: <repo>/.work/cinder-venv (gitignored). Prints the venv's python path on success, e.g.
#   export ELARA_CINDER_PY=$(scripts/scheduler-cinder-venv.sh)
# Idempotent: a venv marked complete whose cinder imports is reused at once (~0.1 s); anything else is rebuilt
# (~40 s from PyPI on 2 cores). Progress goes to stderr, the python path alone to stdout.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-${VENV:-$REPO/.work/cinder-venv}}
CINDER_VERSION=29.0.0
CONSTRAINTS=$REPO/tests/scheduler/constraints-cinder29-py311.txt
PYTHON=${PYTHON:-python3}
MARK="cinder==$CINDER_VERSION"

if [ "$(cat "$VENV/.elara-installed" 2>/dev/null)" = "$MARK" ] && "$VENV/bin/python" -W ignore -c 'import cinder' 2>/dev/null; then
  echo "$VENV/bin/python"; exit 0
fi
mkdir -p "$(dirname "$VENV")"
echo "scheduler-cinder-venv: creating $VENV with $MARK (~40 s)" >&2
if ! "$PYTHON" -m venv --clear "$VENV" >/dev/null 2>&1; then
  # Debian's python3 has no ensurepip without python3-venv.
  . "$REPO/scripts/lib/prereqs.sh"
  elara_apt_install python3-venv >&2
  "$PYTHON" -m venv --clear "$VENV"
fi
LOG=$VENV/pip.log
"$VENV/bin/pip" install -q -c "$CONSTRAINTS" "$MARK" >"$LOG" 2>&1 \
  || { tail -30 "$LOG" >&2; echo "scheduler-cinder-venv: ERROR: pip install failed (log: $LOG)" >&2; exit 1; }
"$VENV/bin/python" -W ignore -c 'import cinder.scheduler.filters.capacity_filter' 2>/dev/null \
  || { echo "scheduler-cinder-venv: ERROR: cinder installed but does not import" >&2; exit 1; }
echo "$MARK" > "$VENV/.elara-installed"
echo "$VENV/bin/python"
