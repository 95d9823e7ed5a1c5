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
    """One group of bars per workload: broker drain, the adapter (1, 2 processes, log on), naive."""
    workloads = results["workloads"]
    fig, ax = plt.subplots(figsize=(10, 5))
    x = 0.0
    ticks, tick_labels = [], []
    for name in ("realistic", "easy"):
        if name not in workloads:
            continue
        w = workloads[name]
        bars = [("broker alone\n(drain)", w["broker"]["messages_per_s"], "#8c8c8c")]
        for run in w.get("adapter_runs", []):
            label = f"adapter x{run['replicas']}" + ("\nlog on" if run["data_flow_log"] else "")
            bars.append((label, run["messages_per_s"], "#dd8452" if run["data_flow_log"] else "#4c72b0"))
        if name == "easy" and "naive_msgs_per_s" in results:
            bars.append(("naive\n(1 write/msg)", results["naive_msgs_per_s"], "#c44e52"))
        for label, value, color in bars:
            rect = ax.bar(x, value, color=color, width=0.8)
            ax.bar_label(rect, labels=[f"{value:,.0f}"], padding=3, fontsize=8)
            ticks.append(x)
            tick_labels.append(label)
            x += 1
        ax.annotate(
            f"{name}: {w['messages']:,} messages",
            xy=(x - (len(bars) + 1) / 2, 1.0),
            xycoords=("data", "axes fraction"),
            ha="center",
            va="bottom",
            fontsize=9,
        )
        x += 1
    ax.set_xticks(ticks, tick_labels, fontsize=8)
    ax.set_ylabel("messages / s (QoS 1, 3 numeric values each)")
    ax.set_title(f"End-to-end ingest, {results['cpus']} cores", pad=18)
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
    print(f"wrote {RESULTS / 'throughput.png'}")
    if "latency" in results:
        latency(results, RESULTS / "latency.png")
        print(f"wrote {RESULTS / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
