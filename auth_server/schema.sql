-- Accounts of the IoT platform. Applied by the auth server at every start: every statement
-- must be idempotent. Works on MySQL 8 and MariaDB 10.11 (the tests run against MariaDB).
-- utf8mb4_bin: names compare exactly (case and accents matter), as MQTT topics do.

CREATE TABLE IF NOT EXISTS accounts (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT,
    username VARCHAR(64) NOT NULL,
    -- werkzeug scrypt hash, "scrypt:N:r:p$salt$hex"; never sent out, never logged.
    password_hash VARCHAR(255) NOT NULL,
    role ENUM('admin', 'device') NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    -- Bumped whenever the password, the role or `enabled` changes: tokens carry the value
    -- they were issued with, so older tokens stop working at once.
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
