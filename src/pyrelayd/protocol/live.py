"""The live port (viewers), sans-IO: the framer and the handler of one viewer connection.

`LiveFramer` cuts the bytes a viewer sends into typed requests (`protocol/viewer.py`);
`LiveHandler` answers each request from the domain model (`model/viewer.py`) with what to send:
reply bytes, and for GET_PACKET a `PacketRange` (a range of a stream file, which the server
hands to the kernel with `sendfile`). Neither touches a socket: `server/live.py` moves the
bytes, and a test or a fuzzer drives both without an event loop.

Errors are values at the edge: a request the relay cannot serve gets its error status. A
request it refuses to serve at all raises `ViewerRefused` (close, no reply), and an unknown
command raises `ProtocolError` whose `reply` is sent before closing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pyrelayd.constants import TRACE
from pyrelayd.model.viewer import PacketRange, ViewerSession, ViewerStream, listed_sessions
from pyrelayd.protocol import viewer as wire
from pyrelayd.protocol.viewer import ProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyrelayd.model.relay import Relay

__all__ = ["LiveFramer", "LiveHandler", "Output", "PacketRange", "ViewerRefused"]

log = logging.getLogger(__name__)

#: What the handler asks the server to send: bytes, or a range of a stream file.
Output = bytes | PacketRange

_HEADER = wire.CommandHeader.FORMAT
_HEADER_SIZE = _HEADER.size
_REQUESTS: dict[int, tuple[type[wire.Request], int]] = {
    int(command): (kind, wire.REQUEST_PAYLOAD_SIZE[command])
    for command, kind in wire.REQUEST_TYPES.items()
}
#: Every request (header and payload) is far smaller than this: a viewer that pipelines
#: requests faster than it reads the replies is simply not read for a while.
DEFAULT_CAPACITY = 4096
_PACKET_HEADER = wire.PacketReply.HEADER


class ViewerRefused(Exception):
    """The viewer sent what the relay refuses: close its connection (no reply), saying why."""


class LiveFramer:
    """Viewer requests out of a byte stream: a header, then its command's fixed payload.

    The payload size comes from the command, never from the header's `data_size` (ignored,
    as lttng-relayd does): nothing a viewer sends decides what is allocated. Incomplete input
    is kept for the next call. The server receives straight into `receive_buffer()` (bounded
    by `capacity`); tests and fuzzers `feed()` bytes.
    """

    __slots__ = ("_buffer", "_end", "_start", "capacity")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._buffer = bytearray(capacity)
        self._start = 0  # first byte not yet framed
        self._end = 0  # end of what was received

    @property
    def pending_size(self) -> int:
        """Bytes received that do not make a whole request yet."""
        return self._end - self._start

    @property
    def pending(self) -> bytes:
        return bytes(self._buffer[self._start : self._end])

    def receive_buffer(self) -> memoryview:
        """Where the next bytes go (for `recv_into`); empty when the buffer is full."""
        if self._start:
            self._compact()
        return memoryview(self._buffer)[self._end : self.capacity]

    def received(self, count: int) -> None:
        """`count` bytes were written at the start of `receive_buffer()`."""
        if count < 0 or self._end + count > self.capacity:
            raise ValueError(f"{count} bytes received, {self.capacity - self._end} free")
        self._end += count

    def feed(self, data: bytes) -> None:
        """Append `data` (copied); the buffer grows beyond `capacity` if it must."""
        if self._start:
            self._compact()
        end = self._end + len(data)
        if end > len(self._buffer):
            del self._buffer[self._end :]
            self._buffer += data
            self.capacity = len(self._buffer)
        else:
            self._buffer[self._end : end] = data
        self._end = end

    def _compact(self) -> None:
        # A few bytes at most: the rest of a request cut by the network.
        start, end = self._start, self._end
        self._buffer[: end - start] = self._buffer[start:end]
        self._start, self._end = 0, end - start

    def next_request(self) -> wire.Request | None:
        """The next whole request, or None until more bytes come.

        An unknown command is a `ProtocolError` whose `reply` is LTTNG_ERR_UNK.
        """
        start = self._start
        if self._end - start < _HEADER_SIZE:
            return None
        buffer = self._buffer
        _data_size, command, _version = _HEADER.unpack_from(buffer, start)
        found = _REQUESTS.get(command)
        if found is None:
            raise ProtocolError(f"unknown viewer command {command}",
                                reply=wire.UNKNOWN_COMMAND_REPLY)
        kind, size = found
        payload = start + _HEADER_SIZE
        end = payload + size
        if end > self._end:
            return None
        request = kind.decode(buffer[payload:end])
        if end == self._end:
            self._start = self._end = 0
        else:
            self._start = end
        return request


def _stream_info(viewer_stream: ViewerStream) -> wire.StreamInfo:
    stream = viewer_stream.stream
    return wire.StreamInfo(stream.handle, stream.trace.id, stream.is_metadata, stream.path_name,
                           stream.channel_name)


class LiveHandler:
    """Answers the requests of one viewer connection, in order, from the relay's model.

    Holds the connection's protocol state: whether CONNECT came, the negotiated minor, and
    the viewer session (made by CREATE_SESSION). `close()` when the connection ends.
    """

    def __init__(self, relay: Relay, name: str) -> None:
        self.relay = relay
        self.name = name  # "viewer HOST:PORT", in logs
        self.connected = False
        self.minor = 0  # negotiated at CONNECT: selects the LIST_SESSIONS layout, CTF 2 access
        self.viewer: ViewerSession | None = None
        # By request type: what answers it (each takes its own type of request).
        self._answer: dict[type[wire.Request], Callable[[Any], tuple[Output, ...]]] = {
            wire.GetNextIndex: self._next_index,
            wire.GetPacket: self._packet,
            wire.GetMetadata: self._metadata,
            wire.GetNewStreams: self._new_streams,
            wire.Connect: self._connect,
            wire.ListSessions: self._list_sessions,
            wire.CreateSession: self._create_session,
            wire.AttachSession: self._attach,
            wire.DetachSession: self._detach,
        }

    def handle(self, request: wire.Request) -> tuple[Output, ...]:
        """What to send, in order, in answer to `request`."""
        if not self.connected and not isinstance(request, wire.Connect):
            raise ViewerRefused(f"{request.COMMAND.name} before CONNECT")
        return self._answer[type(request)](request)

    def close(self) -> None:
        """The connection is gone: detach its viewer session (its viewer streams close)."""
        if self.viewer is not None:
            viewer, self.viewer = self.viewer, None
            viewer.close()

    def _refused(self, request: str, reason: str) -> None:
        """A request answered with an error status (the viewer stays connected)."""
        log.info("%s: %s refused: %s", self.name, request, reason)

    # ----------------------------------------------------------------- session commands

    def _connect(self, request: wire.Connect) -> tuple[Output, ...]:
        self.connected = True
        if request.major != wire.VERSION_MAJOR:
            raise ViewerRefused(f"viewer protocol major {request.major}")
        if request.connection_type not in (wire.ConnectionType.COMMAND,
                                           wire.ConnectionType.NOTIFICATION):
            raise ViewerRefused(f"viewer connection type {request.connection_type}")
        self.minor = wire.negotiated_minor(request.minor, wire.RELAY_VERSION_MINOR)
        viewer_id = (self.relay.next_viewer_id()
                     if request.connection_type == wire.ConnectionType.COMMAND else 0)
        return (wire.Connect(viewer_id, wire.VERSION_MAJOR, wire.RELAY_VERSION_MINOR,
                             0).encode(),)

    def _list_sessions(self, request: wire.ListSessions) -> tuple[Output, ...]:
        sessions = tuple(
            wire.SessionInfo(session.id, session.live_timer, len(session.viewers),
                             len(session.streams), session.hostname, session.name,
                             session.trace_format)
            for session in listed_sessions(self.relay, self.minor)
        )
        try:
            return (wire.SessionList(sessions).encode(self.minor),)
        except ValueError as error:
            # A hostname of 64 bytes or more has no place in the 2.4 layout: as lttng-relayd,
            # close the connection without a reply.
            raise ViewerRefused(f"LIST_SESSIONS: {error}") from None

    def _create_session(self, request: wire.CreateSession) -> tuple[Output, ...]:
        if self.viewer is not None:
            self.viewer.close()  # a repeated CREATE_SESSION replaces the old one, leak-free
        self.viewer = ViewerSession(self.relay)
        return (wire.CreateSessionReply(wire.CreateSessionStatus.OK).encode(),)

    def _attach(self, request: wire.AttachSession) -> tuple[Output, ...]:
        if self.viewer is None:
            reply = wire.AttachSessionReply(wire.AttachStatus.NO_SESSION)
        else:
            status, streams = self.viewer.attach(request.session_id, request.seek, self.minor)
            reply = wire.AttachSessionReply(status,
                                            tuple(_stream_info(vs) for vs in streams))
            session = self.relay.sessions.get(request.session_id)
            log.info("%s: attach session %d%s: %s, %d streams", self.name, request.session_id,
                     f" [{session.hostname}/{session.name}]" if session is not None else "",
                     reply.status.name, len(streams))
        return (reply.encode(),)

    def _detach(self, request: wire.DetachSession) -> tuple[Output, ...]:
        if self.viewer is None:
            return (wire.DetachSessionReply(wire.DetachStatus.ERR).encode(),)
        status = self.viewer.detach(request.session_id)
        log.info("%s: detach session %d: %s", self.name, request.session_id, status.name)
        return (wire.DetachSessionReply(status).encode(),)

    def _new_streams(self, request: wire.GetNewStreams) -> tuple[Output, ...]:
        if self.viewer is None:
            self._refused("GET_NEW_STREAMS", "no viewer session (CREATE_SESSION first)")
            return (wire.NewStreamsReply(wire.NewStreamsStatus.ERR).encode(),)
        status, streams = self.viewer.get_new_streams(request.session_id)
        if status is wire.NewStreamsStatus.ERR:
            self._refused("GET_NEW_STREAMS", f"session {request.session_id} is not attached")
        return (wire.NewStreamsReply(status, tuple(_stream_info(vs) for vs in streams)).encode(),)

    # ----------------------------------------------------------------- reading streams

    def _next_index(self, request: wire.GetNextIndex) -> tuple[Output, ...]:
        if self.viewer is None:
            self._refused("GET_NEXT_INDEX", "no viewer session (CREATE_SESSION first)")
            return (wire.IndexReply(wire.IndexStatus.ERR).encode(),)
        result = self.viewer.get_next_index(request.stream_id)
        if result.status is wire.IndexStatus.ERR:
            self._refused("GET_NEXT_INDEX", f"stream {request.stream_id} cannot be read")
        index = result.index
        if index is None:
            reply = wire.IndexReply(result.status, result.flags)
        else:
            reply = wire.IndexReply(
                result.status, result.flags, index.offset, index.packet_size,
                index.content_size, index.timestamp_begin, index.timestamp_end,
                index.events_discarded, index.stream_id,
            )
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "%s: GET_NEXT_INDEX %d: %s %s", self.name, request.stream_id,
                    reply.status.name, reply.flags)
        return (reply.encode(),)

    def _packet(self, request: wire.GetPacket) -> tuple[Output, ...]:
        packet = None
        if self.viewer is not None and 0 < request.length <= wire.MAX_PACKET_REQUEST:
            packet = self.viewer.get_packet(request.stream_id, request.offset, request.length)
        if packet is None:
            self._refused("GET_PACKET", f"stream {request.stream_id}, offset {request.offset}, "
                          f"length {request.length}: no such data")
            return (wire.PacketReply(wire.PacketStatus.ERR).encode(),)
        # The header, then the packet bytes straight from the file.
        return _PACKET_HEADER.pack(wire.PacketStatus.OK, packet.length, 0), packet

    def _metadata(self, request: wire.GetMetadata) -> tuple[Output, ...]:
        if self.viewer is None:
            self._refused("GET_METADATA", "no viewer session (CREATE_SESSION first)")
            return (wire.MetadataReply(wire.MetadataStatus.ERR).encode(),)
        status, data = self.viewer.get_metadata(request.stream_id)
        if status is wire.MetadataStatus.ERR:
            self._refused("GET_METADATA", f"stream {request.stream_id} is no metadata stream "
                          "of an attached session")
        return (wire.MetadataReply(status, data).encode(),)
