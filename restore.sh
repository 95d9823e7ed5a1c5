#!/usr/bin/env bash
# Puts a backup made by ./backup.sh back into the running platform.
# Run ./restore.sh --help for the options.
set -Eeuo pipefail
trap 'printf "%s: failed (line %s): %s\n" "restore.sh" "$LINENO" "$BASH_COMMAND" >&2' ERR

# shellcheck disable=SC2034 # read by backup/common.sh (its messages name the script)
readonly SCRIPT=restore.sh

usage() {
  cat <<'EOF'
Usage: ./restore.sh [-y] [--local] [--timeout SECONDS] ARCHIVE
       ./restore.sh --check ARCHIVE
       ./restore.sh --secrets [--local] ARCHIVE

Restores an archive of ./backup.sh into the platform running here (deploy it first with
./run.sh: a fresh deployment, or the one the backup came from). The platform's data becomes
the archive's: every point in InfluxDB, the accounts, Grafana's users and dashboard edits,
the broker's sessions and queued messages. What was stored after the backup is replaced.

It checks the archive first (every checksum), then asks (-y: does not ask; no terminal to
ask: refuses). While it runs, the broker, the adapter, the auth server and Grafana are
stopped (Swarm: scaled to 0; local mode: stopped), InfluxDB and MySQL keep running with
their contents replaced; then they start again, and the adapter stores the restored
queue. Safe to run again, e.g. after a failure.

  --check            only check the archive (checksums, manifest) and show what it holds
  --secrets          only put the archive's secrets (backup.sh --with-secrets) into
                     .state/MODE/secrets/, before ./run.sh creates a new deployment with
                     them; never replaces a secret that exists with another value
  -y, --yes          restore without asking
  --local            restore into local mode even where Docker is available
  --timeout SECONDS  how long to wait for the services to be healthy again (default 600)
  -h, --help         this help

Environment: IOT_STATE_DIR (.state); TMPDIR (/tmp), where the archive is unpacked (it needs
the archive's size); IOT_DATA_NODE_DOCKER_HOST as for backup.sh.
EOF
}

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/backup/common.sh"

# --- The archive ----------------------------------------------------------------------

# Unpacks ARCHIVE into $WORK and checks it; sets ROOT (its folder) and NAME.
unpack_archive() {
  local archive=$1 members
  [[ -f $archive ]] || die "$archive: no such file"
  members=$(tar -tf "$archive" 2>/dev/null) || die "$archive: not a tar archive"
  NAME=$(head -n1 <<<"$members" | cut -d/ -f1)
  [[ $NAME == iot-backup-* ]] || die "$archive: not an archive of backup.sh (no iot-backup-* folder)"
  # Nothing may land outside that one folder.
  if grep -qvE "^$NAME(/|\$)" <<<"$members" || grep -qE '(^|/)\.\.(/|$)' <<<"$members"; then
    die "$archive: holds paths outside $NAME/; refusing it"
  fi
  tar -xf "$archive" -C "$WORK" --no-same-owner --no-same-permissions
  ROOT=$WORK/$NAME
  [[ -f $ROOT/MANIFEST && -f $ROOT/SHA256SUMS ]] || die "$archive: no MANIFEST or SHA256SUMS"
  local format
  format=$(manifest_get "$ROOT/MANIFEST" format)
  [[ $format == "$BACKUP_FORMAT" ]] ||
    die "$archive: backup format '${format:-?}', this restore.sh reads format $BACKUP_FORMAT"
  local failed unlisted
  if ! failed=$(cd "$ROOT" && sha256sum --quiet -c SHA256SUMS 2>&1); then
    die "$archive is damaged; these files do not match their checksums:
$failed"
  fi
  # Every file is covered by a checksum.
  unlisted=$(cd "$ROOT" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort |
    comm -23 - <(sed 's/^[0-9a-f]*  //' SHA256SUMS | LC_ALL=C sort))
  [[ -z $unlisted ]] || die "$archive: files without a checksum: $unlisted"
}

show_archive() {
  local m=$ROOT/MANIFEST component bytes
  note "made $(manifest_get "$m" started_at) on $(manifest_get "$m" host) ($(manifest_get "$m" mode) mode," \
    "broker $(manifest_get "$m" broker_mode)), in $(manifest_get "$m" seconds)s"
  for component in $(manifest_get "$m" components); do
    bytes=$(manifest_get "$m" "$component.bytes")
    note "$component: $(human_size "${bytes:-0}") ($(manifest_get "$m" "$component.version"))"
  done
  note "secrets: $(manifest_get "$m" secrets)"
}

# --- Secrets --------------------------------------------------------------------------

restore_secrets() {
  [[ -d $ROOT/secrets ]] || die "the archive holds no secrets (it was made without backup.sh --with-secrets)"
  local target file name conflicts=() written=()
  target=$(mode_state_dir)/secrets
  for file in "$ROOT"/secrets/*; do
    name=$(basename "$file")
    if [[ -f $target/$name ]]; then
      cmp -s "$file" "$target/$name" || conflicts+=("$name (in $target/, with another value)")
    elif [[ $MODE == swarm ]] && docker secret inspect "${STACK}_$name" >/dev/null 2>&1; then
      conflicts+=("$name (the swarm has the secret ${STACK}_$name)")
    fi
  done
  if ((${#conflicts[@]})); then
    die "these secrets exist with other values, in use by a deployment whose data was set up with them:
  $(printf '%s\n  ' "${conflicts[@]}")
  --secrets is for a new machine, before ./run.sh; to replace a deployment's secrets,
  remove it first (./clean.sh -y deletes its data too)"
  fi
  mkdir -p "$target"
  chmod 700 "$target"
  for file in "$ROOT"/secrets/*; do
    name=$(basename "$file")
    [[ -f $target/$name ]] && continue
    (umask 077 && cp "$file" "$target/$name")
    written+=("$name")
  done
  log "Secrets in $target/: ${written[*]:-all of them were there already}"
  note "now ./run.sh$([[ $MODE == local ]] && echo ' --local') (it creates the deployment with them), then ./restore.sh $ARCHIVE"
}

# --- Restore --------------------------------------------------------------------------

# confirm QUESTION: yes with -y, else the operator's answer; no terminal to ask: no.
confirm() {
  [[ $YES == true ]] && return 0
  if [[ ! -t 0 ]]; then
    die "no terminal to ask whether to replace the platform's data; ./restore.sh -y ARCHIVE does it"
  fi
  local answer
  read -r -p "$1 [y/N] " answer
  [[ $answer == [yY]* ]]
}

# Puts the writers back after a failure, so that a failed restore never leaves the platform down.
restart_after_failure() {
  local status=$?
  if ((status != 0)) && [[ $WRITERS_STOPPED == true ]]; then
    printf '%s: the restore failed; starting the stopped services again\n' "$SCRIPT" >&2
    WRITERS_STOPPED=false
    (mode_start_writers) || true
    printf '%s: ./restore.sh can be run again (tool output: %s)\n' "$SCRIPT" "$TOOL_LOG" >&2
    KEEP_WORK=true
  fi
  if [[ $KEEP_WORK != true ]]; then rm -rf "$WORK"; fi
  exit "$status"
}

restore_data() {
  mode_prepare
  local m=$ROOT/MANIFEST component present=() skipped=()
  for component in "${COMPONENTS[@]}"; do
    [[ -d $ROOT/$component ]] || continue
    if mode_has "$component"; then present+=("$component"); else skipped+=("$component"); fi
  done
  ((${#present[@]})) || die "the archive holds nothing this mode can restore"

  log "This replaces the data of the platform running here ($MODE mode) with the archive's:"
  note "${present[*]}${skipped[*]:+ (not in this mode, left out: ${skipped[*]})}"
  note "what was stored after the backup is lost; $WRITERS_TEXT"
  note "are stopped until it is done"
  confirm "Restore $NAME?" || die "nothing restored"

  WRITERS_STOPPED=true
  log "Stopping $WRITERS_TEXT"
  mode_stop_writers
  local started
  for component in "${present[@]}"; do
    log "$component"
    started=$(now)
    if ! "${component}_restore" "$ROOT/$component"; then
      tail -n 20 "$TOOL_LOG" >&2
      die "restoring $component failed (above)"
    fi
    note "done in $(elapsed_since "$started")s"
  done
  log "Starting them again"
  mode_start_writers
  WRITERS_STOPPED=false

  log "Restored $NAME"
  note "restored accounts log in with the passwords they had at the backup"
  if [[ -d $ROOT/secrets ]]; then
    note "(the archive's secrets/ has those of the admin accounts as they were then)"
  fi
  local archive_mode current_mode
  archive_mode=$(manifest_get "$m" broker_mode)
  current_mode=$(mode_broker_mode)
  if [[ -n $archive_mode && $archive_mode != "$current_mode" ]]; then
    note "the backup's broker ran in $archive_mode mode, this one runs $current_mode:" \
      "./run.sh$([[ $archive_mode == secure ]] && echo ' --secure') switches it"
  fi
}

main() {
  YES=false
  TIMEOUT=600
  local force_local=false action=restore archive=""
  while (($#)); do
    case $1 in
      -y | --yes) YES=true ;;
      --local) force_local=true ;;
      --check) action=check ;;
      --secrets) action=secrets ;;
      --timeout)
        [[ ${2:-} =~ ^[0-9]+$ ]] || die "--timeout needs a number of seconds (see --help)"
        # shellcheck disable=SC2034 # read by backup/swarm.sh
        TIMEOUT=$2
        shift
        ;;
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
        [[ -z $archive ]] || die "only one ARCHIVE, please (see --help)"
        archive=$1
        ;;
    esac
    shift
  done
  if [[ -z $archive ]]; then
    usage >&2
    echo >&2
    die "which archive? (./restore.sh ARCHIVE)"
  fi
  # The archive's path is the caller's; everything else is relative to the checkout.
  [[ -f $archive ]] || die "$archive: no such file"
  ARCHIVE=$(cd "$(dirname "$archive")" && pwd)/$(basename "$archive")
  cd "$(dirname "${BASH_SOURCE[0]}")"
  # shellcheck disable=SC2034 # read by backup/*.sh
  STATE_DIR=${IOT_STATE_DIR:-.state}
  local tool
  for tool in tar gzip sha256sum cmp comm awk; do
    command -v "$tool" >/dev/null || die "'$tool' is required but not installed"
  done

  WORK=$(mktemp -d "${TMPDIR:-/tmp}/iot-restore.XXXXXX")
  TOOL_LOG=$WORK/tools.log
  : >"$TOOL_LOG"
  KEEP_WORK=false
  WRITERS_STOPPED=false
  trap restart_after_failure EXIT
  log "Checking $ARCHIVE"
  unpack_archive "$ARCHIVE"
  note "every checksum matches"
  show_archive
  [[ $action == check ]] && return 0

  detect_mode "$force_local"
  local archive_mode
  archive_mode=$(manifest_get "$ROOT/MANIFEST" mode)
  [[ $archive_mode == "$MODE" ]] ||
    die "the archive was made in $archive_mode mode, the platform here runs in $MODE mode; a restore
  goes into the mode it came from (MariaDB's dump of local mode is not MySQL 8.4's)"
  # shellcheck source=/dev/null
  case $MODE in
    local) source backup/local.sh ;;
    swarm) source backup/swarm.sh ;;
  esac

  if [[ $action == secrets ]]; then
    restore_secrets
  else
    restore_data
  fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
