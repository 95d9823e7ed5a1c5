"""Runs inside a probe container of the end-to-end test and plays HTTP requests to a service.

The steps come as a JSON list on stdin: {"name", "method", "path", "json"?, "auth"?}, where
`auth` names an earlier step whose response carried an `access_token`. Prints one JSON list
of {"name", "status", "body"} to stdout. It judges nothing: tests/e2e/checks.py does.
Standard library only, so that it runs in any image with Python 3.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any


def call(base: str, step: dict[str, Any], tokens: dict[str, str]) -> tuple[int, Any]:
    data = json.dumps(step["json"]).encode() if "json" in step else None
    request = urllib.request.Request(base + step["path"], data=data, method=step["method"])
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if "auth" in step:
        request.add_header("Authorization", f"Bearer {tokens[step['auth']]}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = text
    return status, body


def main() -> int:
    base = sys.argv[1].rstrip("/")
    tokens: dict[str, str] = {}
    results = []
    for step in json.load(sys.stdin):
        status, body = call(base, step, tokens)
        if isinstance(body, dict) and isinstance(body.get("access_token"), str):
            tokens[step["name"]] = body["access_token"]
            body = {**body, "access_token": "(hidden)"}
        results.append({"name": step["name"], "status": status, "body": body})
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
