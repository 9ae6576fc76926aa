"""Dropping peers that stall in the middle of an exchange, or never start one.

lttng-relayd applies `LTTNG_NETWORK_SOCKET_TIMEOUT` (milliseconds; unset, 0 or -1: none) as
`SO_RCVTIMEO`/`SO_SNDTIMEO` of its sockets: a blocking receive of the rest of a message, or a
send to a peer that does not read, fails after that long and the connection is closed, while
idle connections wait in poll() without limit. pyrelayd never blocks, so it does the same from
a periodic sweep: a connection waiting for its peer in the middle of an exchange (a message
half received, a reply the peer does not read) or for its first message is dropped once it
has waited longer than the timeout; a connection idle between two messages is never dropped.

Without the variable the timeout is lttng's default TCP timeout (180 s) rather than forever:
in pyrelayd a stalled peer stalls nobody else, but without a bound any number of them could
hold descriptors forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from pyrelayd.config import DEFAULT_STALL_TIMEOUT_S


class Stallable(Protocol):
    def stalled_since(self) -> float | None:
        """`time.monotonic()` since which this connection waits for its peer in the middle
        of an exchange (or for its first message); None when idle between messages."""

    def drop_stalled(self, waited: float) -> None:
        """Close the connection, which waited `waited` seconds (and say so)."""


def stall_timeout(network_socket_timeout_ms: int) -> float:
    """Seconds a connection may stall: LTTNG_NETWORK_SOCKET_TIMEOUT, else the default."""
    if network_socket_timeout_ms > 0:
        return network_socket_timeout_ms / 1000
    return DEFAULT_STALL_TIMEOUT_S


class StallSweeper:
    """Every quarter of `timeout` (between 50 ms and 5 s), drops the connections that have
    stalled for at least `timeout` seconds."""

    def __init__(self, timeout: float, connections: Callable[[], Iterable[Stallable]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.connections = connections
        self.clock = clock
        self.interval = min(5.0, max(0.05, timeout / 4))
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        try:
            self.sweep()
        finally:
            self.start()

    def sweep(self) -> int:
        """Drop every stalled connection; how many were."""
        now = self.clock()
        dropped = 0
        for connection in list(self.connections()):
            since = connection.stalled_since()
            if since is not None and now - since >= self.timeout:
                connection.drop_stalled(now - since)
                dropped += 1
        return dropped
