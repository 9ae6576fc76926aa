"""The health socket's protocol, as liblttng-ctl's `lttng_health_query()` speaks it (sans-IO).

A client connects to the Unix socket and sends one 4-byte command (`health_comm_msg`);
`HEALTH_CMD_CHECK` is answered with an 8-byte bitmask of unhealthy components
(`health_comm_reply`), both in host byte order, and the connection is then closed: one query
per connection. Any other command, or a client that closes before a whole request, is closed
without reply, as lttng-relayd does.

`HealthRequestReader` frames the request from the bytes of one connection and decides what
to do with it; `encode_reply` encodes the answer. What the bits mean (which components are
unhealthy) is the server's business (pyrelayd.server.health).
"""

from __future__ import annotations

import dataclasses
import struct

HEALTH_CMD_CHECK = 0
REQUEST = struct.Struct("=I")  # health_comm_msg: host byte order
REPLY = struct.Struct("=Q")  # health_comm_reply: bitmask of unhealthy components


@dataclasses.dataclass(frozen=True, slots=True)
class Check:
    """A whole `HEALTH_CMD_CHECK`: send `encode_reply(bitmask)`, then close."""


@dataclasses.dataclass(frozen=True, slots=True)
class Close:
    """Close the connection without reply; `problem` says why (None: the client closed
    before a whole request, which is not worth a word)."""

    problem: str | None = None


HealthEvent = Check | Close


class HealthRequestReader:
    """Frames the one request of a health connection.

    `wanted` is how many bytes to read next: never more than the request, so that nothing
    after it is consumed. `receive` takes them (b"": the client closed its side) and returns
    None while the request is incomplete, then what to do: `Check` or `Close`. After that
    the connection is done with; receiving more is a bug of the caller.
    """

    def __init__(self) -> None:
        self._request = bytearray()
        self._event: HealthEvent | None = None

    @property
    def wanted(self) -> int:
        return 0 if self._event is not None else REQUEST.size - len(self._request)

    @property
    def done(self) -> bool:
        return self._event is not None

    def receive(self, data: bytes) -> HealthEvent | None:
        if self._event is not None:
            raise RuntimeError(f"the health query is over ({self._event}): close the connection")
        if not data:
            self._event = Close()  # closed before a whole request: no reply
            return self._event
        self._request += data[: self.wanted]  # one query per connection: the rest is unread
        if len(self._request) < REQUEST.size:
            return None
        (command,) = REQUEST.unpack(self._request)
        if command == HEALTH_CMD_CHECK:
            self._event = Check()
        else:
            self._event = Close(f"unknown command {command}")
        return self._event


def encode_reply(bitmask: int) -> bytes:
    """The reply to `HEALTH_CMD_CHECK`: bit N set when component N is unhealthy."""
    if not 0 <= bitmask < 1 << (8 * REPLY.size):
        raise ValueError(f"health bitmask {bitmask:#x} does not fit in {REPLY.size} bytes")
    return REPLY.pack(bitmask)
