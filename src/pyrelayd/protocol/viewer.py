"""Sans-IO codec of the LTTng live viewer protocol (the relay's live port, 5344).

Both directions are here: a relay decodes requests and encodes replies, a viewer encodes
requests and decodes replies. Nothing touches a socket. The byte layouts, codes and semantics
are those of the live-viewer protocol reference (docs/protocol/live-viewer.md, from
lttng-tools 2.13.9 `lttng-viewer-abi.h` and `live.c`) and of its 2.15 addendum
(docs/protocol/protocol-2.15.md sec. 4); every integer is big-endian, every struct packed.

Conventions:

* A request is a 16-byte `CommandHeader` then a fixed-size payload (`REQUEST_PAYLOAD_SIZE`);
  the relay reads exactly that many bytes whatever `data_size` says, then `decode_request`.
* A reply class has `missing(buffer, minor)`, the number of bytes still needed before
  `decode(buffer, minor)` can succeed (0 when complete), so a reader loops
  `while (n := Reply.missing(buf)): buf += read(n)` without knowing the layout. `minor` is the
  negotiated viewer protocol minor; only LIST_SESSIONS depends on it (>= 15: 2.15 entries,
  which carry each session's trace format; see `SessionInfo`).
* Request fields the relay must judge itself (CONNECT major/type, ATTACH seek) stay plain
  integers; decoding never rejects them. Reply statuses decode to their IntEnum and an unknown
  value is a `ProtocolError` (viewers treat unknown statuses as fatal).
* Fixed `char[]` fields: encoding a string that does not fit with its NUL (or that contains a
  NUL) raises `ValueError`; decoding a field without NUL raises `ProtocolError`. Bytes after
  the first NUL are ignored, as in C.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self, TypeVar, cast

from pyrelayd.constants import DEFAULT_LIVE_PORT as DEFAULT_LIVE_PORT
from pyrelayd.constants import UINT64_MAX as UINT64_MAX
from pyrelayd.protocol import relayd
from pyrelayd.protocol.relayd import ProtocolError as ProtocolError  # one error type for both
from pyrelayd.protocol.relayd import ReturnCode
from pyrelayd.protocol.relayd import TraceFormat as TraceFormat  # one trace format for both

VERSION_MAJOR = 2
#: The minor a relay announces in its CONNECT reply: its own (lttng-relayd 2.13 sends 13,
#: 2.14 sends 14, 2.15 and 2.16 send 15).
RELAY_VERSION_MINOR = 15
#: The minor babeltrace2 2.0.x sends (and the default of a bare `Connect` request).
BABELTRACE_VERSION_MINOR = 4
#: The minor `pyrelayd.client` announces by default, as babeltrace2 2.1 does.
VIEWER_VERSION_MINOR = 15
#: From this negotiated minor on, LIST_SESSIONS entries use the 2.15 layout, which carries each
#: session's trace format. Below it a viewer cannot tell CTF 2 from CTF 1.8, so a relay hides
#: CTF 2 sessions from it (and refuses to attach them).
TRACE_FORMAT_MINOR = 15

# Field limits (LTTNG_VIEWER_PATH_MAX, _NAME_MAX, _HOST_NAME_MAX), unchanged since 2.4.
PATH_MAX = 4096
NAME_MAX = 255
HOST_NAME_MAX = 64
# 2.15 entries have no fixed fields: their names are a relay session's, whose limits (NUL
# included) are LTTNG_NAME_MAX and LTTNG_HOST_NAME_MAX.
SESSION_NAME_MAX_2_15 = relayd.NAME_MAX
HOST_NAME_MAX_2_15 = relayd.HOST_NAME_MAX

#: babeltrace2 reads a packet with GET_PACKET requests of at most this many bytes.
PACKET_PIECE_SIZE = 256 * 1024
#: The largest GET_PACKET `len` a relay should serve (it answers ERR above). Viewers ask for
#: 256 KiB pieces (babeltrace2) or a whole packet (lttng's own test client); a sub-buffer,
#: hence a packet, above 64 MiB is unheard of, and this bounds what one request allocates.
MAX_PACKET_REQUEST = 64 * 1024 * 1024
#: The largest GET_METADATA reply a viewer accepts (a whole kernel trace's TSDL is a few MiB).
MAX_METADATA_LENGTH = 256 * 1024 * 1024
#: The largest session or stream count a viewer accepts in one reply.
MAX_RECORDS_PER_REPLY = 1 << 20

_UINT32 = struct.Struct(">I")
_E = TypeVar("_E", bound=enum.IntEnum)

#: The 4-byte `lttcomm_relayd_generic_reply` sent for an unknown command before closing.
UNKNOWN_COMMAND_REPLY = _UINT32.pack(ReturnCode.UNK)


# --------------------------------------------------------------------------- codes


class Command(enum.IntEnum):
    CONNECT = 1
    LIST_SESSIONS = 2
    ATTACH_SESSION = 3
    GET_NEXT_INDEX = 4
    GET_PACKET = 5
    GET_METADATA = 6
    GET_NEW_STREAMS = 7
    CREATE_SESSION = 8
    DETACH_SESSION = 9


class ConnectionType(enum.IntEnum):
    COMMAND = 1
    NOTIFICATION = 2


class Seek(enum.IntEnum):
    BEGINNING = 1
    LAST = 2


class ViewerFlag(enum.IntFlag):
    """Flags of GET_NEXT_INDEX and GET_PACKET replies; unknown bits are kept."""

    NEW_METADATA = 0x1
    NEW_STREAM = 0x2


NO_FLAGS = ViewerFlag(0)


class AttachStatus(enum.IntEnum):
    OK = 1
    ALREADY = 2
    UNK = 3
    NOT_LIVE = 4
    SEEK_ERR = 5
    NO_SESSION = 6


class IndexStatus(enum.IntEnum):
    OK = 1
    RETRY = 2
    HUP = 3
    ERR = 4
    INACTIVE = 5
    EOF = 6  # never sent by a 2.8+ relay


class PacketStatus(enum.IntEnum):
    OK = 1
    RETRY = 2  # never sent by a 2.8+ relay
    ERR = 3
    EOF = 4  # never sent by a 2.8+ relay


class MetadataStatus(enum.IntEnum):
    OK = 1
    NO_NEW_METADATA = 2
    ERR = 3


class NewStreamsStatus(enum.IntEnum):
    OK = 1
    NO_NEW = 2
    ERR = 3
    HUP = 4


class CreateSessionStatus(enum.IntEnum):
    OK = 1
    ERR = 2


class DetachStatus(enum.IntEnum):
    OK = 1
    UNK = 2
    ERR = 3


class LiveTraceFormat(enum.IntEnum):
    """`lttng_live_trace_format`, the wire value of a 2.15 LIST_SESSIONS entry's format.

    Not lttng's public enum (`TraceFormat`, 1 and 2): the codec maps one to the other.
    """

    CTF_1_8 = 0
    CTF_2 = 1


_LIVE_TRACE_FORMAT = {
    TraceFormat.CTF_1_8: LiveTraceFormat.CTF_1_8,
    TraceFormat.CTF_2: LiveTraceFormat.CTF_2,
}
_TRACE_FORMAT = {live: public for public, live in _LIVE_TRACE_FORMAT.items()}


def negotiated_minor(viewer_minor: int, relay_minor: int) -> int:
    """Both sides use the smaller of the two minors, each computing it on its own."""
    return min(viewer_minor, relay_minor)


# --------------------------------------------------------------------------- helpers


def _pack_fixed(text: str, size: int, what: str) -> bytes:
    raw = text.encode()
    if b"\0" in raw:
        raise ValueError(f"{what} {text!r} contains a NUL byte")
    if len(raw) >= size:
        raise ValueError(f"{what} {text!r} does not fit in {size} bytes with its NUL")
    return raw.ljust(size, b"\0")


def _unpack_fixed(raw: bytes, what: str) -> str:
    end = raw.find(0)
    if end < 0:
        raise ProtocolError(f"{what} is not NUL-terminated within its {len(raw)} bytes")
    return _decode_text(raw[:end], what)


def _decode_text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as error:
        raise ProtocolError(f"{what} is not valid UTF-8") from error


def _code(kind: type[_E], value: int, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise ProtocolError(f"unknown {what} status {value}") from None


def _exact(buffer: bytes, size: int, what: str) -> None:
    if len(buffer) != size:
        raise ProtocolError(f"{what}: {len(buffer)} bytes, expected {size}")


def _fixed_missing(buffer: bytes, size: int) -> int:
    return max(size - len(buffer), 0)


def _check_count(count: int, what: str) -> None:
    if count > MAX_RECORDS_PER_REPLY:
        raise ProtocolError(f"{what}: {count} records announced, at most {MAX_RECORDS_PER_REPLY}")


class FixedMessage:
    """A message of one fixed-size layout: `FORMAT` packs the attributes named in `FIELDS`,
    in wire order (which may differ from the constructor's). `CODES` maps a field to what
    turns its raw integer into a value when decoding (a status enum: unknown values are a
    `ProtocolError`). Subclasses are `@dataclass(frozen=True, slots=True)` classes that
    declare only these and their fields.

    As `dataclasses` does for `__init__`, each message gets its own `encode` and `decode`,
    written out from its fields: they are on the live port's path of every request, and
    generic code (a loop over the fields, `attrgetter`) costs twice as much.
    """

    __slots__ = ()
    NAME: ClassVar[str]  # the message, in error messages
    FORMAT: ClassVar[struct.Struct]
    FIELDS: ClassVar[tuple[str, ...]] = ()
    CODES: ClassVar[Mapping[str, Callable[[int], object]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # `@dataclass(slots=True)` makes a second class: only it knows the constructor.
        if "__dataclass_fields__" in cls.__dict__:
            _write_codec(cls, [field.name for field in dataclasses.fields(cast(Any, cls))
                               if field.init])

    @classmethod
    def missing(cls, buffer: bytes, minor: int = 0) -> int:
        return _fixed_missing(buffer, cls.FORMAT.size)

    @classmethod
    def decode(cls, buffer: bytes | bytearray, minor: int = 0) -> Self:
        raise NotImplementedError  # written by `_write_codec`

    def encode(self, minor: int = 0) -> bytes:
        raise NotImplementedError  # written by `_write_codec`


def _write_codec(cls: type[FixedMessage], constructor: list[str]) -> None:
    """Give a fixed message class its `encode` and `decode`."""
    fields, codes = cls.FIELDS, cls.CODES
    if sorted(constructor) != sorted(fields) or not set(codes) <= set(fields):
        raise TypeError(f"{cls.__name__}: FIELDS {fields} are not its fields {constructor}")
    wire_values = ", ".join(f"value_{name}" for name in fields)
    arguments = ", ".join(f"convert_{name}(value_{name})" if name in codes else f"value_{name}"
                          for name in constructor)
    namespace: dict[str, Any] = {
        "pack": cls.FORMAT.pack, "unpack": cls.FORMAT.unpack, "size": cls.FORMAT.size,
        "exact": _exact, "name": cls.NAME,
        **{f"convert_{name}": convert for name, convert in codes.items()},
    }
    source = [
        "def encode(self, minor=0):",
        f"    return pack({', '.join(f'self.{name}' for name in fields)})",
        "def decode(cls, buffer, minor=0):",
        "    if len(buffer) != size:",
        "        exact(buffer, size, name)",
        f"    ({wire_values}{',' if fields else ''}) = unpack(buffer)" if fields else "",
        f"    return cls({arguments})",
    ]
    exec("\n".join(source), namespace)  # our own field names only
    cls.encode = namespace["encode"]  # type: ignore[method-assign]
    cls.decode = classmethod(namespace["decode"])  # type: ignore[method-assign, assignment]


def _status(kind: type[_E], what: str) -> Callable[[int], _E]:
    """A `CODES` entry: the raw status as `kind`, an unknown one a `ProtocolError`."""
    return lambda value: _code(kind, value, what)


# --------------------------------------------------------------------------- header


@dataclasses.dataclass(frozen=True, slots=True)
class CommandHeader(FixedMessage):
    """`lttng_viewer_cmd`: sent before every request. Relays ignore `data_size`."""

    NAME: ClassVar[str] = "command header"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QII")  # data_size, cmd, cmd_version
    FIELDS: ClassVar[tuple[str, ...]] = ("data_size", "command", "command_version")
    command: int
    data_size: int = 0
    command_version: int = 0


# --------------------------------------------------------------------------- requests


@dataclasses.dataclass(frozen=True, slots=True)
class Connect(FixedMessage):
    """`lttng_viewer_connect`: the CONNECT request payload and its reply (same 20 bytes).

    Request: `viewer_session_id` is ignored (babeltrace sends all-ones), `connection_type` is
    a `ConnectionType`. Reply: the relay's id for a COMMAND connection (0 for NOTIFICATION),
    its own major/minor, and `connection_type` 0.
    """

    COMMAND: ClassVar[Command] = Command.CONNECT
    NAME: ClassVar[str] = "CONNECT"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QIII")
    FIELDS: ClassVar[tuple[str, ...]] = ("viewer_session_id", "major", "minor",
                                         "connection_type")
    viewer_session_id: int = UINT64_MAX
    major: int = VERSION_MAJOR
    minor: int = BABELTRACE_VERSION_MINOR
    connection_type: int = ConnectionType.COMMAND


@dataclasses.dataclass(frozen=True, slots=True)
class ListSessions(FixedMessage):
    COMMAND: ClassVar[Command] = Command.LIST_SESSIONS
    NAME: ClassVar[str] = "LIST_SESSIONS"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">")


@dataclasses.dataclass(frozen=True, slots=True)
class CreateSession(FixedMessage):
    COMMAND: ClassVar[Command] = Command.CREATE_SESSION
    NAME: ClassVar[str] = "CREATE_SESSION"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">")


@dataclasses.dataclass(frozen=True, slots=True)
class AttachSession(FixedMessage):
    """`seek` is a raw integer: a relay answers SEEK_ERR to values other than 1 and 2."""

    COMMAND: ClassVar[Command] = Command.ATTACH_SESSION
    NAME: ClassVar[str] = "ATTACH_SESSION"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QQI")
    FIELDS: ClassVar[tuple[str, ...]] = ("session_id", "offset", "seek")
    session_id: int
    seek: int = Seek.LAST
    offset: int = 0  # unused by every relay


@dataclasses.dataclass(frozen=True, slots=True)
class GetNextIndex(FixedMessage):
    COMMAND: ClassVar[Command] = Command.GET_NEXT_INDEX
    NAME: ClassVar[str] = "GET_NEXT_INDEX"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">Q")
    FIELDS: ClassVar[tuple[str, ...]] = ("stream_id",)
    stream_id: int  # viewer stream id


@dataclasses.dataclass(frozen=True, slots=True)
class GetPacket(FixedMessage):
    """Read `length` bytes at `offset` of the stream's current data file."""

    COMMAND: ClassVar[Command] = Command.GET_PACKET
    NAME: ClassVar[str] = "GET_PACKET"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QQI")
    FIELDS: ClassVar[tuple[str, ...]] = ("stream_id", "offset", "length")
    stream_id: int
    offset: int
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class GetMetadata(FixedMessage):
    COMMAND: ClassVar[Command] = Command.GET_METADATA
    NAME: ClassVar[str] = "GET_METADATA"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">Q")
    FIELDS: ClassVar[tuple[str, ...]] = ("stream_id",)
    stream_id: int  # the metadata viewer stream id


@dataclasses.dataclass(frozen=True, slots=True)
class GetNewStreams(FixedMessage):
    COMMAND: ClassVar[Command] = Command.GET_NEW_STREAMS
    NAME: ClassVar[str] = "GET_NEW_STREAMS"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">Q")
    FIELDS: ClassVar[tuple[str, ...]] = ("session_id",)
    session_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class DetachSession(FixedMessage):
    COMMAND: ClassVar[Command] = Command.DETACH_SESSION
    NAME: ClassVar[str] = "DETACH_SESSION"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">Q")
    FIELDS: ClassVar[tuple[str, ...]] = ("session_id",)
    session_id: int


Request = (
    Connect | ListSessions | AttachSession | GetNextIndex | GetPacket | GetMetadata
    | GetNewStreams | CreateSession | DetachSession
)

REQUEST_TYPES: Mapping[Command, type[Request]] = {
    request.COMMAND: request
    for request in (
        Connect, ListSessions, AttachSession, GetNextIndex, GetPacket, GetMetadata,
        GetNewStreams, CreateSession, DetachSession,
    )
}

#: The payload a relay reads after the header of each command, whatever `data_size` says.
REQUEST_PAYLOAD_SIZE: Mapping[Command, int] = {
    command: request.FORMAT.size for command, request in REQUEST_TYPES.items()
}


def decode_request(command: int, payload: bytes) -> Request:
    """The typed request for a command number and its fixed payload.

    An unknown command raises `ProtocolError` whose `reply` is the 4-byte LTTNG_ERR_UNK the
    relay sends before closing the connection.
    """
    kind = REQUEST_TYPES.get(command)  # type: ignore[call-overload]  # IntEnum keys
    if kind is None:
        raise ProtocolError(f"unknown viewer command {command}", reply=UNKNOWN_COMMAND_REPLY)
    return kind.decode(payload)  # type: ignore[no-any-return]


def encode_request(request: Request) -> bytes:
    """Header and payload of one request, in one buffer (viewers send them in one write)."""
    payload = request.encode()
    return CommandHeader(request.COMMAND, len(payload)).encode() + payload


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True, slots=True)
class SessionInfo:
    """One LIST_SESSIONS entry: a relay session.

    Up to minor 14 the 339-byte 2.4 layout (`lttng_viewer_session_2_4`) with fixed string
    fields and no trace format: such relays only record CTF 1.8, so that is what decoding
    says, and a CTF 2 session cannot be encoded. From minor 15 the 2.15 layout
    (`lttng_viewer_session_2_15`): 32 fixed bytes ending with the string lengths and the trace
    format (as `LiveTraceFormat`), then the hostname and session name without terminators.
    """

    FORMAT_2_4: ClassVar[struct.Struct] = struct.Struct(f">QIII{HOST_NAME_MAX}s{NAME_MAX}s")
    # id, live_timer, clients, streams, hostname_len, session_name_len, trace_format
    FORMAT_2_15: ClassVar[struct.Struct] = struct.Struct(">QIIIIII")
    id: int
    live_timer: int  # µs; 0 for a session that is not live
    clients: int  # viewers attached (lttng-relayd: 1 when one is)
    streams: int
    hostname: str
    session_name: str
    trace_format: TraceFormat = TraceFormat.CTF_1_8

    @classmethod
    def missing(cls, buffer: bytes, minor: int) -> int:
        """Bytes still needed for the entry starting at the beginning of `buffer`."""
        return max(cls.size_at(buffer, 0, minor) - len(buffer), 0)

    @classmethod
    def size_at(cls, buffer: bytes, offset: int, minor: int) -> int:
        """The size of the entry at `offset`, or of its fixed part while that is incomplete.

        The 2.15 fixed part is checked as soon as it is complete, before anything is read for
        the strings: lengths a relay session cannot have and unknown trace formats are errors.
        """
        if minor < TRACE_FORMAT_MINOR:
            return cls.FORMAT_2_4.size
        fixed = cls.FORMAT_2_15.size
        if len(buffer) - offset < fixed:
            return fixed
        host_length, name_length, _ = cls._check_fixed_2_15(buffer, offset)
        return fixed + host_length + name_length

    @classmethod
    def _check_fixed_2_15(cls, buffer: bytes, offset: int) -> tuple[int, int, TraceFormat]:
        *_, host_length, name_length, live_format = cls.FORMAT_2_15.unpack_from(buffer, offset)
        if host_length >= HOST_NAME_MAX_2_15:
            raise ProtocolError(f"session entry: hostname of {host_length} bytes, at most "
                                f"{HOST_NAME_MAX_2_15 - 1}")
        if name_length >= SESSION_NAME_MAX_2_15:
            raise ProtocolError(f"session entry: session name of {name_length} bytes, at most "
                                f"{SESSION_NAME_MAX_2_15 - 1}")
        trace_format = _TRACE_FORMAT.get(live_format)
        if trace_format is None:
            raise ProtocolError(f"session entry: unknown trace format {live_format}")
        return host_length, name_length, trace_format

    @classmethod
    def decode(cls, buffer: bytes, minor: int) -> Self:
        if minor < TRACE_FORMAT_MINOR:
            _exact(buffer, cls.FORMAT_2_4.size, "session entry")
            sid, timer, clients, streams, host, name = cls.FORMAT_2_4.unpack(buffer)
            return cls(sid, timer, clients, streams, _unpack_fixed(host, "hostname"),
                       _unpack_fixed(name, "session name"))
        fixed = cls.FORMAT_2_15.size
        if len(buffer) < fixed:
            raise ProtocolError(f"session entry: {len(buffer)} bytes, expected at least {fixed}")
        host_length, name_length, trace_format = cls._check_fixed_2_15(buffer, 0)
        _exact(buffer, fixed + host_length + name_length, "session entry")
        sid, timer, clients, streams, *_ = cls.FORMAT_2_15.unpack_from(buffer)
        host = buffer[fixed : fixed + host_length]
        name = buffer[fixed + host_length :]
        if 0 in host or 0 in name:
            raise ProtocolError("session entry string contains a NUL byte")
        return cls(sid, timer, clients, streams, _decode_text(host, "hostname"),
                   _decode_text(name, "session name"), trace_format)

    def encode(self, minor: int) -> bytes:
        if minor < TRACE_FORMAT_MINOR:
            if self.trace_format != TraceFormat.CTF_1_8:
                raise ValueError("a CTF 2 session cannot be listed to a viewer of minor < 15")
            return self.FORMAT_2_4.pack(
                self.id, self.live_timer, self.clients, self.streams,
                _pack_fixed(self.hostname, HOST_NAME_MAX, "hostname"),
                _pack_fixed(self.session_name, NAME_MAX, "session name"),
            )
        # A relay session's own limits (strlen of its fields): what lttng-relayd can send.
        host = _pack_fixed(self.hostname, HOST_NAME_MAX_2_15, "hostname").rstrip(b"\0")
        name = _pack_fixed(self.session_name, SESSION_NAME_MAX_2_15, "session name").rstrip(b"\0")
        return self.FORMAT_2_15.pack(
            self.id, self.live_timer, self.clients, self.streams, len(host), len(name),
            _LIVE_TRACE_FORMAT[self.trace_format],
        ) + host + name


@dataclasses.dataclass(frozen=True, slots=True)
class StreamInfo:
    """`lttng_viewer_stream`: one stream announced by ATTACH_SESSION or GET_NEW_STREAMS."""

    FORMAT: ClassVar[struct.Struct] = struct.Struct(f">QQI{PATH_MAX}s{NAME_MAX}s")
    id: int  # viewer stream id (the relay stream handle)
    ctf_trace_id: int  # groups a trace's metadata stream with its data streams
    is_metadata: bool
    path_name: str  # trace path relative to the session output, e.g. ust/uid/1000/64-bit
    channel_name: str  # file name stem, e.g. channel0_0 or metadata

    @classmethod
    def decode(cls, buffer: bytes) -> Self:
        _exact(buffer, cls.FORMAT.size, "stream entry")
        sid, trace_id, metadata_flag, path, channel = cls.FORMAT.unpack(buffer)
        return cls(sid, trace_id, metadata_flag != 0, _unpack_fixed(path, "path name"),
                   _unpack_fixed(channel, "channel name"))

    def encode(self) -> bytes:
        return self.FORMAT.pack(
            self.id, self.ctf_trace_id, int(self.is_metadata),
            _pack_fixed(self.path_name, PATH_MAX, "path name"),
            _pack_fixed(self.channel_name, NAME_MAX, "channel name"),
        )


# --------------------------------------------------------------------------- replies


@dataclasses.dataclass(frozen=True, slots=True)
class SessionList:
    """LIST_SESSIONS reply: `sessions_count` then the entries back to back."""

    HEADER: ClassVar[struct.Struct] = _UINT32
    sessions: tuple[SessionInfo, ...] = ()

    @classmethod
    def missing(cls, buffer: bytes, minor: int = BABELTRACE_VERSION_MINOR) -> int:
        return cls._entries(buffer, minor)[0]

    @classmethod
    def _entries(cls, buffer: bytes, minor: int) -> tuple[int, list[tuple[int, int]]]:
        """(bytes missing, (start, end) of each complete entry) of what `buffer` holds."""
        if len(buffer) < cls.HEADER.size:
            return cls.HEADER.size - len(buffer), []
        (count,) = cls.HEADER.unpack_from(buffer)
        _check_count(count, "LIST_SESSIONS")
        if minor < TRACE_FORMAT_MINOR:
            size = SessionInfo.FORMAT_2_4.size
            need = _fixed_missing(buffer, cls.HEADER.size + count * size)
            starts = range(cls.HEADER.size, cls.HEADER.size + count * size, size)
            return need, [] if need else [(start, start + size) for start in starts]
        spans: list[tuple[int, int]] = []
        start = cls.HEADER.size
        for _ in range(count):
            end = start + SessionInfo.size_at(buffer, start, minor)
            if end > len(buffer):
                return end - len(buffer), spans
            spans.append((start, end))
            start = end
        return 0, spans

    @classmethod
    def decode(cls, buffer: bytes, minor: int = BABELTRACE_VERSION_MINOR) -> Self:
        need, spans = cls._entries(buffer, minor)
        if need:
            raise ProtocolError(f"LIST_SESSIONS reply: {need} bytes missing")
        end = spans[-1][1] if spans else cls.HEADER.size
        if end != len(buffer):
            raise ProtocolError(f"LIST_SESSIONS reply: {len(buffer) - end} trailing bytes")
        return cls(tuple(SessionInfo.decode(buffer[start:end], minor) for start, end in spans))

    def encode(self, minor: int = BABELTRACE_VERSION_MINOR) -> bytes:
        return self.HEADER.pack(len(self.sessions)) + b"".join(
            session.encode(minor) for session in self.sessions)


# ATTACH_SESSION and GET_NEW_STREAMS replies share one layout: status, count, stream records.
_STREAM_LIST_HEADER = struct.Struct(">II")


def _stream_list_missing(buffer: bytes, what: str) -> int:
    if len(buffer) < _STREAM_LIST_HEADER.size:
        return _STREAM_LIST_HEADER.size - len(buffer)
    _status, count = _STREAM_LIST_HEADER.unpack_from(buffer)
    _check_count(count, what)
    return _fixed_missing(buffer, _STREAM_LIST_HEADER.size + count * StreamInfo.FORMAT.size)


def _decode_stream_list(buffer: bytes, what: str) -> tuple[int, tuple[StreamInfo, ...]]:
    if len(buffer) < _STREAM_LIST_HEADER.size:
        raise ProtocolError(f"{what} reply: {len(buffer)} bytes")
    status, count = _STREAM_LIST_HEADER.unpack_from(buffer)
    _check_count(count, what)
    size = StreamInfo.FORMAT.size
    _exact(buffer, _STREAM_LIST_HEADER.size + count * size, f"{what} reply")
    streams = tuple(
        StreamInfo.decode(buffer[start : start + size])
        for start in range(_STREAM_LIST_HEADER.size, len(buffer), size)
    )
    return status, streams


def _encode_stream_list(status: int, streams: tuple[StreamInfo, ...]) -> bytes:
    return _STREAM_LIST_HEADER.pack(status, len(streams)) + b"".join(s.encode() for s in streams)


@dataclasses.dataclass(frozen=True, slots=True)
class AttachSessionReply:
    """`streams_count` always equals the records sent (0 on every status but OK upstream)."""

    HEADER: ClassVar[struct.Struct] = _STREAM_LIST_HEADER
    status: AttachStatus
    streams: tuple[StreamInfo, ...] = ()

    @classmethod
    def missing(cls, buffer: bytes, minor: int = 0) -> int:
        return _stream_list_missing(buffer, "ATTACH_SESSION")

    @classmethod
    def decode(cls, buffer: bytes, minor: int = 0) -> Self:
        status, streams = _decode_stream_list(buffer, "ATTACH_SESSION")
        return cls(_code(AttachStatus, status, "attach"), streams)

    def encode(self, minor: int = 0) -> bytes:
        return _encode_stream_list(self.status, self.streams)


@dataclasses.dataclass(frozen=True, slots=True)
class NewStreamsReply:
    HEADER: ClassVar[struct.Struct] = _STREAM_LIST_HEADER
    status: NewStreamsStatus
    streams: tuple[StreamInfo, ...] = ()

    @classmethod
    def missing(cls, buffer: bytes, minor: int = 0) -> int:
        return _stream_list_missing(buffer, "GET_NEW_STREAMS")

    @classmethod
    def decode(cls, buffer: bytes, minor: int = 0) -> Self:
        status, streams = _decode_stream_list(buffer, "GET_NEW_STREAMS")
        return cls(_code(NewStreamsStatus, status, "new streams"), streams)

    def encode(self, minor: int = 0) -> bytes:
        return _encode_stream_list(self.status, self.streams)


@dataclasses.dataclass(frozen=True, slots=True)
class IndexReply(FixedMessage):
    """`lttng_viewer_index`, the GET_NEXT_INDEX reply (64 bytes).

    Sizes are in bits and timestamps in clock cycles, copied from the CTF index entry. For
    INACTIVE only `timestamp_end` (the beacon time) and `ctf_stream_id` are meaningful.
    """

    NAME: ClassVar[str] = "GET_NEXT_INDEX reply"
    FORMAT: ClassVar[struct.Struct] = struct.Struct(">QQQQQQQII")
    FIELDS: ClassVar[tuple[str, ...]] = (
        "offset", "packet_size", "content_size", "timestamp_begin", "timestamp_end",
        "events_discarded", "ctf_stream_id", "status", "flags",
    )  # fmt: skip
    CODES: ClassVar[Mapping[str, Callable[[int], object]]] = {
        "status": _status(IndexStatus, "next index"), "flags": ViewerFlag,
    }
    status: IndexStatus
    flags: ViewerFlag = NO_FLAGS
    offset: int = 0  # of the packet in the current data file
    packet_size: int = 0
    content_size: int = 0
    timestamp_begin: int = 0
    timestamp_end: int = 0
    events_discarded: int = 0  # cumulative
    ctf_stream_id: int = 0  # the wire's `stream_id`: the CTF stream-class id


@dataclasses.dataclass(frozen=True, slots=True)
class PacketReply:
    """`lttng_viewer_trace_packet` (status, len, flags), then `len` bytes only when OK."""

    HEADER: ClassVar[struct.Struct] = struct.Struct(">III")
    status: PacketStatus
    data: bytes = b""
    flags: ViewerFlag = NO_FLAGS

    @classmethod
    def missing(cls, buffer: bytes, minor: int = 0) -> int:
        if len(buffer) < cls.HEADER.size:
            return cls.HEADER.size - len(buffer)
        status, length, _flags = cls.HEADER.unpack_from(buffer)
        payload = length if status == PacketStatus.OK else 0
        return _fixed_missing(buffer, cls.HEADER.size + payload)

    @classmethod
    def decode(cls, buffer: bytes, minor: int = 0) -> Self:
        if len(buffer) < cls.HEADER.size:
            raise ProtocolError(f"GET_PACKET reply: {len(buffer)} bytes")
        raw_status, length, flags = cls.HEADER.unpack_from(buffer)
        status = _code(PacketStatus, raw_status, "get packet")
        payload = length if status == PacketStatus.OK else 0
        _exact(buffer, cls.HEADER.size + payload, "GET_PACKET reply")
        return cls(status, buffer[cls.HEADER.size :], ViewerFlag(flags))

    def encode(self, minor: int = 0) -> bytes:
        if self.status != PacketStatus.OK and self.data:
            # A payload after an error reply desynchronises the viewer.
            raise ValueError("only an OK GET_PACKET reply carries data")
        return self.HEADER.pack(self.status, len(self.data), self.flags) + self.data


@dataclasses.dataclass(frozen=True, slots=True)
class MetadataReply:
    """`lttng_viewer_metadata_packet` (len u64, status), then `len` bytes only when OK."""

    HEADER: ClassVar[struct.Struct] = struct.Struct(">QI")
    status: MetadataStatus
    data: bytes = b""

    @classmethod
    def _payload_length(cls, buffer: bytes) -> int:
        length, status = cls.HEADER.unpack_from(buffer)
        if status != MetadataStatus.OK:
            return 0
        if length > MAX_METADATA_LENGTH:
            raise ProtocolError(f"GET_METADATA reply of {length} bytes is too large")
        return int(length)

    @classmethod
    def missing(cls, buffer: bytes, minor: int = 0) -> int:
        if len(buffer) < cls.HEADER.size:
            return cls.HEADER.size - len(buffer)
        return _fixed_missing(buffer, cls.HEADER.size + cls._payload_length(buffer))

    @classmethod
    def decode(cls, buffer: bytes, minor: int = 0) -> Self:
        if len(buffer) < cls.HEADER.size:
            raise ProtocolError(f"GET_METADATA reply: {len(buffer)} bytes")
        _length, raw_status = cls.HEADER.unpack_from(buffer)
        status = _code(MetadataStatus, raw_status, "get metadata")
        _exact(buffer, cls.HEADER.size + cls._payload_length(buffer), "GET_METADATA reply")
        return cls(status, buffer[cls.HEADER.size :])

    def encode(self, minor: int = 0) -> bytes:
        if self.status != MetadataStatus.OK and self.data:
            raise ValueError("only an OK GET_METADATA reply carries data")
        return self.HEADER.pack(len(self.data), self.status) + self.data


@dataclasses.dataclass(frozen=True, slots=True)
class CreateSessionReply(FixedMessage):
    NAME: ClassVar[str] = "CREATE_SESSION reply"
    FORMAT: ClassVar[struct.Struct] = _UINT32
    FIELDS: ClassVar[tuple[str, ...]] = ("status",)
    CODES: ClassVar[Mapping[str, Callable[[int], object]]] = {
        "status": _status(CreateSessionStatus, "create session")}
    status: CreateSessionStatus


@dataclasses.dataclass(frozen=True, slots=True)
class DetachSessionReply(FixedMessage):
    NAME: ClassVar[str] = "DETACH_SESSION reply"
    FORMAT: ClassVar[struct.Struct] = _UINT32
    FIELDS: ClassVar[tuple[str, ...]] = ("status",)
    CODES: ClassVar[Mapping[str, Callable[[int], object]]] = {
        "status": _status(DetachStatus, "detach session")}
    status: DetachStatus
