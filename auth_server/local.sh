# shellcheck shell=bash
# Local mode of ./run.sh (no Docker): the auth server and its MariaDB as local processes.
# Sourced by run.sh's local_mode (see "Hook for the auth server" there); it only adds
# components and defines their functions, using run.sh's helpers and variables.
# Secrets are generated once into $LOCAL_DIR/secrets/ (mode 600) and read through the
# auth server's *_FILE settings, as in the stack.

LOCAL_COMPONENTS+=(mariadb auth_server)
LOCAL_PACKAGES+=([mariadbd]=mariadb-server [mariadb-install-db]=mariadb-server [mariadb]=mariadb-client)
LOCAL_REQUIREMENTS+=(auth_server/requirements.txt)

# local_secret NAME: the path of a random secret, created on first use.
local_secret() {
  local file=$LOCAL_DIR/secrets/$1
  if [[ ! -s $file ]]; then
    mkdir -p "$LOCAL_DIR/secrets"
    chmod 700 "$LOCAL_DIR/secrets"
    (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$file")
  fi
  echo "$file"
}

local_mariadb_settings() {
  local_port_setting IOT_MYSQL_PORT 3306
}

mariadb_sql() {
  # As the OS user that initialised the data directory: MariaDB lets it in over the socket.
  mariadb --no-defaults --socket="$LOCAL_DIR/mariadb/mariadb.sock" --user="$(id -un)" "$@"
}

mariadb_ready() {
  mariadb_sql -e 'SELECT 1' >/dev/null 2>&1
}

local_mariadb_start() {
  local_require_free_port "MySQL (MariaDB)" IOT_MYSQL_PORT
  local dir=$LOCAL_DIR/mariadb
  mkdir -p "$dir"
  if [[ ! -d $dir/data/mysql ]]; then
    mariadb-install-db --no-defaults --datadir="$dir/data" --user="$(id -un)" --skip-test-db \
      >>"$LOCAL_DIR/logs/mariadb.log" 2>&1 || die "mariadb-install-db failed (see $LOCAL_DIR/logs/mariadb.log)"
  fi
  # Only the auth server uses it, on this machine: loopback, never BIND_ADDRESS.
  local_spawn mariadb "$(command -v mariadbd || echo /usr/sbin/mariadbd)" --no-defaults \
    --datadir="$dir/data" --socket="$dir/mariadb.sock" --pid-file="$dir/mariadb.pid" \
    --port="$IOT_MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve --user="$(id -un)"
  local_wait mariadb 60 mariadb_ready
  # The stack's database and account (stack.yml: MYSQL_DATABASE, MYSQL_USER); the password
  # is set again on every start, so it always matches the secret file.
  local password
  password=$(<"$(local_secret mysql_password)")
  mariadb_sql <<SQL || die "could not create the accounts database (see $LOCAL_DIR/logs/mariadb.log)"
CREATE DATABASE IF NOT EXISTS iot_accounts CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS 'auth_server'@'127.0.0.1';
ALTER USER 'auth_server'@'127.0.0.1' IDENTIFIED BY '${password//\'/\'\'}';
GRANT ALL PRIVILEGES ON iot_accounts.* TO 'auth_server'@'127.0.0.1';
SQL
}

local_mariadb_info() {
  note "MySQL        MariaDB on 127.0.0.1:$IOT_MYSQL_PORT, database iot_accounts, user auth_server"
  note "             password in $LOCAL_DIR/secrets/mysql_password, data in $LOCAL_DIR/mariadb/"
}

local_auth_server_settings() {
  local_port_setting IOT_AUTH_PORT 5000
}

auth_server_ready() {
  curl -fsS -o /dev/null "http://$CONNECT_HOST:$IOT_AUTH_PORT/healthz" 2>/dev/null
}

local_auth_server_start() {
  local_require_free_port "auth server" IOT_AUTH_PORT
  local_spawn auth_server env \
    PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" \
    AUTH_HOST="$BIND_ADDRESS" AUTH_PORT="$IOT_AUTH_PORT" \
    MYSQL_HOST=127.0.0.1 MYSQL_PORT="$IOT_MYSQL_PORT" MYSQL_DATABASE=iot_accounts MYSQL_USER=auth_server \
    MYSQL_PASSWORD_FILE="$(local_secret mysql_password)" \
    JWT_SECRET_FILE="$(local_secret jwt_secret)" \
    ADMIN_USERNAME="${AUTH_ADMIN_USERNAME:-admin}" ADMIN_PASSWORD_FILE="$(local_secret auth_admin_password)" \
    INFLUXDB_HOST=127.0.0.1 INFLUXDB_PORT="$IOT_INFLUXDB_PORT" INFLUXDB_DATABASE=IoT_Devices \
    MQTT_SECURE=false \
    "$VENV/bin/python" -m auth_server
  local_wait auth_server 60 auth_server_ready
}

local_auth_server_info() {
  note "Auth server  http://$BIND_ADDRESS:$IOT_AUTH_PORT/api/ (no Kong in local mode), OpenAPI at /api/openapi.json"
  note "             admin ${AUTH_ADMIN_USERNAME:-admin}, password in $LOCAL_DIR/secrets/auth_admin_password"
  note "             log $LOCAL_DIR/logs/auth_server.log"
}
