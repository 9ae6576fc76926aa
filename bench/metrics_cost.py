"""Benchmark 7: what `--metrics-port` costs on the ingest hot path.

The ingest benchmark's producer (`bench/synthetic.py`) sends 4 KiB packets to three relays in
turn, run after run: lttng-relayd, pyrelayd, and pyrelayd with `--metrics-port` scraped every
second (GET /metrics and /status, as Prometheus and a dashboard would) for the whole run. The
relay's CPU seconds per GiB are steadier than MB/s on a shared machine: the cost of metrics is
the ratio of the two pyrelayd figures. The counters themselves are always on; only the
endpoint and its scrapes differ.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import threading
import urllib.request
from pathlib import Path

from bench.ingest import OUTPUTS, IngestConfig, IngestResult, ingest_once
from bench.relays import RELAY_NAMES, Relay, RelayKind, start_relay
from bench.report import Section, Table, median_by, number, ratio, size_label, spread
from pyrelayd_testkit.ports import free_tcp_ports, release_tcp_ports

#: The variants, in the order they take turns: (name, relay kind, serve metrics).
VARIANTS: tuple[tuple[str, RelayKind, bool], ...] = (
    ("lttng-relayd", "c", False), ("pyrelayd", "py", False),
    ("pyrelayd --metrics-port", "py", True),
)  # fmt: skip
SCRAPE_INTERVAL_S = 1.0


@dataclasses.dataclass(frozen=True)
class MetricsCostConfig:
    total_bytes: int
    packet_size: int = 4096
    repeat: int = 5
    output: str = "tmpfs"


@dataclasses.dataclass(frozen=True)
class MetricsCostResult:
    variant: str
    runs: tuple[IngestResult, ...]
    scrapes: int

    @property
    def median(self) -> IngestResult:
        return median_by(self.runs, lambda run: run.cpu_s_per_gib)


class Scraper:
    """GET /metrics and /status every second, as a monitoring system would, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_INTERVAL_S):
            for path in ("/metrics", "/status"):
                try:
                    url = f"http://127.0.0.1:{self.port}{path}"
                    with urllib.request.urlopen(url, timeout=5) as reply:
                        reply.read()
                    self.count += 1
                except OSError as error:
                    self.failures.append(f"{path}: {error}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_metrics_cost(config: MetricsCostConfig,
                     workdir: Path) -> tuple[Section, list[MetricsCostResult]]:
    ingest = IngestConfig(config.total_bytes, packet_sizes=(config.packet_size,),
                          outputs=(config.output,), sync=False)
    runs: dict[str, list[IngestResult]] = {name: [] for name, _, _ in VARIANTS}
    scrapes = dict.fromkeys(runs, 0)
    problems: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="pyrelayd-bench-", dir=OUTPUTS[config.output]))
    try:
        for attempt in range(config.repeat):
            for number_, (name, kind, metrics) in enumerate(VARIANTS):
                ports = free_tcp_ports(1) if metrics else []
                extra = ["--metrics-port", f"tcp://127.0.0.1:{ports[0]}"] if metrics else []
                relay: Relay = start_relay(kind, base / f"{attempt}-{number_}",
                                           workdir / f"metrics-{attempt}-{number_}",
                                           extra_args=extra)
                scraper = Scraper(ports[0]) if metrics else None
                try:
                    runs[name].append(ingest_once(relay, config.output, config.packet_size,
                                                  ingest, problems))
                finally:
                    if scraper is not None:
                        scraper.stop()
                        scrapes[name] += scraper.count
                        problems += scraper.failures[:3]
                    relay.stop()
                    release_tcp_ports(ports)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results = [MetricsCostResult(name, tuple(runs[name]), scrapes[name]) for name in runs]
    return _section(config, results, problems), results


def _section(config: MetricsCostConfig, results: list[MetricsCostResult],
             problems: list[str]) -> Section:
    table = Table(["relay", "packet", "relay CPU s/GiB", "CPU s/GiB of the runs", "MB/s",
                   "scrapes", "verified"])
    by_name = {result.variant: result for result in results}
    for result in results:
        median = result.median
        table.add(result.variant, size_label(config.packet_size),
                  number(median.cpu_s_per_gib, 3),
                  spread([run.cpu_s_per_gib for run in result.runs]),
                  number(median.producer.mb_per_s), result.scrapes,
                  "yes" if all(run.verified for run in result.runs) else "**no**")
    ratios = Table(["compared", "relay CPU s/GiB ratio"])
    plain, served, c = (by_name.get(name) for name in
                        ("pyrelayd", "pyrelayd --metrics-port", "lttng-relayd"))
    if plain is not None and served is not None:
        ratios.add("pyrelayd with / without metrics",
                   ratio(served.median.cpu_s_per_gib, plain.median.cpu_s_per_gib, 3))
    if c is not None and served is not None:
        ratios.add("py/C (pyrelayd with metrics / lttng-relayd)",
                   ratio(served.median.cpu_s_per_gib, c.median.cpu_s_per_gib))
    description = (
        f"{size_label(config.total_bytes)} of {size_label(config.packet_size)} packets per run "
        f"to {config.output}, from the ingest benchmark's producer, to {RELAY_NAMES['c']}, "
        "pyrelayd, and pyrelayd with `--metrics-port` scraped every second (`/metrics` and "
        "`/status`) for the whole run; the three take turns, run after run. Each figure is the "
        f"median run (by relay CPU per GiB) of {config.repeat}. Target: metrics cost < 3 % of "
        "relay CPU."
    )
    section = Section("7. Metrics cost", description, [table, ratios])
    section.notes += problems
    return section
