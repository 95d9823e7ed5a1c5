#!/usr/bin/env bash
# The end-to-end test: the real stack, deployed by run.sh on a real Docker engine in Swarm
# mode, checked from the outside and from inside its containers, removed and redeployed,
# then removed by clean.sh. Run ./tests/e2e/run_e2e.sh --help for what it does.
# Some functions take optional arguments that only run_e2e_multinode.sh passes.
# shellcheck disable=SC2119,SC2120
set -Eeuo pipefail
trap 'printf "run_e2e.sh: failed (line %s): %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

usage() {
  cat <<'EOF'
Usage: tests/e2e/run_e2e.sh [--timeout SECONDS] [--keep-work] [--purge-cache] [--help]

Deploys the platform as a Docker Swarm stack on this machine and checks it end to end.
Needs root and an empty Docker engine (no stack `iot`, none of its volumes or secrets).

  1. Starts a Docker engine (dockerd, vfs storage) when none answers; installs the
     Debian packages docker.io and debootstrap when missing.
  2. Builds a Debian 12 base image (debootstrap + docker import, cached as a tarball),
     a Python image from it, and stand-ins for the upstream images stack.yml names, from
     Debian packages: Mosquitto, InfluxDB, MySQL (as MariaDB), Prometheus, Alertmanager,
     phpMyAdmin, Grafana (a small server keeping Grafana's SQLite database, no real
     Grafana) and for Kong a small server that reports the client address it sees.
     They carry exactly the names stack.yml uses (tests/e2e/images/ says what each keeps).
  3. Copies the checkout and rewrites the copy's stack.yml for this machine: endpoint_mode dnsrr and
     host-mode ports (this kernel has no IPVS, which Swarm's virtual IPs and ingress
     routing mesh need), the Kong-auth network attachable (a probe container stands in
     for Kong as the auth server's client). Then deploys it with the copy's ./run.sh
     (BASE_IMAGE = the Python image).
  4. Checks: the simulator publishes to port 1883 and every value reaches InfluxDB; the
     InfluxDB init script ran; the auth server answers on its network (login, accounts,
     HTTP data path); Prometheus scrapes the adapter, the auth server, the broker exporter,
     the Alertmanager and Kong, and sends alerts to the Alertmanager; two clients in
     network namespaces of their own reach Kong's port 8080 with their own addresses;
     phpMyAdmin logs in to MySQL through port 8081 and refuses root, whom MySQL refuses
     from phpMyAdmin's container too; from inside every container exactly the peers the
     contract allows are reachable.
  5. docker stack rm, then ./run.sh again: every stored point, the accounts and the
     broker's queue for the adapter survive.
  6. A dashboard edit in Grafana and messages queued for an absent persistent session;
     ./backup.sh while a simulator publishes (no service restarts, nothing is lost);
     ./clean.sh -y and a fresh ./run.sh (new secrets, empty volumes); ./restore.sh -y:
     the points of the moment of the backup, the accounts with their passwords, the
     dashboard edit and the queued messages are back.
  7. ./clean.sh -y, then checks that no stack, service, volume, secret, config, network
     or image of the stack is left.

Options:
  --timeout SECONDS  hard limit for the whole run, clean-up included (default 2400)
  --keep-work        keep the work folder (logs, the copy of the checkout) after success
  --purge-cache      also delete the cached base image tarball and, when this script
                     started the engine, the engine's data folder (every cached image)
  -h, --help         this help

Environment: IOT_E2E_CACHE (/var/cache/iot-e2e: base tarball, engine data folder),
IOT_E2E_MIRROR (the Debian mirror; default: the first one in apt's sources),
IOT_E2E_PYTHON (a Python with PyYAML; default .venv/bin/python, made by ./test.sh).
EOF
}

log() { printf '\n=== [%s] %s\n' "$(elapsed)" "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf '%s: %s\n' "${0##*/}" "$*" >&2
  exit 1
}
elapsed() {
  local s=$((SECONDS - START))
  printf '%dm%02ds' $((s / 60)) $((s % 60))
}

readonly STACK=iot
readonly PYTHON_IMAGE=iot-e2e/python:3.11
# Bump when the base image recipe below changes: the cached tarball and image carry it.
readonly BASE_RECIPE=1
readonly DEBIAN_IMAGE=iot-e2e/debian:bookworm-r$BASE_RECIPE
# Marks every image this script builds, so it never mistakes someone's image for its own.
readonly E2E_LABEL=org.iot-platform.e2e
# Service of stack.yml → folder of its stand-in under tests/e2e/images/.
declare -A STAND_INS=(
  [mqtt_broker]=mosquitto
  [influxdb]=influxdb
  [mysql]=mysql
  [prometheus]=prometheus
  [alertmanager]=alertmanager
  [phpmyadmin]=phpmyadmin
  [kong]=kong
  [grafana]=grafana
)
# Stand-ins built on the Python image instead of the Debian base (they run Python).
declare -A PYTHON_STAND_INS=([kong]=1)
# Network namespaces the checks create for clients of their own (check_kong_client_addresses).
readonly CLIENT_NETNS_PREFIX=iot-e2e-

# --- Set-up --------------------------------------------------------------------------

# install_packages [BINARY=PACKAGE...]: the e2e's Debian packages, and these ones too.
install_packages() {
  local -A wanted=([dockerd]=docker.io [debootstrap]=debootstrap [iptables]=iptables [ip]=iproute2)
  local binary missing=() extra
  for extra in "$@"; do wanted[${extra%%=*}]=${extra#*=}; done
  for binary in "${!wanted[@]}"; do
    command -v "$binary" >/dev/null 2>&1 || [[ -x /usr/sbin/$binary ]] || missing+=("${wanted[$binary]}")
  done
  ((${#missing[@]})) || return 0
  log "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the package from starting its own engine: this script starts one.
  local made_policy=false
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=true
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if $made_policy; then rm -f /usr/sbin/policy-rc.d; fi
}

engine_answers() { docker info >/dev/null 2>&1; }

start_engine() {
  ENGINE_OURS=false
  if engine_answers; then
    # An engine this script started earlier (and could not stop) is still its own.
    if [[ $(docker info --format '{{.DockerRootDir}}') == "$ENGINE_ROOT" ]]; then
      ENGINE_OURS=true
      ENGINE_PID=$(cat "$CACHE_DIR/dockerd.pid" 2>/dev/null || true)
      log "Using the Docker engine a previous e2e run started (data in $ENGINE_ROOT)"
    else
      log "Using the Docker engine that answers ($(docker info --format '{{.DockerRootDir}}'))"
    fi
    return
  fi
  log "No Docker engine answers: starting dockerd (vfs storage, data in $ENGINE_ROOT)"
  mkdir -p "$ENGINE_ROOT"
  # Its own session: the hard time limit signals this script's process group, and the
  # engine must outlive that long enough for the clean-up to use it.
  setsid dockerd --storage-driver=vfs --data-root "$ENGINE_ROOT" --pidfile "$CACHE_DIR/dockerd.pid" \
    >"$WORK/dockerd.log" 2>&1 </dev/null &
  ENGINE_PID=$!
  ENGINE_OURS=true
  local deadline=$((SECONDS + 90))
  until engine_answers; do
    kill -0 "$ENGINE_PID" 2>/dev/null || die "dockerd exited; its log: $WORK/dockerd.log
$(tail -n 20 "$WORK/dockerd.log")"
    ((SECONDS < deadline)) || die "dockerd did not answer within 90s; its log: $WORK/dockerd.log"
    sleep 1
  done
  note "dockerd $(docker info --format '{{.ServerVersion}}') answers (pid $ENGINE_PID)"
}

stop_engine() {
  [[ $ENGINE_OURS == true && -n ${ENGINE_PID:-} ]] || return 0
  kill -0 "$ENGINE_PID" 2>/dev/null || return 0
  log "Stopping the dockerd this script started (pid $ENGINE_PID)"
  kill -TERM "$ENGINE_PID"
  local deadline=$((SECONDS + 60))
  while kill -0 "$ENGINE_PID" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      note "dockerd did not stop within 60s; killing it"
      kill -KILL "$ENGINE_PID" 2>/dev/null || true
      break
    fi
    sleep 1
  done
  rm -f "$CACHE_DIR/dockerd.pid"
  # The engine leaves its network namespace mounts behind; the next one makes its own.
  local netns
  for netns in /run/docker/netns/*; do
    if mountpoint -q "$netns"; then umount "$netns" 2>/dev/null || true; fi
  done
}

# The engine must hold nothing of a real deployment: the e2e deploys, removes and
# deletes the stack `iot` with all its data. On its own engine, whatever is there was left
# by an earlier e2e run that could not finish its clean-up: that is removed.
check_engine_is_empty() {
  local found=()
  if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') == active ]]; then
    docker stack ls --format '{{.Name}}' | grep -qx "$STACK" && found+=("the stack $STACK")
    [[ -z $(docker secret ls -q --filter "name=${STACK}_") ]] || found+=("secrets ${STACK}_*")
  fi
  [[ -z $(docker volume ls -q --filter "label=com.docker.stack.namespace=$STACK") ]] ||
    found+=("volumes of the stack $STACK")
  ((${#found[@]})) || return 0
  if [[ $ENGINE_OURS != true ]]; then
    die "this engine already has $(printf '%s, ' "${found[@]}" | sed 's/, $//'): a real deployment?
  The e2e would delete it. Remove it with ./clean.sh first, or run the e2e on another machine."
  fi
  log "Removing what an earlier e2e run left on its engine: $(printf '%s, ' "${found[@]}" | sed 's/, $//')"
  if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') == active ]]; then
    docker stack rm "$STACK" >/dev/null 2>&1 || true
    wait_stack_gone
    docker swarm leave --force >/dev/null
  fi
  docker volume ls -q --filter "label=com.docker.stack.namespace=$STACK" | xargs -r docker volume rm >/dev/null
}

# The Debian mirror apt uses here (deb822 or one-line sources), for debootstrap.
debian_mirror() {
  if [[ -n ${IOT_E2E_MIRROR:-} ]]; then
    echo "$IOT_E2E_MIRROR"
    return
  fi
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE '(https?|ftp)://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)
  echo "${uri%/}"
}

build_base_image() {
  if docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
    note "$DEBIAN_IMAGE is cached"
    return
  fi
  local tarball=$CACHE_DIR/debian-bookworm-minbase-r$BASE_RECIPE.tar
  if [[ ! -s $tarball ]]; then
    local mirror rootfs=$WORK/rootfs
    mirror=$(debian_mirror)
    [[ -n $mirror ]] || die "no Debian mirror found in apt's sources; set IOT_E2E_MIRROR"
    log "Building the Debian 12 base image with debootstrap from $mirror (cached in $tarball)"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
      die "debootstrap failed; its log: $WORK/debootstrap.log"
    # The same mirror for updates and security fixes; apt inside images installs only
    # what is asked for, and leaves no documentation, man pages or translations behind.
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $mirror-security bookworm-security main
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/90iot-e2e" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90iot-e2e" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
    rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin
    tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
  fi
  log "Importing $tarball as $DEBIAN_IMAGE"
  docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' \
    --change "LABEL $E2E_LABEL=base" "$tarball" "$DEBIAN_IMAGE" >/dev/null
}

# build_e2e_image TAG CONTEXT BASE: builds TAG FROM BASE unless an image of that name
# exists that this script did not build (it would be someone's real image).
build_e2e_image() {
  local tag=$1 context=$2 base=$3
  if docker image inspect "$tag" >/dev/null 2>&1 &&
    [[ -z $(docker image inspect --format "{{ index .Config.Labels \"$E2E_LABEL\" }}" "$tag") ]]; then
    die "the image $tag exists on this engine and is not the e2e's: the e2e would replace it
  with a stand-in. Run the e2e where no engine runs (it starts its own) or remove that image."
  fi
  note "building $tag"
  docker build -q --label "$E2E_LABEL=$tag" --build-arg "BASE_IMAGE=$base" -t "$tag" "$context" \
    >"$WORK/build-${tag//[\/:]/_}.log" 2>&1 ||
    die "building $tag failed; its log: $WORK/build-${tag//[\/:]/_}.log
$(tail -n 30 "$WORK/build-${tag//[\/:]/_}.log")"
  BUILT_IMAGES+=("$tag")
}

build_images() {
  log "Building the images (base, Python, stand-ins)"
  build_base_image
  local context=$WORK/python-context
  mkdir -p "$context/local-ca"
  cp tests/e2e/images/python/* "$context/"
  find /usr/local/share/ca-certificates -name '*.crt' -type f -exec cp {} "$context/local-ca/" \; 2>/dev/null || true
  build_e2e_image "$PYTHON_IMAGE" "$context" "$DEBIAN_IMAGE"
  local service image base
  for service in "${!STAND_INS[@]}"; do
    image=$("$PYTHON" tests/e2e/stackfile.py image stack.yml "$service")
    base=$DEBIAN_IMAGE
    [[ -n ${PYTHON_STAND_INS[$service]:-} ]] && base=$PYTHON_IMAGE
    build_e2e_image "$image" "tests/e2e/images/${STAND_INS[$service]}" "$base"
  done
}

# The checkout as it is (uncommitted changes included, ignored files left out), copied
# so that the stack file can be rewritten and run.sh's state kept apart from the real one.
copy_checkout() {
  log "Copying the checkout to $COPY and rewriting its stack.yml for this machine"
  mkdir -p "$COPY"
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
    [[ -e $file ]] && printf '%s\0' "$file"
  done | tar --null -T - -cf - | tar -C "$COPY" -xf -
  "$PYTHON" tests/e2e/stackfile.py rewrite stack.yml "$COPY/stack.yml"
  note "stand-ins: grafana keeps Grafana's SQLite database (tests/grafana checks the real"
  note "          configuration); kong reports what reaches it (tests/kong checks Kong's)"
  note "changed:  endpoint_mode dnsrr and host-mode ports for every service (no IPVS in"
  note "          this kernel: Swarm's virtual IPs and ingress ports cannot work here);"
  note "          network kong_auth attachable (a probe container stands in for Kong)"
}

# Reject, on this host, packets from containers to the swarm's overlay address pool: a
# probe of an address on a network the container is not attached to goes to its default
# route (docker_gwbridge, then the host) and must fail here instead of leaving the machine.
# guard_overlay_pool [NETNS...]: on these network namespaces (swarm nodes) instead.
guard_overlay_pool() {
  local pools pool netns
  pools=$(docker info --format '{{range .Swarm.Cluster.DefaultAddrPool}}{{.}} {{end}}')
  # None reported: the swarm uses Docker's built-in default pool.
  for netns in "${@:--}"; do
    for pool in ${pools:-10.0.0.0/8}; do
      netns_iptables "$netns" -I DOCKER-USER -i docker_gwbridge -d "$pool" -j REJECT
      GUARD_RULES+=("$netns $pool")
    done
  done
}

unguard_overlay_pool() {
  local rule
  for rule in "${GUARD_RULES[@]}"; do
    netns_iptables "${rule% *}" -D DOCKER-USER -i docker_gwbridge -d "${rule#* }" -j REJECT 2>/dev/null || true
  done
  GUARD_RULES=()
}

# The checks remove their client namespaces themselves; these are what an interrupted run left.
remove_client_namespaces() {
  local netns
  for netns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    [[ $netns == "$CLIENT_NETNS_PREFIX"* ]] && ip netns delete "$netns" 2>/dev/null
  done
  return 0
}

# netns_iptables NETNS ARGS...: iptables in that network namespace (- : this one).
netns_iptables() {
  local netns=$1
  shift
  if [[ $netns == - ]]; then iptables "$@"; else nsenter --net="/run/netns/$netns" -- iptables "$@"; fi
}

# run_sh [OPTION...]: the copy's ./run.sh with these options (--secure).
run_sh() {
  # Without CI: run.sh refuses to generate secrets when CI=true (a generated password would
  # only reach a job log); this throwaway deployment wants exactly the operator's path.
  (cd "$COPY" && env -u CI BASE_IMAGE="$PYTHON_IMAGE" ./run.sh --timeout 600 "$@") 2>&1 | tee -a "$WORK/run.sh.log"
}

# checks PHASE...: tests/e2e/checks.py, run under CHECKS_PREFIX (a command, e.g. nsenter).
checks() {
  "${CHECKS_PREFIX[@]}" "$PYTHON" tests/e2e/checks.py --copy "$COPY" --work "$WORK" --probe-image "$PYTHON_IMAGE" "$@"
}

# Until the stack's services, containers and networks are gone (Swarm removes them
# asynchronously; only then can the stack be deployed again or its volumes removed).
wait_stack_gone() {
  local deadline=$((SECONDS + 240)) what
  for what in "service ls -q" "ps -aq" "network ls -q"; do
    # shellcheck disable=SC2086 # the words of a docker sub-command
    while [[ -n $(docker $what --filter "label=com.docker.stack.namespace=$STACK") ]]; do
      ((SECONDS < deadline)) || die "the stack was not removed within 240s (docker $what)"
      sleep 1
    done
  done
}

# --- Clean-up (always, also after a failure or the time limit) -----------------------

cleanup() {
  local status=$?
  trap - EXIT INT TERM ERR
  set +e
  if ((status != 0)); then
    log "FAILED (exit $status) after $(elapsed); cleaning up"
    if engine_answers && [[ -n $(docker service ls -q --filter "label=com.docker.stack.namespace=$STACK" 2>/dev/null) ]]; then
      note "state of the stack when it failed:"
      docker stack ps "$STACK" --no-trunc --format '{{.Name}} {{.CurrentState}} {{.Error}}' 2>&1 | head -n 30
    fi
  fi
  unguard_overlay_pool
  remove_client_namespaces
  if engine_answers; then
    docker ps -aq --filter "label=$E2E_LABEL.probe" | xargs -r docker rm -f >/dev/null 2>&1
    if [[ -d $COPY && ($CLEANED == false) ]]; then
      note "removing the stack with the copy's ./clean.sh -y"
      (cd "$COPY" && ./clean.sh -y) >>"$WORK/clean.sh.log" 2>&1 || note "clean.sh failed: see $WORK/clean.sh.log"
    fi
    # Stand-ins carry the upstream images' names: never leave them on an engine that is
    # not the e2e's own (someone could take them for the real images).
    local image
    if [[ $ENGINE_OURS != true ]]; then
      for image in "${BUILT_IMAGES[@]}"; do docker image rm "$image" >/dev/null 2>&1; done
      docker image rm "$DEBIAN_IMAGE" >/dev/null 2>&1
    fi
    # Dangling layers of rebuilt images (only on its own engine: others' are not ours).
    if [[ $ENGINE_OURS == true ]]; then docker image prune -f >/dev/null 2>&1; fi
  fi
  stop_engine
  if $PURGE; then
    log "Purging the cache ($CACHE_DIR)"
    rm -f "$CACHE_DIR"/debian-bookworm-minbase-r*.tar
    if [[ $ENGINE_OURS == true ]] && ! engine_answers; then rm -rf "$ENGINE_ROOT"; fi
  fi
  if ((status == 0)) && ! $KEEP_WORK; then
    rm -rf "$WORK"
  else
    note "work folder kept: $WORK (logs, the copy of the checkout)"
  fi
  if ((status == 0)); then
    log "PASSED: the end-to-end test of the stack took $(elapsed)"
  else
    log "FAILED after $(elapsed)"
  fi
  exit "$status"
}

# --- Entry point ---------------------------------------------------------------------

# e2e_begin [OPTION...]: what every e2e script starts with. Parses the options they share
# (the calling script's `usage` is shown), puts the whole run under its hard time limit,
# goes to the checkout's top and sets the run's state. Exits for --help.
e2e_begin() {
  local timeout=2400 args=("$@")
  KEEP_WORK=false
  PURGE=false
  while (($#)); do
    case $1 in
      --timeout)
        [[ ${2:-} =~ ^[0-9]+$ ]] || die "--timeout needs a number of seconds (see --help)"
        timeout=$2
        shift
        ;;
      --keep-work) KEEP_WORK=true ;;
      --purge-cache) PURGE=true ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        usage >&2
        echo >&2
        die "unknown option: $1"
        ;;
    esac
    shift
  done

  # The hard time limit: the whole run under `timeout`, which signals the run's whole
  # process group; the TERM trap then cleans up, and KILL follows 5 minutes later.
  if [[ -z ${IOT_E2E_LIMITED:-} ]]; then
    IOT_E2E_LIMITED=$timeout exec timeout --kill-after=300 "$timeout" "$0" "${args[@]}"
  fi

  cd "$(dirname "${BASH_SOURCE[0]}")/../.."
  [[ $(id -u) == 0 ]] || die "run it as root: it starts dockerd, builds images and deploys a swarm stack"
  START=$SECONDS
  CACHE_DIR=${IOT_E2E_CACHE:-/var/cache/iot-e2e}
  ENGINE_ROOT=$CACHE_DIR/docker
  PYTHON=${IOT_E2E_PYTHON:-.venv/bin/python}
  "$PYTHON" -c 'import yaml' 2>/dev/null || die "$PYTHON with PyYAML is needed: run ./test.sh once (it makes .venv)"
  mkdir -p "$CACHE_DIR"
  WORK=$(mktemp -d /tmp/iot-e2e.XXXXXX)
  COPY=$WORK/checkout
  ENGINE_OURS=false
  CLEANED=false
  BUILT_IMAGES=()
  GUARD_RULES=()
  CHECKS_PREFIX=()
}

main() {
  e2e_begin "$@"
  trap cleanup EXIT
  trap 'exit 124' TERM
  trap 'exit 130' INT
  log "End-to-end test of the stack (hard limit ${IOT_E2E_LIMITED}s; work folder $WORK)"

  install_packages
  start_engine
  check_engine_is_empty
  build_images
  copy_checkout

  log "Deploying with ./run.sh (the copy's; BASE_IMAGE=$PYTHON_IMAGE)"
  run_sh
  guard_overlay_pool
  log "Checking the deployed stack"
  checks deployed

  log "Removing the stack (docker stack rm) and deploying it again with ./run.sh"
  checks before-removal
  docker stack rm "$STACK"
  wait_stack_gone
  run_sh
  log "Checking that the redeployed stack kept its data"
  checks redeployed
  unguard_overlay_pool

  log "Backing up the running stack, removing it with its data, restoring into a fresh one"
  checks before-backup
  checks backup
  # A fresh deployment: all that ./clean.sh -y removes (stack, volumes, secrets, swarm) but
  # the project's images, whose rebuild would only repeat the first deployment's builds.
  mv "$COPY/.state/swarm/images" "$WORK/images-kept-for-the-fresh-deployment"
  (cd "$COPY" && ./clean.sh -y) 2>&1 | tee "$WORK/clean-before-restore.log"
  run_sh
  checks fresh
  log "Restoring the backup into the fresh stack with ./restore.sh -y"
  (cd "$COPY" && ./restore.sh -y "$WORK"/backups/iot-backup-swarm-*.tar) 2>&1 | tee "$WORK/restore.sh.log"
  log "Checking that the restored stack has the data of the backup"
  checks restored

  log "Removing everything with ./clean.sh -y"
  local created_images
  created_images=$(cat "$COPY/.state/swarm/images")
  (cd "$COPY" && ./clean.sh -y) 2>&1 | tee "$WORK/clean.sh.log"
  CLEANED=true
  checks cleaned --images "$created_images"
}

# Sourced (to try one step by hand) it only defines the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
