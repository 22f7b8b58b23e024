#!/bin/bash
# A real user-space NFS server on loopback for tests: NFS-Ganesha (Debian nfs-ganesha +
# nfs-ganesha-vfs, FSAL VFS) exporting DIR/export over NFSv3 and NFSv4, with rpcbind (ganesha will
# not start NFSv3 without it). After ../shared/recipes/nfs/up.sh.
#
#   scripts/services/nfs.sh start DIR   install what is missing (also libnfs-utils: nfs-ls, nfs-cp,
#                                       the tests' independent NFS client), start rpcbind (unless
#                                       one runs already) and ganesha, wait until an NFSv3 READDIR
#                                       of the export answers, print the env lines below
#                                       (a no-op start if already up)
#   scripts/services/nfs.sh stop DIR    stop ganesha, then the rpcbind this script started, by pid
#   scripts/services/nfs.sh status DIR  exit 0 and print the env lines if the export answers
#
# Printed (also written to DIR/nfs.env):
#   ELARA_TEST_NFS_SERVER=127.0.0.1:2049   ELARA_TEST_NFS_MOUNT_PORT=20048
#   ELARA_TEST_NFS_EXPORT=/export          (the MOUNT path; the same for v3 and v4)
#   ELARA_TEST_NFS_DIR=DIR/export          (the exported directory on this machine's disk)
#   ELARA_TEST_NFS_SERVICE=DIR             (tests stop and start the server with this script)
#
# Env: NFS_PORT (2049), NFS_MOUNT_PORT (20048), NFS_READY_TIMEOUT (seconds, 60),
#      NFS_STOP_TIMEOUT (seconds, 15).
# Facts (see the recipe): Debian's rpcbind always listens on 0.0.0.0:111 and `rpcbind -h` crashes,
# so it is the one part not bound to 127.0.0.1; there is one per machine, so a running one is
# reused and left running. This kernel may have no NFS client: nothing here mounts.
# Files in DIR: ganesha.conf, export/, log/, run/{ganesha,rpcbind}.pid, recov/, nfs.env.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
ACTION=$1
DIR=$(mkdir -p "$2" && cd "$2" && pwd)
PORT=${NFS_PORT:-2049}
MOUNT_PORT=${NFS_MOUNT_PORT:-20048}
READY_TIMEOUT=${NFS_READY_TIMEOUT:-60}
STOP_TIMEOUT=${NFS_STOP_TIMEOUT:-15}
EXPORT_DIR="$DIR/export"
URL="nfs://127.0.0.1/export/?version=3&nfsport=$PORT&mountport=$MOUNT_PORT"

log() { echo "nfs.sh: $*" >&2; }

install_if_missing() {
  local missing=()
  for b in ganesha.nfsd:nfs-ganesha rpcbind:rpcbind nfs-ls:libnfs-utils; do
    command -v "${b%%:*}" >/dev/null 2>&1 || missing+=("${b#*:}")
  done
  [ -e /usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so ] || missing+=(nfs-ganesha-vfs)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian's packages may start a system ganesha on 2049; ours must own the port.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nfs-ganesha 2>/dev/null; then
    systemctl stop nfs-ganesha || true
  fi
}

source "$(dirname "${BASH_SOURCE[0]}")/../lib/service.sh"

# The pid of NAME (ganesha, rpcbind) if it is alive and is the program we started.
running_pid() {
  local f="$DIR/run/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && alive "$pid" || return 1
  case $1 in ganesha) grep -q ganesha "/proc/$pid/comm" ;; *) grep -q "$1" "/proc/$pid/comm" ;; esac 2>/dev/null || return 1
  echo "$pid"
}

ready() { nfs-ls "$URL" >/dev/null 2>&1; }

print_env() {
  cat >"$DIR/nfs.env" <<EOF
ELARA_TEST_NFS_SERVER=127.0.0.1:$PORT
ELARA_TEST_NFS_MOUNT_PORT=$MOUNT_PORT
ELARA_TEST_NFS_EXPORT=/export
ELARA_TEST_NFS_DIR=$EXPORT_DIR
ELARA_TEST_NFS_SERVICE=$DIR
EOF
  cat "$DIR/nfs.env"
}

# Wait until CHECK succeeds while process NAME (pid PID) lives.
wait_for() {
  local what=$1 name=$2 pid=$3; shift 3
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ! alive "$pid"; then
      log "$name exited while waiting for $what; log:"; tail -n 30 "$DIR/log/$name".* >&2 2>/dev/null || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "no $what after ${READY_TIMEOUT}s; log:"; tail -n 30 "$DIR/log/$name".* >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.1
  done
}

write_config() {
  cat >"$DIR/ganesha.conf" <<EOF
NFS_CORE_PARAM {
    Bind_addr = 127.0.0.1;
    NFS_Port = $PORT;
    MNT_Port = $MOUNT_PORT;
    Protocols = 3, 4;
    Mount_Path_Pseudo = true;   # the NFSv3 MOUNT path is the pseudo path too: /export for both
    Enable_NLM = false;
    Enable_RQUOTA = false;
}
NFSV4 {
    Graceless = true;           # no 90 s grace period after a (re)start
    RecoveryBackend = fs;
    RecoveryRoot = "$DIR/recov";
}
EXPORT {
    Export_Id = 1;
    Path = "$EXPORT_DIR";
    Pseudo = /export;
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3, 4;
    Transports = TCP;
    SecType = sys;
    FSAL { Name = VFS; }
}
LOG { Default_Log_Level = WARN; }
EOF
}

start() {
  mkdir -p "$EXPORT_DIR" "$DIR/run" "$DIR/log" "$DIR/recov"
  if running_pid ganesha >/dev/null && ready; then
    print_env
    return 0
  fi
  install_if_missing
  if running_pid ganesha >/dev/null; then stop_ganesha; fi
  if ss -ltn "sport = :$PORT" | grep -q LISTEN; then
    log "something else listens on port $PORT; stop it or set NFS_PORT"
    return 1
  fi
  if ! ss -ltn 'sport = :111' | grep -q LISTEN; then
    setsid rpcbind -f -w >"$DIR/log/rpcbind.log" 2>&1 </dev/null &
    echo $! >"$DIR/run/rpcbind.pid"
    wait_for "rpcbind on port 111" rpcbind "$(cat "$DIR/run/rpcbind.pid")" rpcinfo -p 127.0.0.1
  fi
  write_config
  setsid ganesha.nfsd -F -f "$DIR/ganesha.conf" -L "$DIR/log/ganesha.log" -p "$DIR/run/ganesha.nfsd.pid" \
    >"$DIR/log/ganesha.out" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$DIR/run/ganesha.pid"
  wait_for "an NFSv3 READDIR of $URL" ganesha "$pid" ready || { stop_ganesha; return 1; }
  print_env
}

stop_pid() {
  local name=$1 pid
  pid=$(running_pid "$name") || { rm -f "$DIR/run/$name.pid"; return 0; }
  stop_process "$pid" "nfs.sh: $name" "$STOP_TIMEOUT"
  rm -f "$DIR/run/$name.pid"
}

stop_ganesha() { stop_pid ganesha; }

case "$ACTION" in
  start) start ;;
  stop) stop_ganesha; stop_pid rpcbind ;;
  status) if running_pid ganesha >/dev/null && ready; then print_env; else exit 1; fi ;;
  *) usage ;;
esac
