#!/bin/bash
# A real iSCSI target on loopback for tests: tgt's user-space target daemon (Debian tgt 1.0.85),
# serving the LUNs of the Cinder backend `lun` (scripts/services/cinder/tgt_driver.py), and the
# clients the tests check it with: libiscsi-bin (iscsi-inq, iscsi-readcapacity16, iscsi-ls) and
# qemu's iSCSI block driver (qemu-block-extra, for qemu-img/qemu-io/qemu-storage-daemon).
#
#   scripts/services/tgt.sh start DIR   install what is missing, start tgtd on 127.0.0.1:3260 (a
#                                       no-op when it runs already), wait until it answers
#                                       `tgtadm --mode system --op show`, re-create every target
#                                       defined in DIR/targets/ that tgtd does not have, print the
#                                       env lines below
#   scripts/services/tgt.sh stop DIR    delete tgtd's targets (their definitions stay), shut it down
#                                       (`tgtadm --op delete --mode system`), then end it by pid
#   scripts/services/tgt.sh status DIR  exit 0 and print the env lines if tgtd answers
#
# Printed (also written to DIR/tgt.env):
#   ELARA_TEST_TGT_PORTAL=127.0.0.1:3260
#   ELARA_TEST_TGT_SERVICE=DIR        (tests stop and start the target with this script)
#   ELARA_TEST_TGT_LUNS=DIR/luns      (the LUNs' backing files)
#
# Targets survive a stop and a start: each is defined by a file DIR/targets/<iqn>.conf (written
# by the Cinder driver, mode 0600), lines KEY=VALUE:
#   tid=N  iqn=IQN  lun=1  backing_store=FILE  chap_user=USER  chap_password=PASSWORD
# and `start` makes each again with the same tid: the target, LUN `lun` backed by FILE, bound to
# every initiator (-I ALL), and the incoming CHAP account bound to it (when chap_user is set).
#
# Installs only what is missing: tgt and libiscsi-bin from Debian; qemu-block-extra from
# bookworm-backports at the installed qemu-utils' version (scripts/lib/prereqs.sh,
# elara_backports_install, which adds that suite's APT source from the main archive's), then
# checks that qemu knows driver=iscsi.
# Facts: tgtd ignores SIGTERM; `tgtadm --op delete --mode system` is refused while a target
# exists, so stop deletes the targets (--force: sessions too) first. tgtadm talks to tgtd over
# /var/run/tgtd/socket.0: one tgtd per machine.
# Env: TGT_READY_TIMEOUT (seconds, 30), TGT_STOP_TIMEOUT (seconds, 10).
# Files in DIR: targets/*.conf, luns/, run/tgtd.pid, log/tgtd.log, tgt.env.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
ACTION=$1
DIR=$(mkdir -p "$2" && cd "$2" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PORT=3260
PORTAL=127.0.0.1:$PORT
READY_TIMEOUT=${TGT_READY_TIMEOUT:-30}
STOP_TIMEOUT=${TGT_STOP_TIMEOUT:-10}

T0=$SECONDS
log() { echo "tgt.sh: [$((SECONDS - T0))s] $*" >&2; }

source "$ROOT/scripts/lib/service.sh"   # alive, stop_process

# The pid of our tgtd if it is alive and still tgtd.
running_pid() {
  local pid
  pid=$(cat "$DIR/run/tgtd.pid" 2>/dev/null) || return 1
  alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = tgtd ] || return 1
  echo "$pid"
}

ready() { tgtadm --lld iscsi --mode system --op show >/dev/null 2>&1 && ss -ltnH "sport = :$PORT" | grep -q .; }

print_env() {
  cat >"$DIR/tgt.env" <<EOF
ELARA_TEST_TGT_PORTAL=$PORTAL
ELARA_TEST_TGT_SERVICE=$DIR
ELARA_TEST_TGT_LUNS=$DIR/luns
EOF
  cat "$DIR/tgt.env"
}

install_if_missing() {
  source "$ROOT/scripts/lib/prereqs.sh"
  elara_apt_install tgt libiscsi-bin iproute2 >&2
  elara_user_iscsi >&2 || { log "qemu has no iSCSI block driver"; return 1; }
  # Debian's package may start a system tgtd (where systemd runs); ours must own the portal.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet tgt 2>/dev/null; then
    systemctl stop tgt || true
  fi
}

# The targets tgtd has now: lines "TID IQN".
live_targets() {
  tgtadm --lld iscsi --op show --mode target | sed -n 's/^Target \([0-9][0-9]*\): \(.*\)$/\1 \2/p'
}

# Make the target of definition file $1 in tgtd, unless tgtd has it already.
apply_target() {
  local conf=$1 k v tid='' iqn='' lun=1 backing='' user='' password=''
  while IFS='=' read -r k v; do
    case $k in
      tid) tid=$v ;; iqn) iqn=$v ;; lun) lun=$v ;; backing_store) backing=$v ;;
      chap_user) user=$v ;; chap_password) password=$v ;;
    esac
  done <"$conf"
  if [ -z "$tid" ] || [ -z "$iqn" ] || [ -z "$backing" ]; then log "skipping $conf: no tid, iqn or backing_store"; return 0; fi
  local live
  live=$(live_targets)
  if grep -Fqx "$tid $iqn" <<<"$live"; then return 0; fi
  if grep -q "^$tid " <<<"$live"; then log "skipping $conf: tid $tid is $(grep "^$tid " <<<"$live")"; return 0; fi
  if [ ! -f "$backing" ]; then log "skipping $conf: its backing file $backing is gone"; return 0; fi
  tgtadm --lld iscsi --op new --mode target --tid "$tid" --targetname "$iqn"
  tgtadm --lld iscsi --op new --mode logicalunit --tid "$tid" --lun "$lun" --backing-store "$backing"
  tgtadm --lld iscsi --op bind --mode target --tid "$tid" --initiator-address ALL
  if [ -n "$user" ]; then
    if ! tgtadm --lld iscsi --op show --mode account | sed 's/^[[:space:]]*//' | grep -qx -- "$user"; then
      tgtadm --lld iscsi --op new --mode account --user "$user" --password "$password"
    fi
    tgtadm --lld iscsi --op bind --mode account --tid "$tid" --user "$user"
  fi
  log "re-created target $tid $iqn"
}

apply_all() {
  local conf
  for conf in "$DIR"/targets/*.conf; do
    [ -f "$conf" ] || continue
    apply_target "$conf" || { log "re-creating the target of $conf failed"; return 1; }
  done
}

start() {
  mkdir -p "$DIR/targets" "$DIR/luns" "$DIR/run" "$DIR/log"
  chmod 700 "$DIR/targets"
  if running_pid >/dev/null && ready; then
    apply_all
    print_env
    return 0
  fi
  install_if_missing
  if running_pid >/dev/null; then stop; fi
  if ss -ltnH "sport = :$PORT" | grep -q .; then
    log "something not started here listens on port $PORT; stop it first"
    return 1
  fi
  if tgtadm --lld iscsi --mode system --op show >/dev/null 2>&1; then
    log "a tgtd not started here answers on its control socket; stop it first"
    return 1
  fi
  setsid tgtd -f --iscsi "portal=$PORTAL" >>"$DIR/log/tgtd.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$DIR/run/tgtd.pid"
  local deadline=$((SECONDS + READY_TIMEOUT))
  until ready; do
    if ! alive "$pid"; then
      log "tgtd exited during start-up; log:"; tail -n 20 "$DIR/log/tgtd.log" >&2
      rm -f "$DIR/run/tgtd.pid"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "tgtd not ready after ${READY_TIMEOUT}s; log:"; tail -n 20 "$DIR/log/tgtd.log" >&2
      stop
      return 1
    fi
    sleep 0.05
  done
  apply_all || { stop; return 1; }
  log "tgtd ready on $PORTAL with $(live_targets | wc -l) targets"
  print_env
}

stop() {
  local pid tid
  pid=$(running_pid) || { rm -f "$DIR/run/tgtd.pid"; return 0; }
  # Targets first (tgtd refuses to shut down while it has one); their definitions stay.
  for tid in $(live_targets 2>/dev/null | cut -d' ' -f1); do
    tgtadm --lld iscsi --op delete --mode target --tid "$tid" --force || true
  done
  tgtadm --op delete --mode system || log "tgtadm --op delete --mode system failed; ending tgtd by pid"
  stop_process "$pid" "tgt.sh: tgtd" "$STOP_TIMEOUT"
  rm -f "$DIR/run/tgtd.pid"
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status) if running_pid >/dev/null && ready; then print_env; else exit 1; fi ;;
  *) usage ;;
esac
