"""/metrics, /status and /healthz of a real pyrelayd process, fed by `RelaydProducer` and
read by `LiveClient`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyrelayd.client.producer import ProducerError, RelaydProducer
from pyrelayd.client.viewer import LiveClient
from pyrelayd.protocol.relayd import DataHeader
from pyrelayd.protocol.viewer import IndexStatus, ListSessions, Seek, encode_request
from tests.integration.lttng_env import start_relay
from tests.unit.metrics_helpers import (
    HOST,
    LIVE_TIMER_US,
    METADATA,
    MetricsRelay,
    exchange,
    http_get,
    open_session,
    parse_metrics,
    parse_replies,
    relay_with_metrics,
    sample,
    send_packets,
    wait_received,
)

pytestmark = pytest.mark.timeout(120)

PACKET_SIZE = 4096


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[MetricsRelay]:
    with relay_with_metrics(tmp_path / "relay") as relay:
        yield relay


async def metrics_of(relay: MetricsRelay) -> dict[Any, float]:
    reply = await http_get(relay.metrics_port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(reply.text)


async def status_of(relay: MetricsRelay) -> dict[str, Any]:
    reply = await http_get(relay.metrics_port, "/status")
    assert (reply.status, reply.headers["content-type"]) == (200, "application/json")
    document: dict[str, Any] = json.loads(reply.body)
    return document


async def read_packets(client: LiveClient, stream_id: int, count: int) -> None:
    read = 0
    while read < count:
        index = await client.get_next_index(stream_id)
        if index.status == IndexStatus.RETRY:
            await asyncio.sleep(0.01)
            continue
        assert index.status == IndexStatus.OK
        packet = await client.get_packet(stream_id, index.offset, index.packet_size // 8)
        assert len(packet.data) == PACKET_SIZE
        read += 1


async def test_a_session_and_a_viewer_in_status_and_metrics(relay: MetricsRelay) -> None:
    fed = await open_session(relay, "metrics-session", "metrics-host")
    sent = 0
    for stream in fed.streams:
        sent += await send_packets(fed, stream, 10, PACKET_SIZE)
    await wait_received(fed)
    client = LiveClient(HOST, relay.live_port)
    await client.connect()
    await client.create_session()
    await client.attach(fed.session_id, Seek.BEGINNING)
    # The viewer reads 4 packets of the first stream and none of the second: 6 + 10 behind.
    await read_packets(client, fed.streams[0].handle, 4)

    status = await status_of(relay)
    [session] = status["sessions"]
    assert session == {
        "id": fed.session_id, "hostname": "metrics-host", "name": "metrics-session",
        "trace_format": "ctf-1.8", "live_timer_us": LIVE_TIMER_US, "snapshot": False,
        "protocol": "2.15", "output_path": session["output_path"], "streams": 3,
        "received_bytes": sent, "received_packets": 20,
        "received_metadata_bytes": len(METADATA), "current_chunk": {"id": 0, "path": ""},
        "viewers": 1, "connection_closed": False,
    }
    assert session["output_path"].startswith("metrics-host/metrics-session-")
    [viewer] = status["viewers"]
    behind = {"packets": 16, "bytes": 16 * PACKET_SIZE, "seconds": pytest.approx(10.0)}
    assert viewer["peer"].startswith(f"{HOST}:")
    assert viewer["protocol"] == "2.15"
    assert viewer["sessions"] == [{"id": fed.session_id, "lag": behind}]
    assert viewer["lag"] == behind
    assert viewer["sent_bytes"] > 4 * PACKET_SIZE
    assert status["ports"]["metrics"] == relay.metrics_port

    metrics = await metrics_of(relay)
    labels = {"hostname": "metrics-host", "session": "metrics-session"}
    assert sample(metrics, "pyrelayd_received_bytes_total", **labels) == sent
    assert sample(metrics, "pyrelayd_received_packets_total", **labels) == 20
    assert sample(metrics, "pyrelayd_received_metadata_bytes_total", **labels) == len(METADATA)
    assert sample(metrics, "pyrelayd_received_bytes_total", hostname="",
                  session="other") == 0
    assert sample(metrics, "pyrelayd_sessions_open") == 1
    assert sample(metrics, "pyrelayd_sessions_created_total") == 1
    assert sample(metrics, "pyrelayd_streams_open") == 3
    for port in ("control", "data", "live"):
        assert sample(metrics, "pyrelayd_connections_open", port=port) == 1
        assert sample(metrics, "pyrelayd_connections_accepted_total", port=port) == 1
    assert sample(metrics, "pyrelayd_viewers_open") == 1
    assert sample(metrics, "pyrelayd_viewer_streams_open") == 3
    assert sample(metrics, "pyrelayd_viewer_sent_bytes_total") == viewer["sent_bytes"]
    assert sample(metrics, "pyrelayd_viewer_max_lag_bytes") == 16 * PACKET_SIZE
    assert sample(metrics, "pyrelayd_viewer_max_lag_seconds") == pytest.approx(10.0)
    for kind in ("protocol_error", "path_refused", "disk_error"):
        assert sample(metrics, "pyrelayd_errors_total", kind=kind) == 0
    assert sample(metrics, "pyrelayd_fd_pool_size") > 100
    assert sample(metrics, "pyrelayd_fd_pool_in_use") >= 3  # 3 sockets, files
    assert sample(metrics, "pyrelayd_fd_pool_evictions_total") == 0
    assert sample(metrics, "pyrelayd_output_filesystem_free_bytes") > 0
    assert sample(metrics, "pyrelayd_output_filesystem_size_bytes") > 0
    assert sample(metrics, "pyrelayd_event_loop_lag_seconds_count") == sample(
        metrics, "pyrelayd_event_loop_lag_seconds_bucket", le="+Inf")
    assert sample(metrics, "pyrelayd_info", version="0.1.0") == 1
    assert sample(metrics, "process_resident_memory_bytes") > 0

    # Once the viewer and the session are gone, their totals stay.
    viewer_sent = viewer["sent_bytes"]
    await client.close()
    for stream in [*fed.streams, fed.metadata]:
        await fed.producer.close_stream(stream)
    await fed.producer.close()
    while (await status_of(relay))["sessions"] or (await status_of(relay))["viewers"]:
        await asyncio.sleep(0.05)
    metrics = await metrics_of(relay)
    assert sample(metrics, "pyrelayd_received_bytes_total", **labels) == sent
    assert sample(metrics, "pyrelayd_sessions_open") == 0
    assert sample(metrics, "pyrelayd_streams_open") == 0
    assert sample(metrics, "pyrelayd_connections_open", port="live") == 0
    assert sample(metrics, "pyrelayd_viewer_sent_bytes_total") == viewer_sent


async def test_refused_inputs_are_counted_by_kind(relay: MetricsRelay) -> None:
    fed = await open_session(relay, "refusals", "metrics-host")
    with pytest.raises(ProducerError):
        await fed.producer.add_stream("channel0_9", "../escape")  # refused, connection kept
    await fed.producer.close()
    intruder = RelaydProducer(HOST, relay.control_port, relay.data_port)
    await intruder.connect()
    await intruder.send_raw_data(DataHeader(999, 0, 16, 0).encode() + bytes(16))
    # A viewer that asks before CONNECT.
    _, closed = await exchange(relay.live_port, encode_request(ListSessions()))
    assert closed
    expected = {"path_refused": 1, "protocol_error": 2, "disk_error": 0}
    while True:
        metrics = await metrics_of(relay)
        counted = {kind: sample(metrics, "pyrelayd_errors_total", kind=kind)
                   for kind in expected}
        if counted["protocol_error"] == 2:
            break
        await asyncio.sleep(0.05)
    await intruder.close()
    assert counted == expected


async def test_only_known_paths_and_methods_are_answered(relay: MetricsRelay) -> None:
    port = relay.metrics_port
    health = await http_get(port, "/healthz")
    assert (health.status, health.text) == (200, "ok\n")
    assert (await http_get(port, "/nothing")).status == 404
    assert (await http_get(port, "/metrics?format=text")).status == 200
    head = await http_get(port, "/metrics", "HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) > 1000
    refused = await http_get(port, "/metrics", "DELETE")
    assert (refused.status, refused.headers["allow"]) == (405, "GET, HEAD")


async def test_one_connection_serves_pipelined_requests_in_order(relay: MetricsRelay) -> None:
    keep = b"GET %s HTTP/1.1\r\nHost: relay\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
    raw, closed = await exchange(relay.metrics_port, keep % b"/healthz" + keep % b"/nothing"
                                 + keep % b"/status" + last)
    replies = parse_replies(raw)
    assert closed
    assert [reply.status for reply in replies] == [200, 404, 200, 200]
    assert [reply.headers["connection"] for reply in replies] == ["keep-alive"] * 3 + ["close"]
    assert json.loads(replies[2].body)["sessions"] == []


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 400),
    (b"GET http://relay/metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nbad header\r\n\r\n", 400),
    (b"GET /m\xe9trics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"x" * 9000, 431),
])
async def test_bad_requests_are_refused_and_closed(relay: MetricsRelay, request_bytes: bytes,
                                                   status: int) -> None:
    raw, closed = await exchange(relay.metrics_port, request_bytes)
    [reply] = parse_replies(raw)
    assert (reply.status, reply.headers["connection"], closed) == (status, "close", True)
    assert (await http_get(relay.metrics_port, "/healthz")).status == 200


def test_metrics_are_off_unless_asked_for(tmp_path: Path) -> None:
    relay = start_relay("py", tmp_path / "relay", ["-v"])
    try:
        relay.wait_live_port()
    finally:
        relay.stop()
    [listening] = [line for line in relay.log_text().splitlines() if "listening: " in line]
    assert "live port" in listening and "metrics" not in listening
