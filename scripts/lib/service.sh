# What the service scripts (scripts/services/*.sh) share; sourced.

# alive PID: a live process (a zombie counts as gone).
alive() {
  [ -n "$1" ] && [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# stop_process PID WHAT TIMEOUT: TERM, wait up to TIMEOUT seconds, then KILL; returns once the
# process is gone. WHAT names it in the message when it ignores TERM.
stop_process() {
  local pid=$1 what=$2 timeout=$3
  kill -TERM "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + timeout))
  while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  if alive "$pid"; then
    echo "$what (pid $pid) ignored TERM for ${timeout}s; sending KILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  fi
}
