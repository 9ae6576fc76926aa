"""Benchmark 6: relay cost per packet under each producer pattern of `bench/producers.py`.

Both relays run at once (pinned to the same CPU; the idle one costs nothing), writing to tmpfs.
For each pattern and packet size, each run streams the same packets into one relay then the
other, the order alternating from run to run. Measured: MB/s from the first byte sent until
DATA_PENDING reports everything received (for `sessions`: until the last session is closed),
and the relay's CPU time per packet over the same interval (user + system, /proc/PID/stat).
Every run is verified, then its output deleted.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.children import ChildProcess
from bench.ingest import measured_run
from bench.producers import PATTERNS, SESSION_CONCURRENCY, run_pattern
from bench.relays import RELAY_KINDS, RELAY_NAMES, Relay, RelayKind, start_relay
from bench.report import Section, Table, number, ratio, size_label
from bench.synthetic import ProducerPlan, ProducerResult, verify_output


@dataclasses.dataclass(frozen=True)
class PatternsConfig:
    total_bytes: int  # per run, for the one-session patterns
    packet_sizes: tuple[int, ...] = (4096, 64 * 1024, 1 << 20)
    patterns: tuple[str, ...] = PATTERNS
    streams: int = 4
    repeat: int = 3
    sessions: int = 64  # the `sessions` pattern: how many, and packets per stream in each
    session_packets_per_stream: int = 4
    output_base: Path = Path("/dev/shm")

    def plan(self, relay: Relay, pattern: str, size: int) -> ProducerPlan:
        if pattern == "sessions":
            return ProducerPlan(relay.control_port, relay.data_port, f"{pattern}-{size}",
                                self.sessions, self.streams, size,
                                self.session_packets_per_stream)
        per_stream = max(1, self.total_bytes // (self.streams * size))
        return ProducerPlan(relay.control_port, relay.data_port, f"{pattern}-{size}", 1,
                            self.streams, size, per_stream)


@dataclasses.dataclass(frozen=True)
class PatternRun:
    relay: RelayKind
    pattern: str
    packet_size: int
    producer: ProducerResult
    relay_cpu_s: float
    verified: bool

    @property
    def cpu_us_per_packet(self) -> float:
        return 1e6 * self.relay_cpu_s / self.producer.packets


@dataclasses.dataclass(frozen=True)
class PatternResult:
    """The median MB/s and median CPU per packet of a relay's runs of one pattern and size."""

    relay: RelayKind
    pattern: str
    packet_size: int
    runs: tuple[PatternRun, ...]

    @property
    def mb_per_s(self) -> float:
        return statistics.median(run.producer.mb_per_s for run in self.runs)

    @property
    def cpu_us_per_packet(self) -> float:
        return statistics.median(run.cpu_us_per_packet for run in self.runs)

    @property
    def packets(self) -> int:
        return self.runs[0].producer.packets

    @property
    def verified(self) -> bool:
        return all(run.verified for run in self.runs)


def _run_once(relay: Relay, config: PatternsConfig, pattern: str, size: int,
              problems: list[str]) -> PatternRun:
    plan = config.plan(relay, pattern, size)
    result, cpu = measured_run(
        relay, ChildProcess(run_pattern, pattern, plan, name=f"{pattern} producer {relay.kind}"))
    check = verify_output(relay.output_dir, plan)
    problems += [f"{relay.name} {pattern} {size_label(size)}: {p}" for p in check.problems]
    run = PatternRun(relay.kind, pattern, size, result, cpu, check.ok)
    print(f"  {pattern:9} {relay.name:12} {size_label(size):>8}: {result.mb_per_s:8.1f} MB/s, "
          f"{run.cpu_us_per_packet:7.1f} relay CPU us/packet, producer "
          f"{100 * result.cpu_s / result.wall_s:3.0f}% CPU"
          f"{'' if check.ok else ', VERIFICATION FAILED'}", flush=True)
    shutil.rmtree(relay.output_dir, ignore_errors=True)
    relay.output_dir.mkdir()
    return run


def run_patterns(config: PatternsConfig, workdir: Path,
                 kinds: tuple[RelayKind, ...] = RELAY_KINDS,
                 ) -> tuple[Section, list[PatternResult]]:
    problems: list[str] = []
    runs: dict[tuple[str, int, RelayKind], list[PatternRun]] = {}
    base = Path(tempfile.mkdtemp(prefix="pyrelayd-bench-", dir=config.output_base))
    relays: dict[RelayKind, Relay] = {}
    try:
        for kind in kinds:
            relays[kind] = start_relay(kind, base / kind, workdir / f"patterns-{kind}")
        for pattern in config.patterns:
            for size in config.packet_sizes:
                for number_ in range(config.repeat):
                    order = kinds if number_ % 2 == 0 else tuple(reversed(kinds))
                    for kind in order:
                        run = _run_once(relays[kind], config, pattern, size, problems)
                        runs.setdefault((pattern, size, kind), []).append(run)
    finally:
        for relay in relays.values():
            relay.stop()
        shutil.rmtree(base, ignore_errors=True)
    results = [PatternResult(kind, pattern, size, tuple(found))
               for (pattern, size, kind), found in runs.items()]
    return _section(config, results, problems), results


def _spread(values: list[float], digits: int) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


def _section(config: PatternsConfig, results: list[PatternResult],
             problems: list[str]) -> Section:
    by_key = {(r.pattern, r.packet_size, r.relay): r for r in results}
    table = Table(["pattern", "packet", "relay", "packets", "MB/s", "MB/s of the runs",
                   "relay CPU us/packet", "us/packet of the runs", "verified"])
    ratios = Table(["pattern", "packet", "MB/s py/C", "CPU us/packet py/C"])
    for pattern in config.patterns:
        for size in config.packet_sizes:
            pair = {kind: by_key.get((pattern, size, kind)) for kind in RELAY_KINDS}
            for kind, result in pair.items():
                if result is None:
                    continue
                table.add(pattern, size_label(size), RELAY_NAMES[kind], f"{result.packets:,}",
                          number(result.mb_per_s),
                          _spread([r.producer.mb_per_s for r in result.runs], 0),
                          number(result.cpu_us_per_packet, 1),
                          _spread([r.cpu_us_per_packet for r in result.runs], 1),
                          "yes" if result.verified else "**no**")
            c, py = pair["c"], pair["py"]
            if c is not None and py is not None:
                ratios.add(pattern, size_label(size), ratio(py.mb_per_s, c.mb_per_s),
                           ratio(py.cpu_us_per_packet, c.cpu_us_per_packet))
    description = (
        "The producer patterns of `bench/producers.py`, one session of "
        f"{config.streams} streams and {size_label(config.total_bytes)} of packets per run "
        "(`sessions`: "
        f"{config.sessions} sessions of {config.streams} streams and "
        f"{config.session_packets_per_stream} packets per stream, {SESSION_CONCURRENCY} at a "
        "time, each opened "
        "and closed within the run), output on tmpfs. `pipelined`: the synthetic producer of "
        "the ingest benchmark; `batch`: batches of 256 packets, data then their SEND_INDEX, "
        "replies read by another thread; `consumerd`: per packet, as lttng-consumerd 2.13, "
        "data header, payload, SEND_INDEX and wait for its reply. Both relays run at once, "
        "pinned to the same CPU, and take turns, the first alternating from run to run. "
        "MB/s: packet bytes from the first byte sent until DATA_PENDING says the relay has "
        "everything; relay CPU per packet: user + system time over the same interval "
        "(10 ms ticks) divided by the packets. Each figure is the median of "
        f"{config.repeat} runs (MB/s and CPU separately); every run's figure follows it."
    )
    section = Section("6. Producer patterns", description, [table, ratios])
    section.notes += problems
    return section
