"""Benchmark 8: more than one core (`pyrelayd --workers N`).

`HOSTS` traced hosts (sessions connecting from 127.0.0.10, .11, ...: a relay with `--workers`
gives each host to one worker) stream at once, each from its own producer process (the ingest
benchmark's producer, one session per host), to these relays in turn, run after run:

* lttng-relayd and pyrelayd (one process) pinned to the relay core: the per-core figures;
* `pyrelayd --workers 2` pinned to that same core: what splitting costs (the router, two event
  loops, two processes sharing a core); its relay CPU per packet should equal pyrelayd's;
* `pyrelayd --workers 2` and lttng-relayd free to use every core, the producer on the load
  core(s): what a second core brings. On a 2-core machine the relay shares the second core
  with the producer, so this is a lower bound of the scaling.

Relay CPU is the router's plus its workers'. Every run's files are verified.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.children import ChildProcess
from bench.ingest import OUTPUTS, measured_runs
from bench.producers import run_pattern
from bench.relays import LOAD_CPUS, RELAY_CPUS, RELAY_NAMES, RelayKind, start_relay
from bench.report import Section, Table, median_by, number, ratio, size_label, spread
from bench.synthetic import ProducerPlan, ProducerResult, verify_output

HOSTS = 4
STREAMS_PER_HOST = 2


@dataclasses.dataclass(frozen=True)
class Variant:
    mode: str
    kind: RelayKind
    extra_args: tuple[str, ...]
    cpus: frozenset[int] | None  # None: every core

    @property
    def name(self) -> str:
        return f"{RELAY_NAMES[self.kind]} {self.mode}"


def variants(workers: int) -> tuple[Variant, ...]:
    one, every = RELAY_CPUS, None
    flags = ("--workers", str(workers))
    return (
        Variant("1 core", "c", (), one),
        Variant("1 core", "py", (), one),
        Variant(f"--workers {workers}, 1 core", "py", flags, one),
        Variant("all cores", "c", (), every),
        Variant(f"--workers {workers}, all cores", "py", flags, every),
    )


@dataclasses.dataclass(frozen=True)
class ScalingConfig:
    total_bytes: int
    packet_sizes: Sequence[int] = (4096, 65536)
    # bench/producers.py patterns: `pipelined` (the relay gets many packets per read) and
    # `consumerd` (lttng-consumerd's packet, index, wait for the reply: the relay wakes up
    # for each message, and the producer costs less than the relay).
    patterns: Sequence[str] = ("pipelined", "consumerd")
    hosts: int = HOSTS
    repeat: int = 3
    workers: int = 2
    output: str = "tmpfs"


@dataclasses.dataclass(frozen=True)
class ScalingRun:
    result: ProducerResult
    relay_cpu_s: float
    verified: bool
    shares: tuple[float, ...]  # of the relay CPU: main process (router), then each worker

    @property
    def cpu_us_per_packet(self) -> float:
        return self.relay_cpu_s / self.result.packets * 1e6

    @property
    def cpu_s_per_gib(self) -> float:
        return self.relay_cpu_s / (self.result.payload_bytes / (1 << 30))

    @property
    def cores_busy(self) -> float:
        """The relay's CPU time over the run's wall time: above 1, it ran on several cores."""
        return self.relay_cpu_s / self.result.wall_s


@dataclasses.dataclass(frozen=True)
class ScalingResult:
    variant: Variant
    pattern: str
    packet_size: int
    runs: tuple[ScalingRun, ...]

    @property
    def median(self) -> ScalingRun:
        return median_by(self.runs, lambda run: run.cpu_us_per_packet)

    @property
    def median_mb_per_s(self) -> float:
        speeds = sorted(run.result.mb_per_s for run in self.runs)
        return speeds[len(speeds) // 2]


def _one_run(variant: Variant, pattern: str, size: int, config: ScalingConfig, base: Path,
             workdir: Path, problems: list[str]) -> ScalingRun:
    relay = start_relay(variant.kind, base, workdir, extra_args=variant.extra_args,
                        cpus=variant.cpus)
    try:
        packets = max(1, config.total_bytes // (config.hosts * STREAMS_PER_HOST * size))
        plans = [ProducerPlan(relay.control_port, relay.data_port,
                              f"scaling-{pattern}-{size}-h{host}", 1, STREAMS_PER_HOST, size,
                              packets, host=host)
                 for host in range(config.hosts)]
        result, cpu, shares = measured_runs(relay, [
            ChildProcess(run_pattern, pattern, plan, name=f"producer {host} {variant.name}")
            for host, plan in enumerate(plans)])
        checks = [verify_output(relay.output_dir, plan) for plan in plans]
        problems += [f"{variant.name} {pattern} {size_label(size)}: {p}"
                     for check in checks for p in check.problems]
    finally:
        relay.stop()
        shutil.rmtree(base, ignore_errors=True)
    run = ScalingRun(result, cpu, all(check.ok for check in checks), shares)
    print(f"  scaling {pattern:9} {variant.name:32} {size_label(size):>8}: "
          f"{result.mb_per_s:8.1f} MB/s, "
          f"{run.cpu_us_per_packet:6.1f} relay CPU us/packet", flush=True)
    return run


def run_scaling(config: ScalingConfig, workdir: Path) -> tuple[Section, list[ScalingResult]]:
    problems: list[str] = []
    chosen = variants(config.workers)
    runs: dict[tuple[str, str, int], list[ScalingRun]] = {
        (v.name, pattern, size): [] for pattern in config.patterns
        for size in config.packet_sizes for v in chosen}
    base = Path(tempfile.mkdtemp(prefix="pyrelayd-bench-", dir=OUTPUTS[config.output]))
    try:
        for attempt in range(config.repeat):
            for pattern in config.patterns:
                for size in config.packet_sizes:
                    for number_, variant in enumerate(chosen):
                        name = f"{attempt}-{pattern}-{size}-{number_}"
                        runs[(variant.name, pattern, size)].append(_one_run(
                            variant, pattern, size, config, base / name,
                            workdir / f"scaling-{name}", problems))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    by_name = {v.name: v for v in chosen}
    results = [ScalingResult(by_name[name], pattern, size, tuple(found))
               for (name, pattern, size), found in runs.items()]
    return _section(config, results, problems), results


def _section(config: ScalingConfig, results: list[ScalingResult],
             problems: list[str]) -> Section:
    table = Table(["pattern", "relay", "processes, cores", "packet", "MB/s",
                   "relay CPU µs/packet",
                   "µs/packet of the runs", "relay CPU s/GiB", "relay cores busy",
                   "CPU share: main process, workers", "verified"])
    for result in results:
        median = result.median
        table.add(result.pattern, RELAY_NAMES[result.variant.kind], result.variant.mode,
                  size_label(result.packet_size),
                  number(result.median_mb_per_s), number(median.cpu_us_per_packet, 1),
                  spread([run.cpu_us_per_packet for run in result.runs]),
                  number(median.cpu_s_per_gib, 2), number(median.cores_busy, 2),
                  " / ".join(f"{share:.0%}" for share in median.shares),
                  "yes" if all(run.verified for run in result.runs) else "**no**")
    ratios = Table(["pattern", "packet", "compared", "MB/s ratio", "CPU/packet ratio"])
    workers = config.workers
    for pattern, size in [(p, s) for p in config.patterns for s in config.packet_sizes]:
        found = {r.variant.name: r for r in results
                 if r.packet_size == size and r.pattern == pattern}
        py, c, split = RELAY_NAMES["py"], RELAY_NAMES["c"], f"--workers {workers}"
        pairs = (
            ("py/C, 1 core (one process each)", f"{py} 1 core", f"{c} 1 core"),
            (f"{split} / 1 process, 1 core", f"{py} {split}, 1 core", f"{py} 1 core"),
            (f"{split}: all cores / 1 core", f"{py} {split}, all cores", f"{py} {split}, 1 core"),
            (f"py/C, all cores ({split} / {c})", f"{py} {split}, all cores", f"{c} all cores"),
        )
        for label, top, bottom in pairs:
            if top in found and bottom in found:
                ratios.add(pattern, size_label(size), label,
                           ratio(found[top].median_mb_per_s, found[bottom].median_mb_per_s),
                           ratio(found[top].median.cpu_us_per_packet,
                                 found[bottom].median.cpu_us_per_packet))
    description = (
        f"{config.hosts} traced hosts (one session of {STREAMS_PER_HOST} streams each, connecting "
        "from its own address, each host a producer process of its own, in the "
        f"{' and '.join(f'`{p}`' for p in config.patterns)} patterns of section 6) stream "
        f"{size_label(config.total_bytes)} per run to {config.output} through the ingest "
        "benchmark's producer, to each relay in turn, run after run. '1 core': the relay "
        f"(router and workers included) pinned to CPU {sorted(RELAY_CPUS)}; 'all cores': "
        f"free to use every CPU, the producer staying on CPU {sorted(LOAD_CPUS)}. Relay CPU "
        "is the router's and its workers'. Each figure is the median of "
        f"{config.repeat} runs (by relay CPU per packet; MB/s: median MB/s)."
    )
    section = Section("8. Scaling over cores", description, [table, ratios])
    section.notes += problems
    return section
