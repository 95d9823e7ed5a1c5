# shellcheck shell=bash
# Local mode (run.sh's local processes, state in .state/local/) for backup.sh and restore.sh.
# Defines, as backup/swarm.sh does for the stack:
#   mode_prepare                 checks the platform runs here; reads its settings
#   mode_state_dir               run.sh's state folder of this mode
#   mode_broker_mode             open or secure
#   mode_has COMPONENT           whether this mode runs it (local mode has no Grafana)
#   COMPONENT_version            what serves it (server or tool version)
#   COMPONENT_backup DIR         writes the component's backup into DIR
#   COMPONENT_restore DIR        puts DIR's backup back (its writers are stopped)
#   mode_stop_writers / mode_start_writers   around a restore (WRITERS_TEXT names them)
# Tools' output goes to $TOOL_LOG; the caller shows it when something fails.

LOCAL_DIR=$STATE_DIR/local
# Stopped during a restore, in this order; run.sh starts them again.
readonly LOCAL_WRITERS=(adapter auth_server mosquitto)
# shellcheck disable=SC2034 # read by restore.sh
WRITERS_TEXT="the adapter, the auth server and the broker"

binary() {
  command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; } ||
    die "'$1' is not installed (./run.sh installs it in local mode)"
}

# clean.sh knows how to tell our processes from recycled PIDs and how to stop them; its
# functions are used in a subshell, so that its other definitions stay out of this script.
local_pid() {
  (
    # shellcheck source=/dev/null
    source ./clean.sh
    running_pid "$LOCAL_DIR/pids/$1.pid"
  )
}

local_require() {
  local component
  for component; do
    local_pid "$component" >/dev/null ||
      die "local mode's $component is not running; start the platform with ./run.sh --local"
  done
}

mode_prepare() {
  [[ -f $LOCAL_DIR/settings.env ]] ||
    die "local mode has not run here (no $LOCAL_DIR/settings.env); start it with ./run.sh --local"
  # The ports run.sh chose (IOT_INFLUXDB_PORT, IOT_INFLUXDB_RPC_PORT, ...).
  # shellcheck source=/dev/null
  source "$LOCAL_DIR/settings.env"
  CONNECT_HOST=${IOT_BIND_ADDRESS:-127.0.0.1}
  [[ $CONNECT_HOST == 0.0.0.0 ]] && CONNECT_HOST=127.0.0.1
  local_require influxdb mariadb
}

mode_state_dir() { echo "$LOCAL_DIR"; }

mode_broker_mode() {
  if grep -q '^plugin ' "$LOCAL_DIR/mosquitto.conf" 2>/dev/null; then echo secure; else echo open; fi
}

mode_has() { [[ $1 != grafana ]]; }

# --- InfluxDB: portable backup over the RPC port (loopback only) ----------------------

influxdb_version() { "$(binary influxd)" version; }

influxdb_backup() {
  "$(binary influxd)" backup -portable -db "$INFLUX_DATABASE" -host "127.0.0.1:$IOT_INFLUXDB_RPC_PORT" "$1" \
    >>"$TOOL_LOG" 2>&1
}

influx_query() {
  curl -fsS "http://$CONNECT_HOST:$IOT_INFLUXDB_PORT/query" --data-urlencode "q=$1" 2>>"$TOOL_LOG"
}

influxdb_restore() {
  # A portable restore creates the database; it refuses one that exists.
  influx_query "DROP DATABASE \"$INFLUX_DATABASE\"" >>"$TOOL_LOG"
  "$(binary influxd)" restore -portable -db "$INFLUX_DATABASE" -host "127.0.0.1:$IOT_INFLUXDB_RPC_PORT" "$1" \
    >>"$TOOL_LOG" 2>&1 && return 0
  # influxd counts restored shards: the backup of an empty database "fails" after creating it.
  ! compgen -G "$1/*.tar.gz" >/dev/null &&
    influx_query "SHOW DATABASES" | grep -qF "[\"$INFLUX_DATABASE\"]"
}

# --- MariaDB: as the OS user that initialised it, over its socket ----------------------

mariadb_client() {
  "$(binary "$1")" --no-defaults --socket="$LOCAL_DIR/mariadb/mariadb.sock" --user="$(id -un)" "${@:2}"
}

mysql_version() {
  printf '%s; server %s' "$(mariadb_client mariadb-dump --version)" \
    "$(mariadb_client mariadb -N -e 'SELECT VERSION()')"
}

mysql_backup() {
  mariadb_client mariadb-dump --single-transaction --routines --triggers --events \
    --add-drop-database --databases "$MYSQL_DATABASE" 2>>"$TOOL_LOG" | gzip >"$1/$MYSQL_DATABASE.sql.gz"
}

mysql_restore() {
  gunzip -c "$1/$MYSQL_DATABASE.sql.gz" | mariadb_client mariadb >>"$TOOL_LOG" 2>&1
}

# --- Mosquitto: its own save (SIGUSR1), then a copy of the saved file -------------------

mosquitto_version() {
  local usage
  usage=$("$(binary mosquitto)" -h 2>&1 || true) # -h prints the version, and exits 3
  echo "${usage%%$'\n'*}"
}

inode_of() { stat -c %i "$1" 2>/dev/null || echo none; }

# session_process SID NAME: the PID of the process called NAME in the session SID. run.sh
# starts each component as a session leader; the broker is a child of its log rotator
# (mosquitto_mqtt_vol/run_broker.sh), which must not get the broker's signals.
session_process() {
  local proc stat fields
  for proc in /proc/[0-9]*; do
    read -r stat 2>/dev/null <"$proc/stat" || continue
    [[ $stat == *" ($2) "* ]] || continue
    read -ra fields <<<"${stat##*) }" # state, parent, process group, session, ...
    if [[ ${fields[3]} == "$1" ]]; then
      echo "${proc#/proc/}"
      return 0
    fi
  done
  return 1
}

mosquitto_backup() {
  local dir=$LOCAL_DIR/mosquitto pid before deadline file
  if pid=$(local_pid mosquitto); then
    pid=$(session_process "$pid" mosquitto) || die "local mode's broker process is gone (its log: $LOCAL_DIR/logs/mosquitto.log)"
    # The broker replaces the file (write, then rename) on SIGUSR1: a new inode is a
    # finished save, and a copy opened after it is consistent.
    before=$(inode_of "$dir/mosquitto.db")
    kill -USR1 "$pid"
    deadline=$((SECONDS + 30))
    while [[ $(inode_of "$dir/mosquitto.db") == "$before" ]]; do
      ((SECONDS < deadline)) || die "the broker did not save its database within 30s (its log: $LOCAL_DIR/logs/mosquitto.log)"
      sleep 0.1
    done
  else
    note "the broker is not running: copying the database it saved when it stopped"
  fi
  for file in mosquitto.db dynamic-security.json; do
    if [[ -f $dir/$file ]]; then cp "$dir/$file" "$1/" || return 1; fi
  done
  # The adapter's session in mosquitto.db is found by this name: without it, what the
  # broker queued for the adapter would wait for a client that never comes.
  if [[ -f $LOCAL_DIR/$ADAPTER_CLIENT_ID_FILE ]]; then
    (umask 077 && cp "$LOCAL_DIR/$ADAPTER_CLIENT_ID_FILE" "$1/") || return 1
  fi
}

mosquitto_restore() {
  local dir=$LOCAL_DIR/mosquitto file
  mkdir -p "$dir"
  for file in mosquitto.db dynamic-security.json; do
    [[ -f $1/$file ]] || continue
    cp "$1/$file" "$dir/$file.restore" && mv -f "$dir/$file.restore" "$dir/$file" || return 1
  done
  rm -f "$dir/mosquitto.db.new"
  if [[ -f $1/$ADAPTER_CLIENT_ID_FILE ]]; then
    (umask 077 && cp "$1/$ADAPTER_CLIENT_ID_FILE" "$LOCAL_DIR/$ADAPTER_CLIENT_ID_FILE.restore") &&
      mv -f "$LOCAL_DIR/$ADAPTER_CLIENT_ID_FILE.restore" "$LOCAL_DIR/$ADAPTER_CLIENT_ID_FILE" || return 1
  fi
}

# --- Around a restore -----------------------------------------------------------------

mode_stop_writers() {
  (
    # shellcheck source=/dev/null
    source ./clean.sh
    for component in "${LOCAL_WRITERS[@]}"; do stop_component "$component"; done
  ) | sed 's/^/    /'
}

mode_start_writers() {
  # run.sh starts what is not running, on the ports in settings.env.
  if ! ./run.sh --local >>"$TOOL_LOG" 2>&1; then
    tail -n 30 "$TOOL_LOG" >&2
    die "./run.sh --local failed to start the platform again (above); run it again by hand"
  fi
  note "./run.sh --local started ${LOCAL_WRITERS[*]} again"
}
