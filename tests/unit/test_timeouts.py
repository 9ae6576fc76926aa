"""Peers that stall: dropped after LTTNG_NETWORK_SOCKET_TIMEOUT (or 180 s), the rest untouched.

As lttng-relayd, whose sockets carry the timeout as SO_RCVTIMEO/SO_SNDTIMEO, pyrelayd drops a
connection that stops in the middle of a message or does not read its replies; it also drops
one that never sends its first message (a data connection excepted: its first packet may come
much later). Connections idle between two messages are never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from pyrelayd.client.producer import RelaydProducer
from pyrelayd.client.viewer import LiveClient
from pyrelayd.config import DEFAULT_STALL_TIMEOUT_S
from pyrelayd.model.relay import Relay
from pyrelayd.protocol import relayd, viewer
from pyrelayd.server.control import ControlProtocol
from pyrelayd.server.data import DataProtocol
from pyrelayd.server.timeouts import StallSweeper, stall_timeout
from tests.unit.fakes import FakeTransport
from tests.unit.relayd_process import start_relay, wait_closed_by_relay

PACKET = b"P" * 4096
TIMEOUT_MS = 1000


def control_request(command: relayd.Command, payload: bytes) -> bytes:
    return relayd.encode_request(command, payload)


async def open_producer(ports: dict[str, int], name: str) -> RelaydProducer:
    producer = RelaydProducer("127.0.0.1", ports["control"], ports["data"])
    await producer.connect()
    await producer.create_session(name, "host")
    await producer.create_trace_chunk(0)
    return producer


def send_without_reading(sock: socket.socket, request: bytes) -> None:
    """Send `request` again and again without reading a reply, until the relay stops
    reading (its replies filled the socket buffers) for a while, or drops the connection."""
    sock.settimeout(3)
    burst = request * 4096
    with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
        while True:
            sock.sendall(burst)


async def test_stalled_peers_are_dropped_while_a_producer_goes_on(tmp_path: Path) -> None:
    relay = start_relay(tmp_path / "relay", "-v",
                        env={"LTTNG_NETWORK_SOCKET_TIMEOUT": str(TIMEOUT_MS)})
    try:
        steady = await open_producer(relay.ports, "steady")
        steady_stream = await steady.add_stream("channel0_0", "ust/uid/0/64-bit")
        await steady.streams_sent()
        idle = await open_producer(relay.ports, "idle")  # connected, no packet yet
        idle_stream = await idle.add_stream("channel0_0", "ust/uid/0/64-bit")
        stalling = await open_producer(relay.ports, "stalling")
        stalling_stream = await stalling.add_stream("channel0_0", "ust/uid/0/64-bit")
        idle_viewer = LiveClient("127.0.0.1", relay.ports["live"])
        await idle_viewer.connect()

        connect = viewer.encode_request(
            viewer.Connect(minor=15, connection_type=viewer.ConnectionType.COMMAND))
        get_configuration = control_request(relayd.Command.GET_CONFIGURATION,
                                            relayd.GetConfiguration().encode())
        version = control_request(relayd.Command.VERSION, relayd.Version(2, 13).encode())

        def stalled_peer(port: str, sent: bytes = b"", repeated: bytes = b"") -> socket.socket:
            sock = relay.connect(port)
            if repeated:  # a peer that does not read its replies
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(sent)
                send_without_reading(sock, repeated)
            else:
                sock.sendall(sent)
            return sock

        packet_header = relayd.DataHeader(stalling_stream.handle, 0, len(PACKET), 0).encode()
        peers = await asyncio.gather(*(asyncio.to_thread(stalled_peer, *args) for args in (
            ("data", packet_header + PACKET[:100]),  # in the middle of a packet
            ("control",),  # silent
            ("control", version[:30]),  # half a message
            ("control", b"", get_configuration),  # deaf
            ("live",),  # silent
            ("live", connect[:20]),  # half a request
            ("live", connect, viewer.encode_request(viewer.ListSessions())),  # deaf
        )))
        sent = 0
        stop = asyncio.Event()

        async def keep_producing() -> None:
            nonlocal sent
            while not stop.is_set():
                seq = await steady.send_packet(steady_stream, PACKET)
                await steady.send_index(steady_stream, seq, packet_size_bits=len(PACKET) * 8,
                                        content_size_bits=len(PACKET) * 8,
                                        timestamp_begin=seq, timestamp_end=seq + 1)
                sent += 1
                await asyncio.sleep(0.02)

        producing = asyncio.create_task(keep_producing())
        try:
            for sock in peers:
                await asyncio.to_thread(wait_closed_by_relay, sock)
                sock.close()
        finally:
            stop.set()
            await producing

        # The idle peers went through the same time untouched and still work.
        sessions = {session.session_name for session in await idle_viewer.list_sessions()}
        assert {"steady", "idle"} <= sessions
        seq = await idle.send_packet(idle_stream, PACKET)
        await idle.send_index(idle_stream, seq, packet_size_bits=len(PACKET) * 8,
                              content_size_bits=len(PACKET) * 8, timestamp_begin=1,
                              timestamp_end=2)
        assert not await steady.data_pending(steady_stream)
        assert not await idle.data_pending(idle_stream)
        traces = tmp_path / "relay" / "traces" / "host"
        steady_file = next(traces.glob("steady-*/ust/uid/0/64-bit/channel0_0"))
        assert sent > 0 and steady_file.stat().st_size == sent * len(PACKET)
        assert next(traces.glob("idle-*/ust/uid/0/64-bit/channel0_0")).read_bytes() == PACKET
        for producer in (steady, idle, stalling):
            await producer.close()
        await idle_viewer.close()
    finally:
        relay.stop()

    log = relay.log_text()
    for line in ("dropped: no first message for", "dropped: stopped in the middle of a message",
                 "dropped: not reading replies", "dropped: no CONNECT for",
                 "dropped: stopped in the middle of a request", "dropped: not reading its reply",
                 "[host/stalling]: dropped: stopped in the middle of a packet"):
        assert line in log, line
    assert "[host/steady]: dropped" not in log
    assert "[host/idle]: dropped" not in log


# --- In process: what counts as stalled -----------------------------------------------------


def test_the_timeout_is_the_variable_or_lttng_default_tcp_timeout() -> None:
    assert stall_timeout(1500) == 1.5
    assert stall_timeout(0) == DEFAULT_STALL_TIMEOUT_S == 180  # unset, 0 and -1


class PausableTransport(FakeTransport):
    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def made(protocol: ControlProtocol | DataProtocol) -> FakeTransport:
    transport = PausableTransport()
    protocol.connection_made(transport)
    return transport


def test_a_control_connection_stalls_only_inside_a_message(relay: Relay) -> None:
    control = ControlProtocol(relay, set())
    made(control)
    assert control.stalled_since() is not None  # no first message yet

    control.data_received(control_request(relayd.Command.VERSION,
                                           relayd.Version(2, 13).encode()))
    assert control.stalled_since() is None  # between messages: idle, for as long as it likes

    control.data_received(control_request(relayd.Command.VERSION, b"")[:10])
    assert control.stalled_since() == control.last_progress

    control.pause_writing()
    assert control.stalled_since() == control.replies_stuck_since


def test_a_data_connection_may_wait_for_its_first_packet(relay: Relay) -> None:
    data = DataProtocol(relay, set())
    made(data)
    assert data.stalled_since() is None
    data.partial_header = b"\0" * 10
    assert data.stalled_since() == data.last_progress


class FakeConnection:
    def __init__(self, since: float | None) -> None:
        self.since = since
        self.dropped: float | None = None

    def stalled_since(self) -> float | None:
        return self.since

    def drop_stalled(self, waited: float) -> None:
        self.dropped = waited


def test_the_sweep_drops_what_stalled_for_the_timeout() -> None:
    now = 100.0
    connections = [FakeConnection(None), FakeConnection(99.5), FakeConnection(98.0)]
    sweeper = StallSweeper(2.0, lambda: connections, clock=lambda: now)

    assert sweeper.sweep() == 1
    assert [c.dropped for c in connections] == [None, None, 2.0]
    assert sweeper.interval == 0.5
