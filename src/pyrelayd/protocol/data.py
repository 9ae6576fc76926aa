"""What a data connection's packets do (sans-IO): packet pieces in, stream model calls out.

`DataHandler` takes the `PacketPiece`s of a `DataFramer` (protocol/relayd.py): a header
finds its stream (of the connection's session only) and begins the packet, payload bytes are
appended to the stream's file as they come (slices of the server's receive buffer: no copy),
and the end of the packet pads and indexes it. A refused packet raises StreamError: the
server drops the connection. The relay never replies on a data connection.
"""

from __future__ import annotations

import logging

from pyrelayd.model.relay import Relay
from pyrelayd.model.session import RelaySession
from pyrelayd.model.stream import RelayStream, StreamError
from pyrelayd.protocol.relayd import DataHeader, PacketPiece

# Logged as the data connection: operators filter on that name, whichever module decides.
log = logging.getLogger("pyrelayd.server.data")


class DataHandler:
    """The state of one data connection: its session and the packet being received."""

    __slots__ = ("header", "name", "relay", "session", "stream")

    def __init__(self, relay: Relay, name: str = "data") -> None:
        self.relay = relay
        self.name = name
        self.session: RelaySession | None = None
        self.stream: RelayStream | None = None  # of the packet being received
        self.header: DataHeader | None = None

    def handle(self, piece: PacketPiece) -> None:
        header, payload, complete = piece
        if header is not None:
            self._begin_packet(header)
        stream = self.stream
        if stream is None:
            raise StreamError("packet bytes before any packet header")
        if payload and not stream.closed:  # a stream aborted or failed drops the rest
            try:
                stream.append(payload)
            except OSError as error:
                stream.fail(error)  # that stream only: the session and connection go on
        if complete:
            self._end_packet(stream)

    def connection_lost(self, failed: bool) -> None:
        """The connection is gone: close its session's streams (at once if it `failed`)."""
        session, self.session = self.session, None
        if session is None:
            return
        if failed:
            session.abort()
        session.close()
        session.put()

    def _begin_packet(self, header: DataHeader) -> None:
        stream = self.relay.find_stream(header.stream_id)
        if stream is None and self.session is not None:
            # Closed by a write failure: its packets are dropped, the connection goes on.
            stream = self.relay.failed_stream(self.session, header.stream_id)
        if stream is None or stream.is_metadata:
            raise StreamError(f"packet for unknown stream {header.stream_id}")
        if self.session is None:
            # The first packet binds this connection to its session: losing the connection
            # then closes the session's streams, as losing the control connection does.
            self.session = stream.session.get()
            self.name = f"{self.name} [{self.session.hostname}/{self.session.name}]"
        elif stream.session is not self.session:
            raise StreamError(f"stream {header.stream_id} belongs to another session")
        self.stream = stream
        self.header = header
        if not stream.closed:
            try:
                stream.begin_packet(header.data_size)
            except OSError as error:
                stream.fail(error)

    def _end_packet(self, stream: RelayStream) -> None:
        header = self.header
        assert header is not None
        self.stream = None
        self.header = None
        if stream.closed:
            return
        try:
            stream.end_packet(header.net_seq_num, header.data_size, header.padding_size)
            if stream.close_requested:
                stream.try_close()
        except OSError as error:
            stream.fail(error)
