#!/bin/bash
# Entry point of the MySQL stand-in (MariaDB). As the upstream image: started as root it
# hands the data folder to the mysql user and runs itself again as that user; on an empty
# data folder it creates the system tables, the root password, MYSQL_DATABASE and
# MYSQL_USER, and runs /docker-entrypoint-initdb.d/*, all on a temporary server without
# networking, so no client can connect before the database is ready.
set -euo pipefail

log() { printf '%s [Entrypoint]: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S')" "$*"; }
die() {
  log "error: $*" >&2
  exit 1
}

# VAR or the content of the file named by VAR_FILE (Docker secrets); not both.
file_env() {
  local var=$1 file_var=${1}_FILE
  if [[ -n ${!var:-} && -n ${!file_var:-} ]]; then
    die "both $var and $file_var are set; use one"
  fi
  if [[ -n ${!file_var:-} ]]; then
    [[ -r ${!file_var} ]] || die "$file_var=${!file_var} is not readable"
    printf -v "$var" '%s' "$(<"${!file_var}")"
  fi
  export "$var=${!var:-}"
  unset "$file_var"
}

# A string literal for SQL (backslashes and quotes escaped).
sql_string() {
  local value=${1//\\/\\\\}
  printf "'%s'" "${value//\'/\\\'}"
}

# A quoted identifier for SQL (backquotes doubled).
sql_identifier() {
  local bq='`'
  printf '%s%s%s' "$bq" "${1//$bq/$bq$bq}" "$bq"
}

client() { mariadb --protocol=socket --socket=/run/mysqld/mysqld.sock -uroot "$@"; }

initialise() {
  file_env MYSQL_ROOT_PASSWORD
  file_env MYSQL_PASSWORD
  if [[ -z $MYSQL_ROOT_PASSWORD && -z ${MYSQL_ALLOW_EMPTY_PASSWORD:-} && -z ${MYSQL_RANDOM_ROOT_PASSWORD:-} ]]; then
    die "database is uninitialized and the root password is not set: give MYSQL_ROOT_PASSWORD(_FILE),
  MYSQL_ALLOW_EMPTY_PASSWORD or MYSQL_RANDOM_ROOT_PASSWORD"
  fi
  if [[ -n ${MYSQL_RANDOM_ROOT_PASSWORD:-} ]]; then
    MYSQL_ROOT_PASSWORD=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
    log "GENERATED ROOT PASSWORD: $MYSQL_ROOT_PASSWORD"
  fi

  log "Initializing database files"
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
    --auth-root-authentication-method=normal --skip-name-resolve >/dev/null

  log "Starting a temporary server (no networking)"
  "$@" --skip-networking --socket=/run/mysqld/mysqld.sock &
  local server=$! ready=false
  for _ in $(seq 120); do
    if client -e 'SELECT 1' >/dev/null 2>&1; then
      ready=true
      break
    fi
    kill -0 "$server" 2>/dev/null || break
    sleep 0.5
  done
  $ready || die "the temporary server did not start"

  # Only root remains, from anywhere (MYSQL_ROOT_HOST, default %), with the password.
  local account sql="" root_host=${MYSQL_ROOT_HOST:-%}
  while read -r account; do
    sql+="DROP USER $account;"
  done < <(client -N -e "SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.user
      WHERE NOT (User IN ('root', 'mariadb.sys') AND Host = 'localhost')")
  local password
  password=$(sql_string "$MYSQL_ROOT_PASSWORD")
  sql+="ALTER USER 'root'@'localhost' IDENTIFIED BY $password;"
  if [[ $root_host != localhost ]]; then
    sql+="CREATE USER 'root'@$(sql_string "$root_host") IDENTIFIED BY $password;"
    sql+="GRANT ALL ON *.* TO 'root'@$(sql_string "$root_host") WITH GRANT OPTION;"
  fi
  if [[ -n ${MYSQL_DATABASE:-} ]]; then
    log "Creating database $MYSQL_DATABASE"
    sql+="CREATE DATABASE IF NOT EXISTS $(sql_identifier "$MYSQL_DATABASE");"
  fi
  if [[ -n ${MYSQL_USER:-} && -n $MYSQL_PASSWORD ]]; then
    [[ $MYSQL_USER != root ]] || die "MYSQL_USER=root: the root account is set up by MYSQL_ROOT_PASSWORD"
    log "Creating user $MYSQL_USER"
    sql+="CREATE USER $(sql_string "$MYSQL_USER")@'%' IDENTIFIED BY $(sql_string "$MYSQL_PASSWORD");"
    if [[ -n ${MYSQL_DATABASE:-} ]]; then
      sql+="GRANT ALL ON $(sql_identifier "$MYSQL_DATABASE").* TO $(sql_string "$MYSQL_USER")@'%';"
    fi
  fi
  # On standard input: the statements hold passwords, which must not be arguments.
  client <<<"$sql FLUSH PRIVILEGES;"

  # From here on root needs its password.
  local defaults
  defaults=$(mktemp)
  printf '[client]\nuser=root\npassword="%s"\n' "${MYSQL_ROOT_PASSWORD//\"/\\\"}" >"$defaults"
  run_sql() { mariadb --defaults-extra-file="$defaults" --protocol=socket ${MYSQL_DATABASE:+"$MYSQL_DATABASE"}; }
  local file
  for file in /docker-entrypoint-initdb.d/*; do
    [[ -e $file ]] || continue
    case $file in
      *.sh)
        if [[ -x $file ]]; then
          log "running $file"
          "$file"
        else
          log "sourcing $file"
          # shellcheck source=/dev/null
          . "$file"
        fi
        ;;
      *.sql)
        log "running $file"
        run_sql <"$file"
        ;;
      *.sql.gz)
        log "running $file"
        gunzip -c "$file" | run_sql
        ;;
      *) log "ignoring $file" ;;
    esac
  done

  log "Stopping the temporary server"
  mysqladmin --defaults-extra-file="$defaults" --protocol=socket shutdown
  wait "$server" || true
  rm -f "$defaults"
  log "Database initialized; ready for start up"
}

# Flags alone are flags for the server.
if [[ ${1:-} == -* ]]; then
  set -- mysqld "$@"
fi
if [[ ${1:-} == mysqld || ${1:-} == mariadbd ]]; then
  if [[ $(id -u) == 0 ]]; then
    chown -R mysql:mysql /var/lib/mysql /run/mysqld
    exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@"
  fi
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    initialise "$@"
  fi
fi
exec "$@"
