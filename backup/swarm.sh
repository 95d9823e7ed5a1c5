# shellcheck shell=bash
# shellcheck disable=SC2016 # the single-quoted scripts run in the containers' shells, which expand them
# Swarm mode (the stack `iot`) for backup.sh and restore.sh: the same functions as
# backup/local.sh (see the list there).
#
# InfluxDB's RPC port and MySQL's socket are reachable only inside their containers, so
# their tools run there (`docker exec`, on the data node: the node labelled iot.data=true,
# where the stateful services and their volumes are). Grafana's and Mosquitto's files are
# read and written through their volumes by a one-off helper container of the adapter's
# image (it has Python, whose sqlite3 module makes the consistent copy of Grafana's
# database; the grafana image has neither Python nor the sqlite3 tool). On a swarm whose
# data node is not this manager, IOT_DATA_NODE_DOCKER_HOST (e.g. ssh://admin@data-node)
# names that node's Docker engine.

SWARM_STATE=$STATE_DIR/swarm
# Stopped during a restore, in this order (writers first, the broker last), and started
# again in the reverse order.
readonly SWARM_WRITERS=(adapter auth_server simulator grafana mqtt_broker)
# shellcheck disable=SC2034 # read by restore.sh
WRITERS_TEXT="the adapter, the auth server, the simulator (if it runs), Grafana and the broker"
readonly HELPER_LABEL=org.iot-platform.backup-helper
DATA_DOCKER=(docker)
HELPER_IMAGE=""
declare -A SCALED_DOWN=()

service_spec() { docker service inspect --format "$2" "${STACK}_$1" 2>/dev/null; }

mode_prepare() {
  [[ -n $(docker stack ls --format '{{.Name}}' | grep -x "$STACK" || true) ]] ||
    die "no stack '$STACK' is deployed on this swarm; deploy it with ./run.sh (or use --local)"
  docker node ls -q >/dev/null 2>&1 || die "this node is not a swarm manager: run $SCRIPT on a manager"
  local data_node self node
  for node in $(docker node ls -q); do
    if [[ $(docker node inspect --format '{{ index .Spec.Labels "iot.data" }}' "$node") == true ]]; then
      data_node=$node
    fi
  done
  [[ -n ${data_node:-} ]] || die "no node is labelled iot.data=true; ./run.sh labels one"
  self=$(docker info --format '{{.Swarm.NodeID}}')
  if [[ -n ${IOT_DATA_NODE_DOCKER_HOST:-} ]]; then
    DATA_DOCKER=(docker -H "$IOT_DATA_NODE_DOCKER_HOST")
  elif [[ $data_node != "$self" ]]; then
    die "the data node ($(docker node inspect --format '{{.Description.Hostname}}' "$data_node")) is not this node:
  run $SCRIPT there, or name its engine: IOT_DATA_NODE_DOCKER_HOST=ssh://user@that-node $SCRIPT ..."
  fi
  HELPER_IMAGE=$(service_spec adapter '{{.Spec.TaskTemplate.ContainerSpec.Image}}') ||
    die "the stack has no adapter service, whose image the helper containers use"
  # A locally built image carries no digest; a pushed one is pinned by it.
  if "${DATA_DOCKER[@]}" image inspect "${HELPER_IMAGE%@*}" >/dev/null 2>&1; then HELPER_IMAGE=${HELPER_IMAGE%@*}; fi
  local service
  for service in influxdb mysql; do container_of "$service" >/dev/null; done
}

mode_state_dir() { echo "$SWARM_STATE"; }

mode_broker_mode() {
  local mode
  mode=$(broker_mode_of "$SWARM_STATE")
  echo "${mode:-open}"
}

mode_has() { return 0; }

# The running container of a single-replica service on the data node.
container_of() {
  local found
  found=$("${DATA_DOCKER[@]}" ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$1" --filter status=running)
  [[ -n $found && $found != *$'\n'* ]] ||
    die "${STACK}_$1 has no running container on the data node (docker service ps ${STACK}_$1 says why)"
  echo "$found"
}

running_container() {
  "${DATA_DOCKER[@]}" ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$1" --filter status=running | head -n1
}

# in_container SERVICE SCRIPT [ARG...]: a POSIX sh script inside the service's container,
# stdin and stdout passed through.
in_container() {
  local container
  container=$(container_of "$1")
  "${DATA_DOCKER[@]}" exec -i "$container" sh -c "$2" sh "${@:3}"
}

# in_helper VOLUME COMMAND [ARG...]: a one-off container of the helper image with the
# stack's volume VOLUME at /data, no network, as root (the volumes belong to the services'
# own users).
in_helper() {
  "${DATA_DOCKER[@]}" run --rm -i --network none --user 0 --label "$HELPER_LABEL=$1" \
    -v "${STACK}_$1:/data" --entrypoint "$2" "$HELPER_IMAGE" "${@:3}"
}

# --- InfluxDB -------------------------------------------------------------------------

# The admin login of the hardened profile (--secure), when InfluxDB requires one: the
# user in INFLUXDB_ADMIN_USER, the password in the file INFLUXDB_ADMIN_PASSWORD_FILE (or
# the secret influxdb_admin_password). The RPC port of backup and restore needs none.
readonly INFLUX_LOGIN='
if [ "${INFLUXDB_HTTP_AUTH_ENABLED:-false}" = true ]; then
  INFLUX_USERNAME=${INFLUXDB_ADMIN_USER:-admin}
  INFLUX_PASSWORD=$(cat "${INFLUXDB_ADMIN_PASSWORD_FILE:-/run/secrets/influxdb_admin_password}")
  export INFLUX_USERNAME INFLUX_PASSWORD
fi
set --
if [ "${INFLUXDB_HTTP_HTTPS_ENABLED:-false}" = true ]; then set -- -ssl -unsafeSsl; fi
'

influxdb_version() { in_container influxdb 'influxd version'; }

influxdb_backup() {
  # Into the data volume (the disk that has room for the data), streamed out as a tar.
  in_container influxdb '
set -eu
# What a backup killed midway left (a running one is younger than a day).
find /var/lib/influxdb -maxdepth 1 -name ".iot-backup.*" -mmin +1440 -exec rm -rf {} +
dir=/var/lib/influxdb/.iot-backup.$$
trap "rm -rf $dir" EXIT
influxd backup -portable -db "$1" -host "${INFLUXDB_BIND_ADDRESS:-127.0.0.1:8088}" "$dir" >&2
tar -C "$dir" -cf - .' "$INFLUX_DATABASE" 2>>"$TOOL_LOG" | tar -x -C "$1"
}

influxdb_restore() {
  tar -C "$1" -cf - . | in_container influxdb '
set -eu
find /var/lib/influxdb -maxdepth 1 -name ".iot-restore.*" -mmin +1440 -exec rm -rf {} +
dir=/var/lib/influxdb/.iot-restore.$$
trap "rm -rf $dir" EXIT
mkdir -p "$dir"
tar -x -C "$dir" -f -
db=$1
'"$INFLUX_LOGIN"'
# A portable restore creates the database; it refuses one that exists.
influx "$@" -execute "DROP DATABASE \"$db\""
influxd restore -portable -db "$db" -host "${INFLUXDB_BIND_ADDRESS:-127.0.0.1:8088}" "$dir" && exit 0
# influxd counts restored shards: the backup of an empty database "fails" after creating it.
! ls "$dir"/*.tar.gz >/dev/null 2>&1 && influx "$@" -format csv -execute "SHOW DATABASES" | grep -qxF "databases,$db"' \
    "$INFLUX_DATABASE" >>"$TOOL_LOG" 2>&1
}

# --- MySQL ----------------------------------------------------------------------------

# As root, whose password the container has as a secret; given to the clients in an
# option file (never on a command line, where ps would show it).
readonly MYSQL_AS_ROOT='
set -eu
umask 077
cnf=$(mktemp)
trap "rm -f $cnf" EXIT
password=$(sed -e "s/[\\\\\"]/\\\\&/g" "${MYSQL_ROOT_PASSWORD_FILE:-/run/secrets/mysql_root_password}")
printf "[client]\nuser=root\npassword=\"%s\"\n" "$password" >"$cnf"
case $1 in
  version) mysqldump --version; printf "server "; mysql --defaults-extra-file="$cnf" -N -e "SELECT VERSION()" ;;
  dump) mysqldump --defaults-extra-file="$cnf" --single-transaction --routines --triggers --events \
          --add-drop-database --databases "$2" ;;
  load) mysql --defaults-extra-file="$cnf" ;;
esac'

mysql_version() { in_container mysql "$MYSQL_AS_ROOT" version 2>>"$TOOL_LOG" | tr '\n' ' '; }

mysql_backup() {
  in_container mysql "$MYSQL_AS_ROOT" dump "$MYSQL_DATABASE" 2>>"$TOOL_LOG" | gzip >"$1/$MYSQL_DATABASE.sql.gz"
}

mysql_restore() {
  gunzip -c "$1/$MYSQL_DATABASE.sql.gz" | in_container mysql "$MYSQL_AS_ROOT" load >>"$TOOL_LOG" 2>&1
}

# --- Grafana --------------------------------------------------------------------------

grafana_version() { service_spec grafana '{{.Spec.TaskTemplate.ContainerSpec.Image}}' | cut -d@ -f1; }

grafana_backup() {
  in_helper grafana_data python3 -c "$(<backup/sqlite_copy.py)" /data/grafana.db 2>>"$TOOL_LOG" |
    gzip >"$1/grafana.db.gz"
}

grafana_restore() {
  # Written beside the old file, given its owner, then renamed over it; a journal or WAL
  # of the old database would be applied to the new one, so they go.
  gunzip -c "$1/grafana.db.gz" | in_helper grafana_data sh -c '
set -eu
cd /data
cat >grafana.db.restore
if [ -f grafana.db ]; then ref=grafana.db; else ref=.; fi
chown --reference="$ref" grafana.db.restore
chmod 640 grafana.db.restore
rm -f grafana.db-journal grafana.db-wal grafana.db-shm
mv -f grafana.db.restore grafana.db' >>"$TOOL_LOG" 2>&1
}

# --- Mosquitto ------------------------------------------------------------------------

mosquitto_version() { in_container mqtt_broker 'mosquitto -h 2>&1 | head -n 1' 2>/dev/null || echo unknown; }

mosquitto_backup() {
  if [[ -n $(running_container mqtt_broker) ]]; then
    # The broker replaces its file (write, then rename) on SIGUSR1: a new inode is a
    # finished save, and a copy opened after it is consistent.
    in_container mqtt_broker '
set -eu
cd /mosquitto/data
# The broker runs as a child of run_broker.sh, its log rotator.
pid=
for proc in /proc/[0-9]*; do
  if [ "$(cat "$proc/comm" 2>/dev/null)" = mosquitto ]; then pid=${proc#/proc/}; break; fi
done
[ -n "$pid" ] || { echo "no mosquitto process in the broker container" >&2; exit 1; }
before=$(stat -c %i mosquitto.db 2>/dev/null || echo none)
kill -USR1 "$pid"
tries=0
while [ "$(stat -c %i mosquitto.db 2>/dev/null || echo none)" = "$before" ]; do
  tries=$((tries + 1))
  [ "$tries" -le 300 ] || { echo "the broker did not save its database within 30s" >&2; exit 1; }
  sleep 0.1
done
set -- mosquitto.db
[ ! -f dynamic-security.json ] || set -- "$@" dynamic-security.json
tar -cf - "$@"' 2>>"$TOOL_LOG" | tar -x -C "$1"
  else
    note "the broker is not running: copying the database it saved when it stopped"
    in_helper mosquitto_data sh -c '
set -eu
cd /data
set -- mosquitto.db
[ ! -f dynamic-security.json ] || set -- "$@" dynamic-security.json
tar -cf - "$@"' 2>>"$TOOL_LOG" | tar -x -C "$1"
  fi
}

mosquitto_restore() {
  tar -C "$1" -cf - . | in_helper mosquitto_data sh -c '
set -eu
cd /data
rm -rf .restore
mkdir .restore
tar -x -C .restore -f -
for file in mosquitto.db dynamic-security.json; do
  [ -f ".restore/$file" ] || continue
  chown --reference=. ".restore/$file"
  chmod 600 ".restore/$file"
  mv -f ".restore/$file" "$file"
done
rm -rf .restore mosquitto.db.new' >>"$TOOL_LOG" 2>&1 || return 1
  if [[ -f $1/dynamic-security.json && -n ${MQTT_ADMIN_PASSWORD:-} ]]; then
    # The restored plugin file knows the broker admin by the password of the backup's
    # deployment; this deployment's broker health check and auth server use its own.
    printf '%s' "$MQTT_ADMIN_PASSWORD" |
      in_helper mosquitto_data python3 -c "$(<backup/dynsec_password.py)" \
        /data/dynamic-security.json "$MQTT_ADMIN_USERNAME" >>"$TOOL_LOG" 2>&1
    note "the broker admin $MQTT_ADMIN_USERNAME keeps this deployment's password (secret iot_mqtt_admin_password)"
  fi
}

# --- Around a restore -----------------------------------------------------------------

replicas_of() {
  service_spec "$1" '{{if .Spec.Mode.Replicated}}{{.Spec.Mode.Replicated.Replicas}}{{end}}'
}

# Whether any task of the service still has a container running (or about to).
tasks_alive() {
  docker service ps --format '{{.CurrentState}}' "${STACK}_$1" 2>/dev/null |
    grep -Eq '^(New|Pending|Assigned|Accepted|Preparing|Ready|Starting|Running)'
}

mode_stop_writers() {
  if [[ -n $(running_container mqtt_broker) ]]; then
    MQTT_ADMIN_PASSWORD=$(in_container mqtt_broker 'cat /run/secrets/mqtt_admin_password' 2>/dev/null || true)
    MQTT_ADMIN_USERNAME=$(service_spec mqtt_broker '{{range .Spec.TaskTemplate.ContainerSpec.Env}}{{println .}}{{end}}' |
      sed -n 's/^MQTT_ADMIN_USERNAME=//p')
    MQTT_ADMIN_USERNAME=${MQTT_ADMIN_USERNAME:-iot-admin}
  fi
  local service replicas args=()
  for service in "${SWARM_WRITERS[@]}"; do
    replicas=$(replicas_of "$service") || continue
    [[ -n $replicas && $replicas != 0 ]] || continue
    SCALED_DOWN[$service]=$replicas
    args+=("${STACK}_$service=0")
  done
  ((${#args[@]})) || return 0
  note "scaling to 0: ${args[*]%=0}"
  docker service scale --detach=true "${args[@]}" >>"$TOOL_LOG" 2>&1
  local deadline=$((SECONDS + 180))
  for service in "${!SCALED_DOWN[@]}"; do
    # The broker writes its queue to the volume on the way down: only then is it replaced.
    while tasks_alive "$service" || [[ -n $(running_container "$service") ]]; do
      ((SECONDS < deadline)) || die "${STACK}_$service did not stop within 180s"
      sleep 1
    done
  done
}

mode_start_writers() {
  local i service args=()
  for ((i = ${#SWARM_WRITERS[@]} - 1; i >= 0; i--)); do
    service=${SWARM_WRITERS[i]}
    [[ -n ${SCALED_DOWN[$service]:-} ]] || continue
    args+=("${STACK}_$service=${SCALED_DOWN[$service]}")
  done
  ((${#args[@]})) || return 0
  note "scaling back: ${args[*]}"
  docker service scale --detach=true "${args[@]}" >>"$TOOL_LOG" 2>&1
  SCALED_DOWN=()
  local deadline=$((SECONDS + TIMEOUT)) pending replicas
  # Swarm counts a task as running once its health check passed.
  while :; do
    pending=()
    for entry in "${args[@]}"; do
      service=${entry%%=*}
      replicas=$(docker service ls --filter "name=$service" --format '{{.Name}} {{.Replicas}}' |
        awk -v s="$service" '$1 == s { print $2 }')
      [[ ${replicas%% *} == "${entry#*=}/${entry#*=}" ]] || pending+=("$service ${replicas:-?}")
    done
    ((${#pending[@]})) || break
    if ((SECONDS >= deadline)); then
      die "not running and healthy within ${TIMEOUT}s: ${pending[*]} (docker service ps says why)"
    fi
    sleep 2
  done
  note "all of them run and are healthy again"
}
