#!/bin/bash
# Benchmark of the nfs driver's tree copy (snapshot and create-from-snapshot), in one run on the
# same NFS-Ganesha server (scripts/services/nfs.sh) and the same tree: 1 GiB in 8 random files plus
# 2000 small files. Side by side:
#
#   Elara snapshot           `elara snapshot create` (READs and WRITEs through the driver's sandbox)
#   Elara restore            `elara snapshot restore` (the copy back into a new volume)
#   libnfs nfs-cp            the 8 big files read out and written back through libnfs (the anchor:
#                            a native user-space NFS client, several calls in flight)
#   cp -a on the server      the same tree copied on the server's own disk (no NFS at all)
#
#   bash scripts/bench-nfs.sh          (root; release build of the host)
# Env: BENCH_MIB (1024: the big files' total). The page cache is dropped before every timed step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MIB=${BENCH_MIB:-1024}
WORK=$ROOT/.work/bench-nfs
ELARA=${ELARA_BIN:-$ROOT/target/release/elara}
source scripts/lib/prereqs.sh
elara_prereqs
bash scripts/build-drivers.sh "$ROOT/target/drivers" >/dev/null
[ -x "$ELARA" ] || cargo build --release -p elara

rm -rf "$WORK" && mkdir -p "$WORK"
# Its own server, beside the tests' one on 2049.
export NFS_PORT=${NFS_PORT:-2149} NFS_MOUNT_PORT=${NFS_MOUNT_PORT:-20148}
eval "$(bash scripts/services/nfs.sh start "$WORK/nfs" | sed 's/^/export /')"
DAEMON_PID=
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null || true
  bash scripts/services/nfs.sh stop "$WORK/nfs" >/dev/null 2>&1 || true
}
trap cleanup EXIT

SOCK=$WORK/elara.sock
setsid "$ELARA" daemon -s "$SOCK" --data-dir "$WORK/data" --drivers-dir "$ROOT/target/drivers" \
  --plugin-dir "$WORK/plugins" >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
E=("$ELARA" -s "$SOCK")
for _ in $(seq 200); do "${E[@]}" info >/dev/null 2>&1 && break; sleep 0.05; done
"${E[@]}" backend add nfs --driver nfs --config "server=$ELARA_TEST_NFS_SERVER" --config "export=$ELARA_TEST_NFS_EXPORT" \
  --config "mount_port=$ELARA_TEST_NFS_MOUNT_PORT" --config path=bench --allow-host 127.0.0.1 --call-timeout 30m >/dev/null
"${E[@]}" volume create src --size 20G --backend nfs >/dev/null
id() { "${E[@]}" -o json "$1" inspect "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
SRC=$ELARA_TEST_NFS_DIR/bench/volumes/$(id volume src)
for i in $(seq 0 7); do head -c $((MIB / 8))M /dev/urandom >"$SRC/f$i"; done
mkdir -p "$SRC/small" && for i in $(seq 1 2000); do echo "file $i" >"$SRC/small/s$i"; done
sync

timed() {   # timed NAME CMD...: seconds, cold cache
  sync; echo 3 >/proc/sys/vm/drop_caches
  local s e; s=$(date +%s.%N); "${@:2}" >/dev/null; e=$(date +%s.%N)
  printf '%-28s %8.2f s  %7.1f MiB/s\n' "$1" "$(echo "$e - $s" | bc)" "$(echo "$MIB / ($e - $s)" | bc -l)"
}
nfs_url() { echo "nfs://127.0.0.1$ELARA_TEST_NFS_EXPORT/$1?version=3&nfsport=${ELARA_TEST_NFS_SERVER##*:}&mountport=$ELARA_TEST_NFS_MOUNT_PORT"; }
nfscp_round() {
  local rel=bench/volumes/$(basename "$SRC")
  mkdir -p "$WORK/via-libnfs"
  for i in $(seq 0 7); do nfs-cp "$(nfs_url "$rel/f$i")" "$WORK/via-libnfs/f$i"; done
  for i in $(seq 0 7); do nfs-cp "$WORK/via-libnfs/f$i" "$(nfs_url "bench/nfscp-f$i")"; done
}

echo "tree: $MIB MiB in 8 files + 2000 small files; server: NFS-Ganesha $(ganesha.nfsd -v 2>/dev/null | grep -o 'Release.*' | head -1)"
timed "Elara snapshot" "${E[@]}" snapshot create src --name s1
timed "Elara restore (new volume)" "${E[@]}" snapshot restore s1 --to copy
timed "libnfs nfs-cp out + in" nfscp_round
timed "cp -a on the server's disk" cp -a "$SRC" "$WORK/cp-copy"
diff -r "$SRC" "$ELARA_TEST_NFS_DIR/bench/snapshots/$(id snapshot s1)" >/dev/null && echo "snapshot identical to the source: yes"
diff -r "$SRC" "$ELARA_TEST_NFS_DIR/bench/volumes/$(id volume copy)" >/dev/null && echo "restored volume identical to the source: yes"
