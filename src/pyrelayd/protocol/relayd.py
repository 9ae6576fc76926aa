"""Sans-IO codec of the relayd control and data protocol (ports 5342/5343).

Every request is a frozen dataclass with `decode(payload, minor)` and `encode(minor)`;
replies are built by the `*_reply` functions. Nothing here touches a socket or a file:
the server feeds bytes in and writes the bytes it gets back. All integers are big-endian.
The byte layouts are those of lttng-tools' `src/common/sessiond-comm/relayd.h` (2.13.9) and,
for what 2.15 changed (CREATE_SESSION's trace format), `relayd.hpp` (2.15.1, 2.16).
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable, Iterator
from typing import ClassVar, NamedTuple, Self

from pyrelayd.constants import UINT32_MAX as UINT32_MAX
from pyrelayd.constants import UINT64_MAX as UINT64_MAX

RELAYD_VERSION_MAJOR = 2
# What the relay announces in its VERSION reply: 15, as lttng-relayd 2.15 and 2.16 do. A 2.15+
# session daemon refuses CTF 2 sessions on a relay announcing less.
RELAYD_VERSION_MINOR = 15

CONTROL_HEADER = struct.Struct(">QQII")  # circuit_id, data_size, cmd, cmd_version
DATA_HEADER = struct.Struct(">QQQII")  # circuit_id, stream_id, net_seq_num, data_size, padding
CONTROL_HEADER_SIZE = CONTROL_HEADER.size  # 24
DATA_HEADER_SIZE = DATA_HEADER.size  # 32

# A control payload larger than this closes the connection (lttng's own limit).
MAX_CONTROL_PAYLOAD = 128 * 1024 * 1024

# Field limits of lttng 2.13 (sessiond-comm/relayd.h, lttng/constant.h, defaults.h).
NAME_MAX = 255  # LTTNG_NAME_MAX
HOST_NAME_MAX = 256  # LTTNG_HOST_NAME_MAX (the 2.4 format has a fixed 64-byte field)
PATH_MAX = 4096  # LTTNG_PATH_MAX
STREAM_NAME_LEN = 264  # DEFAULT_STREAM_NAME_LEN
HOST_NAME_MAX_2_4 = 64
NAME_MAX_2_4 = 255


class Command(enum.IntEnum):
    ADD_STREAM = 1
    CREATE_SESSION = 2
    START_DATA = 3
    UPDATE_SYNC_INFO = 4
    VERSION = 5
    SEND_METADATA = 6
    CLOSE_STREAM = 7
    DATA_PENDING = 8
    QUIESCENT_CONTROL = 9
    BEGIN_DATA_PENDING = 10
    END_DATA_PENDING = 11
    ADD_INDEX = 12
    SEND_INDEX = 13
    CLOSE_INDEX = 14
    LIST_SESSIONS = 15
    STREAMS_SENT = 16
    RESET_METADATA = 17
    ROTATE_STREAMS = 18
    CREATE_TRACE_CHUNK = 19
    CLOSE_TRACE_CHUNK = 20
    TRACE_CHUNK_EXISTS = 21
    GET_CONFIGURATION = 22


class ReturnCode(enum.IntEnum):
    """lttng error codes used in relayd replies (LTTNG_OK is 10, not 0)."""

    OK = 10
    UNK = 11
    FATAL = 25
    NOMEM = 26
    INVALID = 97
    INVALID_PROTOCOL = 152
    FILE_CREATION_ERROR = 153


class TraceFormat(enum.IntEnum):
    """A session's trace format, with lttng's public values (`lttng_trace_format`).

    Sent by 2.15+ peers in CREATE_SESSION (protocol minor >= 15); sessions of older peers are
    CTF 1.8. The relay never looks inside the trace: the format only matters to live viewers.
    """

    CTF_1_8 = 1
    CTF_2 = 2

    @property
    def label(self) -> str:
        return "ctf-1.8" if self is TraceFormat.CTF_1_8 else "ctf-2"


class CloseCommand(enum.IntEnum):
    MOVE_TO_COMPLETED = 0
    NO_OPERATION = 1
    DELETE = 2


CONFIGURATION_FLAG_CLEAR_ALLOWED = 1


class ProtocolError(Exception):
    """A request that cannot be decoded; the connection is closed after `reply` (if any).

    Handlers may answer it otherwise: a CREATE_SESSION that cannot be decoded gets the FATAL
    reply and the connection stays open, as in lttng-relayd.
    """

    def __init__(self, message: str, reply: bytes | None = None) -> None:
        super().__init__(message)
        self.reply = reply


# --------------------------------------------------------------------------- headers


class ControlHeader(NamedTuple):
    """The 24-byte header of every control request (a named tuple: one is decoded per
    request, and a tuple is several times cheaper to build than a frozen dataclass)."""

    command: int
    data_size: int
    circuit_id: int = 0
    command_version: int = 0

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview) -> ControlHeader:
        circuit_id, data_size, command, command_version = CONTROL_HEADER.unpack(raw)
        return tuple.__new__(cls, (command, data_size, circuit_id, command_version))

    def encode(self) -> bytes:
        return CONTROL_HEADER.pack(
            self.circuit_id, self.data_size, self.command, self.command_version
        )


class DataHeader(NamedTuple):
    """The 32-byte header of every data packet (a named tuple: one is decoded per packet)."""

    stream_id: int
    net_seq_num: int
    data_size: int
    padding_size: int
    circuit_id: int = 0

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview) -> DataHeader:
        circuit_id, stream_id, net_seq_num, data_size, padding = DATA_HEADER.unpack(raw)
        return tuple.__new__(cls, (stream_id, net_seq_num, data_size, padding, circuit_id))

    def encode(self) -> bytes:
        return DATA_HEADER.pack(
            self.circuit_id, self.stream_id, self.net_seq_num, self.data_size, self.padding_size
        )


def encode_request(command: Command, payload: bytes = b"") -> bytes:
    """Header + payload of one control request (what a consumerd sends)."""
    return ControlHeader(command, len(payload)).encode() + payload


# --------------------------------------------------------------------------- helpers


def _need(payload: bytes, size: int, what: str) -> None:
    if len(payload) < size:
        raise ProtocolError(f"{what}: payload of {len(payload)} bytes, expected >= {size}")


def _c_string(raw: bytes, what: str) -> str:
    """A NUL-terminated string field; bytes after the first NUL are ignored, as in C."""
    if not raw or raw[-1] != 0:
        raise ProtocolError(f"{what} is not NUL-terminated")
    text = raw[: raw.index(0)]
    try:
        return text.decode()
    except UnicodeDecodeError as error:
        raise ProtocolError(f"{what} is not valid UTF-8") from error


def _fixed_string(raw: bytes, what: str) -> str:
    """A fixed-size char array that must hold a NUL somewhere."""
    if 0 not in raw:
        raise ProtocolError(f"{what} is not NUL-terminated")
    return _c_string(raw[: raw.index(0) + 1], what)


def _pack_fixed(text: str, size: int) -> bytes:
    raw = text.encode()
    if len(raw) >= size:
        raise ValueError(f"{text!r} does not fit in {size} bytes")
    return raw.ljust(size, b"\0")


def _pack_c(text: str) -> bytes:
    return text.encode() + b"\0"


class _FixedRequest:
    """A request whose payload is one fixed struct of its fields, in declaration order."""

    __slots__ = ()
    COMMAND: ClassVar[Command]
    FORMAT: ClassVar[struct.Struct]

    @classmethod
    def decode(cls, payload: bytes, minor: int = 0) -> Self:
        _need(payload, cls.FORMAT.size, cls.COMMAND.name)
        return cls(*cls.FORMAT.unpack_from(payload))

    def encode(self, minor: int = 0) -> bytes:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return self.FORMAT.pack(*(getattr(self, field.name) for field in fields))


# --------------------------------------------------------------------------- requests


@dataclasses.dataclass(frozen=True, slots=True)
class Version(_FixedRequest):
    COMMAND: ClassVar[Command] = Command.VERSION
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">II")
    major: int
    minor: int


@dataclasses.dataclass(frozen=True, slots=True)
class GetConfiguration(_FixedRequest):
    COMMAND: ClassVar[Command] = Command.GET_CONFIGURATION
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">Q")
    query_flags: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class CreateSession:
    """CREATE_SESSION in its four shapes: empty (< 2.4), 2.4, 2.11 and 2.15 (minor >= 15).

    The 2.15 shape is the 2.11 fixed part, then the trace format (u32 at offset 59), then the
    names. Older shapes carry no trace format: their sessions are CTF 1.8, and encoding one
    for a minor < 15 leaves `trace_format` out.
    """

    COMMAND: ClassVar[Command] = Command.CREATE_SESSION
    FORMAT_2_4: ClassVar[struct.Struct] = struct.Struct(f">{NAME_MAX_2_4}s{HOST_NAME_MAX_2_4}sII")
    FORMAT_2_11: ClassVar[struct.Struct] = struct.Struct(">IIIIBB16sQQBQ")
    FORMAT_2_15: ClassVar[struct.Struct] = struct.Struct(">IIIIBB16sQQBQI")
    session_name: str = ""
    hostname: str = ""
    base_path: str = ""
    live_timer: int = 0
    snapshot: bool = False
    session_name_contains_creation_time: bool = False
    sessiond_uuid: bytes = bytes(16)
    sessiond_session_id: int = 0
    creation_time: int | None = None
    current_chunk_id: int | None = None
    trace_format: TraceFormat = TraceFormat.CTF_1_8

    @classmethod
    def decode(cls, payload: bytes, minor: int) -> Self:
        if minor < 4:
            return cls()
        if minor < 11:
            _need(payload, cls.FORMAT_2_4.size, "CREATE_SESSION 2.4")
            name, host, live_timer, snapshot = cls.FORMAT_2_4.unpack_from(payload)
            return cls(
                session_name=_fixed_string(name, "session name"),
                hostname=_fixed_string(host, "hostname"),
                live_timer=live_timer,
                snapshot=bool(snapshot),
            )
        trace_format = TraceFormat.CTF_1_8
        if minor < 15:
            fixed = cls.FORMAT_2_11.size
            _need(payload, fixed, "CREATE_SESSION 2.11")
            fields = cls.FORMAT_2_11.unpack_from(payload)
        else:
            fixed = cls.FORMAT_2_15.size
            _need(payload, fixed, "CREATE_SESSION 2.15")
            values = cls.FORMAT_2_15.unpack_from(payload)
            fields, raw_format = values[:-1], values[-1]
            try:
                trace_format = TraceFormat(raw_format)
            except ValueError:
                raise ProtocolError(f"unknown trace format {raw_format}") from None
        (name_len, host_len, base_len, live_timer, snapshot, name_has_time, uuid,
         session_id, creation_time, chunk_is_set, chunk_id) = fields
        if not 0 < name_len <= NAME_MAX:
            raise ProtocolError(f"session name length {name_len} out of range")
        if host_len > HOST_NAME_MAX:
            raise ProtocolError(f"hostname length {host_len} out of range")
        if base_len > PATH_MAX:
            raise ProtocolError(f"base path length {base_len} out of range")
        _need(payload, fixed + name_len + host_len + base_len, "CREATE_SESSION names")
        offset = fixed
        name = _c_string(payload[offset : offset + name_len], "session name")
        offset += name_len
        host = _c_string(payload[offset : offset + host_len], "hostname")
        offset += host_len
        base = _c_string(payload[offset : offset + base_len], "base path") if base_len else ""
        return cls(
            session_name=name,
            hostname=host,
            base_path=base,
            live_timer=live_timer,
            snapshot=bool(snapshot),
            session_name_contains_creation_time=bool(name_has_time),
            sessiond_uuid=uuid,
            sessiond_session_id=session_id,
            creation_time=creation_time,
            current_chunk_id=chunk_id if chunk_is_set else None,
            trace_format=trace_format,
        )

    def encode(self, minor: int) -> bytes:
        if minor < 4:
            return b""
        if minor < 11:
            return self.FORMAT_2_4.pack(
                _pack_fixed(self.session_name, NAME_MAX_2_4),
                _pack_fixed(self.hostname, HOST_NAME_MAX_2_4),
                self.live_timer,
                int(self.snapshot),
            )
        names = [_pack_c(self.session_name), _pack_c(self.hostname), _pack_c(self.base_path)]
        fields = (
            len(names[0]), len(names[1]), len(names[2]), self.live_timer, int(self.snapshot),
            int(self.session_name_contains_creation_time), self.sessiond_uuid,
            self.sessiond_session_id, self.creation_time or 0,
            int(self.current_chunk_id is not None), self.current_chunk_id or 0,
        )
        if minor < 15:
            fixed = self.FORMAT_2_11.pack(*fields)
        else:
            fixed = self.FORMAT_2_15.pack(*fields, self.trace_format)
        return fixed + b"".join(names)


@dataclasses.dataclass(frozen=True, slots=True)
class AddStream:
    COMMAND: ClassVar[Command] = Command.ADD_STREAM
    FORMAT_2_1: ClassVar[struct.Struct] = struct.Struct(f">{STREAM_NAME_LEN}s{PATH_MAX}s")
    FORMAT_2_2: ClassVar[struct.Struct] = struct.Struct(f">{STREAM_NAME_LEN}s{PATH_MAX}sQQ")
    FORMAT_2_11: ClassVar[struct.Struct] = struct.Struct(">IIQQQ")
    channel_name: str
    pathname: str
    tracefile_size: int = 0
    tracefile_count: int = 0
    trace_chunk_id: int = 0

    @classmethod
    def decode(cls, payload: bytes, minor: int) -> Self:
        if minor < 11:
            fmt = cls.FORMAT_2_1 if minor < 2 else cls.FORMAT_2_2
            _need(payload, fmt.size, "ADD_STREAM")
            fields = fmt.unpack_from(payload)
            channel = _fixed_string(fields[0], "channel name")
            path = _fixed_string(fields[1], "path name")
            if len(channel.encode()) >= STREAM_NAME_LEN or len(path.encode()) >= NAME_MAX:
                raise ProtocolError("ADD_STREAM name too long")
            size, count = (fields[2], fields[3]) if minor >= 2 else (0, 0)
            return cls(channel, path, size, count)
        fixed = cls.FORMAT_2_11.size
        _need(payload, fixed, "ADD_STREAM 2.11")
        channel_len, path_len, size, count, chunk_id = cls.FORMAT_2_11.unpack_from(payload)
        if not 0 < channel_len <= STREAM_NAME_LEN:
            raise ProtocolError(f"channel name length {channel_len} out of range")
        if not 0 < path_len <= NAME_MAX:
            raise ProtocolError(f"path name length {path_len} out of range")
        _need(payload, fixed + channel_len + path_len, "ADD_STREAM 2.11")
        channel = _c_string(payload[fixed : fixed + channel_len], "channel name")
        start = fixed + channel_len
        path = _c_string(payload[start : start + path_len], "path name")
        return cls(channel, path, size, count, chunk_id)

    def encode(self, minor: int) -> bytes:
        if minor < 2:
            return self.FORMAT_2_1.pack(
                _pack_fixed(self.channel_name, STREAM_NAME_LEN),
                _pack_fixed(self.pathname, PATH_MAX),
            )
        if minor < 11:
            return self.FORMAT_2_2.pack(
                _pack_fixed(self.channel_name, STREAM_NAME_LEN),
                _pack_fixed(self.pathname, PATH_MAX),
                self.tracefile_size,
                self.tracefile_count,
            )
        channel, path = _pack_c(self.channel_name), _pack_c(self.pathname)
        return self.FORMAT_2_11.pack(
            len(channel), len(path), self.tracefile_size, self.tracefile_count, self.trace_chunk_id
        ) + channel + path


@dataclasses.dataclass(frozen=True, slots=True)
class StreamsSent:
    COMMAND: ClassVar[Command] = Command.STREAMS_SENT

    @classmethod
    def decode(cls, payload: bytes, minor: int = 0) -> Self:
        return cls()

    def encode(self, minor: int = 0) -> bytes:
        return b""


@dataclasses.dataclass(frozen=True, slots=True)
class StartData:
    COMMAND: ClassVar[Command] = Command.START_DATA

    @classmethod
    def decode(cls, payload: bytes, minor: int = 0) -> Self:
        return cls()

    def encode(self, minor: int = 0) -> bytes:
        return b""


@dataclasses.dataclass(frozen=True, slots=True)
class SendMetadataHeader(_FixedRequest):
    """The fixed start of a SEND_METADATA payload; the metadata bytes follow it."""

    COMMAND: ClassVar[Command] = Command.SEND_METADATA
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QI")
    stream_id: int
    padding_size: int


@dataclasses.dataclass(frozen=True, slots=True)
class CloseStream(_FixedRequest):
    COMMAND: ClassVar[Command] = Command.CLOSE_STREAM
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QQ")
    stream_id: int
    last_net_seq_num: int


@dataclasses.dataclass(frozen=True, slots=True)
class DataPending(_FixedRequest):
    COMMAND: ClassVar[Command] = Command.DATA_PENDING
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QQ")
    stream_id: int
    last_net_seq_num: int


@dataclasses.dataclass(frozen=True, slots=True)
class ResetMetadata(_FixedRequest):
    COMMAND: ClassVar[Command] = Command.RESET_METADATA
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QQ")
    stream_id: int
    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class QuiescentControl(_FixedRequest):
    COMMAND: ClassVar[Command] = Command.QUIESCENT_CONTROL
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">Q")
    stream_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class BeginDataPending(_FixedRequest):
    COMMAND: ClassVar[Command] = Command.BEGIN_DATA_PENDING
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">Q")
    session_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class EndDataPending(_FixedRequest):
    COMMAND: ClassVar[Command] = Command.END_DATA_PENDING
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">Q")
    session_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class TraceChunkExists(_FixedRequest):
    COMMAND: ClassVar[Command] = Command.TRACE_CHUNK_EXISTS
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">Q")
    chunk_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class SendIndex:
    """SEND_INDEX: the control half of a packet's index (64 bytes before 2.8, 80 after)."""

    COMMAND: ClassVar[Command] = Command.SEND_INDEX
    FORMAT_1_0: ClassVar[struct.Struct] = struct.Struct(">8Q")
    FORMAT_1_1: ClassVar[struct.Struct] = struct.Struct(">10Q")
    relay_stream_id: int
    net_seq_num: int
    packet_size: int
    content_size: int
    timestamp_begin: int
    timestamp_end: int
    events_discarded: int
    stream_id: int
    stream_instance_id: int = UINT64_MAX
    packet_seq_num: int = UINT64_MAX

    @property
    def is_beacon(self) -> bool:
        """A live-timer beacon of an idle stream: never written to disk."""
        return self.packet_size == 0

    @classmethod
    def decode(cls, payload: bytes, minor: int) -> Self:
        fmt = cls.FORMAT_1_1 if minor >= 8 else cls.FORMAT_1_0
        _need(payload, fmt.size, "SEND_INDEX")
        return cls(*fmt.unpack_from(payload))

    def encode(self, minor: int) -> bytes:
        values = tuple(getattr(self, field.name) for field in dataclasses.fields(self))
        if minor >= 8:
            return self.FORMAT_1_1.pack(*values)
        return self.FORMAT_1_0.pack(*values[:8])


@dataclasses.dataclass(frozen=True, slots=True)
class StreamRotation:
    stream_id: int
    rotate_at_seq_num: int


@dataclasses.dataclass(frozen=True, slots=True)
class RotateStreams:
    """ROTATE_STREAMS; the optional chunk id is not packed by senders (see `PADDINGS`)."""

    COMMAND: ClassVar[Command] = Command.ROTATE_STREAMS
    ENTRY: ClassVar[struct.Struct] = struct.Struct(">QQ")
    # Fixed part sizes accepted, by padding after `is_set`: packed, i386, x86-64.
    PADDINGS: ClassVar[tuple[int, ...]] = (0, 3, 7)
    new_chunk_id: int | None
    streams: tuple[StreamRotation, ...]

    @classmethod
    def decode(cls, payload: bytes, minor: int = 0) -> Self:
        _need(payload, 4, "ROTATE_STREAMS")
        (count,) = struct.unpack_from(">I", payload)
        for padding in cls.PADDINGS:
            fixed = 4 + 1 + padding + 8
            if len(payload) == fixed + count * cls.ENTRY.size:
                break
        else:
            raise ProtocolError(f"ROTATE_STREAMS of {len(payload)} bytes for {count} streams")
        is_set = payload[4]
        (value,) = struct.unpack_from(">Q", payload, 5 + padding)
        streams = tuple(
            StreamRotation(*cls.ENTRY.unpack_from(payload, fixed + i * cls.ENTRY.size))
            for i in range(count)
        )
        return cls(value if is_set else None, streams)

    def encode(self, minor: int = 0, padding: int = 7) -> bytes:
        head = struct.pack(">IB", len(self.streams), int(self.new_chunk_id is not None))
        head += bytes(padding) + struct.pack(">Q", self.new_chunk_id or 0)
        return head + b"".join(self.ENTRY.pack(s.stream_id, s.rotate_at_seq_num)
                               for s in self.streams)


@dataclasses.dataclass(frozen=True, slots=True)
class CreateTraceChunk:
    COMMAND: ClassVar[Command] = Command.CREATE_TRACE_CHUNK
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QQI")
    chunk_id: int
    creation_timestamp: int
    override_name: str | None = None

    @classmethod
    def decode(cls, payload: bytes, minor: int = 0) -> Self:
        _need(payload, cls.FORMAT.size, "CREATE_TRACE_CHUNK")
        chunk_id, timestamp, name_len = cls.FORMAT.unpack_from(payload)
        name = None
        if name_len:
            if name_len > NAME_MAX:
                raise ProtocolError(f"chunk name length {name_len} out of range")
            _need(payload, cls.FORMAT.size + name_len, "CREATE_TRACE_CHUNK")
            raw = payload[cls.FORMAT.size : cls.FORMAT.size + name_len]
            name = _c_string(raw, "chunk name")
        return cls(chunk_id, timestamp, name)

    def encode(self, minor: int = 0) -> bytes:
        name = _pack_c(self.override_name) if self.override_name is not None else b""
        return self.FORMAT.pack(self.chunk_id, self.creation_timestamp, len(name)) + name


@dataclasses.dataclass(frozen=True, slots=True)
class CloseTraceChunk:
    COMMAND: ClassVar[Command] = Command.CLOSE_TRACE_CHUNK
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QQBI")
    chunk_id: int
    close_timestamp: int
    close_command: int | None = None

    @classmethod
    def decode(cls, payload: bytes, minor: int = 0) -> Self:
        _need(payload, cls.FORMAT.size, "CLOSE_TRACE_CHUNK")
        chunk_id, timestamp, is_set, command = cls.FORMAT.unpack_from(payload)
        return cls(chunk_id, timestamp, command if is_set else None)

    def encode(self, minor: int = 0) -> bytes:
        command = self.close_command
        return self.FORMAT.pack(
            self.chunk_id, self.close_timestamp, int(command is not None), command or 0
        )


REQUEST_TYPES: dict[Command, type] = {
    message.COMMAND: message
    for message in (
        Version, GetConfiguration, CreateSession, AddStream, StreamsSent, StartData,
        CloseStream, DataPending, QuiescentControl, BeginDataPending, EndDataPending,
        SendIndex, ResetMetadata, RotateStreams, CreateTraceChunk, CloseTraceChunk,
        TraceChunkExists,
    )
}

# The largest payload each fixed-layout request may need; the excess is discarded unread.
MAX_REQUEST_PAYLOAD: dict[int, int] = {  # by command (an IntEnum: a plain int finds it)
    Command.VERSION: 8,
    Command.GET_CONFIGURATION: 8,
    Command.CREATE_SESSION: CreateSession.FORMAT_2_15.size + NAME_MAX + HOST_NAME_MAX + PATH_MAX,
    Command.ADD_STREAM: max(AddStream.FORMAT_2_2.size,
                            AddStream.FORMAT_2_11.size + STREAM_NAME_LEN + NAME_MAX),
    Command.STREAMS_SENT: 0,
    Command.START_DATA: 0,
    Command.CLOSE_STREAM: 16,
    Command.DATA_PENDING: 16,
    Command.QUIESCENT_CONTROL: 8,
    Command.BEGIN_DATA_PENDING: 8,
    Command.END_DATA_PENDING: 8,
    Command.SEND_INDEX: SendIndex.FORMAT_1_1.size,
    Command.RESET_METADATA: 16,
    Command.CREATE_TRACE_CHUNK: CreateTraceChunk.FORMAT.size + NAME_MAX,
    Command.CLOSE_TRACE_CHUNK: CloseTraceChunk.FORMAT.size,
    Command.TRACE_CHUNK_EXISTS: 8,
}
# ROTATE_STREAMS must be read whole (its size is checked exactly); bound the stream count.
MAX_ROTATE_STREAMS = 1 << 20
MAX_REQUEST_PAYLOAD[Command.ROTATE_STREAMS] = 20 + 16 * MAX_ROTATE_STREAMS


def request_payload_limit(command: int) -> int:
    """How much of a request's payload the relay keeps; the rest is drained unread."""
    return MAX_REQUEST_PAYLOAD.get(command, 0)  # unknown commands: nothing


# --------------------------------------------------------------------------- framing
# Bytes in, whole messages out, whatever the TCP segmentation: the server and the capture tool
# feed what they receive and act on what comes out. Every length is checked before anything
# is kept, and nothing is kept beyond what a command can use.


class ControlRequest(NamedTuple):
    """One control request, header fields kept as sent (circuit id, command version).

    `payload` is what the framer kept: all of it, or at most the command's limit (the
    excess is drained), or for a streamed SEND_METADATA its fixed part only.
    """

    header: ControlHeader
    payload: bytes

    @property
    def command(self) -> int:
        return self.header.command

    @property
    def name(self) -> str:
        return command_name(self.header.command)

    def encode(self) -> bytes:
        return self.header.encode() + self.payload


class MetadataBytes(NamedTuple):
    """A piece of a streamed SEND_METADATA payload (after its fixed part), in order.

    `data` points into the bytes given to `ControlFramer.feed`: use it before feeding more.
    The last piece (`last`, possibly empty) ends the request.
    """

    data: bytes | memoryview
    last: bool


ControlEvent = ControlRequest | MetadataBytes


def command_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command {command}"


class ControlFramer:
    """Cuts a control connection's bytes (24-byte header, then `data_size` bytes) into events.

    The relay's framer (the defaults) refuses payloads over `max_payload` before keeping
    any byte of them (ProtocolError: close the connection), keeps at most
    `payload_limit(command)` bytes of each request and drains the rest, and streams
    SEND_METADATA payloads out as `MetadataBytes` instead of buffering them. With
    `payload_limit=None` and `stream_metadata=False` (the capture tool), every request comes
    out whole, as sent.

    Iterate each `feed` to its end before the next one (or stop using the framer).
    """

    __slots__ = ("_buffer", "_discard", "_emitted", "_header", "_keep", "_limit",
                 "_max_payload", "_metadata_left", "_stream_metadata")

    def __init__(self, *, payload_limit: Callable[[int], int] | None = request_payload_limit,
                 max_payload: int | None = MAX_CONTROL_PAYLOAD,
                 stream_metadata: bool = True) -> None:
        self._limit = payload_limit
        self._max_payload = max_payload
        self._stream_metadata = stream_metadata
        self._buffer = bytearray()  # an incomplete header, or the payload kept so far
        self._header: ControlHeader | None = None  # of the request whose bytes are arriving
        self._emitted = False  # the current request went out; its metadata/excess follows
        self._keep = 0  # payload bytes to keep for the current request
        self._metadata_left = 0
        self._discard = 0

    @property
    def in_message(self) -> bool:
        """True in the middle of a request (a stalled peer), False between two."""
        return self._header is not None or bool(self._buffer)

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete header or payload."""
        return len(self._buffer)

    @property
    def discarding(self) -> int:
        """Payload bytes of the current request still to drain."""
        return self._discard

    @property
    def pending(self) -> bytes:
        """The bytes of the incomplete request received so far, as they were sent (those
        not drained or streamed out)."""
        if self._header is not None and not self._emitted:
            return self._header.encode() + bytes(self._buffer)
        return bytes(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[ControlEvent]:
        view = memoryview(data)
        end = len(view)
        position = 0
        buffer = self._buffer
        while True:
            header = self._header
            if header is None:
                if buffer:  # complete the header cut by the end of the last input
                    take = min(CONTROL_HEADER_SIZE - len(buffer), end - position)
                    buffer += view[position : position + take]
                    position += take
                    if len(buffer) < CONTROL_HEADER_SIZE:
                        return
                    header = ControlHeader.decode(buffer)
                    buffer.clear()
                elif end - position >= CONTROL_HEADER_SIZE:
                    header = ControlHeader.decode(
                        view[position : position + CONTROL_HEADER_SIZE])
                    position += CONTROL_HEADER_SIZE
                else:
                    if position < end:
                        buffer += view[position:end]
                    return
                self._start(header)
            if not self._emitted:
                keep = self._keep
                if buffer or end - position < keep:
                    take = min(keep - len(buffer), end - position)
                    buffer += view[position : position + take]
                    position += take
                    if len(buffer) < keep:
                        return
                    payload = bytes(buffer)
                    buffer.clear()
                else:
                    payload = bytes(view[position : position + keep])
                    position += keep
                self._emitted = True
                yield tuple.__new__(ControlRequest, (header, payload))
                if self._metadata_left == 0 and self._header is not None and (
                        header.command == Command.SEND_METADATA and self._stream_metadata):
                    self._header = None
                    yield MetadataBytes(b"", True)
                    continue
            if self._metadata_left:
                take = min(self._metadata_left, end - position)
                if not take:
                    return
                self._metadata_left -= take
                last = not self._metadata_left
                if last:
                    self._header = None
                piece = view[position : position + take]
                position += take
                yield MetadataBytes(piece, last)
                continue
            if self._discard:
                take = min(self._discard, end - position)
                self._discard -= take
                position += take
                if self._discard:
                    return
            self._header = None

    def _start(self, header: ControlHeader) -> None:
        size = header.data_size
        if self._max_payload is not None and size > self._max_payload:
            raise ProtocolError(f"{command_name(header.command)}: payload of {size} bytes "
                                f"refused (more than {self._max_payload})")
        self._header = header
        self._emitted = False
        self._metadata_left = self._discard = 0
        if header.command == Command.SEND_METADATA and self._stream_metadata:
            fixed = SendMetadataHeader.FORMAT.size
            if size < fixed:
                raise ProtocolError(f"SEND_METADATA: payload of {size} bytes is too short")
            self._keep = fixed
            self._metadata_left = size - fixed
            return
        self._keep = size if self._limit is None else min(size, self._limit(header.command))
        self._discard = size - self._keep


# What the data framer tells, per piece of input: the packet's header when the piece starts
# a packet (else None), payload bytes of the current packet (a slice of the fed bytes: no
# copy), and whether the packet now has all its `data_size` bytes. A plain tuple: one or two
# are made per packet.
PacketPiece = tuple[DataHeader | None, memoryview, bool]


class DataFramer:
    """Cuts a data connection's bytes into packets: 32-byte header, then `data_size` bytes.

    Payload bytes are passed on as soon as they arrive, as slices of the input (packets can
    be large, and the server writes them from its receive buffer); only a header cut by the
    end of an input is kept, until its 32 bytes are in.

    Iterate each `feed` to its end before the next one (or stop using the framer).
    """

    __slots__ = ("partial_header", "payload_left")

    def __init__(self) -> None:
        self.partial_header = b""  # the start of a header cut by the end of the last input
        self.payload_left = 0  # bytes of the current packet still to come

    @property
    def in_packet(self) -> bool:
        """True in the middle of a packet (a stalled peer), False between two."""
        return bool(self.partial_header) or self.payload_left > 0

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[PacketPiece]:
        view = memoryview(data)
        end = len(view)
        if not end:
            return
        position = 0
        left = self.payload_left
        if left:  # the rest of the packet of the last input
            take = min(left, end)
            left -= take
            self.payload_left = left
            position = take
            yield (None, view[:take], not left)
        elif self.partial_header:
            partial = self.partial_header
            take = min(DATA_HEADER_SIZE - len(partial), end)
            partial += bytes(view[:take])
            position = take
            if len(partial) < DATA_HEADER_SIZE:
                self.partial_header = partial
                return
            self.partial_header = b""
            header = DataHeader.decode(partial)
            left = header.data_size
            take = min(left, end - position)
            left -= take
            self.payload_left = left
            yield (header, view[position : position + take], not left)
            position += take
        while not left:
            if end - position < DATA_HEADER_SIZE:
                if position < end:
                    self.partial_header = bytes(view[position:end])
                return
            next_position = position + DATA_HEADER_SIZE
            header = DataHeader.decode(view[position:next_position])
            left = header.data_size
            take = min(left, end - next_position)
            left -= take
            self.payload_left = left
            position = next_position + take
            yield (header, view[next_position:position], not left)


# --------------------------------------------------------------------------- replies


def generic_reply(code: int) -> bytes:
    return struct.pack(">I", code)


def status_session_reply(session_id: int, code: int) -> bytes:
    return struct.pack(">QI", session_id, code)


def status_stream_reply(handle: int, code: int) -> bytes:
    return struct.pack(">QI", handle, code)


def version_reply(major: int = RELAYD_VERSION_MAJOR, minor: int = RELAYD_VERSION_MINOR) -> bytes:
    return struct.pack(">II", major, minor)


def create_session_reply_2_11(session_id: int, code: int, output_path: str | None) -> bytes:
    path = _pack_c(output_path) if output_path is not None and code == ReturnCode.OK else b""
    return struct.pack(">QII", session_id, code, len(path)) + path


def close_trace_chunk_reply(code: int, path: str | None) -> bytes:
    raw = _pack_c(path) if path is not None and code == ReturnCode.OK else b""
    return struct.pack(">II", code, len(raw)) + raw


def trace_chunk_exists_reply(code: int, exists: bool) -> bytes:
    return struct.pack(">IB", code, int(exists))


def get_configuration_reply(code: int, flags: int) -> bytes:
    return struct.pack(">IQ", code, flags)


# --------------------------------------------------------------------------- reply decoding
# (what a consumerd-side client reads back; used by pyrelayd.client and the capture tool)


def decode_generic_reply(raw: bytes) -> int:
    return int(struct.unpack(">I", raw[:4])[0])


def decode_status_reply(raw: bytes) -> tuple[int, int]:
    """(session id or stream handle, return code) of a 12-byte status reply."""
    handle, code = struct.unpack(">QI", raw[:12])
    return handle, code


def decode_create_session_reply_2_11(raw: bytes) -> tuple[int, int, str]:
    session_id, code, length = struct.unpack_from(">QII", raw)
    path = raw[16 : 16 + length].split(b"\0", 1)[0].decode()
    return session_id, code, path


def expected_reply_size(command: int, minor: int) -> int | None:
    """Fixed reply size of a command, None for SEND_METADATA (no reply) or variable replies.

    CREATE_SESSION (>= 2.11) and CLOSE_TRACE_CHUNK replies carry a length at a known offset.
    """
    sizes = {
        Command.VERSION: 8,
        Command.GET_CONFIGURATION: 12,
        Command.ADD_STREAM: 12,
        Command.TRACE_CHUNK_EXISTS: 5,
    }
    if command == Command.CREATE_SESSION:
        return 12 if minor < 11 else None
    if command in (Command.SEND_METADATA, Command.CLOSE_TRACE_CHUNK):
        return None
    return sizes.get(Command(command), 4) if command in Command._value2member_map_ else 4
