"""Lean live viewers on the codec of `pyrelayd.protocol.viewer`, many per process (asyncio).

Each viewer does what `babeltrace2 -i lttng-live` does, minus the CTF decoding: CONNECT,
CREATE_SESSION, ATTACH_SESSION (from the beginning), GET_METADATA until there is no new
metadata, then round-robin over its data streams: GET_NEXT_INDEX, and GET_PACKET of the whole
packet when an index is ready, until it has read the expected number of packets of every
stream (or the stream hangs up). NEW_METADATA and NEW_STREAM flags are honoured. Each
request's latency (request written -> whole reply read) is recorded.

`run_viewers` is the body of a viewer process driven through a pipe: it attaches every
viewer, reports "ready" (attach statuses), waits for "go", and reports "done" (statistics).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Coroutine, Sequence
from multiprocessing.connection import Connection
from typing import Any

from bench.relays import LOAD_CPUS, pin_to, raise_nofile
from pyrelayd.protocol import viewer as wire
from pyrelayd.protocol.viewer import IndexStatus, PacketStatus, ViewerFlag

# Pause after a pass over every stream that brought no packet (babeltrace2 waits 100 ms;
# shorter here so that latency, not the pause, limits what a viewer can read).
IDLE_PAUSE_S = 0.002
_INDEX_REPLY = wire.IndexReply.FORMAT
_PACKET_HEADER = wire.PacketReply.HEADER
_METADATA_HEADER = wire.MetadataReply.HEADER
_LIST_HEADER = wire.AttachSessionReply.HEADER


@dataclasses.dataclass
class ViewerStats:
    attach_status: str = ""
    packets: int = 0
    bytes: int = 0
    index_latencies: list[float] = dataclasses.field(default_factory=list)
    packet_latencies: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    finished_at: float = 0.0  # time.monotonic() when every stream was read
    timed_out: bool = False


class LeanViewer:
    def __init__(self, port: int, session_id: int, packets_per_stream: int) -> None:
        self.port = port
        self.session_id = session_id
        self.packets_per_stream = packets_per_stream
        self.stats = ViewerStats()
        self.data_streams: set[int] = set()
        self.metadata_streams: set[int] = set()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _call(self, request: wire.Request, fixed: int) -> bytes:
        assert self.reader is not None and self.writer is not None
        self.writer.write(wire.encode_request(request))
        return await self.reader.readexactly(fixed)

    async def _stream_list(self, request: wire.Request) -> tuple[int, list[wire.StreamInfo]]:
        assert self.reader is not None
        head = await self._call(request, _LIST_HEADER.size)
        status, count = _LIST_HEADER.unpack(head)
        size = wire.StreamInfo.FORMAT.size
        raw = await self.reader.readexactly(count * size) if count else b""
        return status, [wire.StreamInfo.decode(raw[i : i + size])
                        for i in range(0, len(raw), size)]

    def _add_streams(self, streams: Sequence[wire.StreamInfo]) -> None:
        for stream in streams:
            (self.metadata_streams if stream.is_metadata else self.data_streams).add(stream.id)

    async def attach(self) -> bool:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire.Connect.decode(await self._call(wire.Connect(), wire.Connect.FORMAT.size))
        await self._call(wire.CreateSession(), wire.CreateSessionReply.FORMAT.size)
        status, streams = await self._stream_list(
            wire.AttachSession(self.session_id, wire.Seek.BEGINNING))
        self.stats.attach_status = wire.AttachStatus(status).name
        if status != wire.AttachStatus.OK:
            return False
        self._add_streams(streams)
        await self._read_metadata()
        return True

    async def _read_metadata(self) -> None:
        assert self.reader is not None
        for stream_id in self.metadata_streams:
            while True:
                head = await self._call(wire.GetMetadata(stream_id), _METADATA_HEADER.size)
                length, status = _METADATA_HEADER.unpack(head)
                if status != wire.MetadataStatus.OK:
                    break
                await self.reader.readexactly(length)

    async def _new_streams(self) -> None:
        status, streams = await self._stream_list(wire.GetNewStreams(self.session_id))
        if status == wire.NewStreamsStatus.OK:
            self._add_streams(streams)
            await self._read_metadata()

    async def read_everything(self, deadline: float) -> None:
        """Until every data stream gave its packets (the producer keeps its streams open:
        the C relay hangs up streams closed by their producer before a slow viewer is done)."""
        assert self.reader is not None and self.writer is not None
        reader, writer, stats = self.reader, self.writer, self.stats
        clock = time.perf_counter
        active = set(self.data_streams)
        finished: set[int] = set()
        received = dict.fromkeys(active, 0)
        index_requests = {sid: wire.encode_request(wire.GetNextIndex(sid)) for sid in active}
        while active:
            if time.monotonic() > deadline:
                stats.timed_out = True
                break
            progressed = False
            for stream_id in list(active):
                request = index_requests.get(stream_id)
                if request is None:
                    request = index_requests[stream_id] = wire.encode_request(
                        wire.GetNextIndex(stream_id))
                start = clock()
                writer.write(request)
                raw = await reader.readexactly(_INDEX_REPLY.size)
                stats.index_latencies.append(clock() - start)
                offset, packet_size, *_rest, status, flags = _INDEX_REPLY.unpack(raw)
                if flags & ViewerFlag.NEW_METADATA:
                    await self._read_metadata()
                if flags & ViewerFlag.NEW_STREAM:
                    await self._new_streams()
                    active |= self.data_streams - finished
                if status == IndexStatus.OK:
                    length = packet_size // 8
                    start = clock()
                    writer.write(wire.encode_request(wire.GetPacket(stream_id, offset, length)))
                    packet_status, size, _flags = _PACKET_HEADER.unpack(
                        await reader.readexactly(_PACKET_HEADER.size))
                    if packet_status != PacketStatus.OK:
                        stats.errors += 1
                        continue
                    await reader.readexactly(size)
                    stats.packet_latencies.append(clock() - start)
                    stats.packets += 1
                    stats.bytes += size
                    progressed = True
                    received[stream_id] = received.get(stream_id, 0) + 1
                    if received[stream_id] >= self.packets_per_stream:
                        active.discard(stream_id)
                        finished.add(stream_id)
                elif status in (IndexStatus.HUP, IndexStatus.ERR):
                    stats.errors += status == IndexStatus.ERR
                    active.discard(stream_id)
                    finished.add(stream_id)
            if not progressed:
                await asyncio.sleep(IDLE_PAUSE_S)
        stats.finished_at = time.monotonic()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_viewers(conn: Connection, port: int, session_ids: Sequence[int],
                packets_per_stream: int, timeout_s: float) -> None:
    """Body of a viewer process: "ready" (attach statuses) -> "go" -> "done" (statistics)."""
    pin_to(LOAD_CPUS)
    raise_nofile(len(session_ids) + 1024)
    try:
        stats = _run(_viewers_main(conn, port, session_ids, packets_per_stream, timeout_s))
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    conn.send(("done", stats))


def _run(main: Coroutine[Any, Any, list[ViewerStats]]) -> list[ViewerStats]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _viewers_main(conn: Connection, port: int, session_ids: Sequence[int],
                        packets_per_stream: int, timeout_s: float) -> list[ViewerStats]:
    viewers = [LeanViewer(port, session_id, packets_per_stream) for session_id in session_ids]
    try:
        attached = [await viewer.attach() for viewer in viewers]
        conn.send(("ready", [viewer.stats.attach_status for viewer in viewers]))
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, conn.recv) != "go":
            return [viewer.stats for viewer in viewers]
        deadline = time.monotonic() + timeout_s
        await asyncio.gather(*(viewer.read_everything(deadline)
                               for viewer, ok in zip(viewers, attached, strict=True) if ok))
        return [viewer.stats for viewer in viewers]
    finally:
        for viewer in viewers:
            with contextlib.suppress(Exception):
                viewer.close()
