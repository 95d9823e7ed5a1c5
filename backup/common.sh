# shellcheck shell=bash
# shellcheck disable=SC2034 # the constants are used by the scripts that source this file
# Shared by ./backup.sh and ./restore.sh: messages, which mode the platform runs in, and the
# archive's layout. Each mode's way of reaching the components is in backup/local.sh and
# backup/swarm.sh; both define the same functions (see the list at the top of each).
#
# The archive: one uncompressed tar holding a single folder NAME/ (iot-backup-MODE-UTCTIME):
#   NAME/MANIFEST              what, versions, sizes, times ("key: value" lines)
#   NAME/SHA256SUMS            a checksum of every other file (sha256sum -c)
#   NAME/influxdb/             InfluxDB's portable backup of IoT_Devices (influxd backup -portable)
#   NAME/mysql/iot_accounts.sql.gz   mysqldump --single-transaction of the accounts database
#   NAME/grafana/grafana.db.gz       Grafana's SQLite database (Swarm only; local mode has none)
#   NAME/mosquitto/            the broker's persistence file (queues, sessions, retained messages)
#                              and, when it exists, the dynamic-security plugin's file; in local
#                              mode also the adapter's client id, the name of its session there
#   NAME/state/                run.sh's small state files (.state/MODE/*), for reference
#   NAME/secrets/              only with backup.sh --with-secrets: .state/MODE/secrets/*

readonly BACKUP_FORMAT=1
# Local mode's adapter client id (run.sh), a file of .state/local/.
readonly ADAPTER_CLIENT_ID_FILE=adapter_mqtt_client_id
# Not readonly: clean.sh, whose functions backup/local.sh uses, sets it too.
STACK=iot
readonly INFLUX_DATABASE=IoT_Devices
readonly MYSQL_DATABASE=iot_accounts
# The archive's components, in the order they are restored.
readonly COMPONENTS=(influxdb mysql grafana mosquitto)
# The order they are backed up: the broker's queue first, InfluxDB after it. A message the
# broker holds at its save comes back with the broker and is stored again after a restore;
# one the adapter stores later was in InfluxDB before InfluxDB's snapshot. So no message
# the broker accepted before the backup falls between the two (InfluxDB first would lose
# those acknowledged in between). A message in both is the same point twice: one point.
readonly BACKUP_ORDER=(mosquitto influxdb mysql grafana)

log() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf '%s: %s\n' "$SCRIPT" "$*" >&2
  exit 1
}

# Seconds since the epoch with microseconds (bash 5).
now() { printf '%s' "$EPOCHREALTIME"; }
utc_time() { date -u +%Y-%m-%dT%H:%M:%SZ; }
elapsed_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# Bytes of a file, or of the files below a folder.
size_of() { find "$1" -type f -printf '%s\n' | awk '{ n += $1 } END { printf "%d", n }'; }

human_size() {
  awk -v b="$1" 'BEGIN {
    split("B KiB MiB GiB TiB", u); i = 1
    while (b >= 1024 && i < 5) { b /= 1024; i++ }
    printf (i == 1 ? "%d %s" : "%.1f %s"), b, u[i] }'
}

# The platform's mode, decided as run.sh decides it, plus one case run.sh does not meet: an
# engine answers but no stack is deployed, while local mode runs (run.sh --local).
# Sets MODE to swarm or local. $1: true when --local was given.
detect_mode() {
  local force_local=$1 reason
  if [[ $force_local == true ]] || ! command -v docker >/dev/null 2>&1; then
    MODE=local
  elif ! reason=$(docker info 2>&1 >/dev/null); then
    if [[ $reason == *"permission denied"* ]]; then
      die "Docker is installed but you may not use it: $(echo "$reason" | tail -n 1)
  Run $SCRIPT with sudo, join the docker group, or use --local for local mode"
    fi
    MODE=local
  elif [[ -z $(docker stack ls --format '{{.Name}}' 2>/dev/null | grep -x "$STACK" || true) ]] &&
    compgen -G "$STATE_DIR/local/pids/*.pid" >/dev/null; then
    MODE=local
  else
    MODE=swarm
  fi
}

platform_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1
}

git_commit() {
  git rev-parse --short HEAD 2>/dev/null || echo unknown
}

# manifest_get FILE KEY: the value of "KEY: value" in a manifest (empty when absent).
manifest_get() {
  awk -v key="$2" 'index($0, key ": ") == 1 { print substr($0, length(key) + 3); exit }' "$1"
}

# Reads run.sh's broker mode (open or secure) of a state folder; empty when unknown.
broker_mode_of() {
  if [[ -f $1/mode ]]; then head -n1 "$1/mode"; fi
}
