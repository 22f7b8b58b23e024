#!/bin/bash
# Install what building and running Elara needs, only where missing (a warm machine is fast).
# Sourced by scripts/setup.sh and scripts/test.sh. Debian 12, root.
set -euo pipefail

elara_apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "prereqs: installing ${missing[*]}"
    if [ -z "${ELARA_APT_UPDATED:-}" ]; then apt-get update -qq; export ELARA_APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

elara_prereqs() {
  # protoc: etcd-client's build; e2fsprogs/xfsprogs: mkfs; util-linux: losetup, fsfreeze, blkid.
  elara_apt_install protobuf-compiler e2fsprogs xfsprogs util-linux mount
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "prereqs: adding the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2 >/dev/null
  fi
}
