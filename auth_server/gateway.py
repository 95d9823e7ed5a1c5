"""What requests carry from the gateway in front: the client's address, and paths as sent.

- The client address is the TCP peer, or, behind TRUSTED_PROXY_HOPS proxies (Kong: 1), the
  entry those proxies appended to X-Forwarded-For. Login throttling counts by it.
- A path with an encoded slash (`%2F`, `%2f`) is refused. Werkzeug decodes it into a real
  slash, so `/api/auth%2Flogin` would be the login route here, while Kong, which keeps
  encoded slashes encoded when it matches routes, sees another path and would not apply
  the login route's rate limit. No route of ours has a slash inside a path segment.
"""

from __future__ import annotations

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from auth_server.config import AuthConfig
from auth_server.errors import ApiError


def init_app(app: Flask, config: AuthConfig) -> None:
    if config.trusted_proxy_hops:
        # Only X-Forwarded-For: the scheme, host and prefix are not needed, so not trusted.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=config.trusted_proxy_hops, x_proto=0, x_host=0, x_port=0, x_prefix=0
        )
    app.before_request(_refuse_encoded_slashes)


def client_address() -> str:
    return request.remote_addr or ""


def raw_path() -> str:
    """The request target's path as the client sent it, before any percent-decoding."""
    # gunicorn sets RAW_URI, werkzeug's own server and test client set both.
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or ""
    return raw.split("?", 1)[0]


def _refuse_encoded_slashes() -> None:
    if "%2f" in raw_path().lower():
        raise ApiError(400, "an encoded slash (%2F) is not allowed in the path; send `/` as it is")
