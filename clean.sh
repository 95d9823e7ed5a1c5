#!/usr/bin/env bash
# Removes everything ./run.sh created. Run ./clean.sh --help for the options.
set -Eeuo pipefail
# Never a silent exit: name the command that failed.
trap 'printf "%s: failed (line %s): %s\n" "clean.sh" "$LINENO" "$BASH_COMMAND" >&2' ERR

readonly STACK=iot
readonly SECRET_LABEL=org.iot-platform.created-by=run.sh
readonly DATA_LABEL=iot.data
readonly NAMESPACE_LABEL=com.docker.stack.namespace=$STACK

usage() {
  cat <<'EOF'
Usage: ./clean.sh [-y | --keep-data] [--help]

Removes everything ./run.sh created. Safe to run again.

Swarm: the stack `iot` (its services, networks and configs), the secrets run.sh
created, the images it built, the iot.data node label it added, the swarm itself if
run.sh created it, and - after asking - the data volumes (InfluxDB, Grafana, MySQL,
Mosquitto, Prometheus, Alertmanager). Kept volumes keep their secrets (and the alert
settings) in .state/swarm/secrets/, and the secure profile's certificates in
.state/swarm/tls/, so a later ./run.sh starts again with the same data, passwords, alert
receivers and CA.

Local mode: stops the local processes and - after asking - removes .state/local/
(InfluxDB data, broker queue, logs).

Options:
  -y, --yes     delete the data without asking
  --keep-data   keep the data without asking (everything else is removed)
  -h, --help    this help
Environment: IOT_STATE_DIR (.state), the state folder run.sh used.
EOF
}

log() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf 'clean.sh: %s\n' "$*" >&2
  exit 1
}

# confirm QUESTION: yes with -y, no with --keep-data, else the operator's answer
# (no terminal to ask: no, data is never deleted by surprise).
confirm() {
  [[ $DATA_CHOICE == delete ]] && return 0
  [[ $DATA_CHOICE == keep ]] && return 1
  if [[ ! -t 0 ]]; then
    note "no terminal to ask, so keeping it (./clean.sh -y deletes it)"
    return 1
  fi
  local answer
  read -r -p "$1 [y/N] " answer
  [[ $answer == [yY]* ]]
}

# --- Local mode ----------------------------------------------------------------------

# The PID in a pid file if that process still runs as the session leader run.sh made it.
running_pid() {
  local pid stat fields
  pid=$(head -n1 "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  read -ra fields <<<"${stat##*) }"
  [[ ${fields[0]} != Z && ${fields[3]} == "$pid" ]] || return 1
  echo "$pid"
}

# Stops a component's whole process group: TERM, up to 30 s for a clean stop, then KILL.
stop_component() {
  local name=$1 file=$LOCAL_DIR/pids/$1.pid pid deadline
  if ! pid=$(running_pid "$file"); then
    rm -f "$file"
    return
  fi
  log "Stopping $name (pid $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || true
  deadline=$((SECONDS + 30))
  while running_pid "$file" >/dev/null; do
    if ((SECONDS >= deadline)); then
      note "$name did not stop within 30s; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    sleep 0.2
  done
  rm -f "$file"
}

clean_local() {
  local components=() file name
  # Reverse start order: the adapter stores what it holds before the broker and
  # InfluxDB go away.
  if [[ -f $LOCAL_DIR/started ]]; then mapfile -t components < <(tac "$LOCAL_DIR/started"); fi
  for file in "$LOCAL_DIR"/pids/*.pid; do
    [[ -e $file ]] || continue
    name=$(basename "$file" .pid)
    [[ " ${components[*]} " == *" $name "* ]] || components+=("$name")
  done
  for name in "${components[@]}"; do stop_component "$name"; done
  rm -rf "$LOCAL_DIR/pids" "$LOCAL_DIR/started"
  if confirm "Delete the local data in $LOCAL_DIR (InfluxDB data, broker queue, logs)?"; then
    rm -rf "$LOCAL_DIR"
    log "Removed $LOCAL_DIR"
  else
    log "Stopped local mode; its data stays in $LOCAL_DIR"
  fi
}

# --- Swarm ---------------------------------------------------------------------------

# wait_gone WHAT COMMAND...: until COMMAND prints nothing (Swarm removes asynchronously).
wait_gone() {
  local what=$1 deadline=$((SECONDS + 180))
  shift
  while [[ -n $("$@" 2>/dev/null) ]]; do
    ((SECONDS < deadline)) || die "the stack's $what are still there after 180s; run ./clean.sh again"
    sleep 1
  done
}

clean_swarm() {
  local swarm_state=$STATE_DIR/swarm
  if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') == active ]]; then
    if [[ -n $(docker stack ls --format '{{.Name}}' 2>/dev/null | grep -x "$STACK" || true) ]]; then
      log "Removing the stack '$STACK'"
      docker stack rm "$STACK" >/dev/null
    fi
    # Volumes and secrets can only go once no container uses them.
    wait_gone services docker service ls -q --filter "label=$NAMESPACE_LABEL"
    wait_gone containers docker ps -aq --filter "label=$NAMESPACE_LABEL"
    wait_gone networks docker network ls -q --filter "label=$NAMESPACE_LABEL"
    local id
    for id in $(docker config ls -q --filter "label=$NAMESPACE_LABEL"); do
      docker config rm "$id" >/dev/null || note "could not remove the config $id"
    done
    local secrets
    secrets=$(docker secret ls -q --filter "label=$SECRET_LABEL")
    if [[ -n $secrets ]]; then
      log "Removing the secrets run.sh created"
      for id in $secrets; do docker secret rm "$id" >/dev/null; done
    fi
    if [[ -f $swarm_state/labelled-node ]]; then
      docker node update --label-rm "$DATA_LABEL" "$(<"$swarm_state/labelled-node")" >/dev/null 2>&1 || true
      rm -f "$swarm_state/labelled-node"
    fi
  fi

  if [[ -f $swarm_state/images ]]; then
    local image
    while read -r image; do
      if docker image inspect "$image" >/dev/null 2>&1; then
        log "Removing image $image"
        docker image rm "$image" >/dev/null || note "could not remove $image (still used?)"
      fi
    done <"$swarm_state/images"
    rm -f "$swarm_state/images"
  fi

  local volumes
  volumes=$(docker volume ls -q --filter "label=$NAMESPACE_LABEL")
  if [[ -n $volumes ]]; then
    log "Data volumes of the stack: $(echo "$volumes" | tr '\n' ' ')"
    if confirm "Delete them, with all device data, dashboards, accounts and broker queues?"; then
      # shellcheck disable=SC2086 # one name per word
      docker volume rm $volumes >/dev/null
      rm -rf "$swarm_state/secrets" "$swarm_state/tls"
      log "Removed the data volumes"
    else
      # The certificates too: devices that trust this private CA keep working after a redeploy.
      log "Kept the data volumes; their passwords stay in $swarm_state/secrets/ (certificates in $swarm_state/tls/)"
    fi
  else
    # No data left that was set up with these passwords, no device left that trusts the CA.
    rm -rf "$swarm_state/secrets" "$swarm_state/tls"
  fi

  if [[ -f $swarm_state/swarm-created ]]; then
    log "Leaving the swarm run.sh created"
    docker swarm leave --force >/dev/null
    rm -f "$swarm_state/swarm-created"
  fi
  # Rendered again by every ./run.sh (from the alert settings kept with the secrets).
  rm -f "$swarm_state/mode" "$swarm_state/alertmanager.yml"
  rmdir "$swarm_state" 2>/dev/null || true
}

main() {
  DATA_CHOICE=ask
  while (($#)); do
    case $1 in
      -y | --yes) DATA_CHOICE=delete ;;
      --keep-data) DATA_CHOICE=keep ;;
      -h | --help)
        usage
        return 0
        ;;
      *)
        usage >&2
        echo >&2
        die "unknown option: $1"
        ;;
    esac
    shift
  done
  cd "$(dirname "${BASH_SOURCE[0]}")"
  STATE_DIR=${IOT_STATE_DIR:-.state}
  LOCAL_DIR=$STATE_DIR/local

  local cleaned=false
  if [[ -d $LOCAL_DIR ]]; then
    clean_local
    cleaned=true
  fi
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    clean_swarm
    cleaned=true
  elif [[ -d $STATE_DIR/swarm ]]; then
    die "no Docker engine answers, so the swarm resources run.sh created cannot be removed now"
  fi
  rmdir "$STATE_DIR" 2>/dev/null || true
  $cleaned || log "Nothing to clean"
  log "Done"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
