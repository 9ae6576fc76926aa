"""A small HTTP/1.1 server on the relay's event loop, for the metrics and status endpoints.

Each route is a coroutine that builds a whole response. A connection handles one request
at a time (it stops reading meanwhile, so pipelined requests wait in a bounded buffer) and
keeps the connection open between requests when the client asks to. Bounded everywhere: at
most `max_connections` connections, request heads of at most `MAX_HEAD_SIZE` bytes, and a
connection idle (or stuck in the middle of a request) for `idle_timeout_s` is closed.
What each request gets (refused, or answered by its route; framed for HEAD and keep-alive)
is decided by pyrelayd.protocol.http: this module runs the routes and moves the bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http
import logging
import socket
import typing
from collections.abc import Awaitable, Callable, Mapping

from pyrelayd.config import ListenAddress
from pyrelayd.protocol.http import Exchange, HttpError, RequestReader

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IDLE_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    status: http.HTTPStatus
    body: bytes
    content_type: str = TEXT


Route = Callable[[], Awaitable[Response]]


class HttpServer:
    """Serves `routes` (path -> coroutine function); any other path is 404.

    `on_open` / `on_close` are called as each connection is taken in and let go (the relay
    counts their descriptors in its fd pool).
    """

    def __init__(self, name: str, routes: Mapping[str, Route], *,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                 on_open: Callable[[], None] | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self.name = name
        self.routes = dict(routes)
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.on_open = on_open
        self.on_close = on_close
        self.connections: set[HttpConnection] = set()
        self.server: asyncio.base_events.Server | None = None

    async def start(self, address: ListenAddress) -> int:
        """Listen on `address`; returns the port (the one the OS chose, for port 0)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: HttpConnection(self), host=address.host, port=address.port,
            family=socket.AF_INET6 if address.ipv6 else socket.AF_INET, reuse_address=True)
        port: int = self.server.sockets[0].getsockname()[1]
        log.info("%s listening on %s port %d", self.name, address.host, port)
        return port

    def is_serving(self) -> bool:
        return self.server is not None and self.server.is_serving()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.abort()


class HttpConnection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader()
        self.handling: asyncio.Task[None] | None = None
        self.writing_paused = False
        self.peer_done = False  # the client shut its side down: answer, then close
        self.idle_timer: asyncio.TimerHandle | None = None
        self.name = server.name

    # ----------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.name = f"{self.server.name} {peer[0]}:{peer[1]}"
        if len(self.server.connections) >= self.server.max_connections:
            log.warning("%s: too many connections, closing it", self.name)
            self.transport.abort()
            return
        self.server.connections.add(self)
        if self.server.on_open is not None:
            self.server.on_open()
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        self._next_request()

    def eof_received(self) -> bool | None:
        self.peer_done = True
        if self.handling is None:
            self._next_request()
        return True if self.handling is not None else None  # None: close at once

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.server.connections:
            self.server.connections.discard(self)
            if self.server.on_close is not None:
                self.server.on_close()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.handling is not None:
            self.handling.cancel()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._next_request()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ----------------------------------------------------------------- requests

    def _arm_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.idle_timer = self.loop.call_later(self.server.idle_timeout_s, self.abort)

    def _next_request(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.handling or self.writing_paused:
            return
        try:
            request = self.reader.next_request()
        except HttpError as error:
            log.info("%s: %s", self.name, error)
            transport.write(error.reply)
            transport.close()
            return
        if request is None:
            return
        transport.pause_reading()
        self.handling = self.loop.create_task(self._answer(Exchange(request,
                                                                    self.server.routes)))

    async def _answer(self, exchange: Exchange) -> None:
        reply = exchange.refusal
        if reply is None:
            request = exchange.request
            try:
                response = await self.server.routes[request.path]()
            except Exception:
                log.exception("%s: %s %s failed", self.name, request.method, request.path)
                reply = exchange.failed()
            else:
                reply = exchange.respond(response.status, response.body, response.content_type)
        self.handling = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(reply)
        if not exchange.keep_alive:
            transport.close()
            return
        self._arm_idle_timer()
        transport.resume_reading()
        self._next_request()
        if self.peer_done and self.handling is None:
            transport.close()
