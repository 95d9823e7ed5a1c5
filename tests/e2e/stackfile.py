"""Reads stack.yml for the end-to-end test and writes the copy it deploys on this machine.

    python tests/e2e/stackfile.py image stack.yml SERVICE     the image SERVICE runs
    python tests/e2e/stackfile.py rewrite stack.yml OUT.yml   the copy for this machine

The copy differs from stack.yml in exactly these ways, each forced by this machine:
- Nothing is left out: Grafana and Kong run as stand-ins, as the other upstream images do
  (tests/e2e/images/grafana/ keeps Grafana's database file, tests/e2e/images/kong/ reports
  what reaches it).
- Every service gets endpoint_mode dnsrr and every published port mode host: this kernel
  has no IPVS, which Swarm's virtual IPs and its ingress routing mesh are built on. (Kong's
  port is in host mode in stack.yml itself.)
- The Kong-auth network is attachable, so that a probe container can stand where Kong
  stands and call the auth server over exactly that network.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

# Services the copy leaves out: none now (every upstream image has a stand-in); kept so
# that a service without one can be left out again in one place.
LEFT_OUT: tuple[str, ...] = ()
PROBE_NETWORK = "kong_auth"

HEADER = """\
# Written by tests/e2e/stackfile.py from the checkout's stack.yml, for the end-to-end
# test only: endpoint_mode dnsrr, host-mode ports, and the kong_auth network
# attachable (see that file for why). Do not deploy this elsewhere.
"""


class _NoAliases(yaml.SafeDumper):
    """Writes a mapping shared by several services (stack.yml's anchors) out in full."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise SystemExit(f"{path}: not a stack file with services")
    return data


def image_of(stack: dict[str, Any], service: str) -> str:
    try:
        image = stack["services"][service]["image"]
    except KeyError:
        raise SystemExit(f"stack.yml has no service {service!r} with an image") from None
    if not isinstance(image, str) or "$" in image:
        raise SystemExit(f"service {service}: image {image!r} is not a fixed image name")
    return image


def rewrite(stack: dict[str, Any]) -> dict[str, Any]:
    services: dict[str, Any] = stack["services"]
    for name in LEFT_OUT:
        if services.pop(name, None) is None:
            raise SystemExit(f"stack.yml has no service {name!r} to leave out; update {__file__}")
    for service in services.values():
        service.setdefault("deploy", {})["endpoint_mode"] = "dnsrr"
        for port in service.get("ports", []):
            if not isinstance(port, dict):
                raise SystemExit(f"port {port!r}: the e2e needs the long port syntax (target/published)")
            port["mode"] = "host"
    networks: dict[str, Any] = stack.get("networks") or {}
    if PROBE_NETWORK not in networks:
        raise SystemExit(f"stack.yml has no network {PROBE_NETWORK!r}; update {__file__}")
    networks[PROBE_NETWORK] = {**(networks[PROBE_NETWORK] or {}), "attachable": True}
    return stack


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "image":
        print(image_of(load(Path(argv[1])), argv[2]))
        return 0
    if len(argv) == 3 and argv[0] == "rewrite":
        stack = rewrite(load(Path(argv[1])))
        text = yaml.dump(stack, Dumper=_NoAliases, sort_keys=False, default_flow_style=False, width=1000)
        Path(argv[2]).write_text(HEADER + text, encoding="utf-8")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
