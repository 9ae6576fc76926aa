"""The relayd control/data codec: exact struct sizes, field offsets, round trips, replies, errors.

Byte layouts are those of lttng-tools 2.13.9 `sessiond-comm/relayd.h` (big-endian, packed),
plus the 2.15 CREATE_SESSION of `relayd.hpp @ v2.16.0-rc2` (docs/protocol/protocol-2.15.md).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrelayd.protocol.relayd import (
    CONTROL_HEADER_SIZE,
    DATA_HEADER_SIZE,
    MAX_CONTROL_PAYLOAD,
    MAX_REQUEST_PAYLOAD,
    RELAYD_VERSION_MAJOR,
    RELAYD_VERSION_MINOR,
    UINT64_MAX,
    AddStream,
    BeginDataPending,
    CloseStream,
    CloseTraceChunk,
    Command,
    ControlHeader,
    CreateSession,
    CreateTraceChunk,
    DataHeader,
    DataPending,
    EndDataPending,
    GetConfiguration,
    ProtocolError,
    QuiescentControl,
    ResetMetadata,
    ReturnCode,
    RotateStreams,
    SendIndex,
    SendMetadataHeader,
    StartData,
    StreamRotation,
    StreamsSent,
    TraceChunkExists,
    TraceFormat,
    Version,
    close_trace_chunk_reply,
    create_session_reply_2_11,
    decode_create_session_reply_2_11,
    decode_generic_reply,
    decode_status_reply,
    encode_request,
    expected_reply_size,
    generic_reply,
    get_configuration_reply,
    status_session_reply,
    status_stream_reply,
    trace_chunk_exists_reply,
    version_reply,
)

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, UINT64_MAX)
uuids = st.binary(min_size=16, max_size=16)
trace_formats = st.sampled_from(TraceFormat)
# Peers only ever send 2.1 .. 2.15 (a 2.16 peer announces 15 too); minors are grouped by the
# CREATE_SESSION layout they select.
MINORS_WITHOUT_CREATE_PAYLOAD = (0, 1, 2, 3)
MINORS_2_4 = (4, 5, 8, 10)
MINORS_2_11 = (11, 12, 13, 14)
MINORS_2_15 = (15, 16)


class Request(Protocol):
    def encode(self, minor: int) -> bytes: ...


def c_strings(max_bytes: int, *, min_size: int = 0) -> st.SearchStrategy[str]:
    """Text a C string can carry: no NUL, at most `max_bytes` bytes once UTF-8 encoded."""
    return st.text(
        st.characters(codec="utf-8", exclude_characters="\0"),
        min_size=min_size,
        max_size=max_bytes,
    ).filter(lambda text: len(text.encode()) <= max_bytes)


def be32(value: int) -> bytes:
    return struct.pack(">I", value)


def be64(value: int) -> bytes:
    return struct.pack(">Q", value)


# --------------------------------------------------------------------------- headers


def test_control_header_is_24_bytes_circuit_size_command_version() -> None:
    raw = ControlHeader(command=Command.VERSION, data_size=8).encode()

    assert CONTROL_HEADER_SIZE == 24
    assert raw == be64(0) + be64(8) + be32(5) + be32(0)


def test_data_header_is_32_bytes_circuit_stream_seq_size_padding() -> None:
    raw = DataHeader(stream_id=3, net_seq_num=4, data_size=5, padding_size=6).encode()

    assert DATA_HEADER_SIZE == 32
    assert raw == be64(0) + be64(3) + be64(4) + be32(5) + be32(6)


@given(command=u32, data_size=u64, circuit_id=u64, command_version=u32)
def test_control_header_round_trip(command: int, data_size: int, circuit_id: int,
                                   command_version: int) -> None:
    header = ControlHeader(command, data_size, circuit_id, command_version)

    assert ControlHeader.decode(header.encode()) == header


@given(stream_id=u64, net_seq_num=u64, data_size=u32, padding_size=u32, circuit_id=u64)
def test_data_header_round_trip(stream_id: int, net_seq_num: int, data_size: int,
                                padding_size: int, circuit_id: int) -> None:
    header = DataHeader(stream_id, net_seq_num, data_size, padding_size, circuit_id)

    assert DataHeader.decode(header.encode()) == header


def test_encode_request_is_header_then_payload() -> None:
    raw = encode_request(Command.QUIESCENT_CONTROL, be64(7))

    assert raw == ControlHeader(Command.QUIESCENT_CONTROL, 8).encode() + be64(7)


def test_command_codes_are_those_of_lttng() -> None:
    assert {command.name: int(command) for command in Command} == {
        "ADD_STREAM": 1, "CREATE_SESSION": 2, "START_DATA": 3, "UPDATE_SYNC_INFO": 4,
        "VERSION": 5, "SEND_METADATA": 6, "CLOSE_STREAM": 7, "DATA_PENDING": 8,
        "QUIESCENT_CONTROL": 9, "BEGIN_DATA_PENDING": 10, "END_DATA_PENDING": 11,
        "ADD_INDEX": 12, "SEND_INDEX": 13, "CLOSE_INDEX": 14, "LIST_SESSIONS": 15,
        "STREAMS_SENT": 16, "RESET_METADATA": 17, "ROTATE_STREAMS": 18,
        "CREATE_TRACE_CHUNK": 19, "CLOSE_TRACE_CHUNK": 20, "TRACE_CHUNK_EXISTS": 21,
        "GET_CONFIGURATION": 22,
    }


def test_return_codes_are_those_of_lttng() -> None:
    assert (ReturnCode.OK, ReturnCode.UNK, ReturnCode.FATAL, ReturnCode.NOMEM) == (10, 11, 25, 26)
    assert (ReturnCode.INVALID, ReturnCode.INVALID_PROTOCOL) == (97, 152)
    assert int(ReturnCode.FILE_CREATION_ERROR) == 153


def test_control_payload_limit_is_128_mib() -> None:
    assert MAX_CONTROL_PAYLOAD == 134_217_728


# --------------------------------------------------------------------------- payload sizes


@pytest.mark.parametrize(
    ("request_", "minor", "size"),
    [
        (Version(2, 13), 13, 8),
        (GetConfiguration(0), 13, 8),
        (CreateSession("s", "h"), 3, 0),
        (CreateSession("s", "h"), 4, 327),
        (CreateSession("s", "h"), 10, 327),
        (CreateSession("", "", ""), 11, 59 + 1 + 1 + 1),
        (CreateSession("", "", ""), 14, 59 + 1 + 1 + 1),
        (CreateSession("", "", ""), 15, 63 + 1 + 1 + 1),
        (CreateSession("", "", "", trace_format=TraceFormat.CTF_2), 13, 59 + 1 + 1 + 1),
        (AddStream("c", "p"), 1, 4360),
        (AddStream("c", "p"), 2, 4376),
        (AddStream("c", "p"), 10, 4376),
        (AddStream("", ""), 11, 32 + 1 + 1),
        (StreamsSent(), 13, 0),
        (StartData(), 13, 0),
        (SendMetadataHeader(1, 0), 13, 12),
        (CloseStream(1, 2), 13, 16),
        (DataPending(1, 2), 13, 16),
        (QuiescentControl(1), 13, 8),
        (BeginDataPending(1), 13, 8),
        (EndDataPending(1), 13, 8),
        (SendIndex(*range(8)), 7, 64),
        (SendIndex(*range(8)), 8, 80),
        (ResetMetadata(1, 2), 13, 16),
        (CreateTraceChunk(0, 0), 13, 20),
        (CloseTraceChunk(0, 0, 0), 13, 21),
        (TraceChunkExists(0), 13, 8),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, int) else str(value),
)
def test_encoded_payload_size(request_: Request, minor: int, size: int) -> None:
    assert len(request_.encode(minor)) == size


@pytest.mark.parametrize(("padding", "fixed"), [(0, 13), (3, 16), (7, 20)])
@pytest.mark.parametrize("count", [0, 1, 5])
def test_rotate_streams_size_is_fixed_part_plus_16_per_stream(padding: int, fixed: int,
                                                             count: int) -> None:
    request = RotateStreams(1, tuple(StreamRotation(i, i) for i in range(count)))

    assert len(request.encode(padding=padding)) == fixed + 16 * count


def test_rotate_streams_is_encoded_like_x86_64_peers_by_default() -> None:
    assert len(RotateStreams(None, ()).encode()) == 20


# --------------------------------------------------------------------------- field offsets


def test_create_session_2_4_layout() -> None:
    raw = CreateSession("mysess", "myhost", live_timer=0x01020304, snapshot=True).encode(4)

    assert raw[:255] == b"mysess".ljust(255, b"\0")
    assert raw[255:319] == b"myhost".ljust(64, b"\0")
    assert raw[319:323] == be32(0x01020304)
    assert raw[323:327] == be32(1)


def test_create_session_2_11_layout() -> None:
    request = CreateSession(
        session_name="s", hostname="hh", base_path="bbb", live_timer=0x01020304, snapshot=True,
        session_name_contains_creation_time=True, sessiond_uuid=bytes(range(1, 17)),
        sessiond_session_id=0x1112131415161718, creation_time=0x2122232425262728,
        current_chunk_id=0x3132333435363738,
    )

    raw = request.encode(11)

    assert raw[0:4] == be32(2)  # session_name_len, NUL included
    assert raw[4:8] == be32(3)  # hostname_len
    assert raw[8:12] == be32(4)  # base_path_len
    assert raw[12:16] == be32(0x01020304)
    assert raw[16] == 1  # snapshot
    assert raw[17] == 1  # session_name_contains_creation_time
    assert raw[18:34] == bytes(range(1, 17))
    assert raw[34:42] == be64(0x1112131415161718)
    assert raw[42:50] == be64(0x2122232425262728)
    assert raw[50] == 1  # current_chunk_id.is_set
    assert raw[51:59] == be64(0x3132333435363738)
    assert raw[59:] == b"s\0hh\0bbb\0"


def test_create_session_2_15_fixed_part_is_63_bytes() -> None:
    assert CreateSession.FORMAT_2_11.size == 59
    assert CreateSession.FORMAT_2_15.size == 63


@pytest.mark.parametrize("trace_format", list(TraceFormat), ids=lambda f: f.label)
def test_create_session_2_15_layout_is_the_2_11_fixed_part_then_the_trace_format(
        trace_format: TraceFormat) -> None:
    request = CreateSession(
        session_name="s", hostname="hh", base_path="bbb", live_timer=0x01020304, snapshot=True,
        session_name_contains_creation_time=True, sessiond_uuid=bytes(range(1, 17)),
        sessiond_session_id=0x1112131415161718, creation_time=0x2122232425262728,
        current_chunk_id=0x3132333435363738, trace_format=trace_format,
    )

    raw = request.encode(15)

    assert raw[:59] == request.encode(13)[:59]
    assert raw[59:63] == be32(trace_format)  # 1 = CTF 1.8, 2 = CTF 2: lttng's public values
    assert raw[63:] == b"s\0hh\0bbb\0"


def test_trace_format_values_are_lttng_public_ones() -> None:
    assert (TraceFormat.CTF_1_8, TraceFormat.CTF_2) == (1, 2)
    assert (TraceFormat.CTF_1_8.label, TraceFormat.CTF_2.label) == ("ctf-1.8", "ctf-2")


@pytest.mark.parametrize("minor", MINORS_2_11)
def test_create_session_before_2_15_carries_no_trace_format(minor: int) -> None:
    request = CreateSession("s", "h", sessiond_uuid=bytes(range(16)),
                            trace_format=TraceFormat.CTF_2)

    assert CreateSession.decode(request.encode(minor), minor).trace_format is TraceFormat.CTF_1_8


def test_create_session_2_11_without_current_chunk_leaves_is_set_clear() -> None:
    raw = CreateSession("s", "h", sessiond_uuid=bytes(range(16))).encode(11)

    assert raw[50:59] == bytes(9)


def test_add_stream_2_2_layout() -> None:
    raw = AddStream("channel0_0", "/host/sess/ust", 0x0102, 0x0304).encode(2)

    assert raw[:264] == b"channel0_0".ljust(264, b"\0")
    assert raw[264:4360] == b"/host/sess/ust".ljust(4096, b"\0")
    assert raw[4360:4368] == be64(0x0102)
    assert raw[4368:4376] == be64(0x0304)


def test_add_stream_2_11_layout() -> None:
    raw = AddStream("channel0_0", "ust/uid/1000/64-bit", 0x0102, 0x0304, 0x0506).encode(11)

    assert raw[0:4] == be32(len("channel0_0") + 1)
    assert raw[4:8] == be32(len("ust/uid/1000/64-bit") + 1)
    assert raw[8:16] == be64(0x0102)  # tracefile_size
    assert raw[16:24] == be64(0x0304)  # tracefile_count
    assert raw[24:32] == be64(0x0506)  # trace_chunk_id
    assert raw[32:] == b"channel0_0\0ust/uid/1000/64-bit\0"


def test_send_index_layout_is_ten_u64_in_wire_order() -> None:
    index = SendIndex(*range(1, 11))

    assert index.encode(8) == b"".join(be64(value) for value in range(1, 11))
    assert index.encode(7) == b"".join(be64(value) for value in range(1, 9))


@pytest.mark.parametrize(("padding", "value_offset"), [(0, 5), (3, 8), (7, 12)])
def test_rotate_streams_layout(padding: int, value_offset: int) -> None:
    raw = RotateStreams(0x0A0B, (StreamRotation(1, 2), StreamRotation(3, 4))).encode(
        padding=padding)

    assert raw[0:4] == be32(2)
    assert raw[4] == 1  # new_chunk_id.is_set
    assert raw[5:value_offset] == bytes(padding)
    assert raw[value_offset : value_offset + 8] == be64(0x0A0B)
    entries = raw[value_offset + 8 :]
    assert entries == be64(1) + be64(2) + be64(3) + be64(4)


def test_create_trace_chunk_layout() -> None:
    raw = CreateTraceChunk(5, 0x0102, "snap-1").encode()

    assert raw == be64(5) + be64(0x0102) + be32(7) + b"snap-1\0"


def test_close_trace_chunk_layout() -> None:
    assert CloseTraceChunk(5, 0x0102, 2).encode() == be64(5) + be64(0x0102) + b"\x01" + be32(2)
    assert CloseTraceChunk(5, 0x0102, None).encode() == be64(5) + be64(0x0102) + bytes(5)


def test_send_metadata_header_layout() -> None:
    assert SendMetadataHeader(7, 9).encode() == be64(7) + be32(9)


# --------------------------------------------------------------------------- round trips


@given(major=u32, minor=u32)
def test_version_round_trip(major: int, minor: int) -> None:
    assert Version.decode(Version(major, minor).encode()) == Version(major, minor)


@given(flags=u64)
def test_get_configuration_round_trip(flags: int) -> None:
    assert GetConfiguration.decode(GetConfiguration(flags).encode()) == GetConfiguration(flags)


@pytest.mark.parametrize("minor", MINORS_WITHOUT_CREATE_PAYLOAD)
def test_create_session_before_2_4_carries_nothing(minor: int) -> None:
    assert CreateSession.decode(b"", minor) == CreateSession()


@pytest.mark.parametrize("minor", MINORS_2_4)
@given(name=c_strings(254), host=c_strings(63), live_timer=u32, snapshot=st.booleans())
def test_create_session_2_4_round_trip(minor: int, name: str, host: str, live_timer: int,
                                       snapshot: bool) -> None:
    request = CreateSession(name, host, live_timer=live_timer, snapshot=snapshot)

    assert CreateSession.decode(request.encode(minor), minor) == request


@pytest.mark.parametrize("minor", MINORS_2_11)
@given(
    name=c_strings(254), host=c_strings(63), base=c_strings(200), live_timer=u32,
    snapshot=st.booleans(), has_time=st.booleans(), uuid=uuids, session_id=u64,
    creation_time=u64, chunk_id=st.none() | u64,
)
def test_create_session_2_11_round_trip(minor: int, name: str, host: str, base: str,
                                        live_timer: int, snapshot: bool, has_time: bool,
                                        uuid: bytes, session_id: int, creation_time: int,
                                        chunk_id: int | None) -> None:
    request = CreateSession(name, host, base, live_timer, snapshot, has_time, uuid, session_id,
                            creation_time, chunk_id)

    assert CreateSession.decode(request.encode(minor), minor) == request


@pytest.mark.parametrize("minor", MINORS_2_15)
@given(
    name=c_strings(254), host=c_strings(63), base=c_strings(200), live_timer=u32,
    snapshot=st.booleans(), has_time=st.booleans(), uuid=uuids, session_id=u64,
    creation_time=u64, chunk_id=st.none() | u64, trace_format=trace_formats,
)
def test_create_session_2_15_round_trip(minor: int, name: str, host: str, base: str,
                                        live_timer: int, snapshot: bool, has_time: bool,
                                        uuid: bytes, session_id: int, creation_time: int,
                                        chunk_id: int | None, trace_format: TraceFormat) -> None:
    request = CreateSession(name, host, base, live_timer, snapshot, has_time, uuid, session_id,
                            creation_time, chunk_id, trace_format)

    assert CreateSession.decode(request.encode(minor), minor) == request


@pytest.mark.parametrize("minor", [1])
@given(channel=c_strings(263), path=c_strings(254))
def test_add_stream_2_1_round_trip(minor: int, channel: str, path: str) -> None:
    request = AddStream(channel, path)

    assert AddStream.decode(request.encode(minor), minor) == request


@pytest.mark.parametrize("minor", [2, 4, 10])
@given(channel=c_strings(263), path=c_strings(254), size=u64, count=u64)
def test_add_stream_2_2_round_trip(minor: int, channel: str, path: str, size: int,
                                   count: int) -> None:
    request = AddStream(channel, path, size, count)

    assert AddStream.decode(request.encode(minor), minor) == request


@pytest.mark.parametrize("minor", MINORS_2_11)
@given(channel=c_strings(263), path=c_strings(254), size=u64, count=u64, chunk_id=u64)
def test_add_stream_2_11_round_trip(minor: int, channel: str, path: str, size: int, count: int,
                                    chunk_id: int) -> None:
    request = AddStream(channel, path, size, count, chunk_id)

    assert AddStream.decode(request.encode(minor), minor) == request


@given(stream_id=u64, padding=u32)
def test_send_metadata_header_round_trip(stream_id: int, padding: int) -> None:
    header = SendMetadataHeader(stream_id, padding)

    assert SendMetadataHeader.decode(header.encode() + b"metadata bytes") == header


@pytest.mark.parametrize("message_type", [CloseStream, DataPending, ResetMetadata])
@given(first=u64, second=u64)
def test_two_u64_requests_round_trip(
    message_type: type[CloseStream] | type[DataPending] | type[ResetMetadata],
    first: int, second: int,
) -> None:
    request = message_type(first, second)

    assert message_type.decode(request.encode()) == request


@pytest.mark.parametrize(
    "message_type", [QuiescentControl, BeginDataPending, EndDataPending, TraceChunkExists])
@given(value=u64)
def test_one_u64_requests_round_trip(
    message_type: type[QuiescentControl] | type[BeginDataPending] | type[EndDataPending]
    | type[TraceChunkExists],
    value: int,
) -> None:
    request = message_type(value)

    assert message_type.decode(request.encode()) == request


@pytest.mark.parametrize("message_type", [StreamsSent, StartData])
def test_payload_less_requests_ignore_their_payload(
        message_type: type[StreamsSent] | type[StartData]) -> None:
    assert message_type.decode(b"ignored") == message_type()
    assert message_type().encode() == b""


@pytest.mark.parametrize("minor", [8, 13])
@given(fields=st.lists(u64, min_size=10, max_size=10))
def test_send_index_1_1_round_trip(minor: int, fields: list[int]) -> None:
    index = SendIndex(*fields)

    assert SendIndex.decode(index.encode(minor), minor) == index


@pytest.mark.parametrize("minor", [4, 7])
@given(fields=st.lists(u64, min_size=8, max_size=8))
def test_send_index_1_0_round_trip_has_no_instance_id_nor_packet_seq_num(
        minor: int, fields: list[int]) -> None:
    decoded = SendIndex.decode(SendIndex(*fields).encode(minor), minor)

    assert decoded == SendIndex(*fields)
    assert decoded.stream_instance_id == decoded.packet_seq_num == UINT64_MAX


def test_send_index_with_zero_packet_size_is_a_beacon() -> None:
    assert SendIndex(1, 2, 0, 0, 3, 4, 0, 5).is_beacon
    assert not SendIndex(1, 2, 8, 8, 3, 4, 0, 5).is_beacon


@pytest.mark.parametrize("padding", RotateStreams.PADDINGS)
@given(
    new_chunk_id=st.none() | u64,
    streams=st.lists(st.builds(StreamRotation, u64, u64), max_size=8).map(tuple),
)
def test_rotate_streams_round_trip_for_every_sender_abi(
        padding: int, new_chunk_id: int | None, streams: tuple[StreamRotation, ...]) -> None:
    request = RotateStreams(new_chunk_id, streams)

    assert RotateStreams.decode(request.encode(padding=padding)) == request


def test_rotate_streams_value_is_ignored_when_not_set() -> None:
    raw = be32(0) + b"\x00" + bytes(7) + be64(42)

    assert RotateStreams.decode(raw) == RotateStreams(None, ())


@given(chunk_id=u64, timestamp=u64, name=st.none() | c_strings(254))
def test_create_trace_chunk_round_trip(chunk_id: int, timestamp: int, name: str | None) -> None:
    request = CreateTraceChunk(chunk_id, timestamp, name)

    assert CreateTraceChunk.decode(request.encode()) == request


@given(chunk_id=u64, timestamp=u64, command=st.none() | u32)
def test_close_trace_chunk_round_trip(chunk_id: int, timestamp: int, command: int | None) -> None:
    request = CloseTraceChunk(chunk_id, timestamp, command)

    assert CloseTraceChunk.decode(request.encode()) == request


def test_fixed_size_requests_accept_extra_trailing_bytes() -> None:
    assert Version.decode(Version(2, 13).encode() + b"extra") == Version(2, 13)
    assert CloseStream.decode(CloseStream(1, 2).encode() + bytes(9)) == CloseStream(1, 2)
    assert SendIndex.decode(SendIndex(*range(10)).encode(8) + bytes(3), 8) == SendIndex(*range(10))


def test_names_stop_at_their_first_nul_as_in_c() -> None:
    raw = be64(0) + be64(0) + be32(6) + b"ab\0cd\0"

    assert CreateTraceChunk.decode(raw).override_name == "ab"


# --------------------------------------------------------------------------- decode errors


def _create_session_2_11(name: bytes = b"s\0", host: bytes = b"h\0", base: bytes = b"\0", *,
                         lengths: tuple[int, int, int] | None = None) -> bytes:
    name_len, host_len, base_len = lengths or (len(name), len(host), len(base))
    fixed = struct.pack(">IIIIBB16sQQBQ", name_len, host_len, base_len, 0, 0, 0,
                        bytes(range(16)), 1, 2, 0, 0)
    return fixed + name + host + base


def _create_session_2_15(name: bytes = b"s\0", host: bytes = b"h\0", base: bytes = b"\0", *,
                         lengths: tuple[int, int, int] | None = None,
                         trace_format: int = TraceFormat.CTF_1_8) -> bytes:
    name_len, host_len, base_len = lengths or (len(name), len(host), len(base))
    fixed = struct.pack(">IIIIBB16sQQBQI", name_len, host_len, base_len, 0, 0, 0,
                        bytes(range(16)), 1, 2, 0, 0, trace_format)
    return fixed + name + host + base


def _add_stream_2_11(channel: bytes = b"c\0", path: bytes = b"p\0", *,
                     lengths: tuple[int, int] | None = None) -> bytes:
    channel_len, path_len = lengths or (len(channel), len(path))
    return struct.pack(">IIQQQ", channel_len, path_len, 0, 0, 0) + channel + path


@pytest.mark.parametrize(
    ("decode", "payload", "minor"),
    [
        (Version.decode, bytes(7), 13),
        (GetConfiguration.decode, bytes(7), 13),
        (CreateSession.decode, bytes(326), 4),
        (CreateSession.decode, bytes(58), 11),
        (CreateSession.decode, bytes(58), 14),
        (CreateSession.decode, bytes(62), 15),
        (AddStream.decode, bytes(4359), 1),
        (AddStream.decode, bytes(4375), 2),
        (AddStream.decode, bytes(31), 11),
        (SendMetadataHeader.decode, bytes(11), 13),
        (CloseStream.decode, bytes(15), 13),
        (DataPending.decode, bytes(15), 13),
        (ResetMetadata.decode, bytes(15), 13),
        (QuiescentControl.decode, bytes(7), 13),
        (BeginDataPending.decode, bytes(7), 13),
        (EndDataPending.decode, bytes(7), 13),
        (TraceChunkExists.decode, bytes(7), 13),
        (SendIndex.decode, bytes(63), 7),
        (SendIndex.decode, bytes(79), 8),
        (RotateStreams.decode, bytes(3), 13),
        (CreateTraceChunk.decode, bytes(19), 13),
        (CloseTraceChunk.decode, bytes(20), 13),
    ],
    ids=lambda value: value.__qualname__ if callable(value) else None,
)
def test_short_payload_is_a_protocol_error(decode: Callable[[bytes, int], object],
                                           payload: bytes, minor: int) -> None:
    with pytest.raises(ProtocolError):
        decode(payload, minor)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_create_session_2_11(b"", lengths=(0, 2, 1)), id="empty session name"),
        pytest.param(_create_session_2_11(b"x" * 255 + b"\0"), id="session name of 256 bytes"),
        pytest.param(_create_session_2_11(host=b"h" * 256 + b"\0"), id="hostname of 257 bytes"),
        pytest.param(_create_session_2_11(base=b"b" * 4096 + b"\0"), id="base path of 4097"),
        pytest.param(_create_session_2_11(b"ss"), id="session name not NUL-terminated"),
        pytest.param(_create_session_2_11(host=b"hh"), id="hostname not NUL-terminated"),
        pytest.param(_create_session_2_11(base=b"bb"), id="base path not NUL-terminated"),
        pytest.param(_create_session_2_11(lengths=(2, 2, 9)), id="names beyond the payload"),
        pytest.param(_create_session_2_11(b"\xff\0"), id="session name not UTF-8"),
    ],
)
def test_malformed_create_session_2_11_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        CreateSession.decode(payload, 11)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_create_session_2_15(b"", lengths=(0, 2, 1)), id="empty session name"),
        pytest.param(_create_session_2_15(b"x" * 255 + b"\0"), id="session name of 256 bytes"),
        pytest.param(_create_session_2_15(host=b"h" * 256 + b"\0"), id="hostname of 257 bytes"),
        pytest.param(_create_session_2_15(base=b"b" * 4096 + b"\0"), id="base path of 4097"),
        pytest.param(_create_session_2_15(b"ss"), id="session name not NUL-terminated"),
        pytest.param(_create_session_2_15(host=b"hh"), id="hostname not NUL-terminated"),
        pytest.param(_create_session_2_15(base=b"bb"), id="base path not NUL-terminated"),
        pytest.param(_create_session_2_15(lengths=(2, 2, 9)), id="names beyond the payload"),
        pytest.param(_create_session_2_15(b"\xff\0"), id="session name not UTF-8"),
        pytest.param(_create_session_2_11(), id="2.11 shape"),
    ],
)
def test_malformed_create_session_2_15_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        CreateSession.decode(payload, 15)


@pytest.mark.parametrize("trace_format", [0, 3, 0x100, 0x0100_0000, 0xFFFF_FFFF],
                         ids=["default (0)", "3", "0x100", "1 little-endian", "0xffffffff"])
def test_create_session_2_15_with_an_unknown_trace_format_is_a_protocol_error(
        trace_format: int) -> None:
    # lttng-relayd refuses anything but 1 and 2: DEFAULT (0) is resolved by the sessiond.
    with pytest.raises(ProtocolError, match="trace format"):
        CreateSession.decode(_create_session_2_15(trace_format=trace_format), 15)


@pytest.mark.parametrize("trace_format", list(TraceFormat), ids=lambda f: f.label)
def test_create_session_2_15_decodes_the_trace_format(trace_format: TraceFormat) -> None:
    request = CreateSession.decode(_create_session_2_15(trace_format=trace_format), 15)

    assert request.trace_format is trace_format
    assert (request.session_name, request.hostname, request.base_path) == ("s", "h", "")


def test_create_session_2_15_accepts_the_largest_names() -> None:
    payload = _create_session_2_15(b"n" * 254 + b"\0", b"h" * 255 + b"\0", b"b" * 4095 + b"\0")

    request = CreateSession.decode(payload, 15)

    assert (len(request.session_name), len(request.hostname), len(request.base_path)) == (
        254, 255, 4095)
    assert MAX_REQUEST_PAYLOAD[Command.CREATE_SESSION] == len(payload) == 63 + 255 + 256 + 4096


def test_create_session_2_11_accepts_the_largest_names() -> None:
    payload = _create_session_2_11(b"n" * 254 + b"\0", b"h" * 63 + b"\0", b"b" * 4095 + b"\0")

    request = CreateSession.decode(payload, 11)

    assert (len(request.session_name), len(request.hostname), len(request.base_path)) == (
        254, 63, 4095)


def test_create_session_2_11_accepts_hostnames_up_to_255_characters() -> None:
    # lttng-tools v2.13.9 include/lttng/constant.h: LTTNG_HOST_NAME_MAX 256 (incl. NUL).
    # Linux host names alone reach 64 characters, i.e. hostname_len 65.
    payload = _create_session_2_11(host=b"h" * 255 + b"\0")

    assert CreateSession.decode(payload, 11).hostname == "h" * 255
    assert MAX_REQUEST_PAYLOAD[Command.CREATE_SESSION] >= len(payload)


def test_create_session_2_11_accepts_an_absent_base_path() -> None:
    assert CreateSession.decode(_create_session_2_11(base=b""), 11).base_path == ""


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"s" * 255 + b"h\0".ljust(64, b"\0") + bytes(8), id="name without NUL"),
        pytest.param(b"s\0".ljust(255, b"\0") + b"h" * 64 + bytes(8), id="host without NUL"),
    ],
)
def test_malformed_create_session_2_4_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        CreateSession.decode(payload, 4)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(_add_stream_2_11(b"", lengths=(0, 2)), id="empty channel name"),
        pytest.param(_add_stream_2_11(b"c" * 264 + b"\0"), id="channel name of 265 bytes"),
        pytest.param(_add_stream_2_11(path=b"", lengths=(2, 0)), id="empty path name"),
        pytest.param(_add_stream_2_11(path=b"p" * 255 + b"\0"), id="path name of 256 bytes"),
        pytest.param(_add_stream_2_11(b"cc"), id="channel name not NUL-terminated"),
        pytest.param(_add_stream_2_11(path=b"pp"), id="path name not NUL-terminated"),
        pytest.param(_add_stream_2_11(lengths=(2, 9)), id="names beyond the payload"),
    ],
)
def test_malformed_add_stream_2_11_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        AddStream.decode(payload, 11)


def test_add_stream_2_11_accepts_the_largest_names() -> None:
    request = AddStream.decode(_add_stream_2_11(b"c" * 263 + b"\0", b"p" * 254 + b"\0"), 11)

    assert (len(request.channel_name), len(request.pathname)) == (263, 254)


@pytest.mark.parametrize("minor", [1, 2])
@pytest.mark.parametrize(
    ("channel", "path"),
    [
        pytest.param(b"c" * 264, b"p\0", id="channel fills its array"),
        pytest.param(b"c\0", b"p" * 4096, id="path fills its array"),
        pytest.param(b"c\0", b"p" * 255 + b"\0", id="path of 255 characters"),
    ],
)
def test_malformed_add_stream_fixed_arrays_is_a_protocol_error(minor: int, channel: bytes,
                                                               path: bytes) -> None:
    payload = channel.ljust(264, b"\0") + path.ljust(4096, b"\0") + bytes(16)

    with pytest.raises(ProtocolError):
        AddStream.decode(payload, minor)


@pytest.mark.parametrize("count", [0, 1, 3])
@pytest.mark.parametrize("extra", [-1, 1, 2, 4, 5, 6, 8, 16 + 1])
def test_rotate_streams_of_any_other_size_is_a_protocol_error(count: int, extra: int) -> None:
    # Accepted sizes are exactly 13, 16 and 20 bytes + 16 per stream.
    good = RotateStreams(1, tuple(StreamRotation(i, i) for i in range(count))).encode(padding=0)
    payload = good + bytes(extra) if extra > 0 else good[:extra]
    assert len(payload) - 16 * count not in (13, 16, 20)

    with pytest.raises(ProtocolError):
        RotateStreams.decode(payload)


def test_rotate_streams_with_a_wrong_stream_count_is_a_protocol_error() -> None:
    payload = be32(2) + b"\x01" + bytes(7) + be64(1) + be64(10) + be64(11)

    with pytest.raises(ProtocolError):
        RotateStreams.decode(payload)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(be64(0) + be64(0) + be32(256) + b"n" * 255 + b"\0", id="name of 256"),
        pytest.param(be64(0) + be64(0) + be32(4) + b"name", id="name not NUL-terminated"),
        pytest.param(be64(0) + be64(0) + be32(10) + b"name\0", id="name beyond the payload"),
    ],
)
def test_malformed_create_trace_chunk_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        CreateTraceChunk.decode(payload)


def test_protocol_error_carries_no_reply_unless_given_one() -> None:
    with pytest.raises(ProtocolError) as caught:
        Version.decode(b"")

    assert caught.value.reply is None


# --------------------------------------------------------------------------- replies


def test_generic_ok_reply_is_ten_not_zero() -> None:
    assert generic_reply(ReturnCode.OK) == bytes.fromhex("0000000a")


def test_status_replies_are_id_then_code() -> None:
    assert status_session_reply(1, ReturnCode.OK) == be64(1) + be32(10)
    assert status_stream_reply(UINT64_MAX, ReturnCode.UNK) == b"\xff" * 8 + be32(11)


def test_version_reply_is_2_15_by_default() -> None:
    # lttng-relayd 2.15 and 2.16 both announce 15 (relayd.hpp:25 @ v2.16.0-rc2).
    assert (RELAYD_VERSION_MAJOR, RELAYD_VERSION_MINOR) == (2, 15)
    assert version_reply() == bytes.fromhex("00000002 0000000f")


def test_create_session_reply_2_11_carries_the_nul_terminated_path() -> None:
    raw = create_session_reply_2_11(3, ReturnCode.OK, "myhost/mysess-20240102-030405")

    path = b"myhost/mysess-20240102-030405\0"
    assert raw == be64(3) + be32(10) + be32(len(path)) + path
    assert decode_create_session_reply_2_11(raw) == (3, 10, "myhost/mysess-20240102-030405")


def test_create_session_reply_2_11_failure_has_no_path() -> None:
    assert create_session_reply_2_11(0, ReturnCode.FATAL, "ignored") == be64(0) + be32(25) + be32(0)


def test_close_trace_chunk_reply_with_path() -> None:
    raw = close_trace_chunk_reply(ReturnCode.OK, "h/s/archives/c")

    assert raw == be32(10) + be32(15) + b"h/s/archives/c\0"


@pytest.mark.parametrize("path", [None, "h/s"])
def test_close_trace_chunk_reply_failure_has_no_path(path: str | None) -> None:
    assert close_trace_chunk_reply(ReturnCode.NOMEM, path) == be32(26) + be32(0)


def test_trace_chunk_exists_reply_is_5_bytes() -> None:
    assert trace_chunk_exists_reply(ReturnCode.OK, True) == be32(10) + b"\x01"
    assert trace_chunk_exists_reply(ReturnCode.INVALID_PROTOCOL, False) == be32(152) + b"\x00"


def test_get_configuration_reply_is_code_then_flags() -> None:
    assert get_configuration_reply(ReturnCode.OK, 1) == be32(10) + be64(1)


@settings(max_examples=30)
@given(handle=u64, code=u32)
def test_reply_decoders_read_what_builders_write(handle: int, code: int) -> None:
    assert decode_generic_reply(generic_reply(code)) == code
    assert decode_status_reply(status_stream_reply(handle, code)) == (handle, code)


@pytest.mark.parametrize(
    ("command", "minor", "size"),
    [
        (Command.VERSION, 13, 8),
        (Command.GET_CONFIGURATION, 13, 12),
        (Command.ADD_STREAM, 13, 12),
        (Command.TRACE_CHUNK_EXISTS, 13, 5),
        (Command.CREATE_SESSION, 10, 12),
        (Command.CREATE_SESSION, 11, None),
        (Command.CREATE_SESSION, 15, None),
        (Command.CLOSE_TRACE_CHUNK, 13, None),
        (Command.SEND_METADATA, 13, None),
        (Command.CLOSE_STREAM, 13, 4),
        (Command.DATA_PENDING, 13, 4),
        (Command.SEND_INDEX, 13, 4),
        (10000, 13, 4),
    ],
)
def test_expected_reply_size(command: int, minor: int, size: int | None) -> None:
    assert expected_reply_size(command, minor) == size
