#!/bin/bash
# Benchmark of the s3 driver, in one run on the same S3 server (Ceph RGW from scripts/services/s3.sh):
#
#   1. 256 MiB written, then read, by a container, and the time of a `docker run` that only mounts
#      the volume, through
#        a. an Elara s3 volume          (docker volume create -d <elara> -o backend=s3a)
#        b. s3fs mounted by hand        (same s3fs options as Elara's attach layer; bind-mounted)
#        c. rclone's Docker plugin      (`rclone serve docker`, the plugin S3 users pick today)
#   2. snapshot of a volume of 1 000 objects (Elara: server-side CopyObject of each), against
#      rclone's server-side copy of the same objects, and the restore back into a new volume.
#
#   bash scripts/bench-s3.sh            (root; installs what is missing; ~3 min warm)
#
# Env: BENCH_MIB (256), BENCH_RUNS (3: the median of this many runs is printed),
#      BENCH_OBJECTS (1000), BENCH_OBJECT_KIB (64), ELARA_BENCH_KEEP=1 (leave the work dir).
# Throughput is measured inside the container (`time` around the copy; s3fs and rclone upload on
# close, so a write is timed until the data is in S3). Every read runs on a fresh mount (a new
# container), so no page cache is read. Services are started with readiness checks and stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib/prereqs.sh
elara_prereqs
elara_apt_install s3fs rclone fuse bc

MIB=${BENCH_MIB:-256}
RUNS=${BENCH_RUNS:-3}
OBJECTS=${BENCH_OBJECTS:-1000}
OBJECT_KIB=${BENCH_OBJECT_KIB:-64}
WORK=$ROOT/.work/bench-s3
S3DIR=$ROOT/.work/s3
rm -rf "$WORK" && mkdir -p "$WORK"
ELARA=$ROOT/target/debug/elara
TAG="bench$$"
PLUGIN="elara-$TAG"
RCLONE_PLUGIN="rclone-$TAG"
IMAGE=elara-test/busybox

echo "== build" >&2
bash scripts/build-drivers.sh >/dev/null
cargo build -q -p elara

STARTED_S3=0 ELARA_PID="" RCLONE_PID="" HAND_MNT="$WORK/s3fs-hand"
cleanup() {
  set +e
  if [ -n "${DOCKER_HOST:-}" ]; then
    docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1
    for v in $(docker volume ls -q); do docker volume rm -f "$v" >/dev/null 2>&1; done
  fi
  mountpoint -q "$HAND_MNT" && umount "$HAND_MNT"
  bash scripts/services/docker.sh stop "$WORK/docker" >/dev/null 2>&1
  [ -n "$RCLONE_PID" ] && kill "$RCLONE_PID" 2>/dev/null && wait "$RCLONE_PID" 2>/dev/null
  [ -n "$ELARA_PID" ] && kill "$ELARA_PID" 2>/dev/null && wait "$ELARA_PID" 2>/dev/null
  rm -f "/etc/docker/plugins/$PLUGIN.spec" "/run/docker/plugins/$RCLONE_PLUGIN.sock"
  [ -n "${S3PY:-}" ] && "$S3PY" -c "$BOTO_PURGE" "$TAG" >/dev/null 2>&1
  [ "$STARTED_S3" = 1 ] && bash scripts/services/s3.sh stop "$S3DIR"
  grep -qs "$WORK" /proc/self/mountinfo && awk -v d="$WORK" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  [ -z "${ELARA_BENCH_KEEP:-}" ] && rm -rf "$WORK"
}
trap cleanup EXIT

echo "== services" >&2
bash scripts/services/s3.sh status "$S3DIR" >/dev/null 2>&1 || STARTED_S3=1
eval "$(bash scripts/services/s3.sh start "$S3DIR" | sed 's/^/export /')"
S3PY=$ELARA_TEST_S3_PYTHON
EP=$ELARA_TEST_S3_ENDPOINT
HOSTPORT=${EP#http://}
export AWS_ACCESS_KEY_ID=$ELARA_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$ELARA_TEST_S3_SECRET_KEY
BOTO_PURGE='
import sys, boto3, os
from botocore.client import Config
s3 = boto3.client("s3", endpoint_url=os.environ["ELARA_TEST_S3_ENDPOINT"], region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
for b in s3.list_buckets()["Buckets"]:
    if b["Name"].startswith(sys.argv[1]):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys: s3.delete_objects(Bucket=b["Name"], Delete={"Objects": keys})
        for u in s3.list_multipart_uploads(Bucket=b["Name"]).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=b["Name"], Key=u["Key"], UploadId=u["UploadId"])
        s3.delete_bucket(Bucket=b["Name"])
'
BOTO_MAKE='
import sys, boto3, os
from concurrent.futures import ThreadPoolExecutor
from botocore.client import Config
s3 = boto3.client("s3", endpoint_url=os.environ["ELARA_TEST_S3_ENDPOINT"], region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))
bucket, prefix, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s3.create_bucket(Bucket=bucket)
body = os.urandom(size)
with ThreadPoolExecutor(16) as ex:
    list(ex.map(lambda i: s3.put_object(Bucket=bucket, Key="%sd%02d/f%05d" % (prefix, i % 10, i), Body=body), range(n)))
'
BOTO_COUNT='
import sys, boto3, os
from botocore.client import Config
s3 = boto3.client("s3", endpoint_url=os.environ["ELARA_TEST_S3_ENDPOINT"], region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
n = sum(len(p.get("Contents", [])) for p in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[1], Prefix=sys.argv[2]))
print(n)
'

DOCKER_HOST=$(bash scripts/services/docker.sh start "$WORK/docker" | sed -n 's/^DOCKER_HOST=//p')
export DOCKER_HOST

mkdir -p "$WORK/elara/plugin" /etc/docker/plugins /run/docker/plugins
setsid "$ELARA" -s "$WORK/elara/elara.sock" daemon --data-dir "$WORK/elara" --drivers-dir "$ROOT/target/drivers" \
  --plugin-dir "$WORK/elara/plugin" --node bench >"$WORK/elara.log" 2>&1 </dev/null &
ELARA_PID=$!
E() { "$ELARA" -s "$WORK/elara/elara.sock" "$@"; }
for _ in $(seq 600); do E node info >/dev/null 2>&1 && break; kill -0 "$ELARA_PID" || { cat "$WORK/elara.log"; exit 1; }; sleep 0.05; done
E node info >/dev/null
echo "unix://$WORK/elara/plugin/elara.sock" >"/etc/docker/plugins/$PLUGIN.spec"
E backend add s3a --driver s3 --config "endpoint=$EP" --config "region=$ELARA_TEST_S3_REGION" \
  --config "access_key=$AWS_ACCESS_KEY_ID" --config "secret_key=$AWS_SECRET_ACCESS_KEY" \
  --config "bucket_prefix=$TAG-" --allow-host "$HOSTPORT" >/dev/null

mkdir -p "$WORK/rclone"
# (AWS_CA_BUNDLE, if the machine sets one, makes rclone 1.60's S3 client fail to build: the
# endpoint is plain HTTP on loopback anyway.)
env -u AWS_CA_BUNDLE setsid rclone serve docker --base-dir "$WORK/rclone" --socket-addr "/run/docker/plugins/$RCLONE_PLUGIN.sock" \
  --config /dev/null >"$WORK/rclone.log" 2>&1 </dev/null &
RCLONE_PID=$!
for _ in $(seq 600); do [ -S "/run/docker/plugins/$RCLONE_PLUGIN.sock" ] && break; kill -0 "$RCLONE_PID" || { cat "$WORK/rclone.log"; exit 1; }; sleep 0.05; done
[ -S "/run/docker/plugins/$RCLONE_PLUGIN.sock" ]

# The payload: random bytes, so nothing on the way can compress or dedupe them.
head -c "$((MIB << 20))" /dev/urandom >"$WORK/payload.bin"

now() { date +%s.%N; }
# `time` output of busybox ("real\t0m 1.23s") → seconds
real_secs() { sed -n 's/^real[[:space:]]*\([0-9]*\)m \([0-9.]*\)s$/\1 \2/p' | awk '{printf "%.3f", $1 * 60 + $2}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
# run VOLSPEC SCRIPT → prints "<in-container seconds of the timed part> <docker run wall seconds>"
run() {
  local spec=$1 script=$2 t0 out
  t0=$(now)
  out=$(docker run --rm -v "$spec" -v "$WORK/payload.bin:/payload.bin:ro" "$IMAGE" sh -c "$script" 2>&1) || { echo "$out" >&2; return 1; }
  echo "$(echo "$out" | real_secs) $(echo "$(now) - $t0" | bc)"
}
WRITE='time cp /payload.bin /data/big'
READ='time cat /data/big >/dev/null'
NOOP='time true'

# one_run NAME I: on a fresh volume of NAME (NAME_make/_spec/_drop), write, read (a new container,
# so a fresh mount), then a container that only mounts; results appended to $WORK/NAME.{w,r,n}.
one_run() {
  local name=$1 i=$2 w ws r rs ns
  "${name}_make" "$i"
  read -r w ws <<<"$(run "$("${name}_spec" "$i")" "$WRITE")"
  "${name}_between" "$i"
  read -r r rs <<<"$(run "$("${name}_spec" "$i")" "$READ")"
  read -r _ ns <<<"$(run "$("${name}_spec" "$i")" "$NOOP")"
  echo "$w $ws" >>"$WORK/$name.w"; echo "$r $rs" >>"$WORK/$name.r"; echo "$ns" >>"$WORK/$name.n"
  "${name}_drop" "$i"
  echo "   $name run $i: write ${w}s (docker run ${ws}s), read ${r}s (docker run ${rs}s), mount-only docker run ${ns}s" >&2
}
# summary NAME → "write-MiB/s read-MiB/s write-run-s read-run-s mount-only-run-s" (medians)
summary() {
  local name=$1 w ws r rs n
  w=$(cut -d' ' -f1 "$WORK/$name.w" | median); ws=$(cut -d' ' -f2 "$WORK/$name.w" | median)
  r=$(cut -d' ' -f1 "$WORK/$name.r" | median); rs=$(cut -d' ' -f2 "$WORK/$name.r" | median)
  n=$(median <"$WORK/$name.n")
  echo "$(echo "scale=1; $MIB / $w" | bc) $(echo "scale=1; $MIB / $r" | bc) $ws $rs $n"
}

# a. Elara
elara_make() { docker volume create -d "$PLUGIN" -o backend=s3a -o size=1G "ev$1" >/dev/null; }
elara_spec() { echo "ev$1:/data"; }
elara_drop() { docker volume rm "ev$1" >/dev/null; }
elara_between() { :; }
# b. s3fs by hand, with the options of Elara's attach layer; remounted between runs so reads are cold.
echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" >"$WORK/s3fs.passwd"; chmod 600 "$WORK/s3fs.passwd"
mkdir -p "$HAND_MNT"
hand_mount() {
  mountpoint -q "$HAND_MNT" && umount "$HAND_MNT"
  s3fs "$TAG-hand$1" "$HAND_MNT" -o "passwd_file=$WORK/s3fs.passwd,url=$EP,endpoint=$ELARA_TEST_S3_REGION,allow_other,mp_umask=0000,use_path_request_style"
  for _ in $(seq 200); do mountpoint -q "$HAND_MNT" && break; sleep 0.05; done
}
hand_make() { "$S3PY" -c 'import boto3,os,sys
from botocore.client import Config
boto3.client("s3", endpoint_url=os.environ["ELARA_TEST_S3_ENDPOINT"], region_name="us-east-1", config=Config(s3={"addressing_style": "path"})).create_bucket(Bucket=sys.argv[1])' "$TAG-hand$1"; hand_mount "$1"; }
hand_spec() { echo "$HAND_MNT:/data"; }
hand_drop() { umount "$HAND_MNT"; }
hand_between() { hand_mount "$1"; }   # remount: the read starts cold, as on a fresh Elara mount
# c. rclone serve docker, its default settings (--vfs-cache-mode off).
rclone_make() {
  docker volume create -d "$RCLONE_PLUGIN" -o type=s3 -o s3-provider=Ceph -o "s3-endpoint=$EP" \
    -o "s3-access-key-id=$AWS_ACCESS_KEY_ID" -o "s3-secret-access-key=$AWS_SECRET_ACCESS_KEY" \
    -o "s3-region=$ELARA_TEST_S3_REGION" -o "path=$TAG-rclone$1" "rv$1" >/dev/null
}
rclone_spec() { echo "rv$1:/data"; }
rclone_drop() { docker volume rm "rv$1" >/dev/null; }
rclone_between() { :; }

echo "== 1. ${MIB} MiB write/read through a container, median of $RUNS" >&2
# The three take turns, in a rotating order, so a drift in the machine's load hits them alike.
SYSTEMS=(elara hand rclone)
for i in $(seq "$RUNS"); do
  for k in 0 1 2; do one_run "${SYSTEMS[$(( (i - 1 + k) % 3 ))]}" "$i"; done
done
declare -A RESULT
for name in "${SYSTEMS[@]}"; do RESULT[$name]=$(summary "$name"); done

echo "== 2. snapshot of a volume of $OBJECTS objects of $OBJECT_KIB KiB" >&2
E volume create snapv --backend s3a --size 1G >/dev/null
VID=$(E -o json volume inspect snapv | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$S3PY" -c "$BOTO_MAKE" "$TAG-v-$VID" "" "$OBJECTS" "$((OBJECT_KIB << 10))"
t0=$(now); E snapshot create snapv --name snap1 >/dev/null; SNAP=$(echo "$(now) - $t0" | bc)
SID=$(E -o json snapshot inspect snap1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
COPIED=$("$S3PY" -c "$BOTO_COUNT" "$TAG-s-$SID" "")
[ "$COPIED" = "$OBJECTS" ] || { echo "the snapshot holds $COPIED objects, not $OBJECTS" >&2; exit 1; }
t0=$(now); E snapshot restore snap1 --to restored >/dev/null; RESTORE=$(echo "$(now) - $t0" | bc)
RCL=(--s3-provider Ceph --s3-endpoint "$EP" --s3-access-key-id "$AWS_ACCESS_KEY_ID" --s3-secret-access-key "$AWS_SECRET_ACCESS_KEY" --s3-region "$ELARA_TEST_S3_REGION")
t0=$(now); env -u AWS_CA_BUNDLE rclone copy "${RCL[@]}" --config /dev/null ":s3:$TAG-v-$VID" ":s3:$TAG-rclone-copy" 2>>"$WORK/rclone.log"; RCOPY=$(echo "$(now) - $t0" | bc)
RCOPIED=$("$S3PY" -c "$BOTO_COUNT" "$TAG-rclone-copy" "")
[ "$RCOPIED" = "$OBJECTS" ] || { echo "rclone copied $RCOPIED objects, not $OBJECTS" >&2; exit 1; }

echo
echo "s3 benchmark — Ceph RGW 16.2 on 127.0.0.1, $(nproc) cores; ${MIB} MiB of random data, median of $RUNS runs"
printf '%-34s %12s %12s %14s %14s %16s\n' "through" "write MiB/s" "read MiB/s" "write run (s)" "read run (s)" "mount-only run (s)"
for k in elara hand rclone; do
  read -r w r ws rs n <<<"${RESULT[$k]}"
  case $k in
    elara) label="Elara s3 volume (s3fs)";;
    hand) label="s3fs mounted by hand (bind)";;
    rclone) label="rclone serve docker (vfs off)";;
  esac
  printf '%-34s %12s %12s %14.2f %14.2f %16.2f\n' "$label" "$w" "$r" "$ws" "$rs" "$n"
done
echo
printf '%-52s %10s\n' "$OBJECTS objects of $OBJECT_KIB KiB" "seconds"
printf '%-52s %10.2f\n' "Elara snapshot create (server-side CopyObject)" "$SNAP"
printf '%-52s %10.2f\n' "Elara snapshot restore to a new volume" "$RESTORE"
printf '%-52s %10.2f\n' "rclone copy bucket→bucket (server-side, 4 transfers)" "$RCOPY"
