"""Command-line entry point: settings, signal handling, summary output and the exit status.

Exit status: 0 every message was accepted by the broker; 1 some were not (refused, dropped
or still unacknowledged); 2 bad command line; 3 the broker could not be used.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType

from simulator.config import parse_args
from simulator.publisher import MqttSink, PrintSink, PublishError, Sink
from simulator.runner import Runner

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_BROKER = 3


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    sink: Sink = PrintSink(sys.stdout) if config.dry_run else MqttSink(config, sys.stderr)
    runner = Runner(config, sink, sys.stderr)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if runner.stop.is_set():
            runner.abort.set()
        else:
            print(
                "\nsimulator: stopping; waiting for acknowledgements (again to stop waiting)",
                file=sys.stderr,
            )
            runner.stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        summary = runner.run()
    except PublishError as exc:
        print(f"simulator: error: {exc}", file=sys.stderr)
        return EXIT_BROKER

    # In a dry run stdout carries the messages, so the summary goes to stderr.
    print(summary.to_text(), file=sys.stderr if config.dry_run else sys.stdout)
    if config.summary_json is not None:
        try:
            summary.write_json(config.summary_json)
        except OSError as exc:
            print(f"simulator: error: cannot write {config.summary_json}: {exc.strerror}", file=sys.stderr)
            return EXIT_INCOMPLETE
    return EXIT_OK if summary.complete else EXIT_INCOMPLETE
