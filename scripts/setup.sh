#!/bin/bash
# Build Elara (host and wasm drivers, release) and start the daemon on its embedded defaults.
#   bash scripts/setup.sh            # build, install to /usr/local, start `elara daemon` in the background
# The daemon logs to /var/log/elara.log; stop it with `kill $(cat /run/elara/elara.pid)`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
elara_prereqs

cargo build --release -p elara
bash scripts/build-drivers.sh target/drivers

install -D -m 0755 target/release/elara /usr/local/bin/elara
install -d /usr/local/lib/elara/drivers
install -m 0644 target/drivers/*.wasm /usr/local/lib/elara/drivers/

mkdir -p /run/elara
if [ -f /run/elara/elara.pid ] && kill -0 "$(cat /run/elara/elara.pid)" 2>/dev/null; then
  echo "stopping the running daemon (pid $(cat /run/elara/elara.pid))"
  kill "$(cat /run/elara/elara.pid)"
  for _ in $(seq 100); do kill -0 "$(cat /run/elara/elara.pid)" 2>/dev/null || break; sleep 0.1; done
fi
setsid /usr/local/bin/elara daemon >>/var/log/elara.log 2>&1 </dev/null &
echo $! > /run/elara/elara.pid
for _ in $(seq 300); do
  elara info >/dev/null 2>&1 && break
  kill -0 "$(cat /run/elara/elara.pid)" 2>/dev/null || { tail -20 /var/log/elara.log; echo "elara daemon failed to start"; exit 1; }
  sleep 0.1
done
elara info
echo
echo "elara is running (pid $(cat /run/elara/elara.pid), log /var/log/elara.log). Try: elara volume create demo --size 1G"
