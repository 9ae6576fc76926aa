"""Benchmark 4: live viewers reading sessions while the synthetic producer records them.

For N viewers, the producer records N live sessions (4 streams each) and one lean viewer
(`bench/viewers.py`) attaches to each from the beginning before the first packet, then reads
every packet: the C relay admits one viewer per session, so N sessions with a viewer each is
the comparable setup. pyrelayd, which admits any number of viewers per
session, also runs N viewers on a single session (extra rows).

Measured: ingest MB/s with the viewers and without them (same sessions, same data), MB/s
delivered to the viewers (packet bytes read, from the first packet sent until the last viewer
has read everything), GET_NEXT_INDEX and GET_PACKET latency percentiles (every request of
every viewer, RETRY answers included for GET_NEXT_INDEX), and relay CPU. The producer
closes its streams only once the viewers have read everything (the C relay hangs up the
viewer streams of closed streams even when the viewer has not read them to the end).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from bench.children import ChildProcess
from bench.relays import RELAY_KINDS, RELAY_NAMES, Relay, RelayKind, start_relay
from bench.report import MIB, Section, Table, median_by, number, ratio, size_label, spread
from bench.synthetic import ProducerPlan, ProducerResult, run_producer
from bench.viewers import ViewerStats, run_viewers

LIVE_TIMER_US = 1_000_000


@dataclasses.dataclass(frozen=True)
class LiveConfig:
    total_bytes: int
    viewer_counts: tuple[int, ...] = (1, 10, 50)
    streams: int = 4
    packet_size: int = 64 * 1024
    viewer_timeout_s: float = 300.0
    repeat: int = 1  # recordings per figure; the median one is reported
    settle_s: float = 0.5  # pause after each recording: the relay finishes closing sessions
    output_base: Path = Path("/dev/shm")


@dataclasses.dataclass(frozen=True)
class LiveResult:
    relay: RelayKind
    viewers: int
    sessions: int
    ingest_alone: ProducerResult
    ingest: ProducerResult
    relay_cpu_s: float
    delivered_bytes: int
    delivery_s: float
    index_latencies: list[float]
    packet_latencies: list[float]
    attach_statuses: list[str]
    errors: int
    timed_out: int
    alone_runs_mb_per_s: tuple[float, ...] = ()
    viewed_runs_mb_per_s: tuple[float, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.viewers} on {self.sessions} session{'s' if self.sessions > 1 else ''}"

    @property
    def delivered_mb_per_s(self) -> float:
        return self.delivered_bytes / 1e6 / self.delivery_s if self.delivery_s else 0.0

    @property
    def ingest_slowdown_percent(self) -> float:
        return 100 * (1 - self.ingest.mb_per_s / self.ingest_alone.mb_per_s)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _record(relay: Relay, plan: ProducerPlan, viewers_per_session: int,
            timeout_s: float) -> tuple[ProducerResult, list[ViewerStats], float, float]:
    """One recording with `viewers_per_session` viewers on each session (0: none)."""
    producer = ChildProcess(run_producer, plan, name=f"producer {relay.kind}")
    viewers: ChildProcess | None = None
    try:
        session_ids: list[int] = producer.expect("ready", 300)
        if viewers_per_session:
            ids = [sid for sid in session_ids for _ in range(viewers_per_session)]
            viewers = ChildProcess(run_viewers, relay.live_port, ids, plan.packets_per_stream,
                                   timeout_s, name=f"viewers {relay.kind}")
            viewers.expect("ready", 300)
            viewers.send("go")
        before = relay.cpu_seconds()
        start = time.monotonic()
        producer.send("go")
        result: ProducerResult = producer.expect("done")
        stats: list[ViewerStats] = []
        if viewers is not None:
            stats = viewers.expect("done", timeout_s + 60)
        cpu = relay.cpu_seconds() - before
        producer.send("close")
        producer.expect("closed")
        end = max([s.finished_at for s in stats], default=start + result.wall_s)
        return result, stats, cpu, end - start
    finally:
        producer.stop()
        if viewers is not None:
            viewers.stop()


def _measure(relay: Relay, config: LiveConfig, viewers: int, sessions: int,
             tag: str) -> LiveResult:
    packets = max(1, config.total_bytes // (sessions * config.streams * config.packet_size))

    def plan(prefix: str) -> ProducerPlan:
        return ProducerPlan(relay.control_port, relay.data_port, prefix, sessions,
                            config.streams, config.packet_size, packets, LIVE_TIMER_US)

    alone_runs: list[ProducerResult] = []
    viewed_runs = []
    for attempt in range(config.repeat):
        # Alternate which goes first, so that neither always follows the other's teardown.
        for viewed in (False, True) if attempt % 2 == 0 else (True, False):
            if viewed:
                viewed_runs.append(_record(relay, plan(f"live-{tag}-{attempt}"),
                                           viewers // sessions, config.viewer_timeout_s))
            else:
                alone_runs.append(_record(relay, plan(f"live-{tag}-{attempt}-alone"), 0,
                                          config.viewer_timeout_s)[0])
            relay.check_running()
            shutil.rmtree(relay.output_dir, ignore_errors=True)
            relay.output_dir.mkdir()
            time.sleep(config.settle_s)
    alone = median_by(alone_runs, lambda run: run.mb_per_s)
    ingest, stats, cpu, delivery = median_by(
        viewed_runs, lambda run: sum(s.bytes for s in run[1]) / run[3])
    return LiveResult(
        relay.kind, viewers, sessions, alone, ingest, cpu,
        sum(s.bytes for s in stats), delivery,
        [x for s in stats for x in s.index_latencies],
        [x for s in stats for x in s.packet_latencies],
        [s.attach_status for s in stats], sum(s.errors for s in stats),
        sum(s.timed_out for s in stats), tuple(run.mb_per_s for run in alone_runs),
        tuple(run[0].mb_per_s for run in viewed_runs),
    )


def run_live(config: LiveConfig, workdir: Path) -> tuple[Section, list[LiveResult]]:
    results: list[LiveResult] = []
    base = Path(tempfile.mkdtemp(prefix="pyrelayd-bench-", dir=config.output_base))
    try:
        for kind in RELAY_KINDS:
            relay = start_relay(kind, base / kind, workdir / f"live-{kind}")
            try:
                setups = [(n, n) for n in config.viewer_counts]
                if kind == "py":
                    setups += [(n, 1) for n in config.viewer_counts if n > 1]
                for viewers, sessions in setups:
                    result = _measure(relay, config, viewers, sessions, f"{viewers}-{sessions}")
                    results.append(result)
                    print(f"  live {relay.name:12} {result.label:>16}: ingest "
                          f"{result.ingest.mb_per_s:7.1f} MB/s (alone "
                          f"{result.ingest_alone.mb_per_s:7.1f}), delivered "
                          f"{result.delivered_mb_per_s:7.1f} MB/s, index p50/p99 "
                          f"{1e3 * percentile(result.index_latencies, 0.5):.2f}/"
                          f"{1e3 * percentile(result.index_latencies, 0.99):.2f} ms, packet "
                          f"p50/p99 {1e3 * percentile(result.packet_latencies, 0.5):.2f}/"
                          f"{1e3 * percentile(result.packet_latencies, 0.99):.2f} ms",
                          flush=True)
            finally:
                relay.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return _section(config, results), results


def _ms(values: list[float], fraction: float) -> str:
    return number(1e3 * percentile(values, fraction), 2)


def _section(config: LiveConfig, results: list[LiveResult]) -> Section:
    table = Table(["viewers", "relay", "ingest MB/s alone (runs)",
                   "ingest MB/s viewed (runs)", "ingest slowdown %", "delivered MB/s",
                   "GET_NEXT_INDEX p50/p99 ms", "GET_PACKET p50/p99 ms", "MiB read",
                   "relay CPU s", "relay CPU %"])
    for r in results:
        table.add(r.label, RELAY_NAMES[r.relay],
                  f"{number(r.ingest_alone.mb_per_s)} ({spread(r.alone_runs_mb_per_s)})",
                  f"{number(r.ingest.mb_per_s)} ({spread(r.viewed_runs_mb_per_s)})",
                  number(r.ingest_slowdown_percent, 0),
                  number(r.delivered_mb_per_s),
                  f"{_ms(r.index_latencies, 0.5)} / {_ms(r.index_latencies, 0.99)}",
                  f"{_ms(r.packet_latencies, 0.5)} / {_ms(r.packet_latencies, 0.99)}",
                  number(r.delivered_bytes / MIB), number(r.relay_cpu_s, 2),
                  number(100 * r.relay_cpu_s / r.delivery_s if r.delivery_s else 0.0, 0))
    ratios = Table(["viewers", "ingest viewed py/C", "delivered py/C", "GET_NEXT_INDEX p50 py/C",
                    "GET_NEXT_INDEX p99 py/C", "GET_PACKET p50 py/C", "GET_PACKET p99 py/C"])
    by_key = {(r.relay, r.viewers, r.sessions): r for r in results}
    for n in config.viewer_counts:
        c, py = by_key.get(("c", n, n)), by_key.get(("py", n, n))
        if c is None or py is None:
            continue
        ratios.add(c.label, ratio(py.ingest.mb_per_s, c.ingest.mb_per_s),
                   ratio(py.delivered_mb_per_s, c.delivered_mb_per_s),
                   *(ratio(percentile(getattr(py, kind), q), percentile(getattr(c, kind), q))
                     for kind in ("index_latencies", "packet_latencies") for q in (0.5, 0.99)))
    description = (
        f"Live sessions (live timer {LIVE_TIMER_US // 1000} ms) of {config.streams} streams, "
        f"{size_label(config.total_bytes)} of {size_label(config.packet_size)} packets in all "
        "per run, spread over the sessions, output on tmpfs. `N on N sessions`: N sessions with "
        "one lean viewer each (`bench/viewers.py`, attached from the beginning before the "
        "first packet, reading every packet whole); the C relay admits a single viewer per "
        "session (others get ATTACH ALREADY), so this is the comparable setup. `N on 1 "
        "session` (pyrelayd only): N viewers on one session. `alone`: the same recording "
        "without viewers. Delivered MB/s: packet bytes read by all viewers, from the first "
        "packet sent until the last viewer has read every packet. Latency: request written "
        "to reply read, by the viewers, which share the load CPU with the producer. Relay "
        "CPU: over the viewed recording (%: of the one CPU it runs on). Each figure comes "
        f"from the median of {config.repeat} recordings (alone: by ingest MB/s; viewed: by "
        "delivered MB/s)."
    )
    section = Section("4. Live serving", description, [table, ratios])
    for r in results:
        bad = [s for s in r.attach_statuses if s != "OK"]
        if bad or r.errors or r.timed_out:
            section.notes.append(f"{RELAY_NAMES[r.relay]} {r.label}: attach {sorted(set(bad))}"
                                 f" {r.errors} errors, {r.timed_out} viewers timed out")
        expected = r.ingest.payload_bytes * (r.viewers // r.sessions)
        if r.delivered_bytes != expected:
            section.notes.append(f"{RELAY_NAMES[r.relay]} {r.label}: viewers read "
                                 f"{r.delivered_bytes} bytes, {expected} recorded")
    return section
