"""`--workers`: the host table, the viewer router, ids across workers, and a real relay of
a router and two worker processes fed by producers from two host addresses."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyrelayd.client.producer import RelaydProducer
from pyrelayd.client.viewer import LiveClient, Packet
from pyrelayd.config import GroupOutputBy
from pyrelayd.model.relay import Relay, RelaySettings, owner_of
from pyrelayd.protocol import viewer as wire
from pyrelayd.protocol.liveroute import LiveRouter
from pyrelayd.server.workers import HostTable
from pyrelayd_testkit.processes import child_pids, status_kib, wait_until
from tests.unit.lttng_health import LIBLTTNG_CTL, query_relay_health
from tests.unit.relayd_process import Relay as RelayProcess
from tests.unit.relayd_process import start_relay

# --- Which worker serves a host --------------------------------------------------------------


def test_a_host_keeps_its_worker_and_new_hosts_go_to_the_least_loaded() -> None:
    table = HostTable(3)
    assert [table.worker_for(f"10.0.0.{n}") for n in range(6)] == [0, 1, 2, 0, 1, 2]
    assert table.worker_for("10.0.0.4") == 1, "the same host, the same worker"
    assert table.load == [2, 2, 2]


def test_the_table_forgets_the_least_recently_seen_host_beyond_its_capacity() -> None:
    table = HostTable(2, capacity=2)
    table.worker_for("a")
    table.worker_for("b")
    table.worker_for("a")  # seen again: "b" is now the oldest
    assert table.worker_for("c") == 1  # b's worker was freed for c
    assert list(table.hosts) == ["a", "c"]
    assert table.load == [1, 1]


# --- Ids unique across workers -----------------------------------------------------------------


def test_each_worker_gives_ids_of_its_own(tmp_path: Path) -> None:
    relays = [Relay(RelaySettings(tmp_path, GroupOutputBy.HOST, id_shard=(index, 3)))
              for index in range(3)]
    ids = {index: [relay.next_stream_handle() for _ in range(4)]
           for index, relay in enumerate(relays)}
    assert ids == {0: [1, 4, 7, 10], 1: [2, 5, 8, 11], 2: [3, 6, 9, 12]}
    assert all(owner_of(i, 3) == index for index, found in ids.items() for i in found)
    assert relays[1].next_session_id() == 2 and relays[1].next_viewer_id() == 2
    single = Relay(RelaySettings(tmp_path))
    assert [single.next_trace_id() for _ in range(3)] == [1, 2, 3]
    with pytest.raises(ValueError):
        Relay(RelaySettings(tmp_path, id_shard=(3, 3)))


# --- The viewer router (sans I/O) ------------------------------------------------------------


def session_entry(session_id: int, name: str, minor: int) -> bytes:
    return wire.SessionInfo(session_id, 100_000, 0, 1, "host", name).encode(minor)


def test_requests_go_to_the_owner_of_their_id_or_to_everyone() -> None:
    router = LiveRouter(3)
    assert router.route(wire.Connect()).workers == (0, 1, 2)
    assert router.route(wire.ListSessions()).workers == (0, 1, 2)
    assert router.route(wire.CreateSession()).workers == (0, 1, 2)
    assert router.route(wire.AttachSession(5)).workers == (1,)
    assert router.route(wire.GetNewStreams(6)).workers == (2,)
    assert router.route(wire.DetachSession(7)).workers == (0,)
    assert router.route(wire.GetNextIndex(8)).workers == (1,)
    assert router.route(wire.GetPacket(9, 0, 4096)).workers == (2,)
    assert router.route(wire.GetMetadata(0)).workers == (2,), "id 0: still some worker"
    route = router.route(wire.GetPacket(9, 0, 4096))
    assert route.data == wire.encode_request(wire.GetPacket(9, 0, 4096))


@pytest.mark.parametrize("minor", [4, 13, 15])
def test_the_session_lists_of_the_workers_make_one_list(minor: int) -> None:
    router = LiveRouter(2)
    connect = router.route(wire.Connect(minor=minor))
    reply = wire.Connect(1, 2, 15, 0).encode()
    assert router.combine(connect, [reply, wire.Connect(2, 2, 15, 0).encode()]) == reply
    assert router.minor == min(minor, 15)
    listing = router.route(wire.ListSessions())
    first = struct.pack(">I", 1) + session_entry(1, "a", router.minor)
    second = struct.pack(">I", 2) + session_entry(2, "b", router.minor) \
        + session_entry(4, "c", router.minor)
    for part in (first, second):
        assert router.reply_missing(listing, part) == 0
        assert router.reply_missing(listing, part[:-1]) > 0
    merged = router.combine(listing, [first, second])
    names = [s.session_name for s in wire.SessionList.decode(merged, router.minor).sessions]
    assert names == ["a", "b", "c"]


def test_a_viewer_session_exists_only_if_every_worker_made_one() -> None:
    router = LiveRouter(2)
    route = router.route(wire.CreateSession())
    ok = wire.CreateSessionReply(wire.CreateSessionStatus.OK).encode()
    error = wire.CreateSessionReply(wire.CreateSessionStatus.ERR).encode()
    assert router.combine(route, [ok, ok]) == ok
    assert router.combine(route, [ok, error]) == error


def test_packet_replies_are_framed_by_their_announced_length() -> None:
    router = LiveRouter(2)
    route = router.route(wire.GetPacket(2, 0, 8))
    reply = wire.PacketReply(wire.PacketStatus.OK, b"12345678").encode()
    assert [router.reply_missing(route, reply[:n]) > 0 for n in (0, 5, len(reply) - 1)] == \
        [True, True, True]
    assert router.reply_missing(route, reply) == 0


# --- A real relay of three processes ---------------------------------------------------------

METADATA = b"/* CTF 1.8 */\n" + b"/* synthetic metadata */\n" * 10
PACKET = 4096


def packet(number: int) -> bytes:
    return bytes([number % 251]) * (PACKET - 8) + number.to_bytes(8, "big")


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    relay = start_relay(tmp_path / "relay", "--workers", "2", "-v",
                        env={"PYRELAYD_HEALTH_CHECK_DELTA": "2"})
    yield relay
    relay.stop()


async def stream_session(relay: RelayProcess, source: str, name: str,
                         packets: int) -> RelaydProducer:
    producer = RelaydProducer("127.0.0.1", relay.ports["control"], relay.ports["data"],
                              source=source)
    await producer.connect()
    await producer.create_session(name, f"host-{source}", live_timer=100_000)
    await producer.create_trace_chunk(0)
    metadata = await producer.add_stream("metadata", "ust/uid/0/64-bit")
    data = await producer.add_stream("channel0_0", "ust/uid/0/64-bit")
    await producer.streams_sent()
    await producer.send_metadata(metadata, METADATA)
    for number in range(packets):
        seq = await producer.send_packet(data, packet(number))
        await producer.send_index(data, seq, packet_size_bits=PACKET * 8,
                                  content_size_bits=PACKET * 8, timestamp_begin=number,
                                  timestamp_end=number)
    return producer


async def follow(client: LiveClient, session_id: int, count: int) -> list[bytes]:
    received: list[bytes] = []
    async for event in client.follow(session_id, wire.Seek.BEGINNING, retry_delay=0.02):
        if isinstance(event, Packet):
            received.append(event.data)
            if len(received) == count:
                break
    return received


def test_two_hosts_on_two_workers_seen_as_one_relay(relay: RelayProcess) -> None:
    async def scenario() -> None:
        producers = [await stream_session(relay, source, f"s{n}", 5 + n)
                     for n, source in enumerate(("127.0.0.1", "127.0.0.2"))]
        try:
            async with LiveClient("127.0.0.1", relay.ports["live"], request_timeout=10,
                                  minor=15) as client:
                sessions = {s.session_name: s for s in await client.list_sessions()}
                assert sorted(sessions) == ["s0", "s1"]
                assert {owner_of(s.id, 2) for s in sessions.values()} == {0, 1}
                for n, name in enumerate(("s0", "s1")):
                    got = await asyncio.wait_for(follow(client, sessions[name].id, 5 + n), 10)
                    assert got == [packet(i) for i in range(5 + n)]
        finally:
            for producer in producers:
                await producer.close()

    asyncio.run(scenario())
    assert len(child_pids(relay.pid)) == 2


@pytest.mark.skipif(LIBLTTNG_CTL is None, reason="liblttng-ctl is not installed")
def test_a_dead_worker_is_reported_unhealthy_then_replaced(relay: RelayProcess) -> None:
    assert query_relay_health(relay.health_socket).unhealthy == set()
    [victim, _] = child_pids(relay.pid)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: query_relay_health(relay.health_socket).unhealthy
               == {"Relay daemon worker"}, timeout=10, interval=0.05,
               what="the worker bit set while the worker is replaced")
    wait_until(lambda: len(child_pids(relay.pid)) == 2 and victim not in child_pids(relay.pid)
               and query_relay_health(relay.health_socket).unhealthy == set(), timeout=30,
               interval=0.1, what="a new worker, healthy")
    assert "worker" in relay.log_text() and "exited with status -9" in relay.log_text()


@pytest.mark.skipif(LIBLTTNG_CTL is None, reason="liblttng-ctl is not installed")
def test_a_stuck_worker_is_reported_by_the_routers_health_socket(relay: RelayProcess) -> None:
    [stuck, _] = child_pids(relay.pid)
    os.kill(stuck, signal.SIGSTOP)  # its loop no longer turns
    try:
        wait_until(lambda: query_relay_health(relay.health_socket).unhealthy
                   == {"Relay daemon worker"}, timeout=15, interval=0.1,
                   what="the worker bit set after the health delta")
    finally:
        os.kill(stuck, signal.SIGCONT)
    wait_until(lambda: query_relay_health(relay.health_socket).unhealthy == set(),
               timeout=15, interval=0.1, what="healthy again once it runs")


# --- Hostile viewers through the router ------------------------------------------------------


def test_hostile_viewers_lose_only_their_own_connection(relay: RelayProcess) -> None:
    """Through the router: an unknown command gets UNK then the connection closes; bogus ids
    get the workers' error replies; a viewer that asks for 64 MiB packets and never reads,
    and one that vanishes mid-request, stall nobody; a good viewer follows all along."""
    from tests.integration.live_helpers import RawViewer

    async def scenario() -> None:
        producer = await stream_session(relay, "127.0.0.2", "busy", 8)
        port = relay.ports["live"]
        try:
            with RawViewer(port) as unknown:
                unknown.connect()
                unknown.send(wire.CommandHeader(99).encode())
                assert unknown.read_until_closed() == wire.UNKNOWN_COMMAND_REPLY
            with RawViewer(port) as bogus:
                bogus.connect()
                assert bogus.call(wire.CreateSession(), wire.CreateSessionReply).status \
                    == wire.CreateSessionStatus.OK
                for session_id in (0, 3, 2**64 - 1):
                    reply = bogus.call(wire.AttachSession(session_id), wire.AttachSessionReply)
                    assert reply.status == wire.AttachStatus.UNK
                index = bogus.call(wire.GetNextIndex(12345), wire.IndexReply)
                assert index.status == wire.IndexStatus.ERR
                refused = bogus.call(wire.GetPacket(2**64 - 1, 0, 4096), wire.PacketReply)
                assert refused.status == wire.PacketStatus.ERR
            stuck = RawViewer(port, receive_buffer=4096)
            stuck.connect()
            stuck.call(wire.CreateSession(), wire.CreateSessionReply)
            session_id = next(s.id for s in stuck.call(wire.ListSessions(), wire.SessionList)
                              .sessions if s.session_name == "busy")
            streams = stuck.call(wire.AttachSession(session_id, wire.Seek.BEGINNING),
                                 wire.AttachSessionReply).streams
            data = next(s for s in streams if not s.is_metadata)
            request = wire.encode_request(wire.GetPacket(data.id, 0, 64 * 2**20))
            stuck.send(request * 8)  # 512 MiB asked for, never read
            gone = RawViewer(port)
            gone.connect()
            gone.send(wire.encode_request(wire.ListSessions())[:10])
            gone.reset()
            async with LiveClient("127.0.0.1", port, request_timeout=10) as client:
                got = await asyncio.wait_for(follow(client, session_id, 8), 10)
                assert got == [packet(i) for i in range(8)]
            peak = status_kib(relay.pid, "VmHWM")
            assert peak < 150 * 1024, f"the router held {peak} KiB: replies must stream"
            stuck.reset()
        finally:
            await producer.close()

    asyncio.run(scenario())
    assert len(child_pids(relay.pid)) == 2, "no worker died"


# --- Metrics of a relay of several processes -------------------------------------------------


def test_metrics_and_status_cover_every_worker(tmp_path: Path) -> None:
    import json
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    relay = start_relay(tmp_path / "relay", "--workers", "2", "--metrics-port",
                        "tcp://127.0.0.1:0", "-v")
    try:
        found = wait_until(lambda: re.search(r"metrics port (\d+)", relay.log_text()),
                           timeout=20, what="the metrics port in the log")
        metrics_port = int(found.group(1))

        def get(path: str) -> bytes:
            url = f"http://127.0.0.1:{metrics_port}{path}"
            with urllib.request.urlopen(url, timeout=10) as reply:
                body: bytes = reply.read()
            return body

        async def scenario() -> dict[str, Any]:
            producers = [await stream_session(relay, source, f"m{n}", 3 + n)
                         for n, source in enumerate(("127.0.0.1", "127.0.0.2"))]
            try:
                status: dict[str, Any] = json.loads(get("/status"))  # sessions still open
            finally:
                for producer in producers:
                    await producer.close()
            return status

        status = asyncio.run(scenario())
        families = {f.name: f for f in text_string_to_metric_families(get("/metrics").decode())}
        up = {s.labels["worker"]: s.value for s in families["pyrelayd_worker_up"].samples}
        assert up == {"0": 1.0, "1": 1.0}
        indexed = [s for s in families["pyrelayd_received_packets"].samples
                   if s.name.endswith("_total")]
        by_session = {s.labels["session"]: (s.labels["worker"], s.value) for s in indexed
                      if s.labels["session"] != "other"}
        assert {name: value for name, (_, value) in by_session.items()} == {"m0": 3, "m1": 4}
        assert len({worker for worker, _ in by_session.values()}) == 2, "one per worker"
        process = families["process_cpu_seconds"].samples
        assert {s.labels["worker"] for s in process} == {"router", "0", "1"}
        assert [w["up"] for w in status["workers"]] == [True, True]
        assert sorted(s["name"] for s in status["sessions"]) == ["m0", "m1"]
        assert get("/healthz") == b"ok\n"
    finally:
        relay.stop()


def test_a_storm_of_connections_reaches_the_workers(relay: RelayProcess) -> None:
    """More connections at once than a worker's end of the pair queues (10 messages by
    default): the router keeps the rest and passes them as the worker takes them, without
    blocking; every one gets its VERSION reply."""
    import socket as socket_module

    from pyrelayd.protocol import relayd

    count = 300
    sockets = [socket_module.create_connection(("127.0.0.1", relay.ports["control"]), timeout=30)
               for _ in range(count)]
    try:
        request = relayd.encode_request(relayd.Command.VERSION, relayd.Version(2, 13).encode())
        for sock in sockets:
            sock.sendall(request)
        for sock in sockets:
            reply = b""
            while len(reply) < 8:
                chunk = sock.recv(8 - len(reply))
                assert chunk, "closed without a VERSION reply"
                reply += chunk
            assert struct.unpack(">II", reply) == (2, 15)
    finally:
        for sock in sockets:
            sock.close()
