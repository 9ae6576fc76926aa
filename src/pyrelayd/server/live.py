"""Live viewer connections (port 5344): the sockets of the viewers, on the event loop.

What a viewer sends is framed and answered by the sans-IO `LiveFramer` and `LiveHandler`
(`protocol/live.py`); this module only moves bytes. Viewers are strictly request/reply, so
each connection is driven by readiness callbacks, with no task or future per request: one
`recv_into` (straight into the framer's buffer) takes whatever requests have arrived, each is
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

from pyrelayd.model.relay import Relay
from pyrelayd.model.viewer import ViewerSession
from pyrelayd.protocol.live import LiveFramer, LiveHandler, Output, PacketRange, ViewerRefused
from pyrelayd.protocol.viewer import ProtocolError
from pyrelayd.server.listener import Acceptor

log = logging.getLogger(__name__)


class ViewerGone(Exception):
    """The viewer's socket failed or was closed: close the connection, quietly."""


class LiveConnection:
    """One viewer connection: its socket, its framer and handler, and the output pending."""

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
        self.framer = LiveFramer()
        self.handler = LiveHandler(server.relay, name)
        self.last_progress = time.monotonic()  # bytes last received or sent (stall sweep)
        self.output: collections.deque[Output] = collections.deque()
        self.close_when_sent = False
        self.closed = False
        self.reading = False
        self.writing = False
        sock.setblocking(False)
        # Replies are small and latency matters: no Nagle delay (GET_PACKET corks explicitly).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # What /status and the metrics show of the connection.

    @property
    def viewer(self) -> ViewerSession | None:
        return self.handler.viewer

    @property
    def minor(self) -> int:
        return self.handler.minor

    @property
    def connected(self) -> bool:
        return self.handler.connected

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
        buffer = self.framer.receive_buffer()
        if not buffer:  # cannot happen: requests are small
            self.close("input buffer full")
            return
        try:
            count = self.sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.close(str(error))
            return
        buffer.release()  # before the framer moves its bytes
        if count == 0:
            self.close("connection closed by the viewer")
            return
        self.framer.received(count)
        self.last_progress = time.monotonic()
        self._serve()

    def _writable(self) -> None:
        self.last_progress = time.monotonic()
        self._serve()

    def stalled_since(self) -> float | None:
        # A viewer waits without limit between requests, never with a request half sent,
        # a reply it does not read, or before its CONNECT.
        if self.output or self.framer.pending_size or not self.handler.connected:
            return self.last_progress
        return None

    def drop_stalled(self, waited: float) -> None:
        what = ("not reading its reply" if self.output
                else "no CONNECT" if not self.handler.connected and not self.framer.pending_size
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
            self.close(str(reason))
            return
        except ViewerRefused as reason:
            log.warning("%s: refused: %s", self.name, reason)
            self.relay.counters.count_error(reason)
            self.close(str(reason))
            return
        except ProtocolError as error:
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
        """Queue the answer to the first buffered request, if complete; False when none is."""
        request = self.framer.next_request()
        if request is None:
            return False
        self.output.extend(self.handler.handle(request))
        return True

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
        try:
            self.handler.close()
        except Exception:  # the rest of the close must still happen
            log.exception("%s: closing its viewer session failed", self.name)
        self.relay.fd_pool.unhold()
        self.relay.counters.viewer_sent_bytes += self.sent_bytes
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server.connections.discard(self)


class LiveServer:
    """Accepts viewers on the live port and serves them on the running event loop."""

    def __init__(self, relay: Relay, listener: socket.socket | None) -> None:
        """`listener`: None in a worker of `--workers`, given its viewers by `adopt`."""
        self.relay = relay
        self.connections: set[LiveConnection] = set()
        self.loop = asyncio.get_running_loop()
        self._acceptor = None if listener is None else Acceptor("live", listener, self.adopt)

    @property
    def acceptor(self) -> Acceptor:
        assert self._acceptor is not None, "a worker's live server has no listener"
        return self._acceptor

    def start(self) -> None:
        self.acceptor.start()

    def adopt(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Serve a viewer connection (accepted here, or passed by the router)."""
        self.relay.fd_pool.hold()
        self.relay.counters.connections_accepted["live"] += 1
        name = f"viewer {address[0]}:{address[1]}"
        log.info("%s: connected", name)
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        connection = LiveConnection(self, sock, name, f"{host}:{address[1]}")
        self.connections.add(connection)
        connection.start()

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
        for connection in list(self.connections):
            connection.close("relay shutting down")
