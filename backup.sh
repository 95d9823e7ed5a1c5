#!/usr/bin/env bash
# Backs up the running platform into one dated archive; ./restore.sh puts it back.
# Run ./backup.sh --help for the options. Online: ingestion goes on while it runs.
set -Eeuo pipefail
trap 'printf "%s: failed (line %s): %s\n" "backup.sh" "$LINENO" "$BASH_COMMAND" >&2' ERR

# shellcheck disable=SC2034 # read by backup/common.sh (its messages name the script)
readonly SCRIPT=backup.sh

usage() {
  cat <<'EOF'
Usage: ./backup.sh [--with-secrets] [--local] [DIR]

Writes DIR/iot-backup-MODE-YYYYMMDDTHHMMSSZ.tar (DIR defaults to backups/; mode 600),
while the platform keeps running and ingesting. It holds:
  influxdb/    every point of IoT_Devices (influxd backup -portable)
  mysql/       the accounts database iot_accounts (mysqldump --single-transaction)
  grafana/     Grafana's database: users, dashboard edits (a consistent SQLite copy; Swarm)
  mosquitto/   the broker's sessions, queued and retained messages, and its
               dynamic-security file when it has one (saved by the broker, then copied)
  state/       run.sh's state files of this mode, without the secrets
  secrets/     only with --with-secrets: run.sh's secret files of this mode
  MANIFEST     what, versions, sizes and times; SHA256SUMS: checksums of it all

The mode is detected as run.sh detects it: the Swarm stack `iot` where a Docker engine
answers, else local mode (.state/local). --local chooses local mode.

Options:
  --with-secrets  include the passwords and keys run.sh keeps (.state/MODE/secrets/):
                  a restore on a new machine then brings back the very same logins.
                  Anyone with the archive has them: keep it as safe as the platform.
  --local         back up local mode even where Docker is available
  -h, --help      this help

Environment: IOT_STATE_DIR (.state), the state folder run.sh uses;
IOT_DATA_NODE_DOCKER_HOST (Swarm with several nodes): the Docker engine of the node
labelled iot.data=true, e.g. ssh://admin@data-node, when this manager is not that node.
EOF
}

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/backup/common.sh"

# Adds "key: value" lines to the manifest.
MANIFEST_LINES=()
manifest() {
  local key=$1 value=${*:2}
  # One line per value: a tool's multi-line version output becomes one line.
  MANIFEST_LINES+=("$key: ${value//$'\n'/ }")
}

# backup_component NAME: runs NAME_backup into its folder and records what it wrote.
# (NAME_backup runs as a condition, so without errexit: each returns its own failure.)
backup_component() {
  local name=$1 dir=$ROOT/$1 started
  mkdir -p "$dir"
  started=$(now)
  log "$name"
  "${name}_backup" "$dir" || {
    tail -n 20 "$TOOL_LOG" >&2
    die "the backup of $name failed (above); nothing was written to $OUT_DIR"
  }
  local seconds bytes files
  seconds=$(elapsed_since "$started")
  bytes=$(size_of "$dir")
  files=$(find "$dir" -type f | wc -l)
  ((files > 0)) || die "the backup of $name wrote no file"
  manifest "$name.version" "$("${name}_version" 2>>"$TOOL_LOG" || echo unknown)"
  manifest "$name.files" "$files"
  manifest "$name.bytes" "$bytes"
  manifest "$name.seconds" "$seconds"
  note "$(human_size "$bytes") in $files file(s), ${seconds}s"
}

# Copies run.sh's state files (not its folders) of this mode; secrets only when asked. A file
# only its owner may read is left out: run.sh writes what holds a secret that way (the
# rendered Alertmanager configuration has the receivers' passwords), and it derives those
# files from the secrets, which --with-secrets includes.
backup_state() {
  local state_dir secrets_dir file copied=() private=()
  state_dir=$(mode_state_dir)
  mkdir -p "$ROOT/state"
  for file in "$state_dir"/*; do
    [[ -f $file ]] || continue
    # Local mode's adapter client id names the broker session whose queue is in the
    # broker's part of the archive: it travels with it (mosquitto_backup).
    [[ $(basename "$file") == "$ADAPTER_CLIENT_ID_FILE" ]] && continue
    if [[ $(stat -c %a "$file") == ?00 ]]; then
      private+=("$(basename "$file")")
      continue
    fi
    cp -p "$file" "$ROOT/state/"
    copied+=("$(basename "$file")")
  done
  manifest state.files "${copied[*]:-none}"
  manifest state.left_out "${private[*]:-none} (readable by their owner only)"
  secrets_dir=$state_dir/secrets
  if [[ $WITH_SECRETS == true ]]; then
    log "secrets (--with-secrets)"
    compgen -G "$secrets_dir/*" >/dev/null ||
      die "--with-secrets: $secrets_dir/ holds no secret files (secrets created by hand are not kept there)"
    mkdir -p "$ROOT/secrets"
    chmod 700 "$ROOT/secrets"
    cp -p "$secrets_dir"/* "$ROOT/secrets/"
    manifest secrets "included: $(cd "$ROOT/secrets" && echo *)"
    note "$(find "$ROOT/secrets" -type f | wc -l) secret file(s); keep the archive as safe as the platform"
  else
    manifest secrets "not included (backup.sh --with-secrets includes them)"
  fi
}

main() {
  WITH_SECRETS=false
  local force_local=false out_dir=""
  while (($#)); do
    case $1 in
      --with-secrets) WITH_SECRETS=true ;;
      --local) force_local=true ;;
      -h | --help)
        usage
        return 0
        ;;
      -*)
        usage >&2
        echo >&2
        die "unknown option: $1"
        ;;
      *)
        [[ -z $out_dir ]] || die "only one DIR, please (see --help)"
        out_dir=$1
        ;;
    esac
    shift
  done
  # DIR is relative to the caller's folder; everything else to the checkout.
  out_dir=${out_dir:-$(dirname "${BASH_SOURCE[0]}")/backups}
  mkdir -p "$out_dir"
  OUT_DIR=$(cd "$out_dir" && pwd)
  cd "$(dirname "${BASH_SOURCE[0]}")"
  # shellcheck disable=SC2034 # read by backup/*.sh
  STATE_DIR=${IOT_STATE_DIR:-.state}
  # Nothing here reads a terminal; the docker and database clients must not either.
  exec </dev/null
  local tool
  for tool in tar gzip sha256sum find awk; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not installed"
  done

  detect_mode "$force_local"
  # shellcheck source=/dev/null
  case $MODE in
    local) source backup/local.sh ;;
    swarm) source backup/swarm.sh ;;
  esac
  mode_prepare

  local stamp name started_at started
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  name=iot-backup-$MODE-$stamp
  # Two backups within a second get distinct names.
  local n=1
  while [[ -e $OUT_DIR/$name.tar ]]; do name=iot-backup-$MODE-$stamp-$((++n)); done
  WORK=$(mktemp -d "$OUT_DIR/.$name.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  chmod 700 "$WORK"
  ROOT=$WORK/$name
  TOOL_LOG=$WORK/tools.log
  mkdir -p "$ROOT"
  started_at=$(utc_time)
  started=$(now)
  log "Backing up the platform ($MODE mode) into $OUT_DIR/$name.tar"

  local component included=()
  for component in "${BACKUP_ORDER[@]}"; do
    mode_has "$component" || continue
    backup_component "$component"
    included+=("$component")
  done
  backup_state

  local archive=$OUT_DIR/$name.tar seconds
  seconds=$(elapsed_since "$started")
  {
    echo "# IoT platform backup, written by backup.sh; restore it with ./restore.sh ARCHIVE."
    echo "# Checksums of every file are in SHA256SUMS."
    echo "format: $BACKUP_FORMAT"
    echo "name: $name"
    echo "mode: $MODE"
    echo "broker_mode: $(mode_broker_mode)"
    echo "components: ${included[*]}"
    echo "platform_version: $(platform_version)"
    echo "git_commit: $(git_commit)"
    echo "host: $(hostname)"
    echo "started_at: $started_at"
    echo "finished_at: $(utc_time)"
    echo "seconds: $seconds"
    echo "influxdb.database: $INFLUX_DATABASE"
    echo "mysql.database: $MYSQL_DATABASE"
    printf '%s\n' "${MANIFEST_LINES[@]}"
  } >"$ROOT/MANIFEST"
  (cd "$ROOT" && find . -type f ! -name SHA256SUMS -printf '%P\0' | LC_ALL=C sort -z | xargs -0 sha256sum) \
    >"$ROOT/SHA256SUMS"
  (umask 077 && tar -C "$WORK" -cf "$archive.part" "$name")
  mv "$archive.part" "$archive"

  local bytes
  bytes=$(size_of "$archive")
  log "Done in ${seconds}s: $archive ($(human_size "$bytes"))"
  note "holds: ${included[*]}, run.sh's state$([[ $WITH_SECRETS == true ]] && echo ', secrets')"
  note "check it:   ./restore.sh --check $archive"
  note "restore it: ./restore.sh $archive"
  note "Copy it off this machine: a backup on the disk it protects is lost with that disk."
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
