#!/usr/bin/env bash
# Creates the IoT_Devices database with an unlimited (INF) retention policy and, where
# InfluxDB requires authentication (the secure profile), its users and their rights.
#
# Idempotent: an existing database is kept; its default retention policy is set to INF;
# users are created once, and their passwords and rights are set again on every run.
# Three ways to use it:
#   - as an init script of the influxdb:1.8 image, mounted in /docker-entrypoint-initdb.d/
#     (the image sources it on first start, against its temporary server);
#   - by hand against any InfluxDB 1.x:  INFLUX_HOST=127.0.0.1 INFLUX_PORT=8086 database/init_influx_db.sh
#   - as the InfluxDB service's entry point (`--serve [influxd options]`, the secure profile):
#     at every start, a temporary influxd on 127.0.0.1 (INFLUXDB_INIT_PORT, 8086) is set up,
#     stopped, and then influxd itself runs with the given options.
# Settings: INFLUXDB_DATABASE (IoT_Devices), INFLUX_HOST (127.0.0.1), INFLUX_PORT (8086).
# Users, only when INFLUXDB_HTTP_AUTH_ENABLED is true: the admin INFLUX_ADMIN_USER (admin)
# with the password in INFLUX_ADMIN_PASSWORD_FILE, and INFLUX_USERS, space-separated
# name:READ|WRITE|ALL:password-file entries (each gets exactly that right on the database).
# Passwords are read from files and sent on standard input: never on a command line.

# A subshell body: when the image sources this file, our shell options and any failure
# stay inside it instead of changing or killing the image's entrypoint.
init_influx_db() (
  set -euo pipefail
  local database=${INFLUXDB_DATABASE:-IoT_Devices}
  local host=${INFLUX_HOST:-127.0.0.1}
  # The image's init script names its temporary server's port INFLUXDB_INIT_PORT.
  local port=${INFLUX_PORT:-${INFLUXDB_INIT_PORT:-8086}}
  local auth_enabled=false
  [[ ${INFLUXDB_HTTP_AUTH_ENABLED:-false} =~ ^[Tt][Rr][Uu][Ee]$ ]] && auth_enabled=true
  local admin=${INFLUX_ADMIN_USER:-admin} admin_password=""
  if $auth_enabled; then
    [[ -n ${INFLUX_ADMIN_PASSWORD_FILE:-} ]] ||
      fail "INFLUXDB_HTTP_AUTH_ENABLED=true needs INFLUX_ADMIN_PASSWORD_FILE (the admin's password)"
    admin_password=$(secret_from "$INFLUX_ADMIN_PASSWORD_FILE")
  fi
  local quoted
  quoted=$(identifier "$database")

  # curl's configuration for the admin's credentials (read from a file descriptor, so that
  # they never appear on a command line); nothing while InfluxDB has no authentication.
  credentials_config() {
    [[ -n $admin_password ]] || return 0
    local pair=$admin:$admin_password
    pair=${pair//\\/\\\\}
    printf 'user = "%s"\n' "${pair//\"/\\\"}"
  }

  # influx_query STATEMENT: runs one InfluxQL statement; prints the answer as CSV (a header
  # line, then rows) and fails, with InfluxDB's message, on any error. The statement goes on
  # curl's standard input because it may hold a password.
  influx_query() {
    local answer status
    answer=$(curl -sS --max-time 30 -H 'Accept: application/csv' -K <(credentials_config) \
      --data-urlencode "db=$database" --data-urlencode 'q@-' -w '\n%{http_code}' \
      "http://$host:$port/query" <<<"$1") || fail "InfluxDB at $host:$port did not answer"
    status=${answer##*$'\n'}
    answer=${answer%$'\n'*}
    if [[ $status != 200 || $answer == error* ]]; then
      # Never the statement itself: it may hold a password.
      echo "init_influx_db: InfluxDB refused a statement (HTTP $status): ${answer#error$'\n'}" >&2
      return 1
    fi
    printf '%s\n' "$answer"
  }

  # An InfluxDB without users takes exactly one statement from anyone: creating an admin.
  ensure_admin() {
    local answer
    answer=$(influx_query 'SHOW USERS' 2>&1) && return 0
    if [[ $answer != *"create admin user first"* ]]; then
      fail "cannot log in as the InfluxDB admin '$admin' (${answer#init_influx_db: }).
  Its password is set at the first secure start: INFLUX_ADMIN_PASSWORD_FILE must hold that one"
    fi
    influx_query "CREATE USER $(identifier "$admin") WITH PASSWORD $(literal "$admin_password") WITH ALL PRIVILEGES" >/dev/null
    echo "init_influx_db: created the admin user $admin"
  }

  ensure_users() {
    local users
    users=$(influx_query 'SHOW USERS')
    local entry name privilege file secret password grants grant
    for entry in ${INFLUX_USERS:-}; do
      IFS=: read -r name privilege file <<<"$entry"
      [[ $name =~ ^[A-Za-z0-9_.@-]+$ && $name != "$admin" && -n $file ]] ||
        fail "INFLUX_USERS: '$entry' is not name:READ|WRITE|ALL:password-file (a name other than the admin's)"
      [[ $privilege =~ ^(READ|WRITE|ALL)$ ]] || fail "INFLUX_USERS: $name: unknown right '$privilege'"
      secret=$(secret_from "$file")
      password=$(literal "$secret")
      if tail -n +2 <<<"$users" | cut -d, -f3 | grep -qxF -- "$name"; then
        influx_query "SET PASSWORD FOR $(identifier "$name") = $password" >/dev/null
      else
        influx_query "CREATE USER $(identifier "$name") WITH PASSWORD $password" >/dev/null
      fi
      # Exactly the listed right: no admin flag, no grant on any other database.
      influx_query "REVOKE ALL PRIVILEGES FROM $(identifier "$name")" >/dev/null
      grants=$(influx_query "SHOW GRANTS FOR $(identifier "$name")" | awk -F, 'NR > 1 && $4 != "NO PRIVILEGES" {print $3}')
      for grant in $grants; do
        [[ $grant == "$database" ]] || influx_query "REVOKE ALL ON $(identifier "$grant") FROM $(identifier "$name")" >/dev/null
      done
      influx_query "GRANT $privilege ON $quoted TO $(identifier "$name")" >/dev/null
      echo "init_influx_db: user $name has $privilege on $database"
    done
  }

  if $auth_enabled; then
    ensure_admin
  fi
  local existing
  existing=$(influx_query 'SHOW DATABASES' | tail -n +2 | cut -d, -f3)
  if grep -qxF -- "$database" <<<"$existing"; then
    echo "init_influx_db: database $database exists"
  else
    influx_query "CREATE DATABASE $quoted WITH DURATION INF NAME autogen" >/dev/null
    echo "init_influx_db: created database $database"
  fi
  # Whoever created it, its default policy keeps data forever.
  local default_rp
  default_rp=$(influx_query "SHOW RETENTION POLICIES ON $quoted" | awk -F, 'NR > 1 && $NF == "true" {print $3}')
  influx_query "ALTER RETENTION POLICY $(identifier "${default_rp:-autogen}") ON $quoted DURATION INF DEFAULT" >/dev/null
  echo "init_influx_db: retention policy ${default_rp:-autogen} on $database is INF"

  if $auth_enabled; then
    ensure_users
  fi
)

fail() {
  echo "init_influx_db: $*" >&2
  exit 1
}

# The content of a secret file, without surrounding whitespace (as the services read it).
secret_from() {
  [[ -r $1 ]] || fail "cannot read the password file $1"
  local value
  value=$(<"$1")
  value=${value#"${value%%[![:space:]]*}"}
  value=${value%"${value##*[![:space:]]}"}
  [[ -n $value ]] || fail "the password file $1 is empty"
  printf '%s' "$value"
}

# InfluxQL quoting: "identifier" and 'string', with backslash escapes.
identifier() {
  local value=${1//\\/\\\\}
  printf '"%s"' "${value//\"/\\\"}"
}
literal() {
  local value=${1//\\/\\\\}
  printf "'%s'" "${value//\'/\\\'}"
}

# --serve [influxd options]: set up on a temporary server that listens only on 127.0.0.1,
# so that no client ever meets an InfluxDB whose users are not ready (without users, the
# first client could make itself admin); then run influxd itself in this process.
serve() {
  local port=${INFLUXDB_INIT_PORT:-8086} influxd=${INFLUXD:-influxd} deadline=$((SECONDS + ${INFLUXDB_INIT_TIMEOUT:-300}))
  INFLUXDB_HTTP_BIND_ADDRESS=127.0.0.1:$port INFLUXDB_HTTP_HTTPS_ENABLED=false "$influxd" "$@" &
  TEMPORARY_INFLUXD=$!
  # Whatever ends this script before the exec below also stops the temporary server. As
  # PID 1 a shell ignores the signals it has no handler for: TERM and INT get one.
  trap stop_temporary_influxd EXIT
  trap 'exit 143' TERM INT
  echo "init_influx_db: setting up on a temporary server (127.0.0.1:$port)"
  until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/ping" 2>/dev/null; do
    kill -0 "$TEMPORARY_INFLUXD" 2>/dev/null || fail "the temporary influxd exited during start-up"
    ((SECONDS < deadline)) || fail "the temporary influxd did not answer within ${INFLUXDB_INIT_TIMEOUT:-300}s"
    sleep 0.5
  done
  INFLUX_HOST=127.0.0.1 INFLUX_PORT=$port init_influx_db || exit 1
  stop_temporary_influxd
  trap - EXIT TERM INT
  echo "init_influx_db: set up; starting influxd"
  exec "$influxd" "$@"
}

stop_temporary_influxd() {
  if [[ -n ${TEMPORARY_INFLUXD:-} ]] && kill -TERM "$TEMPORARY_INFLUXD" 2>/dev/null; then
    wait "$TEMPORARY_INFLUXD" || true
  fi
  TEMPORARY_INFLUXD=""
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    -h | --help)
      sed -n '2,/^$/p' "$0" | sed -e '/^$/d' -e 's/^# \{0,1\}//'
      exit 0
      ;;
    --serve)
      shift
      serve "$@"
      ;;
    "") init_influx_db ;;
    *)
      echo "usage: $0 [--serve [influxd options]] [--help]" >&2
      exit 2
      ;;
  esac
else
  init_influx_db
fi
