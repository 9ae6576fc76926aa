"""An asyncio client of the LTTng live viewer protocol (what `babeltrace2 -i lttng-live` speaks).

Two levels:

* `LiveClient`: one method per viewer command, strictly request/response on one TCP
  connection, built on the sans-IO codec `pyrelayd.protocol.viewer`. It announces protocol
  2.15 by default, like babeltrace2 2.1: listed sessions then carry their trace format, and a
  2.15+ relay shows and attaches CTF 2 sessions (`minor=4` speaks as babeltrace2 2.0, to which
  such a relay hides them). Commands whose non-OK
  statuses are failures (CREATE_SESSION, ATTACH_SESSION, DETACH_SESSION) raise `StatusError`;
  the others return the decoded reply, whose status drives the caller (RETRY, HUP, ...).
* `LiveClient.follow(...)`: reads whole sessions the way babeltrace2 does and yields
  `Packet`, `Inactivity` and `StreamEnd` events (see `LiveFollow`).

`parse_live_url` and `session_url` handle `net://RELAY[:PORT][/host/HOSTNAME/SESSION]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Protocol, Self, TypeVar

from pyrelayd.protocol.viewer import (
    DEFAULT_LIVE_PORT,
    HOST_NAME_MAX,
    NAME_MAX,
    PACKET_PIECE_SIZE,
    VERSION_MAJOR,
    VIEWER_VERSION_MINOR,
    AttachSession,
    AttachSessionReply,
    AttachStatus,
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
    encode_request,
    negotiated_minor,
)

__all__ = [
    "DEFAULT_RETRY_DELAY",
    "ConnectionClosedError",
    "Inactivity",
    "LiveClient",
    "LiveClientError",
    "LiveEvent",
    "LiveFollow",
    "LiveTrace",
    "LiveUrl",
    "LiveUrlError",
    "Packet",
    "Seek",
    "SessionInfo",
    "StatusError",
    "StreamEnd",
    "StreamInfo",
    "TraceFormat",
    "merge_sessions",
    "parse_live_url",
    "session_url",
]

#: babeltrace2's default `--retry-duration`: the pause when no stream had anything new.
DEFAULT_RETRY_DELAY = 0.1


class LiveClientError(Exception):
    """The live session cannot go on (what babeltrace2 treats as fatal)."""


class ConnectionClosedError(LiveClientError):
    """The relay closed the connection (or it was aborted mid-request)."""


class StatusError(LiveClientError):
    """A reply status that means failure for the command that got it."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- URLs


class LiveUrlError(ValueError):
    """A live URL that cannot be used; the message is one line."""


@dataclasses.dataclass(frozen=True, slots=True)
class LiveUrl:
    """`net[4|6]://RELAY[:PORT][/host/TARGET_HOSTNAME/SESSION_NAME]`, as babeltrace2 reads it.

    Without the `/host/...` part it is a listing URL. `net6://` takes a bracketed IPv6
    literal (`net6://[::1]:5344`), an extension: babeltrace2 only connects over IPv4.
    """

    relay_host: str
    port: int = DEFAULT_LIVE_PORT
    target_hostname: str | None = None
    session_name: str | None = None
    ipv6: bool = False

    @property
    def is_listing(self) -> bool:
        return self.session_name is None

    @property
    def base(self) -> str:
        host = f"[{self.relay_host}]" if ":" in self.relay_host else self.relay_host
        return f"net{'6' if self.ipv6 else ''}://{host}:{self.port}"

    def __str__(self) -> str:
        if self.target_hostname is None or self.session_name is None:
            return self.base
        return session_url(self.base, self.target_hostname, self.session_name)


def session_url(base: str, hostname: str, session_name: str) -> str:
    """The URL of one session under a relay URL (`BASE/host/HOSTNAME/SESSION`)."""
    return f"{base}/host/{hostname}/{session_name}"


def parse_live_url(text: str) -> LiveUrl:
    """Parse a live URL with babeltrace2's grammar; raise `LiveUrlError` saying what is wrong."""
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise LiveUrlError("expecting `://` after the protocol (net://HOST[:PORT]/...)")
    if scheme not in ("net", "net4", "net6"):
        raise LiveUrlError(f"unknown protocol `{scheme}` (expected net, net4 or net6)")
    ipv6 = scheme == "net6"
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise LiveUrlError("missing `]` after the bracketed address")
        host, rest = rest[1:end], rest[end + 1 :]
    else:
        cut = min((i for i in (rest.find(":"), rest.find("/")) if i >= 0), default=len(rest))
        host, rest = rest[:cut], rest[cut:]
    if not host:
        raise LiveUrlError("missing relay hostname")
    port = DEFAULT_LIVE_PORT
    if rest.startswith(":"):
        end = rest.find("/")
        text_port, rest = (rest[1:], "") if end < 0 else (rest[1:end], rest[end:])
        if not text_port:
            raise LiveUrlError("missing port after `:`")
        if not (text_port.isascii() and text_port.isdigit()):
            raise LiveUrlError(f"invalid port `{text_port}`")
        port = int(text_port)
        if port > 65535:
            raise LiveUrlError(f"invalid port {port}")
    if not rest:
        return LiveUrl(host, port, ipv6=ipv6)
    if not rest.startswith("/host/"):
        raise LiveUrlError("expecting `/host/` after the hostname or port")
    target, slash, name = rest[len("/host/") :].partition("/")
    if not target:
        raise LiveUrlError("missing target hostname")
    if not slash:
        raise LiveUrlError(f"missing `/` after target hostname (`{target}`)")
    if not name:
        raise LiveUrlError("missing session name")
    if "/" in name:
        raise LiveUrlError(f"unexpected `/` after session name (`{name.split('/')[0]}`)")
    if len(target.encode()) >= HOST_NAME_MAX or len(name.encode()) >= NAME_MAX:
        raise LiveUrlError("target hostname or session name too long")
    return LiveUrl(host, port, target, name, ipv6)


def merge_sessions(sessions: Iterable[SessionInfo]) -> list[SessionInfo]:
    """Merge entries of the same (hostname, session name), as babeltrace2 lists them.

    A tracing session has one relay session per consumer daemon (kernel, UST 32/64-bit):
    stream counts are summed, the client count is the maximum, the first id is kept.
    """
    merged: dict[tuple[str, str], SessionInfo] = {}
    for session in sessions:
        key = (session.hostname, session.session_name)
        known = merged.get(key)
        if known is None:
            merged[key] = session
        else:
            merged[key] = dataclasses.replace(
                known, streams=known.streams + session.streams,
                clients=max(known.clients, session.clients),
            )
    return list(merged.values())


# --------------------------------------------------------------------------- client

_R_co = TypeVar("_R_co", covariant=True)
_R = TypeVar("_R")


class _ReplyType(Protocol[_R_co]):
    """What the codec's reply classes offer (`missing` then `decode`)."""

    def missing(self, buffer: bytes, minor: int) -> int: ...

    def decode(self, buffer: bytes, minor: int) -> _R_co: ...


class LiveClient:
    """One viewer connection to a relay's live port.

    Use `async with LiveClient(host, port) as client:` (connects and closes), or call
    `connect()` and `close()`. Requests are serialised; a request interrupted half-way
    (cancellation, timeout, error) aborts the connection, which cannot be resynchronised.
    `minor` is the protocol minor announced at CONNECT; the smaller of it and the relay's
    is used afterwards (`self.minor`).
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_LIVE_PORT,
        *,
        minor: int = VIEWER_VERSION_MINOR,
        connect_timeout: float | None = 10.0,
        request_timeout: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.requested_minor = minor
        self.connect_timeout = connect_timeout
        #: How long a reply may take (None: forever, as babeltrace2). A relay may never
        #: answer (upstream's GET_NEXT_INDEX when a data file cannot be opened).
        self.request_timeout = request_timeout
        #: Set by `connect()`: the relay's CONNECT reply and the negotiated minor.
        self.relay: Connect | None = None
        self.minor = minor
        self.viewer_session_created = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def connect(self) -> Connect:
        """Open the connection and handshake (CONNECT, type COMMAND)."""
        if self._writer is not None:
            raise LiveClientError("already connected")
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout
            )
        except TimeoutError:
            raise LiveClientError(
                f"timed out connecting to {self.host}:{self.port}") from None
        except OSError as error:
            raise LiveClientError(
                f"cannot connect to {self.host}:{self.port}: {error.strerror or error}"
            ) from None
        request = Connect(minor=self.requested_minor, connection_type=ConnectionType.COMMAND)
        reply = await self._request(request, Connect)
        if reply.major != VERSION_MAJOR:
            await self.close()
            raise LiveClientError(f"incompatible relay protocol version {reply.major}."
                                  f"{reply.minor}")
        self.relay = reply
        self.minor = negotiated_minor(self.requested_minor, reply.minor)
        return reply

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _abort(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def _request(self, request: Request, reply_type: _ReplyType[_R]) -> _R:
        async with self._lock:
            reader, writer = self._reader, self._writer
            if reader is None or writer is None:
                raise ConnectionClosedError("not connected to the relay")
            try:
                async with asyncio.timeout(self.request_timeout):
                    writer.write(encode_request(request))
                    await writer.drain()
                    buffer = b""
                    while need := reply_type.missing(buffer, self.minor):
                        buffer += await reader.readexactly(need)
                return reply_type.decode(buffer, self.minor)
            except TimeoutError:
                self._abort()
                raise LiveClientError(f"no reply from the relay to {request.COMMAND.name} "
                                      f"within {self.request_timeout} s") from None
            except asyncio.IncompleteReadError:
                self._abort()
                raise ConnectionClosedError("the relay closed the connection") from None
            except OSError as error:
                self._abort()
                raise ConnectionClosedError(f"connection to the relay lost: {error}") from None
            except BaseException:
                self._abort()
                raise

    # ------------------------------------------------------------------ commands

    async def list_sessions(self) -> list[SessionInfo]:
        """Every relay session the relay lists (one per consumer daemon; not merged).

        With a negotiated minor below 15 the relay does not say the trace format: the
        sessions are CTF 1.8 (what such relays record; newer ones hide CTF 2 sessions then).
        """
        reply = await self._request(ListSessions(), SessionList)
        return list(reply.sessions)

    async def create_session(self) -> None:
        """Create (or replace) this connection's viewer session; needed before ATTACH."""
        reply = await self._request(CreateSession(), CreateSessionReply)
        if reply.status != CreateSessionStatus.OK:
            raise StatusError("the relay could not create a viewer session", reply.status)
        self.viewer_session_created = True

    async def attach(self, session_id: int, seek: Seek = Seek.LAST) -> list[StreamInfo]:
        """Attach to a relay session; returns its streams (metadata streams included)."""
        reply = await self._request(AttachSession(session_id, seek), AttachSessionReply)
        if reply.status != AttachStatus.OK:
            reason = {
                AttachStatus.ALREADY: "a viewer is already attached to it",
                AttachStatus.UNK: "unknown session",
                AttachStatus.NOT_LIVE: "not a live session",
                AttachStatus.SEEK_ERR: "seek refused",
                AttachStatus.NO_SESSION: "no viewer session (create_session first)",
            }[reply.status]
            raise StatusError(f"cannot attach to session {session_id}: {reason}", reply.status)
        return list(reply.streams)

    async def get_new_streams(self, session_id: int) -> NewStreamsReply:
        return await self._request(GetNewStreams(session_id), NewStreamsReply)

    async def get_next_index(self, stream_id: int) -> IndexReply:
        return await self._request(GetNextIndex(stream_id), IndexReply)

    async def get_packet(self, stream_id: int, offset: int, length: int) -> PacketReply:
        reply = await self._request(GetPacket(stream_id, offset, length), PacketReply)
        if len(reply.data) > length:
            self._abort()
            raise ProtocolError(f"GET_PACKET returned {len(reply.data)} bytes for {length}")
        return reply

    async def get_metadata(self, stream_id: int) -> MetadataReply:
        return await self._request(GetMetadata(stream_id), MetadataReply)

    async def detach(self, session_id: int) -> None:
        reply = await self._request(DetachSession(session_id), DetachSessionReply)
        if reply.status != DetachStatus.OK:
            raise StatusError(f"cannot detach from session {session_id}: {reply.status.name}",
                              reply.status)

    def follow(
        self,
        session_ids: int | Sequence[int],
        seek: Seek = Seek.LAST,
        *,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        inactivity: bool = True,
    ) -> LiveFollow:
        """Read relay sessions live; see `LiveFollow`."""
        ids = (session_ids,) if isinstance(session_ids, int) else tuple(session_ids)
        return LiveFollow(self, ids, seek, retry_delay=retry_delay, inactivity=inactivity)


# --------------------------------------------------------------------------- follow


@dataclasses.dataclass(frozen=True, slots=True)
class Packet:
    """One whole packet of a data stream, with its index fields (sizes in bits)."""

    stream: StreamInfo
    ctf_stream_id: int  # CTF stream-class id
    offset: int  # in the stream's current data file
    packet_size: int
    content_size: int
    timestamp_begin: int  # clock cycles
    timestamp_end: int
    events_discarded: int  # cumulative
    data: bytes

    @property
    def stream_id(self) -> int:
        return self.stream.id

    @property
    def trace_id(self) -> int:
        return self.stream.ctf_trace_id


@dataclasses.dataclass(frozen=True, slots=True)
class Inactivity:
    """A live beacon: the stream has no packet starting before `timestamp_end` (cycles)."""

    stream: StreamInfo
    ctf_stream_id: int
    timestamp_end: int


@dataclasses.dataclass(frozen=True, slots=True)
class StreamEnd:
    """The relay hung the stream up (HUP, or the 2.4-era GET_PACKET EOF): no more packets."""

    stream: StreamInfo


LiveEvent = Packet | Inactivity | StreamEnd


class LiveTrace:
    """A CTF trace of a followed session: its metadata stream and the metadata read so far."""

    def __init__(self, trace_id: int, session_id: int) -> None:
        self.id = trace_id
        self.session_id = session_id
        self.metadata_stream: StreamInfo | None = None
        self.metadata_needed = True  # babeltrace reads metadata before any data
        #: The relay answered METADATA_ERR: the metadata stream is gone (session ended).
        self.metadata_closed = False
        self._metadata = bytearray()

    @property
    def metadata(self) -> bytes:
        """Every metadata byte received, in order (TSDL text for LTTng traces)."""
        return bytes(self._metadata)

    @property
    def metadata_text(self) -> str:
        return self._metadata.decode(errors="replace")

    def append_metadata(self, data: bytes) -> None:
        self._metadata += data


@dataclasses.dataclass(slots=True)
class _DataStream:
    info: StreamInfo
    ctf_stream_id: int | None = None
    last_inactivity: int | None = None


class LiveFollow:
    """Async iterator of `LiveEvent`s of one or more relay sessions, babeltrace2-style.

    Per round it: fetches new streams when needed (NEW_STREAM seen, a trace without metadata
    stream, no data stream left); reads metadata of every trace flagged NEW_METADATA (and of
    each new trace) until NO_NEW_METADATA, before reading that trace's data; asks each data
    stream for its next index and, on OK, reads the packet with GET_PACKET pieces of at most
    256 KiB. RETRY means nothing yet: when a whole round brought nothing, it sleeps
    `retry_delay`. INACTIVE yields an `Inactivity` once per new beacon time (none when
    `inactivity` is False). HUP yields `StreamEnd`. Iteration ends when every session
    answered GET_NEW_STREAMS with HUP and every data stream hung up. ERR, EOF and unknown
    statuses raise `StatusError`. Packets are in order within a stream; streams are polled
    round-robin, not merged by time. Leaving the iteration (or `aclose()`) detaches the
    sessions; the connection stays open.

    `traces` maps CTF trace ids to `LiveTrace` (accumulated metadata per trace).
    """

    def __init__(
        self,
        client: LiveClient,
        session_ids: tuple[int, ...],
        seek: Seek,
        *,
        retry_delay: float,
        inactivity: bool,
    ) -> None:
        self.client = client
        self.session_ids = session_ids
        self.seek = seek
        self.retry_delay = retry_delay
        self.inactivity = inactivity
        self.traces: dict[int, LiveTrace] = {}
        self._streams: dict[int, _DataStream] = {}
        self._open_sessions: set[int] = set()
        self._attached: list[int] = []
        self._new_streams_needed = False
        self._generator = self._run()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> LiveEvent:
        return await self._generator.__anext__()

    async def aclose(self) -> None:
        await self._generator.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def streams(self) -> list[StreamInfo]:
        """The data streams not hung up yet."""
        return [stream.info for stream in self._streams.values()]

    async def _run(self) -> AsyncGenerator[LiveEvent, None]:
        try:
            if not self.client.viewer_session_created:
                await self.client.create_session()
            for session_id in self.session_ids:
                streams = await self.client.attach(session_id, self.seek)
                self._attached.append(session_id)
                self._open_sessions.add(session_id)
                self._add_streams(session_id, streams)
            while True:
                if self._open_sessions and self._need_streams():
                    await self._refresh_streams()
                await self._read_needed_metadata()
                if not self._streams and not self._open_sessions:
                    return
                progressed = False
                for stream in list(self._streams.values()):
                    event = await self._poll(stream)
                    if event is not None:
                        progressed = True
                        yield event
                if not progressed:
                    await asyncio.sleep(self.retry_delay)
        finally:
            await self._detach_all()

    async def _detach_all(self) -> None:
        attached, self._attached = self._attached, []
        for session_id in attached:
            if not self.client.connected:
                return
            # Errors here are only worth a log in babeltrace2; a closing iteration ignores them.
            with contextlib.suppress(LiveClientError, ProtocolError):
                await self.client.detach(session_id)

    # ------------------------------------------------------------------ streams

    def _need_streams(self) -> bool:
        return (
            self._new_streams_needed
            or not self._streams
            or any(trace.metadata_stream is None for trace in self.traces.values())
        )

    def _add_streams(self, session_id: int, streams: Iterable[StreamInfo]) -> None:
        for info in streams:
            trace = self.traces.get(info.ctf_trace_id)
            if trace is None:
                trace = self.traces[info.ctf_trace_id] = LiveTrace(info.ctf_trace_id, session_id)
            if info.is_metadata:
                trace.metadata_stream = info
                trace.metadata_needed = True
            elif info.id not in self._streams:
                self._streams[info.id] = _DataStream(info)

    async def _refresh_streams(self) -> None:
        self._new_streams_needed = False
        for session_id in sorted(self._open_sessions):
            reply = await self.client.get_new_streams(session_id)
            if reply.status in (NewStreamsStatus.OK, NewStreamsStatus.NO_NEW):
                self._add_streams(session_id, reply.streams)
            elif reply.status == NewStreamsStatus.HUP:
                self._open_sessions.discard(session_id)
            else:
                raise StatusError(f"GET_NEW_STREAMS of session {session_id} failed",
                                  reply.status)

    # ------------------------------------------------------------------ metadata

    async def _read_needed_metadata(self) -> None:
        for trace in self.traces.values():
            if trace.metadata_needed:
                await self._read_metadata(trace)

    async def _read_metadata(self, trace: LiveTrace) -> None:
        stream = trace.metadata_stream
        if stream is None or trace.metadata_closed:
            trace.metadata_needed = False
            return
        while True:
            reply = await self.client.get_metadata(stream.id)
            if reply.status == MetadataStatus.OK:
                if not reply.data:
                    # The relay raced a clear; babeltrace2 >= 2.0.5 asks again later.
                    return
                trace.append_metadata(reply.data)
            elif reply.status == MetadataStatus.NO_NEW_METADATA:
                trace.metadata_needed = False
                return
            else:
                # The relay released the metadata stream: keep what was received.
                trace.metadata_closed = True
                trace.metadata_needed = False
                return

    # ------------------------------------------------------------------ data

    def _note_flags(self, stream: _DataStream, flags: ViewerFlag) -> None:
        if flags & ViewerFlag.NEW_METADATA:
            self.traces[stream.info.ctf_trace_id].metadata_needed = True
        if flags & ViewerFlag.NEW_STREAM:
            self._new_streams_needed = True

    def _check_stream_class(self, stream: _DataStream, ctf_stream_id: int) -> None:
        if stream.ctf_stream_id is None:
            stream.ctf_stream_id = ctf_stream_id
        elif stream.ctf_stream_id != ctf_stream_id:
            raise LiveClientError(
                f"stream {stream.info.id} changed CTF stream class from "
                f"{stream.ctf_stream_id} to {ctf_stream_id}"
            )

    async def _poll(self, stream: _DataStream) -> LiveEvent | None:
        """Ask one stream for its next index; the event it gives, if any."""
        index = await self.client.get_next_index(stream.info.id)
        # Flags are honoured on every status (2.14+ relays set NEW_STREAM on RETRY/INACTIVE).
        self._note_flags(stream, index.flags)
        if index.status == IndexStatus.OK:
            self._check_stream_class(stream, index.ctf_stream_id)
            await self._read_needed_metadata()
            data = await self._read_packet(stream, index)
            if data is None:
                del self._streams[stream.info.id]
                return StreamEnd(stream.info)
            stream.last_inactivity = None
            return Packet(
                stream.info, index.ctf_stream_id, index.offset, index.packet_size,
                index.content_size, index.timestamp_begin, index.timestamp_end,
                index.events_discarded, data,
            )
        if index.status == IndexStatus.INACTIVE:
            self._check_stream_class(stream, index.ctf_stream_id)
            if stream.last_inactivity == index.timestamp_end:
                return None  # the same beacon again: nothing new
            stream.last_inactivity = index.timestamp_end
            if not self.inactivity:
                return None
            return Inactivity(stream.info, index.ctf_stream_id, index.timestamp_end)
        if index.status == IndexStatus.HUP:
            del self._streams[stream.info.id]
            return StreamEnd(stream.info)
        if index.status == IndexStatus.RETRY:
            return None
        raise StatusError(
            f"GET_NEXT_INDEX of stream {stream.info.id} answered {index.status.name}",
            index.status,
        )

    async def _read_packet(self, stream: _DataStream, index: IndexReply) -> bytes | None:
        """The packet's bytes, or None when the relay says the stream ended (EOF)."""
        size = index.packet_size // 8
        data = bytearray()
        while len(data) < size:
            length = min(PACKET_PIECE_SIZE, size - len(data))
            reply = await self.client.get_packet(stream.info.id, index.offset + len(data), length)
            if reply.status == PacketStatus.OK:
                if not reply.data:
                    raise LiveClientError(f"GET_PACKET of stream {stream.info.id} returned "
                                          "no data")
                data += reply.data  # a shorter piece than asked is fine: ask for the rest
            elif reply.status == PacketStatus.RETRY:
                await asyncio.sleep(self.retry_delay)
            elif reply.status == PacketStatus.EOF:
                return None
            elif reply.flags & (ViewerFlag.NEW_METADATA | ViewerFlag.NEW_STREAM):
                # A 2.4-era relay: fetch what it asks for, then read the piece again.
                self._note_flags(stream, reply.flags)
                await self._read_needed_metadata()
                if self._new_streams_needed and self._open_sessions:
                    await self._refresh_streams()
            else:
                raise StatusError(f"GET_PACKET of stream {stream.info.id} failed at offset "
                                  f"{index.offset + len(data)}", reply.status)
        return bytes(data)
