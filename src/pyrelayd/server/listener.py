"""Accepting connections on a listening socket from event-loop readiness callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

_ACCEPT_BATCH = 64
# Out of descriptors or memory: stop accepting for a while instead of spinning.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RESOURCE_PAUSE_S = 0.1

Accepted = Callable[[socket.socket, tuple[str, int]], None]


class Acceptor:
    """Calls `on_accept(sock, address)` for every connection `listener` receives."""

    def __init__(self, name: str, listener: socket.socket, on_accept: Accepted) -> None:
        self.name = name
        self.listener = listener
        self.on_accept = on_accept
        self.loop = asyncio.get_running_loop()
        self._paused: asyncio.TimerHandle | None = None
        listener.setblocking(False)

    def start(self) -> None:
        self.loop.add_reader(self.listener.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _RESOURCE_ERRORS:
                    log.error("%s port: cannot accept a connection: %s", self.name, error)
                    self._pause()
                    return
                if error.errno in (errno.ECONNABORTED, errno.EPERM):
                    continue
                # The listening socket itself failed (e.g. destroyed by `ss -K`): stop
                # watching it rather than spin on it; the health check reports it.
                log.error("%s port: the listener failed: %s; no more connections are "
                          "accepted on it", self.name, error)
                self.close()
                return
            self.on_accept(sock, address)

    def _pause(self) -> None:
        fd = self.listener.fileno()
        self.loop.remove_reader(fd)

        def resume() -> None:
            self._paused = None
            self.loop.add_reader(fd, self._accept)

        self._paused = self.loop.call_later(_RESOURCE_PAUSE_S, resume)

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
        with contextlib.suppress(OSError, ValueError):
            self.loop.remove_reader(self.listener.fileno())
        with contextlib.suppress(OSError):
            self.listener.close()
