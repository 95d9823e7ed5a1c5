"""Draws benchmarks/results/ingest.json as the PNG plots docs/benchmarks.md shows.

.venv/bin/python -m benchmarks.plot
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or CI
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"


def throughput(results: dict, out: Path) -> None:
    labels = ["naive adapter\n(1 HTTP write/msg)"]
    values = [results["naive_msgs_per_s"]]
    for run in results["adapter_runs"]:
        labels.append(f"this adapter\nx{run['replicas']} process" + ("es" if run["replicas"] > 1 else ""))
        values.append(run["messages_per_s"])
    labels.append("broker alone\n(mosquitto_sub drain)")
    values.append(results["broker_msgs_per_s"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.bar(
        labels, values, color=["#c44e52"] + ["#4c72b0"] * len(results["adapter_runs"]) + ["#8c8c8c"]
    )
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], padding=3)
    ax.set_ylabel("messages / s (QoS 1, 3 numeric fields each)")
    ax.set_title(f"End-to-end ingest, {results['messages']:,} messages, {results['cpus']} cores")
    ax.set_ylim(0, max(values) * 1.15)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def latency(results: dict, out: Path) -> None:
    runs = results["latency"]
    rates = [r["achieved_rate"] for r in runs]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        ax.plot(rates, [r[key] for r in runs], marker="o", label=label)
    ax.set_xlabel("offered load (messages / s)")
    ax.set_ylabel("publish → stored latency (ms)")
    ax.set_title("Latency against offered load (one adapter, default 50 ms flush bound)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    results = json.loads((RESULTS / "ingest.json").read_text())
    throughput(results, RESULTS / "throughput.png")
    latency(results, RESULTS / "latency.png")
    print(f"wrote {RESULTS / 'throughput.png'} and {RESULTS / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
