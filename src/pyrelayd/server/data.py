"""Data connections (port 5343): the socket side of a one-way stream of packets.

Bytes are received straight into a buffer (`BufferedProtocol`, i.e. recv_into), framed by a
`DataFramer` and handed to a `DataHandler` (protocol/), which appends payload slices of that
buffer to the streams' files with no intermediate copy: the whole read is one `FdPool.batch()`,
written (one pwritev per file) before the next read. Every data connection shares the same
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
from pyrelayd.model.stream import StreamError
from pyrelayd.protocol import relayd as wire
from pyrelayd.protocol.data import DataHandler

log = logging.getLogger(__name__)

RECEIVE_BUFFER_SIZE = 1 << 20
_shared_buffer = memoryview(bytearray(RECEIVE_BUFFER_SIZE))


class DataProtocol(asyncio.BufferedProtocol):
    def __init__(self, relay: Relay, connections: set[asyncio.BaseProtocol]) -> None:
        self.relay = relay
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.framer = wire.DataFramer()
        self.handler = DataHandler(relay)
        self.failed = False
        self.last_progress = time.monotonic()  # when bytes last came in (stall sweep)

    @property
    def name(self) -> str:
        return self.handler.name

    @property
    def partial_header(self) -> bytes:
        return self.framer.partial_header

    @partial_header.setter
    def partial_header(self, value: bytes) -> None:
        self.framer.partial_header = value

    # ----------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.handler.name = f"data {peer[0]}:{peer[1]}" if peer else "data"
        self.connections.add(self)
        self.relay.fd_pool.hold()
        log.info("%s: connected", self.name)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _shared_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.last_progress = time.monotonic()
        handle = self.handler.handle
        try:
            # Appends point into the shared buffer: the batch writes them before the next read.
            with self.relay.fd_pool.batch():
                for piece in self.framer.feed(_shared_buffer[:nbytes]):
                    handle(piece)
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
        if self.framer.in_packet:
            return self.last_progress
        return None

    def drop_stalled(self, waited: float) -> None:
        log.warning("%s: dropped: stopped in the middle of a packet for %.0f s", self.name,
                    waited)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.relay.fd_pool.unhold()
        header = self.handler.header
        if header is not None:
            log.warning("%s: closed in the middle of packet %d of stream %d (%d bytes missing)",
                        self.name, header.net_seq_num, header.stream_id,
                        self.framer.payload_left)
        try:
            self.handler.connection_lost(self.failed or exc is not None)
        finally:
            log.info("%s: disconnected", self.name)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.failed = True
        if self.transport is not None:
            self.transport.abort()
