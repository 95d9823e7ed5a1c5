"""`python -m auth_server`: the auth server under gunicorn, configured from the environment.

One worker process with AUTH_THREADS threads: the Prometheus counters live in that process, so
every scrape sees all of them (scale out with more replicas, each scraped on its own). The app is
built before the worker starts, so a bad setting or an unreachable MySQL stops the server with
one clear message instead of a crash loop of workers.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from auth_server import ConfigError, create_app
from auth_server.config import AuthConfig

log = logging.getLogger("auth_server")


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


def gunicorn_options(config: AuthConfig) -> dict[str, Any]:
    host = f"[{config.auth_host}]" if ":" in config.auth_host else config.auth_host
    return {
        "bind": f"{host}:{config.auth_port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": config.auth_threads,
        # Password hashing and MQTT updates take a while; a stuck request still ends.
        "timeout": 60,
        "graceful_timeout": 20,
        "accesslog": "-",
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
    log.info("serving on %s:%s", config.auth_host, config.auth_port)
    GunicornServer(app, gunicorn_options(config)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
