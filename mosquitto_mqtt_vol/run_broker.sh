#!/bin/sh
# Runs Mosquitto and keeps its log file bounded by size. Mosquitto itself never rotates the
# file it writes (log_dest file): this script renames it when it is larger than
# MOSQUITTO_LOG_MAX_BYTES, keeps MOSQUITTO_LOG_FILES renamed ones (.1 newest), and sends the
# broker SIGHUP, on which Mosquitto 2.0 reloads its configuration and reopens its log.
#
# Usage: run_broker.sh LOG_FILE COMMAND [ARGUMENTS...]
#   e.g. run_broker.sh /mosquitto/log/mosquitto.log /usr/sbin/mosquitto -c /mosquitto/config/mosquitto.conf
# Settings (environment):
#   MOSQUITTO_LOG_MAX_BYTES      rotate above this size (default 10485760, 10 MiB)
#   MOSQUITTO_LOG_FILES          rotated files kept (default 4): at most about
#                                (FILES + 1) x MAX_BYTES on disk, 50 MiB by default
#   MOSQUITTO_LOG_CHECK_SECONDS  how often the size is checked (default 30)
# SIGTERM and SIGINT are passed to the broker; the script exits with the broker's status.
# POSIX sh: it runs in the upstream image (busybox) and on Debian (dash) alike.
set -eu

usage() {
  echo "usage: run_broker.sh LOG_FILE COMMAND [ARGUMENTS...]" >&2
  exit 2
}
[ $# -ge 2 ] || usage
log=$1
shift
max=${MOSQUITTO_LOG_MAX_BYTES:-10485760}
keep=${MOSQUITTO_LOG_FILES:-4}
interval=${MOSQUITTO_LOG_CHECK_SECONDS:-30}
for setting in "MOSQUITTO_LOG_MAX_BYTES=$max" "MOSQUITTO_LOG_FILES=$keep" "MOSQUITTO_LOG_CHECK_SECONDS=$interval"; do
  case ${setting#*=} in
    '' | *[!0-9]*)
      echo "run_broker.sh: $setting must be a whole number" >&2
      exit 2
      ;;
  esac
done
if [ "$max" -lt 4096 ] || [ "$keep" -lt 1 ] || [ "$interval" -lt 1 ]; then
  echo "run_broker.sh: MOSQUITTO_LOG_MAX_BYTES >= 4096, MOSQUITTO_LOG_FILES >= 1, MOSQUITTO_LOG_CHECK_SECONDS >= 1" >&2
  exit 2
fi

"$@" &
broker=$!
pause=
stopping=
# shellcheck disable=SC2317 # run by the trap
stop() {
  stopping=1
  kill -TERM "$broker" 2>/dev/null || true
  if [ -n "$pause" ]; then kill "$pause" 2>/dev/null || true; fi
}
trap stop TERM INT

rotate() {
  i=$keep
  rm -f "$log.$i"
  while [ "$i" -gt 1 ]; do
    j=$((i - 1))
    if [ -f "$log.$j" ]; then mv -f "$log.$j" "$log.$i"; fi
    i=$j
  done
  mv -f "$log" "$log.1"
  # Mosquitto reopens (creates) its log file on SIGHUP; until then it writes to the renamed one.
  kill -HUP "$broker" 2>/dev/null || true
}

while [ -z "$stopping" ] && kill -0 "$broker" 2>/dev/null; do
  sleep "$interval" &
  pause=$!
  wait "$pause" || true
  pause=
  if [ -f "$log" ] && [ "$(wc -c <"$log")" -gt "$max" ]; then rotate; fi
done
# The broker's exit status (wait again if a second signal interrupted the first wait).
status=0
wait "$broker" || status=$?
while kill -0 "$broker" 2>/dev/null; do
  status=0
  wait "$broker" || status=$?
done
exit "$status"
