"""The Grafana stand-in of the end-to-end test (see the Dockerfile beside it for what it keeps).

It keeps its state where Grafana keeps it, in the SQLite database of the data volume, and
writes to it several times a second (Grafana does too: sessions, alert state), so that the
backup's copy of that file is made while it changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DATA = Path(os.environ.get("GF_PATHS_DATA", "/var/lib/grafana"))
PORT = int(os.environ.get("GF_SERVER_HTTP_PORT", "3000"))
DATABASE = DATA / "grafana.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS user (login TEXT PRIMARY KEY, salt TEXT NOT NULL, password TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dashboard (uid TEXT PRIMARY KEY, version INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY, beats INTEGER NOT NULL, at REAL NOT NULL);
"""


def password_hash(password: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 10000, 50).hex()


class Store:
    """The database, one connection behind a lock (the server answers on several threads)."""

    def __init__(self) -> None:
        created = not DATABASE.exists()
        self.lock = threading.Lock()
        self.conn = sqlite3.connect(DATABASE, timeout=30, isolation_level=None, check_same_thread=False)
        self.conn.executescript(SCHEMA)
        if created:
            # As Grafana: the admin's password is read only when the database is created.
            login = os.environ.get("GF_SECURITY_ADMIN_USER", "admin")
            password_file = os.environ.get("GF_SECURITY_ADMIN_PASSWORD__FILE")
            password = Path(password_file).read_text().strip() if password_file else "admin"
            salt = secrets.token_hex(5)
            self.conn.execute(
                "INSERT INTO user VALUES (?, ?, ?)", (login, salt, password_hash(password, salt))
            )
            self.conn.execute("INSERT INTO heartbeat VALUES (1, 0, 0)")
            print(f"grafana stand-in: created {DATABASE} with the admin {login}", flush=True)
        else:
            print(f"grafana stand-in: using {DATABASE}", flush=True)

    def beat(self) -> None:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("UPDATE heartbeat SET beats = beats + 1, at = ? WHERE id = 1", (time.time(),))
            self.conn.execute("COMMIT")

    def beats(self) -> int:
        with self.lock:
            return int(self.conn.execute("SELECT beats FROM heartbeat WHERE id = 1").fetchone()[0])

    def login_ok(self, login: str, password: str) -> bool:
        with self.lock:
            row = self.conn.execute("SELECT salt, password FROM user WHERE login = ?", (login,)).fetchone()
        return row is not None and hmac.compare_digest(password_hash(password, row[0]), row[1])

    def save(self, dashboard: dict[str, Any]) -> int:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            row = self.conn.execute(
                "SELECT version FROM dashboard WHERE uid = ?", (dashboard["uid"],)
            ).fetchone()
            version = (row[0] if row else 0) + 1
            stored = json.dumps({**dashboard, "version": version})
            self.conn.execute(
                "INSERT OR REPLACE INTO dashboard VALUES (?, ?, ?)", (dashboard["uid"], version, stored)
            )
            self.conn.execute("COMMIT")
            return version

    def dashboard(self, uid: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.conn.execute("SELECT data FROM dashboard WHERE uid = ?", (uid,)).fetchone()
        return json.loads(row[0]) if row else None


STORE: Store


class Handler(BaseHTTPRequestHandler):
    def answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorised(self) -> bool:
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        login, _, password = base64.b64decode(value).decode(errors="replace").partition(":")
        return STORE.login_ok(login, password)

    def do_GET(self) -> None:
        if self.path == "/api/health":
            self.answer(200, {"database": "ok", "version": "stand-in"})
        elif self.path == "/metrics":
            self.answer(200, f"grafana_stand_in_heartbeats {STORE.beats()}\n", "text/plain; version=0.0.4")
        elif self.path.startswith("/api/dashboards/uid/"):
            if not self.authorised():
                self.answer(401, {"message": "Invalid username or password"})
                return
            dashboard = STORE.dashboard(self.path.rsplit("/", 1)[1])
            if dashboard is None:
                self.answer(404, {"message": "Dashboard not found"})
            else:
                self.answer(200, {"dashboard": dashboard, "meta": {"version": dashboard["version"]}})
        else:
            self.answer(404, {"message": "Not found"})

    def do_POST(self) -> None:
        if self.path != "/api/dashboards/db":
            self.answer(404, {"message": "Not found"})
            return
        if not self.authorised():
            self.answer(401, {"message": "Invalid username or password"})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        dashboard = body.get("dashboard", {})
        version = STORE.save(dashboard)
        self.answer(200, {"status": "success", "uid": dashboard["uid"], "version": version})

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: the health check calls every 15 s.
        pass


def beat_forever() -> None:
    while True:
        STORE.beat()
        time.sleep(0.2)


if __name__ == "__main__":
    STORE = Store()
    threading.Thread(target=beat_forever, daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
