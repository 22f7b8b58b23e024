#!/bin/bash
# Benchmark of the user-space NFS client mounted as FUSE (host/nfs-fuse, `elara-nfs-fuse`) against
# NFS-Ganesha on this machine (scripts/services/nfs.sh, its own instance on ports 2249/20248):
#
#   dd write        1 GiB of random data (from /dev/shm), bs=1M, conv=fsync (the COMMIT counted)
#   dd read warm    the same file after a remount (the client's page cache empty, the server's warm)
#   dd read cold    the same after dropping every page cache (the server reads its disk)
#   fio write/read  sequential 1 MiB blocks, one job (end_fsync); 4 jobs reading 128 KiB at random
#                   places with O_DIRECT (every read goes to the server) for 15 s
#   nfs-cp          libnfs copying the file out (a native user-space client, for comparison)
#
#   bash scripts/bench-nfs-fuse.sh      (root; builds the release binary; installs fio if missing)
# Env: BENCH_MIB (1024).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MIB=${BENCH_MIB:-1024}
WORK=$ROOT/.work/bench-nfs-fuse
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/elara-nfs-fuse
command -v fio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
cargo build --release -q -p elara-nfs-fuse

rm -rf "$WORK" && mkdir -p "$WORK/mnt"
export NFS_PORT=${NFS_PORT:-2249} NFS_MOUNT_PORT=${NFS_MOUNT_PORT:-20248}
eval "$(bash scripts/services/nfs.sh start "$WORK/nfs" | sed 's/^/export /')"
HELPER=
RAND=/dev/shm/bench-nfs-fuse.$$
unmount() {
  if [ -n "$HELPER" ]; then
    kill -TERM "$HELPER" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$HELPER" 2>/dev/null || break; sleep 0.05; done
    HELPER=
  fi
}
cleanup() {
  unmount
  grep -q " $WORK/mnt " /proc/self/mountinfo && umount -l "$WORK/mnt" || true
  rm -f "$RAND"
  bash scripts/services/nfs.sh stop "$WORK/nfs" >/dev/null 2>&1 || true
}
trap cleanup EXIT
mount_it() {
  setsid "$BIN" "$ELARA_TEST_NFS_SERVER" "$ELARA_TEST_NFS_EXPORT/bench" "$WORK/mnt" \
    --mount-port "$ELARA_TEST_NFS_MOUNT_PORT" >>"$WORK/helper.log" 2>&1 </dev/null &
  HELPER=$!
  for _ in $(seq 400); do grep -q " $WORK/mnt .* fuse.elara-nfs " /proc/self/mountinfo && return 0; sleep 0.025; done
  echo "no mount; log:" >&2; tail -20 "$WORK/helper.log" >&2; exit 1
}
mkdir -p "$ELARA_TEST_NFS_DIR/bench"
head -c "${MIB}M" /dev/urandom >"$RAND"

rate() { echo "$MIB / $1" | bc -l; }
timed() {   # timed NAME CMD...
  local s e; s=$(date +%s.%N)
  "${@:2}" >"$WORK/step.log" 2>&1 || { echo "$1: failed:" >&2; cat "$WORK/step.log" >&2; exit 1; }
  e=$(date +%s.%N)
  printf '%-34s %7.2f s  %7.1f MiB/s\n' "$1" "$(echo "$e - $s" | bc)" "$(rate "$(echo "$e - $s" | bc)")"
}
fio_mib() {   # fio_mib NAME ARGS...: fio's own bandwidth figure
  local out bw
  out=$(fio --output-format=json "${@:2}")
  bw=$(echo "$out" | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"]; print(sum(x["read"]["bw_bytes"]+x["write"]["bw_bytes"] for x in j)/1048576)')
  printf '%-34s %18.1f MiB/s\n' "$1" "$bw"
}

echo "elara-nfs-fuse against ganesha on 127.0.0.1:$NFS_PORT, ${MIB} MiB"
mount_it
timed "dd write (bs=1M, conv=fsync)" dd if="$RAND" of="$WORK/mnt/f" bs=1M conv=fsync
cmp "$RAND" "$ELARA_TEST_NFS_DIR/bench/f" || { echo "the server's file differs" >&2; exit 1; }
unmount; mount_it
timed "dd read (remounted, server warm)" dd if="$WORK/mnt/f" of=/dev/null bs=1M
unmount; sync; echo 3 >/proc/sys/vm/drop_caches; mount_it
timed "dd read (all caches dropped)" dd if="$WORK/mnt/f" of=/dev/null bs=1M
rm -f "$WORK/mnt/f"
fio_mib "fio seq write 1M (end_fsync)" --name=w --filename="$WORK/mnt/fio" --rw=write --bs=1M --size="${MIB}M" \
  --end_fsync=1 --ioengine=psync
unmount; mount_it
fio_mib "fio seq read 1M" --name=r --filename="$WORK/mnt/fio" --rw=read --bs=1M --size="${MIB}M" --ioengine=psync
unmount; mount_it
fio_mib "fio 4 jobs random read 128k O_DIRECT" --name=rr --filename="$WORK/mnt/fio" --rw=randread --bs=128k \
  --size="${MIB}M" --numjobs=4 --time_based --runtime=15 --direct=1 --ioengine=psync
unmount
URL="nfs://127.0.0.1$ELARA_TEST_NFS_EXPORT/bench/fio?version=3&nfsport=$NFS_PORT&mountport=$NFS_MOUNT_PORT"
rm -f "$RAND"
timed "libnfs nfs-cp out (for comparison)" nfs-cp "$URL" "$RAND"
