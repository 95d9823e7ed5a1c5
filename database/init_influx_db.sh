#!/usr/bin/env bash
# Creates the IoT_Devices database with an unlimited (INF) retention policy.
#
# Idempotent: an existing database is kept; its default retention policy is set to INF.
# Two ways to use it:
#   - as an init script of the influxdb:1.8 image, mounted in /docker-entrypoint-initdb.d/
#     (the image sources it on first start, against its temporary server);
#   - by hand against any InfluxDB 1.x:  INFLUX_HOST=127.0.0.1 INFLUX_PORT=8086 database/init_influx_db.sh
# Settings: INFLUXDB_DATABASE (IoT_Devices), INFLUX_HOST (127.0.0.1), INFLUX_PORT (8086).

# A subshell body: when the image sources this file, our shell options and any failure
# stay inside it instead of changing or killing the image's entrypoint.
init_influx_db() (
  set -euo pipefail
  local database=${INFLUXDB_DATABASE:-IoT_Devices}
  local host=${INFLUX_HOST:-127.0.0.1}
  # The image's init script names its temporary server's port INFLUXDB_INIT_PORT.
  local port=${INFLUX_PORT:-${INFLUXDB_INIT_PORT:-8086}}
  # InfluxQL identifiers go in double quotes; a quote inside the name is escaped.
  local quoted=\"${database//\"/\\\"}\"

  influx_cli() { influx -host "$host" -port "$port" -format csv -execute "$1"; }

  if influx_cli 'SHOW DATABASES' | cut -d, -f2 | grep -qxF -- "$database"; then
    echo "init_influx_db: database $database exists"
  else
    influx_cli "CREATE DATABASE $quoted WITH DURATION INF NAME autogen"
    echo "init_influx_db: created database $database"
  fi
  # Whoever created it, its default policy keeps data forever.
  local default_rp
  default_rp=$(influx_cli "SHOW RETENTION POLICIES ON $quoted" | awk -F, '$NF == "true" {print $1}')
  influx_cli "ALTER RETENTION POLICY \"${default_rp:-autogen}\" ON $quoted DURATION INF DEFAULT"
  echo "init_influx_db: retention policy ${default_rp:-autogen} on $database is INF"
)

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    -h | --help)
      sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    "") init_influx_db ;;
    *)
      echo "usage: $0 [--help]" >&2
      exit 2
      ;;
  esac
else
  init_influx_db
fi
