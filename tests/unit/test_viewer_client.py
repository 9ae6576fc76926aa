"""The asyncio live client against a scripted fake relay (and, if installed, the C relay)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import io
import os
import shutil
import struct
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pyrelayd.client import live_cli
from pyrelayd.client.viewer import (
    ConnectionClosedError,
    Inactivity,
    LiveClient,
    LiveClientError,
    LiveEvent,
    LiveUrl,
    LiveUrlError,
    Packet,
    StatusError,
    StreamEnd,
    merge_sessions,
    parse_live_url,
)
from pyrelayd.protocol.viewer import (
    PACKET_PIECE_SIZE,
    REQUEST_PAYLOAD_SIZE,
    UINT64_MAX,
    AttachSession,
    AttachSessionReply,
    AttachStatus,
    Command,
    CommandHeader,
    Connect,
    ConnectionType,
    CreateSession,
    CreateSessionReply,
    CreateSessionStatus,
    DetachSession,
    DetachSessionReply,
    DetachStatus,
    GetMetadata,
    GetNewStreams,
    GetNextIndex,
    GetPacket,
    IndexReply,
    IndexStatus,
    ListSessions,
    MetadataReply,
    MetadataStatus,
    NewStreamsReply,
    NewStreamsStatus,
    PacketReply,
    PacketStatus,
    ProtocolError,
    Request,
    Seek,
    SessionInfo,
    SessionList,
    StreamInfo,
    TraceFormat,
    ViewerFlag,
    decode_request,
    negotiated_minor,
)

pytestmark = pytest.mark.timeout(60)

METADATA = StreamInfo(10, 1, True, "ust/uid/0/64-bit", "metadata")
CHANNEL_0 = StreamInfo(11, 1, False, "ust/uid/0/64-bit", "channel0_0")
CHANNEL_1 = StreamInfo(12, 1, False, "ust/uid/0/64-bit", "channel0_1")
LATE = StreamInfo(13, 1, False, "ust/uid/0/64-bit", "channel0_2")
SESSION = SessionInfo(1, 100000, 0, 3, "host", "s1")


def ok_index(offset: int, size_bytes: int, flags: int = 0, begin: int = 0,
             ctf_stream_id: int = 0) -> IndexReply:
    return IndexReply(IndexStatus.OK, ViewerFlag(flags), offset=offset,
                      packet_size=size_bytes * 8, content_size=size_bytes * 8 - 8,
                      timestamp_begin=begin, timestamp_end=begin + 10, events_discarded=0,
                      ctf_stream_id=ctf_stream_id)


class FakeRelay:
    """A relay live port that answers from scripts and records every request.

    Each stream has a queue of GET_NEXT_INDEX replies (HUP once empty) and a data "file"
    served by GET_PACKET; each metadata stream a queue of GET_METADATA replies (NO_NEW once
    empty); each session a queue of GET_NEW_STREAMS replies (HUP once empty).
    """

    def __init__(self) -> None:
        self.connect_reply = Connect(1, 2, 13, 0)
        self.sessions: list[SessionInfo] = [SESSION]
        self.list_reply: bytes | None = None  # raw LIST_SESSIONS reply bytes, if set
        self.attach_replies: dict[int, AttachSessionReply] = {}
        self.create_status = CreateSessionStatus.OK
        self.indexes: dict[int, collections.deque[IndexReply]] = collections.defaultdict(
            collections.deque)
        self.files: dict[int, bytes] = {}
        self.packet_replies: collections.deque[PacketReply] = collections.deque()
        self.max_piece: int | None = None  # serve at most this many bytes per GET_PACKET
        self.metadata: dict[int, collections.deque[MetadataReply]] = collections.defaultdict(
            collections.deque)
        self.new_streams: dict[int, collections.deque[NewStreamsReply]] = (
            collections.defaultdict(collections.deque))
        self.close_on: Command | None = None
        self.close_after: Command | None = None  # reply to this command, then close
        self.silent_on: Command | None = None  # never answer this command
        self.requests: list[Request] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def of(self, kind: type[Any]) -> list[Any]:
        return [request for request in self.requests if isinstance(request, kind)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        minor = 0
        try:
            while True:
                header = CommandHeader.decode(await reader.readexactly(16))
                size = REQUEST_PAYLOAD_SIZE[Command(header.command)]
                request = decode_request(header.command, await reader.readexactly(size))
                self.requests.append(request)
                if self.close_on == header.command:
                    writer.write(b"\0")  # a truncated reply, then the socket closes
                    await writer.drain()
                    return
                if self.silent_on == header.command:
                    continue
                if isinstance(request, Connect):
                    minor = negotiated_minor(request.minor, self.connect_reply.minor)
                writer.write(self._reply(request, minor))
                await writer.drain()
                if self.close_after == header.command:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _reply(self, request: Request, minor: int) -> bytes:
        if isinstance(request, Connect):
            return self.connect_reply.encode()
        if isinstance(request, ListSessions):
            if self.list_reply is not None:
                return self.list_reply
            return SessionList(tuple(self.sessions)).encode(minor)
        if isinstance(request, CreateSession):
            return CreateSessionReply(self.create_status).encode()
        if isinstance(request, AttachSession):
            default = AttachSessionReply(AttachStatus.UNK)
            return self.attach_replies.get(request.session_id, default).encode()
        if isinstance(request, GetNewStreams):
            streams = self.new_streams[request.session_id]
            return (streams.popleft() if streams else NewStreamsReply(NewStreamsStatus.HUP)
                    ).encode()
        if isinstance(request, GetNextIndex):
            indexes = self.indexes[request.stream_id]
            return (indexes.popleft() if indexes else IndexReply(IndexStatus.HUP)).encode()
        if isinstance(request, GetMetadata):
            metadata = self.metadata[request.stream_id]
            return (metadata.popleft() if metadata
                    else MetadataReply(MetadataStatus.NO_NEW_METADATA)).encode()
        if isinstance(request, GetPacket):
            if self.packet_replies:
                return self.packet_replies.popleft().encode()
            data = self.files.get(request.stream_id, b"")
            length = min(request.length, self.max_piece or request.length)
            if request.offset + request.length > len(data):
                return PacketReply(PacketStatus.ERR).encode()
            return PacketReply(PacketStatus.OK,
                               data[request.offset : request.offset + length]).encode()
        assert isinstance(request, DetachSession)
        return DetachSessionReply(DetachStatus.OK).encode()


@pytest.fixture
async def relay() -> AsyncIterator[FakeRelay]:
    fake = FakeRelay()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def client(relay: FakeRelay) -> AsyncIterator[LiveClient]:
    async with LiveClient("127.0.0.1", relay.port) as live:
        yield live


async def collect(live: LiveClient, *args: Any, **kwargs: Any) -> list[LiveEvent]:
    kwargs.setdefault("retry_delay", 0.001)
    async with live.follow(*args, **kwargs) as follow:
        return [event async for event in follow]


# --- commands ----------------------------------------------------------------------------------


async def test_handshake_announces_2_15_and_keeps_the_smaller_minor(
    relay: FakeRelay, client: LiveClient
) -> None:
    # As babeltrace2 2.1: minor 15, all-ones id, COMMAND; a 2.13 relay answers 13.
    assert relay.requests == [Connect(UINT64_MAX, 2, 15, ConnectionType.COMMAND)]
    assert client.relay == Connect(1, 2, 13, 0)
    assert client.minor == 13


@pytest.mark.parametrize(("requested", "relay_minor", "negotiated"),
                         [(4, 13, 4), (4, 15, 4), (15, 15, 15), (16, 15, 15), (15, 14, 14)])
async def test_handshake_with_another_minor(relay: FakeRelay, requested: int, relay_minor: int,
                                            negotiated: int) -> None:
    relay.connect_reply = Connect(1, 2, relay_minor, 0)
    async with LiveClient("127.0.0.1", relay.port, minor=requested) as live:
        assert relay.requests == [Connect(UINT64_MAX, 2, requested, ConnectionType.COMMAND)]
        assert live.minor == negotiated


async def test_handshake_refuses_another_major(relay: FakeRelay) -> None:
    relay.connect_reply = Connect(1, 3, 0, 0)
    live = LiveClient("127.0.0.1", relay.port)
    with pytest.raises(LiveClientError, match="incompatible"):
        await live.connect()
    assert not live.connected


async def test_connection_refused_is_a_client_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(LiveClientError, match="cannot connect"):
        await LiveClient("127.0.0.1", port).connect()


async def test_list_sessions(relay: FakeRelay, client: LiveClient) -> None:
    other = SessionInfo(2, 0, 1, 4, "host2", "s2")
    relay.sessions = [SESSION, other]
    assert await client.list_sessions() == [SESSION, other]


async def test_list_sessions_of_a_2_15_relay_carry_the_trace_format(relay: FakeRelay) -> None:
    relay.connect_reply = Connect(1, 2, 15, 0)
    ctf_2 = SessionInfo(2, 100000, 0, 4, "a-hostname-longer-than-the-64-bytes-of-the-2.4-layout"
                        "-entries-xxxxxxxxxxxxxx", "s2", TraceFormat.CTF_2)
    relay.sessions = [SESSION, ctf_2]
    async with LiveClient("127.0.0.1", relay.port) as live:
        assert live.minor == 15
        sessions = await live.list_sessions()
    assert sessions == [SESSION, ctf_2]
    assert [s.trace_format for s in sessions] == [TraceFormat.CTF_1_8, TraceFormat.CTF_2]


async def test_list_sessions_below_2_15_are_ctf_1_8(relay: FakeRelay) -> None:
    relay.connect_reply = Connect(1, 2, 15, 0)
    async with LiveClient("127.0.0.1", relay.port, minor=4) as live:
        [session] = await live.list_sessions()  # 2.4 entries: no format on the wire
    assert session == SESSION and session.trace_format is TraceFormat.CTF_1_8


def entry_2_15(host_len: int, name_len: int, live_format: int) -> bytes:
    return struct.pack(">QIIIIII", 1, 100, 0, 2, host_len, name_len, live_format)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (struct.pack(">I", 1) + entry_2_15(2, 2, 2) + b"vms1", "unknown trace format 2"),
        # Huge lengths are refused as soon as the fixed part is in: nothing more is awaited.
        (struct.pack(">I", 1) + entry_2_15(2**32 - 1, 2, 0), "hostname of 4294967295 bytes"),
        (struct.pack(">I", 1) + entry_2_15(2, 2**31, 0), "session name of 2147483648 bytes"),
        (struct.pack(">I", 1) + entry_2_15(2, 2, 0) + b"v\0s1", "NUL"),
    ],
)
async def test_bad_2_15_entries_are_protocol_errors(relay: FakeRelay, reply: bytes,
                                                    message: str) -> None:
    relay.connect_reply = Connect(1, 2, 15, 0)
    relay.list_reply = reply
    async with LiveClient("127.0.0.1", relay.port, request_timeout=5) as live:
        with pytest.raises(ProtocolError, match=message):
            await live.list_sessions()
        assert not live.connected


@pytest.mark.parametrize("cut", [4 + 36 + 10, 4 + 36 + 32, 4 + 36 + 32 + 17])
async def test_relay_closing_in_a_2_15_entry_is_a_closed_connection(relay: FakeRelay,
                                                                    cut: int) -> None:
    relay.connect_reply = Connect(1, 2, 15, 0)
    whole = struct.pack(">I", 2) + entry_2_15(2, 2, 0) + b"vms1" + entry_2_15(9, 9, 1) + b"x" * 18
    relay.list_reply = whole[:cut]
    relay.close_after = Command.LIST_SESSIONS
    async with LiveClient("127.0.0.1", relay.port, request_timeout=5) as live:
        with pytest.raises(ConnectionClosedError):
            await live.list_sessions()
        assert not live.connected


def test_merge_sessions_sums_streams_and_keeps_the_most_clients() -> None:
    kernel = SessionInfo(1, 100, 0, 5, "h", "s")
    ust = SessionInfo(2, 100, 1, 3, "h", "s")
    other = SessionInfo(3, 100, 0, 1, "h", "t")
    assert merge_sessions([kernel, other, ust]) == [SessionInfo(1, 100, 1, 8, "h", "s"), other]


async def test_create_session_error(relay: FakeRelay, client: LiveClient) -> None:
    relay.create_status = CreateSessionStatus.ERR
    with pytest.raises(StatusError) as caught:
        await client.create_session()
    assert caught.value.status == CreateSessionStatus.ERR


async def test_attach_returns_streams_and_sends_the_seek(relay: FakeRelay,
                                                         client: LiveClient) -> None:
    relay.attach_replies[1] = AttachSessionReply(AttachStatus.OK, (METADATA, CHANNEL_0))
    assert await client.attach(1, Seek.BEGINNING) == [METADATA, CHANNEL_0]
    assert relay.of(AttachSession) == [AttachSession(1, Seek.BEGINNING)]


@pytest.mark.parametrize("status", [s for s in AttachStatus if s != AttachStatus.OK])
async def test_attach_failures(relay: FakeRelay, client: LiveClient,
                               status: AttachStatus) -> None:
    relay.attach_replies[1] = AttachSessionReply(status)
    with pytest.raises(StatusError) as caught:
        await client.attach(1)
    assert caught.value.status == status


async def test_low_level_commands_return_replies(relay: FakeRelay, client: LiveClient) -> None:
    relay.indexes[11].append(ok_index(0, 16))
    relay.files[11] = bytes(range(16))
    relay.metadata[10].append(MetadataReply(MetadataStatus.OK, b"/* CTF 1.8 */"))
    relay.new_streams[1].append(NewStreamsReply(NewStreamsStatus.OK, (LATE,)))
    assert await client.get_next_index(11) == ok_index(0, 16)
    assert await client.get_packet(11, 4, 8) == PacketReply(PacketStatus.OK, bytes(range(4, 12)))
    assert await client.get_packet(11, 12, 8) == PacketReply(PacketStatus.ERR)
    assert await client.get_metadata(10) == MetadataReply(MetadataStatus.OK, b"/* CTF 1.8 */")
    assert await client.get_metadata(10) == MetadataReply(MetadataStatus.NO_NEW_METADATA)
    assert await client.get_new_streams(1) == NewStreamsReply(NewStreamsStatus.OK, (LATE,))
    await client.detach(1)
    assert relay.of(GetPacket) == [GetPacket(11, 4, 8), GetPacket(11, 12, 8)]


async def test_relay_closing_mid_reply_aborts_the_connection(relay: FakeRelay,
                                                             client: LiveClient) -> None:
    relay.close_on = Command.LIST_SESSIONS
    with pytest.raises(ConnectionClosedError):
        await client.list_sessions()
    assert not client.connected
    with pytest.raises(ConnectionClosedError):
        await client.create_session()


async def test_request_timeout_aborts_the_connection(relay: FakeRelay) -> None:
    relay.silent_on = Command.GET_NEXT_INDEX
    async with LiveClient("127.0.0.1", relay.port, request_timeout=0.05) as live:
        with pytest.raises(LiveClientError, match=r"no reply .* GET_NEXT_INDEX"):
            await live.get_next_index(1)
        assert not live.connected


async def test_unknown_status_is_a_protocol_error_and_aborts(relay: FakeRelay,
                                                             client: LiveClient) -> None:
    class Weird(IndexReply):
        def encode(self, minor: int = 0) -> bytes:
            return struct.pack(">7QII", 0, 0, 0, 0, 0, 0, 0, 9, 0)

    relay.indexes[11].append(Weird(IndexStatus.OK))  # encodes an index reply of status 9
    with pytest.raises(ProtocolError, match="unknown next index status 9"):
        await client.get_next_index(11)
    assert not client.connected


# --- follow ------------------------------------------------------------------------------------


def script_session(relay: FakeRelay, *streams: StreamInfo) -> None:
    relay.attach_replies[1] = AttachSessionReply(AttachStatus.OK, (METADATA, *streams))


async def test_follow_reads_metadata_first_then_whole_packets(relay: FakeRelay,
                                                              client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    relay.metadata[10].extend([MetadataReply(MetadataStatus.OK, b"/* CTF 1.8 */\n"),
                               MetadataReply(MetadataStatus.OK, b"trace {};\n")])
    big = 600 * 1024  # three GET_PACKET pieces: 256 KiB, 256 KiB, 88 KiB
    relay.files[11] = bytes(100) + os.urandom(big)
    relay.indexes[11].extend([IndexReply(IndexStatus.RETRY), ok_index(100, big, begin=5)])

    follow = client.follow(1, Seek.BEGINNING, retry_delay=0.001)
    events = [event async for event in follow]

    packet = events[0]
    assert isinstance(packet, Packet)
    assert (packet.stream, packet.offset, packet.packet_size) == (CHANNEL_0, 100, big * 8)
    assert (packet.timestamp_begin, packet.timestamp_end) == (5, 15)
    assert packet.data == relay.files[11][100:]
    assert events[1:] == [StreamEnd(CHANNEL_0)]
    assert follow.traces[1].metadata_text == "/* CTF 1.8 */\ntrace {};\n"
    assert [(p.offset, p.length) for p in relay.of(GetPacket)] == [
        (100, PACKET_PIECE_SIZE), (100 + PACKET_PIECE_SIZE, PACKET_PIECE_SIZE),
        (100 + 2 * PACKET_PIECE_SIZE, big - 2 * PACKET_PIECE_SIZE)]
    kinds = [type(r).__name__ for r in relay.requests]
    assert kinds[:6] == ["Connect", "CreateSession", "AttachSession", "GetMetadata",
                         "GetMetadata", "GetMetadata"]
    assert relay.of(DetachSession) == [DetachSession(1)]


async def test_follow_new_metadata_is_fetched_before_the_packet(relay: FakeRelay,
                                                                client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    relay.files[11] = bytes(64)
    relay.indexes[11].append(ok_index(0, 64, flags=ViewerFlag.NEW_METADATA))
    relay.metadata[10].extend([MetadataReply(MetadataStatus.NO_NEW_METADATA),
                               MetadataReply(MetadataStatus.OK, b"event {};")])
    events = await collect(client, 1)
    assert [type(e) for e in events] == [Packet, StreamEnd]
    order = [type(r) for r in relay.requests if isinstance(r, GetMetadata | GetPacket)]
    assert order == [GetMetadata, GetMetadata, GetMetadata, GetPacket]


async def test_follow_new_stream_flag_fetches_new_streams(relay: FakeRelay,
                                                          client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    relay.files[11] = relay.files[13] = bytes(32)
    relay.indexes[11].append(ok_index(0, 32, flags=ViewerFlag.NEW_STREAM))
    relay.indexes[13].append(ok_index(0, 32))
    relay.new_streams[1].append(NewStreamsReply(NewStreamsStatus.OK, (LATE,)))
    events = await collect(client, 1)
    packets = [e.stream for e in events if isinstance(e, Packet)]
    assert packets == [CHANNEL_0, LATE]
    assert {e.stream for e in events if isinstance(e, StreamEnd)} == {CHANNEL_0, LATE}


async def test_follow_waits_for_streams_until_the_session_hangs_up(relay: FakeRelay,
                                                                   client: LiveClient) -> None:
    relay.attach_replies[1] = AttachSessionReply(AttachStatus.OK, ())
    relay.new_streams[1].extend([NewStreamsReply(NewStreamsStatus.NO_NEW),
                                 NewStreamsReply(NewStreamsStatus.OK, (METADATA, CHANNEL_0))])
    relay.files[11] = bytes(8)
    relay.indexes[11].append(ok_index(0, 8))
    events = await collect(client, 1)
    assert [type(e) for e in events] == [Packet, StreamEnd]
    # NO_NEW, the streams, then HUP ends the iteration.
    assert len(relay.of(GetNewStreams)) == 3


async def test_follow_inactivity_is_reported_once_per_beacon(relay: FakeRelay,
                                                             client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    beacon = IndexReply(IndexStatus.INACTIVE, timestamp_end=500, ctf_stream_id=3)
    later = IndexReply(IndexStatus.INACTIVE, timestamp_end=700, ctf_stream_id=3)
    relay.indexes[11].extend([beacon, beacon, later])
    assert await collect(client, 1) == [Inactivity(CHANNEL_0, 3, 500),
                                        Inactivity(CHANNEL_0, 3, 700), StreamEnd(CHANNEL_0)]


async def test_follow_can_skip_inactivity(relay: FakeRelay, client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    relay.indexes[11].append(IndexReply(IndexStatus.INACTIVE, timestamp_end=500))
    assert await collect(client, 1, inactivity=False) == [StreamEnd(CHANNEL_0)]


async def test_follow_accepts_short_packet_pieces(relay: FakeRelay, client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    relay.files[11] = os.urandom(1000)
    relay.max_piece = 300
    relay.indexes[11].append(ok_index(0, 1000))
    events = await collect(client, 1)
    assert isinstance(events[0], Packet) and events[0].data == relay.files[11]
    assert [p.offset for p in relay.of(GetPacket)] == [0, 300, 600, 900]


async def test_follow_packet_retry_and_eof(relay: FakeRelay, client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    relay.indexes[11].append(ok_index(0, 8))
    relay.packet_replies.extend([PacketReply(PacketStatus.RETRY), PacketReply(PacketStatus.EOF)])
    assert await collect(client, 1) == [StreamEnd(CHANNEL_0)]
    assert len(relay.of(GetNextIndex)) == 1  # EOF ended the stream


async def test_follow_metadata_error_keeps_what_was_read(relay: FakeRelay,
                                                         client: LiveClient) -> None:
    script_session(relay)
    relay.metadata[10].extend([MetadataReply(MetadataStatus.OK, b"abc"),
                               MetadataReply(MetadataStatus.ERR)])
    async with client.follow(1, retry_delay=0.001) as follow:
        assert [event async for event in follow] == []
        assert follow.traces[1].metadata == b"abc"
        assert follow.traces[1].metadata_closed


@pytest.mark.parametrize("status", [IndexStatus.ERR, IndexStatus.EOF])
async def test_follow_fatal_index_status(relay: FakeRelay, client: LiveClient,
                                         status: IndexStatus) -> None:
    script_session(relay, CHANNEL_0)
    relay.indexes[11].append(IndexReply(status))
    with pytest.raises(StatusError, match=status.name):
        await collect(client, 1)
    assert relay.of(DetachSession) == [DetachSession(1)]  # detached all the same


async def test_follow_packet_error_without_flags_is_fatal(relay: FakeRelay,
                                                          client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    relay.indexes[11].append(ok_index(0, 8))  # no file: the fake answers ERR
    with pytest.raises(StatusError, match="GET_PACKET"):
        await collect(client, 1)


async def test_follow_packet_error_with_new_metadata_retries(relay: FakeRelay,
                                                             client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    relay.files[11] = b"12345678"
    relay.indexes[11].append(ok_index(0, 8))
    relay.packet_replies.append(PacketReply(PacketStatus.ERR, flags=ViewerFlag.NEW_METADATA))
    relay.metadata[10].extend([MetadataReply(MetadataStatus.NO_NEW_METADATA),
                               MetadataReply(MetadataStatus.OK, b"more")])
    async with client.follow(1, retry_delay=0.001) as follow:
        events = [event async for event in follow]
        assert follow.traces[1].metadata == b"more"
    assert isinstance(events[0], Packet) and events[0].data == b"12345678"


async def test_follow_stream_class_must_not_change(relay: FakeRelay, client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    relay.files[11] = bytes(16)
    relay.indexes[11].extend([ok_index(0, 8, ctf_stream_id=1), ok_index(8, 8, ctf_stream_id=2)])
    with pytest.raises(LiveClientError, match="stream class"):
        await collect(client, 1)


async def test_follow_attach_failure(relay: FakeRelay, client: LiveClient) -> None:
    relay.attach_replies[1] = AttachSessionReply(AttachStatus.ALREADY)
    with pytest.raises(StatusError, match="already attached"):
        await collect(client, 1)
    assert relay.of(DetachSession) == []


async def test_follow_several_relay_sessions(relay: FakeRelay, client: LiveClient) -> None:
    kernel_meta = StreamInfo(20, 2, True, "kernel", "metadata")
    kernel_chan = StreamInfo(21, 2, False, "kernel", "channel0_0")
    script_session(relay, CHANNEL_0)
    relay.attach_replies[2] = AttachSessionReply(AttachStatus.OK, (kernel_chan, kernel_meta))
    relay.files[21] = bytes(4)
    relay.indexes[21].append(ok_index(0, 4))
    async with client.follow([1, 2], retry_delay=0.001) as follow:
        events = [event async for event in follow]
        assert set(follow.traces) == {1, 2}
    assert [e.stream for e in events if isinstance(e, Packet)] == [kernel_chan]
    assert relay.of(DetachSession) == [DetachSession(1), DetachSession(2)]


async def test_breaking_out_of_follow_detaches(relay: FakeRelay, client: LiveClient) -> None:
    script_session(relay, CHANNEL_0)
    relay.indexes[11].extend([IndexReply(IndexStatus.INACTIVE, timestamp_end=t)
                              for t in range(1, 100)])
    async with client.follow(1, retry_delay=0.001) as follow:
        async for _event in follow:
            break
    assert relay.of(DetachSession) == [DetachSession(1)]
    assert client.connected


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("net://localhost", LiveUrl("localhost")),
        ("net4://127.0.0.1:5345", LiveUrl("127.0.0.1", 5345)),
        ("net://relay:1/host/vm/my-session", LiveUrl("relay", 1, "vm", "my-session")),
        ("net://relay/host/vm/s", LiveUrl("relay", 5344, "vm", "s")),
        ("net6://[::1]:7/host/h/s", LiveUrl("::1", 7, "h", "s", ipv6=True)),
    ],
)
def test_parse_live_url(text: str, expected: LiveUrl) -> None:
    assert parse_live_url(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp://h", "unknown protocol"),
        ("net:/h", "expecting `://`"),
        ("net://", "missing relay hostname"),
        ("net://h:", "missing port"),
        ("net://h:x1", "invalid port"),
        ("net://h:70000", "invalid port"),
        ("net://h/x", "expecting `/host/`"),
        ("net://h/host/", "missing target hostname"),
        ("net://h/host/vm", "missing `/` after target hostname"),
        ("net://h/host/vm/", "missing session name"),
        ("net://h/host/vm/s/", "unexpected `/` after session name"),
    ],
)
def test_parse_live_url_errors(text: str, message: str) -> None:
    with pytest.raises(LiveUrlError, match=message):
        parse_live_url(text)


def test_live_url_text() -> None:
    assert str(LiveUrl("h", 5344, "vm", "s")) == "net://h:5344/host/vm/s"
    assert str(LiveUrl("::1", 1, ipv6=True)) == "net6://[::1]:1"
    assert LiveUrl("h").is_listing


# --- command line --------------------------------------------------------------------------


@contextlib.contextmanager
def relay_in_thread(fake: FakeRelay) -> Iterator[FakeRelay]:
    """Run a fake relay on its own event loop, for the synchronous `main()`."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(5)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_cli_lists_like_babeltrace(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeRelay()  # a 2.13 relay: no format on the wire, its sessions are CTF 1.8
    fake.sessions = [SessionInfo(1, 100000, 0, 3, "vm", "s1"),
                     SessionInfo(2, 100000, 1, 2, "vm", "s1"),
                     SessionInfo(3, 0, 0, 1, "vm", "other")]
    with relay_in_thread(fake):
        url = f"net://localhost:{fake.port}"
        assert live_cli.main([url]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{url}/host/vm/s1 (timer = 100000, 5 stream(s), 1 client(s) connected, CTF 1.8)",
        f"{url}/host/vm/other (timer = 0, 1 stream(s), 0 client(s) connected, CTF 1.8)",
    ]
    assert fake.of(Connect)[0].minor == 15


def test_cli_lists_the_trace_format_of_a_2_15_relay(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeRelay()
    fake.connect_reply = Connect(1, 2, 15, 0)
    fake.sessions = [SessionInfo(1, 100000, 0, 3, "vm", "ctf2", TraceFormat.CTF_2),
                     SessionInfo(2, 100000, 0, 3, "vm", "ctf2", TraceFormat.CTF_2),
                     SessionInfo(3, 100000, 1, 2, "vm", "ctf18", TraceFormat.CTF_1_8)]
    with relay_in_thread(fake):
        url = f"net://localhost:{fake.port}"
        assert live_cli.main([url]) == 0
    # babeltrace2 2.1's listing.
    assert capsys.readouterr().out.splitlines() == [
        f"{url}/host/vm/ctf2 (timer = 100000, 6 stream(s), 0 client(s) connected, CTF 2)",
        f"{url}/host/vm/ctf18 (timer = 100000, 2 stream(s), 1 client(s) connected, CTF 1.8)",
    ]


def test_cli_can_announce_another_minor(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeRelay()
    fake.connect_reply = Connect(1, 2, 15, 0)
    with relay_in_thread(fake):
        url = f"net://localhost:{fake.port}"
        assert live_cli.main([url, "--minor", "4"]) == 0
    assert fake.of(Connect) == [Connect(UINT64_MAX, 2, 4, ConnectionType.COMMAND)]
    assert capsys.readouterr().out.splitlines() == [
        f"{url}/host/host/s1 (timer = 100000, 3 stream(s), 0 client(s) connected, CTF 1.8)"]


def test_cli_follows_packets(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeRelay()
    fake.sessions = [SessionInfo(7, 100000, 0, 2, "vm", "s1")]
    fake.attach_replies[7] = AttachSessionReply(AttachStatus.OK, (METADATA, CHANNEL_0))
    fake.files[11] = bytes(8)
    fake.indexes[11].extend([ok_index(0, 8, begin=100),
                             IndexReply(IndexStatus.INACTIVE, timestamp_end=200)])
    with relay_in_thread(fake):
        status = live_cli.main([f"net://127.0.0.1:{fake.port}/host/vm/s1", "--seek",
                                "beginning", "--retry-delay", "0.001"])
    assert status == 0
    where = "stream 11 (ust/uid/0/64-bit/channel0_0)"
    assert capsys.readouterr().out.splitlines() == [
        f"{where} packet offset=0 packet_size=64 content_size=56 timestamp_begin=100 "
        "timestamp_end=110 events_discarded=0",
        f"{where} inactive timestamp_end=200",
        f"{where} hung up",
    ]
    assert fake.of(AttachSession) == [AttachSession(7, Seek.BEGINNING)]


def test_cli_missing_session_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with relay_in_thread(FakeRelay()) as fake:
        assert live_cli.main([f"net://127.0.0.1:{fake.port}/host/vm/nope"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no session `nope` of host `vm`" in err


@pytest.mark.parametrize("minor", ["-1", "4294967296", "x"])
def test_cli_refuses_a_minor_out_of_range(capsys: pytest.CaptureFixture[str], minor: str) -> None:
    with pytest.raises(SystemExit) as exited:
        live_cli.main(["net://h", "--minor", minor])
    assert exited.value.code == 2
    assert "--minor" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tcp://x"], "unknown protocol"),
        (["net://127.0.0.1:1"], "cannot connect"),
        (["net://h", "--events"], "--events needs a session URL"),
        (["net://h/host/a/b", "--events", "--seek", "beginning"], "drop --seek"),
        (["net://h/host/a/b", "--events", "--minor", "4"], "drop --minor"),
    ],
)
def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                 message: str) -> None:
    assert live_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyrelayd-live: ") and err.count("\n") == 1 and message in err


# --- against the real C relay ----------------------------------------------------------------

REAL_TOOLS = ("lttng-relayd", "lttng-sessiond", "lttng", "lttng-gen-tp", "gcc", "unshare",
              "nsenter", "babeltrace2")
LTTNG_ENV_PATH = Path(__file__).resolve().parents[1] / "integration" / "lttng_env.py"


def load_lttng_env() -> ModuleType:
    """The integration helpers (stdlib only), loaded by path: tests/ is not a package."""
    spec = importlib.util.spec_from_file_location("pyrelayd_test_lttng_env", LTTNG_ENV_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in REAL_TOOLS) or os.geteuid() != 0
    or not LTTNG_ENV_PATH.exists(),
    reason="needs root and the LTTng 2.13 tools (lttng-relayd, lttng-sessiond, ...)",
)
@pytest.mark.timeout(90)
def test_against_the_c_relay(tmp_path: Path) -> None:
    env = load_lttng_env()
    relay = env.start_relay("c", tmp_path / "relay")
    sessiond = None
    try:
        sessiond = env.SessionDaemon.start(tmp_path / "sessiond")
        app = env.TracedApps(sessiond, env.build_c_app(tmp_path / "app"))
        session = env.Session.create(sessiond, "viewer-check", relay, live_timer_us=100000)
        session.enable_channel("channel0")
        session.enable_events()
        session.start()
        app.run_c_app(200)

        listing_url = relay.live_url()
        ours = io.StringIO()
        asyncio.run(live_cli.list_sessions(listing_url, parse_live_url(listing_url), ours))
        theirs = env.run_command(["babeltrace2", "-i", "lttng-live", listing_url]).stdout
        if "CTF 1.8)" not in theirs:  # babeltrace2 2.0 prints no trace format (2.1 does)
            theirs = theirs.replace(" connected)", " connected, CTF 1.8)")
        assert ours.getvalue() == theirs
        assert "/host/" in theirs and "viewer-check" in theirs

        events, metadata = asyncio.run(_follow_until_destroyed(relay.live_port, session, app))
    finally:
        if sessiond is not None:
            sessiond.stop()
        relay.stop()

    packets = [event for event in events if isinstance(event, Packet)]
    assert packets, "no packet read"
    for packet in packets:
        assert len(packet.data) == packet.packet_size // 8
        assert packet.content_size <= packet.packet_size
        magic = int.from_bytes(packet.data[:4], "little")
        assert magic == 0xC1FC1FC1 or int.from_bytes(packet.data[:4], "big") == 0xC1FC1FC1
    ended = {event.stream.id for event in events if isinstance(event, StreamEnd)}
    assert {packet.stream.id for packet in packets} <= ended
    assert "pyrelayd_test" in metadata and "CTF 1.8" in metadata


async def _follow_until_destroyed(port: int, session: Any, app: Any) -> tuple[
        list[LiveEvent], str]:
    async with LiveClient("127.0.0.1", port) as live:
        await live.create_session()
        ids = [s.id for s in await live.list_sessions() if s.session_name == "viewer-check"]
        assert ids
        events: list[LiveEvent] = []
        async with live.follow(ids, Seek.BEGINNING, retry_delay=0.05) as follow:
            async def read() -> None:
                async for event in follow:
                    events.append(event)

            reader = asyncio.create_task(read())
            await asyncio.sleep(0.5)
            await asyncio.to_thread(app.run_c_app, 100, first_seq=1000)
            await asyncio.to_thread(session.destroy)
            await asyncio.wait_for(reader, 20)
            metadata = "".join(trace.metadata_text for trace in follow.traces.values())
    return events, metadata
