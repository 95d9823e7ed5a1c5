#!/bin/bash
# Entry point of the InfluxDB stand-in: flags alone mean flags for influxd; a first start
# of influxd initialises the data volume (init-influxdb.sh), then influxd takes over.
set -euo pipefail
if [[ ${1:-} == -* ]]; then
  set -- influxd "$@"
fi
if [[ ${1:-} == influxd ]]; then
  /init-influxdb.sh "${@:2}"
fi
exec "$@"
