#!/bin/sh
# As the upstream image does: started as root, give /mosquitto (data and log volumes) to
# the mosquitto user, which the broker switches to after reading its configuration.
# Read-only mounts in there (Swarm configs) cannot change owner; that is fine.
set -e
if [ "$(id -u)" = 0 ] && [ -d /mosquitto ]; then
  chown -R mosquitto:mosquitto /mosquitto 2>/dev/null || true
fi
exec "$@"
