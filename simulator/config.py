"""The simulator's settings: read from the command line in one place, checked before anything runs."""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class MalformedKind(StrEnum):
    """Deliberately invalid messages, one per way the platform rejects a message.

    The values are the `reason` labels of the adapter's `adapter_messages_rejected_total`,
    so a summary can be compared with the metrics key by key.
    """

    BAD_TOPIC = "bad_topic"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_LARGE = "too_large"


class TimestampFormat(StrEnum):
    ISO = "iso"  # ISO 8601 with the local UTC offset and microseconds
    EPOCH = "epoch"  # a JSON number: Unix seconds with microseconds
    NONE = "none"  # no `timestamp` key: stored at the adapter's receive time


# too_large needs to know the adapter's size limit, and a broker may refuse such a message
# before the adapter ever sees it, so it is chosen explicitly rather than by default.
DEFAULT_MALFORMED_KINDS = (
    MalformedKind.BAD_TOPIC,
    MalformedKind.NOT_JSON,
    MalformedKind.NOT_OBJECT,
    MalformedKind.BAD_TIMESTAMP,
)
# The adapter's default MAX_MESSAGE_BYTES (256 KiB) plus one byte.
DEFAULT_TOO_LARGE_BYTES = 256 * 1024 + 1
# A name that is one valid topic level: no level separator, no wildcard, no control character,
# and nothing the platform cannot store as an InfluxDB tag (a trailing backslash).
_NAME_RE = re.compile(r"^[^/+#\x00-\x1f\x7f]+$")
MAX_RATE = 10_000.0


class ConfigError(ValueError):
    """A setting the simulator cannot run with; the message says which and why."""


@dataclass(frozen=True)
class SimulatorConfig:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    client_id: str = ""
    mqtt_version: str = "5"
    qos: int = 1
    devices: int = 10
    locations: tuple[str, ...] = ("UPB", "Dorinel")
    station_prefix: str = "RPi_"
    rate: float = 1.0
    duration_s: float | None = None
    count: int | None = None
    timestamps: TimestampFormat = TimestampFormat.ISO
    backlog: bool = False
    backlog_chance: float = 0.05
    backlog_max: int = 5
    malformed_share: float = 0.0
    malformed_kinds: tuple[MalformedKind, ...] = DEFAULT_MALFORMED_KINDS
    too_large_bytes: int = DEFAULT_TOO_LARGE_BYTES
    time_scale: float = 60.0
    seed: int = 0
    max_inflight: int = 100
    connect_timeout_s: float = 30.0
    drain_timeout_s: float = 30.0
    progress_interval_s: float = 1.0
    quiet: bool = False
    summary_json: Path | None = None
    dry_run: bool = False
    health_file: Path | None = None

    def validate(self) -> None:
        """Raise ConfigError for the first setting that cannot work."""
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: must be between 1 and 65535")
        if self.devices < 1:
            raise ConfigError(f"--devices {self.devices}: at least one device is needed")
        if not self.locations:
            raise ConfigError("--locations: give at least one location, e.g. UPB,Dorinel")
        for name in self.locations:
            if not _NAME_RE.match(name) or name.endswith("\\"):
                raise ConfigError(
                    f"--locations: {name!r} is not a valid location (no '/', '+', '#', "
                    "control characters or trailing backslash)"
                )
        probe = f"{self.station_prefix}1"
        if not _NAME_RE.match(probe) or probe.endswith("\\"):
            raise ConfigError(f"--station-prefix {self.station_prefix!r}: not usable in a topic level")
        if not 0 <= self.rate <= MAX_RATE:
            raise ConfigError(f"--rate {self.rate}: must be between 0 (unthrottled) and {MAX_RATE:g}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"--duration {self.duration_s}: must be more than 0 seconds")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"--count {self.count}: must be at least 1")
        if self.rate == 0 and self.duration_s is None and self.count is None:
            raise ConfigError("--rate 0 (unthrottled) needs --duration or --count")
        if not 0 <= self.backlog_chance <= 1:
            raise ConfigError(f"--backlog-chance {self.backlog_chance}: must be between 0 and 1")
        if self.backlog_max < 2:
            raise ConfigError(f"--backlog-max {self.backlog_max}: a backlog holds at least 2 readings")
        if not 0 <= self.malformed_share <= 1:
            raise ConfigError(f"--malformed-share {self.malformed_share}: must be between 0 and 1")
        if self.malformed_share > 0 and not self.malformed_kinds:
            raise ConfigError("--malformed-kinds: choose at least one kind")
        if self.too_large_bytes < 64:
            raise ConfigError(f"--too-large-bytes {self.too_large_bytes}: must be at least 64")
        if self.time_scale <= 0:
            raise ConfigError(f"--time-scale {self.time_scale}: must be more than 0")
        if not 1 <= self.max_inflight <= 65535:
            raise ConfigError(f"--max-inflight {self.max_inflight}: must be between 1 and 65535")
        if self.password is not None and self.username is None:
            raise ConfigError("--password needs --username")
        for name, value in (
            ("--connect-timeout", self.connect_timeout_s),
            ("--drain-timeout", self.drain_timeout_s),
            ("--progress-interval", self.progress_interval_s),
        ):
            if value <= 0:
                raise ConfigError(f"{name} {value}: must be more than 0 seconds")


def _kinds(text: str) -> tuple[MalformedKind, ...]:
    kinds = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            kinds.append(MalformedKind(part))
        except ValueError:
            known = ", ".join(k.value for k in MalformedKind)
            raise argparse.ArgumentTypeError(f"unknown kind {part!r} (known: {known})") from None
    return tuple(dict.fromkeys(kinds))


def _locations(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing (not None, False or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # Identity, not equality: 0 and 0.0 are real defaults, though they equal False.
        if action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description=(
            "Simulate IoT devices publishing JSON readings to the platform's MQTT broker on topics "
            "<location>/<station>. Without --duration or --count it runs until Ctrl-C / SIGTERM, "
            "then waits for outstanding acknowledgements and prints a summary."
        ),
        formatter_class=_HelpFormatter,
    )
    broker = parser.add_argument_group("broker")
    broker.add_argument("--host", default="localhost", help="MQTT broker host")
    broker.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    broker.add_argument("--username", help="account for the broker's secure mode")
    broker.add_argument("--password", help="password of --username (visible to `ps`; prefer --password-file)")
    broker.add_argument("--password-file", type=Path, help="read the password from this file")
    broker.add_argument("--client-id", default="", help="MQTT client id (default: simulator-<host>-<pid>)")
    broker.add_argument("--mqtt-version", choices=("5", "3.1.1"), default="5", help="MQTT protocol version")
    broker.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="QoS of every publish")
    broker.add_argument(
        "--max-inflight",
        type=int,
        default=100,
        help="most messages published but not yet acknowledged (lowered to the broker's Receive Maximum)",
    )
    broker.add_argument(
        "--connect-timeout", type=float, default=30.0, help="seconds to wait for the broker at start"
    )
    broker.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to wait at the end for acknowledgements still outstanding",
    )

    devices = parser.add_argument_group("devices and load")
    devices.add_argument("--devices", type=int, default=10, help="number of simulated devices")
    devices.add_argument(
        "--locations",
        type=_locations,
        default="UPB,Dorinel",
        help="comma-separated locations; devices are spread over them in turn",
    )
    devices.add_argument("--station-prefix", default="RPi_", help="station names are <prefix>1 .. <prefix>N")
    devices.add_argument(
        "--rate",
        type=float,
        default=1.0,
        help="readings per second per device; 0 = as fast as the broker acknowledges",
    )
    devices.add_argument("--duration", type=float, help="stop after this many seconds of readings")
    devices.add_argument("--count", type=int, help="stop after this many messages in total")
    devices.add_argument("--seed", type=int, help="random seed, for a reproducible run (default: random)")
    devices.add_argument(
        "--time-scale",
        type=float,
        default=60.0,
        help="signals (battery cycles, daily temperature cycle) run this many times faster than "
        "the clock, so a short demo shows them; 1 = real time",
    )

    payload = parser.add_argument_group("payload")
    payload.add_argument(
        "--timestamps",
        choices=[f.value for f in TimestampFormat],
        default=TimestampFormat.ISO.value,
        help="timestamp key: ISO 8601 with UTC offset, Unix epoch seconds, or none (receive time)",
    )
    payload.add_argument(
        "--no-timestamps",
        dest="timestamps",
        action="store_const",
        const=TimestampFormat.NONE.value,
        help="same as --timestamps none",
    )
    payload.add_argument(
        "--backlog",
        action="store_true",
        help="devices now and then go offline and, back online, send their missed readings as one JSON array",
    )
    payload.add_argument(
        "--backlog-chance",
        type=float,
        default=0.05,
        help="with --backlog: chance per reading that a device goes offline",
    )
    payload.add_argument(
        "--backlog-max", type=int, default=5, help="with --backlog: most readings in one backlog array"
    )
    payload.add_argument(
        "--malformed-share",
        type=float,
        default=0.0,
        help="fraction (0..1) of messages that are deliberately invalid",
    )
    payload.add_argument(
        "--malformed-kinds",
        type=_kinds,
        default=",".join(DEFAULT_MALFORMED_KINDS),
        help="comma-separated kinds of invalid message, taken in turn: "
        + ", ".join(k.value for k in MalformedKind),
    )
    payload.add_argument(
        "--too-large-bytes",
        type=int,
        default=DEFAULT_TOO_LARGE_BYTES,
        help="size of too_large messages: the adapter's MAX_MESSAGE_BYTES + 1",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--progress-interval", type=float, default=1.0, help="seconds between progress lines on stderr"
    )
    output.add_argument("--quiet", action="store_true", help="no progress lines")
    output.add_argument("--summary-json", type=Path, help="also write the summary as JSON to this file")
    output.add_argument(
        "--dry-run",
        action="store_true",
        help="print '<topic><TAB><payload>' lines to stdout instead of publishing (summary goes to stderr)",
    )
    output.add_argument(
        "--health-file",
        type=Path,
        help="touch this file while connected to the broker (for a container health check)",
    )
    return parser


def default_client_id() -> str:
    # Host name and pid: unique per container and per process, readable in the broker's log.
    return f"simulator-{socket.gethostname()}-{os.getpid()}"


def parse_args(argv: Sequence[str] | None = None) -> SimulatorConfig:
    """The command line → a checked SimulatorConfig (exits with status 2 and a message on error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    password = args.password
    if args.password_file is not None:
        if password is not None:
            parser.error("give --password or --password-file, not both")
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            parser.error(f"--password-file {args.password_file}: cannot read it ({exc.strerror})")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    config = SimulatorConfig(
        host=args.host,
        port=args.port,
        username=args.username or None,
        password=password,
        client_id=args.client_id or default_client_id(),
        mqtt_version=args.mqtt_version,
        qos=args.qos,
        devices=args.devices,
        locations=args.locations,
        station_prefix=args.station_prefix,
        rate=args.rate,
        duration_s=args.duration,
        count=args.count,
        timestamps=TimestampFormat(args.timestamps),
        backlog=args.backlog,
        backlog_chance=args.backlog_chance,
        backlog_max=args.backlog_max,
        malformed_share=args.malformed_share,
        malformed_kinds=args.malformed_kinds,
        too_large_bytes=args.too_large_bytes,
        time_scale=args.time_scale,
        seed=seed,
        max_inflight=args.max_inflight,
        connect_timeout_s=args.connect_timeout,
        drain_timeout_s=args.drain_timeout,
        progress_interval_s=args.progress_interval,
        quiet=args.quiet,
        summary_json=args.summary_json,
        dry_run=args.dry_run,
        health_file=args.health_file,
    )
    try:
        config.validate()
    except ConfigError as exc:
        parser.error(str(exc))
    return config
