"""The IoT platform's auth server: accounts in MySQL, JWT login, the HTTP data API, secure MQTT.

`from auth_server import create_app` builds the Flask application (auth_server/app.py);
`python -m auth_server` serves it with gunicorn (auth_server/__main__.py).
"""

# Nothing is imported here until it is asked for: `python -m auth_server` imports this package
# before its __main__ runs, and __main__ must let gevent patch the standard library before
# Flask, PyMySQL or ssl are imported at all.

__all__ = ["ConfigError", "create_app"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from auth_server import app

        return getattr(app, name)
    raise AttributeError(f"module 'auth_server' has no attribute {name!r}")
