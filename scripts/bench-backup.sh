#!/bin/bash
# Benchmark of block-volume backups, in one run on the same S3 server (Ceph RGW from
# scripts/services/s3.sh) and the same 4 GiB volume image:
#
#   1. full backup          Elara (`elara backup create VOL --target s3`, snapshot included)
#                           vs restic (`restic backup IMAGE`, Debian restic) of the same image file
#   2. incremental backup   after changing 1 % of the image (41 random 1 MiB writes)
#   3. restore              of the incremental into a new volume / a directory (restic 0.14 has no --sparse),
#                           both checked byte-identical to the source afterwards (not timed)
#
#   bash scripts/bench-backup.sh        (root; installs restic if missing; ~5 min)
#
# Env: BENCH_GIB (4), BENCH_RANDOM_GIB (3: the rest is 512 MiB of compressible text and a hole),
#      BENCH_POOL_FS (xfs: the daemon's data dir, hence the pool and the image both tools read, on a
#      loop-mounted XFS with reflink, where Elara's snapshots are reflinks as on a production node;
#      `dir`: a plain directory of the work tree, where snapshots are sparse copies),
#      ELARA_BENCH_KEEP=1 (leave the work dir and the buckets).
# The page cache is dropped before every timed step (both tools read cold). The Elara binary is
# the dev build (target/debug/elara; blake3 and zstd are optimised in dev builds, see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib/prereqs.sh
elara_apt_install restic

GIB=${BENCH_GIB:-4}
RANDOM_GIB=${BENCH_RANDOM_GIB:-3}
WORK=$ROOT/.work/bench-backup
ELARA=${ELARA_BIN:-$ROOT/target/debug/elara}
DRIVERS=${ELARA_DRIVERS_DIR:-$ROOT/target/drivers}
[ -x "$ELARA" ] || { echo "build first: cargo build -p elara" >&2; exit 1; }
[ -f "$DRIVERS/local.wasm" ] || { echo "build drivers first: scripts/build-drivers.sh" >&2; exit 1; }

# The S3 server (a no-op if it is up), and its env lines.
bash scripts/services/s3.sh start "$ROOT/.work/s3" >/dev/null
set -a; . "$ROOT/.work/s3/s3.env"; set +a

[ -d "$WORK/d" ] && umount "$WORK/d" 2>/dev/null || true
rm -rf "$WORK"; mkdir -p "$WORK/d"
POOL_FS=${BENCH_POOL_FS:-xfs}
if [ "$POOL_FS" = xfs ]; then
  elara_apt_install xfsprogs
  truncate -s "$((GIB * 3 + 2))G" "$WORK/pool.xfs"
  mkfs.xfs -q -m reflink=1 "$WORK/pool.xfs"
  mount -o loop "$WORK/pool.xfs" "$WORK/d"
fi
SOCK=$WORK/elara.sock
DAEMON_PID=
STAMP=$(date +%s)
EB=elara-bench-$STAMP
RB=restic-bench-$STAMP
cleanup() {
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
  if [ -z "${ELARA_BENCH_KEEP:-}" ]; then
    [ "$POOL_FS" = xfs ] && umount "$WORK/d" 2>/dev/null || true
    # Purge both buckets now, bypassing RGW's deferred garbage collection (hours by default): a
    # few runs of deferred deletes fill the test cluster's OSD.
    for b in "$EB" "$RB"; do
      radosgw-admin -c "$ROOT/.work/s3/ceph.conf" bucket rm --bucket="$b" --purge-objects --bypass-gc >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

"$ELARA" -s "$SOCK" daemon --data-dir "$WORK/d" --store "$WORK/d/store.redb" --node bench --drivers-dir "$DRIVERS" \
  --plugin-dir none >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 600); do "$ELARA" -s "$SOCK" node info >/dev/null 2>&1 && break; kill -0 $DAEMON_PID || { cat "$WORK/daemon.log"; exit 1; }; sleep 0.1; done
E() { "$ELARA" -s "$SOCK" "$@"; }

E volume create bench --size "${GIB}G" >/dev/null
IMG=$WORK/d/pools/local/$(E -o json volume inspect bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["backend_ref"])')
echo "writing the ${GIB} GiB image: ${RANDOM_GIB} GiB random, 512 MiB text, the rest a hole ($IMG)"
head -c "$((RANDOM_GIB << 30))" /dev/urandom | dd of="$IMG" bs=4M conv=notrunc,fsync status=none
{ seq 1 100000000 || true; } | head -c $((512 << 20)) | dd of="$IMG" bs=4M seek=$((RANDOM_GIB * 256)) conv=notrunc,fsync status=none
truncate -s "${GIB}G" "$IMG"

E backup target add s3 "s3://$EB/backups" --endpoint "$ELARA_TEST_S3_ENDPOINT" --region "$ELARA_TEST_S3_REGION" \
  --access-key "$ELARA_TEST_S3_ACCESS_KEY" --secret-key "$ELARA_TEST_S3_SECRET_KEY" >/dev/null
export AWS_ACCESS_KEY_ID=$ELARA_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$ELARA_TEST_S3_SECRET_KEY AWS_DEFAULT_REGION=$ELARA_TEST_S3_REGION
export RESTIC_REPOSITORY=s3:$ELARA_TEST_S3_ENDPOINT/$RB RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$WORK/restic-cache
restic init -q >/dev/null

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
# Seconds (3 decimals) of a command's wall time; its output goes to $WORK/last.out.
timed() {
  drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$WORK/last.out" 2>"$WORK/last.err" || { echo "FAILED: $*" >&2; cat "$WORK/last.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l | xargs printf '%.2f'
}

echo "full backups"
E_FULL=$(timed "$ELARA" -s "$SOCK" -o json backup create bench --target s3)
R_FULL=$(timed restic backup -q "$IMG")
echo "  Elara $E_FULL s, restic $R_FULL s"

echo "changing 1 % of the image (41 x 1 MiB)"
python3 - "$IMG" "$GIB" <<'EOF'
import os, random, sys
path, gib = sys.argv[1], int(sys.argv[2])
size = gib << 30
rng = random.Random(42)
with open(path, "r+b") as f:
    for _ in range(size // 100 // (1 << 20)):
        f.seek(rng.randrange(0, size - (1 << 20)))
        f.write(os.urandom(1 << 20))
    f.flush(); os.fsync(f.fileno())
EOF
SUM=$(sha256sum "$IMG" | cut -d' ' -f1)

echo "incremental backups"
E_INCR=$(timed "$ELARA" -s "$SOCK" -o json backup create bench --target s3)
INCR_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/last.out")
E_UPLOADED=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["uploaded_blocks"], "of", d["data_blocks"], "blocks")' "$WORK/last.out")
R_INCR=$(timed restic backup -q "$IMG")
echo "  Elara $E_INCR s, restic $R_INCR s"

echo "restores"
E_REST=$(timed "$ELARA" -s "$SOCK" backup restore "$INCR_ID" --to restored)
R_REST=$(timed restic restore latest -q --target "$WORK/d/restic-restore")
echo "  Elara $E_REST s, restic $R_REST s"

E_SUM=$(sha256sum "$WORK/d/pools/local/$(E -o json volume inspect restored | python3 -c 'import json,sys; print(json.load(sys.stdin)["backend_ref"])')" | cut -d' ' -f1)
R_SUM=$(sha256sum "$WORK/d/restic-restore$IMG" | cut -d' ' -f1)
[ "$E_SUM" = "$SUM" ] || { echo "Elara's restore differs from the source" >&2; exit 1; }
[ "$R_SUM" = "$SUM" ] || { echo "restic's restore differs from the source" >&2; exit 1; }

ratio() { echo "$2 / $1" | bc -l | xargs printf '%.1fx'; }
echo
echo "Backup of a ${GIB} GiB volume image to Ceph RGW on loopback ($(nproc) cores), pool on $POOL_FS; restic $(restic version | cut -d' ' -f2)"
printf '%-34s %10s %10s %16s\n' "" "Elara (s)" "restic (s)" "restic / Elara"
printf '%-34s %10s %10s %16s\n' "full backup" "$E_FULL" "$R_FULL" "$(ratio "$E_FULL" "$R_FULL")"
printf '%-34s %10s %10s %16s\n' "incremental after 1 % change" "$E_INCR" "$R_INCR" "$(ratio "$E_INCR" "$R_INCR")"
printf '%-34s %10s %10s %16s\n' "restore (of the incremental)" "$E_REST" "$R_REST" "$(ratio "$E_REST" "$R_REST")"
echo "Elara's incremental uploaded $E_UPLOADED; both restores byte-identical to the source (sha256 $SUM)"
