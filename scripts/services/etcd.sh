#!/bin/bash
# One etcd member on loopback for tests and benchmarks.
#
#   scripts/services/etcd.sh start DIR   install etcd if missing, start it, wait until healthy,
#                                        print ELARA_TEST_ETCD=host:port (no-op if already healthy)
#   scripts/services/etcd.sh stop DIR    stop the member started in DIR, by its pid file
#   scripts/services/etcd.sh status DIR  exit 0 and print the endpoint if it is running and healthy
#
# Env: ETCD_HOST (127.0.0.1), ETCD_CLIENT_PORT (2379), ETCD_PEER_PORT (2380),
#      ETCD_READY_TIMEOUT (seconds, 20), ETCD_STOP_TIMEOUT (seconds, 10),
#      ETCD_TLS (0; 1: TLS with client certificates and `auth enable`, see below).
# Files in DIR: data/ (member data), etcd.pid, etcd.log, endpoint.
#
# ETCD_TLS=1: the member serves only https with --client-cert-auth, and etcd authentication is on.
# The script makes a throwaway CA and certificates with openssl in DIR/tls (ca.pem; server.pem for
# 127.0.0.1/localhost; client.pem, CN elara-client, which is no etcd user, so the password is what
# authenticates Elara; admin.pem, CN root, which the script itself uses, so no password ever goes
# on a command line), the users root and elara (role elara: read-write on every key under "/"),
# and elara's random password in DIR/elara.password (0600). It prints, besides ELARA_TEST_ETCD,
# ELARA_TEST_ETCD_CA, _CERT, _KEY, _USER, _PASSWORD_FILE and _ADMIN_CERT/_ADMIN_KEY for the tests.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
ACTION=$1
# Absolute, so the paths printed for the tests work from any directory.
DIR=$(realpath -m "$2")
HOST=${ETCD_HOST:-127.0.0.1}
CLIENT_PORT=${ETCD_CLIENT_PORT:-2379}
PEER_PORT=${ETCD_PEER_PORT:-2380}
READY_TIMEOUT=${ETCD_READY_TIMEOUT:-20}
STOP_TIMEOUT=${ETCD_STOP_TIMEOUT:-10}
TLS=${ETCD_TLS:-0}
ENDPOINT="$HOST:$CLIENT_PORT"
PIDFILE="$DIR/etcd.pid"
LOG="$DIR/etcd.log"
TLS_DIR="$DIR/tls"
PASSWORD_FILE="$DIR/elara.password"
export ETCDCTL_API=3
if [ "$TLS" = 1 ]; then SCHEME=https; else SCHEME=http; fi

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

# etcdctl against our member; in TLS mode as root, by the admin certificate's CN.
ctl() {
  if [ "$TLS" = 1 ]; then
    etcdctl --endpoints "https://$ENDPOINT" --cacert "$TLS_DIR/ca.pem" \
      --cert "$TLS_DIR/admin.pem" --key "$TLS_DIR/admin.key" "$@"
  else
    etcdctl --endpoints "$ENDPOINT" "$@"
  fi
}

healthy() {
  ctl --dial-timeout 1s --command-timeout 2s endpoint health >/dev/null 2>&1
}

# The env lines the tests read.
print_env() {
  echo "ELARA_TEST_ETCD=$ENDPOINT"
  if [ "$TLS" = 1 ]; then
    echo "ELARA_TEST_ETCD_CA=$TLS_DIR/ca.pem"
    echo "ELARA_TEST_ETCD_CERT=$TLS_DIR/client.pem"
    echo "ELARA_TEST_ETCD_KEY=$TLS_DIR/client.key"
    echo "ELARA_TEST_ETCD_USER=elara"
    echo "ELARA_TEST_ETCD_PASSWORD_FILE=$PASSWORD_FILE"
    # root by its CN, for tests that change etcd's user database (a token it then refuses).
    echo "ELARA_TEST_ETCD_ADMIN_CERT=$TLS_DIR/admin.pem"
    echo "ELARA_TEST_ETCD_ADMIN_KEY=$TLS_DIR/admin.key"
  fi
}

# A fresh CA and its server, client and admin certificates (a new member gets new ones: nothing
# signed by an earlier run's CA is trusted any more).
make_certs() {
  if ! command -v openssl >/dev/null 2>&1; then
    source "$(dirname "${BASH_SOURCE[0]}")/../lib/prereqs.sh"
    elara_apt_install openssl
  fi
  rm -rf "$TLS_DIR"
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  local old_umask
  old_umask=$(umask)
  umask 077
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=elara-test-etcd-ca" \
    -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
  # NAME CN EXTENSIONS: a key and a certificate signed by the CA.
  sign() {
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" \
      -keyout "$TLS_DIR/$1.key" -out "$TLS_DIR/$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$TLS_DIR/$1.ext"
    openssl x509 -req -in "$TLS_DIR/$1.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
      -CAcreateserial -days 7 -extfile "$TLS_DIR/$1.ext" -out "$TLS_DIR/$1.pem" 2>/dev/null
    rm -f "$TLS_DIR/$1.csr" "$TLS_DIR/$1.ext"
  }
  sign server elara-test-etcd "subjectAltName=IP:$HOST,IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth"
  sign client elara-client "extendedKeyUsage=clientAuth"
  sign admin root "extendedKeyUsage=clientAuth"
  umask "$old_umask"
  # Certificates are public; the keys stay 0600.
  chmod 644 "$TLS_DIR"/*.pem
}

# Users, the elara role and `auth enable`, on a new member (as root through the admin certificate;
# the passwords go in on stdin).
enable_auth() {
  local root_password
  root_password=$(openssl rand -hex 16) || return 1
  (umask 077; openssl rand -hex 16 >"$PASSWORD_FILE") || return 1
  # Called from an `if`, where set -e does not apply: every step is checked.
  printf '%s\n' "$root_password" | ctl user add root --interactive=false >/dev/null || return 1
  ctl user grant-role root root >/dev/null || return 1
  ctl user add elara --interactive=false <"$PASSWORD_FILE" >/dev/null || return 1
  ctl role add elara >/dev/null || return 1
  ctl role grant-permission elara --prefix=true readwrite / >/dev/null || return 1
  ctl user grant-role elara elara >/dev/null || return 1
  ctl auth enable >/dev/null || return 1
}

start() {
  mkdir -p "$DIR"
  if running_pid >/dev/null && healthy; then
    print_env
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
  local tls_flags=()
  if [ "$TLS" = 1 ]; then
    make_certs
    tls_flags=(--cert-file "$TLS_DIR/server.pem" --key-file "$TLS_DIR/server.key"
      --trusted-ca-file "$TLS_DIR/ca.pem" --client-cert-auth)
  fi
  setsid etcd --name elara-test --data-dir "$DIR/data" \
    --auto-compaction-mode=periodic --auto-compaction-retention=5m \
    --listen-client-urls "$SCHEME://$HOST:$CLIENT_PORT" --advertise-client-urls "$SCHEME://$HOST:$CLIENT_PORT" \
    --listen-peer-urls "http://$HOST:$PEER_PORT" --initial-advertise-peer-urls "http://$HOST:$PEER_PORT" \
    --initial-cluster "elara-test=http://$HOST:$PEER_PORT" --initial-cluster-state new \
    "${tls_flags[@]}" >"$LOG" 2>&1 </dev/null &
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
  if [ "$TLS" = 1 ]; then
    if ! enable_auth; then
      echo "etcd.sh: setting up users and auth on $ENDPOINT failed; log $LOG:" >&2
      tail -n 40 "$LOG" >&2
      stop
      return 1
    fi
  fi
  echo "$ENDPOINT" >"$DIR/endpoint"
  print_env
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
    if running_pid >/dev/null && healthy; then print_env; else exit 1; fi
    ;;
  *) usage ;;
esac
