"""Data connections (port 5343): a one-way stream of (32-byte header, packet) pairs.

Bytes are received straight into a buffer (`BufferedProtocol`, i.e. recv_into) and written
from it to the stream's file with no intermediate copy. Every data connection shares the same
receive buffer: each read is consumed entirely before the event loop does anything else, so
all a connection keeps between reads is the start of a header (under 32 bytes). An idle
connection therefore costs almost no memory. The relay never writes on a data connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing

from pyrelayd.model.relay import Relay
from pyrelayd.model.session import RelaySession
from pyrelayd.model.stream import RelayStream, StreamError
from pyrelayd.protocol import relayd as wire

log = logging.getLogger(__name__)

RECEIVE_BUFFER_SIZE = 1 << 20
_shared_buffer = memoryview(bytearray(RECEIVE_BUFFER_SIZE))


class DataProtocol(asyncio.BufferedProtocol):
    def __init__(self, relay: Relay, connections: set[asyncio.BaseProtocol]) -> None:
        self.relay = relay
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.name = "data"
        self.partial_header = b""  # the start of a header cut by the end of the last read
        self.session: RelaySession | None = None
        self.stream: RelayStream | None = None
        self.header: wire.DataHeader | None = None
        self.payload_left = 0
        self.failed = False
        self.last_progress = time.monotonic()  # when bytes last came in (stall sweep)

    # ----------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.name = f"data {peer[0]}:{peer[1]}" if peer else "data"
        self.connections.add(self)
        self.relay.fd_pool.hold()
        log.info("%s: connected", self.name)

    def get_buffer(self, sizehint: int) -> memoryview:
        kept = len(self.partial_header)
        if kept:
            _shared_buffer[:kept] = self.partial_header
        return _shared_buffer[kept:]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_progress = time.monotonic()
        try:
            # Appends point into the shared buffer: the batch writes them before the next read.
            with self.relay.fd_pool.batch():
                self._consume(_shared_buffer, len(self.partial_header) + nbytes)
        except (StreamError, wire.ProtocolError, OSError) as error:
            log.warning("%s: %s", self.name, error)
            self.relay.counters.count_error(error)
            self.abort()
        except Exception:
            log.exception("%s: internal error", self.name)
            self.abort()

    def eof_received(self) -> bool | None:
        return None

    def stalled_since(self) -> float | None:
        # Only in the middle of a packet: a data connection may wait long for its first one
        # (a session created, not started) and between two (nothing traced).
        if self.header is not None or self.partial_header:
            return self.last_progress
        return None

    def drop_stalled(self, waited: float) -> None:
        log.warning("%s: dropped: stopped in the middle of a packet for %.0f s", self.name,
                    waited)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.relay.fd_pool.unhold()
        if self.header is not None:
            log.warning("%s: closed in the middle of packet %d of stream %d (%d bytes missing)",
                        self.name, self.header.net_seq_num, self.header.stream_id,
                        self.payload_left)
        session, self.session = self.session, None
        if session is not None:
            if self.failed or exc is not None:
                session.abort()
            session.close()
            session.put()
        log.info("%s: disconnected", self.name)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.failed = True
        if self.transport is not None:
            self.transport.abort()

    # ----------------------------------------------------------------- packets

    def _consume(self, view: memoryview, end: int) -> None:
        position = 0
        while position < end:
            if self.header is None:
                if end - position < wire.DATA_HEADER_SIZE:
                    break
                next_position = position + wire.DATA_HEADER_SIZE
                self._start_packet(wire.DataHeader.decode(view[position:next_position]))
                position = next_position
                if self.payload_left == 0:
                    self._end_packet()
                continue
            take = min(end - position, self.payload_left)
            assert self.stream is not None
            if not self.stream.closed:  # a stream aborted mid-packet drops the rest
                self.stream.append(view[position : position + take])
            position += take
            self.payload_left -= take
            if self.payload_left == 0:
                self._end_packet()
        # Keep the start of an incomplete header for the next read.
        self.partial_header = bytes(view[position:end])

    def _start_packet(self, header: wire.DataHeader) -> None:
        stream = self.relay.find_stream(header.stream_id)
        if stream is None or stream.is_metadata:
            raise StreamError(f"packet for unknown stream {header.stream_id}")
        if self.session is None:
            # The first packet binds this connection to its session: losing the connection
            # then closes the session's streams, as losing the control connection does.
            self.session = stream.session.get()
            self.name = f"{self.name} [{self.session.hostname}/{self.session.name}]"
        elif stream.session is not self.session:
            raise StreamError(f"stream {header.stream_id} belongs to another session")
        stream.begin_packet(header.data_size)
        self.stream = stream
        self.header = header
        self.payload_left = header.data_size

    def _end_packet(self) -> None:
        stream, header = self.stream, self.header
        assert stream is not None and header is not None
        self.stream = None
        self.header = None
        if stream.closed:
            return
        stream.end_packet(header.net_seq_num, header.data_size, header.padding_size)
        if stream.close_requested:
            stream.try_close()
