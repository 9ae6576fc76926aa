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
from typing import ClassVar, Self

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
UINT64_MAX = 0xFFFF_FFFF_FFFF_FFFF
UINT32_MAX = 0xFFFF_FFFF

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


@dataclasses.dataclass(frozen=True, slots=True)
class ControlHeader:
    command: int
    data_size: int
    circuit_id: int = 0
    command_version: int = 0

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview) -> ControlHeader:
        circuit_id, data_size, command, command_version = CONTROL_HEADER.unpack(raw)
        return cls(command, data_size, circuit_id, command_version)

    def encode(self) -> bytes:
        return CONTROL_HEADER.pack(
            self.circuit_id, self.data_size, self.command, self.command_version
        )


@dataclasses.dataclass(frozen=True, slots=True)
class DataHeader:
    stream_id: int
    net_seq_num: int
    data_size: int
    padding_size: int
    circuit_id: int = 0

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview) -> DataHeader:
        circuit_id, stream_id, net_seq_num, data_size, padding = DATA_HEADER.unpack(raw)
        return cls(stream_id, net_seq_num, data_size, padding, circuit_id)

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
