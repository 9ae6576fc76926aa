"""Live viewer connections (port 5344): one task per viewer, strictly request/reply.

Each viewer socket is driven directly (non-blocking, awaited readiness) instead of through an
asyncio transport, so that GET_PACKET can hand file ranges to the kernel with `os.sendfile`:
packet bytes never pass through Python. A viewer that stops reading only ever blocks its own
task; nothing is buffered on its behalf.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket

from pyrelayd.model.relay import Relay
from pyrelayd.model.viewer import PacketRange, ViewerSession, ViewerStream
from pyrelayd.protocol import viewer as wire
from pyrelayd.protocol.viewer import Command

log = logging.getLogger(__name__)


class ViewerGone(Exception):
    """The viewer closed its connection or broke the protocol: close it, quietly."""


class ViewerSocket:
    """Awaitable exact reads, writes and sendfile on a non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        # Replies are small and latency matters: no Nagle delay (GET_PACKET corks explicitly).
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop = asyncio.get_running_loop()

    async def _writable(self) -> None:
        future: asyncio.Future[None] = self.loop.create_future()
        fd = self.sock.fileno()

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        self.loop.add_writer(fd, ready)
        try:
            await future
        finally:
            self.loop.remove_writer(fd)

    async def receive_exactly(self, size: int) -> bytes:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            try:
                # The event loop's own receive (native in uvloop) waits for readability.
                count = await self.loop.sock_recv_into(self.sock, view[received:])
            except OSError as error:
                raise ViewerGone(str(error)) from error
            if count == 0:
                raise ViewerGone("connection closed by the viewer")
            received += count
        return bytes(buffer)

    async def send(self, data: bytes, *, more: bool = False) -> None:
        """Send all of `data`; `more`: the next send follows at once (one segment if it fits)."""
        view = memoryview(data)
        flags = socket.MSG_MORE if more else 0
        while view:
            try:
                sent = self.sock.send(view, flags)
            except BlockingIOError:
                await self._writable()
                continue
            except OSError as error:
                raise ViewerGone(str(error)) from error
            view = view[sent:]

    async def send_file(self, packet: PacketRange) -> None:
        offset, left = packet.offset, packet.length
        while left:
            try:
                sent = os.sendfile(self.sock.fileno(), packet.fd, offset, left)
            except BlockingIOError:
                await self._writable()
                continue
            except OSError as error:
                if error.errno in (errno.EINVAL, errno.ENOSYS):
                    await self.send(os.pread(packet.fd, left, offset))
                    return
                raise ViewerGone(str(error)) from error
            if sent == 0:
                # The file shrank under us: the viewer was promised `length` bytes.
                raise ViewerGone("data file truncated while sending a packet")
            offset += sent
            left -= sent

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _stream_info(viewer_stream: ViewerStream) -> wire.StreamInfo:
    stream = viewer_stream.stream
    return wire.StreamInfo(stream.handle, stream.trace.id, stream.is_metadata, stream.path_name,
                           stream.channel_name)


class LiveConnection:
    def __init__(self, relay: Relay, sock: socket.socket, name: str) -> None:
        self.relay = relay
        self.socket = ViewerSocket(sock)
        self.name = name
        self.connected = False
        self.minor = 0
        self.viewer: ViewerSession | None = None

    async def serve(self) -> None:
        try:
            while True:
                header = wire.CommandHeader.decode(
                    await self.socket.receive_exactly(wire.CommandHeader.FORMAT.size))
                await self._command(header.command)
        except ViewerGone as reason:
            log.info("%s: disconnected (%s)", self.name, reason)
        except wire.ProtocolError as error:
            log.warning("%s: %s", self.name, error)
            if error.reply:
                with contextlib.suppress(ViewerGone):
                    await self.socket.send(error.reply)
        finally:
            self.close()

    def close(self) -> None:
        if self.viewer is not None:
            self.viewer.close()
            self.viewer = None
        self.socket.close()
        self.relay.fd_pool.unhold()

    async def _command(self, command: int) -> None:
        try:
            size = wire.REQUEST_PAYLOAD_SIZE[Command(command)]
        except (ValueError, KeyError):
            raise wire.ProtocolError(f"unknown viewer command {command}",
                                     reply=wire.UNKNOWN_COMMAND_REPLY) from None
        payload = await self.socket.receive_exactly(size) if size else b""
        request = wire.decode_request(command, payload)
        if not self.connected and not isinstance(request, wire.Connect):
            raise ViewerGone(f"{Command(command).name} before CONNECT")
        if isinstance(request, wire.Connect):
            await self._connect(request)
        elif isinstance(request, wire.ListSessions):
            await self._list_sessions()
        elif isinstance(request, wire.CreateSession):
            await self._create_session()
        elif isinstance(request, wire.AttachSession):
            await self._attach(request)
        elif isinstance(request, wire.GetNewStreams):
            await self._get_new_streams(request)
        elif isinstance(request, wire.GetNextIndex):
            await self._get_next_index(request)
        elif isinstance(request, wire.GetPacket):
            await self._get_packet(request)
        elif isinstance(request, wire.GetMetadata):
            await self._get_metadata(request)
        elif isinstance(request, wire.DetachSession):
            await self._detach(request)

    async def _connect(self, request: wire.Connect) -> None:
        self.connected = True
        if request.major != wire.VERSION_MAJOR:
            raise ViewerGone(f"viewer protocol major {request.major}")
        if request.connection_type not in (wire.ConnectionType.COMMAND,
                                           wire.ConnectionType.NOTIFICATION):
            raise ViewerGone(f"viewer connection type {request.connection_type}")
        self.minor = min(request.minor, wire.RELAY_VERSION_MINOR)
        viewer_id = (self.relay.next_viewer_id()
                     if request.connection_type == wire.ConnectionType.COMMAND else 0)
        reply = wire.Connect(viewer_id, wire.VERSION_MAJOR, wire.RELAY_VERSION_MINOR, 0)
        await self.socket.send(reply.encode())

    async def _list_sessions(self) -> None:
        sessions = tuple(
            wire.SessionInfo(session.id, session.live_timer, len(session.viewers),
                             len(session.streams), session.hostname, session.name)
            for session in self.relay.live_sessions()
        )
        await self.socket.send(wire.SessionList(sessions).encode(self.minor))

    async def _create_session(self) -> None:
        if self.viewer is not None:
            self.viewer.close()  # a repeated CREATE_SESSION replaces the old one, leak-free
        self.viewer = ViewerSession(self.relay)
        await self.socket.send(wire.CreateSessionReply(wire.CreateSessionStatus.OK).encode())

    async def _attach(self, request: wire.AttachSession) -> None:
        if self.viewer is None:
            reply = wire.AttachSessionReply(wire.AttachStatus.NO_SESSION)
        else:
            status, streams = self.viewer.attach(request.session_id, request.seek)
            reply = wire.AttachSessionReply(status,
                                            tuple(_stream_info(vs) for vs in streams))
            log.info("%s: attach session %d: %s, %d streams", self.name, request.session_id,
                     reply.status.name, len(streams))
        await self.socket.send(reply.encode())

    async def _get_new_streams(self, request: wire.GetNewStreams) -> None:
        if self.viewer is None:
            reply = wire.NewStreamsReply(wire.NewStreamsStatus.ERR)
        else:
            status, streams = self.viewer.get_new_streams(request.session_id)
            reply = wire.NewStreamsReply(status,
                                         tuple(_stream_info(vs) for vs in streams))
        await self.socket.send(reply.encode())

    async def _get_next_index(self, request: wire.GetNextIndex) -> None:
        if self.viewer is None:
            reply = wire.IndexReply(wire.IndexStatus.ERR)
        else:
            result = self.viewer.get_next_index(request.stream_id)
            index = result.index
            flags = result.flags
            if index is None:
                reply = wire.IndexReply(result.status, flags)
            else:
                reply = wire.IndexReply(
                    result.status, flags, index.offset, index.packet_size,
                    index.content_size, index.timestamp_begin, index.timestamp_end,
                    index.events_discarded, index.stream_id,
                )
        log.debug("%s: GET_NEXT_INDEX %d: %s %s", self.name, request.stream_id,
                  reply.status.name, reply.flags)
        await self.socket.send(reply.encode())

    async def _get_packet(self, request: wire.GetPacket) -> None:
        packet = None
        if self.viewer is not None and 0 < request.length <= wire.MAX_PACKET_REQUEST:
            packet = self.viewer.get_packet(request.stream_id, request.offset, request.length)
        if packet is None:
            await self.socket.send(wire.PacketReply(wire.PacketStatus.ERR).encode())
            return
        header = wire.PacketReply.HEADER.pack(wire.PacketStatus.OK, packet.length, 0)
        await self.socket.send(header, more=True)
        await self.socket.send_file(packet)

    async def _get_metadata(self, request: wire.GetMetadata) -> None:
        if self.viewer is None:
            reply = wire.MetadataReply(wire.MetadataStatus.ERR)
        else:
            status, data = self.viewer.get_metadata(request.stream_id)
            reply = wire.MetadataReply(status, data)
        await self.socket.send(reply.encode())

    async def _detach(self, request: wire.DetachSession) -> None:
        if self.viewer is None:
            reply = wire.DetachSessionReply(wire.DetachStatus.ERR)
        else:
            reply = wire.DetachSessionReply(
                self.viewer.detach(request.session_id))
        await self.socket.send(reply.encode())


class LiveServer:
    """Accepts viewers on the live port and runs one `LiveConnection` task each."""

    def __init__(self, relay: Relay, listener: socket.socket) -> None:
        self.relay = relay
        self.listener = listener
        self.listener.setblocking(False)
        self.connections: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(self.listener)
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("live port: cannot accept a viewer: %s", error)
                    await asyncio.sleep(0.1)
                    continue
                raise
            self.relay.fd_pool.hold()
            name = f"viewer {address[0]}:{address[1]}"
            log.info("%s: connected", name)
            task = loop.create_task(LiveConnection(self.relay, sock, name).serve())
            self.connections.add(task)
            task.add_done_callback(self.connections.discard)

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)
        with contextlib.suppress(OSError):
            self.listener.close()
