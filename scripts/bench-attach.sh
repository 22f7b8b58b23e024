#!/bin/bash
# The data paths side by side, in one run, with fio (1 GiB per test; sequential 1 MiB and random
# 4 KiB, write and read) on volumes mounted by a real Elara daemon (release build, embedded store):
#
#   local        an image file on the data dir's file system → loop → ext4 (the anchor)
#   iscsi-user   a Cinder volume (backend `lun`) → tgt LUN → qemu-storage-daemon (libiscsi) →
#                FUSE export → loop → ext4
#   lun-file     the same LUN's backing file, read directly on the target's disk (no iSCSI)
#   nfs-user     an nfs volume → `elara nfs-fuse` (NFSv3 over FUSE) → NFS-Ganesha
#   nfs-cp       libnfs's nfs-cp of the same 1 GiB file out of and into the export (a native
#                user-space client, sequential only)
#
# Goals (issue 14): iscsi-user sequential ≥ 50 % of local; nfs-user ≥ 200 MiB/s sequential
# write and read. Printed as a table; nothing is asserted.
#
#   bash scripts/bench-attach.sh        (root; starts what it needs: the Cinder stack with tgt and
#                                        ganesha, like scripts/test.sh; installs fio if missing)
# Env: BENCH_MIB (1024), BENCH_RUNTIME (seconds per random test, 15).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MIB=${BENCH_MIB:-1024}
RUNTIME=${BENCH_RUNTIME:-15}
WORK=$ROOT/.work/bench-attach
source scripts/lib/prereqs.sh
elara_prereqs
elara_apt_install fio libnfs-utils python3
bash scripts/build-drivers.sh "$ROOT/target/drivers" >/dev/null
cargo build --release -q -p elara
BIN=$ROOT/target/release/elara

# Services (reused when already up).
eval "$(bash scripts/services/cinder.sh start "$ROOT/.work/cinder" | grep -E '^[A-Z_]+=' | sed 's/^/export /')"
eval "$(bash scripts/services/nfs.sh start "$ROOT/.work/nfs" | grep -E '^[A-Z_]+=' | sed 's/^/export /')"

rm -rf "$WORK" && mkdir -p "$WORK"
SOCK=$WORK/elara.sock
DAEMON=
cleanup() {
  if [ -n "$DAEMON" ]; then
    for v in b-local b-iscsi b-nfs; do "$BIN" --socket "$SOCK" volume unmount "$v" >/dev/null 2>&1 || true; done
    for v in b-local b-iscsi b-nfs; do "$BIN" --socket "$SOCK" volume delete "$v" >/dev/null 2>&1 || true; done
    kill -TERM "$DAEMON" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
  fi
  rm -rf "${ELARA_TEST_NFS_DIR:?}/elara-bench-attach"
}
trap cleanup EXIT
"$BIN" --socket "$SOCK" daemon --data-dir "$WORK/data" --plugin-dir none --drivers-dir "$ROOT/target/drivers" \
  --node bench >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 600); do "$BIN" --socket "$SOCK" info >/dev/null 2>&1 && break; sleep 0.05; done
e() { "$BIN" --socket "$SOCK" "$@"; }
e backend add cinder1 --driver cinder --config "endpoint=$ELARA_TEST_CINDER" --config auth=noauth \
  --config "project_id=$ELARA_TEST_CINDER_PROJECT" --config tag=bench-attach --config "volume_type=$ELARA_TEST_CINDER_LUN_TYPE" \
  --allow-host "$(echo "${ELARA_TEST_CINDER#http://}" | cut -d/ -f1)" --allow-host "$ELARA_TEST_TGT_PORTAL" >/dev/null
NFS_HOST=${ELARA_TEST_NFS_SERVER%%:*}
e backend add nfs1 --driver nfs --config "server=$ELARA_TEST_NFS_SERVER" --config "export=$ELARA_TEST_NFS_EXPORT" \
  --config path=elara-bench-attach --config "mount_port=$ELARA_TEST_NFS_MOUNT_PORT" --allow-host "$NFS_HOST" >/dev/null
SIZE=$(( (MIB * 2 + 1023) / 1024 ))G
e volume create b-local --size "$SIZE" >/dev/null
e volume create b-iscsi --backend cinder1 --size "$SIZE" >/dev/null
e volume create b-nfs --backend nfs1 --size "$SIZE" >/dev/null
MP_LOCAL=$(e volume mount b-local)
MP_ISCSI=$(e volume mount b-iscsi)
MP_NFS=$(e volume mount b-nfs)
LUN=$ELARA_TEST_TGT_LUNS/volume-$(e -o json volume inspect b-iscsi | python3 -c 'import json,sys; print(json.load(sys.stdin)["backend_ref"])').img
NFS_ID=$(e -o json volume inspect b-nfs | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

# fio JOB FILE EXTRA...: one job, its JSON summary appended to $WORK/results.jsonl with a label.
run_fio() {
  local label=$1 test=$2 file=$3; shift 3
  sync; echo 3 >/proc/sys/vm/drop_caches
  fio --name="$label-$test" --filename="$file" --size="${MIB}M" --output-format=json "$@" >"$WORK/fio.json" 2>"$WORK/fio.err" || {
    echo "fio $label $test failed: $(tail -3 "$WORK/fio.err")" >&2; echo "{\"label\":\"$label\",\"test\":\"$test\",\"error\":true}" >>"$WORK/results.jsonl"; return 0; }
  python3 - "$label" "$test" "$WORK/fio.json" >>"$WORK/results.jsonl" <<'PY'
import json, sys
label, test, path = sys.argv[1:]
job = json.load(open(path))["jobs"][0]
side = job["write"] if job["write"]["io_bytes"] else job["read"]
print(json.dumps({"label": label, "test": test, "mibs": side["bw_bytes"] / 2**20, "iops": side["iops"]}))
PY
}
: >"$WORK/results.jsonl"
SEQW=(--rw=write --bs=1M --ioengine=psync --end_fsync=1)
SEQR=(--rw=read --bs=1M --ioengine=psync)
RNDW=(--rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 --direct=1 --time_based --runtime="$RUNTIME")
RNDR=(--rw=randread --bs=4k --ioengine=libaio --iodepth=16 --direct=1 --time_based --runtime="$RUNTIME")
for target in "local:$MP_LOCAL" "iscsi-user:$MP_ISCSI" "nfs-user:$MP_NFS"; do
  label=${target%%:*} dir=${target#*:}
  echo "bench: $label" >&2
  run_fio "$label" seq-write "$dir/bench" "${SEQW[@]}"
  run_fio "$label" seq-read "$dir/bench" "${SEQR[@]}"
  run_fio "$label" rand-write "$dir/bench" "${RNDW[@]}"
  run_fio "$label" rand-read "$dir/bench" "${RNDR[@]}"
done
# The LUN's backing file holds ext4 now: read it directly (read only; never write under a mount).
echo "bench: lun-file" >&2
run_fio lun-file seq-read "$LUN" "${SEQR[@]}" --readonly
run_fio lun-file rand-read "$LUN" "${RNDR[@]}" --readonly
# nfs-cp of the file the nfs-user tests left, out of the export and back in.
echo "bench: nfs-cp" >&2
URL="nfs://$NFS_HOST$ELARA_TEST_NFS_EXPORT/elara-bench-attach/volumes/$NFS_ID"
Q="?version=3&nfsport=${ELARA_TEST_NFS_SERVER##*:}&mountport=$ELARA_TEST_NFS_MOUNT_PORT"
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); python3 -c "print($MIB / ($t1 - $t0))"; }
sync; echo 3 >/proc/sys/vm/drop_caches
r=$(timed nfs-cp "$URL/bench$Q" "/dev/shm/bench-attach.$$")
w=$(timed nfs-cp "/dev/shm/bench-attach.$$" "$URL/bench-copy$Q")
rm -f "/dev/shm/bench-attach.$$"
printf '{"label":"nfs-cp","test":"seq-read","mibs":%s}\n{"label":"nfs-cp","test":"seq-write","mibs":%s}\n' "$r" "$w" >>"$WORK/results.jsonl"

python3 - "$WORK/results.jsonl" "$MIB" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
get = lambda label, test, key: next((r.get(key) for r in rows if r["label"] == label and r["test"] == test and not r.get("error")), None)
fmt = lambda v, unit: "-" if v is None else (f"{v:8.1f} MiB/s" if unit == "mibs" else f"{v:8.0f} IOPS")
print(f"\nfio, {sys.argv[2]} MiB; sequential 1 MiB (psync), random 4 KiB (libaio, depth 16, O_DIRECT)\n")
print(f"{'path':<12} {'seq write':>15} {'seq read':>15} {'rand write':>13} {'rand read':>13}")
for label in ["local", "iscsi-user", "lun-file", "nfs-user", "nfs-cp"]:
    print(f"{label:<12} {fmt(get(label,'seq-write','mibs'),'mibs'):>15} {fmt(get(label,'seq-read','mibs'),'mibs'):>15} "
          f"{fmt(get(label,'rand-write','iops'),'iops'):>13} {fmt(get(label,'rand-read','iops'),'iops'):>13}")
lw, lr = get("local", "seq-write", "mibs"), get("local", "seq-read", "mibs")
iw, ir = get("iscsi-user", "seq-write", "mibs"), get("iscsi-user", "seq-read", "mibs")
nw, nr = get("nfs-user", "seq-write", "mibs"), get("nfs-user", "seq-read", "mibs")
if None not in (lw, lr, iw, ir):
    print(f"\niscsi-user / local, sequential: write {100*iw/lw:.0f} %, read {100*ir/lr:.0f} % (goal >= 50 %)")
if None not in (nw, nr):
    print(f"nfs-user sequential: write {nw:.0f} MiB/s, read {nr:.0f} MiB/s (goal >= 200 MiB/s)")
PY
