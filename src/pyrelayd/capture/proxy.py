"""The recording proxy: forwards relayd connections unchanged and records what crosses them.

Each accepted connection (control or data listener) gets its own connection to the real
relay and two pumps, one per direction. A chunk is recorded *before* it is forwarded, so a
reply is always recorded after its request and data that depends on a reply after that
reply. An EOF is passed on as a half-close, so each side sees what it would have seen
without the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from pathlib import Path
from types import TracebackType
from typing import Self

from pyrelayd.capture.recording import Direction, Event, Kind, Record, RecordingWriter

Address = tuple[str, int]
READ_CHUNK = 64 * 1024


class ConnectionTable:
    """Connection ids and the pairing of data connections with control connections.

    The session daemon sets up a control connection (VERSION, GET_CONFIGURATION,
    CREATE_SESSION) and then connects the matching data connection, so a data connection
    belongs to the oldest open control connection that has no data partner yet.
    """

    def __init__(self) -> None:
        self._next_id = 1
        self._unpaired_control: list[int] = []  # oldest first

    def _allocate(self) -> int:
        connection = self._next_id
        self._next_id += 1
        return connection

    def open_control(self) -> int:
        connection = self._allocate()
        self._unpaired_control.append(connection)
        return connection

    def open_data(self) -> tuple[int, int | None]:
        """A new data connection's id and its control connection (None if there is none)."""
        partner = self._unpaired_control.pop(0) if self._unpaired_control else None
        return self._allocate(), partner

    def closed(self, connection: int) -> None:
        with contextlib.suppress(ValueError):
            self._unpaired_control.remove(connection)


@dataclasses.dataclass
class RecordSummary:
    control_connections: int = 0
    data_connections: int = 0
    bytes_to_relay: int = 0
    bytes_from_relay: int = 0

    def __str__(self) -> str:
        return (
            f"recorded {self.control_connections} control + {self.data_connections} data "
            f"connections, {self.bytes_to_relay} bytes to the relay, "
            f"{self.bytes_from_relay} bytes from the relay"
        )


def format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


@dataclasses.dataclass
class _Proxied:
    connection: int
    kind: Kind
    open_directions: set[Direction] = dataclasses.field(
        default_factory=lambda: {Direction.TO_RELAY, Direction.FROM_RELAY}
    )


class CaptureProxy:
    """Listens like a relayd on two ports, forwards to the real one, records to `path`.

    Use as an async context manager, or `start()` then `close()`. Listening on port 0
    picks free ports; `control_address` / `data_address` tell which.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        control_listen: Address,
        data_listen: Address,
        control_relay: Address,
        data_relay: Address,
    ) -> None:
        self._path = Path(path)
        self._listen = {Kind.CONTROL: control_listen, Kind.DATA: data_listen}
        self._relay = {Kind.CONTROL: control_relay, Kind.DATA: data_relay}
        self._servers: dict[Kind, asyncio.Server] = {}
        self._writer: RecordingWriter | None = None
        self._table = ConnectionTable()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.summary = RecordSummary()

    async def start(self) -> None:
        self._writer = RecordingWriter.create(self._path)
        try:
            for kind, (host, port) in self._listen.items():
                self._servers[kind] = await asyncio.start_server(
                    functools.partial(self._serve, kind), host, port, reuse_address=True
                )
        except BaseException:
            await self.close()
            raise

    def _bound(self, kind: Kind) -> Address:
        sockname = self._servers[kind].sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def control_address(self) -> Address:
        return self._bound(Kind.CONTROL)

    @property
    def data_address(self) -> Address:
        return self._bound(Kind.DATA)

    async def close(self) -> None:
        """Stop listening, close every proxied connection (recorded), close the file."""
        self._closing = True
        for server in self._servers.values():
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers.values():
            await server.wait_closed()
        self._servers.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _record(
        self, proxied: _Proxied, direction: Direction, event: Event, data: bytes = b"",
        partner: int | None = None, peer: str = "",
    ) -> None:
        if self._writer is None:
            return
        self._writer.write(Record(
            self._writer.elapsed_ns(), proxied.connection, proxied.kind, direction, event,
            data=data, partner=partner, peer=peer,
        ))

    def _record_close(self, proxied: _Proxied, direction: Direction) -> None:
        if direction in proxied.open_directions:
            proxied.open_directions.discard(direction)
            self._record(proxied, direction, Event.CLOSE)

    async def _serve(
        self, kind: Kind, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closing:  # accepted just before close(): never forwarded, not recorded
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if kind == Kind.CONTROL:
            connection, partner = self._table.open_control(), None
            self.summary.control_connections += 1
        else:
            connection, partner = self._table.open_data()
            self.summary.data_connections += 1
        proxied = _Proxied(connection, kind)
        peer = format_address(writer.get_extra_info("peername"))
        self._record(proxied, Direction.TO_RELAY, Event.OPEN, partner=partner, peer=peer)
        try:
            try:
                relay_reader, relay_writer = await asyncio.open_connection(*self._relay[kind])
            except OSError:
                # The peer sees its connection close at once, as if the relay had closed it.
                self._record_close(proxied, Direction.FROM_RELAY)
                return
            try:
                await asyncio.gather(
                    self._pump(proxied, reader, relay_writer, Direction.TO_RELAY),
                    self._pump(proxied, relay_reader, writer, Direction.FROM_RELAY),
                )
            finally:
                relay_writer.close()
        finally:
            # Stopped while open: the relay sees the proxy close its side.
            self._record_close(proxied, Direction.TO_RELAY)
            writer.close()
            self._table.closed(connection)
            self._tasks.discard(task)

    async def _pump(
        self, proxied: _Proxied, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        try:
            while data := await source.read(READ_CHUNK):
                self._record(proxied, direction, Event.BYTES, data)
                if direction == Direction.TO_RELAY:
                    self.summary.bytes_to_relay += len(data)
                else:
                    self.summary.bytes_from_relay += len(data)
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        self._record_close(proxied, direction)
        # Pass the EOF on as a half-close: the other direction may still carry replies.
        with contextlib.suppress(OSError):
            if not sink.is_closing() and sink.can_write_eof():
                sink.write_eof()
