#!/usr/bin/env bash
# The machines of the multi-node end-to-end test, all on this one: a private LAN (a bridge
# in a network namespace of its own, with the image registry and a build proxy on it) and
# three swarm nodes, each a network namespace on that LAN running its own Docker engine.
# Sourced by run_e2e_multinode.sh for its functions; run directly it powers a node off or
# on (the checks lose a node mid-stream this way). Run tests/e2e/nodes.sh --help.
set -Eeuo pipefail

nodes_usage() {
  cat <<'EOF'
Usage: tests/e2e/nodes.sh power-off NODE | start NODE | --help

Acts on a node of the running multi-node end-to-end test (tests/e2e/run_e2e_multinode.sh):
  power-off NODE  the node's network goes down first (it sends nothing more), then every
                  process of the node (engine, containerd, containers) is frozen and killed
                  at once: what a power cut looks like to the rest of the swarm
  start NODE      powers the node on again: network up, its engine started on its own data
                  folder, so it rejoins the swarm as the same node
NODE is one of manager, worker1, worker2.
EOF
}

# --- The layout (fixed names: a run finds what an earlier, killed run left) ----------

readonly NODES=(manager worker1 worker2)
readonly NETNS_PREFIX=iot-e2e
readonly LAN_NETNS=$NETNS_PREFIX-lan
readonly LAN_BRIDGE=br0
# RFC 1918 addresses, outside Docker's default pools for its bridges (172.17-31.x) and the
# swarm's overlay networks (10.0.0.0/8); they exist only inside these namespaces.
readonly LAN_SUBNET=192.168.213
readonly LAN_ADDRESS=$LAN_SUBNET.1
declare -A NODE_ADDRESS=([manager]=$LAN_SUBNET.11 [worker1]=$LAN_SUBNET.12 [worker2]=$LAN_SUBNET.13)
readonly REGISTRY=$LAN_ADDRESS:5000
# shellcheck disable=SC2034 # used by run_e2e_multinode.sh
readonly BUILD_PROXY=http://$LAN_ADDRESS:3128
# Engines' sockets, exec roots and pid files; gone after every run.
readonly NODES_RUN=/run/iot-e2e-multinode
# The parent of every node's processes in the freezer hierarchy: a node is powered off by
# freezing and killing everything under its cgroup (engine, containerd, shims, containers).
readonly FREEZER_ROOT=/sys/fs/cgroup/freezer
readonly NODES_CGROUP=iot-e2e-multinode

nodes_log() { printf '    %s\n' "$*"; }
nodes_die() {
  printf 'nodes.sh: %s\n' "$*" >&2
  exit 1
}

node_netns() { echo "$NETNS_PREFIX-$1"; }
node_dir() { echo "$NODES_RUN/$1"; }
node_socket() { echo "unix://$NODES_RUN/$1/docker.sock"; }
# The engines' data folders (images, the swarm state) are kept between runs: a cache.
nodes_cache() { echo "${IOT_E2E_CACHE:-/var/cache/iot-e2e}/multinode"; }
node_data_root() { echo "$(nodes_cache)/$1/docker"; }
node_docker() {
  local node=$1
  shift
  DOCKER_HOST=$(node_socket "$node") docker "$@"
}
# A command inside a namespace; only the network namespace changes (files stay the host's).
in_netns() {
  local netns=$1
  shift
  nsenter --net="/run/netns/$netns" -- "$@"
}

is_node() {
  local node
  for node in "${NODES[@]}"; do [[ $1 == "$node" ]] && return 0; done
  return 1
}

# --- The LAN ---------------------------------------------------------------------------

lan_up() {
  ip netns add "$LAN_NETNS"
  ip -n "$LAN_NETNS" link set lo up
  ip -n "$LAN_NETNS" link add "$LAN_BRIDGE" type bridge
  ip -n "$LAN_NETNS" addr add "$LAN_ADDRESS/24" dev "$LAN_BRIDGE"
  ip -n "$LAN_NETNS" link set "$LAN_BRIDGE" up
  # The LAN is the nodes' default gateway, and a dead end: whatever a node sends beyond it
  # (Docker Hub lookups, DNS) is answered at once with "unreachable" instead of hanging.
  in_netns "$LAN_NETNS" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$LAN_NETNS" route add unreachable default
}

# node_netns_up NODE: the node's namespace, wired to the LAN by a veth pair whose ends are
# created inside the two namespaces (the host's own namespace never sees them).
node_netns_up() {
  local node=$1 netns
  netns=$(node_netns "$node")
  ip netns add "$netns"
  ip -n "$netns" link set lo up
  ip -n "$LAN_NETNS" link add "$node" type veth peer name eth0 netns "$netns"
  ip -n "$LAN_NETNS" link set "$node" master "$LAN_BRIDGE" up
  ip -n "$netns" addr add "${NODE_ADDRESS[$node]}/24" dev eth0
  ip -n "$netns" link set eth0 up
  ip -n "$netns" route add default via "$LAN_ADDRESS"
}

node_link() { ip -n "$LAN_NETNS" link set "$1" "$2"; }

# --- Engines ---------------------------------------------------------------------------

node_cgroup() { echo "$FREEZER_ROOT/$NODES_CGROUP/$1"; }

# The engine's settings: its own socket, exec root, pid file and data folder; every
# container under the node's cgroup; the LAN's registry for the project's images
# (IOT_REGISTRY) and as the mirror of Docker Hub, which serves the stand-ins under their
# upstream names (nothing is pulled from the Internet).
write_daemon_json() {
  local node=$1 dir
  dir=$(node_dir "$node")
  cat >"$dir/daemon.json" <<EOF
{
  "hosts": ["$(node_socket "$node")"],
  "exec-root": "$dir/exec",
  "pidfile": "$dir/dockerd.pid",
  "data-root": "$(node_data_root "$node")",
  "storage-driver": "${IOT_E2E_STORAGE_DRIVER:-overlay2}",
  "cgroup-parent": "/$NODES_CGROUP/$node",
  "insecure-registries": ["$REGISTRY"],
  "registry-mirrors": ["http://$REGISTRY"],
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "2"}
}
EOF
}

# Runs in the node's new mount and UTS namespaces (private: nothing it mounts is seen by the
# host, and all of it goes when the node's last process ends), then becomes dockerd.
# shellcheck disable=SC2016 # expanded by the launcher's own shell
readonly ENGINE_LAUNCHER='
hostname=$1 dir=$2 cgroup=$3 nameserver=$4
shift 4
hostname "$hostname"
# /sys describing this network namespace, with the host cgroup mounts kept beneath it.
mkdir -p "$dir/cgroup-keep"
mount --rbind /sys/fs/cgroup "$dir/cgroup-keep"
mount -t sysfs sysfs /sys
mount --move "$dir/cgroup-keep" /sys/fs/cgroup
# Its own name server file (nothing answers there: lookups fail at once), and its own
# /run/containerd (containerd-shim puts its sockets there), so nothing is shared with
# another engine.
echo "nameserver $nameserver" >"$dir/resolv.conf"
mount --bind "$dir/resolv.conf" /etc/resolv.conf
mount -t tmpfs -o mode=0711 tmpfs /run/containerd
echo $$ >"$cgroup/cgroup.procs"
exec dockerd "$@"
'

engine_start() {
  local node=$1 dir cgroup
  dir=$(node_dir "$node")
  cgroup=$(node_cgroup "$node")
  mkdir -p "$dir/exec" "$(node_data_root "$node")" "$cgroup" /run/containerd
  write_daemon_json "$node"
  # Its own session: it must outlive a signal to the test's process group long enough for
  # the clean-up to use it.
  # nsenter itself in the background (not a shell function, whose subshell would be the
  # job): it becomes unshare, then the launcher, then dockerd.
  nsenter --net="/run/netns/$(node_netns "$node")" -- unshare --mount --uts --propagation slave -- \
    setsid bash -ec "$ENGINE_LAUNCHER" launcher "$node" "$dir" "$cgroup" "$LAN_ADDRESS" \
    --config-file "$dir/daemon.json" >>"$dir/dockerd.log" 2>&1 </dev/null &
  # nsenter, unshare, setsid and the launcher each exec the next: this is dockerd's pid.
  local pid=$! deadline=$((SECONDS + 120))
  until node_docker "$node" info >/dev/null 2>&1; do
    if ((SECONDS >= deadline)) || ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$dir/dockerd.log" >&2
      nodes_die "the engine of $node did not answer within 120s (its log: $dir/dockerd.log)"
    fi
    sleep 1
  done
}

# Every process of a node: the engine and all it started (containers included).
node_pids() {
  local cgroup
  cgroup=$(node_cgroup "$1")
  [[ -d $cgroup ]] || return 0
  find "$cgroup" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un
}

freeze() {
  local cgroup=$1 state=$2 deadline=$((SECONDS + 30))
  echo "$state" >"$cgroup/freezer.state"
  until [[ $(cat "$cgroup/freezer.state") == "$state" ]]; do
    ((SECONDS < deadline)) || nodes_die "$cgroup did not become $state within 30s"
    sleep 0.2
  done
}

# Frozen first, so that nothing forks or restarts while the processes are killed.
node_kill_all() {
  local node=$1 cgroup pids deadline=$((SECONDS + 30))
  cgroup=$(node_cgroup "$node")
  [[ -d $cgroup ]] || return 0
  freeze "$cgroup" FROZEN
  mapfile -t pids < <(node_pids "$node")
  ((${#pids[@]} == 0)) || kill -KILL "${pids[@]}" 2>/dev/null || true
  freeze "$cgroup" THAWED
  while [[ -n $(node_pids "$node") ]]; do
    ((SECONDS < deadline)) || nodes_die "processes of $node survived SIGKILL: $(node_pids "$node" | tr '\n' ' ')"
    sleep 0.2
  done
}

# A clean stop (the engine stops its containers), then whatever is left is killed.
engine_stop() {
  local node=$1 pid deadline=$((SECONDS + 60))
  pid=$(cat "$(node_dir "$node")/dockerd.pid" 2>/dev/null || true)
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
  fi
  node_kill_all "$node"
}

node_power_off() {
  local node=$1
  node_link "$node" down
  node_kill_all "$node"
}

node_start() {
  local node=$1
  node_link "$node" up
  engine_start "$node"
}

# Removes the node's cgroups bottom-up: container cgroups in every hierarchy, then its own.
remove_node_cgroups() {
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ -d $hierarchy$NODES_CGROUP ]] || continue
    find "$hierarchy$NODES_CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

nodes_main() {
  case ${1:-} in
    -h | --help)
      nodes_usage
      return 0
      ;;
    power-off | start)
      if [[ $# != 2 ]] || ! is_node "$2"; then
        nodes_usage >&2
        nodes_die "$1 needs one of: ${NODES[*]}"
      fi
      [[ -e /run/netns/$(node_netns "$2") ]] || nodes_die "no node $2 runs (is the multi-node e2e running?)"
      if [[ $1 == power-off ]]; then node_power_off "$2"; else node_start "$2"; fi
      ;;
    *)
      nodes_usage >&2
      nodes_die "unknown command: ${1:-(none)}"
      ;;
  esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  nodes_main "$@"
fi
