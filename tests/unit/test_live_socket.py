"""The live server's connections on real sockets: replies in order, no Nagle, errors close,
and what each protocol minor sees (2.15 entries with formats, CTF 2 kept from older viewers)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pyrelayd.client.viewer import LiveClient, StatusError
from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.model.session import RelaySession, SessionInfo
from pyrelayd.protocol import viewer as wire
from pyrelayd.protocol.relayd import UINT64_MAX, SendIndex, TraceFormat
from pyrelayd.server.live import LiveServer


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[LiveServer, int]]:
    listener = socket.create_server(("127.0.0.1", 0))
    server = LiveServer(Relay(RelaySettings(tmp_path)), listener)
    server.start()
    try:
        yield server, listener.getsockname()[1]
    finally:
        await server.stop()


async def _connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _receive(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, size - len(data)), timeout)
        if not chunk:
            break
        data += chunk
    return data


async def _closed_by_relay(sock: socket.socket) -> bool:
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 1), 5.0) == b""
    except ConnectionResetError:
        return True


async def test_accepted_viewers_disable_nagle(live: tuple[LiveServer, int]) -> None:
    # With Nagle on, GET_PACKET's payload would wait for the ACK of its header, which a
    # viewer delays by ~40 ms: every packet served live would pay that.
    server, port = live
    client = await _connect(port)
    try:
        reply = await _send_and_receive(client, wire.encode_request(wire.Connect()),
                                        wire.Connect.FORMAT.size)
        assert wire.Connect.decode(reply).major == wire.VERSION_MAJOR
        (connection,) = server.connections
        assert connection.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        client.close()


async def _send_and_receive(sock: socket.socket, data: bytes, size: int) -> bytes:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    return await _receive(sock, size)


async def test_pipelined_requests_get_their_replies_in_order(
        live: tuple[LiveServer, int]) -> None:
    _, port = live
    client = await _connect(port)
    try:
        requests = b"".join(wire.encode_request(request) for request in (
            wire.Connect(), wire.CreateSession(), wire.ListSessions(),
            wire.AttachSession(42, wire.Seek.BEGINNING)))
        sizes = (wire.Connect.FORMAT.size, wire.CreateSessionReply.FORMAT.size, 4,
                 wire.AttachSessionReply.HEADER.size)
        # Byte by byte: requests cut anywhere are reassembled.
        loop = asyncio.get_running_loop()
        for i in range(len(requests)):
            await loop.sock_sendall(client, requests[i : i + 1])
        raw = await _receive(client, sum(sizes))
        connect, rest = raw[: sizes[0]], raw[sizes[0]:]
        assert wire.Connect.decode(connect).viewer_session_id == 1
        create, rest = rest[: sizes[1]], rest[sizes[1]:]
        assert wire.CreateSessionReply.decode(create).status == wire.CreateSessionStatus.OK
        sessions, attach = rest[: sizes[2]], rest[sizes[2]:]
        assert wire.SessionList.decode(sessions).sessions == ()
        assert wire.AttachSessionReply.decode(attach).status == wire.AttachStatus.UNK
    finally:
        client.close()


async def test_unknown_command_gets_unk_then_close_and_others_keep_working(
        live: tuple[LiveServer, int]) -> None:
    server, port = live
    hostile, honest = await _connect(port), await _connect(port)
    try:
        await _send_and_receive(honest, wire.encode_request(wire.Connect()),
                                wire.Connect.FORMAT.size)
        header = wire.CommandHeader(999, 0).encode()
        assert await _send_and_receive(hostile, header, 4) == wire.UNKNOWN_COMMAND_REPLY
        assert await _closed_by_relay(hostile)
        reply = await _send_and_receive(honest, wire.encode_request(wire.CreateSession()),
                                        wire.CreateSessionReply.FORMAT.size)
        assert wire.CreateSessionReply.decode(reply).status == wire.CreateSessionStatus.OK
        assert len(server.connections) == 1
        assert server.relay.fd_pool.held == 1  # the hostile viewer's socket was given back
    finally:
        hostile.close()
        honest.close()


async def test_request_before_connect_closes(live: tuple[LiveServer, int]) -> None:
    server, port = live
    client = await _connect(port)
    try:
        await asyncio.get_running_loop().sock_sendall(
            client, wire.encode_request(wire.ListSessions()))
        assert await _closed_by_relay(client)
        assert not server.connections
    finally:
        client.close()


async def test_viewer_gone_mid_request_is_forgotten(live: tuple[LiveServer, int]) -> None:
    server, port = live
    client = await _connect(port)
    await asyncio.get_running_loop().sock_sendall(client, wire.encode_request(wire.Connect())[:7])
    for _ in range(100):
        if server.connections:
            break
        await asyncio.sleep(0.01)
    client.close()
    for _ in range(100):
        if not server.connections:
            break
        await asyncio.sleep(0.01)
    assert not server.connections
    assert server.relay.fd_pool.held == 0


# --------------------------------------------------------------------------- protocol 2.15

CREATION_TIME = 1704164645
LIVE_TIMER_US = 100_000


def add_session(relay: Relay, name: str, trace_format: TraceFormat = TraceFormat.CTF_1_8,
                *, live_timer: int = LIVE_TIMER_US, hostname: str = "vm") -> RelaySession:
    """A relay session as a 2.15 peer's CREATE_SESSION + CREATE_TRACE_CHUNK(0) leave it."""
    info = SessionInfo(
        session_name=name, hostname=hostname, base_path="", live_timer=live_timer,
        snapshot=False,
        sessiond_uuid=bytes(range(1, 17)), sessiond_session_id=len(relay.sessions) + 1,
        creation_time=CREATION_TIME, name_contains_creation_time=False, major=2, minor=15,
        trace_format=trace_format,
    )
    session = relay.create_session(info, None)
    relay.create_trace_chunk(session, 0, CREATION_TIME, None)
    return session


class Viewer:
    """A raw viewer connection that decodes replies with the negotiated minor."""

    def __init__(self, sock: socket.socket, minor: int) -> None:
        self.sock = sock
        self.minor = minor

    @classmethod
    async def connect(cls, port: int, minor: int) -> tuple[Viewer, wire.Connect]:
        sock = await _connect(port)
        raw = await _send_and_receive(sock, wire.encode_request(wire.Connect(minor=minor)),
                                      wire.Connect.FORMAT.size)
        reply = wire.Connect.decode(raw)
        return cls(sock, wire.negotiated_minor(minor, reply.minor)), reply

    async def raw(self, request: wire.Request, size: int) -> bytes:
        return await _send_and_receive(self.sock, wire.encode_request(request), size)

    async def call(self, request: wire.Request, reply_type: Any) -> Any:
        await asyncio.get_running_loop().sock_sendall(self.sock, wire.encode_request(request))
        buffer = b""
        while need := reply_type.missing(buffer, self.minor):
            piece = await _receive(self.sock, need)
            assert len(piece) == need, "the relay closed the connection"
            buffer += piece
        return reply_type.decode(buffer, self.minor)

    async def sessions(self) -> dict[str, wire.SessionInfo]:
        reply = await self.call(wire.ListSessions(), wire.SessionList)
        return {session.session_name: session for session in reply.sessions}

    async def attach(self, session_id: int, seek: int = wire.Seek.LAST) -> wire.AttachStatus:
        reply = await self.call(wire.AttachSession(session_id, seek), wire.AttachSessionReply)
        assert reply.streams == ()  # sessions without streams
        status: wire.AttachStatus = reply.status
        return status

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("viewer_minor", "negotiated"),
                         [(4, 4), (13, 13), (14, 14), (15, 15), (16, 15)])
async def test_connect_announces_minor_15_and_keeps_the_smaller(
        live: tuple[LiveServer, int], viewer_minor: int, negotiated: int) -> None:
    server, port = live
    viewer, reply = await Viewer.connect(port, viewer_minor)
    try:
        assert (reply.major, reply.minor, reply.connection_type) == (2, 15, 0)
        (connection,) = server.connections
        assert connection.minor == negotiated
    finally:
        viewer.close()


@pytest.mark.parametrize("viewer_minor", [4, 13])
async def test_old_viewers_are_not_shown_ctf_2_sessions(live: tuple[LiveServer, int],
                                                        viewer_minor: int) -> None:
    server, port = live
    old = add_session(server.relay, "old")
    add_session(server.relay, "new", TraceFormat.CTF_2)
    viewer, _ = await Viewer.connect(port, viewer_minor)
    try:
        # The 2.4 layout: the count leaves the CTF 2 session out, then one 339-byte entry.
        raw = await viewer.raw(wire.ListSessions(), 4 + 339)
        assert raw[:4] == struct.pack(">I", 1)
        assert raw[4:24] == struct.pack(">QIII", old.id, LIVE_TIMER_US, 0, 0)
        assert raw[24:88] == b"vm".ljust(64, b"\0")
        assert raw[88:] == b"old".ljust(255, b"\0")
        assert await viewer.sessions() == {
            "old": wire.SessionInfo(old.id, LIVE_TIMER_US, 0, 0, "vm", "old")}
    finally:
        viewer.close()


@pytest.mark.parametrize("viewer_minor", [15, 16])
async def test_2_15_viewers_see_every_session_with_its_format(live: tuple[LiveServer, int],
                                                              viewer_minor: int) -> None:
    server, port = live
    old = add_session(server.relay, "old")
    new = add_session(server.relay, "new", TraceFormat.CTF_2)
    viewer, _ = await Viewer.connect(port, viewer_minor)
    try:
        raw = await viewer.raw(wire.ListSessions(), 4 + 32 + 5 + 32 + 5)
        assert raw == (
            struct.pack(">I", 2)
            + struct.pack(">QIIIIII", old.id, LIVE_TIMER_US, 0, 0, 2, 3, 0) + b"vmold"
            + struct.pack(">QIIIIII", new.id, LIVE_TIMER_US, 0, 0, 2, 3, 1) + b"vmnew"
        )
        assert await viewer.sessions() == {
            "old": wire.SessionInfo(old.id, LIVE_TIMER_US, 0, 0, "vm", "old",
                                    TraceFormat.CTF_1_8),
            "new": wire.SessionInfo(new.id, LIVE_TIMER_US, 0, 0, "vm", "new",
                                    TraceFormat.CTF_2),
        }
    finally:
        viewer.close()


async def test_hostnames_too_long_for_the_2_4_layout_are_only_listed_from_2_15(
        live: tuple[LiveServer, int]) -> None:
    server, port = live
    add_session(server.relay, "s", hostname="h" * 200)
    recent, _ = await Viewer.connect(port, 15)
    old, _ = await Viewer.connect(port, 4)
    try:
        assert (await recent.sessions())["s"].hostname == "h" * 200
        # As lttng-relayd: the 2.4 reply cannot be built, the connection closes without one.
        await asyncio.get_running_loop().sock_sendall(
            old.sock, wire.encode_request(wire.ListSessions()))
        assert await _closed_by_relay(old.sock)
    finally:
        recent.close()
        old.close()


@pytest.mark.parametrize("viewer_minor", [4, 13])
async def test_old_viewers_cannot_attach_a_ctf_2_session(live: tuple[LiveServer, int],
                                                         viewer_minor: int) -> None:
    server, port = live
    old = add_session(server.relay, "old")
    new = add_session(server.relay, "new", TraceFormat.CTF_2)
    viewer, _ = await Viewer.connect(port, viewer_minor)
    try:
        await viewer.call(wire.CreateSession(), wire.CreateSessionReply)
        # Exactly the 8-byte header: UNK, no stream. The next reply follows at once.
        raw = await viewer.raw(wire.AttachSession(new.id, wire.Seek.BEGINNING), 8)
        assert raw == struct.pack(">II", wire.AttachStatus.UNK, 0)
        assert not new.viewers
        detach = await viewer.call(wire.DetachSession(new.id), wire.DetachSessionReply)
        assert detach.status == wire.DetachStatus.ERR  # nothing was attached
        assert await viewer.attach(old.id) == wire.AttachStatus.OK
        assert len(old.viewers) == 1
    finally:
        viewer.close()


async def test_ctf_2_refusal_comes_after_the_session_checks_and_before_the_seek_check(
        live: tuple[LiveServer, int]) -> None:
    server, port = live
    new = add_session(server.relay, "new", TraceFormat.CTF_2)
    not_live = add_session(server.relay, "not-live", TraceFormat.CTF_2, live_timer=0)
    old, _ = await Viewer.connect(port, 4)
    recent, _ = await Viewer.connect(port, 15)
    try:
        for viewer in (old, recent):
            assert await viewer.attach(new.id) == wire.AttachStatus.NO_SESSION
            await viewer.call(wire.CreateSession(), wire.CreateSessionReply)
            assert await viewer.attach(999) == wire.AttachStatus.UNK
            assert await viewer.attach(not_live.id) == wire.AttachStatus.NOT_LIVE
        assert await old.attach(new.id, seek=9) == wire.AttachStatus.UNK
        assert await recent.attach(new.id, seek=9) == wire.AttachStatus.SEEK_ERR
        assert not new.viewers
        assert await recent.attach(new.id) == wire.AttachStatus.OK
        assert len(new.viewers) == 1
    finally:
        old.close()
        recent.close()


async def test_old_and_new_viewers_on_the_same_relay(live: tuple[LiveServer, int]) -> None:
    server, port = live
    old_session = add_session(server.relay, "old")
    new_session = add_session(server.relay, "new", TraceFormat.CTF_2)
    async with (LiveClient("127.0.0.1", port, minor=4) as babeltrace_2_0,
                LiveClient("127.0.0.1", port) as babeltrace_2_1):
        assert (babeltrace_2_0.minor, babeltrace_2_1.minor) == (4, 15)
        assert [s.session_name for s in await babeltrace_2_0.list_sessions()] == ["old"]
        assert [(s.session_name, s.trace_format) for s in await babeltrace_2_1.list_sessions()
                ] == [("old", TraceFormat.CTF_1_8), ("new", TraceFormat.CTF_2)]

        await babeltrace_2_0.create_session()
        await babeltrace_2_1.create_session()
        with pytest.raises(StatusError, match="unknown session") as refused:
            await babeltrace_2_0.attach(new_session.id)
        assert refused.value.status == wire.AttachStatus.UNK
        assert await babeltrace_2_1.attach(new_session.id) == []
        assert await babeltrace_2_0.attach(old_session.id) == []

        listed = {s.session_name: s.clients for s in await babeltrace_2_1.list_sessions()}
        assert listed == {"old": 1, "new": 1}
        assert [(s.session_name, s.clients) for s in await babeltrace_2_0.list_sessions()] == [
            ("old", 1)]


# --------------------------------------------------------------------------- 2.14-2.16 deltas

STREAM_PATH = "ust/uid/0/64-bit"


async def test_beacons_before_any_packet_metadata_hup_and_unreadable_metadata(
        live: tuple[LiveServer, int], tmp_path: Path) -> None:
    server, port = live
    relay = server.relay
    session = add_session(relay, "s")
    metadata = relay.add_stream(session, "metadata", STREAM_PATH, 0, 0)
    channel = relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)
    metadata.write(b"/* CTF 1.8 */")
    metadata.end_metadata(13, 0)
    session.publish_streams()
    viewer, _ = await Viewer.connect(port, 15)
    try:
        await viewer.call(wire.CreateSession(), wire.CreateSessionReply)
        attached = await viewer.call(wire.AttachSession(session.id, wire.Seek.BEGINNING),
                                     wire.AttachSessionReply)
        assert {s.id for s in attached.streams} == {metadata.handle, channel.handle}

        index = await viewer.call(wire.GetNextIndex(channel.handle), wire.IndexReply)
        assert (index.status, index.flags) == (wire.IndexStatus.RETRY,
                                               wire.ViewerFlag.NEW_METADATA)
        # 2.15+: a beacon counts even before the stream's first packet, with its stream id.
        channel.add_index(SendIndex(channel.handle, UINT64_MAX, 0, 0, 0, 5000, 0, 7))
        index = await viewer.call(wire.GetNextIndex(channel.handle), wire.IndexReply)
        assert (index.status, index.timestamp_end, index.ctf_stream_id) == (
            wire.IndexStatus.INACTIVE, 5000, 7)

        # The metadata stream has no index: HUP, with the flags of its trace.
        index = await viewer.call(wire.GetNextIndex(metadata.handle), wire.IndexReply)
        assert (index.status, index.flags) == (wire.IndexStatus.HUP,
                                               wire.ViewerFlag.NEW_METADATA)
        reply = await viewer.call(wire.GetMetadata(metadata.handle), wire.MetadataReply)
        assert reply == wire.MetadataReply(wire.MetadataStatus.OK, b"/* CTF 1.8 */")

        # A failed metadata read is METADATA_ERR (2.16), and the connection goes on.
        metadata.write(b"event {};")
        metadata.end_metadata(9, 0)
        (connection,) = server.connections
        assert connection.viewer is not None
        metadata_viewer_stream = connection.viewer.streams[metadata.handle]
        metadata_viewer_stream.close_files()
        relay.fd_pool.hold()
        metadata_viewer_stream.data_fd = os.open(tmp_path, os.O_RDONLY)  # read -> EISDIR
        reply = await viewer.call(wire.GetMetadata(metadata.handle), wire.MetadataReply)
        assert reply == wire.MetadataReply(wire.MetadataStatus.ERR)
        metadata_viewer_stream.close_files()
        reply = await viewer.call(wire.GetMetadata(metadata.handle), wire.MetadataReply)
        assert reply == wire.MetadataReply(wire.MetadataStatus.OK, b"event {};")
    finally:
        viewer.close()
