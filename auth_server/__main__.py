"""`python -m auth_server`: the auth server under gunicorn, configured from the environment.

gunicorn's gevent worker: every connection is a greenlet, so a slow or stalled client holds a
few kilobytes instead of a thread, and many of them cannot stop the rest (a thread pool of N
is exhausted by N half-sent requests). Bounds: AUTH_MAX_CONNECTIONS open connections, and
AUTH_CLIENT_TIMEOUT for a request's head to arrive and for any pause while its body arrives.
Password hashing runs in real threads (passwords.py), so it does not stall the event loop.

AUTH_WORKERS worker processes (default: one per usable CPU) share the listening socket; each
has its own MySQL and InfluxDB connection pools. Their Prometheus metrics are kept in files of
a metrics directory made fresh at every start (prometheus_client's multiprocess mode), so
/metrics, whichever worker answers it, shows them all summed. The app is built before the
workers start, so a bad setting or an unreachable MySQL stops the server with one clear message
instead of a crash loop of workers.
"""

# gevent must patch the standard library before anything else is imported: the app is built
# in this process and inherited by the worker, so its sockets and locks must be gevent's.
from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from auth_server.config import prepare_metrics_dir  # noqa: E402

# Before anything imports prometheus_client, which reads the directory's setting once.
METRICS_DIR = prepare_metrics_dir()

from flask import Flask  # noqa: E402
from gunicorn.app.base import BaseApplication  # noqa: E402
from gunicorn.glogging import Logger  # noqa: E402
from gunicorn.workers.base_async import AsyncWorker  # noqa: E402
from gunicorn.workers.ggevent import GeventWorker  # noqa: E402
from prometheus_client import multiprocess  # noqa: E402

from auth_server import ConfigError, create_app  # noqa: E402
from auth_server.config import AuthConfig  # noqa: E402

log = logging.getLogger("auth_server")


class BoundedGeventWorker(GeventWorker):
    """gunicorn's gevent worker with a read timeout on every client socket. gunicorn bounds the
    time to read a request's head (its keepalive setting), but not a body sent slowly: the
    view reads that from the socket, and would wait forever for a client that stopped."""

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        # In place of GeventWorker.handle, which only makes the socket blocking (no timeout).
        # A second more than the head's deadline, so a slow head meets that one first (it
        # closes the connection quietly; a socket timeout there would log a traceback).
        client.settimeout(self.cfg.keepalive + 1)
        AsyncWorker.handle(self, listener, client, addr)


class FailuresAccessLogger(Logger):
    """gunicorn's logger, its access log limited to requests answered 4xx or 5xx
    (AUTH_ACCESS_LOG=failures): checked before gunicorn gathers the line's fields, which is
    most of an access log line's cost."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if resp.status_code is None or resp.status_code >= 400:
            super().access(resp, req, environ, request_time)


class GunicornServer(BaseApplication):
    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._app


def _forget_worker_gauges(_server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid, str(METRICS_DIR))


def gunicorn_options(config: AuthConfig) -> dict[str, Any]:
    host = f"[{config.auth_host}]" if ":" in config.auth_host else config.auth_host
    return {
        "bind": f"{host}:{config.auth_port}",
        "workers": config.workers,
        "worker_class": BoundedGeventWorker,
        # A worker's live gauges (its connections in use) leave the sums when it exits.
        "child_exit": _forget_worker_gauges,
        "worker_connections": config.max_connections,
        # Under gevent this bounds the wait for a request's head, first request included.
        "keepalive": config.client_timeout_s,
        # Password hashing and MQTT updates take a while; a stuck request still ends.
        "timeout": 60,
        "graceful_timeout": 20,
        "accesslog": None if config.access_log == "off" else "-",
        "logger_class": FailuresAccessLogger if config.access_log == "failures" else Logger,
        "errorlog": "-",
        # Request line and status only: no headers, so no Authorization value, in the log.
        "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
    }


def main() -> int:
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except Exception as exc:  # any start-up failure (MySQL, broker) ends the process with its reason
        log.error("start-up failed: %s", exc)
        return 1
    config: AuthConfig = app.config["AUTH"]
    log.info(
        "serving on %s:%s with %d worker(s), each with up to %d MySQL and %d InfluxDB connections",
        config.auth_host,
        config.auth_port,
        config.workers,
        config.mysql_connections_per_worker,
        config.influxdb_connections_per_worker,
    )
    GunicornServer(app, gunicorn_options(config)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
