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

# The APT source of this release's backports suite (<codename>-backports), made only when no
# configured source names that suite yet: /etc/apt/sources.list.d/elara-backports.sources, with the
# URIs and Signed-By of the configured source of the main archive (the deb822 stanza, or the
# one-line `deb` entry, whose suites include the bare codename), so it uses the same mirror and
# keyring. Then `apt-get update` if APT does not know the suite yet.
elara_backports_source() {
  local codename suite
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || { echo "prereqs: no VERSION_CODENAME in /etc/os-release" >&2; return 1; }
  suite=$codename-backports
  local f lists=() stanzas=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do [ -f "$f" ] && lists+=("$f"); done
  for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && stanzas+=("$f"); done
  if ! cat /dev/null "${lists[@]}" "${stanzas[@]}" | grep -v '^[[:space:]]*#' \
      | grep -E -- "(^|[[:space:]])$suite([[:space:]]|\$)" >/dev/null; then
    local found
    # deb822 first: stanzas split by blank lines; the first of Types deb whose Suites has the
    # codename gives its URIs and Signed-By fields verbatim (continuation lines too: a key block).
    found=$(awk -v want="$codename" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uris != "" && !done) { printf "%s%s", uris, signed; done = 1 }
        types = suites = uris = signed = ""; key = "" }
      /^#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]/ { if (key == "Signed-By") signed = signed $0 "\n"; next }
      { key = $1; sub(/:$/, "", key); val = $0; sub(/^[^:]*:[[:space:]]*/, "", val)
        if (key == "Types") types = val; else if (key == "Suites") suites = val
        else if (key == "URIs") uris = $0 "\n"; else if (key == "Signed-By") signed = $0 "\n" }
      END { flush() }' /dev/null "${stanzas[@]}")
    if [ -z "$found" ]; then
      # One-line form: deb [signed-by=KEY ...] URI SUITE COMPONENT...
      found=$(cat /dev/null "${lists[@]}" | grep -v '^[[:space:]]*#' | awk -v want="$codename" '
        $1 == "deb" { signed = ""; i = 2
          if ($2 ~ /^\[/) { while (i <= NF) { if ($i ~ /^\[?signed-by=/) { signed = $i; sub(/^\[?signed-by=/, "", signed); sub(/\]$/, "", signed) }
                                            if ($i ~ /\]$/) { i++; break }; i++ } }
          if ($(i + 1) == want) { print "URIs: " $i; if (signed != "") print "Signed-By: " signed; exit } }')
    fi
    [ -n "$found" ] || { echo "prereqs: no APT source of the $codename main archive to base $suite on" >&2; return 1; }
    echo "prereqs: adding the APT source $suite (/etc/apt/sources.list.d/elara-backports.sources)"
    printf '# Made by Elara (scripts/lib/prereqs.sh, elara_backports_source): the main archive, suite %s.\nTypes: deb\n%s\nSuites: %s\nComponents: main\n' \
      "$suite" "$found" "$suite" >/etc/apt/sources.list.d/elara-backports.sources.tmp
    mv /etc/apt/sources.list.d/elara-backports.sources.tmp /etc/apt/sources.list.d/elara-backports.sources
    unset ELARA_APT_UPDATED
  fi
  local policy
  policy=$(apt-cache policy 2>/dev/null || true)
  if [[ $policy != *" $suite/"* ]]; then
    apt-get update -qq
    export ELARA_APT_UPDATED=1
  fi
}

# elara_backports_install PKG[=VERSION]...: install from <codename>-backports what is missing (not
# installed, or installed at another VERSION), adding that suite's APT source first when needed.
elara_backports_install() {
  local missing=() spec name want have
  for spec in "$@"; do
    name=${spec%%=*}; want=; [ "$spec" != "$name" ] && want=${spec#*=}
    have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null | sed -n 's/^install ok installed //p')
    if [ -z "$have" ] || { [ -n "$want" ] && [ "$have" != "$want" ]; }; then missing+=("$spec"); fi
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  elara_backports_source
  local suite
  suite=$(. /etc/os-release && echo "$VERSION_CODENAME")-backports
  echo "prereqs: installing ${missing[*]} from $suite"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t "$suite" "${missing[@]}" >/dev/null
}

# elara_user_iscsi: the daemon's user-space iSCSI initiator: qemu-storage-daemon (qemu-utils)
# with qemu's iSCSI block driver (qemu-block-extra, from bookworm-backports at the version of the
# installed qemu-utils, which is from there too on this project's machines). Checked: qemu knows
# driver=iscsi afterwards.
elara_user_iscsi() {
  local qemu probe
  qemu=$(dpkg-query -W -f='${Status} ${Version}' qemu-utils 2>/dev/null | sed -n 's/^install ok installed //p')
  if [ -n "$qemu" ]; then
    elara_backports_install "qemu-block-extra=$qemu"
  else
    elara_backports_install qemu-utils qemu-block-extra
  fi
  # Without qemu-block-extra's block-iscsi.so: "Parameter 'driver' does not accept value 'iscsi'".
  probe=$(qemu-storage-daemon --blockdev driver=iscsi,node-name=probe 2>&1 || true)
  if ! grep -q "Parameter 'transport' is missing" <<<"$probe"; then
    echo "prereqs: qemu has no iSCSI block driver after installing qemu-block-extra: $probe" >&2
    return 1
  fi
}

elara_prereqs() {
  # protoc: etcd-client's build; e2fsprogs/xfsprogs: mkfs (and debugfs, which the tests read
  # images with); util-linux: losetup, fsfreeze, blkid; qemu: the user-space iSCSI initiator.
  elara_apt_install protobuf-compiler e2fsprogs xfsprogs util-linux mount
  elara_user_iscsi
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "prereqs: adding the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2 >/dev/null
  fi
}
