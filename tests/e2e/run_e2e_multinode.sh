#!/usr/bin/env bash
# The multi-node end-to-end test: the stack deployed by run.sh on a three-node swarm built
# on this machine (network namespaces on a private bridge, one Docker engine each), checked
# across nodes, through the loss of a node and a drain, in secure mode, then removed.
# It reuses the single-node test's pieces (run_e2e.sh: images, stand-ins, the stack rewrite,
# run.sh and the checks). Run ./tests/e2e/run_e2e_multinode.sh --help for what it does.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=/dev/null # linted on its own
source "$HERE/run_e2e.sh"
# shellcheck source=/dev/null # linted on its own
source "$HERE/nodes.sh"
trap 'printf "run_e2e_multinode.sh: failed (line %s): %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

usage() {
  cat <<'EOF'
Usage: tests/e2e/run_e2e_multinode.sh [--timeout SECONDS] [--keep-work] [--purge-cache] [--help]

Deploys the platform on a three-node Docker Swarm made on this machine and checks it end to
end, through the loss of a node. Needs root; starts its own three engines (no engine of
the host is used or changed).

  1. A private LAN: a bridge in a network namespace of its own (192.168.213.0/24), with
     Debian's docker-registry (192.168.213.1:5000) and a build proxy on it; three nodes,
     each a network namespace wired to it by a veth pair (manager .11, worker1 .12,
     worker2 .13), each running its own dockerd (own socket, exec root, pid file, data
     folder, mount and UTS namespace, cgroup). The host's network namespace gets nothing:
     no interface, route or firewall rule. The kernel's VXLAN support (overlay networks
     across nodes) is checked first.
  2. One swarm: manager (labelled iot.data=true by run.sh: the stateful services and their
     volumes) and two workers; the manager is labelled iot.adapter=false, so the adapter
     replicas run on the workers.
  3. The single-node test's images, built on the manager (base image, Python, stand-ins);
     the stand-ins pushed to the registry, which every engine uses as its Docker Hub
     mirror (their upstream names resolve there, nothing comes from the Internet). The
     stack.yml rewrite of the single-node test (dnsrr, host-mode ports: no IPVS here).
  4. ./run.sh on the manager with IOT_REGISTRY=192.168.213.1:5000/iot (it pushes the
     project's images there; the workers pull them), ADAPTER_REPLICAS=2 and
     ADAPTER_MQTT_TOPIC='$share/adapters/#'.
  5. Checks (tests/e2e/checks.py, phases deployed-multinode, node-loss, drain, secure):
     everything the single-node test checks on a first deployment, with the adapter
     replicas on other nodes than the broker and InfluxDB and the isolation probes
     crossing nodes; a worker running an adapter replica powered off mid-stream (network
     cut, every process killed at once) loses no reading, then comes back; a drain
     mid-stream loses no reading; ADAPTER_REPLICAS=1 ./run.sh leaves the removed slot's
     share queued in the broker, and scaling back up stores it; ./run.sh --secure: a device
     account publishes over TLS on 8883 (certificate from run.sh's CA, for the data node's
     address), a wrong password and an anonymous client are refused, the adapters store.
  6. ./clean.sh -y on the manager, then the single-node test's check that nothing of the
     stack is left; then the swarm, engines, namespaces, bridge, registry and proxy are
     removed, also after a failure or the time limit, and a last check compares the host
     with how it was found (network, firewall, mounts, cgroups, processes).

Options:
  --timeout SECONDS  hard limit for the whole run, clean-up included (default 2400)
  --keep-work        keep the work folder (logs, the copy of the checkout) after success
  --purge-cache      also delete the engines' data folders and the registry's storage

Run only one engine-using test at a time on a machine (wrap it: flock /tmp/iot-e2e.lock).
Environment: IOT_E2E_CACHE (/var/cache/iot-e2e: the base tarball, shared with the
single-node test, and multinode/: the engines' data folders and the registry's storage),
IOT_E2E_STORAGE_DRIVER (the engines' storage driver, default overlay2), IOT_E2E_MIRROR,
IOT_E2E_PYTHON (as for run_e2e.sh).
EOF
}

readonly DATA_NODE=manager
readonly WORKERS=(worker1 worker2)
# The operator's way to keep the adapter replicas off a node (stack.yml's constraint).
readonly ADAPTER_LABEL=iot.adapter

# --- The host, as found and as left ------------------------------------------------

# What the test must leave exactly as it found it: the host's network namespace (links,
# addresses, routes, rules, firewall, forwarding) and what it could leave behind elsewhere.
host_snapshot() {
  echo "## links"
  ip -o link show | sed -E 's/^[0-9]+: //'
  echo "## addresses"
  ip -o addr show
  echo "## routes"
  ip route show table all
  ip -6 route show table all 2>/dev/null || true
  echo "## rules"
  ip rule show
  echo "## iptables"
  # Counters change with traffic; only the rules count.
  iptables-save | grep -v '^#' | sed -E 's/\[[0-9]+:[0-9]+\]//'
  ip6tables-save 2>/dev/null | grep -v '^#' | sed -E 's/\[[0-9]+:[0-9]+\]//' || true
  echo "## sysctls"
  sysctl net.ipv4.ip_forward net.ipv4.conf.all.forwarding 2>/dev/null || true
  echo "## network namespaces"
  ip netns list
  echo "## mounts and files of the test"
  grep -E "$NODES_RUN|/run/netns/$NETNS_PREFIX-|/run/containerd|$NODES_CGROUP" /proc/self/mountinfo |
    awk '{print $5, $9}' || true
  ls -d "$NODES_RUN" /sys/fs/cgroup/*/"$NODES_CGROUP" 2>/dev/null || true
  echo "## processes of the test"
  pgrep -af "$NODES_RUN|netns_proxy.py|docker-registry serve" | grep -v pgrep || true
}

check_host_as_found() {
  host_snapshot >"$WORK/host-after.txt"
  if diff -u "$WORK/host-before.txt" "$WORK/host-after.txt" >"$WORK/host.diff"; then
    echo "PASS host_as_found (0s): no namespace, veth, bridge, engine, registry, proxy, mount, cgroup or" \
      "firewall rule of the test is left; the host's links, addresses, routes and iptables are as found"
    return 0
  fi
  echo "FAIL host_as_found (0s): the host differs from how the test found it:"
  sed 's/^/    /' "$WORK/host.diff"
  return 1
}

# Whatever an earlier run could not remove (it was killed): the fixed names find it.
leftovers() {
  ip netns list | grep -o "^$NETNS_PREFIX-[a-z0-9]*" || true
  [[ ! -d $NODES_RUN ]] || echo "$NODES_RUN"
  ls -d /sys/fs/cgroup/*/"$NODES_CGROUP" 2>/dev/null || true
}

# --- The LAN's services --------------------------------------------------------------

wait_lan_port() {
  local what=$1 port=$2 log=$3 deadline=$((SECONDS + 30))
  # shellcheck disable=SC2016 # expanded by that bash
  until in_netns "$LAN_NETNS" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$LAN_ADDRESS" "$port" 2>/dev/null; do
    ((SECONDS < deadline)) || die "the $what did not answer on $LAN_ADDRESS:$port within 30s; its log:
$(tail -n 20 "$log")"
    sleep 0.5
  done
}

start_registry() {
  local dir=$NODES_RUN/registry storage
  storage=$(nodes_cache)/registry
  mkdir -p "$dir" "$storage"
  cat >"$dir/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $storage}
  delete: {enabled: true}
http: {addr: "$REGISTRY"}
EOF
  # nsenter itself as the job, so that $! is the registry (nsenter execs it).
  nsenter --net="/run/netns/$LAN_NETNS" -- docker-registry serve "$dir/config.yml" \
    >"$WORK/registry.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  wait_lan_port registry 5000 "$WORK/registry.log"
  note "docker-registry $(docker-registry --version | awk '{print $3}') on $REGISTRY (storage $storage)"
}

start_build_proxy() {
  mkdir -p "$NODES_RUN/proxy"
  "$PYTHON" tests/e2e/netns_proxy.py --listen "${BUILD_PROXY#http://}" --netns "/run/netns/$LAN_NETNS" \
    >"$WORK/proxy.log" 2>&1 </dev/null &
  echo $! >"$NODES_RUN/proxy/pid"
  wait_lan_port "build proxy" "${BUILD_PROXY##*:}" "$WORK/proxy.log"
  # Only image builds use it (the docker CLI passes it as build arguments); containers
  # of the stack and the probes never see it.
  mkdir -p "$WORK/build-config"
  cat >"$WORK/build-config/config.json" <<EOF
{"proxies": {"default": {"httpProxy": "$BUILD_PROXY", "httpsProxy": "$BUILD_PROXY",
  "noProxy": "localhost,127.0.0.1,$LAN_SUBNET.0/24"}}}
EOF
  note "build proxy on $BUILD_PROXY (apt and pip in image builds reach the Internet through it)"
}

stop_pid_file() {
  local file=$1 pid
  pid=$(cat "$file" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
}

# --- Nodes and the swarm -------------------------------------------------------------

check_vxlan() {
  local netns
  netns=$(node_netns "$DATA_NODE")
  ip -n "$netns" link add iot-vxlan-check type vxlan id 4242 dstport 4789 dev eth0 ||
    die "this kernel cannot make a VXLAN device: overlay networks cannot span nodes here"
  ip -n "$netns" link del iot-vxlan-check
  note "VXLAN: supported by this kernel (overlay networks span the nodes)"
}

# An engine of the test is the test's own: whatever an earlier run left in it (a swarm,
# containers, volumes) is removed; only its images are kept (a cache).
prepare_engine() {
  local node=$1
  rm -rf "$(node_data_root "$node")/swarm"
  engine_start "$node"
  local found
  found=$(node_docker "$node" ps -aq)
  [[ -z $found ]] || xargs -r docker -H "$(node_socket "$node")" rm -f <<<"$found" >/dev/null
  found=$(node_docker "$node" volume ls -q)
  [[ -z $found ]] || xargs -r docker -H "$(node_socket "$node")" volume rm -f <<<"$found" >/dev/null
}

start_nodes() {
  log "Starting the nodes' engines ($(printf '%s ' "${NODES[@]}")on the LAN $LAN_SUBNET.0/24)"
  local node pids=()
  for node in "${NODES[@]}"; do
    prepare_engine "$node" &
    pids+=($!)
  done
  local pid failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  ((failed == 0)) || die "an engine did not start (logs in $NODES_RUN/*/dockerd.log)"
  for node in "${NODES[@]}"; do
    note "$node: dockerd $(node_docker "$node" info --format '{{.ServerVersion}}, {{.Driver}} storage') at ${NODE_ADDRESS[$node]}, $(node_socket "$node")"
  done
}

# What an operator does by hand before ./run.sh on a swarm of several nodes: init on the
# manager, join the workers, and (optional) keep the adapter replicas off the data node.
swarm_up() {
  log "Making the swarm: $DATA_NODE the manager, ${WORKERS[*]} workers"
  node_docker "$DATA_NODE" swarm init --advertise-addr "${NODE_ADDRESS[$DATA_NODE]}" >/dev/null
  local token node
  token=$(node_docker "$DATA_NODE" swarm join-token -q worker)
  for node in "${WORKERS[@]}"; do
    node_docker "$node" swarm join --token "$token" --advertise-addr "${NODE_ADDRESS[$node]}" \
      "${NODE_ADDRESS[$DATA_NODE]}:2377" >/dev/null
  done
  node_docker "$DATA_NODE" node update --label-add "$ADAPTER_LABEL=false" "$DATA_NODE" >/dev/null
  node_docker "$DATA_NODE" node ls --format '{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}' |
    sed 's/^/    /'
}

# The stand-ins carry the upstream names (eclipse-mosquitto:2.0.20, ...): pushed to the
# registry under Docker Hub's paths, every engine pulls them through its mirror setting.
push_stand_ins() {
  log "Pushing the stand-ins to the registry, the nodes' Docker Hub mirror"
  local service image path
  for service in "${!STAND_INS[@]}"; do
    image=$("$PYTHON" tests/e2e/stackfile.py image stack.yml "$service")
    path=$image
    [[ $path == */* ]] || path=library/$path
    [[ ${path%%/*} != *[.:]* && ${path%%/*} != localhost ]] ||
      die "$image is not a Docker Hub image: the registry cannot stand in for its registry"
    docker tag "$image" "$REGISTRY/$path"
    docker push -q "$REGISTRY/$path" >/dev/null
    docker image rm "$REGISTRY/$path" >/dev/null
    note "$image -> $REGISTRY/$path"
  done
}

# run.sh as an operator runs it on the manager of a multi-node swarm (ADAPTER_REPLICAS: 2).
deploy() {
  DOCKER_CONFIG=$WORK/build-config IOT_REGISTRY=$REGISTRY/iot ADAPTER_REPLICAS=${ADAPTER_REPLICAS:-2} \
    ADAPTER_MQTT_TOPIC="\$share/adapters/#" run_sh "$@"
}

# --- Clean-up (always, also after a failure or the time limit) -----------------------

teardown_nodes() {
  local node pid pids=()
  for node in "${NODES[@]}"; do
    if node_docker "$node" info >/dev/null 2>&1; then
      node_docker "$node" swarm leave --force >/dev/null 2>&1 || true
    fi
  done
  for node in "${NODES[@]}"; do
    engine_stop "$node" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || true; done
  stop_pid_file "$NODES_RUN/registry/pid"
  stop_pid_file "$NODES_RUN/proxy/pid"
  remove_node_cgroups
  for node in "${NODES[@]}"; do
    if [[ -e /run/netns/$(node_netns "$node") ]]; then ip netns del "$(node_netns "$node")"; fi
  done
  if [[ -e /run/netns/$LAN_NETNS ]]; then ip netns del "$LAN_NETNS"; fi
  # Kong's clients of check_kong_client_addresses, if a run was stopped while they existed.
  remove_client_namespaces
  if [[ -f $NODES_RUN/made-run-containerd ]]; then rmdir /run/containerd 2>/dev/null || true; fi
  rm -rf "$NODES_RUN"
}

multinode_cleanup() {
  local status=$?
  trap - EXIT INT TERM ERR
  set +e
  if ((status != 0)); then
    log "FAILED (exit $status) after $(elapsed); cleaning up"
    if [[ -n ${DOCKER_HOST:-} ]] && engine_answers; then
      note "state of the stack when it failed:"
      docker stack ps "$STACK" --no-trunc --format '{{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}' 2>&1 | head -n 40
      docker node ls 2>&1 | sed 's/^/    /'
    fi
  fi
  if [[ -n ${DOCKER_HOST:-} ]] && engine_answers; then
    docker ps -aq --filter "label=$E2E_LABEL.probe" | xargs -r docker rm -f >/dev/null 2>&1
    if [[ -d $COPY && $CLEANED == false ]]; then
      note "removing the stack with the copy's ./clean.sh -y"
      (cd "$COPY" && ./clean.sh -y) >>"$WORK/clean.sh.log" 2>&1 || note "clean.sh failed: see $WORK/clean.sh.log"
    fi
    docker image prune -f >/dev/null 2>&1
  fi
  log "Removing the swarm, the engines, the registry, the proxy, the namespaces and the bridge"
  teardown_nodes
  if $PURGE; then
    log "Purging the cache ($(nodes_cache))"
    rm -rf "$(nodes_cache)"
  fi
  if [[ -f $WORK/host-before.txt ]]; then
    if ! check_host_as_found && ((status == 0)); then status=1; fi
  fi
  if ((status == 0)) && ! $KEEP_WORK; then
    rm -rf "$WORK"
  else
    note "work folder kept: $WORK (logs, the copy of the checkout, host-before/after.txt)"
  fi
  if ((status == 0)); then
    log "PASSED: the multi-node end-to-end test of the stack took $(elapsed)"
  else
    log "FAILED after $(elapsed)"
  fi
  exit "$status"
}

# --- Entry point ---------------------------------------------------------------------

multinode_main() {
  e2e_begin "$@"
  trap multinode_cleanup EXIT
  trap 'exit 124' TERM
  trap 'exit 130' INT
  log "Multi-node end-to-end test of the stack (hard limit ${IOT_E2E_LIMITED}s; work folder $WORK)"
  install_packages docker-registry=docker-registry nsenter=util-linux

  if [[ -n $(leftovers) ]]; then
    log "Removing what an earlier run left: $(leftovers | tr '\n' ' ')"
    teardown_nodes
  fi
  host_snapshot >"$WORK/host-before.txt"

  log "Making the LAN and the nodes' network namespaces"
  mkdir -p "$NODES_RUN"
  [[ -d /run/containerd ]] || { mkdir /run/containerd && touch "$NODES_RUN/made-run-containerd"; }
  lan_up
  local node
  for node in "${NODES[@]}"; do node_netns_up "$node"; done
  check_vxlan
  start_registry
  start_build_proxy
  start_nodes
  swarm_up

  export DOCKER_HOST
  DOCKER_HOST=$(node_socket "$DATA_NODE")
  DOCKER_CONFIG=$WORK/build-config build_images
  push_stand_ins
  copy_checkout
  note "multi-node: each host-mode port is published on the node running its task (the broker's"
  note "          1883 on $DATA_NODE, phpMyAdmin's 8081 wherever it runs), not on every node"

  # The checks run on the LAN, as a client of the swarm would: the nodes' addresses are
  # reachable there, and the engines through their sockets.
  # shellcheck disable=SC2034 # run_e2e.sh's checks runs under it
  CHECKS_PREFIX=(nsenter --net="/run/netns/$LAN_NETNS" --)
  local entry sockets=()
  for node in "${NODES[@]}"; do sockets+=("$node=$(node_socket "$node")"); done
  entry=$(
    IFS=,
    echo "${sockets[*]}"
  )
  export IOT_E2E_NODES=$entry IOT_E2E_NODES_COMMAND=tests/e2e/nodes.sh

  log "Deploying with ./run.sh on $DATA_NODE (IOT_REGISTRY=$REGISTRY/iot, ADAPTER_REPLICAS=2 on \$share/adapters/#)"
  deploy
  local netns=()
  for node in "${NODES[@]}"; do netns+=("$(node_netns "$node")"); done
  guard_overlay_pool "${netns[@]}"
  log "Checking the deployed stack across the nodes"
  checks deployed-multinode

  log "Losing a node mid-stream (power off), then powering it on again"
  checks node-loss
  log "Draining a node mid-stream"
  checks drain
  log "Scaling the adapter down to 1 replica with ./run.sh, then up to 2 again"
  ADAPTER_REPLICAS=1 deploy
  checks scaled-down
  deploy
  checks scaled-up

  log "Switching to secure mode with ./run.sh --secure"
  deploy --secure
  checks secure

  log "Removing everything with ./clean.sh -y"
  local created_images
  created_images=$(cat "$COPY/.state/swarm/images")
  (cd "$COPY" && ./clean.sh -y) 2>&1 | tee "$WORK/clean.sh.log"
  CLEANED=true
  node_docker "$DATA_NODE" node update --label-rm "$ADAPTER_LABEL" "$DATA_NODE" >/dev/null
  checks cleaned --images "$created_images"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  multinode_main "$@"
fi
