"""The PNG chart beside docs/benchmarks.md (matplotlib, optional: the `bench` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.idle import IdleResult
from bench.ingest import IngestResult
from bench.live import LiveResult
from bench.many import ManyResult
from bench.relays import RELAY_KINDS, RELAY_NAMES
from bench.report import size_label

COLORS = {"c": "#4c72b0", "py": "#dd8452"}


def write_chart(path: Path, ingest: list[IngestResult], live: list[LiveResult],
                many: list[ManyResult], idle: list[IdleResult]) -> str | None:
    """Write the chart; returns why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    # A panel whose benchmarks did not run (`bench/run.py --only`) says so instead.
    if ingest:
        _ingest(axes[0][0], ingest, "MB/s", lambda r: r.producer.mb_per_s)
        _ingest(axes[0][1], ingest, "relay CPU s per GiB", lambda r: r.cpu_s_per_gib)
    else:
        _not_run(axes[0][0], "1. Ingest")
        _not_run(axes[0][1], "1. Ingest")
    if live:
        _live(axes[1][0], live)
    else:
        _not_run(axes[1][0], "4. Live")
    if many or idle:
        _memory(axes[1][1], many, idle)
    else:
        _not_run(axes[1][1], "Relay memory (3. many, 5. idle)")
    figure.suptitle("pyrelayd vs lttng-relayd 2.13 (same run, same inputs)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def _not_run(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _bars(ax: Any, labels: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / max(1, len(series))
    for number, (kind, values) in enumerate(series.items()):
        positions = [i + (number - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(positions, values, width, label=RELAY_NAMES.get(kind, kind),
                      color=COLORS.get(kind))
        ax.bar_label(bars, labels=[_label(value) for value in values], fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.legend()


def _label(value: float) -> str:
    if not value:
        return "n/a"
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _ingest(ax: Any, results: list[IngestResult], what: str, value: Any) -> None:
    keys = sorted({(r.output, r.packet_size) for r in results},
                  key=lambda key: (key[0] != "tmpfs", key[1]))
    by_key = {(r.output, r.packet_size, r.relay): r for r in results}
    series: dict[str, list[float]] = {
        kind: [value(by_key[(*key, kind)]) if (*key, kind) in by_key else 0.0 for key in keys]
        for kind in RELAY_KINDS
    }
    _bars(ax, [f"{output}\n{size_label(size)}" for output, size in keys], series)
    ax.set_title(f"1. Ingest, 1 session x 4 streams: {what}")
    ax.set_ylabel(what)


def _live(ax: Any, results: list[LiveResult]) -> None:
    labels = [f"{r.label}" for r in results if r.relay == "c"]
    c = {r.label: r.delivered_mb_per_s for r in results if r.relay == "c"}
    py = {r.label: r.delivered_mb_per_s for r in results if r.relay == "py"}
    labels += [label for label in py if label not in c]
    _bars(ax, [label.replace(" on ", "\non ") for label in labels],
          {"c": [c.get(label, 0.0) for label in labels],
           "py": [py.get(label, 0.0) for label in labels]})
    ax.set_title("4. Live: MB/s delivered to the viewers")
    ax.set_ylabel("MB/s")


def _memory(ax: Any, many: list[ManyResult], idle: list[IdleResult]) -> None:
    from matplotlib import ticker

    labels: list[str] = []
    series: dict[str, list[float]] = {kind: [] for kind in RELAY_KINDS}
    if many:
        labels.append("3. many\nVmHWM")
        for kind in RELAY_KINDS:
            series[kind].append(next((r.hwm_kib / 1024 for r in many if r.relay == kind), 0.0))
    for result in idle:
        if result.relay != RELAY_KINDS[0]:
            continue
        label = (f"limit {result.nofile}" if result.nofile
                 else f"pool {result.fd_pool_size or 'default'}")
        labels.append(f"5. idle,\n{label}: VmRSS")
        for kind in RELAY_KINDS:
            series[kind].append(next((r.rss_kib / 1024 for r in idle if r.relay == kind
                                      and r.label == result.label and not r.failure), 0.0))
    _bars(ax, labels, series)
    if not any(value > 0 for values in series.values() for value in values):
        ax.set_title("Relay memory, MiB (no measurement)")
        return
    ax.set_title("Relay memory, MiB (log scale)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylabel("MiB")
