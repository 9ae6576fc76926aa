"""Replay a recording into a relay: the asyncio shell around `plan` and `Replayer`.

Steps run one at a time in the recorded global order. After each control request the whole
reply is read before the next step (the relayd never makes a reply wait for the data port,
so this cannot deadlock). A connection is half-closed (EOF sent) where the recording closed
it, and every connection still open when the steps run out is half-closed then.

Guarantee on return: every request that expects a reply was answered, and the relay has
closed every connection after reading our EOF. A relayd processes each connection's bytes
in order before it sees the EOF, so everything replayed has been handled by then; work the
relay defers past a connection's close (e.g. closing a trace chunk once its last stream
goes away) is not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterable
from pathlib import Path

from pyrelayd.capture.plan import Close, Connect, ReplayPlan, SendData, SendRequest, build_plan
from pyrelayd.capture.recording import Kind, Record, read_recording
from pyrelayd.capture.replayer import Replayer, ReplayError, ReplaySummary

Address = tuple[str, int]
READ_CHUNK = 64 * 1024


@dataclasses.dataclass
class _LiveConnection:
    kind: Kind
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    eof_sent: bool = False
    relay_closed: bool = False  # seen while waiting for a reply or writing

    def describe(self, connection: int) -> str:
        return f"{self.kind.name.lower()} connection {connection}"


class _Replay:
    def __init__(
        self, plan: ReplayPlan, control: Address, data: Address,
        reply_timeout: float, close_timeout: float,
    ) -> None:
        self._plan = plan
        self._addresses = {Kind.CONTROL: control, Kind.DATA: data}
        self._reply_timeout = reply_timeout
        self._close_timeout = close_timeout
        self._replayer = Replayer()
        self._live: dict[int, _LiveConnection] = {}

    async def run(self) -> ReplaySummary:
        try:
            for step in self._plan.steps:
                if isinstance(step, Connect):
                    await self._connect(step)
                elif isinstance(step, SendRequest):
                    await self._request(step)
                elif isinstance(step, SendData):
                    await self._send(step.connection, self._replayer.data_bytes(step))
                else:
                    await self._close(step)
            await self._wait_relay_closes()
        finally:
            for live in self._live.values():
                live.writer.close()
            for live in self._live.values():
                with contextlib.suppress(OSError):
                    await live.writer.wait_closed()
        return self._replayer.summary()

    async def _connect(self, step: Connect) -> None:
        host, port = self._addresses[step.kind]
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as error:
            raise ReplayError(
                f"cannot connect to the relay's {step.kind.name.lower()} port "
                f"{host}:{port}: {error}"
            ) from None
        self._live[step.connection] = _LiveConnection(step.kind, reader, writer)
        self._replayer.connected(data=step.kind == Kind.DATA)

    async def _send(self, connection: int, raw: bytes) -> None:
        live = self._live[connection]
        if not raw:
            return
        if not live.relay_closed:
            try:
                live.writer.write(raw)
                await live.writer.drain()
                return
            except ConnectionError:
                live.relay_closed = True
        if connection not in self._plan.closed_by_relay_first:
            raise ReplayError(
                f"relay closed {live.describe(connection)}, which the recorded relay kept open"
            )

    async def _request(self, step: SendRequest) -> None:
        live = self._live[step.connection]
        await self._send(step.connection, self._replayer.request_bytes(step))
        if live.relay_closed:
            return
        reply = bytearray()
        while (size := self._replayer.reply_size(step, reply)) > len(reply):
            try:
                reply += await asyncio.wait_for(
                    live.reader.readexactly(size - len(reply)), self._reply_timeout
                )
            except (asyncio.IncompleteReadError, ConnectionError):
                live.relay_closed = True
                self._replayer.on_relay_closed(step)
                return
            except TimeoutError:
                raise ReplayError(
                    f"no reply to {step.request.name} on control connection "
                    f"{step.connection} within {self._reply_timeout:g} s"
                ) from None
        if size:
            self._replayer.on_reply(step, bytes(reply))

    async def _close(self, step: Close) -> None:
        await self._send(step.connection, self._replayer.raw_bytes(step.leftover))
        self._half_close(self._live[step.connection])

    @staticmethod
    def _half_close(live: _LiveConnection) -> None:
        if live.eof_sent:
            return
        live.eof_sent = True
        if not live.relay_closed:
            with contextlib.suppress(OSError):
                live.writer.write_eof()

    async def _wait_relay_closes(self) -> None:
        for live in self._live.values():
            self._half_close(live)

        async def until_eof(live: _LiveConnection) -> None:
            # Anything the relay still sends (it should not) is read and dropped.
            with contextlib.suppress(ConnectionError):
                while await live.reader.read(READ_CHUNK):
                    pass

        waits = {
            connection: asyncio.create_task(until_eof(live))
            for connection, live in self._live.items()
        }
        if not waits:
            return
        _, pending = await asyncio.wait(waits.values(), timeout=self._close_timeout)
        for task in pending:
            task.cancel()
        if pending:
            open_ones = sorted(
                self._live[connection].describe(connection)
                for connection, task in waits.items() if task in pending
            )
            raise ReplayError(
                f"relay did not close {', '.join(open_ones)} within {self._close_timeout:g} s "
                "of our EOF"
            )


async def replay(
    recording: str | Path | Iterable[Record],
    control: Address = ("127.0.0.1", 5342),
    data: Address = ("127.0.0.1", 5343),
    *,
    reply_timeout: float = 30.0,
    close_timeout: float = 30.0,
) -> ReplaySummary:
    """Replay a recording (a path or its records) into the relay at `control`/`data`.

    Raises RecordingError for a malformed recording (before connecting anywhere) and
    ReplayError when the relay refuses what the recorded relay accepted.
    """
    records = read_recording(recording) if isinstance(recording, str | Path) else recording
    plan = build_plan(records)
    return await _Replay(plan, control, data, reply_timeout, close_timeout).run()
