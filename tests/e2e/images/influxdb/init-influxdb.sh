#!/bin/bash
# First-start initialisation, as the upstream influxdb:1.8 image does it: only when the
# meta folder does not exist yet and there is something to do (INFLUXDB_DB, or files in
# /docker-entrypoint-initdb.d). A temporary influxd listens on 127.0.0.1 only, so no
# client sees a half-initialised database; it is stopped before the real server starts.
set -euo pipefail

META_DIR=${INFLUXDB_META_DIR:-/var/lib/influxdb/meta}
[[ -d $META_DIR ]] && exit 0
shopt -s nullglob
scripts=(/docker-entrypoint-initdb.d/*)
[[ -n ${INFLUXDB_DB:-} || ${#scripts[@]} -gt 0 ]] || exit 0

# Read by the init scripts (the upstream image sets the same name).
INFLUXDB_INIT_PORT=8086
echo "init-influxdb: initialising an empty data volume"
INFLUXDB_HTTP_BIND_ADDRESS=127.0.0.1:$INFLUXDB_INIT_PORT INFLUXDB_HTTP_HTTPS_ENABLED=false influxd "$@" &
server=$!
influx_cmd() { influx -host 127.0.0.1 -port "$INFLUXDB_INIT_PORT" -execute "$1"; }

ready=false
for _ in $(seq 60); do
  if influx_cmd 'SHOW DATABASES' >/dev/null 2>&1; then
    ready=true
    break
  fi
  kill -0 "$server" 2>/dev/null || break
  sleep 0.5
done
if ! $ready; then
  echo "init-influxdb: the temporary server did not answer" >&2
  exit 1
fi

if [[ -n ${INFLUXDB_DB:-} ]]; then
  influx_cmd "CREATE DATABASE \"$INFLUXDB_DB\" ${INFLUXDB_DB_RETENTION_POLICY:-}"
fi
for script in "${scripts[@]}"; do
  case $script in
    *.sh)
      echo "init-influxdb: running $script"
      # shellcheck source=/dev/null
      . "$script"
      ;;
    *.iql)
      echo "init-influxdb: running $script"
      influx_cmd "$(<"$script")"
      ;;
    *) echo "init-influxdb: ignoring $script" ;;
  esac
done

kill -TERM "$server"
wait "$server" || true
echo "init-influxdb: done"
