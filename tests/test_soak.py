"""Soak: a real pyrelayd fed for minutes by every producer pattern of `bench/producers.py` while
live viewers read, every byte checked (slow: `scripts/test --slow`).

Each round runs at once, against one relay: a live recording (`bench/synthetic.py`'s producer,
live timer on) with a viewer per session reading every packet as it arrives
(`bench/viewers.py`), and each pattern of `bench/producers.py` (pipelined, batch, consumerd,
many short sessions). Then every data file must hold exactly the packets sent, byte for byte,
every index file one record per packet, every viewer must have received every packet, whole
(as many packets and bytes as were sent);
the round's trees are removed and the next round starts, until `PYRELAYD_SOAK_SECONDS`
(default 180) have passed. The relay must still be running, and exit cleanly, without an
error in its log.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from bench.children import ChildProcess
from bench.producers import PATTERNS, run_pattern
from bench.synthetic import HOSTNAME, STREAM_PATH, ProducerPlan, run_producer, verify_output
from bench.viewers import ViewerStats, run_viewers
from pyrelayd_testkit.relays import Relay, start_relay

SOAK_SECONDS = float(os.environ.get("PYRELAYD_SOAK_SECONDS", "180"))
STREAMS = 4
PACKET_SIZE = 16 * 1024
PACKETS_PER_STREAM = 64
LIVE_SESSIONS = 2
SHORT_SESSIONS = 16
LIVE_TIMER_US = 100_000
ROUND_TIMEOUT_S = 120.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(SOAK_SECONDS) + 600)]


def payload(size: int) -> bytes:
    """What every producer of bench/ sends as a packet of `size` bytes."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def wrong_bytes(output_dir: Path, plan: ProducerPlan) -> list[str]:
    """Data files whose bytes are not exactly the packets sent."""
    expected = payload(plan.packet_size)
    problems = []
    for data_file in sorted((output_dir / HOSTNAME).glob(
            f"{plan.name_prefix}-*/{STREAM_PATH}/channel0_*")):
        with data_file.open("rb") as file:
            packets = 0
            while chunk := file.read(plan.packet_size):
                if chunk != expected:
                    problems.append(f"{data_file}: packet {packets} differs")
                    break
                packets += 1
    return problems


def pattern_plan(relay: Relay, pattern: str, prefix: str, host: int) -> ProducerPlan:
    """Each pattern streams from a traced host of its own (with --workers: spread over them)."""
    sessions, per_stream = (SHORT_SESSIONS, 4) if pattern == "sessions" else (1, PACKETS_PER_STREAM)
    return ProducerPlan(relay.control_port, relay.data_port, prefix, sessions, STREAMS,
                        PACKET_SIZE, per_stream, host=host)


def soak_round(relay: Relay, number: int) -> list[str]:
    """One round; returns what went wrong."""
    live_plan = ProducerPlan(relay.control_port, relay.data_port, f"live{number}", LIVE_SESSIONS,
                             STREAMS, PACKET_SIZE, PACKETS_PER_STREAM, LIVE_TIMER_US, host=0)
    plans = {pattern: pattern_plan(relay, pattern, f"{pattern}{number}", host)
             for host, pattern in enumerate(PATTERNS, start=1)}
    live = ChildProcess(run_producer, live_plan, name="live producer")
    producers = {pattern: ChildProcess(run_pattern, pattern, plan, name=f"{pattern} producer")
                 for pattern, plan in plans.items()}
    viewers: ChildProcess | None = None
    try:
        session_ids: list[int] = live.expect("ready", ROUND_TIMEOUT_S)
        viewers = ChildProcess(run_viewers, relay.live_port, session_ids, PACKETS_PER_STREAM,
                               ROUND_TIMEOUT_S, name="viewers")
        viewers.expect("ready", ROUND_TIMEOUT_S)
        for producer in producers.values():
            producer.expect("ready", ROUND_TIMEOUT_S)
        viewers.send("go")
        for producer in [live, *producers.values()]:
            producer.send("go")
        for producer in [live, *producers.values()]:
            producer.expect("done", ROUND_TIMEOUT_S)
        stats: list[ViewerStats] = viewers.expect("done", ROUND_TIMEOUT_S + 60)
        for producer in [live, *producers.values()]:
            producer.send("close")
            producer.expect("closed", ROUND_TIMEOUT_S)
    finally:
        for child in [live, *producers.values(), *([viewers] if viewers else [])]:
            child.stop()

    problems = []
    per_session = STREAMS * PACKETS_PER_STREAM
    for stat in stats:
        if (stat.attach_status != "OK" or stat.errors or stat.timed_out
                or stat.packets != per_session or stat.bytes != per_session * PACKET_SIZE):
            problems.append(f"round {number}: viewer {stat.attach_status}, {stat.packets} "
                            f"packets, {stat.bytes} bytes, {stat.errors} errors, "
                            f"timed out: {stat.timed_out}")
    for plan in [live_plan, *plans.values()]:
        problems += [f"round {number}: {p}" for p in verify_output(relay.output_dir, plan).problems]
        problems += wrong_bytes(relay.output_dir, plan)
    return problems


@pytest.mark.parametrize("workers", [1, 2])
def test_every_pattern_with_live_viewers_for_minutes(tmp_path: Path, workers: int) -> None:
    """`workers`: one process, or a router and two workers (viewers through the router)."""
    relay = start_relay("py", tmp_path / "relay", ["--workers", str(workers)])
    try:
        relay.wait_live_port()
        deadline = time.monotonic() + SOAK_SECONDS
        rounds = 0
        while time.monotonic() < deadline:
            problems = soak_round(relay, rounds)
            assert not problems, "\n".join(problems[:20])
            relay.check_running()
            shutil.rmtree(relay.output_dir / HOSTNAME, ignore_errors=True)
            rounds += 1
    finally:
        status = relay.stop(30)
    log = relay.log_text()
    assert status == 0, log
    assert "ERROR" not in log and "Traceback" not in log, log
    assert rounds > 0
