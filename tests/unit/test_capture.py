"""pyrelayd-capture: recording format, framing, id rewriting, record and replay.

The last tests record a synthetic consumerd talking to a relay (pyrelayd in this process, or
the real C lttng-relayd) through the proxy, replay the recording into a second relay that
hands out other ids, and compare the two output trees byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import struct
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyrelayd.capture import (
    CaptureProxy,
    ConnectionTable,
    Direction,
    Event,
    Kind,
    Record,
    RecordingError,
    RecordingWriter,
    ReplayError,
    main,
    parse_address,
    parse_recording,
    read_recording,
    record,
    replay,
)
from pyrelayd.capture.framing import (
    ControlRequest,
    ControlRequestFramer,
    PacketFramer,
    negotiated_minor,
    reply_size,
)
from pyrelayd.capture.plan import Close, Connect, SendData, SendRequest, build_plan
from pyrelayd.capture.recording import FILE_HEADER, encode_file_header
from pyrelayd.capture.replayer import Replayer
from pyrelayd.capture.rewrite import (
    IdMap,
    rewrite_data_header,
    rewrite_request,
    rewrite_version,
)
from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.model.session import RelaySession, SessionInfo
from pyrelayd.protocol.relayd import (
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
    QuiescentControl,
    ResetMetadata,
    ReturnCode,
    RotateStreams,
    SendIndex,
    SendMetadataHeader,
    StreamRotation,
    StreamsSent,
    TraceFormat,
    Version,
    close_trace_chunk_reply,
    create_session_reply_2_11,
    decode_status_reply,
    encode_request,
    generic_reply,
    status_session_reply,
    status_stream_reply,
    trace_chunk_exists_reply,
    version_reply,
)
from pyrelayd.server.control import ControlProtocol
from pyrelayd.server.data import DataProtocol
from pyrelayd_testkit.relays import start_relay

Address = tuple[str, int]
OK = ReturnCode.OK


def request(message: object, minor: int = 13) -> ControlRequest:
    command = message.COMMAND  # type: ignore[attr-defined]
    payload = message.encode(minor)  # type: ignore[attr-defined]
    return ControlRequest(ControlHeader(command, len(payload)), payload)


# --------------------------------------------------------------------------- recording format

open_records = st.builds(
    Record, st.integers(0, 2**64 - 1), st.integers(1, 2**32 - 1), st.sampled_from(Kind),
    st.just(Direction.TO_RELAY), st.just(Event.OPEN),
    partner=st.none() | st.integers(1, 2**32 - 1), peer=st.text(max_size=40),
)
byte_records = st.builds(
    Record, st.integers(0, 2**64 - 1), st.integers(1, 2**32 - 1), st.sampled_from(Kind),
    st.sampled_from(Direction), st.just(Event.BYTES), data=st.binary(max_size=200),
)
close_records = st.builds(
    Record, st.integers(0, 2**64 - 1), st.integers(1, 2**32 - 1), st.sampled_from(Kind),
    st.sampled_from(Direction), st.just(Event.CLOSE),
)
records_strategy = st.lists(open_records | byte_records | close_records, max_size=20)


@given(records_strategy)
def test_recording_round_trip(records: list[Record]) -> None:
    raw = encode_file_header(123) + b"".join(record.encode() for record in records)
    header, decoded = parse_recording(raw)
    assert header.start_wall_ns == 123
    assert header.version == 1
    assert decoded == records


def test_writer_flushes_each_record_and_reader_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    writer = RecordingWriter.create(path)
    first = Record(5, 1, Kind.CONTROL, Direction.TO_RELAY, Event.OPEN, peer="127.0.0.1:4000")
    writer.write(first)
    # Readable before close: what a SIGKILL would leave behind.
    assert read_recording(path) == [first]
    second = Record(6, 1, Kind.CONTROL, Direction.TO_RELAY, Event.BYTES, data=b"\0\1")
    writer.write(second)
    writer.close()
    assert read_recording(path) == [first, second]
    assert path.read_bytes()[:8] == b"PYRDCAP\0"


def test_truncated_recording_is_detected() -> None:
    records = [
        Record(1, 1, Kind.CONTROL, Direction.TO_RELAY, Event.OPEN, peer="x"),
        Record(2, 1, Kind.CONTROL, Direction.TO_RELAY, Event.BYTES, data=b"abcdef"),
    ]
    raw = encode_file_header(0) + b"".join(record.encode() for record in records)
    last_start = len(raw) - len(records[-1].encode())
    for cut in range(last_start + 1, len(raw)):
        with pytest.raises(RecordingError, match="truncated"):
            parse_recording(raw[:cut])
    for cut in range(FILE_HEADER.size):
        with pytest.raises(RecordingError, match="truncated file header"):
            parse_recording(raw[:cut])
    # A cut on a record boundary is a complete (shorter) recording.
    assert parse_recording(raw[:last_start])[1] == records[:1]


def test_bad_magic_version_and_fields_are_refused() -> None:
    with pytest.raises(RecordingError, match="magic"):
        parse_recording(b"NOTACAPT" + bytes(16))
    with pytest.raises(RecordingError, match="version 7"):
        parse_recording(struct.pack(">8sIIQ", b"PYRDCAP\0", 7, 0, 0))
    bad_kind = struct.pack(">QIBBBBI", 0, 1, 9, 0, 1, 0, 0)
    with pytest.raises(RecordingError, match="offset 24"):
        parse_recording(encode_file_header(0) + bad_kind)


# --------------------------------------------------------------------------- framing

control_requests = st.builds(
    lambda command, circuit, version, payload: ControlRequest(
        ControlHeader(command, len(payload), circuit, version), payload
    ),
    st.integers(0, 30), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
    st.binary(max_size=300),
)


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(raw) + 1) for cut in cuts})
    bounds = [0, *points, len(raw)]
    return [raw[start:end] for start, end in itertools.pairwise(bounds)]


@given(st.lists(control_requests, max_size=8), st.lists(st.integers(0, 10_000), max_size=30))
def test_control_requests_survive_any_segmentation(
    requests: list[ControlRequest], cuts: list[int]
) -> None:
    stream = b"".join(r.encode() for r in requests)
    framer = ControlRequestFramer()
    framed = [r for segment in split(stream, cuts) for r in framer.feed(segment)]
    assert framed == requests
    assert framer.pending == b""


@given(
    st.lists(st.tuples(st.integers(1, 50), st.integers(0, 2**64 - 1), st.binary(max_size=200),
                       st.integers(0, 4096)), max_size=6),
    st.lists(st.integers(0, 10_000), max_size=30),
)
def test_data_packets_survive_any_segmentation(
    packets: list[tuple[int, int, bytes, int]], cuts: list[int]
) -> None:
    headers = [DataHeader(stream, seq, len(body), padding) for stream, seq, body, padding
               in packets]
    stream = b"".join(h.encode() + body for h, (_, _, body, _) in zip(headers, packets,
                                                                      strict=True))
    framer = PacketFramer()
    parts = [part for segment in split(stream, cuts) for part in framer.feed(segment)]
    seen_headers = [part for part in parts if isinstance(part, DataHeader)]
    assert seen_headers == headers
    # Payload pieces arrive in order and rebuild each packet body.
    bodies: list[bytearray] = []
    for part in parts:
        if isinstance(part, DataHeader):
            bodies.append(bytearray())
        else:
            bodies[-1] += part
    assert [bytes(b) for b in bodies] == [body for _, _, body, _ in packets]
    assert framer.pending == b""


def test_reply_sizes() -> None:
    assert reply_size(Command.VERSION, 0, b"") == 8
    assert reply_size(Command.SEND_METADATA, 13, b"") == 0
    assert reply_size(Command.ADD_STREAM, 13, b"") == 12
    assert reply_size(Command.CREATE_SESSION, 10, b"") == 12
    assert reply_size(Command.TRACE_CHUNK_EXISTS, 13, b"") == 5
    assert reply_size(Command.GET_CONFIGURATION, 13, b"") == 12
    assert reply_size(Command.CLOSE_STREAM, 13, b"") == 4
    assert reply_size(4242, 13, b"") == 4  # unknown command: generic UNK
    session_reply = create_session_reply_2_11(1, OK, "host/sess-20240102-030405")
    assert reply_size(Command.CREATE_SESSION, 13, b"") == 16
    assert reply_size(Command.CREATE_SESSION, 13, session_reply[:16]) == len(session_reply)
    # 2.15 changed the request, not the reply.
    assert reply_size(Command.CREATE_SESSION, 15, b"") == 16
    assert reply_size(Command.CREATE_SESSION, 15, session_reply[:16]) == len(session_reply)
    chunk_reply = close_trace_chunk_reply(OK, "host/sess")
    assert reply_size(Command.CLOSE_TRACE_CHUNK, 13, chunk_reply[:8]) == len(chunk_reply)
    # On failure the path length field may be set but no path follows.
    refused = struct.pack(">II", ReturnCode.NOMEM, 12)
    assert reply_size(Command.CLOSE_TRACE_CHUNK, 13, refused) == 8


# --------------------------------------------------------------------------- id rewriting


def test_ids_are_learned_from_successful_replies_only() -> None:
    ids = IdMap()
    ids.learn(Command.CREATE_SESSION, create_session_reply_2_11(1, OK, "a"),
              create_session_reply_2_11(7, OK, "a"))
    ids.learn(Command.CREATE_SESSION, status_session_reply(2, OK), status_session_reply(8, OK))
    ids.learn(Command.ADD_STREAM, status_stream_reply(1, OK), status_stream_reply(40, OK))
    ids.learn(Command.ADD_STREAM, status_stream_reply(2, ReturnCode.UNK),
              status_stream_reply(41, ReturnCode.UNK))
    assert ids.sessions == {1: 7, 2: 8}
    assert ids.streams == {1: 40}
    assert ids.stream(99) == 99  # never learned: kept as recorded


def test_requests_and_data_headers_get_live_ids() -> None:
    ids = IdMap(sessions={1: 7}, streams={1: 40, 2: 41})
    metadata = SendMetadataHeader(2, 3).encode() + b"/* CTF 1.8 */"
    cases = [
        (request(CloseStream(1, 5)), request(CloseStream(40, 5))),
        (request(DataPending(2, 5)), request(DataPending(41, 5))),
        (request(QuiescentControl(2)), request(QuiescentControl(41))),
        (request(ResetMetadata(2, 9)), request(ResetMetadata(41, 9))),
        (request(BeginDataPending(1)), request(BeginDataPending(7))),
        (request(EndDataPending(1)), request(EndDataPending(7))),
        (request(SendIndex(1, 3, 8, 8, 1, 2, 0, 5, 6, 3), 13),
         request(SendIndex(40, 3, 8, 8, 1, 2, 0, 5, 6, 3), 13)),
        (request(SendIndex(1, 3, 8, 8, 1, 2, 0, 5), 4),
         request(SendIndex(40, 3, 8, 8, 1, 2, 0, 5), 4)),
        (ControlRequest(ControlHeader(Command.SEND_METADATA, len(metadata)), metadata),
         ControlRequest(ControlHeader(Command.SEND_METADATA, len(metadata)),
                        SendMetadataHeader(41, 3).encode() + b"/* CTF 1.8 */")),
        # Ids of other commands are not relay-assigned: untouched.
        (request(CreateTraceChunk(1, 100)), request(CreateTraceChunk(1, 100))),
    ]
    for recorded, live in cases:
        assert rewrite_request(recorded, ids) == live
    header = DataHeader(2, 17, 4096, 12, circuit_id=3)
    assert rewrite_data_header(header, ids) == DataHeader(41, 17, 4096, 12, circuit_id=3)


@pytest.mark.parametrize("padding", RotateStreams.PADDINGS)
def test_rotate_streams_entries_are_rewritten_keeping_the_padding(padding: int) -> None:
    ids = IdMap(streams={1: 40, 2: 41})
    rotation = RotateStreams(3, (StreamRotation(1, 10), StreamRotation(2, 0)))
    payload = bytearray(rotation.encode(padding=padding))
    payload[5 : 5 + padding] = b"\xaa" * padding  # whatever the sender's padding held
    recorded = ControlRequest(ControlHeader(Command.ROTATE_STREAMS, len(payload)),
                              bytes(payload))
    rewritten = rewrite_request(recorded, ids)
    assert RotateStreams.decode(rewritten.payload) == RotateStreams(
        3, (StreamRotation(40, 10), StreamRotation(41, 0))
    )
    assert rewritten.payload[: 5 + padding] == bytes(payload[: 5 + padding])


def test_short_payloads_are_left_for_the_relay_to_refuse() -> None:
    short = ControlRequest(ControlHeader(Command.CLOSE_STREAM, 4), b"\0\0\0\1")
    assert rewrite_request(short, IdMap(streams={1: 2})) == short


# --------------------------------------------------------------------------- replay planning


class Script:
    """Builds records of one recorded run, as the proxy would have written them."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def _add(self, connection: int, kind: Kind, direction: Direction, event: Event,
             **fields: object) -> None:
        self.records.append(Record(len(self.records), connection, kind, direction, event,
                                   **fields))  # type: ignore[arg-type]

    def open(self, connection: int, kind: Kind, partner: int | None = None) -> None:
        self._add(connection, kind, Direction.TO_RELAY, Event.OPEN, partner=partner)

    def send(self, connection: int, data: bytes, kind: Kind = Kind.CONTROL) -> None:
        self._add(connection, kind, Direction.TO_RELAY, Event.BYTES, data=data)

    def reply(self, connection: int, data: bytes) -> None:
        self._add(connection, Kind.CONTROL, Direction.FROM_RELAY, Event.BYTES, data=data)

    def close(self, connection: int, kind: Kind, direction: Direction) -> None:
        self._add(connection, kind, direction, Event.CLOSE)


def session_script(peer_minor: int = 13, relay_minor: int = 13,
                   trace_format: TraceFormat = TraceFormat.CTF_1_8) -> Script:
    """One control + data pair: a 2.11+ session with a data and a metadata stream."""
    minor = min(peer_minor, relay_minor)
    script = Script()
    script.open(1, Kind.CONTROL)
    version = encode_request(Command.VERSION, Version(2, peer_minor).encode())
    script.send(1, version[:10])  # a request cut across two segments
    script.send(1, version[10:])
    script.reply(1, version_reply(2, relay_minor))
    create = encode_request(Command.CREATE_SESSION, CreateSession(
        "s", "h", sessiond_uuid=b"\1" * 16, creation_time=1,
        trace_format=trace_format).encode(minor))
    script.send(1, create[:70])  # cut inside the 2.15 trace format
    script.send(1, create[70:])
    session_reply = create_session_reply_2_11(1, OK, "h/s-19700101-000001")
    script.reply(1, session_reply[:14])  # replies are cut too
    script.reply(1, session_reply[14:])
    script.open(2, Kind.DATA, partner=1)
    for channel, handle in (("channel0_0", 1), ("metadata", 2)):
        script.send(1, encode_request(Command.ADD_STREAM,
                                      AddStream(channel, "ust").encode(minor)))
        script.reply(1, status_stream_reply(handle, OK))
    packet = DataHeader(1, 0, 6, 2).encode() + b"packet"
    script.send(2, packet[:20], Kind.DATA)
    script.send(2, packet[20:], Kind.DATA)
    metadata = SendMetadataHeader(2, 0).encode() + b"meta"
    script.send(1, encode_request(Command.SEND_METADATA, metadata))  # no reply
    script.send(1, encode_request(Command.BEGIN_DATA_PENDING, BeginDataPending(1).encode()))
    script.reply(1, generic_reply(OK))
    script.send(1, encode_request(Command.CLOSE_STREAM, CloseStream(1, 0).encode()))
    script.reply(1, generic_reply(OK))
    script.close(1, Kind.CONTROL, Direction.TO_RELAY)
    script.close(1, Kind.CONTROL, Direction.FROM_RELAY)
    script.close(2, Kind.DATA, Direction.TO_RELAY)
    script.close(2, Kind.DATA, Direction.FROM_RELAY)
    return script


def test_plan_frames_requests_and_attaches_recorded_replies() -> None:
    plan = build_plan(session_script().records)
    kinds = [type(step).__name__ for step in plan.steps]
    # The data header cut after 20 bytes yields nothing until its last 12 bytes arrive.
    assert kinds == ["Connect", "SendRequest", "SendRequest", "Connect", "SendRequest",
                     "SendRequest", "SendData", "SendRequest", "SendRequest", "SendRequest",
                     "Close", "Close"]
    assert plan.steps[3] == Connect(2, Kind.DATA, 1)
    requests = [step for step in plan.steps if isinstance(step, SendRequest)]
    assert [r.request.command for r in requests] == [
        Command.VERSION, Command.CREATE_SESSION, Command.ADD_STREAM, Command.ADD_STREAM,
        Command.SEND_METADATA, Command.BEGIN_DATA_PENDING, Command.CLOSE_STREAM,
    ]
    # The 2.11 reply (16 bytes + path) was framed thanks to the negotiated minor 13.
    assert requests[1].recorded_reply == create_session_reply_2_11(1, OK, "h/s-19700101-000001")
    assert requests[3].recorded_reply == status_stream_reply(2, OK)
    assert requests[4].recorded_reply is None
    data_steps = [step for step in plan.steps if isinstance(step, SendData)]
    assert data_steps[0].parts == (DataHeader(1, 0, 6, 2), b"packet")
    assert plan.closed_by_relay_first == frozenset()


def test_plan_keeps_unfinished_bytes_and_closes_what_the_recording_left_open() -> None:
    script = Script()
    script.open(1, Kind.CONTROL)
    script.send(1, encode_request(Command.VERSION, Version(2, 13).encode())[:7])
    plan = build_plan(script.records)
    assert plan.steps[-1] == Close(1, encode_request(Command.VERSION,
                                                     Version(2, 13).encode())[:7])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.records.pop(0), "before its open"),
        (lambda s: s.reply(1, b"\0\0\0\x0a"), "answer no request"),
        (lambda s: s.send(2, b"x", Kind.DATA), "bytes after close"),
        (lambda s: s.open(1, Kind.CONTROL), "opened twice"),
        (lambda s: s.open(9, Kind.DATA, partner=8), "unknown control connection 8"),
    ],
)
def test_inconsistent_recordings_are_refused(mutate: object, message: str) -> None:
    script = session_script()
    mutate(script)  # type: ignore[operator]
    with pytest.raises(RecordingError, match=message):
        build_plan(script.records)


def test_replayer_learns_ids_and_rewrites_later_messages() -> None:
    plan = build_plan(session_script().records)
    replayer = Replayer()
    live_replies: dict[int, bytes] = {
        Command.VERSION: version_reply(2, 13),
        Command.CREATE_SESSION: create_session_reply_2_11(5, OK, "h/s-19700101-000001"),
    }
    next_handle = iter([50, 51])
    sent = bytearray()
    for step in plan.steps:
        if isinstance(step, SendRequest):
            sent += replayer.request_bytes(step)
            command = step.request.command
            reply = live_replies.get(command) or (
                status_stream_reply(next(next_handle), OK) if command == Command.ADD_STREAM
                else generic_reply(OK)
            )
            if replayer.reply_size(step, b""):
                replayer.on_reply(step, reply)
        elif isinstance(step, SendData):
            sent += replayer.data_bytes(step)
    assert replayer.ids.sessions == {1: 5}
    assert replayer.ids.streams == {1: 50, 2: 51}
    assert DataHeader(50, 0, 6, 2).encode() + b"packet" in sent
    assert encode_request(Command.SEND_METADATA, SendMetadataHeader(51, 0).encode() + b"meta") \
        in sent
    assert encode_request(Command.BEGIN_DATA_PENDING, BeginDataPending(5).encode()) in sent
    summary = replayer.summary()
    assert (summary.sessions, summary.streams, summary.data_packets) == (1, 2, 1)


def test_replayer_refuses_a_refusal_and_a_different_protocol_minor() -> None:
    plan = build_plan(session_script().records)
    steps = [step for step in plan.steps if isinstance(step, SendRequest)]
    replayer = Replayer()
    with pytest.raises(ReplayError, match=r"negotiates protocol 2\.10"):
        replayer.on_reply(steps[0], version_reply(2, 10))
    replayer = Replayer()
    replayer.on_reply(steps[0], version_reply(2, 15))  # min(13, 15): same as recorded
    with pytest.raises(ReplayError, match=r"refused CREATE_SESSION .* code 25"):
        replayer.on_reply(steps[1], create_session_reply_2_11(0, ReturnCode.FATAL, None))
    # Raw DATA_PENDING answers may differ, and what failed when recorded may fail again.
    pending = SendRequest(1, request(DataPending(1, 0)), recorded_reply=generic_reply(0))
    replayer.on_reply(pending, generic_reply(1))
    failed = SendRequest(1, request(AddStream("c", "p")),
                         recorded_reply=status_stream_reply(1, ReturnCode.UNK))
    replayer.on_reply(failed, status_stream_reply(2, ReturnCode.UNK))
    # Closing instead of replying is only a failure when the recorded relay replied.
    replayer.on_relay_closed(steps[4])  # SEND_METADATA: no reply was recorded
    with pytest.raises(ReplayError, match="instead of answering CLOSE_STREAM"):
        replayer.on_relay_closed(steps[-1])


def requests_of(script: Script) -> list[SendRequest]:
    return [step for step in build_plan(script.records).steps if isinstance(step, SendRequest)]


@pytest.mark.parametrize("trace_format", list(TraceFormat), ids=lambda f: f.label)
def test_plan_frames_a_2_15_create_session_and_its_reply(trace_format: TraceFormat) -> None:
    requests = requests_of(session_script(15, 15, trace_format))

    create = requests[1]
    assert create.request.command == Command.CREATE_SESSION
    assert len(create.request.payload) == 63 + len(b"s\0h\0\0")
    assert create.request.payload[59:63] == struct.pack(">I", trace_format)
    assert CreateSession.decode(create.request.payload, 15).trace_format is trace_format
    assert create.recorded_reply == create_session_reply_2_11(1, OK, "h/s-19700101-000001")
    # Every later reply is still matched with its own request.
    assert [r.recorded_reply for r in requests[2:4]] == [
        status_stream_reply(1, OK), status_stream_reply(2, OK)]
    assert requests[-1].recorded_reply == generic_reply(OK)


@pytest.mark.parametrize(("peer", "relay", "negotiated"),
                         [(13, 13, 13), (15, 13, 13), (13, 15, 13), (15, 15, 15), (16, 15, 15)])
def test_negotiated_minor_of_a_version_exchange(peer: int, relay: int, negotiated: int) -> None:
    version = request(Version(2, peer))

    assert negotiated_minor(version, version_reply(2, relay)) == negotiated
    assert negotiated_minor(version, b"\0\0\0\2") is None  # a reply cut short


def test_rewrite_version_announces_the_recorded_minor_and_keeps_other_bytes() -> None:
    payload = Version(2, 15).encode() + b"extra"
    version = ControlRequest(ControlHeader(Command.VERSION, len(payload), 7, 1), payload)

    rewritten = rewrite_version(version, version_reply(2, 13))

    assert rewritten.header == version.header
    assert rewritten.payload == Version(2, 13).encode() + b"extra"
    assert rewrite_version(version, version_reply(2, 15)) is version
    assert rewrite_version(version, version_reply(2, 16)) is version
    assert rewrite_version(version, None) is version  # no recorded reply: as recorded
    other = request(CloseStream(1, 2))
    assert rewrite_version(other, version_reply(2, 13)) is other


def test_a_2_15_peer_recorded_against_a_2_13_relay_replays_at_2_13_into_a_2_15_relay() -> None:
    steps = requests_of(session_script(15, 13))
    replayer = Replayer()

    sent = replayer.request_bytes(steps[0])
    replayer.on_reply(steps[0], version_reply(2, 15))

    assert sent == encode_request(Command.VERSION, Version(2, 13).encode())
    assert replayer.reply_size(steps[1], b"") == 16
    # The recorded 2.11-shaped CREATE_SESSION goes out byte for byte.
    assert replayer.request_bytes(steps[1]) == steps[1].request.encode()


def test_a_2_15_recording_replays_into_a_2_15_relay_unchanged() -> None:
    steps = requests_of(session_script(15, 15, TraceFormat.CTF_2))
    replayer = Replayer()

    assert replayer.request_bytes(steps[0]) == steps[0].request.encode()
    replayer.on_reply(steps[0], version_reply(2, 15))
    assert replayer.request_bytes(steps[1]) == steps[1].request.encode()


@pytest.mark.parametrize("relay_minor", [11, 13, 14])
def test_a_2_15_recording_cannot_replay_into_an_older_relay(relay_minor: int) -> None:
    # Its CREATE_SESSION has the 2.15 shape; re-encoding it is not attempted.
    steps = requests_of(session_script(15, 15))

    with pytest.raises(ReplayError, match=rf"negotiates protocol 2\.{relay_minor} .* used 2\.15"):
        Replayer().on_reply(steps[0], version_reply(2, relay_minor))


# --------------------------------------------------------------------------- small pieces


def test_data_connections_pair_with_the_oldest_unpaired_control_connection() -> None:
    table = ConnectionTable()
    first, second = table.open_control(), table.open_control()
    assert table.open_data() == (3, first)
    table.closed(second)  # closed before its data connection came: not a partner any more
    assert table.open_data() == (4, None)
    third = table.open_control()
    assert table.open_data() == (6, third)


def test_parse_address() -> None:
    assert parse_address("tcp://127.0.0.1:6000", 5342) == ("127.0.0.1", 6000)
    assert parse_address("TCP4://localhost", 5342) == ("localhost", 5342)
    assert parse_address("tcp6://[::1]:7/sub/dir", 5342) == ("::1", 7)
    assert parse_address("example.org:5343", 5342) == ("example.org", 5343)
    assert parse_address("[::1]", 5343) == ("::1", 5343)
    for bad in ("::1:5", "host:port", "[::1]x", ":5342", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad, 5342)


# --------------------------------------------------------------------------- a fake relay


class FakeRelay:
    """Just enough of a relayd to replay into: ids start at 100 (sessions) / 200 (streams)."""

    def __init__(self, refuse: frozenset[int] = frozenset(), minor: int = 13) -> None:
        self.refuse = refuse
        self.minor = minor
        self.requests: list[ControlRequest] = []
        self.data_headers: list[DataHeader] = []
        self.data_payload = bytearray()
        self._next_session = 100
        self._next_stream = 200
        self._servers: list[asyncio.Server] = []

    async def __aenter__(self) -> FakeRelay:
        for handler in (self._control, self._data):
            self._servers.append(await asyncio.start_server(handler, "127.0.0.1", 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    def address(self, index: int) -> Address:
        host, port = self._servers[index].sockets[0].getsockname()[:2]
        return str(host), int(port)

    def _answer(self, command: int, minor: int) -> bytes:
        code = ReturnCode.UNK if command in self.refuse else OK
        if command == Command.VERSION:
            return version_reply(2, self.minor)
        if command == Command.CREATE_SESSION:
            self._next_session += 1
            return create_session_reply_2_11(self._next_session - 1, code, "h/s")
        if command == Command.ADD_STREAM:
            self._next_stream += 1
            return status_stream_reply(self._next_stream - 1, code)
        if command == Command.SEND_METADATA:
            return b""
        if command == Command.CLOSE_TRACE_CHUNK:
            return close_trace_chunk_reply(code, "h/s")
        if command == Command.TRACE_CHUNK_EXISTS:
            return trace_chunk_exists_reply(code, False)
        return generic_reply(code)

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = ControlHeader.decode(await reader.readexactly(24))
                payload = await reader.readexactly(header.data_size)
                self.requests.append(ControlRequest(header, payload))
                writer.write(self._answer(header.command, 13))
                await writer.drain()
        writer.close()

    async def _data(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = PacketFramer()
        while chunk := await reader.read(65536):
            for part in framer.feed(chunk):
                if isinstance(part, DataHeader):
                    self.data_headers.append(part)
                else:
                    self.data_payload += part
        writer.close()


async def test_replay_into_a_relay_with_other_ids(tmp_path: Path) -> None:
    path = tmp_path / "run.cap"
    writer = RecordingWriter.create(path)
    writer.write_all(session_script().records)
    writer.close()
    async with FakeRelay() as relay:
        summary = await replay(path, relay.address(0), relay.address(1), close_timeout=5)
    assert (summary.sessions, summary.streams, summary.data_packets) == (1, 2, 1)
    assert summary.control_connections == summary.data_connections == 1
    assert relay.data_headers == [DataHeader(200, 0, 6, 2)]
    assert relay.data_payload == b"packet"
    by_command = {r.command: r for r in relay.requests}
    assert by_command[Command.BEGIN_DATA_PENDING].payload == BeginDataPending(100).encode()
    assert by_command[Command.CLOSE_STREAM].payload == CloseStream(200, 0).encode()
    assert by_command[Command.SEND_METADATA].payload[:8] == struct.pack(">Q", 201)


@pytest.mark.parametrize(("peer", "recorded", "announced"), [(15, 15, 15), (15, 13, 13)])
async def test_replay_of_a_2_15_peer_into_a_2_15_relay(peer: int, recorded: int,
                                                      announced: int) -> None:
    script = session_script(peer, recorded, TraceFormat.CTF_2)
    recorded_requests = requests_of(script)
    async with FakeRelay(minor=15) as relay:
        summary = await replay(script.records, relay.address(0), relay.address(1),
                               close_timeout=5)
    assert (summary.sessions, summary.streams) == (1, 2)
    version, create = relay.requests[:2]
    assert version.payload == Version(2, announced).encode()
    assert create.payload == recorded_requests[1].request.payload


async def test_replay_stops_when_the_relay_refuses_what_was_recorded_as_ok(
    tmp_path: Path,
) -> None:
    async with FakeRelay(refuse=frozenset({Command.ADD_STREAM})) as relay:
        with pytest.raises(ReplayError, match="refused ADD_STREAM on control connection 1"):
            await replay(session_script().records, relay.address(0), relay.address(1))


async def test_proxy_records_what_it_forwards(tmp_path: Path) -> None:
    path = tmp_path / "proxied.cap"
    async with FakeRelay() as relay:
        proxy = CaptureProxy(
            path, control_listen=("127.0.0.1", 0), data_listen=("127.0.0.1", 0),
            control_relay=relay.address(0), data_relay=relay.address(1),
        )
        async with proxy:
            reader, writer = await asyncio.open_connection(*proxy.control_address)
            writer.write(encode_request(Command.VERSION, Version(2, 13).encode()))
            assert await reader.readexactly(8) == version_reply(2, 13)
            _, data_writer = await asyncio.open_connection(*proxy.data_address)
            data_writer.write(DataHeader(7, 0, 3, 0).encode() + b"abc")
            await data_writer.drain()
            for stream in (writer, data_writer):
                stream.write_eof()
            assert await reader.read() == b""  # the relay's close, passed on
            writer.close()
            data_writer.close()
            for _ in range(100):
                if relay.data_payload == b"abc":
                    break
                await asyncio.sleep(0.01)
        assert proxy.summary.control_connections == proxy.summary.data_connections == 1
    records = read_recording(path)
    events = [(r.connection, r.kind, r.direction, r.event) for r in records]
    assert events[:3] == [
        (1, Kind.CONTROL, Direction.TO_RELAY, Event.OPEN),
        (1, Kind.CONTROL, Direction.TO_RELAY, Event.BYTES),
        (1, Kind.CONTROL, Direction.FROM_RELAY, Event.BYTES),
    ]
    assert records[3].event == Event.OPEN and records[3].partner == 1
    assert b"".join(r.data for r in records if r.connection == 2) == \
        DataHeader(7, 0, 3, 0).encode() + b"abc"
    # Every direction of every connection ends with a close record.
    closes = {(r.connection, r.direction) for r in records if r.event == Event.CLOSE}
    assert (1, Direction.TO_RELAY) in closes and (1, Direction.FROM_RELAY) in closes
    assert (2, Direction.TO_RELAY) in closes


def test_cli_reports_a_malformed_recording_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.cap"
    path.write_bytes(encode_file_header(0) + b"\0" * 10)
    assert main(["replay", str(path), "--control", "127.0.0.1:1", "--data", "127.0.0.1:2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated record header at offset 24" in err


async def test_cli_record_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "cli.cap"
    async with FakeRelay() as relay:
        control, data = relay.address(0), relay.address(1)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; from pyrelayd.capture import main; "
            "sys.exit(main())", "record", "--control-port", "tcp://127.0.0.1:0",
            "--data-port", "127.0.0.1:0", "--to-control", f"{control[0]}:{control[1]}",
            "--to-data", f"tcp://{data[0]}:{data[1]}", "-O", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
        )
        assert process.stderr is not None and process.stdout is not None
        banner = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
        listen = banner.split("control ")[1].split(" ->")[0]
        reader, writer = await asyncio.open_connection(*parse_address(listen, 0))
        writer.write(encode_request(Command.VERSION, Version(2, 13).encode()))
        assert await reader.readexactly(8) == version_reply(2, 13)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert b"recorded 1 control + 0 data connections" in await process.stdout.read()
        writer.close()
    records = read_recording(path)  # complete: no truncated record
    assert [r.event for r in records] == [Event.OPEN, Event.BYTES, Event.BYTES, Event.CLOSE]


# --------------------------------------------------------------------------- the real relayd


@contextlib.contextmanager
def c_relayd(output: Path) -> Iterator[tuple[Address, Address]]:
    """The C lttng-relayd writing under `output`, by the shared launcher."""
    relay = start_relay("c", output.parent / f"{output.name}-relayd", output_dir=output)
    try:
        yield ("127.0.0.1", relay.control_port), ("127.0.0.1", relay.data_port)
    finally:
        relay.stop()


class Consumerd:
    """A synthetic consumerd on one control + data pair, speaking 2.`minor` through the codec.

    After VERSION, `minor` is the negotiated minor (the lower of ours and the relay's).
    """

    def __init__(self, control: Address, data: Address, minor: int = 13) -> None:
        self.addresses = (control, data)
        self.minor = minor

    async def __aenter__(self) -> Consumerd:
        self.reader, self.writer = await asyncio.open_connection(*self.addresses[0])
        return self

    async def connect_data(self) -> None:
        self.data_reader, self.data_writer = await asyncio.open_connection(*self.addresses[1])

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()
        if hasattr(self, "data_writer"):
            self.data_writer.close()

    async def call(self, message: object, reply_size: int) -> bytes:
        command = message.COMMAND  # type: ignore[attr-defined]
        self.writer.write(encode_request(command, message.encode(self.minor)))  # type: ignore[attr-defined]
        await self.writer.drain()
        return await asyncio.wait_for(self.reader.readexactly(reply_size), 10)

    async def ok(self, message: object) -> None:
        assert struct.unpack(">I", await self.call(message, 4))[0] == OK

    async def create_session(self, name: str, uuid: bytes,
                             trace_format: TraceFormat = TraceFormat.CTF_1_8) -> tuple[int, str]:
        major, relay_minor = struct.unpack(">II", await self.call(Version(2, self.minor), 8))
        assert major == 2 and relay_minor >= 13
        self.minor = min(self.minor, relay_minor)
        head = await self.call(CreateSession(
            name, "capturehost", live_timer=0, sessiond_uuid=uuid, sessiond_session_id=4,
            creation_time=1_700_000_000, trace_format=trace_format,
        ), 16)
        session_id, code, length = struct.unpack(">QII", head)
        assert code == OK
        path = (await self.reader.readexactly(length)).rstrip(b"\0").decode()
        await self.ok(CreateTraceChunk(0, 1_700_000_000))
        return session_id, path

    async def add_stream(self, channel: str) -> int:
        handle, code = decode_status_reply(await self.call(AddStream(channel, "ust/uid/0/64-bit"),
                                                           12))
        assert code == OK
        return handle

    async def close_and_wait(self) -> None:
        for writer in (self.writer, self.data_writer):
            writer.write_eof()
        # The relay closes each connection once it has read everything before our EOF.
        for reader in (self.reader, self.data_reader):
            assert await asyncio.wait_for(reader.read(), 10) == b""


async def drive_consumerd(control: Address, data: Address, minor: int = 13,
                          trace_format: TraceFormat = TraceFormat.CTF_1_8) -> str:
    """The session a 2.`minor` consumerd streams, from creation to teardown; returns its path."""
    async with Consumerd(control, data, minor) as consumerd:
        session_id, path = await consumerd.create_session("capture", bytes(range(1, 17)),
                                                          trace_format)
        await consumerd.connect_data()
        channel = await consumerd.add_stream("channel0_0")
        metadata = await consumerd.add_stream("metadata")
        await consumerd.ok(StreamsSent())
        text = b"/* CTF 1.8 */ trace { major = 1; minor = 8; };\n"
        consumerd.writer.write(encode_request(
            Command.SEND_METADATA, SendMetadataHeader(metadata, 5).encode() + text
        ))
        for seq in range(3):
            body = bytes([seq + 1]) * (1000 + 100 * seq)
            padding = 24
            consumerd.data_writer.write(DataHeader(channel, seq, len(body), padding).encode()
                                        + body)
            await consumerd.data_writer.drain()
            await consumerd.ok(SendIndex(
                channel, seq, (len(body) + padding) * 8, len(body) * 8, 1000 * seq,
                1000 * seq + 999, 0, 0, 0, seq,
            ))
        await consumerd.ok(BeginDataPending(session_id))
        await consumerd.ok(QuiescentControl(metadata))
        await consumerd.call(DataPending(channel, 2), 4)  # 0 or 1: either is fine
        await consumerd.call(EndDataPending(session_id), 4)
        await consumerd.ok(RotateStreams(None, (StreamRotation(channel, 3),
                                                StreamRotation(metadata, 0))))
        head = await consumerd.call(CloseTraceChunk(0, 1_700_000_100, 1), 8)
        code, length = struct.unpack(">II", head)
        assert code == OK
        await consumerd.reader.readexactly(length)
        await consumerd.ok(CloseStream(channel, 2))
        await consumerd.ok(CloseStream(metadata, UINT64_MAX))
        await consumerd.close_and_wait()
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))}


@pytest.mark.skipif(shutil.which("lttng-relayd") is None, reason="needs the C lttng-relayd")
async def test_record_then_replay_into_another_c_relayd_gives_the_same_files(
    tmp_path: Path,
) -> None:
    stop_event = asyncio.Event()
    recording = tmp_path / "session.cap"
    first_out, second_out = tmp_path / "first" / "out", tmp_path / "second" / "out"
    first_out.parent.mkdir()
    second_out.parent.mkdir()

    with c_relayd(first_out) as (control, data):
        ready: asyncio.Future[CaptureProxy] = asyncio.get_running_loop().create_future()
        recorder = asyncio.create_task(record(
            recording, control_listen=("127.0.0.1", 0), data_listen=("127.0.0.1", 0),
            control_relay=control, data_relay=data, stop=stop_event, ready=ready.set_result,
        ))
        proxy = await asyncio.wait_for(ready, 10)
        session_path = await drive_consumerd(proxy.control_address, proxy.data_address)
        stop_event.set()
        summary = await recorder
        assert summary.control_connections == summary.data_connections == 1
        first_tree = tree(first_out / session_path)

    records = read_recording(recording)
    assert [r.partner for r in records if r.event == Event.OPEN] == [None, 1]

    with c_relayd(second_out) as (control, data):
        # Another session first, so the relay hands out different session ids and handles.
        async with Consumerd(control, data) as other:
            other_session, _ = await other.create_session("other", b"\x42" * 16)
            await other.add_stream("channel0_0")
        replayed = await replay(recording, control, data, close_timeout=20)
        second_tree = tree(second_out / session_path)

    assert other_session == 1
    assert (replayed.sessions, replayed.streams, replayed.data_packets) == (1, 2, 3)
    assert sorted(first_tree) == sorted(second_tree)
    assert first_tree == second_tree
    assert any(name.endswith("index/channel0_0.idx") for name in first_tree)
    assert first_tree["ust/uid/0/64-bit/metadata"].startswith(b"/* CTF 1.8 */")


# --------------------------------------------------------------------------- pyrelayd in-process


class SessionLog(Relay):
    """A relay that remembers what each CREATE_SESSION said (sessions go away at teardown)."""

    def __init__(self, settings: RelaySettings) -> None:
        super().__init__(settings)
        self.created: list[SessionInfo] = []

    def create_session(self, info: SessionInfo, current_chunk_id: int | None) -> RelaySession:
        self.created.append(info)
        return super().create_session(info, current_chunk_id)


@contextlib.asynccontextmanager
async def py_relayd(output: Path) -> AsyncIterator[tuple[SessionLog, Address, Address]]:
    """pyrelayd's control and data ports, served by the test's own event loop."""
    output.mkdir(parents=True)
    relay = SessionLog(RelaySettings(output_root=output))
    loop = asyncio.get_running_loop()
    connections: set[asyncio.BaseProtocol] = set()
    control = await loop.create_server(lambda: ControlProtocol(relay, connections),
                                       "127.0.0.1", 0)
    data = await loop.create_server(lambda: DataProtocol(relay, connections), "127.0.0.1", 0)
    addresses = [server.sockets[0].getsockname()[:2] for server in (control, data)]
    try:
        yield relay, (addresses[0][0], addresses[0][1]), (addresses[1][0], addresses[1][1])
    finally:
        for server in (control, data):
            server.close()
        relay.shutdown()


async def record_session(recording: Path, control: Address, data: Address, minor: int,
                         trace_format: TraceFormat) -> str:
    """Record, through the proxy, the session a 2.`minor` consumerd streams; its path."""
    stop_event = asyncio.Event()
    ready: asyncio.Future[CaptureProxy] = asyncio.get_running_loop().create_future()
    recorder = asyncio.create_task(record(
        recording, control_listen=("127.0.0.1", 0), data_listen=("127.0.0.1", 0),
        control_relay=control, data_relay=data, stop=stop_event, ready=ready.set_result,
    ))
    proxy = await asyncio.wait_for(ready, 10)
    path = await drive_consumerd(proxy.control_address, proxy.data_address, minor, trace_format)
    stop_event.set()
    summary = await recorder
    assert summary.control_connections == summary.data_connections == 1
    return path


async def test_a_2_15_ctf_2_session_recorded_from_pyrelayd_replays_into_another(
    tmp_path: Path,
) -> None:
    recording = tmp_path / "session.cap"
    async with py_relayd(tmp_path / "first") as (first, control, data):
        session_path = await record_session(recording, control, data, 15, TraceFormat.CTF_2)
        first_tree = tree(tmp_path / "first" / session_path)
    async with py_relayd(tmp_path / "second") as (second, control, data):
        async with Consumerd(control, data, 15) as other:  # other ids for the replay
            await other.create_session("other", b"\x42" * 16)
            await other.add_stream("channel0_0")
        replayed = await replay(recording, control, data, close_timeout=20)
        second_tree = tree(tmp_path / "second" / session_path)

    assert [(info.minor, info.trace_format) for info in first.created] == [
        (15, TraceFormat.CTF_2)]
    assert [(info.minor, info.trace_format) for info in second.created] == [
        (15, TraceFormat.CTF_1_8), (15, TraceFormat.CTF_2)]
    assert (replayed.sessions, replayed.streams, replayed.data_packets) == (1, 2, 3)
    assert first_tree == second_tree
    assert any(name.endswith("index/channel0_0.idx") for name in first_tree)


@pytest.mark.skipif(shutil.which("lttng-relayd") is None, reason="needs the C lttng-relayd")
async def test_a_2_15_peer_recorded_against_the_c_relayd_replays_into_pyrelayd(
    tmp_path: Path,
) -> None:
    # The C relayd installed here may announce less than 15: the recording then holds
    # 2.11-shaped requests, and the replay makes pyrelayd negotiate that same minor.
    recording = tmp_path / "session.cap"
    c_out = tmp_path / "c" / "out"
    c_out.parent.mkdir()
    with c_relayd(c_out) as (control, data):
        session_path = await record_session(recording, control, data, 15, TraceFormat.CTF_1_8)
        c_tree = tree(c_out / session_path)
    plan = build_plan(read_recording(recording))
    version = next(step for step in plan.steps if isinstance(step, SendRequest))
    assert version.recorded_reply is not None
    recorded_minor = negotiated_minor(version.request, version.recorded_reply)

    async with py_relayd(tmp_path / "py") as (relay, control, data):
        replayed = await replay(recording, control, data, close_timeout=20)
        py_tree = tree(tmp_path / "py" / session_path)

    assert [(info.minor, info.trace_format) for info in relay.created] == [
        (recorded_minor, TraceFormat.CTF_1_8)]
    assert (replayed.sessions, replayed.streams, replayed.data_packets) == (1, 2, 3)
    assert sorted(c_tree) == sorted(py_tree)
    assert c_tree == py_tree
