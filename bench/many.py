"""Benchmark 3: many sessions streaming at once (as many consumer daemons would).

One producer process opens every session (a control and a data connection each, metadata
and N data streams), then streams packets round-robin over all streams of all sessions, so
that every connection of the relay has data waiting at the same time. Measured: aggregate
MB/s until DATA_PENDING reports everything received, relay CPU, and relay memory: VmRSS once
every session is open, the largest VmRSS sampled (every 50 ms) while streaming, and VmHWM.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from bench.children import ChildProcess
from bench.relays import RELAY_KINDS, RELAY_NAMES, Relay, RelayKind, start_relay
from bench.report import GIB, Section, Table, number, ratio, size_label
from bench.synthetic import ProducerPlan, ProducerResult, run_producer, verify_output


@dataclasses.dataclass(frozen=True)
class ManyConfig:
    sessions: int
    streams: int
    total_bytes: int
    packet_size: int = 16 * 1024
    output_base: Path = Path("/dev/shm")


@dataclasses.dataclass(frozen=True)
class ManyResult:
    relay: RelayKind
    producer: ProducerResult
    relay_cpu_s: float
    setup_s: float
    rss_open_kib: int  # once every session is open, before streaming
    rss_peak_kib: int  # largest sample while streaming
    hwm_kib: int
    verified: bool

    @property
    def cpu_s_per_gib(self) -> float:
        return self.relay_cpu_s / (self.producer.payload_bytes / GIB)


class MemorySampler:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.peak_kib = 0

    def __call__(self) -> None:
        self.peak_kib = max(self.peak_kib, self.relay.rss_kib())


def run_many(config: ManyConfig, workdir: Path) -> tuple[Section, list[ManyResult]]:
    results: list[ManyResult] = []
    problems: list[str] = []
    packets = max(1, config.total_bytes // (config.sessions * config.streams * config.packet_size))
    base = Path(tempfile.mkdtemp(prefix="pyrelayd-bench-", dir=config.output_base))
    try:
        for kind in RELAY_KINDS:
            relay = start_relay(kind, base / kind, workdir / f"many-{kind}")
            try:
                plan = ProducerPlan(relay.control_port, relay.data_port, "many",
                                    config.sessions, config.streams, config.packet_size, packets)
                producer = ChildProcess(run_producer, plan, name=f"producer {kind}")
                sampler = MemorySampler(relay)
                try:
                    start = time.monotonic()
                    producer.expect("ready", 600)
                    setup = time.monotonic() - start
                    rss_open = relay.rss_kib()
                    before = relay.cpu_seconds()
                    producer.send("go")
                    result: ProducerResult = producer.expect("done", tick=sampler)
                    cpu = relay.cpu_seconds() - before
                    sampler()
                    hwm = relay.hwm_kib()
                    producer.send("close")
                    producer.expect("closed", 600)
                finally:
                    producer.stop()
                relay.check_running()
                check = verify_output(relay.output_dir, plan)
                problems += [f"{relay.name}: {problem}" for problem in check.problems]
                results.append(ManyResult(kind, result, cpu, setup, rss_open, sampler.peak_kib,
                                          hwm, check.ok))
                print(f"  many {relay.name:12}: {result.mb_per_s:8.1f} MB/s, "
                      f"{results[-1].cpu_s_per_gib:6.2f} CPU s/GiB, RSS open "
                      f"{rss_open / 1024:.0f} MiB, peak {sampler.peak_kib / 1024:.0f} MiB, "
                      f"HWM {hwm / 1024:.0f} MiB, setup {setup:.1f} s"
                      f"{'' if check.ok else ', VERIFICATION FAILED'}", flush=True)
            finally:
                relay.stop()
                shutil.rmtree(base / kind, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return _section(config, packets, results, problems), results


def _section(config: ManyConfig, packets: int, results: list[ManyResult],
             problems: list[str]) -> Section:
    table = Table(["relay", "MB/s", "relay CPU s/GiB", "RSS open MiB", "RSS peak MiB",
                   "VmHWM MiB", "setup s", "producer CPU %", "verified"])
    for r in results:
        table.add(RELAY_NAMES[r.relay], number(r.producer.mb_per_s), number(r.cpu_s_per_gib, 2),
                  number(r.rss_open_kib / 1024), number(r.rss_peak_kib / 1024),
                  number(r.hwm_kib / 1024), number(r.setup_s, 2),
                  number(100 * r.producer.cpu_s / r.producer.wall_s, 0),
                  "yes" if r.verified else "**no**")
    ratios = Table(["MB/s py/C", "CPU s/GiB py/C", "RSS peak py/C", "VmHWM py/C",
                    "setup py/C"])
    pair = {r.relay: r for r in results}
    if "c" in pair and "py" in pair:
        c, py = pair["c"], pair["py"]
        ratios.add(ratio(py.producer.mb_per_s, c.producer.mb_per_s),
                   ratio(py.cpu_s_per_gib, c.cpu_s_per_gib),
                   ratio(py.rss_peak_kib, c.rss_peak_kib), ratio(py.hwm_kib, c.hwm_kib),
                   ratio(py.setup_s, c.setup_s))
    total = config.sessions * config.streams * packets * config.packet_size
    description = (
        f"{config.sessions} sessions x {config.streams} data streams (plus a metadata stream "
        f"each), {config.sessions * 2} connections, streaming at once: {packets} packets of "
        f"{size_label(config.packet_size)} per stream, {size_label(total)} in all, output on "
        "tmpfs. One producer process sends round-robin over every stream of every session. "
        "`setup s`: opening every session (VERSION, CREATE_SESSION, CREATE_TRACE_CHUNK, "
        "ADD_STREAM x (N+1), STREAMS_SENT, metadata), one request at a time. RSS open: "
        "VmRSS once all sessions are open; RSS peak: largest VmRSS sampled every 50 ms while "
        "streaming; VmHWM: the kernel's high-water mark at the end."
    )
    section = Section("3. Many producers", description, [table, ratios])
    section.notes += problems
    return section
