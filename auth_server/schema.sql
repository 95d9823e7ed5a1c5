-- Accounts of the IoT platform. Applied by the auth server at every start: every statement
-- must be idempotent. Works on MySQL 8 and MariaDB 10.11 (the tests run against MariaDB).
-- utf8mb4_bin: names compare exactly (case and accents matter), as MQTT topics do - except
-- that it pads with spaces, so 'UPB' = 'UPB ' in SQL; the auth server never lets two names
-- that differ only in trailing spaces meet in a unique key, and checks every match in Python.
-- Columns added after a table's first release are in db.py (ADDED_COLUMNS): CREATE TABLE IF
-- NOT EXISTS leaves a table made by an older version as it is.

CREATE TABLE IF NOT EXISTS accounts (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT,
    username VARCHAR(64) NOT NULL,
    -- werkzeug scrypt hash, "scrypt:N:r:p$salt$hex"; never sent out, never logged.
    password_hash VARCHAR(255) NOT NULL,
    role ENUM('admin', 'device') NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    -- Random, new for every account and replaced whenever the password, the role or `enabled`
    -- changes. A token names the account's id and this key, so it stops working when either
    -- changes, and an account deleted and created again never accepts its old tokens.
    -- NULL for rows an older version created: the next login gives them one.
    token_key CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NULL,
    -- Tokens of the previous release carried this counter; no longer used, but kept so that
    -- image still works beside this one during a rolling update or after a rollback.
    token_version INT UNSIGNED NOT NULL DEFAULT 0,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_accounts_username (username)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One right of one account over `<location>/<station>` series; `*` stands for any location or
-- any station. READ and WRITE are reserved words in SQL, hence can_read / can_write.
CREATE TABLE IF NOT EXISTS permissions (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT,
    account_id INT UNSIGNED NOT NULL,
    location VARCHAR(255) NOT NULL,
    station VARCHAR(255) NOT NULL,
    can_read BOOLEAN NOT NULL DEFAULT FALSE,
    can_write BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (id),
    UNIQUE KEY uq_permissions_series (account_id, location, station),
    CONSTRAINT fk_permissions_account FOREIGN KEY (account_id) REFERENCES accounts (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Failed logins, counted so that guessing slows down (auth_server/throttle.py). One row per
-- scope and subject: `pair` is one username from one client address, `address` any username
-- from that address, `username` one username from any address. `subject` is an HMAC of the
-- username and/or address, so the table never holds a typed username (people type passwords
-- there). Shared by every worker and replica; rows are deleted once `expires_at` has passed.
CREATE TABLE IF NOT EXISTS login_throttle (
    scope ENUM('pair', 'address', 'username') NOT NULL,
    subject BINARY(32) NOT NULL,
    failures INT UNSIGNED NOT NULL DEFAULT 0,
    last_failure_at DATETIME(6) NULL,
    -- No attempt is checked before this time (UTC).
    blocked_until DATETIME(6) NULL,
    -- `pair` rows: the latest successful login of this username from this address.
    last_success_at DATETIME(6) NULL,
    expires_at DATETIME(6) NOT NULL,
    PRIMARY KEY (scope, subject),
    KEY ix_login_throttle_expires (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = ascii COLLATE = ascii_bin;
