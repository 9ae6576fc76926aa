"""Control connections (port 5342): the socket side.

`ControlProtocol` moves bytes: what it receives goes through a `ControlFramer` (protocol/relayd.py)
and each event to the connection's `ControlHandler` (protocol/control.py), which decides; the
replies of one read leave in one write. It also owns the timers' view of the connection
(stall sweep) and back-pressure (a peer that does not read its replies is not read either).
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing

from pyrelayd.model.counters import ErrorKind
from pyrelayd.model.relay import Relay
from pyrelayd.protocol import relayd as wire
from pyrelayd.protocol.control import ControlHandler, Outcome

__all__ = ["ControlHandler", "ControlProtocol", "Outcome"]

log = logging.getLogger(__name__)


class ControlProtocol(asyncio.Protocol):
    """A control connection: framer in, handler's replies out.

    SEND_METADATA payloads are written to the metadata file as they arrive instead of being
    buffered; payloads larger than a command can use are drained without being kept.
    """

    def __init__(self, relay: Relay, connections: set[asyncio.BaseProtocol]) -> None:
        self.relay = relay
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.framer = wire.ControlFramer()
        self.handler = ControlHandler(relay)
        self.replies: list[bytes] = []
        # For the stall sweep (server/timeouts.py): when bytes last came in, whether any
        # ever did, and since when the peer has not been reading our replies.
        self.last_progress = time.monotonic()
        self.received_any = False
        self.replies_stuck_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.handler.name = f"control {peer[0]}:{peer[1]}" if peer else "control"
        self.connections.add(self)
        self.relay.fd_pool.hold()
        log.info("%s: connected", self.handler.name)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.relay.fd_pool.unhold()
        if self.framer.in_message and exc is None:
            log.warning("%s: connection closed in the middle of a request", self.handler.name)
        try:
            self.handler.connection_lost()
        finally:
            log.info("%s: disconnected", self.handler.name)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.handler.failed = True
        if self.transport is not None:
            self.transport.abort()

    def stalled_since(self) -> float | None:
        if self.replies_stuck_since is not None:
            return self.replies_stuck_since
        if not self.received_any or self.framer.in_message:
            return self.last_progress
        return None

    def drop_stalled(self, waited: float) -> None:
        what = ("not reading replies" if self.replies_stuck_since is not None
                else "no first message" if not self.received_any
                else "stopped in the middle of a message")
        log.warning("%s: dropped: %s for %.0f s", self.handler.name, what, waited)
        self.abort()

    def pause_writing(self) -> None:
        # The peer does not read its replies: stop reading its requests until it does.
        self.replies_stuck_since = time.monotonic()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.replies_stuck_since = None
        self.last_progress = time.monotonic()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_progress = time.monotonic()
        self.received_any = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        replies = self.replies
        receive = self.handler.receive
        try:
            with self.relay.fd_pool.batch():  # the index records of this read: one write
                for event in self.framer.feed(data):
                    outcome = receive(event)
                    if outcome.reply:
                        replies.append(outcome.reply)
                    if outcome.close:
                        self._flush_replies()
                        self.close()
                        return
        except wire.ProtocolError as error:
            log.warning("%s: %s", self.handler.name, error)
            self.relay.counters.count(ErrorKind.PROTOCOL)
            self.abort()
        except OSError as error:
            log.error("%s: cannot write: %s", self.handler.name, error)
            self.relay.counters.count(ErrorKind.DISK)
            self.abort()
        except Exception:
            log.exception("%s: internal error", self.handler.name)
            self.abort()
        finally:
            self._flush_replies()

    def _flush_replies(self) -> None:
        """The replies to every request of one read leave in a single write."""
        if self.replies and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.replies))
        self.replies.clear()
