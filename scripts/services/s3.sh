#!/bin/bash
# A real S3 server on loopback for tests and benchmarks: Ceph RADOS Gateway (Debian bookworm
# radosgw/ceph-mon/ceph-osd 16.2.15) over a one-node Ceph cluster (one mon, one bluestore OSD on a
# sparse file), the S3 that OpenStack clouds run. No compile step: apt only (~30 s on a fresh
# machine), ~16 s cold start, ~6 s warm. After ../shared/recipes/s3-ceph/s3-up.sh.
#
#   scripts/services/s3.sh start DIR   install what is missing (the Ceph packages, s3fs, a Python
#                                      venv with boto3 for independent checks), bootstrap the
#                                      cluster in DIR on first use, start mon → osd → rgw, wait for
#                                      each (the gateway: HTTP 200 on /), create the S3 user, and
#                                      print the env lines below (a no-op start if already up)
#   scripts/services/s3.sh stop DIR    stop rgw → osd → mon by their pid files (TERM, then KILL)
#   scripts/services/s3.sh status DIR  exit 0 and print the env lines if the gateway answers
#
# Printed (also written to DIR/s3.env):
#   ELARA_TEST_S3_ENDPOINT=http://127.0.0.1:PORT   ELARA_TEST_S3_REGION=us-east-1
#   ELARA_TEST_S3_ACCESS_KEY=...   ELARA_TEST_S3_SECRET_KEY=...
#   ELARA_TEST_S3_PYTHON=DIR/venv/bin/python   (has boto3)
#
# Env: S3_PORT (47480), S3_MON_PORT (43300; msgr v1 = +3489), S3_OSD_PORTS (46800-46899),
#      S3_ACCESS_KEY / S3_SECRET_KEY (fixed test keys), S3_OSD_SIZE (bytes of the sparse OSD file,
#      20 GiB), S3_READY_TIMEOUT (seconds per stage, 120), S3_STOP_TIMEOUT (seconds, 30),
#      S3_SKIP_VENV=1 (no boto3 venv).
# Deleted objects' data is reclaimed within a minute (rgw_gc_* below); a full OSD makes the
# gateway refuse writes and deletes alike (`ceph -c DIR/ceph.conf health detail` says so).
# Files in DIR: ceph.conf, data/, log/, run/{mon.a,osd.0,rgw.a}.pid, s3.env, venv/.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
ACTION=$1
DIR=$(mkdir -p "$2" && cd "$2" && pwd)
PORT=${S3_PORT:-47480}
MON_PORT=${S3_MON_PORT:-43300}
MON_V1_PORT=$((MON_PORT + 3489))
OSD_PORTS=${S3_OSD_PORTS:-46800-46899}
ACCESS_KEY=${S3_ACCESS_KEY:-ELARATESTACCESSKEY00}
SECRET_KEY=${S3_SECRET_KEY:-elaratestsecretkey000000000000000000000000}
OSD_SIZE=${S3_OSD_SIZE:-21474836480}
READY_TIMEOUT=${S3_READY_TIMEOUT:-120}
STOP_TIMEOUT=${S3_STOP_TIMEOUT:-30}
REGION=us-east-1
ENDPOINT="http://127.0.0.1:$PORT"
CONF="$DIR/ceph.conf"
CEPH=(ceph -c "$CONF" --connect-timeout 5)

log() { echo "s3.sh: $*" >&2; }

install_if_missing() {
  local missing=()
  for b in ceph-mon:ceph-mon ceph-osd:ceph-osd radosgw:radosgw s3fs:s3fs curl:curl python3:python3; do
    command -v "${b%%:*}" >/dev/null 2>&1 || missing+=("${b#*:}")
  done
  if [ -z "${S3_SKIP_VENV:-}" ] && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian's packages may start system Ceph daemons on the default ports; ours are private.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet ceph.target 2>/dev/null; then
    systemctl stop ceph.target || true
  fi
  if [ -z "${S3_SKIP_VENV:-}" ] && ! "$DIR/venv/bin/python" -c 'import boto3' >/dev/null 2>&1; then
    log "making a Python venv with boto3 in $DIR/venv"
    python3 -m venv "$DIR/venv"
    "$DIR/venv/bin/pip" install -q boto3 >/dev/null
  fi
}

source "$(dirname "${BASH_SOURCE[0]}")/../lib/service.sh"

# The pid of daemon NAME (mon.a, osd.0, rgw.a) if it is alive and is the Ceph program we started.
running_pid() {
  local f="$DIR/run/$1.pid" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null)
  [ -n "$pid" ] && alive "$pid" || return 1
  grep -qE 'ceph-mon|ceph-osd|radosgw' "/proc/$pid/comm" 2>/dev/null || return 1
  echo "$pid"
}

gateway_answers() {
  [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$ENDPOINT/")" = 200 ]
}

# wait_for NAME DESC CMD...: poll CMD until it succeeds; fail early if daemon NAME exited.
wait_for() {
  local name=$1 desc=$2; shift 2
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ! running_pid "$name" >/dev/null; then
      log "$name exited while waiting for $desc; log:"
      tail -n 30 "$DIR/log/$name.stdout" "$DIR/log/$name.log" 2>/dev/null >&2 || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${READY_TIMEOUT}s waiting for $desc"
      return 1
    fi
    sleep 0.2
  done
}

# launch NAME CMD...: run a Ceph daemon in the foreground (-f) in its own session; record its pid.
launch() {
  local name=$1; shift
  running_pid "$name" >/dev/null && return 0
  setsid "$@" </dev/null >>"$DIR/log/$name.stdout" 2>&1 &
  echo $! >"$DIR/run/$name.pid"
}

write_conf() {
  local fsid
  fsid=$(cat /proc/sys/kernel/random/uuid)
  cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_V1_PORT]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
public_network = 127.0.0.0/8
cluster_network = 127.0.0.0/8
ms_bind_ipv4 = true
ms_bind_ipv6 = false
ms_bind_port_min = ${OSD_PORTS%-*}
ms_bind_port_max = ${OSD_PORTS#*-}
# No cephx inside the one-node cluster; S3 requests are still SigV4-authenticated by the gateway.
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
# With auth=none the "secure" messenger mode is impossible: allow crc.
ms_mon_client_mode = crc
ms_client_mode = crc
ms_mon_service_mode = crc
ms_service_mode = crc
ms_cluster_mode = crc
ms_mon_cluster_mode = crc
keyring = /dev/null
run_dir = $DIR/run
admin_socket = $DIR/run/\$name.asok
log_file = $DIR/log/\$name.log
mon_data = $DIR/data/mon.\$id
osd_data = $DIR/data/osd.\$id
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
auth_allow_insecure_global_id_reclaim = false
osd_crush_chooseleaf_type = 0
[mon]
mon_allow_pool_delete = true
[osd]
osd_objectstore = bluestore
bluestore_block_path = $DIR/data/osd.\$id.block
bluestore_block_create = true
bluestore_block_size = $OSD_SIZE
bluestore_fsck_on_mkfs = false
osd_memory_target = 1073741824
bluestore_cache_size = 268435456
[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:$PORT
rgw_data = $DIR/data/rgw.\$id
rgw_enable_usage_log = false
rgw_dns_name =
EOF
  rgw_gc_conf >>"$CONF"
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_V1_PORT]" \
    --enable-all-features --set-min-mon-release pacific "$DIR/run/monmap" >/dev/null
  mkdir -p "$DIR/data/mon.a"
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/run/monmap" >>"$DIR/log/mkfs.log" 2>&1
}

# The gateway deletes the data of removed objects in the background, by default 2 h later: tests
# and benchmarks that write and delete GiBs would fill the OSD long before. Reclaim within a minute.
rgw_gc_conf() {
  cat <<EOF
# garbage collection of deleted objects' data: within a minute (scripts/services/s3.sh)
rgw_gc_obj_min_wait = 30
rgw_gc_processor_period = 30
rgw_gc_processor_max_time = 30
EOF
}

osd_up() {
  "${CEPH[@]}" osd dump -f json | python3 -c \
    'import json,sys; d=json.load(sys.stdin); sys.exit(0 if [o["up"] for o in d["osds"] if o["osd"]==0]==[1] else 1)'
}

env_lines() {
  echo "ELARA_TEST_S3_ENDPOINT=$ENDPOINT"
  echo "ELARA_TEST_S3_REGION=$REGION"
  echo "ELARA_TEST_S3_ACCESS_KEY=$ACCESS_KEY"
  echo "ELARA_TEST_S3_SECRET_KEY=$SECRET_KEY"
  if [ -x "$DIR/venv/bin/python" ]; then echo "ELARA_TEST_S3_PYTHON=$DIR/venv/bin/python"; fi
}

start() {
  mkdir -p "$DIR"/{run,log,data}
  if running_pid rgw.a >/dev/null && gateway_answers; then
    env_lines | tee "$DIR/s3.env"
    return 0
  fi
  install_if_missing
  if ! running_pid mon.a >/dev/null && gateway_answers; then
    log "something else already answers on $ENDPOINT; stop it or set S3_PORT"
    return 1
  fi
  [ -f "$CONF" ] || { log "bootstrapping a new one-node Ceph cluster in $DIR"; write_conf; }
  # A cluster bootstrapped by an older version of this script: add the GC settings ([client.rgw.a]
  # is the last section).
  grep -q '^rgw_gc_obj_min_wait' "$CONF" || rgw_gc_conf >>"$CONF"

  launch mon.a ceph-mon -c "$CONF" -i a -f
  wait_for mon.a "the monitor's quorum" "${CEPH[@]}" mon stat

  if [ ! -f "$DIR/data/osd.0/whoami" ]; then
    local uuid id
    uuid=$(cat /proc/sys/kernel/random/uuid)
    id=$("${CEPH[@]}" osd new "$uuid")
    [ "$id" = 0 ] || { log "unexpected OSD id $id"; return 1; }
    mkdir -p "$DIR/data/osd.0"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$DIR/log/mkfs.log" 2>&1
  fi
  launch osd.0 ceph-osd -c "$CONF" -i 0 -f
  wait_for osd.0 "osd.0 up" osd_up

  mkdir -p "$DIR/data/rgw.a"
  launch rgw.a radosgw -c "$CONF" -n client.rgw.a -f
  wait_for rgw.a "the gateway (HTTP 200 on $ENDPOINT/)" gateway_answers

  if ! radosgw-admin -c "$CONF" user info --uid=elara-test >/dev/null 2>&1; then
    radosgw-admin -c "$CONF" user create --uid=elara-test --display-name="Elara tests" \
      --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >/dev/null
  fi
  env_lines | tee "$DIR/s3.env"
}

stop_one() {
  local name=$1 pid
  if pid=$(running_pid "$name"); then
    stop_process "$pid" "s3.sh: $name" "$STOP_TIMEOUT"
  fi
  rm -f "$DIR/run/$name.pid"
}

stop() {
  stop_one rgw.a
  stop_one osd.0
  stop_one mon.a
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status)
    if running_pid rgw.a >/dev/null && gateway_answers; then env_lines; else exit 1; fi
    ;;
  *) usage ;;
esac
