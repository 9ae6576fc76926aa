"""The live server's connections on real sockets: replies in order, no Nagle, errors close."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.protocol import viewer as wire
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
