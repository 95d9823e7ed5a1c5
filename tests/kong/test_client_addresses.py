"""Kong's per-client limits are per client: checked without Kong (it cannot run here) against
what Kong 3.8.0 does, read from its source.

- kong/plugins/rate-limiting/handler.lua `get_identifier`: with `limit_by: ip` (and for any
  other limit_by whose value is missing) the counter's key is `kong.client.get_forwarded_ip()`.
- kong/pdk/client.lua `get_forwarded_ip` returns `ngx.var.remote_addr`, which nginx's realip
  module replaces by a header's address only for senders in `trusted_ips`
  (templates/nginx_kong.lua: one `set_real_ip_from` per trusted_ips entry); the default
  (templates/kong_defaults.lua) is `trusted_ips = NONE`. So the key is the TCP peer's address,
  which a client cannot forge with X-Forwarded-For or X-Real-IP.
- plugins/rate-limiting/policies/init.lua: the `local` policy counts in the shared dict
  `kong_rate_limiting_counters` (one per node, shared by its worker processes) under
  `ratelimit:<route>:<service>:<identifier>:<period date>:<period>`: two addresses, two budgets.
What makes the TCP peer the client is the port's host mode (tests/stack/test_stack_file.py),
and that the peer's address arrives unchanged is shown by the end-to-end test, with two clients
of their own addresses and a stand-in that reports what it sees (Kong itself is not run there).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.servers import REPO_ROOT


def rate_limits(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, plugin config) of every rate-limiting plugin: global, per service, per route."""
    found = [("global", p["config"]) for p in config.get("plugins", []) if p["name"] == "rate-limiting"]
    for service in config.get("services", []):
        found += [
            (f"service {service['name']}", p["config"])
            for p in service.get("plugins", [])
            if p["name"] == "rate-limiting"
        ]
        for route in service.get("routes", []):
            found += [
                (f"route {route['name']}", p["config"])
                for p in route.get("plugins", [])
                if p["name"] == "rate-limiting"
            ]
    return found


@pytest.fixture(scope="module")
def limits() -> list[tuple[str, dict[str, Any]]]:
    found = rate_limits(yaml.safe_load((REPO_ROOT / "kong" / "kong.yml").read_text()))
    assert found, "kong.yml has no rate limit"
    return found


def test_every_limit_counts_per_client_address(limits: list[tuple[str, dict[str, Any]]]) -> None:
    for where, config in limits:
        # Written out, not left to the default: a limit by consumer or credential would fall
        # back to the address too, but only for requests without one.
        assert config.get("limit_by") == "ip", where
        # Counters in this node's memory: DB-less Kong has no database for `cluster`, and the
        # stack has no Redis for `redis` (without one, fault_tolerant would count nothing).
        assert config.get("policy") == "local", where


def test_every_limit_names_its_periods(limits: list[tuple[str, dict[str, Any]]]) -> None:
    periods = ("second", "minute", "hour", "day", "month", "year")
    for where, config in limits:
        set_periods = [period for period in periods if config.get(period) is not None]
        assert set_periods, f"{where}: a limit without a period limits nothing"
        assert all(int(config[period]) > 0 for period in set_periods), where


def test_kong_trusts_no_forwarded_address() -> None:
    stack = yaml.safe_load((REPO_ROOT / "stack.yml").read_text())
    overlay = yaml.safe_load((REPO_ROOT / "stack.secure.yml").read_text())
    for name, config in (("stack.yml", stack), ("stack.secure.yml", overlay)):
        settings = config["services"]["kong"].get("environment") or {}
        for key in ("KONG_TRUSTED_IPS", "KONG_REAL_IP_HEADER", "KONG_REAL_IP_RECURSIVE"):
            assert key not in settings, f"{name}: {key} would let clients choose their own address"
