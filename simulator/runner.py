"""The run loop: pace the devices' readings, hand messages to the sink, report progress, sum up."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import TextIO

from simulator.config import SimulatorConfig
from simulator.messages import Kind, Message, MessageStream
from simulator.publisher import Sink
from simulator.summary import Summary

# Ahead of schedule by less than this, publish now rather than sleep: sleeping per message
# would cap the rate far below what the broker takes.
MIN_SLEEP_S = 0.001


class Tally:
    """Running totals of what was handed to the sink, by kind and by series."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.readings = 0
        self.values = 0
        self.ignored = 0
        self.series: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def add(self, message: Message) -> None:
        self.kinds[message.kind] += 1
        if message.malformed:
            return
        self.readings += message.readings
        self.values += message.values
        self.ignored += message.ignored
        self.series[f"{message.location}/{message.station}"].update(message.metric_counts)

    @property
    def malformed(self) -> int:
        return sum(n for kind, n in self.kinds.items() if kind not in (Kind.READING, Kind.BACKLOG))


class Progress:
    """A throttled progress line on stderr: rewritten in place on a terminal, one per tick otherwise."""

    def __init__(self, out: TextIO, interval_s: float, health_file: Path | None, quiet: bool) -> None:
        self.out = out
        self.interval_s = interval_s
        self.health_file = health_file
        self.quiet = quiet
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.last_tick = self.started
        self.last_sent = 0
        self.wrote = False

    def maybe_report(self, sink: Sink, tally: Tally) -> None:
        now = time.monotonic()
        if now - self.last_tick < self.interval_s:
            return
        if self.health_file is not None and sink.connected:
            self.health_file.touch()
        if not self.quiet:
            self._write(now, sink, tally)
        self.last_tick = now

    def _write(self, now: float, sink: Sink, tally: Tally) -> None:
        d = sink.delivery()
        recent = (d.sent - self.last_sent) / (now - self.last_tick)
        self.last_sent = d.sent
        line = (
            f"simulator: {now - self.started:6.1f}s  sent {d.sent} ({recent:.1f} msg/s)  "
            f"acked {d.acked}  pending {d.pending}  malformed {tally.malformed}  "
            f"backlog {tally.kinds[Kind.BACKLOG]}{'' if sink.connected else '  [disconnected]'}"
        )
        if self.tty:
            self.out.write("\r\x1b[K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()
        self.wrote = True

    def finish(self) -> None:
        if self.tty and self.wrote:
            self.out.write("\n")
            self.out.flush()


class Runner:
    """Runs one simulation against a sink until the count, the duration or a signal stops it."""

    def __init__(self, config: SimulatorConfig, sink: Sink, err: TextIO = sys.stderr) -> None:
        self.config = config
        self.sink = sink
        self.err = err
        # Set by the first Ctrl-C / SIGTERM: stop producing, then wait for acknowledgements.
        self.stop = threading.Event()
        # Set by the second: stop waiting too.
        self.abort = threading.Event()

    def run(self) -> Summary:
        cfg = self.config
        self.sink.connect()
        started_at = datetime.now().astimezone().isoformat(timespec="seconds")
        start_us = time.time_ns() // 1000
        start = time.monotonic()
        stream = MessageStream(cfg, start_us)
        tally = Tally()
        progress = Progress(self.err, cfg.progress_interval_s, cfg.health_file, cfg.quiet)
        total_rate = cfg.rate * cfg.devices
        stopped_by = "signal"
        slot = 0
        while not self.stop.is_set():
            if cfg.count is not None and stream.messages >= cfg.count:
                stopped_by = "count"
                break
            if total_rate > 0:
                # Readings follow a fixed schedule, devices evenly staggered; its times are the
                # readings' timestamps even when the broker made us fall behind.
                offset_s = slot / total_rate
                if cfg.duration_s is not None and offset_s >= cfg.duration_s:
                    # The last slot may come well before the end when readings are sparse.
                    if self._sleep_until(start + cfg.duration_s, progress, tally):
                        stopped_by = "duration"
                    break
                if not self._sleep_until(start + offset_s, progress, tally):
                    break
                reading_us = start_us + round(offset_s * 1_000_000)
            else:
                if cfg.duration_s is not None and time.monotonic() - start >= cfg.duration_s:
                    stopped_by = "duration"
                    break
                reading_us = time.time_ns() // 1000
            message = stream.next(slot, reading_us)
            slot += 1
            if message is not None:
                if not self.sink.wait_window(self.stop):
                    break
                tally.add(message)
                self.sink.publish(message.topic, message.payload)
            progress.maybe_report(self.sink, tally)
        elapsed = time.monotonic() - start

        drained_at = time.monotonic()
        if not self.sink.drain(cfg.drain_timeout_s, self.abort):
            print(
                f"simulator: {self.sink.delivery().pending} messages still unacknowledged after "
                f"{cfg.drain_timeout_s:g} s (--drain-timeout)",
                file=self.err,
            )
        drain_s = time.monotonic() - drained_at
        self.sink.close()
        progress.finish()
        return self._summary(
            stream, tally, started_at=started_at, stopped_by=stopped_by, elapsed_s=elapsed, drain_s=drain_s
        )

    def _sleep_until(self, due: float, progress: Progress, tally: Tally) -> bool:
        """Wait for a slot's time, still reporting progress (and health) when readings are
        far apart; False if stopped meanwhile."""
        while (delay := due - time.monotonic()) >= MIN_SLEEP_S:
            if self.stop.wait(min(delay, self.config.progress_interval_s)):
                return False
            progress.maybe_report(self.sink, tally)
        return True

    def _summary(
        self,
        stream: MessageStream,
        tally: Tally,
        *,
        started_at: str,
        stopped_by: str,
        elapsed_s: float,
        drain_s: float,
    ) -> Summary:
        cfg = self.config
        d = self.sink.delivery()
        return Summary(
            seed=cfg.seed,
            devices=cfg.devices,
            locations=list(cfg.locations[: cfg.devices]),  # those in use
            qos=cfg.qos,
            mqtt_version=cfg.mqtt_version,
            rate_per_device=cfg.rate,
            timestamps=cfg.timestamps.value,
            dry_run=cfg.dry_run,
            started_at=started_at,
            stopped_by=stopped_by,
            elapsed_s=round(elapsed_s, 3),
            drain_s=round(drain_s, 3),
            messages_sent=d.sent,
            messages_acked=d.acked,
            messages_pending=d.pending,
            messages_dropped=d.dropped,
            messages_refused=dict(d.refused),
            no_subscribers=d.no_subscribers,
            valid_messages=tally.kinds[Kind.READING] + tally.kinds[Kind.BACKLOG],
            backlog_messages=tally.kinds[Kind.BACKLOG],
            readings=tally.readings,
            values=tally.values,
            ignored_values=tally.ignored,
            unsent_readings=stream.unsent_readings(),
            # Every configured kind is listed, zeros included, so a reader can tell "none sent"
            # from "not asked for".
            malformed={k.value: tally.kinds[k.value] for k in cfg.malformed_kinds}
            if cfg.malformed_share > 0
            else {},
            series={name: dict(counts) for name, counts in sorted(tally.series.items())},
        )
