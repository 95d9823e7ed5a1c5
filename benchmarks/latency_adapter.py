"""The real adapter, recording publish → stored latency of every point it writes.

Used by benchmarks/ingest.py: the publisher puts its send time in `timestamp`, so after a
successful write `now - point time` is the publish-to-stored latency. Writes one latency
in seconds per line to $BENCH_LATENCY_LOG when the adapter stops.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from prometheus_client import start_http_server

from adapter.adapter import Adapter, Batch, configure_logging
from adapter.config import AdapterConfig


class LatencyRecordingAdapter(Adapter):
    latencies: list[float]

    def _store(self, batch: Batch) -> None:
        super()._store(batch)
        now_ns = time.time_ns()
        self.latencies.extend((now_ns - int(line.rsplit(" ", 1)[1])) / 1e9 for line in batch.lines)


def main() -> None:
    config = AdapterConfig.from_env()
    configure_logging()
    adapter = LatencyRecordingAdapter(config)
    adapter.latencies = []
    start_http_server(config.metrics_port, registry=adapter.metrics.registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    adapter.start()
    stop.wait()
    adapter.stop()
    with open(os.environ["BENCH_LATENCY_LOG"], "w") as fh:
        fh.write("\n".join(f"{x:.6f}" for x in adapter.latencies))


if __name__ == "__main__":
    main()
