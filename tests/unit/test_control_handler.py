"""Control connections (port 5342) as a session daemon / consumer daemon sees them.

Every test drives the real framing (`ControlProtocol` over a fake transport that records what the
relay writes) on top of `ControlHandler` (protocol/control.py), with a `Relay` writing under a
temporary output root; data packets go through `DataProtocol`. The expected bytes are those of
lttng-relayd 2.13 (reference: docs/protocol/relayd-control-data.md, sec. 2 and 6.2) and, for
peers of 2.15 and later, of lttng-relayd 2.16 (docs/protocol/protocol-2.15.md, sec. 1, 2 and 8).
"""

from __future__ import annotations

import logging
import struct
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyrelayd.config import GroupOutputBy
from pyrelayd.model.relay import Relay, RelaySettings
from pyrelayd.protocol.control import Outcome
from pyrelayd.protocol.index import PacketIndex, read_index_file
from pyrelayd.protocol.relayd import (
    UINT64_MAX,
    AddStream,
    BeginDataPending,
    CloseCommand,
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
    QuiescentControl,
    ResetMetadata,
    ReturnCode,
    RotateStreams,
    SendIndex,
    SendMetadataHeader,
    StreamRotation,
    StreamsSent,
    TraceChunkExists,
    TraceFormat,
    Version,
    close_trace_chunk_reply,
    create_session_reply_2_11,
    decode_create_session_reply_2_11,
    decode_status_reply,
    generic_reply,
    get_configuration_reply,
    status_session_reply,
    status_stream_reply,
    trace_chunk_exists_reply,
    version_reply,
)
from pyrelayd.server.control import ControlProtocol
from pyrelayd.server.data import DataProtocol
from tests.unit.fakes import FakeTransport

pytestmark = pytest.mark.usefixtures("utc")

SESSIOND_UUID = bytes(range(1, 17))
T0 = 1704164645  # 2024-01-02 03:04:05 UTC: session creation and chunk 0
T1 = 1704165000  # 03:10:00
T2 = 1704165600  # 03:20:00
SESSION_PATH = "myhost/mysess-20240102-030405"
STREAM_PATH = "ust/uid/1000/64-bit"
CHUNK_0_ARCHIVE = "20240102T030405+0000-20240102T031000+0000-0"
CHUNK_1 = "20240102T031000+0000-1"

OK = generic_reply(ReturnCode.OK)
UNK = generic_reply(ReturnCode.UNK)


class Request(Protocol):
    COMMAND: ClassVar[Command]

    def encode(self, minor: int) -> bytes: ...




class Peer:
    """One control connection. `send` returns what the relay wrote back and if it closed."""

    def __init__(self, relay: Relay) -> None:
        self.transport = FakeTransport()
        self.protocol = ControlProtocol(relay, set())
        self.protocol.connection_made(self.transport)
        self.session_id = 0

    @property
    def minor(self) -> int:
        return self.protocol.handler.minor

    def send(self, command: int, payload: bytes = b"", *, piece_size: int | None = None) -> Outcome:
        raw = ControlHeader(command, len(payload)).encode() + payload
        return self.send_raw(raw, piece_size=piece_size)

    def send_raw(self, raw: bytes, *, piece_size: int | None = None) -> Outcome:
        before = len(self.transport.written)
        step = piece_size or len(raw) or 1
        for start in range(0, len(raw), step):
            self.protocol.data_received(raw[start : start + step])
        reply = bytes(self.transport.written[before:])
        return Outcome(reply or None, self.transport.closed)

    def request(self, message: Request) -> Outcome:
        return self.send(message.COMMAND, message.encode(self.minor))

    def ok(self, message: Request) -> bytes:
        """Send a request that must succeed without closing; its reply bytes."""
        outcome = self.request(message)
        assert not outcome.close, outcome
        assert outcome.reply is not None
        return outcome.reply

    def add_stream(self, channel: str, path: str = STREAM_PATH, size: int = 0,
                   count: int = 0) -> int:
        handle, code = decode_status_reply(self.ok(AddStream(channel, path, size, count)))
        assert code == ReturnCode.OK
        return handle

    def send_index(self, handle: int, net_seq_num: int, packet_bytes: int,
                   packet_seq_num: int | None = None) -> Outcome:
        seq = net_seq_num if packet_seq_num is None else packet_seq_num
        return self.request(SendIndex(handle, net_seq_num, packet_bytes * 8, packet_bytes * 8,
                                      1000 + net_seq_num, 2000 + net_seq_num, 0, 0, 0, seq))

    def send_metadata(self, handle: int, metadata: bytes, padding: int = 0) -> Outcome:
        return self.send(Command.SEND_METADATA,
                         SendMetadataHeader(handle, padding).encode() + metadata)

    def data_pending(self, handle: int, last_net_seq_num: int) -> int:
        return int(struct.unpack(">I", self.ok(DataPending(handle, last_net_seq_num)))[0])

    def disconnect(self) -> None:
        self.protocol.connection_lost(None)


class DataConnection:
    """One data connection: header + packet bytes in, nothing ever written back."""

    def __init__(self, relay: Relay) -> None:
        self.transport = FakeTransport()
        self.protocol = DataProtocol(relay, set())
        self.protocol.connection_made(self.transport)

    def send(self, raw: bytes) -> None:
        view = memoryview(raw)
        while view:
            buffer = self.protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            self.protocol.buffer_updated(size)
            view = view[size:]

    def send_packet(self, handle: int, net_seq_num: int, payload: bytes,
                    padding: int = 0) -> None:
        self.send(DataHeader(handle, net_seq_num, len(payload), padding).encode() + payload)

    def disconnect(self) -> None:
        self.protocol.connection_lost(None)


def session_request(**fields: Any) -> CreateSession:
    values: dict[str, Any] = {
        "session_name": "mysess", "hostname": "myhost", "base_path": "",
        "sessiond_uuid": SESSIOND_UUID, "sessiond_session_id": 1, "creation_time": T0,
    }
    values.update(fields)
    return CreateSession(**values)


def connect(relay: Relay, minor: int = 13) -> Peer:
    peer = Peer(relay)
    assert peer.request(Version(2, minor)) == Outcome(version_reply())
    return peer


def open_peer(relay: Relay, minor: int = 13, *, chunk: bool = True, **fields: Any) -> Peer:
    """VERSION, CREATE_SESSION and (2.11+) CREATE_TRACE_CHUNK(0), as `lttng start` does."""
    peer = connect(relay, minor)
    reply = peer.ok(session_request(**fields))
    if minor >= 11:
        peer.session_id, code, _ = decode_create_session_reply_2_11(reply)
    else:
        peer.session_id, code = decode_status_reply(reply)
    assert code == ReturnCode.OK
    if chunk and minor >= 11:
        assert peer.ok(CreateTraceChunk(0, T0)) == OK
    return peer


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.fixture
def stream_directory(output_root: Path) -> Path:
    return output_root / SESSION_PATH / STREAM_PATH


# --------------------------------------------------------------------------- VERSION


@pytest.mark.parametrize(
    ("peer_minor", "negotiated"),
    [(1, 1), (4, 4), (11, 11), (13, 13), (14, 14), (15, 15), (16, 15), (0xFFFF_FFFF, 15)],
)
def test_version_reply_is_the_relay_own_2_15_and_minor_is_the_lowest(
        relay: Relay, peer_minor: int, negotiated: int) -> None:
    peer = Peer(relay)

    outcome = peer.request(Version(2, peer_minor))

    assert outcome == Outcome(bytes.fromhex("00000002 0000000f"), close=False)
    assert peer.minor == negotiated


@pytest.mark.parametrize("major", [1, 3])
def test_version_with_another_major_replies_then_closes(relay: Relay, major: int) -> None:
    assert Peer(relay).request(Version(major, 13)) == Outcome(version_reply(), close=True)


def test_short_version_closes_without_reply(relay: Relay) -> None:
    assert Peer(relay).send(Command.VERSION, bytes(4)) == Outcome(None, close=True)


@pytest.mark.parametrize("trace_format", list(TraceFormat), ids=lambda f: f.label)
def test_a_2_15_peer_sends_its_trace_format_and_gets_a_2_11_reply(
        relay: Relay, output_root: Path, trace_format: TraceFormat) -> None:
    peer = connect(relay, minor=15)
    payload = session_request(trace_format=trace_format).encode(15)
    assert len(payload) == 63 + len(b"mysess\0myhost\0\0")

    outcome = peer.send(Command.CREATE_SESSION, payload)

    path = SESSION_PATH.encode() + b"\0"
    assert outcome == Outcome(struct.pack(">QII", 1, 10, len(path)) + path, close=False)
    assert relay.sessions[1].trace_format is trace_format
    assert relay.sessions[1].minor == 15
    assert (output_root / SESSION_PATH).is_dir()


# --------------------------------------------------------------------------- GET_CONFIGURATION


def test_get_configuration_reports_clear_allowed(relay: Relay) -> None:
    outcome = Peer(relay).request(GetConfiguration(0))

    assert outcome == Outcome(bytes.fromhex("0000000a 0000000000000001"), close=False)


def test_get_configuration_reports_clear_disallowed(output_root: Path) -> None:
    relay = Relay(RelaySettings(output_root=output_root, allow_clear=False))

    outcome = Peer(relay).request(GetConfiguration(0))

    assert outcome == Outcome(bytes.fromhex("0000000a 0000000000000000"), close=False)


def test_get_configuration_with_flags_is_refused_but_keeps_the_connection(relay: Relay) -> None:
    peer = Peer(relay)

    assert peer.request(GetConfiguration(1)) == Outcome(get_configuration_reply(152, 0), False)
    assert peer.request(GetConfiguration(0)) == Outcome(get_configuration_reply(10, 1), False)


def test_short_get_configuration_closes_without_reply(relay: Relay) -> None:
    assert Peer(relay).send(Command.GET_CONFIGURATION, bytes(7)) == Outcome(None, close=True)


# --------------------------------------------------------------------------- CREATE_SESSION


def test_create_session_2_11_replies_the_relative_path_and_creates_it(
        relay: Relay, output_root: Path) -> None:
    peer = connect(relay)

    outcome = peer.request(session_request())

    path = SESSION_PATH.encode() + b"\0"
    assert outcome == Outcome(struct.pack(">QII", 1, 10, len(path)) + path, close=False)
    assert (output_root / SESSION_PATH).is_dir()


def test_relay_session_ids_are_global_and_start_at_1(relay: Relay) -> None:
    ids = [open_peer(relay, chunk=False, sessiond_session_id=n).session_id for n in (7, 7, 8)]

    assert ids == [1, 2, 3]


def test_create_session_of_an_auto_named_session_has_no_second_datetime(
        relay: Relay, output_root: Path) -> None:
    reply = connect(relay).ok(session_request(session_name="auto-20240102-030405",
                                              session_name_contains_creation_time=True))

    assert decode_create_session_reply_2_11(reply)[2] == "myhost/auto-20240102-030405"
    assert (output_root / "myhost/auto-20240102-030405").is_dir()


def test_create_session_with_a_base_path(relay: Relay, output_root: Path) -> None:
    reply = connect(relay).ok(session_request(base_path="my/base"))

    assert decode_create_session_reply_2_11(reply)[2] == "myhost/my/base"
    assert (output_root / "myhost/my/base").is_dir()


def test_create_session_grouped_by_session(output_root: Path) -> None:
    relay = Relay(RelaySettings(output_root=output_root, group_output_by=GroupOutputBy.SESSION))

    reply = connect(relay).ok(session_request())

    assert decode_create_session_reply_2_11(reply)[2] == "mysess/myhost-20240102-030405"
    assert (output_root / "mysess/myhost-20240102-030405").is_dir()


@pytest.mark.parametrize("minor", [4, 10])
def test_create_session_2_4_replies_a_status_session(relay: Relay, minor: int) -> None:
    peer = connect(relay, minor)

    outcome = peer.request(CreateSession("mysess", "myhost"))

    assert outcome == Outcome(status_session_reply(1, ReturnCode.OK), close=False)


@pytest.mark.parametrize("minor", [1, 3])
def test_create_session_before_2_4_has_no_payload(relay: Relay, minor: int) -> None:
    assert connect(relay, minor).send(Command.CREATE_SESSION) == Outcome(
        status_session_reply(1, ReturnCode.OK), close=False)


FATAL_2_11 = create_session_reply_2_11(0, ReturnCode.FATAL, None)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"sessiond_uuid": bytes(16)}, id="nil uuid"),
        pytest.param({"session_name": "../x"}, id="name ../x"),
        pytest.param({"session_name": ".hidden"}, id="name .hidden"),
        pytest.param({"session_name": "a/b"}, id="name a/b"),
        pytest.param({"session_name": ""}, id="empty name"),
        pytest.param({"session_name": ".."}, id="name .."),
        pytest.param({"hostname": ""}, id="empty hostname"),
        pytest.param({"hostname": "../../etc"}, id="hostname ../../etc"),
        pytest.param({"hostname": ".host"}, id="hostname .host"),
        pytest.param({"base_path": "../x"}, id="base path ../x"),
        pytest.param({"base_path": "a/../../x"}, id="base path a/../../x"),
        pytest.param({"base_path": "a/.."}, id="base path a/.."),
        pytest.param({"base_path": ".."}, id="base path .."),
        pytest.param({"base_path": "/my/base"}, id="absolute base path"),
        pytest.param({"base_path": "/"}, id="base path /"),
        pytest.param({"current_chunk_id": 3}, id="unpublished current chunk"),
    ],
)
@pytest.mark.parametrize("minor", [13, 15])
def test_create_session_refused_with_fatal_keeps_the_connection(
        relay: Relay, tmp_path: Path, output_root: Path, fields: dict[str, Any],
        minor: int) -> None:
    peer = connect(relay, minor)

    assert peer.request(session_request(**fields)) == Outcome(FATAL_2_11, close=False)

    assert tree(tmp_path) == {"lttng-traces"}
    assert peer.ok(session_request())[8:12] == struct.pack(">I", ReturnCode.OK)


def test_create_session_with_names_not_nul_terminated_is_fatal(relay: Relay) -> None:
    payload = session_request().encode(13)
    name_len = struct.unpack_from(">I", payload)[0]
    malformed = payload[: 59 + name_len - 1] + b"x" + payload[59 + name_len :]

    assert connect(relay).send(Command.CREATE_SESSION, malformed) == Outcome(FATAL_2_11, False)


def create_session_2_15(trace_format: int) -> bytes:
    """A 2.15 CREATE_SESSION payload whose trace format may be any u32."""
    payload = bytearray(session_request().encode(15))
    struct.pack_into(">I", payload, 59, trace_format)
    return bytes(payload)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(create_session_2_15(0), id="trace format 0 (default)"),
        pytest.param(create_session_2_15(3), id="trace format 3"),
        pytest.param(create_session_2_15(0xFFFF_FFFF), id="trace format 0xffffffff"),
        pytest.param(create_session_2_15(0x0200_0000), id="CTF 2 little-endian"),
        pytest.param(session_request().encode(13), id="2.11 shape"),
        pytest.param(session_request().encode(15)[:62], id="62 bytes"),
        pytest.param(session_request().encode(15)[:63], id="fixed part only"),
    ],
)
def test_a_bad_2_15_create_session_gets_16_byte_fatal_and_changes_nothing(
        relay: Relay, tmp_path: Path, payload: bytes) -> None:
    peer = connect(relay, minor=15)

    outcome = peer.send(Command.CREATE_SESSION, payload)

    assert outcome == Outcome(FATAL_2_11, close=False)
    assert outcome.reply is not None and len(outcome.reply) == 16
    assert struct.unpack(">QII", outcome.reply) == (0, ReturnCode.FATAL, 0)
    assert peer.protocol.handler.session is None
    assert relay.sessions == {}
    assert tree(tmp_path) == {"lttng-traces"}
    # The connection is still usable, and no relay session id was used up.
    reply = peer.ok(session_request(trace_format=TraceFormat.CTF_2))
    assert decode_create_session_reply_2_11(reply) == (1, ReturnCode.OK, SESSION_PATH)
    assert relay.sessions[1].trace_format is TraceFormat.CTF_2


def test_a_2_13_and_a_2_15_peer_on_one_relay(relay: Relay, output_root: Path) -> None:
    old = open_peer(relay, 13, sessiond_session_id=1, session_name="old")
    new = open_peer(relay, 15, sessiond_session_id=2, session_name="new",
                    trace_format=TraceFormat.CTF_2)

    assert (old.minor, new.minor) == (13, 15)
    assert (old.session_id, new.session_id) == (1, 2)
    assert relay.sessions[1].trace_format is TraceFormat.CTF_1_8
    assert relay.sessions[2].trace_format is TraceFormat.CTF_2
    # Nothing else differs between the two: streams, metadata, packets and indexes.
    for peer, name in ((old, "old"), (new, "new")):
        metadata = peer.add_stream("metadata")
        channel = peer.add_stream("channel0_0")
        assert peer.ok(StreamsSent()) == OK
        assert peer.send_metadata(metadata, b"/* metadata */") == Outcome(None, close=False)
        data = DataConnection(relay)
        data.send_packet(channel, 0, b"P" * 64)
        assert peer.send_index(channel, 0, 64) == Outcome(OK, close=False)
        directory = output_root / f"myhost/{name}-20240102-030405" / STREAM_PATH
        assert (directory / "channel0_0").read_bytes() == b"P" * 64
        assert (directory / "metadata").read_bytes() == b"/* metadata */"
        assert len(read_index_file((directory / "index/channel0_0.idx").read_bytes())[1]) == 1


@pytest.mark.parametrize("minor", [4, 11, 13, 14])
def test_sessions_of_peers_before_2_15_are_ctf_1_8(relay: Relay, minor: int) -> None:
    open_peer(relay, minor, trace_format=TraceFormat.CTF_2)  # not on the wire before 2.15

    assert relay.sessions[1].trace_format is TraceFormat.CTF_1_8


def test_the_trace_format_of_each_session_is_logged(relay: Relay,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pyrelayd"):
        open_peer(relay, 15, sessiond_session_id=1, trace_format=TraceFormat.CTF_2)
        open_peer(relay, 13, sessiond_session_id=2, session_name="old")

    formats = [record.getMessage() for record in caplog.records if "trace format" in
               record.getMessage() and record.levelno == logging.INFO]
    assert len(formats) == 2
    assert "[myhost/mysess]: session 1 created in " in formats[0]
    assert "(protocol 2.15, trace format ctf-2)" in formats[0]
    assert "[myhost/old]: session 2 created in " in formats[1]
    assert "(protocol 2.13, trace format ctf-1.8)" in formats[1]


def test_create_session_2_4_refused_with_a_12_byte_fatal(relay: Relay) -> None:
    outcome = connect(relay, minor=4).request(CreateSession(".hidden", "myhost"))

    assert outcome == Outcome(status_session_reply(0, ReturnCode.FATAL), close=False)


@pytest.mark.parametrize(("session_name", "hostname"), [("", "myhost"), ("mysess", "")],
                         ids=["empty session name", "empty hostname"])
def test_create_session_2_4_with_an_empty_name_is_fatal(relay: Relay,
                                                        session_name: str,
                                                        hostname: str) -> None:
    outcome = connect(relay, minor=4).request(CreateSession(session_name, hostname))

    assert outcome == Outcome(status_session_reply(0, ReturnCode.FATAL), close=False)


def test_create_session_with_a_long_hostname(relay: Relay, output_root: Path) -> None:
    hostname = "node-" + "x" * 95  # a 100-character FQDN-like host name

    reply = connect(relay).ok(session_request(hostname=hostname))

    assert decode_create_session_reply_2_11(reply) == (
        1, ReturnCode.OK, f"{hostname}/mysess-20240102-030405")


def test_create_session_adopts_the_chunk_published_by_a_sibling_consumer(
        relay: Relay, output_root: Path) -> None:
    # The kernel and UST consumer daemons of one sessiond session share its trace chunks.
    open_peer(relay, sessiond_session_id=5)
    kernel = open_peer(relay, chunk=False, sessiond_session_id=5, current_chunk_id=0)

    kernel.add_stream("channel0_0", "kernel")

    assert (output_root / SESSION_PATH / "kernel" / "channel0_0").is_file()


# --------------------------------------------------------------------------- prerequisites


SESSION_COMMANDS = [
    Command.ADD_STREAM, Command.STREAMS_SENT, Command.CLOSE_STREAM, Command.DATA_PENDING,
    Command.QUIESCENT_CONTROL, Command.BEGIN_DATA_PENDING, Command.END_DATA_PENDING,
    Command.SEND_INDEX, Command.RESET_METADATA, Command.ROTATE_STREAMS,
    Command.CREATE_TRACE_CHUNK, Command.CLOSE_TRACE_CHUNK, Command.TRACE_CHUNK_EXISTS,
    Command.SEND_METADATA,
]


@pytest.mark.parametrize("command", SESSION_COMMANDS, ids=lambda command: command.name)
def test_session_commands_before_version_close_without_reply(relay: Relay,
                                                             command: Command) -> None:
    assert Peer(relay).send(command, bytes(32)) == Outcome(None, close=True)


@pytest.mark.parametrize("command", SESSION_COMMANDS, ids=lambda command: command.name)
def test_session_commands_before_create_session_close_without_reply(relay: Relay,
                                                                    command: Command) -> None:
    assert connect(relay).send(command, bytes(32)) == Outcome(None, close=True)


def test_add_stream_before_version_creates_nothing(relay: Relay, tmp_path: Path) -> None:
    Peer(relay).request(AddStream("channel0_0", STREAM_PATH))

    assert tree(tmp_path) == {"lttng-traces"}


def test_start_data_is_always_ok(relay: Relay) -> None:
    assert Peer(relay).send(Command.START_DATA) == Outcome(OK, close=False)


@pytest.mark.parametrize("command", [4, 12, 14, 15, 23, 10000])
@pytest.mark.parametrize("established", [False, True], ids=["fresh", "with session"])
def test_unknown_commands_reply_unk_then_close(relay: Relay, command: int,
                                               established: bool) -> None:
    peer = open_peer(relay) if established else Peer(relay)

    assert peer.send(command, bytes(16)) == Outcome(UNK, close=True)


# --------------------------------------------------------------------------- ADD_STREAM


def test_add_stream_before_a_trace_chunk_replies_unk_with_the_consumed_handle(
        relay: Relay) -> None:
    peer = open_peer(relay, chunk=False)

    outcome = peer.request(AddStream("channel0_0", STREAM_PATH))

    assert outcome == Outcome(status_stream_reply(1, ReturnCode.UNK), close=False)
    assert peer.ok(CreateTraceChunk(0, T0)) == OK
    assert peer.add_stream("channel0_0") == 2


def test_add_stream_creates_an_empty_data_file_at_once(relay: Relay,
                                                        stream_directory: Path) -> None:
    peer = open_peer(relay)

    outcome = peer.request(AddStream("channel0_0", STREAM_PATH))

    assert outcome == Outcome(status_stream_reply(1, ReturnCode.OK), close=False)
    assert (stream_directory / "channel0_0").read_bytes() == b""
    assert not (stream_directory / "index").exists()  # created with the first packet


def test_stream_handles_are_global(relay: Relay) -> None:
    first = open_peer(relay, sessiond_session_id=1)
    second = open_peer(relay, sessiond_session_id=2, session_name="other")

    handles = [first.add_stream("channel0_0"), second.add_stream("channel0_0"),
               first.add_stream("metadata")]

    assert handles == [1, 2, 3]


def test_add_stream_of_the_metadata_channel(relay: Relay, stream_directory: Path) -> None:
    open_peer(relay).add_stream("metadata")

    assert (stream_directory / "metadata").read_bytes() == b""


@pytest.mark.parametrize(
    ("channel", "pathname"),
    [
        ("channel0_0", "../../etc"),
        ("channel0_0", "/abs/../.."),
        ("channel0_0", "a/./../b"),
        ("channel0_0", ".."),
        ("channel0_0", "ust/../../../x"),
        ("channel0_0", "ust/.."),
        ("channel0_0", "/.."),
        ("channel0_0", ".tmp_old_chunk/ust"),
        ("channel0_0", ""),
        ("../x", STREAM_PATH),
        ("..", STREAM_PATH),
        (".", STREAM_PATH),
        (".hidden", STREAM_PATH),
        ("a/b", STREAM_PATH),
        ("", STREAM_PATH),
    ],
)
def test_add_stream_refuses_hostile_names_and_creates_nothing(
        relay: Relay, tmp_path: Path, channel: str, pathname: str) -> None:
    peer = open_peer(relay)
    before = tree(tmp_path)

    outcome = peer.request(AddStream(channel, pathname))

    assert outcome == Outcome(status_stream_reply(UINT64_MAX, ReturnCode.UNK), close=False)
    assert tree(tmp_path) == before


def test_add_stream_with_a_path_still_absolute_after_one_slash_uses_up_a_handle(
        relay: Relay, tmp_path: Path) -> None:
    # lttng-relayd 2.16 drops one leading '/' (pre-2.11 peers); its trace chunk then refuses
    # "/abs" after the stream handle was taken: {handle, UNK}, connection kept.
    peer = open_peer(relay)
    before = tree(tmp_path)

    outcome = peer.request(AddStream("channel0_0", "//abs"))

    assert outcome == Outcome(status_stream_reply(1, ReturnCode.UNK), close=False)
    assert tree(tmp_path) == before
    assert peer.add_stream("channel0_0", "/" + STREAM_PATH) == 2


@pytest.mark.parametrize("minor", [13, 15])
def test_a_tracefile_size_without_a_count_is_accepted_as_unlimited(
        relay: Relay, stream_directory: Path, minor: int) -> None:
    # `lttng enable-channel --tracefile-size` without --tracefile-count sends count 0.
    # lttng-relayd 2.16 refuses it (stream.cpp:591-595); pyrelayd keeps 2.13's behaviour.
    peer = open_peer(relay, minor)

    handle = peer.add_stream("channel0_0", size=4096, count=0)

    assert relay.streams[handle].tracefile_count == 0
    assert sorted(path.name for path in stream_directory.iterdir()) == ["channel0_0_0"]


def test_add_stream_not_nul_terminated_replies_unk_then_closes(relay: Relay) -> None:
    payload = struct.pack(">IIQQQ", 2, 2, 0, 0, 0) + b"cc" + b"p\0"

    outcome = open_peer(relay).send(Command.ADD_STREAM, payload)

    assert outcome == Outcome(status_stream_reply(UINT64_MAX, ReturnCode.UNK), close=True)


def test_a_2_4_peer_sends_full_paths_relative_to_the_output_root(
        relay: Relay, output_root: Path) -> None:
    peer = open_peer(relay, minor=4)

    peer.add_stream("channel0_0", "/myhost/mysess-20240102-030405/kernel")

    assert (output_root / "myhost/mysess-20240102-030405/kernel/channel0_0").is_file()


def test_streams_sent_is_ok(relay: Relay) -> None:
    peer = open_peer(relay)
    peer.add_stream("channel0_0")

    assert peer.send(Command.STREAMS_SENT) == Outcome(OK, close=False)


# --------------------------------------------------------------------------- unknown streams


def test_close_stream_of_an_unknown_stream(relay: Relay) -> None:
    assert open_peer(relay).request(CloseStream(999, 0)) == Outcome(UNK, close=True)


def test_data_pending_of_an_unknown_stream(relay: Relay) -> None:
    outcome = open_peer(relay).request(DataPending(999, 0))

    assert outcome == Outcome(bytes.fromhex("ffffffff"), close=True)


def test_send_index_of_an_unknown_stream(relay: Relay) -> None:
    assert open_peer(relay).send_index(999, 0, 4096) == Outcome(UNK, close=True)


def test_quiescent_control_of_an_unknown_stream_is_ok(relay: Relay) -> None:
    assert open_peer(relay).request(QuiescentControl(999)) == Outcome(OK, close=False)


def test_send_metadata_of_an_unknown_stream_closes_without_reply(relay: Relay) -> None:
    assert open_peer(relay).send_metadata(999, b"/* CTF */") == Outcome(None, close=True)


def test_reset_metadata_of_an_unknown_stream(relay: Relay) -> None:
    assert open_peer(relay).request(ResetMetadata(999, 1)) == Outcome(UNK, close=True)


def test_rotate_streams_of_an_unknown_stream(relay: Relay) -> None:
    peer = open_peer(relay)

    outcome = peer.request(RotateStreams(None, (StreamRotation(999, 0),)))

    assert outcome == Outcome(generic_reply(ReturnCode.INVALID), close=True)


def test_send_index_of_a_metadata_stream_is_refused(relay: Relay) -> None:
    peer = open_peer(relay)
    metadata = peer.add_stream("metadata")

    assert peer.send_index(metadata, 0, 4096) == Outcome(UNK, close=True)


# --------------------------------------------------------------------------- other sessions


@pytest.fixture
def owner(relay: Relay) -> Peer:
    """A session with streams 1 (channel0_0) and 2 (metadata)."""
    peer = open_peer(relay, sessiond_session_id=1)
    assert (peer.add_stream("channel0_0"), peer.add_stream("metadata")) == (1, 2)
    return peer


@pytest.fixture
def intruder(relay: Relay, owner: Peer) -> Peer:
    """Another consumer's connection, with a session of its own."""
    return open_peer(relay, sessiond_session_id=2, session_name="other")


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (CloseStream(1, UINT64_MAX), Outcome(UNK, close=True)),
        (DataPending(1, 0), Outcome(bytes.fromhex("ffffffff"), close=True)),
        (SendIndex(1, 0, 8, 8, 0, 0, 0, 0, 0, 0), Outcome(UNK, close=True)),
        (ResetMetadata(2, 1), Outcome(UNK, close=True)),
        (RotateStreams(None, (StreamRotation(1, 0),)),
         Outcome(generic_reply(ReturnCode.INVALID), close=True)),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, Outcome) else None,
)
def test_streams_of_another_session_are_unknown_here(
        relay: Relay, owner: Peer, intruder: Peer, request_: Request,
        expected: Outcome) -> None:
    # Upstream lets any connection touch any stream; pyrelayd is stricter on purpose.
    assert intruder.request(request_) == expected

    stream = relay.find_stream(1)
    assert stream is not None
    assert not stream.close_requested
    assert stream.rotation is None
    assert stream.pending_indexes == {}


def test_metadata_of_another_session_cannot_be_written(
        relay: Relay, owner: Peer, intruder: Peer, stream_directory: Path) -> None:
    assert intruder.send_metadata(2, b"/* not yours */") == Outcome(None, close=True)

    assert (stream_directory / "metadata").read_bytes() == b""


def test_quiescent_control_of_another_session_does_not_check_its_stream(
        owner: Peer, intruder: Peer) -> None:
    assert owner.ok(BeginDataPending(owner.session_id)) == OK
    assert owner.data_pending(1, UINT64_MAX) == 0

    assert intruder.request(QuiescentControl(2)) == Outcome(OK, close=False)

    assert owner.ok(EndDataPending(owner.session_id)) == generic_reply(1)


# --------------------------------------------------------------------------- metadata


def test_send_metadata_has_no_reply_and_appends_payload_then_padding(
        relay: Relay, stream_directory: Path) -> None:
    peer = open_peer(relay)
    metadata = peer.add_stream("metadata")

    first = peer.send_metadata(metadata, b"/* CTF 1.8 */\n", padding=5)
    second = peer.send_metadata(metadata, b"trace { };\n", padding=0)

    assert first == second == Outcome(None, close=False)
    assert (stream_directory / "metadata").read_bytes() == (
        b"/* CTF 1.8 */\n" + bytes(5) + b"trace { };\n")


def test_send_metadata_arriving_byte_by_byte(relay: Relay, stream_directory: Path) -> None:
    peer = open_peer(relay)
    metadata = peer.add_stream("metadata")
    payload = SendMetadataHeader(metadata, 3).encode() + b"event { name = x; };"

    outcome = peer.send(Command.SEND_METADATA, payload, piece_size=1)

    assert outcome == Outcome(None, close=False)
    assert (stream_directory / "metadata").read_bytes() == b"event { name = x; };" + bytes(3)
    assert peer.request(QuiescentControl(metadata)) == Outcome(OK, close=False)


def test_send_metadata_shorter_than_its_header_closes(relay: Relay) -> None:
    peer = open_peer(relay)
    peer.add_stream("metadata")

    assert peer.send(Command.SEND_METADATA, bytes(11)) == Outcome(None, close=True)


def test_send_metadata_to_a_data_stream_closes(relay: Relay) -> None:
    peer = open_peer(relay)
    channel = peer.add_stream("channel0_0")

    assert peer.send_metadata(channel, b"/* CTF */") == Outcome(None, close=True)


def test_reset_metadata_starts_the_file_over(relay: Relay, stream_directory: Path) -> None:
    peer = open_peer(relay)
    metadata = peer.add_stream("metadata")
    peer.send_metadata(metadata, b"old metadata")

    assert peer.request(ResetMetadata(metadata, 2)) == Outcome(OK, close=False)
    peer.send_metadata(metadata, b"new")

    assert (stream_directory / "metadata").read_bytes() == b"new"


def test_reset_metadata_is_refused_for_live_sessions(relay: Relay) -> None:
    peer = open_peer(relay, live_timer=1_000_000)
    metadata = peer.add_stream("metadata")

    assert peer.request(ResetMetadata(metadata, 2)) == Outcome(UNK, close=True)


# --------------------------------------------------------------------------- a whole session


def test_a_whole_live_session(relay: Relay, output_root: Path, stream_directory: Path) -> None:
    control = Peer(relay)
    data = DataConnection(relay)
    assert control.request(Version(2, 13)).reply == version_reply()
    assert control.request(GetConfiguration(0)).reply == get_configuration_reply(10, 1)
    session_id, code, path = decode_create_session_reply_2_11(
        control.ok(session_request(live_timer=1_000_000)))
    assert (session_id, code, path) == (1, ReturnCode.OK, SESSION_PATH)
    assert control.ok(CreateTraceChunk(0, T0)) == OK
    channel = control.add_stream("channel0_0")
    metadata = control.add_stream("metadata")
    assert control.send(Command.STREAMS_SENT) == Outcome(OK, close=False)

    assert control.send_metadata(metadata, b"/* CTF 1.8 */", padding=3).reply is None
    data.send_packet(channel, 0, b"A" * 100, padding=28)
    assert control.send_index(channel, 0, 128) == Outcome(OK, close=False)
    data.send_packet(channel, 1, b"B" * 50, padding=14)
    assert control.send_index(channel, 1, 64) == Outcome(OK, close=False)
    assert control.data_pending(channel, 1) == 0
    assert control.ok(CloseStream(channel, 1)) == OK
    assert control.ok(CloseStream(metadata, UINT64_MAX)) == OK
    control.disconnect()
    data.disconnect()

    assert (stream_directory / "metadata").read_bytes() == b"/* CTF 1.8 */\0\0\0"
    assert (stream_directory / "channel0_0").read_bytes() == (
        b"A" * 100 + bytes(28) + b"B" * 50 + bytes(14))
    header, records = read_index_file((stream_directory / "index/channel0_0.idx").read_bytes())
    assert (header.minor, header.record_size) == (1, 72)
    assert records == [PacketIndex(0, 1024, 1024, 1000, 2000, 0, 0, 0, 0),
                       PacketIndex(128, 512, 512, 1001, 2001, 0, 0, 0, 1)]
    assert tree(output_root) == {
        "myhost", SESSION_PATH, *(f"{SESSION_PATH}/{part}" for part in (
            "ust", "ust/uid", "ust/uid/1000", STREAM_PATH, f"{STREAM_PATH}/metadata",
            f"{STREAM_PATH}/channel0_0", f"{STREAM_PATH}/index",
            f"{STREAM_PATH}/index/channel0_0.idx"))}
    assert relay.streams == {}
    assert relay.sessions == {}


def test_a_2_7_peer_writes_index_1_0(relay: Relay, output_root: Path) -> None:
    control = open_peer(relay, minor=7)
    data = DataConnection(relay)
    channel = control.add_stream("channel0_0", f"/{SESSION_PATH}/kernel")

    data.send_packet(channel, 0, b"x" * 32)
    assert control.send_index(channel, 0, 32) == Outcome(OK, close=False)

    raw = (output_root / SESSION_PATH / "kernel/index/channel0_0.idx").read_bytes()
    assert raw[:16] == bytes.fromhex("C1F1DCC1 00000001 00000000 00000038")
    assert read_index_file(raw)[1] == [PacketIndex(0, 256, 256, 1000, 2000, 0, 0)]


def test_beacons_add_nothing_to_the_index(relay: Relay, stream_directory: Path) -> None:
    control = open_peer(relay, live_timer=1_000_000)
    data = DataConnection(relay)
    channel = control.add_stream("channel0_0")
    data.send_packet(channel, 0, b"x" * 64)
    control.send_index(channel, 0, 64)

    beacon = SendIndex(channel, 0, 0, 0, 0, 5000, 0, 0, 0, UINT64_MAX)
    assert control.request(beacon) == Outcome(OK, close=False)

    raw = (stream_directory / "index/channel0_0.idx").read_bytes()
    assert len(raw) == 16 + 72


# --------------------------------------------------------------------------- data pending


def test_data_pending_until_data_then_index_are_in(relay: Relay) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    channel = control.add_stream("channel0_0")
    assert control.data_pending(channel, UINT64_MAX) == 0  # nothing was ever sent
    data.send_packet(channel, 0, b"x" * 16)
    control.send_index(channel, 0, 16)
    assert control.data_pending(channel, 0) == 0

    assert control.data_pending(channel, 1) == 1
    data.send_packet(channel, 1, b"y" * 16)
    assert control.data_pending(channel, 1) == 1
    control.send_index(channel, 1, 16)
    assert control.data_pending(channel, 1) == 0
    assert control.data_pending(channel, 2) == 1


def test_data_pending_of_a_first_packet_without_its_index_is_0_as_in_lttng(
        relay: Relay) -> None:
    # min(prev_data_seq, prev_index_seq) with prev_index_seq still UINT64_MAX is the data's.
    control = open_peer(relay)
    data = DataConnection(relay)
    channel = control.add_stream("channel0_0")
    assert control.data_pending(channel, 0) == 1

    data.send_packet(channel, 0, b"x" * 16)

    assert control.data_pending(channel, 0) == 0


def test_data_pending_until_index_then_data_are_in(relay: Relay) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    channel = control.add_stream("channel0_0")

    control.send_index(channel, 0, 16)
    assert control.data_pending(channel, 0) == 1
    data.send_packet(channel, 0, b"x" * 16)
    assert control.data_pending(channel, 0) == 0


def test_data_pending_without_indexes_needs_only_data(relay: Relay) -> None:
    control = open_peer(relay, snapshot=True, chunk=False)
    control.ok(CreateTraceChunk(0, T0, "snapshot-1-20240102-030405-0"))
    data = DataConnection(relay)
    channel = control.add_stream("channel0_0")

    data.send_packet(channel, 0, b"x" * 16)

    assert control.data_pending(channel, 0) == 0


def test_end_data_pending_is_1_while_a_stream_was_not_queried(relay: Relay) -> None:
    control = open_peer(relay)
    channel = control.add_stream("channel0_0")
    metadata = control.add_stream("metadata")

    assert control.ok(BeginDataPending(control.session_id)) == OK
    assert control.data_pending(channel, UINT64_MAX) == 0
    assert control.ok(EndDataPending(control.session_id)) == generic_reply(1)

    assert control.ok(BeginDataPending(control.session_id)) == OK
    assert control.data_pending(channel, UINT64_MAX) == 0
    assert control.ok(QuiescentControl(metadata)) == OK
    assert control.ok(EndDataPending(control.session_id)) == generic_reply(0)


def test_end_data_pending_ignores_closed_streams(relay: Relay) -> None:
    control = open_peer(relay)
    channel = control.add_stream("channel0_0")
    metadata = control.add_stream("metadata")
    control.ok(CloseStream(channel, UINT64_MAX))

    control.ok(BeginDataPending(control.session_id))
    control.ok(QuiescentControl(metadata))

    assert control.ok(EndDataPending(control.session_id)) == generic_reply(0)


def test_begin_data_pending_resets_previous_checks(relay: Relay) -> None:
    control = open_peer(relay)
    metadata = control.add_stream("metadata")
    control.ok(BeginDataPending(control.session_id))
    control.ok(QuiescentControl(metadata))
    assert control.ok(EndDataPending(control.session_id)) == generic_reply(0)

    control.ok(BeginDataPending(control.session_id))

    assert control.ok(EndDataPending(control.session_id)) == generic_reply(1)


# --------------------------------------------------------------------------- closing streams


def test_close_stream_waits_for_the_announced_last_packet(relay: Relay,
                                                          stream_directory: Path) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    channel = control.add_stream("channel0_0")
    data.send_packet(channel, 0, b"a" * 8)
    control.send_index(channel, 0, 8)

    assert control.request(CloseStream(channel, 1)) == Outcome(OK, close=False)
    assert relay.find_stream(channel) is not None

    control.send_index(channel, 1, 8)
    data.send_packet(channel, 1, b"b" * 8)

    assert relay.find_stream(channel) is None
    assert (stream_directory / "channel0_0").read_bytes() == b"a" * 8 + b"b" * 8
    assert len(read_index_file((stream_directory / "index/channel0_0.idx").read_bytes())[1]) == 2


def test_orderly_disconnect_lets_in_flight_data_arrive(relay: Relay) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    channel = control.add_stream("channel0_0")
    control.send_index(channel, 0, 8)  # its data is still on its way

    control.disconnect()
    assert relay.find_stream(channel) is not None
    data.send_packet(channel, 0, b"x" * 8)

    assert relay.find_stream(channel) is None


def test_a_failed_connection_aborts_its_session(relay: Relay) -> None:
    control = open_peer(relay)
    channel = control.add_stream("channel0_0")
    control.send_index(channel, 0, 8)  # its data is still on its way
    assert control.send(10000) == Outcome(UNK, close=True)

    control.disconnect()

    assert relay.find_stream(channel) is None
    assert relay.sessions == {}


# --------------------------------------------------------------------------- trace chunks


def test_create_trace_chunk_is_ok_and_unknown_before_2_11(relay: Relay) -> None:
    assert open_peer(relay, chunk=False).request(CreateTraceChunk(0, T0)) == Outcome(OK, False)
    assert open_peer(relay, minor=10).request(CreateTraceChunk(0, T0)) == Outcome(None, True)


def test_a_third_create_trace_chunk_before_close_is_a_protocol_error(relay: Relay) -> None:
    peer = open_peer(relay)
    assert peer.request(CreateTraceChunk(1, T1)) == Outcome(OK, close=False)

    outcome = peer.request(CreateTraceChunk(2, T2))

    assert outcome == Outcome(generic_reply(ReturnCode.INVALID_PROTOCOL), close=True)


@pytest.mark.parametrize("name", ["a.b", "..", "a/b", ""])
def test_create_trace_chunk_with_an_unsafe_name_is_invalid(relay: Relay, tmp_path: Path,
                                                           name: str) -> None:
    peer = open_peer(relay, chunk=False)
    before = tree(tmp_path)

    outcome = peer.request(CreateTraceChunk(0, T0, name))

    assert outcome == Outcome(generic_reply(ReturnCode.INVALID), close=True)
    assert tree(tmp_path) == before


def test_close_trace_chunk_of_an_unknown_chunk_replies_nomem(relay: Relay) -> None:
    outcome = open_peer(relay).request(CloseTraceChunk(9, T1, CloseCommand.NO_OPERATION))

    assert outcome == Outcome(bytes.fromhex("0000001a 00000000"), close=True)


def test_close_trace_chunk_delete_when_clear_is_disallowed(output_root: Path) -> None:
    relay = Relay(RelaySettings(output_root=output_root, allow_clear=False))
    peer = open_peer(relay)
    peer.add_stream("channel0_0")

    outcome = peer.request(CloseTraceChunk(0, T1, CloseCommand.DELETE))

    assert outcome == Outcome(bytes.fromhex("00000098 00000000"), close=True)
    assert (output_root / SESSION_PATH / STREAM_PATH / "channel0_0").exists()


def test_close_trace_chunk_with_an_unknown_command_is_invalid(relay: Relay) -> None:
    outcome = open_peer(relay).request(CloseTraceChunk(0, T1, 7))

    assert outcome == Outcome(close_trace_chunk_reply(ReturnCode.INVALID, None), close=True)


def test_close_trace_chunk_other_than_the_one_pending_closure(relay: Relay) -> None:
    peer = open_peer(relay)
    peer.ok(CreateTraceChunk(1, T1))

    outcome = peer.request(CloseTraceChunk(1, T2, CloseCommand.MOVE_TO_COMPLETED))

    assert outcome == Outcome(close_trace_chunk_reply(152, None), close=True)


def test_trace_chunk_exists(relay: Relay) -> None:
    peer = open_peer(relay)

    assert peer.request(TraceChunkExists(0)) == Outcome(trace_chunk_exists_reply(10, True), False)
    assert peer.request(TraceChunkExists(1)) == Outcome(trace_chunk_exists_reply(10, False), False)


@pytest.mark.parametrize("padding", RotateStreams.PADDINGS)
def test_rotate_streams_accepts_every_sender_abi(relay: Relay, padding: int) -> None:
    peer = open_peer(relay)
    metadata = peer.add_stream("metadata")
    peer.ok(CreateTraceChunk(1, T1))
    payload = RotateStreams(1, (StreamRotation(metadata, 0),)).encode(padding=padding)

    assert peer.send(Command.ROTATE_STREAMS, payload) == Outcome(OK, close=False)


@pytest.mark.parametrize("size", [12, 14, 15, 17, 19, 21, 28, 29 + 16])
def test_rotate_streams_of_a_wrong_size_closes_without_reply(relay: Relay, size: int) -> None:
    peer = open_peer(relay)
    payload = struct.pack(">I", 1) + bytes(size - 4)

    assert peer.send(Command.ROTATE_STREAMS, payload) == Outcome(None, close=True)


def test_rotate_streams_to_an_unknown_chunk(relay: Relay) -> None:
    peer = open_peer(relay)
    channel = peer.add_stream("channel0_0")

    outcome = peer.request(RotateStreams(5, (StreamRotation(channel, 0),)))

    assert outcome == Outcome(generic_reply(ReturnCode.INVALID_PROTOCOL), close=True)


def test_rotate_streams_of_a_stream_already_rotating(relay: Relay) -> None:
    peer = open_peer(relay)
    channel = peer.add_stream("channel0_0")  # no data yet: its rotation stays pending
    peer.ok(CreateTraceChunk(1, T1))
    peer.ok(RotateStreams(1, (StreamRotation(channel, 5),)))

    outcome = peer.request(RotateStreams(1, (StreamRotation(channel, 5),)))

    assert outcome == Outcome(generic_reply(ReturnCode.FILE_CREATION_ERROR), close=True)


def test_rotate_streams_is_unknown_before_2_11(relay: Relay) -> None:
    assert open_peer(relay, minor=10).request(RotateStreams(None, ())) == Outcome(None, True)


# --------------------------------------------------------------------------- rotations


def one_packet_per_stream(control: Peer, data: DataConnection) -> tuple[int, int]:
    """A data stream with packet 0 (CTF packet_seq_num 0) fully in, and some metadata."""
    channel = control.add_stream("channel0_0")
    metadata = control.add_stream("metadata")
    control.send_metadata(metadata, b"/* CTF 1.8 */")
    data.send_packet(channel, 0, b"P" * 32)
    control.send_index(channel, 0, 32, packet_seq_num=0)
    return channel, metadata


def rotate(control: Peer, chunk_id: int, streams: tuple[int, int]) -> None:
    channel, metadata = streams
    entries = (StreamRotation(channel, 1), StreamRotation(metadata, 0))
    assert control.ok(RotateStreams(chunk_id, entries)) == OK


def test_first_rotation_archives_chunk_0_and_replies_the_bare_session_path(
        relay: Relay, output_root: Path) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    streams = one_packet_per_stream(control, data)

    assert control.ok(CreateTraceChunk(1, T1)) == OK
    rotate(control, 1, streams)
    outcome = control.request(CloseTraceChunk(0, T1, CloseCommand.MOVE_TO_COMPLETED))

    # lttng marks the session rotated only after choosing the path: the first reply is bare.
    assert outcome == Outcome(close_trace_chunk_reply(ReturnCode.OK, SESSION_PATH), close=False)
    session = output_root / SESSION_PATH
    archived = session / "archives" / CHUNK_0_ARCHIVE / STREAM_PATH
    assert (archived / "channel0_0").read_bytes() == b"P" * 32
    assert (archived / "metadata").read_bytes() == b"/* CTF 1.8 */"
    assert len(read_index_file((archived / "index/channel0_0.idx").read_bytes())[1]) == 1
    current = session / CHUNK_1 / STREAM_PATH
    assert (current / "channel0_0").read_bytes() == b""
    assert (current / "metadata").read_bytes() == b""
    assert sorted(path.name for path in session.iterdir()) == [CHUNK_1, "archives"]


def test_second_rotation_replies_the_archive_path(relay: Relay, output_root: Path) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    streams = one_packet_per_stream(control, data)
    control.ok(CreateTraceChunk(1, T1))
    rotate(control, 1, streams)
    control.ok(CloseTraceChunk(0, T1, CloseCommand.MOVE_TO_COMPLETED))

    control.ok(CreateTraceChunk(2, T2))
    rotate(control, 2, streams)
    outcome = control.request(CloseTraceChunk(1, T2, CloseCommand.MOVE_TO_COMPLETED))

    archive = "20240102T031000+0000-20240102T032000+0000-1"
    assert outcome == Outcome(
        close_trace_chunk_reply(ReturnCode.OK, f"{SESSION_PATH}/archives/{archive}"), False)
    session = output_root / SESSION_PATH
    assert sorted(path.name for path in (session / "archives").iterdir()) == [
        CHUNK_0_ARCHIVE, archive]
    assert sorted(path.name for path in session.iterdir()) == [
        "20240102T032000+0000-2", "archives"]


def test_chunk_0_stays_until_its_last_stream_rotates(relay: Relay, output_root: Path) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    channel, metadata = one_packet_per_stream(control, data)
    control.ok(CreateTraceChunk(1, T1))
    # The index of packet_seq_num 1 (the first of chunk 1) has not come yet.
    control.ok(RotateStreams(1, (StreamRotation(channel, 2), StreamRotation(metadata, 0))))
    control.ok(CloseTraceChunk(0, T1, CloseCommand.MOVE_TO_COMPLETED))
    assert not (output_root / SESSION_PATH / "archives").exists()
    assert control.request(TraceChunkExists(0)).reply == trace_chunk_exists_reply(10, True)

    data.send_packet(channel, 1, b"Q" * 32)
    control.send_index(channel, 1, 32, packet_seq_num=1)

    archived = output_root / SESSION_PATH / "archives" / CHUNK_0_ARCHIVE / STREAM_PATH
    assert (archived / "channel0_0").read_bytes() == b"P" * 32 + b"Q" * 32
    assert control.request(TraceChunkExists(0)).reply == trace_chunk_exists_reply(10, False)


def test_clear_deletes_the_old_chunk_and_keeps_the_new_one_in_the_session_root(
        relay: Relay, output_root: Path) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    streams = one_packet_per_stream(control, data)
    control.ok(CreateTraceChunk(1, T1))
    rotate(control, 1, streams)

    outcome = control.request(CloseTraceChunk(0, T1, CloseCommand.DELETE))

    assert outcome == Outcome(close_trace_chunk_reply(ReturnCode.OK, SESSION_PATH), close=False)
    stream_directory = output_root / SESSION_PATH / STREAM_PATH
    assert (stream_directory / "channel0_0").read_bytes() == b""
    assert (stream_directory / "metadata").read_bytes() == b""
    assert sorted(path.name for path in (output_root / SESSION_PATH).iterdir()) == ["ust"]


def test_destroy_of_a_never_rotated_session_leaves_files_in_place(
        relay: Relay, output_root: Path) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    channel, metadata = one_packet_per_stream(control, data)
    control.ok(RotateStreams(None, (StreamRotation(channel, 1), StreamRotation(metadata, 0))))

    outcome = control.request(CloseTraceChunk(0, T1, CloseCommand.NO_OPERATION))

    assert outcome == Outcome(close_trace_chunk_reply(ReturnCode.OK, SESSION_PATH), close=False)
    assert control.request(TraceChunkExists(0)).reply == trace_chunk_exists_reply(10, False)
    control.ok(CloseStream(channel, 0))
    control.ok(CloseStream(metadata, UINT64_MAX))
    stream_directory = output_root / SESSION_PATH / STREAM_PATH
    assert (stream_directory / "channel0_0").read_bytes() == b"P" * 32
    assert (stream_directory / "metadata").read_bytes() == b"/* CTF 1.8 */"
    assert sorted(path.name for path in (output_root / SESSION_PATH).iterdir()) == ["ust"]


def test_rotation_of_a_stopped_session_then_restart(relay: Relay, output_root: Path) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    channel, metadata = one_packet_per_stream(control, data)

    # `lttng stop; lttng rotate`: no new chunk yet.
    control.ok(RotateStreams(None, (StreamRotation(channel, 1), StreamRotation(metadata, 0))))
    outcome = control.request(CloseTraceChunk(0, T1, CloseCommand.MOVE_TO_COMPLETED))
    assert outcome == Outcome(close_trace_chunk_reply(ReturnCode.OK, SESSION_PATH), close=False)
    session = output_root / SESSION_PATH
    assert (session / "archives" / CHUNK_0_ARCHIVE / STREAM_PATH / "channel0_0").read_bytes() == (
        b"P" * 32)

    # `lttng start`: the new chunk is created under its own name, no CLOSE follows.
    assert control.ok(CreateTraceChunk(1, T1)) == OK
    rotate(control, 1, (channel, metadata))
    data.send_packet(channel, 1, b"R" * 16)

    assert (session / CHUNK_1 / STREAM_PATH / "channel0_0").read_bytes() == b"R" * 16
    assert sorted(path.name for path in session.iterdir()) == [CHUNK_1, "archives"]


def test_clear_of_a_stopped_session_then_restart(relay: Relay, output_root: Path) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    channel, metadata = one_packet_per_stream(control, data)

    control.ok(RotateStreams(None, (StreamRotation(channel, 1), StreamRotation(metadata, 0))))
    outcome = control.request(CloseTraceChunk(0, T1, CloseCommand.DELETE))
    assert outcome == Outcome(close_trace_chunk_reply(ReturnCode.OK, SESSION_PATH), close=False)
    session = output_root / SESSION_PATH
    assert list(session.iterdir()) == []

    assert control.ok(CreateTraceChunk(1, T1)) == OK
    rotate(control, 1, (channel, metadata))
    data.send_packet(channel, 1, b"R" * 16)

    assert (session / STREAM_PATH / "channel0_0").read_bytes() == b"R" * 16
    assert sorted(path.name for path in session.iterdir()) == ["ust"]


def test_consumers_of_one_session_share_their_chunks_through_a_rotation(
        relay: Relay, output_root: Path) -> None:
    # One relay session per consumer daemon; each sends the same chunk commands.
    ust = open_peer(relay, sessiond_session_id=5)
    kernel = open_peer(relay, sessiond_session_id=5)
    ust_data, kernel_data = DataConnection(relay), DataConnection(relay)
    ust_streams = one_packet_per_stream(ust, ust_data)
    kernel_channel = kernel.add_stream("channel0_0", "kernel")
    kernel_metadata = kernel.add_stream("metadata", "kernel")
    kernel_data.send_packet(kernel_channel, 0, b"K" * 32)
    kernel.send_index(kernel_channel, 0, 32, packet_seq_num=0)

    for peer in (ust, kernel):
        assert peer.ok(CreateTraceChunk(1, T1)) == OK
    rotate(ust, 1, ust_streams)
    rotate(kernel, 1, (kernel_channel, kernel_metadata))
    replies = [peer.request(CloseTraceChunk(0, T1, CloseCommand.MOVE_TO_COMPLETED))
               for peer in (ust, kernel)]

    assert replies == [Outcome(close_trace_chunk_reply(ReturnCode.OK, SESSION_PATH), False)] * 2
    archive = output_root / SESSION_PATH / "archives" / CHUNK_0_ARCHIVE
    assert (archive / STREAM_PATH / "channel0_0").read_bytes() == b"P" * 32
    assert (archive / "kernel" / "channel0_0").read_bytes() == b"K" * 32
    current = output_root / SESSION_PATH / CHUNK_1
    assert sorted(path.name for path in current.iterdir()) == ["kernel", "ust"]


def test_a_snapshot_goes_to_its_named_chunk_without_indexes(
        relay: Relay, output_root: Path) -> None:
    control = open_peer(relay, chunk=False, snapshot=True)
    data = DataConnection(relay)
    assert control.ok(CreateTraceChunk(0, T0, "snapshot-1-20240102-030405-0")) == OK
    channel = control.add_stream("channel0_0")
    data.send_packet(channel, 0, b"S" * 64)
    control.ok(CloseStream(channel, 0))

    outcome = control.request(CloseTraceChunk(0, T1, CloseCommand.NO_OPERATION))

    path = f"{SESSION_PATH}/snapshot-1-20240102-030405-0"
    assert outcome == Outcome(close_trace_chunk_reply(ReturnCode.OK, path), close=False)
    stream_directory = output_root / path / STREAM_PATH
    assert (stream_directory / "channel0_0").read_bytes() == b"S" * 64
    assert not (stream_directory / "index").exists()


def test_a_2_4_peer_regrouped_by_session(output_root: Path) -> None:
    relay = Relay(RelaySettings(output_root=output_root, group_output_by=GroupOutputBy.SESSION))
    peer = open_peer(relay, minor=4)

    peer.add_stream("channel0_0", "/myhost/mysess-20240102-030405/kernel")

    assert (output_root / "mysess/myhost-20240102-030405/kernel/channel0_0").is_file()


def test_end_data_pending_of_an_unknown_session_is_0(relay: Relay) -> None:
    assert open_peer(relay).ok(EndDataPending(999)) == generic_reply(0)


# --------------------------------------------------------------------------- framing


def scripted_session(minor: int) -> tuple[bytes, bytes]:
    """A consumer's control byte stream up to its first index, and the relay's replies."""
    requests: list[tuple[int, bytes]] = [
        (Command.VERSION, Version(2, minor).encode()),
        (Command.GET_CONFIGURATION, GetConfiguration(0).encode()),
        (Command.CREATE_SESSION,
         session_request(trace_format=TraceFormat.CTF_2).encode(minor)),
        (Command.CREATE_TRACE_CHUNK, CreateTraceChunk(0, T0).encode()),
        (Command.ADD_STREAM, AddStream("channel0_0", STREAM_PATH).encode(minor)),
        (Command.ADD_STREAM, AddStream("metadata", STREAM_PATH).encode(minor)),
        (Command.STREAMS_SENT, b""),
        (Command.SEND_METADATA, SendMetadataHeader(2, 4).encode() + b"/* CTF 1.8 */"),
        (Command.SEND_INDEX, SendIndex(1, 0, 256, 256, 1, 2, 0, 0, 0, 0).encode(minor)),
        (Command.DATA_PENDING, DataPending(1, 0).encode()),
        (Command.QUIESCENT_CONTROL, QuiescentControl(2).encode()),
    ]
    path = SESSION_PATH.encode() + b"\0"
    replies = b"".join([
        version_reply(), get_configuration_reply(10, 1),
        struct.pack(">QII", 1, 10, len(path)) + path, OK,
        status_stream_reply(1, 10), status_stream_reply(2, 10), OK,
        OK, generic_reply(1), OK,  # SEND_METADATA has no reply; data pending: 1
    ])
    raw = b"".join(ControlHeader(command, len(payload)).encode() + payload
                   for command, payload in requests)
    return raw, replies


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, 200), max_size=60))
@pytest.mark.parametrize("minor", [13, 15])
def test_control_bytes_split_anywhere_get_the_same_replies_and_files(
        utc: None, minor: int, cuts: list[int]) -> None:
    raw, replies = scripted_session(minor)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        peer = Peer(Relay(RelaySettings(output_root=root)))
        position = 0
        for size in [*cuts, len(raw)]:
            peer.send_raw(raw[position : position + size])
            position += size

        assert bytes(peer.transport.written) == replies
        assert not peer.transport.closed
        metadata = root / SESSION_PATH / STREAM_PATH / "metadata"
        assert metadata.read_bytes() == b"/* CTF 1.8 */" + bytes(4)
        [session] = peer.protocol.handler.relay.sessions.values()
        assert session.trace_format is (TraceFormat.CTF_2 if minor >= 15
                                        else TraceFormat.CTF_1_8)



def test_a_failed_add_stream_does_not_keep_the_chunk_alive(relay: Relay,
                                                           output_root: Path) -> None:
    control = open_peer(relay)
    data = DataConnection(relay)
    streams = one_packet_per_stream(control, data)
    # Its data file would be the directory ust/uid: the relay cannot create it (EISDIR).
    outcome = control.request(AddStream("uid", "ust"))
    assert outcome == Outcome(status_stream_reply(3, ReturnCode.UNK), close=False)

    control.ok(CreateTraceChunk(1, T1))
    rotate(control, 1, streams)
    control.ok(CloseTraceChunk(0, T1, CloseCommand.MOVE_TO_COMPLETED))

    assert control.request(TraceChunkExists(0)).reply == trace_chunk_exists_reply(10, False)
    assert (output_root / SESSION_PATH / "archives" / CHUNK_0_ARCHIVE).is_dir()


def test_a_symlink_in_the_output_root_is_not_followed(relay: Relay, tmp_path: Path,
                                                      output_root: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (output_root / "myhost").symlink_to(elsewhere)

    outcome = connect(relay).request(session_request())

    assert outcome == Outcome(FATAL_2_11, close=False)
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_in_the_session_directory_is_not_followed(relay: Relay, tmp_path: Path,
                                                            output_root: Path) -> None:
    peer = open_peer(relay)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (output_root / SESSION_PATH / "ust").symlink_to(elsewhere)

    outcome = peer.request(AddStream("channel0_0", STREAM_PATH))

    assert outcome == Outcome(status_stream_reply(UINT64_MAX, ReturnCode.UNK), close=False)
    assert list(elsewhere.iterdir()) == []
