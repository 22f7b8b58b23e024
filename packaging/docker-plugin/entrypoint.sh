#!/bin/sh
# The managed plugin's entrypoint. Docker passes every env the plugin declares, empty ones too;
# an empty ELARA_STORE or ELARA_NODE means "use the default" (the embedded store in the data dir,
# the host name), so unset those before starting the daemon.
for v in ELARA_STORE ELARA_NODE; do
  eval "[ -n \"\${$v}\" ] || unset $v"
done
exec /usr/local/bin/elara --socket /run/elara/elara.sock daemon \
  --data-dir /var/lib/elara --plugin-dir /run/docker/plugins "$@"
