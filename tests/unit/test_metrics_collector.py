"""The counters behind the metrics: what the model counts, the bounded per-session series,
the collector's exposition, the event-loop lag monitor and the HTTP server's limits.

Everything runs in-process on the model of `conftest.py`; the endpoint of a real relay
process is tested in `test_metrics_endpoint.py`.
"""

from __future__ import annotations

import asyncio
import http
import types
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from pyrelayd.config import ListenAddress
from pyrelayd.model.counters import (
    OTHER_SESSION,
    ErrorKind,
    Received,
    SessionLedger,
    error_kind,
)
from pyrelayd.model.relay import Relay, RelayError
from pyrelayd.model.session import RelaySession
from pyrelayd.model.stream import RelayStream
from pyrelayd.protocol.relayd import ProtocolError, SendIndex
from pyrelayd.server.app import RelayDaemon
from pyrelayd.server.health import Component, HealthMonitor
from pyrelayd.server.http import HttpServer, Response
from pyrelayd.server.metrics import (
    HEALTHY_LOOP_LAG_S,
    FilesystemProbe,
    LoopLagMonitor,
    MetricsEndpoint,
    RelayCollector,
)
from pyrelayd.storage.paths import UnsafeNameError
from tests.unit.metrics_helpers import exchange, parse_metrics, parse_replies, sample

STREAM_PATH = "ust/uid/1000/64-bit"


def receive(stream: RelayStream, count: int, size: int) -> None:
    """`count` packets of `size` bytes with their indexes, as the connections deliver them."""
    for _ in range(count):
        seq = stream.prev_data_seq + 1 if stream.received_packets else 0
        stream.begin_packet(size)
        stream.write(bytes(size))
        stream.end_packet(seq, size, 0)
        stream.add_index(SendIndex(stream.handle, seq, size * 8, size * 8, seq * 10,
                                   seq * 10 + 9, 0, 0, 0, seq))


def totals(ledger: SessionLedger) -> dict[tuple[str, str], int]:
    return {key: received.bytes for key, received in ledger.totals()}


# --------------------------------------------------------------------------- model counters


def test_streams_count_packets_and_hand_them_to_their_session_when_closed(
        relay: Relay, session: RelaySession) -> None:
    data = relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)
    metadata = relay.add_stream(session, "metadata", STREAM_PATH, 0, 0)
    receive(data, 3, 100)
    metadata.write(b"x" * 50)
    metadata.end_metadata(50, 14)

    assert session.received() == Received(packets=3, bytes=300, metadata_bytes=50)
    data.request_close(2)
    assert data.closed and session.streams.keys() == {metadata.handle}
    receive(relay.add_stream(session, "channel0_1", STREAM_PATH, 0, 0), 1, 7)
    assert session.received() == Received(packets=4, bytes=307, metadata_bytes=50)


def test_a_stream_knows_the_trace_time_span_of_its_indexed_packets(
        relay: Relay, session: RelaySession) -> None:
    stream = relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)
    receive(stream, 4, 64)
    assert (stream.first_timestamp_begin, stream.timestamp_end) == (0, 39)


@pytest.mark.parametrize(("error", "kind"), [
    (ProtocolError("short payload"), ErrorKind.PROTOCOL),
    (UnsafeNameError("'..' in a path"), ErrorKind.PATH_REFUSED),
    (OSError(28, "No space left on device"), ErrorKind.DISK),
    (RelayError("session has no current trace chunk", 3), ErrorKind.PROTOCOL),
])
def test_errors_are_counted_by_kind(error: Exception, kind: ErrorKind) -> None:
    assert error_kind(error) is kind


def test_an_error_caused_by_the_file_system_is_a_disk_error() -> None:
    try:
        try:
            raise OSError(30, "Read-only file system")
        except OSError as cause:
            raise RelayError("cannot create stream files", 4) from cause
    except RelayError as error:
        assert error_kind(error) is ErrorKind.DISK


# --------------------------------------------------------------------------- session ledger


def test_the_newest_sessions_have_series_and_older_ones_add_up_under_other(
        relay: Relay, make_session: Callable[..., RelaySession]) -> None:
    relay.ledger = SessionLedger(keep=2)
    first = make_session(name="first")
    receive(relay.add_stream(first, "channel0_0", STREAM_PATH, 0, 0), 1, 10)
    second = make_session(name="second")
    third = make_session(name="third")
    assert totals(relay.ledger) == {("myhost", "second"): 0, ("myhost", "third"): 0,
                                    OTHER_SESSION: 10}

    # The folded session still receives, and still counts (under "other").
    receive(next(iter(first.streams.values())), 1, 5)
    assert totals(relay.ledger)[OTHER_SESSION] == 15
    for session in (first, second, third):
        session.close()
        session.put()
    assert totals(relay.ledger) == {("myhost", "second"): 0, ("myhost", "third"): 0,
                                    OTHER_SESSION: 15}
    assert relay.ledger.created == 3


def test_sessions_of_one_name_add_up_and_outlive_their_release(
        relay: Relay, make_session: Callable[..., RelaySession]) -> None:
    kernel, user_space = make_session(name="both"), make_session(name="both")
    receive(relay.add_stream(kernel, "channel0_0", "kernel", 0, 0), 2, 10)
    receive(relay.add_stream(user_space, "channel0_0", STREAM_PATH, 0, 0), 3, 10)
    kernel.close()
    kernel.put()
    assert not kernel.streams and kernel.released
    assert totals(relay.ledger)[("myhost", "both")] == 50
    user_space.close()
    user_space.put()
    assert totals(relay.ledger) == {("myhost", "both"): 50, OTHER_SESSION: 0}


# --------------------------------------------------------------------------- collector


def daemon_of(relay: Relay) -> RelayDaemon:
    """What the endpoint reads of a daemon: the relay, its connections, its health."""
    return cast(RelayDaemon, types.SimpleNamespace(
        relay=relay, connections=set(), live=None, servers=[], ports={},
        health=HealthMonitor(20.0)))


class FakeLoop:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


def lag_monitor() -> LoopLagMonitor:
    return LoopLagMonitor(cast(asyncio.AbstractEventLoop, FakeLoop()))


async def test_the_collector_reads_the_model_at_scrape_time(
        relay: Relay, session: RelaySession, output_root: Path) -> None:
    registry = CollectorRegistry(auto_describe=False)
    probe = FilesystemProbe(output_root)
    registry.register(RelayCollector(daemon_of(relay), lag_monitor(), probe))
    stream = relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)
    receive(stream, 2, 4096)
    relay.counters.count(ErrorKind.DISK)

    metrics = parse_metrics(generate_latest(registry).decode())
    labels = {"hostname": "myhost", "session": "mysess"}
    assert sample(metrics, "pyrelayd_received_bytes_total", **labels) == 8192
    assert sample(metrics, "pyrelayd_received_packets_total", **labels) == 2
    assert sample(metrics, "pyrelayd_streams_open") == 1
    assert sample(metrics, "pyrelayd_errors_total", kind="disk_error") == 1
    assert sample(metrics, "pyrelayd_fd_pool_in_use") == relay.fd_pool.open_count
    assert ("pyrelayd_fd_pool_size", frozenset()) not in metrics  # no limit: no size
    assert ("pyrelayd_output_filesystem_free_bytes", frozenset()) not in metrics

    receive(stream, 1, 4096)  # counted from the model as it is at the next scrape
    await probe.refresh()
    metrics = parse_metrics(generate_latest(registry).decode())
    assert sample(metrics, "pyrelayd_received_bytes_total", **labels) == 3 * 4096
    assert sample(metrics, "pyrelayd_output_filesystem_free_bytes") > 0


def test_the_loop_lag_histogram_is_cumulative() -> None:
    monitor = lag_monitor()
    for lag in (0.0, 0.0004, 0.003, 0.003, 20.0):
        monitor.record(lag)
    buckets = dict(monitor.cumulative_buckets())
    assert (buckets["0.0005"], buckets["0.005"], buckets["10.0"], buckets["+Inf"]) == (2, 4, 4, 5)
    assert monitor.total_s == pytest.approx(20.0064)


def test_healthz_fails_on_a_late_tick_and_on_a_tick_that_does_not_come() -> None:
    monitor = lag_monitor()
    loop = cast(FakeLoop, monitor.loop)
    assert monitor.problem() is None
    monitor.record(HEALTHY_LOOP_LAG_S * 2)
    assert monitor.problem() == "event loop lag 2.000 s"
    monitor.record(0.001)
    loop.now += monitor.interval_s + HEALTHY_LOOP_LAG_S + 0.5
    assert monitor.problem() == "event loop stalled for 1.750 s"


async def test_healthz_says_what_is_unhealthy(relay: Relay) -> None:
    daemon = daemon_of(relay)
    endpoint = MetricsEndpoint(daemon)
    assert await endpoint.healthz() == Response(http.HTTPStatus.OK, b"ok\n")
    endpoint.loop_lag.record(3.5)
    daemon.health.fail(Component.LIVE_LISTENER)
    assert await endpoint.healthz() == Response(
        http.HTTPStatus.SERVICE_UNAVAILABLE,
        b"event loop lag 3.500 s\nRelay daemon live listener: unhealthy\n")


# --------------------------------------------------------------------------- HTTP server


async def test_connections_idle_or_stuck_in_a_request_are_closed() -> None:
    async def ok() -> Response:
        return Response(http.HTTPStatus.OK, b"ok\n")

    server = HttpServer("test", {"/": ok}, idle_timeout_s=0.2)
    port = await server.start(ListenAddress("127.0.0.1", 0))
    try:
        raw, closed = await exchange(port, b"GET / HTTP/1.1\r\nHost: x")  # never finished
        assert (raw, closed) == (b"", True)
        raw, closed = await exchange(port, b"GET / HTTP/1.1\r\n\r\n")  # kept alive, then idle
        assert closed and [reply.status for reply in parse_replies(raw)] == [200]
    finally:
        server.close()


async def test_a_client_that_shuts_its_side_down_still_gets_its_replies() -> None:
    async def ok() -> Response:
        await asyncio.sleep(0.01)  # still answering when the end of input comes
        return Response(http.HTTPStatus.OK, b"ok\n")

    server = HttpServer("test", {"/": ok})
    port = await server.start(ListenAddress("127.0.0.1", 0))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n" * 2)
        writer.write_eof()
        replies = parse_replies(await reader.read())  # until the server closes
        writer.close()
    finally:
        server.close()
    assert [reply.status for reply in replies] == [200, 200]


async def test_connections_beyond_the_limit_are_closed_and_a_failing_route_is_500() -> None:
    async def broken() -> Response:
        raise RuntimeError("bug")

    opened: list[int] = []
    server = HttpServer("test", {"/broken": broken}, max_connections=1,
                        on_open=lambda: opened.append(1), on_close=lambda: opened.clear())
    port = await server.start(ListenAddress("127.0.0.1", 0))
    try:
        first = await asyncio.open_connection("127.0.0.1", port)
        raw, closed = await exchange(port, b"GET /broken HTTP/1.1\r\n\r\n")
        assert (raw, closed) == (b"", True)
        assert opened == [1]
        first[1].write(b"GET /broken HTTP/1.0\r\n\r\n")
        [reply] = parse_replies(await first[0].read())
        assert reply.status == 500
        first[1].close()
    finally:
        server.close()
    while opened:
        await asyncio.sleep(0.01)
