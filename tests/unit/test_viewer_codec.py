"""The live viewer protocol codec: exact layouts, round trips and malformed input."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrelayd.protocol import relayd
from pyrelayd.protocol.viewer import (
    BABELTRACE_VERSION_MINOR,
    HOST_NAME_MAX,
    HOST_NAME_MAX_2_15,
    NAME_MAX,
    PATH_MAX,
    RELAY_VERSION_MINOR,
    REQUEST_PAYLOAD_SIZE,
    SESSION_NAME_MAX_2_15,
    TRACE_FORMAT_MINOR,
    UNKNOWN_COMMAND_REPLY,
    VIEWER_VERSION_MINOR,
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
    FixedMessage,
    GetMetadata,
    GetNewStreams,
    GetNextIndex,
    GetPacket,
    IndexReply,
    IndexStatus,
    ListSessions,
    LiveTraceFormat,
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
    encode_request,
    negotiated_minor,
)

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)


def text(max_bytes: int) -> st.SearchStrategy[str]:
    """Strings that fit a C field of `max_bytes` bytes with their NUL."""
    return st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]),
                   max_size=max_bytes - 1).filter(lambda s: len(s.encode()) < max_bytes)


def read_all(reply_type: Any, wire: bytes, minor: int = 4) -> bytes:
    """Feed `wire` the way a client reads: only as many bytes as `missing` asks for."""
    buffer = b""
    while need := reply_type.missing(buffer, minor):
        assert len(buffer) + need <= len(wire), "the reader asked for more than was sent"
        buffer += wire[len(buffer) : len(buffer) + need]
    assert buffer == wire, "the reader stopped before the end of the reply"
    return buffer


# --- codes and sizes -------------------------------------------------------------------------


def test_codes_have_the_reference_values() -> None:
    assert [c.value for c in Command] == list(range(1, 10))
    assert (Command.CONNECT, Command.LIST_SESSIONS, Command.ATTACH_SESSION) == (1, 2, 3)
    assert (Command.GET_NEXT_INDEX, Command.GET_PACKET, Command.GET_METADATA) == (4, 5, 6)
    assert (Command.GET_NEW_STREAMS, Command.CREATE_SESSION, Command.DETACH_SESSION) == (7, 8, 9)
    assert (ConnectionType.COMMAND, ConnectionType.NOTIFICATION) == (1, 2)
    assert (Seek.BEGINNING, Seek.LAST) == (1, 2)
    assert (ViewerFlag.NEW_METADATA, ViewerFlag.NEW_STREAM) == (1, 2)
    assert [s.name for s in AttachStatus] == [
        "OK", "ALREADY", "UNK", "NOT_LIVE", "SEEK_ERR", "NO_SESSION"]
    assert [s.value for s in AttachStatus] == [1, 2, 3, 4, 5, 6]
    assert [(s.name, s.value) for s in IndexStatus] == [
        ("OK", 1), ("RETRY", 2), ("HUP", 3), ("ERR", 4), ("INACTIVE", 5), ("EOF", 6)]
    assert [(s.name, s.value) for s in PacketStatus] == [
        ("OK", 1), ("RETRY", 2), ("ERR", 3), ("EOF", 4)]
    assert [(s.name, s.value) for s in MetadataStatus] == [
        ("OK", 1), ("NO_NEW_METADATA", 2), ("ERR", 3)]
    assert [(s.name, s.value) for s in NewStreamsStatus] == [
        ("OK", 1), ("NO_NEW", 2), ("ERR", 3), ("HUP", 4)]
    assert [(s.name, s.value) for s in CreateSessionStatus] == [("OK", 1), ("ERR", 2)]
    assert [(s.name, s.value) for s in DetachStatus] == [("OK", 1), ("UNK", 2), ("ERR", 3)]
    # The live wire enum (`lttng_live_trace_format`) is not lttng's public one.
    assert [(f.name, f.value) for f in LiveTraceFormat] == [("CTF_1_8", 0), ("CTF_2", 1)]
    assert [(f.name, f.value) for f in TraceFormat] == [("CTF_1_8", 1), ("CTF_2", 2)]
    assert TraceFormat is relayd.TraceFormat  # one trace format for the whole relay


def test_protocol_minors() -> None:
    # lttng-relayd 2.15 and 2.16 announce 15; babeltrace2 2.0 sends 4, babeltrace2 2.1 sends 15.
    assert RELAY_VERSION_MINOR == 15
    assert (BABELTRACE_VERSION_MINOR, VIEWER_VERSION_MINOR) == (4, 15)
    assert TRACE_FORMAT_MINOR == 15
    assert Connect().minor == BABELTRACE_VERSION_MINOR  # a bare Connect speaks as babeltrace2 2.0


def test_struct_sizes_match_the_packed_abi() -> None:
    assert CommandHeader.FORMAT.size == 16
    assert Connect.FORMAT.size == 20
    assert SessionInfo.FORMAT_2_4.size == 339
    assert SessionInfo.FORMAT_2_15.size == 32
    assert StreamInfo.FORMAT.size == 4371
    assert AttachSession.FORMAT.size == 20
    assert AttachSessionReply.HEADER.size == 8
    assert IndexReply.FORMAT.size == 64
    assert GetPacket.FORMAT.size == 20
    assert PacketReply.HEADER.size == 12
    assert MetadataReply.HEADER.size == 12
    assert NewStreamsReply.HEADER.size == 8
    assert CreateSessionReply.FORMAT.size == 4
    assert DetachSessionReply.FORMAT.size == 4
    assert (PATH_MAX, NAME_MAX, HOST_NAME_MAX) == (4096, 255, 64)


def test_request_payload_sizes() -> None:
    assert REQUEST_PAYLOAD_SIZE == {
        Command.CONNECT: 20,
        Command.LIST_SESSIONS: 0,
        Command.ATTACH_SESSION: 20,
        Command.GET_NEXT_INDEX: 8,
        Command.GET_PACKET: 20,
        Command.GET_METADATA: 8,
        Command.GET_NEW_STREAMS: 8,
        Command.CREATE_SESSION: 0,
        Command.DETACH_SESSION: 8,
    }


def test_negotiated_minor_is_the_smaller() -> None:
    assert negotiated_minor(4, 13) == 4
    assert negotiated_minor(15, 13) == 13
    assert negotiated_minor(16, 15) == 15  # lttng's own test client sends its VERSION_MINOR


# --- exact bytes ------------------------------------------------------------------------------


def test_babeltrace_connect_request_bytes() -> None:
    wire = encode_request(Connect())
    assert wire == (
        struct.pack(">QII", 20, 1, 0)  # data_size, CONNECT, cmd_version
        + struct.pack(">QIII", 2**64 - 1, 2, 4, 1)  # all-ones id, 2.4, COMMAND
    )


def test_list_sessions_request_is_a_bare_header() -> None:
    assert encode_request(ListSessions()) == struct.pack(">QII", 0, 2, 0)
    assert encode_request(CreateSession()) == struct.pack(">QII", 0, 8, 0)


def test_attach_request_layout() -> None:
    payload = AttachSession(7, Seek.BEGINNING).encode()
    assert payload == struct.pack(">QQI", 7, 0, 1)
    assert encode_request(AttachSession(7))[:16] == struct.pack(">QII", 20, 3, 0)


def test_get_packet_request_layout() -> None:
    assert GetPacket(3, 4096, 262144).encode() == struct.pack(">QQI", 3, 4096, 262144)


def test_index_reply_layout() -> None:
    reply = IndexReply(IndexStatus.OK, ViewerFlag.NEW_METADATA | ViewerFlag.NEW_STREAM,
                       offset=1, packet_size=2, content_size=3, timestamp_begin=4,
                       timestamp_end=5, events_discarded=6, ctf_stream_id=7)
    assert reply.encode() == struct.pack(">7QII", 1, 2, 3, 4, 5, 6, 7, 1, 3)


def test_metadata_reply_layout_has_a_u64_length_first() -> None:
    assert MetadataReply(MetadataStatus.OK, b"abc").encode() == struct.pack(">QI", 3, 1) + b"abc"
    assert MetadataReply(MetadataStatus.NO_NEW_METADATA).encode() == struct.pack(">QI", 0, 2)


def test_packet_reply_layout() -> None:
    assert PacketReply(PacketStatus.OK, b"xy").encode() == struct.pack(">III", 1, 2, 0) + b"xy"
    assert PacketReply(PacketStatus.ERR).encode() == struct.pack(">III", 3, 0, 0)


def test_session_entry_2_4_layout() -> None:
    raw = SessionInfo(1, 100000, 0, 3, "vm", "s1").encode(4)
    assert len(raw) == 339
    assert raw[:20] == struct.pack(">QIII", 1, 100000, 0, 3)
    assert raw[20:84] == b"vm".ljust(64, b"\0")
    assert raw[84:] == b"s1".ljust(255, b"\0")


@pytest.mark.parametrize(("trace_format", "live_value"),
                         [(TraceFormat.CTF_1_8, 0), (TraceFormat.CTF_2, 1)])
def test_session_entry_2_15_layout(trace_format: TraceFormat, live_value: int) -> None:
    # 32 fixed bytes: id u64, live_timer, clients, streams, hostname_len, session_name_len,
    # trace_format (live enum), then the names without NUL or padding.
    raw = SessionInfo(1, 5, 1, 3, "vm", "s1", trace_format).encode(15)
    assert raw == struct.pack(">QIIIIII", 1, 5, 1, 3, 2, 2, live_value) + b"vms1"
    assert len(raw) == 32 + 2 + 2
    assert SessionInfo.decode(raw, 15) == SessionInfo(1, 5, 1, 3, "vm", "s1", trace_format)


def test_session_entry_2_15_strings_are_utf8_byte_lengths() -> None:
    raw = SessionInfo(9, 0, 0, 0, "hôte", "", TraceFormat.CTF_1_8).encode(15)
    assert raw[20:28] == struct.pack(">II", 5, 0)
    assert raw[32:] == "hôte".encode()


def test_session_entry_layout_follows_the_negotiated_minor() -> None:
    session = SessionInfo(1, 5, 0, 3, "vm", "s1")
    for minor in (4, 13, 14):
        assert len(session.encode(minor)) == 339
        assert SessionList.missing(struct.pack(">I", 1), minor) == 339
    for minor in (15, 16):
        assert len(session.encode(minor)) == 36
        assert SessionList.missing(struct.pack(">I", 1), minor) == 32


def test_session_entry_2_4_is_ctf_1_8() -> None:
    # Relays speaking < 15 never say the format: they only record CTF 1.8.
    raw = SessionInfo(1, 100000, 0, 3, "vm", "s1").encode(13)
    assert SessionInfo.decode(raw, 13).trace_format is TraceFormat.CTF_1_8


def test_stream_entry_layout() -> None:
    raw = StreamInfo(4, 2, True, "ust/uid/0/64-bit", "metadata").encode()
    assert len(raw) == 4371
    assert raw[:20] == struct.pack(">QQI", 4, 2, 1)
    assert raw[20:4116] == b"ust/uid/0/64-bit".ljust(4096, b"\0")
    assert raw[4116:] == b"metadata".ljust(255, b"\0")


def test_attach_reply_layout() -> None:
    stream = StreamInfo(1, 1, False, "kernel", "chan_0")
    raw = AttachSessionReply(AttachStatus.OK, (stream,)).encode()
    assert raw == struct.pack(">II", 1, 1) + stream.encode()


# --- round trips --------------------------------------------------------------------------

session_infos = st.builds(
    SessionInfo, U64, U32, U32, U32, text(HOST_NAME_MAX), text(NAME_MAX),
    st.just(TraceFormat.CTF_1_8),
)
session_infos_2_15 = st.builds(
    SessionInfo, U64, U32, U32, U32, text(HOST_NAME_MAX_2_15), text(SESSION_NAME_MAX_2_15),
    st.sampled_from(TraceFormat),
)
stream_infos = st.builds(StreamInfo, U64, U64, st.booleans(), text(PATH_MAX), text(NAME_MAX))
flags = st.integers(0, 2**32 - 1).map(ViewerFlag)
requests: st.SearchStrategy[Request] = st.one_of(
    st.builds(Connect, U64, U32, U32, U32),
    st.just(ListSessions()),
    st.just(CreateSession()),
    st.builds(AttachSession, U64, U32, U64),
    st.builds(GetNextIndex, U64),
    st.builds(GetPacket, U64, U64, U32),
    st.builds(GetMetadata, U64),
    st.builds(GetNewStreams, U64),
    st.builds(DetachSession, U64),
)


@given(requests)
def test_requests_round_trip_through_header_and_fixed_payload(request: Request) -> None:
    wire = encode_request(request)
    header = CommandHeader.decode(wire[:16])
    size = REQUEST_PAYLOAD_SIZE[Command(header.command)]
    assert header.data_size == size == len(wire) - 16
    assert decode_request(header.command, wire[16 : 16 + size]) == request


@given(U64, U32, U32)
def test_header_round_trip(data_size: int, command: int, version: int) -> None:
    header = CommandHeader(command, data_size, version)
    assert CommandHeader.decode(header.encode()) == header


@given(st.lists(session_infos, max_size=4))
def test_session_list_round_trip_2_4(sessions: list[SessionInfo]) -> None:
    reply = SessionList(tuple(sessions))
    wire = read_all(SessionList, reply.encode(4), 4)
    assert len(wire) == 4 + 339 * len(sessions)
    assert SessionList.decode(wire, 4) == reply


@given(st.lists(session_infos_2_15, max_size=4))
def test_session_list_round_trip_2_15(sessions: list[SessionInfo]) -> None:
    reply = SessionList(tuple(sessions))
    wire = read_all(SessionList, reply.encode(15), 15)
    assert len(wire) == 4 + sum(
        32 + len(s.hostname.encode()) + len(s.session_name.encode()) for s in sessions)
    assert SessionList.decode(wire, 15) == reply


@given(st.sampled_from(AttachStatus), st.lists(stream_infos, max_size=3))
def test_attach_reply_round_trip(status: AttachStatus, streams: list[StreamInfo]) -> None:
    reply = AttachSessionReply(status, tuple(streams))
    assert AttachSessionReply.decode(read_all(AttachSessionReply, reply.encode())) == reply


@given(st.sampled_from(NewStreamsStatus), st.lists(stream_infos, max_size=3))
def test_new_streams_reply_round_trip(status: NewStreamsStatus,
                                      streams: list[StreamInfo]) -> None:
    reply = NewStreamsReply(status, tuple(streams))
    assert NewStreamsReply.decode(read_all(NewStreamsReply, reply.encode())) == reply


@given(st.builds(IndexReply, st.sampled_from(IndexStatus), flags, U64, U64, U64, U64, U64, U64,
                 U64))
def test_index_reply_round_trip(reply: IndexReply) -> None:
    assert IndexReply.decode(read_all(IndexReply, reply.encode())) == reply


@given(st.sampled_from(PacketStatus), st.binary(max_size=300), flags)
def test_packet_reply_round_trip(status: PacketStatus, data: bytes, flag: ViewerFlag) -> None:
    reply = PacketReply(status, data if status == PacketStatus.OK else b"", flag)
    assert PacketReply.decode(read_all(PacketReply, reply.encode())) == reply


@given(st.sampled_from(MetadataStatus), st.binary(max_size=300))
def test_metadata_reply_round_trip(status: MetadataStatus, data: bytes) -> None:
    reply = MetadataReply(status, data if status == MetadataStatus.OK else b"")
    assert MetadataReply.decode(read_all(MetadataReply, reply.encode())) == reply


@given(st.sampled_from(CreateSessionStatus), st.sampled_from(DetachStatus))
def test_status_replies_round_trip(create: CreateSessionStatus, detach: DetachStatus) -> None:
    assert CreateSessionReply.decode(CreateSessionReply(create).encode()) == CreateSessionReply(
        create)
    assert DetachSessionReply.decode(DetachSessionReply(detach).encode()) == DetachSessionReply(
        detach)


@given(st.builds(Connect, U64, U32, U32, U32))
def test_connect_reply_round_trip(reply: Connect) -> None:
    assert Connect.decode(read_all(Connect, reply.encode())) == reply


# --- strings ------------------------------------------------------------------------------


def test_string_that_fills_its_field_is_refused_on_encode() -> None:
    assert len(SessionInfo(1, 0, 0, 0, "h" * 63, "s").encode(4)) == 339
    with pytest.raises(ValueError, match="does not fit"):
        SessionInfo(1, 0, 0, 0, "h" * 64, "s").encode(4)
    with pytest.raises(ValueError, match="does not fit"):
        SessionInfo(1, 0, 0, 0, "h", "s" * 255).encode(15)
    with pytest.raises(ValueError, match="does not fit"):
        StreamInfo(1, 1, False, "p" * 4096, "c").encode()
    with pytest.raises(ValueError, match="does not fit"):
        StreamInfo(1, 1, False, "p", "é" * 128).encode()  # 256 bytes in UTF-8


def test_string_with_nul_is_refused_on_encode() -> None:
    with pytest.raises(ValueError, match="NUL"):
        StreamInfo(1, 1, False, "a\0b", "c").encode()


def test_fixed_field_without_nul_is_a_protocol_error() -> None:
    raw = bytearray(SessionInfo(1, 0, 0, 0, "h", "s").encode(4))
    raw[20:84] = b"x" * 64
    with pytest.raises(ProtocolError, match="hostname is not NUL-terminated"):
        SessionInfo.decode(bytes(raw), 4)
    raw = bytearray(StreamInfo(1, 1, False, "p", "c").encode())
    raw[4116:] = b"c" * 255
    with pytest.raises(ProtocolError, match="channel name"):
        StreamInfo.decode(bytes(raw))


def test_bytes_after_the_nul_are_ignored() -> None:
    raw = bytearray(StreamInfo(1, 1, False, "p", "c").encode())
    raw[30:40] = b"garbage!!!"
    assert StreamInfo.decode(bytes(raw)).path_name == "p"


def test_invalid_utf8_is_a_protocol_error() -> None:
    raw = bytearray(StreamInfo(1, 1, False, "p", "c").encode())
    raw[20:22] = b"\xff\0"
    with pytest.raises(ProtocolError, match="UTF-8"):
        StreamInfo.decode(bytes(raw))


@pytest.mark.parametrize("minor", [4, 13, 14])
def test_ctf2_session_cannot_be_listed_to_an_old_viewer(minor: int) -> None:
    with pytest.raises(ValueError, match="CTF 2"):
        SessionInfo(1, 0, 0, 0, "h", "s", TraceFormat.CTF_2).encode(minor)


def test_2_15_entry_names_have_a_relay_session_limits() -> None:
    # No fixed field: a hostname of 64 bytes or more only fits the 2.15 layout.
    longest = SessionInfo(1, 0, 0, 0, "h" * 255, "s" * 254)
    assert SessionInfo.decode(longest.encode(15), 15) == longest
    with pytest.raises(ValueError, match="does not fit"):
        longest.encode(4)
    with pytest.raises(ValueError, match="does not fit"):
        SessionInfo(1, 0, 0, 0, "h" * 256, "s").encode(15)
    with pytest.raises(ValueError, match="does not fit"):
        SessionInfo(1, 0, 0, 0, "h", "s" * 255).encode(15)
    with pytest.raises(ValueError, match="NUL"):
        SessionInfo(1, 0, 0, 0, "h\0x", "s").encode(15)


def entry_2_15(host: bytes = b"vm", name: bytes = b"s1", live_format: int = 0,
               host_len: int | None = None, name_len: int | None = None) -> bytes:
    fixed = struct.pack(">QIIIIII", 1, 100, 0, 2,
                        len(host) if host_len is None else host_len,
                        len(name) if name_len is None else name_len, live_format)
    return fixed + host + name


@pytest.mark.parametrize(
    ("fixed", "message"),
    [
        (entry_2_15(host_len=256, host=b""), "hostname of 256 bytes, at most 255"),
        (entry_2_15(name_len=255, name=b""), "session name of 255 bytes, at most 254"),
        (entry_2_15(host_len=2**32 - 1, host=b""), "hostname of 4294967295 bytes"),
        (entry_2_15(name_len=2**32 - 1, name=b""), "session name of 4294967295 bytes"),
        (entry_2_15(live_format=2), "unknown trace format 2"),
        (entry_2_15(live_format=2**32 - 1), "unknown trace format 4294967295"),
    ],
)
def test_2_15_fixed_part_is_checked_before_the_names_are_read(fixed: bytes,
                                                              message: str) -> None:
    # Only the 32 fixed bytes have arrived: a reader must not be asked for the names.
    header = struct.pack(">I", 1)
    with pytest.raises(ProtocolError, match=message):
        SessionList.missing(header + fixed[:32], 15)
    with pytest.raises(ProtocolError, match=message):
        SessionInfo.missing(fixed[:32], 15)
    with pytest.raises(ProtocolError, match=message):
        SessionList.decode(header + fixed, 15)


def test_2_15_entries_are_read_piece_by_piece() -> None:
    second = entry_2_15(b"host2", b"session2", live_format=1)
    wire = struct.pack(">I", 2) + entry_2_15() + second
    assert SessionList.missing(wire[:4], 15) == 32
    assert SessionList.missing(wire[:20], 15) == 16  # the rest of the first fixed part
    assert SessionList.missing(wire[:36], 15) == 4  # first names
    assert SessionList.missing(wire[:40], 15) == 32  # second fixed part
    assert SessionList.missing(wire[:72], 15) == 13  # second names
    assert SessionList.missing(wire, 15) == 0
    assert [s.trace_format for s in SessionList.decode(wire, 15).sessions] == [
        TraceFormat.CTF_1_8, TraceFormat.CTF_2]


@pytest.mark.parametrize("cut", [1, 31, 32, 33, 35])
def test_truncated_2_15_entries_are_protocol_errors(cut: int) -> None:
    entry = entry_2_15()
    with pytest.raises(ProtocolError):
        SessionInfo.decode(entry[:cut], 15)
    with pytest.raises(ProtocolError, match="missing"):
        SessionList.decode(struct.pack(">I", 1) + entry[:cut], 15)
    with pytest.raises(ProtocolError, match="missing"):
        SessionList.decode(struct.pack(">I", 2) + entry, 15)  # one entry announced too many


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (entry_2_15(host=b"v\0"), "NUL"),
        (entry_2_15(name=b"\xff"), "UTF-8"),
    ],
)
def test_bad_2_15_names_are_protocol_errors(entry: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        SessionList.decode(struct.pack(">I", 1) + entry, 15)


def test_2_15_entry_with_trailing_bytes_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="expected 36"):
        SessionInfo.decode(entry_2_15() + b"x", 15)
    with pytest.raises(ProtocolError, match="trailing"):
        SessionList.decode(struct.pack(">I", 1) + entry_2_15() + b"x", 15)


# --- malformed replies and requests ----------------------------------------------------------


def test_unknown_command_carries_the_unk_reply() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_request(10, b"")
    assert caught.value.reply == UNKNOWN_COMMAND_REPLY == struct.pack(">I", 11)


def test_request_payload_of_the_wrong_size() -> None:
    with pytest.raises(ProtocolError, match="expected 8"):
        decode_request(Command.GET_NEXT_INDEX, b"\0" * 7)
    with pytest.raises(ProtocolError):
        decode_request(Command.LIST_SESSIONS, b"\0")


def test_request_fields_the_relay_judges_are_not_rejected() -> None:
    attach = decode_request(Command.ATTACH_SESSION, struct.pack(">QQI", 1, 0, 9))
    assert attach == AttachSession(1, 9)
    connect = decode_request(Command.CONNECT, struct.pack(">QIII", 0, 3, 0, 7))
    assert connect == Connect(0, 3, 0, 7)


@pytest.mark.parametrize(
    ("reply_type", "wire"),
    [
        (IndexReply, struct.pack(">7QII", 0, 0, 0, 0, 0, 0, 0, 7, 0)),
        (PacketReply, struct.pack(">III", 9, 0, 0)),
        (MetadataReply, struct.pack(">QI", 0, 0)),
        (AttachSessionReply, struct.pack(">II", 7, 0)),
        (NewStreamsReply, struct.pack(">II", 5, 0)),
        (CreateSessionReply, struct.pack(">I", 3)),
        (DetachSessionReply, struct.pack(">I", 0)),
    ],
)
def test_unknown_reply_status_is_a_protocol_error(reply_type: Any, wire: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"unknown .* status"):
        reply_type.decode(wire, 4)


def test_error_replies_carry_no_payload() -> None:
    # A non-OK GET_PACKET / GET_METADATA reply is a bare header, whatever its `len` says.
    assert PacketReply.missing(struct.pack(">III", 3, 100, 0)) == 0
    assert MetadataReply.missing(struct.pack(">QI", 100, 2)) == 0
    with pytest.raises(ValueError, match="only an OK"):
        PacketReply(PacketStatus.ERR, b"x").encode()
    with pytest.raises(ValueError, match="only an OK"):
        MetadataReply(MetadataStatus.ERR, b"x").encode()


def test_missing_follows_announced_lengths() -> None:
    assert PacketReply.missing(b"") == 12
    assert PacketReply.missing(struct.pack(">III", 1, 100, 0)) == 100
    assert MetadataReply.missing(struct.pack(">QI", 5, 1) + b"ab") == 3
    assert AttachSessionReply.missing(struct.pack(">II", 1, 2)) == 2 * 4371
    assert SessionList.missing(struct.pack(">I", 2), 4) == 2 * 339
    assert SessionList.missing(struct.pack(">I", 1), 15) == 32


def test_absurd_counts_and_lengths_are_refused() -> None:
    with pytest.raises(ProtocolError, match="records"):
        AttachSessionReply.missing(struct.pack(">II", 1, 2**32 - 1))
    with pytest.raises(ProtocolError, match="records"):
        SessionList.missing(struct.pack(">I", 2**31), 4)
    with pytest.raises(ProtocolError, match="records"):
        SessionList.missing(struct.pack(">I", 2**32 - 1), 15)
    with pytest.raises(ProtocolError, match="too large"):
        MetadataReply.missing(struct.pack(">QI", 2**40, 1))


def test_truncated_and_oversized_replies() -> None:
    wire = IndexReply(IndexStatus.OK).encode()
    with pytest.raises(ProtocolError):
        IndexReply.decode(wire[:-1])
    with pytest.raises(ProtocolError):
        IndexReply.decode(wire + b"\0")
    stream_reply = AttachSessionReply(AttachStatus.OK,
                                      (StreamInfo(1, 1, False, "p", "c"),)).encode()
    with pytest.raises(ProtocolError):
        AttachSessionReply.decode(stream_reply[:-1])
    with pytest.raises(ProtocolError, match="trailing"):
        SessionList.decode(SessionList(()).encode() + b"\0")


def test_unknown_flag_bits_are_kept() -> None:
    reply = IndexReply.decode(struct.pack(">7QII", 0, 0, 0, 0, 0, 0, 0, 1, 0x81))
    assert reply.flags & ViewerFlag.NEW_METADATA
    assert int(reply.flags) == 0x81


def test_a_fixed_message_names_each_of_its_fields_once_in_wire_order() -> None:
    with pytest.raises(TypeError, match="FIELDS"):
        @dataclasses.dataclass(frozen=True, slots=True)
        class Broken(FixedMessage):
            NAME = "BROKEN"
            FORMAT = struct.Struct(">QI")
            FIELDS = ("first",)  # `second` has no place on the wire
            first: int
            second: int


def test_fixed_messages_keep_their_wire_order_apart_from_their_constructor_s() -> None:
    # ATTACH_SESSION sends session_id, offset, seek; it is built as (session_id, seek, offset).
    encoded = AttachSession(7, Seek.BEGINNING, 9).encode()
    assert encoded == struct.pack(">QQI", 7, 9, Seek.BEGINNING)
    assert AttachSession.decode(encoded) == AttachSession(7, Seek.BEGINNING, 9)
