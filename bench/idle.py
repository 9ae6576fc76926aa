"""Benchmark 5: many sessions connected and idle.

The producer opens every session (metadata + N data streams each) and sends one packet and
its index on every data stream, so that every data and index file exists and every data
connection is bound to its session; then nothing more. Measured once the relay has everything
(DATA_PENDING) and after a short settling pause: relay VmRSS and VmHWM, open file descriptors
(/proc/PID/fd), and relay CPU over an idle interval. Run again with `--fd-pool-size` below the
number of streams, which lttng-relayd honours by closing and reopening stream files, and once
with fewer, larger sessions (4000 data streams by default) under an open-file limit of 1024.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from bench.children import ChildError, ChildProcess
from bench.relays import DEFAULT_NOFILE, RELAY_KINDS, RELAY_NAMES, RelayKind, start_relay
from bench.report import Section, Table, number, ratio
from bench.synthetic import ProducerPlan, run_producer, verify_output

SETTLE_S = 1.0


@dataclasses.dataclass(frozen=True)
class IdleConfig:
    sessions: int
    streams: int = 4
    idle_s: float = 5.0
    packet_size: int = 4096
    output_base: Path = Path("/dev/shm")
    # The run under an open-file limit: sessions x streams, and the limit (RLIMIT_NOFILE).
    limited_sessions: int = 100
    limited_streams: int = 40
    nofile_limit: int = 1024

    @property
    def fd_pool_sizes(self) -> tuple[int, ...]:
        """Pools below what the sessions need, above lttng's minimum of 100: one descriptor
        fewer than the data streams, and 3 per session (which lttng-relayd 2.13 cannot
        serve: it runs out of descriptors for the sockets)."""
        sizes = (self.sessions * self.streams - 1, 3 * self.sessions)
        return tuple(dict.fromkeys(max(100, size) for size in sizes))


@dataclasses.dataclass(frozen=True)
class IdleResult:
    relay: RelayKind
    fd_pool_size: int | None
    setup_s: float
    rss_kib: int
    hwm_kib: int
    open_fds: int
    idle_cpu_s: float
    idle_s: float
    verified: bool
    failure: str = ""
    nofile: int | None = None  # the relay's open-file limit, when the run sets one
    sessions: int = 0
    streams: int = 0

    @property
    def label(self) -> str:
        if self.nofile:
            return (f"none, open-file limit {self.nofile} ({self.sessions} x {self.streams} "
                    "streams)")
        return str(self.fd_pool_size) if self.fd_pool_size else "default"

    @property
    def idle_cpu_percent(self) -> float:
        return 100 * self.idle_cpu_s / self.idle_s if self.idle_s else float("nan")


def _idle_once(kind: RelayKind, config: IdleConfig, pool: int | None, base: Path,
               workdir: Path, *, nofile: int | None = None) -> IdleResult:
    extra = [f"--fd-pool-size={pool}"] if pool else []
    sessions, streams = ((config.limited_sessions, config.limited_streams) if nofile
                         else (config.sessions, config.streams))
    label = f"{kind}-{pool or 'default'}-{nofile or 'nolimit'}"
    relay = start_relay(kind, base / label, workdir / f"idle-{label}", extra_args=extra,
                        nofile=nofile or DEFAULT_NOFILE)
    try:
        plan = ProducerPlan(relay.control_port, relay.data_port, "idle", sessions,
                            streams, config.packet_size, 1)
        producer = ChildProcess(run_producer, plan, name=f"producer {kind}")
        try:
            start = time.monotonic()
            try:
                producer.expect("ready", 900)
                producer.send("go")
                producer.expect("done", 900)
            except ChildError as error:
                relay_state = "running" if relay.is_running() else \
                    f"exited with status {relay.process.returncode}"
                return IdleResult(kind, pool, time.monotonic() - start, relay.rss_kib()
                                  if relay.is_running() else 0, 0, 0, 0.0, 0.0, False,
                                  f"{error} (relay {relay_state})", nofile, sessions, streams)
            setup = time.monotonic() - start
            time.sleep(SETTLE_S)
            before, idle_start = relay.cpu_seconds(), time.monotonic()
            time.sleep(config.idle_s)
            cpu, idle = relay.cpu_seconds() - before, time.monotonic() - idle_start
            result = IdleResult(kind, pool, setup, relay.rss_kib(), relay.hwm_kib(),
                                relay.open_fds(), cpu, idle,
                                verify_output(relay.output_dir, plan).ok, "", nofile,
                                sessions, streams)
            producer.send("close")
            producer.expect("closed", 900)
            return result
        finally:
            producer.stop()
    finally:
        relay.stop(60)
        shutil.rmtree(base / label, ignore_errors=True)


def run_idle(config: IdleConfig, workdir: Path,
             pools: tuple[int | None, ...] | None = None) -> tuple[Section, list[IdleResult]]:
    runs: list[tuple[int | None, int | None]] = [
        (pool, None) for pool in (pools or (None, *config.fd_pool_sizes))]
    runs.append((None, config.nofile_limit))
    results: list[IdleResult] = []
    base = Path(tempfile.mkdtemp(prefix="pyrelayd-bench-", dir=config.output_base))
    try:
        for pool, nofile in runs:
            for kind in RELAY_KINDS:
                result = _idle_once(kind, config, pool, base, workdir, nofile=nofile)
                results.append(result)
                if result.failure:
                    print(f"  idle {RELAY_NAMES[kind]:12} pool {result.label:>7}: "
                          f"FAILED after {result.setup_s:.1f} s: {result.failure}", flush=True)
                    continue
                print(f"  idle {RELAY_NAMES[kind]:12} pool {result.label:>7}: "
                      f"RSS {result.rss_kib / 1024:.0f} MiB, HWM {result.hwm_kib / 1024:.0f} "
                      f"MiB, {result.open_fds} fds, idle CPU {result.idle_cpu_percent:.2f} %, "
                      f"setup {result.setup_s:.1f} s", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return _section(config, results), results


def _section(config: IdleConfig, results: list[IdleResult]) -> Section:
    table = Table(["--fd-pool-size", "relay", "setup s", "VmRSS MiB", "VmHWM MiB", "open fds",
                   "idle CPU %", "verified"])
    ratios = Table(["--fd-pool-size", "setup py/C", "VmRSS py/C", "VmHWM py/C",
                    "open fds py/C", "idle CPU py/C"])
    by_key = {(r.label, r.relay): r for r in results}
    for label in dict.fromkeys(r.label for r in results):
        for kind in RELAY_KINDS:
            r = by_key.get((label, kind))
            if r is None:
                continue
            if r.failure:
                table.add(label, RELAY_NAMES[kind], number(r.setup_s, 2), "-", "-", "-", "-",
                          f"**failed**: {r.failure}")
                continue
            table.add(label, RELAY_NAMES[kind], number(r.setup_s, 2), number(r.rss_kib / 1024),
                      number(r.hwm_kib / 1024), r.open_fds, number(r.idle_cpu_percent, 2),
                      "yes" if r.verified else "**no**")
        c, py = by_key.get((label, "c")), by_key.get((label, "py"))
        if c and py and not c.failure and not py.failure:
            ratios.add(label, ratio(py.setup_s, c.setup_s), ratio(py.rss_kib, c.rss_kib),
                       ratio(py.hwm_kib, c.hwm_kib), ratio(py.open_fds, c.open_fds),
                       ratio(py.idle_cpu_s, c.idle_cpu_s))
    streams = config.sessions * config.streams
    files = 2 * streams + config.sessions
    description = (
        f"{config.sessions} sessions x {config.streams} data streams ({streams} data streams, "
        f"{config.sessions} metadata streams, {2 * config.sessions} connections), one "
        f"{config.packet_size}-byte packet per data stream, then idle. Memory and descriptors "
        f"are read after a {SETTLE_S:.0f} s pause; idle CPU is the relay's CPU time over "
        f"{config.idle_s:.0f} s of idleness, as a percentage of one CPU. `setup s`: opening "
        "every session and sending the packets, one request at a time. The other rows run "
        "both relays with `--fd-pool-size` below the "
        f"{files + 2 * config.sessions} descriptors the sessions would otherwise hold ({files} "
        f"data, index and metadata files, {2 * config.sessions} sockets). The last row runs "
        f"{config.limited_sessions} sessions x {config.limited_streams} data streams "
        f"({config.limited_sessions * config.limited_streams} data streams, "
        f"{2 * config.limited_sessions} connections) with the relay's open-file limit "
        f"(RLIMIT_NOFILE) at {config.nofile_limit} and no `--fd-pool-size`: both relays then "
        "size their pool from the limit."
    )
    return Section("5. Idle scale", description, [table, ratios])
