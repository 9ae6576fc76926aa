"""The live port without sockets: the framer cuts viewer requests out of any byte stream, and
the handler answers each request from the model with reply bytes and file ranges."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.model.session import RelaySession, SessionInfo
from pyrelayd.protocol import viewer as wire
from pyrelayd.protocol.live import LiveFramer, LiveHandler, Output, PacketRange, ViewerRefused
from pyrelayd.protocol.relayd import ProtocolError, TraceFormat

UINT64 = st.integers(0, 2**64 - 1)
UINT32 = st.integers(0, 2**32 - 1)
REQUESTS = st.one_of(
    st.builds(wire.Connect, UINT64, UINT32, UINT32, UINT32),
    st.just(wire.ListSessions()),
    st.just(wire.CreateSession()),
    st.builds(wire.AttachSession, UINT64, UINT32, UINT64),
    st.builds(wire.GetNextIndex, UINT64),
    st.builds(wire.GetPacket, UINT64, UINT64, UINT32),
    st.builds(wire.GetMetadata, UINT64),
    st.builds(wire.GetNewStreams, UINT64),
    st.builds(wire.DetachSession, UINT64),
)
STREAM_PATH = "ust/uid/1000/64-bit"


def frame_all(framer: LiveFramer) -> list[wire.Request]:
    requests = []
    while (request := framer.next_request()) is not None:
        requests.append(request)
    return requests


# --------------------------------------------------------------------------- framer


@given(requests=st.lists(REQUESTS, max_size=20), data=st.data())
def test_pipelined_requests_cut_anywhere_come_out_whole_and_in_order(
        requests: list[wire.Request], data: st.DataObject) -> None:
    stream = b"".join(wire.encode_request(request) for request in requests)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=12)))
    framer = LiveFramer()
    framed: list[wire.Request] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        framer.feed(stream[start:end])
        framed += frame_all(framer)
    assert framed == requests
    assert framer.pending_size == 0


@given(requests=st.lists(REQUESTS, min_size=1, max_size=40),
       sizes=st.lists(st.integers(1, 64), min_size=1))
def test_receiving_into_the_buffer_frames_the_same_requests(
        requests: list[wire.Request], sizes: list[int]) -> None:
    # What the server does: recv_into the framer's buffer, then frame what is complete.
    stream = b"".join(wire.encode_request(request) for request in requests)
    framer = LiveFramer(capacity=64)
    framed: list[wire.Request] = []
    position = 0
    turn = 0
    while position < len(stream):
        buffer = framer.receive_buffer()
        assert len(buffer) > 0  # a request is at most 36 bytes: there is always room
        size = min(sizes[turn % len(sizes)], len(buffer), len(stream) - position)
        buffer[:size] = stream[position : position + size]
        framer.received(size)
        position += size
        turn += 1
        framed += frame_all(framer)
    assert framed == requests
    assert framer.pending_size == 0


def test_an_incomplete_request_is_kept_until_the_rest_comes() -> None:
    encoded = wire.encode_request(wire.GetPacket(3, 4096, 512))
    framer = LiveFramer()
    framer.feed(encoded[:10])
    assert framer.next_request() is None
    framer.feed(encoded[10:-1])
    assert framer.next_request() is None
    assert framer.pending == encoded[:-1]
    framer.feed(encoded[-1:])
    assert framer.next_request() == wire.GetPacket(3, 4096, 512)
    assert framer.pending == b""


def test_data_size_is_ignored_the_command_says_how_much_to_read() -> None:
    # A viewer cannot make the relay allocate or wait for what `data_size` announces.
    header = wire.CommandHeader(wire.Command.GET_NEXT_INDEX, data_size=2**64 - 1).encode()
    framer = LiveFramer()
    framer.feed(header + struct.pack(">Q", 5) + b"rest")
    assert framer.next_request() == wire.GetNextIndex(5)
    assert framer.pending == b"rest"


@pytest.mark.parametrize("command", [0, 10, 2**32 - 1])
def test_an_unknown_command_is_an_error_with_its_unk_reply(command: int) -> None:
    framer = LiveFramer()
    framer.feed(wire.CommandHeader(command).encode())
    with pytest.raises(ProtocolError) as raised:
        framer.next_request()
    assert raised.value.reply == wire.UNKNOWN_COMMAND_REPLY


def test_an_unknown_command_is_found_before_its_payload_arrives() -> None:
    framer = LiveFramer()
    framer.feed(wire.CommandHeader(42).encode())  # no payload will tell its size
    with pytest.raises(ProtocolError):
        framer.next_request()


def test_received_cannot_claim_more_than_the_buffer_holds() -> None:
    framer = LiveFramer(capacity=16)
    with pytest.raises(ValueError, match="free"):
        framer.received(17)


# --------------------------------------------------------------------------- handler


@pytest.fixture
def relay(tmp_path: Path) -> Relay:
    return Relay(RelaySettings(tmp_path / "lttng-traces"))


def add_session(relay: Relay, name: str = "s",
                trace_format: TraceFormat = TraceFormat.CTF_1_8) -> RelaySession:
    info = SessionInfo(
        session_name=name, hostname="vm", base_path="", live_timer=1_000_000, snapshot=False,
        sessiond_uuid=bytes(range(1, 17)), sessiond_session_id=len(relay.sessions) + 1,
        creation_time=1704164645, name_contains_creation_time=False, major=2, minor=15,
        trace_format=trace_format,
    )
    session = relay.create_session(info, None)
    relay.create_trace_chunk(session, 0, 1704164645, None)
    return session


def only(outputs: tuple[Output, ...]) -> bytes:
    (reply,) = outputs
    assert isinstance(reply, bytes)
    return reply


Call = Callable[[wire.Request], bytes]


def connected(relay: Relay, minor: int = 15) -> tuple[LiveHandler, Call]:
    handler = LiveHandler(relay, "viewer test")
    reply = wire.Connect.decode(only(handler.handle(wire.Connect(minor=minor))))
    assert (reply.major, reply.minor) == (wire.VERSION_MAJOR, wire.RELAY_VERSION_MINOR)
    return handler, lambda request: only(handler.handle(request))


def test_every_request_before_connect_is_refused(relay: Relay) -> None:
    handler = LiveHandler(relay, "viewer test")
    with pytest.raises(ViewerRefused, match="LIST_SESSIONS before CONNECT"):
        handler.handle(wire.ListSessions())


@pytest.mark.parametrize("connect", [wire.Connect(major=3), wire.Connect(connection_type=3)])
def test_connect_with_another_major_or_an_unknown_type_is_refused(
        relay: Relay, connect: wire.Connect) -> None:
    with pytest.raises(ViewerRefused):
        LiveHandler(relay, "viewer test").handle(connect)


def test_connect_negotiates_the_smaller_minor_and_numbers_command_connections(
        relay: Relay) -> None:
    first, _ = connected(relay, minor=4)
    second, _ = connected(relay, minor=15)
    assert (first.minor, second.minor) == (4, 15)
    notification = LiveHandler(relay, "viewer test")
    reply = wire.Connect.decode(only(notification.handle(
        wire.Connect(minor=15, connection_type=wire.ConnectionType.NOTIFICATION))))
    assert reply.viewer_session_id == 0


def test_list_sessions_uses_the_negotiated_layout(relay: Relay) -> None:
    add_session(relay, "old")
    add_session(relay, "new", TraceFormat.CTF_2)
    _, call_4 = connected(relay, minor=4)
    _, call_15 = connected(relay, minor=15)
    listed_4 = wire.SessionList.decode(call_4(wire.ListSessions()), 4)
    listed_15 = wire.SessionList.decode(call_15(wire.ListSessions()), 15)
    assert [s.session_name for s in listed_4.sessions] == ["old"]
    assert {(s.session_name, s.trace_format) for s in listed_15.sessions} == {
        ("old", TraceFormat.CTF_1_8), ("new", TraceFormat.CTF_2)}


def test_reading_requests_without_a_viewer_session_get_err(relay: Relay) -> None:
    _, call = connected(relay)
    assert wire.IndexReply.decode(call(wire.GetNextIndex(1))).status == wire.IndexStatus.ERR
    assert wire.PacketReply.decode(call(wire.GetPacket(1, 0, 1))).status == wire.PacketStatus.ERR
    assert (wire.MetadataReply.decode(call(wire.GetMetadata(1))).status
            == wire.MetadataStatus.ERR)
    assert (wire.NewStreamsReply.decode(call(wire.GetNewStreams(1))).status
            == wire.NewStreamsStatus.ERR)
    assert (wire.AttachSessionReply.decode(call(wire.AttachSession(1))).status
            == wire.AttachStatus.NO_SESSION)
    assert (wire.DetachSessionReply.decode(call(wire.DetachSession(1))).status
            == wire.DetachStatus.ERR)


def test_get_packet_answers_a_header_and_a_range_of_the_stream_file(relay: Relay) -> None:
    session = add_session(relay)
    metadata = relay.add_stream(session, "metadata", STREAM_PATH, 0, 0)
    channel = relay.add_stream(session, "channel0_0", STREAM_PATH, 0, 0)
    metadata.write(b"/* CTF 1.8 */")
    metadata.end_metadata(13, 0)
    session.publish_streams()
    handler, call = connected(relay)
    call(wire.CreateSession())
    attached = wire.AttachSessionReply.decode(
        call(wire.AttachSession(session.id, wire.Seek.BEGINNING)))
    assert {s.id for s in attached.streams} == {metadata.handle, channel.handle}
    channel.write(b"P" * 100)

    header, packet = handler.handle(wire.GetPacket(channel.handle, 10, 80))
    assert header == wire.PacketReply.HEADER.pack(wire.PacketStatus.OK, 80, 0)
    assert isinstance(packet, PacketRange)
    assert (packet.offset, packet.length) == (10, 80)
    assert os.pread(packet.fd, packet.length, packet.offset) == b"P" * 80

    # Past the end of the file, of the metadata stream, or too large: ERR and no payload.
    for request in (wire.GetPacket(channel.handle, 50, 51), wire.GetPacket(metadata.handle, 0, 1),
                    wire.GetPacket(channel.handle, 0, wire.MAX_PACKET_REQUEST + 1)):
        assert call(request) == wire.PacketReply(wire.PacketStatus.ERR).encode()

    reply = wire.MetadataReply.decode(call(wire.GetMetadata(metadata.handle)))
    assert reply == wire.MetadataReply(wire.MetadataStatus.OK, b"/* CTF 1.8 */")
    assert (wire.DetachSessionReply.decode(call(wire.DetachSession(session.id))).status
            == wire.DetachStatus.OK)
    handler.close()
    assert handler.viewer is None
    assert not session.viewers


def test_a_repeated_create_session_replaces_the_viewer_session(relay: Relay) -> None:
    session = add_session(relay)
    handler, call = connected(relay)
    call(wire.CreateSession())
    call(wire.AttachSession(session.id))
    first = handler.viewer
    call(wire.CreateSession())
    assert handler.viewer is not first
    assert first not in session.viewers


def test_a_conversation_cut_anywhere_gets_the_same_replies(tmp_path: Path) -> None:
    requests: list[wire.Request] = [
        wire.Connect(minor=15), wire.CreateSession(), wire.ListSessions(),
        wire.AttachSession(1, wire.Seek.BEGINNING), wire.GetNewStreams(1),
        wire.GetNextIndex(2), wire.GetMetadata(1), wire.GetPacket(2, 0, 4),
        wire.DetachSession(1),
    ]
    stream = b"".join(wire.encode_request(request) for request in requests)

    def replies(cut_every: int, directory: Path) -> list[Output]:
        relay = Relay(RelaySettings(directory))
        add_session(relay)
        framer, handler = LiveFramer(), LiveHandler(relay, "viewer test")
        out: list[Output] = []
        for start in range(0, len(stream), cut_every):
            framer.feed(stream[start : start + cut_every])
            while (request := framer.next_request()) is not None:
                out += handler.handle(request)
        handler.close()
        return out

    whole = replies(len(stream), tmp_path / "whole")
    assert len(whole) == len(requests)
    for cut_every in (1, 7, 16, 17, 35):
        assert replies(cut_every, tmp_path / f"cut-{cut_every}") == whole
