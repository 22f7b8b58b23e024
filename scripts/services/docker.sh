#!/bin/bash
# A private Docker engine for tests and benchmarks: its own socket, data root and exec root under
# DIR, no iptables, no bridge, overlay2. Never touches the machine's own dockerd.
#
#   scripts/services/docker.sh start DIR    install docker.io and busybox-static if missing, start
#                                           dockerd, wait until it answers, import the test image
#                                           elara-test/busybox, print DOCKER_HOST=unix://DIR/docker.sock
#                                           (a no-op if this DIR's engine is already running)
#   scripts/services/docker.sh stop DIR     remove this engine's containers, stop dockerd (and the
#                                           containerd it started) by pid file, unmount what is left
#   scripts/services/docker.sh restart DIR  stop dockerd only (TERM; with --live-restore running
#                                           containers keep running), start it again, wait until ready
#   scripts/services/docker.sh kill DIR     SIGKILL dockerd (a crash; containerd and the containers live on)
#   scripts/services/docker.sh status DIR   exit 0 and print DOCKER_HOST if it is running and answers
#
# Env: DOCKERD_ARGS   extra dockerd flags, e.g. "--live-restore" (remembered in DIR/dockerd.args
#                     for restart), DOCKER_READY_TIMEOUT (seconds, 30), DOCKER_STOP_TIMEOUT (seconds, 20).
# Files in DIR: docker.sock, root/ (data root), exec/ (exec root), dockerd.pid, dockerd.log.
#
# Legacy volume plugins are found by dockerd in /run/docker/plugins/NAME.sock or a spec file
# /etc/docker/plugins/NAME.spec; those paths are fixed and shared by every engine on the machine,
# so tests give each Elara a unique plugin name with its own spec file (see tests/src/docker.rs).
set -euo pipefail

usage() { echo "usage: $0 start|stop|restart|kill|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
ACTION=$1
DIR=$(mkdir -p "$2" && cd "$2" && pwd)
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/dockerd.pid"
LOG="$DIR/dockerd.log"
ARGSFILE="$DIR/dockerd.args"
READY_TIMEOUT=${DOCKER_READY_TIMEOUT:-30}
STOP_TIMEOUT=${DOCKER_STOP_TIMEOUT:-20}
IMAGE=elara-test/busybox
export DOCKER_HOST="unix://$SOCK"

install_if_missing() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 || missing+=(docker.io)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  [ ${#missing[@]} -eq 0 ] && return 0
  # Tests start engines in parallel: one apt-get at a time, and only if still missing.
  exec 9>/tmp/elara-docker-install.lock
  flock 9
  if command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 && [ -x /bin/busybox ]; then
    exec 9>&-
    return 0
  fi
  echo "docker.sh: installing ${missing[*]} from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exec 9>&-
  # Debian's package enables a system dockerd; ours is private and needs nothing from it.
}

source "$(dirname "${BASH_SOURCE[0]}")/../lib/service.sh"

# The pid in PIDFILE if that process is alive and is a dockerd.
running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null)
  [ -n "$pid" ] && alive "$pid" || return 1
  grep -q dockerd "/proc/$pid/comm" 2>/dev/null || return 1
  echo "$pid"
}

answers() {
  timeout 5 docker version >/dev/null 2>&1
}

# Stop one process by pid: TERM, wait, then KILL.
stop_pid() { stop_process "$1" "docker.sh: $2" "$STOP_TIMEOUT"; }

start_dockerd() {
  local args=()
  [ -f "$ARGSFILE" ] && read -r -a args <"$ARGSFILE"
  mkdir -p "$DIR/root" "$DIR/exec"
  # After a crash the containerd that dockerd supervised is dead (it dies with dockerd) but may
  # linger as a zombie, which dockerd would take for a live containerd and wait on forever.
  local cpid
  cpid=$(cat "$DIR/exec/containerd/containerd.pid" 2>/dev/null || true)
  if [ -n "$cpid" ] && ! alive "$cpid"; then rm -f "$DIR/exec/containerd/containerd.pid"; fi
  # dockerd writes its own pid file (-p) once it runs; the launcher pid is its pid (no fork).
  setsid dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver overlay2 \
    --data-root "$DIR/root" --exec-root "$DIR/exec" --pidfile "$PIDFILE" -H "unix://$SOCK" \
    "${args[@]}" >>"$LOG" 2>&1 </dev/null &
  local pid=$!
  local deadline=$((SECONDS + READY_TIMEOUT))
  until answers; do
    if ! alive "$pid"; then
      echo "docker.sh: dockerd exited during start-up; log $LOG:" >&2
      tail -n 40 "$LOG" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "docker.sh: dockerd does not answer on $SOCK after ${READY_TIMEOUT}s; log $LOG:" >&2
      tail -n 40 "$LOG" >&2
      stop_pid "$pid" dockerd
      return 1
    fi
    sleep 0.05
  done
  echo "$pid" >"$PIDFILE"
}

# The test image: busybox-static with every applet linked, imported (no registry).
import_image() {
  docker image inspect "$IMAGE" >/dev/null 2>&1 && return 0
  local r
  r=$(mktemp -d)
  mkdir -p "$r/bin" "$r/tmp" "$r/etc"
  cp /bin/busybox "$r/bin/"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$r/bin/$applet"
  done
  echo 'root:x:0:0:root:/:/bin/sh' >"$r/etc/passwd"
  tar -C "$r" -c . | docker import -c 'ENV PATH=/bin' - "$IMAGE" >/dev/null
  rm -rf "$r"
}

start() {
  if running_pid >/dev/null && answers; then
    echo "DOCKER_HOST=$DOCKER_HOST"
    return 0
  fi
  install_if_missing
  if running_pid >/dev/null; then stop; fi
  echo "${DOCKERD_ARGS:-}" >"$ARGSFILE"
  start_dockerd
  import_image
  echo "DOCKER_HOST=$DOCKER_HOST"
}

# Mounts under DIR that dockerd or containerd left (overlay, shm, netns), deepest first.
unmount_leftovers() {
  awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

stop() {
  local pid
  if pid=$(running_pid) && answers; then
    local ids
    ids=$(docker ps -aq 2>/dev/null || true)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  fi
  if pid=$(running_pid); then stop_pid "$pid" dockerd; fi
  rm -f "$PIDFILE"
  # The containerd that dockerd supervises outlives a killed dockerd.
  local cpid
  cpid=$(cat "$DIR/exec/containerd/containerd.pid" 2>/dev/null || true)
  if [ -n "$cpid" ] && alive "$cpid" && grep -q containerd "/proc/$cpid/comm" 2>/dev/null; then
    stop_pid "$cpid" containerd
  fi
  unmount_leftovers
}

restart() {
  local pid
  if pid=$(running_pid); then stop_pid "$pid" dockerd; fi
  rm -f "$PIDFILE"
  start_dockerd
  echo "DOCKER_HOST=$DOCKER_HOST"
}

crash() {
  local pid
  pid=$(running_pid) || { echo "docker.sh: no dockerd running in $DIR" >&2; return 1; }
  kill -KILL "$pid"
  while alive "$pid"; do sleep 0.05; done
  rm -f "$PIDFILE"
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  kill) crash ;;
  status)
    if running_pid >/dev/null && answers; then echo "DOCKER_HOST=$DOCKER_HOST"; else exit 1; fi
    ;;
  *) usage ;;
esac
