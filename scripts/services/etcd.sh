#!/bin/bash
# One etcd member on loopback for tests and benchmarks.
#
#   scripts/services/etcd.sh start DIR   install etcd if missing, start it, wait until healthy,
#                                        print ELARA_TEST_ETCD=host:port (no-op if already healthy)
#   scripts/services/etcd.sh stop DIR    stop the member started in DIR, by its pid file
#   scripts/services/etcd.sh status DIR  exit 0 and print the endpoint if it is running and healthy
#
# Env: ETCD_HOST (127.0.0.1), ETCD_CLIENT_PORT (2379), ETCD_PEER_PORT (2380),
#      ETCD_READY_TIMEOUT (seconds, 20), ETCD_STOP_TIMEOUT (seconds, 10).
# Files in DIR: data/ (member data), etcd.pid, etcd.log, endpoint.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
ACTION=$1
DIR=$2
HOST=${ETCD_HOST:-127.0.0.1}
CLIENT_PORT=${ETCD_CLIENT_PORT:-2379}
PEER_PORT=${ETCD_PEER_PORT:-2380}
READY_TIMEOUT=${ETCD_READY_TIMEOUT:-20}
STOP_TIMEOUT=${ETCD_STOP_TIMEOUT:-10}
ENDPOINT="$HOST:$CLIENT_PORT"
PIDFILE="$DIR/etcd.pid"
LOG="$DIR/etcd.log"
export ETCDCTL_API=3

install_if_missing() {
  if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then
    return 0
  fi
  echo "etcd.sh: installing etcd-server and etcd-client from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    etcd-server etcd-client >/dev/null
  # Debian's package starts a system etcd on 2379; ours must own the port.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl stop etcd || true
    systemctl disable etcd >/dev/null 2>&1 || true
  fi
}

source "$(dirname "${BASH_SOURCE[0]}")/../lib/service.sh"

# The pid in the pid file, if that process is alive and is an etcd.
running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && alive "$pid" || return 1
  grep -q etcd "/proc/$pid/comm" 2>/dev/null || return 1
  echo "$pid"
}

healthy() {
  etcdctl --endpoints "$ENDPOINT" --dial-timeout 1s --command-timeout 2s endpoint health >/dev/null 2>&1
}

start() {
  mkdir -p "$DIR"
  if running_pid >/dev/null && healthy; then
    echo "ELARA_TEST_ETCD=$ENDPOINT"
    return 0
  fi
  install_if_missing
  # A stale member of ours (alive but unhealthy) is stopped before starting afresh.
  if running_pid >/dev/null; then stop; fi
  if healthy; then
    echo "etcd.sh: something else already answers on $ENDPOINT; stop it or set ETCD_CLIENT_PORT" >&2
    return 1
  fi
  # Test data is throwaway: a new member starts empty (a data dir kept across many runs once
  # outgrew etcd's 2 GiB quota: "mvcc: database space exceeded"), and compacts its history as
  # it goes, as a production etcd must.
  rm -rf "$DIR/data"
  setsid etcd --name elara-test --data-dir "$DIR/data" \
    --auto-compaction-mode=periodic --auto-compaction-retention=5m \
    --listen-client-urls "http://$HOST:$CLIENT_PORT" --advertise-client-urls "http://$HOST:$CLIENT_PORT" \
    --listen-peer-urls "http://$HOST:$PEER_PORT" --initial-advertise-peer-urls "http://$HOST:$PEER_PORT" \
    --initial-cluster "elara-test=http://$HOST:$PEER_PORT" --initial-cluster-state new \
    >"$LOG" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDFILE"
  local deadline=$((SECONDS + READY_TIMEOUT))
  until healthy; do
    if ! alive "$pid"; then
      echo "etcd.sh: etcd exited during start-up; log $LOG:" >&2
      tail -n 40 "$LOG" >&2
      rm -f "$PIDFILE"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "etcd.sh: etcd not healthy on $ENDPOINT after ${READY_TIMEOUT}s; log $LOG:" >&2
      tail -n 40 "$LOG" >&2
      stop
      return 1
    fi
    sleep 0.1
  done
  echo "$ENDPOINT" >"$DIR/endpoint"
  echo "ELARA_TEST_ETCD=$ENDPOINT"
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PIDFILE"
    return 0
  fi
  stop_process "$pid" "etcd.sh: etcd" "$STOP_TIMEOUT"
  rm -f "$PIDFILE"
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status)
    if running_pid >/dev/null && healthy; then echo "ELARA_TEST_ETCD=$ENDPOINT"; else exit 1; fi
    ;;
  *) usage ;;
esac
