#!/bin/bash
# Build Elara's managed Docker plugin (plugin v2) from this checkout, and optionally install it,
# without a registry:
#
#   bash packaging/docker-plugin/build.sh OUT_DIR                 # OUT_DIR/config.json + OUT_DIR/rootfs
#   bash packaging/docker-plugin/build.sh --install NAME OUT_DIR  # ... then docker plugin create NAME
#                                                                 # OUT_DIR and docker plugin enable NAME
#
# The rootfs holds the elara binary ($ELARA_BIN, default target/release/elara, built if missing),
# the built-in drivers ($ELARA_DRIVERS_DIR, default target/drivers, built if missing) and the host
# tools the attach layer runs (losetup, mount, mkfs.ext4, mkfs.xfs, ...) with the shared
# libraries they need, copied from this machine. The docker CLI talks to $DOCKER_HOST.
# Settings after install: `docker plugin set NAME ELARA_STORE=etcd://h1:2379` (plugin disabled).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

INSTALL=""
if [ "${1:-}" = "--install" ]; then
  INSTALL=${2:?usage: $0 [--install NAME] OUT_DIR}
  shift 2
fi
OUT=${1:?usage: $0 [--install NAME] OUT_DIR}

BIN=${ELARA_BIN:-$ROOT/target/release/elara}
DRIVERS=${ELARA_DRIVERS_DIR:-$ROOT/target/drivers}
if [ ! -x "$BIN" ]; then
  echo "build.sh: building the release daemon" >&2
  (cd "$ROOT" && cargo build --release -p elara)
  BIN=$ROOT/target/release/elara
fi
if [ ! -f "$DRIVERS/local.wasm" ]; then
  echo "build.sh: building the drivers" >&2
  bash "$ROOT/scripts/build-drivers.sh" "$DRIVERS"
fi

# The tools the attach layer runs (host/elara/src/attach, ops): required, and optional ones
# (s3fs for S3 volumes) copied only when this machine has them.
REQUIRED=(losetup mount umount blkid blockdev mkfs.ext4 mke2fs e2fsck dumpe2fs resize2fs mkfs.xfs xfs_growfs fsfreeze)
OPTIONAL=(s3fs mount.nfs modprobe)

source "$ROOT/scripts/lib/prereqs.sh"
elara_apt_install e2fsprogs xfsprogs util-linux mount busybox-static

ROOTFS=$OUT/rootfs
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"/{usr/local/bin,usr/local/lib/elara/drivers,usr/sbin,usr/bin,etc,tmp,run/docker/plugins,run/elara,var/lib/elara/mounts,proc,sys,dev}
chmod 1777 "$ROOTFS/tmp"
# usrmerge layout, as on Debian 12.
ln -s usr/bin "$ROOTFS/bin"
ln -s usr/sbin "$ROOTFS/sbin"
ln -s usr/lib "$ROOTFS/lib"
ln -s usr/lib64 "$ROOTFS/lib64"

install -m 0755 "$BIN" "$ROOTFS/usr/local/bin/elara"
install -m 0755 "$HERE/entrypoint.sh" "$ROOTFS/usr/local/bin/entrypoint.sh"
# /bin/sh for the entrypoint: busybox-static, no libraries.
install -m 0755 /bin/busybox "$ROOTFS/usr/bin/busybox"
ln -s busybox "$ROOTFS/usr/bin/sh"
install -m 0644 "$DRIVERS"/*.wasm "$ROOTFS/usr/local/lib/elara/drivers/"

# Copy a file to the same path under the rootfs (following usrmerge: /lib → /usr/lib).
copy_path() {
  local src=$1 real dst
  real=$(readlink -f "$src")
  dst=$src
  case "$dst" in /lib/* | /lib64/* | /bin/* | /sbin/*) dst=/usr$dst ;; esac
  [ -e "$ROOTFS$dst" ] && return 0
  mkdir -p "$(dirname "$ROOTFS$dst")"
  cp -L "$real" "$ROOTFS$dst"
}

# Every shared library a program loads (ldd), the dynamic loader included.
copy_libs() {
  ldd "$1" 2>/dev/null | awk '/=>/ {print $3} !/=>/ && /^\t\// {print $1}' | while read -r lib; do
    [ -n "$lib" ] && [ -e "$lib" ] && copy_path "$lib"
  done
}

# A program at its own path, and its libraries.
copy_program() {
  copy_path "$1"
  copy_libs "$1"
}

copy_libs "$BIN"
for t in "${REQUIRED[@]}"; do
  p=$(command -v "$t") || { echo "build.sh: $t is missing on this machine" >&2; exit 1; }
  copy_program "$p"
done
for t in "${OPTIONAL[@]}"; do
  p=$(command -v "$t" 2>/dev/null) && copy_program "$p" || true
done
# libblkid and friends load nothing else at run time; mkfs reads its defaults from mke2fs.conf.
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$ROOTFS/etc/"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOTFS/etc/passwd"
printf 'root:x:0:\n' >"$ROOTFS/etc/group"
: >"$ROOTFS/etc/hosts"
: >"$ROOTFS/etc/resolv.conf"
: >"$ROOTFS/etc/hostname"

# CAP_SYS_RESOURCE lets ext4 grow online; a plugin asking for a capability the machine lacks
# fails to start ("unable to apply caps"), so it is added only where dockerd's host has it.
# Without it a grown ext4 volume is grown offline at its next mount.
python3 - "$HERE/config.json" "$OUT/config.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
bnd = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("CapBnd:")), 16)
if bnd & (1 << 24):
    cfg["linux"]["capabilities"].append("CAP_SYS_RESOURCE")
json.dump(cfg, open(sys.argv[2], "w"), indent=2)
PY
echo "build.sh: plugin in $OUT ($(du -sh "$ROOTFS" | cut -f1) rootfs)"

if [ -n "$INSTALL" ]; then
  if docker plugin inspect "$INSTALL" >/dev/null 2>&1; then
    docker plugin disable -f "$INSTALL" >/dev/null 2>&1 || true
    docker plugin rm -f "$INSTALL" >/dev/null
  fi
  docker plugin create "$INSTALL" "$OUT" >/dev/null
  docker plugin enable "$INSTALL" >/dev/null
  echo "build.sh: installed and enabled $INSTALL; try: docker volume create -d $INSTALL -o size=1G demo"
fi
