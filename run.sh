#!/usr/bin/env bash
# Sets up the IoT platform and starts it; ./clean.sh undoes everything it does.
# Run ./run.sh --help for the options. Safe to run again: it updates what changed.
set -Eeuo pipefail
# Never a silent exit: name the command that failed.
trap 'printf "%s: failed (line %s): %s\n" "run.sh" "$LINENO" "$BASH_COMMAND" >&2' ERR

readonly STACK=iot
# Marks the Swarm secrets this script created, so clean.sh removes those and no others.
readonly SECRET_LABEL=org.iot-platform.created-by=run.sh
# Stateful services run on the node carrying this label (see stack.yml).
readonly DATA_LABEL=iot.data
# Every password and key stack.yml and stack.secure.yml use, without the iot_ prefix of
# their Swarm names (created in both profiles: switching to --secure needs no new one).
# The TLS certificates of the secure profile are secrets too (see ensure_tls).
readonly SECRETS=(grafana_admin_password mysql_root_password mysql_password jwt_secret
  auth_admin_password mqtt_admin_password adapter_mqtt_password broker_exporter_mqtt_password
  grafana_metrics_password adapter_mqtt_client_id influxdb_admin_password influxdb_adapter_password
  influxdb_auth_password influxdb_grafana_password)
readonly GRAFANA_DEFAULT_PASSWORD=grafanaIDP2023

usage() {
  cat <<'EOF'
Usage: ./run.sh [--secure] [--local] [--timeout SECONDS] [--help]

Sets up the IoT platform and starts it. Safe to run again: it applies what changed.

Swarm mode (a Docker engine answers; run it on a swarm manager, or on a Docker host
that is in no swarm yet, which becomes a single-node swarm):
  builds the project's images, creates the missing secrets (random values, kept in
  .state/swarm/secrets/, never printed), deploys stack.yml as the stack `iot`, waits until
  every service is running and healthy, and prints the endpoints and where the logins are.

Local mode (no Docker engine answers, or --local): runs the platform's core as local
processes instead: Mosquitto, InfluxDB and the adapter (from .venv). Installs the Debian
packages it needs when run as root. Logs, PIDs and data go to .state/local/.

Options:
  --secure           the hardened profile (stack.secure.yml): devices need an account and
                     per-topic rights (Mosquitto dynamic security, managed by the auth
                     server) and connect with TLS on 8883 (1883 is not published); the API
                     is HTTPS on 8443 (8080 is not published); InfluxDB requires a login
                     (Grafana's is read-only). Certificates: .state/swarm/tls/, made from
                     a private CA when missing (needs openssl). Without it any client may
                     publish and subscribe, over plain MQTT and HTTP
  --local            use local mode even where Docker is available
  --timeout SECONDS  how long to wait for the services to become healthy (default 600)
  -h, --help         this help

Environment (all optional):
  DEBUG_DATA_FLOW=false      silence the adapter's per-message log (default true)
  ADAPTER_IMAGE, AUTH_SERVER_IMAGE, SIMULATOR_IMAGE, BROKER_EXPORTER_IMAGE
                             deploy these images instead of building them (CI does this)
  IOT_REGISTRY=host/path     tag the built images there and push them (multi-node swarms)
  BASE_IMAGE=image           base image for the project's Dockerfiles (python:3.11-slim)
  SWARM_ADVERTISE_ADDR=ip    the address `docker swarm init` advertises (hosts with several)
  GRAFANA_ROOT_URL=url       the address users open Grafana at, for the links it builds
                             (default http://<this node's swarm address>/)
  ADAPTER_REPLICAS, ADAPTER_MQTT_TOPIC
                             scale the adapter: ADAPTER_REPLICAS=3 ADAPTER_MQTT_TOPIC='$share/adapters/#'
  AUTH_SERVER_REPLICAS, AUTH_WORKERS
                             scale the HTTP API: replicas behind Kong (1), gunicorn workers in each (2)
  AUTH_ACCESS_LOG=all        the auth server logs every request, not only those refused or failed
  IOT_SECRET_<NAME>=value    value for a secret that does not exist yet, e.g.
                             IOT_SECRET_GRAFANA_ADMIN_PASSWORD (required in CI)
  IOT_TLS_NAMES=a,b          --secure: more host names or addresses devices and clients use
                             for this swarm, put into the certificates run.sh makes
  IOT_TLS_DIR=path           --secure: where the certificates are (.state/swarm/tls)
  Alert delivery (remembered in .state/swarm/secrets/; set one to '' to remove it):
  IOT_ALERT_WEBHOOK_URL      POST every alert (and its resolution) there as JSON
  IOT_ALERT_EMAIL_TO, IOT_ALERT_EMAIL_FROM, IOT_ALERT_SMTP_HOST (host:port),
  IOT_ALERT_SMTP_USERNAME, IOT_ALERT_SMTP_PASSWORD
                             e-mail every alert (TO, FROM and SMTP_HOST needed)
  Local mode: IOT_BIND_ADDRESS (127.0.0.1), IOT_MQTT_PORT (1883), IOT_INFLUXDB_PORT (8086),
  IOT_INFLUXDB_RPC_PORT (8088), IOT_ADAPTER_METRICS_PORT (8000), IOT_STATE_DIR (.state)
EOF
}

log() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf 'run.sh: %s\n' "$*" >&2
  exit 1
}

# --- Shared helpers ------------------------------------------------------------------

# A short, stable hash of every file below some folders (paths included, caches not):
# the version of a build context.
tree_hash() {
  find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum | sha256sum | cut -c1-12
}

random_secret() {
  # 24 random bytes as 48 hex characters: strong, and safe in any config file or URL.
  od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

project_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1
}

# --- Swarm mode ----------------------------------------------------------------------

# The variables stack.yml interpolates into config names: a hash of each file, so that
# an edited file becomes a new Swarm config (configs are immutable) and the services
# using it are updated. MOSQUITTO_CONF_FILE must be set (it depends on --secure).
export_config_hashes() {
  local -A files=(
    [MOSQUITTO_CONF_HASH]=$MOSQUITTO_CONF_FILE
    [MOSQUITTO_RUN_BROKER_HASH]=mosquitto_mqtt_vol/run_broker.sh
    [MOSQUITTO_ACL_HASH]=mosquitto_mqtt_vol/mosquitto-open.acl
    [INFLUXDB_INIT_HASH]=database/init_influx_db.sh
    [GRAFANA_DATASOURCES_HASH]=grafana_db/grafana_provisioning/datasources/datasources.yml
    [GRAFANA_DASHBOARDS_HASH]=grafana_db/grafana_provisioning/dashboards/dashboards.yml
    [GRAFANA_DASHBOARD_UPB_IOT_DATA_HASH]=grafana_db/grafana_provisioning/grafana_dashboards/upb_iot_data.json
    [GRAFANA_DASHBOARD_BATTERY_HASH]=grafana_db/grafana_provisioning/grafana_dashboards/battery_dashboard.json
    [GRAFANA_DASHBOARD_PLATFORM_HEALTH_HASH]=grafana_db/grafana_provisioning/grafana_dashboards/platform_health.json
    [KONG_CONFIG_HASH]=kong/kong.yml
    [PHPMYADMIN_CONFIG_HASH]=phpmyadmin/config.user.inc.php
    [PROMETHEUS_CONFIG_HASH]=prometheus/prometheus.yml
    [PROMETHEUS_ALERTS_HASH]=prometheus/alerts.yml
  )
  local var file
  for var in "${!files[@]}"; do
    file=${files[$var]}
    [[ -f $file ]] || die "$file is missing (stack.yml needs it)"
    # The content alone: the file's name is already part of the config's name.
    export "$var=$(sha256sum <"$file" | cut -c1-12)"
  done
}

# This node's address in the swarm (what the other nodes and the endpoints use).
node_address() {
  docker info --format '{{.Swarm.NodeAddr}}'
}

# grafana_root_url ADDRESS: where users open Grafana (its port 80), for the links Grafana
# builds (GF_SERVER_ROOT_URL in stack.yml): GRAFANA_ROOT_URL when set, else http://ADDRESS/.
grafana_root_url() {
  local addr=$1 url=${GRAFANA_ROOT_URL:-}
  if [[ -n $url ]]; then
    [[ $url =~ ^https?://[^/[:space:]]+(/[^[:space:]]*)?$ ]] ||
      die "GRAFANA_ROOT_URL=$url is not an address like http://grafana.example.com/"
    printf '%s\n' "$url"
    return
  fi
  [[ -n $addr ]] || addr=localhost
  # An IPv6 address goes in brackets in a URL.
  [[ $addr == *:* ]] && addr="[$addr]"
  printf 'http://%s/\n' "$addr"
}

mode_name() {
  if [[ $SECURE == true ]]; then echo secure; else echo open; fi
}

# --- Alert delivery -------------------------------------------------------------------
#
# alertmanager/alertmanager.yml ships with one receiver, `operators`, without integrations.
# The settings below add a webhook and/or e-mail to it; the result, which may hold a URL with
# a token and an SMTP password, is deployed as a Docker secret named after its content, so a
# changed setting updates the Alertmanager on this run (Swarm secrets cannot change in place).
# The value of an alert setting: IOT_<NAME> when set (empty: removed), else the remembered one.
alert_setting() {
  local name=$1 env_var=IOT_$1 file
  file=$SWARM_STATE/secrets/${name,,}
  if [[ -n ${!env_var+set} ]]; then
    if [[ -n ${!env_var} ]]; then
      (umask 077 && printf '%s' "${!env_var}" >"$file")
    else
      rm -f "$file"
    fi
  fi
  [[ -f $file ]] && cat "$file"
  return 0
}

# A YAML single-quoted scalar (of a value without line breaks: checked before).
yaml_quote() {
  printf "'%s'" "${1//\'/\'\'}"
}

# Writes the Alertmanager configuration for this run and exports ALERTMANAGER_CONFIG_FILE.
render_alertmanager_config() {
  local out=$SWARM_STATE/alertmanager.yml webhook to from smarthost username password
  mkdir -p "$SWARM_STATE/secrets"
  chmod 700 "$SWARM_STATE/secrets"
  webhook=$(alert_setting ALERT_WEBHOOK_URL)
  to=$(alert_setting ALERT_EMAIL_TO)
  from=$(alert_setting ALERT_EMAIL_FROM)
  smarthost=$(alert_setting ALERT_SMTP_HOST)
  username=$(alert_setting ALERT_SMTP_USERNAME)
  password=$(alert_setting ALERT_SMTP_PASSWORD)
  local value
  for value in "$webhook" "$to" "$from" "$smarthost" "$username" "$password"; do
    [[ $value != *$'\n'* && $value != *$'\r'* ]] || die "alert settings must be one line"
  done
  if [[ -n $password && -z $username ]]; then
    die "IOT_ALERT_SMTP_PASSWORD needs IOT_ALERT_SMTP_USERNAME (the SMTP login)"
  fi
  if [[ -n $webhook && ! $webhook =~ ^https?://[^[:space:]]+$ ]]; then
    die "IOT_ALERT_WEBHOOK_URL must be an http:// or https:// URL"
  fi
  if [[ -n $to$from$smarthost$username$password ]] && [[ -z $to || -z $from || -z $smarthost ]]; then
    die "e-mail alerts need IOT_ALERT_EMAIL_TO, IOT_ALERT_EMAIL_FROM and IOT_ALERT_SMTP_HOST (host:port)"
  fi
  [[ -z $smarthost || $smarthost =~ ^[^[:space:]:]+:[0-9]+$ ]] || die "IOT_ALERT_SMTP_HOST must be host:port"
  {
    cat alertmanager/alertmanager.yml
    if [[ -n $webhook ]]; then
      echo "    webhook_configs:"
      echo "      - url: $(yaml_quote "$webhook")"
      echo "        send_resolved: true"
    fi
    if [[ -n $to ]]; then
      echo "    email_configs:"
      echo "      - to: $(yaml_quote "$to")"
      echo "        from: $(yaml_quote "$from")"
      echo "        smarthost: $(yaml_quote "$smarthost")"
      if [[ -n $username ]]; then
        echo "        auth_username: $(yaml_quote "$username")"
        echo "        auth_password: $(yaml_quote "$password")"
      fi
      echo "        send_resolved: true"
    fi
  } | (umask 077 && cat >"$out")
  export ALERTMANAGER_CONFIG_FILE=$out
  export ALERTMANAGER_CONFIG_HASH
  ALERTMANAGER_CONFIG_HASH=$(sha256sum <"$out" | cut -c1-12)
  local channels=()
  [[ -n $webhook ]] && channels+=(webhook)
  [[ -n $to ]] && channels+=("e-mail to $to")
  if ((${#channels[@]})); then
    log "Alerts are sent by: $(printf '%s, ' "${channels[@]}" | sed 's/, $//')"
  else
    log "Alerts are sent nowhere (no IOT_ALERT_* setting); they show on Grafana's Platform Health dashboard"
  fi
}

# The profile: the compose files to deploy (STACK_FILES), the broker configuration, the
# published ports, and the mode the auth server keeps the broker's accounts in. Always
# exported, never taken from the environment, so that a stray variable cannot publish a
# port of the other profile.
export_mode() {
  if [[ $SECURE == true ]]; then
    STACK_FILES=(stack.yml stack.secure.yml)
    export MOSQUITTO_CONF_FILE=./mosquitto_mqtt_vol/mosquitto-secure.conf MQTT_SECURE=true
    export MQTT_PUBLISHED_PORT=8883 KONG_PUBLISHED_PORT=8443 KONG_PROXY_PORT=8443
  else
    STACK_FILES=(stack.yml)
    export MOSQUITTO_CONF_FILE=./mosquitto_mqtt_vol/mosquitto.conf MQTT_SECURE=false
    export MQTT_PUBLISHED_PORT=1883 KONG_PUBLISHED_PORT=8080 KONG_PROXY_PORT=8000
  fi
}

docker_error() {
  docker info 2>&1 >/dev/null | grep -v '^$' | tail -n 3 || true
}

swarm_check_prerequisites() {
  docker stack --help >/dev/null 2>&1 || die "this Docker CLI has no 'docker stack' (install Docker 20.10 or newer)"
  local tool tools=(sha256sum od tar find)
  # The secure profile's certificates.
  [[ $SECURE == true ]] && tools+=(openssl)
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not installed"
  done
}

ensure_swarm() {
  local state
  state=$(docker info --format '{{.Swarm.LocalNodeState}}')
  case $state in
    active)
      [[ $(docker info --format '{{.Swarm.ControlAvailable}}') == true ]] ||
        die "this node is a swarm worker: run ./run.sh on a manager (docker node ls shows them)"
      ;;
    inactive)
      log "This Docker engine is in no swarm: creating a single-node swarm (docker swarm init)"
      local args=() output
      [[ -n ${SWARM_ADVERTISE_ADDR:-} ]] && args+=(--advertise-addr "$SWARM_ADVERTISE_ADDR")
      if ! output=$(docker swarm init "${args[@]}" 2>&1); then
        die "docker swarm init failed: $output
  If the host has several addresses, choose one: SWARM_ADVERTISE_ADDR=<ip> ./run.sh"
      fi
      # Remembered so that clean.sh leaves the swarm again, and only then.
      touch "$SWARM_STATE/swarm-created"
      ;;
    *) die "the swarm of this node is '$state'; fix it first (docker info shows the reason)" ;;
  esac
}

ensure_data_node() {
  local node
  for node in $(docker node ls -q); do
    if [[ $(docker node inspect --format "{{ index .Spec.Labels \"$DATA_LABEL\" }}" "$node") == true ]]; then
      return
    fi
  done
  node=$(docker info --format '{{.Swarm.NodeID}}')
  log "Labelling this node $DATA_LABEL=true: the stateful services and their volumes live here"
  docker node update --label-add "$DATA_LABEL=true" "$node" >/dev/null
  echo "$node" >"$SWARM_STATE/labelled-node"
}

# Images run.sh builds exist only on this node: on a swarm of several nodes, the others can
# run the project's services only if the images are in a registry they pull from.
# check_registry_for_swarm VARIABLE: before building the image VARIABLE names.
check_registry_for_swarm() {
  [[ -z ${IOT_REGISTRY:-} ]] || return 0
  local nodes
  nodes=$(docker node ls -q | wc -l)
  ((nodes > 1)) || return 0
  die "this swarm has $nodes nodes, and the images run.sh builds would exist on this one only.
  Name a registry every node can pull from: IOT_REGISTRY=registry.example.com:5000/iot ./run.sh
  (or pass a prebuilt image in $1, and the others in their *_IMAGE variables)"
}

# build_image NAME DOCKERFILE VARIABLE CONTEXT_PATH... : builds NAME from exactly the
# given paths (sent as the build context, so nothing else of the checkout goes in) and
# tags it with the project version and a hash of those paths; exports VARIABLE=image.
build_image() {
  local name=$1 dockerfile=$2 var=$3
  shift 3
  if [[ -n ${!var:-} ]]; then
    log "Using $var=${!var} (not building it)"
    return
  fi
  [[ -f $dockerfile ]] || die "$dockerfile is missing"
  check_registry_for_swarm "$var"
  local ref
  ref="${IOT_REGISTRY:-iot-platform}/$name:$(project_version)-$(tree_hash "$@")"
  local build_args=()
  [[ -n ${BASE_IMAGE:-} ]] && build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  if docker image inspect "$ref" >/dev/null 2>&1; then
    log "Image $ref is up to date"
  else
    log "Building $ref"
    tar -c --exclude=__pycache__ --exclude='*.pyc' "$@" |
      docker build "${build_args[@]}" -f "$dockerfile" -t "$ref" -
  fi
  grep -qxF "$ref" "$SWARM_STATE/images" 2>/dev/null || echo "$ref" >>"$SWARM_STATE/images"
  if [[ -n ${IOT_REGISTRY:-} ]]; then
    log "Pushing $ref"
    docker push "$ref"
  fi
  export "$var=$ref"
}

ensure_secrets() {
  local secrets_dir=$SWARM_STATE/secrets
  mkdir -p "$secrets_dir"
  chmod 700 "$secrets_dir"
  local created=() secret name file env_var value
  for secret in "${SECRETS[@]}"; do
    name=iot_$secret
    docker secret inspect "$name" >/dev/null 2>&1 && continue
    file=$secrets_dir/$secret
    env_var=IOT_SECRET_${secret^^}
    if [[ -n ${!env_var:-} ]]; then
      value=${!env_var}
    elif [[ -s $file ]]; then
      # Kept by clean.sh with the data volumes, whose databases were set up with it.
      value=$(<"$file")
    elif [[ $secret == grafana_admin_password ]]; then
      # The documented default login; change it in Grafana after the first login.
      value=$GRAFANA_DEFAULT_PASSWORD
    elif [[ $secret == adapter_mqtt_client_id ]]; then
      # The name of the adapter's persistent session: unguessable, so nobody can take the
      # session over. Nobody types it, so it is generated everywhere (CI too) and not shown.
      value=$(random_secret)
    elif [[ ${CI:-} == true ]]; then
      # A generated password would end up in the job log and nowhere else.
      die "secret $name does not exist. In CI set the masked variable $env_var, or create it
  on the swarm: printf '%s' 'the-value' | docker secret create $name -"
    else
      value=$(random_secret)
    fi
    (umask 077 && printf '%s' "$value" >"$file")
    # On standard input: a value never goes on a command line (any user may read those).
    printf '%s' "$value" | docker secret create --label "$SECRET_LABEL" "$name" - >/dev/null
    created+=("$secret")
  done
  if ((${#created[@]})); then
    # Where they are, never their values: this output ends up in terminals' scrollback and
    # in CI logs.
    log "Created ${#created[@]} secret(s) in $secrets_dir/ (readable only by you): ${created[*]}"
    note "read one with: cat $secrets_dir/<name>   (e.g. cat $secrets_dir/auth_admin_password)"
  fi
}

# Scaling the adapter down on a shared subscription leaves the removed slots' broker sessions
# behind: Mosquitto keeps giving each of them its share of the messages, queued (never lost)
# until that slot runs again. Said before the deploy, with the way back.
note_adapter_scale_down() {
  local running wanted=${ADAPTER_REPLICAS:-1}
  running=$(docker service inspect --format '{{.Spec.Mode.Replicated.Replicas}}' "${STACK}_adapter" 2>/dev/null) ||
    return 0
  [[ $running =~ ^[0-9]+$ && $wanted =~ ^[0-9]+$ ]] && ((wanted < running)) || return 0
  [[ ${ADAPTER_MQTT_TOPIC:-#} == \$share/* ]] || return 0
  local slots="slots $((wanted + 1))-$running"
  ((wanted + 1 == running)) && slots="slot $running"
  log "Note: the adapter goes from $running replicas to $wanted on a shared subscription."
  note "The broker keeps the session of $slots and goes on queuing its share of the devices'"
  note "messages; they are stored when that slot runs again: ADAPTER_REPLICAS=$running ./run.sh"
  note "(docs/scaling.md: Scaling down)."
}

# --- TLS certificates (the secure profile) -----------------------------------------
#
# TLS_DIR (.state/swarm/tls/, or IOT_TLS_DIR) holds, for each server NAME (mqtt: the
# broker's 8883, kong: the API's 8443), NAME.crt (the certificate, chain included) and
# NAME.key. Files you put there are used as they are; a missing pair is made here, signed
# by a private CA (ca.crt, ca.key) made once. Each file becomes a Swarm secret named after
# a hash of its content, so a replaced certificate is rolled out by the next ./run.sh.
readonly TLS_SERVERS=(mqtt kong)
readonly TLS_SERVER_DAYS=730 TLS_CA_DAYS=3650 TLS_RENEW_WARNING_DAYS=30

# The names devices and clients may use for this swarm: the node's address and host names,
# loopback, and IOT_TLS_NAMES (comma-separated). (The stack's own services use the plain,
# unpublished listeners: no certificate needs their service names.)
tls_default_names() {
  local addr host names=(localhost 127.0.0.1)
  host=$(hostname 2>/dev/null || true)
  [[ -n $host ]] && names+=("$host")
  host=$(hostname -f 2>/dev/null || true)
  [[ -n $host ]] && names+=("$host")
  addr=$(docker info --format '{{.Swarm.NodeAddr}}' 2>/dev/null || true)
  [[ -n $addr ]] && names+=("$addr")
  local extra
  IFS=, read -ra extra <<<"${IOT_TLS_NAMES:-}"
  names+=("${extra[@]}")
  printf '%s\n' "${names[@]}" | sed -e 's/^ *//' -e 's/ *$//' | awk 'NF && !seen[$0]++'
}

# The subjectAltName value for the given names: IP addresses as IP:, the rest as DNS:.
tls_alt_names() {
  local name entries=()
  for name in "$@"; do
    if [[ $name =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || $name == *:* ]]; then
      entries+=("IP:$name")
    elif [[ $name =~ ^[A-Za-z0-9*]([A-Za-z0-9._-]*[A-Za-z0-9])?$ ]]; then
      entries+=("DNS:$name")
    else
      die "'$name' is not a host name or an IP address (IOT_TLS_NAMES)"
    fi
  done
  local IFS=,
  echo "${entries[*]}"
}

# tls_make_ca DIR: the private CA, once. Its key never leaves DIR (mode 600).
tls_make_ca() {
  local dir=$1
  [[ -s $dir/ca.crt && -s $dir/ca.key ]] && return 0
  [[ -e $dir/ca.crt || -e $dir/ca.key ]] && die "$dir has only one of ca.crt and ca.key: give both, or remove the other"
  log "Creating a private certificate authority in $dir/ (ca.crt: give it to devices and clients)"
  (
    umask 077
    openssl req -x509 -new -newkey rsa:3072 -nodes -sha256 -days "$TLS_CA_DAYS" \
      -subj "/O=IoT platform/CN=IoT platform private CA $(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')" \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" \
      -keyout "$dir/ca.key.new" -out "$dir/ca.crt.new" 2>"$dir/openssl.log"
  ) || die "openssl could not create the CA (see $dir/openssl.log)"
  rm -f "$dir/openssl.log"
  chmod 644 "$dir/ca.crt.new"
  # Both are made under *.new names first: a failing openssl or an interrupted run leaves no
  # half-made file in place.
  mv "$dir/ca.crt.new" "$dir/ca.crt"
  mv "$dir/ca.key.new" "$dir/ca.key"
}

# tls_make_server_cert DIR NAME HOSTNAME...: NAME.crt and NAME.key for those names, signed by
# the private CA, unless both exist already.
tls_make_server_cert() {
  local dir=$1 name=$2
  shift 2
  [[ -s $dir/$name.crt && -s $dir/$name.key ]] && return 0
  [[ -e $dir/$name.crt || -e $dir/$name.key ]] &&
    die "$dir has only one of $name.crt and $name.key: give both, or remove the other to have both made"
  tls_make_ca "$dir"
  local alt_names
  alt_names=$(tls_alt_names "$@")
  log "Creating the $name server certificate for $*"
  (
    umask 077
    openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/O=IoT platform/CN=$1" \
      -keyout "$dir/$name.key.new" -out "$dir/$name.csr" 2>"$dir/openssl.log" &&
      openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -sha256 \
        -days "$TLS_SERVER_DAYS" -set_serial "0x$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" \
        -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" \
          "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
          "subjectAltName=$alt_names" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer") \
        -out "$dir/$name.crt.new" 2>>"$dir/openssl.log"
  ) || die "openssl could not create the $name certificate (see $dir/openssl.log)"
  rm -f "$dir/$name.csr" "$dir/openssl.log"
  chmod 644 "$dir/$name.crt.new"
  mv "$dir/$name.key.new" "$dir/$name.key"
  mv "$dir/$name.crt.new" "$dir/$name.crt"
}

# tls_check_pair DIR NAME: the certificate and key belong together and the certificate is
# valid now; a warning when it expires soon.
tls_check_pair() {
  local dir=$1 name=$2 cert_key key
  cert_key=$(openssl x509 -in "$dir/$name.crt" -noout -pubkey 2>/dev/null) ||
    die "$dir/$name.crt is not a PEM certificate"
  key=$(openssl pkey -in "$dir/$name.key" -pubout 2>/dev/null) ||
    die "$dir/$name.key is not a PEM private key without a passphrase"
  [[ $cert_key == "$key" ]] || die "$dir/$name.key is not the key of $dir/$name.crt"
  openssl x509 -in "$dir/$name.crt" -noout -checkend 0 >/dev/null ||
    die "$dir/$name.crt has expired: replace it (or remove $name.crt and $name.key to have new ones made)"
  if ! openssl x509 -in "$dir/$name.crt" -noout -checkend $((TLS_RENEW_WARNING_DAYS * 86400)) >/dev/null; then
    log "Warning: $dir/$name.crt expires within $TLS_RENEW_WARNING_DAYS days ($(openssl x509 -in "$dir/$name.crt" -noout -enddate))"
  fi
}

# tls_secret FILE NAME: the Swarm secret iot_NAME-<hash of FILE's content> holding FILE
# (created when missing, from the file's path: the content is never an argument); exports
# the hash as NAME_HASH in capitals, which stack.secure.yml puts into the secret's name.
tls_secret() {
  local file=$1 name=$2 hash
  hash=$(sha256sum <"$file" | cut -c1-12)
  if ! docker secret inspect "iot_$name-$hash" >/dev/null 2>&1; then
    docker secret create --label "$SECRET_LABEL" "iot_$name-$hash" "$file" >/dev/null
  fi
  export "${name^^}_HASH=$hash"
}

ensure_tls() {
  TLS_DIR=${IOT_TLS_DIR:-$SWARM_STATE/tls}
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  local server names
  for server in "${TLS_SERVERS[@]}"; do
    if [[ ! -s $TLS_DIR/$server.crt && ${CI:-} == true ]]; then
      # The CA's key would be kept only in the job's workspace, and lost with it.
      die "no $TLS_DIR/$server.crt and $server.key: in CI, give the certificates (IOT_TLS_DIR,
  see docs/security.md); run.sh makes a private CA only outside CI"
    fi
    mapfile -t names < <(tls_default_names)
    tls_make_server_cert "$TLS_DIR" "$server" "${names[@]}"
    tls_check_pair "$TLS_DIR" "$server"
    tls_secret "$TLS_DIR/$server.crt" "${server}_tls_cert"
    tls_secret "$TLS_DIR/$server.key" "${server}_tls_key"
  done
}

# TLS secrets of earlier certificates (other hashes) that no service uses any more.
prune_old_tls_secrets() {
  local secret
  for secret in $(docker secret ls --filter "label=$SECRET_LABEL" --format '{{.Name}}'); do
    [[ $secret =~ ^iot_[a-z]+_tls_(cert|key)-[0-9a-f]+$ ]] || continue
    docker secret rm "$secret" >/dev/null 2>&1 || true # in use: the current one
  done
}

deploy_stack() {
  local args=(stack deploy --prune --with-registry-auth) help file
  for file in "${STACK_FILES[@]}"; do args+=(--compose-file "$file"); done
  # Newer CLIs wait in the foreground unless told not to; we wait below, with progress.
  help=$(docker stack deploy --help 2>&1 || true)
  [[ $help == *--detach* ]] && args+=(--detach=true)
  log "Deploying ${STACK_FILES[*]} as stack '$STACK' (profile: $(mode_name))"
  docker "${args[@]}" "$STACK"
}

# One line per service of the stack that is not done yet: "name (running/desired, why)".
services_not_ready() {
  local name replicas running desired state error
  while read -r name replicas; do
    running=${replicas%%/*}
    desired=${replicas#*/}
    desired=${desired%% *}
    state=$(docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$name")
    case $state in
      rollback_completed | rollback_paused | paused)
        echo "FAILED $name (update $state)"
        continue
        ;;
    esac
    if [[ $running != "$desired" || $state == updating || $state == rollback_started ]]; then
      # A task's last error says why it does not run (image missing, unhealthy, no node).
      error=$(docker service ps --no-trunc --format '{{.Error}}' "$name" 2>/dev/null | grep -m1 . || true)
      [[ $state == completed ]] && state=""
      echo "$name ($running/$desired${state:+, $state}${error:+, $error})"
    fi
  done < <(docker service ls --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Name}} {{.Replicas}}')
}

show_failure() {
  local service
  for service in "$@"; do
    printf '\n--- %s: tasks ---\n' "$service" >&2
    docker service ps --no-trunc --format 'table {{.Name}}\t{{.CurrentState}}\t{{.Error}}' "$service" 2>&1 | head -n 8 >&2 || true
    printf -- '--- %s: last log lines ---\n' "$service" >&2
    docker service logs --tail 40 --timestamps "$service" 2>&1 | tail -n 40 >&2 || true
  done
}

# Until every service runs its desired number of tasks and no update is in progress.
# Swarm reports a task as running only once its health check passed, so this is "healthy".
wait_until_converged() {
  local started=$SECONDS last_report="" confirmations=0 pending=()
  log "Waiting for the services to be running and healthy (timeout ${TIMEOUT}s)"
  while :; do
    mapfile -t pending < <(services_not_ready)
    local entry failed=()
    for entry in "${pending[@]}"; do
      if [[ $entry == FAILED* ]]; then
        echo "$entry" >&2
        entry=${entry#FAILED }
        failed+=("${entry%% *}")
      fi
    done
    if ((${#failed[@]})); then
      show_failure "${failed[@]}"
      die "an update failed and was rolled back; see the tasks and logs above"
    fi
    if ((${#pending[@]} == 0)); then
      # Twice in a row: right after a deploy, Swarm may not have started the update yet.
      ((++confirmations >= 2)) && break
    else
      confirmations=0
      local report
      report="waiting for ${#pending[@]} service(s): $(printf '%s; ' "${pending[@]}")"
      if [[ $report != "$last_report" ]]; then
        note "[$((SECONDS - started))s] ${report%; }"
        last_report=$report
      fi
    fi
    if ((SECONDS - started >= TIMEOUT)); then
      show_failure "${pending[@]%% *}"
      die "not every service became healthy within ${TIMEOUT}s (their tasks and logs are above;
  a longer wait: ./run.sh --timeout 1200)"
    fi
    sleep 3
  done
  note "all services are running and healthy after $((SECONDS - started))s"
}

# Configs of earlier versions (other hashes) are no longer used by any service; nor are the
# stack's own secrets of earlier versions (the Alertmanager configuration). The secrets run.sh
# creates carry no stack label and are never touched here.
prune_old_configs() {
  local config secret
  for config in $(docker config ls --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Name}}'); do
    docker config rm "$config" >/dev/null 2>&1 || true # in use: the current version
  done
  for secret in $(docker secret ls --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Name}}'); do
    docker secret rm "$secret" >/dev/null 2>&1 || true
  done
}

print_swarm_endpoints() {
  local addr secrets_dir=$SWARM_STATE/secrets grafana_password mqtt api
  addr=$(node_address)
  addr=${addr:-localhost}
  grafana_password="in $secrets_dir/grafana_admin_password"
  if [[ -f $secrets_dir/grafana_admin_password && $(<"$secrets_dir/grafana_admin_password") == "$GRAFANA_DEFAULT_PASSWORD" ]]; then
    # Not a secret: the documented default, which the first login should change.
    grafana_password="$GRAFANA_DEFAULT_PASSWORD (the documented default: change it)"
  fi
  if [[ $SECURE == true ]]; then
    mqtt="$addr:8883 (TLS)      mosquitto_pub -h $addr -p 8883 --cafile $TLS_DIR/ca.crt -u <device> -P <password> -t <location>/<station> -m '{\"BAT\": 99}'"
    api="https://$addr:8443/   through Kong (its CA: $TLS_DIR/ca.crt)"
  else
    mqtt="$addr:1883            mosquitto_pub -h $addr -t UPB/RPi_1 -m '{\"BAT\": 99, \"HUMID\": 40}'"
    api="http://$addr:8080/    through Kong"
  fi
  cat <<EOF

The IoT platform is running (stack '$STACK', profile: $(mode_name)).
  Grafana      $GRAFANA_ROOT_URL         user assistant, password $grafana_password
  MQTT         $mqtt
  HTTP API     $api; admin ${AUTH_ADMIN_USERNAME:-admin}, password in $secrets_dir/auth_admin_password
  phpMyAdmin   http://$addr:8081/    user auth_server, password in $secrets_dir/mysql_password
  Passwords are files in $secrets_dir/ (cat one to read it); run.sh never prints them.
  InfluxDB, MySQL and Prometheus are reachable only inside the stack; the Grafana
  dashboard "Platform Health" shows what Prometheus collects.
  Data flow:   docker service logs -f ${STACK}_adapter
  Status:      docker stack services $STACK
  Remove all:  ./clean.sh
EOF
}

swarm_mode() {
  swarm_check_prerequisites
  mkdir -p "$SWARM_STATE"
  chmod 700 "$STATE_DIR" "$SWARM_STATE"
  ensure_swarm
  ensure_data_node
  # The auth server imports the adapter's message contract: its context holds both.
  build_image adapter adapter/Dockerfile ADAPTER_IMAGE adapter
  build_image auth-server auth_server/Dockerfile AUTH_SERVER_IMAGE auth_server adapter
  # The simulator takes its paho-mqtt pin from the adapter's requirements.
  build_image simulator simulator/Dockerfile SIMULATOR_IMAGE simulator adapter/requirements.txt
  # The broker exporter too, and the adapter's settings helpers (which import its contract).
  build_image broker-exporter broker_exporter/Dockerfile BROKER_EXPORTER_IMAGE broker_exporter \
    adapter/__init__.py adapter/config.py adapter/contract.py adapter/requirements.txt
  ensure_secrets
  render_alertmanager_config
  export_mode
  if [[ $SECURE == true ]]; then ensure_tls; fi
  export_config_hashes
  GRAFANA_ROOT_URL=$(grafana_root_url "$(node_address)")
  export GRAFANA_ROOT_URL
  local previous_mode=""
  [[ -f $SWARM_STATE/mode ]] && previous_mode=$(<"$SWARM_STATE/mode")
  if [[ $previous_mode == secure && $SECURE != true ]]; then
    log "Note: the stack ran the secure profile; this run switches it back to open (./run.sh --secure keeps it)"
  fi
  note_adapter_scale_down
  deploy_stack
  mode_name >"$SWARM_STATE/mode"
  wait_until_converged
  prune_old_configs
  prune_old_tls_secrets
  print_swarm_endpoints
}

# --- Local mode ----------------------------------------------------------------------
#
# Each name in LOCAL_COMPONENTS is one process, started in this order (clean.sh stops
# them in the reverse order). For a component NAME:
#   local_NAME_settings  (optional) records its ports with local_port_setting
#   local_NAME_start     starts it with local_spawn and returns once it answers (local_wait)
#   local_NAME_info      (optional) prints how to use it
# The binaries it needs are keys of LOCAL_PACKAGES (value: the Debian package providing
# it); its Python requirements files go in LOCAL_REQUIREMENTS (installed into VENV).
#
# Hook for the auth server: auth_server/local.sh, when it exists, is sourced first. It
# appends its components (e.g. `mariadb auth_server`, after the core) and packages the same
# way and defines their functions, using local_spawn, local_wait, local_port_setting,
# local_require_free_port, port_open, LOCAL_DIR (the state folder: logs/, pids/, its own
# data folders), VENV, CONNECT_HOST and BIND_ADDRESS, and the core's IOT_MQTT_PORT and
# IOT_INFLUXDB_PORT. It sets LOCAL_SECURE_SUPPORTED=true once it can run the broker in
# secure mode (SECURE is true with --secure).

LOCAL_COMPONENTS=(mosquitto influxdb adapter)
declare -A LOCAL_PACKAGES=(
  [mosquitto]=mosquitto
  [mosquitto_pub]=mosquitto-clients
  [influxd]=influxdb
  [influx]=influxdb-client
  [curl]=curl
)
LOCAL_SECURE_SUPPORTED=false
LOCAL_REQUIREMENTS=(adapter/requirements.txt)

# local_port_setting VARIABLE DEFAULT: the port from the environment, else the default,
# recorded in settings.env so that a later run (and the info it prints) uses the same.
local_port_setting() {
  local var=$1 default=$2 value
  value=${!var:-$default}
  if [[ ! $value =~ ^[0-9]+$ ]] || ((value < 1 || value > 65535)); then
    die "$var=$value is not a port number"
  fi
  printf -v "$var" '%s' "$value"
  export "${var?}"
  echo "$var=$value" >>"$LOCAL_DIR/settings.env.new"
}

port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# The PID of a running local component (fails when it does not run).
local_pid() {
  local file=$LOCAL_DIR/pids/$1.pid pid stat fields
  [[ -f $file ]] || return 1
  pid=$(head -n1 "$file")
  [[ $pid =~ ^[0-9]+$ ]] && stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  # Our processes lead their own session (setsid), which a recycled PID does not; the
  # session is the 4th field after the command name (which may hold spaces).
  read -ra fields <<<"${stat##*) }"
  [[ ${fields[0]} != Z && ${fields[3]} == "$pid" ]] || return 1
  echo "$pid"
}

# local_spawn NAME COMMAND...: starts COMMAND detached in its own session, output in
# logs/NAME.log, PID in pids/NAME.pid.
local_spawn() {
  local name=$1
  shift
  setsid "$@" >>"$LOCAL_DIR/logs/$name.log" 2>&1 </dev/null &
  echo "$!" >"$LOCAL_DIR/pids/$name.pid"
  grep -qxF "$name" "$LOCAL_DIR/started" 2>/dev/null || echo "$name" >>"$LOCAL_DIR/started"
}

# local_wait NAME TIMEOUT CHECK...: until CHECK succeeds; fails with the log's end if the
# process exits or the time is up.
local_wait() {
  local name=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if ! local_pid "$name" >/dev/null; then
      tail -n 30 "$LOCAL_DIR/logs/$name.log" >&2 || true
      die "$name exited during start-up (its log: $LOCAL_DIR/logs/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$LOCAL_DIR/logs/$name.log" >&2 || true
      die "$name did not answer within ${timeout}s (its log: $LOCAL_DIR/logs/$name.log)"
    fi
    sleep 0.2
  done
}

# local_require_free_port WHAT VARIABLE [HOST]: fails when something already listens on the
# port (on HOST, default the address local mode connects to).
local_require_free_port() {
  local what=$1 var=$2 host=${3:-$CONNECT_HOST}
  if port_open "$host" "${!var}"; then
    die "port ${!var} ($what) is already in use by another program; choose another one: $var=<port> ./run.sh"
  fi
}

local_install_packages() {
  local missing=() binary
  for binary in "${!LOCAL_PACKAGES[@]}"; do
    if ! command -v "$binary" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$binary ]]; then
      missing+=("${LOCAL_PACKAGES[$binary]}")
    fi
  done
  if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then missing+=(python3-venv); fi
  ((${#missing[@]})) || return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if ((EUID != 0)); then
    die "missing Debian packages: ${missing[*]}
  install them (sudo apt-get install -y ${missing[*]}) or run ./run.sh as root"
  fi
  command -v apt-get >/dev/null || die "missing packages ${missing[*]}, and this is not a Debian-like system"
  log "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packages' own services must not start: they would take the ports we use.
  local made_policy=false
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=true
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if $made_policy; then rm -f /usr/sbin/policy-rc.d; fi
}

local_pip_install() {
  "$VENV/bin/pip" install -q --disable-pip-version-check "$@"
}

local_venv() {
  if [[ ! -x $VENV/bin/python ]]; then
    log "Creating the Python environment $VENV"
    python3 -m venv "$VENV"
  fi
  local requirements=() file
  for file in "${LOCAL_REQUIREMENTS[@]}"; do requirements+=(-r "$file"); done
  # A no-op without network access when everything is installed already.
  local_pip_install "${requirements[@]}"
}

local_mosquitto_start() {
  local_require_free_port "MQTT" IOT_MQTT_PORT
  local dir=$LOCAL_DIR/mosquitto conf=$LOCAL_DIR/mosquitto.conf
  mkdir -p "$dir"
  # The stack's configuration with only the listener and the paths changed, so local mode
  # runs the very limits and persistence settings the stack does.
  local data log acl
  data=$(sed_escape "$dir/")
  log=$(sed_escape "$LOCAL_DIR/logs/")
  acl=$(sed_escape "$PWD/mosquitto_mqtt_vol/mosquitto-open.acl")
  {
    echo "# Generated by run.sh from mosquitto_mqtt_vol/mosquitto.conf for local mode."
    sed -e "s|^listener 1883\$|listener $IOT_MQTT_PORT $BIND_ADDRESS|" \
      -e "s|/mosquitto/data/|$data|" \
      -e "s|/mosquitto/log/|$log|" \
      -e "s|/mosquitto/config/mosquitto-open.acl|$acl|" \
      -e '/^log_dest stdout$/d' mosquitto_mqtt_vol/mosquitto.conf
    # Like InfluxDB and the adapter, the broker runs as whoever ran run.sh: as root it
    # would otherwise switch to the `mosquitto` user, who cannot write to this folder.
    echo "user $(id -un)"
  } >"$conf"
  if grep -v '^#' "$conf" | grep -Eq '(^|[[:space:]])/mosquitto/'; then
    die "mosquitto_mqtt_vol/mosquitto.conf has a path local mode does not rewrite"
  fi
  # Through the stack's own wrapper, which keeps the log file bounded by size (see there).
  local_spawn mosquitto sh mosquitto_mqtt_vol/run_broker.sh "$LOCAL_DIR/logs/mosquitto.log" \
    "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$conf"
  local_wait mosquitto 30 port_open "$CONNECT_HOST" "$IOT_MQTT_PORT"
}

local_mosquitto_info() {
  note "MQTT broker  $BIND_ADDRESS:$IOT_MQTT_PORT (anyone may publish and subscribe)"
  note "             log $LOCAL_DIR/logs/mosquitto.log (rotated at 10 MiB, 4 old ones kept),"
  note "             queue and sessions in $LOCAL_DIR/mosquitto/"
}

influx_ping() {
  curl -fsS -o /dev/null "http://127.0.0.1:$IOT_INFLUXDB_PORT/ping" 2>/dev/null
}

local_influxdb_start() {
  local_require_free_port "InfluxDB HTTP" IOT_INFLUXDB_PORT 127.0.0.1
  local_require_free_port "InfluxDB RPC" IOT_INFLUXDB_RPC_PORT
  local dir=$LOCAL_DIR/influxdb conf=$LOCAL_DIR/influxdb.conf
  mkdir -p "$dir"
  cat >"$conf" <<EOF
# Generated by run.sh for local mode.
reporting-disabled = true
bind-address = "127.0.0.1:$IOT_INFLUXDB_RPC_PORT"
[meta]
  dir = "$dir/meta"
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false
  index-version = "tsi1"
[http]
  # Loopback whatever IOT_BIND_ADDRESS says: without authentication, InfluxDB is for the
  # adapter and the auth server on this machine, never for the network.
  bind-address = "127.0.0.1:$IOT_INFLUXDB_PORT"
  auth-enabled = false
  log-enabled = false
[monitor]
  store-enabled = false
EOF
  local_spawn influxdb "$(command -v influxd || echo /usr/bin/influxd)" -config "$conf"
  local_wait influxdb 60 influx_ping
  # The same script that sets up the stack's InfluxDB (IoT_Devices, retention INF).
  INFLUX_HOST=127.0.0.1 INFLUX_PORT=$IOT_INFLUXDB_PORT bash database/init_influx_db.sh \
    >>"$LOCAL_DIR/logs/influxdb.log" 2>&1 || die "database/init_influx_db.sh failed (see $LOCAL_DIR/logs/influxdb.log)"
}

local_influxdb_info() {
  note "InfluxDB     http://127.0.0.1:$IOT_INFLUXDB_PORT, database IoT_Devices (no login, so loopback only)"
  note "             data in $LOCAL_DIR/influxdb/, log $LOCAL_DIR/logs/influxdb.log"
}

adapter_connected() {
  local metrics
  metrics=$(curl -fsS "http://127.0.0.1:$IOT_ADAPTER_METRICS_PORT/metrics" 2>/dev/null) || return 1
  [[ $metrics == *$'\nadapter_mqtt_connected 1.0'* ]]
}

local_adapter_start() {
  local_require_free_port "adapter metrics" IOT_ADAPTER_METRICS_PORT 127.0.0.1
  # As in the stack, the adapter's session has an unguessable name, kept across runs so that
  # the session (and what it queued) survives a restart.
  local client_id_file=$LOCAL_DIR/adapter_mqtt_client_id
  if [[ ! -s $client_id_file ]]; then
    (umask 077 && random_secret >"$client_id_file")
  fi
  # Its metrics on loopback only, whatever IOT_BIND_ADDRESS says.
  local_spawn adapter env \
    PYTHONUNBUFFERED=1 \
    MQTT_HOST="$CONNECT_HOST" MQTT_PORT="$IOT_MQTT_PORT" MQTT_CLIENT_ID_FILE="$client_id_file" \
    INFLUXDB_HOST=127.0.0.1 INFLUXDB_PORT="$IOT_INFLUXDB_PORT" INFLUXDB_DATABASE=IoT_Devices \
    METRICS_ADDRESS=127.0.0.1 METRICS_PORT="$IOT_ADAPTER_METRICS_PORT" DEBUG_DATA_FLOW="${DEBUG_DATA_FLOW:-true}" \
    "$VENV/bin/python" "$PWD/adapter/adapter.py"
  local_wait adapter 60 adapter_connected
}

local_adapter_info() {
  note "Adapter      metrics http://127.0.0.1:$IOT_ADAPTER_METRICS_PORT/metrics"
  note "             data flow in $LOCAL_DIR/logs/adapter.log"
}

sed_escape() {
  printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'
}

local_mode() {
  LOCAL_DIR=$STATE_DIR/local
  VENV=.venv
  if [[ -f auth_server/local.sh ]]; then
    # shellcheck source=/dev/null
    source auth_server/local.sh
  fi
  if [[ $SECURE == true && $LOCAL_SECURE_SUPPORTED != true ]]; then
    die "--secure needs the auth server, which local mode does not run yet; use Swarm mode"
  fi
  mkdir -p "$LOCAL_DIR/logs" "$LOCAL_DIR/pids"
  chmod 700 "$STATE_DIR"
  LOCAL_DIR=$(cd "$LOCAL_DIR" && pwd)

  # Settings of a running installation win: its processes listen where they listen.
  local component running=()
  for component in "${LOCAL_COMPONENTS[@]}"; do
    local_pid "$component" >/dev/null && running+=("$component")
  done
  if ((${#running[@]})) && [[ -f $LOCAL_DIR/settings.env ]]; then
    # shellcheck source=/dev/null
    set -a && source "$LOCAL_DIR/settings.env" && set +a
  fi
  rm -f "$LOCAL_DIR/settings.env.new"
  BIND_ADDRESS=${IOT_BIND_ADDRESS:-127.0.0.1}
  echo "IOT_BIND_ADDRESS=$BIND_ADDRESS" >"$LOCAL_DIR/settings.env.new"
  CONNECT_HOST=$BIND_ADDRESS
  [[ $BIND_ADDRESS == 0.0.0.0 ]] && CONNECT_HOST=127.0.0.1
  local_port_setting IOT_MQTT_PORT 1883
  local_port_setting IOT_INFLUXDB_PORT 8086
  local_port_setting IOT_INFLUXDB_RPC_PORT 8088
  local_port_setting IOT_ADAPTER_METRICS_PORT 8000
  for component in "${LOCAL_COMPONENTS[@]}"; do
    if declare -F "local_${component}_settings" >/dev/null; then "local_${component}_settings"; fi
  done
  mv "$LOCAL_DIR/settings.env.new" "$LOCAL_DIR/settings.env"

  local_install_packages
  local_venv
  local pid
  for component in "${LOCAL_COMPONENTS[@]}"; do
    if pid=$(local_pid "$component"); then
      log "$component is already running (pid $pid)"
    else
      log "Starting $component"
      "local_${component}_start"
    fi
  done

  echo
  echo "The platform's core is running as local processes (local mode, state in $LOCAL_DIR):"
  for component in "${LOCAL_COMPONENTS[@]}"; do
    if declare -F "local_${component}_info" >/dev/null; then "local_${component}_info"; fi
  done
  cat <<EOF
Publish a reading:
  mosquitto_pub -h $CONNECT_HOST -p $IOT_MQTT_PORT -q 1 -t UPB/RPi_1 -m '{"BAT": 99, "HUMID": 40}'
See it stored (series UPB.RPi_1.BAT is measurement RPi_1.BAT, tag location=UPB):
  influx -host 127.0.0.1 -port $IOT_INFLUXDB_PORT -database IoT_Devices -execute 'SELECT * FROM "RPi_1.BAT"'
Follow the data flow:   tail -f $LOCAL_DIR/logs/adapter.log
Stop and remove it all: ./clean.sh
EOF
}

# --- Entry point ---------------------------------------------------------------------

main() {
  SECURE=false
  TIMEOUT=600
  local force_local=false
  while (($#)); do
    case $1 in
      --secure) SECURE=true ;;
      --local) force_local=true ;;
      --timeout)
        [[ ${2:-} =~ ^[0-9]+$ ]] || die "--timeout needs a number of seconds (see --help)"
        TIMEOUT=$2
        shift
        ;;
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
  SWARM_STATE=$STATE_DIR/swarm
  mkdir -p "$STATE_DIR"

  if $force_local; then
    log "Local mode (--local): running the platform's core as local processes"
    local_mode
  elif ! command -v docker >/dev/null 2>&1; then
    log "No Docker here: running the platform's core as local processes (local mode)"
    local_mode
  elif ! docker info >/dev/null 2>&1; then
    local reason
    reason=$(docker_error)
    if [[ $reason == *"permission denied"* ]]; then
      die "Docker is installed but you may not use it: $reason
  Run ./run.sh with sudo, join the docker group, or use local mode: ./run.sh --local"
    fi
    log "No Docker engine answers ($reason)"
    log "Running the platform's core as local processes instead (local mode)"
    local_mode
  else
    swarm_mode
  fi
}

# Sourced (by the tests) it only defines the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
