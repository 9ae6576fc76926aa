"""Live viewer connections (port 5344): one small state machine per viewer, on the event loop.

Viewers are strictly request/reply, so each connection is driven by readiness callbacks, with
no task or future per request: one `recv_into` takes whatever requests have arrived, each is
answered in order, and a reply that does not fit in the socket waits (with the rest of the
input) until the socket is writable again. GET_PACKET hands file ranges to the kernel with
`os.sendfile`: packet bytes never pass through Python. A viewer that stops reading only stops
itself; nothing is buffered on its behalf beyond the reply it asked for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import time

from pyrelayd.logs import TRACE
from pyrelayd.model.relay import Relay
from pyrelayd.model.viewer import PacketRange, ViewerSession, ViewerStream, listed_sessions
from pyrelayd.protocol import viewer as wire
from pyrelayd.protocol.viewer import Command
from pyrelayd.server.listener import Acceptor

log = logging.getLogger(__name__)

_HEADER = wire.CommandHeader.FORMAT
# Every request (header and fixed payload) is far smaller than this; a viewer that pipelines
# requests faster than it reads replies simply stops being read.
_INPUT_BUFFER_SIZE = 4096
_PACKET_HEADER = wire.PacketReply.HEADER
_PAYLOAD_SIZES: dict[int, int] = {int(c): size for c, size in wire.REQUEST_PAYLOAD_SIZE.items()}

Output = bytes | PacketRange


class ViewerGone(Exception):
    """The viewer closed its connection or broke the protocol: close it, quietly."""


class ViewerRefused(ViewerGone):
    """The viewer sent what the relay refuses: close it, saying why."""


def _stream_info(viewer_stream: ViewerStream) -> wire.StreamInfo:
    stream = viewer_stream.stream
    return wire.StreamInfo(stream.handle, stream.trace.id, stream.is_metadata, stream.path_name,
                           stream.channel_name)


class LiveConnection:
    """One viewer connection: input buffer, pending output, and its viewer session."""

    def __init__(self, server: LiveServer, sock: socket.socket, name: str,
                 peer: str = "") -> None:
        self.server = server
        self.relay = server.relay
        self.loop = server.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.peer = peer  # "HOST:PORT", for /status
        self.sent_bytes = 0  # for metrics
        self.input = bytearray(_INPUT_BUFFER_SIZE)
        self.input_view = memoryview(self.input)
        self.input_length = 0
        self.last_progress = time.monotonic()  # bytes last received or sent (stall sweep)
        self.output: collections.deque[Output] = collections.deque()
        self.close_when_sent = False
        self.closed = False
        self.reading = False
        self.writing = False
        self.connected = False
        self.minor = 0  # negotiated at CONNECT: selects the LIST_SESSIONS layout, CTF 2 access
        self.viewer: ViewerSession | None = None
        sock.setblocking(False)
        # Replies are small and latency matters: no Nagle delay (GET_PACKET corks explicitly).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # ----------------------------------------------------------------- readiness

    def start(self) -> None:
        self._set_interest()

    def _set_interest(self) -> None:
        """Read while there is nothing to send; wait for writability while there is."""
        want_write = bool(self.output)
        want_read = not want_write and not self.close_when_sent
        if want_read != self.reading:
            if want_read:
                self.loop.add_reader(self.fd, self._readable)
            else:
                self.loop.remove_reader(self.fd)
            self.reading = want_read
        if want_write != self.writing:
            if want_write:
                self.loop.add_writer(self.fd, self._writable)
            else:
                self.loop.remove_writer(self.fd)
            self.writing = want_write

    def _readable(self) -> None:
        if self.input_length == len(self.input):  # cannot happen: requests are small
            self.close("input buffer full")
            return
        try:
            count = self.sock.recv_into(self.input_view[self.input_length:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.close(str(error))
            return
        if count == 0:
            self.close("connection closed by the viewer")
            return
        self.input_length += count
        self.last_progress = time.monotonic()
        self._serve()

    def _writable(self) -> None:
        self.last_progress = time.monotonic()
        self._serve()

    def stalled_since(self) -> float | None:
        # A viewer waits without limit between requests, never with a request half sent,
        # a reply it does not read, or before its CONNECT.
        if self.output or self.input_length or not self.connected:
            return self.last_progress
        return None

    def drop_stalled(self, waited: float) -> None:
        what = ("not reading its reply" if self.output
                else "no CONNECT" if not self.connected and not self.input_length
                else "stopped in the middle of a request")
        log.warning("%s: dropped: %s for %.0f s", self.name, what, waited)
        self.close("stalled")

    def _serve(self) -> None:
        """Send what is pending, then answer buffered requests while replies leave at once."""
        try:
            while self._send_pending() and not self.close_when_sent:
                if not self._next_request():
                    break
        except ViewerGone as reason:
            if isinstance(reason, ViewerRefused):
                log.warning("%s: refused: %s", self.name, reason)
                self.relay.counters.count_error(reason)
            self.close(str(reason))
            return
        except wire.ProtocolError as error:
            log.warning("%s: %s", self.name, error)
            self.relay.counters.count_error(error)
            if error.reply:
                self.output.append(error.reply)
            self.close_when_sent = True
            self._serve()  # sends the reply (no more requests are read), then closes
            return
        except Exception:
            log.exception("%s: internal error", self.name)
            self.close("internal error")
            return
        if self.close_when_sent and not self.output:
            self.close("protocol error")
            return
        self._set_interest()

    # ----------------------------------------------------------------- output

    def _send_pending(self) -> bool:
        """Write pending output; True once all of it has left."""
        output = self.output
        while output:
            item = output[0]
            if isinstance(item, PacketRange):
                try:
                    sent = os.sendfile(self.fd, item.fd, item.offset, item.length)
                except (BlockingIOError, InterruptedError):
                    return False
                except OSError as error:
                    if error.errno in (errno.EINVAL, errno.ENOSYS):  # no sendfile here
                        output[0] = os.pread(item.fd, item.length, item.offset)
                        continue
                    raise ViewerGone(str(error)) from error
                if sent == 0:
                    # The file shrank under us: the viewer was promised `length` bytes.
                    raise ViewerGone("data file truncated while sending a packet")
                self.sent_bytes += sent
                if sent < item.length:
                    output[0] = PacketRange(item.fd, item.offset + sent, item.length - sent)
                    continue
            else:
                # More output follows at once: let the kernel fill one segment with both.
                flags = socket.MSG_MORE if len(output) > 1 else 0
                try:
                    sent = self.sock.send(item, flags)
                except (BlockingIOError, InterruptedError):
                    return False
                except OSError as error:
                    raise ViewerGone(str(error)) from error
                self.sent_bytes += sent
                if sent < len(item):
                    output[0] = item[sent:]
                    continue
            output.popleft()
        return True

    # ----------------------------------------------------------------- input

    def _next_request(self) -> bool:
        """Answer the first buffered request, if complete; False when none is."""
        length = self.input_length
        if length < _HEADER.size:
            return False
        view = self.input_view
        _data_size, command, _version = _HEADER.unpack_from(view)
        size = _PAYLOAD_SIZES.get(command)
        if size is None:
            raise wire.ProtocolError(f"unknown viewer command {command}",
                                     reply=wire.UNKNOWN_COMMAND_REPLY)
        end = _HEADER.size + size
        if length < end:
            return False
        request = wire.decode_request(command, bytes(view[_HEADER.size:end]))
        # The rest of the input moves to the front (a few bytes, if the viewer pipelines).
        self.input[: length - end] = self.input[end:length]
        self.input_length = length - end
        if not self.connected and not isinstance(request, wire.Connect):
            raise ViewerRefused(f"{Command(command).name} before CONNECT")
        self._answer(request)
        return True

    def _answer(self, request: wire.Request) -> None:
        """Queue the reply to one request."""
        if isinstance(request, wire.GetNextIndex):
            self.output.append(self._next_index(request))
        elif isinstance(request, wire.GetPacket):
            self._packet(request)
        elif isinstance(request, wire.GetMetadata):
            self.output.append(self._metadata(request))
        elif isinstance(request, wire.GetNewStreams):
            self.output.append(self._new_streams(request))
        elif isinstance(request, wire.Connect):
            self.output.append(self._connect(request))
        elif isinstance(request, wire.ListSessions):
            self.output.append(self._list_sessions())
        elif isinstance(request, wire.CreateSession):
            self.output.append(self._create_session())
        elif isinstance(request, wire.AttachSession):
            self.output.append(self._attach(request))
        elif isinstance(request, wire.DetachSession):
            self.output.append(self._detach(request))

    # ----------------------------------------------------------------- commands

    def _connect(self, request: wire.Connect) -> bytes:
        self.connected = True
        if request.major != wire.VERSION_MAJOR:
            raise ViewerRefused(f"viewer protocol major {request.major}")
        if request.connection_type not in (wire.ConnectionType.COMMAND,
                                           wire.ConnectionType.NOTIFICATION):
            raise ViewerRefused(f"viewer connection type {request.connection_type}")
        self.minor = wire.negotiated_minor(request.minor, wire.RELAY_VERSION_MINOR)
        viewer_id = (self.relay.next_viewer_id()
                     if request.connection_type == wire.ConnectionType.COMMAND else 0)
        return wire.Connect(viewer_id, wire.VERSION_MAJOR, wire.RELAY_VERSION_MINOR, 0).encode()

    def _list_sessions(self) -> bytes:
        sessions = tuple(
            wire.SessionInfo(session.id, session.live_timer, len(session.viewers),
                             len(session.streams), session.hostname, session.name,
                             session.trace_format)
            for session in listed_sessions(self.relay, self.minor)
        )
        try:
            return wire.SessionList(sessions).encode(self.minor)
        except ValueError as error:
            # A hostname of 64 bytes or more has no place in the 2.4 layout: as lttng-relayd,
            # close the connection without a reply.
            raise ViewerRefused(f"LIST_SESSIONS: {error}") from None

    def _create_session(self) -> bytes:
        if self.viewer is not None:
            self.viewer.close()  # a repeated CREATE_SESSION replaces the old one, leak-free
        self.viewer = ViewerSession(self.relay)
        return wire.CreateSessionReply(wire.CreateSessionStatus.OK).encode()

    def _attach(self, request: wire.AttachSession) -> bytes:
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
        return reply.encode()

    def _refused(self, request: str, reason: str) -> None:
        """A request answered with an error status (the viewer stays connected)."""
        log.info("%s: %s refused: %s", self.name, request, reason)

    def _new_streams(self, request: wire.GetNewStreams) -> bytes:
        if self.viewer is None:
            self._refused("GET_NEW_STREAMS", "no viewer session (CREATE_SESSION first)")
            return wire.NewStreamsReply(wire.NewStreamsStatus.ERR).encode()
        status, streams = self.viewer.get_new_streams(request.session_id)
        if status is wire.NewStreamsStatus.ERR:
            self._refused("GET_NEW_STREAMS", f"session {request.session_id} is not attached")
        return wire.NewStreamsReply(status, tuple(_stream_info(vs) for vs in streams)).encode()

    def _next_index(self, request: wire.GetNextIndex) -> bytes:
        if self.viewer is None:
            self._refused("GET_NEXT_INDEX", "no viewer session (CREATE_SESSION first)")
            return wire.IndexReply(wire.IndexStatus.ERR).encode()
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
        return reply.encode()

    def _packet(self, request: wire.GetPacket) -> None:
        packet = None
        if self.viewer is not None and 0 < request.length <= wire.MAX_PACKET_REQUEST:
            packet = self.viewer.get_packet(request.stream_id, request.offset, request.length)
        if packet is None:
            self._refused("GET_PACKET", f"stream {request.stream_id}, offset {request.offset}, "
                          f"length {request.length}: no such data")
            self.output.append(wire.PacketReply(wire.PacketStatus.ERR).encode())
            return
        self.output.append(_PACKET_HEADER.pack(wire.PacketStatus.OK, packet.length, 0))
        self.output.append(packet)

    def _metadata(self, request: wire.GetMetadata) -> bytes:
        if self.viewer is None:
            self._refused("GET_METADATA", "no viewer session (CREATE_SESSION first)")
            return wire.MetadataReply(wire.MetadataStatus.ERR).encode()
        status, data = self.viewer.get_metadata(request.stream_id)
        if status is wire.MetadataStatus.ERR:
            self._refused("GET_METADATA", f"stream {request.stream_id} is no metadata stream "
                          "of an attached session")
        return wire.MetadataReply(status, data).encode()

    def _detach(self, request: wire.DetachSession) -> bytes:
        if self.viewer is None:
            return wire.DetachSessionReply(wire.DetachStatus.ERR).encode()
        status = self.viewer.detach(request.session_id)
        log.info("%s: detach session %d: %s", self.name, request.session_id, status.name)
        return wire.DetachSessionReply(status).encode()

    # ----------------------------------------------------------------- end

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        log.info("%s: disconnected (%s)", self.name, reason)
        if self.reading:
            self.loop.remove_reader(self.fd)
        if self.writing:
            self.loop.remove_writer(self.fd)
        self.reading = self.writing = False
        self.output.clear()
        if self.viewer is not None:
            self.viewer.close()
            self.viewer = None
        self.relay.fd_pool.unhold()
        self.relay.counters.viewer_sent_bytes += self.sent_bytes
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server.connections.discard(self)


class LiveServer:
    """Accepts viewers on the live port and serves them on the running event loop."""

    def __init__(self, relay: Relay, listener: socket.socket) -> None:
        self.relay = relay
        self.connections: set[LiveConnection] = set()
        self.loop = asyncio.get_running_loop()
        self.acceptor = Acceptor("live", listener, self._accepted)

    def start(self) -> None:
        self.acceptor.start()

    def _accepted(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self.relay.fd_pool.hold()
        self.relay.counters.connections_accepted["live"] += 1
        name = f"viewer {address[0]}:{address[1]}"
        log.info("%s: connected", name)
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        connection = LiveConnection(self, sock, name, f"{host}:{address[1]}")
        self.connections.add(connection)
        connection.start()

    async def stop(self) -> None:
        self.acceptor.close()
        for connection in list(self.connections):
            connection.close("relay shutting down")
