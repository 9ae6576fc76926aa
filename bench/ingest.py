"""Benchmark 1: ingest throughput of one session of 4 streams from the synthetic producer.

For each output file system (tmpfs, disk) and relay, one relay process receives, for each
packet size, `total_bytes` of packets (plus one SEND_INDEX per packet) as fast as it accepts
them. Measured: MB/s from the first packet sent until DATA_PENDING reports everything
received, and the relay's CPU seconds per GiB over the same interval. Every run is verified
(data file sizes and index record counts) before its output is deleted.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.children import ChildProcess
from bench.relays import RELAY_KINDS, RELAY_NAMES, Relay, RelayKind, start_relay
from bench.report import GIB, Section, Table, median_by, number, ratio, size_label, spread
from bench.synthetic import ProducerPlan, ProducerResult, run_producer, verify_output
from pyrelayd_testkit.processes import child_pids, own_cpu_seconds

OUTPUTS = {"tmpfs": Path("/dev/shm"), "disk": Path("/var/tmp")}


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    total_bytes: int
    packet_sizes: tuple[int, ...] = (4096, 64 * 1024, 1 << 20)
    streams: int = 4
    outputs: tuple[str, ...] = ("tmpfs", "disk")
    repeat: int = 1  # runs per figure; the median (by MB/s) is reported
    sync: bool = True  # flush the disk between runs (untimed)


@dataclasses.dataclass(frozen=True)
class IngestResult:
    relay: RelayKind
    output: str
    packet_size: int
    producer: ProducerResult
    relay_cpu_s: float
    verified: bool
    runs_mb_per_s: tuple[float, ...] = ()  # every run of which this is the median

    @property
    def cpu_s_per_gib(self) -> float:
        return self.relay_cpu_s / (self.producer.payload_bytes / GIB)

    @property
    def producer_cpu_percent(self) -> float:
        return 100 * self.producer.cpu_s / self.producer.wall_s


def process_cpu(relay: Relay) -> dict[int, float]:
    """CPU seconds of the relay's process and of each of its children (--workers), by pid."""
    found = {relay.pid: own_cpu_seconds(relay.pid)}
    for pid in child_pids(relay.pid):
        found[pid] = own_cpu_seconds(pid)
    return found


def measured_runs(relay: Relay, producers: Sequence[ChildProcess]
                  ) -> tuple[ProducerResult, float, tuple[float, ...]]:
    """Run producer children at once (all ready, all go, all done): one result for all
    (wall: until the last one is done), the relay's CPU seconds, and their shares by process
    (the router or single process first, then the workers, busiest first)."""
    try:
        for producer in producers:
            producer.expect("ready", 120)
        before = relay.cpu_seconds()
        before_each = process_cpu(relay)
        for producer in producers:
            producer.send("go")
        results: list[ProducerResult] = [producer.expect("done") for producer in producers]
        cpu = relay.cpu_seconds() - before
        after_each = process_cpu(relay)
        for producer in producers:
            producer.send("close")
            producer.expect("closed")
    finally:
        for producer in producers:
            producer.stop()
    relay.check_running()
    total = ProducerResult(max(r.wall_s for r in results), sum(r.cpu_s for r in results),
                           sum(r.payload_bytes for r in results), sum(r.packets for r in results))
    spent = {pid: after_each[pid] - before_each.get(pid, 0.0) for pid in after_each}
    main = spent.pop(relay.pid)
    shares = tuple(value / cpu if cpu else 0.0
                   for value in (main, *sorted(spent.values(), reverse=True)))
    return total, cpu, shares


def measured_run(relay: Relay, producer: ChildProcess) -> tuple[ProducerResult, float]:
    """Run a producer child (ready, go, done, close) and measure the relay's CPU seconds
    between its go and its done; the relay must still be running afterwards."""
    result, cpu, _shares = measured_runs(relay, [producer])
    return result, cpu


def ingest_once(relay: Relay, output: str, size: int, config: IngestConfig,
                problems: list[str]) -> IngestResult:
    plan = ProducerPlan(relay.control_port, relay.data_port, f"ingest-{size}", 1,
                        config.streams, size, max(1, config.total_bytes // (config.streams * size)))
    result, cpu = measured_run(
        relay, ChildProcess(run_producer, plan, name=f"producer {relay.kind}"))
    check = verify_output(relay.output_dir, plan)
    problems += [f"{relay.name} {output} {size_label(size)}: {p}" for p in check.problems]
    run = IngestResult(relay.kind, output, size, result, cpu, check.ok)
    print(f"  ingest {output:5} {relay.name:12} {size_label(size):>8}: "
          f"{result.mb_per_s:8.1f} MB/s, {run.cpu_s_per_gib:6.2f} relay CPU s/GiB, producer "
          f"{run.producer_cpu_percent:3.0f}% CPU{'' if check.ok else ', VERIFICATION FAILED'}",
          flush=True)
    shutil.rmtree(relay.output_dir, ignore_errors=True)
    relay.output_dir.mkdir()
    if output == "disk" and config.sync:
        os.sync()  # no write-back of this run during the next one
    return run


def run_ingest(config: IngestConfig, workdir: Path) -> tuple[Section, list[IngestResult]]:
    results: list[IngestResult] = []
    problems: list[str] = []
    for output in config.outputs:
        base = Path(tempfile.mkdtemp(prefix="pyrelayd-bench-", dir=OUTPUTS[output]))
        try:
            for kind in RELAY_KINDS:
                relay = start_relay(kind, base / kind, workdir / f"ingest-{output}-{kind}")
                try:
                    for size in config.packet_sizes:
                        runs = [ingest_once(relay, output, size, config, problems)
                                for _ in range(config.repeat)]
                        median = median_by(runs, lambda r: r.producer.mb_per_s)
                        results.append(dataclasses.replace(
                            median, runs_mb_per_s=tuple(r.producer.mb_per_s for r in runs)))
                finally:
                    relay.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return _section(config, results, problems), results


def _section(config: IngestConfig, results: list[IngestResult], problems: list[str]) -> Section:
    by_key = {(r.output, r.packet_size, r.relay): r for r in results}
    table = Table([
        "output", "packet", "relay", "MB/s", "MB/s of the runs", "relay CPU s/GiB",
        "producer CPU %", "verified",
    ])
    ratios = Table(["output", "packet", "MB/s py/C", "CPU s/GiB py/C"])
    for output in config.outputs:
        for size in config.packet_sizes:
            pair = {kind: by_key.get((output, size, kind)) for kind in RELAY_KINDS}
            for kind, result in pair.items():
                if result is None:
                    continue
                table.add(output, size_label(size), RELAY_NAMES[kind],
                          number(result.producer.mb_per_s), spread(result.runs_mb_per_s),
                          number(result.cpu_s_per_gib, 2),
                          number(result.producer_cpu_percent, 0),
                          "yes" if result.verified else "**no**")
            c, py = pair["c"], pair["py"]
            if c is not None and py is not None:
                ratios.add(output, size_label(size),
                           ratio(py.producer.mb_per_s, c.producer.mb_per_s),
                           ratio(py.cpu_s_per_gib, c.cpu_s_per_gib))
    description = (
        f"One session of {config.streams} streams, {size_label(config.total_bytes)} of "
        "packets in all per run, sent by the synthetic producer (`bench/synthetic.py`: batched "
        "packets, pipelined SEND_INDEX) as fast as the relay accepts them. MB/s counts packet "
        "bytes from the first packet sent until DATA_PENDING says the relay has every packet "
        "and index; relay CPU is user + system time of all its threads over that interval. "
        "`verified`: every data file has the expected size and every index file one record "
        "per packet. Producer CPU near 100 % would mean the producer, not the relay, is the "
        f"limit. Each figure is the median run (by MB/s) of {config.repeat}."
    )
    section = Section("1. Ingest throughput", description, [table, ratios])
    section.notes += problems
    return section
