"""The account of a run: what was sent, what the broker acknowledged, and what the platform
should have stored and rejected. Printed for people, written as JSON for scripts and tests."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Summary:
    seed: int
    devices: int
    locations: list[str]
    qos: int
    mqtt_version: str
    rate_per_device: float
    timestamps: str
    dry_run: bool
    started_at: str
    stopped_by: str  # "count", "duration" or "signal"
    elapsed_s: float  # from the first reading to the last publish
    drain_s: float  # waiting for the last acknowledgements
    # Delivery, as the broker reported it.
    messages_sent: int
    messages_acked: int
    messages_pending: int
    messages_dropped: int
    messages_refused: dict[str, int]
    no_subscribers: int
    # Content: what the platform should store (values) and reject (malformed, by reason).
    valid_messages: int
    backlog_messages: int
    readings: int
    values: int
    ignored_values: int
    unsent_readings: int
    malformed: dict[str, int]
    series: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    @property
    def rate_msg_s(self) -> float:
        return self.messages_sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def complete(self) -> bool:
        """Every message reached the broker and was accepted."""
        return (
            self.messages_pending == 0
            and self.messages_dropped == 0
            and not any(self.messages_refused.values())
        )

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["malformed_total"] = self.malformed_total
        data["rate_msg_s"] = round(self.rate_msg_s, 3)
        data["complete"] = self.complete
        return data

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def to_text(self) -> str:
        refused = sum(self.messages_refused.values())
        lines = [
            f"Simulator summary (seed {self.seed}{', dry run: nothing published' if self.dry_run else ''})",
            f"  devices      {self.devices} across {', '.join(self.locations)}",
            f"  stopped by   {self.stopped_by} after {self.elapsed_s:.2f} s "
            f"(+{self.drain_s:.2f} s waiting for acknowledgements)",
            f"  messages     {self.messages_sent} sent ({self.rate_msg_s:.1f} msg/s, QoS {self.qos}), "
            # QoS 0 has no acknowledgement: "acked" counts messages written to the connection.
            f"{self.messages_acked} {'written' if self.qos == 0 else 'acked'}, {refused} refused, "
            f"{self.messages_dropped} dropped, "
            f"{self.messages_pending} pending",
            f"  valid        {self.valid_messages} messages ({self.backlog_messages} backlog arrays) with "
            f"{self.readings} readings: {self.values} numeric values, "
            f"{self.ignored_values} non-numeric keys (ignored by the platform)",
        ]
        if self.malformed:  # only when asked for (--malformed-share)
            kinds = ", ".join(f"{k} {n}" for k, n in self.malformed.items() if n) or "none"
            lines.append(f"  malformed    {self.malformed_total}: {kinds}")
        if self.unsent_readings:
            lines.append(
                f"  unsent       {self.unsent_readings} readings of devices still offline at the end"
            )
        if refused:
            reasons = ", ".join(f"{reason} {n}" for reason, n in self.messages_refused.items())
            lines.append(f"  refused by the broker: {reasons}")
        if self.no_subscribers and not self.dry_run:
            lines.append(
                f"  note: the broker had no subscriber for {self.no_subscribers} messages "
                "(is the adapter running?)"
            )
        return "\n".join(lines)
