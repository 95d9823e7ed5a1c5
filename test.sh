#!/usr/bin/env bash
# The one test command: installs whatever is missing (Debian packages for the real
# servers, a virtualenv with the pinned requirements), lints, then runs the whole suite.
# Usage: ./test.sh [pytest arguments...]     e.g. ./test.sh tests/adapter -k timestamp
set -euo pipefail
cd "$(dirname "$0")"

# Binary → Debian package providing it. The tests start these servers themselves.
declare -A PACKAGES=(
  [mosquitto]=mosquitto
  [mosquitto_pub]=mosquitto-clients
  [mosquitto_ctrl]=mosquitto-clients
  [influxd]=influxdb
  [influx]=influxdb-client
  [mariadbd]=mariadb-server
  [prometheus]=prometheus
  [promtool]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [amtool]=prometheus-alertmanager
  [node]=nodejs
  [npm]=npm
  [shellcheck]=shellcheck
  # database/init_influx_db.sh talks to InfluxDB with curl; run.sh --secure makes certificates.
  [curl]=curl
  [openssl]=openssl
)

missing=()
for binary in "${!PACKAGES[@]}"; do
  if ! command -v "$binary" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$binary ]]; then
    missing+=("${PACKAGES[$binary]}")
  fi
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: missing Debian packages: ${missing[*]}" >&2
    echo "         install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' own services from starting: tests run their own.
  made_policy=false
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=true
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if $made_policy; then rm -f /usr/sbin/policy-rc.d; fi
fi

# The virtualenv is rebuilt only when a requirements file changed.
stamp=.venv/.requirements.sha256
wanted=$(cat requirements-dev.txt ./*/requirements.txt | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$wanted" ]]; then
  echo "==> creating .venv with the pinned requirements"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$wanted" >"$stamp"
fi

# MQTT.js for the device-client tests, at the version package-lock.json pins (npm ci), again
# only when the lock file changed.
clients=tests/device_clients
npm_stamp=$clients/node_modules/.lock.sha256
npm_wanted=$(sha256sum <"$clients/package-lock.json" | cut -d' ' -f1)
if [[ ! -f $npm_stamp || $(cat "$npm_stamp") != "$npm_wanted" ]]; then
  echo "==> installing the device clients' npm packages ($clients)"
  npm ci --prefix "$clients" --no-audit --no-fund --loglevel=error >/dev/null
  echo "$npm_wanted" >"$npm_stamp"
fi

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
