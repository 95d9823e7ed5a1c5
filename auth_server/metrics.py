"""Prometheus metrics of the auth server (served at /metrics) and the request instrumentation.

Under `python -m auth_server` the server runs several worker processes, each counting what it
serves: prometheus_client's multiprocess mode keeps every worker's values in files of
PROMETHEUS_MULTIPROC_DIR (set by __main__ before this module is imported), and /metrics, served
by whichever worker, sums them. Without that directory (tests build apps in-process) each app
counts in a registry of its own.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from auth_server.config import metrics_dir

# Requests that matched no route share one label value: raw paths would let any caller
# create unbounded label sets.
UNMATCHED_ROUTE = "unmatched"


class AuthMetrics:
    """All of the auth server's metrics, on a registry of their own (tests build many apps)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "auth_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_duration = Histogram(
            "auth_http_request_duration_seconds",
            "Time to answer one HTTP request, by method and route template",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.logins = Counter(
            "auth_logins", "Login attempts by result (success, failure)", ["result"], registry=r
        )
        self.login_throttled = Counter(
            "auth_login_throttled",
            "Login attempts refused unchecked (429) while failed logins block them, by the counter "
            "that blocked: pair (username from one address), address (any username), username "
            "(from any address)",
            ["scope"],
            registry=r,
        )
        self.login_delays = Counter(
            "auth_login_delays",
            "Failed logins past a counter's free failures, each making the next attempt wait, by scope",
            ["scope"],
            registry=r,
        )
        self.points_written = Counter(
            "auth_points_written", "Points written to InfluxDB through the HTTP data API", registry=r
        )
        # The reasons are the adapter's (adapter.contract Reject and Drop values).
        self.data_rejected = Counter(
            "auth_data_rejected",
            "HTTP data writes refused whole by the message contract, a limit or a series budget, by reason",
            ["reason"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "auth_token_refreshes",
            "Token refreshes by result (success; refused: the token was invalid, revoked, or its "
            "password login older than JWT_REFRESH_MAX_SECONDS)",
            ["result"],
            registry=r,
        )
        # Summed over the live workers: a worker that died takes its connections with it.
        self.mysql_connections = Gauge(
            "auth_mysql_connections",
            "MySQL connections of the server's pools, by state (in_use by a request, idle)",
            ["state"],
            registry=r,
            multiprocess_mode="livesum",
        )
        # Both results exist from the start, so a rate() over failures works before the first one.
        for result in ("success", "failure"):
            self.logins.labels(result=result)
        for result in ("success", "refused"):
            self.token_refreshes.labels(result=result)

    def exposition_registry(self) -> CollectorRegistry:
        """What /metrics shows: every worker's values summed, or this app's own."""
        directory = metrics_dir()
        if not directory:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        return registry

    def instrument(self, app: Flask) -> None:
        @app.before_request
        def _start_timer() -> None:
            g.request_started = time.perf_counter()

        @app.after_request
        def _record(response: Response) -> Response:
            started = g.pop("request_started", None)
            route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
            method = request.method if request.method in _METHODS else "OTHER"
            self.http_requests.labels(method=method, route=route, status=str(response.status_code)).inc()
            if started is not None:
                self.http_request_duration.labels(method=method, route=route).observe(
                    time.perf_counter() - started
                )
            return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
